/**
 * ReST (Gulcehre et al. 2023, Algorithm 1), read top to bottom: {@link runRest} is the whole
 * algorithm, the `rest` plugin only its schema.
 *
 *     pi <- BC policy
 *     for g = 1..G:
 *       D_g <- Grow(pi): N samples per training source (temperature T), scored, plus the
 *              original dataset D (every training pair, scored like the samples)
 *       for i = 1..I:
 *         pi <- Improve(pi, {rows of D_g with reward > tau_i}), tau_i strictly increasing,
 *               keeping the best weights by reward on the selection split (the incoming
 *               weights included)
 *
 * - **Grow** ({@link grow}): writes `grow_<g>.jsonl` (with its record, core/grow_file.ts) once;
 *   a resumed run reads it back. Each row stores its tokens, the behaviour log-probabilities
 *   log mu(a_t) of the distribution it was drawn from (softmax of logits / T, truncated by
 *   top-k / top-p; the sampler's own `Generation.behaviourLogProbs` when the policy reports
 *   them, teacher-forced otherwise and for the references) and T.
 * - **Improve** ({@link improve}): filters by tau from the threshold schedule (references pass
 *   through the filter, as in the paper, unless `references: "keep"`), then fine-tunes the
 *   *current* weights for `epochs` passes over the kept rows (capped at `steps`) at a learning
 *   rate that starts below BC's final one and decays with every Improve step of the run; the
 *   rows are held compactly ({@link GrowPool}).
 * - **Reward update** (`rewardUpdate`, off by default; core/reward_update.ts): between a Grow
 *   step and its Improve steps, the reward is fine-tuned on a chrF-labelled slice of the Grow
 *   set, and Improve filters and selects with the new version on the rest of the set, re-scored.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { dirname, join } from "node:path";
import { UserError } from "./errors.ts";
import { savePolicy } from "./host_read.ts";
import { sampleInOrder } from "./random.ts";
import { maxOf, mean } from "./append.ts";
import { copyGrowFile, readGrowFile, writeGrowFile } from "./grow_file.ts";
import { GrowPool } from "./grow_pool.ts";
import { DistinctSamples, limit, selectionReward } from "./evaluate.ts";
import { finishRun } from "./finish.ts";
import { growShard, rowTarget } from "./grow_shard.ts";
import { hashText } from "./hash.ts";
import { sha256Hex } from "./checkpoint.ts";
import { DiagnosticsSum, inProcessExecutor, planShards, runShards, shardFolder } from "./shards.ts";
import { exists, prefixed } from "./run.ts";
import { type TokenPair, trainLoop } from "./train.ts";
import type {
  BcSettings,
  EvalSettings,
  Example,
  Executor,
  GrowRow,
  GrowSettings,
  GrowShard,
  ImproveSettings,
  Loss,
  LossInput,
  MetricsLog,
  Policy,
  Progress,
  RewardModel,
  RunContext,
  RunSummary,
  ShardJob,
  ThresholdDecision,
  ThresholdSchedule,
  Tokenizer,
  WorkerRecipe,
} from "./types.ts";
import { learningRate } from "./optim.ts";
import {
  assignExtras,
  checkMeta,
  type UnitCheckpoint,
  unitCheckpoint,
  type UnitState,
  unitStateError,
} from "./resume.ts";
import { profiler } from "./profile.ts";
import {
  type RewardUpdate,
  rewardUpdateOn,
  type RewardUpdateSettings,
  updateReward,
} from "./reward_update.ts";
import {
  lineageKey,
  loadSharedStep,
  recordingLog,
  saveSharedStep,
  sharedStepDir,
} from "./step_share.ts";

export { readGrowFile, writeGrowFile } from "./grow_file.ts";
export { GrowPool } from "./grow_pool.ts";
export { rowTarget, scoreTokens } from "./grow_shard.ts";

/** Config of the `rest` algorithm. */
export interface RestConfig {
  /** Grow steps G. */
  growSteps: number;
  /** Improve steps I per Grow step. */
  improveSteps: number;
  /** Grow settings. */
  grow: Omit<GrowSettings, "maxLen" | "batchSize">;
  /** Improve settings. */
  improve: ImproveSettings;
  /** Train each Improve step on every Grow set so far, not only the latest. */
  accumulate: boolean;
  /**
   * Fine-tune the reward between each Grow step and its Improve steps on a chrF-labelled
   * slice of the Grow set (core/reward_update.ts); absent or `fraction` 0: off.
   */
  rewardUpdate?: RewardUpdateSettings;
}

/** The pair of a Grow row as token ids, with the row's index in the pool. */
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
  /** BC's label smoothing, passed to the loss (default 0). */
  labelSmoothing?: number;
  /** The experiment's shared folder (Grow sets and Improve steps computed once). */
  sharedDir?: string;
  /** Where Grow shards are computed (absent: in this process). */
  executor?: Executor;
  /** How a remote worker rebuilds the run's plugins (absent: shards run locally only). */
  recipe?: WorkerRecipe;
}

