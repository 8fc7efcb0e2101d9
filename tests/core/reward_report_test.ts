/** rewardReport: correlations and Best-of-N curves from one sampling pass. */
import assert from "node:assert/strict";
import { describeRewardReport, powersUpTo, rewardReport } from "../../core/reward_report.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import type { Policy, RewardInput, RewardModel, Tokenizer } from "../../core/types.ts";

const EXAMPLES = [
  { source: "a", reference: "the cat sat on the mat" },
  { source: "b", reference: "open the file now" },
  { source: "c", reference: "save all documents" },
];

/** Candidate outputs per source, of clearly different quality; sample j is candidate j % 4. */
const CANDIDATES: Record<string, string[]> = {
  a: ["dog ran", "the cat sat", "the cat sat on the mat", "a cat on a mat"],
  b: ["open the file now", "open", "close the window", "open file"],
  c: ["save", "save all", "delete all documents", "save all documents"],
};

const tokenizer = {
  encode: (text: string) => [...text].map((c) => c.codePointAt(0)!),
  decode: (ids: readonly number[]) => String.fromCodePoint(...ids),
} as unknown as Tokenizer;

const policy = {
  sample(sources: number[][], options: { n: number }) {
    return Promise.resolve(sources.map((ids) => {
      const list = CANDIDATES[String.fromCodePoint(...ids)];
      return Array.from({ length: options.n }, (_, j) => ({
        tokens: [...list[j % list.length]].map((c) => c.codePointAt(0)!),
      }));
    }));
  },
} as unknown as Policy;

function rewardFrom(fn: (chrf: number) => number): RewardModel {
  return {
    needsReference: true,
    score: (rows: readonly RewardInput[]) =>
      Promise.resolve(rows.map((r) => fn(sentenceChrf(r.hypothesis, r.reference!) / 100))),
  };
}

const OPTIONS = {
  samples: 8,
  withinSamples: 4,
  ns: powersUpTo(8),
  temperature: 0.8,
  seed: 1,
  maxLen: 32,
  batchSize: 64,
};

Deno.test("rewardReport: chrF itself is perfect; its reverse is perfectly wrong", async () => {
  assert.deepEqual(powersUpTo(32), [1, 2, 4, 8, 16, 32]);
  assert.deepEqual(powersUpTo(12), [1, 2, 4, 8, 12]);
  const good = await rewardReport(policy, tokenizer, rewardFrom((c) => c), EXAMPLES, OPTIONS);
  assert.equal(good.sources, 3);
  assert.ok(Math.abs(good.pooled_pearson - 1) < 1e-9);
  assert.ok(Math.abs(good.within_kendall - 1) < 1e-9);
  assert.equal(good.within_sources, 3);
  for (const n of [1, 2, 4, 8]) assert.equal(good[`bon_chrf@${n}`], good[`bon_oracle_chrf@${n}`]);
  // By N = 4 every source's best candidate (the reference) is among the samples.
  assert.ok(good["bon_chrf@4"] > good["bon_chrf@1"]);
  assert.ok(Math.abs(good["bon_chrf@4"] - 100) < 1e-9, `${good["bon_chrf@4"]}`);

  const bad = await rewardReport(policy, tokenizer, rewardFrom((c) => 1 - c), EXAMPLES, OPTIONS);
  assert.ok(Math.abs(bad.within_kendall + 1) < 1e-9);
  assert.ok(bad["bon_chrf@4"] < bad["bon_chrf@1"], "a reversed reward picks worse with N");
  assert.equal(bad["bon_oracle_chrf@4"], good["bon_oracle_chrf@4"], "the ceiling is the reward's");
  assert.match(describeRewardReport(good), /within-source Kendall 1\.000 \(3 sources\)/);
  await assert.rejects(
    () => rewardReport(policy, tokenizer, rewardFrom((c) => c), EXAMPLES, { ...OPTIONS, ns: [16] }),
    RangeError,
  );
});
