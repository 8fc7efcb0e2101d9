/**
 * tfjs kernels (`KernelConfig`s) in plain JavaScript, shared by the backend plugins:
 * faster replacements for tfjs-backend-cpu's own, registered by the `cpu`, `blas` and
 * `wasm` backends. (The transformer's numeric kernels, which work on buffers outside tfjs's
 * kernel registry, are in `../_nn/`.)
 *
 * `UnsortedSegmentSum` is the gradient of `tf.gather` (so of every embedding
 * lookup). tfjs-backend-cpu implements it with one mask-multiply-sum pass per
 * segment, O(segments x rows x width): for a 8k-token vocabulary that is
 * thousands of full passes per training step. The scatter-add here is
 * O(rows x width) and sums in the same order in double precision, so it gives
 * the same float32 results for finite inputs.
 *
 * The other kernels here (element-wise, Slice/SplitV, Transpose, reductions,
 * Softmax, comparisons, GatherV2, Tile, Concat) replace tfjs-cpu loops that
 * compute index arrays per element or call a shared per-element closure; each
 * does the same float operations in the same order, so results are bit-identical.
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
  // Counting sort of the rows by segment (stable), then one double accumulator row per segment:
  // touches only the segments that occur, not a numSegments x rowSize double buffer.
  const rows = ids.length;
  const start = new Int32Array(numSegments + 1);
  for (let i = 0; i < rows; i++) {
    const seg = ids[i];
    if (seg >= 0 && seg < numSegments) start[seg + 1]++;
  }
  for (let s = 0; s < numSegments; s++) start[s + 1] += start[s];
  const order = new Int32Array(start[numSegments]);
  const fill = start.slice(0, numSegments);
  for (let i = 0; i < rows; i++) {
    const seg = ids[i];
    if (seg >= 0 && seg < numSegments) order[fill[seg]++] = i;
  }
  out.fill(0);
  const acc = new Float64Array(rowSize);
  for (let seg = 0; seg < numSegments; seg++) {
    if (start[seg] === start[seg + 1]) continue;
    acc.fill(0);
    for (let k = start[seg]; k < start[seg + 1]; k++) {
      const src = order[k] * rowSize;
      for (let j = 0; j < rowSize; j++) acc[j] += x[src + j];
    }
    out.set(acc, seg * rowSize);
  }
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

const BINARY_OPS = [
  tf.Add,
  tf.Sub,
  tf.Multiply,
  tf.RealDiv,
  tf.Maximum,
  tf.Minimum,
  tf.SquaredDifference,
] as const;

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
    case 3:
      for (; io < end; io++, ia += sa, ib += sb) o[io] = a[ia] / b[ib];
      break;
    case 4:
      for (; io < end; io++, ia += sa, ib += sb) o[io] = Math.max(a[ia], b[ib]);
      break;
    case 5:
      for (; io < end; io++, ia += sa, ib += sb) o[io] = Math.min(a[ia], b[ib]);
      break;
    default:
      for (; io < end; io++, ia += sa, ib += sb) {
        const d = a[ia] - b[ib];
        o[io] = d * d;
      }
  }
}

/**
 * `out = a op b` for float32 arrays with numpy broadcasting; op 0..6 = add, sub, mul, div,
 * maximum, minimum, squared difference.
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
 * Float32 Neg, Add, Sub, Multiply, RealDiv, Maximum, Minimum and SquaredDifference for a backend
 * built on `MathBackendCPU`. tfjs-cpu's
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

// ---------------------------------------------------------------------------------------------
// Transpose, reductions, softmax, unary and comparison kernels. tfjs-cpu computes each of these
// through per-element index arrays (Transpose, and every reduction that is not over the innermost
// axes transposes its input first) or through a megamorphic per-element closure. The versions
// here do the same float arithmetic in the same order, so their results are bit-identical.
// ---------------------------------------------------------------------------------------------

type KernelArgs = Parameters<tf.KernelFunc>[0];

function valuesOf(cpu: MathBackendCPU, info: tf.TensorInfo): NumericArray {
  return cpu.data.get(info.dataId).values as NumericArray;
}

function newLike(values: NumericArray, length: number): NumericArray {
  const Ctor = values.constructor as new (length: number) => NumericArray;
  return new Ctor(length);
}

/** Copies `out[o + a * n2 + b] = x[src + a * s1 + b * s2]` for a < n1, b < n2, in cache blocks. */
function copyBlock2d(
  x: NumericArray,
  src: number,
  n1: number,
  s1: number,
  n2: number,
  s2: number,
  out: NumericArray,
  o: number,
): void {
  if (s2 === 1) {
    for (let a = 0; a < n1; a++, src += s1, o += n2) {
      if (n2 >= 32) out.set(x.subarray(src, src + n2), o);
      else for (let b = 0; b < n2; b++) out[o + b] = x[src + b];
    }
    return;
  }
  const block = 32;
  for (let a0 = 0; a0 < n1; a0 += block) {
    const a1 = Math.min(n1, a0 + block);
    for (let b0 = 0; b0 < n2; b0 += block) {
      const b1 = Math.min(n2, b0 + block);
      for (let a = a0; a < a1; a++) {
        const ob = o + a * n2;
        let ib = src + a * s1 + b0 * s2;
        for (let b = b0; b < b1; b++, ib += s2) out[ob + b] = x[ib];
      }
    }
  }
}

