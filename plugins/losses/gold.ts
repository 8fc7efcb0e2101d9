/**
 * `gold`: GOLD, off-policy learning from demonstrations (Pang & He 2021, "Text Generation
 * by Learning from Demonstrations", ICLR, arXiv 2009.07839), used as a ReST loss in
 * Gulcehre et al. 2023. The NLL of each kept token is weighted by an importance weight
 * and a truncated return, both without gradient:
 *
 *     w_t = clamp(p~(a_t | s_t), u, 1)                 p~: lagged copy of pi
 *     r_t = max(p_BC(a_t | s_t), c)                    GOLD-s
 *     r_t = max(log p_BC(a_t | s_t) - B, c)            GOLD-p
 *     b_t = sum_{k=0..H} gamma^k r_{t+k}               positions past EOS count p_BC = 1
 *     L   = -sum_{b,t} w_t b_t log pi(a_t | s_t) / (number of target tokens)
 *
 * GOLD-p's baseline B is subtracted from every token's log-probability, as in the authors'
 * code (Pang & He 2021, `reward_type == 'logp'`: log(p_MLE) - q_baseline, then clamped at
 * trunc_min; their scripts use q_baseline = -60), so r_t = log p_BC + 60 by default and a
 * position past EOS (p_BC = 1) gets -B. Both variants are floored at c, as in the authors'
 * code, so the weights stay positive; the importance weight w_t is per token too. The lagged copy p~ is cloned from pi when an
 * Improve step starts and re-synced every K optimizer steps.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { definePlugin } from "../../core/plugin.ts";
import { recordScalar } from "../../core/train.ts";
import type { Loss, LossInput, Policy } from "../../core/types.ts";
import { prepared } from "./_common.ts";

/** Config of the `gold` loss. */
export interface GoldConfig {
  /** `s`: r = max(p_BC, c); `p`: r = max(log p_BC - B, c). */
  variant: "s" | "p";
  /** u: lower clamp of the importance weight p~(a|s). */
  minWeight: number;
  /** c: lower bound of the per-token reward. */
  minReward: number;
  /** B: GOLD-p's per-token log-likelihood baseline. */
  logBaseline: number;
  /** gamma: discount of the truncated return. */
  gamma: number;
  /** H: the return sums r_t ... r_{t+H}. */
  horizon: number;
  /** K: re-sync the lagged copy every K optimizer steps. */
  syncEvery: number;
}

/**
 * Truncated returns of one row: b_t = sum_{k=0..horizon} gamma^k r_{t+k}, where positions
 * at or past `rewards.length` (after EOS) contribute `pastEnd`.
 */
export function truncatedReturns(
  rewards: readonly number[],
  pastEnd: number,
  gamma: number,
  horizon: number,
): number[] {
  return rewards.map((_, t) => {
    let sum = 0;
    for (let k = 0; k <= horizon; k++) sum += gamma ** k * (rewards[t + k] ?? pastEnd);
    return sum;
  });
}

/**
 * `[B, T]` truncated returns b_t of {@link truncatedReturns} for a batch, as tfjs ops: the
 * per-token rewards r_t from the BC log-probabilities `bcLogP`, positions past each row's
 * end (mask 0, or past the batch's width) counting the reward of p_BC = 1.
 */
function goldReturns(bcLogP: tf.Tensor2D, mask: tf.Tensor2D, config: GoldConfig): tf.Tensor2D {
  const width = mask.shape[1];
  const reward = (logP: tf.Tensor) =>
    tf.maximum(
      config.variant === "s" ? tf.exp(logP) : tf.sub(logP, config.logBaseline),
      config.minReward,
    );
  const pastEnd = Math.max(config.variant === "s" ? 1 : -config.logBaseline, config.minReward);
  const rewards = tf.add(tf.mul(reward(bcLogP), mask), tf.mul(tf.sub(1, mask), pastEnd));
  // b = rewards . D + tail: D[j, t] = gamma^(j - t) for 0 <= j - t <= H, and tail[t] the
  // positions t + k past the batch's width, which are past every row's end.
  const discount = new Float32Array(width * width);
  const tail = new Float32Array(width);
  for (let t = 0; t < width; t++) {
    let past = 0;
    for (let k = 0; k <= config.horizon; k++) {
      if (t + k < width) discount[(t + k) * width + t] = config.gamma ** k;
      else past += config.gamma ** k * pastEnd;
    }
    tail[t] = past;
  }
  return tf.add(
    tf.matMul(rewards, tf.tensor2d(discount, [width, width])),
    tf.tensor2d(tail, [1, width]),
  ) as tf.Tensor2D;
}

