/**
 * The report's BC figure, `bc_curve.svg`: BC's validation curve, read from
 * `<experiment>/shared/bc/metrics.jsonl` (and `shared/bc_seed<k>/` for other BC seeds).
 * It plots, against the training step, the corpus chrF of greedy output on the selection
 * split (`eval/chrf`, what BC selects and early-stops on, see core/bc.ts) and the mean
 * reward of the same outputs x100 (`eval/reward`). A flat end of the chrF line shows that
 * BC converged; a line still climbing at the last step means the `bc.steps` cap stopped it.
 *
 * @module
 */

import { join } from "node:path";
import { exists, readMetrics } from "../run.ts";
import { type ChartSpec, hasDrawablePoints, lineChart, type Series } from "./svg.ts";

/** File name of the figure in the experiment folder. */
export const BC_CURVE_FILE = "bc_curve.svg";

/** Title of the figure in the report's list. */
export const BC_CURVE_TITLE = "BC validation curve (selection chrF and reward per step)";

/** The drawn figure, or why it was not drawn. */
export type BcCurve =
  | { file: string; title: string; svg: string }
  | { file: string; title: string; reason: string };

/** The BC folders under `shared/`: `bc` first, then `bc_seed<k>` by name. */
async function bcFolders(experimentDir: string): Promise<string[]> {
  const shared = join(experimentDir, "shared");
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(shared)) {
      if (entry.isDirectory && /^bc(_seed\d+)?$/.test(entry.name)) names.push(entry.name);
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
  return names.sort((a, b) => a === "bc" ? -1 : b === "bc" ? 1 : a.localeCompare(b));
}

/** The (step, value) points of `key` in `records`, x`scale`. */
function points(
  records: readonly Record<string, unknown>[],
  key: string,
  scale: number,
): [number, number][] {
  const out: [number, number][] = [];
  for (const r of records) {
    const value = r[key];
    if (typeof r.step === "number" && typeof value === "number" && Number.isFinite(value)) {
      out.push([r.step, value * scale]);
    }
  }
  return out;
}

/**
 * Builds the chart spec of BC's validation curve from the records of each BC folder's
 * `metrics.jsonl`; undefined when no record has `eval/chrf` or `eval/reward`.
 */
export function bcCurveSpec(
  logs: readonly { folder: string; records: readonly Record<string, unknown>[] }[],
): ChartSpec | undefined {
  const series: Series[] = [];
  const best: string[] = [];
  for (const { folder, records } of logs) {
    const suffix = logs.length > 1 ? ` (${folder})` : "";
    const chrf = points(records, "eval/chrf", 1);
    series.push({ name: `selection chrF${suffix}`, points: chrf });
    series.push({
      name: `selection reward x100${suffix}`,
      points: points(records, "eval/reward", 100),
    });
    if (chrf.length > 0) {
      // The first maximum: BC keeps it (a later equal score is no improvement).
      const top = chrf.reduce((a, b) => b[1] > a[1] ? b : a);
      best.push(`${top[1].toFixed(1)} at step ${top[0]}${suffix}`);
    }
  }
  const spec: ChartSpec = {
    title: best.length > 0
      ? `BC validation curve; best chrF ${best.join(", ")}`
      : "BC validation curve",
    xLabel: "BC training step",
    yLabel: "Selection split: chrF / reward x100",
    integerX: true,
    series,
  };
  return hasDrawablePoints(spec) ? spec : undefined;
}

/**
 * Draws `bc_curve.svg` for an experiment folder, or says why it cannot; undefined when the
 * experiment has no BC folder at all (nothing trained BC there, so there is nothing to miss).
 */
export async function bcCurveFigure(experimentDir: string): Promise<BcCurve | undefined> {
  const folders = await bcFolders(experimentDir);
  if (folders.length === 0) return undefined;
  const logs = [];
  for (const folder of folders) {
    const path = join(experimentDir, "shared", folder, "metrics.jsonl");
    // A BC folder without a log (BC not yet evaluated) is left out.
    if (await exists(path)) logs.push({ folder, records: await readMetrics(path) });
  }
  const spec = bcCurveSpec(logs);
  return spec === undefined
    ? {
      file: BC_CURVE_FILE,
      title: BC_CURVE_TITLE,
      reason: "no BC evaluation was logged (`eval/chrf` in shared/bc/metrics.jsonl)",
    }
    : { file: BC_CURVE_FILE, title: BC_CURVE_TITLE, svg: lineChart(spec) };
}
