/**
 * chrF (Popović 2015) and chrF++ (Popović 2017), computed exactly as sacreBLEU 2.x does.
 *
 * - Character n-grams of orders 1..`charOrder` are taken after removing all whitespace
 *   (unless `whitespace` is set); characters are Unicode code points, as in Python.
 * - Word n-grams of orders 1..`wordOrder` (chrF++ uses 2) are taken from the whitespace-split
 *   words, with one ASCII punctuation mark split off the end (or else the start) of each word.
 * - Per order the statistics are `[hypothesis n-grams, reference n-grams, matches]`; the
 *   hypothesis count is 0 when the reference has no n-gram of that order.
 * - The score averages precision and recall over the orders where both sides have n-grams
 *   (sacreBLEU's "effective order", its default), then takes F-beta. With `epsSmoothing` it
 *   averages per-order F-scores with 1e-16 for undefined ones instead (chrF++.py style).
 * - A corpus score sums the per-sentence statistics first, then scores once.
 *
 * Whitespace means what Python's `str.split()` splits on, which is not JavaScript's `\s`.
 *
 * One deviation: sacreBLEU raises on an empty reference; here an empty reference is scored
 * like any other and gives 0. With several references, empty ones are ignored (as in
 * sacreBLEU) and the one with the best F-score is used.
 *
 * @example
 * ```ts
 * import { corpusChrf, sentenceChrf } from "./chrf.ts";
 *
 * const chrf = sentenceChrf("Das ist ein Test.", "Dies ist ein Test.");
 * console.assert(Math.abs(chrf - 77.909613) < 1e-4);
 * const chrfPlusPlus = sentenceChrf("Das ist ein Test.", "Dies ist ein Test.", { wordOrder: 2 });
 * console.assert(Math.abs(chrfPlusPlus - 77.823177) < 1e-4);
 * console.assert(corpusChrf(["a b"], ["a b"]) === 100);
 * ```
 *
 * @module
 */

/** Options of chrF / chrF++. Every field defaults to sacreBLEU's `CHRF()` default. */
export interface ChrfOptions {
  /** Maximum character n-gram order (`char_order`). Default 6. */
  charOrder?: number;
  /** Maximum word n-gram order (`word_order`); 2 gives chrF++. Default 0. */
  wordOrder?: number;
  /** Weight of recall relative to precision (`beta`). Default 2. */
  beta?: number;
  /** Lowercase hypothesis and reference first (`lowercase`). Default false. */
  lowercase?: boolean;
  /** Keep whitespace inside character n-grams (`whitespace`). Default false. */
  whitespace?: boolean;
  /** Average per-order F-scores with eps smoothing instead of effective order (`eps_smoothing`). Default false. */
  epsSmoothing?: boolean;
}

/** {@link ChrfOptions} with every default filled in and checked. */
interface Resolved {
  charOrder: number;
  wordOrder: number;
  beta: number;
  lowercase: boolean;
  whitespace: boolean;
  epsSmoothing: boolean;
}

/** Smoothing constant of sacreBLEU's chrF (used for undefined precision/recall). */
const EPS = 1e-16;

/** The characters Python's `str.split()` / `str.isspace()` treat as whitespace. */
const PY_WHITESPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029" +
  "\\u202f\\u205f\\u3000";
const WHITESPACE_RUN = new RegExp(`[${PY_WHITESPACE}]+`, "gu");

/** Python's `string.punctuation`: the marks chrF++ splits off words. */
const PUNCTUATION = new Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");

/** n-gram counts of one order, with their total. */
interface Counts {
  map: Map<string, number>;
  total: number;
}

function resolve(options: ChrfOptions): Resolved {
  const resolved: Resolved = {
    charOrder: options.charOrder ?? 6,
    wordOrder: options.wordOrder ?? 0,
    beta: options.beta ?? 2,
    lowercase: options.lowercase ?? false,
    whitespace: options.whitespace ?? false,
    epsSmoothing: options.epsSmoothing ?? false,
  };
  const { charOrder, wordOrder, beta } = resolved;
  if (!Number.isInteger(charOrder) || charOrder < 0) {
    throw new RangeError(`chrF: charOrder must be an integer >= 0, got ${charOrder}`);
  }
  if (!Number.isInteger(wordOrder) || wordOrder < 0) {
    throw new RangeError(`chrF: wordOrder must be an integer >= 0, got ${wordOrder}`);
  }
  if (charOrder + wordOrder === 0) {
    throw new RangeError("chrF: charOrder + wordOrder must be at least 1");
  }
  if (!Number.isFinite(beta) || beta < 0) {
    throw new RangeError(`chrF: beta must be a finite number >= 0, got ${beta}`);
  }
  return resolved;
}

