/**
 * The `queue` executor end to end: `deno task exp` as the coordinator and `deno task worker`
 * processes, on a `redis-server` each test starts on 127.0.0.1 (skipped, visibly, without
 * one). Faults: a worker SIGKILLed mid-shard, the coordinator SIGKILLed and resumed, Redis
 * restarted (and gone for good). Every finished Grow file is compared byte for byte with the
 * `local` executor's.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { spawnTask } from "../_cli.ts";
import { runTiny, tinyManifest } from "../_experiment.ts";
import { skipWithoutRedis, startRedis, type TestRedis } from "../_redis.ts";
import { workerPlan } from "../../cli/worker.ts";
import { permissionFlags } from "../../cli/exp.ts";
import { parseQueueUrl, redact } from "../../plugins/executors/_queue_url.ts";
import { getFolder, putFolder } from "../../plugins/executors/_artefacts.ts";

/** Text a process writes, collected as it comes, with a way to wait for a line. */
class Output {
  text = "";
  readonly done: Promise<void>;
  #wake: (() => void)[] = [];

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        this.text += chunk;
        for (const wake of this.#wake.splice(0)) wake();
      }
      for (const wake of this.#wake.splice(0)) wake();
    })();
  }

  /** The first match of `pattern`, waiting up to `seconds` for it. */
  async waitFor(pattern: RegExp, seconds = 120): Promise<RegExpMatchArray> {
    const deadline = performance.now() + seconds * 1000;
    for (;;) {
      const match = this.text.match(pattern);
      if (match !== null) return match;
      if (performance.now() > deadline) {
        throw new Error(`no ${pattern} within ${seconds} s in:\n${this.text.slice(-3000)}`);
      }
      await Promise.race([
        new Promise<void>((wake) => this.#wake.push(wake)),
        new Promise((wake) => setTimeout(wake, 200)),
      ]);
    }
  }
}

/** A started `deno task` with its output. */
interface Task {
  child: Deno.ChildProcess;
  out: Output;
  err: Output;
}

async function start(
  task: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Task> {
  const child = await spawnTask(task, args, { env });
  return { child, out: new Output(child.stdout), err: new Output(child.stderr) };
}

/** Kills a task (if still running) and waits for it and its output. */
async function finish(task: Task, signal: Deno.Signal = "SIGKILL"): Promise<number> {
  try {
    task.child.kill(signal);
  } catch { /* already gone */ }
  const status = await task.child.status;
  await task.out.done;
  await task.err.done;
  return status.code;
}

/** Waits (at most `seconds`) for a task to end by itself, and its output. */
async function ended(task: Task, seconds = 180): Promise<number> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const status = await Promise.race([
    task.child.status,
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`still running after ${seconds} s:\n${task.err.text.slice(-3000)}`)),
        seconds * 1000,
      );
    }),
  ]).finally(() => clearTimeout(timer));
  await task.out.done;
  await task.err.done;
  return status.code;
}

/**
 * A ReST run with one Grow step of 32 sources in shards of 4: 8 shards of samples and 12 of
 * the 180 original pairs (16 each).
 */
function manifest(executor?: Record<string, unknown>): Record<string, unknown> {
  return tinyManifest({
    executor,
    evaluation: { maxLen: 16, validSize: 4, testSize: 4 },
    runs: [{
      name: "rest",
      algorithm: {
        name: "rest",
        config: {
          growSteps: 1,
          improveSteps: 1,
          grow: { sources: 32, shardSources: 4, samplesPerSource: 4 },
          improve: { steps: 2 },
        },
      },
      loss: "bc",
      threshold: { name: "fixed", config: { values: [0] } },
    }],
  });
}

function queue(url: string, more: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: "queue", config: { url, pollSeconds: 0.1, ...more } };
}

/** The local executor's Grow file for {@link manifest}, computed in this process. */
async function localGrowFile(dir: string): Promise<Uint8Array> {
  const out = join(dir, "local");
  await runTiny(manifest(), out);
  return await Deno.readFile(join(out, "tiny", "rest", "grow_1.jsonl"));
}

