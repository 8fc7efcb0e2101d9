/**
 * Damaged state files under `--resume`: one tiny experiment (ReST and PPO) is run once, then
 * for each state file the framework reads back, a copy of its folder has that file truncated,
 * corrupted or replaced (a FIFO, a folder), and `exp --resume` must exit 2 with a message that
 * names the file, never use it silently, crash (exit 1) or hang.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasStackTrace, runTask } from "../_cli.ts";
import { tinyManifest } from "../_experiment.ts";
import { loadCheckpoint, saveCheckpoint } from "../../core/checkpoint.ts";
import { UserError } from "../../core/errors.ts";
import { readGrowFile, writeGrowFile } from "../../core/grow_file.ts";
import { acquireLock } from "../../core/run.ts";
import type { GrowRow } from "../../core/types.ts";

const MANIFEST = tinyManifest({
  experiment: "rs",
  seed: 3,
  data: { name: "synthetic", config: { pairs: 120 } },
  bc: { steps: 8, batchSize: 16, evalEvery: 4, evalSize: 4, checkpointSeconds: 0 },
  evaluation: { maxLen: 12, validSize: 4, testSize: 4, bestOfN: [1], bestOfNSize: 2 },
  runs: [
    {
      name: "rest",
      algorithm: {
        name: "rest",
        config: {
          growSteps: 1,
          improveSteps: 1,
          grow: { samplesPerSource: 2, sources: 12 },
          improve: { steps: 3, batchSize: 8, evalEvery: 0, evalSize: 4 },
        },
      },
      loss: "bc",
      threshold: "linear",
    },
    {
      name: "ppo",
      algorithm: {
        name: "ppo",
        config: { samples: 16, sources: 8, rolloutSize: 8, minibatchSize: 8, epochs: 1 },
      },
    },
  ],
});

async function lines(path: string): Promise<string[]> {
  return (await Deno.readTextFile(path)).split("\n").filter((l) => l !== "");
}

async function writeLines(path: string, list: string[]): Promise<void> {
  await Deno.writeTextFile(path, list.join("\n") + "\n");
}

async function mkfifo(path: string): Promise<void> {
  await Deno.remove(path, { recursive: true }).catch(() => {});
  const status = await new Deno.Command("mkfifo", { args: [path] }).output();
  assert.ok(status.success, `mkfifo ${path}`);
}

async function editJson(path: string, edit: (value: Record<string, unknown>) => void) {
  const value = JSON.parse(await Deno.readTextFile(path));
  edit(value);
  await Deno.writeTextFile(path, JSON.stringify(value));
}

function only(dir: string, pattern: RegExp): string {
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => pattern.test(n));
  assert.equal(names.length, 1, `${pattern} in ${dir}: ${names}`);
  return join(dir, names[0]);
}

/** One damage: what to do to the experiment folder `exp`, and what the message must say. */
interface Case {
  label: string;
  /** Runs whose summary.json is removed first, so that `--resume` continues them. */
  reopen?: string[];
  damage(exp: string): Promise<void>;
  message: RegExp;
}

