/**
 * Evaluation: average reward of outputs (with checks on what rewards return) and of a
 * policy's decoded outputs, with corpus chrF/BLEU against references; the sequence-level
 * KL to the BC policy; and the one count of distinct training samples every algorithm
 * reports ({@link DistinctSamples}).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { maxOf, mean } from "./append.ts";
import { makeBatch } from "./batch.ts";
import { hash53 } from "./hash.ts";
import { corpusBleu } from "./metrics/bleu.ts";
import { writeFileAtomic } from "./run.ts";
import { corpusChrf } from "./metrics/chrf.ts";
import { checkScores } from "./scores.ts";
import {
  type DecodedPart,
  decodeParts,
  DEFAULT_EVAL_SHARD_SOURCES,
  type EvalPlace,
} from "./eval_shard.ts";
import type { EvalSettings, Example, Generation, Policy, RewardModel, Tokenizer } from "./types.ts";

// Where the rewards' outputs are checked; long imported from here.
export { checkScores, scoresProblem } from "./scores.ts";

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
 * The score ReST's Improve steps and PPO select weights by: the mean reward on `examples`
 * (the selection split) of the greedy outputs (`selectBy: "greedy"`) or of `selectSamples`
 * outputs per source at the evaluation temperature (`"sample"`). The samples are drawn from a
 * seed derived from the run's `seed` alone, the same for every candidate the run compares, so
 * candidates are compared on common random numbers (and an Improve step's incoming score is
 * the previous step's best). NaN for no examples.
 */
export async function selectionReward(
  policy: Policy,
  tokenizer: Tokenizer,
  examples: readonly Example[],
  reward: RewardModel,
  settings: EvalSettings,
  seed: number,
): Promise<number> {
  const opts = { maxLen: settings.maxLen, batchSize: settings.batchSize };
  if (settings.selectBy === "greedy") {
    const greedy = await evaluatePolicy(policy, tokenizer, examples, reward, {
      ...opts,
      decode: { mode: "greedy" },
    });
    return greedy.reward;
  }
  if (examples.length === 0) return NaN;
  const { scores } = await sampleAndScore(policy, tokenizer, reward, examples, {
    ...opts,
    n: settings.selectSamples,
    temperature: settings.temperature,
    seed: seed + 65_537,
  });
  return mean(scores);
}

/**
 * `n` samples per example's source (temperature `temperature`, no truncation), decoded, and
 * scored by `reward`: `hypotheses[i][j]` is sample j of example i, its score
 * `scores[i * n + j]`.
 */
export async function sampleAndScore(
  policy: Policy,
  tokenizer: Tokenizer,
  reward: RewardModel,
  examples: readonly Example[],
  options: { n: number; temperature: number; seed: number; maxLen: number; batchSize: number },
): Promise<{ hypotheses: string[][]; scores: number[] }> {
  const samples = await policy.sample(examples.map((e) => tokenizer.encode(e.source, "source")), {
    ...options,
    topK: 0,
    topP: 1,
  });
  const hypotheses = samples.map((row) => row.map((g) => tokenizer.decode(g.tokens, "target")));
  const rows = examples.flatMap((e, i) => samples[i].map(() => e));
  return { hypotheses, scores: await scoreOutputs(reward, rows, hypotheses.flat()) };
}

/** What {@link finalEvaluation} needs besides the policy and the data. */
export interface FinalEvaluationOptions {
  /**
   * The BC policy the algorithm started from, for `eval/valid_kl_bc` (the BC algorithm
   * passes its own policy: its KL is 0 by definition, and computed the same way).
   */
  bcPolicy: Policy;
  /** Where to write the test translations as TSV (none when absent). */
  outputs?: string;
  /** Where the decoding shards are computed (absent: in this process). */
  place?: EvalPlace;
}

/**
 * The final evaluation every policy-training algorithm reports, on the report split
 * (`splits.valid`, first `validSize` pairs) and the test split (first `testSize` pairs):
 *
 * - `eval/valid_reward`: mean reward of greedy outputs (the paper's Table 1 metric);
 * - `eval/valid_reward_sample`: mean reward of one sample per source at the evaluation
 *   temperature;
 * - `eval/valid_kl_bc`: KL(pi || pi_BC) per sequence, estimated from one sample per source
 *   at temperature 1 (see {@link sequenceKl});
 * - `eval/test_reward`, `eval/test_chrf`, `eval/test_bleu`: greedy outputs on test, their
 *   reward and corpus chrF/BLEU against the references (written as TSV to `outputs`);
 * - `bon/...`: Best-of-N on the report split when the settings ask for it.
 *
 * The greedy outputs, the samples and Best-of-N's samples are decoded and scored in shards
 * (core/eval_shard.ts) by `options.place`'s executor, each shard seeded by (`seed`, what it
 * evaluates, shard index): the same numbers whichever executor computes them. The KL estimate
 * is computed here.
 */
