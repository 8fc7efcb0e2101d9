/**
 * The transformer's layers as fused, differentiable tfjs operations.
 *
 * Each encoder or decoder layer is ONE `tf.customGrad` op whose forward and backward
 * passes are written out by hand: matrix products go to the active backend's GEMM
 * (on `blas`, `cblas_sgemm` called directly on the buffers, see {@link matmul}; elsewhere
 * `tf.matMul`), and everything else (layer norm, masked softmax, head layouts, bias
 * gradients, residuals, dropout) is a loop from `_kernels.ts` or a WebAssembly SIMD
 * kernel from `_simd.ts` over the tensors' buffers. This keeps the autodiff tape short
 * (a dozen nodes per training step instead of hundreds) and avoids tfjs-cpu's slow
 * broadcasting, transposes and reductions.
 *
 * Work buffers come from the pool of `_kernels.ts` ({@link takeBuffer}) and go back when
 * their last reader is done: a layer's activations at the end of its backward pass (or
 * its `release()` when none will run), temporaries of the backward pass at once.
 *
 * Layout: activations are 2-D `[rows, d]` with rows `b * length + position`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { Rng } from "../../core/random.ts";
import { activeBlas } from "../backends/blas.ts";
import type { BlasLibrary } from "../backends/_blas_ffi.ts";
import {
  addInto,
  dropoutMask,
  gelu,
  geluBackwardInPlace,
  giveBuffer,
  giveBuffers,
  layerNormBackward,
  layerNormForward,
  maskedSoftmaxInPlace,
  mergeHeads,
  mulMask,
  residualAddInPlace,
  softmaxBackwardInPlace,
  splitHeads,
  type Strided,
  takeBuffer,
} from "./_kernels.ts";
import { giveSimdMatrix, takeSimdMatrix } from "./_simd.ts";

/** A matrix operand: a tensor, or a buffer with its shape. */
export type Mat = tf.Tensor | { data: Float32Array; shape: number[] };

/** The values of a float32 tensor (tfjs-cpu's own buffer: never mutate it). */
export function values(t: tf.Tensor): Float32Array {
  return t.dataSync() as Float32Array;
}

/**
 * `a · b` (batched when rank 3) with an optional bias `[cols]` and ReLU fused in. Returns a
 * fresh buffer that the caller owns, or `out` (same size as the product) filled with it.
 *
 * On the `blas` backend the product is computed by `cblas_sgemm` straight from the
 * buffers, making exactly the calls the backend's matMul kernels make (bias pre-filled and
 * accumulated with beta = 1), so the results equal the tfjs path's bit for bit without
 * tfjs's tensor bookkeeping. Other backends go through `tf.matMul`.
 */
export function matmul(
  a: Mat,
  b: Mat,
  transA = false,
  transB = false,
  bias?: tf.Tensor,
  relu = false,
  out?: Float32Array,
): Float32Array {
  const lib = relu ? undefined : activeBlas();
  if (lib !== undefined) return blasProduct(lib, a, b, transA, transB, bias, out);
  let result: Float32Array | undefined;
  // (tidy must not return the buffer: it would walk every element looking for tensors)
  tf.tidy(() => {
    const at = a instanceof tf.Tensor ? a : tf.tensor(a.data, a.shape, "float32");
    const bt = b instanceof tf.Tensor ? b : tf.tensor(b.data, b.shape, "float32");
    const product = bias !== undefined || relu
      ? tf.fused.matMul({
        a: at,
        b: bt,
        transposeA: transA,
        transposeB: transB,
        bias,
        activation: relu ? "relu" : "linear",
      })
      : tf.matMul(at, bt, transA, transB);
    result = product.dataSync() as Float32Array;
  });
  if (out === undefined) return result!;
  out.set(result!);
  return out;
}

function matData(m: Mat): Float32Array {
  return m instanceof tf.Tensor ? values(m) : m.data;
}

/** {@link matmul} on OpenBLAS: the decomposition of the `blas` backend's BatchMatMul kernel. */
function blasProduct(
  lib: BlasLibrary,
  a: Mat,
  b: Mat,
  transA: boolean,
  transB: boolean,
  bias: tf.Tensor | undefined,
  out: Float32Array | undefined,
): Float32Array {
  const as = a.shape;
  const bs = b.shape;
  const ar = as.length;
  const br = bs.length;
  if (ar < 2 || br < 2 || ar > 3 || br > 3) {
    throw new RangeError(`matmul: operands of rank 2 or 3 expected, got [${as}] and [${bs}]`);
  }
  const m = transA ? as[ar - 1] : as[ar - 2];
  const k = transA ? as[ar - 2] : as[ar - 1];
  const kb = transB ? bs[br - 1] : bs[br - 2];
  const n = transB ? bs[br - 2] : bs[br - 1];
  const batchA = ar === 3 ? as[0] : 1;
  const batchB = br === 3 ? bs[0] : 1;
  const batch = Math.max(batchA, batchB);
  if (k !== kb || (batchA !== batch && batchA !== 1) || (batchB !== batch && batchB !== 1)) {
    throw new RangeError(
      `matmul: shapes [${as}] and [${bs}] do not match (transA ${transA}, transB ${transB})`,
    );
  }
  const av = matData(a);
  const bv = matData(b);
  const size = batch * m * n;
  const c = out ?? new Float32Array(size);
  if (c.length !== size) throw new RangeError(`matmul: out has ${c.length} floats, not ${size}`);
  if (av.length < batchA * m * k || bv.length < batchB * k * n) {
    throw new RangeError(`matmul: a buffer is smaller than its shape`);
  }
  let beta = 0;
  if (bias !== undefined) {
    const bb = values(bias);
    if (size === 0) {
      // nothing to fill
    } else if (bb.length === n) {
      // one row, then doubling copies
      c.set(bb, 0);
      for (let filled = n; filled < size; filled *= 2) {
        c.copyWithin(filled, 0, Math.min(filled, size - filled));
      }
    } else if (bb.length === 1) {
      c.fill(bb[0]);
    } else {
      throw new RangeError(`matmul: a bias of ${bb.length} values for ${n} columns`);
    }
    beta = 1;
  }
  if (size === 0) return c;
  if (k === 0) {
    if (beta === 0) c.fill(0);
    return c;
  }
  const lda = transA ? m : k;
  const ldb = transB ? k : n;
  if (batchB === 1 && !transA && batchA === batch) {
    lib.gemm(false, transB, batch * m, n, k, 1, av, 0, lda, bv, 0, ldb, beta, c, 0, n);
    return c;
  }
  const aSize = m * k;
  const bSize = k * n;
  const cSize = m * n;
  for (let i = 0; i < batch; i++) {
    const ao = batchA === 1 ? 0 : i * aSize;
    const bo = batchB === 1 ? 0 : i * bSize;
    lib.gemm(transA, transB, m, n, k, 1, av, ao, lda, bv, bo, ldb, beta, c, i * cSize, n);
  }
  return c;
}

