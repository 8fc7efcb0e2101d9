/**
 * The transformer's layers as fused, differentiable tfjs operations.
 *
 * Each encoder or decoder layer is ONE `tf.customGrad` op whose forward and backward
 * passes are written out by hand: matrix products go through `tf.matMul` (so the
 * active backend's GEMM does the heavy work: OpenBLAS on `blas`, XNNPACK on `wasm`),
 * and everything else (layer norm, masked softmax, head layouts, bias gradients,
 * residuals, dropout) is a plain loop from `_kernels.ts` over the tensors' buffers.
 * This keeps the autodiff tape short (a dozen nodes per training step instead of
 * hundreds) and avoids tfjs-cpu's slow broadcasting, transposes and reductions.
 *
 * Layout: activations are 2-D `[rows, d]` with rows `b * length + position`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { Rng } from "../../core/random.ts";
import {
  dropoutMask,
  gelu,
  geluBackwardInPlace,
  layerNormBackward,
  layerNormForward,
  maskedSoftmaxInPlace,
  mergeHeads,
  mulMask,
  reluBackwardInPlace,
  reluInPlace,
  residualAdd,
  rowLogSumExp,
  softmaxBackwardInPlace,
  splitHeads,
  type Strided,
} from "./_kernels.ts";

/** A matrix operand: a tensor, or a buffer with its shape. */
export type Mat = tf.Tensor | { data: Float32Array; shape: number[] };

/** The values of a float32 tensor (tfjs-cpu's own buffer: never mutate it). */
export function values(t: tf.Tensor): Float32Array {
  return t.dataSync() as Float32Array;
}

/**
 * `a · b` (batched when rank 3) through `tf.matMul` on the active backend, with an optional
 * bias `[cols]` and ReLU fused in. Returns a fresh buffer that the caller owns.
 */
export function matmul(
  a: Mat,
  b: Mat,
  transA = false,
  transB = false,
  bias?: tf.Tensor,
  relu = false,
): Float32Array {
  let result: Float32Array | undefined;
  // (tidy must not return the buffer: it would walk every element looking for tensors)
  tf.tidy(() => {
    const at = a instanceof tf.Tensor ? a : tf.tensor(a.data, a.shape, "float32");
    const bt = b instanceof tf.Tensor ? b : tf.tensor(b.data, b.shape, "float32");
    const out = bias !== undefined || relu
      ? tf.fused.matMul({
        a: at,
        b: bt,
        transposeA: transA,
        transposeB: transB,
        bias,
        activation: relu ? "relu" : "linear",
      })
      : tf.matMul(at, bt, transA, transB);
    result = out.dataSync() as Float32Array;
  });
  return result!;
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
  out: Float32Array;
  backward(dOut: Float32Array): { dQ: Float32Array; dK: Float32Array; dV: Float32Array };
}