/**
 * `x` (of `shape`) transposed by `perm`, as a new array of the same type. Size-1 axes are dropped
 * and axes that stay neighbours are merged, so a head split `[b, t, h, d] -> [b, h, t, d]` copies
 * runs of `d` values and a matrix transpose goes through cache blocks.
 */
export function transposeValues(x: NumericArray, shape: number[], perm: number[]): NumericArray {
  const total = tf.util.sizeFromShape(shape);
  const out = newLike(x, total);
  if (total === 0) return out;
  const rank = shape.length;
  const strides = new Array<number>(rank);
  for (let d = rank - 1, s = 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  // Output-ordered groups of input axes: [size, input stride]; a group continues while the next
  // kept output axis is the next kept input axis.
  const kept = perm.filter((p) => shape[p] !== 1);
  const sizes: number[] = [];
  const steps: number[] = [];
  let prev = -2;
  for (const p of kept) {
    let nextKept = prev + 1;
    while (nextKept < rank && shape[nextKept] === 1) nextKept++;
    if (prev >= 0 && p === nextKept) {
      sizes[sizes.length - 1] *= shape[p];
      steps[steps.length - 1] = strides[p];
    } else {
      sizes.push(shape[p]);
      steps.push(strides[p]);
    }
    prev = p;
  }
  const g = sizes.length;
  if (g <= 1) {
    out.set(x);
    return out;
  }
  const n2 = sizes[g - 1];
  const s2 = steps[g - 1];
  const n1 = sizes[g - 2];
  const s1 = steps[g - 2];
  const outer = g - 2;
  const index = new Array<number>(outer).fill(0);
  let src = 0;
  for (let o = 0; o < total; o += n1 * n2) {
    copyBlock2d(x, src, n1, s1, n2, s2, out, o);
    for (let d = outer - 1; d >= 0; d--) {
      src += steps[d];
      if (++index[d] < sizes[d]) break;
      src -= steps[d] * sizes[d];
      index[d] = 0;
    }
  }
  return out;
}

/** Fast `Transpose` for a cpu-based backend (numeric dtypes; strings and complex go to cpu). */
export function fastTransposeKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.Transpose,
    backendName,
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      if (x.dtype === "string" || x.dtype === "complex64") return cpuFallback(tf.Transpose, args);
      const { perm } = args.attrs as unknown as tf.TransposeAttrs;
      const cpu = args.backend as MathBackendCPU;
      const shape = perm.map((p) => x.shape[p]);
      return cpu.makeTensorInfo(shape, x.dtype, transposeValues(valuesOf(cpu, x), x.shape, perm));
    },
  };
}

/** Reduction ops of {@link reduceValues}. */
export type ReduceOp = "sum" | "prod" | "max" | "min" | "mean";

/**
 * Reduces `x` (of `shape`) over the sorted, distinct `axes` into `out` (one value per kept
 * position, row-major). Each output accumulates its inputs in row-major order in double
 * precision, as tfjs-cpu does after moving the reduced axes innermost: the sum starts at 0,
 * the product at 1, max/min take NaN if any input is NaN. `mean` sums `fround(x / count)` (tfjs
 * divides in float32 first). Reducing leading axes (column sums) adds whole rows at a time.
 */
