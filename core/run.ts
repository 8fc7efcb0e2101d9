/**
 * Run folders: `<out>/<experiment>/<run>/` with `manifest.resolved.json`,
 * `metrics.jsonl`, checkpoints and a `summary.json` written when the run completes.
 *
 * @module
 */

import { join } from "node:path";
import { UserError } from "./errors.ts";
import type { Metrics, MetricsLog } from "./types.ts";

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

  /** Creates a writer for `path` (the file is created on the first record). */
  constructor(path: string) {
    this.path = path;
  }

  /**
   * Appends `{step?, time, ...record}`. Non-finite values are written as null and
   * keys must be namespaced (`grow/...`, `eval/...`).
   */
  async log(record: Metrics, step?: number): Promise<void> {
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

/** Reads a `metrics.jsonl` file into records. */
export async function readMetrics(path: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(path);
  const records: Record<string, unknown>[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    try {
      records.push(JSON.parse(lines[i]));
    } catch {
      throw new UserError(`${path}:${i + 1}: not a JSON line`);
    }
  }
  return records;
}

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
    const previous = await Deno.readTextFile(join(dir, RESOLVED)).catch(() => undefined);
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
  return { dir, state, metrics: new MetricsWriter(join(dir, "metrics.jsonl")) };
}

/** Marks a run complete by writing its summary. */
export async function writeRunSummary(dir: string, summary: unknown): Promise<void> {
  await writeFileAtomic(join(dir, SUMMARY), JSON.stringify(summary, null, 2) + "\n");
}

/** Reads a completed run's summary. */
export async function readRunSummary(dir: string): Promise<unknown> {
  return JSON.parse(await Deno.readTextFile(join(dir, SUMMARY)));
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
