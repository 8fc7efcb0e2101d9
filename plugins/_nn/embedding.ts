/**
 * Token embeddings: the fixed sinusoidal position table, one looked-up row, and
 * {@link embedOp}, a differentiable lookup of one or more id blocks in one table (scaled,
 * plus positions, with dropout when training) whose backward pass scatters the gradient
 * into the table.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { customOp, values } from "./custom_op.ts";
import { residualMask, type RunOptions } from "./dropout.ts";
import { mulMask } from "./elementwise.ts";

/** The sinusoidal position table of Vaswani et al.: `[length, d]`, sin on even, cos on odd features. */
export function sinusoidTable(length: number, d: number): Float32Array {
  const table = new Float32Array(length * d);
  for (let pos = 0; pos < length; pos++) {
    for (let i = 0; i < d; i += 2) {
      const angle = pos / Math.pow(10000, i / d);
      table[pos * d + i] = Math.sin(angle);
      if (i + 1 < d) table[pos * d + i + 1] = Math.cos(angle);
    }
  }
  return table;
}

/** One embedding lookup: ids (row-major `[b, len]`) whose positions are `row % len`. */
export interface Lookup {
  /** Token ids, `b * len` of them. */
  ids: Int32Array;
  /** Sequence length (for positions). */
  len: number;
}

/** `out[o + j] = w[src + j] * scale + pe[pos + j]` for j < d. */
export function embedRow(
  w: Float32Array,
  src: number,
  scale: number,
  pe: Float32Array,
  pos: number,
  out: Float32Array,
  o: number,
  d: number,
): void {
  for (let j = 0; j < d; j++) out[o + j] = w[src + j] * scale + pe[pos + j];
}

function embedGradRow(
  dw: Float32Array,
  dst: number,
  dy: Float32Array,
  o: number,
  mask: Float32Array | undefined,
  scale: number,
  d: number,
): void {
  if (mask === undefined) {
    for (let j = 0; j < d; j++) dw[dst + j] += dy[o + j] * scale;
  } else {
    for (let j = 0; j < d; j++) dw[dst + j] += dy[o + j] * mask[o + j] * scale;
  }
}

/**
 * Differentiable embedding lookup of one or more id blocks in the same table, packed into
 * one `[sum of rows, d]` output: `table[id] * scale + position`, with dropout when training.
 * Packing the lookups that share a table into one op gives the table one dense gradient.
 */
export function embedOp(
  table: tf.Tensor2D,
  lookups: readonly Lookup[],
  scale: number,
  positions: (len: number) => Float32Array,
  run: RunOptions,
): tf.Tensor2D {
  const [vocab, d] = table.shape;
  const rows = lookups.reduce((sum, l) => sum + l.ids.length, 0);
  return customOp([table], (ins) => {
    const w = values(ins[0]);
    const out = new Float32Array(rows * d);
    let r = 0;
    for (const { ids, len } of lookups) {
      const pe = positions(len);
      for (let i = 0; i < ids.length; i++, r++) {
        const id = ids[i];
        if (id < 0 || id >= vocab) {
          throw new RangeError(`token id ${id} outside the vocabulary [0, ${vocab})`);
        }
        embedRow(w, id * d, scale, pe, (i % len) * d, out, r * d, d);
      }
    }
    const mask = residualMask(out.length, run);
    const y = mask === undefined ? out : mulMask(out, mask);
    return {
      out: y,
      shape: [rows, d],
      backward(dy) {
        const dw = new Float32Array(vocab * d);
        let row = 0;
        for (const { ids } of lookups) {
          for (let i = 0; i < ids.length; i++, row++) {
            embedGradRow(dw, ids[i] * d, dy, row * d, mask, scale, d);
          }
        }
        return [dw];
      },
    };
  }) as tf.Tensor2D;
}