export async function finalEvaluation(
  policy: Policy,
  tokenizer: Tokenizer,
  reward: RewardModel,
  splits: { valid: readonly Example[]; test: readonly Example[] },
  settings: EvalSettings,
  seed: number,
  options: FinalEvaluationOptions,
): Promise<Record<string, number>> {
  const valid = limit(splits.valid, settings.validSize);
  const test = limit(splits.test, settings.testSize);
  const { maxLen, batchSize, temperature } = settings;
  const bon = settings.bestOfN.length === 0 ? [] : limit(splits.valid, settings.bestOfNSize);
  const most = settings.bestOfN.length === 0 ? 1 : maxOf(settings.bestOfN);
  const part = (name: string, examples: readonly Example[], decode: "greedy" | "sample") => ({
    part: name,
    decode,
    n: 1,
    temperature,
    batchSize,
    examples,
  });
  const decoded = await decodeParts(
    { policy, tokenizer, reward },
    [
      part("valid_greedy", valid, "greedy"),
      part("valid_sample", valid, "sample"),
      part("test_greedy", test, "greedy"),
      // Best-of-N: max(N) samples per source; the policy's sampler fits floor(batchSize / n)
      // sources into each batch of `batchSize` rows itself.
      { ...part("bon", bon, "sample"), n: most },
    ],
    {
      maxLen,
      shardSources: settings.shardSources ?? DEFAULT_EVAL_SHARD_SOURCES,
    },
    seed,
    options.place ?? {},
  );
  const greedyValid = summarize(valid, decoded.valid_greedy);
  const sampledValid = summarize(valid, decoded.valid_sample);
  const kl = await sequenceKl(policy, options.bcPolicy, tokenizer, valid, {
    maxLen,
    batchSize,
    seed: seed + 4099,
  });
  const greedyTest = summarize(test, decoded.test_greedy);
  if (options.outputs !== undefined) {
    await writeOutputs(options.outputs, test, greedyTest.hypotheses);
  }
  return {
    "eval/valid_reward": greedyValid.reward,
    "eval/valid_reward_sample": sampledValid.reward,
    "eval/valid_kl_bc": kl,
    "eval/test_reward": greedyTest.reward,
    "eval/test_chrf": greedyTest.chrf,
    "eval/test_bleu": greedyTest.bleu,
    ...bestOfN(bon, settings.bestOfN, decoded.bon),
  };
}

/** Mean reward and corpus metrics of one output per example (NaN for no examples). */
function summarize(examples: readonly Example[], decoded: DecodedPart): PolicyEvaluation {
  const hypotheses = decoded.hypotheses.map((h) => h[0]);
  if (examples.length === 0) return { reward: NaN, chrf: NaN, bleu: NaN, hypotheses };
  const references = examples.map((e) => e.reference);
  return {
    reward: mean(decoded.scores),
    chrf: corpusChrf(hypotheses, references),
    bleu: corpusBleu(hypotheses, references),
    hypotheses,
  };
}

/**
 * A Monte-Carlo estimate of the sequence-level KL(pi || ref) in nats: one output y ~ pi per
 * example's source, sampled at temperature 1 without truncation (the policy's own
 * distribution, so the estimate is unbiased), and the mean over examples of
 * sum_t [log pi(y_t | y_<t, x) - log ref(y_t | y_<t, x)], both teacher-forced (dropout off).
 * An output cut off at `maxLen` counts its tokens without an end. NaN for no examples.
 */
export async function sequenceKl(
  policy: Policy,
  reference: Policy,
  tokenizer: Tokenizer,
  examples: readonly Example[],
  options: { maxLen: number; batchSize: number; seed: number },
): Promise<number> {
  if (examples.length === 0) return NaN;
  const sources = examples.map((e) => tokenizer.encode(e.source, "source"));
  const samples = await policy.sample(sources, {
    n: 1,
    temperature: 1,
    topK: 0,
    topP: 1,
    seed: options.seed,
    maxLen: options.maxLen,
    batchSize: options.batchSize,
  });
  const eos = policy.specials.eos;
  const pairs = samples.map((row, i) => {
    const tokens = row[0].tokens;
    // The batcher appends EOS itself; an output without one was cut off at maxLen.
    return tokens.at(-1) === eos
      ? { source: sources[i], target: tokens.slice(0, -1) }
      : { source: sources[i], target: tokens, truncated: true };
  });
  const own = await sequenceLogProbs(policy, pairs, options.batchSize);
  const ref = reference === policy
    ? own
    : await sequenceLogProbs(reference, pairs, options.batchSize);
  return mean(own.map((lp, i) => lp - ref[i]));
}

