import assert from "node:assert/strict";
import { sampleInOrder } from "../../core/random.ts";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import cpu from "../../plugins/backends/cpu.ts";
import { tinyTransformerFactory } from "../plugins/_tiny_translator.ts";
import bcLoss from "../../plugins/losses/bc.ts";
import fixed from "../../plugins/thresholds/fixed.ts";
import {
  checkDiskSpace,
  estimateGrowBytes,
  filterRows,
  grow,
  GrowPool,
  improve,
  improveLearningRate,
  readGrowFile,
  type RestContext,
  scoreTokens,
  writeGrowFile,
} from "../../core/rest.ts";
import { DataError, UserError } from "../../core/errors.ts";
import type {
  Example,
  Executor,
  GrowRow,
  GrowSettings,
  Loss,
  Metrics,
  Policy,
  RewardModel,
  ThresholdSchedule,
  Tokenizer,
} from "../../core/types.ts";
import { fakeTokenizer } from "./_fakes.ts";
import { referenceBehaviour } from "../_behaviour_reference.ts";
import { pluginDefaults } from "../../core/plugin.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import { profiler } from "../../core/profile.ts";
import { checkShardRows, planShards, rowsChecksum, shardSeed } from "../../core/shards.ts";
import { tinyEvalSettings } from "../_experiment.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

function row(source: string, reward: number, origin: GrowRow["origin"] = "sample"): GrowRow {
  return {
    source,
    hypothesis: `${source}-${reward}`,
    reference: source,
    reward,
    tokens: [4, 2],
    logProbs: [-0.5, -0.1],
    origin,
  };
}

Deno.test("filtering keeps rewards strictly above tau, globally or per source", () => {
  const rows = [row("a", 0.5), row("a", 0.7), row("b", 0.7), row("b", 0.9), row("c", 1)];
  assert.deepEqual(filterRows(rows, 0.7).map((r) => r.reward), [0.9, 1]);
  assert.deepEqual(filterRows(rows, 0.5).map((r) => r.reward), [0.7, 0.7, 0.9, 1]);
  assert.equal(filterRows(rows, 1).length, 0);
  const perSource = new Map([["a", 0.6], ["b", 0.9]]);
  // "b" at exactly 0.9 is dropped; "c" has no threshold and is dropped.
  assert.deepEqual(filterRows(rows, perSource).map((r) => `${r.source}${r.reward}`), ["a0.7"]);
});

