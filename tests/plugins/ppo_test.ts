/**
 * Tests of the `ppo` algorithm: its math (GAE, KL penalty, adaptive coefficient, clipped
 * losses, whitening, temperature log-probabilities) against hand-computed cases; a run on a
 * tiny easy task with a tiny transformer (reward rises, every listed metric is logged,
 * `tf.memory().numTensors` stays flat across rollout batches, each critic works); and a
 * smoke experiment through the manifest with `rest` beside it (same final metric keys).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { ManifestError } from "../../core/errors.ts";
import { resolveManifest } from "../../core/manifest/mod.ts";
import { createRegistries } from "../../core/registry.ts";
import { MetricsWriter, readMetrics } from "../../core/run.ts";
import type { Metrics, ModelFactory, RunContext, SpecialIds, Tokenizer } from "../../core/types.ts";
import {
  AdaptiveKl,
  clippedPolicyLoss,
  clippedValueLoss,
  explainedVariance,
  FixedKl,
  fusedPpoLoss,
  gae,
  klPenaltyRewards,
  PositionBaseline,
  rolloutAdvantages,
  whiten,
} from "../../plugins/algorithms/ppo/math.ts";
import { tokenLogProbsAndEntropy } from "../../plugins/_nn/token_stats.ts";
import { softmaxEntropies } from "../../plugins/_nn/logit_entropy.ts";
import {
  runTiny,
  tinyEvalSettings,
  tinyManifest,
  tinyRestRun,
  withTempDir,
} from "../_experiment.ts";
import ppo from "../../plugins/algorithms/ppo/mod.ts";
import {
  emptyStepStats,
  type MinibatchTargets,
  type PpoConfig,
  ppoLoss,
  type RolloutItem,
  rolloutPlan,
  runPpo,
  scoreRollout,
} from "../../plugins/algorithms/ppo/loop.ts";
import { makeBatch } from "../../core/batch.ts";
import { disposeBatch } from "../../core/train.ts";
import { rowTarget } from "../../core/rest.ts";
import { maskedMean } from "../../plugins/_nn/token_stats.ts";
import { Rng } from "../../core/random.ts";
import transformer from "../../plugins/models/transformer/mod.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import { createAjv } from "../../core/manifest/ajv.ts";

await (await (await import("../../plugins/backends/cpu.ts")).default.create(
  { fastSegmentSum: true },
  {} as never,
)).init();

function close(actual: number, expected: number, tol = 1e-6, what = "") {
  assert.ok(
    Math.abs(actual - expected) <= tol,
    `${what} expected ${expected}, got ${actual} (tolerance ${tol})`,
  );
}

function closeAll(actual: readonly number[], expected: readonly number[], tol = 1e-6) {
  assert.equal(actual.length, expected.length, `lengths ${actual.length} vs ${expected.length}`);
  actual.forEach((a, i) => close(a, expected[i], tol, `[${i}]`));
}

// ---------------------------------------------------------------------------------------
// Math

Deno.test("gae: a hand-computed three-step case, and the lambda = 0 / lambda = 1 limits", () => {
  // gamma 0.9, lambda 0.8 (gamma * lambda = 0.72):
  // delta_2 = 1 + 0.9 * 0 - 0.7 = 0.3          A_2 = 0.3
  // delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03       A_1 = 0.03 + 0.72 * 0.3 = 0.246
  // delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04       A_0 = 0.04 + 0.72 * 0.246 = 0.21712
  const { advantages, returns } = gae([0, 0, 1], [0.5, 0.6, 0.7], 0.9, 0.8);
  closeAll(advantages, [0.21712, 0.246, 0.3], 1e-12);
  closeAll(returns, [0.71712, 0.846, 1.0], 1e-12);
  // lambda 0: one-step TD errors.
  closeAll(gae([0, 0, 1], [0.5, 0.6, 0.7], 0.9, 0).advantages, [0.04, 0.03, 0.3], 1e-12);
  // gamma = lambda = 1: Monte-Carlo return minus the value.
  closeAll(gae([0.5, -1, 2], [1, 2, 3], 1, 1).advantages, [0.5, -1, -1], 1e-12);
  assert.throws(() => gae([1], [1, 2], 1, 1), RangeError);
});

Deno.test("klPenaltyRewards: -beta log-ratio per token, the score at the last token", () => {
  const { rewards, kl } = klPenaltyRewards([-1, -2], [-1.5, -1], 0.1, 0.7);
  // log-ratios 0.5 and -1.
  closeAll(rewards, [-0.05, 0.1 + 0.7], 1e-12);
  close(kl, -0.5, 1e-12);
  assert.throws(() => klPenaltyRewards([-1], [-1, -2], 0.1, 0), RangeError);
  assert.throws(() => klPenaltyRewards([], [], 0.1, 0), /empty/);
});

Deno.test("AdaptiveKl: Ziegler et al.'s proportional update, clipped at +-20%; FixedKl", () => {
  const kl = new AdaptiveKl({ initial: 0.2, target: 6, horizon: 10000 });
  // KL 12 is 100% over target: the error is clipped to 0.2 -> beta (1 + 0.2 * 100 / 10000).
  close(kl.update(12, 100), 0.2 * 1.002, 1e-12);
  // KL 5.4 is 10% under target -> beta (1 - 0.1 * 500 / 10000).
  close(kl.update(5.4, 500), 0.2 * 1.002 * 0.995, 1e-12);
  // At the target nothing changes; a NaN KL is ignored.
  const before = kl.value;
  close(kl.update(6, 1000), before, 1e-15);
  close(kl.update(NaN, 1000), before, 1e-15);
  // Far below target for long: beta shrinks geometrically.
  for (let i = 0; i < 100; i++) kl.update(0, 1000);
  close(kl.value, before * 0.98 ** 100, 1e-12);
  assert.throws(() => new AdaptiveKl({ initial: -1, target: 6, horizon: 1 }), RangeError);
  assert.throws(() => new AdaptiveKl({ initial: 0.1, target: 0, horizon: 1 }), RangeError);
  const fixed = new FixedKl(0.05);
  assert.equal(fixed.update(100, 1000), 0.05);
  assert.throws(() => new FixedKl(-0.1), RangeError);
});

Deno.test("whiten and explainedVariance", () => {
  const w = whiten([1, 2, 3, 4]);
  close(w.reduce((a, b) => a + b, 0), 0, 1e-9);
  close(w.reduce((a, b) => a + b * b, 0) / 4, 1, 1e-6);
  // (x - 2.5) / sqrt(1.25)
  close(w[0], -1.5 / Math.sqrt(1.25), 1e-6);
  assert.deepEqual(whiten([3]), [0]);
  assert.deepEqual(whiten([]), []);
  close(explainedVariance([1, 2, 3], [1, 2, 3]), 1, 1e-12);
  close(explainedVariance([2, 2, 2], [1, 2, 3]), 0, 1e-12);
  // residuals [-0.5, 0, 0.5]: 1 - (1/6) / (2/3) = 0.75
  close(explainedVariance([1.5, 2, 2.5], [1, 2, 3]), 0.75, 1e-12);
  assert.ok(Number.isNaN(explainedVariance([1, 1], [2, 2])));
  assert.throws(() => explainedVariance([1], [1, 2]), RangeError);
});

Deno.test("rolloutAdvantages: per-sequence GAE, returns from raw advantages, batch whitening", () => {
  const sequences = [
    { logProbs: [-1, -1], refLogProbs: [-1, -2], values: [0.2, 0.4], score: 1 },
    { logProbs: [-0.5], refLogProbs: [-0.5], values: [0.1], score: 0 },
  ];
  const raw = rolloutAdvantages(sequences, { beta: 0.5, gamma: 1, lambda: 1, whiten: false });
  // Sequence 0: log-ratios [0, 1] -> rewards [0, -0.5 + 1]; MC returns [0.5, 0.5].
  closeAll(raw.rewards[0], [0, 0.5], 1e-12);
  closeAll(raw.advantages[0], [0.5 - 0.2, 0.5 - 0.4], 1e-12);
  closeAll(raw.returns[0], [0.5, 0.5], 1e-12);
  closeAll(raw.kl, [1, 0], 1e-12);
  closeAll(raw.advantages[1], [-0.1], 1e-12);
  const white = rolloutAdvantages(sequences, { beta: 0.5, gamma: 1, lambda: 1, whiten: true });
  closeAll(white.advantages.flat(), whiten([0.3, 0.1, -0.1]), 1e-12);
  assert.deepEqual(white.returns, raw.returns, "returns do not depend on whitening");
  assert.throws(
    () =>
      rolloutAdvantages([{ logProbs: [0, 0], refLogProbs: [0, 0], values: [0], score: 1 }], {
        beta: 0,
        gamma: 1,
        lambda: 1,
        whiten: false,
      }),
    /2 tokens but 1 values/,
  );
});

Deno.test("clippedPolicyLoss: value, clip fraction, approximate KL and zero gradient where clipped", () => {
  // Four real tokens and one padding position (with values that would dominate if unmasked).
  const logRatio = [0.5, -0.5, 0, 0.5, 3];
  const adv = [1, 1, -2, -1, 100];
  const old = [-1, -1, -1, -1, -1];
  const mask = tf.tensor2d([[1, 1, 1, 1, 0]]);
  const oldT = tf.tensor2d([old]);
  const advT = tf.tensor2d([adv]);
  const logProbs = tf.tensor2d([old.map((o, i) => o + logRatio[i])]);
  const r = Math.exp(0.5);
  // Terms min(rho A, clip(rho) A): min(r, 1.2), min(1/r, 0.8) = 1/r, -2, min(-r, -1.2) = -r.
  const expected = -(1.2 + 1 / r - 2 - r) / 4;
  const out = clippedPolicyLoss(logProbs, oldT, advT, mask, 0.2);
  close(out.loss.dataSync()[0], expected, 1e-6, "loss");
  close(out.clipFraction.dataSync()[0], 0.75, 1e-6, "clip fraction");
  close(out.approxKl.dataSync()[0], 0.5 * (0.25 + 0.25 + 0 + 0.25) / 4, 1e-6, "approx KL");
  // d loss / d logProbs: 0 where the clip binds (token 0: rho > 1.2 with A > 0),
  // -rho A / 4 elsewhere, 0 at padding.
  const grad = tf.grad((lp: tf.Tensor) =>
    clippedPolicyLoss(lp as tf.Tensor2D, oldT, advT, mask, 0.2).loss
  )(logProbs);
  closeAll(Array.from(grad.dataSync()), [0, -1 / r / 4, 2 / 4, r / 4, 0], 1e-6);
  tf.dispose([mask, oldT, advT, logProbs, out.loss, out.clipFraction, out.approxKl, grad]);
});

Deno.test("clippedValueLoss: the larger of plain and clipped squared errors; clip 0 is plain", () => {
  const values = tf.tensor2d([[1.0, 0.6, 0, 9]]);
  const old = tf.tensor2d([[0.5, 0.5, 0.5, 0]]);
  const returns = tf.tensor2d([[1.0, 0, 1, 0]]);
  const mask = tf.tensor2d([[1, 1, 1, 0]]);
  // Token 0: plain 0, clipped V 0.7 -> 0.09 (clip active). Token 1: V - old = 0.1 within
  // the range -> 0.36 both. Token 2: plain 1, clipped V 0.3 -> 0.49, plain larger.
  const out = clippedValueLoss(values, old, returns, mask, 0.2);
  close(out.loss.dataSync()[0], 0.5 * (0.09 + 0.36 + 1) / 3, 1e-6, "clipped loss");
  close(out.clipFraction.dataSync()[0], 1 / 3, 1e-6, "clip fraction");
  const plain = clippedValueLoss(values, old, returns, mask, 0);
  close(plain.loss.dataSync()[0], 0.5 * (0 + 0.36 + 1) / 3, 1e-6, "plain loss");
  // Gradient: token 0's clipped branch is constant in V (clip bound) -> 0; token 1: (V - R)/3.
  const grad = tf.grad((v: tf.Tensor) =>
    clippedValueLoss(v as tf.Tensor2D, old, returns, mask, 0.2).loss
  )(values);
  closeAll(Array.from(grad.dataSync()), [0, 0.6 / 3, -1 / 3, 0], 1e-6);
  tf.dispose([values, old, returns, mask, out.loss, out.clipFraction, plain.loss, grad]);
  tf.dispose(plain.clipFraction);
});

Deno.test("fusedPpoLoss: the tfjs losses' value, gradients and diagnostics in one host op", () => {
  // [3, 4] tokens, the last row half padding; ratios inside and outside both clip bounds
  // with positive and negative advantages, values moved inside and beyond the value clip.
  const rng = new Rng(31);
  const shape: [number, number] = [3, 4];
  const random = (scale: number, shift = 0) =>
    tf.tensor2d(Float32Array.from({ length: 12 }, () => scale * (rng.next() - 0.5) + shift), shape);
  const mask = tf.tensor2d([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]);
  const logProbs = random(2, -1.5);
  const values = random(1, 0.2);
  const targets = {
    oldLogProbs: tf.tidy(() => tf.add(logProbs, random(1.2))) as tf.Tensor2D,
    oldValues: tf.tidy(() => tf.add(values, random(0.8))) as tf.Tensor2D,
    advantages: random(3),
    returns: random(1, 0.3),
  };
  for (const valueClipRange of [0, 0.2]) {
    for (const withValues of [true, false]) {
      const options = { clipRange: 0.2, valueClipRange, valueCoef: 0.1 };
      const what = `valueClipRange ${valueClipRange}, values ${withValues}`;
      let diagnostics: Record<string, number> = {};
      const fused = tf.grads((lp, v) => {
        const out = fusedPpoLoss(
          lp as tf.Tensor2D,
          withValues ? v as tf.Tensor2D : undefined,
          targets,
          mask,
          options,
        );
        diagnostics = out.diagnostics;
        // Without values the loss does not depend on them: a zero term keeps tf.grads happy.
        return withValues ? out.loss : tf.add(out.loss, tf.mul(tf.sum(v), 0)) as tf.Scalar;
      })([logProbs, values]);
      const expected: Record<string, number> = {};
      const reference = tf.grads((lp, v) => {
        const pl = clippedPolicyLoss(
          lp as tf.Tensor2D,
          targets.oldLogProbs,
          targets.advantages,
          mask,
          0.2,
        );
        expected.policyLoss = pl.loss.dataSync()[0];
        expected.clipFraction = pl.clipFraction.dataSync()[0];
        expected.approxKl = pl.approxKl.dataSync()[0];
        if (!withValues) return tf.add(pl.loss, tf.mul(tf.sum(v), 0)) as tf.Scalar;
        const vl = clippedValueLoss(
          v as tf.Tensor2D,
          targets.oldValues,
          targets.returns,
          mask,
          valueClipRange,
        );
        expected.valueLoss = vl.loss.dataSync()[0];
        expected.valueClipFraction = vl.clipFraction.dataSync()[0];
        return tf.add(pl.loss, tf.mul(vl.loss, 0.1)) as tf.Scalar;
      })([logProbs, values]);
      closeAll(Array.from(fused[0].dataSync()), Array.from(reference[0].dataSync()), 1e-6);
      if (withValues) {
        closeAll(Array.from(fused[1].dataSync()), Array.from(reference[1].dataSync()), 1e-6);
      } else assert.ok(fused[1].dataSync().every((g) => g === 0), `${what}: no value gradient`);
      assert.deepEqual(Object.keys(diagnostics).sort(), Object.keys(expected).sort(), what);
      for (const [key, value] of Object.entries(expected)) {
        close(diagnostics[key], value, 1e-6, `${what}: ${key}`);
      }
      assert.ok(
        diagnostics.clipFraction > 0 && diagnostics.clipFraction < 1,
        `${what}: some clipped`,
      );
      if (withValues && valueClipRange > 0) assert.ok(diagnostics.valueClipFraction > 0, what);
      tf.dispose([...fused, ...reference]);
    }
  }
  tf.dispose([logProbs, values, mask, ...Object.values(targets)]);
});

Deno.test("tokenLogProbsAndEntropy: tempered log-probabilities and entropies, masked", () => {
  const rows = [[1, 2, 0.5], [0, 0, 3]];
  const logits = tf.tensor3d([rows]);
  const targets = tf.tensor2d([[1, 2]], undefined, "int32");
  const mask = tf.tensor2d([[1, 0]]);
  const temperature = 2;
  const out = tokenLogProbsAndEntropy(logits, targets, mask, temperature);
  const scaled = rows[0].map((x) => x / temperature);
  const z = Math.log(scaled.reduce((a, x) => a + Math.exp(x), 0));
  const logP = scaled.map((x) => x - z);
  const entropy = -logP.reduce((a, lp) => a + Math.exp(lp) * lp, 0);
  closeAll(Array.from(out.logProbs.dataSync()), [logP[1], 0], 1e-6);
  closeAll(Array.from(out.entropy.dataSync()), [entropy, 0], 1e-6);
  assert.throws(() => tokenLogProbsAndEntropy(logits, targets, mask, 0), RangeError);
  tf.dispose([logits, targets, mask, out.logProbs, out.entropy]);
});

Deno.test("softmaxEntropies: the host entropy equals tokenLogProbsAndEntropy's, masked rows 0", () => {
  // Rows of spread, peaked and flat logits at a temperature other than 1; the middle row is
  // padding.
  const rng = new Rng(41);
  const vocab = 37;
  const rows = [
    Array.from({ length: vocab }, () => 4 * rng.next() - 2),
    Array.from({ length: vocab }, () => 0),
    Array.from({ length: vocab }, (_, j) => (j === 5 ? 30 : -rng.next())),
    Array.from({ length: vocab }, () => 0.25),
  ];
  const mask = [1, 0, 1, 1];
  const temperature = 0.7;
  const entropy = tf.tidy(() =>
    tokenLogProbsAndEntropy(
      tf.tensor3d([rows]),
      tf.zeros([1, rows.length], "int32"),
      tf.tensor2d([mask]),
      temperature,
    ).entropy
  );
  const expected = entropy.dataSync();
  entropy.dispose();
  const got = softmaxEntropies(
    Float32Array.from(rows.flat()),
    rows.length,
    vocab,
    temperature,
    mask,
  );
  closeAll(Array.from(got), Array.from(expected), 1e-5);
  close(got[3], Math.log(vocab), 1e-9, "uniform row");
  assert.equal(got[1], 0);
  assert.throws(() => softmaxEntropies(new Float32Array(5), 2, 3), /5 logits are not 2 rows of 3/);
  assert.throws(() => softmaxEntropies(new Float32Array(6), 2, 3, 0), /temperature/);
});

Deno.test("PositionBaseline and rolloutPlan", () => {
  const b = new PositionBaseline(0.5);
  assert.deepEqual(b.predict(2), [0, 0]);
  b.update([[1, 2], [3]]);
  assert.deepEqual(b.predict(3), [2, 2, 0]);
  b.update([[0]]);
  assert.deepEqual(b.predict(2), [1, 2]);
  assert.throws(() => new PositionBaseline(1), RangeError);
  assert.deepEqual(rolloutPlan(300, 128), [128, 128, 44]);
  assert.deepEqual(rolloutPlan(256, 128), [128, 128]);
  assert.deepEqual(rolloutPlan(5, 128), [5]);
  assert.throws(() => rolloutPlan(5, 0), RangeError);
});

// ---------------------------------------------------------------------------------------
// Schema and manifest

Deno.test("ppo schema: defaults, smoke config, and the rolloutSize/samplesPerSource check", async () => {
  const ajv = createAjv();
  const validate = ajv.compile(ppo.configSchema);
  const config: Record<string, unknown> = {};
  assert.ok(validate(config), ajv.errorsText(validate.errors));
  assert.deepEqual(config.kl, { adaptive: true, coef: 0.2, target: 6, horizon: 10000 });
  assert.equal(config.samples, 0);
  const smoke = ppo.smoke!(config as unknown as PpoConfig);
  assert.ok(smoke.samples > 0 && smoke.samples <= 48);
  assert.deepEqual(ppo.check!(config as unknown as PpoConfig), []);
  assert.equal(
    ppo.check!({ ...config, rolloutSize: 10, samplesPerSource: 4 } as unknown as PpoConfig)[0]
      .path,
    "/rolloutSize",
  );
  assert.ok(!validate({ clipRange: 0 }), "a zero clip range is rejected");
  assert.ok(!validate({ kl: { target: 6, horizont: 1 } }), "unknown nested keys are rejected");

  // Through a manifest: the plugin's check reports with a JSON pointer.
  const registries = createRegistries(builtinPlugins);
  await assert.rejects(
    () =>
      resolveManifest({
        experiment: "x",
        data: "synthetic",
        tokenizer: "bpe",
        model: "transformer",
        reward: "chrf",
        runs: [{
          name: "ppo",
          algorithm: { name: "ppo", config: { rolloutSize: 10, samplesPerSource: 4 } },
        }],
      }, registries),
    (error: unknown) =>
      error instanceof ManifestError && /rolloutSize.*multiple of samplesPerSource/.test(
        error.message,
      ),
  );
});

// ---------------------------------------------------------------------------------------
// A tiny easy task

const SPECIALS: SpecialIds = { pad: 0, bos: 1, eos: 2, unk: 3 };
const ALPHABET = "abcd";

/** One id per character of "abcd" (ids 4..7). */
const charTokenizer: Tokenizer = {
  specials: SPECIALS,
  trained: true,
  train() {},
  vocabSize: () => 4 + ALPHABET.length,
  encode: (text) => [...text].map((c) => (ALPHABET.includes(c) ? 4 + ALPHABET.indexOf(c) : 3)),
  decode(ids) {
    let out = "";
    for (const id of ids) {
      if (id === SPECIALS.eos) break;
      if (id >= 4) out += ALPHABET[id - 4];
    }
    return out;
  },
  save: () => ({}),
  load() {},
};

