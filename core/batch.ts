/**
 * Token batches for teacher-forced training, and the (label-smoothed) NLL loss.
 *
 * @module
 */

import { maxOf } from "./append.ts";
import * as tf from "@tensorflow/tfjs-core";
import type { Policy, Scalar, SmoothedLogProbs, SpecialIds, TokenBatch } from "./types.ts";

/**
 * Batches are padded to a multiple of this many positions. Padding is masked (attention never
 * reads padded sources, the decoder is causal, losses skip masked targets), so it changes no
 * value at a real position; what it changes is how many distinct buffer sizes a run asks for.
 * With sequence lengths that vary from batch to batch, every new size is fresh memory that the
 * allocator keeps: a LibreOffice-size model trained on lengths 4 to 33 grew to 2.0 GB RSS in
 * 240 steps, and to 0.7 GB (flat after 80 steps) with lengths rounded up to multiples of 8.
 * Measured on whole runs (2026-12-02): quickstart peak RSS 1.32 -> 0.78 GB; 300 BC steps at
 * the LibreOffice size 3.1 -> 2.4 GB (still growing: source and target lengths vary
 * independently there), at up to ~10% lower tokens/s from the padded positions.
 */
export const LENGTH_MULTIPLE = 8;

/** `length` rounded up to a multiple of {@link LENGTH_MULTIPLE}. */
export function paddedLength(length: number): number {
  return Math.ceil(length / LENGTH_MULTIPLE) * LENGTH_MULTIPLE;
}

/**
 * Pads pairs of id sequences into a {@link TokenBatch}. EOS is appended to every source and
 * target; `targetIn` is BOS followed by the target, `targetOut` the target followed by EOS.
 * A pair marked `truncated` (an output cut off at the length limit) gets no target EOS, so
 * no loss trains an end the output never had.
 */
export function makeBatch(
  pairs: readonly { source: readonly number[]; target: readonly number[]; truncated?: boolean }[],
  specials: SpecialIds,
): TokenBatch {
  if (pairs.length === 0) throw new RangeError("makeBatch: no pairs");
  const b = pairs.length;
  const s = paddedLength(maxOf(pairs.map((p) => p.source.length)) + 1);
  const t = paddedLength(maxOf(pairs.map((p) => p.target.length)) + 1);
  const source = new Int32Array(b * s).fill(specials.pad);
  const targetIn = new Int32Array(b * t).fill(specials.pad);
  const targetOut = new Int32Array(b * t).fill(specials.pad);
  const mask = new Float32Array(b * t);
  for (let i = 0; i < b; i++) {
    const { source: src, target: tgt } = pairs[i];
    source.set(src, i * s);
    source[i * s + src.length] = specials.eos;
    targetIn[i * t] = specials.bos;
    targetIn.set(tgt, i * t + 1);
    targetOut.set(tgt, i * t);
    const ends = pairs[i].truncated !== true;
    if (ends) targetOut[i * t + tgt.length] = specials.eos;
    mask.fill(1, i * t, i * t + tgt.length + (ends ? 1 : 0));
  }
  return {
    source: tf.tensor2d(source, [b, s], "int32"),
    targetIn: tf.tensor2d(targetIn, [b, t], "int32"),
    targetOut: tf.tensor2d(targetOut, [b, t], "int32"),
    targetMask: tf.tensor2d(mask, [b, t], "float32"),
  };
}

/** Whether `policy` implements {@link SmoothedLogProbs}. */
export function hasSmoothedLogProbs(policy: Policy): policy is Policy & SmoothedLogProbs {
  return typeof (policy as Partial<SmoothedLogProbs>).smoothedTokenLogProbs === "function";
}

/** Options of {@link nllLoss}. */
export interface NllOptions {
  /** Label smoothing epsilon: the target gets 1 - eps, the rest eps spread uniformly. */
  labelSmoothing: number;
  /** Dropout on. */
  training: boolean;
  /** `token`: mean over all target tokens; `sequence`: mean over sequences of per-sequence sums. */
  average: "token" | "sequence";
}

/**
 * Negative log-likelihood of `targetOut` under the policy, with optional label smoothing
 * (Szegedy et al. 2016): loss_t = -(1 - eps) log p(y_t) - eps * mean_v log p(v). Policies
 * implementing {@link SmoothedLogProbs} compute the smoothed term themselves; others go
 * through `forward`'s logits.
 */
export function nllLoss(policy: Policy, batch: TokenBatch, options: NllOptions): Scalar {
  return tf.tidy(() => {
    const eps = options.labelSmoothing;
    let perToken: tf.Tensor2D;
    if (eps > 0 && hasSmoothedLogProbs(policy)) {
      perToken = tf.neg(
        policy.smoothedTokenLogProbs(batch, { training: options.training, labelSmoothing: eps }),
      );
    } else if (eps > 0) {
      const { logits } = policy.forward(batch, { training: options.training });
      const logProbs = tf.logSoftmax(logits);
      const vocab = logits.shape[2];
      const target = tf.sum(tf.mul(logProbs, tf.oneHot(batch.targetOut, vocab)), -1);
      const uniform = tf.mean(logProbs, -1);
      perToken = tf.neg(tf.add(tf.mul(target, 1 - eps), tf.mul(uniform, eps))) as tf.Tensor2D;
    } else {
      perToken = tf.neg(policy.tokenLogProbs(batch, { training: options.training }));
    }
    const masked = tf.mul(perToken, batch.targetMask);
    if (options.average === "token") {
      return tf.div(tf.sum(masked), tf.maximum(tf.sum(batch.targetMask), 1)) as tf.Scalar;
    }
    return tf.mean(tf.sum(masked, 1)) as tf.Scalar;
  });
}