/** log p(target | source) of each pair under `policy` (teacher-forced, no dropout), batched. */
async function sequenceLogProbs(
  policy: Policy,
  pairs: readonly { source: number[]; target: number[]; truncated?: boolean }[],
  batchSize: number,
): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < pairs.length; i += batchSize) {
    const chunk = pairs.slice(i, i + batchSize);
    const sums = tf.tidy(() => {
      const batch = makeBatch(chunk, policy.specials);
      const logProbs = policy.tokenLogProbs(batch, { training: false });
      return tf.sum(tf.mul(logProbs, batch.targetMask), 1);
    });
    // data(), not dataSync(): a device backend (webgpu under Deno) reads only asynchronously.
    for (const s of await sums.data()) out.push(s);
    sums.dispose();
  }
  return out;
}

/**
 * The one count of distinct samples every algorithm reports as `train/distinct_samples`
 * (Table 1's "Distinct samples"): distinct (source, output) pairs *sampled from a policy
 * for training* over the whole run, each counted once however often it was drawn (in one
 * Grow step, across Grow steps, or across PPO rollout batches). References are not samples:
 * ReST's Grow sets add them, but they are not counted; BC samples nothing and counts 0.
 *
 * Pairs are kept as 53-bit hashes (two FNV-1a variants), so the count and a resumable state
 * ({@link DistinctSamples.hashes}) stay small; among 10^7 pairs the chance of any collision
 * (which would make the count one too small) is about 0.6%.
 */
export class DistinctSamples {
  #seen: Set<number>;

  /** A counter, optionally restored from {@link DistinctSamples.hashes}. */
  constructor(hashes: Iterable<number> = []) {
    this.#seen = new Set(hashes);
  }

  /** Counts the pair (source, output) if it has not been seen. */
  add(source: string, output: string): void {
    this.#seen.add(hash53(`${source}\u0000${output}`));
  }

  /** Number of distinct pairs seen. */
  get size(): number {
    return this.#seen.size;
  }

  /** The hashes of the pairs seen (for a resume state). */
  hashes(): number[] {
    return [...this.#seen];
  }
}

/**
 * Writes `source<TAB>reference<TAB>hypothesis` lines (tabs and newlines inside texts shown
 * as spaces), atomically, so a run's translations can be read next to its scores.
 */
async function writeOutputs(
  path: string,
  examples: readonly Example[],
  hypotheses: readonly string[],
): Promise<void> {
  const clean = (text: string) => text.replace(/[\t\r\n]+/g, " ");
  const lines = examples.map((e, i) =>
    `${clean(e.source)}\t${clean(e.reference)}\t${clean(hypotheses[i])}\n`
  );
  await writeFileAtomic(path, "source\treference\thypothesis\n" + lines.join(""));
}

/** The first `size` items (all of them when size is 0). */
export function limit<T>(items: readonly T[], size: number): T[] {
  return size > 0 ? items.slice(0, size) : [...items];
}

/**
 * Best-of-N (ReST paper, Section 5, Figure 6) from max(ns) scored samples per example
 * (`decoded`): for each N keeps the best-scored of the first N samples. Returns
 * `bon/valid_reward@N` (mean reward of the picks) and `bon/valid_chrf@N` (corpus chrF of the
 * picks against the references, so a reward model that is being gamed shows up as a reward
 * rising while chrF does not); nothing for no examples or no N.
 */
export function bestOfN(
  examples: readonly Example[],
  ns: readonly number[],
  decoded: DecodedPart,
): Record<string, number> {
  if (examples.length === 0 || ns.length === 0) return {};
  const most = maxOf(ns);
  const { hypotheses, scores } = decoded;
  const references = examples.map((e) => e.reference);
  const out: Record<string, number> = {};
  for (const n of [...ns].sort((a, b) => a - b)) {
    const picks: string[] = [];
    let total = 0;
    for (let i = 0; i < examples.length; i++) {
      let best = 0;
      for (let j = 1; j < n; j++) {
        if (scores[i * most + j] > scores[i * most + best]) best = j;
      }
      total += scores[i * most + best];
      picks.push(hypotheses[i][best]);
    }
    out[`bon/valid_reward@${n}`] = total / examples.length;
    out[`bon/valid_chrf@${n}`] = corpusChrf(picks, references);
  }
  return out;
}
