/**
 * The `auto` backend plugin: the fastest backend that works here. Tries
 * `tensorflow` (only when an installed tfjs-node is found on disk, so no
 * network), then `blas`, `wasm` and `cpu`, and returns the first that
 * initialises; `BackendInfo.detail` lists what was tried and why each earlier
 * one was skipped.
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import type { PluginDeps } from "../../core/plugin.ts";
import type { Backend, BackendInfo } from "../../core/types.ts";
import blas from "./blas.ts";
import cpu from "./cpu.ts";
import tensorflow, { probeTensorflow } from "./tensorflow.ts";
import wasm from "./wasm.ts";
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
}

/** The `auto` backend plugin. */
export default definePlugin({
  kind: "backend",
  name: "auto",
  summary: "Picks the first backend that initialises: tensorflow (if installed), blas, wasm, cpu.",
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
