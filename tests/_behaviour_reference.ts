/**
 * A reference for the sampler's behaviour log-probabilities in tests: log mu(a_t) of given
 * outputs computed in float64 from the teacher-forced logits of `policy.forward`, as the
 * softmax of logits / T over the ids outside `banned`, restricted to the `topK` largest of
 * those (0: all), renormalised.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { makeBatch } from "../core/batch.ts";
import { rowTarget } from "../core/rest.ts";
import type { Policy } from "../core/types.ts";

/** How the reference distribution is formed. */
export interface BehaviourOptions {
  /** Softmax temperature T. */
  temperature: number;
  /** Keep the k largest allowed logits (0: all). */
  topK: number;
  /** Ids never drawn (left out of the distribution). */
  banned: readonly number[];
}

/** log mu(tokens[t]) per output (see the module doc); `tokens` end with EOS unless truncated. */
export function referenceBehaviour(
  policy: Policy,
  outputs: readonly { source: number[]; tokens: number[] }[],
  options: BehaviourOptions,
): number[][] {
  const { eos } = policy.specials;
  const logits = tf.tidy(() => {
    const batch = makeBatch(
      outputs.map((o) => rowTarget(o.source, o.tokens, eos)),
      policy.specials,
    );
    return policy.forward(batch, { training: false }).logits.arraySync();
  });
  return outputs.map((o, i) => o.tokens.map((token, t) => logMu(logits[i][t], token, options)));
}

/** log mu(token) for one row of logits. */
function logMu(row: readonly number[], token: number, options: BehaviourOptions): number {
  let kept = row.map((v, id) => ({ v, id })).filter((x) => !options.banned.includes(x.id));
  if (options.topK > 0) kept = kept.sort((a, b) => b.v - a.v || a.id - b.id).slice(0, options.topK);
  if (!kept.some((x) => x.id === token)) return -Infinity;
  const z = (v: number) => v / options.temperature;
  const max = Math.max(...kept.map((x) => z(x.v)));
  const lse = max + Math.log(kept.reduce((s, x) => s + Math.exp(z(x.v) - max), 0));
  return z(row[token]) - lse;
}
