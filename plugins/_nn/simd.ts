/**
 * WebAssembly SIMD kernels of the transformer. Row statistics of large float32 matrices:
 * per-row maximum, the sum of `exp(x - max)` (optionally writing the exponentials out) and
 * the first index of the maximum; these are the vocabulary-wide passes (the output
 * log-softmax in training, the greedy choice and its log-probability in decoding), where a
 * scalar JavaScript `exp` costs several times more than the vectorised one. And the cached
 * attention of incremental decoding, whose caches live in the module's memory. The kernels
 * are in `simd.wat`; `simd_wasm.ts` holds their bytes.
 *
 * Rows are copied into the module's memory in chunks that stay in cache, processed there,
 * and (for the exponentials) copied back. exp is accurate to about 1e-7 relative (float32);
 * sums are accumulated in double precision.
 *
 * @module
 */

import { SIMD_WASM_BASE64 } from "./simd_wasm.ts";

interface Exports {
  memory: WebAssembly.Memory;
  lseRows(x: number, rows: number, n: number, store: number, maxOut: number, sumOut: number): void;
  indexOf(x: number, n: number, v: number): number;
  scaleShiftRows(x: number, rows: number, n: number, k: number, c: number): void;
  relu(x: number, n: number): void;
  softmaxRows(x: number, rows: number, n: number, tq: number, causal: number): void;
  softmaxGradRows(p: number, dp: number, rows: number, n: number): void;
  reluGrad(dy: number, y: number, n: number): void;
  layerNorm(
    x: number,
    y: number,
    xhat: number,
    rstd: number,
    rows: number,
    d: number,
    gamma: number,
    beta: number,
    eps: number,
  ): void;
  layerNormBackward(
    dy: number,
    xhat: number,
    rstd: number,
    res: number,
    dx: number,
    rows: number,
    d: number,
    gamma: number,
    dGamma: number,
    dBeta: number,
  ): void;
  attend(
    q: number,
    keys: number,
    vals: number,
    headStride: number,
    n: number,
    mask: number,
    heads: number,
    dk: number,
    scale: number,
    scores: number,
    out: number,
  ): void;
}

/** Floats per chunk copied into the module (256 KiB: stays in L2 cache). */
const CHUNK_FLOATS = 1 << 16;
/** The first byte offset handed out (offset 0 means "none" to the kernels). */
const BASE = 64;

let exportsCache: Exports | undefined;
/** Each {@link SimdMatrix} by the buffer of its memory. */
const owners = new WeakMap<ArrayBufferLike, SimdMatrix>();
let f32: Float32Array = new Float32Array(0);
let f64: Float64Array = new Float64Array(0);
let u8: Uint8Array = new Uint8Array(0);
/** End of the allocated part of the module's memory (bytes, 16-aligned). */
let top = BASE;

let moduleCache: WebAssembly.Module | undefined;

/** A new instance of the kernels, with a memory of its own. */
function newInstance(): Exports {
  if (moduleCache === undefined) {
    const bytes = Uint8Array.from(atob(SIMD_WASM_BASE64), (c) => c.charCodeAt(0));
    moduleCache = new WebAssembly.Module(bytes);
  }
  return new WebAssembly.Instance(moduleCache, {}).exports as unknown as Exports;
}

/** The shared instance (scratch chunks, decoding caches). */
function instance(): Exports {
  exportsCache ??= newInstance();
  return exportsCache;
}

/** Grows the module's memory to at least `bytes` and refreshes the views. */
function ensure(bytes: number): void {
  const w = instance();
  const have = w.memory.buffer.byteLength;
  if (bytes > have) w.memory.grow(Math.ceil((bytes - have) / 65536));
  if (f32.buffer !== w.memory.buffer) {
    f32 = new Float32Array(w.memory.buffer);
    f64 = new Float64Array(w.memory.buffer);
    u8 = new Uint8Array(w.memory.buffer);
  }
}

/**
 * Makes room above the allocated part for `floats` float32 values followed by `doubles`
 * float64 values (transient scratch); returns the byte offsets of both.
 */
function reserve(floats: number, doubles: number): { fOff: number; dOff: number } {
  const fOff = top;
  const dOff = fOff + Math.ceil((floats * 4) / 16) * 16;
  ensure(dOff + doubles * 8);
  return { fOff, dOff };
}

/**
 * Layer norm over rows of `d` floats (`d` a multiple of 4), float32 arithmetic: `y = xhat
 * gamma + beta`; `xhat` and `rstd` (per row) are written when given.
 */
