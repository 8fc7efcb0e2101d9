/**
 * The offline losses (gold, bvmpo, offline_ppo) on the `webgpu` backend against `cpu`, on
 * the tiny bigram policy: the loss, every gradient and the recorded diagnostics of one
 * pass, then two steps through `optimizerStep` (with each loss's `afterStep`: GOLD's lagged
 * copy, BVMPO's multipliers) and the weights they leave. None of this reads a tensor
 * synchronously, which WebGPU under Deno cannot do. Runs on any WebGPU adapter, Mesa's
 * software lavapipe included; skipped where Deno has none.
 */

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { makeBatch } from "../../core/batch.ts";
import { createAjv } from "../../core/manifest/ajv.ts";
import { Adam } from "../../core/optim.ts";
import type { PluginDefinition, PluginDeps } from "../../core/plugin.ts";
import { optimizerStep } from "../../core/train.ts";
import type { LossInput, LossRecorder } from "../../core/types.ts";
import cpu from "../../plugins/backends/cpu.ts";
import webgpu, { requestAdapter } from "../../plugins/backends/webgpu.ts";
import bvmpo from "../../plugins/losses/bvmpo.ts";
import gold from "../../plugins/losses/gold.ts";
import offlinePpo from "../../plugins/losses/offline_ppo.ts";
import { TINY_SPECIALS, TinyPolicy } from "./_tiny_policy.ts";

const found = await requestAdapter();
const noAdapter = "missing" in found;
if (noAdapter) console.warn(`losses webgpu tests skipped: ${found.missing}`);

const deps = { seed: 7, baseDir: ".", smoke: false, log: () => {} } as unknown as PluginDeps;

async function use(name: "cpu" | "webgpu"): Promise<void> {
  const backend = name === "cpu"
    ? await cpu.create({ fastSegmentSum: true }, deps)
    : await webgpu.create({ powerPreference: "high-performance", allowSoftware: true }, deps);
  await backend.init();
  assert.equal(tf.getBackend(), name);
}

/** Three rows of different lengths; behaviour log-probs near the policy's. */
function tinyInput(): LossInput {
  const targets = [[4, 5, 6], [5], [6, 4, 4, 5]];
  const batch = makeBatch(targets.map((target) => ({ source: [4, 5], target })), TINY_SPECIALS);
  const [b, t] = batch.targetOut.shape;
  const behaviour = Float32Array.from({ length: b * t }, (_, i) => -1.5 - 0.1 * (i % 5));
  return {
    batch,
    rows: targets.map((target, i) => ({
      source: "s",
      hypothesis: "h",
      reference: "r",
      reward: [0.9, 0.2, 0.6][i],
      tokens: [...target, TINY_SPECIALS.eos],
      logProbs: [],
      origin: "sample" as const,
      temperature: 1,
    })),
    rewards: tf.tensor1d([0.9, 0.2, 0.6]),
    behaviourLogProbs: tf.mul(tf.tensor2d(behaviour, [b, t]), batch.targetMask) as tf.Tensor2D,
    sourceMeanRewards: tf.tensor1d([0.5, 0.5, 0.4]),
  };
}

/** What one backend computes for a loss: first pass and two optimizer steps. */
interface Outcome {
  loss: number;
  grads: Float32Array[];
  records: [string, number][];
  stepLosses: number[];
  stepRecords: [string, number][];
  weights: Float32Array[];
}

