/**
 * Guards on a manifest's size and numbers, so that a hostile document costs neither stack
 * nor time and a huge budget is an error rather than a hang: the most bytes, values and
 * nesting a manifest may have, the most problems one error lists, and numbers beyond
 * ±(2^53 - 1). The text itself is checked against the same limits before it is parsed
 * (json_text.ts); the checks here cover documents that arrive already parsed.
 *
 * @module
 */

import { ManifestError, type ManifestProblem } from "../errors.ts";
import { escapePointer, showValue } from "./json_text.ts";

/** Deepest nesting of arrays and objects a manifest may have (real ones stay below 10). */
export const MAX_MANIFEST_DEPTH = 64;

/** Most values a manifest may hold (real ones hold a few hundred). */
export const MAX_MANIFEST_VALUES = 100_000;

/** Largest manifest file read, in bytes (16 MiB; real ones are a few KiB). */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

/** Most problems listed in one ManifestError; the rest are counted. */
export const MAX_LISTED_PROBLEMS = 50;

/** `problems`, cut to {@link MAX_LISTED_PROBLEMS} with a last line counting the others. */
export function capped(problems: ManifestProblem[]): ManifestProblem[] {
  if (problems.length <= MAX_LISTED_PROBLEMS) return problems;
  const more = problems.length - MAX_LISTED_PROBLEMS;
  return [
    ...problems.slice(0, MAX_LISTED_PROBLEMS),
    { path: "", message: `... and ${more} more problem${more === 1 ? "" : "s"}` },
  ];
}

/**
 * The first place where a parsed manifest is nested deeper than `maxDepth` or passes
 * `maxValues` values, or undefined. Iterative and stops at the first problem, so that a
 * hostile in-memory document costs neither stack nor time (texts are checked before
 * parsing, by `parseManifestText` in mod.ts).
 */
function shapeProblem(
  value: unknown,
  maxDepth: number,
  maxValues: number,
): ManifestProblem | undefined {
  const stack: { value: unknown; path: string; depth: number }[] = [{ value, path: "", depth: 0 }];
  let values = 0;
  while (stack.length > 0) {
    const { value: node, path, depth } = stack.pop()!;
    if (++values > maxValues) {
      return {
        path,
        message: `the manifest holds more than ${maxValues} values (numbers, strings, ...); ` +
          `a manifest describes an experiment, put data in data files`,
      };
    }
    if (node === null || typeof node !== "object") continue;
    if (depth >= maxDepth) return { path, message: `nested more than ${maxDepth} levels deep` };
    const keys = Object.keys(node);
    // Pushed in reverse, so that the walk (and the place reported) follows document order.
    for (let k = keys.length - 1; k >= 0; k--) {
      const key = keys[k];
      stack.push({
        value: (node as Record<string, unknown>)[key],
        path: `${path}/${escapePointer(key)}`,
        depth: depth + 1,
      });
    }
  }
  return undefined;
}

/**
 * Checks a parsed manifest (or plugin reference) against {@link MAX_MANIFEST_DEPTH} and
 * {@link MAX_MANIFEST_VALUES}.
 *
 * @throws {ManifestError} naming the first place that passes a limit.
 */
export function checkShape(raw: unknown, file: string): void {
  const problem = shapeProblem(raw, MAX_MANIFEST_DEPTH, MAX_MANIFEST_VALUES);
  if (problem !== undefined) throw new ManifestError(file, [problem]);
}

/**
 * Numbers no manifest option can sensibly hold: non-finite ones (`1e999` parses as
 * Infinity) and those beyond ±(2^53 - 1), where integers stop being exact. Schemas bound
 * most options; this also covers options whose schema sets no maximum, so that a huge
 * budget or size is an error rather than a hang. A path that already has a problem
 * (e.g. `must be <= 100`) is not reported twice.
 */
export function numberProblems(
  value: unknown,
  known: readonly ManifestProblem[],
): ManifestProblem[] {
  const out: ManifestProblem[] = [];
  const seen = new Set(known.map((p) => p.path));
  const stack: { value: unknown; path: string }[] = [{ value, path: "" }];
  while (stack.length > 0) {
    const { value: node, path } = stack.pop()!;
    if (typeof node === "number") {
      if (Math.abs(node) <= Number.MAX_SAFE_INTEGER || seen.has(path)) continue;
      out.push({
        path,
        message: Number.isNaN(node)
          ? "must be a number (got NaN)"
          : `${showValue(node)} is out of range: numbers in a manifest must lie within ` +
            `±9007199254740991 (2^53 - 1)`,
      });
    } else if (node !== null && typeof node === "object") {
      for (const [key, child] of Object.entries(node)) {
        stack.push({ value: child, path: `${path}/${escapePointer(key)}` });
      }
    }
  }
  return out.reverse();
}
