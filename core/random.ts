/**
 * Seeded pseudo-random numbers. Every random choice in the framework draws from an
 * {@link Rng} derived from the run's seed, so runs are reproducible.
 *
 * @module
 */

/** A seeded generator of uniform numbers (SplitMix32-style mixing of a 32-bit counter). */
export class Rng {
  #state: number;

  /** Creates a generator; equal seeds give equal streams. */
  constructor(seed: number) {
    if (!Number.isFinite(seed)) throw new RangeError(`seed must be a finite number, got ${seed}`);
    this.#state = hashSeed(seed);
  }

  /** A uniform 32-bit unsigned integer. */
  nextUint32(): number {
    this.#state = (this.#state + 0x9e3779b9) | 0;
    let z = this.#state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  }

  /** A uniform number in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** A uniform integer in [0, n). */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0) {
      throw new RangeError(`n must be a positive integer, got ${n}`);
    }
    return Math.floor(this.next() * n);
  }

  /** One element of a non-empty array, uniformly. */
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError("cannot pick from an empty array");
    return items[this.int(items.length)];
  }

  /** Shuffles `items` in place (Fisher-Yates) and returns it. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }

  /** An independent generator for a named sub-stream (e.g. `"data"`, `"grow/2"`). */
  fork(label: string): Rng {
    return new Rng(hashSeed(this.nextUint32() ^ hashString(label)));
  }
}

/** FNV-1a hash of a string to 32 bits. */
export function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function hashSeed(seed: number): number {
  // Fold the integer and fractional parts so that 1 and 1.5 differ.
  const hi = Math.floor(seed / 4294967296) | 0;
  let z = (seed | 0) ^ Math.imul(hi, 0x27d4eb2f);
  z = Math.imul(z ^ (z >>> 15), 0x2c1b3c6d);
  z = Math.imul(z ^ (z >>> 12), 0x297a2d39);
  return (z ^ (z >>> 15)) | 0;
}

/**
 * A seeded uniform sample of `count` items without replacement, in their original order
 * (0 or at least `items.length`: all of them). Grow and the PPO baseline draw their training
 * sources this way, so that a budget below the whole training split still covers every part
 * of it (a corpus kept in file order would otherwise be grown from its first files only).
 */
export function sampleInOrder<T>(items: readonly T[], count: number, seed: number): T[] {
  if (count <= 0 || count >= items.length) return [...items];
  const rng = new Rng(seed).fork("sources");
  const chosen = new Uint8Array(items.length);
  // Floyd's algorithm: `count` distinct indices with `count` draws.
  for (let j = items.length - count; j < items.length; j++) {
    const t = rng.int(j + 1);
    chosen[chosen[t] ? j : t] = 1;
  }
  const out: T[] = [];
  for (let i = 0; i < items.length; i++) if (chosen[i]) out.push(items[i]);
  return out;
}
