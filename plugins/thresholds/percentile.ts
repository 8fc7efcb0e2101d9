/**
 * `percentile`: tau_i is the q_i-th percentile of the Grow set's rewards, over all rows
 * (`perSource: false`) or separately for each source's rows (`perSource: true`, so every
 * source keeps its own best samples).
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import type { ThresholdSchedule } from "../../core/types.ts";
import {
  ABOVE_MEAN_PROPERTY,
  increasingProblems,
  meanOf,
  percentile,
  scheduleValue,
} from "./_common.ts";

/** Config of the `percentile` schedule. */
export interface PercentileConfig {
  /** Percentile (0-100) of Improve step i, non-decreasing. */
  percentiles: number[];
  /** Compute percentiles per source instead of over the whole Grow set. */
  perSource: boolean;
  /** Raise every threshold to at least the (per-source) mean reward. */
  aboveMean: boolean;
}

export default definePlugin({
  kind: "threshold",
  name: "percentile",
  summary: "Threshold at a rising percentile of the Grow set's rewards, globally or per source.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      percentiles: {
        type: "array",
        minItems: 1,
        items: { type: "number", minimum: 0, maximum: 100 },
        default: [50, 70, 80, 90],
        description: "Percentile of the rewards used as tau_i for Improve step i (non-decreasing).",
      },
      perSource: {
        type: "boolean",
        default: false,
        description:
          "Percentiles of each source's own rows (a map source -> tau) instead of all rows.",
      },
      aboveMean: ABOVE_MEAN_PROPERTY,
    },
  },
  check: (config: PercentileConfig) => increasingProblems(config.percentiles, "percentiles"),
  create(config: PercentileConfig): ThresholdSchedule {
    const tauOf = (rewards: readonly number[], q: number) => {
      const tau = percentile(rewards, q);
      return config.aboveMean ? Math.max(tau, meanOf(rewards)) : tau;
    };
    return {
      threshold({ improve, rewards, bySource }) {
        const q = scheduleValue(config.percentiles, improve);
        if (!config.perSource) return rewards.length > 0 ? tauOf(rewards, q) : 0;
        const map = new Map<string, number>();
        for (const [source, values] of bySource) {
          if (values.length > 0) map.set(source, tauOf(values, q));
        }
        return map;
      },
    };
  },
});
