/**
 * The pool of work buffers (`Float32Array`s) that the fused layers and the decoder draw
 * their activations, gradients and temporaries from. A transformer's buffers are the same
 * few sizes at every step, and fresh memory costs about as much to fault in as the
 * arithmetic done on it; so a buffer goes back ({@link giveBuffer}) where its last reader
 * is certain and the next {@link takeBuffer} of that size reuses it.
 *
 * @module
 */

/** Free buffers by size. */
const pool = new Map<number, Float32Array[]>();
let pooledFloats = 0;
/** Floats the buffer pool may hold (256 MiB). */
const POOL_LIMIT = 1 << 26;
/** Buffers kept per size. */
const POOL_DEPTH = 64;

/** A buffer of `size` floats with arbitrary contents: from the pool when it has one. */
export function takeBuffer(size: number): Float32Array {
  const buf = pool.get(size)?.pop();
  if (buf === undefined) return new Float32Array(size);
  pooledFloats -= size;
  return buf;
}

/** Gives back a buffer (from {@link takeBuffer} or not) that nothing will read or write again. */
export function giveBuffer(buf: Float32Array): void {
  if (buf.length === 0 || buf.length !== buf.buffer.byteLength / 4) return; // not a view
  if (pooledFloats + buf.length > POOL_LIMIT) return;
  let list = pool.get(buf.length);
  if (list === undefined) pool.set(buf.length, list = []);
  if (list.length >= POOL_DEPTH || list.includes(buf)) return;
  list.push(buf);
  pooledFloats += buf.length;
}

/** {@link giveBuffer} for each defined argument. */
export function giveBuffers(...bufs: (Float32Array | undefined)[]): void {
  for (const b of bufs) if (b !== undefined) giveBuffer(b);
}
