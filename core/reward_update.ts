/**
 * A reward that learns between Grow steps (the ReST paper's future work; issue 13 item 5):
 * after Grow step g, before its Improve steps,
 *
 * 1. the Grow set's sources are cut, by a seeded shuffle, into a labelled slice
 *    (`fraction` of them), a disjoint check slice (`checkFraction`) and the rest;
 * 2. the sampled rows of both slices (and, with `references`, the labelled slice's original
 *    pairs, which anchor the top of the scale) are labelled with sentence chrF against their
 *    references (sacreBLEU defaults, / 100): our stand-in for fresh human labels;
 * 3. the reward is fine-tuned on the labelled slice ({@link RewardModel.adapt}: a new version
 *    saved in the run's folder, `reward_update_<g>/`; the reward it came from is unchanged);
 * 4. the Grow set without the labelled slice's sources (their samples *and* references:
 *    the new version was fitted to those sources' samples, so its scores there say nothing
 *    about the policy) is re-scored by the new version and written as a new, derived set,
 *    `grow_<g>.rescored.jsonl`; Improve filters that set. The check slice stays in it: the
 *    reward never trained on it, and only its chrF labels (which Improve never sees) are
 *    used, to measure the reward's Pearson and Kendall tau-b with chrF before and after.
 *
 * The raw Grow set `grow_<g>.jsonl` is untouched (it is scored by the run's base reward, so
 * it is shared across runs and executors as before). Each step is resume-safe: a version
 * whose checkpoint is complete is reloaded, a derived set that exists is read back, and a
 * step killed half-way is redone from its seed, identically.
 *
 * @module
 */

import { join } from "node:path";
import { UserError } from "./errors.ts";
import { mean } from "./append.ts";
import { checkScores } from "./evaluate.ts";
import { sentenceChrf } from "./metrics/chrf.ts";
import { kendallTauB, pearson } from "./metrics/correlation.ts";
import { readGrowFile, writeGrowFile } from "./grow_file.ts";
import { Rng } from "./random.ts";
import { exists } from "./run.ts";
import type {
  GrowRow,
  LabelledRow,
  MetricsLog,
  Progress,
  RewardAdaptation,
  RewardModel,
} from "./types.ts";

/** The `rewardUpdate` settings of the `rest` algorithm. */
export interface RewardUpdateSettings {
  /** Share of the Grow set's sources whose samples are labelled and trained on (0: off). */
  fraction: number;
  /** Share of the sources labelled only to measure the reward before and after. */
  checkFraction: number;
  /** Also fine-tune on the labelled sources' original pairs (label: chrF of y against y). */
  references: boolean;
  /** Passes of the fine-tuning over the labelled rows. */
  epochs: number;
  /** Learning rate of the fine-tuning (constant). */
  learningRate: number;
  /** Rows per fine-tuning step. */
  batchSize: number;
}

/** True when `settings` asks for reward updates. */
export function rewardUpdateOn(settings: RewardUpdateSettings | undefined): boolean {
  return settings !== undefined && settings.fraction > 0;
}

/** Where a Grow set's sources go: the labelled slice and the check slice (the rest: neither). */
export interface SourceSlices {
  /** Sources whose samples the reward is fine-tuned on (left out of Improve). */
  labelled: Set<string>;
  /** Sources whose samples measure the reward (kept for Improve). */
  check: Set<string>;
}

/**
 * Cuts the distinct sources of the sampled rows, shuffled by `seed`, into a labelled slice of
 * ceil(fraction * n) sources and a check slice of ceil(checkFraction * n) of the others
 * (each at least 1 when its share is positive and sources remain; the labelled one never takes
 * every source, so Improve keeps some).
 */
export function sliceSources(
  rows: readonly GrowRow[],
  fraction: number,
  checkFraction: number,
  seed: number,
): SourceSlices {
  const distinct = [...new Set(rows.filter((r) => r.origin === "sample").map((r) => r.source))];
  const order = new Rng(seed).fork("reward_update/sources").shuffle(distinct);
  const n = order.length;
  const labelled = fraction > 0 ? Math.min(n - 1, Math.max(1, Math.ceil(fraction * n))) : 0;
  const check = checkFraction > 0
    ? Math.min(n - labelled, Math.max(1, Math.ceil(checkFraction * n)))
    : 0;
  return {
    labelled: new Set(order.slice(0, Math.max(0, labelled))),
    check: new Set(order.slice(Math.max(0, labelled), Math.max(0, labelled) + check)),
  };
}

/**
 * The sampled rows of `sources` (and with `references` their original pairs too), labelled
 * with sentence chrF / 100 against their references.
 */
export function labelRows(
  rows: readonly GrowRow[],
  sources: ReadonlySet<string>,
  references = false,
): LabelledRow[] {
  const wanted = (r: GrowRow) => r.origin === "sample" || references;
  return rows.filter((r) => wanted(r) && sources.has(r.source)).map((r) => ({
    source: r.source,
    hypothesis: r.hypothesis,
    reference: r.reference,
    label: sentenceChrf(r.hypothesis, r.reference) / 100,
  }));
}

/** Pearson and Kendall tau-b of `reward`'s scores of `rows` with their labels. */
export async function labelCorrelation(
  reward: RewardModel,
  rows: readonly LabelledRow[],
): Promise<{ pearson: number; kendall: number }> {
  if (rows.length < 2) return { pearson: NaN, kendall: NaN };
  const scores = await reward.score(rows);
  const labels = rows.map((r) => r.label);
  return { pearson: pearson(scores, labels), kendall: kendallTauB(scores, labels) };
}

