/**
 * Loopback simulation of the `queue` executor at scale: a real coordinator (the executor
 * plugin and core's runShards, saving and checking every shard) against K fake workers that
 * return a precomputed shard (256 rows, the size of a 64-source shard with N = 4) after
 * `workMs` of pretend computation, on a `redis-server` of its own on 127.0.0.1. Prints one
 * JSON line per (workers, workMs): shards per second, the coordinator's wall and CPU time per
 * shard, and the CPU that Redis and the fake workers' process used, so the limit (workers,
 * coordinator or Redis) shows.
 *
 *     deno run -A bench/queue_sim.ts [--workers 1,10,100] [--shards 400] [--work-ms 0,1000]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { Redis } from "ioredis";
import { Worker } from "bullmq";
import queuePlugin, { type QueueConfig, type ShardReply } from "../plugins/executors/queue.ts";
import { pluginDefaults } from "../core/plugin.ts";
import { rowsChecksum, runShards } from "../core/shards.ts";
import type { Example, GrowRow, GrowSettings, GrowShard } from "../core/types.ts";
import { startRedis } from "../tests/_redis.ts";

const SOURCES = 64;
const N = 4;

const SETTINGS: GrowSettings = {
  samplesPerSource: N,
  temperature: 0.8,
  topK: 0,
  topP: 1,
  maxLen: 64,
  batchSize: 64,
  includeOriginal: false,
  sources: 0,
  shardSources: SOURCES,
};

/** The shard every simulated shard repeats: 64 sentence pairs of about 40 characters. */
function examples(): Example[] {
  return Array.from({ length: SOURCES }, (_, i) => ({
    source: `source sentence number ${i} with a few more words`,
    reference: `reference translation ${i} with some words too`,
  }));
}

/** N rows per source of 20 tokens each, like a Grow shard of a small model. */
function rows(list: Example[]): GrowRow[] {
  return list.flatMap((e, i) =>
    Array.from({ length: N }, (_, j) => ({
      source: e.source,
      hypothesis: `hypothesis ${i}.${j} of about the same length here`,
      reference: e.reference,
      reward: 0.5 + 0.01 * j,
      tokens: Array.from({ length: 20 }, (_, t) => 4 + ((i * 7 + j * 3 + t) % 250)),
      logProbs: Array.from({ length: 20 }, (_, t) => -0.123456789 * (1 + ((t + j) % 5))),
      origin: "sample" as const,
      temperature: 0.8,
    }))
  );
}

/** User + system CPU seconds of a process, from /proc. */
function cpuSeconds(pid: number | "self"): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Redis's own CPU seconds (`INFO cpu`). */
async function redisCpu(redis: Redis): Promise<number> {
  const info = await redis.info("cpu");
  const get = (key: string) => Number(info.match(new RegExp(`${key}:([0-9.]+)`))?.[1] ?? 0);
  return get("used_cpu_user") + get("used_cpu_sys");
}

/** Fake-worker mode: K BullMQ workers in this process, each returning the precomputed shard. */
async function fakeWorkers(url: string, count: number, workMs: number): Promise<void> {
  const reply: ShardReply = { rows: rows(examples()), checksum: "", worker: "fake" };
  reply.checksum = rowsChecksum(reply.rows);
  const workers = Array.from({ length: count }, () =>
    new Worker("sim", async () => {
      if (workMs > 0) await new Promise((done) => setTimeout(done, workMs));
      return reply;
    }, {
      connection: new Redis(url, { maxRetriesPerRequest: null }),
      concurrency: 1,
      drainDelay: 1,
    }));
  console.log("ready");
  await new Response(Deno.stdin.readable).text(); // until the parent closes stdin
  await Promise.all(workers.map((w) => w.close()));
  Deno.exit(0);
}

async function simulate(url: string, workers: number, shards: number, workMs: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      import.meta.filename!,
      "--fake",
      String(workers),
      "--url",
      url,
      "--work-ms",
      String(workMs),
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  while (!(await reader.read()).value?.includes("ready")) { /* wait */ }
  const admin = new Redis(url);
  await admin.flushdb();
  const executor = await queuePlugin.create(
    { ...pluginDefaults(queuePlugin), url, queue: "sim", pollSeconds: 0.05 } as QueueConfig,
    { seed: 1, baseDir: ".", smoke: false, log: () => {}, create: () => Promise.reject() },
  );
  const list = examples();
  const plan: GrowShard[] = Array.from({ length: shards }, (_, index) => ({
    index,
    kind: "samples",
    examples: list,
    seed: index,
  }));
  const folder = await Deno.makeTempDir({ prefix: "queue-sim-" });
  const policy = { config: {}, weights: [], data: new Float32Array(1 << 18) }; // 1 MB
  const job = {
    key: `sim${workers}x${workMs}`,
    label: "sim",
    settings: SETTINGS,
    shards: plan,
    compute: () => Promise.reject(new Error("not local")),
    artefacts: () => ({
      recipe: {
        sections: {
          backend: { kind: "backend", name: "cpu", config: {} },
          tokenizer: { kind: "tokenizer", name: "bpe", config: {} },
          model: { kind: "model", name: "transformer", config: {} },
          reward: { kind: "reward", name: "chrf", config: {} },
        },
        baseDir: ".",
        seed: 1,
        smoke: false,
      },
      policy,
      tokenizer: {},
    }),
  };
  const redisBefore = await redisCpu(admin);
  const selfBefore = cpuSeconds("self");
  const workersBefore = cpuSeconds(child.pid);
  const started = performance.now();
  const merged = await runShards(executor, job, join(folder, "shards"), {
    tick() {},
    done() {},
  }, () => {});
  const wall = (performance.now() - started) / 1000;
  const result = {
    workers,
    shards,
    workMs,
    rows: merged.length,
    seconds: Number(wall.toFixed(2)),
    shardsPerSecond: Number((shards / wall).toFixed(1)),
    idealShardsPerSecond: workMs > 0 ? Number((workers * 1000 / workMs).toFixed(1)) : null,
    coordinatorCpuMsPerShard: Number(
      (1000 * (cpuSeconds("self") - selfBefore) / shards).toFixed(2),
    ),
    redisCpuMsPerShard: Number((1000 * (await redisCpu(admin) - redisBefore) / shards).toFixed(2)),
    workersCpuMsPerShard: Number(
      (1000 * (cpuSeconds(child.pid) - workersBefore) / shards).toFixed(2),
    ),
  };
  await executor.close();
  admin.disconnect();
  await child.stdin.close();
  await reader.cancel();
  await child.status;
  await Deno.remove(folder, { recursive: true });
  console.log(JSON.stringify(result));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      workers: { type: "string", default: "1,10,100" },
      shards: { type: "string", default: "400" },
      "work-ms": { type: "string", default: "0,1000" },
      fake: { type: "string" },
      url: { type: "string" },
    },
  });
  if (values.fake !== undefined) {
    await fakeWorkers(values.url!, Number(values.fake), Number(values["work-ms"]));
  } else {
    const redis = await startRedis();
    try {
      for (const workMs of values["work-ms"].split(",").map(Number)) {
        for (const workers of values.workers.split(",").map(Number)) {
          await simulate(redis.url, workers, Number(values.shards), workMs);
        }
      }
    } finally {
      await redis.close();
    }
    Deno.exit(0);
  }
}
