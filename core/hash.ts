/**
 * String hashes, each for its own use (none is a checksum; files are checked by SHA-256):
 *
 * - {@link hashText}: a 64-bit hex string, the content key of caches (which runs may share a
 *   Grow set, a reward model or an Improve step) and of folder names; written to disk.
 * - {@link hash53}: the same idea as a plain number below 2^53, so millions of keys fit in a
 *   `Set<number>` (distinct samples) without a string or a BigInt each.
 *
 * (core/random.ts's `hashString` is the 32-bit FNV-1a that mixes labels into seeds.)
 *
 * @module
 */

/** A 64-bit FNV-1a hash of a string as 16 hex digits (a cache key, not a checksum). */
export function hashText(text: string): string {
  let h = 0xcbf29ce484222325n;
  for (let i = 0; i < text.length; i++) {
    h = ((h ^ BigInt(text.charCodeAt(i))) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

/** A 53-bit hash of a string (two FNV-1a variants) as an exact integer number, a `Set` key. */
export function hash53(text: string): number {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 13);
  }
  return (b >>> 11) * 4294967296 + (a >>> 0);
}