/** The share of "a" in the output (0 for an empty output). */
const shareOfA = {
  needsReference: false,
  score: (rows: readonly { hypothesis: string }[]) =>
    Promise.resolve(
      rows.map(({ hypothesis: h }) =>
        h.length === 0 ? 0 : [...h].filter((c) => c === "a").length / h.length
      ),
    ),
};

function config(overrides: Partial<PpoConfig> = {}): PpoConfig {
  const ajv = createAjv();
  const validate = ajv.compile(ppo.configSchema);
  const filled: Record<string, unknown> = structuredClone(overrides) as Record<string, unknown>;
  assert.ok(validate(filled), ajv.errorsText(validate.errors));
  return filled as unknown as PpoConfig;
}

interface Harness {
  ctx: RunContext;
  records: { record: Metrics; step?: number; tensors: number }[];
  logs: string[];
  /** Removes the run folder. */
  cleanup(): void;
}

function harness(seed = 3): Harness {
  const dir = Deno.makeTempDirSync({ prefix: "ppo_test_" });
  const factory = transformer.create(
    { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1, dropout: 0 },
    {} as never,
  ) as ModelFactory;
  const buildOptions = (o: { valueHead: boolean }) => ({
    sourceVocab: 8,
    targetVocab: 8,
    specials: SPECIALS,
    seed: 11,
    ...o,
  });
  const base = factory.build(buildOptions({ valueHead: false }));
  const state = base.save();
  base.dispose();
  const pairs = ["ab", "cd", "abc", "dca", "bb", "cab", "dd", "acd"].map((s) => ({
    source: s,
    reference: s,
  }));
  const records: Harness["records"] = [];
  const logs: string[] = [];
  const ctx: RunContext = {
    experiment: "unit",
    run: "ppo",
    dir,
    sharedDir: dir,
    fingerprint: "unit",
    seed,
    smoke: false,
    resume: false,
    splits: {
      train: pairs,
      valid: pairs.slice(0, 4),
      select: pairs.slice(0, 4),
      test: pairs.slice(4),
    },
    tokenizer: charTokenizer,
    reward: shareOfA,
    metrics: {
      log(record, step) {
        records.push({ record, step, tensors: tf.memory().numTensors });
        return Promise.resolve();
      },
    },
    bcPolicy(options = {}) {
      const policy = factory.build(buildOptions({ valueHead: options.valueHead ?? false }));
      policy.load(state);
      return Promise.resolve(policy);
    },
    bc: {
      steps: 10,
      batchSize: 4,
      learningRate: 1e-3,
      warmupSteps: 0,
      schedule: "constant",
      clipNorm: 1,
      evalEvery: 0,
      patience: 0,
      labelSmoothing: 0,
      maxTokens: 64,
      evalSize: 0,
      checkpointSeconds: 120,
    },
    evaluation: tinyEvalSettings({ maxLen: 6 }),
    progress: () => ({ tick() {}, done() {} }),
    log: (m) => logs.push(m),
  };
  return {
    ctx,
    records,
    logs,
    cleanup: () => Deno.removeSync(dir, { recursive: true }),
  };
}