/** Name of the run's resumable state (after each finished Grow or Improve step). */
const STATE = "rest_state";

/**
 * Runs ReST for one run: Algorithm 1 from the BC policy to the final evaluation, resumable
 * after every finished Grow and Improve step.
 */
export async function runRest(ctx: RunContext, config: RestConfig): Promise<RunSummary> {
  if (ctx.loss === undefined || ctx.threshold === undefined) {
    throw new UserError(`run ${ctx.run}: rest needs a loss and a threshold section`);
  }
  const loss = ctx.loss;
  const policy = await ctx.bcPolicy();
  const bcPolicy = await ctx.bcPolicy();
  const restCtx: RestContext = { ...ctx, labelSmoothing: ctx.bc.labelSmoothing };
  const growSettings: GrowSettings = {
    ...config.grow,
    maxLen: ctx.evaluation.maxLen,
    batchSize: ctx.evaluation.batchSize,
  };
  const improveSettings = {
    ...config.improve,
    learningRate: improveLearningRate(config.improve.learningRate, ctx.bc, ctx.log),
    evaluation: ctx.evaluation,
    selectionSeed: ctx.seed,
  };
  const select = limit(ctx.splits.select, config.improve.evalSize);
  // What an Improve step's outcome depends on among the settings (not, e.g., Best-of-N's).
  const { selectBy, selectSamples, temperature, maxLen, batchSize } = ctx.evaluation;
  const stepSettings = {
    ...improveSettings,
    evaluation: { selectBy, selectSamples, temperature, maxLen, batchSize },
  };
  const checkpoint = restCheckpoint(ctx, config, policy, bcPolicy, loss);
  // A fresh run starts from the BC policy, whose lineage is everything upstream.
  const state = await checkpoint.restore() ??
    { done: { grow: 0, index: 0 }, steps: [], lineage: ctx.fingerprint };
  const stepsTaken = () => state.steps.reduce((a, b) => a + b, 0);
  const pool = new GrowPool();
  const sampled = new DistinctSamples();
  let index = 0;
  // With rewardUpdate: the latest reward version, and its lineage (null: the base reward).
  let updated: RewardUpdate | undefined;
  let rewardLineage: string | null | undefined = null;
  try {
    for (let g = 1; g <= config.growSteps; g++) {
      const growSeed = ctx.seed * 1000 + g;
      const growKey = state.lineage === undefined
        ? undefined
        : lineageKey([state.lineage, "grow", growSettings, growSeed]);
      const grown = g <= state.done.grow ? await readGrowFile(growPath(ctx.dir, g)) : await grow(
        policy,
        ctx.splits.train,
        growSettings,
        restCtx,
        g,
        growSeed,
        growKey === undefined ? undefined : sharedGrowPath(ctx.sharedDir, growKey),
      );
      // Improve filters the Grow set, or with rewardUpdate the derived set it re-scored.
      let rows = grown;
      let setKey = growKey;
      let improveCtx = restCtx;
      if (rewardUpdateOn(config.rewardUpdate)) {
        const settings = config.rewardUpdate!;
        const latest = updated?.adaptation.reward ?? ctx.reward;
        const quiet = g <= state.done.grow; // a resumed run logged this update already
        const next = await updateReward(latest, grown, settings, restCtx, g, growSeed, quiet);
        updated?.adaptation.dispose();
        updated = next;
        rows = next.rows;
        rewardLineage = growKey === undefined || rewardLineage === undefined
          ? undefined
          : lineageKey([rewardLineage, growKey, "reward_update", settings, growSeed]);
        setKey = rewardLineage;
        improveCtx = { ...restCtx, reward: next.adaptation.reward };
      }
      const accumulated = config.accumulate && g > 1;
      state.poolKey = setKey === undefined || (accumulated && state.poolKey === undefined)
        ? undefined
        : accumulated
        ? lineageKey([state.poolKey, setKey])
        : setKey;
      if (g > state.done.grow) {
        state.done = { grow: g, index };
        await checkpoint.save(state);
      }
      if (!config.accumulate) pool.clear();
      pool.addAll(rows);
      for (const r of grown) if (r.origin === "sample") sampled.add(r.source, r.hypothesis);
      for (let i = 1; i <= config.improveSteps; i++) {
        index++;
        if (index <= state.done.index) continue;
        const { lineage, poolKey } = state;
        const stepKey = lineage === undefined || poolKey === undefined || ctx.lossKey === undefined
          ? undefined
          : lineageKey([lineage, poolKey, ctx.lossKey, stepSettings, g, i, index, ctx.seed]);
        const result = await improve(
          policy,
          bcPolicy,
          pool,
          loss,
          ctx.threshold,
          select,
          improveSettings,
          improveCtx,
          {
            grow: g,
            improve: i,
            improveSteps: config.improveSteps,
            index,
            stepOffset: stepsTaken(),
            lineage: stepKey,
          },
          ctx.seed * 1000 + index,
        );
        state.lineage = result.lineage;
        state.steps.push(result.steps);
        state.done = { grow: g, index };
        await checkpoint.save(state);
      }
    }
    const gradientSteps = stepsTaken();
    return await finishRun(ctx, policy, bcPolicy, {
      "train/distinct_samples": sampled.size,
      "train/gradient_steps": gradientSteps,
      "train/grow_mean_reward": pool.size > 0 ? mean(Array.from(pool.rewards())) : NaN,
    }, gradientSteps);
  } finally {
    updated?.adaptation.dispose();
    policy.dispose();
    bcPolicy.dispose();
  }
}

