/**
 * The `dual_xent` reward: the score and its calibration, the swapped tokenizer view, batched
 * cross-entropies, training in prepare() on a tiny synthetic setup (ranking on held-out
 * sources, reload, a run killed during training), and config errors.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import dualXent, {
  calibrate,
  crossEntropies,
  dualScore,
  type DualXentReward,
  fitSigmoid,
} from "../../plugins/rewards/dual_xent.ts";
import { directionSeed, swapSides } from "../../plugins/rewards/_translation.ts";
import { dropWords } from "../../plugins/rewards/_corrupt.ts";
import { Rng } from "../../core/random.ts";
import { UserError } from "../../core/errors.ts";
import { resolvePluginRef } from "../../core/manifest/mod.ts";
import { createRegistries } from "../../core/registry.ts";
import { createPlugin } from "../../core/experiment.ts";
import { exists, readMetrics } from "../../core/run.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import type { ModelFactory, RewardPrepareContext, Splits, Tokenizer } from "../../core/types.ts";
import { tinyPrepareContext, tinyTranslator } from "./_tiny_translator.ts";
import { configRejecter } from "../_experiment.ts";

const registries = createRegistries(builtinPlugins);

// `auto`: OpenBLAS when the machine has it (the tiny models train several times faster).
await (await createPlugin(
  registries,
  "backend",
  await resolvePluginRef(registries, "backend", "auto", "test"),
  { seed: 1, baseDir: "/", smoke: false, log: () => {} } as never,
)).init();

// --- the score and its calibration -----------------------------------------------------------

Deno.test("dual score: |H_f - H_b| + mean, exp(-D) in (0, 1], calibration monotone", () => {
  assert.equal(dualScore({ forward: 1, backward: 1 }), 1);
  assert.equal(dualScore({ forward: 1, backward: 3 }), 2 + 2);
  assert.equal(dualScore({ forward: 3, backward: 1 }), 4);
  assert.equal(calibrate(0, { method: "none", temperature: 1 }), 1);
  assert.ok(Math.abs(calibrate(2, { method: "none", temperature: 1 }) - Math.exp(-2)) < 1e-15);
  assert.ok(Math.abs(calibrate(2, { method: "none", temperature: 4 }) - Math.exp(-0.5)) < 1e-15);
  const s = { method: "sigmoid" as const, a: 3, b: 1.5 };
  assert.ok(Math.abs(calibrate(2, s) - 1 / (1 + Math.exp(0))) < 1e-15);
  assert.ok(calibrate(1, s) > calibrate(2, s) && calibrate(2, s) > calibrate(5, s));
});

Deno.test("fitSigmoid recovers a known map, and refuses a decreasing or constant one", () => {
  const rng = new Rng(3);
  const d = Array.from({ length: 400 }, () => 6 * rng.next());
  const targets = d.map((x) => 1 / (1 + Math.exp(-(2.5 - 1.2 * x))));
  const fit = fitSigmoid(d, targets)!;
  assert.ok(Math.abs(fit.a - 2.5) < 1e-4 && Math.abs(fit.b - 1.2) < 1e-4, JSON.stringify(fit));
  assert.equal(fitSigmoid(d, targets.map((t) => 1 - t)), undefined, "decreasing");
  assert.equal(fitSigmoid([1, 1, 1], [0.2, 0.5, 0.9]), undefined, "constant scores");
  assert.equal(fitSigmoid([1], [0.2]), undefined, "one row");
});

Deno.test("directionSeed: distinct from the experiment's seed and between directions", () => {
  for (const seed of [0, 1, 2, 17, 123456]) {
    const f = directionSeed(seed, "forward");
    const b = directionSeed(seed, "backward");
    assert.notEqual(f, seed);
    assert.notEqual(b, seed);
    assert.notEqual(f, b);
    assert.equal(f, directionSeed(seed, "forward"));
  }
});

// --- tiny synthetic setup --------------------------------------------------------------------

interface Setup {
  splits: Splits;
  tokenizer: Tokenizer;
  factory: ModelFactory;
}

/**
 * A word-for-word toy language (30 source words, each with its own target word, sentences of
 * 3-7 words), which a one-layer transformer learns in a few hundred steps in both directions.
 */