/** Splits like Python's `str.split()` with no argument. */
function splitWords(text: string): string[] {
  return text.split(WHITESPACE_RUN).filter((word) => word !== "");
}

/** Counts the character n-grams of orders 1..maxOrder, by code point. */
function charNgrams(text: string, maxOrder: number, whitespace: boolean): Counts[] {
  const line = whitespace ? text : text.replace(WHITESPACE_RUN, "");
  // UTF-16 offsets of the code point boundaries, so n-grams never split a surrogate pair.
  const bounds: number[] = [0];
  for (let i = 0; i < line.length;) {
    i += (line.codePointAt(i) as number) > 0xffff ? 2 : 1;
    bounds.push(i);
  }
  const length = bounds.length - 1;
  const result: Counts[] = [];
  for (let n = 1; n <= maxOrder; n++) {
    const map = new Map<string, number>();
    for (let i = 0; i + n <= length; i++) {
      const gram = line.substring(bounds[i], bounds[i + n]);
      map.set(gram, (map.get(gram) ?? 0) + 1);
    }
    result.push({ map, total: Math.max(0, length - n + 1) });
  }
  return result;
}

/** chrF++'s word splitting: one punctuation mark is split off the end, else off the start. */
function chrfWords(text: string): string[] {
  const words: string[] = [];
  for (const word of splitWords(text)) {
    if (Array.from(word).length === 1) {
      words.push(word);
    } else if (PUNCTUATION.has(word[word.length - 1])) {
      words.push(word.slice(0, -1), word[word.length - 1]);
    } else if (PUNCTUATION.has(word[0])) {
      words.push(word[0], word.slice(1));
    } else {
      words.push(word);
    }
  }
  return words;
}

/** Counts the word n-grams of orders 1..maxOrder. */
function wordNgrams(words: readonly string[], maxOrder: number): Counts[] {
  const result: Counts[] = [];
  for (let n = 1; n <= maxOrder; n++) {
    const map = new Map<string, number>();
    for (let i = 0; i + n <= words.length; i++) {
      const gram = n === 1 ? words[i] : words.slice(i, i + n).join(" ");
      map.set(gram, (map.get(gram) ?? 0) + 1);
    }
    result.push({ map, total: Math.max(0, words.length - n + 1) });
  }
  return result;
}

/** All n-gram counts of a (lowercased if asked) segment: char orders, then word orders. */
function segmentNgrams(text: string, o: Resolved): Counts[] {
  const line = o.lowercase ? text.toLowerCase() : text;
  const grams = charNgrams(line, o.charOrder, o.whitespace);
  if (o.wordOrder > 0) grams.push(...wordNgrams(chrfWords(line), o.wordOrder));
  return grams;
}

/** `[hyp, ref, match]` per order, flattened. */
function matchStats(hyp: readonly Counts[], ref: readonly Counts[]): number[] {
  const stats: number[] = [];
  for (let k = 0; k < hyp.length; k++) {
    const h = hyp[k];
    const r = ref[k];
    let match = 0;
    for (const [gram, count] of h.map) {
      const refCount = r.map.get(gram);
      if (refCount !== undefined) match += Math.min(count, refCount);
    }
    stats.push(r.map.size > 0 ? h.total : 0, r.total, match);
  }
  return stats;
}

