/**
 * Text helpers shared by the sacreBLEU-compatible metrics: Python's whitespace rules,
 * reference selection, and integer ids for n-grams.
 *
 * @module
 */

/** The characters Python's `str.split()` / `str.isspace()` treat as whitespace. */
const PY_WHITESPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029" +
  "\\u202f\\u205f\\u3000";

/** A run of Python whitespace (global). */
export const WHITESPACE_RUN = new RegExp(`[${PY_WHITESPACE}]+`, "gu");

/** Python whitespace at the end of a string. */
export const TRAILING_WHITESPACE = new RegExp(`[${PY_WHITESPACE}]+$`, "u");

/** Splits like Python's `str.split()` with no argument. */
export function splitWords(text: string): string[] {
  return text.split(WHITESPACE_RUN).filter((word) => word !== "");
}

/** The references to use: non-empty ones, or the single empty one when there are none. */
export function usableReferences(ref: string | readonly string[]): readonly string[] {
  const refs = typeof ref === "string" ? [ref] : ref;
  const nonEmpty = refs.filter((r) => r !== "");
  return nonEmpty.length > 0 ? nonEmpty : [""];
}

/** Word symbols start above every Unicode code point, so words and characters never share one. */
const WORD_SYMBOL_BASE = 0x110000;

/** Every symbol is below this; a trie key is `parent * SYMBOL_LIMIT + symbol` (exact below 2^53). */
const SYMBOL_LIMIT = 0x400000;

/**
 * Gives every distinct n-gram seen through one instance a small integer id (a node of a trie
 * over symbols), so n-grams are counted in typed arrays instead of being hashed as strings.
 * Ids are shared by all segments indexed by the same instance, and distinct across orders.
 * Symbols are code points (characters) or {@link NgramIndex.wordSymbol} ids (words).
 */
export class NgramIndex {
  readonly #children = new Map<number, number>();
  readonly #words = new Map<string, number>();
  /** Number of ids handed out so far (id 0 is the empty n-gram). */
  size = 1;

  /** The symbol of a word (distinct from every code point). */
  wordSymbol(word: string): number {
    let symbol = this.#words.get(word);
    if (symbol === undefined) {
      symbol = WORD_SYMBOL_BASE + this.#words.size;
      if (symbol >= SYMBOL_LIMIT) throw new RangeError("too many distinct words in one call");
      this.#words.set(word, symbol);
    }
    return symbol;
  }

  /** For each order 1..maxOrder, the ids of the n-grams of `symbols`, in position order. */
  ngrams(symbols: ArrayLike<number>, maxOrder: number): Int32Array[] {
    const result: Int32Array[] = [];
    let previous = new Int32Array(symbols.length);
    for (let n = 1; n <= maxOrder; n++) {
      const current = new Int32Array(Math.max(0, symbols.length - n + 1));
      for (let i = 0; i < current.length; i++) {
        const key = previous[i] * SYMBOL_LIMIT + symbols[i + n - 1];
        let id = this.#children.get(key);
        if (id === undefined) {
          id = this.size++;
          this.#children.set(key, id);
        }
        current[i] = id;
      }
      result.push(current);
      previous = current;
    }
    return result;
  }
}