/** The FFN activation. */
export type Activation = "relu" | "gelu";

/** Model dimensions the layers need. */
export interface Dims {
  /** Model width. */
  d: number;
  /** Attention heads. */
  heads: number;
  /** FFN inner width. */
  ffn: number;
  /** FFN activation. */
  activation: Activation;
  /** Layer-norm epsilon. */
  eps: number;
}

/** Per-call settings: dropout only when training. */
export interface RunOptions {
  /** Training mode (dropout on). */
  training: boolean;
  /** Residual/embedding dropout rate. */
  dropout: number;
  /** Attention-probability dropout rate. */
  attentionDropout: number;
  /** Source of dropout masks. */
  rng: Rng;
}

/** Parameter names of an encoder layer, in the order the layer op takes them. */
export const ENCODER_PARAMS = [
  "ln1.g",
  "ln1.b",
  "qkv.w",
  "qkv.b",
  "out.w",
  "out.b",
  "ln2.g",
  "ln2.b",
  "ff1.w",
  "ff1.b",
  "ff2.w",
  "ff2.b",
] as const;

/** Parameter names of a decoder layer, in the order the layer op takes them. */
export const DECODER_PARAMS = [
  "ln1.g",
  "ln1.b",
  "qkv.w",
  "qkv.b",
  "out.w",
  "out.b",
  "lnc.g",
  "lnc.b",
  "q.w",
  "q.b",
  "kv.w",
  "kv.b",
  "cout.w",
  "cout.b",
  "ln2.g",
  "ln2.b",
  "ff1.w",
  "ff1.b",
  "ff2.w",
  "ff2.b",
] as const;

/** Shapes of a layer's parameters. */
export function layerParamShapes(kind: "encoder" | "decoder", dims: Dims): Map<string, number[]> {
  const { d, ffn } = dims;
  const shapes = new Map<string, number[]>([
    ["ln1.g", [d]],
    ["ln1.b", [d]],
    ["qkv.w", [d, 3 * d]],
    ["qkv.b", [3 * d]],
    ["out.w", [d, d]],
    ["out.b", [d]],
  ]);
  if (kind === "decoder") {
    shapes.set("lnc.g", [d]);
    shapes.set("lnc.b", [d]);
    shapes.set("q.w", [d, d]);
    shapes.set("q.b", [d]);
    shapes.set("kv.w", [d, 2 * d]);
    shapes.set("kv.b", [2 * d]);
    shapes.set("cout.w", [d, d]);
    shapes.set("cout.b", [d]);
  }
  shapes.set("ln2.g", [d]);
  shapes.set("ln2.b", [d]);
  shapes.set("ff1.w", [d, ffn]);
  shapes.set("ff1.b", [ffn]);
  shapes.set("ff2.w", [ffn, d]);
  shapes.set("ff2.b", [d]);
  return shapes;
}

/**
 * A layer's parameters by name: the tensors (for matrix products) and, lazily, their
 * buffers (for the loops).
 */
export class ParamView {
  readonly #tensors: ReadonlyMap<string, tf.Tensor>;
  readonly #arrays = new Map<string, Float32Array>();

  /** Wraps named tensors. */
  constructor(tensors: ReadonlyMap<string, tf.Tensor>) {
    this.#tensors = tensors;
  }

  /** The tensor named `name` (or, after it was disposed, its saved values). */
  t(name: string): Mat {
    const t = this.#tensors.get(name);
    if (t === undefined) throw new Error(`unknown parameter ${name}`);
    if (!t.isDisposed) return t;
    return { data: this.a(name), shape: t.shape };
  }

  /** The tensor named `name` itself (for fused biases). */
  tensor(name: string): tf.Tensor {
    const t = this.#tensors.get(name);
    if (t === undefined) throw new Error(`unknown parameter ${name}`);
    return t;
  }

  /** The values of `name`. */
  a(name: string): Float32Array {
    let a = this.#arrays.get(name);
    if (a === undefined) {
      a = values(this.tensor(name));
      this.#arrays.set(name, a);
    }
    return a;
  }
}

