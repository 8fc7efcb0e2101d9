/**
 * Content keys for caches: which runs may share a Grow set, a reward model or an Improve step.
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
