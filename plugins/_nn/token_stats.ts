/**
 * Per-token statistics of sequence batches as tfjs ops, shared by the loss plugins and
 * online PPO: masked means over real target tokens, a stop-gradient constant, the
 * log-probabilities of given tokens, and the full-distribution KL and entropy from
 * logits, also at a sampling temperature. All take and return `[B, T]` (or `[B, T, V]`)
 * tensors and are meant to be called inside the trainer's gradient tape.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/**
 * Stop-gradient: `x` cut from the gradient tape. tfjs has no `stopGradient` op, so this is
 * a new tensor over `x`'s data made without running a kernel: the tape records nothing, so
 * no gradient reaches whatever `x` was computed from (variables only reached through it get
 * none at all). Nothing is copied or read back, so it works on every backend.
 *
 * Tensors computed only from frozen policies (the BC policy, a lagged copy) or from the
 * batch need no stop-gradient: the trainer differentiates only with respect to the
 * policy's and the loss's variables.
 */
export function stopGradient<T extends tf.Tensor>(x: T): T {
  // The new tensor shares `x`'s data, so it takes a reference (as tfjs's own reshape does).
  const engine = tf.engine();
  engine.backend.incRef(x.dataId);
  return engine.makeTensorFromDataId(x.dataId, x.shape, x.dtype) as T;
}

/** Mean of `x` over real tokens: sum(x * mask) / max(sum(mask), 1), so 0 when the mask is all zeros. */
export function maskedMean(x: tf.Tensor, mask: tf.Tensor): tf.Scalar {
  return tf.tidy(() => tf.div(tf.sum(tf.mul(x, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar);
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
  return entropyOfLogProbs(tf.logSoftmax(logits));
}

/** `[B, T]` entropy -sum_v p(v) log p(v) of `[B, T, V]` log-probabilities. */
function entropyOfLogProbs(logP: tf.Tensor): tf.Tensor2D {
  return tf.neg(tf.sum(tf.mul(tf.exp(logP), logP), -1)) as tf.Tensor2D;
}

/** Per-token log-probabilities of the taken tokens and entropies (`[B, T]`, 0 at padding). */
export interface TokenStats {
  /** log pi_T(targets_t | ...) under softmax(logits / temperature). */
  logProbs: tf.Tensor2D;
  /** -sum_v pi_T(v) log pi_T(v): the entropy of each position's distribution. */
  entropy: tf.Tensor2D;
}

/**
 * Log-probabilities of `targets` and per-position entropies of the distribution
 * softmax(logits / temperature), masked to real tokens. With a temperature other than 1
 * this is the policy the samples were actually drawn from, so PPO's ratios and KL terms
 * stay on-policy.
 *
 * @throws {RangeError} when `temperature` is not positive.
 */
export function tokenLogProbsAndEntropy(
  logits: tf.Tensor3D,
  targets: tf.Tensor2D,
  mask: tf.Tensor2D,
  temperature = 1,
): TokenStats {
  if (!(temperature > 0)) {
    throw new RangeError(`tokenLogProbsAndEntropy: temperature must be > 0, got ${temperature}`);
  }
  return tf.tidy(() => {
    const scaled = temperature === 1 ? logits : tf.div(logits, temperature);
    const logP = tf.logSoftmax(scaled) as tf.Tensor3D;
    const picked = pickTokens(logP, tf.cast(targets, "int32"));
    const entropy = entropyOfLogProbs(logP);
    return {
      logProbs: tf.mul(picked, mask) as tf.Tensor2D,
      entropy: tf.mul(entropy, mask) as tf.Tensor2D,
    };
  });
}
