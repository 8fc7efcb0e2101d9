/**
 * Evaluation helpers: average reward of outputs, with input checks.
 *
 * @module
 */

import type { Example, RewardModel } from "./types.ts";

/** Mean of a list of numbers (NaN for an empty list). */
export function mean(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/**
 * Scores `hypotheses` (one per example) with `reward` and checks every score is a
 * number in [0, 1].
 *
 * @throws {RangeError} naming the first row whose score is NaN or outside [0, 1].
 */
export async function scoreOutputs(
  reward: RewardModel,
  examples: readonly Example[],
  hypotheses: readonly string[],
): Promise<number[]> {
  if (examples.length !== hypotheses.length) {
    throw new RangeError(
      `${hypotheses.length} hypotheses for ${examples.length} examples; they must be equal`,
    );
  }
  const rows = examples.map((e, i) => ({
    source: e.source,
    hypothesis: hypotheses[i],
    reference: e.reference,
  }));
  const scores = await reward.score(rows);
  checkScores(scores, rows.length);
  return scores;
}

/**
 * Checks that a reward returned `count` numbers in [0, 1].
 *
 * @throws {RangeError} naming the first bad row.
 */
export function checkScores(scores: readonly number[], count: number): void {
  if (!Array.isArray(scores) || scores.length !== count) {
    throw new RangeError(
      `reward returned ${
        Array.isArray(scores) ? scores.length : typeof scores
      } scores for ${count} rows`,
    );
  }
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i];
    if (typeof s !== "number" || Number.isNaN(s) || s < 0 || s > 1) {
      throw new RangeError(`reward returned ${s} for row ${i}; rewards must be numbers in [0, 1]`);
    }
  }
}
