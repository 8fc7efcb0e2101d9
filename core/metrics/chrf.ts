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
 * import assert from "node:assert/strict";
 * import { corpusChrf, sentenceChrf } from "./chrf.ts";
 *
 * const chrf = sentenceChrf("Das ist ein Test.", "Dies ist ein Test.");
 * assert.ok(Math.abs(chrf - 77.909613) < 1e-4);
 * const chrfPlusPlus = sentenceChrf("Das ist ein Test.", "Dies ist ein Test.", { wordOrder: 2 });
 * assert.ok(Math.abs(chrfPlusPlus - 77.823177) < 1e-4);
 * assert.equal(corpusChrf(["a b"], ["a b"]), 100);
 * ```
 *
 * @module
 */

import { appendAll } from "../append.ts";
import { NgramIndex, splitWords, usableReferences, WHITESPACE_RUN } from "./_text.ts";

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

/** Python's `string.punctuation`: the marks chrF++ splits off words. */
const PUNCTUATION = new Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");

/** Fills in the defaults and checks the options. */
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

/** The code points of a line (lone surrogates count as one each, as in Python). */
function codePoints(line: string): number[] {
  const points: number[] = [];
  for (let i = 0; i < line.length;) {
    const point = line.codePointAt(i) as number;
    points.push(point);
    i += point > 0xffff ? 2 : 1;
  }
  return points;
}

/** chrF++'s word splitting: one punctuation mark is split off the end, else off the start. */
function chrfWords(text: string): string[] {
  const words: string[] = [];
  for (const word of splitWords(text)) {
    if (codePoints(word).length === 1) {
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

/** The n-gram ids of a (lowercased if asked) segment: char orders, then word orders. */
function segmentNgrams(text: string, o: Resolved, index: NgramIndex): Int32Array[] {
  const line = o.lowercase ? text.toLowerCase() : text;
  const chars = codePoints(o.whitespace ? line : line.replace(WHITESPACE_RUN, ""));
  const grams = index.ngrams(chars, o.charOrder);
  if (o.wordOrder > 0) {
    const words = chrfWords(line).map((word) => index.wordSymbol(word));
    appendAll(grams, index.ngrams(words, o.wordOrder));
  }
  return grams;
}

/**
 * `[hyp, ref, match]` per order, flattened; matches are clipped to the reference counts.
 * `scratch` is all zeros on entry and on exit.
 */
function matchStats(
  hyp: readonly Int32Array[],
  ref: readonly Int32Array[],
  scratch: Int32Array,
): number[] {
  const stats: number[] = [];
  for (let k = 0; k < hyp.length; k++) {
    const h = hyp[k];
    const r = ref[k];
    for (let i = 0; i < r.length; i++) scratch[r[i]]++;
    let match = 0;
    for (let i = 0; i < h.length; i++) {
      if (scratch[h[i]] > 0) {
        scratch[h[i]]--;
        match++;
      }
    }
    for (let i = 0; i < r.length; i++) scratch[r[i]] = 0;
    // No hypothesis n-grams are counted for an order the reference has none of.
    stats.push(r.length > 0 ? h.length : 0, r.length, match);
  }
  return stats;
}

/** F-score from resolved options, 0-100. */
function fScore(stats: readonly number[], o: Resolved): number {
  const order = o.charOrder + o.wordOrder;
  if (stats.length !== 3 * order) {
    throw new RangeError(
      `chrF: expected ${
        3 * order
      } statistics for ${o.charOrder}+${o.wordOrder} orders, got ${stats.length}`,
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

/** Statistics against the best of the references, with resolved options. */
function statsResolved(hyp: string, ref: string | readonly string[], o: Resolved): number[] {
  const index = new NgramIndex();
  const hypGrams = segmentNgrams(hyp, o, index);
  const refGrams = usableReferences(ref).map((r) => segmentNgrams(r, o, index));
  const scratch = new Int32Array(index.size);
  let best: number[] = [];
  let bestScore = -1;
  for (const grams of refGrams) {
    const stats = matchStats(hypGrams, grams, scratch);
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
