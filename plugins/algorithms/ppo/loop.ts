/**
 * The training loop of the `ppo` algorithm (plugin: `mod.ts`; its pure maths: `math.ts`),
 * the online PPO baseline of the ReST paper's Table 1 (Schulman et al. 2017, arXiv
 * 1707.06347, applied to sequence generation as by Ziegler et al. 2019, arXiv 1909.08593,
 * and Stiennon et al. 2020, arXiv 2009.01325). Starts from the shared BC policy and, until
 * its sample budget is spent, repeats:
 *
 * 1. **Rollout**: sample outputs for a batch of training sources from the *current* policy
 *    (temperature `temperature`, no truncation) and score each with the run's reward at
 *    the end of the sequence.
 * 2. **Advantages**: recompute the sampling policy's per-token log-probabilities and the
 *    critic's values, and the frozen BC reference's log-probabilities; per-token rewards
 *    r_t = -beta (log pi_old - log pi_BC) with the (normalised) score added at the last
 *    token; GAE(gamma, lambda); value targets = advantages + values; advantages whitened
 *    over the batch.
 * 3. **Update**: `epochs` passes over the batch in minibatches, each an Adam step on the
 *    clipped policy loss + `valueCoef` x clipped value loss - `entropyCoef` x entropy, with
 *    global gradient-norm clipping.
 * 4. **KL coefficient**: fixed, or adapted towards a target KL (Ziegler et al. 2019,
 *    Section 2.2).
 *
 * Before the first rollout, every `evalEvery` rollout batches and at the end, the greedy
 * reward on the selection split is measured and the best weights (BC's included) are kept,
 * like the `rest` algorithm's Improve steps; the
 * run reports the same final metrics as `rest` (`eval/...`, `train/distinct_samples`,
 * `train/gradient_steps`) plus `train/samples`, the sampled outputs actually used
 * (`train/distinct_samples` counts distinct (source, output) pairs, as every algorithm does:
 * core/evaluate.ts `DistinctSamples`).
 *
 * Per-token log-probabilities (of the policy, the BC reference and during the update) come
 * from the model's fused output layer (`Policy.tokenLogProbs`) and values from its value
 * head alone (`Policy.values`, or both from one pass: `Policy.tokenLogProbsAndValues`), never from `[B, T, V]` logits, except where the whole
 * distribution is needed: the update's entropy term when `entropyCoef` is not 0
 * (`ppo/update_entropy`, logged only then), and the `ppo/entropy` diagnostic, the mean
 * per-token entropy of the sampling policy measured on the first `minibatchSize` outputs of
 * each rollout batch (not the whole batch, to keep scoring cheap).
 *
 * After every rollout batch the run saves a resumable state (`ppo_state` in the run folder:
 * weights, Adam moments, the best weights so far and the counters); `--resume` continues
 * from it and, since every random choice derives from the seed and the rollout or step
 * number, ends with the same metrics as an uninterrupted run.
 *
 * The critic is a value head on the policy (`critic: "head"`, shared trunk), a separate
 * network initialised from the BC weights with its own value head (`"network"`, as in
 * Ziegler et al. and Stiennon et al., who initialise it from the reward model; our reward
 * models are not networks), or no network at all (`"baseline"`: a per-position running
 * mean of the returns).
 *
 * @module
 */

import { sampleInOrder } from "../../../core/random.ts";
import * as tf from "@tensorflow/tfjs-core";
import { join } from "node:path";
import { mean } from "../../../core/append.ts";
import { makeBatch } from "../../../core/batch.ts";
import { checkScores, DistinctSamples, limit, selectionReward } from "../../../core/evaluate.ts";
import { UserError } from "../../../core/errors.ts";
import { Adam, learningRate } from "../../../core/optim.ts";
import { optimizerStep, recordScalar } from "../../../core/train.ts";
import { savePolicy } from "../../../core/host_read.ts";
import { profiler } from "../../../core/profile.ts";
import { prefixed } from "../../../core/run.ts";
import { finishRun } from "../../../core/finish.ts";
import { Rng } from "../../../core/random.ts";
import { rowTarget } from "../../../core/rest.ts";
import {
  assignExtras,
  checkMeta,
  type UnitCheckpoint,
  unitCheckpoint,
  type UnitState,
  unitStateError,
} from "../../../core/resume.ts";
import { disposeBatch, lengthBuckets, systemMetrics, type TokenPair } from "../../../core/train.ts";
import type {
  Example,
  LossRecorder,
  Metrics,
  Policy,
  RunContext,
  Schedule,
  TokenBatch,
} from "../../../core/types.ts";
import {
  AdaptiveKl,
  clippedPolicyLoss,
  clippedValueLoss,
  explainedVariance,
  FixedKl,
  fusedPpoLoss,
  type KlController,
  PositionBaseline,
  type PpoLossTargets,
  rolloutAdvantages,
} from "./math.ts";
import { maskedMean, tokenLogProbsAndEntropy } from "../../_nn/token_stats.ts";
import { softmaxEntropies } from "../../_nn/logit_entropy.ts";
import { isDeviceBackend } from "../../_nn/device.ts";

/** KL penalty settings of the `ppo` algorithm. */
export interface PpoKlConfig {
  /** Adapt the coefficient towards `target` (Ziegler et al. 2019) instead of keeping it fixed. */
  adaptive: boolean;
  /** The (initial) coefficient beta. */
  coef: number;
  /** Target KL per sequence, in nats (adaptive only). */
  target: number;
  /** Horizon in samples (adaptive only). */
  horizon: number;
}

