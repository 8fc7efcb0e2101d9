/**
 * A fast `exp` and the row reductions of a numerically stable softmax or log-sum-exp over
 * row-major `Float32Array`s: {@link fastExp} (float32 precision, about three times faster
 * than `Math.exp`), the row maximum, and sums of `exp(x - max)`, optionally writing the
 * exponentials out. Used by the attention softmax, the decoder's vocabulary-wide passes
 * and the output log-softmax where no SIMD kernel applies.
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
