/**
 * BLEU (Papineni et al. 2002), computed exactly as sacreBLEU 2.x does, with its default
 * `13a` tokenizer (the mteval-v13a.pl tokenization used by WMT).
 *
 * - Each segment is lowercased (if asked), stripped of trailing whitespace and tokenized;
 *   tokens are then the whitespace-separated pieces (whitespace as Python's `str.split()`).
 * - Per order n in 1..`maxNgramOrder`: total hypothesis n-grams and clipped matches (a
 *   hypothesis n-gram counts at most as often as in the reference; with several references,
 *   the maximum count over them). The reference length is the one closest to the hypothesis
 *   length (ties go to the shorter).
 * - A corpus score sums the statistics first. No matches at all gives 0. Smoothing: `exp`
 *   (sacreBLEU's default: the k-th order without matches gets precision 1 / (2^k * total)),
 *   `floor`, `add-k` or `none`. With `effectiveOrder`, orders for which the hypothesis has no
 *   n-grams are left out of the geometric mean (what sentence-level BLEU should use).
 *
 * One deviation: sacreBLEU raises on an empty reference; here an empty reference is scored
 * like any other and gives 0. With several references, empty ones are ignored (as in
 * sacreBLEU).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { corpusBleu, sentenceBleu, tokenize13a } from "./bleu.ts";
 *
 * assert.equal(tokenize13a("Hello, world!"), "Hello , world !");
 * const bleu = sentenceBleu("Das ist ein Test.", "Dies ist ein Test.");
 * assert.ok(Math.abs(bleu - 66.87403) < 1e-4);
 * assert.ok(corpusBleu(["a b c d"], ["a b c d"]) > 99.999);
 * ```
 *
 * @module
 */

import { NgramIndex, splitWords, TRAILING_WHITESPACE, usableReferences } from "./_text.ts";

/** The tokenizers available: sacreBLEU's default `13a`, or `none` (split on whitespace only). */
export type BleuTokenizer = "13a" | "none";

/** Smoothing methods, as in sacreBLEU (Chen & Cherry 2014: floor = 1, add-k = 2, exp = 3). */
export type BleuSmoothMethod = "exp" | "floor" | "add-k" | "none";

/** Options of BLEU. Defaults are sacreBLEU's `BLEU()` defaults (see each function for `effectiveOrder`). */
export interface BleuOptions {
  /** Lowercase hypothesis and references first. Default false. */
  lowercase?: boolean;
  /** Tokenizer. Default `"13a"`. */
  tokenize?: BleuTokenizer;
  /** Smoothing method. Default `"exp"`. */
  smoothMethod?: BleuSmoothMethod;
  /** Value for `floor` (default 0.1) and `add-k` (default 1); ignored by the others. */
  smoothValue?: number;
  /** Leave orders without hypothesis n-grams out of the mean. Default true for sentences, false for corpora. */
  effectiveOrder?: boolean;
  /** Maximum n-gram order. Default 4. */
  maxNgramOrder?: number;
}

/** Sufficient statistics of BLEU; those of several sentences may be summed ({@link addBleuStats}). */
export interface BleuStats {
  /** Hypothesis length in tokens. */
  hypLen: number;
  /** Closest reference length in tokens. */
  refLen: number;
  /** Clipped n-gram matches per order (index 0 is unigrams). */
  correct: number[];
  /** Hypothesis n-grams per order. */
  total: number[];
}

/** A BLEU score with the parts it is made of. */
export interface BleuScore {
  /** BLEU, 0-100. */
  score: number;
  /** Smoothed n-gram precisions, 0-100, per order. */
  precisions: number[];
  /** Brevity penalty. */
  bp: number;
  /** Hypothesis length in tokens. */
  hypLen: number;
  /** Reference length in tokens. */
  refLen: number;
}

/** {@link BleuOptions} with the defaults filled in and checked. */
interface Resolved {
  lowercase: boolean;
  tokenize: BleuTokenizer;
  smoothMethod: BleuSmoothMethod;
  smoothValue: number;
  effectiveOrder: boolean;
  maxNgramOrder: number;
}

