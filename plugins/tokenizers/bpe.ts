/**
 * `bpe`: a byte-pair-encoding subword tokenizer in the SentencePiece style.
 *
 * Text is (optionally) lowercased and Unicode-normalised, split on whitespace, and every word
 * gets the word-boundary marker `▁` (U+2581) in front, so decoding restores the spaces:
 * `decode(encode(x)) === x` for text that is already normalised, single-spaced and trimmed and
 * whose characters are all covered (always true with `byteFallback`).
 *
 * Training counts word frequencies first, picks the initial alphabet by `characterCoverage`,
 * then learns merges greedily with incremental pair-count updates (an index from each pair to
 * the words containing it and a lazily updated max-heap). Ties between pairs with the same count
 * are broken lexicographically by (left piece, right piece), so training is deterministic and
 * independent of the corpus order.
 *
 * Vocabulary layout (per vocabulary): `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3, then the
 * `userSpecials` (never split when they occur in text), then with `byteFallback` the 256 byte
 * tokens `<0x00>`..`<0xFF>`, then `▁`, then the other characters by frequency, then the merges
 * in the order they were learned.
 *
 * @example Train, encode, decode
 * ```ts
 * import { BpeTokenizer } from "./bpe.ts";
 *
 * const tok = new BpeTokenizer({ vocabSize: 300, minFrequency: 1 });
 * tok.train({ sources: ["the cat sat", "the hat"], targets: ["die Katze saß", "der Hut"] });
 * const ids = tok.encode("the cat", "source");
 * console.assert(tok.decode(ids, "source") === "the cat");
 * ```
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import type { Side, SpecialIds, Tokenizer } from "../../core/types.ts";

/** The word-boundary marker put in front of every word (U+2581, as in SentencePiece). */
export const WORD_MARKER = "\u2581";

/** The fixed special tokens, in id order. */
export const SPECIAL_PIECES: readonly string[] = ["<pad>", "<s>", "</s>", "<unk>"];

/** What `decode` writes for the `<unk>` id (SentencePiece's choice). */
export const UNK_SURFACE = "\u2047";

/** Unicode normalisation applied before tokenizing. */
export type BpeNormalization = "NFC" | "NFKC" | "none";

/** Config of the `bpe` tokenizer. */
export interface BpeConfig {
  /** Vocabulary size including special and byte tokens (per side with separate vocabularies). */
  vocabSize: number;
  /** One vocabulary for both sides (true) or one per side (false). */
  joint: boolean;
  /** A pair must occur at least this often (in word-frequency-weighted counts) to be merged. */
  minFrequency: number;
  /** Fraction of character occurrences the initial alphabet must cover. */
  characterCoverage: number;
  /** Encode characters outside the alphabet as UTF-8 byte tokens instead of `<unk>`. */
  byteFallback: boolean;
  /** Unicode normalisation of the input. */
  normalize: BpeNormalization;
  /** Lowercase the input (decoding cannot restore case). */
  lowercase: boolean;
  /** Extra special tokens, kept whole wherever they occur in text. */
  userSpecials: string[];
  /** Maximum number of cached word encodings per vocabulary (0 disables the cache). */
  maxWordCache: number;
}

/** The defaults of {@link BpeConfig}. */
export const BPE_DEFAULTS: Readonly<BpeConfig> = Object.freeze({
  vocabSize: 8000,
  joint: true,
  minFrequency: 2,
  characterCoverage: 0.9995,
  byteFallback: true,
  normalize: "NFC" as BpeNormalization,
  lowercase: false,
  userSpecials: [] as string[],
  maxWordCache: 100_000,
});

/** One saved vocabulary: pieces by id and merges as pairs of ids, in learning order. */
export interface BpeVocabState {
  /** Every piece, index = id. */
  pieces: string[];
  /** Merges `[leftId, rightId]`; the result is the piece `pieces[left] + pieces[right]`. */
  merges: [number, number][];
}

/** What {@link BpeTokenizer.save} returns. */
export interface BpeState {
  /** Always `"bpe"`. */
  format: "bpe";
  /** Format version, currently 1. */
  version: 1;
  /** The options that shape the vocabulary and the encoding. */
  config: Omit<BpeConfig, "maxWordCache">;
  /** `{joint}` with a joint vocabulary, `{source, target}` otherwise. */
  vocabs: Partial<Record<"joint" | Side, BpeVocabState>>;
}

/** Ids are below this, so a pair of ids packs into one safe integer `left * KEY_BASE + right`. */
const KEY_BASE = 2 ** 21;
const MAX_VOCAB = 1_000_000;
const BYTE_COUNT = 256;
const STATE_VERSION = 1;

const KIND_SPECIAL = 0;
const KIND_USER = 1;
const KIND_BYTE = 2;
const KIND_NORMAL = 3;

const SPECIALS: SpecialIds = Object.freeze({ pad: 0, bos: 1, eos: 2, unk: 3 });

