/**
 * Experiment reports: the paper's Table 1 for our runs (`table1.md`, `table1.csv`,
 * `table1.json`) and SVG figures, rebuilt from the files that runs leave on disk, so a
 * report never needs retraining.
 *
 * What counts as a run: every subfolder of the experiment folder that holds
 * `manifest.resolved.json` (written when a run starts; the shared `bc/` and `rewards/`
 * folders have none). A run is complete when its `summary.json` exists; incomplete runs
 * are reported with an "(incomplete)" marker from whatever their `metrics.jsonl` holds.
 *
 * Seeds: runs of the same table row with different seeds are named `<row>@seed<k>`
 * (e.g. `rest_g1_i4@seed1`, `rest_g1_i4@seed2`). They form one row, whose cells show
 * the mean ± sample standard deviation (n - 1 in the denominator) over the runs that
 * have the value; a plain `<row>` name is a row of one run.
 *
 * A run's values: the last finite value of each key in its `metrics.jsonl`, overridden
 * by the final metrics in `summary.json`; wall time is `summary.json`'s `seconds`.
 *
 * The experiment folder's `splits.json` ({@link SPLITS_FILE}, written by `deno task exp`
 * when it loads the data) gives the footnote on the splits: how many test pairs were
 * removed because their source occurs in training, and the validation halves used for
 * model selection and for the report. Rows trained with another reward than the others
 * (the oracle row: ReST on chrF against the references) are named in a footnote.
 *
 * Figures (each skipped, with a note in `table1.md`, when no run logged its data):
 *
 * - `fig3_improve_reward.svg` (the paper's Figure 3): validation reward after each
 *   Improve step (`improve/select_reward`) against the Improve index, one line per row;
 * - `fig4_grow_reward.svg` (Figure 4): validation reward after the last Improve step of
 *   each Grow step against G;
 * - `fig6_best_of_n.svg` (Figure 6): Best-of-N validation reward (`bon/valid_reward@N`)
 *   against N on a log2 axis, with a second panel for the picks' chrF against the
 *   references (`bon/valid_chrf@N`) when it was logged;
 * - `ppo_training.svg`: PPO's reward (`ppo/reward`) and KL (`ppo/kl`) over training, two
 *   panels, one line per run;
 * - `bc_curve.svg`: BC's validation curve (selection chrF and reward per step) from
 *   `shared/bc/metrics.jsonl` (core/report/bc_curve.ts).
 *
 * Rewards are shown x100, like the paper. Lines of rows with several seeds are the
 * per-point means over the seeds.
 *
 * @module
 */

import { basename, join, resolve } from "node:path";
import { UserError } from "./errors.ts";
import { readRegularText } from "./fs.ts";
import { readMetrics, summaryProblem, writeFileAtomic } from "./run.ts";
import type { SplitStats } from "./splits.ts";
import { type ChartSpec, hasDrawablePoints, lineChart, stackedCharts } from "./svg.ts";
import { BC_CURVE_FILE, bcCurveFigure } from "./report/bc_curve.ts";

/** How seed variants of a row are named: `<row>@seed<k>`. */
export const SEED_SUFFIX: RegExp = /^(.+)@seed(\d+)$/;

/** Splits a run name into its table row and the seed its name carries (if any). */
export function parseRunName(name: string): { row: string; seed?: number } {
  const match = SEED_SUFFIX.exec(name);
  return match ? { row: match[1], seed: Number(match[2]) } : { row: name };
}

/** One run folder, read from disk. */
export interface RunData {
  /** Folder name. */
  name: string;
  /** The experiment name from `manifest.resolved.json`, when it has one. */
  experiment?: string;
  /** Table row: the name without its `@seed<k>` suffix. */
  row: string;
  /** Seed from `manifest.resolved.json`, else from the name, else undefined. */
  seed?: number;
  /** The run folder. */
  dir: string;
  /** A readable label of the algorithm and its main settings, e.g. "ReST (G=1, I=4)". */
  algorithm: string;
  /** The run's reward (from its resolved manifest): plugin name and name + config as JSON. */
  reward?: { name: string; key: string };
  /** The run's evaluation temperature (`evaluation.temperature` of its manifest). */
  evalTemperature?: number;
  /** Whether `summary.json` exists. */
  complete: boolean;
  /** The records of `metrics.jsonl` (empty when the file does not exist). */
  records: Record<string, unknown>[];
  /** Final values by metric key (see the module doc); `summary/seconds` is the wall time. */
  values: Record<string, number>;
}

/** A column of Table 1. */
export interface Column {
  /** Key in table1.csv/json. */
  key: string;
  /** Heading in table1.md. */
  title: string;
  /** The metric key it reads from each run's values. */
  metric: string;
  /** Multiplier applied to the metric (100 for rewards in [0, 1]). */
  scale: number;
  /** Decimals shown in table1.md. */
  digits: number;
  /** One-line explanation for the legend. */
  description: string;
}