const SMOOTH_DEFAULTS: Record<BleuSmoothMethod, number> = {
  "exp": 0,
  "floor": 0.1,
  "add-k": 1,
  "none": 0,
};

/** What sacreBLEU uses as log(0). */
const LOG_ZERO = -9999999999;

// The 13a rules, applied in this order. The first class is: space ! " # $ % & ( ) * + / : ; < = >
// ? @ [ \ ] ^ _ ` { | } ~ (every ASCII symbol but the apostrophe, hyphen, period and comma).
const RULES_13A: readonly [RegExp, string][] = [
  [/([\x20-\x26\x28-\x2b\x2f\x3a-\x40\x5b-\x60\x7b-\x7e])/gu, " $1 "],
  // period and comma, unless preceded by a digit
  [/([^0-9])([.,])/gu, "$1 $2 "],
  // period and comma, unless followed by a digit
  [/([.,])([^0-9])/gu, " $1 $2"],
  // dash preceded by a digit
  [/([0-9])(-)/gu, "$1 $2 "],
];

/** Fills in the defaults (with the caller's default for effectiveOrder) and checks the options. */
function resolve(options: BleuOptions, effectiveOrderDefault: boolean): Resolved {
  const smoothMethod = options.smoothMethod ?? "exp";
  if (!(smoothMethod in SMOOTH_DEFAULTS)) {
    throw new RangeError(
      `BLEU: smoothMethod must be one of exp, floor, add-k, none; got ${
        JSON.stringify(smoothMethod)
      }`,
    );
  }
  const tokenize = options.tokenize ?? "13a";
  if (tokenize !== "13a" && tokenize !== "none") {
    throw new RangeError(`BLEU: tokenize must be "13a" or "none", got ${JSON.stringify(tokenize)}`);
  }
  const smoothValue = options.smoothValue ?? SMOOTH_DEFAULTS[smoothMethod];
  if (!Number.isFinite(smoothValue) || smoothValue < 0) {
    throw new RangeError(`BLEU: smoothValue must be a finite number >= 0, got ${smoothValue}`);
  }
  const maxNgramOrder = options.maxNgramOrder ?? 4;
  if (!Number.isInteger(maxNgramOrder) || maxNgramOrder < 1) {
    throw new RangeError(`BLEU: maxNgramOrder must be an integer >= 1, got ${maxNgramOrder}`);
  }
  return {
    lowercase: options.lowercase ?? false,
    tokenize,
    smoothMethod,
    smoothValue,
    effectiveOrder: options.effectiveOrder ?? effectiveOrderDefault,
    maxNgramOrder,
  };
}

/**
 * sacreBLEU's `13a` tokenizer (mteval-v13a.pl): drops `<skipped>`, joins `-\n` line breaks,
 * turns newlines into spaces, unescapes `&quot;`, `&amp;`, `&lt;`, `&gt;` (one after the other,
 * each over the previous result: `&amp;lt;` becomes `<`, but `&amp;quot;` becomes `&quot;`),
 * separates ASCII symbols, periods and commas not next to a digit, and dashes after a digit,
 * then collapses whitespace. Returns the tokens joined by single spaces.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tokenize13a } from "./bleu.ts";
 *
 * assert.equal(tokenize13a("3.50 EUR (inkl. MwSt.)"), "3.50 EUR ( inkl . MwSt . )");
 * assert.equal(tokenize13a("&quot;A&quot; &amp;lt;"), '" A " <');
 * ```
 */
export function tokenize13a(text: string): string {
  let line = text.replaceAll("<skipped>", "").replaceAll("-\n", "").replaceAll("\n", " ");
  if (line.includes("&")) {
    line = line.replaceAll("&quot;", '"').replaceAll("&amp;", "&").replaceAll("&lt;", "<")
      .replaceAll("&gt;", ">");
  }
  line = ` ${line} `;
  for (const [pattern, replacement] of RULES_13A) line = line.replace(pattern, replacement);
  return splitWords(line).join(" ");
}

