/**
 * A fast `exp` and the row reductions of a numerically stable softmax or log-sum-exp over
 * row-major `Float32Array`s: {@link fastExp} (float32 precision, about three times faster
 * than `Math.exp`), the row maximum, and sums of `exp(x - max)`, optionally writing the
 * exponentials out. Used by the attention softmax, the decoder's vocabulary-wide passes
 * and the output log-softmax where no SIMD kernel applies. {@link preciseExp} keeps
 * float64 precision at about twice the speed of `Math.exp`, for sums that must be exact.
 *
 * Each hot loop sits in a small function of its own: V8 optimises those as a whole, while
 * a long inner loop inside the outer loop of a rarely called function runs in
 * on-stack-replaced code that is thrown away at every exit of the inner loop (several
 * times slower).
 *
 * @module
 */

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

/** Table steps per unit of {@link preciseExp}'s argument. */
const PRECISE_STEPS = 64;
/** {@link preciseExp} uses its table on (-PRECISE_RANGE, 0]. */
const PRECISE_RANGE = 60;
/** Math.exp(-i / 64) for i in [0, 64 * 60]: the table of {@link preciseExp}. */
const EXP_TABLE = Float64Array.from(
  { length: PRECISE_RANGE * PRECISE_STEPS + 1 },
  (_, i) => Math.exp(-i / PRECISE_STEPS),
);

/**
 * exp(x) for x <= 0 in float64 precision (within 2 ulp of `Math.exp`, relative error below
 * 5e-16), about twice as fast: x = -i/64 + b with b in [0, 1/64) (exact), exp(-i/64) from a
 * table of `Math.exp` values, exp(b) by its Taylor polynomial of degree 6 (remainder below
 * 1e-16 relative). `Math.exp` itself outside (-60, 0] and for NaN.
 */
export function preciseExp(x: number): number {
  const s = -x * PRECISE_STEPS;
  if (!(s >= 0 && s < PRECISE_RANGE * PRECISE_STEPS)) return Math.exp(x);
  const i = Math.ceil(s);
  const b = x + i / PRECISE_STEPS;
  const p = 1 +
    b * (1 + b * (1 / 2 + b * (1 / 6 + b * (1 / 24 + b * (1 / 120 + b * (1 / 720))))));
  return EXP_TABLE[i] * p;
}

/** The largest of `x[o .. o + n)` (-Infinity when n is 0; NaN is skipped). */
export function rowMax(x: Float32Array, o: number, n: number): number {
  let max = -Infinity;
  for (let j = 0; j < n; j++) {
    const v = x[o + j];
    if (v > max) max = v;
  }
  return max;
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