/** The columns of Table 1, in order. */
export const COLUMNS: readonly Column[] = [
  {
    key: "avg_reward_x100",
    title: "Average reward (x100)",
    metric: "eval/valid_reward",
    scale: 100,
    digits: 2,
    description:
      "mean reward-model score of the final policy's greedy translations of the report split's sources, x100 (`eval/valid_reward`); the paper's Table 1 metric",
  },
  {
    key: "sampled_reward_x100",
    title: "Sampled reward (x100)",
    metric: "eval/valid_reward_sample",
    scale: 100,
    digits: 2,
    description:
      "the same for one sample per source at the evaluation temperature (`evaluation.temperature`), x100 (`eval/valid_reward_sample`): what the policy's distribution earns, not only its mode",
  },
  {
    key: "distinct_samples",
    title: "Distinct samples",
    metric: "train/distinct_samples",
    scale: 1,
    digits: 0,
    description:
      "distinct (source, output) pairs sampled from a policy for training over the whole run, each counted once however often it was drawn (in one Grow step, across Grow steps or across PPO rollout batches), counted the same way for every row; references are not samples, so BC, which trains on the references only, has 0 (`train/distinct_samples`)",
  },
  {
    key: "kl_bc",
    title: "KL to BC (nats)",
    metric: "eval/valid_kl_bc",
    scale: 1,
    digits: 2,
    description:
      "KL(pi || pi_BC) per sequence on the report split: one output y ~ pi per source at temperature 1, averaging sum_t [log pi(y_t | ...) - log pi_BC(y_t | ...)] (a Monte-Carlo estimate; 0 for BC by definition, computed the same way) (`eval/valid_kl_bc`)",
  },
  {
    key: "test_reward_x100",
    title: "Test reward (x100)",
    metric: "eval/test_reward",
    scale: 100,
    digits: 2,
    description:
      "mean reward of the greedy translations of the test sources, x100 (`eval/test_reward`)",
  },
  {
    key: "test_chrf",
    title: "Test chrF",
    metric: "eval/test_chrf",
    scale: 1,
    digits: 2,
    description: "corpus chrF of the test translations against the references (`eval/test_chrf`)",
  },
  {
    key: "test_bleu",
    title: "Test BLEU",
    metric: "eval/test_bleu",
    scale: 1,
    digits: 2,
    description: "corpus BLEU of the test translations against the references (`eval/test_bleu`)",
  },
  {
    key: "gradient_steps",
    title: "Gradient steps",
    metric: "train/gradient_steps",
    scale: 1,
    digits: 0,
    description:
      "optimizer steps after BC (all Improve steps, or all PPO updates) (`train/gradient_steps`)",
  },
  {
    key: "wall_time_s",
    title: "Wall time (s)",
    metric: "summary/seconds",
    scale: 1,
    digits: 1,
    description:
      "seconds the run took (`seconds` in summary.json); the shared BC policy is trained on first use, so its training time counts in the first run that needs it",
  },
];

/** A table cell: mean, sample standard deviation (null for one value) and count. */
export interface Cell {
  /** Mean over the row's runs that have the value. */
  mean: number;
  /** Sample standard deviation (n - 1), or null when n = 1. */
  std: number | null;
  /** Number of runs that have the value. */
  n: number;
}

/** One row of Table 1: the runs of one row name (one per seed). */
export interface TableRow {
  /** Row name (run name without `@seed<k>`). */
  row: string;
  /** Algorithm label(s) of its runs. */
  algorithm: string;
  /** Its run folders. */
  runs: string[];
  /** The seed of each run (null when unknown). */
  seeds: (number | null)[];
  /** The runs without `summary.json`. */
  incomplete: string[];
  /** The distinct rewards of its runs (see {@link RunData.reward}). */
  rewards: { name: string; key: string }[];
  /** Cells by column key; null when no run has the value. */
  values: Record<string, Cell | null>;
}

/** A figure that was drawn. */
export interface Figure {
  /** File name in the experiment folder. */
  file: string;
  /** What it shows. */
  title: string;
  /** The SVG document. */
  svg: string;
}

/** A figure that was not drawn, and why. */
export interface SkippedFigure {
  /** File name it would have had. */
  file: string;
  /** What it would show. */
  title: string;
  /** Why it was skipped. */
  reason: string;
}

/** Everything a report holds, before it is written. */
export interface Report {
  /** Experiment name (from the runs' manifests, else the folder name). */
  experiment: string;
  /** The experiment folder. */
  dir: string;
  /** Table columns. */
  columns: readonly Column[];
  /** Table rows, in the order the rows started running. */
  rows: TableRow[];
  /** The experiment's split counts from {@link SPLITS_FILE}; null when it has none. */
  splits: SplitStats | null;
  /** The evaluation temperatures of the runs (normally one). */
  temperatures: number[];
  /** Figures drawn. */
  figures: Figure[];
  /** Figures skipped for lack of data. */
  skipped: SkippedFigure[];
}

