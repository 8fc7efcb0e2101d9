/**
 * `interpolate`: per-source thresholds between the mean and the best reward of each
 * source's rows, tau(x) = gamma_i * max(x) + (1 - gamma_i) * mean(x), with gamma rising over
 * the Improve steps (gamma 0 keeps rows above the source's mean, gamma near 1 only its best).
 *
 * Every source keeps rows: a value at or above the source's largest reward (gamma = 1) is
 * capped below it, keeping the source's best rows, and one not above the previous step's
 * tau is raised (tau increases strictly; see `admissibleTaus` in `_common.ts`). A source
 * whose rewards all tie (max = mean) is judged by the global tau gamma * max + (1 - gamma) *
 * mean over all rewards: kept whole when its reward is above it. Adjustments are reported.
 *
 * @module
 */

import { maxOf, mean } from "../../core/append.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { ThresholdArgs, ThresholdSchedule } from "../../core/types.ts";
import { decidePerSource, increasingProblems, type RawTau, scheduleValue } from "./_common.ts";

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
          "Thresholds are never below the source's mean, so tau_1 >= mean holds by construction; " +
          "gamma = 1 keeps each source's best rows (tau capped below its largest reward), and " +
          "a source whose rewards all tie is judged by the global gamma*max + (1-gamma)*mean.",
      },
    },
  },
  check: (config: InterpolateConfig) => increasingProblems(config.gammas, "gammas"),
  create(config: InterpolateConfig): ThresholdSchedule {
    const raw: RawTau = (improve, _steps, rewards) => {
      if (rewards.length === 0) return 0;
      const gamma = scheduleValue(config.gammas, improve);
      return gamma * maxOf(rewards) + (1 - gamma) * mean(rewards);
    };
    const decide = (args: ThresholdArgs) => decidePerSource(raw, args);
    return { decide, threshold: (args) => decide(args).tau };
  },
});
