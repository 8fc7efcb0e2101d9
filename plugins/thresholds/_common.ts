/**
 * Shared parts of the threshold schedules: the `aboveMean` option, schedule checks,
 * statistics, and the rules every schedule's thresholds obey (strictly increasing over the
 * Improve steps, strictly below the largest reward so `reward > tau` keeps rows, sources
 * whose rewards all tie judged by the global threshold), with notes of each adjustment.
 *
 * @module
 */

import { maxOf } from "../../core/append.ts";
import type { JsonSchema } from "../../core/plugin.ts";
import type { ThresholdArgs, ThresholdDecision } from "../../core/types.ts";

/** The `aboveMean` config property every schedule has. */
export const ABOVE_MEAN_PROPERTY: JsonSchema = {
  type: "boolean",
  default: true,
  description:
    "Raise every threshold to at least the Grow set's mean reward (per source for per-source schedules), " +
    "so tau_1 >= mean as the paper requires; raising by a constant keeps the schedule increasing.",
};

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

/** Distinct values of a list, ascending. */
export function distinctSorted(values: readonly number[]): number[] {
  return [...new Set(values)].sort((a, b) => a - b);
}

/** The taus of Improve steps 1..n for one list of rewards, and what the last one needed. */
export interface AdmissibleTaus {
  /** tau of each step, strictly increasing and strictly below the largest reward. */
  taus: number[];
  /** The last step's configured value was not above the previous tau and was raised. */
  raised: boolean;
  /** The last step's value was at or above the largest reward and was capped below it. */
  capped: boolean;
  /** Floating-point resolution left no value between the previous tau and the maximum. */
  stuck: boolean;
}

/**
 * Makes the configured thresholds `raw` of Improve steps 1..n admissible for `rewards`
 * (non-empty), so that every step keeps a non-empty set under the strict filter
 * `reward > tau` and tau increases strictly, as ReST requires (tau_1 < tau_2 < ...):
 *
 * - a value not above the previous tau is raised to the midpoint between the previous tau
 *   and the next distinct reward above it (the same rows as the previous step are kept);
 * - a value at or above the largest reward M is capped: to the largest distinct reward
 *   below M when that is above the previous tau (exactly the rows at M are kept), else to
 *   the midpoint of the previous tau and M; when every reward equals M at step 1, to
 *   M - 1e-6 (every row is kept: no reward ranks above another).
 */
export function admissibleTaus(raw: readonly number[], rewards: readonly number[]): AdmissibleTaus {
  const distinct = distinctSorted(rewards);
  const max = distinct[distinct.length - 1];
  const second = distinct.length > 1 ? distinct[distinct.length - 2] : undefined;
  const taus: number[] = [];
  let previous = -Infinity;
  let raised = false;
  let capped = false;
  let stuck = false;
  for (const value of raw) {
    let tau = value;
    raised = tau <= previous;
    if (raised) tau = (previous + distinct.find((d) => d > previous)!) / 2;
    capped = tau >= max;
    if (capped) {
      if (second !== undefined && second > previous) tau = second;
      else tau = Number.isFinite(previous) ? (previous + max) / 2 : max - 1e-6;
    }
    stuck = !(tau > previous && tau < max);
    taus.push(tau);
    previous = tau;
  }
  return { taus, raised, capped, stuck };
}

/** The configured (raw) threshold of Improve step `improve` for one list of rewards. */
export type RawTau = (improve: number, improveSteps: number, rewards: readonly number[]) => number;

/** Raw thresholds of steps 1..improve, made admissible for `rewards`. */
function admissibleFor(
  raw: RawTau,
  args: ThresholdArgs,
  rewards: readonly number[],
): AdmissibleTaus & { raw: number } {
  const values = Array.from(
    { length: args.improve },
    (_, i) => raw(i + 1, args.improveSteps, rewards),
  );
  return { ...admissibleTaus(values, rewards), raw: values[values.length - 1] };
}