/** Runs the backward pass of a block: maps dy to dx, writing parameter gradients into `grads`. */
export type Backward = (dy: Float32Array, grads: Map<string, Float32Array>) => Float32Array;

/** Which keys each query may see. */
export interface Masking {
  /** `[b * keys]`: 0 where the key is padding. */
  keyMask: Uint8Array | null;
  /** Query t sees keys <= t. */
  causal: boolean;
}

/** A multi-head attention forward pass with its backward pass. */
interface AttentionResult {
  /** `[b * tq, d]` attention outputs (heads concatenated). */
  out: Float32Array;
  /** Writes (overwrites) the gradients of q, k and v into the given strided destinations. */
  backward(dOut: Float32Array, dQ: Strided, dK: Strided, dV: Strided): void;
  /** Returns the work buffers (`out` included) to the pool: call when done with both. */
  release(): void;
}

/**
 * Multi-head scaled dot-product attention over whole sequences: queries `[b * tq]`,
 * keys/values `[b * sk]` read from strided buffers. Scores and outputs are batched matrix
 * products over `b * heads`: on the `blas` backend `cblas_sgemm` reads each head straight
 * from the strided rows (leading dimensions) and writes into them; elsewhere the heads are
 * copied into head-major blocks for `tf.matMul`.
 */
function attention(
  q: Strided,
  k: Strided,
  v: Strided,
  b: number,
  tq: number,
  sk: number,
  dims: Dims,
  masking: Masking,
  run: RunOptions,
): AttentionResult {
  const lib = activeBlas();
  if (lib !== undefined) return stridedAttention(lib, q, k, v, b, tq, sk, dims, masking, run);
  const { heads, d } = dims;
  const dk = d / heads;
  const scale = 1 / Math.sqrt(dk);
  const bh = b * heads;
  const qh = splitHeads(q, b, tq, heads, dk, scale);
  const kh = splitHeads(k, b, sk, heads, dk);
  const vh = splitHeads(v, b, sk, heads, dk);
  const p = matmul(
    { data: qh, shape: [bh, tq, dk] },
    { data: kh, shape: [bh, sk, dk] },
    false,
    true,
  );
  maskedSoftmaxInPlace(p, b, heads, tq, sk, masking.keyMask, masking.causal);
  const rate = run.training ? run.attentionDropout : 0;
  const mask = rate > 0 ? dropoutMask(p.length, rate, run.rng) : undefined;
  const pd = mask === undefined ? p : mulMask(p, mask);
  const oh = matmul({ data: pd, shape: [bh, tq, sk] }, { data: vh, shape: [bh, sk, dk] });
  const out = new Float32Array(b * tq * d);
  mergeHeads(oh, { buf: out, stride: d, offset: 0 }, b, tq, heads, dk);
  return {
    out,
    backward(dOut, dQd, dKd, dVd) {
      const doh = splitHeads({ buf: dOut, stride: d, offset: 0 }, b, tq, heads, dk);
      const dpd = matmul(
        { data: doh, shape: [bh, tq, dk] },
        { data: vh, shape: [bh, sk, dk] },
        false,
        true,
      );
      const dV = matmul(
        { data: pd, shape: [bh, tq, sk] },
        { data: doh, shape: [bh, tq, dk] },
        true,
        false,
      );
      if (mask !== undefined) mulInPlace(dpd, mask);
      softmaxBackwardInPlace(p, dpd, sk, 1);
      const ds = { data: dpd, shape: [bh, tq, sk] };
      const dQ = matmul(ds, { data: kh, shape: [bh, sk, dk] });
      const dK = matmul(ds, { data: qh, shape: [bh, tq, dk] }, true, false);
      mergeHeads(dQ, dQd, b, tq, heads, dk, scale);
      mergeHeads(dK, dKd, b, sk, heads, dk);
      mergeHeads(dV, dVd, b, sk, heads, dk);
    },
    release() {},
  };
}

/** `x *= y` elementwise. */
function mulInPlace(x: Float32Array, y: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] *= y[i];
}

