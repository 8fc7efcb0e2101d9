/**
 * `bvmpo`: V-MPO (Song et al. 2019, "V-MPO: On-Policy Maximum a Posteriori Policy
 * Optimization for Discrete and Continuous Control", arXiv 1909.12238) with a behaviour
 * value function, as used by ReST (Gulcehre et al. 2023). Per batch, with R the row's
 * reward (terminal reward, gamma = 1, so every token's Monte-Carlo return is R):
 *
 *     A_t     = R - V(s_t)                                        no gradient
 *     D~      = the half of the batch's real tokens with the largest A_t
 *     psi_t   = exp(A_t / eta) / sum_{D~} exp(A / eta)            on D~, no gradient
 *     L_pi    = -sum_{D~} psi_t log pi(a_t | s_t)
 *     L_eta   = eta * eps_eta + eta * log(mean_{D~} exp(A / eta))
 *     L_alpha = alpha * mean_t KL(pi_old(.|s_t) || pi(.|s_t))      pi_old: the pre-Improve-step policy
 *               + alpha * (eps_alpha - sg(mean_t KL(pi_old || pi)))
 *     L_KL    = lambda * mean_t KL(pi_BC(.|s_t) || pi(.|s_t))      lambda: start -> end, log-linear
 *     L_V     = valueCoef * 0.5 * mean_t (V(s_t) - R)^2
 *     L       = L_pi + L_alpha + L_KL + L_V   (+ L_eta, minimised over eta alone)
 *
 * The Lagrange multipliers eta (temperature) and alpha (trust region) are V-MPO's, as in
 * rlax's `vmpo_loss`: eta keeps KL(psi || uniform on D~) near eps_eta, alpha keeps the
 * policy within eps_alpha of pi_old, a frozen copy of the policy taken when each Improve
 * step starts (re-synced every `trustRegionSyncEvery` optimizer steps when > 0, V-MPO's
 * target network). They are not trained by the policy's optimiser, whose small learning
 * rate (5e-4, decaying) left eta near its start while the advantages spread about 0.1, so
 * psi stayed nearly uniform. Each has its own Adam on its logarithm, step size
 * `multiplierLearningRate`, applied after every optimizer step with the exact gradients
 * dL_eta/d eta = eps_eta - KL(psi || uniform) and dL_alpha/d alpha = eps_alpha - KL; eta
 * starts at `etaInit`, or (0, the default) at the standard deviation of the advantages of
 * the first batch's real tokens (a data-driven start at the scale of A). Their state
 * (values and Adam moments) is one variable in `variables`, so checkpoints keep it; it
 * gets no gradient from the trainer.
 *
 * The critic V (option `critic`):
 * - `value_head`: the policy's own value head (`forward(...).values`), trained by L_V.
 * - `features`: the loss's own network, V(s_t) = m(x) + MLP(phi_t), where m(x) is the mean
 *   reward of the source over the Grow set (a Monte-Carlo estimate of the behaviour value
 *   of the first state) and the MLP (one tanh layer, output initialised to 0) learns how
 *   the prefix changes it from stop-gradient features of the frozen BC policy's
 *   next-token distribution at s_t: its entropy, its largest log-probability, the mean BC
 *   log-probability of the prefix y_<t (the first three divided by log V), and log(1 + t) / 4. The BC logits are computed anyway
 *   for the KL term, they depend on the state only (not on a_t), and being frozen they do
 *   not drift while the critic learns; starting from m(x) makes the advantages sensible
 *   from the first step even at Improve's small learning rates.
 * - `auto` (default): `value_head` when the model has one, else `features`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { definePlugin, type PluginDeps } from "../../core/plugin.ts";
import { recordScalar } from "../../core/train.ts";
import type { Loss, LossInput, Policy } from "../../core/types.ts";
import { Rng } from "../../core/random.ts";
import {
  entropyFromLogits,
  klFromLogits,
  maskedMean,
  pickTokens,
  stopGradient,
} from "../_nn/token_stats.ts";
import { prepared } from "./_common.ts";

/** Config of the `bvmpo` loss. */
export interface BvmpoConfig {
  /** eps_eta: bound of KL(psi || uniform on D~) enforced by the temperature loss. */
  epsEta: number;
  /** Initial temperature eta (0: the std of the first batch's advantages). */
  etaInit: number;
  /** Whether to add V-MPO's trust region to the pre-Improve-step policy. */
  trustRegion: boolean;
  /** eps_alpha: bound of mean_t KL(pi_old || pi). */
  epsAlpha: number;
  /** Initial alpha. */
  alphaInit: number;
  /** Re-sync pi_old every this many optimizer steps (0: only when an Improve step starts). */
  trustRegionSyncEvery: number;
  /** Adam step size of log eta and log alpha. */
  multiplierLearningRate: number;
  /** lambda at the first optimizer step of an Improve step. */
  klStart: number;
  /** lambda after `klAnnealSteps` optimizer steps. */
  klEnd: number;
  /** Optimizer steps over which lambda goes from klStart to klEnd. */
  klAnnealSteps: number;
  /** Which value function gives the advantages. */
  critic: "auto" | "value_head" | "features";
  /** Hidden units of the `features` critic. */
  criticHidden: number;
  /** Weight of the value loss. */
  valueCoef: number;
}