/** Runs `fn` with a fresh harness and removes its run folder afterwards. */
async function withHarness(seed: number, fn: (h: Harness) => Promise<void>): Promise<void> {
  const h = harness(seed);
  try {
    await fn(h);
  } finally {
    h.cleanup();
  }
}

const LISTED = [
  "ppo/reward",
  "ppo/kl",
  "ppo/kl_coef",
  "ppo/clip_fraction",
  "ppo/approx_kl",
  "ppo/value_loss",
  "ppo/explained_variance",
  "ppo/entropy",
  "ppo/response_length",
  "ppo/samples",
  "ppo/distinct_samples",
];

Deno.test("ppo on an easy task: reward rises, metrics are logged, no tensor leaks", async () => {
  await withHarness(3, async ({ ctx, records }) => {
    const before = tf.memory().numTensors;
    const summary = await runPpo(
      ctx,
      config({
        samples: 16 * 32,
        rolloutSize: 32,
        minibatchSize: 16,
        learningRate: 0.003,
        kl: { adaptive: false, coef: 0.02, target: 6, horizon: 10000 },
        evalEvery: 4,
      }),
    );
    assert.equal(tf.memory().numTensors, before, "every tensor is freed at the end");
    const rollouts = records.filter((r) => r.record["ppo/reward"] !== undefined);
    assert.equal(rollouts.length, 16);
    for (const { record } of rollouts) {
      for (const key of LISTED) {
        assert.ok(Number.isFinite(record[key]), `${key} = ${record[key]}`);
      }
    }
    // Flat tensor count across PPO iterations.
    const counts = rollouts.map((r) => r.tensors);
    assert.deepEqual(counts, counts.map(() => counts[0]), `tensor counts ${counts}`);
    // Samples used: 32 per rollout batch.
    assert.deepEqual(
      rollouts.map((r) => r.record["ppo/samples"]),
      rollouts.map((_, i) => 32 * (i + 1)),
    );
    // The reward does not collapse: it rises clearly on this easy task.
    const rewards = rollouts.map((r) => r.record["ppo/reward"]);
    const first = rewards[0];
    const last = (rewards[13] + rewards[14] + rewards[15]) / 3;
    assert.ok(last > first + 0.4, `rollout rewards ${rewards.map((r) => r.toFixed(2))}`);
    // Periodic validation: after rollout batches 4, 8, 12 and at the end.
    const evals = records.filter((r) => r.record["ppo/valid_reward"] !== undefined);
    // The incoming BC weights first (rollout 0), then every 4 rollout batches.
    assert.deepEqual(evals.map((r) => r.record["ppo/rollout"]), [0, 4, 8, 12, 16]);
    const bestValid = Math.max(...evals.map((r) => r.record["ppo/valid_reward"]));
    // The best weights are restored: the final greedy validation reward is the best one.
    close(summary.metrics["eval/valid_reward"], bestValid, 1e-9, "restored best");
    assert.equal(summary.metrics["train/samples"], 512);
    assert.equal(summary.metrics["train/gradient_steps"], 16 * 4 * 2);
    assert.ok(summary.metrics["train/distinct_samples"] <= 512);
    assert.ok(summary.metrics["train/distinct_samples"] > 1);
    for (const key of ["eval/test_reward", "eval/test_chrf", "eval/test_bleu"]) {
      assert.ok(key in summary.metrics, key);
    }
  });
});