/** {@link attention} on OpenBLAS, every head read from and written to the strided rows. */
function stridedAttention(
  lib: BlasLibrary,
  q: Strided,
  k: Strided,
  v: Strided,
  b: number,
  tq: number,
  sk: number,
  dims: Dims,
  masking: Masking,
  run: RunOptions,
): AttentionResult {
  const { heads, d } = dims;
  const dk = d / heads;
  const scale = 1 / Math.sqrt(dk);
  const block = tq * sk;
  // probabilities (slot 0) and their gradient (slot 1) in SIMD memory, where the softmax
  // and its backward pass run when no key is padding
  const probs = takeSimdMatrix(b * heads * tq, sk, 1);
  const p = probs.slot(0);
  for (let bi = 0; bi < b; bi++) {
    for (let h = 0; h < heads; h++) {
      lib.gemm(
        false,
        true,
        tq,
        sk,
        dk,
        scale,
        q.buf,
        bi * tq * q.stride + q.offset + h * dk,
        q.stride,
        k.buf,
        bi * sk * k.stride + k.offset + h * dk,
        k.stride,
        0,
        p,
        (bi * heads + h) * block,
        sk,
      );
    }
  }
  if (masking.keyMask === null) probs.softmax(0, tq, masking.causal);
  else maskedSoftmaxInPlace(p, b, heads, tq, sk, masking.keyMask, masking.causal);
  const rate = run.training ? run.attentionDropout : 0;
  const mask = rate > 0 ? dropoutMask(p.length, rate, run.rng) : undefined;
  const pd = mask === undefined ? p : mulMask(p, mask);
  const out = takeBuffer(b * tq * d);
  for (let bi = 0; bi < b; bi++) {
    for (let h = 0; h < heads; h++) {
      lib.gemm(
        false,
        false,
        tq,
        dk,
        sk,
        1,
        pd,
        (bi * heads + h) * block,
        sk,
        v.buf,
        bi * sk * v.stride + v.offset + h * dk,
        v.stride,
        0,
        out,
        bi * tq * d + h * dk,
        d,
      );
    }
  }
  return {
    out,
    backward(dOut, dQ, dK, dV) {
      const ds = probs.slot(1);
      for (let bi = 0; bi < b; bi++) {
        for (let h = 0; h < heads; h++) {
          const o = (bi * heads + h) * block;
          const dOff = bi * tq * d + h * dk;
          const vOff = bi * sk * v.stride + v.offset + h * dk;
          // d(probabilities) = dO V^T; dV = P^T dO
          lib.gemm(
            false,
            true,
            tq,
            sk,
            dk,
            1,
            dOut,
            dOff,
            d,
            v.buf,
            vOff,
            v.stride,
            0,
            ds,
            o,
            sk,
          );
          lib.gemm(
            true,
            false,
            sk,
            dk,
            tq,
            1,
            pd,
            o,
            sk,
            dOut,
            dOff,
            d,
            0,
            dV.buf,
            bi * sk * dV.stride + dV.offset + h * dk,
            dV.stride,
          );
        }
      }
      if (mask !== undefined) mulInPlace(ds, mask);
      probs.softmaxGrad(0, 1);
      for (let bi = 0; bi < b; bi++) {
        for (let h = 0; h < heads; h++) {
          const o = (bi * heads + h) * block;
          // scores = scale Q K^T: dQ = scale dS K, dK = scale dS^T Q
          lib.gemm(
            false,
            false,
            tq,
            dk,
            sk,
            scale,
            ds,
            o,
            sk,
            k.buf,
            bi * sk * k.stride + k.offset + h * dk,
            k.stride,
            0,
            dQ.buf,
            bi * tq * dQ.stride + dQ.offset + h * dk,
            dQ.stride,
          );
          lib.gemm(
            true,
            false,
            sk,
            dk,
            tq,
            scale,
            ds,
            o,
            sk,
            q.buf,
            bi * tq * q.stride + q.offset + h * dk,
            q.stride,
            0,
            dK.buf,
            bi * sk * dK.stride + dK.offset + h * dk,
            dK.stride,
          );
        }
      }
    },
    release() {
      giveSimdMatrix(probs);
      giveBuffers(out, pd === p ? undefined : pd);
    },
  };
}

const onesCache = new Map<number, Float32Array>();

/** Column sums of `dy` (`[rows, cols]`), i.e. a bias gradient, as `1^T dy` on the GEMM backend. */
function biasGrad(dy: Float32Array, rows: number, cols: number): Float32Array {
  let ones = onesCache.get(rows);
  if (ones === undefined) {
    ones = new Float32Array(rows).fill(1);
    if (onesCache.size > 64) onesCache.clear();
    onesCache.set(rows, ones);
  }
  return matmul({ data: ones, shape: [1, rows] }, { data: dy, shape: [rows, cols] });
}

function residualMask(size: number, run: RunOptions): Float32Array | undefined {
  return run.training && run.dropout > 0 ? dropoutMask(size, run.dropout, run.rng) : undefined;
}

function accumulate(grads: Map<string, Float32Array>, name: string, g: Float32Array): void {
  const prev = grads.get(name);
  if (prev === undefined) grads.set(name, g);
  else for (let i = 0; i < g.length; i++) prev[i] += g[i];
}

/** A sublayer's forward result. */
interface Block {
  /** Output rows. */
  y: Float32Array;
  /** The backward pass (at most once); it returns the forward pass's work buffers. */
  backward: Backward;
  /** Returns the forward pass's work buffers when no backward pass will run. */
  release(): void;
}

/** Pre-LN self-attention sublayer: `x + drop(Attn(LN(x)) W_o + b_o)`. */
function selfAttentionBlock(
  x: Float32Array,
  b: number,
  len: number,
  p: ParamView,
  dims: Dims,
  masking: Masking,
  run: RunOptions,
): Block {
  const { d } = dims;
  const n = b * len;
  const ln = layerNormForward(x, d, p.a("ln1.g"), p.a("ln1.b"), dims.eps, true);
  const qkv = matmul(
    { data: ln.y, shape: [n, d] },
    p.t("qkv.w"),
    false,
    false,
    p.tensor("qkv.b"),
    false,
    takeBuffer(n * 3 * d),
  );
  const src = (offset: number): Strided => ({ buf: qkv, stride: 3 * d, offset });
  const att = attention(src(0), src(d), src(2 * d), b, len, len, dims, masking, run);
  const u = matmul(
    { data: att.out, shape: [n, d] },
    p.t("out.w"),
    false,
    false,
    p.tensor("out.b"),
    false,
    takeBuffer(n * d),
  );
  const mask = residualMask(u.length, run);
  const y = residualAddInPlace(x, u, mask);
  return {
    y,
    backward(dy, grads) {
      const du = mask === undefined ? dy : mulMask(dy, mask);
      accumulate(
        grads,
        "out.w",
        matmul({ data: att.out, shape: [n, d] }, { data: du, shape: [n, d] }, true),
      );
      accumulate(grads, "out.b", biasGrad(du, n, d));
      const dO = matmul(
        { data: du, shape: [n, d] },
        p.t("out.w"),
        false,
        true,
        undefined,
        false,
        takeBuffer(n * d),
      );
      const dqkv = takeBuffer(n * 3 * d);
      att.backward(
        dO,
        { buf: dqkv, stride: 3 * d, offset: 0 },
        { buf: dqkv, stride: 3 * d, offset: d },
        { buf: dqkv, stride: 3 * d, offset: 2 * d },
      );
      accumulate(
        grads,
        "qkv.w",
        matmul({ data: ln.y, shape: [n, d] }, { data: dqkv, shape: [n, 3 * d] }, true),
      );
      accumulate(grads, "qkv.b", biasGrad(dqkv, n, 3 * d));
      const da = matmul(
        { data: dqkv, shape: [n, 3 * d] },
        p.t("qkv.w"),
        false,
        true,
        undefined,
        false,
        dO,
      );
      const dg = new Float32Array(d);
      const dbeta = new Float32Array(d);
      const dx = layerNormBackward(da, d, p.a("ln1.g"), ln.saved!, dg, dbeta, dy);
      accumulate(grads, "ln1.g", dg);
      accumulate(grads, "ln1.b", dbeta);
      giveBuffers(da, dqkv, qkv, ln.y, ln.saved!.xhat, du === dy ? undefined : du);
      att.release();
      return dx;
    },
    release() {
      giveBuffers(qkv, ln.y, ln.saved!.xhat);
      att.release();
    },
  };
}