/** Config of the `ppo` algorithm (see the schema for each option's meaning and source). */
export interface PpoConfig {
  /** Total sampled outputs (0: 6 per training source used). */
  samples: number;
  /** Training sources used (0: all). */
  sources: number;
  /** Sampled outputs per rollout batch. */
  rolloutSize: number;
  /** Samples per source within a rollout batch. */
  samplesPerSource: number;
  /** Sampling temperature (defines the optimised policy). */
  temperature: number;
  /** Passes over each rollout batch. */
  epochs: number;
  /** Sampled outputs per gradient step. */
  minibatchSize: number;
  /** Adam learning rate. */
  learningRate: number;
  /** Linear warm-up steps. */
  warmupSteps: number;
  /** Decay over the run's gradient steps. */
  schedule: Schedule;
  /** Global gradient-norm clip (0: off). */
  clipNorm: number;
  /** PPO clip range epsilon of the policy ratio. */
  clipRange: number;
  /** Clip range of the value update (0: unclipped value loss). */
  valueClipRange: number;
  /** Weight of the value loss. */
  valueCoef: number;
  /** Weight of the entropy bonus. */
  entropyCoef: number;
  /** Discount gamma. */
  gamma: number;
  /** GAE lambda. */
  lambda: number;
  /** Whiten advantages over each rollout batch. */
  whitenAdvantages: boolean;
  /** `initial`: scores standardised by the first rollout batch's mean and deviation. */
  rewardNormalization: "initial" | "none";
  /** KL penalty against the frozen BC policy. */
  kl: PpoKlConfig;
  /** Value estimates: a value head, a separate value network, or a position baseline. */
  critic: "head" | "network" | "baseline";
  /** Momentum of the `baseline` critic's running means. */
  baselineMomentum: number;
  /** Dropout on during PPO's forward passes. */
  dropout: boolean;
  /** Evaluate on validation every this many rollout batches (0: only at the end). */
  evalEvery: number;
  /** Validation pairs for those evaluations (0: all). */
  evalSize: number;
}

/** Sampled outputs per training source when `samples` is 0 (1.5 x a default Grow step). */
export const DEFAULT_SAMPLES_PER_SOURCE = 6;

/** One sampled output of a rollout batch, with everything the update needs. */
export interface RolloutItem extends TokenPair {
  /** The pair it was sampled for. */
  example: Example;
  /** Decoded output. */
  hypothesis: string;
  /** Output token count (EOS included when the output ended). */
  length: number;
  /** Reward in [0, 1]. */
  score: number;
  /** log pi_old per token. */
  oldLogProbs: number[];
  /** V_old per token. */
  oldValues: number[];
  /** Advantages per token. */
  advantages: number[];
  /** Value targets per token. */
  returns: number[];
}

/** Per-minibatch diagnostics, averaged per rollout batch (NaN: not computed). */
export interface StepStats {
  /** The minibatch loss. */
  loss: number;
  /** The clipped policy loss. */
  policyLoss: number;
  /** The (clipped) value loss. */
  valueLoss: number;
  /** Share of tokens whose value update was clipped. */
  valueClipFraction: number;
  /** Share of tokens whose ratio was clipped. */
  clipFraction: number;
  /** Approximate KL between the old and the current policy. */
  approxKl: number;
  /** Mean per-token entropy (only computed when `entropyCoef` is not 0). */
  entropy: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
}

/** Fresh {@link StepStats}, every field NaN until the step computes it. */
export function emptyStepStats(): StepStats {
  return {
    loss: NaN,
    policyLoss: NaN,
    valueLoss: NaN,
    valueClipFraction: NaN,
    clipFraction: NaN,
    approxKl: NaN,
    entropy: NaN,
    gradNorm: NaN,
  };
}

/** The models of a PPO run. */
export interface PpoModels {
  /** The policy being trained (with a value head for `critic: "head"`). */
  policy: Policy;
  /** The frozen BC reference. */
  reference: Policy;
  /** The separate value network (`critic: "network"`). */
  valueNet?: Policy;
}

/**
 * `[B, T]` value estimates of a policy with a value head: its {@link Policy.values} (no
 * output projection) where it has one, else `forward(...).values`.
 */
function valuesOf(model: Policy, batch: TokenBatch, training: boolean): tf.Tensor2D {
  if (model.values !== undefined) return model.values(batch, { training });
  const { values } = model.forward(batch, { training });
  if (values === undefined) throw new TypeError("ppo: the critic has no value head");
  return values;
}

/**
 * `[B, T]` tempered log-probabilities of the targets and value estimates of a policy with a
 * value head, from one pass of its network where it offers
 * {@link Policy.tokenLogProbsAndValues}, else from `tokenLogProbs` and {@link valuesOf}.
 */
function logProbsAndValues(
  model: Policy,
  batch: TokenBatch,
  options: { training: boolean; temperature: number },
): { logProbs: tf.Tensor2D; values: tf.Tensor2D } {
  if (model.tokenLogProbsAndValues !== undefined) {
    return model.tokenLogProbsAndValues(batch, options);
  }
  return {
    logProbs: model.tokenLogProbs(batch, options),
    values: valuesOf(model, batch, options.training),
  };
}

/** `[B, T]` float32 tensor of per-row arrays, zero-padded to `t` columns. */
function padded(rows: readonly (readonly number[])[], t: number): tf.Tensor2D {
  const data = new Float32Array(rows.length * t);
  rows.forEach((row, i) => data.set(row.length > t ? row.slice(0, t) : row, i * t));
  return tf.tensor2d(data, [rows.length, t]);
}