async function writeJson(path: string, value: unknown): Promise<string> {
  await Deno.writeTextFile(path, JSON.stringify(value));
  return path;
}

/** A worker on `url` (given in REST_QUEUE_URL when `viaEnv`, the way to keep a password private). */
function worker(
  url: string,
  dir: string,
  name: string,
  more: string[] = [],
  viaEnv = false,
): Promise<Task> {
  return start("worker", [
    ...(viaEnv ? [] : ["--queue", url]),
    "--backend",
    "cpu",
    "--cache",
    join(dir, `cache-${name}`),
    "--lock-seconds",
    "1",
    "--stalled-seconds",
    "1",
    ...more,
  ], viaEnv ? { REST_QUEUE_URL: url } : {});
}

async function shardFiles(dir: string): Promise<number> {
  let n = 0;
  try {
    for await (const e of Deno.readDir(join(dir, "runs", "tiny", "rest", "grow_1.shards"))) {
      if (e.name.endsWith(".jsonl")) n++;
    }
  } catch { /* not yet */ }
  return n;
}

async function until(check: () => Promise<boolean>, seconds: number, what: string) {
  const deadline = performance.now() + seconds * 1000;
  while (!await check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((wake) => setTimeout(wake, 100));
  }
}

/** Runs `body` with a Redis server and a temporary folder, stopping every task it started. */
async function withQueue(
  name: string,
  body: (redis: TestRedis, dir: string, tasks: Task[]) => Promise<void>,
  options: { password?: string } = {},
): Promise<void> {
  if (await skipWithoutRedis(name)) return;
  const redis = await startRedis(options);
  const dir = await Deno.makeTempDir({ prefix: "queue-test-" });
  const tasks: Task[] = [];
  try {
    await body(redis, dir, tasks);
  } finally {
    for (const task of tasks) await finish(task);
    await redis.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a worker SIGKILLed mid-shard has its shard retried by another; the Grow file equals local's", async () => {
  const password = "s3cret-pw";
  await withQueue("worker kill", async (redis, dir, tasks) => {
    const url = `redis://default:${password}@127.0.0.1:${redis.port}/0`;
    const file = await writeJson(join(dir, "m.json"), manifest(queue(url)));
    const first = await worker(url, dir, "a", [], true);
    tasks.push(first);
    const [, pid] = await first.err.waitFor(/:(\d+) takes Grow shards/);
    const exp = await start("exp", [file, "--out", join(dir, "runs")]);
    tasks.push(exp);
    const [, killed] = await first.err.waitFor(/shard (\d+) of \w+: started/);
    Deno.kill(Number(pid), "SIGKILL"); // the worker process itself, mid-shard
    const second = await worker(url, dir, "b", [], true);
    tasks.push(second);
    assert.equal(await ended(exp), 0, exp.err.text.slice(-3000));
    // The killed worker's shard was computed again, by the worker that joined.
    assert.match(second.err.text, new RegExp(`shard ${killed} of \\w+: 16 rows`));
    const queued = await Deno.readFile(join(dir, "runs", "tiny", "rest", "grow_1.jsonl"));
    assert.deepEqual(queued, await localGrowFile(dir));
    // The password is in no output; the URL shows redacted.
    await finish(second, "SIGTERM");
    for (const task of tasks) await finish(task);
    for (const task of tasks) {
      assert.ok(!(task.out.text + task.err.text).includes(password), "password printed");
    }
    assert.match(exp.err.text, /redis:\/\/\*\*\*@127\.0\.0\.1:\d+\/0/);
  }, { password });
});