/**
 * The paper's Table 1 (Gulcehre et al. 2023, arXiv 2308.08998; IWSLT 2014 De-En), as
 * reported in the paper, for orientation next to ours. Different data, model and reward
 * model: only the ordering is comparable.
 */
export const PAPER_TABLE1: readonly { algorithm: string; reward: number; distinct: string }[] = [
  { algorithm: "BC (G=0, I=0)", reward: 70.9, distinct: "16M" },
  { algorithm: "ReST (G=1, I=0)", reward: 71.9, distinct: "16M" },
  { algorithm: "ReST (G=1, I=4)", reward: 77.8, distinct: "16M" },
  { algorithm: "ReST (G=2, I=3)", reward: 83.1, distinct: "32M" },
  { algorithm: "Online PPO", reward: 71.6, distinct: "24M" },
];

/**
 * The experiment folder's record of how its splits were prepared (core/splits.ts
 * `SplitStats` as JSON), written by `deno task exp` when it loads the data; the report's
 * footnote on removed test pairs and the validation halves reads it.
 */
export const SPLITS_FILE = "splits.json";

const RESOLVED = "manifest.resolved.json";
const SUMMARY = "summary.json";
const METRICS = "metrics.jsonl";

/** Table and figure files that {@link writeReport} owns in the experiment folder. */
export const REPORT_FILES = {
  markdown: "table1.md",
  csv: "table1.csv",
  json: "table1.json",
  improve: "fig3_improve_reward.svg",
  grow: "fig4_grow_reward.svg",
  bestOfN: "fig6_best_of_n.svg",
  ppo: "ppo_training.svg",
  bcCurve: BC_CURVE_FILE,
} as const;

// ---------------------------------------------------------------------------------------
// Reading run folders

