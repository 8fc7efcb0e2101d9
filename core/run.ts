/**
 * Run folders: `<out>/<experiment>/<run>/` with `manifest.resolved.json`,
 * `metrics.jsonl`, checkpoints and a `summary.json` written when the run completes.
 *
 * @module
 */

import { join } from "node:path";
import { UserError } from "./errors.ts";
import { checkRegularFile, readRegularText } from "./fs.ts";
import type { Metrics, MetricsLog, RunSummary } from "./types.ts";

/** Writes a file atomically: a temporary file in the same folder, then a rename. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const temp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(temp, data);
    else await Deno.writeFile(temp, data);
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
}

/** Whether a path exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** Appends records to `metrics.jsonl`, one JSON object per line. */
export class MetricsWriter implements MetricsLog {
  /** The metrics file. */
  readonly path: string;
  #checked = false;

  /** Creates a writer for `path` (the file is created on the first record). */
  constructor(path: string) {
    this.path = path;
  }

  /**
   * Appends `{step?, time, ...record}`. Non-finite values are written as null and
   * keys must be namespaced (`grow/...`, `eval/...`).
   */
  async log(record: Metrics, step?: number): Promise<void> {
    if (!this.#checked) {
      // A FIFO or a folder in its place would block or fail the first append: name it.
      if (await exists(this.path)) await checkRegularFile(this.path, { what: "metrics log" });
      this.#checked = true;
    }
    const line: Record<string, unknown> = {};
    if (step !== undefined) line.step = step;
    line.time = new Date().toISOString();
    for (const [key, value] of Object.entries(record)) {
      if (!key.includes("/")) {
        throw new TypeError(`metric key "${key}" must be namespaced, e.g. "eval/${key}"`);
      }
      line[key] = Number.isFinite(value) ? value : null;
    }
    await Deno.writeTextFile(this.path, JSON.stringify(line) + "\n", { append: true });
  }
}

/**
 * Reads a `metrics.jsonl` file into records.
 *
 * @throws {UserError} naming the file when it is not a regular file, and the line when one is
 *   not a JSON object.
 */
export async function readMetrics(path: string): Promise<Record<string, unknown>[]> {
  return parseMetrics(path, await readRegularText(path, { what: "metrics log" }), METRICS_FIX);
}

/**
 * The records of a metrics log's text (`path` names it in errors): one JSON object per
 * non-empty line.
 *
 * @throws {UserError} naming the file and line of one that is not JSON or not an object,
 *   with `fix` (what to do).
 */
export function parseMetrics(path: string, text: string, fix: string): Record<string, unknown>[] {
  const records: Record<string, unknown>[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    let record: unknown;
    try {
      record = JSON.parse(lines[i]);
    } catch {
      throw new UserError(
        `${path}:${i + 1}: not a JSON line (truncated or corrupt metrics log); ${fix}`,
      );
    }
    if (record === null || typeof record !== "object" || Array.isArray(record)) {
      throw new UserError(`${path}:${i + 1}: expected a JSON object per line; ${fix}`);
    }
    records.push(record as Record<string, unknown>);
  }
  return records;
}

const METRICS_FIX = "restore the file, or delete the run's folder and run it again";

/** The state of a run folder when a run starts. */
export type RunState = "new" | "resumed" | "complete";

/** A run's folder and its standard files. */
export interface RunFolder {
  /** The folder. */
  dir: string;
  /** What was found there. */
  state: RunState;
  /** The run's metrics log. */
  metrics: MetricsWriter;
}

const RESOLVED = "manifest.resolved.json";
const SUMMARY = "summary.json";
const METRICS = "metrics.jsonl";

/**
 * Opens (creating) the folder of one run and writes `manifest.resolved.json`.
 *
 * Without `resume`, an existing non-empty folder is refused so that no work is
 * overwritten. With `resume`, the stored resolved manifest must equal the new one.
 *
 * @throws {UserError} when the folder exists without `resume`, or the manifest changed.
 */
export async function openRunFolder(
  dir: string,
  resolved: unknown,
  options: { resume: boolean },
): Promise<RunFolder> {
  const text = JSON.stringify(resolved, null, 2) + "\n";
  let state: RunState = "new";
  const hasFiles = await exists(dir) && (await Array.fromAsync(Deno.readDir(dir))).length > 0;
  if (hasFiles) {
    if (!options.resume) {
      throw new UserError(
        `run folder ${dir} already exists; pass --resume to continue it, or --out DIR to write elsewhere`,
      );
    }
    await checkStateFiles(dir);
    const previous = await readResolved(join(dir, RESOLVED));
    if (previous !== undefined && previous !== text) {
      throw new UserError(
        `cannot resume ${dir}: the manifest changed since the run started ` +
          `(compare ${join(dir, RESOLVED)} with the new plan, or use another --out)`,
      );
    }
    state = await exists(join(dir, SUMMARY)) ? "complete" : "resumed";
  } else {
    await Deno.mkdir(dir, { recursive: true });
  }
  if (state === "new" || !(await exists(join(dir, RESOLVED)))) {
    await writeFileAtomic(join(dir, RESOLVED), text);
  }
  return { dir, state, metrics: new MetricsWriter(join(dir, METRICS)) };
}

