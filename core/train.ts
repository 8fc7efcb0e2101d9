/**
 * The supervised training loop shared by BC and Improve: length-bucketed batches, Adam with
 * warm-up and decay, gradient clipping, periodic evaluation with early stopping, and a
 * callback when the evaluation score improves (to checkpoint the best weights).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { UserError } from "./errors.ts";
import { Adam, clipToNorm, globalNormSquared, learningRate, readsOnlyAsync } from "./optim.ts";
import { Rng } from "./random.ts";
import type {
  LossRecorder,
  Metrics,
  MetricsLog,
  Policy,
  Progress,
  TokenBatch,
  TrainSettings,
} from "./types.ts";
import { makeBatch } from "./batch.ts";
import { profiler } from "./profile.ts";
import {
  assignExtras,
  checkMeta,
  type MetaKind,
  notResumable,
  type UnitCheckpoint,
  unitCheckpoint,
  unitStateError,
} from "./resume.ts";

/** The counters of a training state and their kinds (checked when it is loaded). */
const TRAIN_STATE_FIELDS: Record<string, MetaKind> = {
  step: "count",
  epoch: "count",
  consumed: "count",
  bestScore: "number?",
  bestStep: "count",
  sinceBest: "count",
  tokens: "count",
  windowTokens: "count",
  windowLoss: "number",
  windowSteps: "count",
  adamStep: "count",
};

/** The counters a training loop carries from step to step (saved in its training state). */
interface TrainCounters {
  /** Optimizer steps taken. */
  step: number;
  /** The current epoch (0-based). */
  epoch: number;
  /** Batches of the current epoch taken. */
  consumed: number;
  /** Best evaluation score (NaN: none yet). */
  bestScore: number;
  /** Step of the best score. */
  bestStep: number;
  /** Evaluations since the best one. */
  sinceBest: number;
  /** Target tokens trained on. */
  tokens: number;
  /** Target tokens since the last metrics record. */
  windowTokens: number;
  /** Sum of the losses since the last metrics record. */
  windowLoss: number;
  /** Steps since the last metrics record. */
  windowSteps: number;
}

/** One training pair as token ids (no BOS/EOS: the batcher adds them). */
export interface TokenPair {
  /** Source ids. */
  source: number[];
  /** Target ids. */
  target: number[];
  /** The target was cut off at the length limit: no EOS is appended. */
  truncated?: boolean;
}

/**
 * Hands the one-element tensor `value` to `record` as `name`: the tensor itself (kept out of the
 * enclosing tidy) where the receiver takes tensors ({@link LossRecorder.tensor}, as
 * {@link optimizerStep}'s does: it reads them after the step, asynchronously), else its
 * number, read at once (which device backends such as WebGPU under Deno cannot do).
 */
export function recordScalar(record: LossRecorder, name: string, value: tf.Tensor): void {
  if (record.tensor !== undefined) record.tensor(name, tf.keep(value) as tf.Scalar);
  else record(name, value.dataSync()[0]);
}

/** What the loop calls back into. */
export interface TrainHooks<P extends TokenPair = TokenPair> {
  /**
   * The scalar loss of a batch (called inside gradient computation). `items` are the batch's
   * pairs; `record` takes the step's diagnostics (see {@link LossRecorder}), which reach
   * {@link TrainHooks.record} once read.
   */
  loss(batch: TokenBatch, items: readonly P[], record: LossRecorder): tf.Scalar;
  /** Receives the diagnostics `loss` recorded, as numbers, after each step (in order). */
  record?(name: string, value: number): void;
  /** Trainable variables besides the policy's (e.g. a loss's temperature). */
  variables?: readonly tf.Variable[];
  /** Called after every optimizer step. */
  afterStep?(step: number): void;
  /** Scores the current weights; higher is better. */
  evaluate?(step: number): Promise<{ score: number; metrics: Metrics }>;
  /** Called when the evaluation score improves (save a checkpoint here). */
  onBest?(step: number, score: number): Promise<void>;
  /** Metrics log; keys are prefixed with `prefix`. */
  metrics: MetricsLog;
  /** Namespace of the loop's metrics, e.g. `bc` or `improve`. */
  prefix: string;
  /** Step offset for metrics (so several loops share one step axis). */
  stepOffset?: number;
  /** Progress display. */
  progress?: Progress;
  /** Log lines. */
  log?(message: string): void;
  /**
   * Makes the loop resumable: every `everySeconds` (at a step boundary) it saves its state
   * (weights, optimizer moments, the loss's variables, counters) as `<dir>/<name>`, and a
   * loop that finds that state continues from it, rewinding `metricsPath` to the length it
   * had then. Only for losses whose state is their `variables`. The caller removes the state
   * (with `clearUnitState`) once it has saved the loop's result.
   */
  checkpoint?: { dir: string; name: string; everySeconds: number; metricsPath: string };
}