/** Number of input features of the `features` critic. */
const FEATURES = 4;

/**
 * The KL weight after `step` optimizer steps: log-linear from `start` (step 0) to `end`
 * (step >= `annealSteps`): lambda = start * (end / start)^min(step / annealSteps, 1).
 */
export function klWeight(step: number, start: number, end: number, annealSteps: number): number {
  const fraction = annealSteps > 0 ? Math.min(step / annealSteps, 1) : 1;
  return start * (end / start) ** fraction;
}

/**
 * V-MPO's E-step on plain numbers: keeps the ceil(n/2) real tokens (mask > 0) with the
 * largest advantages (ties: the earlier token) and returns psi = softmax(A / eta) over them
 * (0 elsewhere, sums to 1) and the kept advantages. The loss computes the same with tfjs
 * ops ({@link eStep}); this is its reference.
 */
export function topHalfWeights(
  advantages: ArrayLike<number>,
  mask: ArrayLike<number>,
  eta: number,
): { psi: Float32Array; kept: number[] } {
  const real: number[] = [];
  for (let i = 0; i < mask.length; i++) if (mask[i] > 0) real.push(i);
  real.sort((a, b) => advantages[b] - advantages[a]);
  const top = real.slice(0, Math.ceil(real.length / 2));
  const psi = new Float32Array(mask.length);
  if (top.length === 0) return { psi, kept: [] };
  const max = advantages[top[0]];
  let sum = 0;
  for (const i of top) sum += Math.exp((advantages[i] - max) / eta);
  for (const i of top) psi[i] = Math.exp((advantages[i] - max) / eta) / sum;
  return { psi, kept: top.map((i) => advantages[i]) };
}

/** The `features` critic's weights: phi [B, T, F] -> tanh(phi W1 + b1) w2 + b2. */
function createCritic(hidden: number, seed: number): tf.Variable[] {
  const rng = new Rng(seed).fork("bvmpo/critic");
  const scale = 1 / Math.sqrt(FEATURES);
  const w1 = Float32Array.from({ length: FEATURES * hidden }, () => (2 * rng.next() - 1) * scale);
  return tf.tidy(() => [
    tf.variable(tf.tensor2d(w1, [FEATURES, hidden])),
    tf.variable(tf.zeros([hidden])),
    tf.variable(tf.zeros([hidden, 1])), // output starts at 0: V = m(x)
    tf.variable(tf.zeros([1])),
  ]);
}

/**
 * `[B, T, F]` state features from the frozen BC policy's logits, each scaled to about
 * [-1, 1]: entropy / log V, max log-prob / log V, prefix mean log-prob / log V, log(1+t) / 4.
 */
function criticFeatures(bcLogits: tf.Tensor3D, input: LossInput): tf.Tensor3D {
  const { targetOut, targetMask } = input.batch;
  const logV = Math.log(bcLogits.shape[2]);
  const logP = tf.logSoftmax(bcLogits);
  const tokenLogP = tf.mul(pickTokens(logP, targetOut), targetMask);
  const position = tf.expandDims(tf.range(0, targetOut.shape[1]), 0); // t = 0, 1, ...
  // Mean BC log-probability of the prefix y_<t (0 at t = 0).
  const prefix = tf.div(tf.cumsum(tokenLogP, 1, true), tf.maximum(position, 1));
  return tf.stack([
    tf.div(entropyFromLogits(bcLogits), logV),
    tf.div(tf.max(logP, -1), logV),
    tf.div(prefix, logV),
    tf.broadcastTo(tf.div(tf.log1p(position), 4), targetOut.shape),
  ], 2) as tf.Tensor3D;
}

