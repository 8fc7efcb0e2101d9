/**
 * OpenBLAS (or any CBLAS library) through `Deno.dlopen`: the library loader and
 * a typed, bounds-checked `sgemm` wrapper. Used by the `blas` backend (its matMul
 * kernels) and by the GEMM dispatch of `gemm.ts` (the fused layers), and usable by any
 * other code that wants a fast single-precision matrix product.
 *
 * Safety by construction: the native symbols never leave this module. Plugin code runs after
 * the experiment worker has given up FFI permission, but a symbol bound before that would
 * still be callable; so the only way in is {@link BlasLibrary.gemm} (and {@link sgemm}), which
 * check every size against the arrays first.
 *
 * Needs `--allow-ffi`. On Debian/Ubuntu the library comes from
 * `apt-get install libopenblas0-pthread`.
 *
 * @example C = A·B for 2x2 matrices
 * ```ts ignore
 * import { loadBlas, sgemm } from "./blas_ffi.ts";
 *
 * const lib = loadBlas();
 * const c = new Float32Array(4);
 * const a = new Float32Array([1, 2, 3, 4]);
 * const b = new Float32Array([1, 0, 0, 1]);
 * sgemm({ m: 2, n: 2, k: 2, a, b, c }, lib);
 * // c is now [1, 2, 3, 4]
 * ```
 *
 * @module
 */

import { addGemmTime } from "../../core/profile.ts";
import { UserError } from "../../core/errors.ts";

const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;
const MAX_INT32 = 0x7fffffff;
/** More threads than any machine has; OpenBLAS caps to its build's maximum anyway. */
const MAX_THREADS = 4096;

/** The symbols we bind; everything but `cblas_sgemm` is optional (absent from reference BLAS). */
const SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32", // order
      "i32", // transA
      "i32", // transB
      "i32", // M
      "i32", // N
      "i32", // K
      "f32", // alpha
      "buffer", // A
      "i32", // lda
      "buffer", // B
      "i32", // ldb
      "f32", // beta
      "buffer", // C
      "i32", // ldc
    ],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
} as const satisfies Deno.ForeignLibraryInterface;

/** The install hint included in every "library not found" error. */
export const BLAS_INSTALL_HINT: string =
  "install OpenBLAS with `apt-get install libopenblas0-pthread` (Debian/Ubuntu; " +
  "`dnf install openblas-threads` on Fedora, `brew install openblas` on macOS), " +
  'or set the blas backend\'s "libraryPath" to a libopenblas.so';

/**
 * A loaded CBLAS library (normally OpenBLAS). It holds no native handle that code outside
 * this module can reach: the `cblas_sgemm` symbol stays private, and {@link BlasLibrary.gemm}
 * checks every size, stride and offset against the arrays (read through the engine's own
 * typed-array accessors, which a subclass cannot override) before the native call.
 */
export interface BlasLibrary {
  /** The path or soname the library was opened from. */
  readonly path: string;
  /** Self-description: OpenBLAS's config string (version, core), or `"CBLAS (not OpenBLAS)"`. */
  readonly description: string;
  /** True when the library exports `openblas_set_num_threads`, i.e. it is OpenBLAS. */
  readonly isOpenBlas: boolean;
  /** Sets the threads later calls use (process-wide; ignored by non-OpenBLAS libraries). */
  setThreads(threads: number): void;
  /** The number of threads the library uses now (1 when it cannot say). */
  threads(): number;
  /**
   * `C = alpha op(A) op(B) + beta C` on row-major matrices that start at element offsets
   * `aOff`, `bOff`, `cOff` of their arrays, with row strides `lda`, `ldb`, `ldc`.
   *
   * @throws {RangeError} when a size, stride or offset does not fit its array.
   * @throws {TypeError} when an operand is not a Float32Array.
   */
  gemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    aOff: number,
    lda: number,
    b: Float32Array,
    bOff: number,
    ldb: number,
    beta: number,
    c: Float32Array,
    cOff: number,
    ldc: number,
  ): void;
}

