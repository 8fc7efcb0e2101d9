/**
 * Times the phases an experiment spends its time in, at the model size of the LibreOffice
 * experiment (`experiments/ppo_vs_rest.json`: d_model 128, 4 heads, FFN 512, 2+2 layers,
 * shared vocabulary 4000, dropout 0.1), through the framework's own code paths:
 *
 * - **BC step**: one training step as BC takes it (`optimizerStep` of `core/train.ts` on
 *   the `bc` loss: label smoothing 0.1, dropout on, global-norm clip 1, the framework's
 *   Adam), batch 64, sources and targets of 16 tokens (15 random ids + EOS); counted:
 *   64 x 16 target tokens per step.
 * - **Grow batch**: one `Policy.sample` call as a Grow shard makes it: 16 sources of 16
 *   tokens, 4 samples each at temperature 0.8 (64 decoded rows, one batch), 24 steps, with
 *   behaviour log-probabilities; counted: samples (64 per batch).
 * - **PPO rollout + update**: one rollout batch of the `ppo` algorithm without the reward
 *   (random scores): 128 sources sampled once each at temperature 1 (24 steps), scored
 *   (`scoreRolloutAsync`: the policy's log-probabilities and value head, the BC reference's
 *   log-probabilities, the entropy diagnostic on the first minibatch), KL-penalised GAE
 *   advantages, then 4 epochs of minibatches of 64 (`updateStep`: the clipped policy and
 *   value losses, clip 1, Adam), 8 updates; counted: samples (128 per rollout).
 *
 * The models are freshly initialised (seed 1), so the samples run to the length limit (a
 * fresh model almost never draws EOS), as in `bench/pytorch_bench.py --phases`, which
 * times the same three phases in PyTorch. Each phase is run once to warm up, then repeated
 * for `seconds` (at least twice); wall-clock and CPU time (user + system, every thread) are
 * both reported.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import process from "node:process";
import ppo from "../plugins/algorithms/ppo/mod.ts";
import {
  type PpoConfig,
  type PpoModels,
  type RolloutItem,
  scoreRolloutAsync,
  updateStep,
} from "../plugins/algorithms/ppo/loop.ts";
import { rolloutAdvantages } from "../plugins/algorithms/ppo/math.ts";
import { Adam } from "../core/optim.ts";
import { lengthBuckets, optimizerStep } from "../core/train.ts";
import { makeBatch, nllLoss } from "../core/batch.ts";
import { type JsonSchema, pluginDefaults, type PluginDefinition } from "../core/plugin.ts";
import { rowTarget } from "../core/rest.ts";
import { Rng } from "../core/random.ts";
import { benchTransformer } from "./model.ts";
import type { Policy } from "../core/types.ts";

/** Model and phase sizes of {@link benchPhases}. */
export interface PhaseShape {
  /** Model width. */
  dModel: number;
  /** Attention heads. */
  heads: number;
  /** Feed-forward width. */
  ffn: number;
  /** Encoder and decoder layers, each. */
  layers: number;
  /** Shared vocabulary. */
  vocab: number;
  /** Dropout during BC. */
  dropout: number;
  /** BC's label smoothing. */
  labelSmoothing: number;
  /** BC batch rows. */
  bcBatch: number;
  /** Source length (EOS included). */
  sourceLength: number;
  /** BC target length (EOS included). */
  targetLength: number;
  /** Sources of a Grow batch. */
  growSources: number;
  /** Samples per Grow source. */
  growSamples: number;
  /** Grow's sampling temperature. */
  growTemperature: number;
  /** Decoding steps. */
  maxLen: number;
  /** Samples per PPO rollout batch. */
  rolloutSize: number;
  /** Samples per PPO update. */
  minibatchSize: number;
  /** PPO epochs per rollout batch. */
  epochs: number;
}

/** The LibreOffice experiment's sizes (see the module description). */
export const PHASE_SHAPE: Readonly<PhaseShape> = {
  dModel: 128,
  heads: 4,
  ffn: 512,
  layers: 2,
  vocab: 4000,
  dropout: 0.1,
  labelSmoothing: 0.1,
  bcBatch: 64,
  sourceLength: 16,
  targetLength: 16,
  growSources: 16,
  growSamples: 4,
  growTemperature: 0.8,
  maxLen: 24,
  rolloutSize: 128,
  minibatchSize: 64,
  epochs: 4,
};

/** Time per call and throughput of one phase. */
export interface PhaseTiming {
  /** Milliseconds per call (wall clock). */
  ms: number;
  /** CPU milliseconds per call (user + system, every thread of the process). */
  cpu_ms: number;
  /** Units (tokens or samples) per second of wall clock. */
  per_s: number;
  /** Units per CPU-second. */
  per_cpu_s: number;
  /** Calls timed (after one warm-up call). */
  calls: number;
  /** Units counted per call. */
  units: number;
}

/** The three phases' timings. */
export interface PhaseBench {
  /** One BC training step; units: target tokens. */
  bc_step: PhaseTiming;
  /** One Grow sampling batch; units: samples. */
  grow_batch: PhaseTiming;
  /** One PPO rollout batch with its updates; units: samples. */
  ppo_rollout: PhaseTiming;
}

/** CPU time (user + system, every thread) of this process so far, in milliseconds. */
function cpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e3;
}

/** Calls `fn` once to warm up, then for about `seconds` (at least twice); `units` per call. */
async function timePhase(
  fn: () => Promise<unknown>,
  units: number,
  seconds: number,
): Promise<PhaseTiming> {
  await fn();
  let calls = 0;
  const start = performance.now();
  const cpuStart = cpuMs();
  while (calls < 2 || performance.now() - start < seconds * 1000) {
    await fn();
    calls++;
  }
  const ms = (performance.now() - start) / calls;
  const cpu = (cpuMs() - cpuStart) / calls;
  const round = (x: number) => Math.round(x * 10) / 10;
  return {
    ms: round(ms),
    cpu_ms: round(cpu),
    per_s: round((units * 1000) / ms),
    per_cpu_s: round((units * 1000) / cpu),
    calls,
    units,
  };
}

