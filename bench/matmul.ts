/**
 * Matrix-multiply throughput of the compute backends: GFLOP/s of an
 * n x n x n `tf.matMul` (default n = 512) on cpu, wasm and blas, plus the raw
 * OpenBLAS `sgemm` through FFI for reference. Prints one JSON object.
 *
 *     deno run --allow-read --allow-env --allow-sys --allow-ffi bench/matmul.ts [n] [seconds]
 *
 * @module
 */

import { readsOnlyAsync } from "../core/optim.ts";
import * as tf from "@tensorflow/tfjs-core";
import { pluginDefaults, type PluginDefinition, type PluginDeps } from "../core/plugin.ts";
import blas from "../plugins/backends/blas.ts";
import cpu from "../plugins/backends/cpu.ts";
import wasm from "../plugins/backends/wasm.ts";
import { loadBlas, sgemm } from "../plugins/_nn/blas_ffi.ts";
import { errorMessage } from "../plugins/backends/_tfjs.ts";

/** One backend's measurement. */
export interface MatmulResult {
  /** GFLOP/s of the median call (2 n^3 flops per product), or null when not measured. */
  gflops: number | null;
  /** GFLOP/s of the fastest call. */
  bestGflops?: number;
  /** Median seconds per product. */
  seconds?: number;
  /** Products timed. */
  reps?: number;
  /** Threads the backend reported. */
  threads?: number;
  /** Why it was not measured. */
  error?: string;
}

/**
 * Times `run` (after one warm-up call) until `budget` seconds and at least 3 calls have passed;
 * returns the median and the fastest call (the median resists noise from other processes).
 */
function time(run: () => void, budget: number): { seconds: number; best: number; reps: number } {
  run();
  const samples: number[] = [];
  const start = performance.now();
  while (samples.length < 3 || performance.now() - start < budget * 1000) {
    const t0 = performance.now();
    run();
    samples.push((performance.now() - t0) / 1000);
  }
  samples.sort((x, y) => x - y);
  return { seconds: samples[samples.length >> 1], best: samples[0], reps: samples.length };
}

/**
 * Measures `tf.matMul` of two n x n matrices on a backend plugin, initialised with its
 * defaults overridden by `config` (keys its schema does not know are left out, so
 * `{ threads: 1 }` suits every backend).
 */
export async function benchBackend(
  plugin: PluginDefinition<"backend">,
  n: number,
  budget: number,
  config: Record<string, unknown> = {},
): Promise<MatmulResult> {
  let threads: number;
  try {
    const known = plugin.configSchema.properties ?? {};
    const settings: Record<string, unknown> = { ...pluginDefaults(plugin) };
    for (const [key, value] of Object.entries(config)) if (key in known) settings[key] = value;
    const backend = await plugin.create(settings as never, {} as PluginDeps);
    threads = (await backend.init()).threads;
  } catch (err) {
    return { gflops: null, error: errorMessage(err).split("\n")[0] };
  }
  if (readsOnlyAsync()) {
    // A device queues products without waiting: a synchronous loop would time the queueing.
    return { gflops: null, threads, error: "not timed: the backend runs products asynchronously" };
  }
  const a = tf.randomUniform([n, n], -1, 1, "float32", 1);
  const b = tf.randomUniform([n, n], -1, 1, "float32", 2);
  const { seconds, best, reps } = time(() => tf.matMul(a, b).dispose(), budget);
  tf.dispose([a, b]);
  return { ...rates(n, seconds, best), reps, threads };
}

/** Measures the raw FFI `sgemm` (no tfjs) on n x n matrices. */
export function benchSgemm(n: number, budget: number): MatmulResult {
  try {
    const lib = loadBlas();
    const a = Float32Array.from({ length: n * n }, () => Math.random() - 0.5);
    const b = Float32Array.from({ length: n * n }, () => Math.random() - 0.5);
    const c = new Float32Array(n * n);
    const { seconds, best, reps } = time(() => sgemm({ m: n, n, k: n, a, b, c }, lib), budget);
    return { ...rates(n, seconds, best), reps, threads: lib.threads() };
  } catch (err) {
    return { gflops: null, error: errorMessage(err).split("\n")[0] };
  }
}

function rates(n: number, seconds: number, best: number) {
  const flops = 2 * n ** 3;
  return {
    gflops: round(flops / seconds / 1e9),
    bestGflops: round(flops / best / 1e9),
    seconds: round(seconds, 5),
  };
}

function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

if (import.meta.main) {
  const n = Number(Deno.args[0] ?? 512);
  const budget = Number(Deno.args[1] ?? 1);
  const results: Record<string, MatmulResult> = {};
  results.cpu = await benchBackend(cpu, n, budget);
  results.wasm = await benchBackend(wasm, n, budget);
  results.blas = await benchBackend(blas, n, budget);
  results.sgemm_ffi = benchSgemm(n, budget);
  console.log(JSON.stringify(
    {
      bench: "matmul",
      shape: [n, n, n],
      cores: navigator.hardwareConcurrency,
      results,
    },
    null,
    2,
  ));
}