/**
 * Pre-LN cross-attention sublayer: `x + drop(Attn(LN(x) W_q, enc W_kv) W_o + b_o)`.
 * Its backward adds the encoder-output gradient into `dEnc`.
 */
function crossAttentionBlock(
  x: Float32Array,
  enc: Float32Array,
  b: number,
  tLen: number,
  sLen: number,
  p: ParamView,
  dims: Dims,
  srcMask: Uint8Array | null,
  run: RunOptions,
  dEnc: Float32Array,
): Block {
  const { d } = dims;
  const nt = b * tLen;
  const ns = b * sLen;
  const ln = layerNormForward(x, d, p.a("lnc.g"), p.a("lnc.b"), dims.eps, true);
  const q = matmul(
    { data: ln.y, shape: [nt, d] },
    p.t("q.w"),
    false,
    false,
    p.tensor("q.b"),
    false,
    takeBuffer(nt * d),
  );
  const kv = matmul(
    { data: enc, shape: [ns, d] },
    p.t("kv.w"),
    false,
    false,
    p.tensor("kv.b"),
    false,
    takeBuffer(ns * 2 * d),
  );
  const att = attention(
    { buf: q, stride: d, offset: 0 },
    { buf: kv, stride: 2 * d, offset: 0 },
    { buf: kv, stride: 2 * d, offset: d },
    b,
    tLen,
    sLen,
    dims,
    { keyMask: srcMask, causal: false },
    run,
  );
  const u = matmul(
    { data: att.out, shape: [nt, d] },
    p.t("cout.w"),
    false,
    false,
    p.tensor("cout.b"),
    false,
    takeBuffer(nt * d),
  );
  const mask = residualMask(u.length, run);
  const y = residualAddInPlace(x, u, mask);
  return {
    y,
    backward(dy, grads) {
      const du = mask === undefined ? dy : mulMask(dy, mask);
      accumulate(
        grads,
        "cout.w",
        matmul({ data: att.out, shape: [nt, d] }, { data: du, shape: [nt, d] }, true),
      );
      accumulate(grads, "cout.b", biasGrad(du, nt, d));
      const dO = matmul(
        { data: du, shape: [nt, d] },
        p.t("cout.w"),
        false,
        true,
        undefined,
        false,
        takeBuffer(nt * d),
      );
      const dq = takeBuffer(nt * d);
      const dkv = takeBuffer(ns * 2 * d);
      att.backward(
        dO,
        { buf: dq, stride: d, offset: 0 },
        { buf: dkv, stride: 2 * d, offset: 0 },
        { buf: dkv, stride: 2 * d, offset: d },
      );
      accumulate(
        grads,
        "q.w",
        matmul({ data: ln.y, shape: [nt, d] }, { data: dq, shape: [nt, d] }, true),
      );
      accumulate(grads, "q.b", biasGrad(dq, nt, d));
      accumulate(
        grads,
        "kv.w",
        matmul({ data: enc, shape: [ns, d] }, { data: dkv, shape: [ns, 2 * d] }, true),
      );
      accumulate(grads, "kv.b", biasGrad(dkv, ns, 2 * d));
      const de = matmul(
        { data: dkv, shape: [ns, 2 * d] },
        p.t("kv.w"),
        false,
        true,
        undefined,
        false,
        takeBuffer(ns * d),
      );
      addInto(dEnc, de);
      const dc = matmul(
        { data: dq, shape: [nt, d] },
        p.t("q.w"),
        false,
        true,
        undefined,
        false,
        dO,
      );
      const dg = new Float32Array(d);
      const dbeta = new Float32Array(d);
      const dx = layerNormBackward(dc, d, p.a("lnc.g"), ln.saved!, dg, dbeta, dy);
      accumulate(grads, "lnc.g", dg);
      accumulate(grads, "lnc.b", dbeta);
      giveBuffers(dc, dq, dkv, de, q, kv, ln.y, ln.saved!.xhat, du === dy ? undefined : du);
      att.release();
      return dx;
    },
    release() {
      giveBuffers(q, kv, ln.y, ln.saved!.xhat);
      att.release();
    },
  };
}