/** Rows of a `[B, T]` array, each cut to its item's output length. */
function perItem(values: number[][], items: readonly { length: number }[]): number[][] {
  return items.map((item, i) => values[i].slice(0, item.length));
}

/**
 * The number of sampled outputs of each rollout batch: `rolloutSize` until the budget
 * leaves less, then the rest.
 */
export function rolloutPlan(budget: number, rolloutSize: number): number[] {
  if (!(rolloutSize >= 1)) throw new RangeError(`rolloutSize must be >= 1, got ${rolloutSize}`);
  const plan: number[] = [];
  for (let used = 0; used < budget; used += rolloutSize) {
    plan.push(Math.min(rolloutSize, budget - used));
  }
  return plan;
}

/** Runs PPO for one run (the `ppo` plugin's `run`). */
export async function runPpo(ctx: RunContext, config: PpoConfig): Promise<{ metrics: Metrics }> {
  const started = performance.now();
  // Drawn like ReST's Grow sources: a seeded uniform sample, not the split's first rows.
  const pool = sampleInOrder(ctx.splits.train, config.sources, ctx.seed * 1000 + 1);
  if (pool.length === 0) throw new UserError(`run ${ctx.run}: ppo has no training sources`);
  const budget = config.samples > 0 ? config.samples : DEFAULT_SAMPLES_PER_SOURCE * pool.length;
  const plan = rolloutPlan(budget, config.rolloutSize);
  const totalSteps = plan.reduce(
    (sum, size) => sum + config.epochs * Math.ceil(size / config.minibatchSize),
    0,
  );
  const valid = limit(ctx.splits.select, config.evalSize);
  const models: PpoModels = {
    policy: await ctx.bcPolicy({ valueHead: config.critic === "head" }),
    reference: await ctx.bcPolicy(),
  };
  try {
    if (config.critic === "head" && !models.policy.hasValueHead) {
      throw new UserError(`run ${ctx.run}: ppo's critic "head" needs a model with a value head`);
    }
    if (config.critic === "network") {
      models.valueNet = await ctx.bcPolicy({ valueHead: true });
      if (!models.valueNet.hasValueHead) {
        throw new UserError(
          `run ${ctx.run}: ppo's critic "network" needs a model with a value head`,
        );
      }
    }
    const variables = [...models.policy.variables, ...(models.valueNet?.variables ?? [])];
    const optimizer = new Adam(variables);
    try {
      return await loop(ctx, config, models, optimizer, variables, {
        pool,
        plan,
        totalSteps,
        valid,
        started,
      });
    } finally {
      optimizer.dispose();
    }
  } finally {
    models.policy.dispose();
    models.reference.dispose();
    models.valueNet?.dispose();
  }
}

/** Name of the run's resumable state, saved after every rollout batch. */
const STATE = "ppo_state";

/** Everything carried from one rollout batch to the next (besides weights and Adam moments). */
interface LoopState {
  /** Rollout batches finished. */
  rollouts: number;
  /** Gradient steps taken. */
  step: number;
  /** Sampled outputs used. */
  samplesUsed: number;
  /** Sources drawn so far (position in the seeded source order). */
  sourcesDrawn: number;
  /** Sum of all rollout rewards. */
  rewardSum: number;
  /** The KL coefficient for the next rollout batch. */
  klCoef: number;
  /** The `baseline` critic's running means. */
  baseline: number[];
  /** Score normalisation (set by the first rollout batch). */
  normaliser: { mean: number; std: number } | null;
  /** Hashes of the distinct (source, output) pairs sampled so far. */
  distinct: number[];
  /** Best validation reward so far and the rollout batch after which it was measured. */
  best: { score: number; rollout: number } | null;
}

/** What the loop carries from one rollout batch to the next besides the weights it trains. */
interface PpoState {
  /** The counters (their `distinct` is filled in from {@link PpoState.distinct} when saved). */
  progress: LoopState;
  /** The distinct (source, output) pairs sampled so far. */
  distinct: DistinctSamples;
  /** The best weights so far (undefined until the first validation). */
  bestData?: Float32Array;
}

/** The state of a run before its first rollout batch. */
function startPpo(config: PpoConfig): PpoState {
  return {
    progress: {
      rollouts: 0,
      step: 0,
      samplesUsed: 0,
      sourcesDrawn: 0,
      rewardSum: 0,
      klCoef: config.kl.coef,
      baseline: [],
      normaliser: null,
      distinct: [],
      best: null,
    },
    distinct: new DistinctSamples([]),
  };
}

/**
 * The run's checkpoint (`ppo_state`, saved after every rollout batch): the weights, Adam's
 * moments and step, the value network's variables, the best weights so far and the counters
 * of {@link PpoState}. A resumed run's metrics.jsonl is rewound to that moment and later
 * rollout batches run again, identically (every random choice derives from the seed and the
 * rollout or step number).
 */