/**
 * Length of the multipliers' state vector: [log eta, m, v, log alpha, m, v, Adam step,
 * initialised flag]. Kept in one variable so checkpoints save it with the loss.
 */
const MULTIPLIER_STATE = 8;

/** Adam's moment decay rates and epsilon (Kingma & Ba 2015 defaults). */
const ADAM = { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };

/**
 * `[8]` multipliers' state to use now, as tfjs ops: `state` (a gradient-free view of the
 * variable) once initialised; on first use (flag 0), log eta = log(etaInit) or, for etaInit
 * 0, the log of the standard deviation of the real tokens' advantages (at least 1e-3),
 * log alpha = log(alphaInit), moments and step 0, flag 1.
 */
function multiplierState(
  state: tf.Tensor1D,
  config: BvmpoConfig,
  advantages: tf.Tensor2D,
  mask: tf.Tensor2D,
): tf.Tensor1D {
  const eta = config.etaInit > 0 ? tf.scalar(config.etaInit) : tf.maximum(
    tf.sqrt(maskedMean(tf.square(tf.sub(advantages, maskedMean(advantages, mask))), mask)),
    1e-3,
  );
  const zero = tf.scalar(0);
  const start = tf.stack([
    tf.log(eta),
    zero,
    zero,
    tf.scalar(Math.log(config.alphaInit)),
    zero,
    zero,
    zero,
    tf.scalar(1),
  ]);
  return tf.where(tf.greater(tf.slice(state, [7], [1]), 0), state, start) as tf.Tensor1D;
}

/**
 * V-MPO's E-step as tfjs ops (see {@link topHalfWeights}, its reference on numbers): `[B, T]`
 * psi = softmax(A / eta) over the ceil(n/2) real tokens with the largest advantages (ties:
 * the earlier token, by a full sort), 0 elsewhere; and the temperature loss and
 * KL(psi || uniform) of {@link temperatureLoss} on the kept advantages. `eta` is a scalar.
 */
function eStep(
  advantages: tf.Tensor2D,
  mask: tf.Tensor2D,
  eta: tf.Tensor,
  eps: number,
): { psi: tf.Tensor2D; loss: tf.Scalar; klUniform: tf.Scalar } {
  const size = advantages.size;
  const flat = tf.reshape(advantages, [size]);
  const real = tf.greater(tf.reshape(mask, [size]), 0);
  const ranked = tf.where(real, flat, tf.fill([size], -Infinity));
  // rank[i]: position of token i in the descending order of the real tokens' advantages.
  const order = tf.topk(ranked, size, true).indices;
  const rank = tf.scatterND(tf.reshape(order, [size, 1]), tf.range(0, size, 1, "int32"), [size]);
  const count = tf.sum(tf.cast(real, "float32"));
  const keep = tf.logicalAnd(real, tf.less(tf.cast(rank, "float32"), tf.ceil(tf.div(count, 2))));
  const kept = tf.cast(keep, "float32");
  const any = tf.greater(count, 0);
  const max = tf.where(any, tf.max(ranked), 0);
  const w = tf.mul(tf.exp(tf.div(tf.sub(flat, max), eta)), kept);
  const sum = tf.sum(w);
  const safeSum = tf.where(tf.greater(sum, 0), sum, 1);
  const keptCount = tf.maximum(tf.sum(kept), 1);
  const logMeanExp = tf.add(tf.div(max, eta), tf.log(tf.div(safeSum, keptCount)));
  const meanA = tf.div(tf.sum(tf.mul(w, flat)), safeSum);
  return {
    psi: tf.reshape(tf.div(w, safeSum), advantages.shape) as tf.Tensor2D,
    loss: tf.mul(eta, tf.add(eps, logMeanExp)) as tf.Scalar,
    klUniform: tf.maximum(tf.sub(tf.div(meanA, eta), logMeanExp), 0) as tf.Scalar,
  };
}

