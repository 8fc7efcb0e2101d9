/**
 * Plain-JavaScript numeric kernels of the transformer: everything that is not a
 * matrix product (those go through `matmul` in `_layers.ts`, i.e. OpenBLAS on the
 * `blas` backend). Layer norm (handed to `_simd.ts` when the width is a multiple of 4),
 * masked softmax, attention head layouts, the vocabulary log-softmax, sinusoidal
 * positions, dropout masks, a fast `exp`, and the pool of work buffers.
 *
 * Every function works on row-major `Float32Array`s and never mutates its inputs
 * unless its name or doc says so ("...InPlace", "into"). They run on tfjs-cpu's
 * (and the blas backend's) own buffers without copies. Each hot loop sits in a small
 * function of its own: V8 optimises those as a whole, while a long inner loop inside the
 * outer loop of a rarely called function runs in on-stack-replaced code that is thrown
 * away at every exit of the inner loop (several times slower).
 *
 * @module
 */

import type { Rng } from "../../core/random.ts";
import { simdLayerNorm, simdLayerNormBackward } from "./_simd.ts";

const LOG2E = 1.4426950408889634;
/** 2^(i - 1075) for i in [0, 2100): the exponent part of {@link fastExp}. */
const POW2 = (() => {
  const table = new Float64Array(2100);
  for (let i = 0; i < table.length; i++) table[i] = Math.pow(2, i - 1075);
  return table;
})();

/**
 * exp(x) for x <= 0 with a relative error below 3e-7 (float32 precision), about three
 * times faster than `Math.exp`. Returns 0 below -745 (where `Math.exp` underflows too).
 */
export function fastExp(x: number): number {
  const t = x * LOG2E;
  if (t < -1074) return 0;
  const n = Math.floor(t + 0.5);
  const f = t - n;
  const p = 1 +
    f * (0.6931471805599453 +
        f * (0.2402265069591007 +
            f * (0.05550410866482158 +
                f *
                  (0.009618129107628477 +
                    f * (0.0013333558146428443 + f * 0.00015403530393381606)))));
  return p * POW2[n + 1075];
}

// A pool of work buffers: the transformer's activations and gradients are the same few
// sizes at every step, and fresh memory costs about as much to fault in as the arithmetic
// done on it. Buffers go back only where their last reader is certain.
const pool = new Map<number, Float32Array[]>();
let pooledFloats = 0;
/** Floats the buffer pool may hold (256 MiB). */
const POOL_LIMIT = 1 << 26;
/** Buffers kept per size. */
const POOL_DEPTH = 64;

/** A buffer of `size` floats with arbitrary contents: from the pool when it has one. */
export function takeBuffer(size: number): Float32Array {
  const buf = pool.get(size)?.pop();
  if (buf === undefined) return new Float32Array(size);
  pooledFloats -= size;
  return buf;
}

/** Gives back a buffer (from {@link takeBuffer} or not) that nothing will read or write again. */
export function giveBuffer(buf: Float32Array): void {
  if (buf.length === 0 || buf.length !== buf.buffer.byteLength / 4) return; // not a view
  if (pooledFloats + buf.length > POOL_LIMIT) return;
  let list = pool.get(buf.length);
  if (list === undefined) pool.set(buf.length, list = []);
  if (list.length >= POOL_DEPTH || list.includes(buf)) return;
  list.push(buf);
  pooledFloats += buf.length;
}

/** {@link giveBuffer} for each defined argument. */
export function giveBuffers(...bufs: (Float32Array | undefined)[]): void {
  for (const b of bufs) if (b !== undefined) giveBuffer(b);
}

/** The sinusoidal position table of Vaswani et al.: `[length, d]`, sin on even, cos on odd features. */
export function sinusoidTable(length: number, d: number): Float32Array {
  const table = new Float32Array(length * d);
  for (let pos = 0; pos < length; pos++) {
    for (let i = 0; i < d; i += 2) {
      const angle = pos / Math.pow(10000, i / d);
      table[pos * d + i] = Math.sin(angle);
      if (i + 1 < d) table[pos * d + i + 1] = Math.cos(angle);
    }
  }
  return table;
}

/** What {@link layerNormForward} keeps for the backward pass. */
export interface LayerNormSaved {
  /** The normalised input `(x - mean) * rstd`, `[rows, d]`. */
  xhat: Float32Array;
  /** 1 / sqrt(var + eps) per row. */
  rstd: Float32Array;
}

/**
 * Layer norm over the last axis of `x` (`[rows, d]`): `y = xhat * gamma + beta`, into `out`
 * when given. When d is a multiple of 4 it runs in WebAssembly SIMD (float32 sums).
 */
