/**
 * `percentile`: tau_i is the q_i-th percentile of the Grow set's rewards, over all rows
 * (`perSource: false`) or separately for each source's rows (`perSource: true`, so every
 * source keeps its own best samples).
 *
 * Ties: a percentile of saturated rewards (many rows at the maximum) equals the maximum and
 * the strict filter `reward > tau` would keep nothing, so the value is capped below the
 * largest reward (keeping the rows at the maximum), and raised above the previous step's
 * tau when it does not increase (see `admissibleTaus` in `_common.ts`). Per source, a
 * source whose rewards all tie is judged by the global percentile of the same step (kept
 * whole when its reward is above it). Each adjustment is reported as a note and a counter.
 *
 * @module
 */

import { mean } from "../../core/append.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { ThresholdArgs, ThresholdSchedule } from "../../core/types.ts";
import {
  ABOVE_MEAN_PROPERTY,
  decideGlobal,
  decidePerSource,
  increasingProblems,
  percentile,
  type RawTau,
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
  /** Percentiles of every row's reward (`all`) or of the sampled rows' only (`samples`). */
  over: "all" | "samples";
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
        description:
          "Percentile of the rewards used as tau_i for Improve step i (non-decreasing; " +
          "numpy's linear interpolation). A value at or above the largest reward is capped " +
          "below it and one not above the previous tau is raised, so tau_1 < tau_2 < ... " +
          "(Gulcehre et al. 2023) and every step keeps rows.",
      },
      perSource: {
        type: "boolean",
        default: false,
        description: "Percentiles of each source's own rows (a map source -> tau) instead of " +
          "all rows; a source whose rewards all tie is judged by the global percentile.",
      },
      aboveMean: ABOVE_MEAN_PROPERTY,
      over: {
        enum: ["all", "samples"],
        default: "all",
        description: "Rewards the percentiles are taken of: every row of the Grow set (`all`), " +
          "or the policy's samples only (`samples`; global thresholds only). With a reward on " +
          "which every original pair scores the maximum (chrF against the references), `all` " +
          "puts every percentile above the originals' share at the maximum; `samples` spreads " +
          "the thresholds over what the policy produced. The filter still applies to every row.",
      },
    },
  },
  check: (config: PercentileConfig) => [
    ...increasingProblems(config.percentiles, "percentiles"),
    ...(config.over === "samples" && config.perSource
      ? [{ path: "/over", message: 'must be "all" with perSource (per-source thresholds)' }]
      : []),
  ],
  create(config: PercentileConfig): ThresholdSchedule {
    const decide = (args: ThresholdArgs) => {
      const samples = config.over === "samples" ? args.sampleRewards : undefined;
      const raw: RawTau = (improve, _steps, rewards) => {
        const basis = samples !== undefined && samples.length > 0 ? samples : rewards;
        if (basis.length === 0) return 0;
        const tau = percentile(basis, scheduleValue(config.percentiles, improve));
        return config.aboveMean ? Math.max(tau, mean(basis)) : tau;
      };
      return config.perSource ? decidePerSource(raw, args) : decideGlobal(raw, args);
    };
    return { decide, threshold: (args) => decide(args).tau };
  },
});
