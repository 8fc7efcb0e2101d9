/**
 * Times the "bench-small" shape: pre-LN encoder-decoder, d_model 256, 4 heads, FFN 1024,
 * 3+3 layers, shared vocabulary 8000, batch 32, source and target length 24, Adam, no
 * dropout. Training: full steps (forward, backward, Adam) in target tokens per second.
 * Decoding: greedy, batch 64, 24 steps with the key/value cache, in tokens per second.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import transformer from "../plugins/models/transformer.ts";
import { makeBatch, nllLoss } from "../core/batch.ts";
import { Adam } from "../core/optim.ts";
import { disposeBatch } from "../core/train.ts";
import { Rng } from "../core/random.ts";
import { pluginDefaults } from "../core/plugin.ts";
import type { ModelFactory } from "../core/policy.ts";

/** The bench-small shape. */
export const BENCH_SMALL = {
  dModel: 256,
  heads: 4,
  ffn: 1024,
  layers: 3,
  vocab: 8000,
  batch: 32,
  length: 24,
  decodeBatch: 64,
  decodeSteps: 24,
} as const;

/** Measured throughput of the bench-small shape on the active backend. */
export interface ModelBench {
  /** Target tokens per second of full training steps. */
  train_tokens_per_s: number;
  /** Greedy decoding tokens per second (batch 64, 24 steps, cached). */
  decode_tokens_per_s: number;
  /** Training steps timed. */
  train_steps: number;
  /** Decoding runs timed. */
  decode_runs: number;
}

function randomIds(rng: Rng, rows: number, length: number, vocab: number): number[][] {
  return Array.from({ length: rows }, () => Array.from({ length }, () => 4 + rng.int(vocab - 4)));
}

/** Times training and decoding for about `seconds` each (after one warm-up call each). */
export async function benchModel(seconds: number): Promise<ModelBench> {
  const s = BENCH_SMALL;
  const factory = transformer.create({
    ...pluginDefaults(transformer),
    dModel: s.dModel,
    heads: s.heads,
    ffn: s.ffn,
    encoderLayers: s.layers,
    decoderLayers: s.layers,
    dropout: 0,
    shareEmbeddings: "all",
    maxPositions: 256,
  } as never, {} as never) as ModelFactory;
  const specials = { pad: 0, bos: 1, eos: 2, unk: 3 };
  const policy = factory.build({
    sourceVocab: s.vocab,
    targetVocab: s.vocab,
    specials,
    valueHead: false,
    seed: 1,
  });
  const rng = new Rng(1);
  // makeBatch appends EOS: length - 1 ids give sequences of exactly `length`.
  const sources = randomIds(rng, s.batch, s.length - 1, s.vocab);
  const targets = randomIds(rng, s.batch, s.length - 1, s.vocab);
  const batch = makeBatch(sources.map((source, i) => ({ source, target: targets[i] })), specials);
  const adam = new Adam(policy.variables);
  const step = () => {
    const { value, grads } = tf.variableGrads(
      () => nllLoss(policy, batch, { labelSmoothing: 0, training: true, average: "token" }),
      policy.variables,
    );
    adam.apply(policy.variables.map((v) => grads[v.name]), 1e-4);
    value.dataSync();
    value.dispose();
    tf.dispose(Object.values(grads));
  };
  step();
  let trainSteps = 0;
  let start = performance.now();
  while (trainSteps < 2 || performance.now() - start < seconds * 1000) {
    step();
    trainSteps++;
  }
  const trainSeconds = (performance.now() - start) / 1000;
  disposeBatch(batch);
  adam.dispose();

  const decodeSources = randomIds(rng, s.decodeBatch, s.length - 1, s.vocab);
  // Greedy stops early only when every row emits EOS; random weights make that unlikely,
  // and decoded tokens are counted as emitted anyway.
  const decode = async () => {
    const out = await policy.greedy(decodeSources, {
      maxLen: s.decodeSteps,
      batchSize: s.decodeBatch,
    });
    return out.reduce((sum, g) => sum + g.tokens.length, 0);
  };
  await decode();
  let runs = 0;
  let tokens = 0;
  start = performance.now();
  while (runs < 2 || performance.now() - start < seconds * 1000) {
    tokens += await decode();
    runs++;
  }
  const decodeSeconds = (performance.now() - start) / 1000;
  policy.dispose();
  return {
    train_tokens_per_s: Math.round((trainSteps * s.batch * s.length) / trainSeconds),
    decode_tokens_per_s: Math.round(tokens / decodeSeconds),
    train_steps: trainSteps,
    decode_runs: runs,
  };
}
