/**
 * `offline_ppo`: the PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) on the
 * stored Grow rows, with the stored behaviour log-probabilities as mu = pi_old:
 *
 *     r_t = exp(log pi^T(a_t|s_t) - log mu(a_t|s_t))     pi^T = softmax(logits / T)
 *     A_t = R - baseline                  divided by its std over the batch's tokens (optional)
 *     L   = -mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)
 *           + beta * mean_t KL(pi || pi_BC) - entropyCoef * mean_t H(pi)
 *           (+ valueCoef * 0.5 * mean_t (V_t - R)^2 with the value-head baseline)
 *
 * Importance ratio: Grow samples from mu = softmax(logits_old / T) (T = 0.8 by default), so
 * r_t compares the current policy at the same temperature, pi^T, with mu: r_t = 1 at the
 * Grow weights and the clip bounds how far the next Grow step's sampling distribution
 * moves. T is each row's `temperature` and the stored `logProbs` are then log mu. Rows
 * without it (Grow files from before it was recorded) hold untempered log-probs, and T = 1
 * is used for them: r_t is then pi / pi_old at temperature 1, a policy ratio rather than
 * the importance ratio of the tempered sampling; their share is reported as
 * `untempered_rows`. (Top-k / top-p truncation of the sampling is not modelled.)
 *
 * Advantages: the baseline is the row's source mean reward over the whole Grow set before
 * the Improve filter (`source_mean`, a Monte-Carlo estimate of the behaviour policy's
 * value of the source) or the policy's value head V(s_t) (`value_head`, trained by the
 * value term). They are never re-centred over the kept rows: the filter keeps rows above
 * tau >= the Grow mean, and re-centring would give about half of them a negative advantage
 * (pushing down the very samples ReST selected); `normalizeAdvantages` only rescales.
 * Advantages carry no gradient. Diagnostics: `clip_fraction`, `ratio`, `entropy`,
 * `behaviour_kl` (the sample estimate mean_t log mu - log pi^T of KL(mu || pi^T)),
 * `positive_advantage` (share of tokens with A > 0), `untempered_rows`, `kl` (to pi_BC,
 * when beta > 0) and `value_loss`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { defineLoss } from "../../core/plugin.ts";
import { recordScalar } from "../../core/train.ts";
import type { GrowRow } from "../../core/types.ts";
import {
  entropyFromLogits,
  klFromLogits,
  maskedMean,
  pickTokens,
  stopGradient,
} from "../_nn/token_stats.ts";

/** Config of the `offline_ppo` loss. */
export interface OfflinePpoConfig {
  /** eps: clip range of the ratio. */
  clip: number;
  /** Baseline subtracted from the reward. */
  advantage: "source_mean" | "value_head";
  /** Divide advantages by their standard deviation over the batch's tokens (no re-centring). */
  normalizeAdvantages: boolean;
  /** beta: weight of KL(pi || pi_BC). */
  klCoef: number;
  /** Weight of the entropy bonus. */
  entropyCoef: number;
  /** Weight of the value loss (value-head baseline only). */
  valueCoef: number;
}

/** A row's Grow temperature (1 when not recorded: untempered log-probs), checked. */
function rowTemperature(row: GrowRow): number {
  const t = row.temperature;
  if (t === undefined) return 1;
  if (typeof t !== "number" || !(t > 0) || !Number.isFinite(t)) {
    throw new RangeError(
      `loss "offline_ppo": a Grow row's temperature must be a positive number, got ${t}`,
    );
  }
  return t;
}

/**
 * `[B, T]` log softmax(logits_b / T_b)[a_t] with one temperature per row (the plain
 * log-probabilities when every T_b is 1).
 */
export function temperedLogProbs(
  logits: tf.Tensor3D,
  tokens: tf.Tensor2D,
  temperatures: readonly number[],
): tf.Tensor2D {
  const scaled = temperatures.every((t) => t === 1)
    ? logits
    : tf.div(logits, tf.tensor3d([...temperatures], [temperatures.length, 1, 1]));
  return pickTokens(tf.logSoftmax(scaled) as tf.Tensor3D, tokens);
}