/** What a finished loop reports. */
export interface TrainResult {
  /** Optimizer steps taken. */
  steps: number;
  /** Best evaluation score (NaN when never evaluated). */
  bestScore: number;
  /** Step of the best score. */
  bestStep: number;
  /** Why the loop stopped. */
  stopped: "steps" | "patience";
  /** Target tokens per second over the loop. */
  tokensPerSecond: number;
}

/**
 * Groups pairs into batches of similar length (sorted by target then source length),
 * and shuffles the order of the batches with `rng`.
 */
export function lengthBuckets<P extends TokenPair>(
  pairs: readonly P[],
  batchSize: number,
  rng: Rng,
): P[][] {
  if (!(batchSize >= 1)) throw new RangeError(`batchSize must be >= 1, got ${batchSize}`);
  // Shuffle first so equal lengths are mixed differently each epoch, then sort (stable).
  const order = rng.shuffle(pairs.map((_, i) => i));
  order.sort((a, b) =>
    pairs[a].target.length - pairs[b].target.length ||
    pairs[a].source.length - pairs[b].source.length
  );
  const batches: P[][] = [];
  for (let i = 0; i < order.length; i += batchSize) {
    batches.push(order.slice(i, i + batchSize).map((j) => pairs[j]));
  }
  return rng.shuffle(batches);
}

/**
 * `sys/tensors` (live tfjs tensors: flat over a healthy run), `sys/rss_mb` (process
 * resident memory), and the parts of it JavaScript accounts for: `sys/heap_mb` (V8's heap)
 * and `sys/external_mb` (array buffers, i.e. tensor data and work buffers). RSS well above
 * their sum is memory held outside them (WebAssembly memories, BLAS, the allocator). These
 * differ between runs, so they are left out of determinism checks.
 */
export function systemMetrics(): Metrics {
  const memory = Deno.memoryUsage();
  return {
    "sys/tensors": tf.memory().numTensors,
    "sys/rss_mb": Math.round(memory.rss / 2 ** 20),
    "sys/heap_mb": Math.round(memory.heapTotal / 2 ** 20),
    "sys/external_mb": Math.round(memory.external / 2 ** 20),
  };
}

/** Disposes every tensor of a batch. */
export function disposeBatch(batch: TokenBatch): void {
  batch.source.dispose();
  batch.targetIn.dispose();
  batch.targetOut.dispose();
  batch.targetMask.dispose();
}

/** What {@link optimizerStep} did. */
export interface StepResult {
  /** The loss before the update. */
  loss: number;
  /** The global gradient norm before clipping. */
  norm: number;
  /** False when the loss or the norm was not finite: then nothing was applied. */
  applied: boolean;
}

/**
 * One optimizer step, the one every training loop (BC, Improve, PPO) and the benchmark
 * take: gradients of `loss` with respect to `variables`, clipped to the global norm
 * `clipNorm` (0: off), then one Adam update at learning rate `lr`. A loss or gradient norm
 * that is not finite applies nothing. The diagnostics `loss` gives its {@link LossRecorder} are
 * read (tensors asynchronously, with the loss and the norm) and handed to `onRecord` in the
 * order recorded. Frees every tensor it makes, and the recorded tensors.
 */
export async function optimizerStep(
  variables: readonly tf.Variable[],
  optimizer: Adam,
  loss: (record: LossRecorder) => tf.Scalar,
  lr: number,
  clipNorm: number,
  onRecord?: (name: string, value: number) => void,
): Promise<StepResult> {
  const recorded: [string, number | tf.Scalar][] = [];
  const record: LossRecorder = (name: string, v: number) => void recorded.push([name, v]);
  record.tensor = (name, v) => void recorded.push([name, tf.keep(v)]);
  const tensors = () => recorded.flatMap(([, v]) => typeof v === "number" ? [] : [v]);
  let computed: ReturnType<typeof tf.variableGrads>;
  try {
    computed = tf.variableGrads(() => loss(record), [...variables]);
  } catch (error) {
    tf.dispose(tensors());
    throw error;
  }
  const { value, grads } = computed;
  const ordered = variables.map((v) => grads[v.name]);
  const present = ordered.filter((g): g is tf.Tensor => g !== undefined);
  const squared = globalNormSquared(present);
  const [lossValue, normSquared, diagnostics] = await Promise.all([
    value.data(),
    squared.data(),
    Promise.all(recorded.map(([, v]) => typeof v === "number" ? v : v.data().then((d) => d[0]))),
  ]);
  tf.dispose([value, squared, ...tensors()]);
  if (onRecord !== undefined) recorded.forEach(([name], i) => onRecord(name, diagnostics[i]));
  const clipped = clipToNorm(present, Math.sqrt(normSquared[0]), clipNorm);
  tf.dispose(Object.values(grads));
  const applied = Number.isFinite(lossValue[0]) && Number.isFinite(clipped.norm);
  if (applied) {
    let k = 0;
    optimizer.apply(ordered.map((g) => g === undefined ? undefined : clipped.grads[k++]), lr);
  }
  tf.dispose(clipped.grads);
  // Where tensors can only be read asynchronously, bring the new weights to the host now, so
  // that checkpoints and decoding (which read them synchronously) find them there.
  if (applied && readsOnlyAsync()) await Promise.all(variables.map((v) => v.data()));
  return { loss: lossValue[0], norm: clipped.norm, applied };
}

