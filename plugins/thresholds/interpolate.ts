/**
 * `interpolate`: per-source thresholds between the mean and the best reward of each
 * source's rows, tau(x) = gamma_i * max(x) + (1 - gamma_i) * mean(x), with gamma rising over
 * the Improve steps (gamma 0 keeps rows above the source's mean, gamma near 1 only its best).
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import type { ThresholdSchedule } from "../../core/types.ts";
import { increasingProblems, meanOf, scheduleValue } from "./_common.ts";

/** Config of the `interpolate` schedule. */
export interface InterpolateConfig {
  /** gamma of Improve step i, non-decreasing, in [0, 1]. */
  gammas: number[];
}

export default definePlugin({
  kind: "threshold",
  name: "interpolate",
  summary: "Per-source tau = gamma*max + (1-gamma)*mean of that source's rewards, gamma rising.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      gammas: {
        type: "array",
        minItems: 1,
        items: { type: "number", minimum: 0, maximum: 1 },
        default: [0, 0.25, 0.5, 0.75],
        description: "gamma of Improve step i (non-decreasing); the last value repeats. " +
          "Thresholds are never below the source's mean, so tau_1 >= mean holds by construction.",
      },
    },
  },
  check: (config: InterpolateConfig) => increasingProblems(config.gammas, "gammas"),
  create(config: InterpolateConfig): ThresholdSchedule {
    return {
      threshold({ improve, bySource }) {
        const gamma = scheduleValue(config.gammas, improve);
        const map = new Map<string, number>();
        for (const [source, values] of bySource) {
          if (values.length === 0) continue;
          map.set(source, gamma * Math.max(...values) + (1 - gamma) * meanOf(values));
        }
        return map;
      },
    };
  },
});