function lexiconSplits(pairs: number): Splits {
  const rng = new Rng(11);
  const syllables = ["ka", "lo", "mi", "ne", "tu", "ri", "so", "va", "pe", "du"];
  const source: string[] = [];
  const target: string[] = [];
  const seen = new Set<string>();
  while (source.length < 30) {
    const s = rng.pick(syllables) + rng.pick(syllables);
    const t = rng.pick(syllables) + rng.pick(syllables) + "x";
    if (seen.has(s) || seen.has(t)) continue;
    seen.add(s);
    seen.add(t);
    source.push(s);
    target.push(t);
  }
  const examples = Array.from({ length: pairs }, () => {
    const ids = Array.from({ length: 3 + rng.int(5) }, () => rng.int(30));
    return {
      source: ids.map((k) => source[k]).join(" "),
      reference: ids.map((k) => target[k]).join(" "),
    };
  });
  return {
    train: examples.slice(0, pairs - 100),
    valid: examples.slice(pairs - 100, pairs - 20),
    test: examples.slice(pairs - 20),
  };
}

async function tinySetup(tokenizerConfig: Record<string, unknown> = {}): Promise<Setup> {
  const splits = lexiconSplits(500);
  const { tokenizer, factory } = await tinyTranslator(splits, {
    vocabSize: 320,
    dModel: 32,
    ffn: 64,
    tokenizer: tokenizerConfig,
  });
  return { splits, tokenizer, factory };
}

const TINY_MODEL = {
  name: "transformer",
  config: { dModel: 32, heads: 2, ffn: 64, encoderLayers: 1, decoderLayers: 1, dropout: 0 },
};

const TINY_CONFIG = {
  model: TINY_MODEL,
  training: {
    steps: 200,
    batchSize: 32,
    learningRate: 0.01,
    warmupSteps: 30,
    evalEvery: 100,
    patience: 0,
    evalSize: 20,
    labelSmoothing: 0,
  },
  calibration: { sources: 20 },
  report: {
    sources: 20,
    temperatures: [1],
    corruptionsPerSource: 2,
    testSources: 10,
    samples: 8,
    withinSamples: 8,
  },
};

async function makeReward(config: Record<string, unknown>): Promise<DualXentReward> {
  const ref = await resolvePluginRef(registries, "reward", { name: "dual_xent", config }, "test");
  return await createPlugin(registries, "reward", ref, {
    seed: 1,
    baseDir: "/",
    smoke: false,
    log: () => {},
  }) as DualXentReward;
}

function context(setup: Setup, dir: string, logs: string[]): RewardPrepareContext {
  const valid = setup.splits.valid;
  const splits = { ...setup.splits, valid: valid.slice(0, 40), select: valid.slice(40) };
  return tinyPrepareContext(dir, { ...setup, splits }, { maxLen: 24, log: (m) => logs.push(m) });
}

Deno.test("swapSides: the backward view encodes each text with the side of its language", async () => {
  const { tokenizer, splits } = await tinySetup({ joint: false, vocabSize: 300 });
  const view = swapSides(tokenizer);
  const { source, reference } = splits.train[0];
  assert.notEqual(tokenizer.vocabSize("source"), 0);
  assert.equal(view.vocabSize("source"), tokenizer.vocabSize("target"));
  assert.equal(view.vocabSize("target"), tokenizer.vocabSize("source"));
  // The backward model's source is a target-language text, its target a source-language one.
  assert.deepEqual(view.encode(reference, "source"), tokenizer.encode(reference, "target"));
  assert.deepEqual(view.encode(source, "target"), tokenizer.encode(source, "source"));
  const ids = view.encode(source, "target");
  assert.equal(view.decode(ids, "target"), tokenizer.decode(ids, "source"));
  // With separate vocabularies the sides really differ, so a wrong side would be caught.
  assert.notDeepEqual(tokenizer.encode(reference, "source"), tokenizer.encode(reference, "target"));
  assert.throws(() => view.train({ sources: [], targets: [] }), /cannot be trained/);
});