async function readJsonFile(path: string): Promise<unknown> {
  const text = await readRegularText(path, { maxBytes: 64 << 20 });
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UserError(`${path}: not valid JSON (${(error as Error).message})`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Whether anything exists at `path` (what it is is checked when it is read). */
async function fileExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** A readable label of a run's algorithm from its resolved manifest. */
export function algorithmLabel(manifest: Record<string, unknown>): string {
  if (typeof manifest.label === "string" && manifest.label !== "") return manifest.label;
  const algorithm = isObject(manifest.algorithm) ? manifest.algorithm : {};
  const name = typeof algorithm.name === "string" ? algorithm.name : "unknown";
  const config = isObject(algorithm.config) ? algorithm.config : {};
  const loss = isObject(manifest.loss) && typeof manifest.loss.name === "string"
    ? manifest.loss.name
    : undefined;
  switch (name) {
    case "bc":
      return "BC (G=0, I=0)";
    case "rest": {
      const g = config.growSteps ?? "?";
      const i = config.improveSteps ?? "?";
      const extra = loss !== undefined && loss !== "bc" ? `, ${loss} loss` : "";
      return `ReST (G=${g}, I=${i}${extra})`;
    }
    case "ppo":
      return "Online PPO";
    default:
      return name;
  }
}

/** A run's reward from its resolved manifest: the plugin name, and name + config as a key. */
function rewardOf(manifest: Record<string, unknown>): { name: string; key: string } | undefined {
  const reward = manifest.reward;
  if (!isObject(reward) || typeof reward.name !== "string") return undefined;
  return { name: reward.name, key: JSON.stringify([reward.name, reward.config ?? {}]) };
}

/** A run's evaluation temperature from its resolved manifest. */
function evalTemperatureOf(manifest: Record<string, unknown>): number | undefined {
  const evaluation = manifest.evaluation;
  return isObject(evaluation) && finite(evaluation.temperature)
    ? evaluation.temperature
    : undefined;
}

/**
 * Reads the experiment's {@link SPLITS_FILE}; null when there is none (an experiment run
 * before it was written).
 *
 * @throws {UserError} when it is not JSON or lacks a count (the message names the file).
 */
export async function loadSplitStats(experimentDir: string): Promise<SplitStats | null> {
  const path = join(resolve(experimentDir), SPLITS_FILE);
  if (!(await fileExists(path))) return null;
  const parsed = await readJsonFile(path);
  const keys = ["testOverlap", "testRemoved", "testBefore", "select", "report"] as const;
  const bad = keys.find((k) =>
    !isObject(parsed) || !Number.isInteger(parsed[k]) || (parsed[k] as number) < 0
  );
  if (bad !== undefined) {
    throw new UserError(`${path}: expected a non-negative integer "${bad}"`);
  }
  const stats = parsed as Record<string, number>;
  return Object.fromEntries(keys.map((k) => [k, stats[k]])) as unknown as SplitStats;
}

/** The last finite number logged for each key, then the summary's final metrics on top. */
function finalValues(
  records: Record<string, unknown>[],
  summary: Record<string, unknown> | undefined,
): Record<string, number> {
  const values: Record<string, number> = {};
  for (const record of records) {
    for (const [key, value] of Object.entries(record)) {
      if (key.includes("/") && typeof value === "number" && Number.isFinite(value)) {
        values[key] = value;
      }
    }
  }
  if (summary !== undefined) {
    const metrics = isObject(summary.metrics) ? summary.metrics : {};
    for (const [key, value] of Object.entries(metrics)) {
      if (typeof value === "number" && Number.isFinite(value)) values[key] = value;
    }
    if (typeof summary.seconds === "number" && Number.isFinite(summary.seconds)) {
      values["summary/seconds"] = summary.seconds;
    }
  }
  return values;
}

/**
 * Reads every run folder of an experiment folder, sorted by name.
 *
 * @throws {UserError} when the folder does not exist, holds no run, or a run's files are
 *   not valid JSON / JSON lines (the message names the file).
 */
export async function loadRuns(experimentDir: string): Promise<RunData[]> {
  const dir = resolve(experimentDir);
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new UserError(`experiment folder ${experimentDir} does not exist`);
    }
    throw error;
  }
  if (!info.isDirectory) throw new UserError(`${experimentDir} is not a folder`);

  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isDirectory && await fileExists(join(dir, entry.name, RESOLVED))) {
      names.push(entry.name);
    }
  }
  if (names.length === 0) {
    throw new UserError(
      `${experimentDir} holds no runs (no subfolder with ${RESOLVED}); ` +
        `give the folder that \`deno task exp\` wrote, e.g. runs/<experiment>`,
    );
  }
  names.sort();

  const runs: RunData[] = [];
  for (const name of names) {
    const runDir = join(dir, name);
    const manifest = await readJsonFile(join(runDir, RESOLVED));
    if (!isObject(manifest)) {
      throw new UserError(`${join(runDir, RESOLVED)}: expected a JSON object`);
    }
    const metricsPath = join(runDir, METRICS);
    const records = await fileExists(metricsPath) ? await readMetrics(metricsPath) : [];
    for (const [i, record] of records.entries()) {
      if (!isObject(record)) {
        throw new UserError(`${metricsPath}:${i + 1}: expected a JSON object per line`);
      }
    }
    const summaryPath = join(runDir, SUMMARY);
    let summary: Record<string, unknown> | undefined;
    if (await fileExists(summaryPath)) {
      const parsed = await readJsonFile(summaryPath);
      const problem = summaryProblem(parsed);
      if (problem !== undefined) throw new UserError(`${summaryPath}: ${problem}`);
      summary = parsed as Record<string, unknown>;
    }
    const parsedName = parseRunName(name);
    const seed = typeof manifest.seed === "number" ? manifest.seed : parsedName.seed;
    runs.push({
      name,
      ...(typeof manifest.experiment === "string" ? { experiment: manifest.experiment } : {}),
      row: parsedName.row,
      ...(seed !== undefined ? { seed } : {}),
      dir: runDir,
      algorithm: algorithmLabel(manifest),
      ...(rewardOf(manifest) !== undefined ? { reward: rewardOf(manifest) } : {}),
      ...(evalTemperatureOf(manifest) !== undefined
        ? { evalTemperature: evalTemperatureOf(manifest) }
        : {}),
      complete: summary !== undefined,
      records,
      values: finalValues(records, summary),
    });
  }
  return runs;
}

// ---------------------------------------------------------------------------------------
// The table

/** Mean and sample standard deviation (n - 1; null for a single value). */
export function meanStd(values: readonly number[]): Cell | null {
  if (values.length === 0) return null;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  if (values.length === 1) return { mean, std: null, n: 1 };
  const squares = values.reduce((a, v) => a + (v - mean) ** 2, 0);
  return { mean, std: Math.sqrt(squares / (values.length - 1)), n: values.length };
}

function roundNoise(value: number): number {
  return Number(value.toPrecision(12));
}

/** The time of a run's first metrics record, for ordering rows as they ran. */
function startTime(run: RunData): string | undefined {
  for (const record of run.records) {
    if (typeof record.time === "string") return record.time;
  }
  return undefined;
}

/** Groups runs into rows (by name without `@seed<k>`), ordered by when they started. */
export function groupRuns(runs: readonly RunData[]): Map<string, RunData[]> {
  const groups = new Map<string, RunData[]>();
  for (const run of runs) {
    const list = groups.get(run.row);
    if (list === undefined) groups.set(run.row, [run]);
    else list.push(run);
  }
  const earliest = (list: RunData[]) =>
    list.map(startTime).filter((t): t is string => t !== undefined).sort()[0];
  const order = [...groups.entries()].sort(([a, ra], [b, rb]) => {
    const ta = earliest(ra), tb = earliest(rb);
    if (ta !== undefined && tb !== undefined && ta !== tb) return ta < tb ? -1 : 1;
    if (ta === undefined && tb !== undefined) return 1;
    if (ta !== undefined && tb === undefined) return -1;
    return a < b ? -1 : a > b ? 1 : 0;
  });
  for (const [, list] of order) {
    list.sort((x, y) => (x.seed ?? 0) - (y.seed ?? 0) || (x.name < y.name ? -1 : 1));
  }
  return new Map(order);
}

