/**
 * The `auto` backend plugin: the fastest backend that works here. Tries
 * `tensorflow` (only when an installed tfjs-node is found on disk, so no
 * network), then `blas`, `wasm` and `cpu`, and takes the first that
 * initialises; then switches to `webgpu` when a hardware adapter is present and a
 * quick probe runs faster there (see {@link webgpuVerdict}); `BackendInfo.detail` lists what was tried and why each earlier
 * one was skipped.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { definePlugin } from "../../core/plugin.ts";
import type { PluginDeps } from "../../core/plugin.ts";
import type { Backend, BackendInfo } from "../../core/types.ts";
import blas from "./blas.ts";
import cpu from "./cpu.ts";
import tensorflow, { probeTensorflow } from "./tensorflow.ts";
import wasm from "./wasm.ts";
import webgpu, {
  type AdapterDescription,
  describeAdapter,
  isSoftwareAdapter,
  requestAdapter,
} from "./webgpu.ts";
import { errorMessage } from "./_tfjs.ts";

/** Config of the `auto` backend. */
export interface AutoConfig {
  /** Try tfjs-node(-gpu) first (only when installed). */
  tryTensorflow: boolean;
  /** Try OpenBLAS. */
  tryBlas: boolean;
  /** Try tfjs-backend-wasm. */
  tryWasm: boolean;
  /** OpenBLAS threads for blas (0 = all cores). */
  threads: number;
  /** Try WebGPU when a hardware adapter is present and a probe finds it faster. */
  tryWebgpu?: boolean;
}

/** Timings of the probe product on both candidates, in milliseconds. */
export interface ProbeTimes {
  /** The host backend auto chose first. */
  hostMs: number;
  /** WebGPU. */
  webgpuMs: number;
}

/**
 * Whether `auto` takes WebGPU: only with a hardware adapter (never a software one such as
 * lavapipe, which is slower than the host backends) and, once probed, only when the probe ran
 * faster there. Returns the verdict and why.
 */
export function webgpuVerdict(
  adapter: AdapterDescription | undefined,
  times?: ProbeTimes,
): { use: boolean; why: string } {
  if (adapter === undefined) return { use: false, why: "no WebGPU adapter" };
  const name = describeAdapter(adapter);
  if (isSoftwareAdapter(adapter)) return { use: false, why: `${name} is a software adapter` };
  if (times === undefined) return { use: true, why: `${name} is a hardware adapter` };
  const ms = `probe ${times.webgpuMs.toFixed(1)} ms vs ${times.hostMs.toFixed(1)} ms`;
  return times.webgpuMs < times.hostMs
    ? { use: true, why: `${name} faster (${ms})` }
    : { use: false, why: `${name} not faster (${ms})` };
}

/** Milliseconds of a [256, 512] x [512, 512] product on the active backend (best of 3). */
async function probeMs(): Promise<number> {
  const a = tf.randomUniform([256, 512]);
  const b = tf.randomUniform([512, 512]);
  let best = Infinity;
  for (let i = 0; i < 4; i++) {
    const start = performance.now();
    const c = tf.matMul(a, b);
    await c.data();
    c.dispose();
    if (i > 0) best = Math.min(best, performance.now() - start); // the first one compiles
  }
  tf.dispose([a, b]);
  return best;
}

/**
 * After host backend `make()` was chosen (and is active): switches to WebGPU when
 * {@link webgpuVerdict} says so, else re-activates the host backend. Notes why.
 */
