/**
 * `rest`: Reinforced Self-Training (Gulcehre et al. 2023, Algorithm 1). The algorithm itself
 * is `runRest` in core/rest.ts, read top to bottom; this file is its config schema.
 *
 * @module
 */

import { UserError } from "../../core/errors.ts";
import { definePlugin, int, num } from "../../core/plugin.ts";
import { type RestConfig, runRest } from "../../core/rest.ts";
import { rewardUpdateOn } from "../../core/reward_update.ts";
import type { RewardModel, RunContext } from "../../core/types.ts";

export type { RestConfig } from "../../core/rest.ts";

export default definePlugin({
  kind: "algorithm",
  name: "rest",
  summary: "ReST: G Grow steps (sample, score, store), each followed by I filtered Improve steps.",
  uses: { bc: "required", loss: "required", threshold: "required", reward: "optional" },
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      growSteps: int(0, 1000, 1, "Number of Grow steps G."),
      improveSteps: int(0, 1000, 4, "Improve steps I after each Grow step."),
      accumulate: {
        type: "boolean",
        default: false,
        description: "Improve on the union of all Grow sets so far instead of the latest one.",
      },
      grow: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "Grow: sampling from the current policy.",
        properties: {
          samplesPerSource: int(1, 10000, 4, "Samples N per training source."),
          temperature: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 100,
            default: 0.8,
            description: "Sampling temperature T (the paper uses 0.8). Each row stores its " +
              "behaviour log-probabilities log softmax(logits / T)[a_t] and T.",
          },
          topK: int(0, 1000000, 0, "Top-k truncation of sampling (0: off)."),
          topP: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 1,
            default: 1,
            description: "Nucleus (top-p) truncation of sampling (1: off).",
          },
          includeOriginal: {
            type: "boolean",
            default: true,
            description: "D_g = samples united with the original dataset D (Gulcehre et al. " +
              "2023, Algorithm 1): every training pair is added to the Grow set, scored by " +
              "the reward like the samples.",
          },
          sources: int(
            0,
            100000000,
            0,
            "Training sources to sample from: a seeded uniform sample of this many (0: all).",
          ),
          shardSources: int(
            1,
            1000000,
            256,
            "Sources per Grow shard: the unit the executor hands out (to a queue worker) and " +
              "a resumed Grow step keeps. Each shard is seeded by (seed, Grow step, shard " +
              "index), so the Grow set depends on this size but never on the executor.",
          ),
        },
      },
      improve: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "Improve: filtered fine-tuning of the current weights.",
        properties: {
          epochs: num(0, 1000, 1, "Passes over the kept rows per Improve step."),
          steps: int(1, 100000000, 2000, "Cap on the optimizer steps of one Improve step."),
          batchSize: int(1, 65536, 32, "Rows per batch."),
          learningRate: num(
            0,
            1,
            0,
            "Learning rate of the run's first Improve step; 0: half of BC's learning rate " +
              "at its last step, so that Improve continues below where BC ended.",
          ),
          learningRateDecay: num(
            0,
            1,
            0.7,
            "Multiplier of the learning rate from one Improve step to the next, counted over " +
              "the whole run (it keeps decaying across Grow steps).",
          ),
          warmupSteps: int(0, 100000000, 20, "Warm-up steps of each Improve step."),
          schedule: {
            enum: ["constant", "linear", "cosine", "inverse_sqrt"],
            default: "constant",
            description: "Learning-rate decay within an Improve step.",
          },
          clipNorm: num(0, 1e6, 1, "Global gradient-norm clip (0: off)."),
          evalEvery: int(
            0,
            100000000,
            100,
            "Evaluate the reward on the selection split every this many steps (0: only " +
              "before and after); the incoming weights are always a candidate, and the step " +
              "ends with the best weights (Algorithm 1: while reward improves on D_eval).",
          ),
          patience: int(
            0,
            100000,
            3,
            "Stop an Improve step after this many evaluations without improvement (0: never).",
          ),
          evalSize: int(0, 100000000, 200, "Selection pairs per evaluation (0: all)."),
          references: {
            enum: ["filter", "keep"],
            default: "filter",
            description: "`filter`: the original pairs pass through the reward filter like " +
              "the samples (the paper); `keep`: they are always kept.",
          },
        },
      },
      rewardUpdate: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "A reward that learns between Grow steps (core/reward_update.ts): after " +
          "each Grow step, the samples of a seeded slice of its sources are labelled with " +
          "sentence chrF against the references (a stand-in for fresh human labels), the " +
          "reward is fine-tuned on them (a new version in the run folder's " +
          "reward_update_<g>/; the experiment's reward is unchanged), and Improve filters the " +
          "Grow set without those sources, re-scored by the new version " +
          "(grow_<g>.rescored.jsonl). Needs a reward that can adapt (learned). Off by default.",
        properties: {
          fraction: num(
            0,
            0.9,
            0,
            "Share of the Grow set's sources whose samples are labelled and trained on; " +
              "their rows are left out of Improve. 0: off.",
          ),
          checkFraction: num(
            0,
            0.9,
            0.05,
            "Share of the sources (disjoint from the labelled ones) labelled only to report " +
              "the reward's Pearson and Kendall with chrF before and after the update; they " +
              "stay in Improve.",
          ),
          references: {
            type: "boolean",
            default: true,
            description: "Also fine-tune on the labelled sources' original pairs (label: chrF " +
              "of the reference against itself, 1). On samples alone the learned reward drifted " +
              "down on references too (mean 0.73 -> 0.57 in README's measurement).",
          },
          epochs: num(0, 1000, 3, "Passes of the fine-tuning over the labelled rows."),
          learningRate: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 1,
            default: 0.0002,
            description: "Constant learning rate of the fine-tuning (the learned reward " +
              "trains at a peak of 0.002; a tenth of it moves the weights without forgetting).",
          },
          batchSize: int(1, 65536, 32, "Labelled rows per fine-tuning step."),
        },
      },
    },
  },
  check(config: RestConfig) {
    if (rewardUpdateOn(config.rewardUpdate) && config.accumulate) {
      return [{
        path: "/rewardUpdate/fraction",
        message: "cannot be used with accumulate: true (earlier Grow sets would keep the " +
          "scores of older reward versions); set accumulate to false or fraction to 0",
      }];
    }
    return [];
  },
  smoke: (config: RestConfig): RestConfig => ({
    ...config,
    grow: {
      ...config.grow,
      samplesPerSource: Math.min(config.grow.samplesPerSource, 2),
      sources: Math.min(config.grow.sources || 24, 24),
    },
    improve: {
      ...config.improve,
      steps: Math.min(config.improve.steps, 6),
      warmupSteps: Math.min(config.improve.warmupSteps, 2),
      evalEvery: 0,
      evalSize: Math.min(config.improve.evalSize || 8, 8),
    },
  }),
  create(config: RestConfig) {
    return {
      run: (ctx: RunContext) => runRest(ctx, config),
      checkReward(reward: RewardModel, name: string) {
        if (rewardUpdateOn(config.rewardUpdate) && reward.adapt === undefined) {
          throw new UserError(
            `algorithm rest: rewardUpdate.fraction is ${config.rewardUpdate!.fraction}, but ` +
              `reward "${name}" cannot be fine-tuned between Grow steps (it has no adapt()); ` +
              `use the learned reward or set rewardUpdate.fraction to 0`,
          );
        }
      },
    };
  },
});