export function reduceValues(
  op: ReduceOp,
  x: NumericArray,
  shape: number[],
  axes: number[],
  out: NumericArray,
): void {
  // Merged dims, size-1 axes dropped: neighbours that are both reduced or both kept combine.
  const sizes: number[] = [];
  const reduced: boolean[] = [];
  let count = 1;
  for (let d = 0; d < shape.length; d++) {
    const r = axes.includes(d);
    if (r) count *= shape[d];
    if (shape[d] === 1) continue;
    if (sizes.length > 0 && reduced[reduced.length - 1] === r) sizes[sizes.length - 1] *= shape[d];
    else {
      sizes.push(shape[d]);
      reduced.push(r);
    }
  }
  if (sizes.length === 0) {
    sizes.push(1);
    reduced.push(false);
  }
  const rank = sizes.length;
  const outSteps = new Array<number>(rank).fill(0);
  for (let d = rank - 1, s = 1; d >= 0; d--) {
    if (reduced[d]) continue;
    outSteps[d] = s;
    s *= sizes[d];
  }
  const acc = new Float64Array(out.length);
  const init = op === "prod" ? 1 : op === "max" ? -Infinity : op === "min" ? Infinity : 0;
  if (init !== 0) acc.fill(init);
  const n = sizes[rank - 1];
  const innerReduced = reduced[rank - 1];
  const outer = rank - 1;
  const index = new Array<number>(outer).fill(0);
  const divisor = Math.fround(count);
  const total = x.length;
  let oi = 0;
  for (let src = 0; src < total; src += n) {
    const end = src + n;
    if (innerReduced) {
      let a = acc[oi];
      switch (op) {
        case "sum":
          for (let j = src; j < end; j++) a += x[j];
          break;
        case "mean":
          for (let j = src; j < end; j++) a += Math.fround(Math.fround(x[j]) / divisor);
          break;
        case "prod":
          for (let j = src; j < end; j++) a *= x[j];
          break;
        case "max":
          for (let j = src; j < end; j++) {
            const v = x[j];
            if (v > a || v !== v) a = v;
          }
          break;
        default:
          for (let j = src; j < end; j++) {
            const v = x[j];
            if (v < a || v !== v) a = v;
          }
      }
      acc[oi] = a;
    } else {
      switch (op) {
        case "sum":
          for (let j = src, k = oi; j < end; j++, k++) acc[k] += x[j];
          break;
        case "mean":
          for (let j = src, k = oi; j < end; j++, k++) {
            acc[k] += Math.fround(Math.fround(x[j]) / divisor);
          }
          break;
        case "prod":
          for (let j = src, k = oi; j < end; j++, k++) acc[k] *= x[j];
          break;
        case "max":
          for (let j = src, k = oi; j < end; j++, k++) {
            const v = x[j];
            if (v > acc[k] || v !== v) acc[k] = v;
          }
          break;
        default:
          for (let j = src, k = oi; j < end; j++, k++) {
            const v = x[j];
            if (v < acc[k] || v !== v) acc[k] = v;
          }
      }
    }
    for (let d = outer - 1; d >= 0; d--) {
      oi += outSteps[d];
      if (++index[d] < sizes[d]) break;
      oi -= outSteps[d] * sizes[d];
      index[d] = 0;
    }
  }
  out.set(acc);
}

const REDUCTIONS: [string, ReduceOp][] = [
  [tf.Sum, "sum"],
  [tf.Prod, "prod"],
  [tf.Max, "max"],
  [tf.Min, "min"],
  [tf.Mean, "mean"],
];

/**
 * Sum, Prod, Max, Min and Mean over any axes without transposing (float32, int32, bool inputs;
 * empty tensors and unsorted axis lists go to tfjs-cpu). Output dtypes are tfjs's: Sum and Prod
 * upcast to int32, Mean gives float32, Max and Min keep the input's.
 */