function bytePiece(b: number): string {
  return `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Number of ids reserved before the alphabet. */
function reservedCount(config: Pick<BpeConfig, "userSpecials" | "byteFallback">): number {
  return SPECIAL_PIECES.length + config.userSpecials.length +
    (config.byteFallback ? BYTE_COUNT : 0);
}

/** Smallest usable vocabulary: the reserved ids plus the word marker. */
function minimumVocabSize(config: Pick<BpeConfig, "userSpecials" | "byteFallback">): number {
  return reservedCount(config) + 1;
}

function reservedPieces(config: Pick<BpeConfig, "userSpecials" | "byteFallback">): string[] {
  const pieces = [...SPECIAL_PIECES, ...config.userSpecials];
  if (config.byteFallback) { for (let b = 0; b < BYTE_COUNT; b++) pieces.push(bytePiece(b)); }
  return pieces;
}

/** Checks a full config; throws TypeError/RangeError naming the bad option. */
function checkConfig(config: BpeConfig, where: string): void {
  const isInt = (v: unknown) => typeof v === "number" && Number.isInteger(v);
  if (!isInt(config.vocabSize) || config.vocabSize < 16 || config.vocabSize > MAX_VOCAB) {
    throw new RangeError(
      `${where}: vocabSize must be an integer in [16, ${MAX_VOCAB}], got ${
        JSON.stringify(config.vocabSize)
      }`,
    );
  }
  if (typeof config.joint !== "boolean") {
    throw new TypeError(`${where}: joint must be a boolean, got ${JSON.stringify(config.joint)}`);
  }
  if (!isInt(config.minFrequency) || config.minFrequency < 1) {
    throw new RangeError(
      `${where}: minFrequency must be an integer >= 1, got ${JSON.stringify(config.minFrequency)}`,
    );
  }
  const cov = config.characterCoverage;
  if (typeof cov !== "number" || !(cov > 0 && cov <= 1)) {
    throw new RangeError(
      `${where}: characterCoverage must be in (0, 1], got ${JSON.stringify(cov)}`,
    );
  }
  if (typeof config.byteFallback !== "boolean") {
    throw new TypeError(
      `${where}: byteFallback must be a boolean, got ${JSON.stringify(config.byteFallback)}`,
    );
  }
  if (!["NFC", "NFKC", "none"].includes(config.normalize)) {
    throw new TypeError(
      `${where}: normalize must be "NFC", "NFKC" or "none", got ${
        JSON.stringify(config.normalize)
      }`,
    );
  }
  if (typeof config.lowercase !== "boolean") {
    throw new TypeError(
      `${where}: lowercase must be a boolean, got ${JSON.stringify(config.lowercase)}`,
    );
  }
  if (!Array.isArray(config.userSpecials)) {
    throw new TypeError(`${where}: userSpecials must be an array of strings`);
  }
  const seen = new Set<string>();
  config.userSpecials.forEach((s, i) => {
    if (typeof s !== "string" || s.length === 0) {
      throw new TypeError(
        `${where}: userSpecials[${i}] must be a non-empty string, got ${JSON.stringify(s)}`,
      );
    }
    if (SPECIAL_PIECES.includes(s)) {
      throw new TypeError(
        `${where}: userSpecials[${i}] ${JSON.stringify(s)} is a built-in special token`,
      );
    }
    if (/\s/.test(s) || s.includes(WORD_MARKER)) {
      throw new TypeError(
        `${where}: userSpecials[${i}] ${
          JSON.stringify(s)
        } must not contain whitespace or the word marker`,
      );
    }
    if (seen.has(s)) {
      throw new TypeError(`${where}: userSpecials[${i}] ${JSON.stringify(s)} is listed twice`);
    }
    seen.add(s);
  });
  if (!isInt(config.maxWordCache) || config.maxWordCache < 0) {
    throw new RangeError(
      `${where}: maxWordCache must be an integer >= 0, got ${JSON.stringify(config.maxWordCache)}`,
    );
  }
  if (config.vocabSize < minimumVocabSize(config)) {
    throw new RangeError(
      `${where}: vocabSize ${config.vocabSize} is smaller than the ${
        minimumVocabSize(config)
      } ids it needs at least (4 specials, ${config.userSpecials.length} user specials${
        config.byteFallback ? ", 256 byte tokens" : ""
      }, the word marker)`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary used at encode/decode time

/** A ready-to-use vocabulary with its lookup tables and word cache. */
interface Vocab {
  pieces: string[];
  kinds: Uint8Array;
  merges: [number, number][];
  /** Pair key -> merge rank. */
  mergeRank: Map<number, number>;
  /** Merge rank -> resulting id. */
  mergeResult: Int32Array;
  /** Single-character alphabet pieces (without the marker) -> id. */
  charIds: Map<string, number>;
  markerId: number;
  /** Id of `<0x00>`, or -1 without byte fallback. */
  byteBase: number;
  /** Word key (`" " + word` for a word with the marker) -> ids. */
  cache: Map<string, number[]>;
}

/** Builds the lookup tables of a vocabulary that has already been validated. */
function buildVocab(state: BpeVocabState, config: BpeConfig): Vocab {
  const { pieces, merges } = state;
  const reserved = reservedCount(config);
  const kinds = new Uint8Array(pieces.length).fill(KIND_NORMAL);
  kinds.fill(KIND_SPECIAL, 0, SPECIAL_PIECES.length);
  kinds.fill(KIND_USER, SPECIAL_PIECES.length, SPECIAL_PIECES.length + config.userSpecials.length);
  const byteBase = config.byteFallback ? SPECIAL_PIECES.length + config.userSpecials.length : -1;
  if (byteBase >= 0) kinds.fill(KIND_BYTE, byteBase, byteBase + BYTE_COUNT);
  const normalIds = new Map<string, number>();
  const charIds = new Map<string, number>();
  for (let id = reserved; id < pieces.length; id++) {
    normalIds.set(pieces[id], id);
    const p = pieces[id];
    if (p !== WORD_MARKER && p.length <= 2 && [...p].length === 1) charIds.set(p, id);
  }
  const mergeRank = new Map<number, number>();
  const mergeResult = new Int32Array(merges.length);
  merges.forEach(([a, b], rank) => {
    const key = a * KEY_BASE + b;
    if (!mergeRank.has(key)) mergeRank.set(key, rank);
    mergeResult[rank] = normalIds.get(pieces[a] + pieces[b])!;
  });
  return {
    pieces,
    kinds,
    merges,
    mergeRank,
    mergeResult,
    charIds,
    markerId: reserved,
    byteBase,
    cache: new Map(),
  };
}

/** A tiny binary min-heap of numbers. */
function heapPush(heap: number[], value: number): void {
  let i = heap.length;
  heap.push(value);
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (heap[parent] <= value) break;
    heap[i] = heap[parent];
    i = parent;
  }
  heap[i] = value;
}

function heapPop(heap: number[]): number {
  const top = heap[0];
  const last = heap.pop()!;
  const n = heap.length;
  if (n > 0) {
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && heap[child + 1] < heap[child]) child++;
      if (heap[child] >= last) break;
      heap[i] = heap[child];
      i = child;
    }
    heap[i] = last;
  }
  return top;
}

/**
 * Applies the merges to one word's initial symbols, lowest rank first (leftmost on ties), with a
 * heap of candidate pairs over a linked list: O(n log n) per word.
 */
function applyMerges(symbols: number[], vocab: Vocab): number[] {
  const n = symbols.length;
  if (n < 2 || vocab.merges.length === 0) return symbols;
  const { mergeRank, mergeResult } = vocab;
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  const span = n; // candidate = rank * span + position
  const heap: number[] = [];
  const rankOf = (a: number, b: number) => mergeRank.get(a * KEY_BASE + b) ?? -1;
  for (let i = 0; i + 1 < n; i++) {
    const r = rankOf(symbols[i], symbols[i + 1]);
    if (r >= 0) heapPush(heap, r * span + i);
  }
  const DEAD = -1;
  while (heap.length > 0) {
    const c = heapPop(heap);
    const r = Math.floor(c / span);
    const i = c - r * span;
    if (symbols[i] === DEAD) continue;
    const j = next[i];
    if (j < 0 || rankOf(symbols[i], symbols[j]) !== r) continue; // stale candidate
    symbols[i] = mergeResult[r];
    symbols[j] = DEAD;
    const k = next[j];
    next[i] = k;
    if (k >= 0) prev[k] = i;
    const p = prev[i];
    if (p >= 0) {
      const rp = rankOf(symbols[p], symbols[i]);
      if (rp >= 0) heapPush(heap, rp * span + p);
    }
    if (k >= 0) {
      const rk = rankOf(symbols[i], symbols[k]);
      if (rk >= 0) heapPush(heap, rk * span + i);
    }
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i]) out.push(symbols[i]);
  return out;
}

const utf8 = new TextEncoder();

/** Initial symbols of a word: marker (if any) and one id per character (or bytes / unk). */
function initialSymbols(word: string, withMarker: boolean, vocab: Vocab): number[] {
  const symbols: number[] = withMarker ? [vocab.markerId] : [];
  for (const ch of word) {
    const id = vocab.charIds.get(ch);
    if (id !== undefined) symbols.push(id);
    else if (vocab.byteBase >= 0) {
      for (const b of utf8.encode(ch)) symbols.push(vocab.byteBase + b);
    } else symbols.push(SPECIALS.unk);
  }
  return symbols;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenization shared by training and encoding

/**
 * Splits text into units: either a user-special id (a number) or a word key (a string: `" "` +
 * word for a word that carries the marker, the bare word otherwise).
 */
function pretokenize(
  text: string,
  config: BpeConfig,
  specialSplit: RegExp | null,
  specialIds: Map<string, number>,
  emit: (unit: string | number) => void,
): void {
  const parts = specialSplit === null ? [text] : text.split(specialSplit);
  let atStart = true;
  for (let p = 0; p < parts.length; p++) {
    const part = parts[p];
    if (p % 2 === 1) { // a user special (captured by the split)
      emit(specialIds.get(part)!);
      atStart = false;
      continue;
    }
    if (part.length === 0) continue;
    let t = config.lowercase ? part.toLowerCase() : part;
    if (config.normalize !== "none") t = t.normalize(config.normalize);
    const words = t.split(/\s+/);
    const last = words.length - 1;
    for (let w = 0; w <= last; w++) {
      const word = words[w];
      if (word.length === 0) continue;
      // The first word has the marker at the start of text or after whitespace; later ones always.
      emit(w > 0 || atStart ? " " + word : word);
    }
    // Whitespace before a following user special is kept as a lone marker.
    if (words[last].length === 0 && p < parts.length - 1) {
      emit(" ");
    }
    atStart = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Training

/** A max-heap of (count, pair) with ties broken by (left piece, right piece) ascending. */
class PairHeap {
  #counts: number[] = [];
  #keys: number[] = [];
  #pieces: string[];

  constructor(pieces: string[]) {
    this.#pieces = pieces;
  }

  get size(): number {
    return this.#keys.length;
  }

  /** True when entry i should come out before entry j. */
  #before(ci: number, ki: number, cj: number, kj: number): boolean {
    if (ci !== cj) return ci > cj;
    const li = Math.floor(ki / KEY_BASE), lj = Math.floor(kj / KEY_BASE);
    const pli = this.#pieces[li], plj = this.#pieces[lj];
    if (pli !== plj) return pli < plj;
    return this.#pieces[ki - li * KEY_BASE] < this.#pieces[kj - lj * KEY_BASE];
  }

  push(key: number, count: number): void {
    const counts = this.#counts, keys = this.#keys;
    let i = keys.length;
    counts.push(count);
    keys.push(key);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(count, key, counts[parent], keys[parent])) break;
      counts[i] = counts[parent];
      keys[i] = keys[parent];
      i = parent;
    }
    counts[i] = count;
    keys[i] = key;
  }

  /** Removes the top entry and returns it as [key, count]. */
  pop(): [number, number] {
    const counts = this.#counts, keys = this.#keys;
    const top: [number, number] = [keys[0], counts[0]];
    const lastC = counts.pop()!, lastK = keys.pop()!;
    const n = keys.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        let child = 2 * i + 1;
        if (child >= n) break;
        if (
          child + 1 < n &&
          this.#before(counts[child + 1], keys[child + 1], counts[child], keys[child])
        ) child++;
        if (!this.#before(counts[child], keys[child], lastC, lastK)) break;
        counts[i] = counts[child];
        keys[i] = keys[child];
        i = child;
      }
      counts[i] = lastC;
      keys[i] = lastK;
    }
    return top;
  }
}

/** Learns one vocabulary from word-key frequencies. */
function trainVocab(wordCounts: Map<string, number>, config: BpeConfig): BpeVocabState {
  const pieces = reservedPieces(config);
  const reserved = pieces.length;

  // 1. The alphabet: most frequent characters covering `characterCoverage`, within the budget.
  const charCounts = new Map<string, number>();
  let total = 0;
  for (const [key, freq] of wordCounts) {
    const word = key.charCodeAt(0) === 32 ? key.slice(1) : key;
    for (const ch of word) {
      if (ch === WORD_MARKER) continue; // a literal marker is never an alphabet character
      charCounts.set(ch, (charCounts.get(ch) ?? 0) + freq);
      total += freq;
    }
  }
  const ranked = [...charCounts].sort((x, y) =>
    y[1] - x[1] || (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0)
  );
  const room = config.vocabSize - reserved - 1;
  const normalIds = new Map<string, number>();
  pieces.push(WORD_MARKER);
  normalIds.set(WORD_MARKER, reserved);
  let covered = 0;
  for (const [ch, count] of ranked) {
    if (pieces.length - reserved - 1 >= room || covered >= config.characterCoverage * total) break;
    normalIds.set(ch, pieces.length);
    pieces.push(ch);
    covered += count;
  }

  // 2. Words as symbol arrays; -1 marks a character outside the alphabet (never merged).
  const words: number[][] = [];
  const freqs: number[] = [];
  const markerId = reserved;
  for (const [key, freq] of wordCounts) {
    const hasMarker = key.charCodeAt(0) === 32;
    const symbols: number[] = hasMarker ? [markerId] : [];
    for (const ch of hasMarker ? key.slice(1) : key) {
      symbols.push(ch === WORD_MARKER ? -1 : normalIds.get(ch) ?? -1);
    }
    if (symbols.length >= 2) {
      words.push(symbols);
      freqs.push(freq);
    }
  }

  // 3. Pair counts and the index pair -> words (may hold duplicates and stale entries).
  const counts = new Map<number, number>();
  const index = new Map<number, number[]>();
  const addPairs = (w: number, symbols: number[], sign: number, indexId: number) => {
    const f = freqs[w] * sign;
    for (let i = 0; i + 1 < symbols.length; i++) {
      const a = symbols[i], b = symbols[i + 1];
      if (a < 0 || b < 0) continue;
      const key = a * KEY_BASE + b;
      const c = (counts.get(key) ?? 0) + f;
      if (c > 0) counts.set(key, c);
      else counts.delete(key);
      if (sign > 0 && (indexId < 0 || a === indexId || b === indexId)) {
        let list = index.get(key);
        if (list === undefined) index.set(key, list = []);
        if (list[list.length - 1] !== w) list.push(w);
      }
    }
  };
  for (let w = 0; w < words.length; w++) addPairs(w, words[w], 1, -1);
  const heap = new PairHeap(pieces);
  for (const [key, count] of counts) heap.push(key, count);

  // 4. Merge the best pair until the vocabulary is full or no pair is frequent enough.
  const merges: [number, number][] = [];
  const merged = new Set<number>();
  const stamp = new Int32Array(words.length).fill(-1);
  let step = 0;
  while (pieces.length < config.vocabSize && heap.size > 0) {
    const [key, count] = heap.pop();
    const current = counts.get(key) ?? 0;
    if (current !== count) { // stale entry: re-queue with the true count
      if (current > 0) heap.push(key, current);
      continue;
    }
    if (count < config.minFrequency) break;
    const a = Math.floor(key / KEY_BASE), b = key - a * KEY_BASE;
    const piece = pieces[a] + pieces[b];
    let id = normalIds.get(piece);
    if (id === undefined) {
      id = pieces.length;
      pieces.push(piece);
      normalIds.set(piece, id);
    }
    if (!merged.has(key)) {
      merged.add(key);
      merges.push([a, b]);
    }
    const touched = new Set<number>();
    for (const w of index.get(key) ?? []) {
      if (stamp[w] === step) continue;
      stamp[w] = step;
      const old = words[w];
      let found = false;
      for (let i = 0; i + 1 < old.length; i++) {
        if (old[i] === a && old[i + 1] === b) {
          found = true;
          break;
        }
      }
      if (!found) continue;
      const fresh: number[] = [];
      for (let i = 0; i < old.length; i++) {
        if (i + 1 < old.length && old[i] === a && old[i + 1] === b) {
          fresh.push(id);
          i++;
        } else fresh.push(old[i]);
      }
      addPairs(w, old, -1, -1);
      addPairs(w, fresh, 1, id);
      words[w] = fresh;
      for (let i = 0; i + 1 < fresh.length; i++) {
        if ((fresh[i] === id || fresh[i + 1] === id) && fresh[i] >= 0 && fresh[i + 1] >= 0) {
          touched.add(fresh[i] * KEY_BASE + fresh[i + 1]);
        }
      }
    }
    counts.delete(key);
    index.delete(key);
    for (const k of touched) {
      const c = counts.get(k) ?? 0;
      if (c > 0) heap.push(k, c);
    }
    step++;
  }
  return { pieces, merges };
}

// ---------------------------------------------------------------------------------------------
// State validation

function fail(message: string): never {
  throw new TypeError(`bpe tokenizer state: ${message}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Validates a saved config and returns a full {@link BpeConfig}. */
function readStateConfig(raw: unknown, maxWordCache: number): BpeConfig {
  if (!isRecord(raw)) fail("config must be an object");
  const keys = Object.keys(BPE_DEFAULTS).filter((k) => k !== "maxWordCache");
  for (const k of keys) if (!(k in raw)) fail(`config.${k} is missing`);
  for (const k of Object.keys(raw)) if (!keys.includes(k)) fail(`config.${k} is not an option`);
  const config = { ...raw, maxWordCache } as unknown as BpeConfig;
  try {
    checkConfig(config, "config");
  } catch (e) {
    fail((e as Error).message);
  }
  return { ...config, userSpecials: [...config.userSpecials] };
}

/** Validates one saved vocabulary against the config. */
function readVocabState(raw: unknown, config: BpeConfig, where: string): BpeVocabState {
  if (!isRecord(raw)) fail(`${where} must be an object with pieces and merges`);
  const { pieces, merges } = raw;
  if (!Array.isArray(pieces) || !pieces.every((p) => typeof p === "string")) {
    fail(`${where}.pieces must be an array of strings`);
  }
  const expected = reservedPieces(config);
  if (pieces.length < expected.length + 1) {
    fail(`${where}.pieces has ${pieces.length} entries, needs at least ${expected.length + 1}`);
  }
  if (pieces.length > config.vocabSize) {
    fail(`${where}.pieces has ${pieces.length} entries, more than vocabSize ${config.vocabSize}`);
  }
  expected.forEach((p, i) => {
    if (pieces[i] !== p) {
      fail(`${where}.pieces[${i}] is ${JSON.stringify(pieces[i])}, expected ${JSON.stringify(p)}`);
    }
  });
  if (pieces[expected.length] !== WORD_MARKER) {
    fail(`${where}.pieces[${expected.length}] must be the word marker ${WORD_MARKER}`);
  }
  const normal = new Set<string>();
  for (let i = expected.length; i < pieces.length; i++) {
    const p = pieces[i] as string;
    if (p.length === 0) fail(`${where}.pieces[${i}] is empty`);
    if (normal.has(p)) fail(`${where}.pieces[${i}] ${JSON.stringify(p)} occurs twice`);
    normal.add(p);
  }
  if (!Array.isArray(merges)) fail(`${where}.merges must be an array of [leftId, rightId]`);
  const out: [number, number][] = [];
  merges.forEach((m, i) => {
    if (!Array.isArray(m) || m.length !== 2 || !m.every((x) => Number.isInteger(x))) {
      fail(`${where}.merges[${i}] must be a pair of integer ids, got ${JSON.stringify(m)}`);
    }
    for (const id of m as number[]) {
      if (id < expected.length || id >= pieces.length) {
        fail(
          `${where}.merges[${i}] refers to id ${id}, outside the mergeable ids [${expected.length}, ${pieces.length})`,
        );
      }
    }
    const [a, b] = m as [number, number];
    if (!normal.has(pieces[a] + pieces[b])) {
      fail(
        `${where}.merges[${i}] makes ${
          JSON.stringify(pieces[a] + pieces[b])
        }, which is not a piece`,
      );
    }
    out.push([a, b]);
  });
  return { pieces: [...pieces] as string[], merges: out };
}

// ---------------------------------------------------------------------------------------------
// The tokenizer

/** The `bpe` tokenizer; `create` of the plugin returns one of these. */
export class BpeTokenizer implements Tokenizer {
  /** Ids of the special tokens: pad 0, bos 1, eos 2, unk 3. */
  readonly specials: SpecialIds = SPECIALS;
  #config: BpeConfig;
  #vocabs: { source: Vocab; target: Vocab } | null = null;
  #specialSplit: RegExp | null = null;
  #specialIds = new Map<string, number>();

  /**
   * Makes an untrained tokenizer; missing options take {@link BPE_DEFAULTS}.
   *
   * @throws {RangeError|TypeError} for an invalid option (e.g. a vocabSize below the ids that
   *   the special and byte tokens need).
   */
  constructor(config: Partial<BpeConfig> = {}) {
    const full: BpeConfig = { ...BPE_DEFAULTS, ...config };
    full.userSpecials = [...full.userSpecials];
    checkConfig(full, "bpe tokenizer");
    this.#config = full;
    this.#setSpecials();
  }

  /** The effective options (after `load`, those of the loaded state). */
  get config(): Readonly<BpeConfig> {
    return this.#config;
  }

  /** Whether `train` or `load` has run. */
  get trained(): boolean {
    return this.#vocabs !== null;
  }

  #setSpecials(): void {
    const users = this.#config.userSpecials;
    this.#specialIds = new Map(users.map((s, i) => [s, SPECIAL_PIECES.length + i]));
    this.#specialSplit = users.length === 0 ? null : new RegExp(
      `(${
        [...users].sort((x, y) => y.length - x.length || (x < y ? -1 : 1)).map(escapeRegExp)
          .join("|")
      })`,
      "u",
    );
  }

  #vocab(side: Side): Vocab {
    if (this.#vocabs === null) {
      throw new Error("bpe tokenizer: not trained; call train() or load() before using it");
    }
    if (side !== "source" && side !== "target") {
      throw new TypeError(
        `bpe tokenizer: side must be "source" or "target", got ${JSON.stringify(side)}`,
      );
    }
    return this.#vocabs[side];
  }

  #countWords(texts: readonly string[], into: Map<string, number>): void {
    for (const text of texts) {
      pretokenize(text, this.#config, this.#specialSplit, this.#specialIds, (unit) => {
        if (typeof unit === "string") into.set(unit, (into.get(unit) ?? 0) + 1);
      });
    }
  }

  /** Learns the vocabulary (or the two vocabularies) from both sides of the training texts. */
  train(corpus: { sources: readonly string[]; targets: readonly string[] }): void {
    const config = this.#config;
    if (config.joint) {
      const counts = new Map<string, number>();
      this.#countWords(corpus.sources, counts);
      this.#countWords(corpus.targets, counts);
      const vocab = buildVocab(trainVocab(counts, config), config);
      this.#vocabs = { source: vocab, target: vocab };
    } else {
      const src = new Map<string, number>(), tgt = new Map<string, number>();
      this.#countWords(corpus.sources, src);
      this.#countWords(corpus.targets, tgt);
      this.#vocabs = {
        source: buildVocab(trainVocab(src, config), config),
        target: buildVocab(trainVocab(tgt, config), config),
      };
    }
  }

  /** Vocabulary size of one side (equal for both sides with a joint vocabulary). */
  vocabSize(side: Side): number {
    return this.#vocab(side).pieces.length;
  }

  /** Text to ids, without BOS/EOS. */
  encode(text: string, side: Side): number[] {
    const vocab = this.#vocab(side);
    const out: number[] = [];
    const limit = this.#config.maxWordCache;
    pretokenize(text, this.#config, this.#specialSplit, this.#specialIds, (unit) => {
      if (typeof unit === "number") {
        out.push(unit);
        return;
      }
      let ids = vocab.cache.get(unit);
      if (ids === undefined) {
        const hasMarker = unit.charCodeAt(0) === 32;
        ids = applyMerges(
          initialSymbols(hasMarker ? unit.slice(1) : unit, hasMarker, vocab),
          vocab,
        );
        if (limit > 0) {
          if (vocab.cache.size >= limit) {
            vocab.cache.delete(vocab.cache.keys().next().value!);
          }
          vocab.cache.set(unit, ids);
        }
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    });
    return out;
  }

  /** The pieces `encode` produces, as strings (for inspection and debugging). */
  tokenize(text: string, side: Side): string[] {
    const pieces = this.#vocab(side).pieces;
    return this.encode(text, side).map((id) => pieces[id]);
  }

  /** The piece of one id. @throws {RangeError} for an id outside the vocabulary. */
  piece(id: number, side: Side): string {
    const pieces = this.#vocab(side).pieces;
    if (!Number.isInteger(id) || id < 0 || id >= pieces.length) {
      throw new RangeError(`bpe tokenizer: id ${id} is outside the ${side} vocabulary`);
    }
    return pieces[id];
  }

  /**
   * Ids to text: `<pad>` and `<s>` are dropped, decoding stops at `</s>`, `<unk>` becomes
   * {@link UNK_SURFACE}, byte tokens are reassembled as UTF-8, `▁` becomes a space, and the
   * leading space is trimmed.
   *
   * @throws {RangeError} for an id outside the vocabulary.
   */
  decode(ids: readonly number[], side: Side): string {
    const vocab = this.#vocab(side);
    const { pieces, kinds } = vocab;
    let text = "";
    let bytes: number[] = [];
    const flush = () => {
      if (bytes.length > 0) {
        text += new TextDecoder().decode(new Uint8Array(bytes));
        bytes = [];
      }
    };
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= pieces.length) {
        throw new RangeError(
          `bpe tokenizer: id ${id} is outside the ${side} vocabulary of ${pieces.length}`,
        );
      }
      if (id === SPECIALS.eos) break;
      const kind = kinds[id];
      if (kind === KIND_BYTE) {
        bytes.push(id - vocab.byteBase);
        continue;
      }
      flush();
      if (kind === KIND_SPECIAL) {
        if (id === SPECIALS.unk) text += UNK_SURFACE;
      } else if (kind === KIND_USER) text += pieces[id];
      else text += pieces[id].replaceAll(WORD_MARKER, " ");
    }
    flush();
    return text.charCodeAt(0) === 32 ? text.slice(1) : text;
  }

  /** A JSON-serialisable state ({@link BpeState}) that {@link BpeTokenizer.load} restores. */
  save(): BpeState {
    if (this.#vocabs === null) {
      throw new Error("bpe tokenizer: not trained; nothing to save");
    }
    const { maxWordCache: _, ...config } = this.#config;
    const dump = (v: Vocab): BpeVocabState => ({
      pieces: [...v.pieces],
      merges: v.merges.map(([a, b]) => [a, b]),
    });
    return {
      format: "bpe",
      version: STATE_VERSION,
      config: { ...config, userSpecials: [...config.userSpecials] },
      vocabs: this.#config.joint
        ? { joint: dump(this.#vocabs.source) }
        : { source: dump(this.#vocabs.source), target: dump(this.#vocabs.target) },
    };
  }

  /**
   * Restores a state written by {@link BpeTokenizer.save}, including its options (the word
   * cache size stays this instance's). The tokenizer is unchanged when the state is invalid.
   *
   * @throws {TypeError} naming the first thing that is wrong with the state.
   */
  load(state: unknown): void {
    if (!isRecord(state)) fail("must be an object");
    if (state.format !== "bpe") fail(`format must be "bpe", got ${JSON.stringify(state.format)}`);
    if (state.version !== STATE_VERSION) {
      fail(`version must be ${STATE_VERSION}, got ${JSON.stringify(state.version)}`);
    }
    const config = readStateConfig(state.config, this.#config.maxWordCache);
    const vocabs = state.vocabs;
    if (!isRecord(vocabs)) fail("vocabs must be an object");
    const names = config.joint ? ["joint"] : ["source", "target"];
    for (const k of Object.keys(vocabs)) {
      if (!names.includes(k)) {
        fail(`vocabs.${k} is unexpected with joint=${config.joint} (expected ${names.join(", ")})`);
      }
    }
    let loaded: { source: Vocab; target: Vocab };
    if (config.joint) {
      const v = buildVocab(readVocabState(vocabs.joint, config, "vocabs.joint"), config);
      loaded = { source: v, target: v };
    } else {
      loaded = {
        source: buildVocab(readVocabState(vocabs.source, config, "vocabs.source"), config),
        target: buildVocab(readVocabState(vocabs.target, config, "vocabs.target"), config),
      };
    }
    this.#config = config;
    this.#setSpecials();
    this.#vocabs = loaded;
  }
}

export default definePlugin({
  kind: "tokenizer",
  name: "bpe",
  summary:
    "SentencePiece-style byte-pair encoding (word marker, byte fallback), joint or per-side vocabularies.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      vocabSize: {
        type: "integer",
        minimum: 16,
        maximum: MAX_VOCAB,
        default: BPE_DEFAULTS.vocabSize,
        description:
          "Vocabulary size including the 4 specials, userSpecials and (with byteFallback) 256 byte tokens; per side when joint is false. Training stops earlier when no pair reaches minFrequency.",
      },
      joint: {
        type: "boolean",
        default: BPE_DEFAULTS.joint,
        description:
          "One vocabulary learned from both sides (true) or a separate vocabulary of vocabSize per side (false).",
      },
      minFrequency: {
        type: "integer",
        minimum: 1,
        default: BPE_DEFAULTS.minFrequency,
        description: "A pair of pieces is merged only if it occurs at least this often.",
      },
      characterCoverage: {
        type: "number",
        exclusiveMinimum: 0,
        maximum: 1,
        default: BPE_DEFAULTS.characterCoverage,
        description:
          "Fraction of character occurrences the initial alphabet covers (most frequent first, as in SentencePiece); rarer characters become byte tokens or <unk>.",
      },
      byteFallback: {
        type: "boolean",
        default: BPE_DEFAULTS.byteFallback,
        description:
          "Encode characters outside the alphabet as UTF-8 byte tokens <0x00>..<0xFF> (lossless) instead of <unk>.",
      },
      normalize: {
        type: "string",
        enum: ["NFC", "NFKC", "none"],
        default: BPE_DEFAULTS.normalize,
        description: "Unicode normalisation applied to the text before tokenizing.",
      },
      lowercase: {
        type: "boolean",
        default: BPE_DEFAULTS.lowercase,
        description: "Lowercase the text before tokenizing (decoding cannot restore case).",
      },
      userSpecials: {
        type: "array",
        items: { type: "string", pattern: "^\\S+$" },
        uniqueItems: true,
        default: BPE_DEFAULTS.userSpecials,
        description:
          "Extra special tokens (e.g. language tags), given ids right after the 4 built-in ones and never split when they occur in text; no whitespace inside.",
      },
      maxWordCache: {
        type: "integer",
        minimum: 0,
        default: BPE_DEFAULTS.maxWordCache,
        description:
          "Maximum number of cached word encodings per vocabulary; 0 disables the cache.",
      },
    },
  },
  check(config: BpeConfig) {
    const problems: { path: string; message: string }[] = [];
    const minimum = minimumVocabSize(config);
    if (config.vocabSize < minimum) {
      problems.push({
        path: "/vocabSize",
        message:
          `must be at least ${minimum} (4 specials, ${config.userSpecials.length} user specials${
            config.byteFallback ? ", 256 byte-fallback tokens" : ""
          } and the word marker) (got ${config.vocabSize})`,
      });
    }
    // The rules checkConfig enforces when the tokenizer is created, reported at validation.
    config.userSpecials.forEach((special, i) => {
      if (SPECIAL_PIECES.includes(special)) {
        problems.push({
          path: `/userSpecials/${i}`,
          message: `${JSON.stringify(special)} is a built-in special token (${
            SPECIAL_PIECES.join(" ")
          })`,
        });
      } else if (special.includes(WORD_MARKER)) {
        problems.push({
          path: `/userSpecials/${i}`,
          message: `${JSON.stringify(special)} contains the word marker ${WORD_MARKER} (U+2581)`,
        });
      }
    });
    return problems;
  },
  smoke: (config: BpeConfig): BpeConfig => ({
    ...config,
    vocabSize: Math.min(config.vocabSize, Math.max(500, minimumVocabSize(config) + 100)),
  }),
  create(config: Partial<BpeConfig>): Tokenizer {
    return new BpeTokenizer(config);
  },
});
