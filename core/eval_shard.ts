/**
 * Evaluation decoding in shards, like Grow: the parts of a final evaluation (greedy outputs on
 * validation and test, a sample per validation source, Best-of-N's samples) are cut into
 * shards of `shardSources` sources, each seeded by (run seed, part, shard index) alone, so the
 * outputs and their rewards are the same whichever executor computes them, with how many
 * workers and in which order. A part's sources are put in shards by length (the order a
 * length-bucketing decoder batches them in anyway), so shards pad no more than one call over
 * all of them would; results come back in the part's own order.
 *
 * @module
 */

import { DataError } from "./errors.ts";
import { hashText } from "./hash.ts";
import { savePolicy } from "./host_read.ts";
import { sha256Hex } from "./checkpoint.ts";
import { checkScores } from "./scores.ts";
import { Rng } from "./random.ts";
import { collectShards, inProcessExecutor, rowsChecksum } from "./shards.ts";
import type {
  EvalRow,
  EvalShard,
  EvalShardSettings,
  Example,
  Executor,
  Policy,
  RewardModel,
  ShardJob,
  Tokenizer,
  WorkerRecipe,
} from "./types.ts";

/** Sources per evaluation shard when the settings do not say. */
export const DEFAULT_EVAL_SHARD_SOURCES = 256;

/** One part of an evaluation: what is decoded, how, and for which examples. */
export interface EvalPart {
  /** Name of the part (part of every shard's seed), e.g. `valid_greedy`. */
  part: string;
  /** Greedy outputs or samples. */
  decode: "greedy" | "sample";
  /** Outputs per source (1 for greedy). */
  n: number;
  /** Sampling temperature (`sample`). */
  temperature: number;
  /** Sources per decoding batch. */
  batchSize: number;
  /** The examples evaluated. */
  examples: readonly Example[];
}

/** A part's outputs: `hypotheses[i][j]` is output j of example i, its reward `scores[i * n + j]`. */
export interface DecodedPart {
  /** Outputs per example, in the part's example order. */
  hypotheses: string[][];
  /** Rewards, example-major. */
  scores: number[];
}

/** Where an evaluation's shards are computed, and how a remote worker rebuilds them. */
export interface EvalPlace {
  /** The executor (absent: in this process). */
  executor?: Executor;
  /** How a remote worker rebuilds the run's plugins (absent: in this process only). */
  recipe?: WorkerRecipe;
}

/** The seed of shard `index` of part `part` of an evaluation seeded `seed`. */
export function evalShardSeed(seed: number, part: string, index: number): number {
  return new Rng(seed).fork(`eval/${part}/${index}`).nextUint32();
}

/**
 * Cuts the parts into shards of at most `shardSources` sources, each part's sources taken in
 * order of their encoded length (ties by position). Returns the shards and, per part, the
 * example positions each of its shards holds.
 */
export function planEvalShards(
  parts: readonly EvalPart[],
  tokenizer: Tokenizer,
  shardSources: number,
  seed: number,
): { shards: EvalShard[]; positions: number[][] } {
  const size = Math.max(1, shardSources);
  const shards: EvalShard[] = [];
  const positions: number[][] = [];
  for (const p of parts) {
    const lengths = p.examples.map((e) => tokenizer.encode(e.source, "source").length);
    const order = lengths.map((_, i) => i).sort((a, b) => lengths[a] - lengths[b] || a - b);
    for (let start = 0, k = 0; start < order.length; start += size, k++) {
      const slice = order.slice(start, start + size);
      positions.push(slice);
      shards.push({
        index: shards.length,
        part: p.part,
        decode: p.decode,
        n: p.decode === "greedy" ? 1 : p.n,
        temperature: p.temperature,
        batchSize: p.batchSize,
        examples: slice.map((i) => p.examples[i]),
        seed: evalShardSeed(seed, p.part, k),
      });
    }
  }
  return { shards, positions };
}