/** The `gold` loss plugin. */
export default definePlugin({
  kind: "loss",
  name: "gold",
  summary:
    "GOLD (Pang & He 2021): NLL weighted by a clamped lagged-policy probability times a truncated return from p_BC.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      variant: {
        enum: ["s", "p"],
        default: "s",
        description: "GOLD-s: per-token reward r_t = max(p_BC(a_t|s_t), c); GOLD-p: " +
          "r_t = max(log p_BC(a_t|s_t) - B, c) (Pang & He 2021).",
      },
      minWeight: {
        type: "number",
        minimum: 0,
        maximum: 1,
        default: 0.2,
        description: "u: importance weight w_t = clamp(p~(a_t|s_t), u, 1), p~ the lagged copy " +
          "of the policy (Pang & He 2021 lower-bound p~ for stability).",
      },
      minReward: {
        type: "number",
        minimum: 0,
        default: 0.1,
        description: "c: lower bound of the per-token reward r_t, for both variants (as in " +
          "the authors' code).",
      },
      logBaseline: {
        type: "number",
        default: -60,
        description: "B: GOLD-p's baseline, subtracted from every token's log-probability: " +
          "r_t = max(log p_BC(a_t|s_t) - B, c), as in the authors' code (q_baseline, -60 in " +
          "their scripts; Pang & He 2021). Unused by GOLD-s.",
      },
      gamma: {
        type: "number",
        minimum: 0,
        maximum: 1,
        default: 1,
        description: "gamma: discount of the truncated return b_t = sum_{k=0..H} gamma^k r_{t+k}.",
      },
      horizon: {
        type: "integer",
        minimum: 0,
        maximum: 1000,
        default: 5,
        description: "H: the return b_t sums the rewards of tokens t..t+H; positions past EOS " +
          "count p_BC = 1 (r = 1 for GOLD-s, max(-B, c) for GOLD-p).",
      },
      syncEvery: {
        type: "integer",
        minimum: 1,
        default: 3000,
        description: "K: the lagged copy p~ is cloned from the policy when an Improve step " +
          "starts and re-synced every K optimizer steps.",
      },
    },
  },
  create(config: GoldConfig): Loss {
    let state: { policy: Policy; lagged: Policy; bc: Policy } | undefined;
    let steps = 0;
    return {
      variables: [],
      prepare(ctx) {
        if (state === undefined || state.policy !== ctx.policy) {
          state?.lagged.dispose();
          state = { policy: ctx.policy, lagged: ctx.policy.clone(), bc: ctx.bcPolicy };
        } else {
          state.lagged.copyWeightsFrom(ctx.policy);
          state.bc = ctx.bcPolicy;
        }
        steps = 0;
      },
      compute(input: LossInput, record): tf.Scalar {
        const { policy, lagged, bc } = prepared(state, "gold");
        const { batch } = input;
        const mask = batch.targetMask;
        // The weights come from the frozen copies alone, so they carry no gradient; tfjs ops
        // (not host reads) so that device backends compute them too.
        const weight = tf.clipByValue(
          tf.exp(lagged.tokenLogProbs(batch, { training: false })),
          config.minWeight,
          1,
        );
        const returns = goldReturns(bc.tokenLogProbs(batch, { training: false }), mask, config);
        const tokens = tf.maximum(tf.sum(mask), 1);
        recordScalar(record, "importance_weight", tf.div(tf.sum(tf.mul(weight, mask)), tokens));
        recordScalar(record, "return", tf.div(tf.sum(tf.mul(returns, mask)), tokens));
        // L = -sum w_t b_t log pi(a_t|s_t) / N over real tokens.
        const logP = policy.tokenLogProbs(batch, { training: true });
        const weighted = tf.sum(tf.mul(logP, tf.mul(tf.mul(weight, returns), mask)));
        return tf.div(tf.neg(weighted), tokens) as tf.Scalar;
      },
      afterStep() {
        steps++;
        if (state !== undefined && steps % config.syncEvery === 0) {
          state.lagged.copyWeightsFrom(state.policy);
        }
      },
      dispose() {
        state?.lagged.dispose();
        state = undefined;
      },
    };
  },
});
