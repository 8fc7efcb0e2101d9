/**
 * The math of online PPO for sequence generation (Schulman et al. 2017, arXiv 1707.06347;
 * as used for language models by Ziegler et al. 2019, arXiv 1909.08593, and Stiennon et
 * al. 2020, arXiv 2009.01325), kept free of any policy or run state so it can be tested
 * on hand-computed cases:
 *
 * - {@link klPenaltyRewards}: per-token rewards r_t = -beta (log pi_old(a_t) - log
 *   pi_BC(a_t)), plus the sequence reward at the last token;
 * - {@link gae}: generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438)
 *   and the value targets (returns) of one sequence;
 * - {@link whiten}, {@link explainedVariance}: advantage normalisation and the value
 *   diagnostic;
 * - {@link rolloutAdvantages}: the above put together for a whole rollout batch (KL
 *   penalty, GAE per sequence, returns, whitening over every token of the batch);
 * - {@link AdaptiveKl}: the adaptive KL coefficient of Ziegler et al. 2019 (Section 2.2);
 *   {@link FixedKl} the constant one;
 * - {@link clippedPolicyLoss}, {@link clippedValueLoss}: the PPO-clip objectives on
 *   `[B, T]` tensors, masked to real tokens; {@link fusedPpoLoss}: both, weighted, as one
 *   differentiable host op with its diagnostics (host backends);
 * - {@link PositionBaseline}: a critic-free baseline for policies without a value head.
 *
 * Per-token log-probabilities, entropies and masked means are in `../../_nn/token_stats.ts`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { appendAll } from "../../../core/append.ts";
import { maskedMean } from "../../_nn/token_stats.ts";
import { customOp, values as bufferOf } from "../../_nn/custom_op.ts";

/** Per-token rewards of one sampled sequence and its KL estimate to the reference. */
export interface PenalisedRewards {
  /** r_t = -beta (log pi_old(a_t) - log pi_ref(a_t)), plus the sequence score at the last token. */
  rewards: number[];
  /** sum_t (log pi_old(a_t) - log pi_ref(a_t)): the sample estimate of KL(pi_old || pi_ref). */
  kl: number;
}

/**
 * Per-token rewards with a KL penalty (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020,
 * eq. 1): r_t = -beta (logProbs[t] - refLogProbs[t]) at every token, and the sequence
 * score is added at the last token. Returns the rewards and the sequence's KL estimate.
 *
 * @throws {RangeError} when the arrays differ in length or are empty.
 */
export function klPenaltyRewards(
  logProbs: readonly number[],
  refLogProbs: readonly number[],
  beta: number,
  score: number,
): PenalisedRewards {
  if (logProbs.length !== refLogProbs.length) {
    throw new RangeError(
      `klPenaltyRewards: ${logProbs.length} log-probabilities but ${refLogProbs.length} reference log-probabilities`,
    );
  }
  if (logProbs.length === 0) throw new RangeError("klPenaltyRewards: empty sequence");
  let kl = 0;
  const rewards = logProbs.map((lp, t) => {
    const logRatio = lp - refLogProbs[t];
    kl += logRatio;
    return -beta * logRatio;
  });
  rewards[rewards.length - 1] += score;
  return { rewards, kl };
}

/** Advantages and value targets of one sequence. */
export interface GaeResult {
  /** A_t = sum_{l >= 0} (gamma lambda)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t. */
  advantages: number[];
  /** Value targets A_t + V_t (the TD(lambda) returns). */
  returns: number[];
}

/**
 * Generalised advantage estimation over one sequence (Schulman et al. 2016, eq. 16). The
 * sequence ends after its last token, so V_T = 0 there (no bootstrap).
 *
 * @example Three steps, gamma 0.9, lambda 0.8
 * ```ts
 * import { gae } from "./math.ts";
 * const { advantages } = gae([0, 0, 1], [0.5, 0.6, 0.7], 0.9, 0.8);
 * console.assert(Math.abs(advantages[2] - 0.3) < 1e-12);
 * ```
 *
 * @throws {RangeError} when `rewards` and `values` differ in length.
 */