/** Formats a reward for notes. */
function fmt(x: number): string {
  return Number(x.toFixed(6)).toString();
}

/**
 * One global threshold over all rewards: the schedule's raw value for this step, made
 * admissible (see {@link admissibleTaus}) given the steps before it in this Grow step,
 * with a note for every adjustment. An empty Grow set gets the raw value (nothing to keep).
 */
export function decideGlobal(raw: RawTau, args: ThresholdArgs): ThresholdDecision {
  const { rewards } = args;
  if (rewards.length === 0) {
    const tau = raw(args.improve, args.improveSteps, rewards);
    return { tau, notes: ["the Grow set is empty: no row can be kept"], metrics: {} };
  }
  const a = admissibleFor(raw, args, rewards);
  const tau = a.taus[a.taus.length - 1];
  const max = maxOf(rewards);
  const notes: string[] = [];
  if (a.raised) {
    notes.push(
      `configured tau ${fmt(a.raw)} is not above the previous step's tau: raised to ${
        fmt(tau)
      } (thresholds increase strictly)`,
    );
  }
  if (a.capped) {
    notes.push(
      `configured tau ${fmt(a.raw)} would keep no row (largest reward ${fmt(max)}): capped to ${
        fmt(tau)
      }, keeping the rows with the largest reward`,
    );
  }
  if (a.stuck) {
    notes.push(`no representable tau lies between the previous tau and ${fmt(max)}`);
  }
  return {
    tau,
    notes,
    metrics: {
      threshold_raw: a.raw,
      threshold_raised: a.raised ? 1 : 0,
      threshold_capped: a.capped ? 1 : 0,
    },
  };
}

/**
 * Per-source thresholds: each source's rewards get the schedule's raw value made
 * admissible for them (see {@link admissibleTaus}), so every source keeps at least its
 * best rows. A source whose rewards all tie has no row above another; it is judged by the
 * global threshold of the same step ({@link decideGlobal} over all rewards) and kept
 * whole when its reward is above it, dropped otherwise. Sources without rows are left out.
 */
export function decidePerSource(raw: RawTau, args: ThresholdArgs): ThresholdDecision {
  const global = decideGlobal(raw, args);
  const globalTau = global.tau as number;
  const map = new Map<string, number>();
  let sources = 0;
  let tied = 0;
  let tiedKept = 0;
  let raised = 0;
  let capped = 0;
  let stuck = 0;
  for (const [source, values] of args.bySource) {
    if (values.length === 0) continue;
    sources++;
    if (values.every((v) => v === values[0])) {
      tied++;
      if (values[0] > globalTau) tiedKept++;
      map.set(source, globalTau);
      continue;
    }
    const a = admissibleFor(raw, args, values);
    map.set(source, a.taus[a.taus.length - 1]);
    if (a.raised) raised++;
    if (a.capped) capped++;
    if (a.stuck) stuck++;
  }
  const notes: string[] = [];
  if (tied > 0) {
    notes.push(
      `${tied} of ${sources} sources have all rewards equal: judged by the global tau ${
        fmt(globalTau)
      } (${tiedKept} kept, ${tied - tiedKept} dropped)`,
    );
  }
  if (raised > 0) {
    notes.push(
      `${raised} sources: tau raised above the previous step's (thresholds increase strictly)`,
    );
  }
  if (capped > 0) {
    notes.push(
      `${capped} sources: tau capped below the source's largest reward, keeping its best rows`,
    );
  }
  if (stuck > 0) {
    notes.push(
      `${stuck} sources: no representable tau between the previous tau and the largest reward`,
    );
  }
  return {
    tau: map,
    notes,
    metrics: {
      threshold_sources: sources,
      threshold_tied_sources: tied,
      threshold_tied_sources_kept: tiedKept,
      threshold_raised_sources: raised,
      threshold_capped_sources: capped,
    },
  };
}
