/**
 * Tests of the loss plugins (bc, gold, bvmpo, offline_ppo) on a tiny bigram policy: values
 * against manual computations from the policy's log-probabilities, gradient directions,
 * PPO clipping, GOLD's lagged copy, BVMPO's E-step, temperature gradient and KL anneal,
 * schemas, tensor leaks, and a few steps of the real trainer.
 */

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { makeBatch } from "../../core/batch.ts";
import { createAjv } from "../../core/manifest/ajv.ts";
import type { PluginDefinition, PluginDeps } from "../../core/plugin.ts";
import type { GrowRow, Loss, LossInput, Policy } from "../../core/types.ts";
import { Rng } from "../../core/random.ts";
import { lossInput, type RowPair } from "../../core/rest.ts";
import { disposeBatch, trainLoop } from "../../core/train.ts";
import bc from "../../plugins/losses/bc.ts";
import bvmpo, { klWeight, topHalfWeights } from "../../plugins/losses/bvmpo.ts";
import gold, { truncatedReturns } from "../../plugins/losses/gold.ts";
import offlinePpo from "../../plugins/losses/offline_ppo.ts";
import { klFromLogits } from "../../plugins/_nn/token_stats.ts";
import { TINY_SPECIALS, TinyPolicy } from "./_tiny_policy.ts";

await (await (await import("../../plugins/backends/cpu.ts")).default.create(
  { fastSegmentSum: true },
  {} as never,
)).init();

const LOSSES = [bc, gold, bvmpo, offlinePpo] as PluginDefinition<"loss">[];
const deps = { seed: 7, baseDir: ".", smoke: false, log: () => {} } as unknown as PluginDeps;

/** Validates `config` against the plugin's schema (defaults filled in) and creates the loss. */
async function createLoss(
  plugin: PluginDefinition<"loss">,
  config: Record<string, unknown> = {},
): Promise<Loss> {
  const ajv = createAjv();
  const validate = ajv.compile(plugin.configSchema);
  const filled = structuredClone(config);
  assert.ok(validate(filled), ajv.errorsText(validate.errors));
  return await plugin.create(filled, deps);
}

/** One test row: target tokens (no EOS), reward, source mean, behaviour log-probs. */
interface Case {
  target: number[];
  reward: number;
  sourceMean: number;
  behaviour?: number[];
  /** Grow temperature recorded on the row (absent: an old Grow file). */
  temperature?: number;
}

/** Builds a loss input; behaviour log-probs default to 0 (one per token, EOS included). */
function makeInput(cases: Case[]): LossInput {
  const batch = makeBatch(
    cases.map((c) => ({ source: [4, 5], target: c.target })),
    TINY_SPECIALS,
  );
  const t = batch.targetOut.shape[1];
  const behaviour = new Float32Array(cases.length * t);
  cases.forEach((c, i) => behaviour.set(c.behaviour ?? [], i * t));
  const rows: GrowRow[] = cases.map((c) => ({
    source: "s",
    hypothesis: "h",
    reference: "r",
    reward: c.reward,
    tokens: [...c.target, TINY_SPECIALS.eos],
    logProbs: c.behaviour ?? c.target.map(() => 0).concat(0),
    origin: "sample",
    ...(c.temperature === undefined ? {} : { temperature: c.temperature }),
  }));
  return {
    batch,
    rows,
    rewards: tf.tensor1d(cases.map((c) => c.reward)),
    behaviourLogProbs: tf.tensor2d(behaviour, [cases.length, t]),
    sourceMeanRewards: tf.tensor1d(cases.map((c) => c.sourceMean)),
  };
}

function disposeInput(input: LossInput): void {
  disposeBatch(input.batch);
  tf.dispose([input.rewards, input.behaviourLogProbs, input.sourceMeanRewards]);
}

/** Per-row lists of log pi(y_t) over real tokens (EOS included). */
function tokenLogProbs(policy: Policy, input: LossInput): number[][] {
  const lp = tf.tidy(() => policy.tokenLogProbs(input.batch, { training: false }));
  const values = lp.arraySync() as number[][];
  const mask = input.batch.targetMask.arraySync() as number[][];
  lp.dispose();
  return values.map((row, i) => row.filter((_, t) => mask[i][t] > 0));
}

/** Per-row, per-token full log-distributions over the vocabulary at real tokens. */
function logDistributions(policy: Policy, input: LossInput): number[][][] {
  const lp = tf.tidy(() => tf.logSoftmax(policy.forward(input.batch, { training: false }).logits));
  const values = lp.arraySync() as number[][][];
  const mask = input.batch.targetMask.arraySync() as number[][];
  lp.dispose();
  return values.map((row, i) => row.filter((_, t) => mask[i][t] > 0));
}

/** Runs `compute` in variableGrads; returns the loss, gradients by variable and records. */
function lossAndGrads(
  loss: Loss,
  input: LossInput,
  variables: tf.Variable[],
): { value: number; grads: (number[] | undefined)[]; records: Map<string, number> } {
  const records = new Map<string, number>();
  const { value, grads } = tf.variableGrads(
    () => loss.compute(input, (name, v) => records.set(name, v)),
    variables,
  );
  const result = {
    value: value.dataSync()[0],
    grads: variables.map((v) =>
      grads[v.name] === undefined ? undefined : Array.from(grads[v.name].dataSync())
    ),
    records,
  };
  value.dispose();
  tf.dispose(Object.values(grads));
  return result;
}