Deno.test("crossEntropies: per-token NLL, independent of batching and padding; no leaks", async () => {
  const { factory } = await tinySetup();
  const policy = factory.build({
    sourceVocab: 50,
    targetVocab: 50,
    specials: { pad: 0, bos: 1, eos: 2, unk: 3 },
    valueHead: false,
    seed: 4,
  });
  const pairs = [
    { source: [5, 6, 7], target: [8, 9] },
    { source: [10, 11, 12, 13, 14, 15, 16, 17, 18], target: [20, 21, 22, 23, 24, 25, 26, 27] },
    { source: [30], target: [] },
  ];
  const before = tf.memory().numTensors;
  const together = await crossEntropies(policy, pairs, 8);
  const alone = await Promise.all(
    pairs.map(async (p) => (await crossEntropies(policy, [p], 1))[0]),
  );
  assert.equal(tf.memory().numTensors, before);
  for (let i = 0; i < pairs.length; i++) {
    assert.ok(Math.abs(together[i] - alone[i]) < 1e-5, `row ${i}: ${together[i]} vs ${alone[i]}`);
    assert.ok(together[i] > 0);
  }
  // An untrained model is close to uniform over the 50 ids: about log 50 nats per token.
  assert.ok(Math.abs(together[0] - Math.log(50)) < 1.5, `${together[0]}`);
  policy.dispose();
});

