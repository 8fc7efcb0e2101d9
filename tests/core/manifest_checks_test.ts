/**
 * The manifest checks that run before anything trains, through the real loader
 * (loadManifest): duplicate keys, pathological nesting and size, special files named as the
 * manifest, plugins' cross-field constraints (also under --smoke), and run and experiment
 * names that become folders.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ManifestError } from "../../core/errors.ts";
import { EXPERIMENT_FOLDER_ENTRIES } from "../../core/layout.ts";
import { MAX_MANIFEST_BYTES } from "../../core/manifest/limits.ts";
import { loadManifest, resolveManifest } from "../../core/manifest/mod.ts";
import { definePlugin, type PluginDefinition } from "../../core/plugin.ts";
import { createRegistries } from "../../core/registry.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import { fakePlugins, validManifest } from "./_fakes.ts";
import { withTempDir as withTempFolder } from "../_experiment.ts";

/** {@link withTempFolder} with folders named manifest_checks_*. */
function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  return withTempFolder(fn, "manifest_checks_");
}

/** The problems `loadManifest` reports for a manifest file holding `text`. */
async function fileProblems(
  text: string,
  options: { smoke?: boolean; plugins?: readonly PluginDefinition[] } = {},
): Promise<string[]> {
  let problems: string[] = [];
  await withTempDir(async (dir) => {
    const file = join(dir, "m.json");
    await Deno.writeTextFile(file, text);
    problems = await problemsOf(() =>
      loadManifest(file, createRegistries(options.plugins ?? fakePlugins), {
        smoke: options.smoke ?? false,
      })
    );
  });
  return problems;
}

/** `path: message` of each problem of the ManifestError `load` throws. */
async function problemsOf(load: () => Promise<unknown>): Promise<string[]> {
  try {
    await load();
  } catch (error) {
    assert.ok(error instanceof ManifestError, `expected a ManifestError, got ${error}`);
    assert.doesNotMatch(error.message, /Maximum call stack/);
    return error.problems.map((p) => `${p.path}: ${p.message}`);
  }
  return assert.fail("the manifest was accepted");
}

/** A manifest over the built-in plugins with a tiny transformer. */
function builtinManifest(model: Record<string, unknown>): Record<string, unknown> {
  return {
    experiment: "x",
    backend: "cpu",
    data: "synthetic",
    model: { name: "transformer", config: model },
    runs: [{ name: "a", algorithm: "bc" }],
  };
}

// --- duplicate keys ----------------------------------------------------------------------

Deno.test("duplicate keys are reported with the object's path and both lines", async () => {
  const text = `{
  "experiment": "unit",
  "seed": 3,
  "data": {"name": "fake_data", "config": {"pairs": 2}},
  "tokenizer": "chars",
  "reward": "constant",
  "runs": [
    {"name": "eval", "algorithm": "evaluate_only"},
    {"name": "train", "algorithm": "trainer",
     "loss": {"name": "fake_loss", "config": {"clip": 0.1, "a/b": 1, "clip": 0.3, "a/b": 2}}}
  ],
  "seed": 4
}`;
  const tail = "JSON would silently keep only the last one, so give each key once";
  assert.deepEqual(await fileProblems(text), [
    `/runs/1/loss/config: duplicate key "clip" on line 10 (also on line 10); ${tail}`,
    `/runs/1/loss/config: duplicate key "a/b" on line 10 (also on line 10); ${tail}`,
    `: duplicate key "seed" on line 12 (also on line 3); ${tail}`,
  ]);
});

Deno.test("equal keys in different objects are fine; escaped spellings of one key are not", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "m.json");
    const raw = validManifest();
    raw.description = "same keys in sibling objects";
    await Deno.writeTextFile(file, JSON.stringify(raw, null, 2));
    await loadManifest(file, createRegistries(fakePlugins));
  });
  // "\u0061" is "a".
  const text = JSON.stringify(validManifest()).replace(
    '"seed":3',
    '"seed":3,"x":{"a":1,"\\u0061":2}',
  );
  const problems = await fileProblems(text);
  assert.equal(problems.length, 1, problems.join("\n"));
  assert.match(problems[0], /^\/x: duplicate key "a" on line 1/);
});