export function simdLayerNorm(
  x: Float32Array,
  d: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
  y: Float32Array,
  xhat?: Float32Array,
  rstd?: Float32Array,
): void {
  const w = instance();
  const rows = x.length / d;
  const per = Math.max(1, Math.floor(CHUNK_FLOATS / d));
  const chunk = Math.min(rows, per) * d;
  const { fOff } = reserve(2 * d + 3 * chunk + Math.min(rows, per) + 4, 0);
  const gOff = fOff;
  const bOff = gOff + 4 * d;
  const xOff = bOff + 4 * d;
  const yOff = xOff + 4 * chunk;
  const hOff = yOff + 4 * chunk;
  const sOff = hOff + 4 * chunk;
  f32.set(gamma, gOff / 4);
  f32.set(beta, bOff / 4);
  for (let r0 = 0; r0 < rows; r0 += per) {
    const count = Math.min(per, rows - r0);
    const start = r0 * d;
    const len = count * d;
    f32.set(x.subarray(start, start + len), xOff / 4);
    w.layerNorm(xOff, yOff, xhat ? hOff : 0, sOff, count, d, gOff, bOff, eps);
    y.set(f32.subarray(yOff / 4, yOff / 4 + len), start);
    if (xhat !== undefined) xhat.set(f32.subarray(hOff / 4, hOff / 4 + len), start);
    if (rstd !== undefined) rstd.set(f32.subarray(sOff / 4, sOff / 4 + count), r0);
  }
}

/**
 * Backward pass of {@link simdLayerNorm}: writes dx (plus `residual` when given) and adds the
 * parameter gradients into `dGamma` and `dBeta`.
 */
export function simdLayerNormBackward(
  dy: Float32Array,
  d: number,
  gamma: Float32Array,
  xhat: Float32Array,
  rstd: Float32Array,
  dGamma: Float32Array,
  dBeta: Float32Array,
  dx: Float32Array,
  residual?: Float32Array,
): void {
  const w = instance();
  const rows = dy.length / d;
  const per = Math.max(1, Math.floor(CHUNK_FLOATS / d));
  const chunk = Math.min(rows, per) * d;
  const { fOff } = reserve(3 * d + 4 * chunk + Math.min(rows, per) + 4, 0);
  const gOff = fOff;
  const dgOff = gOff + 4 * d;
  const dbOff = dgOff + 4 * d;
  const yOff = dbOff + 4 * d;
  const hOff = yOff + 4 * chunk;
  const rOff = hOff + 4 * chunk;
  const xOff = rOff + 4 * chunk;
  const sOff = xOff + 4 * chunk;
  f32.set(gamma, gOff / 4);
  f32.set(dGamma, dgOff / 4);
  f32.set(dBeta, dbOff / 4);
  for (let r0 = 0; r0 < rows; r0 += per) {
    const count = Math.min(per, rows - r0);
    const start = r0 * d;
    const len = count * d;
    f32.set(dy.subarray(start, start + len), yOff / 4);
    f32.set(xhat.subarray(start, start + len), hOff / 4);
    f32.set(rstd.subarray(r0, r0 + count), sOff / 4);
    if (residual !== undefined) f32.set(residual.subarray(start, start + len), rOff / 4);
    w.layerNormBackward(
      yOff,
      hOff,
      sOff,
      residual === undefined ? 0 : rOff,
      xOff,
      count,
      d,
      gOff,
      dgOff,
      dbOff,
    );
    dx.set(f32.subarray(xOff / 4, xOff / 4 + len), start);
  }
  dGamma.set(f32.subarray(dgOff / 4, dgOff / 4 + d));
  dBeta.set(f32.subarray(dbOff / 4, dbOff / 4 + d));
}

/**
 * A block of the SIMD module's memory, for data that kernels read many times (attention
 * caches). Blocks are allocated stack-wise: {@link simdMark} before, {@link simdRelease}
 * after, and a block must not be used once released. Views of the memory change when it
 * grows: take {@link simdF32} / {@link simdU8} anew after any allocation.
 */
export function simdAlloc(bytes: number): number {
  const off = top;
  top += Math.ceil(bytes / 16) * 16;
  ensure(top);
  return off;
}

/** The current allocation mark. */
export function simdMark(): number {
  return top;
}

/** Frees every block allocated since `mark`. */
export function simdRelease(mark: number): void {
  if (mark < BASE || mark > top) throw new RangeError(`bad SIMD memory mark ${mark}`);
  top = mark;
}

