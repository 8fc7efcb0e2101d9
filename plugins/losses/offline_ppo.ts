/**
 * `offline_ppo`: the PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) on the
 * stored Grow rows, with the stored behaviour log-probabilities as pi_old:
 *
 *     r_t = exp(log pi(a_t|s_t) - log pi_b(a_t|s_t))
 *     A_t = R - baseline                  normalised over the batch's tokens (optional)
 *     L   = -mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)
 *           + beta * mean_t KL(pi || pi_BC) - entropyCoef * mean_t H(pi)
 *           (+ valueCoef * 0.5 * mean_t (V_t - R)^2 with the value-head baseline)
 *
 * The baseline is the row's source mean reward over the Grow set (`source_mean`, a
 * Monte-Carlo estimate of the behaviour policy's value of the source) or the policy's
 * value head V(s_t) (`value_head`, trained by the value term). Advantages carry no
 * gradient. Diagnostics: `clip_fraction`, `ratio`, `entropy`, `behaviour_kl` (the
 * sample estimate mean_t log pi_b - log pi of KL(pi_b || pi)), `kl` (to pi_BC, when
 * beta > 0) and `value_loss`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { definePlugin } from "../../core/plugin.ts";
import type { Loss, LossInput, Policy } from "../../core/policy.ts";
import {
  entropyFromLogits,
  klFromLogits,
  maskedMean,
  pickTokens,
  prepared,
  read,
  stopGradient,
} from "./_common.ts";

/** Config of the `offline_ppo` loss. */
export interface OfflinePpoConfig {
  /** eps: clip range of the ratio. */
  clip: number;
  /** Baseline subtracted from the reward. */
  advantage: "source_mean" | "value_head";
  /** Normalise advantages to zero mean and unit variance over the batch's tokens. */
  normalizeAdvantages: boolean;
  /** beta: weight of KL(pi || pi_BC). */
  klCoef: number;
  /** Weight of the entropy bonus. */
  entropyCoef: number;
  /** Weight of the value loss (value-head baseline only). */
  valueCoef: number;
}

/** The `offline_ppo` loss plugin. */
export default definePlugin({
  kind: "loss",
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
          "r_t = pi(a_t|s_t) / pi_b(a_t|s_t) (Schulman et al. 2017; 0.2 as in their experiments).",
      },
      advantage: {
        enum: ["source_mean", "value_head"],
        default: "source_mean",
        description: "Baseline of A_t = R - baseline: `source_mean`, the mean reward of the " +
          "row's source over the Grow set; `value_head`, the policy's value head V(s_t) " +
          "(the model must have one), trained with valueCoef * 0.5 * (V_t - R)^2.",
      },
      normalizeAdvantages: {
        type: "boolean",
        default: true,
        description: "Normalise A to zero mean and unit standard deviation over the batch's " +
          "real tokens: A <- (A - mean) / (std + 1e-8).",
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
  create(config: OfflinePpoConfig): Loss {
    let policies: { policy: Policy; bc: Policy } | undefined;
    return {
      variables: [],
      prepare(ctx) {
        if (config.advantage === "value_head" && !ctx.policy.hasValueHead) {
          throw new TypeError(
            'loss "offline_ppo": advantage "value_head" needs a model with a value head ' +
              '(or use advantage "source_mean")',
          );
        }
        policies = { policy: ctx.policy, bc: ctx.bcPolicy };
      },
      compute(input: LossInput, record): tf.Scalar {
        const { policy, bc } = prepared(policies, "offline_ppo");
        const { batch } = input;
        const mask = batch.targetMask;
        const { logits, values } = policy.forward(batch, { training: true });
        const logP = pickTokens(tf.logSoftmax(logits), batch.targetOut);
        const ratio = tf.exp(tf.mul(tf.sub(logP, input.behaviourLogProbs), mask));

        // Advantages (no gradient): reward minus baseline, per token.
        const reward = tf.expandDims(input.rewards, 1); // [B, 1]
        let advantage: tf.Tensor = config.advantage === "value_head"
          ? tf.sub(reward, stopGradient(values!))
          : tf.mul(tf.sub(reward, tf.expandDims(input.sourceMeanRewards, 1)), mask);
        if (config.normalizeAdvantages) {
          const mean = maskedMean(advantage, mask);
          const std = tf.sqrt(maskedMean(tf.square(tf.sub(advantage, mean)), mask));
          advantage = tf.div(tf.sub(advantage, mean), tf.add(std, 1e-8));
        }

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
          record("kl", read(kl));
        }
        if (config.advantage === "value_head") {
          const valueLoss = tf.mul(maskedMean(tf.square(tf.sub(values!, reward)), mask), 0.5);
          loss = tf.add(loss, tf.mul(valueLoss, config.valueCoef));
          record("value_loss", read(valueLoss));
        }

        const outside = tf.cast(tf.greater(tf.abs(tf.sub(ratio, 1)), config.clip), "float32");
        record("clip_fraction", read(maskedMean(outside, mask)));
        record("ratio", read(maskedMean(ratio, mask)));
        record("entropy", read(entropy));
        record("behaviour_kl", read(maskedMean(tf.sub(input.behaviourLogProbs, logP), mask)));
        return loss as tf.Scalar;
      },
      afterStep() {},
      dispose() {
        policies = undefined;
      },
    };
  },
});