/** The scored outputs of one evaluation shard: `n` per source, source-major. */
export async function evalShard(
  tools: { policy: Policy; tokenizer: Tokenizer; reward: RewardModel },
  shard: EvalShard,
  settings: EvalShardSettings,
): Promise<EvalRow[]> {
  const { policy, tokenizer, reward } = tools;
  const sources = shard.examples.map((e) => tokenizer.encode(e.source, "source"));
  const options = { maxLen: settings.maxLen, batchSize: shard.batchSize };
  const outputs = shard.decode === "greedy"
    ? (await policy.greedy(sources, options)).map((g) => [g])
    : await policy.sample(sources, {
      ...options,
      n: shard.n,
      temperature: shard.temperature,
      topK: 0,
      topP: 1,
      seed: shard.seed,
    });
  const rows = shard.examples.flatMap((e, i) =>
    outputs[i].map((g) => ({
      source: e.source,
      hypothesis: tokenizer.decode(g.tokens, "target"),
      reference: e.reference,
    }))
  );
  const scores = await reward.score(rows);
  checkScores(scores, rows.length);
  return rows.map((r, i) => ({ source: r.source, hypothesis: r.hypothesis, reward: scores[i] }));
}

/**
 * Checks an evaluation shard's rows: `n` per source, in the shard's source order, each a
 * hypothesis with a reward in [0, 1], matching the worker's checksum when given.
 *
 * @throws {DataError} saying what is wrong and where the rows came from (`from`).
 */
export function checkEvalRows(
  shard: EvalShard,
  rows: readonly EvalRow[],
  from: string,
  checksum?: string,
): void {
  const what = `evaluation shard ${shard.index} (${shard.part}) from ${from}`;
  const expected = shard.examples.length * shard.n;
  if (!Array.isArray(rows) || rows.length !== expected) {
    throw new DataError(
      `${what}: ${Array.isArray(rows) ? rows.length : "no"} rows, expected ${expected}`,
    );
  }
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i];
    const source = shard.examples[Math.floor(i / shard.n)].source;
    if (
      row?.source !== source || typeof row.hypothesis !== "string" ||
      !(typeof row.reward === "number" && row.reward >= 0 && row.reward <= 1)
    ) {
      throw new DataError(`${what}: row ${i} is not a scored output of source ${i / shard.n | 0}`);
    }
  }
  if (checksum !== undefined && rowsChecksum(rows) !== checksum) {
    throw new DataError(`${what}: the rows do not match their checksum (damaged in transit)`);
  }
}

/**
 * Decodes and scores every part with `place.executor` (in this process when absent) and
 * returns each part's outputs in its own example order, keyed by part name.
 */
export async function decodeParts(
  tools: { policy: Policy; tokenizer: Tokenizer; reward: RewardModel },
  parts: readonly EvalPart[],
  settings: EvalShardSettings & { shardSources: number },
  seed: number,
  place: EvalPlace,
): Promise<Record<string, DecodedPart>> {
  const { shards, positions } = planEvalShards(parts, tools.tokenizer, settings.shardSources, seed);
  const shardSettings: EvalShardSettings = { maxLen: settings.maxLen };
  const executor = place.executor ?? inProcessExecutor;
  const job: ShardJob<"evaluate"> = {
    task: "evaluate",
    key: "evaluate",
    label: "evaluation",
    settings: shardSettings,
    shards,
    compute: (shard) => evalShard(tools, shard, shardSettings),
    check: checkEvalRows,
  };
  if (executor !== inProcessExecutor && place.recipe !== undefined) {
    // Only for another process: the weights as an artefact, and a key naming this very
    // evaluation (so a restarted coordinator collects what was computed meanwhile).
    const state = await savePolicy(tools.policy);
    const weights = new Uint8Array(state.data.buffer, state.data.byteOffset, state.data.byteLength);
    job.key = hashText(JSON.stringify({
      evaluate: parts.map((p) => [p.part, p.decode, p.n, p.temperature, p.batchSize]),
      seed,
      settings,
      weights: await sha256Hex(weights),
      sections: place.recipe.sections,
    }));
    const recipe = place.recipe;
    job.artefacts = () => ({ recipe, policy: state, tokenizer: tools.tokenizer.save() });
  }
  const results = await collectShards(executor, job);
  const out: Record<string, DecodedPart> = {};
  for (const p of parts) {
    out[p.part] = {
      hypotheses: p.examples.map(() => []),
      scores: new Array(p.examples.length * (p.decode === "greedy" ? 1 : p.n)),
    };
  }
  for (const shard of shards) {
    const decoded = out[shard.part];
    results[shard.index].forEach((row, k) => {
      const position = positions[shard.index][Math.floor(k / shard.n)];
      decoded.scores[position * shard.n + (k % shard.n)] = row.reward;
      decoded.hypotheses[position].push(row.hypothesis);
    });
  }
  return out;
}
