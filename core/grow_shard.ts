/**
 * One Grow shard, computed: N samples per source drawn from the policy (or the original
 * pairs), each row stored with its behaviour log-probabilities and scored by the reward. The
 * same function runs in the experiment's process (the `local` executor) and in a queue
 * worker (`deno task worker`), so a shard's rows do not depend on where it was computed.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { makeBatch } from "./batch.ts";
import { checkScores } from "./evaluate.ts";
import { profiler } from "./profile.ts";
import type { TokenPair } from "./train.ts";
import type {
  Generation,
  GrowRow,
  GrowSettings,
  GrowShard,
  Policy,
  RewardModel,
  Tokenizer,
} from "./types.ts";

/** What computing a shard needs: the policy being grown from, the tokenizer and the reward. */
export interface ShardTools {
  /** The policy (its current weights). */
  policy: Policy;
  /** The experiment's tokenizer. */
  tokenizer: Tokenizer;
  /** The run's reward. */
  reward: RewardModel;
}

/**
 * The rows of one Grow shard, in order. A `samples` shard draws `samplesPerSource` outputs
 * per source in decoding batches of `batchSize` sources, batch k seeded `shard.seed + k *
 * batchSize`; each sample keeps the sampler's behaviour log-probabilities when the policy
 * reports them (teacher-forced at the Grow temperature otherwise). A `references` shard
 * scores the original pairs, their log-probabilities teacher-forced, in chunks of 16
 * decoding batches (sorted by length inside, so they pad less).
 */
export async function growShard(
  tools: ShardTools,
  shard: GrowShard,
  settings: GrowSettings,
): Promise<GrowRow[]> {
  const { policy, tokenizer, reward } = tools;
  const rows: GrowRow[] = [];
  const chunkSize = Math.max(1, settings.batchSize);
  if (shard.kind === "references") {
    for (let start = 0; start < shard.examples.length; start += 16 * chunkSize) {
      const chunk = shard.examples.slice(start, start + 16 * chunkSize);
      const pairs = chunk.map((e) => ({
        source: tokenizer.encode(e.source, "source"),
        target: [...tokenizer.encode(e.reference, "target"), policy.specials.eos],
      }));
      const pending = chunk.map((e, i) => ({
        source: e.source,
        hypothesis: e.reference,
        reference: e.reference,
        tokens: pairs[i].target,
        origin: "reference" as const,
        temperature: settings.temperature,
      }));
      await scoreRows(policy, pairs, pending, settings, reward, rows);
    }
    return rows;
  }
  for (let start = 0; start < shard.examples.length; start += chunkSize) {
    const chunk = shard.examples.slice(start, start + chunkSize);
    const encoded = chunk.map((e) => tokenizer.encode(e.source, "source"));
    const samples = await profiler.phase("grow/sample", () => {
      profiler.count(chunk.length * settings.samplesPerSource, "samples");
      return policy.sample(encoded, {
        n: settings.samplesPerSource,
        temperature: settings.temperature,
        topK: settings.topK,
        topP: settings.topP,
        maxLen: settings.maxLen,
        batchSize: settings.batchSize,
        seed: shard.seed + start,
        behaviourLogProbs: true,
      });
    });
    const pairs: TokenPair[] = [];
    const pending: Omit<GrowRow, "reward" | "logProbs">[] = [];
    // The sampler's own log mu(a_t) where the policy reports them (no teacher-forced pass).
    const known: (number[] | undefined)[] = [];
    for (let i = 0; i < chunk.length; i++) {
      for (const s of samples[i]) {
        pairs.push({ source: encoded[i], target: s.tokens });
        known.push(behaviourOf(s));
        pending.push({
          source: chunk[i].source,
          hypothesis: tokenizer.decode(s.tokens, "target"),
          reference: chunk[i].reference,
          tokens: s.tokens,
          origin: "sample",
          temperature: settings.temperature,
        });
      }
    }
    await scoreRows(policy, pairs, pending, settings, reward, rows, known);
  }
  return rows;
}

/**
 * The batcher's view of stored output tokens: it appends EOS itself, so a final EOS is
 * dropped; outputs without one were cut off at the length limit and are marked `truncated`.
 */
export function rowTarget(source: number[], tokens: readonly number[], eos: number): TokenPair {
  return tokens.at(-1) === eos
    ? { source, target: tokens.slice(0, -1) }
    : { source, target: [...tokens], truncated: true };
}

/**
 * Per-token log-probabilities of given outputs (no gradient), batched: log softmax(logits /
 * T)[a_t], the distribution a sample at temperature T was drawn from (T = 1: the policy's own).
 */
export async function scoreTokens(
  policy: Policy,
  pairs: readonly TokenPair[],
  batchSize: number,
  temperature = 1,
): Promise<number[][]> {
  // Batches of similar lengths pad less; results go back in the input order.
  const order = pairs.map((_, i) => i).sort((x, y) =>
    pairs[x].target.length - pairs[y].target.length ||
    pairs[x].source.length - pairs[y].source.length
  );
  const out: number[][] = new Array(pairs.length);
  for (let i = 0; i < order.length; i += batchSize) {
    const chunk = order.slice(i, i + batchSize);
    const trimmed = chunk.map((k) =>
      rowTarget(pairs[k].source, pairs[k].target, policy.specials.eos)
    );
    const logProbs = tf.tidy(() =>
      policy.tokenLogProbs(makeBatch(trimmed, policy.specials), { training: false, temperature })
    );
    // array(), not arraySync(): a device backend (webgpu under Deno) reads only asynchronously.
    const values = await logProbs.array() as number[][];
    logProbs.dispose();
    chunk.forEach((k, j) => out[k] = values[j].slice(0, pairs[k].target.length));
  }
  return out;
}

/** A sample's behaviour log-probabilities when the policy reported them, one per token. */
function behaviourOf(sample: Generation): number[] | undefined {
  const lp = sample.behaviourLogProbs;
  return lp !== undefined && lp.length === sample.tokens.length ? lp : undefined;
}

/**
 * Completes rows with their behaviour log-probabilities and rewards, appending them to
 * `rows`. Row i takes `known[i]` when given (the sampler's own); the others are scored by
 * teacher forcing at the Grow temperature.
 */
async function scoreRows(
  policy: Policy,
  pairs: readonly TokenPair[],
  pending: readonly Omit<GrowRow, "reward" | "logProbs">[],
  settings: GrowSettings,
  reward: RewardModel,
  rows: GrowRow[],
  known: readonly (number[] | undefined)[] = [],
): Promise<void> {
  const logProbs = pairs.map((_, i) => known[i]);
  const missing = logProbs.flatMap((lp, i) => lp === undefined ? [i] : []);
  if (missing.length > 0) {
    const scored = await profiler.phase("grow/logprobs", () => {
      profiler.count(missing.length, "rows");
      return scoreTokens(
        policy,
        missing.map((i) => pairs[i]),
        settings.batchSize,
        settings.temperature,
      );
    });
    missing.forEach((i, k) => logProbs[i] = scored[k]);
  }
  const rewards = await profiler.phase("grow/reward", () => {
    profiler.count(pending.length, "rows");
    return reward.score(pending);
  });
  checkScores(rewards, pending.length);
  for (let i = 0; i < pending.length; i++) {
    rows.push({ ...pending[i], logProbs: logProbs[i]!, reward: rewards[i] });
  }
}
