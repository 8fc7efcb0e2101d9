/**
 * `bleu`: sentence-level BLEU against the reference, exactly as sacreBLEU 2.x's
 * `BLEU(effective_order=True).sentence_score` computes it by default, divided by 100 so
 * rewards lie in [0, 1].
 *
 * @module
 */

import { referenceReward } from "./_reference.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { RewardModel } from "../../core/types.ts";
import {
  type BleuOptions,
  type BleuSmoothMethod,
  type BleuTokenizer,
  sentenceBleu,
} from "../../core/metrics/bleu.ts";

/** Config of the `bleu` reward (sacreBLEU's `BLEU()` options). */
export interface BleuConfig {
  /** Lowercase hypothesis and reference first. */
  lowercase: boolean;
  /** Tokenizer: sacreBLEU's `13a` or `none`. */
  tokenize: BleuTokenizer;
  /** Smoothing method. */
  smoothMethod: BleuSmoothMethod;
  /** Leave n-gram orders the hypothesis is too short for out of the geometric mean. */
  effectiveOrder: boolean;
}

const DEFAULTS: BleuConfig = {
  lowercase: false,
  tokenize: "13a",
  smoothMethod: "exp",
  effectiveOrder: true,
};

export default definePlugin({
  kind: "reward",
  name: "bleu",
  summary: "Sentence BLEU against the reference (sacreBLEU 2.x exact), scaled to [0, 1].",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      lowercase: {
        type: "boolean",
        default: DEFAULTS.lowercase,
        description: "Lowercase hypothesis and reference before scoring.",
      },
      tokenize: {
        type: "string",
        enum: ["13a", "none"],
        default: DEFAULTS.tokenize,
        description: "Tokenizer: sacreBLEU's default 13a (mteval-v13a), or none (whitespace only).",
      },
      smoothMethod: {
        type: "string",
        enum: ["exp", "floor", "add-k", "none"],
        default: DEFAULTS.smoothMethod,
        description: "Smoothing of zero n-gram precisions (sacreBLEU smooth_method).",
      },
      effectiveOrder: {
        type: "boolean",
        default: DEFAULTS.effectiveOrder,
        description:
          "Leave n-gram orders the hypothesis is too short for out of the mean (recommended for sentences).",
      },
    },
  },
  create(config: Partial<BleuConfig>): RewardModel {
    const options: BleuOptions = { ...DEFAULTS, ...config };
    return referenceReward("bleu", (hyp, ref) => sentenceBleu(hyp, ref, options));
  },
});
