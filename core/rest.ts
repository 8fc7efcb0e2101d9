/**
 * ReST (Gulcehre et al. 2023, Algorithm 1): Grow and Improve, read top to bottom.
 *
 * - **Grow** (`grow`): for every training source, sample N outputs from the current policy,
 *   score each with the reward model, and store `{source, hypothesis, reference, reward,
 *   tokens, behaviour log-probs, origin}` in `grow_<g>.jsonl`, together with the original
 *   pairs (scored) unless `includeOriginal` is false. The file is written once and never
 *   changed.
 * - **Improve** (`improve`): keep rows with reward strictly above tau_i, then fine-tune the
 *   *current* weights with the loss plugin at a learning rate that decays per Improve step,
 *   evaluating the validation reward periodically and keeping the best checkpoint.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { dirname, join } from "node:path";
import { UserError } from "./errors.ts";
import { sampleInOrder } from "./random.ts";
import { copyGrowFile, readGrowFile, writeGrowFile } from "./grow_file.ts";
import { makeBatch } from "./batch.ts";
import { evaluatePolicy, mean } from "./evaluate.ts";
import type { GrowRow, Loss, LossInput, Policy } from "./policy.ts";
import { exists } from "./run.ts";
import { type TokenPair, trainLoop } from "./train.ts";
import type {
  Example,
  MetricsLog,
  Progress,
  RewardModel,
  ThresholdSchedule,
  Tokenizer,
} from "./types.ts";
import { checkScores } from "./evaluate.ts";
import type { Schedule } from "./optim.ts";

export { readGrowFile, readLines, writeGrowFile } from "./grow_file.ts";

/** Settings of the Grow step. */
export interface GrowSettings {
  /** Samples per training source (N). */
  samplesPerSource: number;
  /** Sampling temperature (the paper uses 0.8). */
  temperature: number;
  /** Top-k truncation (0: off). */
  topK: number;
  /** Nucleus truncation (1: off). */
  topP: number;
  /** Maximum output tokens. */
  maxLen: number;
  /** Sources per decoding batch. */
  batchSize: number;
  /** Add the original (source, reference) pairs, scored, to the Grow set. */
  includeOriginal: boolean;
  /** Training sources used for Grow (0: all). */
  sources: number;
}

/** Settings of the Improve steps. */
export interface ImproveSettings {
  /** Optimizer steps per Improve step. */
  steps: number;
  /** Rows per batch. */
  batchSize: number;
  /** Learning rate of Improve step 1. */
  learningRate: number;
  /** Multiplier of the learning rate from one Improve step to the next. */
  learningRateDecay: number;
  /** Warm-up steps of each Improve step. */
  warmupSteps: number;
  /** Decay within an Improve step. */
  schedule: Schedule;
  /** Global gradient-norm clip (0: off). */
  clipNorm: number;
  /** Evaluate on validation every this many steps (0: at the end of each Improve step). */
  evalEvery: number;
  /** Validation pairs for evaluation (0: all). */
  evalSize: number;
}

/** The pair of a Grow row as token ids, with the row. */
export interface RowPair extends TokenPair {
  /** The row. */
  row: GrowRow;
}

/** Everything Grow and Improve need besides the policy. */
export interface RestContext {
  /** The run folder (Grow files and checkpoints). */
  dir: string;
  /** The tokenizer. */
  tokenizer: Tokenizer;
  /** The reward model. */
  reward: RewardModel;
  /** Metrics log. */
  metrics: MetricsLog;
  /** Progress display. */
  progress(label: string, total: number, unit?: string): Progress;
  /** Log lines. */
  log(message: string): void;
}

/** Path of the Grow set of Grow step `g`. */
export function growPath(dir: string, g: number): string {
  return join(dir, `grow_${g}.jsonl`);
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

/** Per-token log-probabilities of given outputs under `policy` (no gradient), batched. */
export function scoreTokens(
  policy: Policy,
  pairs: readonly TokenPair[],
  batchSize: number,
): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < pairs.length; i += batchSize) {
    const chunk = pairs.slice(i, i + batchSize);
    const trimmed = chunk.map((p) => rowTarget(p.source, p.target, policy.specials.eos));
    const values = tf.tidy(() => {
      const batch = makeBatch(trimmed, policy.specials);
      return policy.tokenLogProbs(batch, { training: false }).arraySync() as number[][];
    });
    for (let j = 0; j < chunk.length; j++) {
      out.push(values[j].slice(0, chunk[j].target.length));
    }
  }
  return out;
}

