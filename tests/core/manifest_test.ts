import assert from "node:assert/strict";
import { join } from "node:path";
import { ManifestError } from "../../core/errors.ts";
import { editorSchema } from "../../core/manifest/envelope.ts";
import {
  loadManifest,
  parseManifestText,
  resolveManifest,
  resolvePluginRef,
} from "../../core/manifest/mod.ts";
import { createRegistries } from "../../core/registry.ts";
import { fakePlugins, validManifest } from "./_fakes.ts";

const PLUGIN_MODULE = new URL("../../core/plugin.ts", import.meta.url).href;

function registries() {
  return createRegistries(fakePlugins);
}

async function problemsOf(raw: unknown, options = {}): Promise<string[]> {
  try {
    await resolveManifest(raw, registries(), { file: "m.json", baseDir: Deno.cwd(), ...options });
  } catch (error) {
    if (error instanceof ManifestError) return error.problems.map((p) => `${p.path}: ${p.message}`);
    throw error;
  }
  assert.fail("expected a ManifestError");
}

Deno.test("a valid manifest resolves with defaults filled in", async () => {
  const m = await resolveManifest(validManifest(), registries(), { file: "m.json" });
  assert.equal(m.experiment, "unit");
  assert.equal(m.seed, 3);
  assert.deepEqual(m.data.config, { pairs: 2 });
  assert.deepEqual(m.reward, { kind: "reward", name: "constant", config: { value: 0.5 } });
  assert.equal(m.runs.length, 2);
  assert.deepEqual(m.runs[0].algorithm.config, { steps: 10 });
  assert.deepEqual(m.runs[0].loss?.config, { clip: 0.1 });
  assert.equal(m.runs[0].seed, 3);
  assert.equal(m.runs[1].seed, 9);
  assert.equal(m.runs[1].loss, undefined);
});

Deno.test("smoke applies each plugin's scaling; --seed and --backend override", async () => {
  const m = await resolveManifest(validManifest(), registries(), { smoke: true, seed: 42 });
  assert.deepEqual(m.data.config, { pairs: 1 });
  assert.deepEqual(m.runs[0].algorithm.config, { steps: 1 });
  assert.equal(m.seed, 42);
  assert.equal(m.runs[0].seed, 42);
  const problems = await problemsOf(validManifest(), { backend: "nope" });
  assert.equal(problems.length, 1);
  assert.match(problems[0], /^\/backend: unknown backend plugin "nope"/);
});

Deno.test("seeds repeat every run as <name>@seed<k> with consecutive run and BC seeds", async () => {
  const m = await resolveManifest({ ...validManifest(), seeds: 3 }, registries());
  assert.equal(m.seeds, 3);
  assert.deepEqual(m.runs.map((r) => [r.name, r.seed, r.bcSeed]), [
    ["train@seed1", 3, 3],
    ["train@seed2", 4, 4],
    ["train@seed3", 5, 5],
    ["eval@seed1", 9, 3],
    ["eval@seed2", 10, 4],
    ["eval@seed3", 11, 5],
  ]);
  const one = await resolveManifest({ ...validManifest(), seeds: 3 }, registries(), { seeds: 1 });
  assert.deepEqual(one.runs.map((r) => [r.name, r.bcSeed]), [["train", 3], ["eval", 3]]);
  const problems = await problemsOf({ ...validManifest(), seeds: 0 });
  assert.match(problems.join("\n"), /\/seeds: must be >= 1/);
  const reserved = validManifest();
  (reserved.runs as { name: string }[])[0].name = "shared";
  assert.match((await problemsOf(reserved)).join("\n"), /\/runs\/0\/name: "shared" is reserved/);
});

Deno.test("misspelled plugin name and wrong-typed seed are reported together", async () => {
  const raw = validManifest();
  raw.seed = "seven";
  (raw.runs as Record<string, unknown>[])[0].algorithm = "trainr";
  const problems = await problemsOf(raw);
  assert.equal(problems.length, 2, problems.join("\n"));
  assert.ok(problems.includes('/seed: must be integer (got "seven")'), problems.join("\n"));
  const algo = problems.find((p) => p.startsWith("/runs/0/algorithm"));
  assert.match(algo!, /unknown algorithm plugin "trainr"; did you mean "trainer"\?/);
  assert.match(algo!, /valid: evaluate_only, trainer/);
});

