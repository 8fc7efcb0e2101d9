/**
 * `ppo`: the online PPO baseline of the ReST paper's Table 1 (Schulman et al. 2017, arXiv
 * 1707.06347, applied to sequence generation as by Ziegler et al. 2019, arXiv 1909.08593,
 * and Stiennon et al. 2020, arXiv 2009.01325): the plugin, its options (schema and
 * defaults) and `create`. The training loop is in `loop.ts`, the maths it uses (KL-penalised
 * rewards, GAE, whitening, the clipped losses, the KL controllers) in `math.ts`.
 *
 * **Defaults and where they come from.** The ReST paper (Gulcehre et al. 2023) does not give
 * its PPO settings, so:
 *
 * - gamma 1, lambda 0.95, clip range 0.2, value clip range 0.2, value-loss coefficient 0.1,
 *   4 epochs per rollout batch, adaptive KL with initial coefficient 0.2, target 6 nats and
 *   horizon 10000, whitened advantages: the defaults of Ziegler et al.'s released code as
 *   carried into TRL's `PPOConfig` (v0.4), the most widely used PPO setup for language
 *   models.
 * - Reward normalisation (`rewardNormalization: "initial"`): Ziegler et al. (Section 2)
 *   normalise the reward to mean 0 and variance 1 under the initial policy; their KL
 *   settings assume that scale. Our rewards lie in [0, 1] with a spread of about 0.1, so
 *   without it a coefficient of 0.2 would let the KL term swamp the reward.
 * - Temperature 1 and no top-k/top-p: PPO's ratio and KL are only correct for samples drawn
 *   from the policy being optimised (ReST's Grow samples at 0.8; here a temperature other
 *   than 1 is allowed and then defines the optimised policy as softmax(logits / T)).
 * - Dropout off during PPO (TRL turns it off): with dropout the ratio is not 1 before the
 *   first update, which the clipping then mistakes for policy change.
 * - Entropy coefficient 0 (neither Ziegler et al. nor TRL use an entropy bonus; the KL
 *   penalty keeps the policy near the BC one).
 * - Rollout batches of 128 samples, minibatches of 32, learning rate 1e-4, gradient-norm
 *   clip 1: our choices for the small transformers this framework trains from scratch on a
 *   CPU (TRL's 1.41e-5 is for fine-tuning pretrained GPT-2; our BC runs use about 1e-3 and
 *   ReST's Improve 2e-4). 128 x 4 epochs / 32 gives 16 Adam steps per rollout batch.
 * - Sample budget (`samples: 0`): 6 outputs per training source, 1.5 times one ReST Grow
 *   step at its default 4 samples per source, the ratio of the paper's Table 1 (online PPO
 *   24M samples against ReST G=1's 16M).
 *
 * @module
 */

import { definePlugin, int, num } from "../../../core/plugin.ts";
import type { RunContext } from "../../../core/types.ts";
import { type PpoConfig, runPpo } from "./loop.ts";

const CLIP_SOURCE = "Ziegler et al. 2019's code / TRL PPOConfig default";