/**
 * Grow step `g`: samples, scores and stores the Grow set. When the file already exists (a
 * resumed run) it is read back instead: a finished Grow set is never recomputed. `shared`,
 * when given, is an experiment-level copy keyed by everything the set depends on: an
 * existing one is copied instead of sampling again, a new set is copied there.
 */
export async function grow(
  policy: Policy,
  sources: readonly Example[],
  settings: GrowSettings,
  ctx: RestContext,
  g: number,
  seed: number,
  shared?: string,
): Promise<GrowRow[]> {
  const path = growPath(ctx.dir, g);
  if (await exists(path)) {
    const started = performance.now();
    const rows = await readGrowFile(path);
    ctx.log(`grow ${g}: reusing ${path} (${rows.length} rows)`);
    await logGrow(rows, ctx, g, started);
    return rows;
  }
  if (shared !== undefined && await exists(shared)) {
    // Another run of this experiment already grew this exact set (same BC policy, reward,
    // settings and seed): check it, then copy it into this run's folder.
    const started = performance.now();
    const rows = await readGrowFile(shared);
    await copyGrowFile(shared, path);
    ctx.log(`grow ${g}: copied the identical Grow set ${shared} (${rows.length} rows)`);
    await logGrow(rows, ctx, g, started);
    return rows;
  }
  const started = performance.now();
  // A seeded uniform sample when the budget is below the training split (never its first
  // rows: a corpus in file order would be grown from its first files only).
  const examples = sampleInOrder(sources, settings.sources, seed);
  await checkDiskSpace(ctx.dir, estimateGrowBytes(examples, settings), `Grow step ${g}`);
  const rows: GrowRow[] = [];
  const chunkSize = Math.max(1, settings.batchSize);
  const progress = ctx.progress(`grow ${g}`, examples.length, "sources");
  for (let start = 0; start < examples.length; start += chunkSize) {
    const chunk = examples.slice(start, start + chunkSize);
    const encoded = chunk.map((e) => ctx.tokenizer.encode(e.source, "source"));
    const samples = await policy.sample(encoded, {
      n: settings.samplesPerSource,
      temperature: settings.temperature,
      topK: settings.topK,
      topP: settings.topP,
      maxLen: settings.maxLen,
      batchSize: settings.batchSize,
      seed: seed + start,
    });
    const pending: Omit<GrowRow, "reward">[] = [];
    for (let i = 0; i < chunk.length; i++) {
      for (const s of samples[i]) {
        pending.push({
          source: chunk[i].source,
          hypothesis: ctx.tokenizer.decode(s.tokens, "target"),
          reference: chunk[i].reference,
          tokens: s.tokens,
          logProbs: s.logProbs,
          origin: "sample",
        });
      }
    }
    if (settings.includeOriginal) {
      const pairs = chunk.map((e, i) => ({
        source: encoded[i],
        target: [...ctx.tokenizer.encode(e.reference, "target"), policy.specials.eos],
      }));
      const logProbs = scoreTokens(policy, pairs, settings.batchSize);
      for (let i = 0; i < chunk.length; i++) {
        pending.push({
          source: chunk[i].source,
          hypothesis: chunk[i].reference,
          reference: chunk[i].reference,
          tokens: pairs[i].target,
          logProbs: logProbs[i],
          origin: "reference",
        });
      }
    }
    const rewards = await ctx.reward.score(pending);
    checkScores(rewards, pending.length);
    for (let i = 0; i < pending.length; i++) rows.push({ ...pending[i], reward: rewards[i] });
    progress.tick(chunk.length);
  }
  progress.done();
  await writeGrowFile(path, rows);
  if (shared !== undefined) {
    await Deno.mkdir(dirname(shared), { recursive: true });
    await copyGrowFile(path, shared);
  }
  await logGrow(rows, ctx, g, started);
  return rows;
}

async function logGrow(
  rows: readonly GrowRow[],
  ctx: RestContext,
  g: number,
  started: number,
): Promise<void> {
  const sampleRows = rows.filter((r) => r.origin === "sample");
  await ctx.metrics.log({
    "grow/rows": rows.length,
    "grow/sample_rows": sampleRows.length,
    "grow/mean_reward": mean(rows.map((r) => r.reward)),
    "grow/mean_sample_reward": mean(sampleRows.map((r) => r.reward)),
    "grow/distinct_samples": distinctCount(sampleRows),
    "grow/seconds": (performance.now() - started) / 1000,
  }, g);
  ctx.log(
    `grow ${g}: ${rows.length} rows, mean reward ${
      (100 * mean(rows.map((r) => r.reward))).toFixed(2)
    }`,
  );
}