/** A float32 view of the whole module memory (index = byte offset / 4). */
export function simdF32(): Float32Array {
  ensure(top);
  return f32;
}

/** A byte view of the whole module memory. */
export function simdU8(): Uint8Array {
  ensure(top);
  return u8;
}

/**
 * One query row attending over `n` cached keys for every head (see `simd.wat`): byte
 * offsets of the query, keys, values, the key mask (0: none) and a scratch of `n` floats;
 * the result goes to `out`. Needs `dk` to be a multiple of 4.
 */
export function simdAttend(
  q: number,
  keys: number,
  vals: number,
  headStride: number,
  n: number,
  mask: number,
  heads: number,
  dk: number,
  scale: number,
  scores: number,
  out: number,
): void {
  instance().attend(q, keys, vals, headStride, n, mask, heads, dk, scale, scores, out);
}

/**
 * For each of `rows` rows of `n` floats starting at `src[offset]`: `maxOut[r]` = the row's
 * maximum, `sumOut[r]` = sum over the row of exp(x - max); when `expOut` is given, exp(x - max)
 * is written there at the same index (it may be `src` itself). NaN is skipped by the maximum and
 * makes the sum NaN.
 */
export function rowExpSums(
  src: Float32Array,
  offset: number,
  rows: number,
  n: number,
  maxOut: Float64Array,
  sumOut: Float64Array,
  expOut?: Float32Array,
): void {
  if (rows === 0) return;
  if (n === 0) {
    maxOut.fill(-Infinity, 0, rows);
    sumOut.fill(0, 0, rows);
    return;
  }
  const owner = ownerOf(src, offset, rows, n);
  if (owner !== undefined && (expOut === undefined || expOut === src)) {
    owner.expSums(rows, maxOut, sumOut, expOut !== undefined);
    return;
  }
  const w = instance();
  const per = Math.max(1, Math.floor(CHUNK_FLOATS / n));
  const { fOff, dOff } = reserve(Math.min(rows, per) * n, 2 * Math.min(rows, per));
  const d = dOff / 8;
  for (let r0 = 0; r0 < rows; r0 += per) {
    const count = Math.min(per, rows - r0);
    const start = offset + r0 * n;
    const len = count * n;
    f32.set(src.subarray(start, start + len), fOff / 4);
    w.lseRows(fOff, count, n, expOut === undefined ? 0 : 1, dOff, dOff + count * 8);
    for (let i = 0; i < count; i++) {
      maxOut[r0 + i] = f64[d + i];
      sumOut[r0 + i] = f64[d + count + i];
    }
    if (expOut !== undefined) expOut.set(f32.subarray(fOff / 4, fOff / 4 + len), start);
  }
}

/**
 * {@link rowExpSums} without the exponentials, plus `argmaxOut[r]`: the first index of the
 * row's maximum (-1 when the row is empty or all NaN).
 */
export function rowArgmaxExpSums(
  src: Float32Array,
  offset: number,
  rows: number,
  n: number,
  maxOut: Float64Array,
  sumOut: Float64Array,
  argmaxOut: Int32Array,
): void {
  if (rows === 0) return;
  if (n === 0) {
    maxOut.fill(-Infinity, 0, rows);
    sumOut.fill(0, 0, rows);
    argmaxOut.fill(-1, 0, rows);
    return;
  }
  const owner = ownerOf(src, offset, rows, n);
  if (owner !== undefined) {
    owner.argmaxExpSums(rows, maxOut, sumOut, argmaxOut);
    return;
  }
  const w = instance();
  const per = Math.max(1, Math.floor(CHUNK_FLOATS / n));
  const { fOff, dOff } = reserve(Math.min(rows, per) * n, 2 * Math.min(rows, per));
  const d = dOff / 8;
  for (let r0 = 0; r0 < rows; r0 += per) {
    const count = Math.min(per, rows - r0);
    const start = offset + r0 * n;
    f32.set(src.subarray(start, start + count * n), fOff / 4);
    w.lseRows(fOff, count, n, 0, dOff, dOff + count * 8);
    for (let i = 0; i < count; i++) {
      const max = f64[d + i];
      maxOut[r0 + i] = max;
      sumOut[r0 + i] = f64[d + count + i];
      argmaxOut[r0 + i] = w.indexOf(fOff + i * n * 4, n, max);
    }
  }
}

