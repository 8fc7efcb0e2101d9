/**
 * `queue`: hands a Grow step's shards to workers (`deno task worker --queue URL`) through a
 * BullMQ job queue on Redis. The experiment's process is the coordinator: it stores the
 * policy's weights, the tokenizer's state and the files a prepared reward saved by content
 * hash (in Redis, or a folder shared with the workers), queues one job per shard (job id `<step key>-<shard index>`, so a
 * restarted coordinator finds the jobs it queued before), and collects each result, checked
 * (row count, sources, checksum) before it counts. A worker that dies mid-shard stops
 * renewing its lock and BullMQ hands the shard to another worker; a shard that fails
 * `attempts` times stops the run with the worker's message. When Redis restarts and loses
 * the jobs, they are queued again; when it stays unreachable longer than
 * `unreachableSeconds`, the run stops with a clear error, keeping every finished shard for
 * `--resume`.
 *
 * @module
 */

import { resolve } from "node:path";
import type { Queue, QueueEvents } from "bullmq";
import type { Redis } from "ioredis";
import { DataError, UserError } from "../../core/errors.ts";
import { definePlugin, int, num } from "../../core/plugin.ts";
import { rowsChecksum } from "../../core/shards.ts";
import type {
  Executor,
  ShardDiagnostics,
  ShardJob,
  ShardTask,
  ShardTasks,
  WorkerRecipe,
} from "../../core/types.ts";
import { type BlobPlace, encodePolicy, putBlob, putFolder } from "./_artefacts.ts";

/** A shard of task T. */
type Shard<T extends ShardTask> = ShardTasks[T]["shard"];
/** A row of task T. */
type Row<T extends ShardTask> = ShardTasks[T]["row"];
/** What the executor hands each finished shard to. */
type Finished<T extends ShardTask> = (
  shard: Shard<T>,
  rows: Row<T>[],
  diagnostics?: ShardDiagnostics,
) => Promise<void>;
import { parseQueueUrl, type QueueAddress, redact } from "./_queue_url.ts";

/** Version of {@link ShardMessage}: a worker refuses jobs of another version. */
export const MESSAGE_VERSION = 2;

/** A queued job's data: one shard and what a worker rebuilds its computation from. */
export interface ShardMessage<T extends ShardTask = ShardTask> {
  /** {@link MESSAGE_VERSION}. */
  version: number;
  /** What the shard is. */
  task: T;
  /** The job's key (see `ShardJob.key`). */
  key: string;
  /** The shard. */
  shard: ShardTasks[T]["shard"];
  /** The settings every shard of the job uses. */
  settings: ShardTasks[T]["settings"];
  /** The run's plugin sections (`rewardDir` left out: the worker has its own copy). */
  recipe: WorkerRecipe;
  /**
   * SHA-256 of the policy and tokenizer artefacts, and the listing of the prepared reward's
   * folder (relative path -> SHA-256) when the reward prepares one.
   */
  artefacts: { policy: string; tokenizer: string; reward?: Record<string, string> };
  /** Where the artefacts are stored. */
  place: BlobPlace;
}

/** A worker's result for one shard. */
export interface ShardReply {
  /** The shard's rows, in order. */
  rows: unknown[];
  /** `rowsChecksum(rows)`, computed by the worker. */
  checksum: string;
  /** Which worker computed it (host and process id), for messages. */
  worker: string;
  /** The reward's diagnostic counters over the shard, when it keeps any. */
  diagnostics?: ShardDiagnostics;
}

/** The queue executor's config. */
export interface QueueConfig {
  /** `redis://[user:password@]host:port/db` or `rediss://...`. */
  url: string;
  /** Queue name (workers must use the same). */
  queue: string;
  /** Tries per shard before the run stops with the shard's error. */
  attempts: number;
  /** Seconds between the coordinator's checks of its pending shards. */
  pollSeconds: number;
  /** Seconds Redis may stay unreachable before the run stops. */
  unreachableSeconds: number;
  /** Folder shared with the workers for the artefacts ("": store them in Redis). */
  artefacts: string;
}

/** The coordinator's side of the queue. */
class QueueExecutor implements Executor {
  readonly #config: QueueConfig;
  readonly #address: QueueAddress;
  readonly #place: BlobPlace;
  readonly #log: (message: string) => void;
  #open?: { redis: Redis; queue: Queue; events: QueueEvents };

  constructor(config: QueueConfig, baseDir: string, log: (message: string) => void) {
    this.#config = config;
    this.#address = parseQueueUrl(config.url, "executor queue: url");
    this.#place = config.artefacts === ""
      ? { kind: "redis", prefix: `rest:${config.queue}` }
      : { kind: "folder", path: resolve(baseDir, config.artefacts) };
    this.#log = log;
  }