/**
 * The library names and paths {@link loadBlas} tries, in order, when no path is given:
 * OpenBLAS by soname and at the usual Debian, Fedora and Homebrew locations, then the
 * generic `libblas.so.3` (Debian's alternatives link, which may point at OpenBLAS).
 */
export function defaultBlasCandidates(): string[] {
  if (Deno.build.os === "darwin") {
    return [
      "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
      "/usr/local/opt/openblas/lib/libopenblas.dylib",
      "libopenblas.dylib",
    ];
  }
  if (Deno.build.os === "windows") return ["libopenblas.dll", "openblas.dll"];
  const triplet = `${Deno.build.arch}-linux-gnu`;
  return [
    "libopenblas.so.0",
    `/usr/lib/${triplet}/libopenblas.so.0`,
    `/usr/lib/${triplet}/openblas-pthread/libopenblas.so.0`,
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/local/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so",
    "libopenblas.so",
    `/usr/lib/${triplet}/openblas-pthread/libblas.so.3`,
    "libblas.so.3",
    `/usr/lib/${triplet}/libblas.so.3`,
  ];
}

const cache = new Map<string, BlasLibrary>();
let defaultLibrary: BlasLibrary | undefined;

function isPermissionError(err: unknown): boolean {
  return err instanceof Deno.errors.PermissionDenied || err instanceof Deno.errors.NotCapable;
}

function open(path: string): BlasLibrary {
  const cached = cache.get(path);
  if (cached) return cached;
  const lib = Deno.dlopen(path, SYMBOLS);
  const s = lib.symbols;
  const sgemmSymbol = s.cblas_sgemm;
  const setNum = s.openblas_set_num_threads;
  const getNum = s.openblas_get_num_threads;
  let description = "CBLAS (not OpenBLAS)";
  const configPtr = s.openblas_get_config ? s.openblas_get_config() : null;
  if (configPtr !== null) description = Deno.UnsafePointerView.getCString(configPtr);
  const library: BlasLibrary = Object.freeze({
    path,
    description,
    isOpenBlas: setNum !== null,
    setThreads(threads: number) {
      if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
        throw new RangeError(
          `BLAS threads must be an integer in [1, ${MAX_THREADS}], got ${threads}`,
        );
      }
      if (setNum) setNum(threads);
    },
    threads() {
      return getNum ? getNum() : 1;
    },
    gemm: checkedGemm(sgemmSymbol),
  });
  cache.set(path, library);
  return library;
}

/**
 * Opens a CBLAS library and binds `cblas_sgemm` (plus OpenBLAS's thread controls when present).
 * Libraries are cached per path, so repeated calls are cheap.
 *
 * @param libraryPath a file path or soname; when empty or omitted, tries
 *   {@link defaultBlasCandidates} in order and returns the first that loads.
 * @throws {UserError} when the library cannot be found or lacks `cblas_sgemm` (the message
 *   says how to install OpenBLAS), or when the process lacks `--allow-ffi`.
 */
export function loadBlas(libraryPath?: string): BlasLibrary {
  if (libraryPath) {
    try {
      return open(libraryPath);
    } catch (err) {
      if (isPermissionError(err)) throw ffiPermissionError(err);
      throw new UserError(
        `cannot load the BLAS library ${JSON.stringify(libraryPath)}: ${message(err)}; ` +
          BLAS_INSTALL_HINT,
        { cause: err },
      );
    }
  }
  if (defaultLibrary) return defaultLibrary;
  const failures: string[] = [];
  for (const candidate of defaultBlasCandidates()) {
    try {
      defaultLibrary = open(candidate);
      return defaultLibrary;
    } catch (err) {
      if (isPermissionError(err)) throw ffiPermissionError(err);
      failures.push(`${candidate}: ${firstLine(message(err))}`);
    }
  }
  throw new UserError(
    `no BLAS library found (tried ${failures.length} locations: ${failures.join("; ")}); ` +
      BLAS_INSTALL_HINT,
  );
}

