/**
 * Deterministic weight initialisation from the framework's seeded {@link Rng} (never tfjs's
 * random state): standard normal draws by Box-Muller, and the two fills the models use,
 * N(0, std^2) for embeddings and Xavier/Glorot uniform for projections. Which fill each
 * weight gets, and its scale, is the model's choice.
 *
 * @module
 */

import type { Rng } from "../../core/random.ts";

/** A standard normal draw from `rng` (Box-Muller, two uniforms per draw). */
export function standardNormal(rng: Rng): number {
  const u = 1 - rng.next();
  const v = rng.next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Fills `out`, in order, with draws of N(0, std^2) from `rng`. */
export function fillNormal(out: Float32Array, std: number, rng: Rng): void {
  for (let i = 0; i < out.length; i++) out[i] = standardNormal(rng) * std;
}

/**
 * Fills `out`, in order, with Xavier/Glorot uniform draws from `rng`: U(-limit, limit) with
 * `limit = scale * sqrt(6 / (fanIn + fanOut / parts))`, where a fused projection of `parts`
 * matrices side by side (QKV: 3) counts as `parts` separate `fanIn x fanOut / parts` ones.
 */
export function fillXavierUniform(
  out: Float32Array,
  fanIn: number,
  fanOut: number,
  rng: Rng,
  parts = 1,
  scale = 1,
): void {
  const limit = scale * Math.sqrt(6 / (fanIn + fanOut / parts));
  for (let i = 0; i < out.length; i++) out[i] = (2 * rng.next() - 1) * limit;
}