/**
 * V-MPO's temperature loss on the kept advantages, L_eta = eta * eps + eta * log mean
 * exp(A / eta), and KL(psi || uniform) = E_psi[A] / eta - log mean exp(A / eta), so that
 * dL_eta / d eta = eps - KL(psi || uniform). On plain numbers: the reference of what
 * {@link eStep} computes with tfjs ops.
 */
export function temperatureLoss(
  kept: readonly number[],
  eta: number,
  eps: number,
): { loss: number; klUniform: number } {
  if (kept.length === 0) return { loss: eta * eps, klUniform: 0 };
  let max = -Infinity;
  for (const a of kept) if (a > max) max = a;
  let sum = 0;
  let weighted = 0;
  for (const a of kept) {
    const w = Math.exp((a - max) / eta);
    sum += w;
    weighted += w * a;
  }
  const logMeanExp = max / eta + Math.log(sum / kept.length);
  return {
    loss: eta * eps + eta * logMeanExp,
    klUniform: Math.max(weighted / sum / eta - logMeanExp, 0),
  };
}

/**
 * One Adam step on log eta and log alpha with the `[2]` gradients `grads` (in log space), as
 * tfjs ops on the state [log eta, m, v, log alpha, m, v, step, flag].
 */
function stepMultipliers(state: tf.Variable, grads: tf.Tensor1D, lr: number): void {
  tf.tidy(() => {
    const { beta1, beta2, epsilon } = ADAM;
    const at = (i: number) => tf.slice(state, [i], [1]);
    const t = tf.add(at(6), 1);
    const parts: tf.Tensor[] = [];
    for (
      const [offset, g] of [[0, tf.slice(grads, [0], [1])], [3, tf.slice(grads, [1], [1])]] as const
    ) {
      const m = tf.add(tf.mul(at(offset + 1), beta1), tf.mul(g, 1 - beta1));
      const v = tf.add(tf.mul(at(offset + 2), beta2), tf.mul(tf.square(g), 1 - beta2));
      const mHat = tf.div(m, tf.sub(1, tf.pow(beta1, t)));
      const vHat = tf.div(v, tf.sub(1, tf.pow(beta2, t)));
      parts.push(
        tf.sub(at(offset), tf.div(tf.mul(mHat, lr), tf.add(tf.sqrt(vHat), epsilon))),
        m,
        v,
      );
    }
    state.assign(tf.concat([...parts, t, at(7)]));
  });
}

