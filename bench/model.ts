/**
 * Times the "bench-small" shape of the `transformer` model: pre-LN encoder-decoder,
 * d_model 256, 4 heads, FFN 1024, 3+3 layers, shared vocabulary 8000, batch 32, source
 * and target length 24, Adam, no dropout.
 *
 * - Training: full steps after warm-up, taken the way every training loop of the framework
 *   takes them (`optimizerStep` of `core/train.ts`: forward, backward, global-norm clip at
 *   1, the framework's Adam), reported in target tokens per second.
 * - Decoding: greedy, batch 64, 24 steps with the key/value cache, in emitted tokens per
 *   second (the encoder pass included). Decoding uses a freshly initialised policy (same
 *   seed), not the one just trained: a few Adam steps on random targets teach the model to
 *   emit EOS at once, and greedy decoding stops at EOS, so how many positions got decoded
 *   would depend on how many training steps fitted in the time budget. The fresh model
 *   never emits EOS on these sources, so every run decodes all 64 x 24 positions, as
 *   `bench/pytorch_bench.py` does (it has no EOS handling); `decode_tokens_per_run` shows it.
 *
 * Both rates are also given per CPU-second of this process (`*_per_cpu_s`, user + system
 * time of all its threads), which other processes on the machine disturb much less than
 * wall-clock time.
 *
 * Prints one JSON line. Usage:
 *
 *     deno run --allow-read --allow-env --allow-sys --allow-ffi bench/model.ts \
 *       [--backend cpu|blas|wasm] [--seconds 8] [--threads 1]
 *
 * `--backend` loads `plugins/backends/<name>.ts` when it exists (its default export's
 * `create(defaults).init()` activates the backend) and otherwise falls back to plain
 * tfjs-cpu.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { parseArgs } from "node:util";
import process from "node:process";
import transformer from "../plugins/models/transformer/mod.ts";
import { Adam } from "../core/optim.ts";
import { optimizerStep } from "../core/train.ts";
import { makeBatch, nllLoss } from "../core/batch.ts";
import { Rng } from "../core/random.ts";
import type { ModelFactory, Policy } from "../core/types.ts";

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
};

/** A model and batch shape {@link benchModel} can time. */
export type BenchShape = { readonly [K in keyof typeof BENCH_SMALL]: number };

/**
 * The larger shape where a GPU should pull ahead: d_model 512, 8 heads, FFN 2048, 6+6 layers,
 * training batch 64 (lengths, vocabulary and decoding as bench-small).
 */
export const BENCH_LARGE: BenchShape = {
  ...BENCH_SMALL,
  dModel: 512,
  heads: 8,
  ffn: 2048,
  layers: 6,
  batch: 64,
};

/** The shapes by the name `deno task bench --shape` takes. */
export const BENCH_SHAPES: Readonly<Record<string, BenchShape>> = {
  small: BENCH_SMALL,
  large: BENCH_LARGE,
};

/** Measured throughput of a bench shape on the active backend. */
export interface ModelBench {
  /** Target tokens per second of full training steps. */
  train_tokens_per_s: number;
  /** Greedy decoding tokens per second (batch 64, 24 steps, cached). */
  decode_tokens_per_s: number;
  /** Milliseconds per training step. */
  train_step_ms: number;
  /** Milliseconds per greedy batch. */
  decode_batch_ms: number;
  /** Target tokens per CPU-second (user + system, all threads) of full training steps. */
  train_tokens_per_cpu_s: number;
  /** Greedy decoding tokens per CPU-second. */
  decode_tokens_per_cpu_s: number;
  /** Tokens emitted per greedy batch (64 x 24 = 1536 when no row stopped early). */
  decode_tokens_per_run: number;
  /** Training steps timed. */
  train_steps: number;
  /** Decoding runs timed. */
  decode_runs: number;
}

function randomIds(rng: Rng, rows: number, length: number, vocab: number): number[][] {
  return Array.from({ length: rows }, () => Array.from({ length }, () => 4 + rng.int(vocab - 4)));
}

