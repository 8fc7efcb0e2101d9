/**
 * Appending one array to another without spreading it into a call: `target.push(...items)`
 * passes every element as an argument, which overflows the call stack once `items` holds
 * about 100k elements (a real corpus, a Grow set, the flags of a catalog entry).
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
