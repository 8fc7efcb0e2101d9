/**
 * OpenBLAS (or any CBLAS library) through `Deno.dlopen`: the library loader and
 * a typed, bounds-checked `sgemm` wrapper. Used by the `blas` backend and
 * usable by any other code that wants a fast single-precision matrix product.
 *
 * Needs `--allow-ffi`. On Debian/Ubuntu the library comes from
 * `apt-get install libopenblas0-pthread`.
 *
 * @example C = A·B for 2x2 matrices
 * ```ts ignore
 * import { loadBlas, sgemm } from "./_blas_ffi.ts";
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

import { UserError } from "../../core/errors.ts";

const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;
const MAX_INT32 = 0x7fffffff;

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

/** A loaded CBLAS library (normally OpenBLAS). */
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
   * The raw `cblas_sgemm` binding, without any checks: wrong sizes corrupt memory.
   * Prefer {@link sgemm}.
   */
  readonly cblasSgemm: (
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
  /** Unloads the library; later calls through this object crash, so only call it at exit. */
  close(): void;
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
  const setNum = s.openblas_set_num_threads;
  const getNum = s.openblas_get_num_threads;
  let description = "CBLAS (not OpenBLAS)";
  const configPtr = s.openblas_get_config ? s.openblas_get_config() : null;
  if (configPtr !== null) description = Deno.UnsafePointerView.getCString(configPtr);
  const library: BlasLibrary = {
    path,
    description,
    isOpenBlas: setNum !== null,
    setThreads(threads: number) {
      if (!Number.isInteger(threads) || threads < 1) {
        throw new RangeError(`BLAS threads must be a positive integer, got ${threads}`);
      }
      if (setNum) setNum(threads);
    },
    threads() {
      return getNum ? getNum() : 1;
    },
    cblasSgemm: s.cblas_sgemm as BlasLibrary["cblasSgemm"],
    close() {
      cache.delete(path);
      if (defaultLibrary === library) defaultLibrary = undefined;
      lib.close();
    },
  };
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

function checkDim(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_INT32) {
    throw new RangeError(`sgemm: ${name} must be an integer in [0, 2^31), got ${value}`);
  }
}

function checkMatrix(
  name: string,
  array: Float32Array,
  rows: number,
  cols: number,
  ld: number,
): void {
  checkDim(`ld${name.toLowerCase()}`, ld);
  if (ld < Math.max(1, cols)) {
    throw new RangeError(
      `sgemm: ld${name.toLowerCase()}=${ld} is less than ${name}'s ${cols} columns`,
    );
  }
  if (rows > 0 && cols > 0 && (rows - 1) * ld + cols > array.length) {
    throw new RangeError(
      `sgemm: ${name} needs ${(rows - 1) * ld + cols} elements (${rows}x${cols}, stride ${ld}), ` +
        `has ${array.length}`,
    );
  }
}

/**
 * Single-precision matrix product through CBLAS, row-major:
 * `C = alpha * op(A) * op(B) + beta * C`. The typed arrays are passed to the
 * library without copying (their byte offsets are honoured, so subarrays work).
 * Every size is checked against the arrays first, so a wrong argument throws
 * instead of corrupting memory.
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
  const alpha = args.alpha ?? 1;
  const beta = args.beta ?? 0;
  checkDim("m", m);
  checkDim("n", n);
  checkDim("k", k);
  const lda = args.lda ?? Math.max(1, transA ? m : k);
  const ldb = args.ldb ?? Math.max(1, transB ? k : n);
  const ldc = args.ldc ?? Math.max(1, n);
  if (transA) checkMatrix("A", a, k, m, lda);
  else checkMatrix("A", a, m, k, lda);
  if (transB) checkMatrix("B", b, n, k, ldb);
  else checkMatrix("B", b, k, n, ldb);
  checkMatrix("C", c, m, n, ldc);
  if (m === 0 || n === 0) return;
  if (k === 0) {
    for (let i = 0; i < m; i++) {
      const row = c.subarray(i * ldc, i * ldc + n);
      if (beta === 0) row.fill(0);
      else if (beta !== 1) { for (let j = 0; j < n; j++) row[j] *= beta; }
    }
    return;
  }
  lib.cblasSgemm(
    CBLAS_ROW_MAJOR,
    transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
    transB ? CBLAS_TRANS : CBLAS_NO_TRANS,
    m,
    n,
    k,
    alpha,
    a,
    lda,
    b,
    ldb,
    beta,
    c,
    ldc,
  );
}
