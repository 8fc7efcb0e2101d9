/**
 * Crash and resume, for real: an experiment subprocess is killed with SIGKILL at several
 * points (during BC, Grow, Improve, PPO, at random moments), restarted with `--resume`
 * (possibly killed again), and must end with the same metrics and the same table as an
 * uninterrupted run of the same manifest and seed.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { ROOT_DIR, runTask, taskArgs } from "./_cli.ts";
import { tinyManifest } from "./_experiment.ts";
import { Rng } from "../core/random.ts";

const MANIFEST = tinyManifest({
  experiment: "crash",
  seed: 5,
  backend: "auto",
  data: { name: "synthetic", config: { pairs: 300 } },
  bc: { steps: 60, batchSize: 16, evalEvery: 20, evalSize: 10, checkpointSeconds: 0 },
  evaluation: { maxLen: 16, validSize: 10, testSize: 10, bestOfN: [1, 2], bestOfNSize: 5 },
  runs: [
    { name: "bc", algorithm: "bc" },
    {
      name: "rest",
      algorithm: {
        name: "rest",
        config: {
          growSteps: 2,
          improveSteps: 2,
          grow: { samplesPerSource: 2, sources: 40 },
          improve: { steps: 10, batchSize: 16, evalEvery: 5, evalSize: 10 },
        },
      },
      loss: "bvmpo",
      threshold: "linear",
    },
    {
      name: "ppo",
      algorithm: {
        name: "ppo",
        config: { samples: 96, sources: 40, rolloutSize: 16, minibatchSize: 8, epochs: 2 },
      },
    },
  ],
});

/** Keys that measure time or memory, which differ between any two runs. */
const VOLATILE = /(^time$|seconds|tokens_per_s|^sys\/)/;

async function stableMetrics(dir: string): Promise<Record<string, unknown[]>> {
  const out: Record<string, unknown[]> = {};
  for (const run of ["shared/bc", "bc", "rest", "ppo"]) {
    const text = await Deno.readTextFile(join(dir, run, "metrics.jsonl"));
    out[run] = text.trim().split("\n").map((line) =>
      Object.fromEntries(Object.entries(JSON.parse(line)).filter(([k]) => !VOLATILE.test(k)))
    );
  }
  return out;
}

async function stableTable(dir: string): Promise<unknown> {
  const table = JSON.parse(await Deno.readTextFile(join(dir, "table1.json")));
  for (const row of table.rows) delete row.values.wall_time_s;
  return table.rows;
}

