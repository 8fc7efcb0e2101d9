/**
 * The transformer's teacher-forced pass as plain tfjs ops, for backends whose tensors live on
 * a device that JavaScript cannot read synchronously (`webgpu` under Deno: `dataSync` there
 * needs `OffscreenCanvas`). The hand-written kernels of this folder work on `Float32Array`s
 * read with `dataSync`, so on such a backend the model runs these ops instead: the same
 * formulas (pre-LN layers, masked multi-head attention, label-smoothed output
 * log-probabilities) with tfjs's autodiff for the backward pass, and dropout masks drawn from
 * the same seeded {@link Rng} stream in the same order, so results equal the host path's up
 * to float rounding.
 *
 * {@link isDeviceBackend} says which path the active backend takes; the GEMM dispatch of
 * `gemm.ts` uses it too, to keep host-side products (decoding) on the host.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { dropoutMask, residualMask, type RunOptions } from "./dropout.ts";
import { DECODER_PARAMS, type Dims, ENCODER_PARAMS } from "./layer_params.ts";

/** tfjs backends whose tensors JavaScript cannot read synchronously. */
const DEVICE_BACKENDS = new Set(["webgpu"]);

/**
 * Whether tfjs backend `name` (default: the active one) keeps tensors where `dataSync`
 * cannot reach them, so the model must run as tfjs ops ({@link encoderLayerOps} ...).
 */
export function isDeviceBackend(name: string = tf.getBackend()): boolean {
  return DEVICE_BACKENDS.has(name);
}

/** Inputs of one teacher-forced pass, as tensors. */
export interface DeviceMasks {
  /** `[b, 1, 1, sLen]` 1 where the source token is real, 0 at padding. */
  srcKeys: tf.Tensor4D;
  /** `[b, 1, tLen, tLen]` 1 where target query t may see key s (causal and not padding). */
  tgtKeys: tf.Tensor4D;
}

/** The attention masks of a batch (`source`, `targetIn` `[b, len]` int32) with padding id `pad`. */
export function deviceMasks(source: tf.Tensor2D, targetIn: tf.Tensor2D, pad: number): DeviceMasks {
  const [b, sLen] = source.shape;
  const tLen = targetIn.shape[1];
  const real = (ids: tf.Tensor2D) => tf.cast(tf.notEqual(ids, tf.scalar(pad, "int32")), "float32");
  const srcKeys = tf.reshape(real(source), [b, 1, 1, sLen]) as tf.Tensor4D;
  const causal = tf.linalg.bandPart(tf.ones([tLen, tLen]), -1, 0);
  const tgtKeys = tf.mul(
    tf.reshape(causal, [1, 1, tLen, tLen]),
    tf.reshape(real(targetIn), [b, 1, 1, tLen]),
  ) as tf.Tensor4D;
  return { srcKeys, tgtKeys };
}

/** `x * mask` with an inverted-dropout mask of x's size from `run`, or x itself. */
function residualDropout<T extends tf.Tensor>(x: T, run: RunOptions): T {
  const mask = residualMask(x.size, run);
  return mask === undefined ? x : tf.mul(x, tf.tensor(mask, x.shape, "float32")) as T;
}

/** Layer norm over the last axis: `(x - mean) / sqrt(var + eps) * g + b`. */
export function layerNormOps(x: tf.Tensor2D, g: tf.Tensor, b: tf.Tensor, eps: number): tf.Tensor2D {
  const { mean, variance } = tf.moments(x, -1, true);
  const xhat = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
  return tf.add(tf.mul(xhat, g), b) as tf.Tensor2D;
}

/** `x w + b` for `[rows, in]` x. */
function linear(x: tf.Tensor2D, w: tf.Tensor, b: tf.Tensor): tf.Tensor2D {
  return tf.add(tf.matMul(x, w as tf.Tensor2D), b) as tf.Tensor2D;
}

/** `[b * len, d]` rows as `[b, heads, len, dk]`. */
function heads(x: tf.Tensor2D, b: number, len: number, dims: Dims): tf.Tensor4D {
  const dk = dims.d / dims.heads;
  return tf.transpose(tf.reshape(x, [b, len, dims.heads, dk]), [0, 2, 1, 3]) as tf.Tensor4D;
}