// --- pathological size and nesting -------------------------------------------------------

Deno.test("100,000 levels of nesting are refused before parsing, quickly", async () => {
  const valid = JSON.stringify(validManifest());
  const depth = 100_000;
  for (
    const nested of [
      `${"[".repeat(depth)}${"]".repeat(depth)}`,
      `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`,
    ]
  ) {
    const started = performance.now();
    const problems = await fileProblems(valid.replace('"seed":3', `"seed":${nested}`));
    assert.ok(performance.now() - started < 5000, "took too long");
    assert.equal(problems.length, 1);
    assert.match(problems[0], /^\/seed(\/(0|a)){63}: nested more than 64 levels deep$/);
  }
});

Deno.test("in-memory manifests nested 100,000 levels or holding 200,000 numbers are refused", async () => {
  let deep: unknown = 1;
  for (let i = 0; i < 100_000; i++) deep = { a: deep };
  const registries = createRegistries(fakePlugins);
  const tooDeep = await problemsOf(() =>
    resolveManifest({ ...validManifest(), junk: deep }, registries)
  );
  assert.equal(tooDeep.length, 1);
  assert.match(tooDeep[0], /^\/junk(\/a){63}: nested more than 64 levels deep$/);
  const numbers = Array.from({ length: 200_000 }, (_, i) => i);
  const huge = await problemsOf(() =>
    resolveManifest({ ...validManifest(), junk: numbers }, registries)
  );
  assert.equal(huge.length, 1);
  assert.match(huge[0], /more than 100000 values/);
});

Deno.test("200,000 numbers in a config give one short problem, not a flood or a hang", async () => {
  const raw = validManifest();
  raw.data = { name: "fake_data", config: { pairs: Array.from({ length: 200_000 }, (_, i) => i) } };
  const started = performance.now();
  const problems = await fileProblems(JSON.stringify(raw));
  assert.ok(performance.now() - started < 5000, "took too long");
  assert.equal(problems.length, 1);
  assert.match(
    problems[0],
    /^\/data\/config\/pairs\/\d+: the manifest holds more than 100000 values/,
  );
});

Deno.test("a flood of problems is cut to a readable list with a count of the rest", async () => {
  const raw = validManifest();
  raw.data = { name: "fake_data", config: { pairs: Array.from({ length: 500 }, () => "x") } };
  const problems = await fileProblems(JSON.stringify(raw));
  assert.ok(problems.length <= 51, `${problems.length} problems listed`);
});

Deno.test("a manifest larger than the size limit is refused before it is read", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "big.json");
    const handle = await Deno.open(file, { write: true, create: true });
    await handle.truncate(MAX_MANIFEST_BYTES + 1); // sparse: costs no disk
    handle.close();
    const problems = await problemsOf(() => loadManifest(file, createRegistries(fakePlugins)));
    assert.deepEqual(problems, [
      `: cannot read manifest: manifest is ${MAX_MANIFEST_BYTES + 1} bytes, more than the ` +
      `limit of ${MAX_MANIFEST_BYTES}`,
    ]);
  });
});

// --- special files -------------------------------------------------------------------------

/** A subprocess listening on a Unix socket at `path` (tests have no net permission). */
async function listenOnSocket(path: string): Promise<Deno.ChildProcess> {
  const code = `Deno.listen({ transport: "unix", path: ${JSON.stringify(path)} }); ` +
    "setInterval(() => {}, 1000);";
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let tries = 0; tries < 200; tries++) {
    const info = await Deno.lstat(path).catch(() => undefined);
    if (info?.isSocket) return child;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  child.kill();
  return assert.fail("the socket did not appear");
}

