/**
 * Shared parts of the threshold schedules: the `aboveMean` option, schedule checks and
 * statistics.
 *
 * @module
 */

import type { JsonSchema } from "../../core/plugin.ts";

/** The `aboveMean` config property every schedule has. */
export const ABOVE_MEAN_PROPERTY: JsonSchema = {
  type: "boolean",
  default: true,
  description:
    "Raise every threshold to at least the Grow set's mean reward (per source for per-source schedules), " +
    "so tau_1 >= mean as the paper requires; raising by a constant keeps the schedule increasing.",
};

/** Mean of a non-empty list. */
export function meanOf(values: readonly number[]): number {
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/** The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default). */
export function percentile(values: readonly number[], q: number): number {
  if (values.length === 0) throw new RangeError("percentile of an empty list");
  const sorted = [...values].sort((a, b) => a - b);
  const position = (q / 100) * (sorted.length - 1);
  const lower = Math.floor(position);
  const upper = Math.min(sorted.length - 1, lower + 1);
  return sorted[lower] + (sorted[upper] - sorted[lower]) * (position - lower);
}

/**
 * The schedule's value for Improve step `improve` (1-based): the i-th list entry, the last
 * one repeated when there are more Improve steps than entries.
 */
export function scheduleValue(values: readonly number[], improve: number): number {
  return values[Math.min(values.length, Math.max(1, improve)) - 1];
}

/** Problems for a list that must be non-decreasing (as config-relative JSON pointers). */
export function increasingProblems(
  values: readonly number[],
  key: string,
): { path: string; message: string }[] {
  for (let i = 1; i < values.length; i++) {
    if (values[i] < values[i - 1]) {
      return [{
        path: `/${key}/${i}`,
        message: `must be >= the previous value ${values[i - 1]}: schedules must increase (got ${
          values[i]
        })`,
      }];
    }
  }
  return [];
}

/** Linear interpolation from `start` to `end` over `steps` Improve steps (1-based `improve`). */
export function linearValue(start: number, end: number, improve: number, steps: number): number {
  if (steps <= 1) return start;
  const t = Math.min(1, Math.max(0, (improve - 1) / (steps - 1)));
  return start + (end - start) * t;
}