Deno.test("ppo: the network and baseline critics run without leaks; adaptive KL moves beta", async () => {
  for (const critic of ["network", "baseline"] as const) {
    await withHarness(5, async ({ ctx, records }) => {
      const before = tf.memory().numTensors;
      await runPpo(
        ctx,
        config({
          samples: 3 * 16,
          rolloutSize: 16,
          samplesPerSource: 2,
          minibatchSize: 8,
          epochs: 2,
          critic,
          learningRate: 0.003,
          kl: { adaptive: true, coef: 0.2, target: 0.01, horizon: 16 },
          evalEvery: 0,
        }),
      );
      assert.equal(tf.memory().numTensors, before, `${critic}: every tensor is freed`);
      const rollouts = records.filter((r) => r.record["ppo/reward"] !== undefined);
      assert.equal(rollouts.length, 3);
      const counts = rollouts.map((r) => r.tensors);
      assert.deepEqual(counts, counts.map(() => counts[0]), `${critic}: tensor counts ${counts}`);
      assert.equal("ppo/value_loss" in rollouts[0].record, critic === "network");
      // KL is 0 in the first rollout (policy = reference), below target: beta shrinks by 20%
      // per rollout of `horizon` samples.
      close(rollouts[0].record["ppo/kl"], 0, 1e-4, `${critic}: first-rollout KL`);
      close(rollouts[0].record["ppo/kl_coef_next"], 0.2 * 0.8, 1e-9, `${critic}: beta`);
      assert.ok(rollouts.every((r) => Number.isFinite(r.record["ppo/explained_variance"])));
    });
  }
});