function ppoCheckpoint(
  ctx: RunContext,
  config: PpoConfig,
  models: PpoModels,
  optimizer: Adam,
  variables: readonly tf.Variable[],
  rollouts: number,
): UnitCheckpoint<PpoState> {
  const valueNetVariables = models.valueNet?.variables ?? [];
  const n = variables.length;
  const place = {
    dir: ctx.dir,
    name: STATE,
    metricsPath: join(ctx.dir, "metrics.jsonl"),
    resume: ctx.resume,
  };
  return unitCheckpoint(place, models.policy, {
    async encode(s) {
      const adam = await optimizer.state();
      const extras: (tf.Tensor | Float32Array)[] = [...adam.m, ...adam.v, ...valueNetVariables];
      if (s.bestData !== undefined) extras.push(s.bestData);
      return {
        extras,
        meta: {
          progress: { ...s.progress, distinct: s.distinct.hashes() },
          adamStep: adam.step,
          rollouts,
        },
      };
    },
    decode(saved) {
      checkPpoState(saved, rollouts, 2 * n + valueNetVariables.length);
      const bestData = saved.extras[2 * n + valueNetVariables.length];
      const weightCount = saved.policy.data.length -
        saved.extras.reduce((sum, e) => sum + e.length, 0);
      if (bestData !== undefined && bestData.length !== weightCount) {
        throw unitStateError(
          saved.file,
          `its best weights hold ${bestData.length} values, the policy ${weightCount}`,
        );
      }
      const progress = Object.assign(startPpo(config).progress, saved.meta.progress);
      return { progress, distinct: new DistinctSamples(progress.distinct), bestData };
    },
    load(saved) {
      optimizer.restore({
        step: saved.meta.adamStep as number,
        m: saved.extras.slice(0, n),
        v: saved.extras.slice(n, 2 * n),
      });
      assignExtras(
        valueNetVariables,
        saved.extras.slice(2 * n, 2 * n + valueNetVariables.length),
        saved.file,
      );
    },
    resumed(s) {
      ctx.log(`resumed after rollout batch ${s.progress.rollouts} of ${rollouts}`);
    },
  });
}

/**
 * Checks a loaded PPO state: the counters of {@link LoopState} with their types, no more
 * rollout batches than planned, and the saved tensors (`tensors` for the Adam moments and the
 * value network, one more for the best weights once a best is recorded).
 *
 * @throws {UserError} naming the state file otherwise.
 */
function checkPpoState(saved: UnitState, rollouts: number, tensors: number): void {
  checkMeta(saved, {
    adamStep: "count",
    "progress.rollouts": "count",
    "progress.step": "count",
    "progress.samplesUsed": "count",
    "progress.sourcesDrawn": "count",
    "progress.rewardSum": "number",
    "progress.klCoef": "number",
    "progress.baseline": "numbers",
    "progress.normaliser": "object?",
    "progress.normaliser.mean": "number?",
    "progress.normaliser.std": "number?",
    "progress.distinct": "numbers",
    "progress.best": "object?",
    "progress.best.score": "number?",
    "progress.best.rollout": "number?",
  });
  const progress = saved.meta.progress as LoopState;
  if (progress.rollouts > rollouts) {
    throw unitStateError(
      saved.file,
      `it records ${progress.rollouts} rollout batches as done, but the run plans ${rollouts}`,
    );
  }
  const expected = progress.best === null ? [tensors, tensors + 1] : [tensors + 1];
  if (!expected.includes(saved.extras.length)) {
    throw unitStateError(
      saved.file,
      `it holds ${saved.extras.length} extra tensors, expected ${expected.join(" or ")}`,
    );
  }
}