/**
 * The learning rate of the run's first Improve step: the configured one, or (0) half of BC's
 * learning rate at its last step, so that Improve continues below where BC ended. An
 * explicit rate at or above BC's final one is allowed but reported.
 */
export function improveLearningRate(
  configured: number,
  bc: Pick<BcSettings, "learningRate" | "warmupSteps" | "steps" | "schedule">,
  log: (message: string) => void,
): number {
  const bcFinal = learningRate(Math.max(1, bc.steps), {
    peak: bc.learningRate,
    warmup: bc.warmupSteps,
    total: bc.steps,
    schedule: bc.schedule,
  });
  // A schedule that decays to 0 ends at 0: use its rate at 90 % of the way instead.
  const reference = bcFinal > 0 ? bcFinal : learningRate(Math.max(1, Math.floor(0.9 * bc.steps)), {
    peak: bc.learningRate,
    warmup: bc.warmupSteps,
    total: bc.steps,
    schedule: bc.schedule,
  });
  if (configured > 0) {
    if (configured >= reference) {
      log(
        `improve: learning rate ${configured} is not below BC's final ${
          reference.toPrecision(3)
        }: Improve will move further from BC than BC's last steps did`,
      );
    }
    return configured;
  }
  return 0.5 * reference;
}

/** Where a Grow set with lineage key `key` is shared by the runs that would grow it. */
function sharedGrowPath(sharedDir: string, key: string): string {
  return join(sharedDir, "grow", `grow-${key}.jsonl`);
}

/**
 * Where a ReST run stands, saved after every finished Grow and Improve step. The lineage keys
 * (core/step_share.ts) let runs of the experiment in the same state share the Grow sets and
 * Improve steps that follow (absent: unknown, nothing is shared).
 */
interface RestProgress {
  /** The last Grow step done and the Improve steps done (counted over the whole run). */
  done: { grow: number; index: number };
  /** Optimizer steps of every finished Improve step (their sum: the metrics' step axis). */
  steps: number[];
  /** Lineage key of the policy. */
  lineage?: string;
  /** Lineage key of the Grow pool. */
  poolKey?: string;
}

/**
 * The run's checkpoint (`rest_state`): the weights, the loss's variables and the
 * {@link RestProgress}. A resumed run's metrics.jsonl is rewound to the last finished step
 * and later steps run again, identically; one with no finished step starts over with an
 * empty log (its Grow files are reused).
 */
function restCheckpoint(
  ctx: RunContext,
  config: RestConfig,
  policy: Policy,
  bcPolicy: Policy,
  loss: Loss,
): UnitCheckpoint<RestProgress> {
  const place = {
    dir: ctx.dir,
    name: STATE,
    metricsPath: join(ctx.dir, "metrics.jsonl"),
    resume: ctx.resume,
  };
  return unitCheckpoint(place, policy, {
    encode: (state) => ({
      extras: loss.variables,
      meta: {
        lineage: state.lineage,
        poolKey: state.poolKey,
        done: state.done,
        steps: state.steps.slice(0, state.done.index),
        growSteps: config.growSteps,
        improveSteps: config.improveSteps,
      },
    }),
    decode(saved) {
      checkRestState(saved, config);
      // States saved before lineage keys existed (or with a malformed one) share nothing.
      const key = (v: unknown) =>
        typeof v === "string" && /^[0-9a-f]{1,64}$/.test(v) ? v : undefined;
      return {
        done: saved.meta.done as RestProgress["done"],
        steps: [...saved.meta.steps as number[]],
        lineage: key(saved.meta.lineage),
        poolKey: key(saved.meta.poolKey),
      };
    },
    load(saved) {
      if (saved.extras.length > 0 && loss.variables.length === 0) {
        // Losses create their own variables on their first prepare.
        loss.prepare({ policy, bcPolicy, improve: 1, improveSteps: config.improveSteps });
      }
      assignExtras(loss.variables, saved.extras, saved.file);
    },
    resumed: ({ done }) =>
      ctx.log(`resumed after Grow step ${done.grow}, Improve step ${done.index}`),
  });
}

/**
 * Checks a loaded ReST state's counters against the run's config.
 *
 * @throws {UserError} naming the state file otherwise.
 */