export function layerNormForward(
  x: Float32Array,
  d: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
  keep: boolean,
  out?: Float32Array,
): { y: Float32Array; saved?: LayerNormSaved } {
  const rows = x.length / d;
  const y = out ?? takeBuffer(x.length);
  const xhat = keep ? takeBuffer(x.length) : undefined;
  const rstdAll = keep ? new Float32Array(rows) : undefined;
  if (d % 4 === 0 && rows > 0) {
    simdLayerNorm(x, d, gamma, beta, eps, y, xhat, rstdAll);
    return xhat === undefined ? { y } : { y, saved: { xhat, rstd: rstdAll! } };
  }
  for (let r = 0; r < rows; r++) {
    const rstd = layerNormRow(x, r * d, d, gamma, beta, eps, y, xhat);
    if (rstdAll !== undefined) rstdAll[r] = rstd;
  }
  return xhat === undefined ? { y } : { y, saved: { xhat, rstd: rstdAll! } };
}

// The per-row helpers below keep each hot loop in a small function that V8 optimises as a
// whole: a long inner loop inside an outer loop of a rarely called function otherwise runs
// in on-stack-replaced code that is thrown away at every exit of the inner loop.

/** One row of {@link layerNormForward}; returns 1 / sqrt(var + eps). */
function layerNormRow(
  x: Float32Array,
  o: number,
  d: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
  y: Float32Array,
  xhat: Float32Array | undefined,
): number {
  let sum = 0;
  for (let j = 0; j < d; j++) sum += x[o + j];
  const mean = sum / d;
  let sq = 0;
  for (let j = 0; j < d; j++) {
    const c = x[o + j] - mean;
    sq += c * c;
  }
  const rstd = 1 / Math.sqrt(sq / d + eps);
  if (xhat !== undefined) {
    for (let j = 0; j < d; j++) {
      const h = (x[o + j] - mean) * rstd;
      xhat[o + j] = h;
      y[o + j] = h * gamma[j] + beta[j];
    }
  } else {
    for (let j = 0; j < d; j++) y[o + j] = (x[o + j] - mean) * rstd * gamma[j] + beta[j];
  }
  return rstd;
}

/**
 * Backward pass of {@link layerNormForward}: returns dx (plus `residual` when given, the
 * gradient of a skip connection around the norm) as a new array and adds the parameter
 * gradients into `dGamma` / `dBeta`.
 */
export function layerNormBackward(
  dy: Float32Array,
  d: number,
  gamma: Float32Array,
  saved: LayerNormSaved,
  dGamma: Float32Array,
  dBeta: Float32Array,
  residual?: Float32Array,
): Float32Array {
  const { xhat, rstd } = saved;
  const rows = dy.length / d;
  const dx = takeBuffer(dy.length);
  if (d % 4 === 0 && rows > 0) {
    simdLayerNormBackward(dy, d, gamma, xhat, rstd, dGamma, dBeta, dx, residual);
    return dx;
  }
  const g = new Float64Array(d);
  for (let r = 0; r < rows; r++) {
    layerNormBackwardRow(dy, r * d, d, gamma, xhat, rstd[r], dGamma, dBeta, g, dx, residual);
  }
  return dx;
}

function layerNormBackwardRow(
  dy: Float32Array,
  o: number,
  d: number,
  gamma: Float32Array,
  xhat: Float32Array,
  s: number,
  dGamma: Float32Array,
  dBeta: Float32Array,
  g: Float64Array,
  dx: Float32Array,
  residual: Float32Array | undefined,
): void {
  let a = 0;
  let c = 0;
  for (let j = 0; j < d; j++) {
    const gy = dy[o + j];
    const h = xhat[o + j];
    const dh = gy * gamma[j];
    g[j] = dh;
    a += dh;
    c += dh * h;
    dGamma[j] += gy * h;
    dBeta[j] += gy;
  }
  a /= d;
  c /= d;
  if (residual === undefined) {
    for (let j = 0; j < d; j++) dx[o + j] = s * (g[j] - a - xhat[o + j] * c);
  } else {
    for (let j = 0; j < d; j++) dx[o + j] = s * (g[j] - a - xhat[o + j] * c) + residual[o + j];
  }
}

/** Adds `b` into `a` (same length) and returns `a`. */
export function addInto(a: Float32Array, b: Float32Array): Float32Array {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
  return a;
}