export function gae(
  rewards: readonly number[],
  values: readonly number[],
  gamma: number,
  lambda: number,
): GaeResult {
  if (rewards.length !== values.length) {
    throw new RangeError(`gae: ${rewards.length} rewards but ${values.length} values`);
  }
  const n = rewards.length;
  const advantages = new Array<number>(n);
  let running = 0;
  for (let t = n - 1; t >= 0; t--) {
    const next = t + 1 < n ? values[t + 1] : 0;
    const delta = rewards[t] + gamma * next - values[t];
    running = delta + gamma * lambda * running;
    advantages[t] = running;
  }
  return { advantages, returns: advantages.map((a, t) => a + values[t]) };
}

/**
 * Shifts and scales numbers to mean 0 and standard deviation 1:
 * (x - mean) / sqrt(var + eps) with the population variance (as `whiten` in Ziegler et
 * al.'s code, which takes the moments with `tf.nn.moments`; TRL's uses the unbiased
 * variance, a negligible difference for rollouts of many tokens). A single number (or
 * equal numbers) becomes 0.
 */
export function whiten(values: readonly number[], eps = 1e-8): number[] {
  if (values.length === 0) return [];
  const m = values.reduce((a, b) => a + b, 0) / values.length;
  const variance = values.reduce((a, b) => a + (b - m) ** 2, 0) / values.length;
  const scale = 1 / Math.sqrt(variance + eps);
  return values.map((v) => (v - m) * scale);
}

/**
 * Explained variance of value predictions: 1 - Var(targets - predicted) / Var(targets).
 * 1 is perfect, 0 no better than a constant, negative worse. NaN when the targets have no
 * variance (or there are none).
 *
 * @throws {RangeError} when the arrays differ in length.
 */
export function explainedVariance(
  predicted: readonly number[],
  targets: readonly number[],
): number {
  if (predicted.length !== targets.length) {
    throw new RangeError(
      `explainedVariance: ${predicted.length} predictions but ${targets.length} targets`,
    );
  }
  const n = targets.length;
  if (n === 0) return NaN;
  const variance = (xs: readonly number[]) => {
    const m = xs.reduce((a, b) => a + b, 0) / n;
    return xs.reduce((a, b) => a + (b - m) ** 2, 0) / n;
  };
  const total = variance(targets);
  if (!(total > 0)) return NaN;
  return 1 - variance(targets.map((t, i) => t - predicted[i])) / total;
}

/** One sampled sequence of a rollout batch: per-token arrays of equal length, and its score. */
export interface RolloutSequence {
  /** log pi_old(a_t): the sampling policy's log-probability of each token. */
  logProbs: readonly number[];
  /** log pi_ref(a_t): the frozen reference's log-probability of each token. */
  refLogProbs: readonly number[];
  /** V_old(s_t): the critic's estimate before each token, at sampling time. */
  values: readonly number[];
  /** The sequence's reward (after any normalisation), given at its last token. */
  score: number;
}

/** Options of {@link rolloutAdvantages}. */
export interface AdvantageOptions {
  /** KL penalty coefficient beta. */
  beta: number;
  /** Discount gamma. */
  gamma: number;
  /** GAE lambda. */
  lambda: number;
  /** Whiten the advantages over every token of the batch. */
  whiten: boolean;
}

/** Per-token rewards, advantages and value targets of a rollout batch, one array per sequence. */
export interface RolloutAdvantages {
  /** KL-penalised per-token rewards ({@link klPenaltyRewards}). */
  rewards: number[][];
  /** GAE advantages, whitened over the whole batch when asked. */
  advantages: number[][];
  /** Value targets: raw (unwhitened) advantages plus values. */
  returns: number[][];
  /** Each sequence's KL estimate sum_t (log pi_old - log pi_ref). */
  kl: number[];
}