async function loop(
  ctx: RunContext,
  config: PpoConfig,
  models: PpoModels,
  optimizer: Adam,
  variables: tf.Variable[],
  setup: {
    pool: readonly Example[];
    plan: readonly number[];
    totalSteps: number;
    valid: readonly Example[];
    started: number;
  },
): Promise<{ metrics: Metrics }> {
  const { policy } = models;
  const { pool, plan } = setup;
  const derive = (label: string) => new Rng(ctx.seed).fork(`ppo/${label}`);
  const checkpoint = ppoCheckpoint(ctx, config, models, optimizer, variables, plan.length);
  const s = await checkpoint.restore() ?? startPpo(config);
  const { progress: p, distinct } = s;

  const kl: KlController = config.kl.adaptive
    ? new AdaptiveKl({
      initial: p.klCoef,
      target: config.kl.target,
      horizon: config.kl.horizon,
    })
    : new FixedKl(config.kl.coef);
  const baseline = config.critic === "baseline"
    ? new PositionBaseline(config.baselineMomentum, p.baseline)
    : undefined;
  const encodedSources = new Map<string, number[]>();
  const encode = (source: string) => {
    let ids = encodedSources.get(source);
    if (ids === undefined) {
      ids = ctx.tokenizer.encode(source, "source");
      encodedSources.set(source, ids);
    }
    return ids;
  };
  // Source order: pass k over the pool is a shuffle seeded by k.
  let orderPass = -1;
  let order: number[] = [];
  const nextSources = (count: number): Example[] => {
    const out: Example[] = [];
    for (let i = 0; i < count; i++, p.sourcesDrawn++) {
      const pass = Math.floor(p.sourcesDrawn / pool.length);
      if (pass !== orderPass) {
        order = derive(`sources/${pass}`).shuffle(pool.map((_, j) => j));
        orderPass = pass;
      }
      out.push(pool[order[p.sourcesDrawn % pool.length]]);
    }
    return out;
  };
  const progress = ctx.progress("rollouts", plan.reduce((a, b) => a + b, 0), "samples");
  progress.tick(plan.slice(0, p.rollouts).reduce((a, b) => a + b, 0));

  const evaluate = async (rollout: number) => {
    // Scored the way ReST's Improve steps score their candidates (evaluation.selectBy).
    const score = await profiler.phase(
      "select",
      () =>
        selectionReward(policy, ctx.tokenizer, setup.valid, ctx.reward, ctx.evaluation, ctx.seed),
    );
    await ctx.metrics.log({ "ppo/valid_reward": score, "ppo/rollout": rollout }, p.step);
    // Without validation pairs the reward is NaN: then the latest weights count as best.
    const previous = p.best === null ? NaN : Number(p.best.score ?? NaN);
    if (Number.isNaN(previous) || score > previous) {
      p.best = { score, rollout };
      s.bestData = (await savePolicy(policy)).data;
    }
  };

  // The incoming (BC) weights are a candidate too, as in ReST's Improve steps: a baseline
  // that only makes things worse keeps them.
  if (p.rollouts === 0 && p.best === null && config.evalEvery > 0) await evaluate(0);
  for (let r = p.rollouts; r < plan.length; r++) {
    const rolloutStarted = performance.now();
    const size = plan[r];
    // 1. Rollout: sample from the current policy and score.
    const sourceCount = Math.ceil(size / config.samplesPerSource);
    const examples = nextSources(sourceCount);
    const generations = await profiler.phase("ppo/sample", async () => {
      const out = await policy.sample(examples.map((e) => encode(e.source)), {
        n: config.samplesPerSource,
        temperature: config.temperature,
        topK: 0,
        topP: 1,
        maxLen: ctx.evaluation.maxLen,
        batchSize: ctx.evaluation.batchSize,
        seed: derive(`sample/${r}`).nextUint32(),
      });
      profiler.count(examples.length * config.samplesPerSource, "samples");
      return out;
    });
    const items: RolloutItem[] = [];
    for (let i = 0; i < examples.length && items.length < size; i++) {
      for (const g of generations[i]) {
        if (items.length === size) break;
        items.push({
          ...rowTarget(encode(examples[i].source), g.tokens, policy.specials.eos),
          example: examples[i],
          hypothesis: ctx.tokenizer.decode(g.tokens, "target"),
          length: g.tokens.length,
          score: NaN,
          oldLogProbs: [],
          oldValues: [],
          advantages: [],
          returns: [],
        });
      }
    }
    ctx.reward.diagnostics?.(); // counters from here on belong to this rollout batch
    const scores = await profiler.phase("ppo/reward", () => {
      profiler.count(items.length, "rows");
      return ctx.reward.score(items.map((item) => ({
        source: item.example.source,
        hypothesis: item.hypothesis,
        reference: item.example.reference,
      })));
    });
    const rewardCounters = ctx.reward.diagnostics?.() ?? {};
    checkScores(scores, items.length);
    items.forEach((item, i) => (item.score = scores[i]));
    p.samplesUsed += items.length;
    for (const item of items) {
      distinct.add(item.example.source, item.hypothesis);
    }
    p.rewardSum += scores.reduce((a, b) => a + b, 0);
    if (p.normaliser === null) {
      const m = mean(scores);
      const sd = Math.sqrt(mean(scores.map((s) => (s - m) ** 2)));
      p.normaliser = config.rewardNormalization === "initial"
        ? { mean: m, std: sd > 1e-6 ? sd : 1 }
        : { mean: 0, std: 1 };
    }
    const normaliser = p.normaliser;

    // 2. Old log-probabilities, values and reference log-probabilities; advantages.
    const { refLogProbs, entropy } = await profiler.phase("ppo/score", () => {
      profiler.count(items.length, "rows");
      return scoreRolloutAsync(models, items, config, baseline);
    });
    const beta = kl.value;
    const adv = rolloutAdvantages(
      items.map((item, i) => ({
        logProbs: item.oldLogProbs,
        refLogProbs: refLogProbs[i],
        values: item.oldValues,
        score: (item.score - normaliser.mean) / normaliser.std,
      })),
      { beta, gamma: config.gamma, lambda: config.lambda, whiten: config.whitenAdvantages },
    );
    items.forEach((item, i) => {
      item.advantages = adv.advantages[i];
      item.returns = adv.returns[i];
    });
    const meanKl = mean(adv.kl);
    const ev = explainedVariance(items.flatMap((i) => i.oldValues), adv.returns.flat());
    baseline?.update(adv.returns);

    // 3. Epochs of minibatch updates.
    const stats: StepStats[] = [];
    const batchRng = derive(`minibatches/${r}`);
    let lr = NaN;
    for (let epoch = 0; epoch < config.epochs; epoch++) {
      for (const minibatch of lengthBuckets(items, config.minibatchSize, batchRng)) {
        p.step++;
        lr = learningRate(p.step, {
          peak: config.learningRate,
          warmup: config.warmupSteps,
          total: setup.totalSteps,
          schedule: config.schedule,
        });
        const stepSeed = derive(`step/${p.step}`).nextUint32();
        policy.reseed?.(stepSeed);
        models.valueNet?.reseed?.(stepSeed + 1);
        const step = p.step;
        stats.push(
          await profiler.phase("ppo/update", () => {
            profiler.count(minibatch.length, "rows");
            return updateStep(models, minibatch, config, optimizer, variables, lr, step);
          }),
        );
      }
    }

    // 4. KL coefficient.
    p.klCoef = kl.update(meanKl, items.length);
    p.baseline = baseline === undefined ? [] : [...baseline.values];
    p.rollouts = r + 1;

    const avg = (key: keyof StepStats) => mean(stats.map((s) => s[key]));
    const record: Metrics = {
      "ppo/rollout": r + 1,
      "ppo/samples": p.samplesUsed,
      "ppo/distinct_samples": distinct.size,
      "ppo/reward": mean(scores),
      ...prefixed("ppo/reward_", rewardCounters),
      "ppo/reward_normalised": (mean(scores) - normaliser.mean) / normaliser.std,
      "ppo/kl": meanKl,
      "ppo/kl_coef": beta,
      "ppo/kl_coef_next": kl.value,
      "ppo/clip_fraction": avg("clipFraction"),
      "ppo/approx_kl": avg("approxKl"),
      "ppo/policy_loss": avg("policyLoss"),
      "ppo/loss": avg("loss"),
      "ppo/entropy": entropy,
      "ppo/explained_variance": ev,
      "ppo/return_mean": mean(adv.returns.flat()),
      "ppo/value_mean": mean(items.flatMap((i) => i.oldValues)),
      "ppo/response_length": mean(items.map((i) => i.length)),
      "ppo/truncated_fraction": mean(items.map((i) => (i.truncated ? 1 : 0))),
      "ppo/grad_norm": avg("gradNorm"),
      "ppo/lr": lr,
      "ppo/seconds": (performance.now() - rolloutStarted) / 1000,
      ...systemMetrics(),
    };
    // The update's entropy is only computed when it is part of the loss.
    if (config.entropyCoef !== 0) record["ppo/update_entropy"] = avg("entropy");
    if (config.critic !== "baseline") {
      record["ppo/value_loss"] = avg("valueLoss");
      record["ppo/value_clip_fraction"] = avg("valueClipFraction");
    }
    await ctx.metrics.log(record, p.step);
    progress.tick(items.length);
    if (config.evalEvery > 0 && (r + 1) % config.evalEvery === 0 && r + 1 < plan.length) {
      await evaluate(r + 1);
    }
    await checkpoint.save(s);
  }
  progress.done();
  await evaluate(plan.length);
  const best = p.best!;
  const bestState = await savePolicy(policy);
  policy.load({ ...bestState, data: s.bestData! });
  ctx.log(
    `ppo: ${plan.length} rollout batches, ${p.samplesUsed} samples, ${p.step} gradient steps; ` +
      `best validation reward ${(100 * best.score).toFixed(2)} after rollout batch ${best.rollout}`,
  );

  return await finishRun(ctx, policy, models.reference, {
    "train/distinct_samples": distinct.size,
    "train/samples": p.samplesUsed,
    "train/gradient_steps": p.step,
    "train/rollouts": plan.length,
    "train/best_rollout": best.rollout,
    "train/rollout_mean_reward": p.samplesUsed > 0 ? p.rewardSum / p.samplesUsed : NaN,
    "train/kl_coef": kl.value,
    "train/seconds": (performance.now() - setup.started) / 1000,
  }, p.step);
}