/**
 * A `[rows, n]` float32 matrix held in a SIMD module instance of its own (its memory never
 * grows, so {@link SimdMatrix.data} stays valid), whose row statistics are computed in
 * place without copies. Matrix products can write into `data` directly (it is an ordinary
 * `Float32Array` view). Used for the vocabulary-wide logits.
 */
export class SimdMatrix {
  /** The values, row-major. */
  readonly data: Float32Array;
  readonly #w: Exports;
  readonly #rows: number;
  readonly #n: number;
  readonly #stats: number;

  readonly #slots: Float32Array[];
  readonly #slotBytes: number;

  /**
   * Allocates a `[rows, n]` matrix (contents unspecified), plus `extra` more matrices of the
   * same shape in the same memory ({@link SimdMatrix.slot}), for kernels that read two.
   */
  constructor(rows: number, n: number, extra = 0, instance: Exports = newInstance()) {
    this.#w = instance;
    this.#rows = rows;
    this.#n = n;
    this.#slotBytes = slotBytes(rows, n);
    this.#stats = BASE + (1 + extra) * this.#slotBytes;
    const need = matrixBytes(rows, n, extra);
    const have = this.#w.memory.buffer.byteLength;
    if (need > have) this.#w.memory.grow(Math.ceil((need - have) / 65536));
    this.#slots = Array.from(
      { length: 1 + extra },
      (_, i) => new Float32Array(this.#w.memory.buffer, BASE + i * this.#slotBytes, rows * n),
    );
    this.data = this.#slots[0];
    owners.set(this.#w.memory.buffer, this);
  }

  /** The module instance whose memory holds this matrix (the pool's unit of reuse). */
  get instance(): Exports {
    return this.#w;
  }

  /** Matrix `i` of this memory (0 is {@link SimdMatrix.data}). */
  slot(i: number): Float32Array {
    const s = this.#slots[i];
    if (s === undefined) throw new RangeError(`no slot ${i}`);
    return s;
  }

  /** Number of slots. */
  get slots(): number {
    return this.#slots.length;
  }

  /** ReLU of slot `i` in place (its first `count` floats). */
  relu(i: number, count = this.#rows * this.#n): void {
    this.slot(i);
    if (count > this.#rows * this.#n) throw new RangeError(`relu of ${count} floats`);
    this.#w.relu(BASE + i * this.#slotBytes, count);
  }

  /**
   * Softmax of every row of slot `i` in place; with `causal`, row r sees its first
   * `r mod tq + 1` entries (the rest become 0), as attention queries r mod tq over keys.
   */
  softmax(i: number, tq: number, causal: boolean): void {
    this.slot(i);
    this.#w.softmaxRows(BASE + i * this.#slotBytes, this.#rows, this.#n, tq, causal ? 1 : 0);
  }

  /** Slot `dp` = slot `p` * (slot `dp` - rowwise sum(slot `dp` * slot `p`)): softmax backward. */
  softmaxGrad(p: number, dp: number): void {
    this.slot(p);
    this.slot(dp);
    this.#w.softmaxGradRows(
      BASE + p * this.#slotBytes,
      BASE + dp * this.#slotBytes,
      this.#rows,
      this.#n,
    );
  }

  /** Slot `dy` times (slot `y` > 0), in place: the ReLU's backward pass. */
  reluGrad(dy: number, y: number): void {
    this.slot(dy);
    this.slot(y);
    this.#w.reluGrad(BASE + dy * this.#slotBytes, BASE + y * this.#slotBytes, this.#rows * this.#n);
  }

  /** Rows. */
  get rows(): number {
    return this.#rows;
  }

  /** Columns. */
  get cols(): number {
    return this.#n;
  }

  /**
   * For the first `rows` rows: `maxOut[r]` = maximum (NaN skipped), `sumOut[r]` = sum of
   * exp(x - max); with `store`, exp(x - max) replaces the row.
   */
  expSums(rows: number, maxOut: Float64Array, sumOut: Float64Array, store: boolean): void {
    if (rows > this.#rows) throw new RangeError(`${rows} rows of a ${this.#rows}-row matrix`);
    if (rows === 0) return;
    const n = this.#n;
    if (n === 0) {
      maxOut.fill(-Infinity, 0, rows);
      sumOut.fill(0, 0, rows);
      return;
    }
    const s = this.#stats;
    this.#w.lseRows(BASE, rows, n, store ? 1 : 0, s, s + 8 * rows);
    const f64 = new Float64Array(this.#w.memory.buffer, s, 2 * rows);
    for (let r = 0; r < rows; r++) {
      maxOut[r] = f64[r];
      sumOut[r] = f64[rows + r];
    }
  }

  /** `row r = row r * k[r] + c[r]` for the first `rows` rows (float32 arithmetic). */
  scaleShift(rows: number, k: Float64Array, c: Float64Array): void {
    if (rows > this.#rows) throw new RangeError(`${rows} rows of a ${this.#rows}-row matrix`);
    const s = this.#stats;
    const f64 = new Float64Array(this.#w.memory.buffer, s, 2 * rows);
    f64.set(k.subarray(0, rows));
    f64.set(c.subarray(0, rows), rows);
    this.#w.scaleShiftRows(BASE, rows, this.#n, s, s + 8 * rows);
  }

  /** {@link SimdMatrix.expSums} without storing, plus the first index of each row's maximum. */
  argmaxExpSums(
    rows: number,
    maxOut: Float64Array,
    sumOut: Float64Array,
    argmaxOut: Int32Array,
  ): void {
    this.expSums(rows, maxOut, sumOut, false);
    const n = this.#n;
    for (let r = 0; r < rows; r++) {
      argmaxOut[r] = n === 0 ? -1 : this.#w.indexOf(BASE + 4 * r * n, n, maxOut[r]);
    }
  }
}

/** The matrix whose `[rows, n]` rows start at `src[offset]`, when `src` views one's memory. */
function ownerOf(src: Float32Array, offset: number, rows: number, n: number) {
  const m = owners.get(src.buffer);
  if (m === undefined || src.byteOffset + 4 * offset !== BASE) return undefined;
  return m.cols === n && rows <= m.rows ? m : undefined;
}

/** Bytes of one slot of a `[rows, n]` matrix (16-aligned). */
function slotBytes(rows: number, n: number): number {
  return Math.ceil((4 * rows * n) / 16) * 16;
}

/** Bytes of module memory a `[rows, n]` matrix with `extra` slots needs (slots + row stats). */
function matrixBytes(rows: number, n: number, extra: number): number {
  return BASE + (1 + extra) * slotBytes(rows, n) + 16 * rows;
}

/**
 * Module instances no matrix holds, for {@link takeSimdMatrix} to reuse whatever shape it is
 * asked for. Pooling instances rather than matrices of one shape matters: batch shapes vary
 * from step to step, and an instance's memory is returned to the system only when the
 * garbage collector finalises it, so one kept matrix per shape grew the process by gigabytes.
 */
const freeInstances: Exports[] = [];
/** Free instances kept; more are left to the garbage collector. */
const FREE_INSTANCES = 32;

/**
 * A {@link SimdMatrix} of the given shape and slots, in the memory of a free instance when
 * there is one: the smallest that fits, else the largest, grown. Live instances thus number
 * the most matrices held at once, each as large as the largest matrix it held.
 */
export function takeSimdMatrix(rows: number, n: number, extra = 0): SimdMatrix {
  const need = matrixBytes(rows, n, extra);
  let pick = -1;
  for (let i = 0; i < freeInstances.length; i++) {
    const size = freeInstances[i].memory.buffer.byteLength;
    const best = pick < 0 ? undefined : freeInstances[pick].memory.buffer.byteLength;
    const fits = size >= need;
    if (best === undefined) pick = i;
    else if (fits && (best < need || size < best)) pick = i;
    else if (!fits && best < need && size > best) pick = i;
  }
  const instance = pick < 0 ? undefined : freeInstances.splice(pick, 1)[0];
  return new SimdMatrix(rows, n, extra, instance);
}

/**
 * Gives back a matrix that nothing will use again: its instance serves later
 * {@link takeSimdMatrix} calls (up to 32 free instances are kept, the smallest dropped).
 */
export function giveSimdMatrix(m: SimdMatrix): void {
  const w = m.instance;
  if (freeInstances.includes(w)) return;
  freeInstances.push(w);
  if (freeInstances.length > FREE_INSTANCES) {
    let smallest = 0;
    for (let i = 1; i < freeInstances.length; i++) {
      const size = freeInstances[i].memory.buffer.byteLength;
      if (size < freeInstances[smallest].memory.buffer.byteLength) smallest = i;
    }
    freeInstances.splice(smallest, 1);
  }
}

/** Bytes held by free pooled instances (for tests and diagnostics). */
export function pooledSimdBytes(): number {
  return freeInstances.reduce((sum, w) => sum + w.memory.buffer.byteLength, 0);
}
