/**
 * Entropies of the softmax distributions given by rows of logits, computed on the host in
 * one pass per row: no `[rows, vocabulary]` log-softmax, exponential or product tensors are
 * built (the element-wise tfjs route builds several).
 *
 * @module
 */

/**
 * Entropy -sum_v p(v) log p(v) of p = softmax(x / temperature) for each row of `logits`
 * (`[rows, vocab]`, row-major) whose `active` entry is not 0 (all rows when `active` is
 * omitted); 0 for the others. Computed as log S - (sum_v e_v z_v) / S with z = x / T - max
 * and e = exp(z), S = sum_v e_v, in double precision.
 *
 * @throws {RangeError} when the sizes disagree or the temperature is not positive.
 */
export function softmaxEntropies(
  logits: Float32Array,
  rows: number,
  vocab: number,
  temperature = 1,
  active?: ArrayLike<number>,
): Float64Array {
  if (logits.length !== rows * vocab) {
    throw new RangeError(
      `softmaxEntropies: ${logits.length} logits are not ${rows} rows of ${vocab}`,
    );
  }
  if (active !== undefined && active.length !== rows) {
    throw new RangeError(`softmaxEntropies: ${active.length} mask entries for ${rows} rows`);
  }
  if (!(temperature > 0 && Number.isFinite(temperature))) {
    throw new RangeError(`softmaxEntropies: temperature must be > 0, got ${temperature}`);
  }
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    if (active === undefined || active[r] !== 0) {
      out[r] = rowEntropy(logits, r * vocab, vocab, 1 / temperature);
    }
  }
  return out;
}

/** The entropy of softmax(x[o .. o + n) * k); see {@link softmaxEntropies}. */
function rowEntropy(x: Float32Array, o: number, n: number, k: number): number {
  let max = -Infinity;
  for (let j = 0; j < n; j++) if (x[o + j] > max) max = x[o + j];
  if (max === -Infinity || Number.isNaN(max)) return NaN;
  const m = max * k;
  let sum = 0;
  let weighted = 0;
  for (let j = 0; j < n; j++) {
    const z = x[o + j] * k - m;
    const e = Math.exp(z);
    sum += e;
    weighted += e * z;
  }
  return Math.log(sum) - weighted / sum;
}
