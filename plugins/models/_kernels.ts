/**
 * Plain-JavaScript numeric kernels of the transformer: everything that is not a
 * matrix product (those go through tfjs `matMul`, i.e. OpenBLAS on the `blas`
 * backend). Layer norm, masked softmax, attention head layouts, the vocabulary
 * log-softmax, sinusoidal positions, dropout masks, a fast `exp`.
 *
 * Every function works on row-major `Float32Array`s and never mutates its inputs
 * unless its name or doc says so ("...InPlace", "into"). They run on tfjs-cpu's
 * (and the blas backend's) own buffers without copies.
 *
 * @module
 */

import type { Rng } from "../../core/random.ts";

const LOG2E = 1.4426950408889634;
/** 2^(i - 1075) for i in [0, 2100): the exponent part of {@link fastExp}. */
const POW2 = (() => {
  const table = new Float64Array(2100);
  for (let i = 0; i < table.length; i++) table[i] = Math.pow(2, i - 1075);
  return table;
})();

/**
 * exp(x) for x <= 0 with a relative error below 3e-7 (float32 precision), about three
 * times faster than `Math.exp`. Returns 0 below -745 (where `Math.exp` underflows too).
 */
export function fastExp(x: number): number {
  const t = x * LOG2E;
  if (t < -1074) return 0;
  const n = Math.floor(t + 0.5);
  const f = t - n;
  const p = 1 +
    f * (0.6931471805599453 +
        f * (0.2402265069591007 +
            f * (0.05550410866482158 +
                f *
                  (0.009618129107628477 +
                    f * (0.0013333558146428443 + f * 0.00015403530393381606)))));
  return p * POW2[n + 1075];
}

/** The sinusoidal position table of Vaswani et al.: `[length, d]`, sin on even, cos on odd features. */
export function sinusoidTable(length: number, d: number): Float32Array {
  const table = new Float32Array(length * d);
  for (let pos = 0; pos < length; pos++) {
    for (let i = 0; i < d; i += 2) {
      const angle = pos / Math.pow(10000, i / d);
      table[pos * d + i] = Math.sin(angle);
      if (i + 1 < d) table[pos * d + i + 1] = Math.cos(angle);
    }
  }
  return table;
}

/** What {@link layerNormForward} keeps for the backward pass. */
export interface LayerNormSaved {
  /** The normalised input `(x - mean) * rstd`, `[rows, d]`. */
  xhat: Float32Array;
  /** 1 / sqrt(var + eps) per row. */
  rstd: Float32Array;
}

/** Layer norm over the last axis of `x` (`[rows, d]`): `y = xhat * gamma + beta`. */
export function layerNormForward(
  x: Float32Array,
  d: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
  keep: boolean,
): { y: Float32Array; saved?: LayerNormSaved } {
  const rows = x.length / d;
  const y = new Float32Array(x.length);
  const xhat = keep ? new Float32Array(x.length) : undefined;
  const rstdAll = keep ? new Float32Array(rows) : undefined;
  for (let r = 0; r < rows; r++) {
    const o = r * d;
    let sum = 0;
    for (let j = 0; j < d; j++) sum += x[o + j];
    const mean = sum / d;
    let sq = 0;
    for (let j = 0; j < d; j++) {
      const c = x[o + j] - mean;
      sq += c * c;
    }
    const rstd = 1 / Math.sqrt(sq / d + eps);
    if (xhat !== undefined) {
      rstdAll![r] = rstd;
      for (let j = 0; j < d; j++) {
        const h = (x[o + j] - mean) * rstd;
        xhat[o + j] = h;
        y[o + j] = h * gamma[j] + beta[j];
      }
    } else {
      for (let j = 0; j < d; j++) y[o + j] = (x[o + j] - mean) * rstd * gamma[j] + beta[j];
    }
  }
  return xhat === undefined ? { y } : { y, saved: { xhat, rstd: rstdAll! } };
}

/**
 * Backward pass of {@link layerNormForward}: returns dx (plus `residual` when given, the
 * gradient of a skip connection around the norm) as a new array and adds the parameter
 * gradients into `dGamma` / `dBeta`.
 */
export function layerNormBackward(
  dy: Float32Array,
  d: number,
  gamma: Float32Array,
  saved: LayerNormSaved,
  dGamma: Float32Array,
  dBeta: Float32Array,
  residual?: Float32Array,
): Float32Array {
  const { xhat, rstd } = saved;
  const rows = dy.length / d;
  const dx = new Float32Array(dy.length);
  const g = new Float64Array(d);
  for (let r = 0; r < rows; r++) {
    const o = r * d;
    let a = 0;
    let c = 0;
    for (let j = 0; j < d; j++) {
      const gy = dy[o + j];
      const h = xhat[o + j];
      const dh = gy * gamma[j];
      g[j] = dh;
      a += dh;
      c += dh * h;
      dGamma[j] += gy * h;
      dBeta[j] += gy;
    }
    a /= d;
    c /= d;
    const s = rstd[r];
    if (residual === undefined) {
      for (let j = 0; j < d; j++) dx[o + j] = s * (g[j] - a - xhat[o + j] * c);
    } else {
      for (let j = 0; j < d; j++) dx[o + j] = s * (g[j] - a - xhat[o + j] * c) + residual[o + j];
    }
  }
  return dx;
}

