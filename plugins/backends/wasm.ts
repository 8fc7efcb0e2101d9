/**
 * The `wasm` backend plugin: `@tensorflow/tfjs-backend-wasm` (XNNPACK compiled
 * to WebAssembly, with SIMD), plus JavaScript kernels for what it lacks.
 *
 * tfjs-backend-wasm 4.22 has no `UnsortedSegmentSum`, so the gradient of
 * `tf.gather` (every embedding lookup) fails on it; this plugin registers an
 * O(n) scatter-add for it. Other kernels that exist only on the cpu backend
 * (Einsum, Conv2DBackpropFilter, DepthwiseConv2dNativeBackprop{Filter,Input},
 * the Ragged* and StaticRegexReplace kernels) are bridged: their inputs are
 * copied to a private tfjs-cpu backend, run there, and the outputs copied back.
 * Its `_FusedMatMul` adds the bias wrongly when an operand is transposed (and
 * rejects non-vector biases), and its transposed matMuls (every matMul
 * gradient) are 15-30x slower than untransposed ones; the wrappers here
 * transpose explicitly and reroute odd biases through BatchMatMul + Add.
 *
 * Multi-threaded wasm does not work under Deno: the threaded build starts its
 * pthreads as Node `worker_threads` from a Blob URL, which Deno rejects
 * (`ERR_WORKER_PATH`), and tfjs reports `WASM_HAS_MULTITHREAD_SUPPORT=false`
 * anyway. So `threads` must be 1; use the `blas` backend for multi-core work.
 *
 * The package is imported only when `init` runs, so merely loading this plugin
 * does not register the wasm backend (which would become tfjs's default).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import { definePlugin } from "../../core/plugin.ts";
import { UserError } from "../../core/errors.ts";
import type { Backend, BackendInfo } from "../../core/types.ts";
import {
  type NumericArray,
  replaceKernel,
  segmentSumInto,
  segmentSumShape,
} from "./_tfjs_kernels.ts";
import { activateBackend, errorMessage, findPackageDirs, quietCpuHint } from "./_tfjs.ts";

/** The tfjs backend name of tfjs-backend-wasm. */
export const WASM_BACKEND = "wasm";

/** The .wasm binaries tfjs-backend-wasm 4.22 ships. */
export const WASM_BINARIES = [
  "tfjs-backend-wasm.wasm",
  "tfjs-backend-wasm-simd.wasm",
  "tfjs-backend-wasm-threaded-simd.wasm",
] as const;

/** Config of the `wasm` backend. */
export interface WasmConfig {
  /** Use the SIMD build. */
  simd: boolean;
  /** Threads; only 1 works under Deno. */
  threads: number;
  /** Folder holding the .wasm binaries; "" finds the installed package. */
  wasmDir: string;
}

/** The subset of tfjs-backend-wasm's `BackendWasm` the bridging kernels use. */
interface WasmBackendLike {
  readSync(dataId: tf.DataId): unknown;
  makeOutput(
    shape: number[],
    dtype: tf.DataType,
    memoryOffset?: number,
    values?: unknown,
  ): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): NumericArray;
}

function hasBinaries(dir: string): boolean {
  try {
    return WASM_BINARIES.slice(0, 2).every((name) => Deno.statSync(`${dir}/${name}`).isFile);
  } catch {
    return false;
  }
}

/**
 * The folder that holds tfjs-backend-wasm's .wasm binaries: where the import map resolves the
 * package (Deno's npm cache or `node_modules`), else any installed copy of the same version.
 */
export function locateWasmDir(version = "4.22.0"): string | undefined {
  const candidates: string[] = [];
  try {
    const resolved = new URL(import.meta.resolve("@tensorflow/tfjs-backend-wasm"));
    if (resolved.protocol === "file:") {
      candidates.push(decodeURIComponent(new URL(".", resolved).pathname).replace(/\/$/, ""));
    }
  } catch { /* not resolvable as a file */ }
  for (const pkg of findPackageDirs("@tensorflow/tfjs-backend-wasm", version)) {
    candidates.push(`${pkg}/dist`);
  }
  return candidates.find(hasBinaries);
}

