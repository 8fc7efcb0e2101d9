/**
 * Whole-array operations that never spread an array into a call: `target.push(...items)` or
 * `Math.max(...values)` pass every element as an argument, which overflows the call stack
 * once the array holds about 100k elements (a real corpus, a Grow set, the flags of a catalog
 * entry, a long metrics curve).
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