function checkRestState(saved: UnitState, config: RestConfig): void {
  checkMeta(saved, { "done.grow": "count", "done.index": "count", steps: "counts" });
  const done = saved.meta.done as { grow: number; index: number };
  const steps = saved.meta.steps as number[];
  const improveSteps = config.growSteps * config.improveSteps;
  const inGrow = done.index >= Math.max(0, done.grow - 1) * config.improveSteps &&
    done.index <= done.grow * config.improveSteps;
  if (done.grow > config.growSteps || done.index > improveSteps || !inGrow) {
    throw unitStateError(
      saved.file,
      `it records Grow step ${done.grow} and Improve step ${done.index} as done, but the run ` +
        `has ${config.growSteps} Grow and ${improveSteps} Improve steps`,
    );
  }
  if (steps.length !== done.index) {
    throw unitStateError(
      saved.file,
      `meta.steps has ${steps.length} entries, expected one per finished Improve step (${done.index})`,
    );
  }
}

/** Path of the Grow set of Grow step `g`. */
export function growPath(dir: string, g: number): string {
  return join(dir, `grow_${g}.jsonl`);
}

/**
 * Grow step `g`: D_g = N samples per source (from a seeded uniform sample of `sources` when
 * `settings.sources` is set) united with the original dataset D (every pair of `sources`,
 * unless `includeOriginal` is false), every row scored by the reward and stored with its
 * behaviour log-probabilities at the sampling temperature (for samples, the policy's
 * `behaviourLogProbs` when it reports them; otherwise, and for the references, teacher-forced
 * by {@link scoreTokens}). The work is cut into shards of `settings.shardSources` sources,
 * each seeded by (`seed`, shard index) alone and computed by `ctx.executor` (in this process
 * when absent); finished shards are saved in `grow_<g>.shards/` until the set is written, so
 * an interrupted step keeps them (core/shards.ts). When the file already exists (a resumed
 * run) it is read back instead. `shared`, when given, is an experiment-level copy keyed by everything the set
 * depends on: an existing one is copied instead of sampling again, a new set is copied there.
 *
 * @example Grow step 1 of a tiny transformer on a copy task
 * ```ts
 * import assert from "node:assert/strict";
 * import {
 *   builtinPlugins,
 *   createRegistries,
 *   grow,
 *   type PluginDeps,
 *   pluginDefaults,
 *   type PluginInstances,
 *   type PluginKind,
 *   type RestContext,
 * } from "@rest/framework";
 *
 * // Built-in plugins with their default configs (a manifest would name them), on the cpu backend.
 * const registries = createRegistries(builtinPlugins);
 * const deps: PluginDeps = {
 *   seed: 1,
 *   baseDir: ".",
 *   smoke: false,
 *   log: console.log,
 *   create: () => Promise.reject(new Error("no nested plugins here")),
 * };
 * async function make<K extends PluginKind>(
 *   kind: K,
 *   name: string,
 *   config: Record<string, unknown> = {},
 * ): Promise<PluginInstances[K]> {
 *   const plugin = registries[kind].get(name);
 *   return await plugin.create({ ...pluginDefaults(plugin), ...config }, deps);
 * }
 * await (await make("backend", "cpu")).init();
 *
 * // A copy task, a tokenizer trained on it and a tiny transformer policy.
 * const words = ["abc", "bca", "cab", "acb", "bac", "cba"];
 * const pairs = words.map((w) => ({ source: w, reference: w }));
 * const tokenizer = await make("tokenizer", "bpe", { vocabSize: 300 });
 * tokenizer.train({ sources: words, targets: words });
 * const model = { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1 };
 * const policy = (await make("model", "transformer", model)).build({
 *   sourceVocab: tokenizer.vocabSize("source"),
 *   targetVocab: tokenizer.vocabSize("target"),
 *   specials: tokenizer.specials,
 *   valueHead: false,
 *   seed: 1,
 * });
 * const dir = await Deno.makeTempDir();
 * const ctx: RestContext = {
 *   dir,
 *   tokenizer,
 *   reward: await make("reward", "chrf"),
 *   metrics: { log: () => Promise.resolve() },
 *   progress: () => ({ tick() {}, done() {} }),
 *   log: () => {},
 * };
 *
 * // Grow step 1: two samples per source at temperature 0.8, plus the original pairs.
 * const settings = {
 *   samplesPerSource: 2,
 *   temperature: 0.8,
 *   topK: 0,
 *   topP: 1,
 *   maxLen: 8,
 *   batchSize: 8,
 *   includeOriginal: true,
 *   sources: 0,
 * };
 * const rows = await grow(policy, pairs, settings, ctx, 1, 7);
 * assert.equal(rows.length, pairs.length * 3);
 * for (const row of rows) {
 *   assert.ok(row.reward >= 0 && row.reward <= 1);
 *   assert.equal(row.tokens.length, row.logProbs.length); // behaviour log-probabilities
 * }
 * // The originals score 1 against themselves; the set is stored, and reused when resumed.
 * assert.ok(rows.filter((r) => r.origin === "reference").every((r) => r.reward === 1));
 * assert.deepEqual(await grow(policy, pairs, settings, ctx, 1, 7), rows);
 * assert.ok((await Deno.stat(`${dir}/grow_1.jsonl`)).isFile);
 *
 * policy.dispose();
 * await Deno.remove(dir, { recursive: true });
 * ```
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
  ctx.reward.diagnostics?.(); // counters from here on belong to this Grow step
  // A seeded uniform sample when the budget is below the training split (never its first
  // rows: a corpus in file order would be grown from its first files only).
  const examples = sampleInOrder(sources, settings.sources, seed);
  const originals = settings.includeOriginal ? sources : [];
  await checkDiskSpace(
    ctx.dir,
    estimateGrowBytes(examples, originals, settings),
    `Grow step ${g}`,
  );
  // Shards of the sources, each seeded by (seed, shard index) alone, computed wherever the
  // executor puts them and merged in plan order: the same rows whoever computed them.
  const shards = planShards(examples, originals, settings, seed);
  const job = await growJob(policy, settings, ctx, g, seed, shards);
  const progress = ctx.progress(`grow ${g}`, examples.length + originals.length, "sources");
  const folder = shardFolder(ctx.dir, g);
  const remote = new DiagnosticsSum();
  const executor = ctx.executor ?? inProcessExecutor;
  const rows = await runShards(executor, job, folder, progress, ctx.log, remote);
  progress.done();
  // The reward's counters: this process's own, or those the workers sent with their shards.
  const local = ctx.reward.diagnostics?.();
  const counters = remote.shards > 0 ? remote.counters() : local;
  await writeGrowFile(path, rows);
  await Deno.remove(folder, { recursive: true });
  if (shared !== undefined) {
    await Deno.mkdir(dirname(shared), { recursive: true });
    await copyGrowFile(path, shared);
  }
  await logGrow(rows, ctx, g, started, counters);
  return rows;
}

/**
 * A Grow step as an executor job: its shards, computed here by {@link growShard} or by a
 * remote worker from the artefacts (the policy's weights, the tokenizer's state and the run's
 * plugin sections). The key covers everything a shard's rows depend on (the weights by their
 * SHA-256), so saved shards are reused only for the very same step.
 */