/** Builds the table rows from runs. */
export function tabulate(runs: readonly RunData[]): TableRow[] {
  const rows: TableRow[] = [];
  for (const [row, list] of groupRuns(runs)) {
    const values: Record<string, Cell | null> = {};
    for (const column of COLUMNS) {
      const found = list
        .map((run) => run.values[column.metric])
        .filter((v): v is number => v !== undefined)
        .map((v) => v * column.scale);
      const cell = meanStd(found);
      // 12 significant digits drop binary noise such as 66.10000000000001 from x100.
      values[column.key] = cell === null ? null : {
        mean: roundNoise(cell.mean),
        std: cell.std === null ? null : roundNoise(cell.std),
        n: cell.n,
      };
    }
    rows.push({
      row,
      algorithm: [...new Set(list.map((r) => r.algorithm))].join(" / "),
      runs: list.map((r) => r.name),
      seeds: list.map((r) => r.seed ?? null),
      incomplete: list.filter((r) => !r.complete).map((r) => r.name),
      rewards: [
        ...new Map(list.flatMap((r) => r.reward === undefined ? [] : [[r.reward.key, r.reward]]))
          .values(),
      ],
      values,
    });
  }
  return rows;
}

// ---------------------------------------------------------------------------------------
// Figures

/** Averages each run's (x -> y) points over the runs of a row, point by point. */
function meanCurve(list: readonly RunData[], extract: (run: RunData) => Map<number, number>) {
  const sums = new Map<number, number[]>();
  for (const run of list) {
    for (const [x, y] of extract(run)) {
      const ys = sums.get(x);
      if (ys === undefined) sums.set(x, [y]);
      else ys.push(y);
    }
  }
  return [...sums.entries()]
    .map(([x, ys]): [number, number] => [x, ys.reduce((a, b) => a + b, 0) / ys.length])
    .sort((a, b) => a[0] - b[0]);
}

function finite(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value);
}

/**
 * The selection reward an Improve summary reports: `improve/select_reward` (the selection half
 * of validation), or `improve/valid_reward` in logs written before the split existed.
 */
function improveReward(r: Record<string, unknown>): number {
  const value = r["improve/select_reward"] ?? r["improve/valid_reward"];
  return finite(value) ? value : NaN;
}

/** Improve summaries: the records that carry `improve/index` and a selection reward. */
function improveRecords(run: RunData): Record<string, unknown>[] {
  return run.records.filter((r) => finite(r["improve/index"]) && finite(improveReward(r)));
}

function seriesName(row: string, list: readonly RunData[]): string {
  return list.length > 1 ? `${row} (mean of ${list.length} seeds)` : row;
}

type FigurePlan = { spec: ChartSpec | ChartSpec[]; title: string } | { reason: string };

function improveFigure(groups: Map<string, RunData[]>): FigurePlan {
  const series = [...groups].map(([row, list]) => ({
    name: seriesName(row, list),
    points: meanCurve(list, (run) =>
      new Map(
        improveRecords(run).map((r) => [
          r["improve/index"] as number,
          100 * improveReward(r),
        ]),
      )),
  })).filter((s) => s.points.length > 0);
  const spec: ChartSpec = {
    title: "Reward per Improve step (paper's Figure 3)",
    xLabel: "Improve step (counted over all Grow steps)",
    yLabel: "Selection reward (x100)",
    integerX: true,
    series,
  };
  return hasDrawablePoints(spec)
    ? { spec, title: spec.title }
    : { reason: "no run logged an Improve step (`improve/index` with `improve/select_reward`)" };
}

function growFigure(groups: Map<string, RunData[]>): FigurePlan {
  const perGrow = (run: RunData) => {
    // The last Improve summary of each Grow step holds the reward after that Grow step.
    const byGrow = new Map<number, { index: number; reward: number }>();
    for (const r of improveRecords(run)) {
      const g = r["improve/grow"];
      if (!finite(g)) continue;
      const index = r["improve/index"] as number;
      const previous = byGrow.get(g);
      if (previous === undefined || index >= previous.index) {
        byGrow.set(g, { index, reward: 100 * improveReward(r) });
      }
    }
    return new Map([...byGrow].map(([g, v]) => [g, v.reward]));
  };
  const series = [...groups].map(([row, list]) => ({
    name: seriesName(row, list),
    points: meanCurve(list, perGrow),
  })).filter((s) => s.points.length > 0);
  const spec: ChartSpec = {
    title: "Reward per Grow step (paper's Figure 4)",
    xLabel: "Grow step G",
    yLabel: "Validation reward after the last Improve step (x100)",
    integerX: true,
    series,
  };
  return hasDrawablePoints(spec)
    ? { spec, title: spec.title }
    : { reason: "no run logged an Improve step with its Grow step (`improve/grow`)" };
}