/** Path of the derived (re-scored) Grow set of Grow step `g`. */
export function rescoredPath(dir: string, g: number): string {
  return join(dir, `grow_${g}.rescored.jsonl`);
}

/** Folder of the reward version made after Grow step `g`. */
export function rewardVersionDir(dir: string, g: number): string {
  return join(dir, `reward_update_${g}`);
}

/** What {@link updateReward} needs from the run. */
export interface RewardUpdateContext {
  /** The run folder. */
  dir: string;
  /** The run's metrics log. */
  metrics: MetricsLog;
  /** Progress display. */
  progress(label: string, total: number, unit?: string): Progress;
  /** Log lines. */
  log(message: string): void;
}

/** The outcome of one reward update. */
export interface RewardUpdate {
  /** The new reward version (the caller disposes it with `adaptation.dispose()`). */
  adaptation: RewardAdaptation;
  /** The derived Grow set Improve filters: the labelled slice left out, re-scored. */
  rows: GrowRow[];
}

/**
 * The reward update after Grow step `g` (see the module doc): fine-tunes `reward` on a
 * labelled slice of `rows`, re-scores the rest with the new version and returns both. With
 * `quiet` (a resumed run whose log already holds this step) nothing is logged.
 *
 * @throws {UserError} when `reward` cannot adapt or the Grow set has too few sources.
 */
export async function updateReward(
  reward: RewardModel,
  rows: readonly GrowRow[],
  settings: RewardUpdateSettings,
  ctx: RewardUpdateContext,
  g: number,
  seed: number,
  quiet = false,
): Promise<RewardUpdate> {
  if (reward.adapt === undefined) {
    throw new UserError("rewardUpdate: the run's reward cannot adapt (it has no adapt())");
  }
  const slices = sliceSources(rows, settings.fraction, settings.checkFraction, seed);
  const labelled = labelRows(rows, slices.labelled, settings.references);
  if (labelled.length === 0) {
    throw new UserError(
      `rewardUpdate: Grow step ${g} has no sampled rows to label (it needs at least 2 sources)`,
    );
  }
  const check = labelRows(rows, slices.check);
  const before = await labelCorrelation(reward, check);
  const dir = rewardVersionDir(ctx.dir, g);
  await Deno.mkdir(dir, { recursive: true });
  const started = performance.now();
  const adaptation = await reward.adapt(labelled, {
    dir,
    seed: new Rng(seed).fork("reward_update/fit").nextUint32(),
    epochs: settings.epochs,
    learningRate: settings.learningRate,
    batchSize: settings.batchSize,
    progress: ctx.progress,
    log: ctx.log,
  });
  const seconds = (performance.now() - started) / 1000;
  try {
    const after = await labelCorrelation(adaptation.reward, check);
    const derived = await rescored(adaptation.reward, rows, slices.labelled, ctx.dir, g);
    if (!quiet) {
      const sampleRows = derived.filter((r) => r.origin === "sample");
      await ctx.metrics.log({
        "grow/reward_update_rows": labelled.length,
        "grow/reward_update_sources": slices.labelled.size,
        "grow/reward_update_check_rows": check.length,
        "grow/reward_update_steps": adaptation.steps,
        "grow/reward_update_reloaded": adaptation.reloaded ? 1 : 0,
        "grow/reward_update_seconds": seconds,
        "grow/reward_update_pearson_before": before.pearson,
        "grow/reward_update_pearson_after": after.pearson,
        "grow/reward_update_kendall_before": before.kendall,
        "grow/reward_update_kendall_after": after.kendall,
        "grow/reward_update_improve_rows": derived.length,
        "grow/reward_update_mean_reward": mean(derived.map((r) => r.reward)),
        "grow/reward_update_mean_sample_reward": mean(sampleRows.map((r) => r.reward)),
      }, g);
      const f = (x: number) => Number.isFinite(x) ? x.toFixed(3) : "n/a";
      ctx.log(
        `reward update ${g}: ${labelled.length} labelled rows from ${slices.labelled.size} ` +
          `sources, ${adaptation.reloaded ? "reloaded" : `fine-tuned in ${seconds.toFixed(1)}s`}` +
          ` (${adaptation.steps} steps); on ${check.length} check rows Pearson ` +
          `${f(before.pearson)} -> ${f(after.pearson)}, Kendall ${f(before.kendall)} -> ` +
          `${f(after.kendall)} with chrF; Improve filters ${derived.length} re-scored rows`,
      );
    }
    return { adaptation, rows: derived };
  } catch (error) {
    adaptation.dispose();
    throw error;
  }
}

/**
 * The derived Grow set: `rows` without the sources of `left`, each re-scored by `reward`;
 * written once to {@link rescoredPath} (atomically), read back when it exists.
 */
async function rescored(
  reward: RewardModel,
  rows: readonly GrowRow[],
  left: ReadonlySet<string>,
  dir: string,
  g: number,
): Promise<GrowRow[]> {
  const path = rescoredPath(dir, g);
  if (await exists(path)) return await readGrowFile(path);
  const kept = rows.filter((r) => !left.has(r.source));
  const scores = kept.length === 0 ? [] : await reward.score(kept);
  checkScores(scores, kept.length);
  const out = kept.map((r, i) => ({ ...r, reward: scores[i] }));
  await writeGrowFile(path, out);
  return out;
}