/**
 * A generous estimate of a Grow file's size: per row, the source and reference text twice
 * over (JSON escaping, the hypothesis), and ~24 bytes per token id and log-probability.
 */
export function estimateGrowBytes(examples: readonly Example[], settings: GrowSettings): number {
  let text = 0;
  for (const e of examples) text += e.source.length + 2 * e.reference.length;
  const perSource = settings.samplesPerSource + (settings.includeOriginal ? 1 : 0);
  const tokens = Math.min(settings.maxLen, 64) * 24;
  return Math.ceil(perSource * (2 * text + examples.length * (tokens + 160)));
}

/**
 * Refuses to start work that needs `bytes` more on the file system of `dir` than is free
 * (with a 10 % margin), naming both figures.
 *
 * @throws {UserError} when free space is short.
 */
export async function checkDiskSpace(dir: string, bytes: number, what: string): Promise<void> {
  let free: number;
  try {
    const { statfsSync } = await import("node:fs");
    const stats = statfsSync(dir);
    free = Number(stats.bavail) * Number(stats.bsize);
  } catch {
    return; // No way to know (platform or permissions): do not block the run.
  }
  if (free < bytes * 1.1) {
    const mb = (n: number) => `${(n / 2 ** 20).toFixed(0)} MB`;
    throw new UserError(
      `${what} needs about ${mb(bytes)} of disk in ${dir} but only ${mb(free)} is free; ` +
        `free some space or write elsewhere with --out`,
    );
  }
}

/** Number of distinct (source, hypothesis) pairs. */
export function distinctCount(rows: readonly GrowRow[]): number {
  return new Set(rows.map((r) => `${r.source}\u0000${r.hypothesis}`)).size;
}

/** Rewards grouped by source. */
export function rewardsBySource(rows: readonly GrowRow[]): Map<string, number[]> {
  const map = new Map<string, number[]>();
  for (const r of rows) {
    const list = map.get(r.source);
    if (list === undefined) map.set(r.source, [r.reward]);
    else list.push(r.reward);
  }
  return map;
}

/**
 * Keeps rows whose reward is strictly above the threshold (a number, or a per-source map;
 * sources missing from the map are dropped).
 */
export function filterRows(rows: readonly GrowRow[], tau: number | Map<string, number>): GrowRow[] {
  if (typeof tau === "number") return rows.filter((r) => r.reward > tau);
  return rows.filter((r) => {
    const t = tau.get(r.source);
    return t !== undefined && r.reward > t;
  });
}

/** Builds the loss input of a batch of Grow rows (inside the gradient tape). */
export function lossInput(
  batch: LossInput["batch"],
  items: readonly RowPair[],
  sourceMeans: ReadonlyMap<string, number>,
): LossInput {
  const t = batch.targetOut.shape[1];
  const behaviour = new Float32Array(items.length * t);
  for (let i = 0; i < items.length; i++) {
    const lp = items[i].row.logProbs;
    behaviour.set(lp.slice(0, t), i * t);
  }
  return {
    batch,
    rows: items.map((item) => item.row),
    rewards: tf.tensor1d(items.map((item) => item.row.reward)),
    behaviourLogProbs: tf.tensor2d(behaviour, [items.length, t]),
    sourceMeanRewards: tf.tensor1d(items.map((item) => sourceMeans.get(item.row.source) ?? 0)),
  };
}

/** The result of one Improve step. */
export interface ImproveResult {
  /** Threshold used (mean over sources for per-source thresholds). */
  tau: number;
  /** Rows kept by the filter. */
  kept: number;
  /** Best validation reward reached in this step. */
  validReward: number;
  /** Optimizer steps taken. */
  steps: number;
}

/**
 * Improve step `i`: filters the Grow rows by tau_i and fine-tunes the current weights with
 * `loss`. The policy ends with the best weights seen in this step (by validation reward).
 */