export function fastReduceKernels(backendName: string): tf.KernelConfig[] {
  return REDUCTIONS.map(([kernelName, op]): tf.KernelConfig => ({
    kernelName,
    backendName,
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      const attrs = args.attrs as unknown as { axis?: number | number[]; keepDims: boolean };
      const axis = op === "max"
        ? (args.attrs as unknown as tf.MaxAttrs).reductionIndices
        : attrs.axis;
      const size = tf.util.sizeFromShape(x.shape);
      if (!["float32", "int32", "bool"].includes(x.dtype) || size === 0) {
        return cpuFallback(kernelName, args);
      }
      const axes = tf.util.parseAxisParam(axis ?? null as unknown as number[], x.shape);
      for (let i = 1; i < axes.length; i++) {
        if (axes[i] <= axes[i - 1]) return cpuFallback(kernelName, args);
      }
      const cpu = args.backend as MathBackendCPU;
      const [outShape] = tf.backend_util.computeOutAndReduceShapes(x.shape, axes);
      const dtype: tf.DataType = op === "mean"
        ? "float32"
        : op === "sum" || op === "prod"
        ? tf.upcastType(x.dtype, "int32")
        : x.dtype;
      const out = tf.util.getTypedArrayFromDType(
        dtype as "float32",
        tf.util.sizeFromShape(outShape),
      ) as NumericArray;
      reduceValues(op, valuesOf(cpu, x), x.shape, axes, out);
      const shape = attrs.keepDims
        ? tf.backend_util.expandShapeToKeepDim(outShape, axes)
        : outShape;
      return cpu.makeTensorInfo(shape, dtype, out);
    },
  }));
}

/**
 * Softmax over the last axis of float32 `x` into `out`, with tfjs-cpu's exact float32 steps:
 * `e = fround(exp(fround(x - max)))`, `s = fround(sum e)` (summed in double), `out = e / s`.
 */
export function softmaxValues(x: Float32Array, n: number, out: Float32Array): void {
  for (let row = 0; row < x.length; row += n) {
    const end = row + n;
    let max = x[row];
    for (let j = row; j < end; j++) {
      const v = x[j];
      if (v > max || v !== v) max = v;
    }
    let sum = 0;
    for (let j = row; j < end; j++) {
      const e = Math.fround(Math.exp(Math.fround(x[j] - max)));
      out[j] = e;
      sum += e;
    }
    const s = Math.fround(sum);
    for (let j = row; j < end; j++) out[j] = out[j] / s;
  }
}

/** Fast float32 `Softmax` (last axis; others go to tfjs-cpu, which rejects them). */
export function fastSoftmaxKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.Softmax,
    backendName,
    kernelFunc: (args) => {
      const { logits } = args.inputs as { logits: tf.TensorInfo };
      const { dim } = args.attrs as unknown as tf.SoftmaxAttrs;
      const rank = logits.shape.length;
      const n = rank === 0 ? 1 : logits.shape[rank - 1];
      if (
        logits.dtype !== "float32" || rank === 0 || (dim !== -1 && dim !== rank - 1) || n === 0
      ) {
        return cpuFallback(tf.Softmax, args);
      }
      const cpu = args.backend as MathBackendCPU;
      const x = valuesOf(cpu, logits) as Float32Array;
      const out = new Float32Array(x.length);
      softmaxValues(x, n, out);
      return cpu.makeTensorInfo(logits.shape, "float32", out);
    },
  };
}

/** Element-wise float32 maps, each exactly tfjs-cpu's formula. */
const UNARY: [string, (x: Float32Array, out: Float32Array, attrs: tf.NamedAttrMap) => void][] = [
  [tf.Exp, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = Math.exp(x[i]);
  }],
  [tf.Log, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = Math.log(x[i]);
  }],
  [tf.Sqrt, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = Math.sqrt(x[i]);
  }],
  [tf.Rsqrt, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = 1 / Math.sqrt(x[i]);
  }],
  [tf.Square, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = x[i] * x[i];
  }],
  [tf.Abs, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = Math.abs(x[i]);
  }],
  [tf.Relu, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = Math.max(0, x[i]);
  }],
  [tf.Sigmoid, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = 1 / (1 + Math.exp(-x[i]));
  }],
  [tf.Tanh, (x, o) => {
    for (let i = 0; i < x.length; i++) o[i] = Math.tanh(x[i]);
  }],
  [tf.Step, (x, o, attrs) => {
    const alpha = (attrs as unknown as tf.StepAttrs).alpha;
    for (let i = 0; i < x.length; i++) {
      const v = x[i];
      o[i] = v > 0 ? 1 : v !== v ? v : alpha;
    }
  }],
];

/** Float32 Exp, Log, Sqrt, Rsqrt, Square, Abs, Relu, Sigmoid, Tanh and Step as tight loops. */
export function fastUnaryKernels(backendName: string): tf.KernelConfig[] {
  return UNARY.map(([kernelName, map]): tf.KernelConfig => ({
    kernelName,
    backendName,
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      if (x.dtype !== "float32") return cpuFallback(kernelName, args);
      const cpu = args.backend as MathBackendCPU;
      const values = valuesOf(cpu, x) as Float32Array;
      const out = new Float32Array(values.length);
      map(values, out, args.attrs ?? {});
      return cpu.makeTensorInfo(x.shape, "float32", out);
    },
  }));
}

