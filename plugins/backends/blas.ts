/**
 * The `blas` backend plugin: TensorFlow.js's CPU backend with its matrix
 * products (`BatchMatMul`, `_FusedMatMul`) done by OpenBLAS's `cblas_sgemm`
 * through `Deno.dlopen`, multi-threaded. Everything else is tfjs-cpu.
 *
 * It registers a tfjs backend named `blas`: a `MathBackendCPU` carrying a copy
 * of every cpu kernel, with the matmul kernels overriding the copies, as do
 * faster JavaScript kernels from `_tfjs_kernels.ts` for what dominated a transformer
 * training step once matmuls were fast: UnsortedSegmentSum (gather's gradient),
 * the float32 broadcasting Neg/Add/Sub/Multiply/RealDiv/Maximum/Minimum/
 * SquaredDifference, strided Slice/SplitV, Transpose without index arrays,
 * Sum/Mean/Max/Min/Prod over any axes without a transpose, last-axis Softmax,
 * float32 Exp/Log/Sqrt/Rsqrt/Square/Abs/Relu/Sigmoid/Tanh/Step, broadcasting
 * comparisons, GatherV2, Tile and Concat. All give tfjs-cpu's exact results.
 * Gradients need nothing extra: the tfjs gradient definitions of
 * matMul/fusedMatMul call these kernels again.
 *
 * Registering also binds the library for the GEMM dispatch of `../_nn/gemm.ts`, so the
 * transformer's fused layers call it directly while `blas` is the active backend.
 *
 * Needs `--allow-ffi` and OpenBLAS (`apt-get install libopenblas0-pthread`).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import { definePlugin } from "../../core/plugin.ts";
import type { Backend, BackendInfo } from "../../core/types.ts";
import { type BlasLibrary, loadBlas, sgemm } from "../_nn/blas_ffi.ts";
import { bindBlasBackend } from "../_nn/gemm.ts";
import {
  cpuSegmentSumKernel,
  fastBinaryKernels,
  fastCompareKernels,
  fastConcatKernel,
  fastGatherKernel,
  fastReduceKernels,
  fastSliceKernels,
  fastSoftmaxKernel,
  fastTileKernel,
  fastTransposeKernel,
  fastUnaryKernels,
  replaceKernel,
} from "./_tfjs_kernels.ts";
import { activateBackend, quietCpuHint } from "./_tfjs.ts";

/**
 * Opens the CBLAS library the `blas` backend uses (`loadBlas` of `../_nn/blas_ffi.ts`);
 * the experiment worker opens it before it gives up FFI permission.
 */
export { loadBlas };

/** The tfjs backend name this plugin registers. */
export const BLAS_BACKEND = "blas";

/** Config of the `blas` backend. */
export interface BlasConfig {
  /** OpenBLAS threads; 0 = `navigator.hardwareConcurrency`. */
  threads: number;
  /** Library path or soname; "" searches the usual places. */
  libraryPath: string;
  /** Keep freed memory for reuse instead of returning it to the system (glibc only). */
  keepFreedMemory?: boolean;
}

type Activation = "linear" | "relu" | "relu6" | "elu" | "sigmoid" | "prelu" | "leakyrelu";

/** Row-major offsets of each output batch's A and B matrices, with numpy broadcasting. */
function batchOffsets(
  outBatch: readonly number[],
  aBatch: readonly number[],
  bBatch: readonly number[],
  aMatrix: number,
  bMatrix: number,
): { a: Float64Array; b: Float64Array } {
  const count = tf.util.sizeFromShape(outBatch as number[]);
  const aOff = new Float64Array(count);
  const bOff = new Float64Array(count);
  const rank = outBatch.length;
  const strides = (shape: readonly number[], matrix: number) => {
    // stride of each *output* batch dim in the operand, 0 where the operand broadcasts
    const s = new Array<number>(rank).fill(0);
    let stride = matrix;
    for (let i = shape.length - 1, o = rank - 1; i >= 0; i--, o--) {
      s[o] = shape[i] === 1 ? 0 : stride;
      stride *= shape[i];
    }
    return s;
  };
  const sa = strides(aBatch, aMatrix);
  const sb = strides(bBatch, bMatrix);
  const index = new Array<number>(rank).fill(0);
  for (let bi = 0; bi < count; bi++) {
    let oa = 0;
    let ob = 0;
    for (let d = 0; d < rank; d++) {
      oa += index[d] * sa[d];
      ob += index[d] * sb[d];
    }
    aOff[bi] = oa;
    bOff[bi] = ob;
    for (let d = rank - 1; d >= 0; d--) {
      if (++index[d] < outBatch[d]) break;
      index[d] = 0;
    }
  }
  return { a: aOff, b: bOff };
}