/** Starts `exp`, kills it with SIGKILL once stderr matches `when`; returns whether it was killed. */
async function runUntil(args: string[], when: RegExp, extraDelayMs: number): Promise<boolean> {
  const base = await taskArgs("exp");
  const resolved = base.map((a) => /^cli\/.*\.ts$/.test(a) ? `${ROOT_DIR}/${a}` : a);
  const child = new Deno.Command(Deno.execPath(), {
    args: [...resolved, ...args],
    cwd: ROOT_DIR,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const decoder = new TextDecoder();
  let seen = "";
  let killed = false;
  for await (const chunk of child.stderr) {
    seen += decoder.decode(chunk);
    if (!killed && when.test(seen)) {
      if (extraDelayMs > 0) await new Promise((r) => setTimeout(r, extraDelayMs));
      try {
        child.kill("SIGKILL");
        killed = true;
      } catch {
        // Already exited.
      }
    }
  }
  const status = await child.status;
  return killed && status.signal === "SIGKILL";
}

Deno.test("SIGKILL at any point, then --resume, ends with the uninterrupted run's results", async () => {
  const dir = await Deno.makeTempDir({ prefix: "crash_" });
  try {
    const file = join(dir, "crash.json");
    await Deno.writeTextFile(file, JSON.stringify(MANIFEST));
    const reference = await runTask("exp", [file, "--out", join(dir, "ref")]);
    assert.equal(reference.code, 0, reference.stderr);
    const expected = await stableMetrics(join(dir, "ref", "crash"));
    const expectedTable = await stableTable(join(dir, "ref", "crash"));

    const rng = new Rng(11);
    const points: [string, RegExp][] = [
      ["during BC", /bc: .*steps/],
      ["after a Grow step", /rest: grow 1: \d+ samples \+ \d+ references/],
      ["during an Improve step", /rest: improve 1\.2/],
      ["during the second Grow step", /rest: grow 2/],
      ["during PPO", /run ppo: starting/],
      ["while reporting", /ppo: train\/distinct_samples/],
    ];
    for (const [label, when] of points) {
      const out = join(dir, `out_${points.findIndex((p) => p[0] === label)}`);
      const args = [file, "--out", out];
      const reporting = label.includes("reporting");
      const killed = await runUntil(args, when, reporting ? 0 : Math.floor(rng.next() * 300));
      // The report takes milliseconds: the process may finish before the signal lands.
      if (!reporting) {
        assert.ok(killed, `${label}: the run was killed`);
        // The kill really interrupted the experiment (its last run did not complete).
        const ppoSummary = join(out, "crash", "ppo", "summary.json");
        assert.equal(await Deno.stat(ppoSummary).then(() => true, () => false), false, label);
      }
      // A second kill shortly after the first resume, at a random moment.
      if (killed) await runUntil([...args, "--resume"], /./, Math.floor(rng.next() * 1500));
      const resumed = await runTask("exp", [...args, "--resume"]);
      assert.equal(resumed.code, 0, `${label}: ${resumed.stderr}`);
      assert.deepEqual(await stableMetrics(join(out, "crash")), expected, label);
      assert.deepEqual(await stableTable(join(out, "crash")), expectedTable, label);
      const leftovers = [...Deno.readDirSync(join(out, "crash"))].map((e) => e.name)
        .filter((n) => n.includes(".tmp-") || n === ".lock");
      assert.deepEqual(leftovers, [], `${label}: no temporary files or lock left`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a second process cannot write a folder that a live process holds", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lock_" });
  try {
    const experiment = join(dir, "out", "crash");
    await Deno.mkdir(experiment, { recursive: true });
    // A live process (this test) holds the lock.
    const { acquireLock } = await import("../core/run.ts");
    const release = await acquireLock(experiment);
    const file = join(dir, "crash.json");
    await Deno.writeTextFile(file, JSON.stringify(MANIFEST));
    const r = await runTask("exp", [file, "--out", join(dir, "out"), "--resume"]);
    await release();
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`being written by process ${Deno.pid}`));
    // A lock file left by a killed process (no lock held) is taken over.
    await Deno.writeTextFile(
      join(experiment, ".lock"),
      JSON.stringify({ pid: 2 ** 22 + 7, started: "then" }),
    );
    const dry = await runTask("exp", [file, "--out", join(dir, "out"), "--smoke", "--resume"]);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stderr, /taking over/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("killing what started the launcher (e.g. deno task) stops the experiment too", async () => {
  const dir = await Deno.makeTempDir({ prefix: "orphan_" });
  try {
    const file = join(dir, "crash.json");
    await Deno.writeTextFile(file, JSON.stringify(MANIFEST));
    const base = await taskArgs("exp");
    const launcher = [
      Deno.execPath(),
      ...base.map((a) => /^cli\/.*\.ts$/.test(a) ? `${ROOT_DIR}/${a}` : a),
    ];
    const out = join(dir, "out");
    // A shell stands in for `deno task`: it starts the launcher and waits for it.
    const quoted = [...launcher, file, "--out", out].map((a) => `'${a}'`).join(" ");
    const shell = new Deno.Command("sh", {
      args: ["-c", `${quoted} 2> '${join(dir, "log")}'; true`],
      cwd: ROOT_DIR,
      stdout: "null",
      stderr: "null",
    }).spawn();
    // Wait until the experiment is under way, then kill the shell only.
    for (let i = 0; i < 600; i++) {
      const log = await Deno.readTextFile(join(dir, "log")).catch(() => "");
      if (/bc: .*steps/.test(log)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    shell.kill("SIGKILL");
    await shell.status;
    // Within a few seconds nothing writes the folder any more: --resume takes the lock.
    await new Promise((r) => setTimeout(r, 3000));
    const resumed = await runTask("exp", [file, "--out", out, "--resume"]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.doesNotMatch(resumed.stderr, /being written by/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