/** CPU time (user + system, every thread) of this process so far, in seconds. */
function cpuSeconds(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

/** Options of {@link benchModel}. */
export interface BenchOptions {
  /** Seconds to time training and decoding, each. */
  seconds: number;
  /** The model and batch shape (default {@link BENCH_SMALL}). */
  shape: BenchShape;
}

/** Special token ids of the bench models. */
export const BENCH_SPECIALS = { pad: 0, bos: 1, eos: 2, unk: 3 };

/**
 * A bench transformer of `shape`'s size (one vocabulary, every embedding tied, `layers` encoder and
 * decoder layers), seeded with 1, with or without a value head.
 */
export function benchTransformer(
  shape: { dModel: number; heads: number; ffn: number; layers: number; vocab: number },
  dropout: number,
  valueHead: boolean,
): Policy {
  const factory = transformer.create({
    dModel: shape.dModel,
    heads: shape.heads,
    ffn: shape.ffn,
    encoderLayers: shape.layers,
    decoderLayers: shape.layers,
    dropout,
    shareEmbeddings: "all",
  }, {} as never) as ModelFactory;
  return factory.build({
    sourceVocab: shape.vocab,
    targetVocab: shape.vocab,
    specials: BENCH_SPECIALS,
    valueHead,
    seed: 1,
  });
}

/** Times training and decoding on the active backend (one warm-up call each first). */
export async function benchModel(
  options: Partial<BenchOptions> | number = {},
): Promise<ModelBench> {
  const opts: BenchOptions = {
    seconds: 8,
    shape: BENCH_SMALL,
    ...(typeof options === "number" ? { seconds: options } : options),
  };
  const s = opts.shape;
  const build = () => benchTransformer(s, 0, false);
  const policy = build();
  const rng = new Rng(1);
  // makeBatch appends EOS: length - 1 ids give sequences of exactly `length`.
  const sources = randomIds(rng, s.batch, s.length - 1, s.vocab);
  const targets = randomIds(rng, s.batch, s.length - 1, s.vocab);
  const batch = makeBatch(
    sources.map((source, i) => ({ source, target: targets[i] })),
    BENCH_SPECIALS,
  );
  const optimizer = new Adam(policy.variables);
  const step = () =>
    optimizerStep(
      policy.variables,
      optimizer,
      () => nllLoss(policy, batch, { labelSmoothing: 0, training: true, average: "token" }),
      1e-4,
      1,
    );
  await step();
  await step();
  let trainSteps = 0;
  let start = performance.now();
  let cpuStart = cpuSeconds();
  while (trainSteps < 3 || performance.now() - start < opts.seconds * 1000) {
    await step();
    trainSteps++;
  }
  const trainSeconds = (performance.now() - start) / 1000;
  const trainCpu = cpuSeconds() - cpuStart;
  tf.dispose(Object.values(batch));
  optimizer.dispose();
  policy.dispose();

  const fresh = build();

  const decodeSources = randomIds(rng, s.decodeBatch, s.length - 1, s.vocab);
  const decode = async () => {
    const out = await fresh.greedy(decodeSources, {
      maxLen: s.decodeSteps,
      batchSize: s.decodeBatch,
    });
    return out.reduce((sum, g) => sum + g.tokens.length, 0);
  };
  await decode();
  let runs = 0;
  let tokens = 0;
  start = performance.now();
  cpuStart = cpuSeconds();
  while (runs < 3 || performance.now() - start < opts.seconds * 1000) {
    tokens += await decode();
    runs++;
  }
  const decodeSeconds = (performance.now() - start) / 1000;
  const decodeCpu = cpuSeconds() - cpuStart;
  fresh.dispose();
  const trainTokens = trainSteps * s.batch * s.length;
  return {
    train_tokens_per_s: Math.round(trainTokens / trainSeconds),
    decode_tokens_per_s: Math.round(tokens / decodeSeconds),
    train_tokens_per_cpu_s: Math.round(trainTokens / trainCpu),
    decode_tokens_per_cpu_s: Math.round(tokens / decodeCpu),
    decode_tokens_per_run: Math.round(tokens / runs),
    train_step_ms: Math.round((1000 * trainSeconds) / trainSteps * 10) / 10,
    decode_batch_ms: Math.round((1000 * decodeSeconds) / runs * 10) / 10,
    train_steps: trainSteps,
    decode_runs: runs,
  };
}

/** Activates backend `name` through its plugin when `plugins/backends/<name>.ts` exists, else tfjs-cpu. */
async function activate(name: string, threads: number): Promise<Record<string, unknown>> {
  const url = new URL(`../plugins/backends/${name}.ts`, import.meta.url);
  let exists = false;
  try {
    exists = Deno.statSync(url).isFile;
  } catch {
    exists = false;
  }
  if (exists) {
    const plugin = (await import(url.href)).default as {
      configSchema: { properties?: Record<string, { default?: unknown }> };
      create(config: unknown, deps: unknown): { init(): Promise<Record<string, unknown>> };
    };
    const props = plugin.configSchema.properties ?? {};
    const config: Record<string, unknown> = Object.fromEntries(
      Object.entries(props).map(([k, v]) => [k, v.default]),
    );
    if (threads > 0 && "threads" in config) config.threads = threads;
    return { ...(await plugin.create(config, {}).init()) };
  }
  await import("@tensorflow/tfjs");
  await tf.setBackend("cpu");
  return {
    name: "cpu",
    tfBackend: "cpu",
    detail: `plugins/backends/${name}.ts not found: plain tfjs-cpu`,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      backend: { type: "string", default: "blas" },
      seconds: { type: "string", default: "8" },
      threads: { type: "string", default: "1" },
    },
  });
  const info = await activate(values.backend!, Number(values.threads));
  const result = await benchModel({ seconds: Number(values.seconds) });
  console.log(
    JSON.stringify({
      backend: info.name ?? values.backend,
      tfBackend: tf.getBackend(),
      threads: info.threads ?? null,
      ...result,
    }),
  );
}