/** Adds `b` into `a` (same length) and returns `a`. */
export function addInto(a: Float32Array, b: Float32Array): Float32Array {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
  return a;
}

/** `x + u * mask` (mask optional, e.g. dropout with its 1/(1-p) scale folded in) as a new array. */
export function residualAdd(x: Float32Array, u: Float32Array, mask?: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  if (mask === undefined) {
    for (let i = 0; i < x.length; i++) out[i] = x[i] + u[i];
  } else {
    for (let i = 0; i < x.length; i++) out[i] = x[i] + u[i] * mask[i];
  }
  return out;
}

/** `x * mask` elementwise as a new array. */
export function mulMask(x: Float32Array, mask: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * mask[i];
  return out;
}

/** An inverted-dropout mask: 0 with probability `rate`, else `1 / (1 - rate)`. */
export function dropoutMask(size: number, rate: number, rng: Rng): Float32Array {
  const mask = new Float32Array(size);
  const keep = 1 / (1 - rate);
  for (let i = 0; i < size; i++) mask[i] = rng.next() >= rate ? keep : 0;
  return mask;
}

/** Column sums of a `[rows, cols]` matrix (the gradient of a broadcast bias). */
export function columnSums(x: Float32Array, cols: number): Float32Array {
  const acc = new Float64Array(cols);
  const rows = x.length / cols;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let j = 0; j < cols; j++) acc[j] += x[o + j];
  }
  return Float32Array.from(acc);
}

/** ReLU in place; returns `x`. */
export function reluInPlace(x: Float32Array): Float32Array {
  // Branch-free: random signs make a branch mispredict half the time (5x slower).
  for (let i = 0; i < x.length; i++) x[i] *= +(x[i] > 0);
  return x;
}

/** ReLU's backward pass in place: zeroes `dy` where the activation output `y` is not positive. */
export function reluBackwardInPlace(dy: Float32Array, y: Float32Array): void {
  for (let i = 0; i < dy.length; i++) dy[i] *= +(y[i] > 0);
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** GELU (tanh approximation) of `x` as a new array. */
export function gelu(x: Float32Array): Float32Array {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    y[i] = 0.5 * v * (1 + Math.tanh(GELU_C * (v + 0.044715 * v * v * v)));
  }
  return y;
}

/** GELU's backward pass in place: `dy *= gelu'(x)` where `x` is the pre-activation. */
export function geluBackwardInPlace(dy: Float32Array, x: Float32Array): void {
  for (let i = 0; i < dy.length; i++) {
    const v = x[i];
    const inner = GELU_C * (v + 0.044715 * v * v * v);
    const th = Math.tanh(inner);
    const dInner = GELU_C * (1 + 3 * 0.044715 * v * v);
    dy[i] *= 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * dInner;
  }
}

/** Where a head-split operand lives: `buf[row * stride + offset + head * dk + i]`. */
export interface Strided {
  /** The buffer. */
  buf: Float32Array;
  /** Floats per row. */
  stride: number;
  /** Offset of feature 0 within a row. */
  offset: number;
}

/**
 * Copies `[B * L, stride]` rows into head-major `[B, heads, L, dk]`, multiplied by `scale`.
 */
export function splitHeads(
  src: Strided,
  b: number,
  len: number,
  heads: number,
  dk: number,
  scale = 1,
): Float32Array {
  const out = new Float32Array(b * heads * len * dk);
  const { buf, stride, offset } = src;
  for (let bi = 0; bi < b; bi++) {
    for (let t = 0; t < len; t++) {
      const rowBase = (bi * len + t) * stride + offset;
      for (let h = 0; h < heads; h++) {
        const s = rowBase + h * dk;
        const o = ((bi * heads + h) * len + t) * dk;
        if (scale === 1) {
          for (let i = 0; i < dk; i++) out[o + i] = buf[s + i];
        } else {
          for (let i = 0; i < dk; i++) out[o + i] = buf[s + i] * scale;
        }
      }
    }
  }
  return out;
}

/**
 * The inverse of {@link splitHeads}: writes head-major `[B, heads, L, dk]` into the strided
 * rows of `dst` (times `scale`), overwriting them.
 */
export function mergeHeads(
  src: Float32Array,
  dst: Strided,
  b: number,
  len: number,
  heads: number,
  dk: number,
  scale = 1,
): void {
  const { buf, stride, offset } = dst;
  for (let bi = 0; bi < b; bi++) {
    for (let t = 0; t < len; t++) {
      const rowBase = (bi * len + t) * stride + offset;
      for (let h = 0; h < heads; h++) {
        const o = rowBase + h * dk;
        const s = ((bi * heads + h) * len + t) * dk;
        if (scale === 1) {
          for (let i = 0; i < dk; i++) buf[o + i] = src[s + i];
        } else {
          for (let i = 0; i < dk; i++) buf[o + i] = src[s + i] * scale;
        }
      }
    }
  }
}