async function growJob(
  policy: Policy,
  settings: GrowSettings,
  ctx: RestContext,
  g: number,
  seed: number,
  shards: GrowShard[],
): Promise<ShardJob> {
  const state = await savePolicy(policy);
  const weights = new Uint8Array(state.data.buffer, state.data.byteOffset, state.data.byteLength);
  const key = hashText(JSON.stringify({
    g,
    seed,
    settings,
    weights: await sha256Hex(weights),
    sections: ctx.recipe?.sections ?? null,
  }));
  const tools = { policy, tokenizer: ctx.tokenizer, reward: ctx.reward };
  const recipe = ctx.recipe;
  return {
    key,
    label: `grow ${g}`,
    settings,
    shards,
    compute: (shard) => growShard(tools, shard, settings),
    ...(recipe === undefined
      ? {}
      : { artefacts: () => ({ recipe, policy: state, tokenizer: ctx.tokenizer.save() }) }),
  };
}

/** Distinct (source, hypothesis) pairs among `rows`, counted like Table 1's column. */
function distinctSamples(rows: readonly GrowRow[]): number {
  const distinct = new DistinctSamples();
  for (const r of rows) distinct.add(r.source, r.hypothesis);
  return distinct.size;
}

async function logGrow(
  rows: readonly GrowRow[],
  ctx: RestContext,
  g: number,
  started: number,
  rewardCounters: Record<string, number> = {},
): Promise<void> {
  const sampleRows = rows.filter((r) => r.origin === "sample");
  const referenceRows = rows.filter((r) => r.origin === "reference");
  await ctx.metrics.log({
    "grow/rows": rows.length,
    "grow/sample_rows": sampleRows.length,
    "grow/reference_rows": referenceRows.length,
    "grow/mean_reward": mean(rows.map((r) => r.reward)),
    "grow/mean_sample_reward": mean(sampleRows.map((r) => r.reward)),
    "grow/mean_reference_reward": mean(referenceRows.map((r) => r.reward)),
    "grow/distinct_samples": distinctSamples(sampleRows),
    "grow/seconds": (performance.now() - started) / 1000,
    ...prefixed("grow/reward_", rewardCounters),
  }, g);
  ctx.log(
    `grow ${g}: ${sampleRows.length} samples + ${referenceRows.length} references, mean reward ${
      (100 * mean(rows.map((r) => r.reward))).toFixed(2)
    } (samples ${(100 * mean(sampleRows.map((r) => r.reward))).toFixed(2)})`,
  );
}

/**
 * A generous estimate of a Grow file's size: per row, the source and reference text twice
 * over (JSON escaping, the hypothesis), and ~24 bytes per token id and log-probability.
 */