/**
 * Multi-head scaled dot-product attention over whole sequences: queries `[b * tq]`,
 * keys/values `[b * sk]` read from strided buffers. Scores and outputs are batched matrix
 * products over `b * heads`. Backward returns head-major gradients (dQ already scaled).
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
    backward(dOut) {
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
      if (mask !== undefined) { for (let i = 0; i < dpd.length; i++) dpd[i] *= mask[i]; }
      softmaxBackwardInPlace(p, dpd, sk, 1);
      const ds = { data: dpd, shape: [bh, tq, sk] };
      const dQ = matmul(ds, { data: kh, shape: [bh, sk, dk] });
      for (let i = 0; i < dQ.length; i++) dQ[i] *= scale;
      const dK = matmul(ds, { data: qh, shape: [bh, tq, dk] }, true, false);
      return { dQ, dK, dV };
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

/** Pre-LN self-attention sublayer: `x + drop(Attn(LN(x)) W_o + b_o)`. */
function selfAttentionBlock(
  x: Float32Array,
  b: number,
  len: number,
  p: ParamView,
  dims: Dims,
  masking: Masking,
  run: RunOptions,
): { y: Float32Array; backward: Backward } {
  const { d } = dims;
  const n = b * len;
  const ln = layerNormForward(x, d, p.a("ln1.g"), p.a("ln1.b"), dims.eps, true);
  const qkv = matmul({ data: ln.y, shape: [n, d] }, p.t("qkv.w"), false, false, p.tensor("qkv.b"));
  const src = (offset: number): Strided => ({ buf: qkv, stride: 3 * d, offset });
  const att = attention(src(0), src(d), src(2 * d), b, len, len, dims, masking, run);
  const u = matmul({ data: att.out, shape: [n, d] }, p.t("out.w"), false, false, p.tensor("out.b"));
  const mask = residualMask(u.length, run);
  const y = residualAdd(x, u, mask);
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
      const dO = matmul({ data: du, shape: [n, d] }, p.t("out.w"), false, true);
      const g = att.backward(dO);
      const dqkv = new Float32Array(n * 3 * d);
      const heads = dims.heads;
      const dk = d / heads;
      mergeHeads(g.dQ, { buf: dqkv, stride: 3 * d, offset: 0 }, b, len, heads, dk);
      mergeHeads(g.dK, { buf: dqkv, stride: 3 * d, offset: d }, b, len, heads, dk);
      mergeHeads(g.dV, { buf: dqkv, stride: 3 * d, offset: 2 * d }, b, len, heads, dk);
      accumulate(
        grads,
        "qkv.w",
        matmul({ data: ln.y, shape: [n, d] }, { data: dqkv, shape: [n, 3 * d] }, true),
      );
      accumulate(grads, "qkv.b", biasGrad(dqkv, n, 3 * d));
      const da = matmul({ data: dqkv, shape: [n, 3 * d] }, p.t("qkv.w"), false, true);
      const dg = new Float32Array(d);
      const dbeta = new Float32Array(d);
      const dx = layerNormBackward(da, d, p.a("ln1.g"), ln.saved!, dg, dbeta, dy);
      accumulate(grads, "ln1.g", dg);
      accumulate(grads, "ln1.b", dbeta);
      return dx;
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
): { y: Float32Array; backward: Backward } {
  const { d } = dims;
  const nt = b * tLen;
  const ns = b * sLen;
  const ln = layerNormForward(x, d, p.a("lnc.g"), p.a("lnc.b"), dims.eps, true);
  const q = matmul({ data: ln.y, shape: [nt, d] }, p.t("q.w"), false, false, p.tensor("q.b"));
  const kv = matmul({ data: enc, shape: [ns, d] }, p.t("kv.w"), false, false, p.tensor("kv.b"));
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
  );
  const mask = residualMask(u.length, run);
  const y = residualAdd(x, u, mask);
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
      const dO = matmul({ data: du, shape: [nt, d] }, p.t("cout.w"), false, true);
      const g = att.backward(dO);
      const heads = dims.heads;
      const dk = d / heads;
      const dq = new Float32Array(nt * d);
      mergeHeads(g.dQ, { buf: dq, stride: d, offset: 0 }, b, tLen, heads, dk);
      const dkv = new Float32Array(ns * 2 * d);
      mergeHeads(g.dK, { buf: dkv, stride: 2 * d, offset: 0 }, b, sLen, heads, dk);
      mergeHeads(g.dV, { buf: dkv, stride: 2 * d, offset: d }, b, sLen, heads, dk);
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
      const de = matmul({ data: dkv, shape: [ns, 2 * d] }, p.t("kv.w"), false, true);
      for (let i = 0; i < de.length; i++) dEnc[i] += de[i];
      const dc = matmul({ data: dq, shape: [nt, d] }, p.t("q.w"), false, true);
      const dg = new Float32Array(d);
      const dbeta = new Float32Array(d);
      const dx = layerNormBackward(dc, d, p.a("lnc.g"), ln.saved!, dg, dbeta, dy);
      accumulate(grads, "lnc.g", dg);
      accumulate(grads, "lnc.b", dbeta);
      return dx;
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
): { y: Float32Array; backward: Backward } {
  const { d, ffn } = dims;
  const ln = layerNormForward(x, d, p.a("ln2.g"), p.a("ln2.b"), dims.eps, true);
  const relu = dims.activation === "relu";
  const pre = matmul({ data: ln.y, shape: [n, d] }, p.t("ff1.w"), false, false, p.tensor("ff1.b"));
  const h = relu ? reluInPlace(pre) : gelu(pre);
  const z = matmul({ data: h, shape: [n, ffn] }, p.t("ff2.w"), false, false, p.tensor("ff2.b"));
  const mask = residualMask(z.length, run);
  const y = residualAdd(x, z, mask);
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
      const dh = matmul({ data: dz, shape: [n, d] }, p.t("ff2.w"), false, true);
      if (relu) reluBackwardInPlace(dh, h);
      else geluBackwardInPlace(dh, pre);
      accumulate(
        grads,
        "ff1.w",
        matmul({ data: ln.y, shape: [n, d] }, { data: dh, shape: [n, ffn] }, true),
      );
      accumulate(grads, "ff1.b", biasGrad(dh, n, ffn));
      const dc = matmul({ data: dh, shape: [n, ffn] }, p.t("ff1.w"), false, true);
      const dg = new Float32Array(d);
      const dbeta = new Float32Array(d);
      const dx = layerNormBackward(dc, d, p.a("ln2.g"), ln.saved!, dg, dbeta, dy);
      accumulate(grads, "ln2.g", dg);
      accumulate(grads, "ln2.b", dbeta);
      return dx;
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
} {
  const att = selfAttentionBlock(x, b, len, p, dims, { keyMask: srcMask, causal: false }, run);
  const ff = feedForwardBlock(att.y, b * len, p, dims, run);
  return {
    y: ff.y,
    backward(dy) {
      const grads = new Map<string, Float32Array>();
      const d1 = ff.backward(dy, grads);
      const dx = att.backward(d1, grads);
      return { dx, grads };
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
  const ff = feedForwardBlock(cross.y, b * tLen, p, dims, run);
  return {
    y: ff.y,
    backward(dy) {
      const grads = new Map<string, Float32Array>();
      const d2 = ff.backward(dy, grads);
      const d1 = cross.backward(d2, grads);
      const dx = self.backward(d1, grads);
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
        const src = id * d;
        const pos = (i % len) * d;
        const o = r * d;
        for (let j = 0; j < d; j++) out[o + j] = w[src + j] * scale + pe[pos + j];
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
            const dst = ids[i] * d;
            const o = row * d;
            if (mask === undefined) {
              for (let j = 0; j < d; j++) dw[dst + j] += dy[o + j] * scale;
            } else {
              for (let j = 0; j < d; j++) dw[dst + j] += dy[o + j] * mask[o + j] * scale;
            }
          }
        }
        return [dw];
      },
    };
  }) as tf.Tensor2D;
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
    const logits = matmul({ data: hc, shape: [m, d] }, ins[1], false, true);
    const out = new Float32Array(n);
    const sumLogit = new Float64Array(m);
    if (smoothing > 0) {
      for (let i = 0; i < m; i++) {
        let s = 0;
        const o = i * vocab;
        for (let j = 0; j < vocab; j++) s += logits[o + j];
        sumLogit[i] = s;
      }
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
    const lse = rowLogSumExp(logits, vocab, logits, sums);
    for (let i = 0; i < m; i++) {
      const lp = targetLogit[i] - lse[i];
      out[rows[i]] = smoothing > 0
        ? (1 - smoothing) * lp + smoothing * (sumLogit[i] / vocab - lse[i])
        : lp;
    }
    let used = false;
    return {
      out,
      shape: [n],
      backward(dy) {
        const e = used ? Float32Array.from(logits) : logits;
        used = true;
        // d/dlogit_j = g * ((1 - eps) [j = y] + eps / V - p_j)
        const uniform = smoothing / vocab;
        for (let i = 0; i < m; i++) {
          const g = dy[rows[i]];
          const o = i * vocab;
          const k = -g / sums[i];
          const c = g * uniform;
          for (let j = 0; j < vocab; j++) e[o + j] = e[o + j] * k + c;
          e[o + targets[rows[i]]] += g * (1 - smoothing);
        }
        const dl = { data: e, shape: [m, vocab] };
        const dhc = matmul(
          dl,
          ins[1].isDisposed ? { data: values(ins[1]), shape: [vocab, d] } : ins[1],
        );
        const dw = matmul(dl, { data: hc, shape: [m, d] }, true, false);
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