/**
 * Trains `policy` on `pairs` with `hooks.loss`. The weights are updated in place; the
 * caller restores the best checkpoint afterwards if it wants the best rather than the last.
 *
 * @throws {UserError} when the loss or the gradient norm is not finite (names the step).
 */
export async function trainLoop<P extends TokenPair>(
  policy: Policy,
  pairs: readonly P[],
  settings: TrainSettings,
  hooks: TrainHooks<P>,
  seed: number,
): Promise<TrainResult> {
  if (pairs.length === 0) throw new UserError(`${hooks.prefix}: no training pairs`);
  // A fresh stream per label: fork() advances its parent, so a shared parent would make a
  // label's stream depend on how many forks came before it.
  const derive = (label: string) => new Rng(seed).fork(label);
  // Batches of epoch e are a function of (seed, e) alone, so a resumed loop regenerates them.
  const epochBatches = (epoch: number) =>
    lengthBuckets(pairs, settings.batchSize, derive(`${hooks.prefix}/batches/${epoch}`));
  const variables = [...policy.variables, ...(hooks.variables ?? [])];
  const optimizer = new Adam(variables);
  const offset = hooks.stepOffset ?? 0;
  let windowStart = performance.now();
  const started = performance.now();
  let stopped: TrainResult["stopped"] = "steps";
  const checkpoint = trainCheckpoint(
    policy,
    optimizer,
    hooks,
    Math.ceil(pairs.length / settings.batchSize),
  );
  const c = await checkpoint.restore() ?? startCounters();
  // The batches of the current epoch not yet taken (none: the next epoch starts).
  let batches = c.consumed > 0 ? epochBatches(c.epoch).slice(0, -c.consumed) : [];

  const evaluate = async () => {
    if (hooks.evaluate === undefined) return false;
    const { score, metrics } = await profiler.phase("select", () => hooks.evaluate!(c.step));
    await hooks.metrics.log(metrics, offset + c.step);
    if (Number.isNaN(c.bestScore) || score > c.bestScore) {
      c.bestScore = score;
      c.bestStep = c.step;
      c.sinceBest = 0;
      await hooks.onBest?.(c.step, score);
    } else {
      c.sinceBest++;
    }
    return settings.patience > 0 && c.sinceBest >= settings.patience;
  };

  const evaluatedAtStart = settings.evalAtStart === true && c.step === 0;
  if (evaluatedAtStart) await evaluate();
  while (c.step < settings.steps) {
    if (batches.length === 0) {
      if (c.consumed > 0 || c.step > 0) c.epoch++;
      c.consumed = 0;
      batches = epochBatches(c.epoch);
    }
    const items = batches.pop()!;
    c.consumed++;
    const batch = makeBatch(items, policy.specials);
    c.step++;
    const step = c.step;
    policy.reseed?.(derive(`${hooks.prefix}/step/${step}`).nextUint32());
    const lr = learningRate(step, {
      peak: settings.learningRate,
      warmup: settings.warmupSteps,
      total: settings.steps,
      schedule: settings.schedule,
    });
    const update = await optimizerStep(
      variables,
      optimizer,
      (record) => hooks.loss(batch, items, record),
      lr,
      settings.clipNorm,
      hooks.record,
    );
    if (!update.applied) {
      disposeBatch(batch);
      optimizer.dispose();
      const what = Number.isFinite(update.loss)
        ? `the gradient norm became ${update.norm} (the loss was ${update.loss})`
        : `the loss became ${update.loss}`;
      const global = offset > 0 ? ` (step ${offset + step} of the metrics log)` : "";
      throw new UserError(
        `${hooks.prefix}: ${what} at step ${step}${global}; training stopped before that ` +
          `update, so the weights are those after step ${step - 1} and files already written ` +
          `are kept (lower the learning rate, check the data or the loss)`,
      );
    }
    hooks.afterStep?.(step);
    // Each target gets an EOS from the batcher.
    const targetTokens = items.reduce(
      (sum, item) => sum + item.target.length + (item.truncated ? 0 : 1),
      0,
    );
    disposeBatch(batch);

    profiler.count(targetTokens, "tokens");
    c.tokens += targetTokens;
    c.windowTokens += targetTokens;
    c.windowLoss += update.loss;
    c.windowSteps++;
    hooks.progress?.tick();
    const logEvery = Math.max(1, Math.min(50, Math.floor(settings.steps / 20)));
    if (step % logEvery === 0 || step === settings.steps) {
      const seconds = (performance.now() - windowStart) / 1000;
      await hooks.metrics.log({
        [`${hooks.prefix}/loss`]: c.windowLoss / c.windowSteps,
        [`${hooks.prefix}/lr`]: lr,
        [`${hooks.prefix}/grad_norm`]: update.norm,
        [`${hooks.prefix}/tokens_per_s`]: seconds > 0 ? c.windowTokens / seconds : NaN,
        ...systemMetrics(),
      }, offset + step);
      c.windowTokens = 0;
      c.windowLoss = 0;
      c.windowSteps = 0;
      windowStart = performance.now();
    }
    if (settings.evalEvery > 0 && step % settings.evalEvery === 0 && step < settings.steps) {
      if (await evaluate()) {
        stopped = "patience";
        hooks.log?.(
          `${hooks.prefix}: no improvement in ${settings.patience} evaluations; stopping at step ${step}`,
        );
        break;
      }
    }
    if (step < settings.steps && checkpoint.due()) await checkpoint.save(c);
  }
  if (stopped === "steps" && !(evaluatedAtStart && c.step === 0)) await evaluate();
  optimizer.dispose();
  const seconds = (performance.now() - started) / 1000;
  return {
    steps: c.step,
    bestScore: c.bestScore,
    bestStep: c.bestStep,
    stopped,
    tokensPerSecond: seconds > 0 ? c.tokens / seconds : NaN,
  };
}