/** `x + u * mask` (mask optional) written over `u`, which is returned. */
export function residualAddInPlace(
  x: Float32Array,
  u: Float32Array,
  mask?: Float32Array,
): Float32Array {
  if (mask === undefined) {
    for (let i = 0; i < x.length; i++) u[i] = x[i] + u[i];
  } else {
    for (let i = 0; i < x.length; i++) u[i] = x[i] + u[i] * mask[i];
  }
  return u;
}

/** `x * mask` elementwise as a new array. */
export function mulMask(x: Float32Array, mask: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * mask[i];
  return out;
}

/** An inverted-dropout mask: 0 with probability `rate`, else `1 / (1 - rate)`. */
export function dropoutMask(size: number, rate: number, rng: Rng): Float32Array {
  const mask = new Float32Array(size);
  const keep = 1 / (1 - rate);
  for (let i = 0; i < size; i++) mask[i] = rng.next() >= rate ? keep : 0;
  return mask;
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** GELU (tanh approximation) of `x` as a new array. */
export function gelu(x: Float32Array): Float32Array {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    y[i] = 0.5 * v * (1 + Math.tanh(GELU_C * (v + 0.044715 * v * v * v)));
  }
  return y;
}

/** GELU's backward pass in place: `dy *= gelu'(x)` where `x` is the pre-activation. */
export function geluBackwardInPlace(dy: Float32Array, x: Float32Array): void {
  for (let i = 0; i < dy.length; i++) {
    const v = x[i];
    const inner = GELU_C * (v + 0.044715 * v * v * v);
    const th = Math.tanh(inner);
    const dInner = GELU_C * (1 + 3 * 0.044715 * v * v);
    dy[i] *= 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * dInner;
  }
}

/** Where a head-split operand lives: `buf[row * stride + offset + head * dk + i]`. */
export interface Strided {
  /** The buffer. */
  buf: Float32Array;
  /** Floats per row. */
  stride: number;
  /** Offset of feature 0 within a row. */
  offset: number;
}

/**
 * Copies `[B * L, stride]` rows into head-major `[B, heads, L, dk]`, multiplied by `scale`.
 */
export function splitHeads(
  src: Strided,
  b: number,
  len: number,
  heads: number,
  dk: number,
  scale = 1,
  out?: Float32Array,
): Float32Array {
  const dst = out ?? new Float32Array(b * heads * len * dk);
  const { buf, stride, offset } = src;
  for (let bi = 0; bi < b; bi++) {
    for (let t = 0; t < len; t++) {
      const rowBase = (bi * len + t) * stride + offset;
      for (let h = 0; h < heads; h++) {
        copyScaled(buf, rowBase + h * dk, dst, ((bi * heads + h) * len + t) * dk, dk, scale);
      }
    }
  }
  return dst;
}

/** `dst[o + i] = src[s + i] * scale` for i < n (a plain copy when scale is 1). */
function copyScaled(
  src: Float32Array,
  s: number,
  dst: Float32Array,
  o: number,
  n: number,
  scale: number,
): void {
  if (scale === 1) {
    for (let i = 0; i < n; i++) dst[o + i] = src[s + i];
  } else {
    for (let i = 0; i < n; i++) dst[o + i] = src[s + i] * scale;
  }
}

/**
 * The inverse of {@link splitHeads}: writes head-major `[B, heads, L, dk]` into the strided
 * rows of `dst` (times `scale`), overwriting them.
 */
export function mergeHeads(
  src: Float32Array,
  dst: Strided,
  b: number,
  len: number,
  heads: number,
  dk: number,
  scale = 1,
): void {
  const { buf, stride, offset } = dst;
  for (let bi = 0; bi < b; bi++) {
    for (let t = 0; t < len; t++) {
      const rowBase = (bi * len + t) * stride + offset;
      for (let h = 0; h < heads; h++) {
        copyScaled(src, ((bi * heads + h) * len + t) * dk, buf, rowBase + h * dk, dk, scale);
      }
    }
  }
}

/**
 * Softmax in place over the last axis of scores `[B, heads, T, S]`, with key padding
 * (`keyMask[b * S + s] === 0` is never attended) and optionally a causal mask (query t sees
 * keys s <= t). Rows with no visible key become all zeros.
 */
export function maskedSoftmaxInPlace(
  scores: Float32Array,
  b: number,
  heads: number,
  tq: number,
  sk: number,
  keyMask: Uint8Array | null,
  causal: boolean,
): void {
  for (let bi = 0; bi < b; bi++) {
    const mOff = bi * sk;
    for (let h = 0; h < heads; h++) {
      for (let t = 0; t < tq; t++) {
        const o = ((bi * heads + h) * tq + t) * sk;
        const last = causal ? Math.min(t + 1, sk) : sk;
        if (keyMask === null) softmaxRow(scores, o, last, sk);
        else maskedSoftmaxRow(scores, o, last, sk, keyMask, mOff);
      }
    }
  }
}