/**
 * Fills each item's old log-probabilities and values (no gradient, dropout off) and
 * returns the reference log-probabilities and the `ppo/entropy` diagnostic. Reads tensors
 * synchronously, so only on host backends; the loop uses {@link scoreRolloutAsync}, which
 * computes the same.
 *
 * The log-probabilities of the policy and of the frozen BC reference come from
 * {@link Policy.tokenLogProbs} at the run's temperature (the model's fused output layer:
 * no `[B, T, V]` tensor), the values from the critic's value head alone
 * ({@link Policy.values}; with `critic: "head"`, from the same pass as the policy's
 * log-probabilities, {@link Policy.tokenLogProbsAndValues}), in passes of similar lengths
 * ({@link rolloutChunks}). The entropy needs the whole distribution, so it is measured
 * through the logits on the first minibatch's worth of items only (see
 * {@link hostRolloutEntropy}).
 */
export function scoreRollout(
  models: PpoModels,
  items: RolloutItem[],
  config: PpoConfig,
  baseline: PositionBaseline | undefined,
): { refLogProbs: number[][]; entropy: number } {
  const refLogProbs = new Map<RolloutItem, number[]>();
  for (const chunk of rolloutChunks(items, config)) {
    const tensors = chunkScores(models, chunk, config);
    const arrays = tensors.map((t) => t.arraySync());
    tf.dispose(tensors);
    fillChunk(chunk, arrays, baseline, refLogProbs);
  }
  const entropy = hostRolloutEntropy(models.policy, items.slice(0, chunkSize(config)), config);
  return { refLogProbs: items.map((item) => refLogProbs.get(item)!), entropy };
}

/**
 * {@link scoreRollout} with asynchronous reads, so on every backend (WebGPU under Deno
 * cannot read synchronously): the same values.
 */
export async function scoreRolloutAsync(
  models: PpoModels,
  items: RolloutItem[],
  config: PpoConfig,
  baseline: PositionBaseline | undefined,
): Promise<{ refLogProbs: number[][]; entropy: number }> {
  const refByItem = new Map<RolloutItem, number[]>();
  for (const chunk of rolloutChunks(items, config)) {
    const tensors = chunkScores(models, chunk, config);
    const arrays = await Promise.all(tensors.map((t) => t.array()));
    tf.dispose(tensors);
    fillChunk(chunk, arrays, baseline, refByItem);
  }
  const refLogProbs = items.map((item) => refByItem.get(item)!);
  const entropyItems = items.slice(0, chunkSize(config));
  if (!isDeviceBackend()) {
    return { refLogProbs, entropy: hostRolloutEntropy(models.policy, entropyItems, config) };
  }
  const entropy = rolloutEntropy(models.policy, entropyItems, config);
  const [sum, tokens] = await Promise.all(entropy.map(async (t) => (await t.data())[0]));
  tf.dispose(entropy);
  return { refLogProbs, entropy: tokens > 0 ? sum / tokens : NaN };
}