/** The `offline_ppo` loss plugin. */
export default defineLoss({
  name: "offline_ppo",
  summary: "PPO-clip (Schulman et al. 2017) on stored Grow rows, behaviour log-probs as pi_old.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      clip: {
        type: "number",
        exclusiveMinimum: 0,
        maximum: 1,
        default: 0.2,
        description: "eps: L = -mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t), " +
          "r_t = pi^T(a_t|s_t) / mu(a_t|s_t), mu the Grow step's sampling distribution at " +
          "temperature T and pi^T = softmax(logits / T) (Schulman et al. 2017; 0.2 as in " +
          "their experiments).",
      },
      advantage: {
        enum: ["source_mean", "value_head"],
        default: "source_mean",
        description: "Baseline of A_t = R - baseline: `source_mean`, the mean reward of the " +
          "row's source over the whole Grow set (before the Improve filter, so kept rows " +
          "above it get A > 0); `value_head`, the policy's value head V(s_t) " +
          "(the model must have one), trained with valueCoef * 0.5 * (V_t - R)^2.",
      },
      normalizeAdvantages: {
        type: "boolean",
        default: true,
        description: "Rescale A by its standard deviation over the batch's real tokens, " +
          "A <- A / (std + 1e-8), without subtracting the mean: the baseline already " +
          "centres A over the Grow set, and re-centring over the kept rows would make about " +
          "half of them negative.",
      },
      klCoef: {
        type: "number",
        minimum: 0,
        default: 0,
        description: "beta: adds beta * mean_t KL(pi(.|s_t) || pi_BC(.|s_t)), the full-" +
          "distribution KL to the frozen BC policy (costs a BC forward pass; 0: off).",
      },
      entropyCoef: {
        type: "number",
        minimum: 0,
        default: 0,
        description: "Subtracts entropyCoef * mean_t H(pi(.|s_t)) (entropy bonus; 0: off).",
      },
      valueCoef: {
        type: "number",
        minimum: 0,
        default: 1,
        description: "With the value-head baseline, adds valueCoef * 0.5 * mean_t (V_t - R)^2 " +
          "(the Monte-Carlo return of every token is the row's reward R).",
      },
    },
  },
  create(config: OfflinePpoConfig) {
    return {
      prepare(ctx) {
        if (config.advantage === "value_head" && !ctx.policy.hasValueHead) {
          throw new TypeError(
            'loss "offline_ppo": advantage "value_head" needs a model with a value head ' +
              '(or use advantage "source_mean")',
          );
        }
      },
      compute(input, record, { policy, bcPolicy: bc }) {
        const { batch } = input;
        const mask = batch.targetMask;
        const { logits, values } = policy.forward(batch, { training: true });
        // log pi^T(a_t|s_t) at each row's Grow temperature, compared with log mu(a_t|s_t).
        const temperatures = input.rows.map(rowTemperature);
        const logP = temperedLogProbs(logits, batch.targetOut, temperatures);
        const ratio = tf.exp(tf.mul(tf.sub(logP, input.behaviourLogProbs), mask));

        // Advantages (no gradient): reward minus baseline, per token; only rescaled.
        const reward = tf.expandDims(input.rewards, 1); // [B, 1]
        let advantage: tf.Tensor = config.advantage === "value_head"
          ? tf.mul(tf.sub(reward, stopGradient(values!)), mask)
          : tf.mul(tf.sub(reward, tf.expandDims(input.sourceMeanRewards, 1)), mask);
        if (config.normalizeAdvantages) {
          const mean = maskedMean(advantage, mask);
          const std = tf.sqrt(maskedMean(tf.square(tf.sub(advantage, mean)), mask));
          advantage = tf.div(advantage, tf.add(std, 1e-8));
        }
        const positive = tf.cast(tf.greater(advantage, 0), "float32");
        recordScalar(record, "positive_advantage", maskedMean(positive, mask));
        record(
          "untempered_rows",
          input.rows.filter((r) => r.temperature === undefined).length /
            Math.max(input.rows.length, 1),
        );

        // Clipped surrogate.
        const clipped = tf.clipByValue(ratio, 1 - config.clip, 1 + config.clip);
        const surrogate = tf.minimum(tf.mul(ratio, advantage), tf.mul(clipped, advantage));
        let loss = tf.neg(maskedMean(surrogate, mask));

        const entropy = maskedMean(entropyFromLogits(logits), mask);
        if (config.entropyCoef > 0) loss = tf.sub(loss, tf.mul(entropy, config.entropyCoef));
        if (config.klCoef > 0) {
          const bcLogits = bc.forward(batch, { training: false }).logits;
          const kl = maskedMean(klFromLogits(logits, bcLogits), mask);
          loss = tf.add(loss, tf.mul(kl, config.klCoef));
          recordScalar(record, "kl", kl);
        }
        if (config.advantage === "value_head") {
          const valueLoss = tf.mul(maskedMean(tf.square(tf.sub(values!, reward)), mask), 0.5);
          loss = tf.add(loss, tf.mul(valueLoss, config.valueCoef));
          recordScalar(record, "value_loss", valueLoss);
        }

        const outside = tf.cast(tf.greater(tf.abs(tf.sub(ratio, 1)), config.clip), "float32");
        recordScalar(record, "clip_fraction", maskedMean(outside, mask));
        recordScalar(record, "ratio", maskedMean(ratio, mask));
        recordScalar(record, "entropy", entropy);
        recordScalar(
          record,
          "behaviour_kl",
          maskedMean(tf.sub(input.behaviourLogProbs, logP), mask),
        );
        return loss as tf.Scalar;
      },
    };
  },
});
