/**
 * GEMM dispatch for code that holds plain `Float32Array`s (the fused layers, attention,
 * the decoder): {@link matmul} computes `a · b` with an optional bias and ReLU. When the
 * `blas` backend is the active tfjs backend the product is `cblas_sgemm` called straight on
 * the buffers (through the library that backend bound with {@link bindBlasBackend}), making
 * exactly the calls the backend's own matMul kernels make, so results equal the tfjs path's
 * bit for bit without tfjs's tensor bookkeeping; on every other backend it is `tf.matMul`.
 * {@link activeBlas} hands that library to callers that make their own strided calls.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { BlasLibrary } from "./blas_ffi.ts";
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import { values } from "./custom_op.ts";
import { isDeviceBackend } from "./device.ts";

/** The tfjs backend whose matrix products are a CBLAS library's, and that library. */
let blasBackend: { name: string; lib: BlasLibrary } | undefined;

/**
 * Declares that the tfjs backend `backendName` does its matrix products with `lib` (the
 * `blas` backend calls this when it registers), so that {@link matmul} and the attention
 * call `lib` directly while that backend is active. A later call replaces an earlier one.
 */
export function bindBlasBackend(backendName: string, lib: BlasLibrary): void {
  blasBackend = { name: backendName, lib };
}

/**
 * The library behind the active tfjs backend's matrix products when that backend was bound
 * by {@link bindBlasBackend} (the `blas` backend), else undefined. Code that holds plain
 * `Float32Array`s (the transformer's fused layers) calls `cblas_sgemm` through it directly,
 * skipping tfjs's tensor bookkeeping; the products are the very calls the backend's kernels
 * would make, so results are identical.
 */
export function activeBlas(): BlasLibrary | undefined {
  if (blasBackend === undefined) return undefined;
  return tf.getBackend() === blasBackend.name ? blasBackend.lib : undefined;
}

/** A matrix operand: a tensor, or a buffer with its shape. */
export type Mat = tf.Tensor | { data: Float32Array; shape: number[] };

/**
 * `a · b` (batched when rank 3) with an optional bias `[cols]` and ReLU fused in. Returns a
 * fresh buffer that the caller owns, or `out` (same size as the product) filled with it.
 *
 * On the `blas` backend the product is computed by `cblas_sgemm` straight from the
 * buffers, making exactly the calls the backend's matMul kernels make (bias pre-filled and
 * accumulated with beta = 1), so the results equal the tfjs path's bit for bit without
 * tfjs's tensor bookkeeping. Other backends go through `tf.matMul`.
 */
export function matmul(
  a: Mat,
  b: Mat,
  transA = false,
  transB = false,
  bias?: tf.Tensor,
  relu = false,
  out?: Float32Array,
): Float32Array {
  const lib = relu ? undefined : activeBlas();
  if (lib !== undefined) return blasProduct(lib, a, b, transA, transB, bias, out);
  if (isDeviceBackend()) return hostProduct(a, b, transA, transB, bias, relu, out);
  let result: Float32Array | undefined;
  // (tidy must not return the buffer: it would walk every element looking for tensors)
  tf.tidy(() => {
    const at = a instanceof tf.Tensor ? a : tf.tensor(a.data, a.shape, "float32");
    const bt = b instanceof tf.Tensor ? b : tf.tensor(b.data, b.shape, "float32");
    const product = bias !== undefined || relu
      ? tf.fused.matMul({
        a: at,
        b: bt,
        transposeA: transA,
        transposeB: transB,
        bias,
        activation: relu ? "relu" : "linear",
      })
      : tf.matMul(at, bt, transA, transB);
    result = product.dataSync() as Float32Array;
  });
  if (out === undefined) return result!;
  out.set(result!);
  return out;
}

let hostCpu: MathBackendCPU | undefined;

/**
 * {@link matmul} on the host while a device backend is active (its products could not be read
 * back synchronously): tfjs-cpu's kernels run on a private cpu backend over the operands'
 * host values (a tensor's must be cached on the host, e.g. by an earlier `await data()`).
 */