/** Pre-LN feed-forward sublayer: `x + drop(act(LN(x) W_1 + b_1) W_2 + b_2)`. */
function feedForwardBlock(
  x: Float32Array,
  n: number,
  p: ParamView,
  dims: Dims,
  run: RunOptions,
): Block {
  const { d, ffn } = dims;
  const ln = layerNormForward(x, d, p.a("ln2.g"), p.a("ln2.b"), dims.eps, true);
  const relu = dims.activation === "relu";
  // With ReLU the hidden layer and its gradient share a SIMD memory (slots 0 and 1), where
  // the activation and its backward pass run vectorised.
  const hidden = relu ? takeSimdMatrix(n, ffn, 1) : undefined;
  const pre = matmul(
    { data: ln.y, shape: [n, d] },
    p.t("ff1.w"),
    false,
    false,
    p.tensor("ff1.b"),
    false,
    hidden?.slot(0) ?? takeBuffer(n * ffn),
  );
  if (hidden !== undefined) hidden.relu(0);
  const h = relu ? pre : gelu(pre);
  const z = matmul(
    { data: h, shape: [n, ffn] },
    p.t("ff2.w"),
    false,
    false,
    p.tensor("ff2.b"),
    false,
    takeBuffer(n * d),
  );
  const mask = residualMask(z.length, run);
  const y = residualAddInPlace(x, z, mask);
  return {
    y,
    backward(dy, grads) {
      const dz = mask === undefined ? dy : mulMask(dy, mask);
      accumulate(
        grads,
        "ff2.w",
        matmul({ data: h, shape: [n, ffn] }, { data: dz, shape: [n, d] }, true),
      );
      accumulate(grads, "ff2.b", biasGrad(dz, n, d));
      const dh = matmul(
        { data: dz, shape: [n, d] },
        p.t("ff2.w"),
        false,
        true,
        undefined,
        false,
        hidden?.slot(1) ?? takeBuffer(n * ffn),
      );
      if (hidden !== undefined) hidden.reluGrad(1, 0);
      else geluBackwardInPlace(dh, pre);
      accumulate(
        grads,
        "ff1.w",
        matmul({ data: ln.y, shape: [n, d] }, { data: dh, shape: [n, ffn] }, true),
      );
      accumulate(grads, "ff1.b", biasGrad(dh, n, ffn));
      const dc = matmul(
        { data: dh, shape: [n, ffn] },
        p.t("ff1.w"),
        false,
        true,
        undefined,
        false,
        takeBuffer(n * d),
      );
      const dg = new Float32Array(d);
      const dbeta = new Float32Array(d);
      const dx = layerNormBackward(dc, d, p.a("ln2.g"), ln.saved!, dg, dbeta, dy);
      accumulate(grads, "ln2.g", dg);
      accumulate(grads, "ln2.b", dbeta);
      if (hidden !== undefined) giveSimdMatrix(hidden);
      else giveBuffers(dh, h, pre);
      giveBuffers(dc, ln.y, ln.saved!.xhat);
      if (dz !== dy) giveBuffer(dz);
      return dx;
    },
    release() {
      if (hidden !== undefined) giveSimdMatrix(hidden);
      else giveBuffers(h, pre);
      giveBuffers(ln.y, ln.saved!.xhat);
    },
  };
}

/** One encoder layer on `[b * len, d]` rows (self-attention with source padding mask, FFN). */
export function encoderLayerForward(
  x: Float32Array,
  b: number,
  len: number,
  p: ParamView,
  dims: Dims,
  srcMask: Uint8Array | null,
  run: RunOptions,
): {
  y: Float32Array;
  backward: (dy: Float32Array) => { dx: Float32Array; grads: Map<string, Float32Array> };
  release(): void;
} {
  const att = selfAttentionBlock(x, b, len, p, dims, { keyMask: srcMask, causal: false }, run);
  const ff = feedForwardBlock(att.y, b * len, p, dims, run);
  giveBuffer(att.y); // read only by the feed-forward block's forward pass
  return {
    y: ff.y,
    backward(dy) {
      const grads = new Map<string, Float32Array>();
      const d1 = ff.backward(dy, grads);
      const dx = att.backward(d1, grads);
      giveBuffer(d1);
      return { dx, grads };
    },
    release() {
      ff.release();
      att.release();
    },
  };
}

/** One decoder layer: causal self-attention, cross-attention to `enc`, FFN. */
export function decoderLayerForward(
  x: Float32Array,
  enc: Float32Array,
  b: number,
  tLen: number,
  sLen: number,
  p: ParamView,
  dims: Dims,
  tgtMask: Uint8Array | null,
  srcMask: Uint8Array | null,
  run: RunOptions,
): {
  y: Float32Array;
  backward: (
    dy: Float32Array,
  ) => { dx: Float32Array; dEnc: Float32Array; grads: Map<string, Float32Array> };
} {
  const self = selfAttentionBlock(x, b, tLen, p, dims, { keyMask: tgtMask, causal: true }, run);
  const dEnc = new Float32Array(enc.length);
  const cross = crossAttentionBlock(self.y, enc, b, tLen, sLen, p, dims, srcMask, run, dEnc);
  giveBuffer(self.y); // read only by the forward passes of the next blocks
  const ff = feedForwardBlock(cross.y, b * tLen, p, dims, run);
  giveBuffer(cross.y);
  return {
    y: ff.y,
    backward(dy) {
      const grads = new Map<string, Float32Array>();
      const d2 = ff.backward(dy, grads);
      const d1 = cross.backward(d2, grads);
      giveBuffer(d2);
      const dx = self.backward(d1, grads);
      giveBuffer(d1);
      return { dx, dEnc, grads };
    },
  };
}

