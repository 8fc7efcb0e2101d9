/**
 * `linear`: tau rises linearly from `start` (Improve step 1) to `end` (the last Improve step).
 * The value used is made admissible for the Grow set: strictly above the previous step's
 * tau and strictly below the largest reward, so every step keeps rows (see
 * `admissibleTaus` in `_common.ts`); each adjustment is reported.
 *
 * @module
 */

import { mean } from "../../core/append.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { ThresholdArgs, ThresholdSchedule } from "../../core/types.ts";
import { ABOVE_MEAN_PROPERTY, decideGlobal, linearValue, type RawTau } from "./_common.ts";

/** Config of the `linear` schedule. */
export interface LinearConfig {
  /** Threshold of the first Improve step. */
  start: number;
  /** Threshold of the last Improve step. */
  end: number;
  /** Raise every threshold to at least the Grow set's mean reward. */
  aboveMean: boolean;
}

export default definePlugin({
  kind: "threshold",
  name: "linear",
  summary: "Threshold rising linearly from start to end over the Improve steps.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      start: {
        type: "number",
        minimum: 0,
        maximum: 1,
        default: 0.5,
        description: "Threshold of Improve step 1.",
      },
      end: {
        type: "number",
        minimum: 0,
        maximum: 1,
        default: 0.9,
        description: "Threshold of the last Improve step (>= start). Equal values, or values " +
          "at or above the largest reward, are adjusted so tau increases strictly and stays " +
          "below the largest reward (ReST: tau_1 < tau_2 < ..., Gulcehre et al. 2023).",
      },
      aboveMean: ABOVE_MEAN_PROPERTY,
    },
  },
  check: (config: LinearConfig) =>
    config.end >= config.start ? [] : [{
      path: "/end",
      message: `must be >= start (${config.start}): schedules must increase (got ${config.end})`,
    }],
  create(config: LinearConfig): ThresholdSchedule {
    const raw: RawTau = (improve, improveSteps, rewards) => {
      const tau = linearValue(config.start, config.end, improve, improveSteps);
      return config.aboveMean && rewards.length > 0 ? Math.max(tau, mean(rewards)) : tau;
    };
    const decide = (args: ThresholdArgs) => decideGlobal(raw, args);
    return { decide, threshold: (args) => decide(args).tau };
  },
});