/** An O(n) UnsortedSegmentSum working directly on the wasm heap. */
function wasmSegmentSumKernel(): tf.KernelConfig {
  return {
    kernelName: tf.UnsortedSegmentSum,
    backendName: WASM_BACKEND,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const wasm = backend as unknown as WasmBackendLike;
      const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
      const numSegments = (attrs as unknown as { numSegments: number }).numSegments;
      if (x.dtype !== "float32" && x.dtype !== "int32") {
        throw new Error(`unsortedSegmentSum: unsupported dtype ${x.dtype}`);
      }
      const { shape, rowSize } = segmentSumShape(x, segmentIds, numSegments);
      // Allocate first: malloc may grow the heap and detach earlier views.
      const out = wasm.makeOutput(shape, x.dtype);
      if (tf.util.sizeFromShape(shape) === 0) return out;
      segmentSumInto(
        wasm.typedArrayFromHeap(x),
        wasm.typedArrayFromHeap(segmentIds),
        numSegments,
        rowSize,
        wasm.typedArrayFromHeap(out),
      );
      return out;
    },
  };
}

let helperCpu: MathBackendCPU | undefined;

/**
 * Runs a cpu kernel for the wasm backend: copies the inputs into a private tfjs-cpu backend,
 * runs `config` there and copies the outputs back into wasm memory.
 */
function bridgedKernel(config: tf.KernelConfig): tf.KernelConfig {
  return {
    kernelName: config.kernelName,
    backendName: WASM_BACKEND,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const wasm = backend as unknown as WasmBackendLike;
      if (!helperCpu) {
        helperCpu = new MathBackendCPU();
        quietCpuHint(helperCpu);
      }
      const cpu = helperCpu;
      // Some kernels (Einsum, AddN, Concat, ...) take their inputs as an array.
      const cpuInputs = (Array.isArray(inputs) ? [] : {}) as Record<string, tf.TensorInfo>;
      const written: tf.DataId[] = [];
      for (const [name, info] of Object.entries(inputs)) {
        if (info == null) continue;
        const values = wasm.readSync(info.dataId) as tf.backend_util.BackendValues;
        const dataId = cpu.write(values, info.shape, info.dtype);
        written.push(dataId);
        cpuInputs[name] = { dataId, shape: info.shape, dtype: info.dtype };
      }
      try {
        const result = config.kernelFunc({ inputs: cpuInputs, backend: cpu, attrs });
        const outputs = Array.isArray(result) ? result : [result];
        const copied = outputs.map((o) => {
          const values = cpu.readSync(o.dataId);
          cpu.disposeData(o.dataId, true);
          return wasm.makeOutput(o.shape, o.dtype, undefined, values);
        });
        return Array.isArray(result) ? copied : copied[0];
      } finally {
        for (const id of written) cpu.disposeData(id, true);
      }
    },
  };
}

/** Runs wasm kernel `name` (from the registry) on `backend`. */
function runWasmKernel(
  name: string,
  inputs: tf.NamedTensorInfoMap,
  backend: tf.KernelBackend,
  attrs: tf.NamedAttrMap = {},
): tf.TensorInfo {
  const kernel = tf.getKernel(name, WASM_BACKEND);
  if (!kernel) throw new Error(`wasm backend has no ${name} kernel`);
  return kernel.kernelFunc({ inputs, backend, attrs }) as tf.TensorInfo;
}

const ACTIVATION_KERNELS: Record<string, string> = {
  relu: tf.Relu,
  relu6: tf.Relu6,
  elu: tf.Elu,
  sigmoid: tf.Sigmoid,
  leakyrelu: tf.LeakyRelu,
  prelu: tf.Prelu,
};

/** `x` with its last two dimensions swapped (a new wasm tensor the caller disposes). */
function swapLastTwo(x: tf.TensorInfo, backend: tf.KernelBackend): tf.TensorInfo {
  const rank = x.shape.length;
  const perm = Array.from({ length: rank }, (_, i) => i);
  [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1], perm[rank - 2]];
  return runWasmKernel(tf.Transpose, { x }, backend, { perm });
}

/**
 * Materialises the transposes of a matMul: returns operands to multiply untransposed and the
 * temporaries to dispose afterwards.
 */
