import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { join } from "node:path";
import { DistinctSamples, finalEvaluation, sequenceKl } from "../../core/evaluate.ts";
import { evalShardSeed } from "../../core/eval_shard.ts";
import { hash53 } from "../../core/hash.ts";
import { Rng } from "../../core/random.ts";
import type {
  Example,
  Executor,
  Generation,
  Policy,
  RewardModel,
  TokenBatch,
  Tokenizer,
} from "../../core/types.ts";
import { tinyEvalSettings } from "../_experiment.ts";

await tf.setBackend("cpu");

const SPECIALS = { pad: 0, bos: 1, eos: 2, unk: 3 };
const A = 4;
const B = 5;
/** Tokens every output of a {@link coinPolicy} has before its EOS. */
const LENGTH = 3;

/**
 * A policy whose outputs are LENGTH independent coin flips (A with probability `p`, else B)
 * and then EOS, whatever the source: its exact sequence-level KL to another coin policy is
 * LENGTH x the per-token KL. Teacher-forced log-probabilities come from the same formula.
 */
function coinPolicy(p: number): Policy {
  const logProb = (t: number, token: number) =>
    t < LENGTH
      ? (token === A ? Math.log(p) : token === B ? Math.log(1 - p) : Math.log(1e-9))
      : (t === LENGTH && token === SPECIALS.eos ? 0 : Math.log(1e-9));
  const draw = (rng: Rng): Generation => {
    const tokens = Array.from({ length: LENGTH }, () => (rng.next() < p ? A : B));
    const logProbs = tokens.map((token, t) => logProb(t, token));
    return { tokens: [...tokens, SPECIALS.eos], logProbs: [...logProbs, 0], score: 0 };
  };
  const policy = {
    specials: SPECIALS,
    variables: [],
    hasValueHead: false,
    tokenLogProbs(batch: TokenBatch): tf.Tensor2D {
      const targets = batch.targetOut.arraySync() as number[][];
      const mask = batch.targetMask.arraySync() as number[][];
      return tf.tensor2d(
        targets.map((row, i) => row.map((token, t) => mask[i][t] > 0 ? logProb(t, token) : 0)),
      );
    },
    sample(sources: readonly number[][], options: { n: number; seed: number }) {
      const rng = new Rng(options.seed);
      return Promise.resolve(sources.map(() => Array.from({ length: options.n }, () => draw(rng))));
    },
    greedy(sources: readonly number[][]) {
      const best = p >= 0.5 ? A : B;
      const tokens = [...Array(LENGTH).fill(best), SPECIALS.eos];
      return Promise.resolve(sources.map(() => ({ tokens, logProbs: [], score: 0 })));
    },
    dispose() {},
  };
  return policy as unknown as Policy;
}

const tokenizer = {
  specials: SPECIALS,
  encode: (text: string) => [...text].map(() => 6),
  decode: (ids: readonly number[]) =>
    ids.filter((id) => id === A || id === B).map((id) => (id === A ? "a" : "b")).join(" "),
} as unknown as Tokenizer;

/** Reward: the fraction of output words that are "a". */
const reward: RewardModel = {
  needsReference: false,
  score: (rows) =>
    Promise.resolve(rows.map((r) => {
      const words = r.hypothesis.split(" ").filter((w) => w !== "");
      return words.length === 0 ? 0 : words.filter((w) => w === "a").length / words.length;
    })),
};

function examples(n: number): Example[] {
  return Array.from({ length: n }, (_, i) => ({ source: `s${i}`, reference: "a a a" }));
}

const SETTINGS = tinyEvalSettings({ batchSize: 64 });

/** Exact KL(Bernoulli(p) || Bernoulli(q)). */
function coinKl(p: number, q: number): number {
  return p * Math.log(p / q) + (1 - p) * Math.log((1 - p) / (1 - q));
}

Deno.test("sequenceKl: a per-sequence Monte-Carlo estimate of KL(pi || ref); 0 against itself", async () => {
  const pi = coinPolicy(0.8);
  const ref = coinPolicy(0.5);
  const n = 4000;
  const kl = await sequenceKl(pi, ref, tokenizer, examples(n), {
    maxLen: 8,
    batchSize: 500,
    seed: 3,
  });
  // Per sequence (LENGTH tokens), not per token: 3 x 0.193 nats. The estimate's standard
  // error is about sqrt(3 x 0.31 / 4000) = 0.015.
  const exact = LENGTH * coinKl(0.8, 0.5);
  assert.ok(Math.abs(kl - exact) < 0.06, `estimate ${kl}, exact ${exact}`);
  assert.equal(await sequenceKl(pi, pi, tokenizer, examples(50), { ...SETTINGS, seed: 1 }), 0);
  assert.ok(Number.isNaN(await sequenceKl(pi, ref, tokenizer, [], { ...SETTINGS, seed: 1 })));
});