/** Lowercases (if asked), strips trailing whitespace and tokenizes; returns the tokens. */
function preprocess(text: string, o: Resolved): string[] {
  let line = o.lowercase ? text.toLowerCase() : text;
  line = line.replace(TRAILING_WHITESPACE, "");
  if (o.tokenize === "13a") line = tokenize13a(line);
  return splitWords(line);
}

function statsResolved(hyp: string, ref: string | readonly string[], o: Resolved): BleuStats {
  const order = o.maxNgramOrder;
  const index = new NgramIndex();
  const hypTokens = preprocess(hyp, o);
  const hypLen = hypTokens.length;
  const hypGrams = index.ngrams(hypTokens.map((t) => index.wordSymbol(t)), order);
  let refLen = -1;
  let closestDiff = -1;
  const refGrams: Int32Array[][] = [];
  for (const r of usableReferences(ref)) {
    const tokens = preprocess(r, o);
    const diff = Math.abs(hypLen - tokens.length);
    if (closestDiff === -1 || diff < closestDiff) {
      closestDiff = diff;
      refLen = tokens.length;
    } else if (diff === closestDiff && tokens.length < refLen) {
      refLen = tokens.length;
    }
    refGrams.push(index.ngrams(tokens.map((t) => index.wordSymbol(t)), order));
  }
  // The most times each n-gram occurs in one reference.
  const refMax = new Int32Array(index.size);
  if (refGrams.length === 1) {
    for (const ids of refGrams[0]) for (let i = 0; i < ids.length; i++) refMax[ids[i]]++;
  } else {
    const scratch = new Int32Array(index.size);
    for (const grams of refGrams) {
      for (const ids of grams) {
        for (let i = 0; i < ids.length; i++) scratch[ids[i]]++;
        for (let i = 0; i < ids.length; i++) {
          if (scratch[ids[i]] > refMax[ids[i]]) refMax[ids[i]] = scratch[ids[i]];
        }
        for (let i = 0; i < ids.length; i++) scratch[ids[i]] = 0;
      }
    }
  }
  // Each hypothesis n-gram uses up one reference occurrence: min(hyp count, ref count) matches.
  const correct = new Array<number>(order).fill(0);
  const total = new Array<number>(order).fill(0);
  for (let k = 0; k < order; k++) {
    const ids = hypGrams[k];
    total[k] = ids.length;
    for (let i = 0; i < ids.length; i++) {
      if (refMax[ids[i]] > 0) {
        refMax[ids[i]]--;
        correct[k]++;
      }
    }
  }
  return { hypLen, refLen, correct, total };
}

/** BLEU from statistics with resolved options (sacreBLEU's `compute_bleu`). */
function scoreResolved(stats: BleuStats, o: Resolved): BleuScore {
  const order = o.maxNgramOrder;
  if (stats.correct.length !== order || stats.total.length !== order) {
    throw new RangeError(
      `BLEU: statistics have ${stats.correct.length} orders, maxNgramOrder is ${order}`,
    );
  }
  const { hypLen, refLen } = stats;
  let bp = 1;
  if (hypLen < refLen) bp = hypLen > 0 ? Math.exp(1 - refLen / hypLen) : 0;
  const precisions = new Array<number>(order).fill(0);
  if (!stats.correct.some((c) => c !== 0)) {
    return { score: 0, precisions, bp, hypLen, refLen };
  }
  const correct = stats.correct.slice();
  const total = stats.total.slice();
  const k = o.smoothValue;
  let smoothMteval = 1;
  let effOrder = order;
  for (let n = 1; n <= order; n++) {
    if (o.smoothMethod === "add-k" && n > 1) {
      correct[n - 1] += k;
      total[n - 1] += k;
    }
    if (total[n - 1] === 0) break;
    if (o.effectiveOrder) effOrder = n;
    if (correct[n - 1] === 0) {
      if (o.smoothMethod === "exp") {
        smoothMteval *= 2;
        precisions[n - 1] = 100 / (smoothMteval * total[n - 1]);
      } else if (o.smoothMethod === "floor") {
        precisions[n - 1] = 100 * k / total[n - 1];
      }
    } else {
      precisions[n - 1] = 100 * correct[n - 1] / total[n - 1];
    }
  }
  let logSum = 0;
  for (let i = 0; i < effOrder; i++) {
    logSum += precisions[i] === 0 ? LOG_ZERO : Math.log(precisions[i]);
  }
  return { score: bp * Math.exp(logSum / effOrder), precisions, bp, hypLen, refLen };
}