function untransposed(
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
  backend: tf.KernelBackend,
): { a: tf.TensorInfo; b: tf.TensorInfo; temps: tf.TensorInfo[] } {
  const temps: tf.TensorInfo[] = [];
  if (transposeA) temps.push(a = swapLastTwo(a, backend));
  if (transposeB) temps.push(b = swapLastTwo(b, backend));
  return { a, b, temps };
}

/**
 * Wraps tfjs-backend-wasm's `BatchMatMul`, whose transposed variants (every matMul gradient)
 * run 15-30x slower than the plain one (1-2 vs ~32 GFLOP/s at 512x512 here): the operands are
 * transposed explicitly (O(n^2)) and multiplied untransposed.
 */
function fastTransposedMatMul(original: tf.KernelConfig): tf.KernelConfig {
  return {
    ...original,
    kernelFunc: (args) => {
      const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs;
      if (!transposeA && !transposeB) return original.kernelFunc(args);
      const backend = args.backend as tf.KernelBackend;
      const inputs = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { a, b, temps } = untransposed(inputs.a, inputs.b, transposeA, transposeB, backend);
      try {
        return original.kernelFunc({
          inputs: { a, b },
          backend,
          attrs: { transposeA: false, transposeB: false },
        });
      } finally {
        for (const t of temps) backend.disposeData(t.dataId);
      }
    },
  };
}

/**
 * Wraps tfjs-backend-wasm's `_FusedMatMul`, which in 4.22 adds the bias wrongly whenever
 * `transposeA` or `transposeB` is set (off by up to the bias's size), is as slow as
 * BatchMatMul when transposed, and rejects a bias that is not rank 1. Transposes are
 * materialised first (as in {@link fastTransposedMatMul}); a bias of another rank runs as
 * BatchMatMul + Add + activation, all wasm kernels.
 */
function fixedFusedMatMul(original: tf.KernelConfig): tf.KernelConfig {
  return {
    ...original,
    kernelFunc: (args) => {
      const inputs = args.inputs as {
        a: tf.TensorInfo;
        b: tf.TensorInfo;
        bias?: tf.TensorInfo;
        preluActivationWeights?: tf.TensorInfo;
      };
      const { bias, preluActivationWeights } = inputs;
      const attrs = args.attrs as unknown as tf._FusedMatMulAttrs;
      const { transposeA, transposeB, activation, leakyreluAlpha } = attrs;
      if (!transposeA && !transposeB && (bias == null || bias.shape.length === 1)) {
        return original.kernelFunc(args);
      }
      const backend = args.backend as tf.KernelBackend;
      const { a, b, temps } = untransposed(inputs.a, inputs.b, transposeA, transposeB, backend);
      try {
        if (bias == null || bias.shape.length === 1) {
          return original.kernelFunc({
            inputs: { ...inputs, a, b },
            backend,
            attrs: { ...attrs, transposeA: false, transposeB: false },
          });
        }
        const product = runWasmKernel(tf.BatchMatMul, { a, b }, backend, {
          transposeA: false,
          transposeB: false,
        });
        const sum = runWasmKernel(tf.Add, { a: product, b: bias }, backend);
        backend.disposeData(product.dataId);
        const act = activation ?? "linear";
        if (act === "linear") return sum;
        const kernel = ACTIVATION_KERNELS[act];
        if (kernel === undefined) throw new Error(`${act} activation not supported by wasm matMul`);
        const actInputs: tf.NamedTensorInfoMap = act === "prelu"
          ? { x: sum, alpha: preluActivationWeights! }
          : { x: sum };
        const actAttrs: tf.NamedAttrMap = act === "leakyrelu"
          ? { alpha: leakyreluAlpha ?? 0.2 }
          : {};
        const out = runWasmKernel(kernel, actInputs, backend, actAttrs);
        backend.disposeData(sum.dataId);
        return out;
      } finally {
        for (const t of temps) backend.disposeData(t.dataId);
      }
    },
  };
}

/** Kernels only the cpu backend has that cannot be bridged (complex numbers, canvas drawing). */
const NOT_BRIDGED = new Set<string>([
  tf.Complex,
  tf.ComplexAbs,
  tf.FFT,
  tf.IFFT,
  tf.Imag,
  tf.Real,
  "Draw",
]);

