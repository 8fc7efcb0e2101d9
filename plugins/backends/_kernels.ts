/**
 * Small JavaScript kernels shared by the backend plugins.
 *
 * `UnsortedSegmentSum` is the gradient of `tf.gather` (so of every embedding
 * lookup). tfjs-backend-cpu implements it with one mask-multiply-sum pass per
 * segment, O(segments x rows x width): for a 8k-token vocabulary that is
 * thousands of full passes per training step. The scatter-add here is
 * O(rows x width) and sums in the same order in double precision, so it gives
 * the same float32 results for finite inputs.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";

/** A numeric typed array as tfjs stores tensor values. */
export type NumericArray = Float32Array | Int32Array | Uint8Array;

/**
 * Scatter-add: `out[ids[i], :] += x[i, :]` for rows `i` of width `rowSize`, accumulated in
 * double precision and written to `out` (overwritten). Ids outside `[0, numSegments)` are
 * dropped, as in TensorFlow.
 */
export function segmentSumInto(
  x: ArrayLike<number>,
  ids: ArrayLike<number>,
  numSegments: number,
  rowSize: number,
  out: NumericArray,
): void {
  const acc = new Float64Array(numSegments * rowSize);
  const rows = ids.length;
  for (let i = 0; i < rows; i++) {
    const seg = ids[i];
    if (seg < 0 || seg >= numSegments) continue;
    const src = i * rowSize;
    const dst = seg * rowSize;
    for (let j = 0; j < rowSize; j++) acc[dst + j] += x[src + j];
  }
  out.set(acc);
}

/** Output shape and sizes of an UnsortedSegmentSum call. */
export function segmentSumShape(
  x: tf.TensorInfo,
  segmentIds: tf.TensorInfo,
  numSegments: number,
): { shape: number[]; rowSize: number } {
  const idRank = segmentIds.shape.length;
  for (let i = 0; i < idRank; i++) {
    if (segmentIds.shape[i] !== x.shape[i]) {
      throw new Error(
        `unsortedSegmentSum: segmentIds shape [${segmentIds.shape}] must be a prefix of ` +
          `x shape [${x.shape}]`,
      );
    }
  }
  const rest = x.shape.slice(idRank);
  return { shape: [numSegments, ...rest], rowSize: tf.util.sizeFromShape(rest) };
}

/**
 * An O(n) `UnsortedSegmentSum` kernel for a backend built on tfjs-backend-cpu's
 * `MathBackendCPU` (`cpu` itself or a derived backend such as `blas`).
 */
export function cpuSegmentSumKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.UnsortedSegmentSum,
    backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const cpu = backend as MathBackendCPU;
      const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
      const numSegments = (attrs as unknown as { numSegments: number }).numSegments;
      if (x.dtype !== "float32" && x.dtype !== "int32") {
        throw new Error(`unsortedSegmentSum: unsupported dtype ${x.dtype}`);
      }
      const { shape, rowSize } = segmentSumShape(x, segmentIds, numSegments);
      const out = tf.util.getTypedArrayFromDType(x.dtype, tf.util.sizeFromShape(shape));
      segmentSumInto(
        cpu.data.get(x.dataId).values as NumericArray,
        cpu.data.get(segmentIds.dataId).values as NumericArray,
        numSegments,
        rowSize,
        out as NumericArray,
      );
      return cpu.makeTensorInfo(shape, x.dtype, out);
    },
  };
}

/** Registers `config`, replacing (without tfjs's "already registered" warning) any existing one. */
export function replaceKernel(config: tf.KernelConfig): void {
  if (tf.getKernel(config.kernelName, config.backendName) !== undefined) {
    tf.unregisterKernel(config.kernelName, config.backendName);
  }
  tf.registerKernel(config);
}

const BINARY_OPS = [tf.Add, tf.Sub, tf.Multiply, tf.RealDiv] as const;

/** One output dimension of a broadcast binary op: its size and each operand's stride in it. */
interface LoopDim {
  size: number;
  sa: number;
  sb: number;
}

/**
 * The output dimensions of `a op b` with each operand's element stride (0 where it broadcasts),
 * size-1 dimensions dropped and neighbours that step contiguously merged, so the common cases
 * (same shape, scalar, row or column broadcast) become one or two loops.
 */