/** Items per scoring pass: a minibatch's worth. */
function chunkSize(config: PpoConfig): number {
  return Math.max(1, config.minibatchSize);
}

/**
 * The rollout's items in scoring passes of {@link chunkSize}, taken in order of length
 * (target, then source), so that a pass pads its rows to about their own length rather than
 * to the longest sample of the rollout batch, as the update's minibatches do (`lengthBuckets`).
 */
function rolloutChunks(items: readonly RolloutItem[], config: PpoConfig): RolloutItem[][] {
  const byLength = [...items].sort((a, b) =>
    a.target.length - b.target.length || a.source.length - b.source.length
  );
  const chunks: RolloutItem[][] = [];
  for (let start = 0; start < byLength.length; start += chunkSize(config)) {
    chunks.push(byLength.slice(start, start + chunkSize(config)));
  }
  return chunks;
}

/**
 * `[B, T]` tensors of one scoring pass (the caller reads and disposes them): the policy's
 * log-probabilities, the reference's, and the critic's values where it is a network.
 */
function chunkScores(models: PpoModels, chunk: RolloutItem[], config: PpoConfig): tf.Tensor2D[] {
  return tf.tidy(() => {
    const batch = makeBatch(chunk, models.policy.specials);
    const options = { training: false, temperature: config.temperature };
    let own: tf.Tensor2D;
    let values: tf.Tensor2D | undefined;
    if (config.critic === "head") {
      ({ logProbs: own, values } = logProbsAndValues(models.policy, batch, options));
    } else {
      own = models.policy.tokenLogProbs(batch, options);
      if (config.critic === "network") values = valuesOf(models.valueNet!, batch, false);
    }
    const ref = models.reference.tokenLogProbs(batch, options);
    return values === undefined ? [own, ref] : [own, ref, values];
  });
}

/**
 * Sets the old log-probabilities and values of `chunk`'s items from the read arrays of
 * {@link chunkScores} (values from `baseline` when the critic is not a network) and
 * records each item's reference log-probabilities in `refLogProbs`, each cut to its item's
 * length.
 */
function fillChunk(
  chunk: RolloutItem[],
  [own, ref, critic]: number[][][],
  baseline: PositionBaseline | undefined,
  refLogProbs: Map<RolloutItem, number[]>,
): void {
  const logProbs = perItem(own, chunk);
  const values = critic === undefined
    ? chunk.map((item) => baseline!.predict(item.length))
    : perItem(critic, chunk);
  chunk.forEach((item, i) => {
    item.oldLogProbs = logProbs[i];
    item.oldValues = values[i];
  });
  perItem(ref, chunk).forEach((lp, i) => refLogProbs.set(chunk[i], lp));
}

/**
 * The `ppo/entropy` diagnostic on a host backend: the mean per-token entropy of the sampling
 * policy softmax(logits / temperature) (no gradient, dropout off) over `items`, the first
 * `minibatchSize` items of the rollout batch (NaN for no items or no tokens). The entropy
 * needs the full `[B, T, V]` distribution, so it is measured on that fixed subset rather than
 * on the whole rollout batch, from the logits in one host pass per row
 * ({@link softmaxEntropies}) instead of vocabulary-wide tfjs ops.
 */
function hostRolloutEntropy(
  policy: Policy,
  items: readonly RolloutItem[],
  config: PpoConfig,
): number {
  if (items.length === 0) return NaN;
  const batch = makeBatch(items, policy.specials);
  try {
    const logits = tf.tidy(() => policy.forward(batch, { training: false }).logits);
    const [b, t, vocab] = logits.shape;
    const data = logits.dataSync() as Float32Array;
    const mask = batch.targetMask.dataSync();
    const entropies = softmaxEntropies(data, b * t, vocab, config.temperature, mask);
    logits.dispose();
    let sum = 0;
    let tokens = 0;
    for (let r = 0; r < mask.length; r++) {
      sum += entropies[r] * mask[r];
      tokens += mask[r];
    }
    return tokens > 0 ? sum / tokens : NaN;
  } finally {
    disposeBatch(batch);
  }
}

/**
 * {@link hostRolloutEntropy}'s parts on a device backend, as tfjs ops: the summed per-token
 * entropy over `items` and their token count, as scalar tensors the caller reads and
 * disposes (zeros for no items).
 */
function rolloutEntropy(
  policy: Policy,
  items: readonly RolloutItem[],
  config: PpoConfig,
): tf.Scalar[] {
  if (items.length === 0) return [tf.scalar(0), tf.scalar(0)];
  return tf.tidy(() => {
    const batch = makeBatch(items, policy.specials);
    const { logits } = policy.forward(batch, { training: false });
    const { entropy } = tokenLogProbsAndEntropy(
      logits,
      batch.targetOut,
      batch.targetMask,
      config.temperature,
    );
    return [tf.sum(entropy), tf.sum(batch.targetMask)];
  });
}

/**
 * `[B, T]` per-token inputs of a minibatch's PPO loss (zero-padded; no gradient): the old
 * log-probabilities and values from {@link scoreRollout}, the advantages and value targets.
 */
export type MinibatchTargets = PpoLossTargets;

