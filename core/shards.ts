/**
 * Grow shards: how a Grow step is cut into shards, how each shard's seed is derived, how a
 * shard's rows are checked, and how the shards an executor returns (in any order, possibly
 * twice) are saved, checked and merged into the one Grow set.
 *
 * A shard's rows depend only on the shard (its sources, its seed, the step's settings and
 * weights), never on which process computed it or when; shards are merged in plan order, so
 * the Grow file is byte-identical whatever the executor, the number of workers or the order
 * in which shards finish. Every finished shard is saved in the run folder
 * (`grow_<g>.shards/<key>-<index>.jsonl`, with its record), so a Grow step interrupted and
 * resumed computes only the shards it had not finished.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { DataError } from "./errors.ts";
import { readGrowFile, writeGrowFile } from "./grow_file.ts";
import { Rng } from "./random.ts";
import { exists } from "./run.ts";
import type {
  Example,
  Executor,
  GrowRow,
  GrowSettings,
  GrowShard,
  Progress,
  ShardDiagnostics,
  ShardJob,
  ShardTask,
  ShardTasks,
} from "./types.ts";

/** Sources per shard when the settings do not say. */
export const DEFAULT_SHARD_SOURCES = 256;

/**
 * The sampling seed of shard `index` of the Grow step seeded `growSeed` (itself a function of
 * the run's seed and the Grow step): a pure function of both, so it never depends on how the
 * work is spread.
 */
export function shardSeed(growSeed: number, index: number): number {
  return new Rng(growSeed).fork(`grow-shard/${index}`).nextUint32();
}

/**
 * Cuts a Grow step into shards: `examples` (the sources sampled from) into shards of
 * `shardSources` sources, then `originals` (the pairs added to the set) into shards of
 * `shardSources` times N pairs, so that shards of either kind hold about as many rows.
 */
export function planShards(
  examples: readonly Example[],
  originals: readonly Example[],
  settings: Pick<GrowSettings, "samplesPerSource" | "shardSources">,
  growSeed: number,
): GrowShard[] {
  const size = Math.max(1, settings.shardSources ?? DEFAULT_SHARD_SOURCES);
  const shards: GrowShard[] = [];
  const cut = (list: readonly Example[], per: number, kind: GrowShard["kind"]) => {
    for (let start = 0; start < list.length; start += per) {
      const index = shards.length;
      shards.push({
        index,
        kind,
        examples: list.slice(start, start + per),
        seed: shardSeed(growSeed, index),
      });
    }
  };
  cut(examples, size, "samples");
  cut(originals, size * Math.max(1, settings.samplesPerSource), "references");
  return shards;
}

/** Rows a shard must return: N per source for samples, one per pair for references. */
export function expectedRows(shard: GrowShard, settings: Pick<GrowSettings, "samplesPerSource">) {
  return shard.kind === "samples"
    ? shard.examples.length * settings.samplesPerSource
    : shard.examples.length;
}

/** SHA-256 (hex) of rows as the JSON lines a Grow file stores them in: a shard's checksum. */
export function rowsChecksum(rows: readonly unknown[]): string {
  const hash = createHash("sha256");
  for (const row of rows) hash.update(JSON.stringify(row) + "\n");
  return hash.digest("hex");
}

/**
 * Checks a shard's rows before they are kept: their number, that each belongs to the shard's
 * sources in order and has the shard's origin, and (when given) the checksum the computing
 * worker sent with them.
 *
 * @throws {DataError} saying what is wrong and where the rows came from (`from`).
 */
export function checkShardRows(
  shard: GrowShard,
  settings: Pick<GrowSettings, "samplesPerSource">,
  rows: readonly GrowRow[],
  from: string,
  checksum?: string,
): void {
  const what = `shard ${shard.index} (${shard.kind}) from ${from}`;
  const expected = expectedRows(shard, settings);
  if (!Array.isArray(rows) || rows.length !== expected) {
    throw new DataError(
      `${what}: ${Array.isArray(rows) ? rows.length : "no"} rows, expected ${expected}`,
    );
  }
  const per = shard.kind === "samples" ? settings.samplesPerSource : 1;
  const origin = shard.kind === "samples" ? "sample" : "reference";
  for (let i = 0; i < rows.length; i++) {
    const source = shard.examples[Math.floor(i / per)].source;
    if (rows[i]?.source !== source || rows[i]?.origin !== origin) {
      throw new DataError(`${what}: row ${i} is not a ${origin} of source ${i / per | 0}`);
    }
  }
  if (checksum !== undefined && rowsChecksum(rows) !== checksum) {
    throw new DataError(`${what}: the rows do not match their checksum (damaged in transit)`);
  }
}

/**
 * The executor that computes every shard in this process, one after another, in plan order
 * (the `local` executor plugin, and Grow's when the context names none).
 */