Deno.test("a Grow file round-trips; truncation and bad rows are named with file and line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "grow_1.jsonl");
    const rows = [row('ä "quoted"\n', 0.25), row("x", 1, "reference"), row("y", 0)];
    await writeGrowFile(path, rows);
    assert.deepEqual(await readGrowFile(path), rows);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "grow_1.jsonl",
      "grow_1.record.json",
    ]);

    const text = await Deno.readTextFile(path);
    await Deno.writeTextFile(path, text.slice(0, text.length - 20));
    await assert.rejects(() => readGrowFile(path), (e: Error) => {
      assert.ok(e instanceof DataError);
      assert.match(e.message, /grow_1\.jsonl:3: not a JSON line/);
      return true;
    });
    await Deno.writeTextFile(path, JSON.stringify({ ...rows[0], reward: 1.5 }) + "\n");
    await assert.rejects(() => readGrowFile(path), /grow_1\.jsonl:1: not a valid Grow row/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// A tiny copy task: the target is the source, character by character.
const WORDS = ["abc", "bca", "cab", "acb", "bac", "cba", "aab", "bba", "cca", "abb"];
function poolOf(rows: readonly GrowRow[]): GrowPool {
  const pool = new GrowPool();
  pool.addAll(rows);
  return pool;
}

const EXAMPLES: Example[] = WORDS.map((w) => ({ source: w, reference: w }));
const CHRF: RewardModel = {
  needsReference: true,
  score: (rows) =>
    Promise.resolve(rows.map((r) => sentenceChrf(r.hypothesis, r.reference ?? "") / 100)),
};

async function setup() {
  const tokenizer = fakeTokenizer.create({}, {} as never) as Tokenizer;
  tokenizer.train({ sources: WORDS, targets: WORDS });
  const factory = tinyTransformerFactory();
  const build = (seed: number) =>
    factory.build({
      sourceVocab: tokenizer.vocabSize("source"),
      targetVocab: tokenizer.vocabSize("target"),
      specials: tokenizer.specials,
      valueHead: false,
      seed,
    });
  const dir = await Deno.makeTempDir();
  const records: Metrics[] = [];
  const ctx: RestContext = {
    dir,
    tokenizer,
    reward: CHRF,
    metrics: {
      log: (record) => {
        records.push(record);
        return Promise.resolve();
      },
    },
    progress: () => ({ tick() {}, done() {} }),
    log: () => {},
  };
  return { tokenizer, build, dir, ctx, records };
}

/** How the Improve steps under test score candidates on the selection split. */
const SELECT_EVAL = tinyEvalSettings({ batchSize: 8 });

const GROW: GrowSettings = {
  samplesPerSource: 3,
  temperature: 0.8,
  topK: 0,
  topP: 1,
  maxLen: 8,
  batchSize: 4,
  includeOriginal: true,
  sources: 0,
};

function weights(policy: Policy): Float32Array {
  return policy.save().data;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("Grow stores scored samples and originals once; a second call reuses the file", async () => {
  const { build, dir, ctx, records } = await setup();
  const policy = build(1);
  try {
    const rows = await grow(policy, EXAMPLES, GROW, ctx, 1, 11);
    assert.equal(rows.length, EXAMPLES.length * 4);
    assert.equal(rows.filter((r) => r.origin === "reference").length, EXAMPLES.length);
    for (const r of rows) {
      assert.equal(r.tokens.length, r.logProbs.length);
      assert.ok(r.reward >= 0 && r.reward <= 1);
      if (r.origin === "reference") assert.equal(r.reward, 1);
    }
    assert.deepEqual(await readGrowFile(join(dir, "grow_1.jsonl")), rows);
    const stat = await Deno.stat(join(dir, "grow_1.jsonl"));
    assert.equal(records.length, 1);
    assert.equal(records[0]["grow/rows"], rows.length);

    // Resumed: read back, not recomputed (same file, same metrics but the timing).
    const again = await grow(policy, EXAMPLES, GROW, ctx, 1, 999);
    assert.deepEqual(again, rows);
    assert.equal(records.length, 2);
    assert.deepEqual(
      { ...records[1], "grow/seconds": 0 },
      { ...records[0], "grow/seconds": 0 },
    );
    assert.equal(
      (await Deno.stat(join(dir, "grow_1.jsonl"))).mtime?.getTime(),
      stat.mtime?.getTime(),
    );

    const none = await grow(policy, EXAMPLES, { ...GROW, includeOriginal: false }, ctx, 2, 11);
    assert.equal(none.filter((r) => r.origin === "reference").length, 0);
  } finally {
    policy.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

async function improveOnce(
  policy: Policy,
  bc: Policy,
  rows: GrowRow[],
  ctx: RestContext,
  learningRate: number,
  index = 1,
  threshold?: ThresholdSchedule,
  select: Example[] = [],
) {
  const loss = bcLoss.create(pluginDefaults(bcLoss) as never, {} as never) as Loss;
  const schedule = threshold ??
    fixed.create(
      { ...pluginDefaults(fixed), values: [0.5, 0.6, 0.7] } as never,
      {} as never,
    ) as ThresholdSchedule;
  try {
    return await improve(
      policy,
      bc,
      poolOf(rows),
      loss,
      schedule,
      select,
      {
        epochs: 10,
        patience: 0,
        references: "filter",
        steps: 5,
        batchSize: 8,
        learningRate,
        learningRateDecay: 0.5,
        warmupSteps: 0,
        schedule: "constant",
        clipNorm: 1,
        evalEvery: 0,
        evalSize: 0,
        evaluation: SELECT_EVAL,
        selectionSeed: 1,
      },
      ctx,
      { grow: 1, improve: index, improveSteps: 3, index, stepOffset: 0 },
      5,
    );
  } finally {
    loss.dispose();
  }
}

Deno.test("Improve fine-tunes the current weights (never re-initialises) and leaks no tensors", async () => {
  const { build, dir, ctx, records } = await setup();
  const policy = build(1);
  const bc = policy.clone();
  try {
    const rows = await grow(policy, EXAMPLES, GROW, ctx, 1, 3);
    const before = weights(policy);
    const fresh = build(1);
    const freshWeights = weights(fresh);
    fresh.dispose();
    // Perturb the policy so a re-initialisation from the same seed would be visible.
    const perturbed = policy.save();
    for (let i = 0; i < perturbed.data.length; i++) perturbed.data[i] += 0.01;
    policy.load(perturbed);
    assert.ok(maxAbsDiff(weights(policy), freshWeights) > 0.009);

    const tensors = tf.memory().numTensors;
    await improveOnce(policy, bc, rows, ctx, 1e-9);
    // A vanishing learning rate leaves the (perturbed) weights where they were.
    assert.ok(maxAbsDiff(weights(policy), perturbed.data) < 1e-6);
    assert.ok(maxAbsDiff(weights(policy), before) > 0.009);

    const result = await improveOnce(policy, bc, rows, ctx, 1e-2, 2);
    assert.ok(maxAbsDiff(weights(policy), perturbed.data) > 1e-4, "a real step moves weights");
    assert.equal(result.steps, 5);
    assert.equal(tf.memory().numTensors, tensors, "no tensors leak across Improve steps");

    const summary = records.filter((r) => "improve/tau" in r);
    assert.equal(summary.length, 2);
    // tau is raised to the Grow set's mean reward (aboveMean) and kept rows are above it.
    for (const s of summary) {
      assert.ok(s["improve/mean_reward_kept"] > s["improve/tau"]);
      assert.ok(s["improve/rows_kept"] > 0 && s["improve/rows_kept"] < rows.length);
    }
    // Improve step 2 runs at half the learning rate of step 1 (decay 0.5).
    assert.equal(summary[1]["improve/learning_rate"], 1e-2 * 0.5);
  } finally {
    policy.dispose();
    bc.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a full Grow/Improve cycle leaks no tensors", async () => {
  const { build, dir, ctx } = await setup();
  const policy = build(2);
  const bc = policy.clone();
  try {
    const tensors = tf.memory().numTensors;
    const rows = await grow(policy, EXAMPLES, GROW, ctx, 1, 3);
    await improveOnce(policy, bc, rows, ctx, 1e-3);
    assert.equal(tf.memory().numTensors, tensors);
  } finally {
    policy.dispose();
    bc.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an Improve step with no row above tau is skipped, not trained on nothing", async () => {
  const { build, dir, ctx, records } = await setup();
  const policy = build(3);
  const bc = policy.clone();
  try {
    const rows = [row("abc", 0.2), row("bca", 0.3)];
    const before = weights(policy);
    const result = await improveOnce(policy, bc, rows, ctx, 1e-2, 1, {
      threshold: () => 0.9,
    });
    assert.equal(result.kept, 0);
    assert.equal(result.steps, 0);
    assert.deepEqual(weights(policy), before);
    assert.equal(records.at(-1)?.["improve/rows_kept"], 0);
  } finally {
    policy.dispose();
    bc.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a shared Grow set is copied, checked, into another run's folder", async () => {
  const { build, dir, ctx, records } = await setup();
  const policy = build(1);
  const other = await Deno.makeTempDir();
  try {
    const shared = join(dir, "shared", "grow", "grow_1-key.jsonl");
    const rows = await grow(policy, EXAMPLES, GROW, ctx, 1, 11, shared);
    assert.deepEqual(await readGrowFile(shared), rows);
    const copied = await grow(policy, EXAMPLES, GROW, { ...ctx, dir: other }, 1, 11, shared);
    assert.deepEqual(copied, rows);
    assert.deepEqual(await readGrowFile(join(other, "grow_1.jsonl")), rows);
    assert.equal(records[1]["grow/distinct_samples"], records[0]["grow/distinct_samples"]);

    // A corrupt shared file is named, never silently used.
    await Deno.writeTextFile(shared, "{not json\n");
    const third = await Deno.makeTempDir();
    await assert.rejects(
      () => grow(policy, EXAMPLES, GROW, { ...ctx, dir: third }, 1, 11, shared),
      /grow_1-key\.jsonl:1: not a JSON line/,
    );
    await Deno.remove(third, { recursive: true });
  } finally {
    policy.dispose();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(other, { recursive: true });
  }
});

Deno.test("the disk check refuses work that does not fit, naming both sizes", async () => {
  const examples = EXAMPLES.map((e) => ({ ...e, reference: e.reference.repeat(10) }));
  const small = estimateGrowBytes(examples.slice(0, 2), examples.slice(0, 2), GROW);
  const large = estimateGrowBytes(examples, examples, GROW);
  assert.ok(large > small && small > 0);
  assert.ok(estimateGrowBytes(examples, examples, { ...GROW, samplesPerSource: 30 }) > large);
  assert.ok(estimateGrowBytes(examples, [], GROW) < large, "the original pairs count too");
  await checkDiskSpace(Deno.cwd(), 1024, "a tiny step");
  await assert.rejects(
    () => checkDiskSpace(Deno.cwd(), 2 ** 60, "Grow step 1"),
    (e: Error) => {
      assert.ok(e instanceof UserError);
      assert.match(
        e.message,
        /Grow step 1 needs about \d+ MB of disk in .* but only \d+ MB is free/,
      );
      return true;
    },
  );
});

Deno.test("training keeps tf.memory().numTensors flat across steps and evaluations", async () => {
  const { build, ctx, dir, records } = await setup();
  const policy = build(4);
  const bc = policy.clone();
  try {
    const rows = await grow(policy, EXAMPLES, GROW, ctx, 1, 3);
    const loss = bcLoss.create(pluginDefaults(bcLoss) as never, {} as never) as Loss;
    const schedule = fixed.create(
      { ...pluginDefaults(fixed), values: [0] } as never,
      {} as never,
    ) as ThresholdSchedule;
    await improve(
      policy,
      bc,
      poolOf(rows),
      loss,
      schedule,
      EXAMPLES.slice(0, 3),
      {
        epochs: 100,
        patience: 0,
        references: "filter",
        steps: 40,
        batchSize: 4,
        learningRate: 1e-3,
        learningRateDecay: 1,
        warmupSteps: 0,
        schedule: "constant",
        clipNorm: 1,
        evalEvery: 7,
        evalSize: 0,
        evaluation: SELECT_EVAL,
        selectionSeed: 1,
      },
      ctx,
      { grow: 1, improve: 1, improveSteps: 1, index: 1, stepOffset: 0 },
      5,
    );
    loss.dispose();
    const counts = records.filter((r) => "sys/tensors" in r).map((r) => r["sys/tensors"]);
    assert.ok(counts.length >= 10, `${counts.length} samples`);
    assert.equal(new Set(counts).size, 1, `tensor counts vary: ${counts}`);
  } finally {
    policy.dispose();
    bc.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Grow logs the reward's diagnostics counted during that Grow step only", async () => {
  const { build, ctx, records } = await setup();
  const policy = build(1);
  let short = 0;
  const reward = {
    needsReference: true,
    score: (rows: readonly { hypothesis: string }[]) => {
      short += rows.filter((r) => r.hypothesis.length < 2).length;
      return Promise.resolve(rows.map(() => 0.5));
    },
    diagnostics() {
      const out = { short, calls: 1 };
      short = 0;
      return out;
    },
  };
  try {
    short = 99; // counted before the Grow step: not this step's
    const rows = await grow(policy, EXAMPLES, { ...GROW, sources: 4 }, { ...ctx, reward }, 1, 3);
    const expected = rows.filter((r) => r.hypothesis.length < 2).length;
    assert.equal(records.at(-1)!["grow/reward_short"], expected);
    assert.equal(records.at(-1)!["grow/reward_calls"], 1);
  } finally {
    policy.dispose();
  }
});

Deno.test("Grow with a source budget grows a seeded uniform sample of the split, not its first rows", async () => {
  const { build, ctx } = await setup();
  const policy = build(1);
  try {
    const rows = await grow(policy, EXAMPLES, { ...GROW, sources: 5 }, ctx, 1, 21);
    const samples = rows.filter((r) => r.origin === "sample");
    const grown = [...new Set(samples.map((r) => r.source))];
    assert.equal(grown.length, 5);
    assert.deepEqual(grown, sampleInOrder(EXAMPLES, 5, 21).map((e) => e.source));
    assert.notDeepEqual(grown, WORDS.slice(0, 5), "not the first five sources");
  } finally {
    policy.dispose();
  }
});

Deno.test("Grow's D_g is the samples united with every training pair, scored, with tempered behaviour log-probs", async () => {
  const { build, ctx } = await setup();
  const policy = build(1);
  try {
    const rows = await grow(policy, EXAMPLES, { ...GROW, sources: 3 }, ctx, 1, 8);
    const samples = rows.filter((r) => r.origin === "sample");
    const references = rows.filter((r) => r.origin === "reference");
    assert.equal(samples.length, 3 * GROW.samplesPerSource);
    // D: every training pair, not only the three grown sources.
    assert.deepEqual(references.map((r) => r.source), EXAMPLES.map((e) => e.source));
    for (const r of references) assert.equal(r.reward, 1, "scored by the reward like samples");
    // log mu(a_t) = log softmax(logits / T)[a_t], the distribution the samples came from:
    // for samples over the ids the sampler may draw (not padding or BOS), as it reports
    // them; for references teacher-forced over the whole vocabulary.
    const pairs = rows.map((r) => ({
      source: ctx.tokenizer.encode(r.source, "source"),
      target: r.tokens,
    }));
    const tempered = await scoreTokens(policy, pairs, 4, GROW.temperature);
    const plain = await scoreTokens(policy, pairs, 4, 1);
    const { pad, bos } = policy.specials;
    const drawable = referenceBehaviour(
      policy,
      pairs.map((p) => ({ source: p.source, tokens: p.target })),
      { temperature: GROW.temperature, topK: 0, banned: [pad, bos] },
    );
    for (let i = 0; i < rows.length; i++) {
      assert.equal(rows[i].temperature, GROW.temperature);
      const expected = rows[i].origin === "sample" ? drawable[i] : tempered[i];
      for (let t = 0; t < rows[i].logProbs.length; t++) {
        assert.ok(Math.abs(rows[i].logProbs[t] - expected[t]) < 1e-4, `row ${i} token ${t}`);
      }
    }
    assert.ok(rows.some((r, i) => r.logProbs.some((v, t) => Math.abs(v - plain[i][t]) > 1e-3)));
  } finally {
    policy.dispose();
  }
});

/** `policy` with samples that carry no behaviour log-probs (as a user model's may not). */
function withoutBehaviour(policy: Policy): Policy {
  const sample: Policy["sample"] = async (sources, options) =>
    (await policy.sample(sources, options)).map((row) =>
      row.map(({ tokens, logProbs, score }) => ({ tokens, logProbs, score }))
    );
  return new Proxy(policy, {
    get(target, key) {
      if (key === "sample") return sample;
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("Grow stores the sampler's behaviour log-probs; teacher-forces only rows without them", async () => {
  const { build, ctx } = await setup();
  const policy = build(1);
  const rowsScored = () => profiler.snapshot()["grow/logprobs"]?.units.rows ?? 0;
  try {
    const settings = { ...GROW, sources: 3 };
    const before = rowsScored();
    const rows = await grow(policy, EXAMPLES, settings, ctx, 1, 8);
    const samples = rows.filter((r) => r.origin === "sample");
    const references = rows.filter((r) => r.origin === "reference");
    assert.equal(rowsScored() - before, references.length, "samples are not teacher-forced");
    // Exactly the sampler's log mu: the one shard of three sources, seeded by (8, shard 0).
    const sources = sampleInOrder(EXAMPLES, 3, 8).map((e) =>
      ctx.tokenizer.encode(e.source, "source")
    );
    const drawn = await policy.sample(sources, {
      n: GROW.samplesPerSource,
      temperature: GROW.temperature,
      topK: GROW.topK,
      topP: GROW.topP,
      maxLen: GROW.maxLen,
      batchSize: GROW.batchSize,
      seed: shardSeed(8, 0),
      behaviourLogProbs: true,
    });
    assert.deepEqual(samples.map((r) => r.logProbs), drawn.flat().map((g) => g.behaviourLogProbs));

    // A policy that reports none: its samples are scored by teacher forcing, like references.
    const middle = rowsScored();
    const forced = await grow(withoutBehaviour(policy), EXAMPLES, settings, ctx, 2, 8);
    assert.equal(rowsScored() - middle, rows.length);
    assert.deepEqual(forced.map((r) => r.tokens), rows.map((r) => r.tokens));
    const pairs = forced.map((r) => ({
      source: ctx.tokenizer.encode(r.source, "source"),
      target: r.tokens,
    }));
    const expected = await scoreTokens(policy, pairs, 4, GROW.temperature);
    forced.forEach((r, i) =>
      r.logProbs.forEach((lp, t) => assert.ok(Math.abs(lp - expected[i][t]) < 1e-5, `row ${i}`))
    );
    assert.deepEqual(
      forced.filter((r) => r.origin === "reference"),
      references,
      "references are scored the same way either way",
    );
  } finally {
    policy.dispose();
    await Deno.remove(ctx.dir, { recursive: true });
  }
});

/** A loss that drives the policy towards emitting token 4 everywhere (a harmful update). */
function harmfulLoss(): Loss {
  let policy: Policy | undefined;
  return {
    variables: [],
    prepare(c) {
      policy = c.policy;
    },
    compute(input) {
      const logits = policy!.forward(input.batch, { training: true }).logits;
      return tf.neg(tf.mean(tf.slice(tf.logSoftmax(logits), [0, 0, 4], [-1, -1, 1]))) as tf.Scalar;
    },
    afterStep() {},
    dispose() {},
  };
}

Deno.test("a harmful Improve step leaves the incoming weights selected (step 0 is a candidate)", async () => {
  const { build, ctx, records } = await setup();
  const policy = build(5);
  try {
    const bc = build(5);
    const rows = await grow(policy, EXAMPLES, GROW, ctx, 1, 3);
    // Give the policy some skill first, so that the harmful step has something to destroy.
    await improveOnce(policy, bc, rows, ctx, 3e-2, 1, undefined, []);
    await improveOnce(policy, bc, rows, ctx, 3e-2, 1, undefined, []);
    const incoming = weights(policy);
    const schedule = fixed.create({ ...pluginDefaults(fixed), values: [0] } as never, {} as never);
    const result = await improve(
      policy,
      bc,
      poolOf(rows),
      harmfulLoss(),
      schedule as ThresholdSchedule,
      EXAMPLES,
      {
        epochs: 50,
        steps: 30,
        patience: 0,
        references: "filter",
        batchSize: 8,
        learningRate: 0.05,
        learningRateDecay: 1,
        warmupSteps: 0,
        schedule: "constant",
        clipNorm: 0,
        evalEvery: 10,
        evalSize: 0,
        evaluation: SELECT_EVAL,
        selectionSeed: 1,
      },
      ctx,
      { grow: 1, improve: 1, improveSteps: 1, index: 1, stepOffset: 0 },
      9,
    );
    const summary = records.at(-1)!;
    assert.equal(result.steps, 30, "it trained");
    assert.equal(summary["improve/best_step"], 0, JSON.stringify(summary));
    assert.equal(result.validReward, result.incomingReward);
    assert.deepEqual(weights(policy), incoming, "the incoming weights are back in place");
    bc.dispose();
  } finally {
    policy.dispose();
  }
});

Deno.test("Improve's budget is epochs over the kept rows (capped), and references can be kept whatever their reward", async () => {
  const { build, ctx, records } = await setup();
  const policy = build(6);
  const bc = policy.clone();
  try {
    const rows = [
      ...EXAMPLES.map((e) => ({
        ...row(e.source, 0.2, "reference"),
        tokens: [4, 2],
        logProbs: [-1, -1],
      })),
      ...EXAMPLES.map((e) => ({ ...row(e.source, 0.9), tokens: [5, 2], logProbs: [-1, -1] })),
    ];
    const settings = {
      epochs: 2,
      steps: 1000,
      patience: 0,
      references: "filter" as const,
      batchSize: 4,
      learningRate: 1e-3,
      learningRateDecay: 1,
      warmupSteps: 0,
      schedule: "constant" as const,
      clipNorm: 1,
      evalEvery: 0,
      evalSize: 0,
      evaluation: SELECT_EVAL,
      selectionSeed: 1,
    };
    const schedule = { threshold: () => 0.5 } as ThresholdSchedule;
    const loss = bcLoss.create(pluginDefaults(bcLoss) as never, {} as never) as Loss;
    const position = { grow: 1, improve: 1, improveSteps: 1, index: 1, stepOffset: 0 };
    // 10 samples above tau, references filtered out: 2 epochs of 10 rows in batches of 4.
    const filtered = await improve(
      policy,
      bc,
      poolOf(rows),
      loss,
      schedule,
      [],
      settings,
      ctx,
      position,
      1,
    );
    assert.equal(filtered.kept, 10);
    assert.equal(filtered.steps, Math.ceil(2 * 10 / 4));
    assert.equal(records.at(-1)!["improve/references_kept"], 0);
    // "keep": the 10 references too; and the cap.
    const kept = await improve(
      policy,
      bc,
      poolOf(rows),
      loss,
      schedule,
      [],
      {
        ...settings,
        references: "keep",
        steps: 7,
      },
      ctx,
      position,
      1,
    );
    assert.equal(kept.kept, 20);
    assert.equal(kept.steps, 7, "capped at steps");
    assert.equal(records.at(-1)!["improve/references_kept"], 10);
    assert.equal(records.at(-1)!["improve/samples_kept"], 10);
    loss.dispose();
  } finally {
    policy.dispose();
    bc.dispose();
  }
});

Deno.test("Improve's learning rate starts below BC's final one and decays over the whole run", () => {
  const bc = {
    learningRate: 2e-3,
    warmupSteps: 400,
    steps: 10000,
    schedule: "inverse_sqrt" as const,
  };
  const logs: string[] = [];
  const auto = improveLearningRate(0, bc, (m) => logs.push(m));
  const bcFinal = 2e-3 * Math.sqrt(400 / 10000);
  assert.ok(Math.abs(auto - 0.5 * bcFinal) < 1e-12, `${auto}`);
  assert.equal(logs.length, 0);
  assert.equal(improveLearningRate(1e-4, bc, (m) => logs.push(m)), 1e-4);
  assert.equal(logs.length, 0);
  assert.equal(improveLearningRate(1e-3, bc, (m) => logs.push(m)), 1e-3);
  assert.match(logs[0], /not below BC's final/);
  // A schedule that decays to zero: half of its rate at 90 % of the way.
  const linear = improveLearningRate(0, { ...bc, schedule: "linear" }, () => {});
  assert.ok(linear > 0 && linear < 2e-3 * 0.2);
});

/** An executor that computes shards in reverse order and reports every shard twice. */
const backwardsTwice: Executor = {
  async run(job, finished) {
    for (const shard of [...job.shards].reverse()) {
      const rows = await job.compute(shard);
      await finished(shard, rows);
      await finished(shard, rows);
    }
  },
  close: () => Promise.resolve(),
};

Deno.test("Grow's file is byte-identical whatever order shards finish in, and duplicates count once", async () => {
  const { build, ctx } = await setup();
  const policy = build(1);
  const other = await Deno.makeTempDir();
  try {
    const settings = { ...GROW, shardSources: 2 };
    const rows = await grow(policy, EXAMPLES, settings, ctx, 1, 5);
    const reordered = await grow(
      policy,
      EXAMPLES,
      settings,
      { ...ctx, dir: other, executor: backwardsTwice },
      1,
      5,
    );
    assert.deepEqual(reordered, rows);
    assert.deepEqual(
      await Deno.readFile(join(other, "grow_1.jsonl")),
      await Deno.readFile(join(ctx.dir, "grow_1.jsonl")),
    );
    // The shards' seeds depend on (seed, index) only: another shard size draws other samples.
    const coarse = await grow(policy, EXAMPLES, { ...GROW, shardSources: 100 }, ctx, 2, 5);
    assert.notDeepEqual(coarse.map((r) => r.tokens), rows.map((r) => r.tokens));
    // The shard folder is gone once the Grow file is written.
    await assert.rejects(Deno.stat(join(other, "grow_1.shards")), Deno.errors.NotFound);
  } finally {
    policy.dispose();
    await Deno.remove(ctx.dir, { recursive: true });
    await Deno.remove(other, { recursive: true });
  }
});

Deno.test("an interrupted Grow step keeps its finished shards and computes only the others", async () => {
  const { build, ctx } = await setup();
  const policy = build(1);
  try {
    const settings = { ...GROW, shardSources: 2 };
    let computed = 0;
    const failAfterTwo: Executor = {
      async run(job, finished) {
        for (const shard of job.shards) {
          if (computed === 2) throw new Error("coordinator killed");
          computed++;
          await finished(shard, await job.compute(shard));
        }
      },
      close: () => Promise.resolve(),
    };
    await assert.rejects(
      grow(policy, EXAMPLES, settings, { ...ctx, executor: failAfterTwo }, 1, 5),
      /coordinator killed/,
    );
    const counting: Executor = {
      async run(job, finished) {
        for (const shard of job.shards) {
          computed++;
          await finished(shard, await job.compute(shard));
        }
      },
      close: () => Promise.resolve(),
    };
    computed = 0;
    const resumed = await grow(policy, EXAMPLES, settings, { ...ctx, executor: counting }, 1, 5);
    const shards = planShards(EXAMPLES, EXAMPLES, settings, 5).length;
    assert.equal(computed, shards - 2, "the two finished shards are not computed again");
    const other = await Deno.makeTempDir();
    try {
      const fresh = await grow(policy, EXAMPLES, settings, { ...ctx, dir: other }, 1, 5);
      assert.deepEqual(resumed, fresh);
    } finally {
      await Deno.remove(other, { recursive: true });
    }
  } finally {
    policy.dispose();
    await Deno.remove(ctx.dir, { recursive: true });
  }
});

Deno.test("a shard with missing, foreign or altered rows is refused before it is saved", async () => {
  const { build, ctx } = await setup();
  const policy = build(1);
  try {
    const settings = { ...GROW, shardSources: 2 };
    const tamper = (change: (rows: GrowRow[]) => GrowRow[]): Executor => ({
      async run(job, finished) {
        for (const shard of job.shards) {
          const rows = change(await job.compute(shard) as GrowRow[]);
          await finished(shard, rows as Awaited<ReturnType<typeof job.compute>>);
        }
      },
      close: () => Promise.resolve(),
    });
    await assert.rejects(
      grow(policy, EXAMPLES, settings, { ...ctx, executor: tamper((r) => r.slice(1)) }, 1, 5),
      /shard 0 \(samples\) from the grow 1 executor: 5 rows, expected 6/,
    );
    await assert.rejects(
      grow(
        policy,
        EXAMPLES,
        settings,
        { ...ctx, executor: tamper((r) => r.map((row) => ({ ...row, source: "other" }))) },
        1,
        5,
      ),
      /row 0 is not a sample of source 0/,
    );
    const rows = planShards(EXAMPLES, [], settings, 5)[0];
    assert.throws(
      () => checkShardRows(rows, settings, [], "a worker", rowsChecksum([])),
      /0 rows, expected 6/,
    );
  } finally {
    policy.dispose();
    await Deno.remove(ctx.dir, { recursive: true });
  }
});
