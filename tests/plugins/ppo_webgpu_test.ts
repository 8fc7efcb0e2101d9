/**
 * Online PPO on the `webgpu` backend against `cpu`: a tiny run (a tiny transformer, two
 * rollout batches of 8 samples, two minibatch updates each) with the same seed on both
 * backends. Rollout log-probabilities and values, the entropy diagnostic and the update
 * statistics are read asynchronously (WebGPU under Deno has no synchronous read); the
 * samples, rewards and statistics match cpu's. Skipped where Deno has no WebGPU adapter.
 */

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { createAjv } from "../../core/manifest/ajv.ts";
import type { PluginDeps } from "../../core/plugin.ts";
import type { Metrics, ModelFactory, RunContext, SpecialIds, Tokenizer } from "../../core/types.ts";
import cpu from "../../plugins/backends/cpu.ts";
import webgpu, { requestAdapter } from "../../plugins/backends/webgpu.ts";
import ppo from "../../plugins/algorithms/ppo/mod.ts";
import { type PpoConfig, runPpo } from "../../plugins/algorithms/ppo/loop.ts";
import transformer from "../../plugins/models/transformer/mod.ts";
import { tinyEvalSettings } from "../_experiment.ts";

const found = await requestAdapter();
const noAdapter = "missing" in found;
if (noAdapter) console.warn(`ppo webgpu test skipped: ${found.missing}`);

const deps = {} as PluginDeps;
const SPECIALS: SpecialIds = { pad: 0, bos: 1, eos: 2, unk: 3 };
const ALPHABET = "abcd";

async function use(name: "cpu" | "webgpu"): Promise<void> {
  const backend = name === "cpu"
    ? await cpu.create({ fastSegmentSum: true }, deps)
    : await webgpu.create({ powerPreference: "high-performance", allowSoftware: true }, deps);
  await backend.init();
  assert.equal(tf.getBackend(), name);
}

/** One id per character of "abcd" (ids 4..7). */
const tokenizer: Tokenizer = {
  specials: SPECIALS,
  trained: true,
  train() {},
  vocabSize: () => 4 + ALPHABET.length,
  encode: (text) => [...text].map((c) => (ALPHABET.includes(c) ? 4 + ALPHABET.indexOf(c) : 3)),
  decode: (ids) =>
    ids.slice(0, ids.includes(SPECIALS.eos) ? ids.indexOf(SPECIALS.eos) : ids.length)
      .filter((id) => id >= 4).map((id) => ALPHABET[id - 4]).join(""),
  save: () => ({}),
  load() {},
};

/** The share of "a" in the output. */
const reward = {
  needsReference: false,
  score: (rows: readonly { hypothesis: string }[]) =>
    Promise.resolve(
      rows.map(({ hypothesis: h }) =>
        h.length === 0 ? 0 : [...h].filter((c) => c === "a").length / h.length
      ),
    ),
};

/** Runs a tiny PPO on `backend`; returns the metrics records of its rollout batches. */
async function tinyPpo(backend: "cpu" | "webgpu"): Promise<Metrics[]> {
  await use(backend);
  const dir = await Deno.makeTempDir({ prefix: "ppo_webgpu_test_" });
  const factory = transformer.create(
    { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1, dropout: 0 },
    deps,
  ) as ModelFactory;
  const build = (valueHead: boolean) =>
    factory.build({ sourceVocab: 8, targetVocab: 8, specials: SPECIALS, seed: 11, valueHead });
  const pairs = ["ab", "cd", "abc", "dca", "bb", "cab", "dd", "acd"].map((s) => ({
    source: s,
    reference: s,
  }));
  const records: Metrics[] = [];
  const ctx = {
    experiment: "unit",
    run: "ppo",
    dir,
    sharedDir: dir,
    fingerprint: "unit",
    seed: 3,
    smoke: false,
    resume: false,
    splits: { train: pairs, valid: pairs.slice(0, 2), select: pairs.slice(0, 2), test: [] },
    tokenizer,
    reward,
    metrics: {
      log(record: Metrics) {
        if (record["ppo/reward"] !== undefined) records.push(record);
        return Promise.resolve();
      },
    },
    bcPolicy: (options: { valueHead?: boolean } = {}) =>
      Promise.resolve(build(options.valueHead ?? false)),
    evaluation: tinyEvalSettings({ maxLen: 5 }),
    progress: () => ({ tick() {}, done() {} }),
    log: () => {},
  } as unknown as RunContext;
  const ajv = createAjv();
  const validate = ajv.compile(ppo.configSchema);
  const config: Record<string, unknown> = {
    samples: 16,
    rolloutSize: 8,
    samplesPerSource: 2,
    minibatchSize: 4,
    epochs: 1,
    entropyCoef: 0.01,
    evalEvery: 0,
  };
  assert.ok(validate(config), ajv.errorsText(validate.errors));
  try {
    await runPpo(ctx, config as unknown as PpoConfig);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return records;
}

const COMPARED = [
  "ppo/samples",
  "ppo/reward",
  "ppo/kl",
  "ppo/entropy",
  "ppo/loss",
  "ppo/policy_loss",
  "ppo/value_loss",
  "ppo/clip_fraction",
  "ppo/approx_kl",
  "ppo/update_entropy",
  "ppo/grad_norm",
  "ppo/explained_variance",
];

Deno.test({
  name: "webgpu: a tiny ppo run matches cpu (samples, rewards, rollout and update statistics)",
  ignore: noAdapter,
}, async () => {
  const want = await tinyPpo("cpu");
  const got = await tinyPpo("webgpu");
  await use("cpu");
  assert.equal(want.length, 2);
  assert.equal(got.length, want.length);
  got.forEach((record, r) => {
    for (const key of COMPARED) {
      const [a, b] = [record[key], want[r][key]];
      assert.ok(Number.isFinite(b), `cpu ${key} = ${b}`);
      assert.ok(
        Math.abs(a - b) <= 1e-3 * (1 + Math.abs(b)),
        `rollout ${r + 1} ${key}: webgpu ${a}, cpu ${b}`,
      );
    }
  });
});
