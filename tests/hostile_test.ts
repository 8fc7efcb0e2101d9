/**
 * Hostile and broken input, end to end: each case must give a clear message and exit code
 * 2 (a user error) with no stack trace, and must not lose files already written. Cases:
 * malformed JSON, wrong types, huge numbers, negative budgets, NaN in configs, empty
 * datasets, a corpus with no pair passing the length filter, non-UTF-8 catalogs, truncated
 * .mo files, a reward plugin returning NaN or values outside [0, 1], and a loss turning NaN
 * in the middle of training.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../core/checkpoint.ts";
import { checkScores } from "../core/evaluate.ts";
import { ManifestError, UserError } from "../core/errors.ts";
import { resolveManifest, resolvePluginRef } from "../core/manifest/mod.ts";
import type { PluginDefinition } from "../core/plugin.ts";
import { createRegistries } from "../core/registry.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { type CliResult, hasStackTrace, ROOT_DIR, runTask, spawnTask } from "./_cli.ts";
import { tinyManifest, withTempDir as withTempFolder } from "./_experiment.ts";

const MO_FIXTURE = join(ROOT_DIR, "tests/fixtures/data/gettext/mo/app.mo");

/** {@link withTempFolder} with folders named hostile_*. */
function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  return withTempFolder(fn, "hostile_");
}

/** A manifest that needs no model: data, the baselines algorithm and a reward. */
function baselinesManifest(data: unknown, extra: Record<string, unknown> = {}) {
  return {
    experiment: "hostile",
    seed: 1,
    backend: "cpu",
    data,
    tokenizer: { name: "bpe", config: { vocabSize: 300 } },
    reward: "chrf",
    runs: [{ name: "baselines", algorithm: "baselines" }],
    ...extra,
  };
}

/** A manifest with a tiny policy, for the cases that train. */
function tinyModelManifest(runs: unknown[], reward: unknown = "chrf") {
  const manifest = tinyManifest({
    experiment: "hostile",
    seed: 4,
    reward,
    bc: { steps: 4, evalEvery: 2 },
    evaluation: undefined,
    runs,
  });
  return manifest as typeof manifest & { model: { config: Record<string, unknown> } };
}

/** Runs `deno task exp` on a manifest (an object, or text as it is) written to `dir`. */
async function exp(dir: string, manifest: unknown, ...args: string[]): Promise<
  CliResult & {
    file: string;
  }
> {
  const file = join(dir, "m.json");
  await Deno.writeTextFile(
    file,
    typeof manifest === "string" ? manifest : JSON.stringify(manifest, null, 2),
  );
  const r = await runTask("exp", [file, "--out", join(dir, "runs"), ...args], { cwd: dir });
  return { ...r, file };
}

/** Exit 2, one `exp: error:` message matching `pattern`, no stack trace. */
function assertUserError(r: CliResult, pattern: RegExp): void {
  assert.equal(r.code, 2, `expected exit 2, got ${r.code}: ${r.stderr}`);
  assert.ok(!hasStackTrace(r.stderr), r.stderr);
  assert.doesNotMatch(r.stderr, /internal error/);
  const errorLines = r.stderr.split("\n").filter((l) => l.startsWith("exp: error: "));
  assert.equal(errorLines.length, 1, r.stderr);
  assert.match(r.stderr.slice(r.stderr.indexOf("exp: error: ")), pattern);
}

/** Problems of an in-process resolution, as `path: message` lines. */
async function problemsOf(raw: unknown): Promise<string[]> {
  try {
    await resolveManifest(raw, createRegistries(builtinPlugins), { file: "m.json" });
  } catch (error) {
    assert.ok(error instanceof ManifestError, `expected a ManifestError, got ${error}`);
    return error.problems.map((p) => `${p.path}: ${p.message}`);
  }
  return assert.fail("the manifest was accepted");
}