Deno.test("a FIFO, a socket, a device or a folder named as the manifest fails at once, naming it", async () => {
  await withTempDir(async (dir) => {
    const fifo = join(dir, "fifo.json");
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(made.success, "mkfifo failed");
    const socketPath = join(dir, "socket.json");
    const listener = await listenOnSocket(socketPath);
    const link = join(dir, "zero.json");
    await Deno.symlink("/dev/zero", link);
    try {
      const cases: [string, RegExp][] = [
        [fifo, /is a FIFO \(named pipe\), expected the manifest to be a regular file/],
        [socketPath, /is a socket, expected the manifest to be a regular file/],
        ["/dev/zero", /is a character device, expected the manifest to be a regular file/],
        [link, /is a character device, expected the manifest to be a regular file/],
        [dir, /is a folder, expected the manifest to be a regular file/],
      ];
      for (const [path, pattern] of cases) {
        const problems = await problemsOf(() => loadManifest(path, createRegistries(fakePlugins)));
        assert.equal(problems.length, 1);
        assert.match(problems[0], pattern);
      }
    } finally {
      listener.kill();
      await listener.status;
    }
  });
});

// --- cross-field constraints -----------------------------------------------------------------

Deno.test("transformer heads must divide dModel, reported at validation and under --smoke", async () => {
  const registries = createRegistries(builtinPlugins);
  const raw = builtinManifest({ dModel: 64, heads: 3 });
  for (const smoke of [false, true]) {
    // --smoke scales the model to d 32 with 2 heads: it must not hide the user's mistake.
    const problems = await problemsOf(() => resolveManifest(raw, registries, { smoke }));
    assert.deepEqual(problems, [
      "/model/config/heads: must divide dModel (64) so that every head gets dModel / heads " +
      "dimensions (got 3)",
    ]);
  }
  const text = JSON.stringify(builtinManifest({ heads: 3 }));
  const fromFile = await fileProblems(text, { plugins: builtinPlugins });
  assert.deepEqual(fromFile, [
    "/model/config/heads: must divide dModel (256) so that every head gets dModel / heads " +
    "dimensions (got 3)",
  ]);
  await resolveManifest(builtinManifest({ dModel: 48, heads: 3 }), registries, { smoke: true });
});

Deno.test("bpe user specials may not repeat built-in tokens or hold the word marker", async () => {
  const raw = {
    ...builtinManifest({}),
    tokenizer: { name: "bpe", config: { userSpecials: ["<2de>", "<s>", "a\u2581b"] } },
  };
  const problems = await problemsOf(() => resolveManifest(raw, createRegistries(builtinPlugins)));
  assert.deepEqual(problems, [
    '/tokenizer/config/userSpecials/1: "<s>" is a built-in special token (<pad> <s> </s> <unk>)',
    '/tokenizer/config/userSpecials/2: "a\u2581b" contains the word marker \u2581 (U+2581)',
  ]);
});

Deno.test("a smoke scaling that makes an invalid config is reported, not run", async () => {
  const halving = definePlugin({
    kind: "algorithm",
    name: "halving",
    summary: "Its smoke scaling breaks its own rule.",
    uses: { reward: "optional" },
    configSchema: {
      type: "object",
      additionalProperties: false,
      properties: {
        low: { type: "integer", minimum: 1, default: 2, description: "Low." },
        high: { type: "integer", minimum: 1, default: 4, description: "High (>= low)." },
      },
    },
    check: (c: { low: number; high: number }) =>
      c.high >= c.low ? [] : [{ path: "/high", message: "must be >= low" }],
    smoke: (c: { low: number; high: number }) => ({ low: c.low, high: 1 }),
    create: () => ({ run: () => Promise.resolve({ metrics: {} }) }),
  });
  const registries = createRegistries([...fakePlugins, halving] as PluginDefinition[]);
  const raw = { ...validManifest(), runs: [{ name: "h", algorithm: "halving" }] };
  await resolveManifest(raw, registries);
  const problems = await problemsOf(() => resolveManifest(raw, registries, { smoke: true }));
  assert.deepEqual(problems, [
    '/runs/0/algorithm/config/high: under --smoke, algorithm plugin "halving" scaled this ' +
    "config into an invalid one: must be >= low",
  ]);
});

