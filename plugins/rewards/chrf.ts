/**
 * `chrf`: sentence-level chrF (or chrF++ with `wordOrder: 2`) against the reference, exactly as
 * sacreBLEU 2.x computes it, divided by 100 so rewards lie in [0, 1].
 *
 * @module
 */

import { referenceReward } from "./_reference.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { RewardModel } from "../../core/types.ts";
import { type ChrfOptions, sentenceChrf } from "../../core/metrics/chrf.ts";

/** Config of the `chrf` reward (sacreBLEU's `CHRF()` options). */
export interface ChrfConfig {
  /** Maximum character n-gram order. */
  charOrder: number;
  /** Maximum word n-gram order; 2 gives chrF++. */
  wordOrder: number;
  /** Weight of recall relative to precision. */
  beta: number;
  /** Lowercase hypothesis and reference first. */
  lowercase: boolean;
  /** Keep whitespace inside character n-grams. */
  whitespace: boolean;
}

const DEFAULTS: ChrfConfig = {
  charOrder: 6,
  wordOrder: 0,
  beta: 2,
  lowercase: false,
  whitespace: false,
};

export default definePlugin({
  kind: "reward",
  name: "chrf",
  summary: "Sentence chrF/chrF++ against the reference (sacreBLEU 2.x exact), scaled to [0, 1].",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      charOrder: {
        type: "integer",
        minimum: 1,
        maximum: 20,
        default: DEFAULTS.charOrder,
        description: "Maximum character n-gram order (sacreBLEU char_order).",
      },
      wordOrder: {
        type: "integer",
        minimum: 0,
        maximum: 10,
        default: DEFAULTS.wordOrder,
        description: "Maximum word n-gram order (sacreBLEU word_order); 2 gives chrF++.",
      },
      beta: {
        type: "number",
        minimum: 0,
        maximum: 100,
        default: DEFAULTS.beta,
        description: "Weight of recall relative to precision (the F-beta's beta).",
      },
      lowercase: {
        type: "boolean",
        default: DEFAULTS.lowercase,
        description: "Lowercase hypothesis and reference before scoring.",
      },
      whitespace: {
        type: "boolean",
        default: DEFAULTS.whitespace,
        description: "Keep whitespace inside character n-grams (sacreBLEU removes it by default).",
      },
    },
  },
  create(config: Partial<ChrfConfig>): RewardModel {
    const options: ChrfOptions = { ...DEFAULTS, ...config };
    return referenceReward("chrf", (hyp, ref) => sentenceChrf(hyp, ref, options));
  },
});