/**
 * Registers the JavaScript kernels tfjs-backend-wasm lacks: a native-speed UnsortedSegmentSum
 * and cpu bridges for the rest; and speeds up its transposed matMuls and fixes its
 * `_FusedMatMul` (see {@link fastTransposedMatMul} and {@link fixedFusedMatMul}).
 * Returns the names of the kernels it added or replaced.
 */
export function registerWasmExtraKernels(): string[] {
  const wasmKernels = new Set(tf.getKernelsForBackend(WASM_BACKEND).map((k) => k.kernelName));
  const added: string[] = [];
  const matMul = tf.getKernel(tf.BatchMatMul, WASM_BACKEND);
  if (matMul) {
    replaceKernel(fastTransposedMatMul(matMul));
    added.push(`${tf.BatchMatMul} (fast transposes)`);
  }
  const fused = tf.getKernel(tf._FusedMatMul, WASM_BACKEND);
  if (fused) {
    replaceKernel(fixedFusedMatMul(fused));
    added.push(`${tf._FusedMatMul} (bias fix, fast transposes)`);
  }
  for (const config of tf.getKernelsForBackend("cpu")) {
    const name = config.kernelName;
    if (wasmKernels.has(name) || NOT_BRIDGED.has(name)) continue;
    if (name === tf.UnsortedSegmentSum) replaceKernel(wasmSegmentSumKernel());
    else replaceKernel(bridgedKernel(config));
    added.push(name);
  }
  return added.sort();
}

let added: string[] | undefined;

/** The `wasm` backend plugin. */
export default definePlugin({
  kind: "backend",
  name: "wasm",
  summary: "tfjs WebAssembly backend (XNNPACK, SIMD, single-threaded under Deno), with JS " +
    "kernels for what it lacks (UnsortedSegmentSum = gather's gradient, ...).",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      simd: {
        type: "boolean",
        default: true,
        description:
          "Use the SIMD build of the wasm binary (faster; false forces the plain build).",
      },
      threads: {
        type: "integer",
        minimum: 1,
        default: 1,
        description: "Threads. Only 1 works under Deno: the multi-threaded build starts Node " +
          "worker_threads from a Blob URL, which Deno rejects. Use the blas backend for cores.",
      },
      wasmDir: {
        type: "string",
        default: "",
        description: 'Folder holding tfjs-backend-wasm\'s .wasm files; "" finds the installed ' +
          "package (Deno's npm cache or node_modules).",
      },
    },
  },
  create(config: WasmConfig): Backend {
    return {
      async init(): Promise<BackendInfo> {
        if (config.threads !== 1) {
          throw new UserError(
            `wasm backend: threads=${config.threads} is not supported under Deno (tfjs's ` +
              "multi-threaded wasm build starts Node worker_threads from a Blob URL, which Deno " +
              "rejects with ERR_WORKER_PATH); use threads: 1, or the blas backend for multi-core " +
              "matrix products",
          );
        }
        const wasmModule = await import("@tensorflow/tfjs-backend-wasm");
        const dir = config.wasmDir || locateWasmDir();
        if (config.wasmDir && !hasBinaries(config.wasmDir)) {
          throw new UserError(
            `wasm backend: wasmDir ${JSON.stringify(config.wasmDir)} does not hold ` +
              `${WASM_BINARIES.slice(0, 2).join(" and ")}`,
          );
        }
        if (tf.findBackend(WASM_BACKEND) === null) {
          tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", false);
          if (!config.simd) tf.env().set("WASM_HAS_SIMD_SUPPORT", false);
          // With no folder found, the package falls back to the folder of its own script.
          if (dir) wasmModule.setWasmPaths(`${dir}/`);
        }
        added ??= registerWasmExtraKernels();
        try {
          await activateBackend(WASM_BACKEND);
        } catch (err) {
          throw new Error(
            `wasm backend: ${errorMessage(err)} (.wasm folder: ${dir ?? "package default"})`,
            { cause: err },
          );
        }
        const simd = await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT");
        return {
          name: "wasm",
          tfBackend: WASM_BACKEND,
          threads: wasmModule.getThreadsCount(),
          detail: `@tensorflow/tfjs-backend-wasm ${wasmModule.version_wasm}, ` +
            `${simd ? "SIMD" : "no SIMD"}, binaries in ${dir ?? "package default"}; ` +
            `JS kernels: ${added.join(", ")}`,
        };
      },
    };
  },
});