async function run(
  backend: "cpu" | "webgpu",
  plugin: PluginDefinition<"loss">,
  config: Record<string, unknown>,
): Promise<Outcome> {
  await use(backend);
  const ajv = createAjv();
  const validate = ajv.compile(plugin.configSchema);
  const filled = structuredClone(config);
  assert.ok(validate(filled), ajv.errorsText(validate.errors));
  const loss = await plugin.create(filled, deps);
  const policy = new TinyPolicy({ valueHead: true });
  const bcPolicy = new TinyPolicy({ seed: 4 });
  const input = tinyInput();
  loss.prepare({ policy, bcPolicy, improve: 1, improveSteps: 1 });
  const variables = [...policy.variables, ...loss.variables];

  // One pass: a recorder that takes tensors, as optimizerStep's does.
  const kept: [string, tf.Scalar][] = [];
  const record: LossRecorder = () => assert.fail("a number was recorded");
  record.tensor = (name, value) => void kept.push([name, value]);
  const numbers: [string, number][] = [];
  const mixed: LossRecorder = (name: string, value: number) => void numbers.push([name, value]);
  mixed.tensor = record.tensor;
  const { value, grads } = tf.variableGrads(() => loss.compute(input, mixed), variables);
  const outcome: Outcome = {
    loss: (await value.data())[0],
    grads: await Promise.all(
      variables.map(async (v) =>
        grads[v.name] === undefined
          ? new Float32Array()
          : Float32Array.from(await grads[v.name].data())
      ),
    ),
    records: [
      ...numbers,
      ...await Promise.all(
        kept.map(async ([n, t]) => [n, (await t.data())[0]] as [string, number]),
      ),
    ],
    stepLosses: [],
    stepRecords: [],
    weights: [],
  };
  tf.dispose([value, ...Object.values(grads), ...kept.map(([, t]) => t)]);

  const adam = new Adam(variables);
  for (let step = 1; step <= 2; step++) {
    const result = await optimizerStep(
      variables,
      adam,
      (r) => loss.compute(input, r),
      0.05,
      1,
      (name, v) => outcome.stepRecords.push([name, v]),
    );
    assert.ok(result.applied);
    outcome.stepLosses.push(result.loss);
    loss.afterStep(step);
  }
  outcome.weights = await Promise.all(
    variables.map(async (v) => Float32Array.from(await v.data())),
  );
  adam.dispose();
  loss.dispose();
  policy.dispose();
  bcPolicy.dispose();
  tf.dispose([input.rewards, input.behaviourLogProbs, input.sourceMeanRewards]);
  tf.dispose(Object.values(input.batch));
  return outcome;
}

function close(a: ArrayLike<number>, b: ArrayLike<number>, label: string, tol: number): void {
  assert.equal(a.length, b.length, `${label}: length`);
  for (let i = 0; i < a.length; i++) {
    if (!(Math.abs(a[i] - b[i]) <= tol * (1 + Math.abs(b[i])))) {
      assert.fail(`${label}[${i}]: webgpu ${a[i]}, cpu ${b[i]}`);
    }
  }
}

function sameRecords(got: [string, number][], want: [string, number][], label: string): void {
  assert.deepEqual(got.map(([n]) => n), want.map(([n]) => n), `${label}: names`);
  close(got.map(([, v]) => v), want.map(([, v]) => v), label, 1e-4);
}

const CASES: [PluginDefinition<"loss">, Record<string, unknown>][] = [
  [gold, { variant: "s", horizon: 2, syncEvery: 1 }],
  [gold, { variant: "p", gamma: 0.9, horizon: 8 }],
  [bvmpo, { critic: "features", trustRegion: true }],
  [bvmpo, { critic: "value_head", trustRegion: false, etaInit: 0.3 }],
  [offlinePpo, { klCoef: 0.1, entropyCoef: 0.01 }],
  [offlinePpo, { advantage: "value_head" }],
] as [PluginDefinition<"loss">, Record<string, unknown>][];

for (const [plugin, config] of CASES) {
  Deno.test({
    name: `webgpu: ${plugin.name} ${JSON.stringify(config)} matches cpu (loss, gradients, ` +
      "diagnostics, two optimizer steps)",
    ignore: noAdapter,
  }, async () => {
    const want = await run("cpu", plugin, config);
    const got = await run("webgpu", plugin, config);
    await use("cpu");
    close([got.loss], [want.loss], "loss", 1e-5);
    got.grads.forEach((g, i) => close(g, want.grads[i], `grad ${i}`, 1e-4));
    sameRecords(got.records, want.records, "records");
    close(got.stepLosses, want.stepLosses, "step losses", 1e-4);
    sameRecords(got.stepRecords, want.stepRecords, "step records");
    got.weights.forEach((w, i) => close(w, want.weights[i], `weights ${i}`, 1e-4));
  });
}
