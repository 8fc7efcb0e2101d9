/**
 * Small helpers shared by the loss plugins: masked means over real target tokens,
 * stop-gradient constants, per-token log-probabilities, and full-distribution KL and
 * entropy from logits. All take and return `[B, T]` (or `[B, T, V]`) tensors and are
 * meant to be called inside the trainer's gradient tape.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/**
 * Stop-gradient: a constant copy of `x`, cut from the gradient tape. tfjs has no
 * `stopGradient` op, so this reads the values back (`dataSync`) and rebuilds a tensor;
 * use it on small tensors such as `[B, T]` weights, never on `[B, T, V]` logits.
 *
 * Tensors computed only from frozen policies (the BC policy, a lagged copy) or from the
 * batch need no stop-gradient: the trainer differentiates only with respect to the
 * policy's and the loss's variables.
 */
export function stopGradient<T extends tf.Tensor>(x: T): T {
  return tf.tensor(x.dataSync(), x.shape, x.dtype) as T;
}

/** Mean of `x` over real tokens: sum(x * mask) / max(sum(mask), 1). */
export function maskedMean(x: tf.Tensor, mask: tf.Tensor): tf.Scalar {
  return tf.div(tf.sum(tf.mul(x, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
}

/** `[B, T]` entries of `[B, T, V]` log-probabilities at the target ids `tokens` (`[B, T]` int32). */
export function pickTokens(logProbs: tf.Tensor3D, tokens: tf.Tensor2D): tf.Tensor2D {
  return tf.sum(tf.mul(logProbs, tf.oneHot(tokens, logProbs.shape[2])), -1) as tf.Tensor2D;
}

/** `[B, T]` KL(p || q) = sum_v p(v) (log p(v) - log q(v)) of the distributions given by two logits. */
export function klFromLogits(pLogits: tf.Tensor3D, qLogits: tf.Tensor3D): tf.Tensor2D {
  const logP = tf.logSoftmax(pLogits);
  return tf.sum(tf.mul(tf.exp(logP), tf.sub(logP, tf.logSoftmax(qLogits))), -1) as tf.Tensor2D;
}

/** `[B, T]` entropy H(p) = -sum_v p(v) log p(v) of the distribution given by logits. */
export function entropyFromLogits(logits: tf.Tensor3D): tf.Tensor2D {
  const logP = tf.logSoftmax(logits);
  return tf.neg(tf.sum(tf.mul(tf.exp(logP), logP), -1)) as tf.Tensor2D;
}

/** The value of a one-element tensor as a number (for `record`). */
export function read(x: tf.Tensor): number {
  return x.dataSync()[0];
}

/** Returns `value`, or throws when the loss is used before `prepare`. */
export function prepared<T>(value: T | undefined, loss: string): T {
  if (value === undefined) {
    throw new TypeError(`loss "${loss}": compute was called before prepare`);
  }
  return value;
}