/**
 * Advantages of a rollout batch as in Ziegler et al.'s PPO: per-token KL-penalised rewards
 * with the score at the last token, GAE per sequence (no bootstrap after the last token),
 * value targets from the raw advantages, then (optionally) advantages whitened together
 * over every token of the batch.
 *
 * @throws {RangeError} when a sequence is empty or its arrays differ in length.
 */
export function rolloutAdvantages(
  sequences: readonly RolloutSequence[],
  options: AdvantageOptions,
): RolloutAdvantages {
  const rewards: number[][] = [];
  const advantages: number[][] = [];
  const returns: number[][] = [];
  const kl: number[] = [];
  sequences.forEach((seq, i) => {
    if (seq.values.length !== seq.logProbs.length) {
      throw new RangeError(
        `rolloutAdvantages: sequence ${i} has ${seq.logProbs.length} tokens but ${seq.values.length} values`,
      );
    }
    const penalised = klPenaltyRewards(seq.logProbs, seq.refLogProbs, options.beta, seq.score);
    const g = gae(penalised.rewards, seq.values, options.gamma, options.lambda);
    rewards.push(penalised.rewards);
    advantages.push(g.advantages);
    returns.push(g.returns);
    kl.push(penalised.kl);
  });
  if (!options.whiten) return { rewards, advantages, returns, kl };
  const flat = whiten(advantages.flat());
  let k = 0;
  const whitened = advantages.map((a) => a.map(() => flat[k++]));
  return { rewards, advantages: whitened, returns, kl };
}

/** Settings of {@link AdaptiveKl}. */
export interface AdaptiveKlOptions {
  /** Initial coefficient beta. */
  initial: number;
  /** Target KL per sequence (nats). */
  target: number;
  /** Horizon (samples) over which the coefficient can change by about e^{+-0.2}. */
  horizon: number;
}

/** A KL coefficient: its current value and the update after each rollout batch. */
export interface KlController {
  /** The current coefficient beta. */
  readonly value: number;
  /** Updates beta from the mean KL of a rollout of `nSteps` samples; returns the new beta. */
  update(kl: number, nSteps: number): number;
}

/** A constant KL coefficient. */
export class FixedKl implements KlController {
  /** The coefficient beta. */
  readonly value: number;

  /**
   * @throws {RangeError} when `value` is negative or not a number.
   */
  constructor(value: number) {
    if (!(value >= 0)) throw new RangeError(`FixedKl: value must be >= 0, got ${value}`);
    this.value = value;
  }

  /** Leaves beta unchanged. */
  update(_kl: number, _nSteps: number): number {
    return this.value;
  }
}

/**
 * The adaptive KL coefficient of Ziegler et al. 2019 (Section 2.2, their
 * `AdaptiveKLController`): after a rollout of `nSteps` samples with mean KL `kl`,
 * e = clip(kl / target - 1, -0.2, 0.2) and beta <- beta (1 + e nSteps / horizon).
 */
export class AdaptiveKl implements KlController {
  /** The current coefficient beta. */
  value: number;
  /** Target KL per sequence. */
  readonly target: number;
  /** Horizon in samples. */
  readonly horizon: number;

  /**
   * Starts at `options.initial`.
   *
   * @throws {RangeError} when the initial value is negative or target/horizon not positive.
   */
  constructor(options: AdaptiveKlOptions) {
    if (!(options.initial >= 0)) {
      throw new RangeError(`AdaptiveKl: initial must be >= 0, got ${options.initial}`);
    }
    if (!(options.target > 0) || !(options.horizon > 0)) {
      throw new RangeError(
        `AdaptiveKl: target and horizon must be > 0, got ${options.target} and ${options.horizon}`,
      );
    }
    this.value = options.initial;
    this.target = options.target;
    this.horizon = options.horizon;
  }

