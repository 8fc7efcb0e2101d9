/**
 * Reading an experiment folder for its report: the run folders, the record of the splits,
 * and the names of the files the report owns there.
 *
 * What counts as a run: every subfolder of the experiment folder that holds
 * `manifest.resolved.json` (written when a run starts; the shared `bc/` and `rewards/`
 * folders have none). A run is complete when its `summary.json` exists; incomplete runs
 * are reported with an "(incomplete)" marker from whatever their `metrics.jsonl` holds.
 *
 * Seeds: runs of the same table row with different seeds are named `<row>@seed<k>`
 * (e.g. `rest_g1_i4@seed1`, `rest_g1_i4@seed2`); {@link groupRuns} gathers them into one
 * row. A plain `<row>` name is a row of one run.
 *
 * A run's values: the last finite value of each key in its `metrics.jsonl`, overridden
 * by the final metrics in `summary.json`; wall time is `summary.json`'s `seconds`.
 *
 * The experiment folder's `splits.json` ({@link SPLITS_FILE}, written by `deno task exp`
 * when it loads the data) gives the counts behind the table's footnote on the splits
 * ({@link loadSplitStats}).
 *
 * @module
 */

import { join, resolve } from "node:path";
import { UserError } from "../errors.ts";
import { readRegularText } from "../fs.ts";
import { exists, readMetrics, summaryProblem } from "../run.ts";
import type { SplitStats } from "../splits.ts";
import { BC_CURVE_FILE } from "./bc_curve.ts";

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

/**
 * The experiment folder's record of how its splits were prepared (core/splits.ts
 * `SplitStats` as JSON), written by `deno task exp` when it loads the data; the report's
 * footnote on removed test pairs and the validation halves reads it.
 */
export const SPLITS_FILE = "splits.json";

const RESOLVED = "manifest.resolved.json";
const SUMMARY = "summary.json";
const METRICS = "metrics.jsonl";

/** Table and figure files that `writeReport` (mod.ts) owns in the experiment folder. */
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
  if (!(await exists(path))) return null;
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
    if (entry.isDirectory && await exists(join(dir, entry.name, RESOLVED))) {
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
    // readMetrics checks that every line is a JSON object
    const records = await exists(metricsPath) ? await readMetrics(metricsPath) : [];
    const summaryPath = join(runDir, SUMMARY);
    let summary: Record<string, unknown> | undefined;
    if (await exists(summaryPath)) {
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

/** Whether a value is a finite number. */
export function finite(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value);
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
