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
 *     L_eta   = eta * eps_eta + eta * log(mean_{D~} exp(A / eta)) eta = softplus(raw) + 1e-8
 *     L_KL    = lambda * mean_t KL(pi_BC(.|s_t) || pi(.|s_t))      lambda: start -> end, log-linear
 *     L_V     = valueCoef * 0.5 * mean_t (V(s_t) - R)^2
 *     L       = L_pi + L_eta + L_KL + L_V
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
import type { Loss, LossInput, Policy } from "../../core/policy.ts";
import { Rng } from "../../core/random.ts";
import {
  entropyFromLogits,
  klFromLogits,
  maskedMean,
  pickTokens,
  prepared,
  read,
} from "./_common.ts";

/** Config of the `bvmpo` loss. */
export interface BvmpoConfig {
  /** eps_eta: bound of KL(psi || uniform on D~) enforced by the temperature loss. */
  epsEta: number;
  /** Initial temperature eta. */
  etaInit: number;
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
 * largest advantages and returns psi = softmax(A / eta) over them (0 elsewhere, sums to 1)
 * and the kept advantages.
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
        exclusiveMinimum: 0,
        default: 1,
        description: "Initial temperature eta (learned; eta = softplus(raw) + 1e-8). V-MPO " +
          "initialises it at 1.",
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
    // eta = softplus(raw) + 1e-8, so raw starts at log(exp(etaInit) - 1).
    let own: { rawEta: tf.Variable; critic: tf.Variable[] } | undefined;
    let policies: { policy: Policy; bc: Policy } | undefined;
    let useValueHead = false;
    let steps = 0;
    return {
      get variables() {
        if (own === undefined) return [];
        return useValueHead ? [own.rawEta] : [own.rawEta, ...own.critic];
      },
      prepare(ctx) {
        own ??= {
          rawEta: tf.tidy(() => tf.variable(tf.scalar(Math.log(Math.expm1(config.etaInit))))),
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
        policies = { policy: ctx.policy, bc: ctx.bcPolicy };
        steps = 0;
      },
      compute(input: LossInput, record): tf.Scalar {
        const { policy, bc } = prepared(policies, "bvmpo");
        const { rawEta, critic } = own!;
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

        // E-step on plain numbers (no gradient): top half of A = R - V, psi = softmax(A / eta).
        const eta = tf.add(tf.softplus(rawEta), 1e-8);
        const advantages = tf.sub(reward, value).dataSync();
        const { psi, kept } = topHalfWeights(advantages, mask.dataSync(), read(eta));

        // M-step: weighted NLL, temperature, KL to pi_BC, value regression.
        const logP = pickTokens(tf.logSoftmax(logits), batch.targetOut);
        const policyLoss = tf.neg(tf.sum(tf.mul(tf.tensor2d(psi, mask.shape), logP)));
        const keptA = tf.tensor1d(kept.length > 0 ? kept : [0]);
        const logMeanExp = tf.sub(tf.logSumExp(tf.div(keptA, eta)), Math.log(keptA.size));
        const etaLoss = tf.add(tf.mul(eta, config.epsEta), tf.mul(eta, logMeanExp));
        const lambda = klWeight(steps, config.klStart, config.klEnd, config.klAnnealSteps);
        const kl = maskedMean(klFromLogits(bcLogits, logits), mask);
        const valueLoss = tf.mul(maskedMean(tf.square(tf.sub(value, reward)), mask), 0.5);

        record("eta", read(eta));
        record("kl", read(kl));
        record("kl_weight", lambda);
        record("value_loss", read(valueLoss));
        record("policy_loss", read(policyLoss));
        return tf.addN([
          policyLoss,
          etaLoss,
          tf.mul(kl, lambda),
          tf.mul(valueLoss, config.valueCoef),
        ]) as tf.Scalar;
      },
      afterStep() {
        steps++;
      },
      dispose() {
        if (own !== undefined) tf.dispose([own.rawEta, ...own.critic]);
        own = undefined;
        policies = undefined;
      },
    };
  },
});