/** F-score from resolved options, 0-100. */
function fScore(stats: readonly number[], o: Resolved): number {
  const order = o.charOrder + o.wordOrder;
  if (stats.length !== 3 * order) {
    throw new RangeError(
      `chrF: expected ${3 * order} statistics for ${o.charOrder}+${o.wordOrder} orders, got ${stats.length}`,
    );
  }
  const factor = o.beta ** 2;
  let score = 0;
  let avgPrecision = 0;
  let avgRecall = 0;
  let effectiveOrder = 0;
  for (let i = 0; i < order; i++) {
    const nHyp = stats[3 * i];
    const nRef = stats[3 * i + 1];
    const nMatch = stats[3 * i + 2];
    const precision = nHyp > 0 ? nMatch / nHyp : EPS;
    const recall = nRef > 0 ? nMatch / nRef : EPS;
    const denominator = factor * precision + recall;
    score += denominator > 0 ? (1 + factor) * precision * recall / denominator : EPS;
    if (nHyp > 0 && nRef > 0) {
      avgPrecision += precision;
      avgRecall += recall;
      effectiveOrder++;
    }
  }
  if (o.epsSmoothing) return 100 * score / order;
  if (effectiveOrder === 0) return 0;
  avgPrecision /= effectiveOrder;
  avgRecall /= effectiveOrder;
  if (avgPrecision + avgRecall === 0) return 0;
  return 100 * (1 + factor) * avgPrecision * avgRecall / (factor * avgPrecision + avgRecall);
}

/** The references to use: non-empty ones, or the single empty one when there are none. */
function usableReferences(ref: string | readonly string[]): readonly string[] {
  const refs = typeof ref === "string" ? [ref] : ref;
  const nonEmpty = refs.filter((r) => r !== "");
  return nonEmpty.length > 0 ? nonEmpty : [""];
}

/**
 * Sufficient statistics of one sentence: `[hyp, ref, match]` n-gram counts for each character
 * order 1..`charOrder`, then each word order 1..`wordOrder`, flattened (length
 * `3 * (charOrder + wordOrder)`). Statistics of several sentences may be summed element-wise
 * and scored with {@link chrfFromStats}. With several references, the statistics of the one
 * with the best F-score are returned.
 *
 * @throws {RangeError} on invalid options.
 */
export function chrfStats(
  hyp: string,
  ref: string | readonly string[],
  options: ChrfOptions = {},
): number[] {
  return statsResolved(hyp, ref, resolve(options));
}

function statsResolved(hyp: string, ref: string | readonly string[], o: Resolved): number[] {
  const hypGrams = segmentNgrams(hyp, o);
  let best: number[] = [];
  let bestScore = -1;
  for (const r of usableReferences(ref)) {
    const stats = matchStats(hypGrams, segmentNgrams(r, o));
    const score = fScore(stats, o);
    if (score > bestScore) {
      best = stats;
      bestScore = score;
    }
  }
  return best;
}

/**
 * The chrF score (0-100) of statistics from {@link chrfStats}, single or summed.
 *
 * @throws {RangeError} on invalid options or statistics of the wrong length.
 */
export function chrfFromStats(stats: readonly number[], options: ChrfOptions = {}): number {
  return fScore(stats, resolve(options));
}

/**
 * Sentence-level chrF (or chrF++ with `wordOrder: 2`), 0-100, like sacreBLEU's
 * `CHRF().sentence_score(hyp, [ref])`.
 *
 * @throws {RangeError} on invalid options.
 */
export function sentenceChrf(
  hyp: string,
  ref: string | readonly string[],
  options: ChrfOptions = {},
): number {
  const o = resolve(options);
  return fScore(statsResolved(hyp, ref, o), o);
}

/**
 * Corpus-level chrF (or chrF++), 0-100, like sacreBLEU's `CHRF().corpus_score`: the
 * per-sentence statistics are summed, then scored once. `refs[i]` is the reference (or the
 * list of references) of `hyps[i]`.
 *
 * @throws {RangeError} when `hyps` and `refs` differ in length, or on invalid options.
 */
export function corpusChrf(
  hyps: readonly string[],
  refs: readonly (string | readonly string[])[],
  options: ChrfOptions = {},
): number {
  const o = resolve(options);
  if (hyps.length !== refs.length) {
    throw new RangeError(
      `chrF: ${hyps.length} hypotheses but ${refs.length} references; they must pair up`,
    );
  }
  const totals = new Array<number>(3 * (o.charOrder + o.wordOrder)).fill(0);
  for (let i = 0; i < hyps.length; i++) {
    const stats = statsResolved(hyps[i], refs[i], o);
    for (let k = 0; k < totals.length; k++) totals[k] += stats[k];
  }
  return fScore(totals, o);
}