/**
 * The PPO loss of one minibatch, to be called inside the gradient tape: clipped policy loss
 * + `valueCoef` x (clipped) value loss - `entropyCoef` x mean entropy, with the diagnostics
 * (named as {@link StepStats}'s fields) given to `record`; by default they are read at once
 * into `stats` (host backends only: on device backends pass a recorder that takes tensors,
 * such as {@link optimizerStep}'s).
 *
 * With `entropyCoef` 0 (the default) the log-probabilities come from the model's fused
 * output layer ({@link Policy.tokenLogProbs} at the run's temperature) and the values from
 * the value head alone (with `critic: "head"` both from one pass,
 * {@link Policy.tokenLogProbsAndValues}): no `[B, T, V]` tensor is built, and
 * `stats.entropy` stays NaN. Otherwise the entropy needs the whole distribution, and one
 * forward pass through the logits gives log-probabilities, entropy and values. Either way
 * the loss is the same function of the weights (up to float32 rounding: the fused op sums
 * in another order).
 */
export function ppoLoss(
  models: PpoModels,
  batch: TokenBatch,
  targets: MinibatchTargets,
  config: PpoConfig,
  stats: StepStats,
  record: LossRecorder = (name: string, value: number) => {
    stats[name as keyof StepStats] = value;
  },
): tf.Scalar {
  const training = config.dropout;
  const mask = batch.targetMask;
  let logProbs: tf.Tensor2D;
  let entropy: tf.Scalar | undefined;
  let values: tf.Tensor2D | undefined;
  if (config.entropyCoef !== 0) {
    const forward = models.policy.forward(batch, { training });
    const own = tokenLogProbsAndEntropy(
      forward.logits,
      batch.targetOut,
      mask,
      config.temperature,
    );
    logProbs = own.logProbs;
    entropy = maskedMean(own.entropy, mask);
    if (config.critic === "head") values = forward.values;
  } else {
    const options = { training, temperature: config.temperature };
    if (config.critic === "head") {
      ({ logProbs, values } = logProbsAndValues(models.policy, batch, options));
    } else logProbs = models.policy.tokenLogProbs(batch, options);
  }
  if (config.critic === "network") values = valuesOf(models.valueNet!, batch, training);
  let loss = clippedLosses(logProbs, values, targets, mask, config, record);
  if (entropy !== undefined) {
    loss = tf.sub(loss, tf.mul(entropy, config.entropyCoef)) as tf.Scalar;
    recordScalar(record, "entropy", entropy);
  }
  return loss;
}

/**
 * The clipped policy loss plus `valueCoef` x the clipped value loss (when there are values),
 * their diagnostics given to `record`: one fused host op ({@link fusedPpoLoss}) on host
 * backends, {@link clippedPolicyLoss} and {@link clippedValueLoss} as tfjs ops on device
 * backends. The same function and gradient either way.
 */
function clippedLosses(
  logProbs: tf.Tensor2D,
  values: tf.Tensor2D | undefined,
  targets: MinibatchTargets,
  mask: tf.Tensor2D,
  config: PpoConfig,
  record: LossRecorder,
): tf.Scalar {
  if (!isDeviceBackend()) {
    const fused = fusedPpoLoss(logProbs, values, targets, mask, config);
    for (const [name, value] of Object.entries(fused.diagnostics)) record(name, value);
    return fused.loss;
  }
  const pl = clippedPolicyLoss(
    logProbs,
    targets.oldLogProbs,
    targets.advantages,
    mask,
    config.clipRange,
  );
  let loss = pl.loss;
  if (values !== undefined) {
    const vl = clippedValueLoss(
      values,
      targets.oldValues,
      targets.returns,
      mask,
      config.valueClipRange,
    );
    loss = tf.add(loss, tf.mul(vl.loss, config.valueCoef)) as tf.Scalar;
    recordScalar(record, "valueLoss", vl.loss);
    recordScalar(record, "valueClipFraction", vl.clipFraction);
  }
  recordScalar(record, "policyLoss", pl.loss);
  recordScalar(record, "clipFraction", pl.clipFraction);
  recordScalar(record, "approxKl", pl.approxKl);
  return loss;
}

/**
 * One Adam step of PPO on a minibatch of scored items (their old log-probabilities, values,
 * advantages and returns filled in), at learning rate `lr`; returns its diagnostics.
 *
 * @throws {UserError} when the loss or the gradient norm is not finite (names `step`).
 */
export async function updateStep(
  models: PpoModels,
  items: readonly RolloutItem[],
  config: PpoConfig,
  optimizer: Adam,
  variables: tf.Variable[],
  lr: number,
  step: number,
): Promise<StepStats> {
  const batch = makeBatch(items, models.policy.specials);
  const t = batch.targetOut.shape[1];
  const targets: MinibatchTargets = {
    oldLogProbs: padded(items.map((i) => i.oldLogProbs), t),
    oldValues: padded(items.map((i) => i.oldValues), t),
    advantages: padded(items.map((i) => i.advantages), t),
    returns: padded(items.map((i) => i.returns), t),
  };
  const stats = emptyStepStats();
  try {
    const update = await optimizerStep(
      variables,
      optimizer,
      (record) => ppoLoss(models, batch, targets, config, stats, record),
      lr,
      config.clipNorm,
      (name, value) => (stats[name as keyof StepStats] = value),
    );
    stats.loss = update.loss;
    stats.gradNorm = update.norm;
    if (!update.applied) {
      throw new UserError(
        `ppo: the loss became ${
          Number.isFinite(stats.loss) ? "finite but the gradient norm " + update.norm : stats.loss
        } at gradient step ${step}; training stopped (lower the learning rate)`,
      );
    }
  } finally {
    disposeBatch(batch);
    tf.dispose(Object.values(targets));
  }
  return stats;
}