Deno.test("sequenceKl: no tensors are left behind", async () => {
  const pi = coinPolicy(0.7);
  const ref = coinPolicy(0.4);
  await sequenceKl(pi, ref, tokenizer, examples(10), { ...SETTINGS, batchSize: 3, seed: 1 });
  const before = tf.memory().numTensors;
  await sequenceKl(pi, ref, tokenizer, examples(10), { ...SETTINGS, batchSize: 3, seed: 2 });
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("finalEvaluation: greedy and sampled reward, KL to the BC policy, test metrics", async () => {
  const dir = await Deno.makeTempDir({ prefix: "evaluate_test_" });
  try {
    const policy = coinPolicy(0.9);
    const splits = { valid: examples(400), test: examples(30) };
    const outputs = join(dir, "test_outputs.tsv");
    const metrics = await finalEvaluation(policy, tokenizer, reward, splits, SETTINGS, 7, {
      bcPolicy: coinPolicy(0.5),
      outputs,
    });
    assert.equal(metrics["eval/valid_reward"], 1, "greedy outputs are all 'a a a'");
    // Samples: 90% of the words are "a" (standard error about 0.009 over 400 x 3 words).
    const sampled = metrics["eval/valid_reward_sample"];
    assert.ok(Math.abs(sampled - 0.9) < 0.04, `sampled reward ${sampled}`);
    const kl = metrics["eval/valid_kl_bc"];
    const exact = LENGTH * coinKl(0.9, 0.5);
    assert.ok(Math.abs(kl - exact) < 0.1, `KL ${kl}, exact ${exact}`);
    assert.equal(metrics["eval/test_reward"], 1);
    assert.equal(metrics["eval/test_chrf"], 100);
    const lines = (await Deno.readTextFile(outputs)).trimEnd().split("\n");
    assert.equal(lines.length, 31);

    // The BC row: its own policy as the reference gives exactly 0.
    const bc = await finalEvaluation(policy, tokenizer, reward, splits, SETTINGS, 7, {
      bcPolicy: policy,
    });
    assert.equal(bc["eval/valid_kl_bc"], 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("finalEvaluation: the same numbers whichever executor computes the shards, in any order", async () => {
  const policy = coinPolicy(0.7);
  const splits = { valid: examples(40), test: examples(25) };
  const settings = { ...SETTINGS, bestOfN: [1, 2, 4], bestOfNSize: 30, shardSources: 7 };
  const here = await finalEvaluation(policy, tokenizer, reward, splits, settings, 7, {
    bcPolicy: policy,
  });
  // Another "worker": last shard first, every result through JSON as over the wire.
  const computed: number[] = [];
  const elsewhere: Executor = {
    async run(job, finished) {
      for (const shard of [...job.shards].reverse()) {
        computed.push(shard.index);
        const rows = JSON.parse(JSON.stringify(await job.compute(shard)));
        job.check?.(shard, rows, "the test executor");
        await finished(shard, rows);
      }
    },
    close: () => Promise.resolve(),
  };
  const there = await finalEvaluation(policy, tokenizer, reward, splits, settings, 7, {
    bcPolicy: policy,
    place: { executor: elsewhere },
  });
  // 6 + 6 validation shards (greedy, sampled), 4 test shards, 5 Best-of-N shards.
  assert.equal(computed.length, 21);
  assert.deepEqual(there, here);
  assert.ok(here["bon/valid_reward@4"] >= here["bon/valid_reward@1"]);
  // Each shard's seed depends on (run seed, part, shard index) alone.
  assert.notEqual(evalShardSeed(7, "bon", 0), evalShardSeed(7, "bon", 1));
  assert.notEqual(evalShardSeed(7, "bon", 0), evalShardSeed(7, "valid_sample", 0));
  assert.equal(evalShardSeed(7, "bon", 3), evalShardSeed(7, "bon", 3));
});

Deno.test("finalEvaluation: Best-of-N hands the policy the batch size in rows, not divided by N again", async () => {
  // The policy's sampler already fits floor(batchSize / n) sources into a batch; dividing
  // first (as the evaluation once did) decoded one source per batch at batchSize 64, N = 8.
  const policy = coinPolicy(0.7);
  const seen: { n: number; batchSize: number }[] = [];
  const recording = Object.assign(Object.create(policy), {
    sample(sources: readonly number[][], options: { n: number; seed: number; batchSize: number }) {
      seen.push({ n: options.n, batchSize: options.batchSize });
      return policy.sample(sources, options as Parameters<Policy["sample"]>[1]);
    },
  }) as Policy;
  const splits = { valid: examples(20), test: examples(4) };
  const settings = { ...SETTINGS, bestOfN: [1, 8], bestOfNSize: 20 };
  await finalEvaluation(recording, tokenizer, reward, splits, settings, 7, { bcPolicy: policy });
  const bon = seen.filter((s) => s.n === 8);
  assert.ok(bon.length > 0, "Best-of-N sampled");
  for (const s of bon) assert.equal(s.batchSize, settings.batchSize);
});

Deno.test("DistinctSamples: distinct (source, output) pairs over a whole run; restorable", () => {
  const counter = new DistinctSamples();
  assert.equal(counter.size, 0, "BC samples nothing: 0");
  // Grow step 1: a repeated sample counts once.
  counter.add("x", "a");
  counter.add("x", "a");
  counter.add("x", "b");
  counter.add("y", "a");
  assert.equal(counter.size, 3);
  // Grow step 2 (or the next PPO rollout batch) draws one pair again: still counted once,
  // not once per Grow step.
  counter.add("x", "b");
  counter.add("y", "c");
  assert.equal(counter.size, 4);
  // The source/output boundary matters.
  counter.add("ab", "c");
  counter.add("a", "bc");
  assert.equal(counter.size, 6);
  const restored = new DistinctSamples(counter.hashes());
  restored.add("x", "a");
  assert.equal(restored.size, 6);
  // The hash PPO's resume states already hold (53 bits, an integer).
  const h = hash53("x\u0000a");
  assert.ok(Number.isSafeInteger(h) && h >= 0);
  assert.ok(counter.hashes().includes(h));
});
