/**
 * The searches of the transformer's decoding, each driving a `decode.ts` {@link StepDecoder}
 * one token at a time: greedy, ancestral sampling (temperature, top-k, nucleus; the
 * {@link RowSampler} the policy also exposes as `sampleToken`) and beam search with the
 * GNMT length penalty. Padding and BOS are never generated.
 *
 * @module
 */

import type { Rng } from "../../../core/random.ts";
import type { SpecialIds } from "../../../core/types.ts";
import { fastExp, preciseExp, rowMax, sumExp } from "../../_nn/exp.ts";
import { rowArgmaxExpSums, rowExpSums } from "../../_nn/simd.ts";
import type { InferenceModel, StepDecoder } from "./decode.ts";

/** A decoded row. */
export interface Hypothesis {
  /** Output ids (EOS last unless the length limit was hit). */
  tokens: number[];
  /** Untempered log-probability of each token. */
  logProbs: number[];
  /**
   * Sampling only: the exact log-probability of each token under the distribution it was
   * drawn from (see {@link RowSampler.sample}).
   */
  behaviourLogProbs?: number[];
  /** Ranking score. */
  score: number;
}

/** Tokens never generated: padding and BOS. */
function bannedIds(specials: SpecialIds): number[] {
  return [...new Set([specials.pad, specials.bos])].filter((id) => id !== specials.eos);
}

function argmaxRow(
  logits: Float32Array,
  o: number,
  vocab: number,
  banned: readonly number[],
): number {
  let best = -1;
  let bestV = -Infinity;
  for (let j = 0; j < vocab; j++) {
    const v = logits[o + j];
    if (v > bestV && !banned.includes(j)) {
      bestV = v;
      best = j;
    }
  }
  return best < 0 ? firstAllowed(vocab, banned) : best;
}

function firstAllowed(vocab: number, banned: readonly number[]): number {
  for (let j = 0; j < vocab; j++) if (!banned.includes(j)) return j;
  throw new RangeError("every token id is banned");
}

/** What a {@link Chooser} reports about the token it picked. */
export interface Picked {
  /** The token's untempered log-probability log pi (temperature 1, no truncation). */
  logProb: number;
  /**
   * Written by choosers with `behaviour` set: the token's exact log-probability under the
   * distribution it was drawn from.
   */
  behaviourLogProb: number;
}

/**
 * Picks the next token of one row from its logits at `logits[o .. o + V)` and returns it;
 * writes the token's untempered log-probability into `out.logProb` (and, when `behaviour`
 * is set, its behaviour log-probability into `out.behaviourLogProb`).
 */
export type Chooser =
  & ((
    logits: Float32Array,
    o: number,
    row: number,
    out: Picked,
  ) => number)
  & {
    /** Called once per step, before the rows, with the step's `[rows, V]` logits. */
    prepare?: (logits: Float32Array, rows: number) => void;
    /** Whether the chooser writes `out.behaviourLogProb` (then {@link runSearch} keeps them). */
    behaviour?: boolean;
  };

/**
 * Greedy or sampling decode of `rows` rows: at each step `choose` picks the next token of
 * each running row. Rows stop at EOS or after `maxLen` tokens.
 */
export function runSearch(
  decoder: StepDecoder,
  rows: number,
  maxLen: number,
  model: InferenceModel,
  choose: Chooser,
): Hypothesis[] {
  const vocab = model.vocab;
  const { bos, eos } = model.specials;
  const behaviour = choose.behaviour === true;
  const hyps: Hypothesis[] = Array.from(
    { length: rows },
    (): Hypothesis =>
      behaviour
        ? { tokens: [], logProbs: [], behaviourLogProbs: [], score: 0 }
        : { tokens: [], logProbs: [], score: 0 },
  );
  let active = Int32Array.from({ length: rows }, (_, i) => i);
  let tokens = new Int32Array(rows).fill(bos);
  const picked: Picked = { logProb: 0, behaviourLogProb: NaN };
  for (let t = 0; t < maxLen && active.length > 0; t++) {
    const logits = decoder.step(active, tokens, t);
    choose.prepare?.(logits, active.length);
    const nextActive: number[] = [];
    const nextTokens: number[] = [];
    for (let i = 0; i < active.length; i++) {
      const row = active[i];
      const j = choose(logits, i * vocab, row, picked);
      const h = hyps[row];
      h.tokens.push(j);
      h.logProbs.push(picked.logProb);
      h.behaviourLogProbs?.push(picked.behaviourLogProb);
      h.score += picked.logProb;
      if (j !== eos) {
        nextActive.push(row);
        nextTokens.push(j);
      }
    }
    active = Int32Array.from(nextActive);
    tokens = Int32Array.from(nextTokens);
  }
  return hyps;
}