  async run<T extends ShardTask>(
    job: ShardJob<T>,
    finished: Finished<T>,
  ): Promise<void> {
    if (job.artefacts === undefined) {
      throw new TypeError(`${job.label}: the queue executor needs the job's artefacts`);
    }
    const where = `${job.label} on ${this.#address.redacted}`;
    const { redis, queue, events } = await this.#within(where, () => this.#connect());
    const encoded = job.artefacts();
    const policy = encodePolicy(encoded.policy);
    const tokenizer = new TextEncoder().encode(JSON.stringify(encoded.tokenizer));
    const { rewardDir, ...recipe } = encoded.recipe;
    const upload = async () => ({
      policy: await putBlob(redis, this.#place, policy),
      tokenizer: await putBlob(redis, this.#place, tokenizer),
      ...(rewardDir === undefined
        ? {}
        : { reward: await putFolder(redis, this.#place, rewardDir) }),
    });
    const artefacts = await this.#within(where, upload);
    const task: ShardTask = job.task ?? "grow";
    const id = (shard: Shard<T>) => `${job.key}-${shard.index}`;
    const enqueue = (shards: Shard<T>[]) =>
      queue.addBulk(shards.map((shard) => ({
        name: job.label,
        data: {
          version: MESSAGE_VERSION,
          task,
          key: job.key,
          shard,
          settings: job.settings,
          recipe,
          artefacts,
          place: this.#place,
        } satisfies ShardMessage,
        opts: {
          jobId: id(shard),
          attempts: this.#config.attempts,
          backoff: { type: "fixed", delay: 1000 },
          removeOnComplete: false,
          removeOnFail: false,
        },
      })));
    await this.#within(where, () => enqueue(job.shards));
    this.#log(`${where}: ${job.shards.length} shards queued`);
    const pending = new Map(job.shards.map((s) => [id(s), s]));
    let wake = () => {};
    const onCompleted = ({ jobId }: { jobId: string }) => {
      if (pending.has(jobId)) wake();
    };
    events.on("completed", onCompleted);
    try {
      while (pending.size > 0) {
        await new Promise<void>((done) => {
          const timer = setTimeout(done, this.#config.pollSeconds * 1000);
          wake = () => {
            clearTimeout(timer);
            done();
          };
        });
        const lost = await this.#within(
          where,
          () => this.#sweep(redis, queue, pending, job, finished),
        );
        if (lost.length > 0) {
          this.#log(
            `${where}: ${lost.length} queued shards are gone from Redis (was it restarted?); ` +
              "storing the artefacts and queueing them again",
          );
          await this.#within(where, async () => {
            await upload();
            await enqueue(lost);
          });
        }
      }
    } finally {
      events.off("completed", onCompleted);
    }
  }

  /**
   * One look at the pending shards: finished ones are checked, handed to `finished` and
   * removed from the queue; a shard whose last attempt failed stops the run. Returns the
   * shards whose jobs are gone from Redis.
   */
  async #sweep<T extends ShardTask>(
    redis: Redis,
    queue: Queue,
    pending: Map<string, Shard<T>>,
    job: ShardJob<T>,
    finished: Finished<T>,
  ): Promise<Shard<T>[]> {
    const ids = [...pending.keys()];
    const pipeline = redis.pipeline();
    for (const jobId of ids) {
      pipeline.hmget(queue.toKey(jobId), "timestamp", "finishedOn", "failedReason", "attemptsMade");
    }
    const answers = await pipeline.exec() ?? [];
    const lost: Shard<T>[] = [];
    for (let k = 0; k < ids.length; k++) {
      const [error, fields] = answers[k] ?? [new Error("no answer"), null];
      if (error) throw error;
      const [timestamp, finishedOn, failedReason, attemptsMade] = fields as (string | null)[];
      const shard = pending.get(ids[k])!;
      if (timestamp === null) {
        lost.push(shard);
        continue;
      }
      if (finishedOn === null) continue;
      const reply = await redis.hget(queue.toKey(ids[k]), "returnvalue");
      if (reply === null || reply === "null") {
        throw new UserError(
          `${job.label}: shard ${shard.index} failed on a worker after ${
            attemptsMade ?? "?"
          } attempts: ${redact(failedReason ?? "no reason given", this.#address)}`,
        );
      }
      const checked = this.#checkReply(job, shard, reply);
      await finished(shard, checked.rows, checked.diagnostics);
      pending.delete(ids[k]);
      await queue.remove(ids[k]).catch(() => {});
    }
    return lost;
  }

  /**
   * A worker's reply, parsed and checked: against its checksum, and by the job's own check
   * (row count, sources) when it has one.
   */
  #checkReply<T extends ShardTask>(
    job: ShardJob<T>,
    shard: Shard<T>,
    text: string,
  ): { rows: Row<T>[]; diagnostics?: ShardDiagnostics } {
    const what = `${job.label}: shard ${shard.index}`;
    let reply: ShardReply;
    try {
      reply = JSON.parse(text);
    } catch {
      throw new DataError(`${what}: the worker's reply is not JSON`);
    }
    const from = `worker ${String(reply?.worker ?? "?")}`;
    if (!Array.isArray(reply?.rows) || typeof reply.checksum !== "string") {
      throw new DataError(`${what} from ${from}: no rows and checksum`);
    }
    const rows = reply.rows as Row<T>[];
    if (job.check !== undefined) job.check(shard, rows, from, reply.checksum);
    else if (rowsChecksum(rows) !== reply.checksum) {
      throw new DataError(`${what} from ${from}: the rows do not match their checksum`);
    }
    const d = reply.diagnostics;
    const valid = d !== undefined && typeof d === "object" && d !== null &&
      typeof d.rows === "number" && typeof d.counters === "object" && d.counters !== null;
    return valid ? { rows, diagnostics: d } : { rows };
  }