/**
 * Refuses a resumed run folder whose state files exist but are not regular files (a FIFO,
 * a folder, ...), before anything reads or appends to them (which would hang or fail).
 */
async function checkStateFiles(dir: string): Promise<void> {
  for (const name of [RESOLVED, SUMMARY, METRICS]) {
    const path = join(dir, name);
    if (await exists(path)) await checkRegularFile(path, { what: name });
  }
}

/**
 * The stored resolved manifest of a run, or undefined when there is none.
 *
 * @throws {UserError} naming the file when it is not valid JSON (truncated or corrupt).
 */
async function readResolved(path: string): Promise<string | undefined> {
  if (!(await exists(path))) return undefined;
  const text = await readRegularText(path, { what: RESOLVED, maxBytes: 64 << 20 });
  try {
    JSON.parse(text);
  } catch {
    throw new UserError(
      `${path}: not valid JSON (truncated or corrupt); delete it to have it written again ` +
        `from the manifest (the run is then resumed as that manifest says), or start without ` +
        `--resume in a new --out folder`,
    );
  }
  return text;
}

/** Marks a run complete by writing its summary. */
export async function writeRunSummary(dir: string, summary: unknown): Promise<void> {
  await writeFileAtomic(join(dir, SUMMARY), JSON.stringify(summary, null, 2) + "\n");
}

/**
 * Reads a completed run's summary: a JSON object whose `metrics` maps names to numbers (or
 * null for a value that was not finite).
 *
 * @throws {UserError} naming the file when it is not a regular file, not valid JSON or not of
 *   that shape.
 */
export async function readRunSummary(dir: string): Promise<RunSummary> {
  const path = join(dir, SUMMARY);
  const text = await readRegularText(path, { what: "run summary", maxBytes: 64 << 20 });
  const fix = "delete it and run again with --resume to recompute it";
  let summary: unknown;
  try {
    summary = JSON.parse(text);
  } catch {
    throw new UserError(`${path}: not valid JSON (truncated or corrupt); ${fix}`);
  }
  const problem = summaryProblem(summary);
  if (problem !== undefined) throw new UserError(`${path}: ${problem}; ${fix}`);
  return summary as RunSummary;
}

/** The first thing wrong with a parsed summary, in words, or undefined. */
export function summaryProblem(summary: unknown): string | undefined {
  const isObject = (v: unknown): v is Record<string, unknown> =>
    typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isObject(summary)) return "expected a JSON object";
  if (!isObject(summary.metrics)) return "expected an object `metrics` of final metrics";
  for (const [key, value] of Object.entries(summary.metrics)) {
    if (typeof value !== "number" && value !== null) {
      return `metrics.${key} is ${JSON.stringify(value)?.slice(0, 80)}, expected a number`;
    }
  }
  if (summary.seconds !== undefined && typeof summary.seconds !== "number") {
    return `seconds is ${JSON.stringify(summary.seconds)?.slice(0, 80)}, expected a number`;
  }
  return undefined;
}

/**
 * Takes the lock `<dir>/.lock` so that two processes never write one experiment folder: an
 * exclusive advisory lock (flock) on the file, which the operating system releases when the
 * process ends, however it ends. The file names the holder for the error message; a lock
 * file left by a killed process is simply taken over. Returns the function that releases it.
 *
 * @throws {UserError} when a running process holds the lock.
 */
export async function acquireLock(
  dir: string,
  log: (message: string) => void = () => {},
): Promise<() => Promise<void>> {
  const path = join(dir, ".lock");
  if (await exists(path)) await checkRegularFile(path, { what: "lock file" });
  const file = await Deno.open(path, { read: true, write: true, create: true });
  if (!(await file.tryLock(true))) {
    let holder = "another process";
    try {
      const info = JSON.parse(await Deno.readTextFile(path));
      holder = `process ${info.pid} (since ${info.started})`;
    } catch {
      // Being written: keep the generic name.
    }
    file.close();
    throw new UserError(
      `${dir} is being written by ${holder}; wait for it to finish or stop it first`,
    );
  }
  const previous = await Deno.readTextFile(path).catch(() => "");
  if (previous.trim() !== "") log(`lock: taking over ${path} from a process that has ended`);
  await removeStaleTemporaries(dir);
  const text = JSON.stringify({ pid: Deno.pid, started: new Date().toISOString() }) + "\n";
  await file.truncate(0);
  await file.write(new TextEncoder().encode(text));
  return async () => {
    await Deno.remove(path).catch(() => {});
    try {
      await file.unlock();
    } finally {
      file.close();
    }
  };
}

/**
 * Removes the temporary files ({@link writeFileAtomic}'s `<name>.tmp-<pid>-<id>`) that a
 * killed process left directly in `dir`. Called with the folder's lock held, so no live
 * process is writing them; the files they were for are either complete or absent.
 */
async function removeStaleTemporaries(dir: string): Promise<void> {
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && /\.tmp-\d+(-[0-9a-f]+)?$/.test(entry.name)) {
      await Deno.remove(join(dir, entry.name)).catch(() => {});
    }
  }
}

/** `counters` with `prefix` before each key (e.g. a reward's diagnostics in a metrics log). */
export function prefixed(prefix: string, counters: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(counters).map(([k, v]) => [`${prefix}${k}`, v]));
}