Deno.test("dual_xent: trained in prepare, ranks references above dropped content and unrelated references on held-out sources; reload and a killed run", async () => {
  const setup = await tinySetup();
  const dir = await Deno.makeTempDir();
  try {
    const logs: string[] = [];
    const reward = await makeReward(TINY_CONFIG);
    assert.equal(reward.needsReference, false);
    await assert.rejects(
      () => reward.score([{ source: "a", hypothesis: "b" }]),
      (e: unknown) => e instanceof UserError && /no models loaded/.test(e.message),
    );
    const ctx = context(setup, dir, logs);
    await reward.prepare(ctx);
    const text = logs.join("\n");
    assert.match(text, /forward: bc: \d+ training pairs/);
    assert.match(text, /backward: bc: \d+ training pairs/);
    assert.match(text, /calibration: reward = sigmoid\(/);
    assert.match(text, /held-out \(20 validation sources\): Pearson 0\.\d+/);

    // Held-out sources (the report half of validation, never trained on).
    const trainSources = new Set(setup.splits.train.map((e) => e.source));
    const held = ctx.splits.valid.filter((e) => !trainSources.has(e.source));
    assert.ok(held.length >= 35);
    const rng = new Rng(9);
    const rows = held.flatMap((e, i) => [
      { source: e.source, hypothesis: e.reference },
      { source: e.source, hypothesis: dropWords(e.reference, rng) },
      { source: e.source, hypothesis: held[(i + 1) % held.length].reference },
    ]);
    const scores = await reward.score(rows);
    assert.ok(scores.every((s) => s >= 0 && s <= 1), "scores in [0, 1]");
    let overDrop = 0;
    let overMismatch = 0;
    for (let i = 0; i < held.length; i++) {
      if (scores[3 * i] > scores[3 * i + 1]) overDrop++;
      if (scores[3 * i] > scores[3 * i + 2]) overMismatch++;
    }
    assert.ok(
      overDrop >= 0.85 * held.length,
      `reference above dropped: ${overDrop}/${held.length}`,
    );
    assert.ok(
      overMismatch >= 0.9 * held.length,
      `reference above unrelated: ${overMismatch}/${held.length}`,
    );
    const heldOut = reward.heldOut!;
    assert.ok(heldOut.pearson > 0.5, `held-out Pearson ${heldOut.pearson}`);
    const report = (await readMeta(dir)).report;
    assert.equal(report.sources, 10);
    assert.ok(report.within_sources > 0, "within-source Kendall measured");
    assert.equal(typeof report["bon_chrf@8"], "number");
    const records = await readMetrics(join(dir, "metrics.jsonl"));
    assert.ok(records.some((r) => r["dual_xent/heldout_pearson"] === heldOut.pearson));
    assert.ok(records.some((r) => typeof r["dual_xent/report_within_kendall"] === "number"));
    assert.equal(
      (await Deno.readTextFile(join(dir, "heldout.jsonl"))).trim().split("\n").length,
      20 * (1 + 1 + 2),
    );
    // Scoring leaks no tensors.
    const tensors = tf.memory().numTensors;
    await reward.score(rows.slice(0, 5));
    assert.equal(tf.memory().numTensors, tensors);

    // A fresh instance reloads both models and the calibration: identical scores, no training,
    // no BC policy.
    const again = await makeReward(TINY_CONFIG);
    const logs2: string[] = [];
    const ctx2 = context(setup, dir, logs2);
    ctx2.bcPolicy = () => Promise.reject(new Error("reloading must not sample"));
    await again.prepare(ctx2);
    assert.match(logs2.join("\n"), /forward: bc: loaded .*forward\/policy\.json/);
    assert.match(logs2.join("\n"), /backward: bc: loaded .*backward\/policy\.json/);
    assert.match(
      logs2.join("\n"),
      /reloaded .*dual_xent\.json: held-out Pearson .*; test samples: pooled Pearson/,
    );
    assert.doesNotMatch(logs2.join("\n"), /training pairs/);
    assert.deepEqual(await again.score(rows), scores);

    // A run killed while writing the backward model: its weights half-written, no policy.json,
    // and dual_xent.json from the earlier complete run. The half-written model is never
    // loaded: the backward model is retrained (deterministically, so the scores come back
    // identical) and the calibration recomputed.
    const killed = await Deno.makeTempDir();
    try {
      await copyDir(dir, killed);
      const backward = join(killed, "backward");
      for await (const entry of Deno.readDir(backward)) {
        if (entry.name.startsWith("policy-") && entry.name.endsWith(".bin")) {
          const bytes = await Deno.readFile(join(backward, entry.name));
          await Deno.writeFile(join(backward, entry.name), bytes.slice(0, bytes.length >> 1));
        }
      }
      await Deno.remove(join(backward, "policy.json"));
      const resumed = await makeReward(TINY_CONFIG);
      const logs3: string[] = [];
      await resumed.prepare(context(setup, killed, logs3));
      const text3 = logs3.join("\n");
      assert.match(text3, /forward: bc: loaded/);
      assert.match(text3, /backward: bc: \d+ training pairs/);
      assert.doesNotMatch(text3, /backward: bc: loaded/);
      assert.doesNotMatch(text3, /reloaded .*dual_xent\.json/);
      assert.deepEqual(await resumed.score(rows), scores);
    } finally {
      await Deno.remove(killed, { recursive: true });
    }

    // A folder trained with another tokenizer is refused.
    const other = await tinySetup({ vocabSize: 300 });
    const mismatched = await makeReward(TINY_CONFIG);
    await assert.rejects(
      () => mismatched.prepare(context(other, dir, [])),
      (e: unknown) => e instanceof UserError && /different tokenizer/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function readMeta(dir: string) {
  return JSON.parse(await Deno.readTextFile(join(dir, "dual_xent.json")));
}

async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const entry of Deno.readDir(from)) {
    if (entry.isDirectory) await copyDir(join(from, entry.name), join(to, entry.name));
    else await Deno.copyFile(join(from, entry.name), join(to, entry.name));
  }
}

Deno.test("dual_xent: a corrupt dual_xent.json is a user error naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const setup = await tinySetup();
    const config = {
      ...TINY_CONFIG,
      training: { ...TINY_CONFIG.training, steps: 2, evalEvery: 0 },
      calibration: { method: "none" },
      report: { sources: 0, testSources: 0 },
    };
    await (await makeReward(config)).prepare(context(setup, dir, []));
    await Deno.writeTextFile(join(dir, "dual_xent.json"), "{not json");
    await assert.rejects(
      async () => await (await makeReward(config)).prepare(context(setup, dir, [])),
      (e: unknown) => e instanceof UserError && /dual_xent\.json: not valid JSON/.test(e.message),
    );
    await Deno.writeTextFile(join(dir, "dual_xent.json"), '{"format": "other"}');
    await assert.rejects(
      async () => await (await makeReward(config)).prepare(context(setup, dir, [])),
      (e: unknown) => e instanceof UserError && /not a dual_xent reward file/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dual_xent: config errors name the option", async () => {
  const bad = configRejecter("reward", "dual_xent");
  await bad({ calibration: { method: "platt" } }, /\/calibration\/method/);
  await bad({ calibration: { temperature: 0 } }, /\/calibration\/temperature/);
  await bad({ training: { steps: 0 } }, /\/training\/steps: must be at least 1/);
  await bad({ training: { stepz: 10 } }, /\/training.*stepz/);
  await bad({ model: "transformr" }, /transformer/);
  await bad({ model: { name: "transformer", config: { dModel: 30, heads: 4 } } }, /heads/);
  await bad({ report: { samples: 0 } }, /\/report\/samples/);
  await bad(
    { report: { samples: 4, withinSamples: 8 } },
    /\/report\/withinSamples: must not exceed/,
  );
  // The default config resolves, with the nested model filled in.
  const ref = await resolvePluginRef(registries, "reward", "dual_xent", "m.json");
  const model = ref.config.model as { name: string; config: Record<string, unknown> };
  assert.equal(model.name, "transformer");
  assert.equal(model.config.dModel, 128);
  assert.equal((ref.config.training as { steps: number }).steps, 3000);
  assert.equal(typeof dualXent.smoke, "function");
});

Deno.test("dual_xent: nested in weighted, prepared in its component folder and averaged", async () => {
  const setup = await tinySetup();
  const dir = await Deno.makeTempDir();
  try {
    const dual = {
      ...TINY_CONFIG,
      training: { ...TINY_CONFIG.training, steps: 20, evalEvery: 0 },
      calibration: { method: "none" },
      report: { sources: 0, testSources: 0 },
    };
    const ref = await resolvePluginRef(registries, "reward", {
      name: "weighted",
      config: {
        components: [
          { reward: { name: "dual_xent", config: dual }, weight: 3 },
          { reward: "chrf", weight: 1 },
        ],
      },
    }, "test");
    const deps = { seed: 1, baseDir: "/", smoke: false, log: () => {} };
    const weighted = await createPlugin(registries, "reward", ref, deps);
    await weighted.prepare!(context(setup, dir, []));
    assert.ok(await exists(join(dir, "component_0", "forward", "policy.json")));
    assert.ok(await exists(join(dir, "component_0", "dual_xent.json")));
    // The same dual_xent alone, reloaded from that folder.
    const alone = await makeReward(dual);
    await alone.prepare(context(setup, join(dir, "component_0"), []));
    const rows = setup.splits.valid.slice(0, 6).map((e, i) => ({
      source: e.source,
      hypothesis: setup.splits.valid[i + 1].reference,
      reference: e.reference,
    }));
    const mixed = await weighted.score(rows);
    const parts = await alone.score(rows);
    const chrf = rows.map((r) => sentenceChrf(r.hypothesis, r.reference) / 100);
    mixed.forEach((s, i) => {
      const expected = 0.75 * parts[i] + 0.25 * chrf[i];
      assert.ok(Math.abs(s - expected) < 1e-9, `row ${i}: ${s} vs ${expected}`);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