/** The `ppo` algorithm plugin. */
export default definePlugin({
  kind: "algorithm",
  name: "ppo",
  summary: "Online PPO from the BC policy with a KL penalty to it, GAE and a sample budget " +
    "(the paper's online RL baseline).",
  uses: { bc: "required", reward: "optional" },
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      samples: int(
        0,
        1e12,
        0,
        "Sample budget: total sampled outputs over the run (0: 6 per training source used, " +
          "1.5x one ReST Grow step at its default 4 per source, the ratio of the paper's " +
          "Table 1: PPO 24M vs ReST G=1 16M).",
      ),
      sources: int(0, 100000000, 0, "Training sources rollouts draw from (0: all)."),
      rolloutSize: int(
        1,
        1000000,
        128,
        "Sampled outputs per rollout batch (our choice for CPU budgets; TRL uses 256).",
      ),
      samplesPerSource: int(
        1,
        1000,
        1,
        "Samples per source within a rollout batch (1: one output per prompt, as in TRL).",
      ),
      temperature: {
        type: "number",
        exclusiveMinimum: 0,
        maximum: 100,
        default: 1,
        description: "Sampling temperature. 1 keeps PPO on-policy; another value makes the " +
          "optimised policy softmax(logits / T) (ratios, KL and entropy use it too).",
      },
      epochs: int(1, 1000, 4, `PPO epochs per rollout batch (4: ${CLIP_SOURCE}).`),
      minibatchSize: int(1, 65536, 32, "Sampled outputs per gradient step (our choice)."),
      learningRate: {
        type: "number",
        exclusiveMinimum: 0,
        maximum: 1,
        default: 0.0001,
        description: "Adam learning rate (our choice for small from-scratch transformers, " +
          "between ReST Improve's 2e-4 and fine-tuning rates; TRL's 1.41e-5 is for GPT-2).",
      },
      warmupSteps: int(0, 100000000, 0, "Linear learning-rate warm-up steps."),
      schedule: {
        enum: ["constant", "linear", "cosine", "inverse_sqrt"],
        default: "constant",
        description: "Learning-rate decay over the run's gradient steps.",
      },
      clipNorm: num(0, 1e6, 1, "Global gradient-norm clip (0: off; 1 as in bc and rest)."),
      clipRange: {
        type: "number",
        exclusiveMinimum: 0,
        maximum: 10,
        default: 0.2,
        description:
          `PPO clip range epsilon of the ratio (0.2: Schulman et al. 2017; ${CLIP_SOURCE}).`,
      },
      valueClipRange: num(
        0,
        1e6,
        0.2,
        `Clip range of value updates around the old values (0: unclipped; 0.2: ${CLIP_SOURCE}).`,
      ),
      valueCoef: num(0, 1e6, 0.1, `Weight of the value loss (0.1: ${CLIP_SOURCE}).`),
      entropyCoef: num(
        -1e6,
        1e6,
        0,
        "Weight of the entropy bonus (0: none, as in Ziegler et al. and TRL).",
      ),
      gamma: num(0, 1, 1, `Discount gamma over tokens (1: ${CLIP_SOURCE}).`),
      lambda: num(0, 1, 0.95, `GAE lambda (0.95: ${CLIP_SOURCE}).`),
      whitenAdvantages: {
        type: "boolean",
        default: true,
        description: `Whiten advantages over each rollout batch (${CLIP_SOURCE}).`,
      },
      rewardNormalization: {
        enum: ["initial", "none"],
        default: "initial",
        description: "initial: standardise scores by the mean and deviation of the first " +
          "rollout batch (samples of the BC policy), as Ziegler et al. 2019 (Section 2) do, so " +
          "their KL settings apply; none: raw scores in [0, 1].",
      },
      kl: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "Per-token KL penalty -beta (log pi_old - log pi_BC) against the frozen " +
          "BC policy.",
        properties: {
          adaptive: {
            type: "boolean",
            default: true,
            description: "Adapt beta towards `target` (Ziegler et al. 2019, Section 2.2; on " +
              "in TRL's defaults); false keeps beta = coef.",
          },
          coef: num(0, 1e6, 0.2, `The (initial) coefficient beta (0.2: ${CLIP_SOURCE}).`),
          target: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 1e6,
            default: 6,
            description: `Target KL per sequence in nats, adaptive only (6: ${CLIP_SOURCE}).`,
          },
          horizon: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 1e12,
            default: 10000,
            description: "Horizon in samples: beta changes by at most a factor 1 + 0.2 " +
              `n / horizon per rollout of n samples, adaptive only (10000: ${CLIP_SOURCE}).`,
          },
        },
      },
      critic: {
        enum: ["head", "network", "baseline"],
        default: "head",
        description: "Value estimates: head (a value head on the policy, shared trunk; " +
          "cheapest), network (a separate copy of the BC model with a value head, as in " +
          "Ziegler et al.), baseline (no network: a running mean of the returns per position).",
      },
      baselineMomentum: {
        type: "number",
        minimum: 0,
        exclusiveMaximum: 1,
        default: 0.9,
        description: "critic baseline only: weight of the old running mean in each update.",
      },
      dropout: {
        type: "boolean",
        default: false,
        description: "Dropout during PPO's forward passes (off, as in TRL: it makes the " +
          "ratio differ from 1 before any update).",
      },
      evalEvery: int(
        0,
        100000000,
        10,
        "Selection reward (evaluation.selectBy) every this many rollout batches, keeping the " +
          "best weights (0: only at the end).",
      ),
      evalSize: int(0, 100000000, 200, "Validation pairs for those evaluations (0: all)."),
    },
  },
  check(config: PpoConfig) {
    const problems: { path: string; message: string }[] = [];
    if (config.rolloutSize % config.samplesPerSource !== 0) {
      problems.push({
        path: "/rolloutSize",
        message:
          `must be a multiple of samplesPerSource (${config.samplesPerSource}), got ${config.rolloutSize}`,
      });
    }
    return problems;
  },
  smoke: (config: PpoConfig): PpoConfig => ({
    ...config,
    sources: Math.min(config.sources || 24, 24),
    samples: Math.min(config.samples || 48, 48),
    rolloutSize: Math.min(config.rolloutSize, 16 * config.samplesPerSource),
    minibatchSize: Math.min(config.minibatchSize, 8),
    epochs: Math.min(config.epochs, 2),
    evalEvery: 0,
    evalSize: Math.min(config.evalSize || 8, 8),
  }),
  create(config: PpoConfig) {
    return { run: (ctx: RunContext) => runPpo(ctx, config) };
  },
});