const BEST_OF_N = /^bon\/valid_(reward|chrf)@(\d+)$/;

function bestOfNFigure(groups: Map<string, RunData[]>): FigurePlan {
  const curve = (metric: "reward" | "chrf", scale: number) => (run: RunData) => {
    const points = new Map<number, number>();
    for (const [key, value] of Object.entries(run.values)) {
      const match = BEST_OF_N.exec(key);
      if (match && match[1] === metric && Number(match[2]) > 0) {
        points.set(Number(match[2]), scale * value);
      }
    }
    return points;
  };
  const seriesOf = (metric: "reward" | "chrf", scale: number) =>
    [...groups].map(([row, list]) => ({
      name: seriesName(row, list),
      points: meanCurve(list, curve(metric, scale)),
    })).filter((s) => s.points.length > 0);
  const reward: ChartSpec = {
    title: "Best-of-N validation reward (paper's Figure 6)",
    xLabel: "N (samples per source, log2 scale)",
    yLabel: "Reward of the best of N samples (x100)",
    xScale: "log2",
    series: seriesOf("reward", 100),
  };
  // The picks' chrF against the references shows whether the reward model is being gamed.
  const chrf: ChartSpec = {
    title: "Best-of-N: chrF of the picks against the references",
    xLabel: "N (samples per source, log2 scale)",
    yLabel: "Corpus chrF of the best of N samples",
    xScale: "log2",
    series: seriesOf("chrf", 1),
  };
  if (!hasDrawablePoints(reward)) {
    return { reason: "no run logged Best-of-N results (`bon/valid_reward@N`)" };
  }
  return { spec: [reward, chrf].filter(hasDrawablePoints), title: reward.title };
}

function ppoFigure(runs: readonly RunData[]): FigurePlan {
  const withPpo = runs.filter((run) => run.records.some((r) => "ppo/reward" in r || "ppo/kl" in r));
  // x: the logged step when every PPO record has one, else the iteration count.
  const ppoRecords = (run: RunData) =>
    run.records.filter((r) => finite(r["ppo/reward"]) || finite(r["ppo/kl"]));
  const bySteps = withPpo.every((run) => ppoRecords(run).every((r) => finite(r.step)));
  const curve = (run: RunData, key: string, scale: number) =>
    ppoRecords(run).flatMap((r, i): [number, number][] =>
      finite(r[key]) ? [[bySteps ? r.step as number : i + 1, scale * r[key]]] : []
    );
  const xLabel = bySteps ? "Training step" : "PPO iteration";
  const reward: ChartSpec = {
    title: "PPO: average sampled reward during training",
    xLabel,
    yLabel: "Reward (x100)",
    integerX: true,
    series: withPpo.map((run) => ({ name: run.name, points: curve(run, "ppo/reward", 100) })),
  };
  const kl: ChartSpec = {
    title: "PPO: KL(policy || BC policy) during training",
    xLabel,
    yLabel: "KL (nats per sequence)",
    integerX: true,
    series: withPpo.map((run) => ({ name: run.name, points: curve(run, "ppo/kl", 1) })),
  };
  const panels = [reward, kl].filter(hasDrawablePoints);
  return panels.length > 0
    ? { spec: panels, title: "PPO reward and KL over training" }
    : { reason: "no run logged PPO training metrics (`ppo/reward`, `ppo/kl`)" };
}

/** Draws every figure that has data; lists the others with the reason they were skipped. */
export function buildFigures(runs: readonly RunData[]): {
  figures: Figure[];
  skipped: SkippedFigure[];
} {
  const groups = groupRuns(runs);
  const plans: [string, string, FigurePlan][] = [
    [REPORT_FILES.improve, "Reward per Improve step (Figure 3)", improveFigure(groups)],
    [REPORT_FILES.grow, "Reward per Grow step (Figure 4)", growFigure(groups)],
    [REPORT_FILES.bestOfN, "Best-of-N (Figure 6)", bestOfNFigure(groups)],
    [REPORT_FILES.ppo, "PPO reward and KL over training", ppoFigure(runs)],
  ];
  const figures: Figure[] = [];
  const skipped: SkippedFigure[] = [];
  for (const [file, title, plan] of plans) {
    if ("reason" in plan) {
      skipped.push({ file, title, reason: plan.reason });
    } else {
      const specs = Array.isArray(plan.spec) ? plan.spec : [plan.spec];
      const svg = specs.length === 1 ? lineChart(specs[0]) : stackedCharts(specs, plan.title);
      figures.push({ file, title, svg });
    }
  }
  return { figures, skipped };
}

// ---------------------------------------------------------------------------------------
// Rendering

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

/** `1234567.8` -> `1,234,568` (with `digits` decimals), without depending on the locale. */
function formatNumber(value: number, digits: number): string {
  const text = (value + 0).toFixed(digits);
  const [whole, fraction] = text.split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return fraction === undefined ? grouped : `${grouped}.${fraction}`;
}