Deno.test("plugin config errors carry the JSON pointer into the config", async () => {
  const raw = validManifest();
  (raw.runs as Record<string, unknown>[])[0].loss = { name: "fake_loss", config: { clip: -1 } };
  (raw.data as Record<string, unknown>).config = { pairs: 2, pears: 3 };
  const problems = await problemsOf(raw);
  assert.deepEqual(problems, [
    '/data/config/pears: unknown key; did you mean "pairs"? (allowed: pairs)',
    "/runs/0/loss/config/clip: must be > 0 (got -1)",
  ]);
});

Deno.test("envelope errors: unknown keys, missing sections, empty runs", async () => {
  assert.deepEqual(
    await problemsOf({
      experiment: "x",
      backend: "none",
      tokenizer: "chars",
      reward: "constant",
      data: "fake_data",
      runs: [],
      dta: 1,
    }),
    [
      '/dta: unknown key; did you mean "data"? (allowed: $schema, experiment, description, seed, seeds, backend, data, tokenizer, model, reward, executor, bc, evaluation, runs)',
      "/runs: must NOT have fewer than 1 items (got [])",
    ],
  );
  assert.deepEqual(
    await problemsOf({
      experiment: "bad name!",
      backend: "none",
      tokenizer: "chars",
      reward: "constant",
      runs: [{ name: "a" }],
    }),
    [
      "/data: is required",
      '/experiment: must match pattern "^[A-Za-z0-9][A-Za-z0-9_.-]*$" (got "bad name!")',
      "/runs/0/algorithm: is required",
    ],
  );
  assert.deepEqual(await problemsOf([1, 2]), [": must be object (got [1,2])"]);
});

Deno.test("reference shape errors", async () => {
  const cases: [unknown, string][] = [
    [{ name: "constant", module: "./x.ts" }, '/reward: give either "name" or "module", not both'],
    [{ config: {} }, '/reward: must have "name" (a reward plugin) or "module" (a plugin file)'],
    [{ name: 3 }, "/reward/name: must be a string (got 3)"],
    [{ name: "constant", config: [] }, "/reward/config: must be an object (got [])"],
    [
      { name: "constant", confg: {} },
      '/reward/confg: unknown key; did you mean "config"? (allowed: name, module, config)',
    ],
    [
      { name: "constant", config: { value: 2 } },
      "/reward/config/value: must be <= 1 (got 2)",
    ],
  ];
  for (const [reward, expected] of cases) {
    const raw = validManifest();
    raw.reward = reward;
    assert.deepEqual(await problemsOf(raw), [expected], JSON.stringify(reward));
  }
  const raw = validManifest();
  raw.reward = 5;
  assert.deepEqual(await problemsOf(raw), ["/reward: must be string,object (got 5)"]);
});

Deno.test("sections are checked against what the algorithm uses", async () => {
  const raw = validManifest();
  const runs = raw.runs as Record<string, unknown>[];
  delete runs[0].loss;
  runs[1].loss = "fake_loss";
  runs[1].threshold = "whatever";
  const problems = await problemsOf(raw);
  assert.deepEqual(problems, [
    '/runs/0/loss: is required by algorithm "trainer"',
    '/runs/1/loss: algorithm "evaluate_only" does not use a loss; remove this section',
    '/runs/1/threshold: unknown threshold plugin "whatever" (valid: none registered)',
    '/runs/1/threshold: algorithm "evaluate_only" does not use a threshold; remove this section',
  ]);
});

Deno.test("duplicate run names are rejected", async () => {
  const raw = validManifest();
  (raw.runs as Record<string, unknown>[])[1].name = "train";
  assert.deepEqual(await problemsOf(raw), [
    '/runs/1/name: duplicate run name "train" (also /runs/0)',
  ]);
});