function float32Values(backend: MathBackendCPU, info: tf.TensorInfo): Float32Array {
  const values = backend.data.get(info.dataId).values;
  return values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
}

/**
 * The batched product of a and b on `backend`, as a new Float32Array of shape
 * `[...broadcastBatch, M, N]`. When `fill` is given it initialises the output
 * (e.g. with a bias) and the product is added to it.
 */
function blasMatMul(
  lib: BlasLibrary,
  backend: MathBackendCPU,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
  fill?: (out: Float32Array, n: number) => void,
): { shape: number[]; values: Float32Array } {
  const aRank = a.shape.length;
  const bRank = b.shape.length;
  if (aRank < 2 || bRank < 2) {
    throw new Error(`matMul: both operands need rank >= 2, got [${a.shape}] and [${b.shape}]`);
  }
  const m = transposeA ? a.shape[aRank - 1] : a.shape[aRank - 2];
  const k = transposeA ? a.shape[aRank - 2] : a.shape[aRank - 1];
  const kb = transposeB ? b.shape[bRank - 1] : b.shape[bRank - 2];
  const n = transposeB ? b.shape[bRank - 2] : b.shape[bRank - 1];
  if (k !== kb) {
    throw new Error(
      `Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${a.shape} and ` +
        `${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
    );
  }
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  const outBatch = tf.broadcast_util.assertAndGetBroadcastShape(aBatch, bBatch);
  const batch = tf.util.sizeFromShape(outBatch);
  const shape = [...outBatch, m, n];
  const out = new Float32Array(batch * m * n);
  const beta = fill ? 1 : 0;
  if (fill) fill(out, n);
  // Touch a fresh large output once here: otherwise OpenBLAS's threads take its page faults
  // concurrently, which costs ~20% at 512x512.
  else if (out.length >= 1 << 16) out.fill(0);
  if (out.length === 0) return { shape, values: out };
  const av = float32Values(backend, a);
  const bv = float32Values(backend, b);
  const aSize = m * k;
  const bSize = k * n;
  const cSize = m * n;
  const batchA = tf.util.sizeFromShape(aBatch);
  const batchB = tf.util.sizeFromShape(bBatch);
  if (batchB === 1 && !transposeA && batchA === batch) {
    // B is shared by every batch and A's batches are contiguous rows: one big product.
    sgemm({ m: batch * m, n, k, a: av, b: bv, c: out, transB: transposeB, beta }, lib);
  } else if (batchA === batch && batchB === batch) {
    for (let i = 0; i < batch; i++) {
      sgemm({
        m,
        n,
        k,
        a: av.subarray(i * aSize, (i + 1) * aSize),
        b: bv.subarray(i * bSize, (i + 1) * bSize),
        c: out.subarray(i * cSize, (i + 1) * cSize),
        transA: transposeA,
        transB: transposeB,
        beta,
      }, lib);
    }
  } else {
    const offsets = batchOffsets(outBatch, aBatch, bBatch, aSize, bSize);
    for (let i = 0; i < batch; i++) {
      sgemm({
        m,
        n,
        k,
        a: av.subarray(offsets.a[i], offsets.a[i] + aSize),
        b: bv.subarray(offsets.b[i], offsets.b[i] + bSize),
        c: out.subarray(i * cSize, (i + 1) * cSize),
        transA: transposeA,
        transB: transposeB,
        beta,
      }, lib);
    }
  }
  return { shape, values: out };
}

function applyInPlace(values: Float32Array, activation: Activation): boolean {
  const len = values.length;
  switch (activation) {
    case "linear":
      return true;
    case "relu":
      for (let i = 0; i < len; i++) values[i] = Math.max(0, values[i]);
      return true;
    case "relu6":
      for (let i = 0; i < len; i++) values[i] = Math.min(Math.max(0, values[i]), 6);
      return true;
    case "elu":
      for (let i = 0; i < len; i++) {
        const x = values[i];
        values[i] = x >= 0 ? x : Math.exp(x) - 1;
      }
      return true;
    case "sigmoid":
      for (let i = 0; i < len; i++) values[i] = 1 / (1 + Math.exp(-values[i]));
      return true;
    default:
      return false;
  }
}

function runCpuKernel(
  name: string,
  inputs: tf.NamedTensorInfoMap,
  backend: MathBackendCPU,
  attrs: tf.NamedAttrMap = {},
): tf.TensorInfo {
  const kernel = tf.getKernel(name, "cpu");
  if (!kernel) throw new Error(`blas backend: tfjs-cpu has no ${name} kernel`);
  return kernel.kernelFunc({ inputs, backend, attrs }) as tf.TensorInfo;
}

/** The BLAS-backed `BatchMatMul` and `_FusedMatMul` kernels for backend `backendName`. */
export function blasMatMulKernels(lib: BlasLibrary, backendName: string): tf.KernelConfig[] {
  const cpuBatchMatMul = tf.getKernel(tf.BatchMatMul, "cpu");
  const cpuFusedMatMul = tf.getKernel(tf._FusedMatMul, "cpu");
  if (!cpuBatchMatMul || !cpuFusedMatMul) {
    throw new Error("blas backend: @tensorflow/tfjs-backend-cpu is not loaded");
  }
  const batchMatMul: tf.KernelConfig = {
    kernelName: tf.BatchMatMul,
    backendName,
    kernelFunc: (args) => {
      const backend = args.backend as MathBackendCPU;
      const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs;
      if (a.dtype !== "float32" || b.dtype !== "float32") return cpuBatchMatMul.kernelFunc(args);
      const { shape, values } = blasMatMul(lib, backend, a, b, transposeA, transposeB);
      return backend.makeTensorInfo(shape, "float32", values);
    },
  };
  const fusedMatMul: tf.KernelConfig = {
    kernelName: tf._FusedMatMul,
    backendName,
    kernelFunc: (args) => {
      const backend = args.backend as MathBackendCPU;
      const { a, b, bias, preluActivationWeights } = args.inputs as {
        a: tf.TensorInfo;
        b: tf.TensorInfo;
        bias?: tf.TensorInfo;
        preluActivationWeights?: tf.TensorInfo;
      };
      const { transposeA, transposeB, activation, leakyreluAlpha } = args
        .attrs as unknown as tf._FusedMatMulAttrs;
      if (a.dtype !== "float32" || b.dtype !== "float32" || (bias && bias.dtype !== "float32")) {
        return cpuFusedMatMul.kernelFunc(args);
      }
      // A bias of N values (shape [N], [1, N], ...) or a scalar is pre-filled and
      // accumulated by sgemm (beta = 1); other shapes go through the Add kernel.
      let fill: ((out: Float32Array, n: number) => void) | undefined;
      let addBias = false;
      if (bias) {
        const size = tf.util.sizeFromShape(bias.shape);
        const lastDim = bias.shape.length === 0 ? 1 : bias.shape[bias.shape.length - 1];
        const rank = Math.max(a.shape.length, b.shape.length);
        const n = transposeB ? b.shape[b.shape.length - 2] : b.shape[b.shape.length - 1];
        if (bias.shape.length <= rank && size === lastDim && (size === 1 || size === n)) {
          const bv = float32Values(backend, bias);
          fill = (out, width) => {
            if (size === 1) out.fill(bv[0]);
            else for (let i = 0; i < out.length; i += width) out.set(bv, i);
          };
        } else {
          addBias = true;
        }
      }
      const { shape, values } = blasMatMul(lib, backend, a, b, transposeA, transposeB, fill);
      let result = backend.makeTensorInfo(shape, "float32", values);
      if (addBias) {
        const sum = runCpuKernel(tf.Add, { a: result, b: bias! }, backend);
        backend.disposeIntermediateTensorInfo(result);
        result = sum;
      }
      const act = (activation ?? "linear") as Activation;
      const resultValues = backend.data.get(result.dataId).values as Float32Array;
      if (applyInPlace(resultValues, act)) return result;
      let activated: tf.TensorInfo;
      if (act === "leakyrelu") {
        activated = runCpuKernel(tf.LeakyRelu, { x: result }, backend, {
          alpha: leakyreluAlpha ?? 0.2,
        });
      } else if (act === "prelu" && preluActivationWeights) {
        activated = runCpuKernel(tf.Prelu, { x: result, alpha: preluActivationWeights }, backend);
      } else {
        throw new Error(`Activation ${activation} has not been implemented for the blas backend.`);
      }
      backend.disposeIntermediateTensorInfo(result);
      return activated;
    },
  };
  return [batchMatMul, fusedMatMul];
}

let registeredWith: BlasLibrary | undefined;

/**
 * Registers the tfjs backend `blas` (idempotent): a `MathBackendCPU` with every cpu kernel,
 * where the matrix products call `lib`, UnsortedSegmentSum is the O(n) scatter-add and
 * the element-wise, Slice/SplitV, Transpose, reduction, Softmax, GatherV2, Tile and Concat
 * kernels of `_tfjs_kernels.ts` replace tfjs-cpu's index-array loops. It also binds `lib`
 * for the GEMM dispatch of `../_nn/gemm.ts` (`activeBlas()` there).
 */
export function registerBlasBackend(lib: BlasLibrary): void {
  if (registeredWith === lib) return;
  if (tf.findBackendFactory(BLAS_BACKEND) === null) {
    tf.registerBackend(BLAS_BACKEND, () => {
      const backend = new MathBackendCPU();
      quietCpuHint(backend);
      return backend;
    }, 1);
  }
  for (const config of tf.getKernelsForBackend("cpu")) {
    replaceKernel({ ...config, backendName: BLAS_BACKEND });
  }
  for (const config of blasMatMulKernels(lib, BLAS_BACKEND)) replaceKernel(config);
  replaceKernel(cpuSegmentSumKernel(BLAS_BACKEND));
  for (const config of fastBinaryKernels(BLAS_BACKEND)) replaceKernel(config);
  for (const config of fastSliceKernels(BLAS_BACKEND)) replaceKernel(config);
  replaceKernel(fastTransposeKernel(BLAS_BACKEND));
  replaceKernel(fastSoftmaxKernel(BLAS_BACKEND));
  replaceKernel(fastGatherKernel(BLAS_BACKEND));
  replaceKernel(fastTileKernel(BLAS_BACKEND));
  replaceKernel(fastConcatKernel(BLAS_BACKEND));
  for (const config of fastReduceKernels(BLAS_BACKEND)) replaceKernel(config);
  for (const config of fastUnaryKernels(BLAS_BACKEND)) replaceKernel(config);
  for (const config of fastCompareKernels(BLAS_BACKEND)) replaceKernel(config);
  bindBlasBackend(BLAS_BACKEND, lib);
  registeredWith = lib;
}

let mallocTuned: boolean | undefined;

/**
 * Tells glibc's malloc (through `mallopt`) to serve allocations up to 32 MiB from the heap
 * and not to trim freed memory back to the system. V8 allocates typed-array storage with
 * malloc; by default every buffer above a dynamic threshold is a fresh `mmap`, whose pages
 * are faulted in and zeroed by the kernel on first touch, then unmapped when freed. Returns
 * whether it took effect (false off Linux/glibc). Process-wide; done at most once.
 */
export function keepFreedMemory(): boolean {
  if (mallocTuned !== undefined) return mallocTuned;
  mallocTuned = false;
  if (Deno.build.os !== "linux") return false;
  try {
    const libc = Deno.dlopen("libc.so.6", {
      mallopt: { parameters: ["i32", "i32"], result: "i32" },
    });
    const M_TRIM_THRESHOLD = -1;
    const M_MMAP_THRESHOLD = -3;
    const mmap = libc.symbols.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    const trim = libc.symbols.mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
    mallocTuned = mmap === 1 && trim === 1;
  } catch {
    mallocTuned = false; // not glibc (musl, ...): nothing to tune
  }
  return mallocTuned;
}

/** Threads to use for a `threads` config value (0 = all cores). */
export function resolveThreads(threads: number): number {
  if (threads > 0) return threads;
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

/** The `blas` backend plugin. */
export default definePlugin({
  kind: "backend",
  name: "blas",
  summary: "tfjs CPU backend with matrix products by OpenBLAS (cblas_sgemm via Deno FFI, " +
    "multi-threaded); needs --allow-ffi and libopenblas0-pthread.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      threads: {
        type: "integer",
        minimum: 0,
        default: 0,
        description: "OpenBLAS threads (openblas_set_num_threads); 0 uses every core " +
          "(navigator.hardwareConcurrency).",
      },
      libraryPath: {
        type: "string",
        default: "",
        description: 'Path or soname of the CBLAS library; "" tries libopenblas.so.0, the ' +
          "usual Debian/Fedora/Homebrew paths, libopenblas.so and libblas.so.3.",
      },
      keepFreedMemory: {
        type: "boolean",
        default: true,
        description: "On glibc (Linux), serve tensor buffers up to 32 MiB from the heap and " +
          "keep freed memory for reuse (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD) instead " +
          "of mapping and unmapping it each time: a training step allocates the same large " +
          "buffers over and over, and faulting fresh pages in costs ~10% of it. The process " +
          "keeps its peak heap size.",
      },
    },
  },
  create(config: BlasConfig): Backend {
    return {
      async init(): Promise<BackendInfo> {
        const lib = loadBlas(config.libraryPath || undefined);
        lib.setThreads(resolveThreads(config.threads));
        const keptMemory = config.keepFreedMemory !== false && keepFreedMemory();
        registerBlasBackend(lib);
        await activateBackend(BLAS_BACKEND);
        return {
          name: "blas",
          tfBackend: BLAS_BACKEND,
          threads: lib.threads(),
          detail: `${lib.description} (${lib.path}) for BatchMatMul/_FusedMatMul; ` +
            `other kernels tfjs-backend-cpu ${tf.version_core}` +
            (keptMemory ? "; glibc keeps freed memory" : ""),
        };
      },
    };
  },
});