  /** Updates beta from the KL measured on a rollout of `nSteps` samples; returns the new beta. */
  update(kl: number, nSteps: number): number {
    const error = Math.min(0.2, Math.max(-0.2, kl / this.target - 1));
    if (Number.isFinite(error)) this.value *= 1 + (error * nSteps) / this.horizon;
    return this.value;
  }
}

/** The clipped surrogate and its diagnostics (scalars). */
export interface PolicyLoss {
  /** -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) over real tokens. */
  loss: tf.Scalar;
  /** Fraction of real tokens where |rho_t - 1| > eps. */
  clipFraction: tf.Scalar;
  /** 0.5 mean_t (log pi - log pi_old)^2, the approximate KL(pi_old || pi) of Ziegler et al.'s code. */
  approxKl: tf.Scalar;
}

/**
 * The PPO-clip policy loss (Schulman et al. 2017, eq. 7) on `[B, T]` tensors: rho_t =
 * exp(logProbs - oldLogProbs), L = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps)
 * A_t) over the tokens where `mask` is 1. `oldLogProbs` and `advantages` must carry no
 * gradient (build them from numbers). Where the clip is active (rho > 1 + eps with A > 0,
 * or rho < 1 - eps with A < 0) the token's gradient is zero.
 */
export function clippedPolicyLoss(
  logProbs: tf.Tensor2D,
  oldLogProbs: tf.Tensor2D,
  advantages: tf.Tensor2D,
  mask: tf.Tensor2D,
  eps: number,
): PolicyLoss {
  return tf.tidy(() => {
    const logRatio = tf.mul(tf.sub(logProbs, oldLogProbs), mask);
    const ratio = tf.exp(logRatio);
    const unclipped = tf.mul(ratio, advantages);
    const clipped = tf.mul(tf.clipByValue(ratio, 1 - eps, 1 + eps), advantages);
    const loss = tf.neg(maskedMean(tf.minimum(unclipped, clipped), mask));
    const outside = tf.cast(tf.greater(tf.abs(tf.sub(ratio, 1)), eps), "float32");
    return {
      loss,
      clipFraction: maskedMean(outside, mask),
      approxKl: tf.mul(maskedMean(tf.square(logRatio), mask), 0.5) as tf.Scalar,
    };
  });
}

/** The clipped value loss and its diagnostic (scalars). */
export interface ValueLoss {
  /** 0.5 mean_t max((V_t - R_t)^2, (V_old + clip(V_t - V_old, -c, c) - R_t)^2) over real tokens. */
  loss: tf.Scalar;
  /** Fraction of real tokens where the clipped term is the larger one (the clip is active). */
  clipFraction: tf.Scalar;
}

/**
 * The clipped value loss of PPO's reference implementations (OpenAI baselines `ppo2`,
 * Ziegler et al.'s `cliprange_value`): V_clip = V_old + clip(V - V_old, -c, c), L = 0.5
 * mean_t max((V - R)^2, (V_clip - R)^2) over the tokens where `mask` is 1. `clip <= 0`
 * gives the plain 0.5 mean_t (V - R)^2. `oldValues` and `returns` carry no gradient.
 */
export function clippedValueLoss(
  values: tf.Tensor2D,
  oldValues: tf.Tensor2D,
  returns: tf.Tensor2D,
  mask: tf.Tensor2D,
  clip: number,
): ValueLoss {
  return tf.tidy(() => {
    const plain = tf.square(tf.sub(values, returns));
    if (!(clip > 0)) {
      return {
        loss: tf.mul(maskedMean(plain, mask), 0.5) as tf.Scalar,
        clipFraction: tf.scalar(0),
      };
    }
    const clippedValues = tf.add(oldValues, tf.clipByValue(tf.sub(values, oldValues), -clip, clip));
    const clippedLoss = tf.square(tf.sub(clippedValues, returns));
    const active = tf.cast(tf.greater(clippedLoss, plain), "float32");
    return {
      loss: tf.mul(maskedMean(tf.maximum(plain, clippedLoss), mask), 0.5) as tf.Scalar,
      clipFraction: maskedMean(active, mask),
    };
  });
}