Deno.test("nested plugin references are validated and resolved", async () => {
  const raw = validManifest();
  raw.reward = { name: "combo", config: { parts: ["constant", { name: "constnt" }] } };
  const problems = await problemsOf(raw);
  assert.equal(problems.length, 1);
  assert.match(
    problems[0],
    /^\/reward\/config\/parts\/1\/name: unknown reward plugin "constnt"; did you mean "constant"/,
  );
  raw.reward = {
    name: "combo",
    config: { parts: ["constant", { name: "constant", config: { value: 1 } }] },
  };
  const m = await resolveManifest(raw, registries());
  assert.deepEqual(m.reward.config.parts, [
    { kind: "reward", name: "constant", config: { value: 0.5 } },
    { kind: "reward", name: "constant", config: { value: 1 } },
  ]);
});

async function writeModule(dir: string, name: string, body: string): Promise<string> {
  const file = join(dir, name);
  await Deno.writeTextFile(file, body);
  return file;
}

Deno.test("user plugin modules get the same validation as built-ins", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeModule(
      dir,
      "my_loss.ts",
      `import { definePlugin } from "${PLUGIN_MODULE}";
export default definePlugin({
  kind: "loss", name: "my_loss", summary: "A user loss.",
  configSchema: { type: "object", additionalProperties: false, properties: {
    alpha: { type: "number", minimum: 0, default: 1, description: "Weight." } } },
  create: (config) => ({ config }),
});`,
    );
    await writeModule(dir, "no_default.ts", `export const x = 1;`);
    await writeModule(
      dir,
      "bad_def.ts",
      `export default { kind: "loss", name: "Bad-Name", summary: "x", configSchema: { type: "object" }, create() {} };`,
    );
    await writeModule(
      dir,
      "clash.ts",
      `import { definePlugin } from "${PLUGIN_MODULE}";
export default definePlugin({ kind: "loss", name: "fake_loss", summary: "Clashes.",
  configSchema: { type: "object", properties: {} }, create: () => ({}) });`,
    );
    await writeModule(dir, "broken.ts", `export default {{{;`);
    const run = (loss: unknown) => {
      const raw = validManifest();
      (raw.runs as Record<string, unknown>[])[0].loss = loss;
      return raw;
    };

    const ok = await resolveManifest(run({ module: "./my_loss.ts", config: {} }), registries(), {
      file: join(dir, "m.json"),
    });
    assert.equal(ok.runs[0].loss?.name, "my_loss");
    assert.equal(ok.runs[0].loss?.module, join(dir, "my_loss.ts"));
    assert.deepEqual(ok.runs[0].loss?.config, { alpha: 1 });

    const opts = { baseDir: dir };
    assert.deepEqual(
      await problemsOf(run({ module: "./my_loss.ts", config: { alpha: -1 } }), opts),
      [
        "/runs/0/loss/config/alpha: must be >= 0 (got -1)",
      ],
    );
    const missing = await problemsOf(run({ module: "./nope.ts" }), opts);
    assert.deepEqual(missing, [
      `/runs/0/loss/module: ${join(dir, "nope.ts")}: plugin module not found`,
    ]);
    const noDefault = await problemsOf(run({ module: "./no_default.ts" }), opts);
    assert.match(noDefault[0], /must default-export a plugin definition/);
    const badDef = await problemsOf(run({ module: "./bad_def.ts" }), opts);
    assert.match(badDef[0], /name must be snake_case/);
    const clash = await problemsOf(run({ module: "./clash.ts" }), opts);
    assert.match(clash[0], /duplicate loss plugin name "fake_loss"/);
    const broken = await problemsOf(run({ module: "./broken.ts" }), opts);
    assert.match(broken[0], /^\/runs\/0\/loss\/module: cannot load plugin module/);
    const raw = validManifest();
    raw.reward = { module: "./my_loss.ts" };
    const wrongKind = await problemsOf(raw, opts);
    assert.match(
      wrongKind[0],
      /^\/reward\/module: .* defines a loss plugin \("my_loss"\), but a reward plugin is expected/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("JSON syntax errors name line and column; missing files are reported", async () => {
  assert.throws(
    () => parseManifestText('{\n  "experiment": "x",\n  oops\n}', "bad.json"),
    (error: unknown) => {
      assert.ok(error instanceof ManifestError);
      assert.match(error.message, /^bad\.json: 1 problem\n {2}\/: invalid JSON: .*line 3/);
      return true;
    },
  );
  await assert.rejects(
    () => loadManifest("/nonexistent/m.json", registries()),
    /\/nonexistent\/m\.json: 1 problem\n {2}\/: cannot read manifest: manifest not found/,
  );
});

Deno.test("resolvePluginRef validates a single reference", async () => {
  const ref = await resolvePluginRef(registries(), "reward", "constant", "--reward");
  assert.deepEqual(ref.config, { value: 0.5 });
  await assert.rejects(
    () => resolvePluginRef(registries(), "reward", { name: "constnt" }, "--reward"),
    /--reward: 1 problem\n {2}\/name: unknown reward plugin "constnt"; did you mean "constant"/,
  );
});

Deno.test("the editor schema lists every plugin and its options", () => {
  const schema = editorSchema(registries());
  const lossRef = schema.properties.runs.items.properties.loss;
  assert.deepEqual(lossRef.anyOf[0].enum, ["fake_loss"]);
  assert.equal(lossRef.anyOf[1].properties.config.properties.clip.default, 0.2);
  assert.equal(lossRef.anyOf.at(-1).required[0], "module");
});

Deno.test("a plugin's own check reports relations between options with their paths", async () => {
  const { builtinPlugins } = await import("../../plugins/mod.ts");
  const builtins = createRegistries(builtinPlugins);
  const raw = {
    experiment: "x",
    backend: "cpu",
    data: "synthetic",
    tokenizer: { name: "bpe", config: { vocabSize: 100 } },
    runs: [{ name: "a", algorithm: "baselines" }],
  };
  await assert.rejects(
    () => resolveManifest(raw, builtins),
    /\/tokenizer\/config\/vocabSize: must be at least 261 \(4 specials, 0 user specials, 256 byte-fallback tokens and the word marker\) \(got 100\)/,
  );
});

Deno.test("bc and evaluation sections get defaults, smoke budgets, and require a model", async () => {
  const { builtinPlugins } = await import("../../plugins/mod.ts");
  const builtins = createRegistries(builtinPlugins);
  const raw = {
    experiment: "x",
    backend: "cpu",
    data: "synthetic",
    bc: { steps: 500 },
    runs: [{ name: "a", algorithm: "bc" }, { name: "b", algorithm: "bc" }],
  };
  await assert.rejects(
    () => resolveManifest(raw, builtins),
    (error: unknown) => {
      assert.ok(error instanceof ManifestError);
      assert.deepEqual(error.problems.map((p) => p.path), ["/model"]);
      assert.match(
        error.problems[0].message,
        /\/runs\/0 uses algorithm "bc", which needs a policy model/,
      );
      return true;
    },
  );
  const m = await resolveManifest({ ...raw, model: "none_yet" }, builtins).catch((e) => e);
  assert.match(String(m.message), /\/model: unknown model plugin "none_yet"/);
  const fakes = createRegistries(fakePlugins);
  const ok = await resolveManifest({ ...validManifest(), bc: { steps: 500 } }, fakes, {
    smoke: true,
  });
  assert.equal(ok.bc.steps, 30);
  assert.equal(ok.bc.batchSize, 32);
  assert.equal(ok.evaluation.maxLen, 24);
  const bad = await problemsOf({ ...validManifest(), bc: { steps: -1, lr: 1 } });
  assert.deepEqual(bad, [
    "/bc/lr: unknown key (allowed: steps, batchSize, learningRate, warmupSteps, schedule, clipNorm, evalEvery, patience, labelSmoothing, maxTokens, evalSize, checkpointSeconds)",
    "/bc/steps: must be >= 0 (got -1)",
  ]);
});
