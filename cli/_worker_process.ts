/**
 * The body of `deno task worker`, run by the launcher in `cli/worker.ts` as a child Deno
 * process with the permissions of `deno task exp`'s sandbox plus network access to the
 * queue's host and port only. It takes shards from the queue (Grow shards, and the final
 * evaluation's decoding shards), one at a time: for each it rebuilds the run's plugins from
 * the job's sections (kept while consecutive jobs share them), fetches the policy's weights,
 * the tokenizer's state and a prepared reward's files by content hash (cached in the
 * worker's folder, checked against the hash; the reward is rebuilt by its `restore()`, which
 * loads and never trains), computes the shard with the same function the experiment's own
 * process uses (core/grow_shard.ts, core/eval_shard.ts) and returns the rows with their
 * checksum and the reward's counters. The queue URL arrives on standard input, so its
 * password is in no process list.
 *
 * @module
 */

import { Worker } from "bullmq";
import type { Redis } from "ioredis";
import { hostname } from "node:os";
import { buildPolicy } from "../core/bc.ts";
import { UserError } from "../core/errors.ts";
import { createPlugin } from "../core/experiment.ts";
import { evalShard } from "../core/eval_shard.ts";
import { growShard, type ShardTools } from "../core/grow_shard.ts";
import { hashText } from "../core/hash.ts";
import type { ResolvedPluginRef } from "../core/plugin.ts";
import { createRegistries } from "../core/registry.ts";
import { rowsChecksum } from "../core/shards.ts";
import type {
  Policy,
  RewardModel,
  ShardDiagnostics,
  Tokenizer,
  WorkerRecipe,
  WorkerSection,
} from "../core/types.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { decodePolicy, getBlob, getFolder } from "../plugins/executors/_artefacts.ts";
import { parseQueueUrl, redact } from "../plugins/executors/_queue_url.ts";
import { connect } from "../plugins/executors/_redis.ts";
import { MESSAGE_VERSION, type ShardMessage, type ShardReply } from "../plugins/executors/queue.ts";
import { prepareSandbox } from "./_exp_worker.ts";
import { runMain } from "./_main.ts";
import type { WorkerSandbox } from "./exp.ts";

/** The worker's options, passed by the launcher as `--options=<json>`. */
export interface WorkerOptions {
  /** Queue name. */
  name: string;
  /** Folder caching the artefacts by hash. */
  cache: string;
  /** BullMQ lock duration (seconds): a worker silent this long loses its shard. */
  lockSeconds: number;
  /** Seconds between BullMQ's checks for shards whose worker died. */
  stalledSeconds: number;
  /** Overrides the `threads` of the jobs' backend config (0: keep it). */
  threads: number;
  /** Leave after this many shards (0: never). */
  maxShards: number;
}

/** Builds (or reuses) the plugins and the policy that shard messages need. */
class Workshop {
  readonly #registries = createRegistries(builtinPlugins);
  readonly #options: WorkerOptions;
  readonly #redis: Redis;
  #backend?: string;
  #built?: { id: string; tools: ShardTools };

  constructor(options: WorkerOptions, redis: Redis) {
    this.#options = options;
    this.#redis = redis;
  }