type GradFunc = (dy: tf.Tensor) => tf.Tensor[];

/**
 * Wraps a hand-written forward/backward pair as a differentiable op over `inputs`.
 * `forward` receives the input tensors and returns the output buffer, its shape and a
 * backward function giving one gradient buffer per input.
 */
function customOp(
  inputs: tf.Tensor[],
  forward: (
    inputs: tf.Tensor[],
  ) => { out: Float32Array; shape: number[]; backward: (dy: Float32Array) => Float32Array[] },
): tf.Tensor {
  const op = tf.customGrad((...args: unknown[]) => {
    const ins = args.slice(0, inputs.length) as tf.Tensor[];
    const res = forward(ins);
    const gradFunc: GradFunc = (dy) => {
      const grads = res.backward(values(dy));
      return grads.map((g, i) => tf.tensor(g, ins[i].shape, "float32"));
    };
    return { value: tf.tensor(res.out, res.shape, "float32"), gradFunc };
  });
  return op(...inputs);
}

function paramView(names: readonly string[], tensors: tf.Tensor[]): ParamView {
  return new ParamView(new Map(names.map((name, i) => [name, tensors[i]])));
}

/** Differentiable encoder layer: `x` `[b * len, d]` and the layer's parameters in {@link ENCODER_PARAMS} order. */
export function encoderLayerOp(
  x: tf.Tensor2D,
  params: tf.Tensor[],
  b: number,
  len: number,
  dims: Dims,
  srcMask: Uint8Array | null,
  run: RunOptions,
): tf.Tensor2D {
  return customOp([x, ...params], (ins) => {
    const p = paramView(ENCODER_PARAMS, ins.slice(1));
    const layer = encoderLayerForward(values(ins[0]), b, len, p, dims, srcMask, run);
    return {
      out: layer.y,
      shape: [b * len, dims.d],
      backward(dy) {
        const { dx, grads } = layer.backward(dy);
        return [dx, ...ENCODER_PARAMS.map((name) => grads.get(name)!)];
      },
    };
  }) as tf.Tensor2D;
}

/** Differentiable decoder layer: `x` `[b * tLen, d]`, `enc` `[b * sLen, d]` and parameters in {@link DECODER_PARAMS} order. */
export function decoderLayerOp(
  x: tf.Tensor2D,
  enc: tf.Tensor2D,
  params: tf.Tensor[],
  b: number,
  tLen: number,
  sLen: number,
  dims: Dims,
  tgtMask: Uint8Array | null,
  srcMask: Uint8Array | null,
  run: RunOptions,
): tf.Tensor2D {
  return customOp([x, enc, ...params], (ins) => {
    const p = paramView(DECODER_PARAMS, ins.slice(2));
    const layer = decoderLayerForward(
      values(ins[0]),
      values(ins[1]),
      b,
      tLen,
      sLen,
      p,
      dims,
      tgtMask,
      srcMask,
      run,
    );
    return {
      out: layer.y,
      shape: [b * tLen, dims.d],
      backward(dy) {
        const { dx, dEnc, grads } = layer.backward(dy);
        return [dx, dEnc, ...DECODER_PARAMS.map((name) => grads.get(name)!)];
      },
    };
  }) as tf.Tensor2D;
}

/** Differentiable layer norm over the last axis of `x` `[rows, d]`. */
export function layerNormOp(
  x: tf.Tensor2D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  eps: number,
): tf.Tensor2D {
  const d = x.shape[1];
  return customOp([x, gamma, beta], (ins) => {
    const g = values(ins[1]);
    const ln = layerNormForward(values(ins[0]), d, g, values(ins[2]), eps, true);
    return {
      out: ln.y,
      shape: x.shape,
      backward(dy) {
        const dg = new Float32Array(d);
        const db = new Float32Array(d);
        const dx = layerNormBackward(dy, d, g, ln.saved!, dg, db);
        return [dx, dg, db];
      },
    };
  }) as tf.Tensor2D;
}

/** One embedding lookup: ids (row-major `[b, len]`) whose positions are `row % len`. */
export interface Lookup {
  /** Token ids, `b * len` of them. */
  ids: Int32Array;
  /** Sequence length (for positions). */
  len: number;
}

/** `out[o + j] = w[src + j] * scale + pe[pos + j]` for j < d. */
export function embedRow(
  w: Float32Array,
  src: number,
  scale: number,
  pe: Float32Array,
  pos: number,
  out: Float32Array,
  o: number,
  d: number,
): void {
  for (let j = 0; j < d; j++) out[o + j] = w[src + j] * scale + pe[pos + j];
}

function embedGradRow(
  dw: Float32Array,
  dst: number,
  dy: Float32Array,
  o: number,
  mask: Float32Array | undefined,
  scale: number,
  d: number,
): void {
  if (mask === undefined) {
    for (let j = 0; j < d; j++) dw[dst + j] += dy[o + j] * scale;
  } else {
    for (let j = 0; j < d; j++) dw[dst + j] += dy[o + j] * mask[o + j] * scale;
  }
}

/**
 * Differentiable embedding lookup of one or more id blocks in the same table, packed into
 * one `[sum of rows, d]` output: `table[id] * scale + position`, with dropout when training.
 * Packing the lookups that share a table into one op gives the table one dense gradient.
 */