/** Log-sum-exp of one row given its maximum. */
function rowLse(logits: Float32Array, o: number, vocab: number, max: number): number {
  return max + Math.log(sumExp(logits, o, vocab, max));
}

/** The greedy choice: the most likely allowed token (lowest id on ties). */
export function greedyChooser(model: InferenceModel): Chooser {
  const banned = bannedIds(model.specials);
  const vocab = model.vocab;
  const isBanned = new Uint8Array(vocab);
  for (const id of banned) isBanned[id] = 1;
  let maxs = new Float64Array(0);
  let sums = new Float64Array(0);
  let best = new Int32Array(0);
  let prepared = false;
  const choose: Chooser = (logits, o, _row, out) => {
    const r = o / vocab;
    if (prepared) {
      // The row's first maximum, when allowed, is the greedy choice.
      const j = best[r];
      if (j >= 0 && isBanned[j] === 0) {
        out.logProb = logits[o + j] - (maxs[r] + Math.log(sums[r]));
        return j;
      }
    }
    let max = -Infinity;
    let pick = -1;
    let pickV = -Infinity;
    for (let j = 0; j < vocab; j++) {
      const v = logits[o + j];
      if (v > max) max = v;
      if (v > pickV && isBanned[j] === 0) {
        pickV = v;
        pick = j;
      }
    }
    if (pick < 0) pick = firstAllowed(vocab, banned);
    out.logProb = logits[o + pick] - rowLse(logits, o, vocab, max);
    return pick;
  };
  choose.prepare = (logits, rows) => {
    if (best.length < rows) {
      maxs = new Float64Array(rows);
      sums = new Float64Array(rows);
      best = new Int32Array(rows);
    }
    rowArgmaxExpSums(logits, 0, rows, vocab, maxs, sums, best);
    prepared = true;
  };
  return choose;
}

/** Sampling settings. */
export interface SamplingSettings {
  /** Softmax temperature (> 0). */
  temperature: number;
  /** Keep the k most likely tokens (0: all). */
  topK: number;
  /** Nucleus mass (1: all). */
  topP: number;
}

/**
 * Ancestral sampling from `softmax(logits / temperature)` restricted to the top-k tokens
 * and then to the nucleus of mass top-p; `rowRng(row)` gives each row its own stream.
 * Reports each token's untempered log pi and, when `behaviour` is set, its behaviour
 * log-probability (the exact log-probability under the distribution it was drawn from, see
 * {@link RowSampler.sample}); the draws are the same either way.
 */
export function samplingChooser(
  model: InferenceModel,
  settings: SamplingSettings,
  rowRng: (row: number) => Rng,
  behaviour = false,
): Chooser {
  const vocab = model.vocab;
  const sampler = new RowSampler(vocab, settings, bannedIds(model.specials));
  let maxs = new Float64Array(0);
  let sums = new Float64Array(0);
  let prepared = false;
  const choose: Chooser = (logits, o, row, out) => {
    const j = sampler.sample(logits, o, rowRng(row), behaviour ? out : undefined);
    const r = o / vocab;
    if (prepared) {
      out.logProb = logits[o + j] - (maxs[r] + Math.log(sums[r]));
    } else {
      out.logProb = logits[o + j] - rowLse(logits, o, vocab, rowMax(logits, o, vocab));
    }
    return j;
  };
  choose.prepare = (logits, rows) => {
    if (maxs.length < rows) {
      maxs = new Float64Array(rows);
      sums = new Float64Array(rows);
    }
    rowExpSums(logits, 0, rows, vocab, maxs, sums);
    prepared = true;
  };
  choose.behaviour = behaviour;
  return choose;
}