const CASES: Case[] = [
  {
    label: "a Grow file cut at a line boundary",
    reopen: ["rest"],
    damage: async (exp) => {
      const path = join(exp, "rest", "grow_1.jsonl");
      const list = await lines(path);
      await writeLines(path, list.slice(0, list.length - 5));
    },
    message: /grow_1\.jsonl has \d+ rows .*says \d+ rows.*truncated or changed/,
  },
  {
    label: "a Grow file with a changed row",
    reopen: ["rest"],
    damage: async (exp) => {
      const path = join(exp, "rest", "grow_1.jsonl");
      // Two rows swapped: the same rows and bytes, other contents in their places.
      const list = await lines(path);
      const other = list.findIndex((l) => l !== list[0]);
      [list[0], list[other]] = [list[other], list[0]];
      await writeLines(path, list);
    },
    message: /grow_1\.jsonl: .*SHA-256 .*a row was changed/,
  },
  {
    label: "a Grow file with an extra row",
    reopen: ["rest"],
    damage: async (exp) => {
      const path = join(exp, "rest", "grow_1.jsonl");
      const list = await lines(path);
      await writeLines(path, [...list, list[0]]);
    },
    message: /grow_1\.jsonl has \d+ rows/,
  },
  {
    label: "a missing Grow file",
    reopen: ["rest"],
    damage: (exp) => Deno.remove(join(exp, "rest", "grow_1.jsonl")),
    message: /grow_1\.jsonl: Grow file missing; its record says \d+ rows/,
  },
  {
    label: "a shared Grow set cut at a line boundary",
    reopen: ["rest"],
    damage: async (exp) => {
      for (const name of ["grow_1.jsonl", "grow_1.record.json", "rest_state.json"]) {
        await Deno.remove(join(exp, "rest", name));
      }
      const path = only(join(exp, "shared", "grow"), /\.jsonl$/);
      const list = await lines(path);
      await writeLines(path, list.slice(0, 3));
    },
    message: /grow-[0-9a-f]+\.jsonl has 3 rows/,
  },
  {
    label: "a shared Improve step whose weights file is cut short",
    reopen: ["rest"],
    damage: async (exp) => {
      // Without its own state the run redoes Improve 1.1, which another run (this one, the
      // first time) already stored in shared/improve/.
      for (const name of [...Deno.readDirSync(join(exp, "rest"))].map((e) => e.name)) {
        if (name.startsWith("rest_state")) await Deno.remove(join(exp, "rest", name));
      }
      const [key] = [...Deno.readDirSync(join(exp, "shared", "improve"))].map((e) => e.name);
      await Deno.truncate(only(join(exp, "shared", "improve", key), /^step-.*\.bin$/), 100);
    },
    message: /step-[0-9a-f]+\.bin: 100 bytes, expected \d+/,
  },
  {
    label: "a truncated tokenizer.json",
    damage: async (exp) => {
      const path = join(exp, "tokenizer.json");
      const text = await Deno.readTextFile(path);
      await Deno.writeTextFile(path, text.slice(0, text.length / 2));
    },
    message: /tokenizer\.json: not valid JSON/,
  },
  {
    label: "a tokenizer.json of the wrong shape",
    damage: (exp) => Deno.writeTextFile(join(exp, "tokenizer.json"), '{"format": "bpe"}'),
    message: /tokenizer\.json: not a valid tokenizer state/,
  },
  {
    label: "a tokenizer.json replaced by a FIFO",
    damage: (exp) => mkfifo(join(exp, "tokenizer.json")),
    message: /tokenizer\.json: is a FIFO/,
  },
  {
    label: "a corrupt summary.json",
    damage: (exp) => Deno.writeTextFile(join(exp, "rest", "summary.json"), '{"metrics": {'),
    message: /rest\/summary\.json: not valid JSON/,
  },
  {
    label: "a summary.json of the wrong shape",
    damage: (exp) => Deno.writeTextFile(join(exp, "ppo", "summary.json"), '{"metrics": 5}'),
    message: /ppo\/summary\.json: expected an object `metrics`/,
  },
  {
    label: "a summary.json replaced by a folder",
    damage: async (exp) => {
      await Deno.remove(join(exp, "ppo", "summary.json"));
      await Deno.mkdir(join(exp, "ppo", "summary.json"));
    },
    message: /ppo\/summary\.json: is a folder/,
  },
  {
    label: "a truncated manifest.resolved.json",
    damage: async (exp) => {
      const path = join(exp, "rest", "manifest.resolved.json");
      const text = await Deno.readTextFile(path);
      await Deno.writeTextFile(path, text.slice(0, 40));
    },
    message: /rest\/manifest\.resolved\.json: not valid JSON/,
  },
  {
    label: "a ReST state with counters of the wrong type",
    reopen: ["rest"],
    damage: (exp) =>
      editJson(join(exp, "rest", "rest_state.json"), (index) => {
        (index.meta as { done: { index: unknown } }).done.index = "1";
      }),
    message: /rest_state\.json: meta\.done\.index is "1", expected an integer/,
  },
  {
    label: "a ReST state whose weights file is cut short",
    reopen: ["rest"],
    damage: async (exp) => {
      const path = only(join(exp, "rest"), /^rest_state-.*\.bin$/);
      await Deno.truncate(path, 100);
    },
    message: /rest_state-[0-9a-f]+\.bin: 100 bytes, expected \d+/,
  },
  {
    label: "a ReST state index with a weight of the wrong shape",
    reopen: ["rest"],
    damage: (exp) =>
      editJson(join(exp, "rest", "rest_state.json"), (index) => {
        const weights = index.weights as { shape: number[] }[];
        weights[0].shape = [...weights[0].shape].reverse().concat([1, 2]);
      }),
    message: /rest_state\.json: /,
  },
  {
    label: "a PPO state with a missing counter",
    reopen: ["ppo"],
    damage: (exp) =>
      editJson(join(exp, "ppo", "ppo_state.json"), (index) => {
        delete (index.meta as { progress: Record<string, unknown> }).progress.klCoef;
      }),
    message: /ppo_state\.json: meta\.progress\.klCoef is missing/,
  },
  {
    label: "a metrics.jsonl cut at a line boundary",
    reopen: ["rest"],
    damage: async (exp) => {
      const path = join(exp, "rest", "metrics.jsonl");
      await writeLines(path, (await lines(path)).slice(0, 1));
    },
    message: /rest\/metrics\.jsonl: \d+ bytes, but the run's resume state recorded \d+/,
  },
  {
    label: "a metrics.jsonl with a corrupt line",
    reopen: ["ppo"],
    damage: async (exp) => {
      const path = join(exp, "ppo", "metrics.jsonl");
      const list = await lines(path);
      list[0] = "x".repeat(list[0].length);
      await writeLines(path, list);
    },
    message:
      /ppo\/metrics\.jsonl:1: not a JSON line \(truncated or corrupt metrics log\); restore it/,
  },
  {
    label: "a metrics.jsonl replaced by a FIFO",
    reopen: ["rest"],
    damage: (exp) => mkfifo(join(exp, "rest", "metrics.jsonl")),
    message: /rest\/metrics\.jsonl: is a FIFO/,
  },
  {
    label: "a BC policy checkpoint of the wrong shape",
    reopen: ["rest"],
    damage: (exp) =>
      editJson(join(exp, "shared", "bc", "policy.json"), (index) => {
        (index.weights as unknown[]).pop();
      }),
    message: /shared\/bc\/policy\.json: its weights do not fit/,
  },
];