export const inProcessExecutor: Executor = {
  async run(job, finished) {
    for (const shard of job.shards) await finished(shard, await job.compute(shard));
  },
  close: () => Promise.resolve(),
};

/**
 * The reward's diagnostic counters of a step's shards computed elsewhere, put together: sums,
 * except keys ending in `_mean`, averaged weighted by the rows each shard scored.
 */
export class DiagnosticsSum {
  readonly #sums = new Map<string, { value: number; rows: number }>();
  #shards = 0;

  /** Adds one shard's counters. */
  add(diagnostics: ShardDiagnostics): void {
    this.#shards++;
    for (const [key, value] of Object.entries(diagnostics.counters)) {
      if (typeof value !== "number") continue;
      const sum = this.#sums.get(key) ?? { value: 0, rows: 0 };
      const weight = key.endsWith("_mean") ? diagnostics.rows : 1;
      sum.value += value * weight;
      sum.rows += weight;
      this.#sums.set(key, sum);
    }
  }

  /** Shards added so far. */
  get shards(): number {
    return this.#shards;
  }

  /** The counters: sums, and row-weighted means for `_mean` keys (0 over no rows). */
  counters(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [key, { value, rows }] of this.#sums) {
      out[key] = key.endsWith("_mean") ? (rows > 0 ? value / rows : 0) : value;
    }
    return out;
  }
}

/**
 * Computes every shard of `job` with `executor` and returns their rows in plan order (a
 * shard finished twice is kept once); nothing is saved, so an interrupted job starts over.
 * Rows computed in another process are checked by the job's `check` before they come here.
 */
export async function collectShards<T extends ShardTask>(
  executor: Executor,
  job: ShardJob<T>,
): Promise<ShardTasks[T]["row"][][]> {
  const done = new Map<number, ShardTasks[T]["row"][]>();
  await executor.run(job, (shard, rows) => {
    if (!done.has(shard.index)) done.set(shard.index, rows);
    return Promise.resolve();
  });
  const absent = job.shards.filter((s) => !done.has(s.index)).map((s) => s.index);
  if (absent.length > 0) {
    throw new Error(`${job.label}: the executor finished without shards ${absent.join(", ")}`);
  }
  return job.shards.map((s) => done.get(s.index)!);
}

/** Where a run keeps the finished shards of a Grow step, and their files. */
export function shardFolder(dir: string, g: number): string {
  return join(dir, `grow_${g}.shards`);
}

/**
 * Computes a Grow step's shards with `executor` and merges them in plan order. Shards saved
 * by an interrupted attempt (same `job.key`) are read back, checked, and not computed again;
 * every shard the executor finishes is checked ({@link checkShardRows}) and saved before it
 * counts; a shard finished twice (a worker presumed dead that finished after all) is kept
 * once. `progress` ticks by sources. The reward counters that shards computed elsewhere
 * bring are added to `diagnostics`, when given.
 */
export async function runShards(
  executor: Executor,
  job: ShardJob,
  folder: string,
  progress: Progress,
  log: (message: string) => void,
  diagnostics?: DiagnosticsSum,
): Promise<GrowRow[]> {
  await Deno.mkdir(folder, { recursive: true });
  const path = (shard: GrowShard) => join(folder, `${job.key}-${shard.index}.jsonl`);
  const done = new Map<number, GrowRow[]>();
  for (const shard of job.shards) {
    if (!await exists(path(shard))) continue;
    const rows = await readGrowFile(path(shard));
    checkShardRows(shard, job.settings, rows, path(shard));
    done.set(shard.index, rows);
    progress.tick(shard.examples.length);
  }
  if (done.size > 0) {
    log(`${job.label}: kept ${done.size} of ${job.shards.length} shards finished before`);
  }
  const missing = job.shards.filter((s) => !done.has(s.index));
  if (missing.length > 0) {
    const check = (shard: GrowShard, rows: readonly GrowRow[], from: string, sum?: string) =>
      checkShardRows(job.shards[shard.index], job.settings, rows, from, sum);
    await executor.run({ ...job, shards: missing, check }, async (shard, rows, counters) => {
      if (done.has(shard.index)) return;
      const planned = job.shards[shard.index];
      checkShardRows(planned, job.settings, rows, `the ${job.label} executor`);
      await writeGrowFile(path(planned), rows);
      done.set(shard.index, rows);
      if (counters !== undefined) diagnostics?.add(counters);
      progress.tick(planned.examples.length);
    });
  }
  const absent = job.shards.filter((s) => !done.has(s.index)).map((s) => s.index);
  if (absent.length > 0) {
    throw new Error(`${job.label}: the executor finished without shards ${absent.join(", ")}`);
  }
  return job.shards.flatMap((s) => done.get(s.index)!);
}