Deno.test("a coordinator SIGKILLed and resumed keeps every finished shard", async () => {
  await withQueue("coordinator kill", async (redis, dir, tasks) => {
    const file = await writeJson(join(dir, "m.json"), manifest(queue(redis.url)));
    const leaving = await worker(redis.url, dir, "a", ["--max-shards", "3"]);
    tasks.push(leaving);
    const exp = await start("exp", [file, "--out", join(dir, "runs")]);
    tasks.push(exp);
    assert.equal(await ended(leaving), 0, leaving.err.text);
    await until(async () => await shardFiles(dir) >= 3, 60, "3 saved shards");
    await finish(exp);
    // The experiment's own process stops once its launcher is gone, releasing the lock.
    await until(
      () => Deno.stat(join(dir, "runs", "tiny", ".lock")).then(() => false, () => true),
      30,
      "the lock to be released",
    );
    const saved = await shardFiles(dir);
    const helper = await worker(redis.url, dir, "b");
    tasks.push(helper);
    const resumed = await start("exp", [file, "--out", join(dir, "runs"), "--resume"]);
    tasks.push(resumed);
    assert.equal(await ended(resumed), 0, resumed.err.text.slice(-3000));
    assert.match(
      resumed.err.text,
      new RegExp(`grow 1: kept ${saved} of 20 shards finished before`),
    );
    const queued = await Deno.readFile(join(dir, "runs", "tiny", "rest", "grow_1.jsonl"));
    assert.deepEqual(queued, await localGrowFile(dir));
  });
});

Deno.test("Redis restarted mid-run: lost shards are queued again; gone for good: a clear error", async () => {
  await withQueue("redis restart", async (redis, dir, tasks) => {
    const file = await writeJson(join(dir, "m.json"), manifest(queue(redis.url)));
    const leaving = await worker(redis.url, dir, "a", ["--max-shards", "2"]);
    tasks.push(leaving);
    const exp = await start("exp", [file, "--out", join(dir, "runs")]);
    tasks.push(exp);
    assert.equal(await ended(leaving), 0, leaving.err.text);
    await until(async () => await shardFiles(dir) >= 2, 60, "2 saved shards");
    await redis.stop();
    await redis.start(); // empty: the queued jobs and the artefacts are gone
    const helper = await worker(redis.url, dir, "b");
    tasks.push(helper);
    assert.equal(await ended(exp), 0, exp.err.text.slice(-3000));
    assert.match(exp.err.text, /queued shards are gone from Redis \(was it restarted\?\)/);
    const queued = await Deno.readFile(join(dir, "runs", "tiny", "rest", "grow_1.jsonl"));
    assert.deepEqual(queued, await localGrowFile(dir));
    await finish(helper);

    // Redis gone for good: the run stops with an error, keeping its shards, writing no set.
    const other = await writeJson(
      join(dir, "m2.json"),
      { ...manifest(queue(redis.url, { unreachableSeconds: 2 })), experiment: "gone" },
    );
    const once = await worker(redis.url, dir, "c", ["--max-shards", "1"]);
    tasks.push(once);
    const doomed = await start("exp", [other, "--out", join(dir, "runs")]);
    tasks.push(doomed);
    assert.equal(await ended(once), 0, once.err.text);
    await redis.stop();
    assert.equal(await ended(doomed), 2, doomed.err.text.slice(-3000));
    assert.match(
      doomed.err.text,
      /Redis has been unreachable for 2 s .*finished shards are kept in the run folder.*--resume/,
    );
    await assert.rejects(Deno.stat(join(dir, "runs", "gone", "rest", "grow_1.jsonl")));
  });
});

/** {@link manifest} with a tiny `learned` reward inside `guarded` (which keeps counters). */
function learnedManifest(executor?: Record<string, unknown>): Record<string, unknown> {
  const learned = {
    name: "learned",
    config: {
      model: { dModel: 16, heads: 2, ffn: 32, layers: 1, dropout: 0 },
      training: { steps: 8, batchSize: 32, warmupSteps: 2 },
      dataset: { sources: 30, temperatures: [1], corruptionsPerSource: 2 },
      heldOut: 0,
      report: { sources: 0 },
    },
  };
  return { ...manifest(executor), reward: { name: "guarded", config: { reward: learned } } };
}

