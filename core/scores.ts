/**
 * What a reward returns, checked: one number in [0, 1] per row, or an error naming the first
 * bad row.
 *
 * @module
 */

/**
 * Checks that a reward returned `count` numbers in [0, 1].
 *
 * @throws {RangeError} naming the first bad row.
 */
export function checkScores(scores: readonly number[], count: number): void {
  const problem = scoresProblem(scores, count);
  if (problem !== undefined) throw new RangeError(`reward ${problem.message}`);
}

/**
 * What is wrong with a reward's output for `count` rows, or undefined when it is an array
 * of `count` numbers in [0, 1]. `row` is the first bad row, when one is to blame.
 */
export function scoresProblem(
  scores: unknown,
  count: number,
): { message: string; row?: number } | undefined {
  if (!Array.isArray(scores) || scores.length !== count) {
    const got = Array.isArray(scores)
      ? `${scores.length} scores`
      : scores === null
      ? "null"
      : typeof scores;
    return { message: `returned ${got} for ${count} rows; it must return one score per row` };
  }
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i];
    if (typeof s !== "number" || Number.isNaN(s) || s < 0 || s > 1) {
      const shown = typeof s === "number" || s === undefined
        ? String(s)
        : `${typeof s} ${String(JSON.stringify(s)).slice(0, 40)}`;
      return {
        message: `returned ${shown} for row ${i}; rewards must be numbers in [0, 1]`,
        row: i,
      };
    }
  }
  return undefined;
}
