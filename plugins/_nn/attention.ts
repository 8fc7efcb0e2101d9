/**
 * Multi-head scaled dot-product attention over whole sequences, forward and backward, on
 * row-major `Float32Array`s: the head layouts (a head-split operand read from strided rows,
 * such as one third of the fused QKV projection), the masked softmax over the scores (key
 * padding, causal masking) and its backward pass, and {@link attention} itself, whose
 * score and output products go through the GEMM dispatch of `gemm.ts` (on the `blas`
 * backend every head straight from the strided rows).
 *
 * @module
 */

import type { BlasLibrary } from "./blas_ffi.ts";
import { giveBuffers, takeBuffer } from "./buffer_pool.ts";
import { dropoutMask, type RunOptions } from "./dropout.ts";
import { mulInPlace, mulMask } from "./elementwise.ts";
import { fastExp, sumExpInto } from "./exp.ts";
import { activeBlas, matmul } from "./gemm.ts";
import type { Dims } from "./layer_params.ts";
import { giveSimdMatrix, takeSimdMatrix } from "./simd.ts";

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

/** Which keys each query may see. */
export interface Masking {
  /** `[b * keys]`: 0 where the key is padding. */
  keyMask: Uint8Array | null;
  /** Query t sees keys <= t. */
  causal: boolean;
}

/** A multi-head attention forward pass with its backward pass. */
export interface AttentionResult {
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
export function attention(
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