/**
 * Sufficient statistics of one sentence (lengths, matches and totals per order) against one
 * reference or several. Only `lowercase`, `tokenize` and `maxNgramOrder` matter here.
 *
 * @throws {RangeError} on invalid options.
 */
export function bleuStats(
  hyp: string,
  ref: string | readonly string[],
  options: BleuOptions = {},
): BleuStats {
  return statsResolved(hyp, ref, resolve(options, false));
}

/** Element-wise sum of two {@link BleuStats} of the same order (a new object). */
export function addBleuStats(a: BleuStats, b: BleuStats): BleuStats {
  if (a.correct.length !== b.correct.length) {
    throw new RangeError(
      `BLEU: cannot add statistics of ${a.correct.length} and ${b.correct.length} orders`,
    );
  }
  return {
    hypLen: a.hypLen + b.hypLen,
    refLen: a.refLen + b.refLen,
    correct: a.correct.map((c, i) => c + b.correct[i]),
    total: a.total.map((t, i) => t + b.total[i]),
  };
}

/**
 * BLEU (with precisions and brevity penalty) from statistics, like sacreBLEU's
 * `BLEU.compute_bleu`. `effectiveOrder` defaults to false here.
 *
 * @throws {RangeError} on invalid options or statistics of another order.
 */
export function bleuFromStats(stats: BleuStats, options: BleuOptions = {}): BleuScore {
  return scoreResolved(stats, resolve(options, false));
}

/**
 * Sentence-level BLEU, 0-100, like sacreBLEU's
 * `BLEU(effective_order=True).sentence_score(hyp, [ref])`: `effectiveOrder` defaults to true.
 *
 * @throws {RangeError} on invalid options.
 */
export function sentenceBleu(
  hyp: string,
  ref: string | readonly string[],
  options: BleuOptions = {},
): number {
  const o = resolve(options, true);
  return scoreResolved(statsResolved(hyp, ref, o), o).score;
}

/**
 * Corpus-level BLEU, 0-100, like sacreBLEU's `BLEU().corpus_score`: statistics are summed over
 * the corpus, then scored once; `effectiveOrder` defaults to false. `refs[i]` is the reference
 * (or the list of references) of `hyps[i]`.
 *
 * @throws {RangeError} when `hyps` and `refs` differ in length, or on invalid options.
 */
export function corpusBleu(
  hyps: readonly string[],
  refs: readonly (string | readonly string[])[],
  options: BleuOptions = {},
): number {
  const o = resolve(options, false);
  if (hyps.length !== refs.length) {
    throw new RangeError(
      `BLEU: ${hyps.length} hypotheses but ${refs.length} references; they must pair up`,
    );
  }
  const order = o.maxNgramOrder;
  const totals: BleuStats = {
    hypLen: 0,
    refLen: 0,
    correct: new Array<number>(order).fill(0),
    total: new Array<number>(order).fill(0),
  };
  for (let i = 0; i < hyps.length; i++) {
    const stats = statsResolved(hyps[i], refs[i], o);
    totals.hypLen += stats.hypLen;
    totals.refLen += stats.refLen;
    for (let k = 0; k < order; k++) {
      totals.correct[k] += stats.correct[k];
      totals.total[k] += stats.total[k];
    }
  }
  return scoreResolved(totals, o).score;
}