/** A cell as text: `mean` or `mean ± std`; `–` when missing. */
export function formatCell(cell: Cell | null, digits: number): string {
  if (cell === null) return "–";
  const mean = formatNumber(cell.mean, digits);
  return cell.std === null ? mean : `${mean} ± ${formatNumber(cell.std, digits)}`;
}

function markdownEscape(text: string): string {
  return text.replace(/\|/g, "\\|");
}

/** A markdown table with padded columns (readable as plain text too). */
function markdownTable(header: string[], body: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length), 3));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

/** Row label: the row name, marked "(incomplete)" when one of its runs has no summary. */
function rowLabel(row: TableRow): string {
  if (row.incomplete.length === 0) return row.row;
  if (row.runs.length === 1) return `${row.row} (incomplete)`;
  return `${row.row} (incomplete: ${row.incomplete.length} of ${row.runs.length} runs)`;
}

/** Our Table 1 as a markdown table (what `deno task report` prints). */
export function renderTable(report: Report): string {
  const header = ["Run", "Algorithm", "Seeds", ...report.columns.map((c) => c.title)];
  const body = report.rows.map((row) => [
    markdownEscape(rowLabel(row)),
    markdownEscape(row.algorithm),
    row.seeds.map((s) => s ?? "?").join(", "),
    ...report.columns.map((c) => formatCell(row.values[c.key], c.digits)),
  ]);
  return markdownTable(header, body);
}

/** `12,345` without depending on the locale. */
function count(value: number): string {
  return formatNumber(value, 0);
}

/** The note on how the splits were prepared, from {@link SPLITS_FILE}. */
function splitNotes(splits: SplitStats | null): string[] {
  if (splits === null) {
    return [
      `The experiment folder has no ${SPLITS_FILE} (written by \`deno task exp\` since the ` +
      "test split is filtered): how many test sources also occur in training is not recorded.",
    ];
  }
  const rule = "compared case-folded, whitespace collapsed, trailing punctuation stripped";
  const kept = splits.testBefore - splits.testRemoved;
  const test = splits.testOverlap === 0
    ? `0 of ${count(splits.testBefore)} test pairs removed: no test source occurs in ` +
      `training (${rule}).`
    : splits.testRemoved > 0
    ? `${count(splits.testRemoved)} of ${count(splits.testBefore)} test pairs removed: their ` +
      `source occurs in training (${rule}); the test columns use the other ${count(kept)}.`
    : `All ${count(splits.testBefore)} test pairs have a source that occurs in training ` +
      `(${rule}); they were kept, since none would be left, so the test columns measure ` +
      "strings seen in training.";
  return [
    test,
    `Validation is cut in two by a hash of each source: ${count(splits.select)} pairs for ` +
    "model selection (BC's early stopping, ReST's Improve steps, PPO's best checkpoint) and " +
    `${count(splits.report)} for the report; the average and sampled reward and the KL ` +
    "columns use the report half (up to `evaluation.validSize` of its pairs; 0: all), which " +
    "no run selected on.",
  ];
}

/** The reward most rows use (ties: the first row's), or undefined when no row names one. */
function mainReward(rows: readonly TableRow[]): { name: string; key: string } | undefined {
  const counts = new Map<string, { reward: { name: string; key: string }; n: number }>();
  for (const row of rows) {
    for (const reward of row.rewards) {
      const entry = counts.get(reward.key) ?? { reward, n: 0 };
      entry.n++;
      counts.set(reward.key, entry);
    }
  }
  let best: { reward: { name: string; key: string }; n: number } | undefined;
  for (const entry of counts.values()) if (best === undefined || entry.n > best.n) best = entry;
  return best?.reward;
}

/** The note naming rows trained with another reward than the others (the oracle row). */
function rewardNotes(rows: readonly TableRow[]): string[] {
  const main = mainReward(rows);
  if (main === undefined) return [];
  const others = rows.filter((row) => row.rewards.some((r) => r.key !== main.key));
  if (others.length === 0) {
    return [`Every row is scored (ReST and PPO also trained) with the \`${main.name}\` reward.`];
  }
  const named = others.map((row) => {
    const names = row.rewards.filter((r) => r.key !== main.key).map((r) =>
      r.name === main.name ? `${r.name}, another config` : r.name
    );
    return `${markdownEscape(rowLabel(row))} (\`${names.join("`, `")}\`)`;
  });
  return [
    `Rows are scored (ReST and PPO also trained) with the \`${main.name}\` reward, except ` +
    `${named.join(", ")}: there the average, sampled and test reward columns are in that ` +
    "row's own reward and not comparable with the other rows'; compare through the KL, test " +
    "chrF and test BLEU columns. A row trained on chrF against the references is an oracle, " +
    "the upper bound of what Improve achieves with a reward that measures the target itself: " +
    "if it gains test chrF where the other rows lose it, the reward model is the weak link, " +
    "not Improve.",
  ];
}