/**
 * Multi-head attention of `[b * tq, d]` queries over `[b * sk, d]` keys and values, with
 * `visible` (`[b or 1, 1, tq or 1, sk]`, 1 = may attend): rows with no visible key are zero,
 * as in the host kernels. Returns `[b * tq, d]`.
 */
function attentionOps(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  b: number,
  tq: number,
  sk: number,
  visible: tf.Tensor4D,
  dims: Dims,
  run: RunOptions,
): tf.Tensor2D {
  const scale = 1 / Math.sqrt(dims.d / dims.heads);
  const scores = tf.matMul(
    tf.mul(heads(q, b, tq, dims), scale),
    heads(k, b, sk, dims),
    false,
    true,
  );
  // -1e9 where hidden: exp underflows to exactly 0; fully hidden rows are zeroed after.
  const masked = tf.add(scores, tf.mul(tf.sub(visible, 1), 1e9));
  let p = tf.mul(tf.softmax(masked), visible);
  const rate = run.training ? run.attentionDropout : 0;
  if (rate > 0) p = tf.mul(p, tf.tensor(dropoutMask(p.size, rate, run.rng), p.shape, "float32"));
  const out = tf.matMul(p, heads(v, b, sk, dims));
  return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b * tq, dims.d]) as tf.Tensor2D;
}

type Params = ReadonlyMap<string, tf.Tensor>;

function named(names: readonly string[], tensors: tf.Tensor[]): Params {
  return new Map(names.map((n, i) => [n, tensors[i]]));
}

function param(p: Params, name: string): tf.Tensor {
  const t = p.get(name);
  if (t === undefined) throw new Error(`unknown parameter ${name}`);
  return t;
}

/** `x + drop(Attn(LN(x)) W_o + b_o)` over one sequence stack. */
function selfAttentionOps(
  x: tf.Tensor2D,
  b: number,
  len: number,
  p: Params,
  dims: Dims,
  visible: tf.Tensor4D,
  run: RunOptions,
): tf.Tensor2D {
  const { d } = dims;
  const ln = layerNormOps(x, param(p, "ln1.g"), param(p, "ln1.b"), dims.eps);
  const qkv = linear(ln, param(p, "qkv.w"), param(p, "qkv.b"));
  const [q, k, v] = tf.split(qkv, [d, d, d], 1) as tf.Tensor2D[];
  const att = attentionOps(q, k, v, b, len, len, visible, dims, run);
  return residualOps(x, linear(att, param(p, "out.w"), param(p, "out.b")), run);
}

/** `x + drop(Attn(LN(x) W_q, enc W_kv) W_o + b_o)`. */
function crossAttentionOps(
  x: tf.Tensor2D,
  enc: tf.Tensor2D,
  b: number,
  tLen: number,
  sLen: number,
  p: Params,
  dims: Dims,
  visible: tf.Tensor4D,
  run: RunOptions,
): tf.Tensor2D {
  const { d } = dims;
  const ln = layerNormOps(x, param(p, "lnc.g"), param(p, "lnc.b"), dims.eps);
  const q = linear(ln, param(p, "q.w"), param(p, "q.b"));
  const kv = linear(enc, param(p, "kv.w"), param(p, "kv.b"));
  const [k, v] = tf.split(kv, [d, d], 1) as tf.Tensor2D[];
  const att = attentionOps(q, k, v, b, tLen, sLen, visible, dims, run);
  return residualOps(x, linear(att, param(p, "cout.w"), param(p, "cout.b")), run);
}

/** tanh-approximated GELU, as the host kernels compute it. */
function geluOps(x: tf.Tensor): tf.Tensor {
  const inner = tf.mul(
    tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)),
    Math.sqrt(2 / Math.PI),
  );
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
}

