/**
 * Dropout for the hand-written layers: the per-call settings ({@link RunOptions}: dropout
 * only when training) and inverted-dropout masks drawn from the framework's seeded
 * {@link Rng}, never from tfjs's random state, so runs are reproducible.
 *
 * @module
 */

import type { Rng } from "../../core/random.ts";

/** Per-call settings: dropout only when training. */
export interface RunOptions {
  /** Training mode (dropout on). */
  training: boolean;
  /** Residual/embedding dropout rate. */
  dropout: number;
  /** Attention-probability dropout rate. */
  attentionDropout: number;
  /** Source of dropout masks. */
  rng: Rng;
}

/** An inverted-dropout mask: 0 with probability `rate`, else `1 / (1 - rate)`. */
export function dropoutMask(size: number, rate: number, rng: Rng): Float32Array {
  const mask = new Float32Array(size);
  const keep = 1 / (1 - rate);
  for (let i = 0; i < size; i++) mask[i] = rng.next() >= rate ? keep : 0;
  return mask;
}

/** A dropout mask of `size` for a residual branch or an embedding, or undefined when none applies. */
export function residualMask(size: number, run: RunOptions): Float32Array | undefined {
  return run.training && run.dropout > 0 ? dropoutMask(size, run.dropout, run.rng) : undefined;
}