Deno.test("ppo: the first update starts on-policy (ratio 1, nothing clipped at the first step)", async () => {
  // One rollout, one minibatch, one epoch: the only step sees rho = 1 exactly.
  await withHarness(7, async ({ ctx, records }) => {
    await runPpo(
      ctx,
      config({ samples: 16, rolloutSize: 16, minibatchSize: 16, epochs: 1, evalEvery: 0 }),
    );
    const record = records.find((r) => r.record["ppo/reward"] !== undefined)!.record;
    assert.equal(record["ppo/clip_fraction"], 0);
    close(record["ppo/approx_kl"], 0, 1e-10, "approx KL");
    close(record["ppo/kl"], 0, 1e-4, "KL to the reference");
  });
});

Deno.test("ppo: without validation pairs the latest weights are kept", async () => {
  await withHarness(4, async ({ ctx }) => {
    ctx.splits = { ...ctx.splits, valid: [], select: [] };
    const { metrics } = await runPpo(
      ctx,
      config({ samples: 3 * 8, rolloutSize: 8, minibatchSize: 8, epochs: 1, evalEvery: 1 }),
    );
    assert.equal(metrics["train/best_rollout"], 3);
    assert.ok(Number.isNaN(metrics["eval/valid_reward"]));
  });
});

Deno.test("ppo: a run that fails after two rollout batches resumes to the uninterrupted result", async () => {
  const settings = config({
    samples: 4 * 16,
    rolloutSize: 16,
    minibatchSize: 8,
    epochs: 2,
    learningRate: 0.003,
    evalEvery: 1,
  });
  const stable = async (dir: string) =>
    (await readMetrics(join(dir, "metrics.jsonl"))).map((r) =>
      Object.fromEntries(Object.entries(r).filter(([k]) => !/^time$|seconds|^sys\//.test(k)))
    );
  let expected: Record<string, unknown>[] = [];
  let expectedSummary: Metrics = {};
  await withHarness(9, async ({ ctx }) => {
    ctx.metrics = new MetricsWriter(join(ctx.dir, "metrics.jsonl"));
    expectedSummary = (await runPpo(ctx, settings)).metrics;
    expected = await stable(ctx.dir);
  });
  await withHarness(9, async ({ ctx, logs }) => {
    ctx.metrics = new MetricsWriter(join(ctx.dir, "metrics.jsonl"));
    // The reward fails while scoring the third rollout batch.
    const reward = ctx.reward;
    let rollouts = 0;
    ctx.reward = {
      needsReference: false,
      score(rows) {
        if (rows.length === 16 && ++rollouts === 3) throw new Error("simulated crash");
        return reward.score(rows);
      },
    };
    await assert.rejects(() => runPpo(ctx, settings), /simulated crash/);
    ctx.reward = reward;
    ctx.resume = true;
    const summary = await runPpo(ctx, settings);
    assert.ok(logs.some((l) => /resumed after rollout batch 2 of 4/.test(l)), logs.join("\n"));
    assert.deepEqual(await stable(ctx.dir), expected);
    for (const [key, value] of Object.entries(expectedSummary)) {
      if (!/seconds/.test(key)) assert.equal(summary.metrics[key], value, key);
    }
  });
});

// ---------------------------------------------------------------------------------------
// The fused path (Policy.tokenLogProbs / Policy.values) against the logits path

/** A tiny transformer pair (policy with a value head, a differently seeded reference). */
function fusedModels() {
  const factory = transformer.create(
    { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 2, dropout: 0 },
    {} as never,
  ) as ModelFactory;
  const build = (valueHead: boolean, seed: number) =>
    factory.build({ sourceVocab: 30, targetVocab: 40, specials: SPECIALS, valueHead, seed });
  return { policy: build(true, 5), reference: build(false, 6) };
}

/** `n` rollout items of random tokens (ids 4..39), some ended by EOS, some truncated. */
function randomItems(n: number, seed: number): RolloutItem[] {
  const rng = new Rng(seed);
  const ids = (length: number, vocab: number) =>
    Array.from({ length }, () => 4 + Math.floor(rng.next() * (vocab - 4)));
  return Array.from({ length: n }, (_, i) => {
    const tokens = ids(1 + Math.floor(rng.next() * 9), 40);
    if (i % 3 !== 0) tokens.push(SPECIALS.eos);
    return {
      ...rowTarget(ids(2 + Math.floor(rng.next() * 8), 30), tokens, SPECIALS.eos),
      example: { source: "", reference: "" },
      hypothesis: "",
      length: tokens.length,
      score: 0,
      oldLogProbs: [],
      oldValues: [],
      advantages: [],
      returns: [],
    };
  });
}

Deno.test("ppo scoreRollout: fused old/ref log-probs and head values equal the logits path at T 0.7", () => {
  const { policy, reference } = fusedModels();
  const items = randomItems(11, 21);
  const settings = config({ temperature: 0.7, minibatchSize: 4 });
  const before = tf.memory().numTensors;
  const { refLogProbs, entropy } = scoreRollout({ policy, reference }, items, settings, undefined);
  assert.equal(tf.memory().numTensors, before, "scoring leaks no tensors");
  const expected = tf.tidy(() => {
    const batch = makeBatch(items, SPECIALS);
    const forward = policy.forward(batch, { training: false });
    const own = tokenLogProbsAndEntropy(forward.logits, batch.targetOut, batch.targetMask, 0.7);
    const ref = tokenLogProbsAndEntropy(
      reference.forward(batch, { training: false }).logits,
      batch.targetOut,
      batch.targetMask,
      0.7,
    );
    // The diagnostic: the entropy over the first minibatch (4 items), per token.
    const first = tf.slice(batch.targetMask, [0, 0], [4, -1]);
    const firstEntropy = tf.sum(tf.slice(own.entropy, [0, 0], [4, -1]));
    return {
      logProbs: own.logProbs.arraySync(),
      refLogProbs: ref.logProbs.arraySync(),
      values: forward.values!.arraySync(),
      entropy: firstEntropy.dataSync()[0] / tf.sum(first).dataSync()[0],
    };
  });
  items.forEach((item, i) => {
    assert.equal(item.oldLogProbs.length, item.length);
    closeAll(item.oldLogProbs, expected.logProbs[i].slice(0, item.length), 1e-5);
    closeAll(refLogProbs[i], expected.refLogProbs[i].slice(0, item.length), 1e-5);
    closeAll(item.oldValues, expected.values[i].slice(0, item.length), 1e-5);
  });
  close(entropy, expected.entropy, 1e-5, "ppo/entropy");
  policy.dispose();
  reference.dispose();
});

Deno.test("ppo ppoLoss: the fused path's loss and gradient equal the logits path's (value head)", () => {
  const { policy, reference } = fusedModels();
  const items = randomItems(9, 22);
  const batch = makeBatch(items, SPECIALS);
  const [b, t] = batch.targetOut.shape;
  const rng = new Rng(23);
  const random = (scale: number, shift = 0) =>
    tf.mul(
      tf.tensor2d(Float32Array.from({ length: b * t }, () => scale * (rng.next() - 0.5) + shift), [
        b,
        t,
      ]),
      batch.targetMask,
    ) as tf.Tensor2D;
  // Old log-probs near the current ones (some ratios clipped), values, advantages, returns.
  const current = tf.tidy(() => policy.tokenLogProbs(batch, { training: false, temperature: 0.7 }));
  const targets: MinibatchTargets = {
    oldLogProbs: tf.tidy(() => tf.add(current, random(0.6))) as tf.Tensor2D,
    oldValues: random(0.4, 0.1),
    advantages: random(2),
    returns: random(1, 0.3),
  };
  const stats = emptyStepStats;
  for (const entropyCoef of [0, 0.01]) {
    const settings = config({ temperature: 0.7, valueClipRange: 0.05, entropyCoef });
    const fusedStats = stats();
    const fused = tf.variableGrads(
      () => ppoLoss({ policy, reference }, batch, targets, settings, fusedStats),
      policy.variables,
    );
    // Today's path before the change: one forward pass through the logits.
    const logits = tf.variableGrads(() => {
      const forward = policy.forward(batch, { training: false });
      const mask = batch.targetMask;
      const own = tokenLogProbsAndEntropy(forward.logits, batch.targetOut, mask, 0.7);
      const pl = clippedPolicyLoss(
        own.logProbs,
        targets.oldLogProbs,
        targets.advantages,
        mask,
        settings.clipRange,
      );
      const entropy = maskedMean(own.entropy, mask);
      const vl = clippedValueLoss(
        forward.values!,
        targets.oldValues,
        targets.returns,
        mask,
        settings.valueClipRange,
      );
      return tf.add(
        tf.sub(pl.loss, tf.mul(entropy, entropyCoef)),
        tf.mul(vl.loss, settings.valueCoef),
      ) as tf.Scalar;
    }, policy.variables);
    const what = `entropyCoef ${entropyCoef}`;
    close(fused.value.dataSync()[0], logits.value.dataSync()[0], 1e-5, `${what}: loss`);
    assert.ok(fusedStats.clipFraction > 0 && fusedStats.clipFraction < 1, "some ratios clipped");
    assert.ok(fusedStats.valueClipFraction > 0, "some values clipped");
    assert.equal(Number.isNaN(fusedStats.entropy), entropyCoef === 0, `${what}: entropy stat`);
    assert.deepEqual(Object.keys(fused.grads).sort(), Object.keys(logits.grads).sort());
    for (const [name, g] of Object.entries(logits.grads)) {
      const expected = g.dataSync();
      const actual = fused.grads[name].dataSync();
      const scale = Math.max(...Array.from(expected, Math.abs), 1e-6);
      expected.forEach((e, i) =>
        assert.ok(
          Math.abs(actual[i] - e) <= 1e-4 * scale,
          `${what}: d/d${name}[${i}] ${actual[i]} vs ${e} (max |g| ${scale})`,
        )
      );
    }
    tf.dispose([fused.value, logits.value, ...Object.values(fused.grads)]);
    tf.dispose(Object.values(logits.grads));
  }
  tf.dispose([current, ...Object.values(targets)]);
  disposeBatch(batch);
  policy.dispose();
  reference.dispose();
});

// ---------------------------------------------------------------------------------------
// Through the manifest, next to rest

Deno.test("ppo in a smoke experiment: same final metric keys as rest; metrics.jsonl has ppo/*", async () => {
  await withTempDir(async (out) => {
    const manifest = tinyManifest({
      experiment: "ppo_smoke",
      seed: 2,
      model: "transformer",
      bc: { steps: 6, batchSize: 8, evalEvery: 3, evalSize: 4 },
      runs: [
        tinyRestRun(),
        { name: "ppo", algorithm: { name: "ppo", config: { samples: 24 } } },
      ],
    });
    const { result } = await runTiny(manifest, out, { smoke: true });
    const restKeys = Object.keys(result.runs.rest.metrics).filter((k) =>
      !k.startsWith("train/grow")
    );
    for (const key of restKeys) assert.ok(key in result.runs.ppo.metrics, `ppo lacks ${key}`);
    assert.equal(result.runs.ppo.metrics["train/samples"], 24);
    const records = await readMetrics(join(result.dir, "ppo", "metrics.jsonl"));
    const keys = new Set(records.flatMap((r) => Object.keys(r)));
    for (const key of LISTED) assert.ok(keys.has(key), `metrics.jsonl lacks ${key}`);
  });
});
