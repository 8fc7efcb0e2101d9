/**
 * Corruptions of a translation, used by the `learned` reward to make training hypotheses of
 * graded quality: each takes a text and a seeded {@link Rng} and returns a damaged copy,
 * deterministically for a given generator state.
 *
 * Texts are split on whitespace into words. A text of a single word is damaged inside the
 * word (its characters are dropped, shuffled or cut), so every corruption changes a
 * non-trivial text. How much is damaged is itself drawn from the generator, so the
 * corrupted outputs cover a range of target-metric scores rather than one level.
 *
 * | kind | what it does |
 * |---|---|
 * | `drop` | removes a random 10-60 % of the words (at least one) |
 * | `drop_clause` | removes one clause (text between `,` `;` `:` or sentence ends), or a contiguous 30-60 % of the words when there is only one clause |
 * | `add` | inserts 1-4 words of another pair's reference (invented content) at a random place |
 * | `repeat` | repeats a random span of 1-3 words 1-3 extra times in place |
 * | `shuffle` | permutes a random window of the words (the whole text or part of it) |
 * | `truncate` | keeps a random proper prefix of the words (possibly nothing) |
 * | `copy_source` | returns the source sentence unchanged (an untranslated output) |
 * | `mismatch` | returns another pair's reference (fluent but unrelated) |
 * | `wrong_language` | returns another language's translation of the same source (needs one) |
 *
 * @module
 */

import { appendAll } from "../../core/append.ts";
import type { Rng } from "../../core/random.ts";

/**
 * The corruption kinds that need only the text, the source and another pair's reference, in
 * a fixed order.
 */
export const CORRUPTION_KINDS = [
  "drop",
  "drop_clause",
  "add",
  "repeat",
  "shuffle",
  "truncate",
  "copy_source",
  "mismatch",
] as const;

/**
 * Every corruption kind: {@link CORRUPTION_KINDS} and `wrong_language`, which also needs
 * another language's translation of the same source ({@link CorruptionInput.foreign}).
 */
export const ALL_CORRUPTION_KINDS = [...CORRUPTION_KINDS, "wrong_language"] as const;

/** One of {@link ALL_CORRUPTION_KINDS}. */
export type CorruptionKind = typeof ALL_CORRUPTION_KINDS[number];

/** What a corruption may use besides the text it damages. */
export interface CorruptionInput {
  /** The text to damage (a reference or a policy sample). */
  text: string;
  /** The source sentence (for `copy_source`). */
  source: string;
  /** Another pair's reference (for `mismatch` and `add`). */
  other: string;
  /** Another language's translation of the same source (for `wrong_language`). */
  foreign?: string;
}

function words(text: string): string[] {
  const trimmed = text.trim();
  return trimmed === "" ? [] : trimmed.split(/\s+/);
}

/** Applies `fn` to the words, or to the characters of a one-word text. */
function onUnits(text: string, fn: (units: string[]) => string[]): string {
  const ws = words(text);
  if (ws.length >= 2) return fn(ws).join(" ");
  if (ws.length === 1) return fn([...ws[0]]).join("");
  return text.trim();
}

/** A uniform number in [lo, hi). */
function uniform(rng: Rng, lo: number, hi: number): number {
  return lo + (hi - lo) * rng.next();
}

/**
 * Drops a random 10-60 % of the words (at least one, so the output always loses something);
 * a one-word text loses characters instead.
 */
export function dropWords(text: string, rng: Rng): string {
  return onUnits(text, (units) => {
    const rate = uniform(rng, 0.1, 0.6);
    const count = Math.max(1, Math.min(units.length, Math.round(rate * units.length)));
    const order = rng.shuffle(units.map((_, i) => i));
    const dropped = new Set(order.slice(0, count));
    return units.filter((_, i) => !dropped.has(i));
  });
}

