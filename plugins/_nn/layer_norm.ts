/**
 * Layer norm over the last axis of row-major `[rows, d]` buffers: the forward pass (which
 * keeps what the backward pass needs), the backward pass, and {@link layerNormOp}, the two
 * as one differentiable tfjs op. When `d` is a multiple of 4 both passes run in
 * WebAssembly SIMD (`simd.ts`, float32 sums); otherwise a plain loop per row does.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { takeBuffer } from "./buffer_pool.ts";
import { customOp, recordingGradients, values } from "./custom_op.ts";
import { simdLayerNorm, simdLayerNormBackward } from "./simd.ts";

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
    // What the backward pass reads is kept only where one can run.
    const keep = recordingGradients();
    const ln = layerNormForward(values(ins[0]), d, g, values(ins[2]), eps, keep);
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