export async function improve(
  policy: Policy,
  bcPolicy: Policy,
  rows: readonly GrowRow[],
  loss: Loss,
  threshold: ThresholdSchedule,
  valid: readonly Example[],
  settings: ImproveSettings & { maxLen: number; decodeBatchSize: number },
  ctx: RestContext,
  position: {
    grow: number;
    improve: number;
    improveSteps: number;
    /** 1-based index of this Improve step over the whole run. */
    index: number;
    /** Optimizer steps taken before this Improve step (the metrics' step axis). */
    stepOffset: number;
  },
  seed: number,
): Promise<ImproveResult> {
  const started = performance.now();
  const bySource = rewardsBySource(rows);
  const tau = threshold.threshold({
    grow: position.grow,
    improve: position.improve,
    improveSteps: position.improveSteps,
    rewards: rows.map((r) => r.reward),
    bySource,
  });
  const kept = filterRows(rows, tau);
  const tauValue = typeof tau === "number" ? tau : mean([...tau.values()]);
  if (kept.length === 0) {
    ctx.log(`improve ${position.grow}.${position.improve}: no row has reward > tau; step skipped`);
    await ctx.metrics.log(
      { "improve/index": position.index, "improve/tau": tauValue, "improve/rows_kept": 0 },
      position.stepOffset,
    );
    return { tau: tauValue, kept: 0, validReward: NaN, steps: 0 };
  }
  const sourceMeans = new Map([...bySource].map(([s, v]) => [s, mean(v)]));
  const pairs: RowPair[] = kept.map((row) => ({
    ...rowTarget(ctx.tokenizer.encode(row.source, "source"), row.tokens, policy.specials.eos),
    row,
  }));
  loss.prepare({
    policy,
    bcPolicy,
    improve: position.improve,
    improveSteps: position.improveSteps,
  });
  const lr = settings.learningRate * settings.learningRateDecay ** (position.improve - 1);
  const diagnostics = new Map<string, number[]>();
  const record = (name: string, value: number) => {
    const list = diagnostics.get(name);
    if (list === undefined) diagnostics.set(name, [value]);
    else list.push(value);
  };
  let best: { score: number; state: ReturnType<Policy["save"]> } | undefined;
  const progress = ctx.progress(
    `improve ${position.grow}.${position.improve}`,
    settings.steps,
    "steps",
  );
  const result = await trainLoop(policy, pairs, {
    steps: settings.steps,
    batchSize: settings.batchSize,
    learningRate: lr,
    warmupSteps: settings.warmupSteps,
    schedule: settings.schedule,
    clipNorm: settings.clipNorm,
    evalEvery: settings.evalEvery,
    patience: 0,
  }, {
    prefix: "improve",
    metrics: ctx.metrics,
    progress,
    log: ctx.log,
    variables: loss.variables,
    stepOffset: position.stepOffset,
    afterStep: (step) => loss.afterStep(step),
    loss: (batch, items) => loss.compute(lossInput(batch, items, sourceMeans), record),
    evaluate: async () => {
      const evaluation = await evaluatePolicy(policy, ctx.tokenizer, valid, ctx.reward, {
        decode: { mode: "greedy" },
        maxLen: settings.maxLen,
        batchSize: settings.decodeBatchSize,
      });
      return { score: evaluation.reward, metrics: { "improve/valid_reward": evaluation.reward } };
    },
    onBest: (_step, score) => {
      best = { score, state: policy.save() };
      return Promise.resolve();
    },
  }, seed);
  progress.done();
  if (best !== undefined) policy.load(best.state);
  const summary: Record<string, number> = {
    "improve/index": position.index,
    "improve/grow": position.grow,
    "improve/tau": tauValue,
    "improve/rows_kept": kept.length,
    "improve/mean_reward_kept": mean(kept.map((r) => r.reward)),
    "improve/valid_reward": result.bestScore,
    "improve/steps": result.steps,
    "improve/learning_rate": lr,
    "improve/seconds": (performance.now() - started) / 1000,
  };
  for (const [name, values] of diagnostics) summary[`improve/${name}`] = mean(values);
  await ctx.metrics.log(summary, position.stepOffset + result.steps);
  ctx.log(
    `improve ${position.grow}.${position.improve}: tau ${
      tauValue.toFixed(3)
    }, kept ${kept.length}/${rows.length} rows, ` +
      `validation reward ${(100 * result.bestScore).toFixed(2)}`,
  );
  return { tau: tauValue, kept: kept.length, validReward: result.bestScore, steps: result.steps };
}
