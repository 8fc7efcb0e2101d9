/**
 * `deno task bench [--json] [--backend NAME]`: times the framework's hot paths on this
 * machine and prints the figures (one JSON line with `--json`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as tf from "@tensorflow/tfjs-core";
import { corpusChrf, sentenceChrf } from "../core/metrics/chrf.ts";
import { sentenceBleu } from "../core/metrics/bleu.ts";
import { createRegistries } from "../core/registry.ts";
import { resolvePluginRef } from "../core/manifest/mod.ts";
import { createPlugin } from "../core/experiment.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { benchBackend } from "../bench/matmul.ts";
import { BENCH_SHAPES, benchModel } from "../bench/model.ts";
import { benchPhases } from "../bench/phases.ts";
import { runMain } from "./_main.ts";
import { UserError } from "../core/errors.ts";

const HELP = `Usage: deno task bench [--json] [--backend NAME] [--threads N] [--shape small|large]
                       [--seconds S] [--model-only] [--phases]

Times, on this machine, with the chosen backend (default auto; webgpu included):
- the "bench-small" transformer (d_model 256, 4 heads, FFN 1024, 3+3 layers,
  shared vocabulary 8000, batch 32, lengths 24, Adam, no dropout): training
  target tokens/s and greedy decoding tokens/s (batch 64, 24 steps, cached),
  also per CPU-second of this process; --shape large: d_model 512, 8 heads,
  FFN 2048, 6+6 layers, training batch 64 (where a GPU should pull ahead);
  --seconds: time per phase (default 5);
- a 512x512x512 matrix multiply (GFLOP/s);
- sentence chrF/BLEU scoring and BPE tokenizer training (not with --model-only).
--phases times instead what experiments spend their time in, at the LibreOffice
experiment's model size (d_model 128, 4 heads, FFN 512, 2+2 layers, vocabulary
4000): one BC step (batch 64), one Grow batch (16 sources x 4 samples at T=0.8)
and one PPO rollout batch with its updates (128 samples, 4 epochs of minibatches
of 64), per call and per second, wall clock and CPU (bench/pytorch_bench.py
--phases times the same phases in PyTorch).
--threads sets the backend's BLAS threads (default 1, as bench/pytorch_bench.py;
0 = every core). Prints a table, or one JSON line with --json.
See bench/README.md for the comparison with PyTorch.`;

/** Runs `fn` repeatedly for about `seconds` and returns calls per second. */
function rate(fn: () => void, seconds: number): number {
  fn();
  let calls = 0;
  const start = performance.now();
  while (performance.now() - start < seconds * 1000) {
    fn();
    calls++;
  }
  return calls / ((performance.now() - start) / 1000);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      json: { type: "boolean", default: false },
      backend: { type: "string", default: "auto" },
      threads: { type: "string", default: "1" },
      shape: { type: "string", default: "small" },
      seconds: { type: "string", default: "5" },
      "model-only": { type: "boolean", default: false },
      phases: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const threads = Number(values.threads);
  if (!/^\d+$/.test(values.threads!) || !Number.isSafeInteger(threads)) {
    throw new UserError(`--threads must be an integer >= 0, got ${JSON.stringify(values.threads)}`);
  }
  const shape = BENCH_SHAPES[values.shape!];
  if (shape === undefined || !Object.hasOwn(BENCH_SHAPES, values.shape!)) {
    throw new UserError(
      `--shape must be one of ${Object.keys(BENCH_SHAPES).join(", ")}, got ` +
        JSON.stringify(values.shape),
    );
  }
  const seconds = Number(values.seconds);
  if (!(seconds > 0 && seconds <= 3600)) {
    throw new UserError(
      `--seconds must be a number in (0, 3600], got ${JSON.stringify(values.seconds)}`,
    );
  }
  const registries = createRegistries(builtinPlugins);
  const deps = { seed: 1, baseDir: Deno.cwd(), smoke: false, log: () => {} };
  const backendRef = await resolvePluginRef(registries, "backend", values.backend, "--backend");
  const backendPlugin = registries.backend.get(backendRef.name);
  const matmul = await benchBackend(backendPlugin, 512, 1, { threads });
  if (matmul.gflops === null && matmul.threads === undefined) {
    // The backend did not start: timing the model would measure whatever backend is active.
    throw new UserError(`--backend ${backendRef.name}: ${matmul.error}`);
  }
  const backendName = backendRef.name === "auto" ? `auto (${tf.getBackend()})` : backendRef.name;
  if (values.phases) {
    const phases = await benchPhases(seconds);
    return report(
      { backend: backendName, threads: matmul.threads ?? null, ...phases },
      values.json!,
    );
  }
  const model = await benchModel({ seconds, shape });
  const modelResult = {
    train_tokens_per_s: model.train_tokens_per_s,
    decode_tokens_per_s: model.decode_tokens_per_s,
    train_tokens_per_cpu_s: model.train_tokens_per_cpu_s,
    decode_tokens_per_cpu_s: model.decode_tokens_per_cpu_s,
    decode_tokens_per_run: model.decode_tokens_per_run,
    train_steps: model.train_steps,
    decode_runs: model.decode_runs,
    shape: values.shape!,
    backend: backendName,
    threads: matmul.threads ?? null,
    matmul_gflops: matmul.gflops,
    ...(matmul.error ? { matmul_error: matmul.error } : {}),
  };
  if (values["model-only"]) return report(modelResult, values.json!);

  const dataRef = await resolvePluginRef(
    registries,
    "data",
    { name: "synthetic", config: { pairs: 3000 } },
    "bench",
  );
  const data = await createPlugin(registries, "data", dataRef, deps);
  const splits = await data.load();
  const hyps = splits.train.map((_, i) => splits.train[(i + 1) % splits.train.length].reference);
  const refs = splits.train.map((e) => e.reference);
  const chrfPerSecond = rate(() => {
    for (let i = 0; i < 200; i++) sentenceChrf(hyps[i], refs[i]);
  }, 0.5) * 200;
  const bleuPerSecond = rate(() => {
    for (let i = 0; i < 200; i++) sentenceBleu(hyps[i], refs[i]);
  }, 0.5) * 200;
  const corpusStart = performance.now();
  corpusChrf(hyps, refs);
  const corpusSeconds = (performance.now() - corpusStart) / 1000;

  const tokenizerRef = await resolvePluginRef(registries, "tokenizer", {
    name: "bpe",
    config: { vocabSize: 2000 },
  }, "bench");
  const tokenizer = await createPlugin(registries, "tokenizer", tokenizerRef, deps);
  const trainStart = performance.now();
  tokenizer.train({ sources: splits.train.map((e) => e.source), targets: refs });
  const tokenizerSeconds = (performance.now() - trainStart) / 1000;

  const result = {
    ...modelResult,
    chrf_sentences_per_s: Math.round(chrfPerSecond),
    bleu_sentences_per_s: Math.round(bleuPerSecond),
    corpus_chrf_seconds: Number(corpusSeconds.toFixed(4)),
    corpus_sentences: hyps.length,
    bpe_train_seconds: Number(tokenizerSeconds.toFixed(4)),
  };
  return report(result, values.json!);
}

/** Prints `result` as a table, or one JSON line; returns the exit code 0. */
function report(result: Record<string, unknown>, json: boolean): number {
  if (json) {
    console.log(JSON.stringify(result));
  } else {
    for (const [key, value] of Object.entries(result)) {
      const shown = typeof value === "object" && value !== null ? JSON.stringify(value) : value;
      console.log(`${key.padEnd(24)} ${shown}`);
    }
  }
  return 0;
}

if (import.meta.main) await runMain("bench", main);