/**
 * Calls `run(ia, sa, ib, sb, io, n)` for each innermost run of the broadcast `a op b` (see
 * {@link broadcastLoops}): output elements `io .. io + n` read `a[ia + k * sa]`, `b[ib + k * sb]`.
 */
function forEachRun(
  aShape: number[],
  bShape: number[],
  run: (ia: number, sa: number, ib: number, sb: number, io: number, n: number) => void,
): void {
  const dims = broadcastLoops(aShape, bShape);
  const inner = dims.pop() ?? { size: 1, sa: 0, sb: 0 };
  let rows = 1;
  for (const d of dims) rows *= d.size;
  const index = new Array<number>(dims.length).fill(0);
  let ia = 0;
  let ib = 0;
  for (let r = 0, io = 0; r < rows; r++, io += inner.size) {
    run(ia, inner.sa, ib, inner.sb, io, inner.size);
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

const COMPARISONS = [
  tf.Equal,
  tf.NotEqual,
  tf.Greater,
  tf.GreaterEqual,
  tf.Less,
  tf.LessEqual,
] as const;

/** `out[i] = a op b ? 1 : 0` with broadcasting; op indexes {@link COMPARISONS}. */
export function broadcastCompare(
  op: number,
  a: NumericArray,
  aShape: number[],
  b: NumericArray,
  bShape: number[],
  out: Uint8Array,
): void {
  forEachRun(aShape, bShape, (ia, sa, ib, sb, io, n) => {
    const end = io + n;
    switch (op) {
      case 0:
        for (; io < end; io++, ia += sa, ib += sb) out[io] = a[ia] === b[ib] ? 1 : 0;
        break;
      case 1:
        for (; io < end; io++, ia += sa, ib += sb) out[io] = a[ia] !== b[ib] ? 1 : 0;
        break;
      case 2:
        for (; io < end; io++, ia += sa, ib += sb) out[io] = a[ia] > b[ib] ? 1 : 0;
        break;
      case 3:
        for (; io < end; io++, ia += sa, ib += sb) out[io] = a[ia] >= b[ib] ? 1 : 0;
        break;
      case 4:
        for (; io < end; io++, ia += sa, ib += sb) out[io] = a[ia] < b[ib] ? 1 : 0;
        break;
      default:
        for (; io < end; io++, ia += sa, ib += sb) out[io] = a[ia] <= b[ib] ? 1 : 0;
    }
  });
}

/** Broadcasting Equal, NotEqual, Greater, GreaterEqual, Less, LessEqual (numeric dtypes). */
export function fastCompareKernels(backendName: string): tf.KernelConfig[] {
  return COMPARISONS.map((kernelName, op): tf.KernelConfig => ({
    kernelName,
    backendName,
    kernelFunc: (args) => {
      const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const numeric = (t: tf.TensorInfo) => ["float32", "int32", "bool"].includes(t.dtype);
      if (!numeric(a) || !numeric(b)) return cpuFallback(kernelName, args);
      const cpu = args.backend as MathBackendCPU;
      const shape = tf.broadcast_util.assertAndGetBroadcastShape(a.shape, b.shape);
      const out = new Uint8Array(tf.util.sizeFromShape(shape));
      if (out.length > 0) {
        broadcastCompare(op, valuesOf(cpu, a), a.shape, valuesOf(cpu, b), b.shape, out);
      }
      return cpu.makeTensorInfo(shape, "bool", out);
    },
  }));
}

/** Fast `GatherV2` (numeric dtypes): whole slices copied per index, indices checked as in tfjs-cpu. */
export function fastGatherKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.GatherV2,
    backendName,
    kernelFunc: (args) => {
      const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
      if (x.dtype === "string" || x.dtype === "complex64") return cpuFallback(tf.GatherV2, args);
      const { axis, batchDims } = args.attrs as unknown as tf.GatherV2Attrs;
      const cpu = args.backend as MathBackendCPU;
      const parsedAxis = tf.util.parseAxisParam(axis, x.shape)[0];
      const ids = valuesOf(cpu, indices);
      const axisDim = x.shape[parsedAxis];
      for (let i = 0; i < ids.length; ++i) {
        const index = ids[i];
        tf.util.assert(
          index <= axisDim - 1 && index >= 0,
          () => `GatherV2: the index value ${index} is not in [0, ${axisDim - 1}]`,
        );
      }
      const info = tf.backend_util.segment_util.collectGatherOpShapeInfo(
        x,
        indices,
        parsedAxis,
        batchDims ?? 0,
      );
      const values = valuesOf(cpu, x);
      const { batchSize, outerSize, dimSize, sliceSize } = info;
      const perBatch = ids.length / batchSize;
      const out = newLike(values, batchSize * outerSize * perBatch * sliceSize);
      let o = 0;
      for (let b = 0; b < batchSize; b++) {
        for (let outer = 0; outer < outerSize; outer++) {
          const base = (b * outerSize + outer) * dimSize;
          for (let i = 0; i < perBatch; i++, o += sliceSize) {
            const src = (base + ids[b * perBatch + i]) * sliceSize;
            if (sliceSize >= 32) out.set(values.subarray(src, src + sliceSize), o);
            else for (let j = 0; j < sliceSize; j++) out[o + j] = values[src + j];
          }
        }
      }
      return cpu.makeTensorInfo(info.outputShape, x.dtype, out);
    },
  };
}