function ffiPermissionError(err: unknown): UserError {
  return new UserError(
    `the blas backend calls OpenBLAS through FFI: run deno with --allow-ffi (${message(err)})`,
    { cause: err },
  );
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function firstLine(text: string): string {
  const i = text.indexOf("\n");
  return i < 0 ? text : text.slice(0, i);
}

/** Arguments of {@link sgemm}: `C = alpha * op(A) * op(B) + beta * C`, all row-major. */
export interface SgemmArgs {
  /** Rows of op(A) and of C. */
  m: number;
  /** Columns of op(B) and of C. */
  n: number;
  /** Columns of op(A) = rows of op(B). */
  k: number;
  /** A, stored m x k (or k x m when `transA`). */
  a: Float32Array;
  /** B, stored k x n (or n x k when `transB`). */
  b: Float32Array;
  /** C, m x n; read when `beta != 0`, always written. */
  c: Float32Array;
  /** Use the transpose of A. Default false. */
  transA?: boolean;
  /** Use the transpose of B. Default false. */
  transB?: boolean;
  /** Scale of the product. Default 1. */
  alpha?: number;
  /** Scale of the existing C. Default 0 (C is overwritten). */
  beta?: number;
  /** Row stride of A as stored. Default: its column count (k, or m when `transA`). */
  lda?: number;
  /** Row stride of B as stored. Default: its column count (n, or k when `transB`). */
  ldb?: number;
  /** Row stride of C. Default n. */
  ldc?: number;
}

/**
 * Single-precision matrix product through CBLAS, row-major:
 * `C = alpha * op(A) * op(B) + beta * C`, with named arguments and default strides; see
 * {@link BlasLibrary.gemm} for the positional form. The typed arrays are passed to the
 * library without copying. Every size is checked against the arrays first, so a wrong
 * argument throws instead of corrupting memory.
 *
 * @param args the matrices, sizes and options.
 * @param lib the library; defaults to {@link loadBlas}().
 * @throws {RangeError} when a size or stride does not fit the arrays.
 * @throws {UserError} when no library is given and none can be loaded.
 */
export function sgemm(args: SgemmArgs, lib: BlasLibrary = loadBlas()): void {
  const { m, n, k, a, b, c } = args;
  const transA = args.transA ?? false;
  const transB = args.transB ?? false;
  const lda = args.lda ?? Math.max(1, transA ? m : k);
  const ldb = args.ldb ?? Math.max(1, transB ? k : n);
  const ldc = args.ldc ?? Math.max(1, n);
  lib.gemm(
    transA,
    transB,
    m,
    n,
    k,
    args.alpha ?? 1,
    a,
    0,
    lda,
    b,
    0,
    ldb,
    args.beta ?? 0,
    c,
    0,
    ldc,
  );
}

// The engine's own typed-array accessors, taken before any plugin code runs: a subclass or
// a patched prototype cannot make an array look longer than it is to the checks below.
const apply = Reflect.apply;
const TYPED_ARRAY_PROTO = Object.getPrototypeOf(Float32Array.prototype);
const F32 = Float32Array;
const isSafeInteger = Number.isSafeInteger;
function intrinsicGetter(key: PropertyKey): (this: unknown) => unknown {
  return Object.getOwnPropertyDescriptor(TYPED_ARRAY_PROTO, key)!.get! as (
    this: unknown,
  ) => unknown;
}
const tagOf = intrinsicGetter(Symbol.toStringTag);
const lengthOf = intrinsicGetter("length");
const bufferOf = intrinsicGetter("buffer");
const byteOffsetOf = intrinsicGetter("byteOffset");

/** The element count of a genuine Float32Array (read through the intrinsic accessors). */
function floatLength(name: string, array: unknown): number {
  if (apply(tagOf, array, []) !== "Float32Array") {
    throw new TypeError(`gemm: ${name} must be a Float32Array`);
  }
  return apply(lengthOf, array, []) as number;
}

/** A fresh view of `array` from element `offset` on, built with the original constructor. */
function viewFrom(array: Float32Array, offset: number, length: number): Float32Array {
  const buffer = apply(bufferOf, array, []) as ArrayBufferLike;
  const byteOffset = apply(byteOffsetOf, array, []) as number;
  return new F32(buffer, byteOffset + offset * 4, length - offset);
}

function checkDim(name: string, value: unknown): number {
  if (typeof value !== "number" || !isSafeInteger(value) || value < 0 || value > MAX_INT32) {
    throw new RangeError(`gemm: ${name} must be an integer in [0, 2^31), got ${String(value)}`);
  }
  return value;
}

/** Checks one operand stored `rows` x `cols` at `offset` with row stride `ld`; returns its length. */
function checkOperand(
  name: string,
  array: Float32Array,
  offset: number,
  rows: number,
  cols: number,
  ld: number,
): number {
  const length = floatLength(name, array);
  checkDim(`${name} offset`, offset);
  checkDim(`ld${name.toLowerCase()}`, ld);
  if (ld < Math.max(1, cols)) {
    throw new RangeError(
      `gemm: ld${name.toLowerCase()}=${ld} is less than ${name}'s ${cols} columns`,
    );
  }
  if (rows > 0 && cols > 0 && offset + (rows - 1) * ld + cols > length) {
    throw new RangeError(
      `gemm: ${name} needs ${offset + (rows - 1) * ld + cols} elements (${rows}x${cols}, ` +
        `stride ${ld}, offset ${offset}), has ${length}`,
    );
  }
  return length;
}

type SgemmSymbol = (
  order: number,
  transA: number,
  transB: number,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Float32Array,
  lda: number,
  b: Float32Array,
  ldb: number,
  beta: number,
  c: Float32Array,
  ldc: number,
) => void;

/**
 * {@link BlasLibrary.gemm} over a bound `cblas_sgemm`: checks every argument of a product
 * against its arrays, then calls the symbol (which never leaves this closure).
 */
function checkedGemm(symbol: SgemmSymbol): BlasLibrary["gemm"] {
  return function gemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    aOff: number,
    lda: number,
    b: Float32Array,
    bOff: number,
    ldb: number,
    beta: number,
    c: Float32Array,
    cOff: number,
    ldc: number,
  ): void {
    transA = transA === true;
    transB = transB === true;
    checkDim("m", m);
    checkDim("n", n);
    checkDim("k", k);
    if (typeof alpha !== "number" || typeof beta !== "number") {
      throw new TypeError("gemm: alpha and beta must be numbers");
    }
    const aLength = transA
      ? checkOperand("A", a, aOff, k, m, lda)
      : checkOperand("A", a, aOff, m, k, lda);
    const bLength = transB
      ? checkOperand("B", b, bOff, n, k, ldb)
      : checkOperand("B", b, bOff, k, n, ldb);
    const cLength = checkOperand("C", c, cOff, m, n, ldc);
    if (m === 0 || n === 0) return;
    const cv = cOff === 0 ? c : viewFrom(c, cOff, cLength);
    if (k === 0) {
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) cv[i * ldc + j] = beta === 0 ? 0 : cv[i * ldc + j] * beta;
      }
      return;
    }
    const started = performance.now();
    symbol(
      CBLAS_ROW_MAJOR,
      transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
      transB ? CBLAS_TRANS : CBLAS_NO_TRANS,
      m,
      n,
      k,
      alpha,
      aOff === 0 ? a : viewFrom(a, aOff, aLength),
      lda,
      bOff === 0 ? b : viewFrom(b, bOff, bLength),
      ldb,
      beta,
      cv,
      ldc,
    );
    addGemmTime(performance.now() - started);
  };
}
