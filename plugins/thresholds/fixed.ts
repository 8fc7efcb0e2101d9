/**
 * `fixed`: thresholds from a list, tau_i = values[i] for Improve step i (the last value
 * repeats). The default is the ReST paper's schedule [0, 0.7, 0.8, 0.9, 0.95, 0.99]
 * (Gulcehre et al. 2023, Section 5).
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import type { ThresholdSchedule } from "../../core/types.ts";
import { ABOVE_MEAN_PROPERTY, increasingProblems, meanOf, scheduleValue } from "./_common.ts";

/** Config of the `fixed` schedule. */
export interface FixedConfig {
  /** Threshold of each Improve step, non-decreasing. */
  values: number[];
  /** Raise every threshold to at least the Grow set's mean reward. */
  aboveMean: boolean;
}

export default definePlugin({
  kind: "threshold",
  name: "fixed",
  summary:
    "Thresholds from a list, one per Improve step (the paper's 0, 0.7, 0.8, 0.9, 0.95, 0.99).",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      values: {
        type: "array",
        minItems: 1,
        items: { type: "number", minimum: 0, maximum: 1 },
        default: [0, 0.7, 0.8, 0.9, 0.95, 0.99],
        description: "Reward threshold of Improve step i (rows with reward > tau_i are kept); " +
          "non-decreasing; the last value repeats.",
      },
      aboveMean: ABOVE_MEAN_PROPERTY,
    },
  },
  check: (config: FixedConfig) => increasingProblems(config.values, "values"),
  create(config: FixedConfig): ThresholdSchedule {
    return {
      threshold({ improve, rewards }) {
        const tau = scheduleValue(config.values, improve);
        return config.aboveMean && rewards.length > 0 ? Math.max(tau, meanOf(rewards)) : tau;
      },
    };
  },
});