/**
 * Weights (relative to the row's largest, which is 1) at or below this are left out of the
 * exact normaliser of {@link RowSampler.sample}: even a million of them add less than 1e-17
 * to a sum of at least 1, below float64's resolution.
 */
const NEGLIGIBLE_WEIGHT = 1e-23;

/** Draws one token from a row of logits (or log-probabilities) with temperature, top-k and top-p. */
export class RowSampler {
  readonly #vocab: number;
  readonly #settings: SamplingSettings;
  readonly #banned: readonly number[];
  readonly #weights: Float64Array;
  readonly #scratch: Float64Array;
  readonly #allowed: Uint8Array;

  /** A sampler over `vocab` ids that never draws the `banned` ones. */
  constructor(vocab: number, settings: SamplingSettings, banned: readonly number[] = []) {
    this.#vocab = vocab;
    this.#settings = settings;
    this.#banned = banned;
    this.#weights = new Float64Array(vocab);
    this.#scratch = new Float64Array(vocab);
    this.#allowed = new Uint8Array(vocab);
  }

  /**
   * Samples from `logits[o .. o + vocab)` with one draw from `rng`. When `drawn` is given,
   * writes into `drawn.behaviourLogProb` the exact log-probability of the returned token
   * under the distribution it was drawn from: softmax(logits / T) over the allowed ids (not
   * banned, within the top-k, within the nucleus), renormalised; computed in float64 with
   * {@link preciseExp} (the draw itself uses the float32-precise {@link fastExp} and stays
   * as it was). NaN when no token had a finite weight (every allowed logit -Infinity or NaN).
   */
  sample(logits: Float32Array, o: number, rng: Rng, drawn?: { behaviourLogProb: number }): number {
    const vocab = this.#vocab;
    const banned = this.#banned;
    const { temperature, topK, topP } = this.#settings;
    const allowed = this.#allowed;
    const weights = this.#weights;
    const u0 = rng.next();
    allowed.fill(1);
    for (const id of banned) allowed[id] = 0;
    if (topK > 0 && topK < vocab - banned.length) {
      keepTopK(logits, o, vocab, topK, allowed, this.#scratch);
    }
    let max = -Infinity;
    for (let j = 0; j < vocab; j++) if (allowed[j] && logits[o + j] > max) max = logits[o + j];
    if (max === -Infinity) {
      if (drawn !== undefined) drawn.behaviourLogProb = NaN;
      return firstAllowed(vocab, banned);
    }
    const invT = 1 / temperature;
    let total = 0;
    for (let j = 0; j < vocab; j++) {
      const w = allowed[j] ? fastExp((logits[o + j] - max) * invT) : 0;
      weights[j] = w;
      total += w;
    }
    if (topP < 1) total = keepNucleus(weights, vocab, topP, total);
    let u = u0 * total;
    let last = -1;
    let pick = -1;
    for (let j = 0; j < vocab; j++) {
      const w = weights[j];
      if (w <= 0) continue;
      last = j;
      u -= w;
      if (u < 0) {
        pick = j;
        break;
      }
    }
    if (pick < 0) pick = last;
    if (pick < 0) {
      if (drawn !== undefined) drawn.behaviourLogProb = NaN;
      return argmaxRow(logits, o, vocab, banned);
    }
    if (drawn !== undefined) {
      drawn.behaviourLogProb = keptLogProb(logits, o, vocab, pick, max, invT, weights);
    }
    return pick;
  }
}

/**
 * log of `exp((logits[o + j] - max) * invT)` over its sum across the kept ids (those with a
 * weight above {@link NEGLIGIBLE_WEIGHT}; truncated ids have weight 0), in float64 with
 * {@link preciseExp} (within 2 ulp of `Math.exp`, twice as fast).
 */
function keptLogProb(
  logits: Float32Array,
  o: number,
  vocab: number,
  j: number,
  max: number,
  invT: number,
  weights: Float64Array,
): number {
  let total = 0;
  for (let k = 0; k < vocab; k++) {
    if (weights[k] > NEGLIGIBLE_WEIGHT) total += preciseExp((logits[o + k] - max) * invT);
  }
  return (logits[o + j] - max) * invT - Math.log(total);
}

/** Clears `allowed` outside the `k` largest allowed logits (ties: lower ids first). */
function keepTopK(
  logits: Float32Array,
  o: number,
  vocab: number,
  k: number,
  allowed: Uint8Array,
  scratch: Float64Array,
): void {
  let n = 0;
  for (let j = 0; j < vocab; j++) if (allowed[j]) scratch[n++] = logits[o + j];
  const threshold = kthLargest(scratch, n, k);
  let above = 0;
  for (let j = 0; j < vocab; j++) if (allowed[j] && logits[o + j] > threshold) above++;
  let ties = k - above;
  for (let j = 0; j < vocab; j++) {
    if (!allowed[j]) continue;
    const v = logits[o + j];
    if (v > threshold) continue;
    if (v === threshold && ties > 0) ties--;
    else allowed[j] = 0;
  }
}

/** The k-th largest of `a[0..n)` (quickselect; reorders `a`). */
function kthLargest(a: Float64Array, n: number, k: number): number {
  let lo = 0;
  let hi = n - 1;
  const target = k - 1;
  while (lo < hi) {
    const pivot = a[(lo + hi) >> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const tmp = a[i];
        a[i] = a[j];
        a[j] = tmp;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

/**
 * Zeroes every weight outside the nucleus: the smallest set of largest weights whose sum
 * reaches `p * total` (ties: lower ids first). Returns the kept mass.
 */
function keepNucleus(weights: Float64Array, vocab: number, p: number, total: number): number {
  const goal = p * total;
  let max = 0;
  for (let j = 0; j < vocab; j++) if (weights[j] > max) max = weights[j];
  // Only weights above a threshold can be in the nucleus once they alone reach the goal.
  for (let theta = max * 1e-3;; theta *= 1e-3) {
    const cand: number[] = [];
    let mass = 0;
    for (let j = 0; j < vocab; j++) {
      if (weights[j] > 0 && weights[j] >= theta) {
        cand.push(j);
        mass += weights[j];
      }
    }
    if (mass < goal && theta > 0 && theta > Number.MIN_VALUE) continue;
    cand.sort((x, y) => weights[y] - weights[x] || x - y);
    const keep = new Uint8Array(vocab);
    let sum = 0;
    for (const j of cand) {
      keep[j] = 1;
      sum += weights[j];
      if (sum >= goal) break;
    }
    for (let j = 0; j < vocab; j++) if (!keep[j]) weights[j] = 0;
    return sum;
  }
}

/** Beam-search settings. */
export interface BeamSettings {
  /** Beam width. */
  beamSize: number;
  /** GNMT length-penalty exponent. */
  lengthPenalty: number;
}

/** GNMT length penalty ((5 + len) / 6)^alpha. */
export function lengthPenalty(len: number, alpha: number): number {
  return Math.pow((5 + len) / 6, alpha);
}

interface Beam {
  tokens: number[];
  logProbs: number[];
  sum: number;
}

/**
 * Beam search for `sources` sources with `beamSize` rows each (row `s * K + k`). At each
 * step every live beam proposes its best tokens; the best `2K` extensions are scanned in
 * order: an EOS extension ranked within the first K finishes a hypothesis, others fill
 * the K live beams. A source stops once it has K finished hypotheses (or at `maxLen`, when
 * its live beams count as finished). The best finished hypothesis by
 * `sum logp / ((5 + len) / 6)^alpha` is returned.
 */
export function beamSearch(
  decoder: StepDecoder,
  sources: number,
  maxLen: number,
  model: InferenceModel,
  settings: BeamSettings,
): Hypothesis[] {
  const k = settings.beamSize;
  const vocab = model.vocab;
  const { bos, eos } = model.specials;
  const banned = bannedIds(model.specials);
  const live: Beam[][] = Array.from(
    { length: sources },
    () => [{ tokens: [], logProbs: [], sum: 0 }],
  );
  const finished: Hypothesis[][] = Array.from({ length: sources }, () => []);
  const done = new Array<boolean>(sources).fill(false);
  const width = Math.min(2 * k, vocab - banned.length);
  const finish = (s: number, beam: Beam) => {
    finished[s].push({
      tokens: beam.tokens,
      logProbs: beam.logProbs,
      score: beam.sum / lengthPenalty(beam.tokens.length, settings.lengthPenalty),
    });
  };
  for (let t = 0; t < maxLen; t++) {
    const activeRows: number[] = [];
    const tokens: number[] = [];
    for (let s = 0; s < sources; s++) {
      if (done[s]) continue;
      live[s].forEach((beam, i) => {
        activeRows.push(s * k + i);
        tokens.push(beam.tokens.length === 0 ? bos : beam.tokens[beam.tokens.length - 1]);
      });
    }
    if (activeRows.length === 0) break;
    const logits = decoder.step(Int32Array.from(activeRows), Int32Array.from(tokens), t);
    const rows = activeRows.length;
    const maxs = new Float64Array(rows);
    const lse = new Float64Array(rows);
    rowExpSums(logits, 0, rows, vocab, maxs, lse);
    for (let i = 0; i < rows; i++) lse[i] = maxs[i] + Math.log(lse[i]);
    const to: number[] = [];
    const from: number[] = [];
    let r = 0;
    for (let s = 0; s < sources; s++) {
      if (done[s]) continue;
      const cands: { score: number; beam: number; token: number; lp: number }[] = [];
      live[s].forEach((beam, i) => {
        const o = r * vocab;
        for (const j of topTokens(logits, o, vocab, width, banned)) {
          const lp = logits[o + j] - lse[r];
          cands.push({ score: beam.sum + lp, beam: i, token: j, lp });
        }
        r++;
      });
      cands.sort((a, b) => b.score - a.score || a.beam - b.beam || a.token - b.token);
      const next: Beam[] = [];
      for (let rank = 0; rank < Math.min(cands.length, width) && next.length < k; rank++) {
        const c = cands[rank];
        const parent = live[s][c.beam];
        const beam: Beam = {
          tokens: [...parent.tokens, c.token],
          logProbs: [...parent.logProbs, c.lp],
          sum: c.score,
        };
        if (c.token === eos) {
          if (rank < k) finish(s, beam);
          continue;
        }
        to.push(s * k + next.length);
        from.push(s * k + c.beam);
        next.push(beam);
      }
      live[s] = next;
      if (finished[s].length >= k || next.length === 0) done[s] = true;
      else if (t === maxLen - 1) {
        for (const beam of next) finish(s, beam);
        done[s] = true;
      }
    }
    if (to.length > 0 && t + 1 < maxLen) {
      decoder.copyRows(Int32Array.from(to), Int32Array.from(from), t + 1);
    }
  }
  return finished.map((list) => {
    let best = list[0];
    for (const h of list) if (h.score > best.score) best = h;
    return best ?? { tokens: [], logProbs: [], score: 0 };
  });
}

/** The `width` largest allowed logits of a row, largest first (ties: lower ids first). */
function topTokens(
  logits: Float32Array,
  o: number,
  vocab: number,
  width: number,
  banned: readonly number[],
): number[] {
  const ids: number[] = [];
  const vals: number[] = [];
  for (let j = 0; j < vocab; j++) {
    const v = logits[o + j];
    if (ids.length === width && v <= vals[width - 1]) continue;
    if (banned.includes(j)) continue;
    let pos = ids.length < width ? ids.length : width - 1;
    if (ids.length < width) {
      ids.push(j);
      vals.push(v);
    } else {
      ids[pos] = j;
      vals[pos] = v;
    }
    while (pos > 0 && vals[pos - 1] < vals[pos]) {
      [vals[pos - 1], vals[pos]] = [vals[pos], vals[pos - 1]];
      [ids[pos - 1], ids[pos]] = [ids[pos], ids[pos - 1]];
      pos--;
    }
  }
  return ids;
}
