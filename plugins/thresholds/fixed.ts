/**
 * `fixed`: thresholds from a list, tau_i = values[i] for Improve step i (the last value
 * repeats). The default is the ReST paper's schedule [0, 0.7, 0.8, 0.9, 0.95, 0.99]
 * (Gulcehre et al. 2023, Section 5). The value used is made admissible for the Grow set:
 * strictly above the previous step's tau and strictly below the largest reward, so every
 * step keeps rows (see `admissibleTaus` in `_common.ts`); each adjustment is reported.
 *
 * @module
 */

import { mean } from "../../core/append.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { ThresholdArgs, ThresholdSchedule } from "../../core/types.ts";
import {
  ABOVE_MEAN_PROPERTY,
  decideGlobal,
  increasingProblems,
  type RawTau,
  scheduleValue,
} from "./_common.ts";

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
          "non-decreasing; the last value repeats. A value not above the previous step's tau " +
          "is raised just above it, one at or above the largest reward is capped below it " +
          "(ReST: tau_1 < tau_2 < ..., Gulcehre et al. 2023, Algorithm 1), with a note.",
      },
      aboveMean: ABOVE_MEAN_PROPERTY,
    },
  },
  check: (config: FixedConfig) => increasingProblems(config.values, "values"),
  create(config: FixedConfig): ThresholdSchedule {
    const raw: RawTau = (improve, _steps, rewards) => {
      const tau = scheduleValue(config.values, improve);
      return config.aboveMean && rewards.length > 0 ? Math.max(tau, mean(rewards)) : tau;
    };
    const decide = (args: ThresholdArgs) => decideGlobal(raw, args);
    return { decide, threshold: (args) => decide(args).tau };
  },
});