async function tryWebgpu(
  deps: PluginDeps,
  make: () => Backend | Promise<Backend>,
  notes: string[],
): Promise<BackendInfo | undefined> {
  const found = await requestAdapter();
  const adapter = "missing" in found ? undefined : found.info;
  const first = webgpuVerdict(adapter);
  if (!first.use) {
    notes.push(`webgpu: skipped, ${"missing" in found ? found.missing : first.why}`);
    return undefined;
  }
  const hostMs = await probeMs();
  try {
    const gpuBackend = await webgpu.create(
      { powerPreference: "high-performance", allowSoftware: false },
      deps,
    );
    const info = await gpuBackend.init();
    const verdict = webgpuVerdict(adapter, { hostMs, webgpuMs: await probeMs() });
    if (verdict.use) {
      notes.push(`webgpu: chosen, ${verdict.why} (${info.detail})`);
      return info;
    }
    notes.push(`webgpu: skipped, ${verdict.why}`);
  } catch (err) {
    notes.push(`webgpu: skipped, ${errorMessage(err).split("\n")[0]}`);
  }
  await (await make()).init();
  return undefined;
}

/** The `auto` backend plugin. */
export default definePlugin({
  kind: "backend",
  name: "auto",
  summary: "Picks the first backend that initialises: tensorflow (if installed), blas, wasm, " +
    "cpu; then webgpu if a hardware adapter is faster.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      tryTensorflow: {
        type: "boolean",
        default: true,
        description: "Try tfjs-node-gpu / tfjs-node first; only a copy installed on disk is " +
          "used, nothing is downloaded.",
      },
      tryBlas: {
        type: "boolean",
        default: true,
        description: "Try the OpenBLAS backend (needs --allow-ffi and libopenblas0-pthread).",
      },
      tryWasm: {
        type: "boolean",
        default: true,
        description: "Try the WebAssembly backend before falling back to plain cpu.",
      },
      tryWebgpu: {
        type: "boolean",
        default: true,
        description: "Switch to WebGPU when a hardware adapter is present (never a software " +
          "one such as lavapipe) and a quick matrix-product probe runs faster on it than on " +
          "the host backend chosen first.",
      },
      threads: {
        type: "integer",
        minimum: 0,
        default: 0,
        description: "OpenBLAS threads if blas is chosen; 0 uses every core.",
      },
    },
  },
  create(config: AutoConfig, deps: PluginDeps): Backend {
    return {
      async init(): Promise<BackendInfo> {
        const candidates: [string, boolean, () => Backend | Promise<Backend>][] = [
          ["tensorflow", config.tryTensorflow, () => tensorflow.create({ package: "auto" }, deps)],
          [
            "blas",
            config.tryBlas,
            () => blas.create({ threads: config.threads, libraryPath: "" }, deps),
          ],
          [
            "wasm",
            config.tryWasm,
            () => wasm.create({ simd: true, threads: 1, wasmDir: "" }, deps),
          ],
          ["cpu", true, () => cpu.create({ fastSegmentSum: true }, deps)],
        ];
        const notes: string[] = [];
        let lastError: unknown;
        for (const [name, enabled, make] of candidates) {
          if (!enabled) {
            notes.push(`${name}: disabled by config`);
            continue;
          }
          if (name === "tensorflow") {
            const probes = [probeTensorflow("tfjs-node-gpu"), probeTensorflow("tfjs-node")];
            if (probes.every((p) => p.dir === undefined)) {
              const why = probes.map((p) => `${p.pkg} ${p.reason}`).join(", ");
              notes.push(`tensorflow: skipped, ${why}`);
              continue;
            }
          }
          try {
            const info = await (await make()).init();
            notes.push(`${name}: chosen${info.detail ? ` (${info.detail})` : ""}`);
            if (config.tryWebgpu !== false && name !== "tensorflow") {
              const gpu = await tryWebgpu(deps, make, notes);
              if (gpu !== undefined) return { ...gpu, detail: `auto: ${notes.join("; ")}` };
            }
            return { ...info, detail: `auto: ${notes.join("; ")}` };
          } catch (err) {
            lastError = err;
            notes.push(`${name}: skipped, ${errorMessage(err).split("\n")[0]}`);
          }
        }
        throw new Error(`auto backend: no backend initialised: ${notes.join("; ")}`, {
          cause: lastError,
        });
      },
    };
  },
});
