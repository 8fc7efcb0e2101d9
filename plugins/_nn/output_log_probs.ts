/**
 * The output layer of a sequence model as one differentiable op: per-token
 * log-probabilities of the targets under `softmax(h W^T)`, with label smoothing, computed
 * without ever materialising the `[rows, vocabulary]` logits as a tensor. The logits live
 * in WebAssembly SIMD memory (`simd.ts`), where the log-softmax and its gradient run in
 * place.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { customOp, values } from "./custom_op.ts";
import { matmul } from "./gemm.ts";
import { giveSimdMatrix, takeSimdMatrix } from "./simd.ts";

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
      release: () => giveSimdMatrix(matrix),
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