  /**
   * Runs `work` against Redis, retrying while it fails for at most `unreachableSeconds`;
   * then stops the run with an error that names the queue (never its password).
   */
  async #within<T>(where: string, work: () => Promise<T>): Promise<T> {
    const limit = this.#config.unreachableSeconds * 1000;
    const started = performance.now();
    for (;;) {
      const left = limit - (performance.now() - started);
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        return await Promise.race([
          work(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error("no answer")), Math.max(0, left));
          }),
        ]);
      } catch (error) {
        if (error instanceof UserError) throw error;
        if (performance.now() - started >= limit) {
          const reason = redact((error as Error).message ?? String(error), this.#address);
          throw new UserError(
            `${where}: Redis has been unreachable for ${this.#config.unreachableSeconds} s ` +
              `(${reason}); finished shards are kept in the run folder: start Redis and the ` +
              "workers, then continue with --resume",
          );
        }
        await new Promise((done) => setTimeout(done, 200));
      } finally {
        clearTimeout(timer);
      }
    }
  }

  async #connect(): Promise<{ redis: Redis; queue: Queue; events: QueueEvents }> {
    if (this.#open !== undefined) return this.#open;
    // Loaded on first use: the queue's libraries read the environment when they load, which
    // a run with the local executor may not (and need not) do.
    const { Queue, QueueEvents } = await import("bullmq");
    const { connect } = await import("./_redis.ts");
    const redis = connect(this.#config.url);
    const queue = new Queue(this.#config.queue, { connection: redis });
    queue.on("error", () => {});
    const events = new QueueEvents(this.#config.queue, {
      connection: connect(this.#config.url),
    });
    events.on("error", () => {});
    this.#open = { redis, queue, events };
    await queue.waitUntilReady();
    await events.waitUntilReady();
    return this.#open;
  }

  async close(): Promise<void> {
    const open = this.#open;
    this.#open = undefined;
    if (open === undefined) return;
    // With Redis gone, closing politely would wait for it forever: a second at most.
    const briefly = (closing: Promise<unknown>) =>
      Promise.race([closing.catch(() => {}), new Promise((done) => setTimeout(done, 1000))]);
    await briefly(open.events.close());
    await briefly(open.queue.close());
    open.redis.disconnect();
  }
}

export default definePlugin({
  kind: "executor",
  name: "queue",
  summary: "Hands Grow shards to workers (deno task worker) through a BullMQ queue on Redis.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      url: {
        type: "string",
        default: "redis://127.0.0.1:6379/0",
        description: "The queue's Redis: redis://[user:password@]host:port/db, or rediss:// " +
          "for TLS. The password is never printed; the experiment may connect to this host " +
          "and port only.",
      },
      queue: {
        type: "string",
        pattern: "^[A-Za-z0-9_.-]{1,100}$",
        default: "rest-grow",
        description: "Queue name; start the workers with the same --name.",
      },
      attempts: int(1, 100, 3, "Tries per shard before the run stops with the shard's error."),
      pollSeconds: num(0.01, 60, 0.5, "Seconds between checks of the pending shards."),
      unreachableSeconds: num(
        1,
        86400,
        60,
        "Seconds Redis may stay unreachable before the run stops (finished shards are kept " +
          "for --resume).",
      ),
      artefacts: {
        type: "string",
        default: "",
        description: "A folder shared with every worker (same path on each machine) for the " +
          'policy, tokenizer and prepared-reward artefacts; "" stores them in Redis.',
      },
    },
  },
  check(config: QueueConfig) {
    try {
      parseQueueUrl(config.url, "url");
      return [];
    } catch (error) {
      return [{ path: "/url", message: (error as Error).message.replace(/^url: /, "") }];
    }
  },
  create: (config: QueueConfig, deps) => new QueueExecutor(config, deps.baseDir, deps.log),
});