export function embedOp(
  table: tf.Tensor2D,
  lookups: readonly Lookup[],
  scale: number,
  positions: (len: number) => Float32Array,
  run: RunOptions,
): tf.Tensor2D {
  const [vocab, d] = table.shape;
  const rows = lookups.reduce((sum, l) => sum + l.ids.length, 0);
  return customOp([table], (ins) => {
    const w = values(ins[0]);
    const out = new Float32Array(rows * d);
    let r = 0;
    for (const { ids, len } of lookups) {
      const pe = positions(len);
      for (let i = 0; i < ids.length; i++, r++) {
        const id = ids[i];
        if (id < 0 || id >= vocab) {
          throw new RangeError(`token id ${id} outside the vocabulary [0, ${vocab})`);
        }
        embedRow(w, id * d, scale, pe, (i % len) * d, out, r * d, d);
      }
    }
    const mask = residualMask(out.length, run);
    const y = mask === undefined ? out : mulMask(out, mask);
    return {
      out: y,
      shape: [rows, d],
      backward(dy) {
        const dw = new Float32Array(vocab * d);
        let row = 0;
        for (const { ids } of lookups) {
          for (let i = 0; i < ids.length; i++, row++) {
            embedGradRow(dw, ids[i] * d, dy, row * d, mask, scale, d);
          }
        }
        return [dw];
      },
    };
  }) as tf.Tensor2D;
}

/** The sum of `x[o .. o + n)` in double precision. */
function rowSum(x: Float32Array, o: number, n: number): number {
  let s = 0;
  for (let j = 0; j < n; j++) s += x[o + j];
  return s;
}

/**
 * Differentiable per-token log-probabilities of the output layer: for each row r of `h`
 * (`[n, d]`) with `active[r]`, `(1 - eps) log p(target_r) + eps mean_v log p(v)` where
 * `p = softmax(h W^T)` and `W` is `[V, d]`; 0 for inactive rows (padding), which are
 * skipped entirely. Never materialises the logits as a tensor.
 */
export function outputLogProbsOp(
  h: tf.Tensor2D,
  w: tf.Tensor2D,
  targets: Int32Array,
  active: Uint8Array,
  smoothing: number,
): tf.Tensor1D {
  const [n, d] = h.shape;
  const vocab = w.shape[0];
  const rows: number[] = [];
  for (let r = 0; r < n; r++) if (active[r] !== 0) rows.push(r);
  const m = rows.length;
  return customOp([h, w], (ins) => {
    const hv = values(ins[0]);
    const hc = m === n ? hv : new Float32Array(m * d);
    if (m !== n) {
      for (let i = 0; i < m; i++) hc.set(hv.subarray(rows[i] * d, rows[i] * d + d), i * d);
    }
    // The [m, V] logits are the largest buffer of a step: it lives in SIMD memory (the
    // log-softmax runs there in place), comes from a pool and goes back once the backward
    // pass is done with it (fresh memory would have to be page-faulted in).
    const matrix = takeSimdMatrix(m, vocab);
    const logits = matmul(
      { data: hc, shape: [m, d] },
      ins[1],
      false,
      true,
      undefined,
      false,
      matrix.data,
    );
    const out = new Float32Array(n);
    const sumLogit = new Float64Array(m);
    if (smoothing > 0) {
      for (let i = 0; i < m; i++) sumLogit[i] = rowSum(logits, i * vocab, vocab);
    }
    const targetLogit = new Float64Array(m);
    for (let i = 0; i < m; i++) {
      const y = targets[rows[i]];
      if (y < 0 || y >= vocab) {
        throw new RangeError(`target id ${y} outside the vocabulary [0, ${vocab})`);
      }
      targetLogit[i] = logits[i * vocab + y];
    }
    // exp(logit - max) overwrites the logits; it becomes dlogits in the backward pass.
    const sums = new Float64Array(m);
    const maxs = new Float64Array(m);
    matrix.expSums(m, maxs, sums, true);
    for (let i = 0; i < m; i++) {
      const lse = maxs[i] + Math.log(sums[i]);
      const lp = targetLogit[i] - lse;
      out[rows[i]] = smoothing > 0
        ? (1 - smoothing) * lp + smoothing * (sumLogit[i] / vocab - lse)
        : lp;
    }
    let used = false;
    return {
      out,
      shape: [n],
      backward(dy) {
        // The exponentials are turned into the logit gradients in place.
        if (used) throw new Error("outputLogProbsOp: backward pass run twice");
        used = true;
        const e = logits;
        // d/dlogit_j = g * ((1 - eps) [j = y] + eps / V - p_j)
        const uniform = smoothing / vocab;
        const k = new Float64Array(m);
        const c = new Float64Array(m);
        for (let i = 0; i < m; i++) {
          const g = dy[rows[i]];
          k[i] = -g / sums[i];
          c[i] = g * uniform;
        }
        matrix.scaleShift(m, k, c);
        for (let i = 0; i < m; i++) {
          e[i * vocab + targets[rows[i]]] += dy[rows[i]] * (1 - smoothing);
        }
        const dl = { data: e, shape: [m, vocab] };
        const dhc = matmul(
          dl,
          ins[1].isDisposed ? { data: values(ins[1]), shape: [vocab, d] } : ins[1],
        );
        const dw = matmul(dl, { data: hc, shape: [m, d] }, true, false);
        giveSimdMatrix(matrix);
        let dh = dhc;
        if (m !== n) {
          dh = new Float32Array(n * d);
          for (let i = 0; i < m; i++) dh.set(dhc.subarray(i * d, i * d + d), rows[i] * d);
        }
        return [dh, dw];
      },
    };
  }) as tf.Tensor1D;
}