Deno.test("damaged state files under --resume: exit 2 naming the file", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "resume_state_" });
  try {
    const manifest = join(dir, "rs.json");
    await Deno.writeTextFile(manifest, JSON.stringify(MANIFEST));
    const first = await runTask("exp", [manifest, "--out", join(dir, "ref")]);
    assert.equal(first.code, 0, first.stderr);
    for (const [k, c] of CASES.entries()) {
      await t.step(c.label, async () => {
        const out = join(dir, `case_${k}`);
        await Deno.mkdir(out);
        const copy = await new Deno.Command("cp", {
          args: ["-a", join(dir, "ref", "rs"), out],
        }).output();
        assert.ok(copy.success);
        const exp = join(out, "rs");
        for (const run of c.reopen ?? []) await Deno.remove(join(exp, run, "summary.json"));
        await c.damage(exp);
        const r = await runTask("exp", [manifest, "--out", out, "--resume"]);
        assert.equal(r.code, 2, `${c.label}: exit ${r.code}\n${r.stderr}`);
        assert.match(r.stderr, c.message, c.label);
        assert.ok(!hasStackTrace(r.stderr), r.stderr);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function row(i: number): GrowRow {
  return {
    source: `s${i}`,
    hypothesis: `h${i}`,
    reference: `r${i}`,
    reward: 0.5,
    tokens: [4, 2],
    logProbs: [-0.5, -0.1],
    origin: "sample",
  };
}

Deno.test("a Grow file is checked against its record; a bad record is named", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "grow_2.jsonl");
    const record = await writeGrowFile(path, [row(1), row(2), row(3)]);
    assert.equal(record.rows, 3);
    assert.equal(record.bytes, (await Deno.stat(path)).size);
    assert.equal((await readGrowFile(path)).length, 3);
    const text = await Deno.readTextFile(path);
    // A blank line more: same rows, other bytes.
    await Deno.writeTextFile(path, text + "\n");
    await assert.rejects(() => readGrowFile(path), /has 3 rows \(\d+ bytes\).*says 3 rows/);
    await Deno.writeTextFile(path, text);
    await Deno.writeTextFile(join(dir, "grow_2.record.json"), '{"format": "x"}');
    await assert.rejects(() => readGrowFile(path), /grow_2\.record\.json: not a valid Grow record/);
    await Deno.remove(join(dir, "grow_2.record.json"));
    await assert.rejects(() => readGrowFile(path), /grow_2\.record\.json: missing/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a checkpoint index of the wrong shape is a user error naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const state = {
      config: {},
      weights: [{ name: "w", shape: [2, 2], offset: 0 }],
      data: new Float32Array([1, 2, 3, 4]),
    };
    await saveCheckpoint(dir, "c", state, { step: 1 });
    assert.deepEqual((await loadCheckpoint(dir, "c")).meta, { step: 1 });
    const path = join(dir, "c.json");
    const good = JSON.parse(await Deno.readTextFile(path));
    const bad: [string, unknown, RegExp][] = [
      ["weights", [{ name: "w", shape: [3, 2], offset: 0 }], /weights\[0\] \(w\) lies outside/],
      ["weights", [{ name: 5 }], /weights\[0\] must be/],
      ["bytes", 15, /bytes must be a whole number/],
      ["meta", [], /meta must be an object/],
      ["config", null, /config must be an object/],
    ];
    for (const [key, value, message] of bad) {
      await Deno.writeTextFile(path, JSON.stringify({ ...good, [key]: value }));
      await assert.rejects(() => loadCheckpoint(dir, "c"), (e: Error) => {
        assert.ok(e instanceof UserError, String(e));
        assert.match(e.message, /c\.json: /);
        assert.match(e.message, message);
        return true;
      });
    }
    await Deno.writeTextFile(path, "[1, 2");
    await assert.rejects(() => loadCheckpoint(dir, "c"), /c\.json: not valid JSON/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("taking an experiment's lock removes the temporary files a killed process left there", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A process killed between writing splits.json's temporary file and renaming it.
    await Deno.writeTextFile(join(dir, "splits.json.tmp-4242-39ad39fa"), "{");
    await Deno.writeTextFile(join(dir, "grow_1.jsonl.tmp-4242"), "");
    await Deno.writeTextFile(join(dir, "notes.tmp-draft"), "kept: not ours");
    const release = await acquireLock(dir);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, [".lock", "notes.tmp-draft"]);
    await release();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