/** The Grow file and the `grow/reward_*` counters of a finished run folder. */
async function grown(runDir: string): Promise<{ file: Uint8Array; counters: string }> {
  const records = (await Deno.readTextFile(join(runDir, "metrics.jsonl"))).trim().split("\n")
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  const counters = records.flatMap((r) =>
    Object.entries(r).filter(([key]) => key.startsWith("grow/reward_"))
  );
  return {
    file: await Deno.readFile(join(runDir, "grow_1.jsonl")),
    counters: JSON.stringify(counters),
  };
}

Deno.test("a learned reward is restored by workers from its prepared files: Grow file and counters equal local's", async () => {
  await withQueue("learned reward", async (redis, dir, tasks) => {
    const local = join(dir, "local");
    await runTiny(learnedManifest(), local);
    const expected = await grown(join(local, "tiny", "rest"));
    assert.match(expected.counters, /grow\/reward_guard_scored/);

    const file = await writeJson(join(dir, "m.json"), learnedManifest(queue(redis.url)));
    tasks.push(await worker(redis.url, dir, "a"));
    tasks.push(await worker(redis.url, dir, "b"));
    const exp = await start("exp", [file, "--out", join(dir, "runs")]);
    tasks.push(exp);
    assert.equal(await ended(exp), 0, exp.err.text.slice(-3000));
    const queued = await grown(join(dir, "runs", "tiny", "rest"));
    assert.deepEqual(queued.file, expected.file);
    assert.equal(queued.counters, expected.counters);
    // The workers loaded the reward the experiment trained; they trained nothing.
    const workers = tasks[0].err.text + tasks[1].err.text;
    assert.match(workers, /reward: learned: reloaded .*qe_model\.json/);
    assert.doesNotMatch(workers, /trained in/);
  });
});