export function broadcastLoops(aShape: number[], bShape: number[]): LoopDim[] {
  const out = tf.broadcast_util.assertAndGetBroadcastShape(aShape, bShape);
  const rank = out.length;
  const strides = (shape: number[]) => {
    const s = new Array<number>(rank).fill(0);
    let stride = 1;
    for (let i = shape.length - 1, o = rank - 1; i >= 0; i--, o--) {
      s[o] = shape[i] === 1 ? 0 : stride;
      stride *= shape[i];
    }
    return s;
  };
  const sa = strides(aShape);
  const sb = strides(bShape);
  const dims: LoopDim[] = [];
  for (let d = 0; d < rank; d++) {
    if (out[d] === 1) continue;
    const dim = { size: out[d], sa: sa[d], sb: sb[d] };
    const prev = dims[dims.length - 1];
    // prev is the outer neighbour: merge when stepping it equals stepping `dim` size times.
    if (prev && prev.sa === dim.sa * dim.size && prev.sb === dim.sb * dim.size) {
      dims[dims.length - 1] = { size: prev.size * dim.size, sa: dim.sa, sb: dim.sb };
    } else {
      dims.push(dim);
    }
  }
  return dims;
}

function innerLoop(
  op: number,
  a: Float32Array,
  ia: number,
  sa: number,
  b: Float32Array,
  ib: number,
  sb: number,
  o: Float32Array,
  io: number,
  n: number,
): void {
  const end = io + n;
  switch (op) {
    case 0:
      for (; io < end; io++, ia += sa, ib += sb) o[io] = a[ia] + b[ib];
      break;
    case 1:
      for (; io < end; io++, ia += sa, ib += sb) o[io] = a[ia] - b[ib];
      break;
    case 2:
      for (; io < end; io++, ia += sa, ib += sb) o[io] = a[ia] * b[ib];
      break;
    default:
      for (; io < end; io++, ia += sa, ib += sb) o[io] = a[ia] / b[ib];
  }
}

/**
 * `out = a op b` for float32 arrays with numpy broadcasting; op 0..3 = add, sub, mul, div.
 * Computes exactly what tfjs-cpu computes (each element in double, rounded once).
 */
export function broadcastBinary(
  op: number,
  a: Float32Array,
  aShape: number[],
  b: Float32Array,
  bShape: number[],
  out: Float32Array,
): void {
  const dims = broadcastLoops(aShape, bShape);
  const inner = dims.pop() ?? { size: 1, sa: 0, sb: 0 };
  let rows = 1;
  for (const d of dims) rows *= d.size;
  const index = new Array<number>(dims.length).fill(0);
  let ia = 0;
  let ib = 0;
  for (let r = 0, io = 0; r < rows; r++, io += inner.size) {
    innerLoop(op, a, ia, inner.sa, b, ib, inner.sb, out, io, inner.size);
    for (let d = dims.length - 1; d >= 0; d--) {
      const dim = dims[d];
      ia += dim.sa;
      ib += dim.sb;
      if (++index[d] < dim.size) break;
      ia -= dim.sa * dim.size;
      ib -= dim.sb * dim.size;
      index[d] = 0;
    }
  }
}

/**
 * Float32 Neg, Add, Sub, Multiply and RealDiv for a backend built on `MathBackendCPU`. tfjs-cpu's
 * versions call the op through a shared closure and, whenever an operand broadcasts, compute
 * index arrays per element (a [512, 8000] - [512, 1] subtraction, as in every softmax, takes
 * ~280 ms there and ~5 ms here; Neg goes through that broadcasting multiply by -1). Other
 * dtypes go to the cpu kernels. Results are identical.
 */