/** Relative path to SHA-256 of every file under `dir`. */
async function snapshot(dir: string, prefix = ""): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const entry of Deno.readDir(join(dir, prefix))) {
    const rel = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
    if (entry.isDirectory) {
      for (const [k, v] of await snapshot(dir, rel)) out.set(k, v);
    } else {
      const bytes = await Deno.readFile(join(dir, rel));
      const digest = await crypto.subtle.digest("SHA-256", bytes);
      out.set(rel, Array.from(new Uint8Array(digest), (b) => b.toString(16)).join(""));
    }
  }
  return out;
}

// --- manifests ---------------------------------------------------------------------------

Deno.test("hostile: malformed JSON exits 2 naming the line and column of the mistake", async () => {
  await withTempDir(async (dir) => {
    const valid = JSON.stringify(baselinesManifest({ name: "synthetic" }), null, 2);
    const cases: [string, RegExp][] = [
      [
        valid.slice(0, valid.indexOf('"backend"')),
        /unexpected end of the text; is the file truncated\?/,
      ],
      [valid.replace('"cpu"', '"cpu",\n  }'), /trailing comma before "}"/],
      [valid.replace('"seed": 1', '"seed": 1,'), /line 3, column 13/],
      [valid.replace('"seed": 1', '"seed": NaN'), /NaN and Infinity are not JSON numbers/],
      [valid.replace('"seed": 1', "'seed': 1"), /strings and keys must be in double quotes/],
      [`// my manifest\n${valid}`, /comments are not allowed in JSON \(line 1, column 1\)/],
      ["", /unexpected end of the text/],
      [valid + "\n}", /expected nothing after the end of the document/],
    ];
    for (const [text, pattern] of cases) {
      const r = await exp(dir, text, "--dry-run");
      assertUserError(r, /m\.json: 1 problem\n {2}\/: invalid JSON: .*\(line \d+, column \d+\)\n$/);
      assert.match(r.stderr, pattern);
      assert.equal(r.stdout, "");
    }
    // Bytes that are not UTF-8 are refused rather than read as U+FFFD.
    const file = join(dir, "latin1.json");
    const bytes = new TextEncoder().encode(valid.replace("hostile", "hostile\u0000"));
    bytes[bytes.indexOf(0)] = 0xe9;
    await Deno.writeFile(file, bytes);
    const latin = await runTask("exp", [file, "--dry-run"], { cwd: dir });
    assertUserError(
      latin,
      /latin1\.json: 1 problem\n {2}\/: not valid UTF-8 \(first bad byte on line 2\)/,
    );
    // A folder instead of a file.
    const folder = await runTask("exp", [dir, "--dry-run"], { cwd: dir });
    assertUserError(folder, /cannot read manifest/);
  });
});

Deno.test("hostile: wrong types are all reported at once with their paths", async () => {
  await withTempDir(async (dir) => {
    const manifest = {
      ...baselinesManifest(42),
      seed: "one",
      reward: ["chrf"],
      bc: { steps: "10" },
      runs: [{ name: "b", algorithm: { name: "baselines", config: "all" } }],
    };
    const r = await exp(dir, manifest, "--dry-run");
    assertUserError(r, /m\.json: 5 problems\n/);
    for (
      const line of [
        /\/bc\/steps: must be integer \(got "10"\)/,
        /\/data: must be string,object \(got 42\)/,
        /\/reward: must be string,object \(got \["chrf"\]\)/,
        /\/runs\/0\/algorithm\/config: must be an object \(got "all"\)/,
        /\/seed: must be integer \(got "one"\)/,
      ]
    ) assert.match(r.stderr, line);
    // A manifest that is not an object at all.
    assertUserError(await exp(dir, "[1, 2]", "--dry-run"), /\/: must be object/);
  });
});