/** The final evaluation's metrics (`eval/*`, `bon/*`) and test translations of a run folder. */
async function evaluated(runDir: string): Promise<{ metrics: string; outputs: string }> {
  const records = (await Deno.readTextFile(join(runDir, "metrics.jsonl"))).trim().split("\n")
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  const metrics = records.flatMap((r) =>
    Object.entries(r).filter(([key]) => /^(eval|bon)\//.test(key))
  );
  return {
    metrics: JSON.stringify(metrics),
    outputs: await Deno.readTextFile(join(runDir, "test_outputs.tsv")),
  };
}

Deno.test("evaluation decoding on the queue with 2 workers equals local's", async () => {
  await withQueue("evaluation", async (redis, dir, tasks) => {
    const evaluation = {
      maxLen: 16,
      validSize: 10,
      testSize: 9,
      bestOfN: [1, 2, 4],
      bestOfNSize: 6,
      shardSources: 3,
    };
    const bc = (executor?: Record<string, unknown>) =>
      tinyManifest({
        executor,
        evaluation,
        data: { name: "synthetic", config: { pairs: 200, validSize: 0.15 } },
        runs: [{ name: "bc", algorithm: "bc" }],
      });
    const local = join(dir, "local");
    await runTiny(bc(), local);
    const expected = await evaluated(join(local, "tiny", "bc"));
    assert.match(expected.metrics, /bon\/valid_reward@4/);

    const file = await writeJson(join(dir, "m.json"), bc(queue(redis.url)));
    tasks.push(await worker(redis.url, dir, "a"));
    tasks.push(await worker(redis.url, dir, "b"));
    const exp = await start("exp", [file, "--out", join(dir, "runs")]);
    tasks.push(exp);
    assert.equal(await ended(exp), 0, exp.err.text.slice(-3000));
    // Validation (greedy, sampled) and test in shards of 3, Best-of-N's 6 sources in 2.
    const [, queued] = exp.err.text.match(
      /evaluation on redis:\/\/127\.0\.0\.1:\d+\/0: (\d+) shards/,
    )!;
    assert.ok(Number(queued) >= 8, `${queued} evaluation shards`);
    assert.deepEqual(await evaluated(join(dir, "runs", "tiny", "bc")), expected);
    const computed = (tasks[0].err.text + tasks[1].err.text).match(/: \d+ rows in /g) ?? [];
    assert.ok(computed.length >= Number(queued), `${computed.length} shards computed by workers`);
  });
});

Deno.test("a folder travels by content hash; a missing file is named", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const source = join(dir, "prepared");
    await Deno.mkdir(join(source, "inner"), { recursive: true });
    await Deno.writeTextFile(join(source, "inner", "model.bin"), "weights");
    await Deno.writeTextFile(join(source, "rules.json"), "{}");
    await Deno.writeTextFile(join(source, "rules.json.tmp-1-2"), "half-written");
    const place = { kind: "folder" as const, path: join(dir, "shared") };
    const listing = await putFolder(null as never, place, source);
    assert.deepEqual(Object.keys(listing), ["inner/model.bin", "rules.json"]);
    const copy = await getFolder(null as never, place, listing, join(dir, "cache"));
    assert.equal(await Deno.readTextFile(join(copy, "inner", "model.bin")), "weights");
    assert.equal(await getFolder(null as never, place, listing, join(dir, "cache")), copy);
    await Deno.remove(join(dir, "shared", listing["rules.json"]));
    await assert.rejects(
      () => getFolder(null as never, place, listing, join(dir, "other-cache")),
      /^DataError: rules\.json: artefact [0-9a-f]{16} is not in /,
    );
    await assert.rejects(
      () => getFolder(null as never, place, { "../x": listing["rules.json"] }, join(dir, "c")),
      /unsafe path/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a worker may reach the network only at the queue's host and port", async () => {
  const args = {
    url: "rediss://worker:pw@queue.example:6390/2",
    read: [],
    backend: "cpu",
    options: {
      name: "rest-grow",
      cache: "/tmp/cache",
      lockSeconds: 60,
      stalledSeconds: 30,
      threads: 0,
      maxShards: 0,
    },
  };
  const flags = permissionFlags(workerPlan(args, { denoDir: "/deno" }));
  assert.deepEqual(flags.filter((f) => f.startsWith("--allow-net")), [
    "--allow-net=queue.example:6390",
  ]);
  assert.deepEqual(flags.filter((f) => f.startsWith("--allow-write")), [
    "--allow-write=/tmp/cache",
  ]);
  assert.ok(!flags.some((f) => /^--allow-(run|ffi|import)/.test(f)), flags.join(" "));
  // And Deno enforces it: a process with those flags cannot connect anywhere else.
  const dir = await Deno.makeTempDir();
  try {
    const probe = join(dir, "probe.ts");
    await Deno.writeTextFile(
      probe,
      `try { await Deno.connect({ hostname: "127.0.0.1", port: 9 }); console.log("connected"); }
       catch (e) { console.log(e instanceof Deno.errors.NotCapable ? "denied" : "refused"); }`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", `--allow-read=${dir}`, "--allow-net=queue.example:6390", probe],
    }).output();
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "denied");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("queue URLs: users and passwords are redacted everywhere; bad URLs are named", () => {
  const address = parseQueueUrl("redis://alice:p%40ss@10.0.0.5:6379/3", "url");
  assert.equal(address.redacted, "redis://***@10.0.0.5:6379/3");
  assert.equal(address.db, 3);
  assert.equal(redact("auth failed for alice with p@ss", address), "auth failed for *** with ***");
  assert.equal(parseQueueUrl("rediss://h", "url").tls, true);
  assert.throws(
    () => parseQueueUrl("http://bob:hunter2@h:1/0", "url"),
    (e: Error) => /must start with redis:\/\//.test(e.message) && !e.message.includes("hunter2"),
  );
  assert.throws(() => parseQueueUrl("redis://h:1/x", "url"), /database number/);
});