export function estimateGrowBytes(
  examples: readonly Example[],
  originals: readonly Example[],
  settings: Pick<GrowSettings, "samplesPerSource" | "maxLen">,
): number {
  const tokens = Math.min(settings.maxLen, 64) * 24;
  const bytes = (list: readonly Example[], perSource: number) => {
    let text = 0;
    for (const e of list) text += e.source.length + 2 * e.reference.length;
    return perSource * (2 * text + list.length * (tokens + 160));
  };
  return Math.ceil(bytes(examples, settings.samplesPerSource) + bytes(originals, 1));
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

/**
 * Indices of the pool's rows kept by the filter: reward strictly above tau (a number, or a
 * per-source map; sources missing from the map are dropped); with `keepReferences`, the
 * original pairs are kept whatever their reward.
 */
export function filterPool(
  pool: GrowPool,
  tau: number | ReadonlyMap<string, number>,
  keepReferences = false,
): number[] {
  const kept: number[] = [];
  for (let i = 0; i < pool.size; i++) {
    if (keepReferences && pool.origin(i) === "reference") {
      kept.push(i);
      continue;
    }
    const t = typeof tau === "number" ? tau : tau.get(pool.source(i));
    if (t !== undefined && pool.reward(i) > t) kept.push(i);
  }
  return kept;
}

/** {@link filterPool} over an array of rows (returns the kept rows). */
export function filterRows(
  rows: readonly GrowRow[],
  tau: number | ReadonlyMap<string, number>,
  keepReferences = false,
): GrowRow[] {
  const pool = new GrowPool();
  pool.addAll(rows);
  return filterPool(pool, tau, keepReferences).map((i) => rows[i]);
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
  /** Best reward on the selection split (the incoming weights' included). */
  validReward: number;
  /** Reward of the incoming weights on the selection split. */
  incomingReward: number;
  /** Optimizer steps taken. */
  steps: number;
  /** Lineage key of the weights the step ends with (absent: the step was not keyed). */
  lineage?: string;
}

/** Where an Improve step is in the run. */
export interface ImprovePosition {
  /** Grow step (1-based). */
  grow: number;
  /** Improve step within the Grow step (1-based). */
  improve: number;
  /** Improve steps per Grow step. */
  improveSteps: number;
  /** 1-based index of this Improve step over the whole run (the learning rate decays by it). */
  index: number;
  /** Optimizer steps taken before this Improve step (the metrics' step axis). */
  stepOffset: number;
  /**
   * Lineage key of everything the step depends on but its threshold (see core/step_share.ts);
   * with it and a shared folder in the context, an identical step already taken by another
   * run of the experiment is loaded instead of trained.
   */
  lineage?: string;
}

/**
 * Improve step `i`: filters the pool by tau_i and fine-tunes the current weights with
 * `loss` for `epochs` passes over the kept rows (at most `steps` optimizer steps). The
 * incoming weights are evaluated first, then every `evalEvery` steps and at the end; the
 * policy ends with the best of them (by reward on `select`), so a harmful step changes
 * nothing.
 *
 * @example Improve step 1.1 on the rows of a Grow step, tau = 0.5
 * ```ts
 * import assert from "node:assert/strict";
 * import {
 *   builtinPlugins,
 *   createRegistries,
 *   grow,
 *   GrowPool,
 *   improve,
 *   type PluginDeps,
 *   pluginDefaults,
 *   type PluginInstances,
 *   type PluginKind,
 *   type RestContext,
 * } from "@rest/framework";
 *
 * // Built-in plugins with their default configs (a manifest would name them), on the cpu backend.
 * const registries = createRegistries(builtinPlugins);
 * const deps: PluginDeps = {
 *   seed: 1,
 *   baseDir: ".",
 *   smoke: false,
 *   log: console.log,
 *   create: () => Promise.reject(new Error("no nested plugins here")),
 * };
 * async function make<K extends PluginKind>(
 *   kind: K,
 *   name: string,
 *   config: Record<string, unknown> = {},
 * ): Promise<PluginInstances[K]> {
 *   const plugin = registries[kind].get(name);
 *   return await plugin.create({ ...pluginDefaults(plugin), ...config }, deps);
 * }
 * await (await make("backend", "cpu")).init();
 *
 * // A copy task, a tokenizer trained on it and a tiny transformer policy.
 * const words = ["abc", "bca", "cab", "acb", "bac", "cba"];
 * const pairs = words.map((w) => ({ source: w, reference: w }));
 * const tokenizer = await make("tokenizer", "bpe", { vocabSize: 300 });
 * tokenizer.train({ sources: words, targets: words });
 * const model = { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1 };
 * const policy = (await make("model", "transformer", model)).build({
 *   sourceVocab: tokenizer.vocabSize("source"),
 *   targetVocab: tokenizer.vocabSize("target"),
 *   specials: tokenizer.specials,
 *   valueHead: false,
 *   seed: 1,
 * });
 * const dir = await Deno.makeTempDir();
 * const ctx: RestContext = {
 *   dir,
 *   tokenizer,
 *   reward: await make("reward", "chrf"),
 *   metrics: { log: () => Promise.resolve() },
 *   progress: () => ({ tick() {}, done() {} }),
 *   log: () => {},
 * };
 *
 * // Grow step 1: two samples per source at temperature 0.8, plus the original pairs.
 * const settings = {
 *   samplesPerSource: 2,
 *   temperature: 0.8,
 *   topK: 0,
 *   topP: 1,
 *   maxLen: 8,
 *   batchSize: 8,
 *   includeOriginal: true,
 *   sources: 0,
 * };
 * const rows = await grow(policy, pairs, settings, ctx, 1, 7);
 *
 * // Improve step 1.1: fine-tune on the rows with reward > 0.5 (the BC loss, a fixed tau).
 * const bcPolicy = policy.clone();
 * const pool = new GrowPool();
 * pool.addAll(rows);
 * const loss = await make("loss", "bc");
 * const result = await improve(
 *   policy,
 *   bcPolicy,
 *   pool,
 *   loss,
 *   await make("threshold", "fixed", { values: [0.5] }),
 *   pairs, // the selection split that picks the step's best weights
 *   {
 *     epochs: 1,
 *     steps: 2,
 *     batchSize: 8,
 *     learningRate: 1e-3,
 *     learningRateDecay: 1,
 *     warmupSteps: 0,
 *     schedule: "constant",
 *     clipNorm: 1,
 *     evalEvery: 0,
 *     patience: 0,
 *     evalSize: 0,
 *     references: "filter",
 *     evaluation: {
 *       maxLen: 8,
 *       batchSize: 8,
 *       validSize: 0,
 *       testSize: 0,
 *       temperature: 0.8,
 *       bestOfN: [],
 *       bestOfNSize: 0,
 *       selectBy: "greedy",
 *       selectSamples: 1,
 *     },
 *     selectionSeed: 1,
 *   },
 *   ctx,
 *   { grow: 1, improve: 1, improveSteps: 1, index: 1, stepOffset: 0 },
 *   7,
 * );
 * assert.equal(result.tau, 0.5);
 * assert.equal(result.kept, rows.filter((r) => r.reward > 0.5).length);
 * assert.ok(result.steps >= 1);
 *
 * loss.dispose();
 * policy.dispose();
 * bcPolicy.dispose();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function improve(
  policy: Policy,
  bcPolicy: Policy,
  pool: GrowPool,
  loss: Loss,
  threshold: ThresholdSchedule,
  select: readonly Example[],
  settings: ImproveSettings & { evaluation: EvalSettings; selectionSeed: number },
  ctx: RestContext,
  position: ImprovePosition,
  seed: number,
): Promise<ImproveResult> {
  const started = performance.now();
  const label = `improve ${position.grow}.${position.improve}`;
  const bySource = pool.rewardsBySource();
  const decision = decideThreshold(threshold, {
    grow: position.grow,
    improve: position.improve,
    improveSteps: position.improveSteps,
    rewards: Array.from(pool.rewards()),
    bySource,
    sampleRewards: sampleRewardsOf(pool),
  });
  for (const note of decision.notes) ctx.log(`${label}: ${note}`);
  const kept = filterPool(pool, decision.tau, settings.references === "keep");
  const tau = decision.tau;
  const tauValue = typeof tau === "number" ? tau : mean([...tau.values()]);
  const keptReferences = kept.filter((i) => pool.origin(i) === "reference").length;
  const counts = {
    "improve/index": position.index,
    "improve/grow": position.grow,
    "improve/tau": tauValue,
    "improve/rows_kept": kept.length,
    "improve/samples_kept": kept.length - keptReferences,
    "improve/references_kept": keptReferences,
    ...Object.fromEntries(
      Object.entries(decision.metrics).map(([k, v]) => [`improve/${k}`, v]),
    ),
  };
  const inputs = position.lineage === undefined ? undefined : [position.lineage, tauKey(tau)];
  const lineage = inputs === undefined ? undefined : lineageKey(inputs);
  if (kept.length === 0) {
    ctx.log(
      `${label}: skipped: no row has reward > tau = ${tauValue.toFixed(4)} (largest reward ` +
        `${maxOf(pool.rewards())})`,
    );
    await ctx.metrics.log({ ...counts, "improve/skipped": 1 }, position.stepOffset);
    return { tau: tauValue, kept: 0, validReward: NaN, incomingReward: NaN, steps: 0, lineage };
  }
  const sourceMeans = new Map([...bySource].map(([s, v]) => [s, mean(v)]));
  const pairs: RowPair[] = kept.map((i) => {
    const row = pool.row(i);
    return {
      ...rowTarget(ctx.tokenizer.encode(row.source, "source"), row.tokens, policy.specials.eos),
      row,
    };
  });
  loss.prepare({
    policy,
    bcPolicy,
    improve: position.improve,
    improveSteps: position.improveSteps,
    labelSmoothing: ctx.labelSmoothing ?? 0,
  });
  const sharedDir = inputs !== undefined && ctx.sharedDir !== undefined
    ? sharedStepDir(ctx.sharedDir, lineage!)
    : undefined;
  if (sharedDir !== undefined) {
    const stored = await loadSharedStep(sharedDir, inputs, policy, loss);
    if (stored !== undefined) {
      for (const { record, step } of stored.records) await ctx.metrics.log(record, step);
      ctx.log(`${label}: identical to a step another run took; reused ${sharedDir}`);
      ctx.log(stored.summary);
      return { ...restoreNaN(stored.result) as unknown as ImproveResult, lineage };
    }
  }
  const metrics = recordingLog(ctx.metrics);
  const lr = settings.learningRate * settings.learningRateDecay ** (position.index - 1);
  const steps = Math.min(
    settings.steps,
    Math.max(1, Math.ceil(settings.epochs * kept.length / settings.batchSize)),
  );
  const diagnostics = new Map<string, number[]>();
  const record = (name: string, value: number) => {
    const list = diagnostics.get(name);
    if (list === undefined) diagnostics.set(name, [value]);
    else list.push(value);
  };
  let best: { score: number; step: number; state: ReturnType<Policy["save"]> } | undefined;
  let incomingReward = NaN;
  const progress = ctx.progress(label, steps, "steps");
  const result = await profiler.phase("improve", () =>
    trainLoop(policy, pairs, {
      steps,
      batchSize: settings.batchSize,
      learningRate: lr,
      warmupSteps: Math.min(settings.warmupSteps, steps),
      schedule: settings.schedule,
      clipNorm: settings.clipNorm,
      evalEvery: settings.evalEvery,
      patience: settings.patience,
      evalAtStart: true,
    }, {
      prefix: "improve",
      metrics,
      progress,
      log: ctx.log,
      variables: loss.variables,
      stepOffset: position.stepOffset,
      afterStep: (step) => loss.afterStep(step),
      loss: (batch, items, record) => loss.compute(lossInput(batch, items, sourceMeans), record),
      record,
      // No selection data (evalSize covering nothing): no selection, the trained weights stay.
      // One seed for the whole run: every candidate, in every Improve step, is scored on the
      // same draws, so step i+1's incoming score is step i's best.
      evaluate: select.length === 0 ? undefined : async (step) => {
        const score = await selectionReward(
          policy,
          ctx.tokenizer,
          select,
          ctx.reward,
          settings.evaluation,
          settings.selectionSeed,
        );
        if (step === 0) incomingReward = score;
        return { score, metrics: { "improve/select_reward": score } };
      },
      onBest: async (step, score) => {
        best = { score, step, state: await savePolicy(policy) };
      },
    }, seed));
  progress.done();
  if (best !== undefined) policy.load(best.state);
  const summary: Record<string, number> = {
    ...counts,
    "improve/mean_reward_kept": mean(kept.map((i) => pool.reward(i))),
    "improve/select_reward": result.bestScore,
    "improve/incoming_select_reward": incomingReward,
    "improve/best_step": result.bestStep,
    "improve/steps": result.steps,
    "improve/learning_rate": lr,
    "improve/seconds": (performance.now() - started) / 1000,
  };
  for (const [name, values] of diagnostics) summary[`improve/${name}`] = mean(values);
  await metrics.log(summary, position.stepOffset + result.steps);
  const line = `${label}: tau ${tauValue.toFixed(3)}, kept ${kept.length}/${pool.size} rows ` +
    `(${kept.length - keptReferences} samples, ${keptReferences} references), ${result.steps} ` +
    `steps; selection reward ${(100 * incomingReward).toFixed(2)} -> ${
      (100 * result.bestScore).toFixed(2)
    } (best at step ${result.bestStep}${result.bestStep === 0 ? ": incoming weights kept" : ""})`;
  ctx.log(line);
  const outcome = {
    tau: tauValue,
    kept: kept.length,
    validReward: result.bestScore,
    incomingReward,
    steps: result.steps,
  };
  if (sharedDir !== undefined) {
    await saveSharedStep(sharedDir, inputs, policy, loss, {
      result: outcome,
      records: metrics.records,
      summary: line,
    });
  }
  return { ...outcome, lineage };
}

/** The schedule's decision for one Improve step (with its notes when it gives them). */
function decideThreshold(
  threshold: ThresholdSchedule,
  args: Parameters<ThresholdSchedule["threshold"]>[0],
): ThresholdDecision {
  if (threshold.decide !== undefined) return threshold.decide(args);
  return { tau: threshold.threshold(args), notes: [], metrics: {} };
}

/** A JSON-able identity of a threshold: the number, or a hash of a per-source map. */
function tauKey(tau: number | Map<string, number>): string | number {
  return typeof tau === "number" ? tau : lineageKey([...tau].sort((a, b) => a[0] < b[0] ? -1 : 1));
}

/** Numbers that went through JSON as null (NaN, infinities) back to NaN. */
function restoreNaN(values: Record<string, number | null>): Record<string, number> {
  return Object.fromEntries(Object.entries(values).map(([k, v]) => [k, v ?? NaN]));
}

/** The rewards of a pool's sampled rows (its original pairs left out). */
function sampleRewardsOf(pool: GrowPool): number[] {
  const out: number[] = [];
  for (let i = 0; i < pool.size; i++) if (pool.origin(i) === "sample") out.push(pool.reward(i));
  return out;
}
