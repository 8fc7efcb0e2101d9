/**
 * The `cpu` backend plugin: TensorFlow.js's plain JavaScript backend
 * (`@tensorflow/tfjs-backend-cpu`). Always available, single-threaded, slow on
 * matrix products; the reference the other backends are tested against.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { definePlugin } from "../../core/plugin.ts";
import type { Backend, BackendInfo } from "../../core/types.ts";
import { activateBackend } from "./_tfjs.ts";
import { cpuSegmentSumKernel, replaceKernel } from "./_tfjs_kernels.ts";

/** Config of the `cpu` backend. */
export interface CpuConfig {
  /** Replace tfjs-cpu's O(segments x rows) UnsortedSegmentSum (gather's gradient) by a scatter. */
  fastSegmentSum: boolean;
}

let originalSegmentSum: tf.KernelConfig | undefined;

/**
 * Installs (`on`) or removes the O(n) UnsortedSegmentSum kernel on the `cpu` backend.
 * The replacement sums in the same order in double precision, so results are unchanged.
 */
export function useFastSegmentSumOnCpu(on: boolean): void {
  const current = tf.getKernel(tf.UnsortedSegmentSum, "cpu");
  if (on) {
    if (originalSegmentSum === undefined) originalSegmentSum = current;
    replaceKernel(cpuSegmentSumKernel("cpu"));
  } else if (originalSegmentSum !== undefined) {
    replaceKernel(originalSegmentSum);
    originalSegmentSum = undefined;
  }
}

/** The `cpu` backend plugin. */
export default definePlugin({
  kind: "backend",
  name: "cpu",
  summary: "TensorFlow.js's plain JavaScript CPU backend (always available, single-threaded).",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      fastSegmentSum: {
        type: "boolean",
        default: true,
        description: "Replace tfjs-cpu's UnsortedSegmentSum (the gradient of gather, i.e. of " +
          "embedding lookups), which makes one pass over the data per vocabulary entry, with " +
          "a single-pass scatter-add that gives the same results.",
      },
    },
  },
  create(config: CpuConfig): Backend {
    return {
      async init(): Promise<BackendInfo> {
        useFastSegmentSumOnCpu(config.fastSegmentSum);
        await activateBackend("cpu");
        return {
          name: "cpu",
          tfBackend: "cpu",
          threads: 1,
          detail: `@tensorflow/tfjs-backend-cpu ${tf.version_core}` +
            (config.fastSegmentSum ? ", O(n) UnsortedSegmentSum" : ""),
        };
      },
    };
  },
});
