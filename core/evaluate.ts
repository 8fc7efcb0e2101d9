/**
 * Evaluation: average reward of outputs (with checks on what rewards return) and of a
 * policy's decoded outputs, with corpus chrF/BLEU against references.
 *
 * @module
 */

import { corpusBleu } from "./metrics/bleu.ts";
import { corpusChrf } from "./metrics/chrf.ts";
import type { Generation, Policy } from "./policy.ts";
import type { Example, RewardModel, Tokenizer } from "./types.ts";

/** Mean of a list of numbers (NaN for an empty list). */
export function mean(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/**
 * Scores `hypotheses` (one per example) with `reward` and checks every score is a
 * number in [0, 1].
 *
 * @throws {RangeError} naming the first row whose score is NaN or outside [0, 1].
 */
export async function scoreOutputs(
  reward: RewardModel,
  examples: readonly Example[],
  hypotheses: readonly string[],
): Promise<number[]> {
  if (examples.length !== hypotheses.length) {
    throw new RangeError(
      `${hypotheses.length} hypotheses for ${examples.length} examples; they must be equal`,
    );
  }
  const rows = examples.map((e, i) => ({
    source: e.source,
    hypothesis: hypotheses[i],
    reference: e.reference,
  }));
  const scores = await reward.score(rows);
  checkScores(scores, rows.length);
  return scores;
}

/**
 * Checks that a reward returned `count` numbers in [0, 1].
 *
 * @throws {RangeError} naming the first bad row.
 */
export function checkScores(scores: readonly number[], count: number): void {
  if (!Array.isArray(scores) || scores.length !== count) {
    throw new RangeError(
      `reward returned ${
        Array.isArray(scores) ? scores.length : typeof scores
      } scores for ${count} rows`,
    );
  }
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i];
    if (typeof s !== "number" || Number.isNaN(s) || s < 0 || s > 1) {
      throw new RangeError(`reward returned ${s} for row ${i}; rewards must be numbers in [0, 1]`);
    }
  }
}

/** Decoding used for evaluation. */
export type EvalDecode =
  | { mode: "greedy" }
  | { mode: "sample"; temperature: number; seed: number }
  | { mode: "beam"; beamSize: number; lengthPenalty: number };

/** Average reward and corpus metrics of a policy's outputs on some examples. */
export interface PolicyEvaluation {
  /** Mean reward of the outputs, in [0, 1]. */
  reward: number;
  /** Corpus chrF against the references, 0-100. */
  chrf: number;
  /** Corpus BLEU against the references, 0-100. */
  bleu: number;
  /** The decoded outputs, in example order. */
  hypotheses: string[];
}

/**
 * Decodes every example's source with `policy`, scores the outputs with `reward`, and
 * computes corpus chrF and BLEU against the references.
 */
export async function evaluatePolicy(
  policy: Policy,
  tokenizer: Tokenizer,
  examples: readonly Example[],
  reward: RewardModel,
  options: { decode: EvalDecode; maxLen: number; batchSize: number },
): Promise<PolicyEvaluation> {
  if (examples.length === 0) return { reward: NaN, chrf: NaN, bleu: NaN, hypotheses: [] };
  const sources = examples.map((e) => tokenizer.encode(e.source, "source"));
  const { maxLen, batchSize } = options;
  let outputs: Generation[];
  const decode = options.decode;
  if (decode.mode === "greedy") {
    outputs = await policy.greedy(sources, { maxLen, batchSize });
  } else if (decode.mode === "beam") {
    outputs = await policy.beam(sources, { maxLen, batchSize, ...decode });
  } else {
    const samples = await policy.sample(sources, {
      maxLen,
      batchSize,
      n: 1,
      temperature: decode.temperature,
      topK: 0,
      topP: 1,
      seed: decode.seed,
    });
    outputs = samples.map((s) => s[0]);
  }
  const hypotheses = outputs.map((g) => tokenizer.decode(g.tokens, "target"));
  const scores = await scoreOutputs(reward, examples, hypotheses);
  const references = examples.map((e) => e.reference);
  return {
    reward: mean(scores),
    chrf: corpusChrf(hypotheses, references),
    bleu: corpusBleu(hypotheses, references),
    hypotheses,
  };
}

/**
 * The final evaluation every policy-training algorithm reports: greedy reward on validation
 * and test, the reward of temperature samples on validation, and corpus chrF/BLEU of greedy
 * output on test against the references. Keys: `eval/valid_reward`,
 * `eval/valid_reward_sample`, `eval/test_reward`, `eval/test_chrf`, `eval/test_bleu`.
 */
export async function finalEvaluation(
  policy: Policy,
  tokenizer: Tokenizer,
  reward: RewardModel,
  splits: { valid: readonly Example[]; test: readonly Example[] },
  settings: { maxLen: number; batchSize: number; validSize: number; testSize: number },
  seed: number,
): Promise<Record<string, number>> {
  const valid = settings.validSize > 0 ? splits.valid.slice(0, settings.validSize) : splits.valid;
  const test = settings.testSize > 0 ? splits.test.slice(0, settings.testSize) : splits.test;
  const opts = { maxLen: settings.maxLen, batchSize: settings.batchSize };
  const greedyValid = await evaluatePolicy(policy, tokenizer, valid, reward, {
    ...opts,
    decode: { mode: "greedy" },
  });
  const sampledValid = await evaluatePolicy(policy, tokenizer, valid, reward, {
    ...opts,
    decode: { mode: "sample", temperature: 0.8, seed },
  });
  const greedyTest = await evaluatePolicy(policy, tokenizer, test, reward, {
    ...opts,
    decode: { mode: "greedy" },
  });
  return {
    "eval/valid_reward": greedyValid.reward,
    "eval/valid_reward_sample": sampledValid.reward,
    "eval/test_reward": greedyTest.reward,
    "eval/test_chrf": greedyTest.chrf,
    "eval/test_bleu": greedyTest.bleu,
  };
}