/** `x + drop(act(LN(x) W_1 + b_1) W_2 + b_2)`. */
function feedForwardOps(x: tf.Tensor2D, p: Params, dims: Dims, run: RunOptions): tf.Tensor2D {
  const ln = layerNormOps(x, param(p, "ln2.g"), param(p, "ln2.b"), dims.eps);
  const pre = linear(ln, param(p, "ff1.w"), param(p, "ff1.b"));
  const h = (dims.activation === "relu" ? tf.relu(pre) : geluOps(pre)) as tf.Tensor2D;
  return residualOps(x, linear(h, param(p, "ff2.w"), param(p, "ff2.b")), run);
}

/** `x + drop(u)`: a sublayer's output `u` (dropout while training) added to its input. */
function residualOps(x: tf.Tensor2D, u: tf.Tensor2D, run: RunOptions): tf.Tensor2D {
  return tf.add(x, residualDropout(u, run)) as tf.Tensor2D;
}

/** One encoder layer as tfjs ops; `params` in {@link ENCODER_PARAMS} order. */
export function encoderLayerOps(
  x: tf.Tensor2D,
  params: tf.Tensor[],
  b: number,
  len: number,
  dims: Dims,
  masks: DeviceMasks,
  run: RunOptions,
): tf.Tensor2D {
  const p = named(ENCODER_PARAMS, params);
  const att = selfAttentionOps(x, b, len, p, dims, masks.srcKeys, run);
  return feedForwardOps(att, p, dims, run);
}

/** One decoder layer as tfjs ops; `params` in {@link DECODER_PARAMS} order. */
export function decoderLayerOps(
  x: tf.Tensor2D,
  enc: tf.Tensor2D,
  params: tf.Tensor[],
  b: number,
  tLen: number,
  sLen: number,
  dims: Dims,
  masks: DeviceMasks,
  run: RunOptions,
): tf.Tensor2D {
  const p = named(DECODER_PARAMS, params);
  const self = selfAttentionOps(x, b, tLen, p, dims, masks.tgtKeys, run);
  const cross = crossAttentionOps(self, enc, b, tLen, sLen, p, dims, masks.srcKeys, run);
  return feedForwardOps(cross, p, dims, run);
}

/**
 * Embedding lookups of id blocks (`[b, len]` int32 each) in one `table`, scaled, plus the
 * first `len` rows of the position table (`positions(len)`, `[>= len, d]` values), packed
 * into one `[sum of rows, d]` output with one dropout mask when training (as the host op).
 */
export function embedOps(
  table: tf.Tensor2D,
  blocks: readonly tf.Tensor2D[],
  scale: number,
  positions: (len: number) => Float32Array,
  run: RunOptions,
): tf.Tensor2D {
  const d = table.shape[1];
  const parts = blocks.map((ids) => {
    const [b, len] = ids.shape;
    const rows = tf.mul(tf.gather(table, tf.reshape(ids, [b * len])), scale);
    const pe = tf.tensor(positions(len).subarray(0, len * d), [1, len, d], "float32");
    return tf.reshape(tf.add(tf.reshape(rows, [b, len, d]), pe), [b * len, d]) as tf.Tensor2D;
  });
  return residualDropout(parts.length === 1 ? parts[0] : tf.concat(parts, 0), run);
}

/**
 * `[n]` label-smoothed log-probabilities of `targets` (`[n]` int32) under `softmax(h W^T)`
 * (`h` `[n, d]`, `W` `[V, d]`): `(1 - eps) log p(y) + eps mean_v log p(v)`, times `active`
 * (`[n]`, 0 at padding).
 */
export function outputLogProbsOps(
  h: tf.Tensor2D,
  w: tf.Tensor2D,
  targets: tf.Tensor1D,
  active: tf.Tensor1D,
  smoothing: number,
): tf.Tensor1D {
  const vocab = w.shape[0];
  const logp = tf.logSoftmax(tf.matMul(h, w, false, true));
  const picked = tf.sum(tf.mul(logp, tf.oneHot(targets, vocab)), 1);
  const lp = smoothing > 0
    ? tf.add(tf.mul(picked, 1 - smoothing), tf.mul(tf.mean(logp, 1), smoothing))
    : picked;
  return tf.mul(lp, active) as tf.Tensor1D;
}