/** The per-token inputs of {@link fusedPpoLoss} besides the differentiated ones (`[B, T]`). */
export interface PpoLossTargets {
  /** log pi_old of the sampled tokens. */
  oldLogProbs: tf.Tensor2D;
  /** V_old. */
  oldValues: tf.Tensor2D;
  /** Advantages. */
  advantages: tf.Tensor2D;
  /** Value targets. */
  returns: tf.Tensor2D;
}

/** Settings of {@link fusedPpoLoss}. */
export interface PpoLossOptions {
  /** Clip range epsilon of the ratio. */
  clipRange: number;
  /** Clip range of the value update (<= 0: the plain squared error). */
  valueClipRange: number;
  /** Weight of the value loss. */
  valueCoef: number;
}

/** {@link fusedPpoLoss}'s loss and diagnostics (those of the two clipped losses). */
export interface FusedPpoLoss {
  /** The policy loss plus `valueCoef` times the value loss (a scalar on the tape). */
  loss: tf.Scalar;
  /** {@link PolicyLoss}'s diagnostics as numbers, and with values `valueLoss`, `valueClipFraction`. */
  diagnostics: Record<string, number>;
}

/**
 * {@link clippedPolicyLoss} + `valueCoef` x {@link clippedValueLoss} (without `values`, the
 * policy loss alone) as ONE differentiable op over the `[B, T]` log-probabilities and values,
 * computed on the host in double precision in one pass over the tokens: the same function
 * and gradient (tfjs's conventions at ties: the unclipped term where the two are equal,
 * clipping passing gradient at its bounds) without the forty-odd small tfjs ops of the
 * two losses and their gradients. Host backends only (it reads the tensors' buffers).
 */
export function fusedPpoLoss(
  logProbs: tf.Tensor2D,
  values: tf.Tensor2D | undefined,
  targets: PpoLossTargets,
  mask: tf.Tensor2D,
  options: PpoLossOptions,
): FusedPpoLoss {
  const m = bufferOf(mask);
  const old = bufferOf(targets.oldLogProbs);
  const adv = bufferOf(targets.advantages);
  let tokens = 0;
  for (let i = 0; i < m.length; i++) tokens += m[i];
  const scale = 1 / Math.max(tokens, 1);
  const diagnostics: Record<string, number> = {};
  const inputs = values === undefined ? [logProbs] : [logProbs, values];
  const loss = customOp(inputs, (ins) => {
    const lp = bufferOf(ins[0]);
    const policy = policyTerms(lp, old, adv, m, options.clipRange, scale);
    diagnostics.policyLoss = policy.loss;
    diagnostics.clipFraction = policy.clipFraction;
    diagnostics.approxKl = policy.approxKl;
    let total = policy.loss;
    let value: ReturnType<typeof valueTerms> | undefined;
    if (ins.length > 1) {
      value = valueTerms(
        bufferOf(ins[1]),
        bufferOf(targets.oldValues),
        bufferOf(targets.returns),
        m,
        options.valueClipRange,
        scale,
      );
      diagnostics.valueLoss = value.loss;
      diagnostics.valueClipFraction = value.clipFraction;
      total += options.valueCoef * value.loss;
    }
    return {
      out: Float32Array.of(total),
      shape: [],
      backward(dy) {
        const g = dy[0];
        const dlp = policy.grad.map((x) => g * x);
        if (value === undefined) return [dlp];
        return [dlp, value.grad.map((x) => g * options.valueCoef * x)];
      },
    };
  }) as tf.Scalar;
  return { loss, diagnostics };
}

/**
 * {@link clippedPolicyLoss}'s value, diagnostics and gradient per log-probability, on
 * buffers; `scale` is 1 / max(tokens, 1).
 */