/** Repeats a random span of 1-3 words 1-3 extra times right after itself. */
export function repeatWords(text: string, rng: Rng): string {
  const ws = words(text);
  if (ws.length === 0) return "";
  const span = Math.min(ws.length, 1 + rng.int(3));
  const start = rng.int(ws.length - span + 1);
  const times = 1 + rng.int(3);
  const piece = ws.slice(start, start + span);
  const out = ws.slice(0, start + span);
  for (let i = 0; i < times; i++) appendAll(out, piece);
  appendAll(out, ws.slice(start + span));
  return out.join(" ");
}

/**
 * Permutes a random window of at least two words (a one-word text: its characters). When
 * the permutation happens to be the identity the window is rotated by one, so a text with
 * two different units always changes.
 */
export function shuffleWords(text: string, rng: Rng): string {
  return onUnits(text, (units) => {
    if (units.length < 2) return units;
    const size = 2 + rng.int(units.length - 1);
    const start = rng.int(units.length - size + 1);
    const window = units.slice(start, start + size);
    const permuted = rng.shuffle([...window]);
    if (permuted.every((u, i) => u === window[i])) permuted.push(permuted.shift()!);
    return [...units.slice(0, start), ...permuted, ...units.slice(start + size)];
  });
}

/** Clause boundaries: after `,` `;` `:` or a sentence end, before the next word. */
const CLAUSE_END = /[,;:.!?]$/;

/**
 * Removes one clause: the text is cut after words ending in `,` `;` `:` `.` `!` `?`, and one
 * of the pieces is dropped (the punctuation of the piece before it is kept). A text of one
 * clause loses a contiguous 30-60 % of its words instead (of its characters: one word).
 */
export function dropClause(text: string, rng: Rng): string {
  return onUnits(text, (units) => {
    const clauses: number[][] = [[]];
    units.forEach((u, i) => {
      clauses[clauses.length - 1].push(i);
      if (units.length >= 2 && CLAUSE_END.test(u) && i < units.length - 1) clauses.push([]);
    });
    if (clauses.length >= 2) {
      const gone = new Set(clauses[rng.int(clauses.length)]);
      return units.filter((_, i) => !gone.has(i));
    }
    const rate = uniform(rng, 0.3, 0.6);
    const count = Math.max(1, Math.min(units.length - 1, Math.round(rate * units.length)));
    const start = rng.int(units.length - count + 1);
    return [...units.slice(0, start), ...units.slice(start + count)];
  });
}

/**
 * Inserts a span of 1-4 words of `other` (another pair's reference) at a random position:
 * content the source does not have. With an empty `other` a word of the text is doubled.
 */
export function addWords(text: string, other: string, rng: Rng): string {
  const ws = words(text);
  const pool = words(other);
  const from = pool.length > 0 ? pool : ws;
  if (from.length === 0) return "";
  const span = Math.min(from.length, 1 + rng.int(4));
  const start = rng.int(from.length - span + 1);
  const at = rng.int(ws.length + 1);
  return [...ws.slice(0, at), ...from.slice(start, start + span), ...ws.slice(at)].join(" ");
}

/** Keeps a random proper prefix: 0 to n-1 of the n words (one word: of its characters). */
export function truncateWords(text: string, rng: Rng): string {
  return onUnits(text, (units) => units.slice(0, rng.int(units.length)));
}

/**
 * Applies one corruption kind. `copy_source`, `mismatch` and `wrong_language` ignore
 * `input.text` and draw nothing from `rng`.
 *
 * @throws {RangeError} for `wrong_language` without `input.foreign`.
 */
export function corrupt(kind: CorruptionKind, input: CorruptionInput, rng: Rng): string {
  switch (kind) {
    case "drop":
      return dropWords(input.text, rng);
    case "drop_clause":
      return dropClause(input.text, rng);
    case "add":
      return addWords(input.text, input.other, rng);
    case "repeat":
      return repeatWords(input.text, rng);
    case "shuffle":
      return shuffleWords(input.text, rng);
    case "truncate":
      return truncateWords(input.text, rng);
    case "copy_source":
      return input.source;
    case "mismatch":
      return input.other;
    case "wrong_language":
      if (input.foreign === undefined) {
        throw new RangeError("wrong_language needs another language's translation (foreign)");
      }
      return input.foreign;
  }
}
