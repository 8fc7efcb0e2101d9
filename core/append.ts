/**
 * Whole-array operations that never spread an array into a call: `target.push(...items)` or
 * `Math.max(...values)` pass every element as an argument, which overflows the call stack
 * once the array holds about 100k elements (a real corpus, a Grow set, the flags of a catalog
 * entry, a long metrics curve), and the one {@link mean} of a list of numbers.
 *
 * @module
 */

/**
 * Appends every element of `items` to `target`, in order, and returns `target`. Works for
 * any number of elements (a loop, not `push(...items)`); `items` may be `target` itself.
 *
 * @example
 * ```ts
 * import { appendAll } from "./append.ts";
 * const rows = [1, 2];
 * appendAll(rows, [3, 4]);
 * console.assert(rows.join() === "1,2,3,4");
 * ```
 */
export function appendAll<T>(target: T[], items: Iterable<T>): T[] {
  const source = items === target ? target.slice() : items; // appending an array to itself
  for (const item of source) target.push(item);
  return target;
}

/** The largest of `values` (`-Infinity` for none; NaN when any is NaN, like `Math.max`). */
export function maxOf(values: Iterable<number>): number {
  let best = -Infinity;
  for (const v of values) {
    if (Number.isNaN(v)) return NaN;
    if (v > best) best = v;
  }
  return best;
}

/** The smallest of `values` (`Infinity` for none; NaN when any is NaN, like `Math.min`). */
export function minOf(values: Iterable<number>): number {
  let best = Infinity;
  for (const v of values) {
    if (Number.isNaN(v)) return NaN;
    if (v < best) best = v;
  }
  return best;
}

/**
 * Mean of `values` (NaN for none), clamped to their [min, max] so rounding cannot put the
 * mean of equal values outside them (0.7, 0.7, 0.7 sums to 2.0999999999999996, whose third
 * is below 0.7): a threshold at the mean of tied rewards then keeps none of them, as it should.
 *
 * @example
 * ```ts
 * import { mean } from "./append.ts";
 * console.assert(mean([0.7, 0.7, 0.7]) === 0.7);
 * console.assert(Number.isNaN(mean([])));
 * ```
 */
export function mean(values: Iterable<number>): number {
  let sum = 0;
  let count = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    sum += v;
    count++;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (count === 0) return NaN;
  return Math.min(Math.max(sum / count, min), max);
}