/** One plain gradient-descent step on the policy's variables. */
function sgdStep(loss: Loss, input: LossInput, policy: Policy, lr: number): void {
  const { value, grads } = tf.variableGrads(() => loss.compute(input, () => {}), policy.variables);
  tf.tidy(() => {
    for (const v of policy.variables) {
      if (grads[v.name] !== undefined) v.assign(tf.sub(v, tf.mul(grads[v.name], lr)));
    }
  });
  value.dispose();
  tf.dispose(Object.values(grads));
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const flat = (xs: number[][]) => xs.flat();
const close = (actual: number, expected: number, tol = 1e-5, label = "") =>
  assert.ok(
    Math.abs(actual - expected) <= tol * Math.max(1, Math.abs(expected)),
    `${label} expected ${expected}, got ${actual}`,
  );

function context(policy: Policy, bcPolicy: Policy) {
  return { policy, bcPolicy, improve: 1, improveSteps: 4 };
}

const CASES: Case[] = [
  { target: [4, 5, 6], reward: 0.9, sourceMean: 0.5 },
  { target: [5], reward: 0.2, sourceMean: 0.5 },
  { target: [6, 4], reward: 0.6, sourceMean: 0.4 },
];

// ---------------------------------------------------------------------------------------
// Schemas

Deno.test("loss schemas compile under ajv strict, fill every default and reject unknown keys", async () => {
  const ajv = createAjv();
  for (const plugin of LOSSES) {
    const validate = ajv.compile(plugin.configSchema);
    const config: Record<string, unknown> = {};
    assert.ok(validate(config), `${plugin.name}: ${ajv.errorsText(validate.errors)}`);
    assert.deepEqual(
      Object.keys(config).sort(),
      Object.keys(plugin.configSchema.properties).sort(),
      `${plugin.name}: every option gets its default`,
    );
    assert.equal(plugin.configSchema.additionalProperties, false);
    assert.equal(validate({ notAnOption: 1 }), false, `${plugin.name} rejects unknown keys`);
    assert.equal(plugin.kind, "loss");
    const loss = await plugin.create(config, deps);
    for (const method of ["prepare", "compute", "afterStep", "dispose"] as const) {
      assert.equal(typeof loss[method], "function", `${plugin.name}.${method}`);
    }
    assert.ok(Array.isArray(loss.variables));
    assert.throws(() => {
      const input = makeInput(CASES);
      try {
        loss.compute(input, () => {});
      } finally {
        disposeInput(input);
      }
    }, /before prepare/);
    loss.dispose();
  }
});

// ---------------------------------------------------------------------------------------
// bc

Deno.test("bc: token and sequence averages of the NLL, label smoothing", async () => {
  const policy = new TinyPolicy();
  const input = makeInput(CASES);
  const lp = tokenLogProbs(policy, input);
  const dist = logDistributions(policy, input);

  const token = await createLoss(bc);
  token.prepare(context(policy, policy));
  close(lossAndGrads(token, input, policy.variables).value, -sum(flat(lp)) / flat(lp).length);

  const sequence = await createLoss(bc, { average: "sequence" });
  sequence.prepare(context(policy, policy));
  close(
    lossAndGrads(sequence, input, policy.variables).value,
    -sum(lp.map((row) => sum(row))) / lp.length,
  );

  const eps = 0.1;
  const smoothed = await createLoss(bc, { labelSmoothing: eps });
  smoothed.prepare(context(policy, policy));
  const perToken = dist.flatMap((row, i) =>
    row.map((d, t) => -(1 - eps) * lp[i][t] - eps * sum(d) / d.length)
  );
  close(lossAndGrads(smoothed, input, policy.variables).value, sum(perToken) / perToken.length);

  // Unset (the default), the loss keeps BC's label smoothing, given by Improve's prepare.
  const inherited = await createLoss(bc);
  inherited.prepare({ ...context(policy, policy), labelSmoothing: eps });
  close(lossAndGrads(inherited, input, policy.variables).value, sum(perToken) / perToken.length);
  const plain = await createLoss(bc, { labelSmoothing: 0 });
  plain.prepare({ ...context(policy, policy), labelSmoothing: eps });
  close(lossAndGrads(plain, input, policy.variables).value, -sum(flat(lp)) / flat(lp).length);

  disposeInput(input);
  policy.dispose();
});

Deno.test("bc: a gradient-descent step raises the log-probability of the kept tokens", async () => {
  const policy = new TinyPolicy();
  const input = makeInput(CASES);
  const loss = await createLoss(bc);
  loss.prepare(context(policy, policy));
  const before = sum(flat(tokenLogProbs(policy, input)));
  sgdStep(loss, input, policy, 0.1);
  const after = sum(flat(tokenLogProbs(policy, input)));
  assert.ok(after > before, `${after} > ${before}`);
  disposeInput(input);
  policy.dispose();
});

// ---------------------------------------------------------------------------------------
// offline_ppo

Deno.test("offline_ppo: with pi = pi_b the ratio is 1 and the loss is -mean(A)", async () => {
  const policy = new TinyPolicy();
  const probe = makeInput(CASES);
  const lp = tokenLogProbs(policy, probe);
  disposeInput(probe);
  const input = makeInput(CASES.map((c, i) => ({ ...c, behaviour: lp[i] })));
  const loss = await createLoss(offlinePpo, { normalizeAdvantages: false });
  loss.prepare(context(policy, policy));
  const { value, records } = lossAndGrads(loss, input, policy.variables);
  const advantages = CASES.flatMap((c, i) => lp[i].map(() => c.reward - c.sourceMean));
  close(value, -sum(advantages) / advantages.length);
  close(records.get("ratio")!, 1);
  assert.equal(records.get("clip_fraction"), 0);
  close(records.get("behaviour_kl")!, 0);
  // Entropy diagnostic against a manual computation.
  const dist = logDistributions(policy, input);
  const entropies = dist.flatMap((row) => row.map((d) => -sum(d.map((l) => Math.exp(l) * l))));
  close(records.get("entropy")!, sum(entropies) / entropies.length);

  // Normalised advantages are only rescaled by their std over tokens (signs kept): the loss
  // at ratio 1 is -mean(A) / std(A) (it was 0, re-centred over the kept rows).
  const normalised = await createLoss(offlinePpo);
  normalised.prepare(context(policy, policy));
  const mean = sum(advantages) / advantages.length;
  const std = Math.sqrt(sum(advantages.map((a) => (a - mean) ** 2)) / advantages.length);
  close(lossAndGrads(normalised, input, policy.variables).value, -mean / std, 1e-5);
  disposeInput(input);
  policy.dispose();
});

Deno.test("offline_ppo: kept rows above their source's Grow mean all keep a positive advantage", async () => {
  const policy = new TinyPolicy();
  const probe = makeInput(CASES);
  const lp = tokenLogProbs(policy, probe);
  disposeInput(probe);
  // Rows that passed a filter tau >= mean: every reward is above its source's mean.
  const kept = [0.9, 0.7, 0.6].map((reward, i) => ({
    ...CASES[i],
    reward,
    sourceMean: 0.5,
    behaviour: lp[i],
  }));
  const input = makeInput(kept);
  const loss = await createLoss(offlinePpo); // normalizeAdvantages: true
  loss.prepare(context(policy, policy));
  const { value, records } = lossAndGrads(loss, input, policy.variables);
  // Re-centring over these rows made the 0.6 and 0.7 rows' tokens negative (5 of 9 tokens).
  assert.equal(records.get("positive_advantage"), 1);
  const a = kept.flatMap((c, i) => lp[i].map(() => c.reward - c.sourceMean));
  const mean = sum(a) / a.length;
  const std = Math.sqrt(sum(a.map((x) => (x - mean) ** 2)) / a.length);
  close(value, -mean / std, 1e-5);
  // A gradient step raises the log-probability of every kept row.
  const before = tokenLogProbs(policy, input).map(sum);
  sgdStep(loss, input, policy, 0.05);
  tokenLogProbs(policy, input).map(sum).forEach((after, i) =>
    assert.ok(after > before[i], `row ${i}: ${after} <= ${before[i]}`)
  );
  disposeInput(input);
  policy.dispose();
});

Deno.test("offline_ppo: the ratio compares pi at the Grow temperature with the tempered mu", async () => {
  const policy = new TinyPolicy({ scale: 2 });
  const probe = makeInput(CASES);
  // log mu(a_t) = log softmax(logits / T)[a_t], by hand from the full log-distributions.
  const T = 0.5;
  const dist = logDistributions(policy, probe);
  const targets = probe.batch.targetOut.arraySync() as number[][];
  const tempered = dist.map((row, i) =>
    row.map((d, t) => {
      const lse = Math.log(sum(d.map((l) => Math.exp(l / T))));
      return d[targets[i][t]] / T - lse;
    })
  );
  const untempered = tokenLogProbs(policy, probe);
  disposeInput(probe);
  const loss = await createLoss(offlinePpo, { normalizeAdvantages: false });
  loss.prepare(context(policy, policy));
  // Rows recording T hold log mu: at the Grow weights the ratio is exactly 1.
  const input = makeInput(CASES.map((c, i) => ({ ...c, behaviour: tempered[i], temperature: T })));
  const { records } = lossAndGrads(loss, input, policy.variables);
  close(records.get("ratio")!, 1, 1e-5);
  assert.equal(records.get("clip_fraction"), 0);
  close(records.get("behaviour_kl")!, 0, 1e-5);
  assert.equal(records.get("untempered_rows"), 0);
  disposeInput(input);
  // The untempered pi over the tempered mu is not 1 (the old ratio): most tokens clipped.
  const ratios = flat(untempered).map((l, k) => Math.exp(l - flat(tempered)[k]));
  assert.ok(ratios.some((r) => Math.abs(r - 1) > 0.2), `${ratios}`);
  // Old Grow rows (no temperature) hold untempered log-probs: T = 1 keeps their ratio at 1.
  const old = makeInput(CASES.map((c, i) => ({ ...c, behaviour: untempered[i] })));
  const oldRecords = lossAndGrads(loss, old, policy.variables).records;
  close(oldRecords.get("ratio")!, 1, 1e-5);
  assert.equal(oldRecords.get("untempered_rows"), 1);
  disposeInput(old);
  const bad = makeInput([{ ...CASES[0], temperature: -1 }]);
  assert.throws(() => lossAndGrads(loss, bad, policy.variables), /temperature must be a positive/);
  disposeInput(bad);
  policy.dispose();
});

Deno.test("offline_ppo: clipped tokens get no gradient and are counted", async () => {
  const policy = new TinyPolicy();
  const probe = makeInput(CASES);
  const lp = tokenLogProbs(policy, probe);
  disposeInput(probe);
  const loss = await createLoss(offlinePpo, { normalizeAdvantages: false });
  loss.prepare(context(policy, policy));

  // Every token has r = e > 1 + eps and A > 0: the clipped term is constant.
  const positive = CASES.map((c, i) => ({
    ...c,
    reward: 0.8,
    sourceMean: 0.3,
    behaviour: lp[i].map((l) => l - 1),
  }));
  const allClipped = makeInput(positive);
  const clipped = lossAndGrads(loss, allClipped, policy.variables);
  assert.equal(clipped.records.get("clip_fraction"), 1);
  close(clipped.records.get("ratio")!, Math.E, 1e-5);
  for (const g of clipped.grads) assert.ok(g === undefined || g.every((x) => x === 0));
  close(clipped.value, -(1.2 * 0.5));
  disposeInput(allClipped);

  // Only the first row is clipped: its tokens drop out of the gradient.
  const mixed = makeInput(positive.map((c, i) => i === 0 ? c : { ...c, behaviour: lp[i] }));
  const both = lossAndGrads(loss, mixed, policy.variables);
  const n = flat(lp).length;
  close(both.records.get("clip_fraction")!, lp[0].length / n);
  disposeInput(mixed);
  // Same gradient as the unclipped rows alone (scaled by their share of the tokens).
  const rest = makeInput(positive.slice(1).map((c, i) => ({ ...c, behaviour: lp[i + 1] })));
  const restGrads = lossAndGrads(loss, rest, policy.variables);
  const share = (n - lp[0].length) / n;
  both.grads.forEach((g, k) =>
    g!.forEach((x, j) => close(x, restGrads.grads[k]![j] * share, 1e-5, "gradient"))
  );
  disposeInput(rest);
  policy.dispose();
});

Deno.test("offline_ppo: positive advantages raise log-probs; KL to pi_BC; value head", async () => {
  const policy = new TinyPolicy();
  const other = new TinyPolicy({ seed: 3 });
  const probe = makeInput(CASES);
  const lp = tokenLogProbs(policy, probe);
  disposeInput(probe);
  const input = makeInput(
    CASES.map((c, i) => ({ ...c, reward: 0.9, sourceMean: 0.1, behaviour: lp[i] })),
  );
  const loss = await createLoss(offlinePpo, { normalizeAdvantages: false, klCoef: 0.5 });
  loss.prepare(context(policy, other));
  // KL(pi || pi_BC) recorded and added with beta = 0.5.
  const mine = logDistributions(policy, input);
  const theirs = logDistributions(other, input);
  const kls = mine.flatMap((row, i) =>
    row.map((d, t) => sum(d.map((l, v) => Math.exp(l) * (l - theirs[i][t][v]))))
  );
  const kl = sum(kls) / kls.length;
  const { value, records } = lossAndGrads(loss, input, policy.variables);
  close(records.get("kl")!, kl);
  close(value, -0.8 + 0.5 * kl);

  const plain = await createLoss(offlinePpo, { normalizeAdvantages: false });
  plain.prepare(context(policy, other));
  const before = sum(flat(lp));
  sgdStep(plain, input, policy, 0.1);
  assert.ok(sum(flat(tokenLogProbs(policy, input))) > before);
  disposeInput(input);

  // Value-head baseline: A = R - V(s_t), plus 0.5 * mean (V - R)^2.
  const valued = await createLoss(offlinePpo, {
    advantage: "value_head",
    normalizeAdvantages: false,
  });
  assert.throws(() => valued.prepare(context(policy, other)), /value head/);
  const withHead = new TinyPolicy({ valueHead: true, seed: 5 });
  valued.prepare(context(withHead, other));
  const headProbe = makeInput(CASES);
  const lpHead = tokenLogProbs(withHead, headProbe);
  disposeInput(headProbe);
  const headInput = makeInput(CASES.map((c, i) => ({ ...c, behaviour: lpHead[i] })));
  const values = tf.tidy(() => withHead.forward(headInput.batch, { training: false }).values!);
  const v = (values.arraySync() as number[][]).map((row, i) => row.slice(0, lpHead[i].length));
  values.dispose();
  const adv = CASES.flatMap((c, i) => v[i].map((x) => c.reward - x));
  const sq = CASES.flatMap((c, i) => v[i].map((x) => (x - c.reward) ** 2));
  const result = lossAndGrads(valued, headInput, withHead.variables);
  close(result.value, -sum(adv) / adv.length + 0.5 * sum(sq) / sq.length);
  close(result.records.get("value_loss")!, 0.5 * sum(sq) / sq.length);
  disposeInput(headInput);
  for (const p of [policy, other, withHead]) p.dispose();
});

// ---------------------------------------------------------------------------------------
// gold

Deno.test("gold: truncated returns with horizon, discount and past-EOS rewards", () => {
  assert.deepEqual(truncatedReturns([0.5, 0.25, 1], 1, 0.5, 1), [0.625, 0.75, 1.5]);
  // horizon 5, gamma 1: six terms, the missing ones count pastEnd.
  assert.deepEqual(truncatedReturns([0.2, 0.4], 1, 1, 5), [0.6 + 4, 0.4 + 5]);
  assert.deepEqual(truncatedReturns([0.3], 0, 1, 0), [0.3]);
});

/** GOLD's loss computed by hand from the policies' token log-probs. */
function manualGold(
  lp: number[][],
  lagged: number[][],
  bcLp: number[][],
  options: { variant: "s" | "p"; u: number; c: number; gamma: number; horizon: number; B: number },
): { loss: number; weights: number[] } {
  let total = 0;
  let n = 0;
  const weights: number[] = [];
  lp.forEach((row, i) => {
    const len = row.length;
    const r = (l: number) =>
      Math.max(options.variant === "s" ? Math.exp(l) : l - options.B, options.c);
    row.forEach((l, t) => {
      let b = 0;
      for (let k = 0; k <= options.horizon; k++) {
        b += options.gamma ** k * (t + k < len ? r(bcLp[i][t + k]) : r(0));
      }
      const w = Math.min(Math.max(Math.exp(lagged[i][t]), options.u), 1);
      weights.push(w);
      total += -w * b * l;
      n++;
    });
  });
  return { loss: total / n, weights };
}

Deno.test("gold: GOLD-s and GOLD-p against a manual computation, weights clamped at u", async () => {
  const policy = new TinyPolicy({ scale: 2 });
  const bcPolicy = new TinyPolicy({ seed: 11, scale: 2 });
  const input = makeInput(CASES);
  const lp = tokenLogProbs(policy, input);
  const bcLp = tokenLogProbs(bcPolicy, input);
  for (const variant of ["s", "p"] as const) {
    const options = { variant, u: 0.3, c: 0.1, gamma: 0.9, horizon: 2, B: -6 };
    const loss = await createLoss(gold, {
      variant,
      minWeight: options.u,
      minReward: options.c,
      gamma: options.gamma,
      horizon: options.horizon,
      logBaseline: options.B,
    });
    loss.prepare(context(policy, bcPolicy));
    // Right after prepare the lagged copy equals the policy.
    const expected = manualGold(lp, lp, bcLp, options);
    assert.ok(expected.weights.some((w) => w === options.u), "some weight is clamped at u");
    assert.ok(expected.weights.some((w) => w > options.u), "some weight is not clamped");
    const { value, records } = lossAndGrads(loss, input, policy.variables);
    close(value, expected.loss, 1e-5, `GOLD-${variant}`);
    close(records.get("importance_weight")!, sum(expected.weights) / expected.weights.length);
    loss.dispose();
  }
  disposeInput(input);
  policy.dispose();
  bcPolicy.dispose();
});

Deno.test("gold: GOLD-p subtracts the baseline from every token (authors' code), by hand", async () => {
  // Uniform policies over 7 ids: log p = -log 7 at every token, p~ = 1/7 clamped to u = 0.2.
  const policy = new TinyPolicy();
  tf.tidy(() => {
    policy.weight("output").assign(tf.zerosLike(policy.weight("output")));
    policy.weight("bias").assign(tf.zerosLike(policy.weight("bias")));
  });
  const loss = await createLoss(gold, {
    variant: "p",
    minWeight: 0.2,
    minReward: 0.1,
    logBaseline: -60,
    gamma: 1,
    horizon: 1,
  });
  loss.prepare(context(policy, policy));
  const input = makeInput([{ target: [4], reward: 1, sourceMean: 0 }]); // tokens 4, EOS
  const l = -Math.log(7);
  const r = l + 60; // per token (was l + 60 / 2 with the baseline spread over 2 tokens)
  const b = [r + r, r + 60]; // horizon 1; past EOS p_BC = 1: log 1 + 60
  const expected = -(0.2 * b[0] * l + 0.2 * b[1] * l) / 2;
  const { value, records } = lossAndGrads(loss, input, policy.variables);
  close(value, expected, 1e-5, "GOLD-p");
  close(records.get("return")!, (b[0] + b[1]) / 2, 1e-5);
  close(records.get("importance_weight")!, 0.2);
  loss.dispose();
  disposeInput(input);
  policy.dispose();
});

Deno.test("gold: the lagged copy is re-synced every K optimizer steps and at prepare", async () => {
  const policy = new TinyPolicy();
  const bcPolicy = new TinyPolicy({ seed: 2 });
  const input = makeInput(CASES);
  const loss = await createLoss(gold, { syncEvery: 2, minWeight: 0 });
  loss.prepare(context(policy, bcPolicy));
  const weightOf = () => {
    const records = new Map<string, number>();
    tf.tidy(() => loss.compute(input, (k, v) => records.set(k, v))).dispose();
    return records.get("importance_weight")!;
  };
  const initial = weightOf();
  const perturb = () =>
    tf.tidy(() => policy.weight("bias").assign(tf.add(policy.weight("bias"), tf.scalar(0.7))));
  const lagged = () => {
    // Mean clamped p~ = mean p (minWeight 0) computed from the policy itself.
    const lp = flat(tokenLogProbs(policy, input));
    return sum(lp.map((l) => Math.min(Math.exp(l), 1))) / lp.length;
  };
  close(initial, lagged());
  tf.tidy(() => policy.weight("output").assign(tf.mul(policy.weight("output"), 2)));
  perturb();
  const current = lagged();
  assert.ok(Math.abs(current - initial) > 1e-3, "the policy changed");
  loss.afterStep(1);
  close(weightOf(), initial, 1e-6, "not synced after 1 step");
  loss.afterStep(2);
  close(weightOf(), current, 1e-6, "synced after K = 2 steps");
  perturb();
  loss.afterStep(3);
  close(weightOf(), current, 1e-6, "not synced after 3 steps");
  loss.prepare(context(policy, bcPolicy));
  close(weightOf(), lagged(), 1e-6, "synced at prepare");
  loss.dispose();
  disposeInput(input);
  policy.dispose();
  bcPolicy.dispose();
});

// ---------------------------------------------------------------------------------------
// bvmpo

Deno.test("bvmpo: the E-step keeps the top half of tokens by advantage; psi sums to 1", () => {
  const advantages = [0.5, -0.2, 0.9, 0.1, 0.3, 7, -1, 0.05];
  const mask = [1, 1, 1, 1, 1, 0, 1, 1]; // 7 real tokens -> 4 kept; the masked 7 is ignored
  const { psi, kept } = topHalfWeights(advantages, mask, 0.5);
  assert.deepEqual(kept, [0.9, 0.5, 0.3, 0.1]);
  close(sum(Array.from(psi)), 1, 1e-6);
  assert.deepEqual(Array.from(psi).map((p) => p > 0), [
    true,
    false,
    true,
    true,
    true,
    false,
    false,
    false,
  ]);
  const z = sum(kept.map((a) => Math.exp(a / 0.5)));
  close(psi[2], Math.exp(0.9 / 0.5) / z, 1e-6);
  assert.equal(topHalfWeights([1], [1], 1).kept.length, 1);
  assert.equal(topHalfWeights([1, 2], [0, 0], 1).kept.length, 0);
});

Deno.test("bvmpo: lambda anneals log-linearly from klStart to klEnd", async () => {
  assert.equal(klWeight(0, 1, 1e-5, 100), 1);
  close(klWeight(100, 1, 1e-5, 100), 1e-5, 1e-9);
  close(klWeight(50, 1, 1e-5, 100), Math.sqrt(1e-5), 1e-9);
  close(klWeight(500, 1, 1e-5, 100), 1e-5, 1e-9);
  close(klWeight(0, 1, 1e-5, 0), 1e-5, 1e-9);

  const policy = new TinyPolicy();
  const input = makeInput(CASES);
  const loss = await createLoss(bvmpo, { klAnnealSteps: 2 });
  const lambdaNow = () => {
    let lambda = NaN;
    tf.tidy(() =>
      loss.compute(input, (name, value) => {
        if (name === "kl_weight") lambda = value;
      })
    ).dispose();
    return lambda;
  };
  loss.prepare(context(policy, policy));
  assert.equal(lambdaNow(), 1);
  loss.afterStep(1);
  close(lambdaNow(), Math.sqrt(1e-5), 1e-9);
  loss.afterStep(2);
  close(lambdaNow(), 1e-5, 1e-9);
  loss.prepare(context(policy, policy)); // a new Improve step restarts the schedule
  assert.equal(lambdaNow(), 1);
  loss.dispose();
  disposeInput(input);
  policy.dispose();
});

Deno.test("bvmpo: loss against a manual computation; eta's gradient is eps - KL(psi || uniform)", async () => {
  const policy = new TinyPolicy();
  const bcPolicy = new TinyPolicy({ seed: 9 });
  const input = makeInput(CASES);
  const lp = tokenLogProbs(policy, input);
  const mine = logDistributions(policy, input);
  const theirs = logDistributions(bcPolicy, input);
  const epsEta = 0.1;
  const eta = 0.5;
  const lr = 0.01;
  const loss = await createLoss(bvmpo, {
    critic: "features",
    etaInit: eta,
    epsEta,
    trustRegion: false,
    multiplierLearningRate: lr,
  });
  loss.prepare(context(policy, bcPolicy));
  const [state, ...critic] = loss.variables;
  assert.equal(critic.length, 4);

  // The critic's output starts at 0, so V(s_t) = the source's mean reward.
  const advantages = CASES.flatMap((c, i) => lp[i].map(() => c.reward - c.sourceMean));
  const logps = flat(lp);
  const mask = advantages.map(() => 1);
  const { psi, kept } = topHalfWeights(advantages, mask, eta);
  assert.equal(kept.length, Math.ceil(logps.length / 2));
  const policyLoss = -sum(logps.map((l, k) => psi[k] * l));
  const logMeanExp = Math.log(sum(kept.map((a) => Math.exp(a / eta))) / kept.length);
  const etaLoss = eta * epsEta + eta * logMeanExp;
  const kls = theirs.flatMap((row, i) =>
    row.map((d, t) => sum(d.map((l, v) => Math.exp(l) * (l - mine[i][t][v]))))
  );
  const kl = sum(kls) / kls.length;
  const valueLoss = 0.5 * sum(advantages.map((a) => a * a)) / advantages.length;
  const { value, grads, records } = lossAndGrads(loss, input, [
    ...policy.variables,
    ...loss.variables,
  ]);
  // eta is not in the policy's graph: L_eta is minimised by its own optimiser.
  close(value, policyLoss + kl + valueLoss, 1e-5, "loss");
  close(records.get("eta")!, eta, 1e-6);
  close(records.get("eta_loss")!, etaLoss, 1e-5);
  close(records.get("kl")!, kl);
  close(records.get("value_loss")!, valueLoss);
  const n = policy.variables.length;
  assert.equal(grads[n], undefined, "the multipliers' state gets no gradient from the trainer");
  // The critic learns from the value loss.
  assert.ok(grads[n + 4]!.some((g) => g !== 0), "critic output bias gets a gradient");

  // KL(psi || uniform on D~), and eta's first Adam step: log eta moves by lr against the
  // sign of dL_eta / d eta = eps - KL.
  const psiKept = kept.map((a) => Math.exp(a / eta) / sum(kept.map((b) => Math.exp(b / eta))));
  const klUniform = sum(psiKept.map((p) => p * Math.log(p * kept.length)));
  close(records.get("psi_kl")!, klUniform, 1e-5);
  loss.afterStep(1);
  const expected = eta * Math.exp(-lr * Math.sign(epsEta - klUniform));
  close(Math.exp(state.dataSync()[0]), expected, 1e-5, "eta after one step");
  loss.dispose();

  // Equal advantages: psi is uniform, KL = 0 < eps, so eta shrinks.
  const etaAfterStep = async (cases: Case[], etaInit: number) => {
    const l = await createLoss(bvmpo, { critic: "features", etaInit, epsEta, trustRegion: false });
    l.prepare(context(policy, bcPolicy));
    const inp = makeInput(cases);
    tf.tidy(() => l.compute(inp, () => {})).dispose();
    l.afterStep(1);
    const after = Math.exp(l.variables[0].dataSync()[0]);
    l.dispose();
    disposeInput(inp);
    return after;
  };
  const equal = CASES.map((c) => ({ ...c, reward: 0.5, sourceMean: 0.2 }));
  assert.ok((await etaAfterStep(equal, 2)) < 2, "eta shrinks");
  // Widely spread advantages at a small eta: KL > eps, so eta grows.
  const spread = CASES.map((c, i) => ({ ...c, reward: [1, 0, 0.5][i], sourceMean: 0 }));
  assert.ok((await etaAfterStep(spread, 0.05)) > 0.05, "eta grows");

  disposeInput(input);
  policy.dispose();
  bcPolicy.dispose();
});

Deno.test("bvmpo: eta starts at the std of A and tracks eps_eta at its own step size", async () => {
  const policy = new TinyPolicy();
  // A = R - m(x) per token: 0.4 (4 tokens), -0.3 (2), 0.2 (3).
  const input = makeInput(CASES);
  const a = [0.4, 0.4, 0.4, 0.4, -0.3, -0.3, 0.2, 0.2, 0.2];
  const mean = sum(a) / a.length;
  const std = Math.sqrt(sum(a.map((x) => (x - mean) ** 2)) / a.length);
  const loss = await createLoss(bvmpo, { critic: "features", trustRegion: false });
  loss.prepare(context(policy, policy));
  const etaNow = () => {
    let eta = NaN;
    tf.tidy(() => loss.compute(input, (k, v) => k === "eta" && (eta = v) && 0)).dispose();
    return eta;
  };
  close(etaNow(), std, 1e-5, "data-driven start");
  // With eta = 1 and advantages spread ~0.3, psi is nearly uniform (KL < eps = 0.1): the
  // policy's Adam at 5e-4 moved eta by at most 0.15 in 300 steps; its own step size 0.01
  // moves log eta by about 0.01 per step.
  const fixed = await createLoss(bvmpo, { critic: "features", trustRegion: false, etaInit: 1 });
  fixed.prepare(context(policy, policy));
  let eta = 1;
  for (let step = 1; step <= 60; step++) {
    tf.tidy(() => fixed.compute(input, (k, v) => k === "eta" && (eta = v) && 0)).dispose();
    fixed.afterStep(step);
  }
  assert.ok(eta < 0.6, `eta ${eta} should fall well below 1`);
  fixed.dispose();
  loss.dispose();
  disposeInput(input);
  policy.dispose();
});

Deno.test("bvmpo: trust region alpha * KL(pi_old || pi) to the pre-Improve-step policy", async () => {
  const policy = new TinyPolicy();
  const input = makeInput(CASES);
  const loss = await createLoss(bvmpo, { critic: "features", epsAlpha: 0.001, alphaInit: 5 });
  const records = () => lossAndGrads(loss, input, policy.variables);
  loss.prepare(context(policy, policy));
  const at0 = records();
  close(at0.records.get("trust_kl")!, 0, 1e-7, "pi_old is the policy at prepare");
  close(at0.records.get("alpha")!, 5, 1e-6);
  const oldDist = logDistributions(policy, input);
  tf.tidy(() =>
    policy.weight("bias").assign(
      tf.add(policy.weight("bias"), tf.tensor1d([0, 0, 0, 0, 0.8, -0.5, 0.3])),
    )
  );
  const newDist = logDistributions(policy, input);
  const kls = oldDist.flatMap((row, i) =>
    row.map((d, t) => sum(d.map((l, v) => Math.exp(l) * (l - newDist[i][t][v]))))
  );
  const kl = sum(kls) / kls.length;
  const moved = records();
  close(moved.records.get("trust_kl")!, kl, 1e-5);
  // The trust-region term adds alpha * KL to the loss: compare with it switched off.
  const without = await createLoss(bvmpo, { critic: "features", trustRegion: false });
  without.prepare(context(policy, policy));
  const plain = lossAndGrads(without, input, policy.variables).value;
  close(moved.value - plain, 5 * kl, 1e-4, "alpha * KL");
  without.dispose();
  // KL > eps_alpha: alpha grows after the step.
  loss.afterStep(1);
  const alpha = records().records.get("alpha")!;
  close(alpha, 5 * Math.exp(0.01), 1e-5, "alpha after one step");
  // A new Improve step takes a new pi_old.
  loss.prepare(context(policy, policy));
  close(records().records.get("trust_kl")!, 0, 1e-7);
  loss.dispose();
  disposeInput(input);
  policy.dispose();
});

Deno.test("bvmpo: the value head is used when present; its own critic is then not trained", async () => {
  const withHead = new TinyPolicy({ valueHead: true });
  const plain = new TinyPolicy();
  const auto = await createLoss(bvmpo);
  auto.prepare(context(withHead, plain));
  assert.equal(auto.variables.length, 1, "only the multipliers' state");
  const input = makeInput(CASES);
  const values = tf.tidy(() => withHead.forward(input.batch, { training: false }).values!);
  const lp = tokenLogProbs(withHead, input);
  const v = (values.arraySync() as number[][]).map((row, i) => row.slice(0, lp[i].length));
  values.dispose();
  const sq = CASES.flatMap((c, i) => v[i].map((x) => (x - c.reward) ** 2));
  const { records, grads } = lossAndGrads(auto, input, withHead.variables);
  close(records.get("value_loss")!, 0.5 * sum(sq) / sq.length);
  assert.ok(grads.at(-1)!.some((g) => g !== 0), "the value head's bias gets a gradient");
  auto.prepare(context(plain, plain));
  assert.equal(auto.variables.length, 5, "the multipliers' state and the critic");
  const forced = await createLoss(bvmpo, { critic: "value_head" });
  assert.throws(() => forced.prepare(context(plain, plain)), /value head/);
  auto.dispose();
  forced.dispose();
  disposeInput(input);
  withHead.dispose();
  plain.dispose();
});

// ---------------------------------------------------------------------------------------
// Shared

Deno.test("klFromLogits matches a manual KL", () => {
  const p = [[[1, 2, 0.5]]];
  const q = [[[0, 1, 3]]];
  const kl = tf.tidy(() => klFromLogits(tf.tensor3d(p), tf.tensor3d(q)).arraySync()) as number[][];
  const logSoftmax = (x: number[]) => {
    const z = Math.log(sum(x.map(Math.exp)));
    return x.map((v) => v - z);
  };
  const lp = logSoftmax(p[0][0]);
  const lq = logSoftmax(q[0][0]);
  close(kl[0][0], sum(lp.map((l, v) => Math.exp(l) * (l - lq[v]))), 1e-6);
});

Deno.test("gradients match central finite differences along a random direction", async () => {
  const policy = new TinyPolicy();
  const bcPolicy = new TinyPolicy({ seed: 6 });
  const probe = makeInput(CASES);
  const lp = tokenLogProbs(policy, probe);
  disposeInput(probe);
  // Ratios near 1.05: inside PPO's clip range, away from its kinks.
  const input = makeInput(CASES.map((c, i) => ({ ...c, behaviour: lp[i].map((l) => l - 0.05) })));
  const configs: [PluginDefinition<"loss">, Record<string, unknown>][] = [
    [bc, { labelSmoothing: 0.1 }],
    [gold, { variant: "s" }],
    [gold, { variant: "p" }],
    [bvmpo, { critic: "features" }],
    [offlinePpo, { klCoef: 0.3, entropyCoef: 0.1 }],
  ];
  const rng = new Rng(3);
  const directions = policy.variables.map((v) =>
    Float32Array.from({ length: v.size }, () => 2 * rng.next() - 1)
  );
  const shift = (h: number) =>
    tf.tidy(() =>
      policy.variables.forEach((v, k) =>
        v.assign(tf.add(v, tf.mul(tf.tensor(directions[k], v.shape), h)))
      )
    );
  for (const [plugin, config] of configs) {
    const loss = await createLoss(plugin, config);
    loss.prepare(context(policy, bcPolicy));
    const { grads } = lossAndGrads(loss, input, policy.variables);
    const analytic = sum(grads.map((g, k) => sum(g!.map((x, j) => x * directions[k][j]))));
    const valueAt = () => lossAndGrads(loss, input, policy.variables).value;
    const h = 1e-2;
    shift(h);
    const plus = valueAt();
    shift(-2 * h);
    const minus = valueAt();
    shift(h);
    close((plus - minus) / (2 * h), analytic, 2e-3, `${plugin.name} ${JSON.stringify(config)}`);
    loss.dispose();
  }
  disposeInput(input);
  policy.dispose();
  bcPolicy.dispose();
});

Deno.test("no loss leaks tensors across compute calls (variableGrads and tidy)", async () => {
  const policy = new TinyPolicy({ valueHead: true });
  const bcPolicy = new TinyPolicy({ seed: 4 });
  const input = makeInput(CASES.map((c) => ({ ...c, behaviour: [-1, -1, -1, -1] })));
  const configs: [PluginDefinition<"loss">, Record<string, unknown>][] = [
    [bc, { labelSmoothing: 0.1 }],
    [gold, { variant: "p" }],
    [bvmpo, { critic: "features" }],
    [bvmpo, {}],
    [offlinePpo, { klCoef: 0.1, entropyCoef: 0.01 }],
    [offlinePpo, { advantage: "value_head" }],
  ];
  for (const [plugin, config] of configs) {
    const loss = await createLoss(plugin, config);
    loss.prepare(context(policy, bcPolicy));
    const variables = [...policy.variables, ...loss.variables];
    const before = tf.memory().numTensors;
    for (let step = 1; step <= 3; step++) {
      const { value, grads } = tf.variableGrads(() => loss.compute(input, () => {}), variables);
      assert.ok(Number.isFinite(value.dataSync()[0]));
      value.dispose();
      tf.dispose(Object.values(grads));
      tf.tidy(() => loss.compute(input, () => {})).dispose();
      loss.afterStep(step);
      assert.equal(tf.memory().numTensors, before, `${plugin.name} ${JSON.stringify(config)}`);
    }
    loss.dispose();
  }
  disposeInput(input);
  policy.dispose();
  bcPolicy.dispose();
});

Deno.test("every loss trains a few steps in the real trainer", async () => {
  const rows: GrowRow[] = [
    { target: [4, 5], reward: 0.9 },
    { target: [5, 6, 4], reward: 0.3 },
    { target: [6], reward: 0.7 },
    { target: [4, 4, 5], reward: 0.5 },
  ].map(({ target, reward }, i) => ({
    source: `s${i % 2}`,
    hypothesis: "h",
    reference: "r",
    reward,
    tokens: [...target, TINY_SPECIALS.eos],
    logProbs: [...target, 0].map(() => -1.5),
    origin: "sample",
  }));
  const pairs: RowPair[] = rows.map((row) => ({
    source: [4],
    target: row.tokens.slice(0, -1),
    row,
  }));
  const means = new Map([["s0", 0.7], ["s1", 0.4]]);
  for (const plugin of LOSSES) {
    const policy = new TinyPolicy();
    const bcPolicy = policy.clone();
    const loss = await createLoss(plugin, {});
    loss.prepare(context(policy, bcPolicy));
    const records: string[] = [];
    const logged: number[] = [];
    const result = await trainLoop(policy, pairs, {
      steps: 6,
      batchSize: 2,
      learningRate: 0.01,
      warmupSteps: 0,
      schedule: "constant",
      clipNorm: 1,
      evalEvery: 0,
      patience: 0,
    }, {
      prefix: "improve",
      metrics: {
        log: (record) => {
          if ("improve/loss" in record) logged.push(record["improve/loss"]);
          return Promise.resolve();
        },
      },
      variables: loss.variables,
      afterStep: (step) => loss.afterStep(step),
      loss: (batch, items) => loss.compute(lossInput(batch, items, means), (k) => records.push(k)),
    }, 1);
    assert.equal(result.steps, 6, plugin.name);
    assert.ok(logged.every(Number.isFinite), plugin.name);
    loss.dispose();
    policy.dispose();
    bcPolicy.dispose();
  }
});