/** The `bvmpo` loss plugin. */
export default definePlugin({
  kind: "loss",
  name: "bvmpo",
  summary: "V-MPO (Song et al. 2019) with a behaviour-value critic and an annealed KL to pi_BC.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      epsEta: {
        type: "number",
        exclusiveMinimum: 0,
        default: 0.1,
        description: "eps_eta of the temperature loss L_eta = eta * eps_eta + eta * " +
          "log(mean_{D~} exp(A / eta)), which keeps KL(psi || uniform on D~) near eps_eta " +
          "(Song et al. 2019). V-MPO tunes it per domain; 0.1 " +
          "is this framework's default, not a value taken from the ReST paper.",
      },
      etaInit: {
        type: "number",
        minimum: 0,
        default: 0,
        description: "Initial temperature eta. 0: the standard deviation of A over the first " +
          "batch's real tokens (psi = softmax(A / eta) then starts neither uniform nor " +
          "one-hot whatever the reward scale); V-MPO (Song et al. 2019) starts at 1, which " +
          "with advantages spread about 0.1 makes psi nearly uniform.",
      },
      trustRegion: {
        type: "boolean",
        default: true,
        description: "Add V-MPO's trust region L_alpha = alpha * mean_t KL(pi_old || pi) + " +
          "alpha * (eps_alpha - sg(KL)), pi_old the policy when the Improve step started " +
          "(Song et al. 2019, Eq. 5; rlax vmpo_loss's kl_constraints). Costs one more " +
          "forward pass per batch and one frozen copy of the policy.",
      },
      epsAlpha: {
        type: "number",
        exclusiveMinimum: 0,
        default: 0.01,
        description: "eps_alpha: bound of mean_t KL(pi_old(.|s_t) || pi(.|s_t)) per Improve " +
          "step; V-MPO uses 0.005-0.01 for discrete actions (Song et al. 2019).",
      },
      alphaInit: {
        type: "number",
        exclusiveMinimum: 0,
        default: 5,
        description: "Initial Lagrange multiplier alpha of the trust region (V-MPO: 5).",
      },
      trustRegionSyncEvery: {
        type: "integer",
        minimum: 0,
        default: 0,
        description: "pi_old is copied from the policy when each Improve step starts and, " +
          "when > 0, every this many optimizer steps (V-MPO's target-network period, 100 in " +
          "Song et al. 2019); 0: the whole Improve step stays within eps_alpha of its start.",
      },
      multiplierLearningRate: {
        type: "number",
        exclusiveMinimum: 0,
        default: 0.01,
        description: "Step size of the Adam (beta 0.9, 0.999) that updates log eta and " +
          "log alpha after each optimizer step with dL_eta/d eta = eps_eta - KL(psi || " +
          "uniform) and dL_alpha/d alpha = eps_alpha - KL(pi_old || pi); separate from the " +
          "policy's learning rate so the multipliers track their constraints.",
      },
      klStart: {
        type: "number",
        exclusiveMinimum: 0,
        default: 1,
        description: "lambda at the first optimizer step of each Improve step, in " +
          "L_KL = lambda * mean_t KL(pi_BC(.|s_t) || pi(.|s_t)).",
      },
      klEnd: {
        type: "number",
        exclusiveMinimum: 0,
        default: 1e-5,
        description: "lambda after klAnnealSteps optimizer steps; in between " +
          "lambda = klStart * (klEnd / klStart)^(step / klAnnealSteps) (log-linear).",
      },
      klAnnealSteps: {
        type: "integer",
        minimum: 0,
        default: 300,
        description: "Optimizer steps over which lambda anneals (counted from the start of " +
          "each Improve step; set it to the Improve step's `steps`, 300 by default there). " +
          "0: lambda = klEnd throughout.",
      },
      critic: {
        enum: ["auto", "value_head", "features"],
        default: "auto",
        description: "Value function V(s_t) of A_t = R - V(s_t): `value_head`, the model's " +
          "value head; `features`, the loss's own V = m(x) + MLP(phi_t) with m(x) the " +
          "source's mean Grow reward and phi_t stop-gradient features of pi_BC at s_t; " +
          "`auto`, the value head when the model has one, else `features`.",
      },
      criticHidden: {
        type: "integer",
        minimum: 1,
        maximum: 4096,
        default: 16,
        description: "Hidden units (tanh) of the `features` critic's MLP.",
      },
      valueCoef: {
        type: "number",
        minimum: 0,
        default: 1,
        description: "Weight of the value loss 0.5 * mean_t (V(s_t) - R)^2, R the row's " +
          "reward (the Monte-Carlo return with gamma = 1 and a terminal reward).",
      },
    },
  },
  create(config: BvmpoConfig, deps: PluginDeps): Loss {
    // Created at the first prepare (once the backend is set up); kept across Improve steps.
    let own: { state: tf.Variable; critic: tf.Variable[] } | undefined;
    let policies: { policy: Policy; bc: Policy; old?: Policy } | undefined;
    let useValueHead = false;
    let steps = 0;
    // `[2]` gradients of the multipliers' losses from the last compute (kept), applied by
    // afterStep.
    let pending: tf.Tensor1D | undefined;
    const dropPending = () => {
      pending?.dispose();
      pending = undefined;
    };
    return {
      get variables() {
        if (own === undefined) return [];
        return useValueHead ? [own.state] : [own.state, ...own.critic];
      },
      prepare(ctx) {
        own ??= {
          state: tf.tidy(() => tf.variable(tf.zeros([MULTIPLIER_STATE]))),
          critic: createCritic(config.criticHidden, deps.seed),
        };
        if (config.critic === "value_head" && !ctx.policy.hasValueHead) {
          throw new TypeError(
            'loss "bvmpo": critic "value_head" needs a model with a value head ' +
              '(or use critic "features" or "auto")',
          );
        }
        useValueHead = config.critic === "value_head" ||
          (config.critic === "auto" && ctx.policy.hasValueHead);
        let old = policies?.old;
        if (config.trustRegion) {
          if (old === undefined || policies?.policy !== ctx.policy) {
            old?.dispose();
            old = ctx.policy.clone();
          } else {
            old.copyWeightsFrom(ctx.policy);
          }
        }
        policies = { policy: ctx.policy, bc: ctx.bcPolicy, old };
        steps = 0;
        dropPending();
      },
      compute(input: LossInput, record): tf.Scalar {
        const { policy, bc, old } = prepared(policies, "bvmpo");
        const { state, critic } = own!;
        const { batch } = input;
        const mask = batch.targetMask;
        const { logits, values } = policy.forward(batch, { training: true });
        const bcLogits = bc.forward(batch, { training: false }).logits;
        const reward = tf.expandDims(input.rewards, 1); // [B, 1]

        // Critic V(s_t), [B, T].
        let value: tf.Tensor2D;
        if (useValueHead) {
          value = values!;
        } else {
          const [w1, b1, w2, b2] = critic;
          const phi = criticFeatures(bcLogits, input);
          const hidden = tf.tanh(tf.add(tf.matMul(tf.reshape(phi, [-1, FEATURES]), w1), b1));
          const residual = tf.reshape(tf.add(tf.matMul(hidden, w2), b2), mask.shape);
          value = tf.add(tf.expandDims(input.sourceMeanRewards, 1), residual) as tf.Tensor2D;
        }

        // E-step without gradient: top half of A = R - V, psi = softmax(A / eta). The
        // multipliers come from a gradient-free view of their state, initialised on first use.
        const advantages = stopGradient(tf.sub(reward, value)) as tf.Tensor2D;
        const current = multiplierState(
          stopGradient(state) as tf.Tensor1D,
          config,
          advantages,
          mask,
        );
        state.assign(current);
        const eta = tf.exp(tf.slice(current, [0], [1]));
        const alpha = tf.exp(tf.slice(current, [3], [1]));
        const e = eStep(advantages, mask, eta, config.epsEta);

        // M-step: weighted NLL, trust region to pi_old, KL to pi_BC, value regression.
        const logP = pickTokens(tf.logSoftmax(logits), batch.targetOut);
        const policyLoss = tf.neg(tf.sum(tf.mul(e.psi, logP)));
        const lambda = klWeight(steps, config.klStart, config.klEnd, config.klAnnealSteps);
        const kl = maskedMean(klFromLogits(bcLogits, logits), mask);
        const valueLoss = tf.mul(maskedMean(tf.square(tf.sub(value, reward)), mask), 0.5);
        const terms: tf.Tensor[] = [
          policyLoss,
          tf.mul(kl, lambda),
          tf.mul(valueLoss, config.valueCoef),
        ];
        // Gradients of L_eta and of alpha * (eps_alpha - KL) with respect to log eta, log alpha.
        let alphaGrad: tf.Tensor = tf.zeros([1]);
        if (old !== undefined) {
          const oldLogits = old.forward(batch, { training: false }).logits;
          const klOld = maskedMean(klFromLogits(oldLogits, logits), mask);
          terms.push(tf.mul(klOld, tf.reshape(alpha, [])));
          alphaGrad = tf.mul(alpha, tf.sub(config.epsAlpha, stopGradient(klOld)));
          recordScalar(record, "trust_kl", klOld);
          recordScalar(record, "alpha", alpha);
        }
        dropPending();
        pending = tf.keep(
          tf.concat([tf.mul(eta, tf.sub(config.epsEta, e.klUniform)), alphaGrad]),
        ) as tf.Tensor1D;

        recordScalar(record, "eta", eta);
        recordScalar(record, "eta_loss", e.loss);
        recordScalar(record, "psi_kl", e.klUniform);
        recordScalar(record, "kl", kl);
        record("kl_weight", lambda);
        recordScalar(record, "value_loss", valueLoss);
        recordScalar(record, "policy_loss", policyLoss);
        return tf.addN(terms) as tf.Scalar;
      },
      afterStep() {
        steps++;
        if (own !== undefined && pending !== undefined) {
          stepMultipliers(own.state, pending, config.multiplierLearningRate);
        }
        dropPending();
        const sync = config.trustRegionSyncEvery;
        if (policies?.old !== undefined && sync > 0 && steps % sync === 0) {
          policies.old.copyWeightsFrom(policies.policy);
        }
      },
      dispose() {
        if (own !== undefined) tf.dispose([own.state, ...own.critic]);
        own = undefined;
        policies?.old?.dispose();
        policies = undefined;
        dropPending();
      },
    };
  },
});