function policyTerms(
  lp: Float32Array,
  old: Float32Array,
  adv: Float32Array,
  mask: Float32Array,
  eps: number,
  scale: number,
): { loss: number; clipFraction: number; approxKl: number; grad: Float32Array } {
  const grad = new Float32Array(lp.length);
  let sum = 0;
  let clipped = 0;
  let squares = 0;
  for (let i = 0; i < lp.length; i++) {
    const w = mask[i];
    const logRatio = (lp[i] - old[i]) * w;
    const ratio = Math.exp(logRatio);
    const bounded = Math.min(Math.max(ratio, 1 - eps), 1 + eps);
    const plain = ratio * adv[i];
    const capped = bounded * adv[i];
    // d ratio / d lp = ratio * mask; the clipped term passes it only inside the bounds.
    const passes = plain <= capped || (ratio >= 1 - eps && ratio <= 1 + eps);
    sum += Math.min(plain, capped) * w;
    if (passes) grad[i] = -scale * w * adv[i] * ratio * w;
    if (Math.abs(ratio - 1) > eps) clipped += w;
    squares += logRatio * logRatio * w;
  }
  return {
    loss: -sum * scale,
    clipFraction: clipped * scale,
    approxKl: 0.5 * squares * scale,
    grad,
  };
}

/**
 * {@link clippedValueLoss}'s value, clip fraction and gradient per value, on buffers;
 * `scale` is 1 / max(tokens, 1).
 */
function valueTerms(
  v: Float32Array,
  oldV: Float32Array,
  ret: Float32Array,
  mask: Float32Array,
  clip: number,
  scale: number,
): { loss: number; clipFraction: number; grad: Float32Array } {
  const grad = new Float32Array(v.length);
  let sum = 0;
  let active = 0;
  for (let i = 0; i < v.length; i++) {
    const w = mask[i];
    const plain = (v[i] - ret[i]) ** 2;
    if (!(clip > 0)) {
      sum += plain * w;
      grad[i] = scale * w * (v[i] - ret[i]);
      continue;
    }
    const delta = v[i] - oldV[i];
    const bounded = oldV[i] + Math.min(Math.max(delta, -clip), clip);
    const capped = (bounded - ret[i]) ** 2;
    if (plain >= capped) {
      sum += plain * w;
      grad[i] = scale * w * (v[i] - ret[i]);
    } else {
      sum += capped * w;
      active += w;
      if (delta >= -clip && delta <= clip) grad[i] = scale * w * (bounded - ret[i]);
    }
  }
  return { loss: 0.5 * sum * scale, clipFraction: active * scale, grad };
}

/**
 * A per-position baseline for policies without a value head: b_t is an exponential moving
 * average (over rollouts) of the mean return observed at target position t. Positions never
 * seen have baseline 0; a position's first observation sets it directly.
 */
export class PositionBaseline {
  /** b_t per position. */
  readonly values: number[] = [];
  /** Weight of the old average in each update (0: the latest rollout's mean only). */
  readonly momentum: number;

  /**
   * @throws {RangeError} when `momentum` is outside [0, 1).
   */
  constructor(momentum: number, values: readonly number[] = []) {
    if (!(momentum >= 0 && momentum < 1)) {
      throw new RangeError(`PositionBaseline: momentum must be in [0, 1), got ${momentum}`);
    }
    this.momentum = momentum;
    appendAll(this.values, values);
  }

  /** Baseline values for a sequence of `length` tokens. */
  predict(length: number): number[] {
    return Array.from({ length }, (_, t) => this.values[t] ?? 0);
  }

  /** Folds in one rollout's returns (one array per sequence). */
  update(returns: readonly (readonly number[])[]): void {
    const sums: number[] = [];
    const counts: number[] = [];
    for (const seq of returns) {
      seq.forEach((r, t) => {
        sums[t] = (sums[t] ?? 0) + r;
        counts[t] = (counts[t] ?? 0) + 1;
      });
    }
    for (let t = 0; t < sums.length; t++) {
      const m = sums[t] / counts[t];
      this.values[t] = t < this.values.length
        ? this.momentum * this.values[t] + (1 - this.momentum) * m
        : m;
    }
  }
}
