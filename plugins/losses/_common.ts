/**
 * Small helpers shared by the loss plugins: reading a scalar for `record`, and the check
 * that `prepare` ran. The tensor helpers the losses use (masked means, stop-gradient,
 * token log-probabilities, KL and entropy from logits) are in `../_nn/token_stats.ts`.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";

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
