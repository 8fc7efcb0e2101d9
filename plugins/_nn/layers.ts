/**
 * The transformer's encoder and decoder layers as fused, differentiable tfjs operations.
 *
 * Each encoder or decoder layer is ONE `tf.customGrad` op whose forward and backward
 * passes are written out by hand: matrix products go to the active backend's GEMM
 * (on `blas`, `cblas_sgemm` called directly on the buffers, see `matmul` in `gemm.ts`;
 * elsewhere `tf.matMul`), and everything else (layer norm, masked softmax, head layouts,
 * bias gradients, residuals, dropout) is a loop of this folder or a WebAssembly SIMD
 * kernel from `simd.ts` over the tensors' buffers. This keeps the autodiff tape short
 * (a dozen nodes per training step instead of hundreds) and avoids tfjs-cpu's slow
 * broadcasting, transposes and reductions.
 *
 * A layer is pre-LN sublayers (self-attention, cross-attention in the decoder, feed-forward),
 * each `x + drop(f(LN(x)))`. Its parameters are named and shaped as in `layer_params.ts`.
 *
 * Work buffers come from the pool of `buffer_pool.ts` (`takeBuffer`) and go back when
 * their last reader is done: a layer's activations at the end of its backward pass (or
 * its `release()` when none will run), temporaries of the backward pass at once.
 *
 * Layout: activations are 2-D `[rows, d]` with rows `b * length + position`.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { attention, type Masking, type Strided } from "./attention.ts";
import { giveBuffer, giveBuffers, takeBuffer } from "./buffer_pool.ts";
import { customOp, values } from "./custom_op.ts";
import { residualMask, type RunOptions } from "./dropout.ts";
import { gelu, geluBackwardInPlace, mulMask, residualAddInPlace } from "./elementwise.ts";
import { matmul } from "./gemm.ts";
import { DECODER_PARAMS, type Dims, ENCODER_PARAMS, ParamView } from "./layer_params.ts";
import { layerNormBackward, layerNormForward } from "./layer_norm.ts";
import { giveSimdMatrix, takeSimdMatrix } from "./simd.ts";

/** Runs the backward pass of a block: maps dy to dx, writing parameter gradients into `grads`. */
export type Backward = (dy: Float32Array, grads: Map<string, Float32Array>) => Float32Array;

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
): Block & { encoderGrad(): Float32Array } {
  const { d } = dims;
  const nt = b * tLen;
  let dEnc: Float32Array | undefined;
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
      dEnc = de;
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
      giveBuffers(dc, dq, dkv, q, kv, ln.y, ln.saved!.xhat, du === dy ? undefined : du);
      att.release();
      return dx;
    },
    release() {
      giveBuffers(q, kv, ln.y, ln.saved!.xhat);
      att.release();
    },
    encoderGrad() {
      if (dEnc === undefined) throw new Error("cross-attention: no backward pass has run");
      return dEnc;
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
  release(): void;
} {
  const self = selfAttentionBlock(x, b, tLen, p, dims, { keyMask: tgtMask, causal: true }, run);
  const cross = crossAttentionBlock(self.y, enc, b, tLen, sLen, p, dims, srcMask, run);
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
      return { dx, dEnc: cross.encoderGrad(), grads };
    },
    release() {
      ff.release();
      cross.release();
      self.release();
    },
  };
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
      release: layer.release,
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
      release: layer.release,
    };
  }) as tf.Tensor2D;
}