/** The table's footnotes: splits, rewards, the sampling temperature and distinct samples. */
export function tableNotes(report: Report): string[] {
  const t = report.temperatures;
  const temperature = t.length === 0 ? [] : [
    `Sampled reward: one sample per source at temperature ${t.join(", ")}` +
    (t.length > 1
      ? " (the runs' evaluation temperatures differ)."
      : " (the evaluation temperature).") +
    " The KL column samples at temperature 1.",
  ];
  return [
    ...splitNotes(report.splits),
    ...rewardNotes(report.rows),
    ...temperature,
    "Distinct samples are counted one way for every row: distinct (source, output) pairs " +
    "sampled from a policy for training over the whole run, references not counted. BC " +
    "samples nothing and shows 0 (the paper's BC row lists 16M).",
  ];
}

/** The full `table1.md`: our table, the paper's, a legend and the list of figures. */
export function renderMarkdown(report: Report): string {
  const paper = markdownTable(
    ["Algorithm", "Average reward (x100)", "Distinct samples"],
    PAPER_TABLE1.map((r) => [r.algorithm, r.reward.toFixed(1), r.distinct]),
  );
  const legend = [
    "- **Run**: the run folder's name; runs named `<row>@seed<k>` are seeds of one row. " +
    "Cells of a row with several seeds show mean ± sample standard deviation over the seeds " +
    'that have the value. "(incomplete)" marks runs without `summary.json` (interrupted or ' +
    "still running); their cells show the last values they logged.",
    "- **Algorithm**: the algorithm and its main settings from `manifest.resolved.json` " +
    "(G: Grow steps, I: Improve steps per Grow step).",
    "- **Seeds**: the seed of each run in the row.",
    ...report.columns.map((c) => `- **${c.title}**: ${c.description}.`),
    "- `–`: not logged by the row's runs (e.g. runs made before the column existed).",
    "",
    "The test chrF and BLEU against reference translations stand in for the paper's human " +
    "evaluation: a reward model can be over-optimised (the reward rises while the " +
    "reference metrics fall), which is what the paper's human ratings revealed for PPO.",
  ];
  const figures = [
    ...report.figures.map((f) => `- [${f.file}](${f.file}): ${f.title}.`),
    ...report.skipped.map((s) => `- ${s.file} (${s.title}): skipped; ${s.reason}.`),
  ];
  return [
    `# Table 1: ${report.experiment}`,
    "",
    `Built from the run folders in \`${report.dir}\`; rebuild with ` +
    `\`deno task report ${report.dir}\`.`,
    "",
    renderTable(report),
    "",
    ...tableNotes(report).map((note) => `- ${note}`),
    "",
    "## Columns",
    "",
    ...legend,
    "",
    "## The paper's Table 1, for orientation",
    "",
    "As reported in the paper (Gulcehre et al. 2023, arXiv 2308.08998, Table 1; IWSLT 2014 " +
    "De-En, a learned reward model, Transformer policies). Different data, model sizes and " +
    "reward: these are not comparable with ours in absolute terms, only in their ordering.",
    "",
    paper,
    "",
    "## Figures",
    "",
    ...figures,
    "",
  ].join("\n");
}

function csvField(value: string): string {
  return /[",\n\r]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** `table1.csv`: one line per row; each column's mean and `<key>_std`; empty when missing. */
export function renderCsv(report: Report): string {
  const header = [
    "run",
    "algorithm",
    "seeds",
    "incomplete",
    ...report.columns.flatMap((c) => [c.key, `${c.key}_std`]),
  ];
  const lines = [header.join(",")];
  for (const row of report.rows) {
    const cells = [
      row.row,
      row.algorithm,
      row.seeds.map((s) => s ?? "").join(";"),
      String(row.incomplete.length > 0),
      ...report.columns.flatMap((c) => {
        const cell = row.values[c.key];
        return [cell === null ? "" : String(cell.mean), cell?.std == null ? "" : String(cell.std)];
      }),
    ];
    lines.push(cells.map(csvField).join(","));
  }
  return lines.join("\n") + "\n";
}

/** `table1.json`: the table with full-precision cells, the columns, figures and the paper's rows. */
export function renderJson(report: Report): unknown {
  return {
    experiment: report.experiment,
    seedConvention: "runs named <row>@seed<k> are seeds of one row; cells are mean and " +
      "sample standard deviation (n - 1) over the runs that have the value",
    columns: report.columns,
    rows: report.rows,
    splits: report.splits,
    notes: tableNotes(report),
    figures: report.figures.map((f) => ({ file: f.file, title: f.title })),
    skippedFigures: report.skipped,
    paper: {
      source: "Gulcehre et al. 2023, arXiv 2308.08998, Table 1 (IWSLT 2014 De-En), as reported",
      rows: PAPER_TABLE1,
    },
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
