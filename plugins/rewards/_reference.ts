/**
 * Shared body of the reference-based metric rewards (`chrf`, `bleu`).
 *
 * @module
 */

import type { RewardInput, RewardModel } from "../../core/types.ts";

/**
 * A reward from a sentence metric scored 0-100 against a reference: the metric / 100,
 * clamped to [0, 1] (identical sentences can score 100.00000000000004).
 * Rows without a reference are rejected with a TypeError naming the row.
 */
export function referenceReward(
  name: string,
  metric: (hypothesis: string, reference: string) => number,
): RewardModel {
  // Fails now, not at the first score, on options the schema let through.
  metric("", "");
  return {
    needsReference: true,
    score(rows: readonly RewardInput[]): Promise<number[]> {
      const scores = new Array<number>(rows.length);
      for (let i = 0; i < rows.length; i++) {
        const { hypothesis, reference } = rows[i];
        if (typeof reference !== "string") {
          return Promise.reject(
            new TypeError(`${name} reward: row ${i} has no reference (${name} needs one)`),
          );
        }
        scores[i] = Math.min(1, Math.max(0, metric(hypothesis, reference) / 100));
      }
      return Promise.resolve(scores);
    },
  };
}
