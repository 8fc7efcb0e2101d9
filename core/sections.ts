/**
 * The manifest's non-plugin sections: `bc` (behaviour-cloning budget) and `evaluation`
 * (decoding for evaluation). Their schemas carry every default.
 *
 * @module
 */

import { int, type JsonSchema } from "./plugin.ts";
import type { BcSettings, EvalSettings } from "./types.ts";

/** JSON Schema of the `bc` section; every field has a default. */
export const BC_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  default: {},
  description:
    "Behaviour cloning (supervised NLL training) shared by every run. Trained to convergence: " +
    "every evalEvery steps the policy decodes the selection half of validation greedily and is " +
    "scored by corpus chrF (whatever the reward); training stops once chrF has not improved " +
    "for patience evaluations, or at steps, and keeps the best evaluation's weights.",
  properties: {
    steps: int(
      0,
      10_000_000,
      3000,
      "Cap on optimizer steps; BC normally stops earlier, by patience. A run that reaches the " +
        "cap was still improving: raise it.",
    ),
    batchSize: int(1, 65536, 32, "Sentence pairs per batch."),
    learningRate: {
      type: "number",
      exclusiveMinimum: 0,
      maximum: 1,
      default: 0.0007,
      description: "Peak learning rate (Adam).",
    },
    warmupSteps: int(0, 10_000_000, 300, "Linear warm-up steps."),
    schedule: {
      enum: ["constant", "linear", "cosine", "inverse_sqrt"],
      default: "inverse_sqrt",
      description: "Learning-rate decay after warm-up.",
    },
    clipNorm: {
      type: "number",
      minimum: 0,
      maximum: 1e6,
      default: 1,
      description: "Global gradient-norm clip (0: off).",
    },
    evalEvery: int(
      0,
      10_000_000,
      250,
      "Evaluate (corpus chrF of greedy output on the selection split) every this many steps " +
        "(0: only at the end).",
    ),
    patience: int(
      0,
      1000,
      4,
      "Stop after this many evaluations in a row without a higher selection chrF (0: never; " +
        "train to the steps cap).",
    ),
    labelSmoothing: {
      type: "number",
      minimum: 0,
      maximum: 0.99,
      default: 0.1,
      description: "Label smoothing of the NLL.",
    },
    maxTokens: int(1, 4096, 64, "Leave out training pairs longer than this (tokens)."),
    evalSize: int(
      0,
      10_000_000,
      300,
      "Pairs of the selection split (half of validation) for the periodic evaluation (0: all).",
    ),
    checkpointSeconds: int(
      0,
      86400,
      120,
      "Save the training state this often, so --resume loses at most this much work " +
        "(0: after every step).",
    ),
  },
};

/** JSON Schema of the `evaluation` section. */
export const EVAL_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  default: {},
  description: "How policies are decoded and evaluated.",
  properties: {
    maxLen: int(1, 4096, 64, "Maximum output tokens when decoding."),
    batchSize: int(1, 65536, 64, "Sources per decoding batch."),
    validSize: int(0, 10_000_000, 0, "Validation pairs in final evaluations (0: all)."),
    testSize: int(0, 10_000_000, 0, "Test pairs in final evaluations (0: all)."),
    temperature: {
      type: "number",
      exclusiveMinimum: 0,
      maximum: 100,
      default: 0.8,
      description: "Sampling temperature of the sampled and Best-of-N evaluations.",
    },
    bestOfN: {
      type: "array",
      items: { type: "integer", minimum: 1, maximum: 4096 },
      uniqueItems: true,
      default: [],
      description:
        "Best-of-N (ReST paper, Figure 6): sample max(N) outputs per validation source, keep " +
        "the reward model's best of the first N; reported as bon/valid_reward@N (reward of " +
        "the pick) and bon/valid_chrf@N (corpus chrF of the picks against the references).",
    },
    bestOfNSize: int(0, 10_000_000, 200, "Validation pairs used for Best-of-N (0: all)."),
    selectBy: {
      enum: ["greedy", "sample"],
      default: "sample",
      description: "How ReST's Improve steps and PPO choose among their candidate weights " +
        "(the incoming ones included) on the selection split: `sample`, the mean reward of " +
        "selectSamples outputs per source at the evaluation temperature, drawn with the same " +
        "seed for every candidate (the distribution the next Grow step samples from); " +
        "`greedy`, the reward of the greedy output. BC always selects on greedy chrF.",
    },
    selectSamples: int(1, 1024, 4, "selectBy sample: outputs per selection source."),
    shardSources: int(
      1,
      1_000_000,
      256,
      "Sources per shard of the final evaluation's decoding (greedy, sampled and Best-of-N " +
        "outputs), the unit the executor hands out; each shard is seeded by (run seed, what " +
        "is evaluated, shard index), so changing it changes the sampled outputs.",
    ),
  },
};

/** Scales the BC budget down for `--smoke`. */
export function smokeBc(settings: BcSettings): BcSettings {
  return {
    ...settings,
    steps: Math.min(settings.steps, 30),
    warmupSteps: Math.min(settings.warmupSteps, 5),
    evalEvery: Math.min(settings.evalEvery, 15),
    evalSize: Math.min(settings.evalSize || 20, 20),
  };
}

/** Scales evaluation down for `--smoke`. */
export function smokeEval(settings: EvalSettings): EvalSettings {
  return {
    ...settings,
    maxLen: Math.min(settings.maxLen, 24),
    validSize: Math.min(settings.validSize || 20, 20),
    testSize: Math.min(settings.testSize || 20, 20),
    bestOfN: settings.bestOfN.filter((n) => n <= 4),
    bestOfNSize: Math.min(settings.bestOfNSize || 8, 8),
    selectSamples: Math.min(settings.selectSamples, 2),
  };
}