function randomIds(
  rng: Rng,
  rows: number,
  length: number,
  vocab: number,
): number[][] {
  return Array.from(
    { length: rows },
    () => Array.from({ length }, () => 4 + rng.int(vocab - 4)),
  );
}

/**
 * Times the three phases on the active backend (see the module description), at `shape`
 * (default {@link PHASE_SHAPE}; the tests pass a tiny one).
 */
export async function benchPhases(
  seconds = 5,
  shape: Readonly<PhaseShape> = PHASE_SHAPE,
): Promise<PhaseBench> {
  const s = shape;
  const build = (valueHead: boolean) => benchTransformer(s, s.dropout, valueHead);
  const rng = new Rng(1);

  const bcPolicy = build(false);
  const bcStep = await benchBcStep(bcPolicy, s, rng, seconds);
  bcPolicy.dispose();

  const growPolicy = build(false);
  const growSources = randomIds(
    rng,
    s.growSources,
    s.sourceLength - 1,
    s.vocab,
  );
  let growSeed = 0;
  const growBatch = await timePhase(
    () =>
      growPolicy.sample(growSources, {
        n: s.growSamples,
        temperature: s.growTemperature,
        topK: 0,
        topP: 1,
        maxLen: s.maxLen,
        batchSize: s.growSources * s.growSamples,
        seed: growSeed++,
        behaviourLogProbs: true,
      }),
    s.growSources * s.growSamples,
    seconds,
  );
  growPolicy.dispose();

  const models: PpoModels = { policy: build(true), reference: build(false) };
  const ppoRollout = await benchPpoRollout(models, s, rng, seconds);
  models.policy.dispose();
  models.reference.dispose();
  return { bc_step: bcStep, grow_batch: growBatch, ppo_rollout: ppoRollout };
}

/** BC steps on one fixed batch (dropout and label smoothing as the LibreOffice BC). */
async function benchBcStep(
  policy: Policy,
  s: Readonly<PhaseShape>,
  rng: Rng,
  seconds: number,
): Promise<PhaseTiming> {
  const sources = randomIds(rng, s.bcBatch, s.sourceLength - 1, s.vocab);
  const targets = randomIds(rng, s.bcBatch, s.targetLength - 1, s.vocab);
  const batch = makeBatch(
    sources.map((source, i) => ({ source, target: targets[i] })),
    {
      ...policy.specials,
    },
  );
  const optimizer = new Adam(policy.variables);
  const loss = () =>
    nllLoss(policy, batch, {
      labelSmoothing: s.labelSmoothing,
      training: true,
      average: "token",
    });
  try {
    return await timePhase(
      () => optimizerStep(policy.variables, optimizer, loss, 1e-4, 1),
      s.bcBatch * s.targetLength,
      seconds,
    );
  } finally {
    tf.dispose(Object.values(batch));
    optimizer.dispose();
  }
}

/** PPO rollout batches with their updates (random scores instead of a reward). */
async function benchPpoRollout(
  models: PpoModels,
  s: Readonly<PhaseShape>,
  rng: Rng,
  seconds: number,
): Promise<PhaseTiming> {
  // The defaults, the nested KL settings' included (pluginDefaults fills the top level).
  const klSchema = (ppo.configSchema.properties as Record<string, JsonSchema>).kl;
  const config = {
    ...pluginDefaults(ppo),
    kl: pluginDefaults({ configSchema: klSchema } as PluginDefinition),
    rolloutSize: s.rolloutSize,
    minibatchSize: s.minibatchSize,
    epochs: s.epochs,
  } as unknown as PpoConfig;
  const sources = randomIds(rng, s.rolloutSize, s.sourceLength - 1, s.vocab);
  const variables = models.policy.variables;
  const optimizer = new Adam(variables);
  let step = 0;
  const rollout = async () => {
    const generations = await models.policy.sample(sources, {
      n: 1,
      temperature: config.temperature,
      topK: 0,
      topP: 1,
      maxLen: s.maxLen,
      batchSize: s.minibatchSize,
      seed: step,
    });
    const items: RolloutItem[] = generations.map(([g], i) => ({
      ...rowTarget(sources[i], g.tokens, models.policy.specials.eos),
      example: { source: "", reference: "" },
      hypothesis: "",
      length: g.tokens.length,
      score: rng.next(),
      oldLogProbs: [],
      oldValues: [],
      advantages: [],
      returns: [],
    }));
    const { refLogProbs } = await scoreRolloutAsync(
      models,
      items,
      config,
      undefined,
    );
    const adv = rolloutAdvantages(
      items.map((item, i) => ({
        logProbs: item.oldLogProbs,
        refLogProbs: refLogProbs[i],
        values: item.oldValues,
        score: item.score,
      })),
      {
        beta: config.kl.coef,
        gamma: config.gamma,
        lambda: config.lambda,
        whiten: true,
      },
    );
    items.forEach((item, i) => {
      item.advantages = adv.advantages[i];
      item.returns = adv.returns[i];
    });
    for (let epoch = 0; epoch < config.epochs; epoch++) {
      for (const minibatch of lengthBuckets(items, config.minibatchSize, rng)) {
        step++;
        await updateStep(
          models,
          minibatch,
          config,
          optimizer,
          variables,
          1e-5,
          step,
        );
      }
    }
  };
  try {
    return await timePhase(rollout, s.rolloutSize, seconds);
  } finally {
    optimizer.dispose();
  }
}
