/**
 * Experiment reports: the paper's Table 1 for our runs (`table1.md`, `table1.csv`,
 * `table1.json`) and SVG figures, rebuilt from the files that runs leave on disk, so a
 * report never needs retraining.
 *
 * A report is made in four steps, one file each:
 *
 * - load (load.ts): read every run folder of the experiment folder (a subfolder holding
 *   `manifest.resolved.json`; seeds of one row are named `<row>@seed<k>`) and its final
 *   metric values, and the experiment's `splits.json`;
 * - tabulate (table.ts): group the runs into Table 1's rows, each cell the mean ± sample
 *   standard deviation over the row's seeds;
 * - figures (figures.ts, drawn by svg.ts; bc_curve.ts for BC's validation curve): the
 *   paper's Figures 3, 4 and 6 and PPO's training curves, each skipped with a reason when
 *   no run logged its data;
 * - render (table.ts, then {@link writeReport} here): `table1.md` with its footnotes and
 *   legend, `table1.csv`, `table1.json` and the figures, written into the experiment
 *   folder.
 *
 * Rewards are shown x100, like the paper.
 *
 * @module
 */

import { basename, join, resolve } from "node:path";
import { writeFileAtomic } from "../run.ts";
import { bcCurveFigure } from "./bc_curve.ts";
import { buildFigures } from "./figures.ts";
import { loadRuns, loadSplitStats, REPORT_FILES } from "./load.ts";
import { COLUMNS, renderCsv, renderJson, renderMarkdown, type Report, tabulate } from "./table.ts";

export { REPORT_FILES, SPLITS_FILE } from "./load.ts";
export { renderTable, type Report } from "./table.ts";

/** Builds the report of an experiment folder without writing anything. */
export async function buildReport(experimentDir: string): Promise<Report> {
  const runs = await loadRuns(experimentDir);
  const { figures, skipped } = buildFigures(runs);
  const bcCurve = await bcCurveFigure(experimentDir);
  if (bcCurve !== undefined && "svg" in bcCurve) figures.push(bcCurve);
  else if (bcCurve !== undefined) skipped.push(bcCurve);
  return {
    experiment: runs.find((r) => r.experiment !== undefined)?.experiment ??
      basename(resolve(experimentDir)),
    dir: resolve(experimentDir),
    columns: COLUMNS,
    rows: tabulate(runs),
    splits: await loadSplitStats(experimentDir),
    temperatures: [
      ...new Set(runs.flatMap((r) => r.evalTemperature === undefined ? [] : [r.evalTemperature])),
    ].sort((a, b) => a - b),
    figures,
    skipped,
  };
}

/** Options of {@link writeReport}. */
export interface WriteReportOptions {
  /** Called with one line per file written or figure skipped. */
  log?: (message: string) => void;
}

/** What {@link writeReport} wrote. */
export interface WrittenReport {
  /** The report. */
  report: Report;
  /** The content of `table1.md`. */
  markdown: string;
  /** Paths of the files written. */
  files: string[];
}

/**
 * Rebuilds an experiment's report from its run folders and writes `table1.md`,
 * `table1.csv`, `table1.json` and the figures into the experiment folder. A figure
 * without data is not drawn (and a stale copy from an earlier report is removed).
 *
 * @throws {UserError} when the folder does not exist or holds no run.
 */
export async function writeReport(
  experimentDir: string,
  options: WriteReportOptions = {},
): Promise<WrittenReport> {
  const report = await buildReport(experimentDir);
  const markdown = renderMarkdown(report);
  const outputs: [string, string][] = [
    [REPORT_FILES.markdown, markdown],
    [REPORT_FILES.csv, renderCsv(report)],
    [REPORT_FILES.json, JSON.stringify(renderJson(report), null, 2) + "\n"],
    ...report.figures.map((f): [string, string] => [f.file, f.svg]),
  ];
  const files: string[] = [];
  for (const [name, text] of outputs) {
    const path = join(report.dir, name);
    await writeFileAtomic(path, text);
    files.push(path);
    options.log?.(`report: wrote ${path}`);
  }
  for (const skipped of report.skipped) {
    await Deno.remove(join(report.dir, skipped.file)).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
    options.log?.(`report: ${skipped.file} skipped (${skipped.reason})`);
  }
  return { report, markdown, files };
}