export function fastBinaryKernels(backendName: string): tf.KernelConfig[] {
  const neg: tf.KernelConfig = {
    kernelName: tf.Neg,
    backendName,
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      if (x.dtype !== "float32") {
        const fallback = tf.getKernel(tf.Neg, "cpu");
        if (!fallback) throw new Error(`tfjs-cpu has no ${tf.Neg} kernel`);
        return fallback.kernelFunc(args);
      }
      const cpu = args.backend as MathBackendCPU;
      const values = cpu.data.get(x.dataId).values as Float32Array;
      const out = new Float32Array(values.length);
      for (let i = 0; i < out.length; i++) out[i] = -values[i];
      return cpu.makeTensorInfo(x.shape, "float32", out);
    },
  };
  return [
    neg,
    ...BINARY_OPS.map((kernelName, op): tf.KernelConfig => ({
      kernelName,
      backendName,
      kernelFunc: (args) => {
        const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
        if (a.dtype !== "float32" || b.dtype !== "float32") {
          const fallback = tf.getKernel(kernelName, "cpu");
          if (!fallback) throw new Error(`tfjs-cpu has no ${kernelName} kernel`);
          return fallback.kernelFunc(args);
        }
        const cpu = args.backend as MathBackendCPU;
        const shape = tf.broadcast_util.assertAndGetBroadcastShape(a.shape, b.shape);
        const out = new Float32Array(tf.util.sizeFromShape(shape));
        if (out.length > 0) {
          broadcastBinary(
            op,
            cpu.data.get(a.dataId).values as Float32Array,
            a.shape,
            cpu.data.get(b.dataId).values as Float32Array,
            b.shape,
            out,
          );
        }
        return cpu.makeTensorInfo(shape, "float32", out);
      },
    })),
  ];
}

/**
 * The values of `x[begin : begin + size]` (numeric dtypes): a view when the slice is contiguous
 * (as tfjs-cpu does), else copied one innermost row at a time. tfjs-cpu copies non-contiguous
 * slices element by element through index arrays, which made `tf.split` of q/k/v slow.
 */
export function sliceValues(
  values: NumericArray,
  shape: number[],
  begin: number[],
  size: number[],
): NumericArray {
  const total = tf.util.sizeFromShape(size);
  const strides = tf.util.computeStrides(shape);
  const start = tf.slice_util.computeFlatOffset(begin, strides);
  if (tf.slice_util.isSliceContinous(shape, begin, size)) {
    return values.subarray(start, start + total);
  }
  const Ctor = values.constructor as new (length: number) => NumericArray;
  const out = new Ctor(total);
  if (total === 0) return out;
  const rank = shape.length;
  const chunk = size[rank - 1];
  const index = new Array<number>(rank - 1).fill(0);
  let src = start;
  for (let o = 0; o < total; o += chunk) {
    out.set(values.subarray(src, src + chunk), o);
    for (let d = rank - 2; d >= 0; d--) {
      src += strides[d];
      if (++index[d] < size[d]) break;
      src -= strides[d] * size[d];
      index[d] = 0;
    }
  }
  return out;
}

function cpuFallback(name: string, args: Parameters<tf.KernelFunc>[0]) {
  const fallback = tf.getKernel(name, "cpu");
  if (!fallback) throw new Error(`tfjs-cpu has no ${name} kernel`);
  return fallback.kernelFunc(args);
}

function cpuSlice(cpu: MathBackendCPU, x: tf.TensorInfo, begin: number[], size: number[]) {
  const values = cpu.data.get(x.dataId).values as NumericArray;
  return cpu.makeTensorInfo(size, x.dtype, sliceValues(values, x.shape, begin, size));
}

/** Fast `Slice` and `SplitV` (numeric dtypes; strings go to tfjs-cpu) for a cpu-based backend. */
export function fastSliceKernels(backendName: string): tf.KernelConfig[] {
  const slice: tf.KernelConfig = {
    kernelName: tf.Slice,
    backendName,
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      if (x.dtype === "string" || x.dtype === "complex64") return cpuFallback(tf.Slice, args);
      const attrs = args.attrs as unknown as tf.SliceAttrs;
      const [begin, size] = tf.slice_util.parseSliceParams(x, attrs.begin, attrs.size);
      tf.slice_util.assertParamsValid(x, begin, size);
      return cpuSlice(args.backend as MathBackendCPU, x, begin, size);
    },
  };
  const splitV: tf.KernelConfig = {
    kernelName: tf.SplitV,
    backendName,
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      if (x.dtype === "string" || x.dtype === "complex64") return cpuFallback(tf.SplitV, args);
      const { numOrSizeSplits, axis } = args.attrs as unknown as tf.SplitVAttrs;
      const $axis = tf.util.parseAxisParam(axis, x.shape)[0];
      const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, $axis);
      const begin = new Array<number>(x.shape.length).fill(0);
      return sizes.map((s) => {
        const size = [...x.shape];
        size[$axis] = s;
        const out = cpuSlice(args.backend as MathBackendCPU, x, [...begin], size);
        begin[$axis] += s;
        return out;
      });
    },
  };
  return [slice, splitV];
}
