/**
 * The `learned` reward: corruptions, correlation statistics, training in prepare() on a
 * tiny synthetic setup, save/reload, errors, config checks, and an end-to-end experiment.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import cpu from "../../plugins/backends/cpu.ts";
import learned, { buildRows, sharesIds, smokeLearned } from "../../plugins/rewards/learned/mod.ts";
import { kendallTauB, pearson } from "../../core/metrics/correlation.ts";
import {
  corrupt,
  CORRUPTION_KINDS,
  dropWords,
  repeatWords,
  shuffleWords,
  truncateWords,
} from "../../plugins/rewards/_corrupt.ts";
import { QeModel } from "../../plugins/rewards/learned/model.ts";
import { Rng } from "../../core/random.ts";
import { UserError } from "../../core/errors.ts";
import { resolvePluginRef } from "../../core/manifest/mod.ts";
import { createRegistries } from "../../core/registry.ts";
import { readMetrics } from "../../core/run.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import type {
  ModelFactory,
  RewardModel,
  RewardPrepareContext,
  Splits,
  Tokenizer,
} from "../../core/types.ts";
import {
  configRejecter,
  createReward,
  runTiny,
  tinyManifest,
  withTempDir,
} from "../_experiment.ts";
import { tinyPrepareContext, tinySyntheticSplits, tinyTranslator } from "./_tiny_translator.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

const registries = createRegistries(builtinPlugins);

// --- corruptions ---------------------------------------------------------------------------

const TEXT = "the quick brown fox jumps over the lazy dog today";
const WORDS = TEXT.split(" ");

function isSubsequence(small: string[], big: string[]): boolean {
  let j = 0;
  for (const w of big) if (j < small.length && small[j] === w) j++;
  return j === small.length;
}

Deno.test("corruptions: deterministic from the seed, and different seeds differ", () => {
  for (const fn of [dropWords, repeatWords, shuffleWords, truncateWords]) {
    assert.equal(fn(TEXT, new Rng(7)), fn(TEXT, new Rng(7)), fn.name);
    const outputs = new Set(Array.from({ length: 12 }, (_, s) => fn(TEXT, new Rng(s))));
    assert.ok(outputs.size > 1, `${fn.name} varies with the seed`);
  }
});

Deno.test("corruptions: drop removes words (a subsequence), repeat adds a repeated span", () => {
  for (let seed = 0; seed < 40; seed++) {
    const dropped = dropWords(TEXT, new Rng(seed)).split(" ");
    assert.ok(dropped.length < WORDS.length && dropped.length >= 1, `seed ${seed}`);
    assert.ok(dropped.length >= Math.floor(WORDS.length * 0.4) - 1, `at most ~60 % dropped`);
    assert.ok(isSubsequence(dropped, WORDS), `drop keeps order (seed ${seed})`);

    const repeated = repeatWords(TEXT, new Rng(seed)).split(" ");
    const extra = repeated.length - WORDS.length;
    assert.ok(extra >= 1 && extra <= 9, `repeat adds 1-9 words (seed ${seed}): ${extra}`);
    assert.ok(isSubsequence(WORDS, repeated), `the original is still there (seed ${seed})`);
    // The extra words are copies of the words just before them.
    let start = 0;
    while (repeated[start] === WORDS[start]) start++;
    const inserted = repeated.slice(start, start + extra);
    assert.ok(inserted.every((w) => WORDS.includes(w)));
    assert.deepEqual(repeated.slice(start + extra), WORDS.slice(start));
  }
});

Deno.test("corruptions: shuffle permutes, truncate keeps a proper prefix", () => {
  for (let seed = 0; seed < 40; seed++) {
    const shuffled = shuffleWords(TEXT, new Rng(seed)).split(" ");
    assert.deepEqual([...shuffled].sort(), [...WORDS].sort(), "same words");
    assert.notDeepEqual(shuffled, WORDS, `order changed (seed ${seed})`);

    const cut = truncateWords(TEXT, new Rng(seed));
    const cutWords = cut === "" ? [] : cut.split(" ");
    assert.ok(cutWords.length < WORDS.length);
    assert.deepEqual(cutWords, WORDS.slice(0, cutWords.length));
  }
  // Two different words always change order.
  for (let seed = 0; seed < 10; seed++) assert.equal(shuffleWords("a b", new Rng(seed)), "b a");
});

Deno.test("corruptions: one-word texts are damaged inside the word", () => {
  const word = "Abbrechen";
  for (let seed = 0; seed < 20; seed++) {
    const dropped = dropWords(word, new Rng(seed));
    assert.ok(dropped.length < word.length && isSubsequence([...dropped], [...word]));
    const shuffled = shuffleWords(word, new Rng(seed));
    assert.equal([...shuffled].sort().join(""), [...word].sort().join(""));
    assert.notEqual(shuffled, word);
    const cut = truncateWords(word, new Rng(seed));
    assert.ok(cut.length < word.length && word.startsWith(cut));
    assert.match(repeatWords(word, new Rng(seed)), /^Abbrechen( Abbrechen){1,3}$/);
  }
  assert.equal(dropWords("", new Rng(1)), "");
  assert.equal(repeatWords("  ", new Rng(1)), "");
});

Deno.test("corruptions: copy_source and mismatch, and corrupt() dispatches every kind", () => {
  const input = { text: TEXT, source: "source text", other: "another reference" };
  assert.equal(corrupt("copy_source", input, new Rng(1)), "source text");
  assert.equal(corrupt("mismatch", input, new Rng(1)), "another reference");
  assert.equal(corrupt("drop", input, new Rng(3)), dropWords(TEXT, new Rng(3)));
  for (const kind of CORRUPTION_KINDS) {
    assert.notEqual(corrupt(kind, input, new Rng(5)), TEXT, kind);
    assert.equal(corrupt(kind, input, new Rng(5)), corrupt(kind, input, new Rng(5)), kind);
  }
});

Deno.test("buildRows: references, samples and corruptions per source, deterministic", () => {
  const examples = [
    { source: "a b c", reference: "x y z" },
    { source: "d e", reference: "u v w" },
  ];
  const samples = [[{ text: "x y", kind: "sample_t1" }], [{ text: "u", kind: "sample_t1" }]];
  const dataset = {
    references: true,
    corruptionsPerSource: 3,
    corruptions: Object.fromEntries(CORRUPTION_KINDS.map((k) => [k, 1])),
  };
  const rows = buildRows(examples, samples, dataset, new Rng(4));
  assert.equal(rows.length, 2 * (1 + 1 + 3));
  assert.deepEqual(rows, buildRows(examples, samples, dataset, new Rng(4)));
  assert.deepEqual(rows.slice(0, 2).map((r) => [r.kind, r.hypothesis]), [
    ["reference", "x y z"],
    ["sample_t1", "x y"],
  ]);
  for (const row of rows) {
    assert.equal(row.reference, examples.find((e) => e.source === row.source)!.reference);
    if (row.kind === "copy_source") assert.equal(row.hypothesis, row.source);
    if (row.kind === "mismatch") assert.notEqual(row.hypothesis, row.reference);
  }
  const none = buildRows(examples, [[], []], {
    ...dataset,
    references: false,
    corruptionsPerSource: 0,
  }, new Rng(1));
  assert.deepEqual(none, []);
});

// --- the network ---------------------------------------------------------------------------

const TINY_ARCH = {
  dModel: 16,
  heads: 2,
  ffn: 32,
  layers: 1,
  hidden: 16,
  dropout: 0,
  maxTokens: 24,
};

Deno.test("QE model: padding and batching do not change a row's score; no tensor leaks", () => {
  const model = new QeModel(TINY_ARCH, {
    sourceVocab: 20,
    targetVocab: 30,
    joint: false,
    pad: 0,
    eos: 2,
  }, 3);
  const items = [
    { source: [4, 5, 6], hypothesis: [7, 8], sourceChars: 9, hypothesisChars: 5 },
    {
      source: [9, 10, 11, 12, 13, 14],
      hypothesis: [25, 26, 27, 28, 29],
      sourceChars: 20,
      hypothesisChars: 15,
    },
    { source: [5], hypothesis: [], sourceChars: 2, hypothesisChars: 0 },
  ];
  const before = tf.memory().numTensors;
  const together = model.predict(items, 8);
  const alone = items.map((item) => model.predict([item], 1)[0]);
  for (let i = 0; i < items.length; i++) {
    assert.ok(Math.abs(together[i] - alone[i]) < 1e-6, `row ${i}: ${together[i]} vs ${alone[i]}`);
    assert.ok(together[i] >= 0 && together[i] <= 1);
  }
  assert.deepEqual(model.predict(items, 8), together, "deterministic");
  assert.equal(tf.memory().numTensors, before);
  // Target ids are checked against the target vocabulary.
  assert.throws(
    () => model.predict([{ ...items[0], hypothesis: [30] }], 1),
    /hypothesis id 30 outside \[0, 30\)/,
  );
  model.dispose();
});

// --- prepare on a tiny synthetic setup -----------------------------------------------------

interface Setup {
  splits: Splits;
  tokenizer: Tokenizer;
  factory: ModelFactory;
}

async function tinySetup(vocabSize = 320): Promise<Setup> {
  const splits = await tinySyntheticSplits(400, 60);
  const { tokenizer, factory } = await tinyTranslator(splits, { vocabSize, dModel: 16, ffn: 32 });
  return { splits, tokenizer, factory };
}

const TINY_CONFIG = {
  model: { ...TINY_ARCH, dropout: 0.1 },
  training: { steps: 80, batchSize: 32, learningRate: 0.004, warmupSteps: 10 },
  dataset: { sources: 150, temperatures: [1], corruptionsPerSource: 3 },
  heldOut: 0.3,
  report: { sources: 12, samples: 8 },
};

function makeReward(config: Record<string, unknown>, baseDir = "/"): Promise<RewardModel> {
  return createReward("learned", config, baseDir);
}

function makeWeighted(components: unknown[]): Promise<RewardModel> {
  return createReward("weighted", { components });
}

function context(setup: Setup, dir: string, logs: string[]): RewardPrepareContext {
  let policies = 0;
  const splits = { ...setup.splits, select: setup.splits.valid };
  return tinyPrepareContext(dir, { ...setup, splits }, {
    maxLen: 16,
    log: (m) => logs.push(m),
    bcSeed: () => 5 + ++policies,
  });
}

Deno.test("learned: prepare trains, correlates with chrF on held-out rows, saves, reloads identically", async () => {
  const setup = await tinySetup();
  assert.ok(sharesIds(setup.tokenizer), "bpe's default vocabulary is joint");
  const dir = await Deno.makeTempDir();
  try {
    const logs: string[] = [];
    const reward = await makeReward(TINY_CONFIG);
    assert.equal(reward.needsReference, false);
    await assert.rejects(
      () => reward.score([{ source: "a", hypothesis: "b" }]),
      (e: unknown) => e instanceof UserError && /no model loaded/.test(e.message),
    );
    const tensorsBefore = tf.memory().numTensors;
    await reward.prepare!(context(setup, dir, logs));
    assert.ok(
      logs.some((l) => /^training a QE model to predict chrf on \d+ rows/.test(l)),
      logs.join("\n"),
    );
    assert.ok(logs.some((l) => /held-out Pearson 0\.\d+, Kendall/.test(l)), logs.join("\n"));
    assert.ok(
      logs.some((l) =>
        /^held-out report on test sources: pooled Pearson .* over 12 sources x 8 samples; within-source Kendall .*Best-of-N chrF 1: [\d.]+, 2: .*, 8: [\d.]+$/
          .test(l)
      ),
      logs.join("\n"),
    );

    // The held-out rows come from validation sources and are written out with predictions.
    const valid = new Set(setup.splits.valid.map((e) => e.source));
    const held = (await Deno.readTextFile(join(dir, "heldout.jsonl"))).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.equal(held.length, Math.ceil(0.3 * 150) * (1 + 1 + 3));
    assert.ok(held.every((r) => valid.has(r.source)));
    for (const r of held.slice(0, 20)) {
      assert.ok(Math.abs(r.target - sentenceChrf(r.hypothesis, r.reference) / 100) < 1e-9);
    }
    const targets = held.map((r) => r.target);
    const scores = await reward.score(held);
    assert.ok(pearson(scores, targets) > 0.6, `held-out Pearson ${pearson(scores, targets)}`);
    assert.ok(
      kendallTauB(scores, targets) > 0.45,
      `held-out Kendall ${kendallTauB(scores, targets)}`,
    );
    assert.ok(scores.every((s) => s >= 0 && s <= 1));

    const records = await readMetrics(join(dir, "metrics.jsonl"));
    const last = records.findLast((r) => "learned/heldout_rows" in r)!;
    assert.ok((last["learned/heldout_pearson"] as number) > 0.6);
    const report = records[records.length - 1];
    assert.equal(report["learned/report_sources"], 12);
    assert.equal(typeof report["learned/report_bon_chrf@8"], "number");
    assert.equal(last["learned/heldout_rows"], held.length);
    assert.ok(records.some((r) => typeof r["learned/loss"] === "number"));

    // Scoring leaks no tensors (the model's own weights were added by prepare).
    const afterPrepare = tf.memory().numTensors;
    const weights = (reward as unknown as { model: QeModel }).model.variables.length;
    assert.equal(afterPrepare, tensorsBefore + weights, "training leaves only the weights");
    await reward.score(held);
    await reward.score(held.slice(0, 3));
    assert.equal(tf.memory().numTensors, afterPrepare);

    // A fresh instance reloads the saved model and scores identically, without a policy.
    const again = await makeReward(TINY_CONFIG);
    const logs2: string[] = [];
    const ctx2 = context(setup, dir, logs2);
    ctx2.bcPolicy = () => Promise.reject(new Error("reloading must not sample"));
    await again.prepare!(ctx2);
    assert.ok(
      logs2.some((l) => /^reloaded .*qe_model\.json \(held-out Pearson/.test(l)),
      logs2.join("\n"),
    );
    assert.deepEqual(await again.score(held), scores);

    // `path` loads it into another experiment's reward (same tokenizer).
    const viaPath = await makeReward({ ...TINY_CONFIG, path: "qe_model.json" }, dir);
    const other = await Deno.makeTempDir();
    const logs3: string[] = [];
    await viaPath.prepare!(context(setup, other, logs3));
    assert.ok(
      logs3.some((l) => l.startsWith(`loaded ${join(dir, "qe_model.json")}`)),
      logs3.join("\n"),
    );
    assert.deepEqual(await viaPath.score(held.slice(0, 10)), scores.slice(0, 10));
    await Deno.remove(other, { recursive: true });

    // Outside an experiment (deno task score, a weighted component), `path` loads the model
    // and the tokenizer saved with it: no prepare() needed.
    const standalone = await makeReward({ ...TINY_CONFIG, path: dir }, "/");
    assert.deepEqual(await standalone.score(held.slice(0, 10)), scores.slice(0, 10));
    const weighted = await makeWeighted([
      { reward: { name: "learned", config: { path: join(dir, "qe_model.json") } }, weight: 1 },
      { reward: "chrf", weight: 1 },
    ]);
    const mixed = await weighted.score(held.slice(0, 10));
    held.slice(0, 10).forEach((r, i) => {
      const expected = (scores[i] + sentenceChrf(r.hypothesis, r.reference) / 100) / 2;
      assert.ok(Math.abs(mixed[i] - expected) < 1e-9, `row ${i}: ${mixed[i]} vs ${expected}`);
    });
    const index = JSON.parse(await Deno.readTextFile(join(dir, "qe_model.json")));
    assert.equal(index.meta.report.samples, 8);

    // A model trained with another tokenizer is refused.
    const otherSetup = await tinySetup(300);
    const mismatched = await makeReward(TINY_CONFIG);
    await assert.rejects(
      () => mismatched.prepare!(context(otherSetup, dir, [])),
      (e: unknown) => e instanceof UserError && /different tokenizer/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("learned: smoke mode shrinks the default budget to a few seconds", async () => {
  const setup = await tinySetup();
  const dir = await Deno.makeTempDir();
  try {
    const reward = await makeReward({});
    const logs: string[] = [];
    const started = performance.now();
    await reward.prepare!({ ...context(setup, dir, logs), smoke: true });
    const seconds = (performance.now() - started) / 1000;
    assert.ok(
      logs.some((l) => / rows from 24 training sources; \d+ held-out rows from 3 /.test(l)),
      logs.join("\n"),
    );
    const records = await readMetrics(join(dir, "metrics.jsonl"));
    assert.equal(records[records.length - 1].step, 20);
    const index = JSON.parse(await Deno.readTextFile(join(dir, "qe_model.json")));
    assert.equal(index.config.architecture.dModel, 32);
    assert.ok(seconds < 60, `smoke prepare took ${seconds.toFixed(1)}s`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("learned: a missing path and a corrupt model file are user errors", async () => {
  const setup = await tinySetup();
  const dir = await Deno.makeTempDir();
  try {
    const missing = await makeReward({ path: "nowhere" }, dir);
    await assert.rejects(
      () => missing.prepare!(context(setup, join(dir, "r"), [])),
      (e: unknown) =>
        e instanceof UserError && /no saved model at .*nowhere\/qe_model\.json/.test(e.message),
    );
    await Deno.writeTextFile(join(dir, "qe_model.json"), "{not json");
    const corrupt = await makeReward({ path: "." }, dir);
    await assert.rejects(
      () => corrupt.prepare!(context(setup, join(dir, "r"), [])),
      (e: unknown) => e instanceof UserError && /qe_model\.json: not valid JSON/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("learned: config checks and the smoke rule", async () => {
  const bad = configRejecter("reward", "learned");
  await bad({ target: "learned" }, /\/config\/target: cannot be the learned reward itself/);
  await bad(
    { model: { dModel: 30, heads: 4 } },
    /\/config\/model\/heads: must divide model\.dModel \(30\)/,
  );
  await bad({ target: "chfr" }, /did you mean "chrf"/);
  await bad({ dataset: { corruptions: { explode: 1 } } }, /\/config\/dataset\/corruptions/);
  await bad(
    { dataset: { corruptions: Object.fromEntries(CORRUPTION_KINDS.map((k) => [k, 0])) } },
    /\/config\/dataset\/corruptions: must give a positive weight/,
  );
  await bad(
    { dataset: { references: false, temperatures: [], corruptionsPerSource: 0 } },
    /makes no training rows/,
  );
  const ref = await resolvePluginRef(
    registries,
    "reward",
    { name: "learned", config: { target: { name: "chrf", config: { wordOrder: 2 } } } },
    "m.json",
  );
  assert.deepEqual((ref.config.target as { config: unknown }).config, {
    charOrder: 6,
    wordOrder: 2,
    beta: 2,
    lowercase: false,
    whitespace: false,
  });
  const small = smokeLearned(ref.config as never);
  assert.ok(small.training.steps <= 20 && small.dataset.sources <= 24);
  assert.deepEqual(smokeLearned(small), small, "idempotent");
  assert.equal(learned.name, "learned");
});

// --- end to end ----------------------------------------------------------------------------

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.isDirectory) continue;
    const path = join(dir, entry.name);
    yield path;
    yield* walk(path);
  }
}

Deno.test("learned: an experiment trains the reward once into rewards/<name>-<hash>/ and a second run reloads it", async () => {
  await withTempDir(async (out) => {
    const manifest = tinyManifest({
      experiment: "learned_e2e",
      seed: 2,
      data: { name: "synthetic", config: { pairs: 300 } },
      tokenizer: { name: "bpe", config: { vocabSize: 320 } },
      bc: { steps: 4, batchSize: 16, warmupSteps: 2, evalEvery: 0, evalSize: 4 },
      evaluation: { maxLen: 12, validSize: 8, testSize: 8 },
      reward: {
        name: "learned",
        config: {
          model: TINY_ARCH,
          training: { steps: 30, batchSize: 32, learningRate: 0.003, warmupSteps: 5 },
          dataset: { sources: 40, temperatures: [1], corruptionsPerSource: 2 },
          heldOut: 0.25,
        },
      },
      runs: [
        { name: "first", algorithm: "baselines" },
        { name: "second", algorithm: "baselines" },
      ],
    });
    const { result, logs } = await runTiny(manifest, out, { registries });
    // The reward folder is <experiment>/.../rewards/learned-<hash>/ (one per reward config).
    const folders: string[] = [];
    for await (const entry of walk(result.dir)) {
      if (/\/rewards\/learned-[0-9a-f]{8}$/.test(entry)) folders.push(entry);
    }
    assert.equal(folders.length, 1, `one reward folder: ${folders}`);
    const rewardDir = folders[0];
    const index = JSON.parse(await Deno.readTextFile(join(rewardDir, "qe_model.json")));
    assert.equal(index.meta.format, "rest-learned-reward");
    assert.ok(index.meta.heldOut.rows > 0);
    const weights = index.file ?? "qe_model.bin";
    for (const file of [weights, "metrics.jsonl", "heldout.jsonl"]) {
      assert.ok((await Deno.stat(join(rewardDir, file))).isFile, file);
    }
    const trained = logs.filter((l) => /^reward: trained in /.test(l));
    const reloaded = logs.filter((l) => /^reward: reloaded .*qe_model\.json/.test(l));
    assert.equal(trained.length, 1, logs.join("\n"));
    assert.equal(reloaded.length, 1, logs.join("\n"));
    assert.ok(logs.indexOf(trained[0]) < logs.indexOf(reloaded[0]));
    // Both runs scored with the same model: identical baselines.
    const a = result.runs.first.metrics;
    const b = result.runs.second.metrics;
    assert.equal(a["eval/valid_reward_copy"], b["eval/valid_reward_copy"]);
    assert.ok(a["eval/valid_reward_reference"] >= 0 && a["eval/valid_reward_reference"] <= 1);
  });
});

Deno.test("learned: nested in weighted (prepared in component_<i>/), and loaded by `deno task score`", async () => {
  const setup = await tinySetup();
  const dir = await Deno.makeTempDir();
  try {
    const tiny = {
      ...TINY_CONFIG,
      training: { steps: 10, batchSize: 32, warmupSteps: 2 },
      dataset: { sources: 30, temperatures: [], corruptionsPerSource: 2 },
      report: { sources: 0 },
    };
    const weighted = await makeWeighted([{ reward: { name: "learned", config: tiny } }, {
      reward: "chrf",
    }]);
    const rows = setup.splits.valid.slice(0, 5).map((e) => ({ ...e, hypothesis: e.reference }));
    await assert.rejects(() => weighted.score(rows), /learned reward: no model loaded/);
    const logs: string[] = [];
    await weighted.prepare!(context(setup, dir, logs));
    assert.ok(logs.some((l) => /^learned: trained in /.test(l)), logs.join("\n"));
    const saved = join(dir, "component_0", "qe_model.json");
    assert.ok((await Deno.stat(saved)).isFile);
    const scores = await weighted.score(rows);
    assert.ok(scores.every((s) => s >= 0 && s <= 1));

    // The score CLI loads the same model by path (the tokenizer comes from the model folder).
    await Deno.writeTextFile(join(dir, "src.txt"), rows.map((r) => r.source).join("\n") + "\n");
    await Deno.writeTextFile(join(dir, "hyp.txt"), rows.map((r) => r.hypothesis).join("\n") + "\n");
    const cli = (config: unknown) =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-read",
          "--allow-env",
          "cli/score.ts",
          "--reward",
          "learned",
          "--config",
          JSON.stringify(config),
          "--src",
          join(dir, "src.txt"),
          "--hyp",
          join(dir, "hyp.txt"),
          "--json",
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const out = await cli({ path: saved });
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const learnedOnly = await makeReward({ path: saved });
    const { scores: cliScores } = JSON.parse(new TextDecoder().decode(out.stdout));
    const direct = await learnedOnly.score(rows);
    cliScores.forEach((s: number, i: number) => assert.ok(Math.abs(s - direct[i]) < 1e-6));

    // A missing model, and one saved without its tokenizer, are user errors (exit code 2).
    const missing = await cli({ path: join(dir, "nowhere") });
    assert.equal(missing.code, 2);
    assert.match(new TextDecoder().decode(missing.stderr), /no saved model at .*nowhere/);
    await Deno.remove(join(dir, "component_0", "qe_model.tokenizer.json"));
    const bare = await cli({ path: saved });
    assert.equal(bare.code, 2);
    assert.match(new TextDecoder().decode(bare.stderr), /was saved without its tokenizer/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