  /** The policy, tokenizer and reward of `message`'s run, at the message's weights. */
  async tools(message: ShardMessage): Promise<ShardTools> {
    const id = hashText(JSON.stringify([message.recipe, message.artefacts, message.place]));
    if (this.#built?.id === id) return this.#built.tools;
    this.#built?.tools.policy.dispose();
    this.#built = undefined;
    const { recipe } = message;
    const deps = { seed: recipe.seed, baseDir: recipe.baseDir, smoke: recipe.smoke, log };
    await this.#startBackend(recipe, deps);
    const create = <K extends "tokenizer" | "model" | "reward">(kind: K) =>
      createPlugin(this.#registries, kind, ref(recipe.sections[kind]), deps);
    const blob = (sha: string) => getBlob(this.#redis, message.place, sha, this.#options.cache);
    const tokenizer = await create("tokenizer");
    tokenizer.load(JSON.parse(new TextDecoder().decode(await blob(message.artefacts.tokenizer))));
    const reward = await create("reward");
    await this.#restoreReward(reward, message, tokenizer);
    const policy: Policy = buildPolicy(await create("model"), tokenizer, recipe.seed);
    policy.load(decodePolicy(await blob(message.artefacts.policy)));
    this.#built = { id, tools: { policy, tokenizer, reward } };
    return this.#built.tools;
  }

  /**
   * A reward that prepares something is rebuilt by loading the files its `prepare` saved
   * (fetched by hash into the cache): a worker never trains a reward.
   */
  async #restoreReward(reward: RewardModel, message: ShardMessage, tokenizer: Tokenizer) {
    if (reward.prepare === undefined) return;
    const { recipe } = message;
    const name = `reward "${recipe.sections.reward.name}"`;
    if (reward.restore === undefined) {
      throw new UserError(
        `${name} prepares a model of its own but has no restore() to load it from the files ` +
          "its prepare() saved, so queue workers cannot use it: use the local executor",
      );
    }
    const listing = message.artefacts.reward;
    if (listing === undefined) {
      throw new UserError(`${name}: the shard's message lists none of its prepared files`);
    }
    let dir: string;
    try {
      dir = await getFolder(this.#redis, message.place, listing, this.#options.cache);
    } catch (error) {
      throw new UserError(`${name}: prepared file ${(error as Error).message}`);
    }
    await reward.restore({
      dir,
      tokenizer,
      smoke: recipe.smoke,
      log: (line) => log(`reward: ${line}`),
    });
  }

  /** Starts the jobs' backend once; a later job asking for another one is refused. */
  async #startBackend(recipe: WorkerRecipe, deps: Parameters<typeof createPlugin>[3]) {
    const section = recipe.sections.backend;
    if (this.#backend !== undefined) {
      if (this.#backend === section.name) return;
      throw new UserError(
        `this worker runs backend "${this.#backend}", the shard needs "${section.name}": ` +
          "start a worker for it",
      );
    }
    const config = { ...section.config };
    if (this.#options.threads > 0 && "threads" in config) config.threads = this.#options.threads;
    const backend = await createPlugin(
      this.#registries,
      "backend",
      ref({ ...section, config }),
      deps,
    );
    const info = await backend.init();
    this.#backend = section.name;
    log(`backend: ${info.name} (tfjs ${info.tfBackend}, ${info.threads} threads)`);
  }
}

/** A job's section as the resolver's reference type. */
function ref(section: WorkerSection): ResolvedPluginRef {
  return section as ResolvedPluginRef;
}

function log(message: string): void {
  console.error(`worker: ${message}`);
}

/** Computes a shard of the message's task with the function the experiment's process uses. */
function computeShard(tools: ShardTools, message: ShardMessage): Promise<unknown[]> {
  if (message.task === "grow") {
    const m = message as ShardMessage<"grow">;
    return growShard(tools, m.shard, m.settings);
  }
  if (message.task === "evaluate") {
    const m = message as ShardMessage<"evaluate">;
    return evalShard(tools, m.shard, m.settings);
  }
  throw new UserError(`the shard's task ${JSON.stringify(message.task)} is unknown to this worker`);
}

/** Checks a job's data before it is trusted as a {@link ShardMessage}. */
function checkMessage(data: unknown): ShardMessage {
  const m = data as ShardMessage;
  if (m?.version !== MESSAGE_VERSION) {
    throw new UserError(
      `the shard's message has version ${JSON.stringify(m?.version)}, this worker reads ` +
        `${MESSAGE_VERSION}: run the same version of the framework as the coordinator`,
    );
  }
  if (
    typeof m.key !== "string" || !Array.isArray(m.shard?.examples) ||
    typeof m.shard.seed !== "number" || typeof m.settings !== "object" ||
    typeof m.artefacts?.policy !== "string" || typeof m.artefacts?.tokenizer !== "string"
  ) {
    throw new UserError("the shard's message is malformed");
  }
  return m;
}

async function main(args: string[]): Promise<number> {
  const sandbox = JSON.parse(args[0].slice("--sandbox=".length)) as WorkerSandbox;
  const options = JSON.parse(args[1].slice("--options=".length)) as WorkerOptions;
  const url = (await new Response(Deno.stdin.readable).text()).trim();
  const address = parseQueueUrl(url, "--queue");
  const blasFailure = prepareSandbox(sandbox);
  if (blasFailure !== undefined) log(`OpenBLAS not loaded: ${blasFailure.message.split("\n")[0]}`);
  const id = `${hostname()}:${Deno.pid}`;
  const redis = connect(url);
  const workshop = new Workshop(options, redis);
  let shards = 0;
  const worker = new Worker(
    options.name,
    async (job) => {
      const message = checkMessage(job.data);
      log(
        `shard ${message.shard.index} of ${message.key}: started (attempt ${job.attemptsMade + 1})`,
      );
      const started = performance.now();
      const tools = await workshop.tools(message);
      tools.reward.diagnostics?.(); // counters from here on belong to this shard
      const rows = await computeShard(tools, message);
      const counters = tools.reward.diagnostics?.();
      const diagnostics: ShardDiagnostics | undefined = counters === undefined
        ? undefined
        : { counters, rows: rows.length };
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      log(`shard ${message.shard.index} of ${message.key}: ${rows.length} rows in ${seconds} s`);
      shards++;
      return {
        rows,
        checksum: rowsChecksum(rows),
        worker: id,
        ...(diagnostics === undefined ? {} : { diagnostics }),
      } satisfies ShardReply;
    },
    {
      connection: connect(url),
      concurrency: 1,
      lockDuration: options.lockSeconds * 1000,
      stalledInterval: options.stalledSeconds * 1000,
      maxStalledCount: 10,
    },
  );
  let lastError = "";
  worker.on("error", (error) => {
    // While Redis is away every reconnect fails alike: say it once.
    if (error.message !== lastError) log(`queue: ${redact(error.message, address)}`);
    lastError = error.message;
  });
  worker.on("failed", (job, error) => {
    log(`shard job ${job?.id ?? "?"} failed: ${redact(error.message, address)}`);
  });
  // A worker whose launcher is gone (killed, even by SIGKILL) stops at once, like its
  // launcher: BullMQ hands its shard to another worker once its lock expires.
  const parent = Deno.ppid;
  Deno.unrefTimer(setInterval(() => {
    if (Deno.ppid !== parent) Deno.exit(137);
  }, 250));
  log(`${id} takes Grow shards from queue "${options.name}" on ${address.redacted}`);
  await new Promise<void>((done) => {
    let signals = 0;
    const stop = () => {
      if (++signals > 1) Deno.exit(130);
      log("stopping after the current shard (again to stop at once)");
      done();
    };
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
    if (options.maxShards > 0) {
      worker.on("completed", () => {
        if (shards >= options.maxShards) done();
      });
    }
  });
  await worker.close();
  redis.disconnect();
  log(`${id} stopped after ${shards} shards`);
  return 0;
}

if (import.meta.main) await runMain("worker", () => main(Deno.args));