Deno.test("hostile: huge numbers are rejected, never run as a hang or a silent overflow", async () => {
  await withTempDir(async (dir) => {
    const text = JSON.stringify(
      baselinesManifest({ name: "synthetic", config: { pairs: 1 } }),
      null,
      2,
    ).replace('"pairs": 1', '"pairs": 1e999').replace('"seed": 1', '"seed": 2147483648');
    const r = await exp(dir, text, "--dry-run");
    assertUserError(r, /m\.json: 2 problems/);
    assert.match(
      r.stderr,
      /\/data\/config\/pairs: must be integer \(got Infinity, beyond the range of a double\)/,
    );
    assert.match(r.stderr, /\/seed: must be <= 2147483647 \(got 2147483648\)/);
  });
  // An option with a schema maximum names it; one without is still bounded.
  assert.deepEqual(
    await problemsOf(baselinesManifest({ name: "synthetic", config: { pairs: 1e308 } })),
    ["/data/config/pairs: must be <= 10000000 (got 1e+308)"],
  );
  assert.deepEqual(
    await problemsOf(
      baselinesManifest({ name: "tsv", config: { paths: ["x.tsv"], maxPairs: 1e300 } }),
    ),
    [
      "/data/config/maxPairs: 1e+300 is out of range: numbers in a manifest must lie within " +
      "±9007199254740991 (2^53 - 1)",
    ],
  );
  assert.deepEqual(
    await problemsOf({ ...baselinesManifest({ name: "synthetic" }), bc: { steps: 1e20 } }),
    ["/bc/steps: must be <= 10000000 (got 100000000000000000000)"],
  );
});

Deno.test("hostile: negative budgets and sizes are rejected with their paths", async () => {
  await withTempDir(async (dir) => {
    const manifest = {
      ...tinyModelManifest([{
        name: "rest",
        algorithm: { name: "rest", config: { growSteps: -1, improveSteps: -2 } },
        loss: "bc",
        threshold: "fixed",
      }]),
      data: { name: "synthetic", config: { pairs: -5, validSize: -0.1 } },
      bc: { steps: -1, batchSize: 0, learningRate: -0.001 },
      evaluation: { maxLen: -5, bestOfN: [-1] },
    };
    const r = await exp(dir, manifest, "--dry-run");
    assertUserError(r, /m\.json: 9 problems\n/);
    for (
      const line of [
        "/bc/batchSize: must be >= 1 (got 0)",
        "/bc/learningRate: must be > 0 (got -0.001)",
        "/bc/steps: must be >= 0 (got -1)",
        "/data/config/pairs: must be >= 1 (got -5)",
        "/data/config/validSize: must be >= 0 (got -0.1)",
        "/evaluation/bestOfN/0: must be >= 1 (got -1)",
        "/evaluation/maxLen: must be >= 1 (got -5)",
        "/runs/0/algorithm/config/growSteps: must be >= 0 (got -1)",
        "/runs/0/algorithm/config/improveSteps: must be >= 0 (got -2)",
      ]
    ) assert.ok(r.stderr.includes(`  ${line}\n`), `${line}\n${r.stderr}`);
    const flag = await exp(dir, baselinesManifest({ name: "synthetic" }), "--seed=-1");
    assertUserError(flag, /--seed must be an integer between 0 and 2147483647 \(got "-1"\)/);
  });
});

Deno.test("hostile: NaN and Infinity in configs built in code name their path", async () => {
  // JSON text cannot hold NaN (see the malformed-JSON test), but a manifest built in code can.
  const problems = await problemsOf({
    ...baselinesManifest({ name: "synthetic", config: { validSize: NaN } }),
    bc: { learningRate: Infinity },
    reward: { name: "weighted", config: { components: [{ reward: "chrf", weight: NaN }] } },
  });
  assert.deepEqual(problems, [
    "/bc/learningRate: must be number (got Infinity, beyond the range of a double)",
    "/data/config/validSize: must be number (got NaN)",
    "/reward/config/components/0/weight: must be number (got NaN)",
  ]);
  // Anywhere in the envelope too.
  assert.deepEqual(
    await problemsOf({ ...baselinesManifest({ name: "synthetic" }), description: NaN }),
    ["/description: must be string (got NaN)"],
  );
});