/** The counters of a loop that starts from its first step. */
function startCounters(): TrainCounters {
  return {
    step: 0,
    epoch: 0,
    consumed: 0,
    bestScore: NaN,
    bestStep: 0,
    sinceBest: 0,
    tokens: 0,
    windowTokens: 0,
    windowLoss: 0,
    windowSteps: 0,
  };
}

/**
 * The checkpoint of a training loop with `hooks.checkpoint` (none without): the weights,
 * Adam's moments and step, the loss's variables (`hooks.variables`) and the counters, saved
 * every `everySeconds`. An epoch has `batchesPerEpoch` batches.
 */
function trainCheckpoint(
  policy: Policy,
  optimizer: Adam,
  hooks: Pick<TrainHooks, "checkpoint" | "variables" | "prefix" | "progress" | "log">,
  batchesPerEpoch: number,
): UnitCheckpoint<TrainCounters> {
  const cp = hooks.checkpoint;
  if (cp === undefined) return notResumable();
  const extraVariables = [...(hooks.variables ?? [])];
  return unitCheckpoint({ ...cp, resume: true }, policy, {
    async encode(c) {
      const adam = await optimizer.state();
      return {
        extras: [...adam.m, ...adam.v, ...extraVariables],
        meta: {
          ...c,
          bestScore: Number.isNaN(c.bestScore) ? null : c.bestScore,
          adamStep: adam.step,
        },
      };
    },
    decode(saved) {
      checkMeta(saved, TRAIN_STATE_FIELDS);
      const m = saved.meta as Record<string, number>;
      if (m.consumed > batchesPerEpoch) {
        throw unitStateError(
          saved.file,
          `meta.consumed is ${m.consumed}, more than the ${batchesPerEpoch} batches of an epoch`,
        );
      }
      return {
        step: m.step,
        epoch: m.epoch,
        consumed: m.consumed,
        bestScore: m.bestScore ?? NaN,
        bestStep: m.bestStep,
        sinceBest: m.sinceBest,
        tokens: m.tokens,
        windowTokens: m.windowTokens,
        windowLoss: m.windowLoss,
        windowSteps: m.windowSteps,
      };
    },
    load(saved) {
      const adam = saved.extras.length - extraVariables.length;
      assignExtras(extraVariables, saved.extras.slice(adam), saved.file);
      optimizer.restore({
        step: saved.meta.adamStep as number,
        m: saved.extras.slice(0, adam / 2),
        v: saved.extras.slice(adam / 2, adam),
      });
    },
    resumed(c) {
      hooks.progress?.tick(c.step);
      hooks.log?.(`${hooks.prefix}: resumed at step ${c.step} from ${cp.dir}/${cp.name}`);
    },
  });
}