// --- names that become folders ---------------------------------------------------------------

Deno.test("run names that are the experiment folder's own files are refused, in any case", async () => {
  const registries = createRegistries(fakePlugins);
  for (const name of ["table1.md", "Tokenizer.JSON", "shared", "fig3_improve_reward.svg"]) {
    const raw = validManifest();
    (raw.runs as { name: string }[])[1].name = name;
    const problems = await problemsOf(() => resolveManifest(raw, registries));
    assert.equal(problems.length, 1, problems.join("\n"));
    assert.match(problems[0], /^\/runs\/1\/name: ".*" is reserved: the experiment folder holds/);
  }
  assert.ok(EXPERIMENT_FOLDER_ENTRIES.includes("table1.csv"));
  assert.ok(EXPERIMENT_FOLDER_ENTRIES.includes(".lock"));
});

Deno.test("run folders that differ only in letter case collide", async () => {
  const raw = validManifest();
  (raw.runs as { name: string }[])[1].name = "Train";
  const problems = await problemsOf(() => resolveManifest(raw, createRegistries(fakePlugins)));
  assert.equal(problems.length, 1);
  assert.match(
    problems[0],
    /^\/runs\/1\/name: run folder "Train" differs from \/runs\/0's "train" only in letter case/,
  );
});

Deno.test("names too long for the file system are refused, counting the seed suffix", async () => {
  const registries = createRegistries(fakePlugins);
  const raw = validManifest();
  (raw.runs as { name: string }[])[1].name = "r".repeat(250);
  await resolveManifest(raw, registries); // 250 bytes is a valid folder name
  const seeded = await problemsOf(() => resolveManifest({ ...raw, seeds: 10 }, registries));
  assert.deepEqual(seeded, [
    `/runs/1/name: its folder "${"r".repeat(37)}..." is 257 bytes long as a folder name, ` +
    "more than the 255 a file system allows",
  ]);
  // The same through --seeds on the command line.
  const flag = await problemsOf(() => resolveManifest(raw, registries, { seeds: 10 }));
  assert.deepEqual(flag, seeded);
  const long = await problemsOf(() =>
    resolveManifest({ ...validManifest(), experiment: "e".repeat(256) }, registries)
  );
  assert.equal(long.length, 1);
  assert.match(long[0], /^\/experiment: must NOT have more than 255 characters/);
});

// --- size of the work ---------------------------------------------------------------------

Deno.test("25,000 runs with bad names are reported in linear time, as a short list", async () => {
  const raw = validManifest();
  raw.runs = Array.from({ length: 25_000 }, (_, i) => ({ name: `-r${i}`, algorithm: "trainer" }));
  const started = performance.now();
  const problems = await problemsOf(() => resolveManifest(raw, createRegistries(fakePlugins)));
  assert.ok(performance.now() - started < 4000, `took ${performance.now() - started} ms`);
  assert.equal(problems.length, 51);
  assert.equal(problems[50], ": ... and 49950 more problems");
});

Deno.test("definePlugin checks a schema nested 100,000 levels deep without recursion", () => {
  let schema: Record<string, unknown> = { type: "object", properties: {} };
  for (let i = 0; i < 100_000; i++) {
    schema = {
      type: "object",
      description: "level",
      default: {},
      properties: { a: schema },
    };
  }
  assert.throws(
    () =>
      definePlugin({
        kind: "reward",
        name: "deep",
        summary: "Deep schema.",
        configSchema: { type: "object", properties: { root: schema } },
        create: () => ({ needsReference: false, score: () => Promise.resolve([]) }),
      }),
    (error: unknown) => error instanceof TypeError && /configSchema\/root/.test(error.message),
  );
});