/** `x` (of `shape`) tiled `reps` times along each axis, as a new array of the same type. */
export function tileValues(x: NumericArray, shape: number[], reps: number[]): NumericArray {
  const rank = shape.length;
  const outShape = shape.map((s, d) => s * reps[d]);
  const out = newLike(x, tf.util.sizeFromShape(outShape));
  if (out.length === 0) return out;
  if (rank === 0) {
    out[0] = x[0];
    return out;
  }
  const strides = tf.util.computeStrides(shape);
  const row = shape[rank - 1];
  const index = new Array<number>(rank - 1).fill(0);
  for (let o = 0; o < out.length;) {
    let src = 0;
    for (let d = 0; d < rank - 1; d++) src += (index[d] % shape[d]) * strides[d];
    const line = x.subarray(src, src + row);
    for (let r = 0; r < reps[rank - 1]; r++, o += row) out.set(line, o);
    for (let d = rank - 2; d >= 0; d--) {
      if (++index[d] < outShape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

/** Fast `Tile` (numeric dtypes): whole rows copied. */
export function fastTileKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.Tile,
    backendName,
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      if (x.dtype === "string" || x.dtype === "complex64") return cpuFallback(tf.Tile, args);
      const { reps } = args.attrs as unknown as tf.TileAttrs;
      const cpu = args.backend as MathBackendCPU;
      const shape = x.shape.map((s, d) => s * reps[d]);
      return cpu.makeTensorInfo(shape, x.dtype, tileValues(valuesOf(cpu, x), x.shape, reps));
    },
  };
}

/** Fast `Concat` (numeric dtypes): each input's rows copied with `TypedArray.set`. */
export function fastConcatKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.Concat,
    backendName,
    kernelFunc: (args) => {
      const inputs = args.inputs as unknown as tf.TensorInfo[];
      const dtype = inputs[0].dtype;
      if (dtype === "string" || dtype === "complex64" || inputs.some((t) => t.dtype !== dtype)) {
        return cpuFallback(tf.Concat, args);
      }
      const { axis } = args.attrs as unknown as tf.ConcatAttrs;
      const $axis = tf.util.parseAxisParam(axis, inputs[0].shape)[0];
      const shapes = inputs.map((t) => t.shape);
      tf.backend_util.assertParamsConsistent(shapes, $axis);
      const shape = tf.backend_util.computeOutShape(shapes, $axis);
      const cpu = args.backend as MathBackendCPU;
      const parts = inputs.filter((t) => tf.util.sizeFromShape(t.shape) > 0);
      const out = tf.util.getTypedArrayFromDType(
        dtype as "float32",
        tf.util.sizeFromShape(shape),
      ) as NumericArray;
      if (out.length === 0) return cpu.makeTensorInfo(shape, dtype, out);
      const rows = tf.util.sizeFromShape(shape.slice(0, $axis));
      const width = out.length / rows;
      let col = 0;
      for (const t of parts) {
        const values = valuesOf(cpu, t);
        const n = values.length / rows;
        for (let r = 0, src = 0, o = col; r < rows; r++, src += n, o += width) {
          if (n >= 32) out.set(values.subarray(src, src + n), o);
          else for (let j = 0; j < n; j++) out[o + j] = values[src + j];
        }
        col += n;
      }
      return cpu.makeTensorInfo(shape, dtype, out);
    },
  };
}