function hostProduct(
  a: Mat,
  b: Mat,
  transA: boolean,
  transB: boolean,
  bias: tf.Tensor | undefined,
  relu: boolean,
  out: Float32Array | undefined,
): Float32Array {
  const cpu = hostCpu ??= new MathBackendCPU();
  const written: tf.TensorInfo[] = [];
  const put = (data: Float32Array, shape: number[]): tf.TensorInfo => {
    const info = { dataId: cpu.write(data, shape, "float32"), shape, dtype: "float32" as const };
    written.push(info);
    return info;
  };
  const fused = bias !== undefined || relu;
  const kernel = tf.getKernel(fused ? tf._FusedMatMul : tf.BatchMatMul, "cpu");
  if (kernel === undefined) throw new Error("matmul: tfjs-backend-cpu is not loaded");
  const inputs: tf.NamedTensorInfoMap = {
    a: put(matData(a), a.shape),
    b: put(matData(b), b.shape),
  };
  if (bias !== undefined) inputs.bias = put(values(bias), bias.shape);
  const attrs = { transposeA: transA, transposeB: transB, activation: relu ? "relu" : "linear" };
  const product = kernel.kernelFunc({ inputs, backend: cpu, attrs }) as tf.TensorInfo;
  try {
    const result = cpu.readSync(product.dataId) as Float32Array;
    if (out === undefined) return result;
    out.set(result);
    return out;
  } finally {
    cpu.disposeData(product.dataId, true);
    for (const info of written) cpu.disposeData(info.dataId, true);
  }
}

function matData(m: Mat): Float32Array {
  return m instanceof tf.Tensor ? values(m) : m.data;
}

/** {@link matmul} on OpenBLAS: the decomposition of the `blas` backend's BatchMatMul kernel. */
function blasProduct(
  lib: BlasLibrary,
  a: Mat,
  b: Mat,
  transA: boolean,
  transB: boolean,
  bias: tf.Tensor | undefined,
  out: Float32Array | undefined,
): Float32Array {
  const as = a.shape;
  const bs = b.shape;
  const ar = as.length;
  const br = bs.length;
  if (ar < 2 || br < 2 || ar > 3 || br > 3) {
    throw new RangeError(`matmul: operands of rank 2 or 3 expected, got [${as}] and [${bs}]`);
  }
  const m = transA ? as[ar - 1] : as[ar - 2];
  const k = transA ? as[ar - 2] : as[ar - 1];
  const kb = transB ? bs[br - 1] : bs[br - 2];
  const n = transB ? bs[br - 2] : bs[br - 1];
  const batchA = ar === 3 ? as[0] : 1;
  const batchB = br === 3 ? bs[0] : 1;
  const batch = Math.max(batchA, batchB);
  if (k !== kb || (batchA !== batch && batchA !== 1) || (batchB !== batch && batchB !== 1)) {
    throw new RangeError(
      `matmul: shapes [${as}] and [${bs}] do not match (transA ${transA}, transB ${transB})`,
    );
  }
  const av = matData(a);
  const bv = matData(b);
  const size = batch * m * n;
  const c = out ?? new Float32Array(size);
  if (c.length !== size) throw new RangeError(`matmul: out has ${c.length} floats, not ${size}`);
  if (av.length < batchA * m * k || bv.length < batchB * k * n) {
    throw new RangeError(`matmul: a buffer is smaller than its shape`);
  }
  let beta = 0;
  if (bias !== undefined) {
    const bb = values(bias);
    if (size === 0) {
      // nothing to fill
    } else if (bb.length === n) {
      // one row, then doubling copies
      c.set(bb, 0);
      for (let filled = n; filled < size; filled *= 2) {
        c.copyWithin(filled, 0, Math.min(filled, size - filled));
      }
    } else if (bb.length === 1) {
      c.fill(bb[0]);
    } else {
      throw new RangeError(`matmul: a bias of ${bb.length} values for ${n} columns`);
    }
    beta = 1;
  }
  if (size === 0) return c;
  if (k === 0) {
    if (beta === 0) c.fill(0);
    return c;
  }
  const lda = transA ? m : k;
  const ldb = transB ? k : n;
  if (batchB === 1 && !transA && batchA === batch) {
    lib.gemm(false, transB, batch * m, n, k, 1, av, 0, lda, bv, 0, ldb, beta, c, 0, n);
    return c;
  }
  const aSize = m * k;
  const bSize = k * n;
  const cSize = m * n;
  for (let i = 0; i < batch; i++) {
    const ao = batchA === 1 ? 0 : i * aSize;
    const bo = batchB === 1 ? 0 : i * bSize;
    lib.gemm(transA, transB, m, n, k, 1, av, ao, lda, bv, bo, ldb, beta, c, i * cSize, n);
  }
  return c;
}