/** Softmax of `scores[o .. o + last)`, zeros in `[o + last, o + sk)`. */
function softmaxRow(scores: Float32Array, o: number, last: number, sk: number): void {
  let max = -Infinity;
  for (let s = 0; s < last; s++) {
    const v = scores[o + s];
    if (v > max) max = v;
  }
  if (max === -Infinity) {
    for (let s = 0; s < sk; s++) scores[o + s] = 0;
    return;
  }
  const sum = sumExpInto(scores, o, last, max, scores);
  const inv = 1 / sum;
  for (let s = 0; s < last; s++) scores[o + s] *= inv;
  for (let s = last; s < sk; s++) scores[o + s] = 0;
}

/** {@link softmaxRow} skipping the keys s with `keyMask[mOff + s] === 0`. */
function maskedSoftmaxRow(
  scores: Float32Array,
  o: number,
  last: number,
  sk: number,
  keyMask: Uint8Array,
  mOff: number,
): void {
  let max = -Infinity;
  for (let s = 0; s < last; s++) {
    if (keyMask[mOff + s] === 0) continue;
    const v = scores[o + s];
    if (v > max) max = v;
  }
  if (max === -Infinity) {
    for (let s = 0; s < sk; s++) scores[o + s] = 0;
    return;
  }
  let sum = 0;
  for (let s = 0; s < last; s++) {
    if (keyMask[mOff + s] === 0) {
      scores[o + s] = 0;
      continue;
    }
    const e = fastExp(scores[o + s] - max);
    scores[o + s] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let s = 0; s < last; s++) scores[o + s] *= inv;
  for (let s = last; s < sk; s++) scores[o + s] = 0;
}

/**
 * Softmax backward in place: given probabilities `p` and `dp` (same layout, rows of `sk`),
 * overwrites `dp` with `p * (dp - sum(dp * p))` times `scale`.
 */
export function softmaxBackwardInPlace(
  p: Float32Array,
  dp: Float32Array,
  sk: number,
  scale: number,
): void {
  const rows = p.length / sk;
  for (let r = 0; r < rows; r++) softmaxBackwardRow(p, dp, r * sk, sk, scale);
}

function softmaxBackwardRow(
  p: Float32Array,
  dp: Float32Array,
  o: number,
  sk: number,
  scale: number,
): void {
  let dot = 0;
  for (let s = 0; s < sk; s++) dot += dp[o + s] * p[o + s];
  for (let s = 0; s < sk; s++) dp[o + s] = p[o + s] * (dp[o + s] - dot) * scale;
}

/** The largest of `x[o .. o + n)` (-Infinity when n is 0; NaN is skipped). */
export function rowMax(x: Float32Array, o: number, n: number): number {
  let max = -Infinity;
  for (let j = 0; j < n; j++) {
    const v = x[o + j];
    if (v > max) max = v;
  }
  return max;
}

/** sum_j exp(x[o + j] - max) with {@link fastExp}'s method, inlined. */
export function sumExp(x: Float32Array, o: number, n: number, max: number): number {
  let sum = 0;
  for (let j = 0; j < n; j++) {
    let t = (x[o + j] - max) * LOG2E;
    if (t < -1000) t = -1000;
    const k = (t - 0.5) | 0; // round half down (t <= 0)
    const f = t - k;
    const p = 1 +
      f * (0.6931471805599453 +
          f * (0.2402265069591007 +
              f * (0.05550410866482158 +
                  f *
                    (0.009618129107628477 +
                      f * (0.0013333558146428443 + f * 0.00015403530393381606)))));
    sum += p * POW2[k + 1075];
  }
  return sum;
}

/** Like {@link sumExp}, also writing each exp(x - max) into `out` at the same index. */
export function sumExpInto(
  x: Float32Array,
  o: number,
  n: number,
  max: number,
  out: Float32Array,
): number {
  let sum = 0;
  for (let j = 0; j < n; j++) {
    let t = (x[o + j] - max) * LOG2E;
    if (t < -1000) t = -1000;
    const k = (t - 0.5) | 0;
    const f = t - k;
    const p = 1 +
      f * (0.6931471805599453 +
          f * (0.2402265069591007 +
              f * (0.05550410866482158 +
                  f *
                    (0.009618129107628477 +
                      f * (0.0013333558146428443 + f * 0.00015403530393381606)))));
    const e = p * POW2[k + 1075];
    out[o + j] = e;
    sum += e;
  }
  return sum;
}