Deno.test("hostile: deep nesting and huge strings give a short message, not a stack overflow", async () => {
  await withTempDir(async (dir) => {
    const valid = JSON.stringify(baselinesManifest({ name: "synthetic" }));
    // Through the command at a moderate depth (cli/exp.ts walks the raw manifest recursively
    // before the checked resolution runs; 5000 levels overflow it), in process far deeper.
    const nested = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;
    const r = await exp(dir, valid.replace('"seed":1', `"seed":${nested(500)}`), "--dry-run");
    assertUserError(
      r,
      /m\.json: 1 problem\n {2}\/seed\/0\/0\/.*: nested more than 64 levels deep\n$/,
    );
    assert.ok(r.stderr.length < 1000, `${r.stderr.length} characters of error`);
    const raw = JSON.parse(valid.replace('"seed":1', `"seed":${nested(200_000)}`));
    const problems = await problemsOf(raw);
    assert.equal(problems.length, 1);
    assert.match(problems[0], /^\/seed(\/0){63}: nested more than 64 levels deep$/);
    const name = "x".repeat(1_000_000) + "\n";
    const huge = await exp(
      dir,
      { ...baselinesManifest({ name: "synthetic" }), reward: name },
      "--dry-run",
    );
    assertUserError(huge, /\/reward: unknown reward plugin "x+\.\.\.\n$/);
    assert.ok(huge.stderr.length < 1000, `${huge.stderr.length} characters of error`);
  });
});

/** Runs `deno task exp <file> --dry-run`, killing it if it has not ended within `seconds`. */
async function dryRunWithin(dir: string, file: string, seconds: number, ...args: string[]) {
  const child = await spawnTask(
    "exp",
    [file, "--out", join(dir, "runs"), "--dry-run", ...args],
    { cwd: dir },
  );
  const timer = setTimeout(() => child.kill("SIGKILL"), seconds * 1000);
  const output = await child.output();
  clearTimeout(timer);
  const decoder = new TextDecoder();
  const r = {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
  assert.notEqual(output.signal, "SIGKILL", `still running after ${seconds}s: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /Maximum call stack/);
  return r;
}

Deno.test("hostile: 100,000 levels of nesting and 200,000 numbers exit 2 at once", async () => {
  await withTempDir(async (dir) => {
    const valid = JSON.stringify(baselinesManifest({ name: "synthetic" }));
    const depth = 100_000;
    const cases: [string, RegExp][] = [
      [
        valid.replace('"seed":1', `"seed":${"[".repeat(depth)}${"]".repeat(depth)}`),
        /\/seed(\/0){63}: nested more than 64 levels deep\n$/,
      ],
      [
        valid.replace('"seed":1', `"seed":${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`),
        /\/seed(\/a){63}: nested more than 64 levels deep\n$/,
      ],
      [
        valid.replace(
          '"seed":1',
          `"seed":1,"junk":[${Array.from({ length: 200_000 }, (_, i) => i)}]`,
        ),
        /\/junk\/\d+: the manifest holds more than 100000 values/,
      ],
    ];
    for (const [text, pattern] of cases) {
      const file = join(dir, "m.json");
      await Deno.writeTextFile(file, text);
      const r = await dryRunWithin(dir, file, 60);
      assertUserError(r, pattern);
      assert.ok(r.stderr.length < 2000, `${r.stderr.length} characters of error`);
    }
  });
});

Deno.test("hostile: a FIFO, a folder or an oversized file as the manifest exits 2 naming it", async () => {
  await withTempDir(async (dir) => {
    const fifo = join(dir, "fifo.json");
    assert.ok((await new Deno.Command("mkfifo", { args: [fifo] }).output()).success);
    const big = join(dir, "big.json");
    const handle = await Deno.open(big, { write: true, create: true });
    await handle.truncate(17 * 1024 * 1024); // sparse
    handle.close();
    const cases: [string, RegExp][] = [
      [
        fifo,
        /fifo\.json: [\s\S]*is a FIFO \(named pipe\), expected the manifest to be a regular file/,
      ],
      [dir, /is a folder, expected the manifest to be a regular file/],
      [big, /big\.json: [\s\S]*manifest is 17825792 bytes, more than the limit of 16777216/],
    ];
    for (const [file, pattern] of cases) {
      assertUserError(await dryRunWithin(dir, file, 60), pattern);
    }
  });
});

Deno.test("hostile: duplicate keys exit 2 naming the object's path and both lines", async () => {
  await withTempDir(async (dir) => {
    const text = JSON.stringify(baselinesManifest({ name: "synthetic" }), null, 2)
      .replace('"vocabSize": 300', '"vocabSize": 300,\n      "vocabSize": 8000');
    const r = await exp(dir, text, "--dry-run");
    assertUserError(
      r,
      /\/tokenizer\/config: duplicate key "vocabSize" on line 12 \(also on line 11\)/,
    );
  });
});

Deno.test("hostile: heads not dividing dModel is found by --dry-run, with or without --smoke", async () => {
  await withTempDir(async (dir) => {
    const manifest = tinyModelManifest([{ name: "bc", algorithm: "bc" }]);
    (manifest.model.config as Record<string, unknown>).heads = 3;
    for (const args of [["--dry-run"], ["--dry-run", "--smoke"]]) {
      const r = await exp(dir, manifest, ...args);
      assertUserError(r, /\/model\/config\/heads: must divide dModel \(16\)/);
    }
  });
});

Deno.test("hostile: a run named like a report file is refused before any training", async () => {
  await withTempDir(async (dir) => {
    const manifest = baselinesManifest({ name: "synthetic" });
    manifest.runs = [{ name: "table1.md", algorithm: "baselines" }];
    const r = await exp(dir, manifest, "--dry-run");
    assertUserError(r, /\/runs\/0\/name: "table1\.md" is reserved/);
    const full = await exp(dir, manifest);
    assertUserError(full, /\/runs\/0\/name: "table1\.md" is reserved/);
    await assert.rejects(Deno.stat(join(dir, "runs", "hostile", "tokenizer.json")));
  });
});

Deno.test("hostile: --out naming a file is a user error, not an internal one", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "occupied"), "not a folder");
    const file = join(dir, "m.json");
    await Deno.writeTextFile(file, JSON.stringify(baselinesManifest({ name: "synthetic" })));
    const r = await runTask("exp", [file, "--smoke", "--out", join(dir, "occupied")], { cwd: dir });
    assertUserError(r, /exp: error: file system: Not a directory .*occupied/);
    assert.equal(await Deno.readTextFile(join(dir, "occupied")), "not a folder");
  });
});

// --- data ----------------------------------------------------------------------------------

Deno.test("hostile: empty datasets exit 2 naming the file and what was read", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "empty.tsv"), "");
    await Deno.writeTextFile(join(dir, "blank.jsonl"), "\n\n  \n");
    await Deno.writeTextFile(
      join(dir, "header_only.po"),
      'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n',
    );
    await Deno.writeTextFile(join(dir, "empty.en"), "");
    await Deno.writeTextFile(join(dir, "empty.de"), "");
    const cases: [unknown, RegExp][] = [
      [
        { name: "tsv", config: { paths: ["empty.tsv"] } },
        /empty\.tsv: no pairs left after filtering: read 0 pairs/,
      ],
      [
        { name: "jsonl", config: { paths: ["blank.jsonl"] } },
        /blank\.jsonl: no pairs left after filtering: read 0 pairs/,
      ],
      [
        { name: "gettext", config: { paths: ["header_only.po"] } },
        /header_only\.po: no pairs left after filtering: read 0 pairs/,
      ],
      [
        { name: "moses", config: { source: "empty.en", reference: "empty.de" } },
        /empty\.en: no pairs left after filtering: read 0 pairs/,
      ],
    ];
    for (const [data, pattern] of cases) {
      const r = await exp(dir, baselinesManifest(data));
      assertUserError(r, pattern);
      assert.ok(!(await exists(join(dir, "runs/hostile/baselines"))), "no run folder is started");
      await Deno.remove(join(dir, "runs"), { recursive: true });
    }
  });
});

Deno.test("hostile: a corpus where no pair passes the length filter says what each filter removed", async () => {
  await withTempDir(async (dir) => {
    const lines = Array.from(
      { length: 20 },
      (_, i) => `the house number ${i}\tdas Haus Nummer ${i}`,
    );
    await Deno.writeTextFile(join(dir, "pairs.tsv"), lines.join("\n") + "\n");
    const tooLong = await exp(
      dir,
      baselinesManifest({ name: "tsv", config: { paths: ["pairs.tsv"], maxWords: 2 } }),
    );
    assertUserError(
      tooLong,
      /pairs\.tsv: no pairs left after filtering: read 20 pairs, 20 were longer than maxWords=2/,
    );
    await Deno.remove(join(dir, "runs"), { recursive: true });
    // Short pairs fail minWords, long ones maxWords: both counts are given.
    const mixedLines = Array.from(
      { length: 20 },
      (_, i) =>
        i % 2 === 0
          ? `house ${i}\tHaus ${i}`
          : `the old house by the river ${i}\tdas alte Haus am Fluss ${i}`,
    );
    await Deno.writeTextFile(join(dir, "mixed.tsv"), mixedLines.join("\n") + "\n");
    const mixed = await exp(
      dir,
      baselinesManifest({
        name: "tsv",
        config: { paths: ["mixed.tsv"], minWords: 3, maxWords: 5 },
      }),
    );
    assertUserError(
      mixed,
      /read 20 pairs, 10 were shorter than minWords=3, 10 were longer than maxWords=5/,
    );
  });
});

Deno.test("hostile: non-UTF-8 catalogs name the file, line or string, and byte offset", async () => {
  await withTempDir(async (dir) => {
    // A .po that claims UTF-8 but holds a Latin-1 byte on line 5.
    const po = new TextEncoder().encode(
      'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\nmsgid "Door"\nmsgstr "T\u0000r"\n',
    );
    po[po.indexOf(0)] = 0xfc;
    await Deno.writeFile(join(dir, "bad.po"), po);
    const r = await exp(dir, baselinesManifest({ name: "gettext", config: { paths: ["bad.po"] } }));
    assertUserError(
      r,
      new RegExp(`${dir}/bad\\.po:5: not valid UTF-8 \\(byte offset ${po.indexOf(0xfc)}\\)`),
    );
    await Deno.remove(join(dir, "runs"), { recursive: true });

    // A .mo whose strings are UTF-8 except one byte.
    const mo = await Deno.readFile(MO_FIXTURE);
    const view = new DataView(mo.buffer);
    const translations = view.getUint32(16, true);
    const offset = view.getUint32(translations + 8 + 4, true); // translation string 1
    mo[offset] = 0xff;
    await Deno.writeFile(join(dir, "bad.mo"), mo);
    const m = await exp(dir, baselinesManifest({ name: "gettext", config: { paths: ["bad.mo"] } }));
    assertUserError(
      m,
      new RegExp(`bad\\.mo: translation string 1 at byte offset ${offset} is not valid UTF-8`),
    );
    await Deno.remove(join(dir, "runs"), { recursive: true });

    // A charset TextDecoder does not know.
    await Deno.writeTextFile(
      join(dir, "odd.po"),
      'msgid ""\nmsgstr "Content-Type: text/plain; charset=klingon\\n"\n\nmsgid "a"\nmsgstr "b"\n',
    );
    const k = await exp(dir, baselinesManifest({ name: "gettext", config: { paths: ["odd.po"] } }));
    assertUserError(k, /odd\.po: the header's charset "klingon" is not supported/);
  });
});

Deno.test("hostile: a truncated .mo file names the byte offset where it ends", async () => {
  await withTempDir(async (dir) => {
    const mo = await Deno.readFile(MO_FIXTURE);
    for (const cut of [mo.length - 7, 40, 10]) {
      await Deno.writeFile(join(dir, "cut.mo"), mo.slice(0, cut));
      const r = await exp(
        dir,
        baselinesManifest({ name: "gettext", config: { paths: ["cut.mo"] } }),
      );
      assertUserError(r, new RegExp(`cut\\.mo: truncated .*byte offset ${cut}`));
      await Deno.remove(join(dir, "runs"), { recursive: true });
    }
  });
});

// --- plugins returning bad numbers ------------------------------------------------------

/** A reward plugin returning `config.value` (parsed with Number) for every row. */
const BAD_REWARD = `
import { definePlugin, type RewardModel } from "@rest/framework";
export default definePlugin({
  kind: "reward",
  name: "bad_reward",
  summary: "Returns a fixed value for every row, or a wrong number of scores.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      value: { type: "string", default: "NaN", description: "What to return, e.g. NaN or 1.5." },
      missing: { type: "integer", minimum: 0, default: 0, description: "Scores left out." },
    },
  },
  create(config: { value: string; missing: number }): RewardModel {
    return {
      needsReference: false,
      score: (rows) =>
        Promise.resolve(rows.slice(config.missing).map(() => Number(config.value))),
    };
  },
});
`;

/** A loss that is the plain NLL for `after` steps, then NaN. */
const NAN_LOSS = `
import * as tf from "@tensorflow/tfjs-core";
import { definePlugin, type Loss, type Policy } from "@rest/framework";
export default definePlugin({
  kind: "loss",
  name: "nan_after",
  summary: "Negative log-likelihood that turns NaN after some steps.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      after: { type: "integer", minimum: 0, default: 2, description: "Good steps before NaN." },
    },
  },
  create(config: { after: number }): Loss {
    let policy: Policy | undefined;
    let calls = 0;
    return {
      variables: [],
      prepare(ctx) {
        policy = ctx.policy;
      },
      compute(input): tf.Scalar {
        calls++;
        const logProbs = policy!.tokenLogProbs(input.batch, { training: true });
        const nll = tf.neg(tf.mean(tf.sum(logProbs, 1))) as tf.Scalar;
        return calls > config.after ? tf.mul(nll, NaN) as tf.Scalar : nll;
      },
      afterStep() {},
      dispose() {
        policy = undefined;
      },
    };
  },
});
`;

Deno.test("hostile: a user reward returning NaN or values outside [0, 1] is a user error naming the plugin and row", async () => {
  await withTempDir(async (dir) => {
    const plugin = join(dir, "bad_reward.ts");
    await Deno.writeTextFile(plugin, BAD_REWARD);
    // End to end: the first run completes, the second (with the bad reward) stops with exit 2
    // and leaves the first run's files as they were.
    const manifest = baselinesManifest({ name: "synthetic", config: { pairs: 200 } }, {
      runs: [
        { name: "good", algorithm: "baselines" },
        { name: "bad", algorithm: "baselines", reward: { module: "./bad_reward.ts" } },
      ],
    });
    const r = await exp(dir, manifest, "--smoke");
    assertUserError(
      r,
      new RegExp(
        `reward plugin "bad_reward" \\(${plugin}\\) failed in score\\(\\) during run bad, baselines: returned NaN for row 0; rewards must be numbers in \\[0, 1\\] \\(source ".*", hypothesis ".*"\\)`,
      ),
    );
    const good = join(dir, "runs/hostile/good");
    assert.ok(await exists(join(good, "summary.json")), "the completed run keeps its summary");
    const metrics = await readJsonLines(join(good, "metrics.jsonl"));
    assert.equal(metrics[0]["eval/valid_reward_reference"], 1);
    assert.ok(!(await exists(join(dir, "runs/hostile/bad/summary.json"))));

    // In process, the same check for values above 1, below 0, and a wrong count.
    const registries = createRegistries(builtinPlugins);
    const rows = [
      { source: "a", hypothesis: "b", reference: "c" },
      { source: "d", hypothesis: "e", reference: "f" },
    ];
    for (
      const [config, pattern] of [
        [
          { value: "1.5" },
          /returned 1\.5 for row 0; rewards must be numbers in \[0, 1\] \(source "a", hypothesis "b"\)/,
        ],
        [{ value: "-0.25" }, /returned -0\.25 for row 0/],
        [{ value: "Infinity" }, /returned Infinity for row 0/],
        [
          { value: "0.5", missing: 1 },
          /returned 1 scores for 2 rows; it must return one score per row/,
        ],
      ] as const
    ) {
      const ref = await resolvePluginRef(
        registries,
        "reward",
        { module: plugin, config },
        "t",
        dir,
      );
      const definition = registries.reward.find(ref.name) as PluginDefinition<"reward">;
      const model = await definition.create(ref.config, {
        seed: 1,
        baseDir: dir,
        smoke: false,
        log: () => {},
        create: () => Promise.reject(new Error("unused")),
      });
      assert.equal(model.needsReference, false, "the plugin's other members pass through");
      await assert.rejects(() => model.score(rows), (error: unknown) => {
        assert.ok(error instanceof UserError, String(error));
        assert.ok(
          error.message.startsWith(`reward plugin "bad_reward" (${plugin}) failed in score() `),
          error.message,
        );
        assert.match(error.message, pattern);
        return true;
      });
    }
    // A built-in reward misbehaving is an internal fault (exit 1), reported the same way.
    assert.throws(() => checkScores([0.5, NaN], 2), /reward returned NaN for row 1/);
  });
});

Deno.test("hostile: a loss turning NaN stops within one step, names it, and keeps what was written", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "nan_loss.ts"), NAN_LOSS);
    const bcRun = { name: "bc", algorithm: "bc" };
    // First the BC run alone, completed; then a ReST run whose loss turns NaN at its 3rd step.
    const first = await exp(dir, tinyModelManifest([bcRun]), "--smoke");
    assert.equal(first.code, 0, first.stderr);
    const experiment = join(dir, "runs/hostile");
    const before = await snapshot(experiment);
    assert.ok(
      [...before.keys()].some((k) => k.startsWith("shared/bc/")),
      [...before.keys()].join(),
    );

    const rest = {
      name: "rest",
      algorithm: {
        name: "rest",
        config: { growSteps: 1, improveSteps: 2, improve: { steps: 6, evalEvery: 0 } },
      },
      loss: { module: "./nan_loss.ts", config: { after: 2 } },
      threshold: "fixed",
    };
    const r = await exp(dir, tinyModelManifest([bcRun, rest]), "--smoke", "--resume");
    assertUserError(
      r,
      /improve: the loss became NaN at step 3; training stopped before that update, so the weights are those after step 2/,
    );

    // Every file written before is still there, byte for byte.
    const after = await snapshot(experiment);
    for (const [file, hash] of before) assert.equal(after.get(file), hash, `${file} changed`);
    // The shared BC checkpoint still loads and verifies its checksum.
    const { state } = await loadCheckpoint(join(experiment, "shared/bc"), "policy");
    assert.ok(state.data.length > 0);
    // The failed run's own log holds the Grow set and the two good Improve steps, every line intact.
    const lines = await readJsonLines(join(experiment, "rest/metrics.jsonl"));
    assert.ok(lines.some((l) => Object.keys(l).some((k) => k.startsWith("grow/"))));
    const losses = lines.filter((l) => "improve/loss" in l);
    assert.equal(losses.length, 2, JSON.stringify(lines));
    for (const l of losses) assert.ok(Number.isFinite(l["improve/loss"]));
    assert.ok((await readJsonLines(join(experiment, "rest/grow_1.jsonl"))).length > 0);
    assert.ok(!(await exists(join(experiment, "rest/summary.json"))));
  });
});

/** Every line of a JSON Lines file, parsed (a damaged line fails the test). */
async function readJsonLines(path: string): Promise<Record<string, number>[]> {
  const text = await Deno.readTextFile(path);
  return text.trim().split("\n").map((line) => JSON.parse(line));
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