/**
 * Softmax in place over the last axis of scores `[B, heads, T, S]`, with key padding
 * (`keyMask[b * S + s] === 0` is never attended) and optionally a causal mask (query t sees
 * keys s <= t). Rows with no visible key become all zeros.
 */
export function maskedSoftmaxInPlace(
  scores: Float32Array,
  b: number,
  heads: number,
  tq: number,
  sk: number,
  keyMask: Uint8Array | null,
  causal: boolean,
): void {
  for (let bi = 0; bi < b; bi++) {
    const mOff = bi * sk;
    for (let h = 0; h < heads; h++) {
      for (let t = 0; t < tq; t++) {
        const o = ((bi * heads + h) * tq + t) * sk;
        const last = causal ? Math.min(t + 1, sk) : sk;
        let max = -Infinity;
        for (let s = 0; s < last; s++) {
          if (keyMask !== null && keyMask[mOff + s] === 0) continue;
          const v = scores[o + s];
          if (v > max) max = v;
        }
        if (max === -Infinity) {
          for (let s = 0; s < sk; s++) scores[o + s] = 0;
          continue;
        }
        let sum = 0;
        for (let s = 0; s < last; s++) {
          if (keyMask !== null && keyMask[mOff + s] === 0) {
            scores[o + s] = 0;
            continue;
          }
          const e = Math.exp(scores[o + s] - max);
          scores[o + s] = e;
          sum += e;
        }
        const inv = 1 / sum;
        for (let s = 0; s < last; s++) scores[o + s] *= inv;
        for (let s = last; s < sk; s++) scores[o + s] = 0;
      }
    }
  }
}

/**
 * Softmax backward in place: given probabilities `p` and `dp` (same layout, rows of `sk`),
 * overwrites `dp` with `p * (dp - sum(dp * p))` times `scale`.
 */
export function softmaxBackwardInPlace(
  p: Float32Array,
  dp: Float32Array,
  sk: number,
  scale: number,
): void {
  const rows = p.length / sk;
  for (let r = 0; r < rows; r++) {
    const o = r * sk;
    let dot = 0;
    for (let s = 0; s < sk; s++) dot += dp[o + s] * p[o + s];
    for (let s = 0; s < sk; s++) dp[o + s] = p[o + s] * (dp[o + s] - dot) * scale;
  }
}

/**
 * Log-sum-exp of each row of `logits` (`[rows, V]`), optionally also writing
 * `exp(logit - max)` into `expOut` and returning the per-row sums in `sums`.
 */
export function rowLogSumExp(
  logits: Float32Array,
  vocab: number,
  expOut?: Float32Array,
  sums?: Float64Array,
): Float64Array {
  const rows = logits.length / vocab;
  const lse = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * vocab;
    let max = -Infinity;
    for (let j = 0; j < vocab; j++) {
      const v = logits[o + j];
      if (v > max) max = v;
    }
    const sum = expOut === undefined
      ? sumExp(logits, o, vocab, max)
      : sumExpInto(logits, o, vocab, max, expOut);
    if (sums !== undefined) sums[r] = sum;
    lse[r] = max + Math.log(sum);
  }
  return lse;
}

/** sum_j exp(x[o + j] - max) with {@link fastExp}'s method, inlined. */
export function sumExp(x: Float32Array, o: number, n: number, max: number): number {
  let sum = 0;
  for (let j = 0; j < n; j++) {
    let t = (x[o + j] - max) * LOG2E;
    if (t < -1000) t = -1000;
    const k = (t - 0.5) | 0; // round half down (t <= 0)
    const f = t - k;
    const p = 1 +
      f * (0.6931471805599453 +
          f * (0.2402265069591007 +
              f * (0.05550410866482158 +
                  f *
                    (0.009618129107628477 +
                      f * (0.0013333558146428443 + f * 0.00015403530393381606)))));
    sum += p * POW2[k + 1075];
  }
  return sum;
}

/** Like {@link sumExp}, also writing each exp(x - max) into `out` at the same index. */
export function sumExpInto(
  x: Float32Array,
  o: number,
  n: number,
  max: number,
  out: Float32Array,
): number {
  let sum = 0;
  for (let j = 0; j < n; j++) {
    let t = (x[o + j] - max) * LOG2E;
    if (t < -1000) t = -1000;
    const k = (t - 0.5) | 0;
    const f = t - k;
    const p = 1 +
      f * (0.6931471805599453 +
          f * (0.2402265069591007 +
              f * (0.05550410866482158 +
                  f *
                    (0.009618129107628477 +
                      f * (0.0013333558146428443 + f * 0.00015403530393381606)))));
    const e = p * POW2[k + 1075];
    out[o + j] = e;
    sum += e;
  }
  return sum;
}
