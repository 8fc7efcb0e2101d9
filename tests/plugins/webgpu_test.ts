/**
 * Conformance of the `webgpu` backend with `cpu`: the transformer's teacher-forced
 * log-probabilities, loss and every gradient (with and without dropout, ReLU and GELU), and
 * its greedy, sampled (same seed) and beam outputs. Runs on any WebGPU adapter, Mesa's
 * software lavapipe included (CI); skipped where Deno has no WebGPU adapter (the error for
 * that case is tested in `webgpu_error_test.ts`). Also: the software-adapter test, and
 * a training step through `optimizerStep` keeps cpu's numbers.
 */

import { tinyTransformerCase } from "./_tiny_translator.ts";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { makeBatch, nllLoss } from "../../core/batch.ts";
import { Adam } from "../../core/optim.ts";
import { optimizerStep } from "../../core/train.ts";
import type { PluginDeps } from "../../core/plugin.ts";
import { webgpuVerdict } from "../../plugins/backends/auto.ts";
import cpu from "../../plugins/backends/cpu.ts";
import webgpu, {
  describeAdapter,
  isSoftwareAdapter,
  requestAdapter,
} from "../../plugins/backends/webgpu.ts";

const found = await requestAdapter();
const noAdapter = "missing" in found;
if (noAdapter) console.warn(`webgpu tests skipped: ${found.missing}`);

const deps = {} as PluginDeps;

async function use(name: "cpu" | "webgpu"): Promise<void> {
  const backend = name === "cpu"
    ? await cpu.create({ fastSegmentSum: true }, deps)
    : await webgpu.create({ powerPreference: "high-performance", allowSoftware: true }, deps);
  await backend.init();
}

function tinyTransformer(activation: "relu" | "gelu", dropout: number) {
  const { policy, specials, pairs } = tinyTransformerCase(activation, dropout);
  return { policy, specials, pairs, sources: pairs.map((p) => p.source) };
}

function close(a: ArrayLike<number>, b: ArrayLike<number>, label: string, tol: number): void {
  assert.equal(a.length, b.length, `${label}: length`);
  for (let i = 0; i < a.length; i++) {
    const err = Math.abs(a[i] - b[i]);
    if (!(err <= tol * (1 + Math.abs(b[i])))) {
      assert.fail(`${label}[${i}]: webgpu ${a[i]}, cpu ${b[i]}`);
    }
  }
}

for (const [activation, dropout] of [["relu", 0], ["gelu", 0.2]] as const) {
  Deno.test({
    name: `webgpu: transformer log-probs, loss and gradients match cpu (${activation}, ` +
      `dropout ${dropout})`,
    ignore: noAdapter,
  }, async () => {
    const run = async (backend: "cpu" | "webgpu") => {
      await use(backend);
      const { policy, specials, pairs } = tinyTransformer(activation, dropout);
      const batch = makeBatch(pairs, specials);
      policy.reseed?.(11);
      const { value, grads } = tf.variableGrads(
        () => nllLoss(policy, batch, { labelSmoothing: 0.1, training: true, average: "token" }),
        policy.variables,
      );
      const lp = tf.tidy(() => policy.tokenLogProbs(batch, { training: false }));
      const out = {
        loss: (await value.data())[0],
        logProbs: Float32Array.from(await lp.data()),
        grads: await Promise.all(
          policy.variables.map(async (v) => Float32Array.from(await grads[v.name].data())),
        ),
      };
      tf.dispose([value, lp, ...Object.values(grads)]);
      policy.dispose();
      return out;
    };
    const want = await run("cpu");
    const got = await run("webgpu");
    close([got.loss], [want.loss], "loss", 1e-5);
    close(got.logProbs, want.logProbs, "logProbs", 1e-4);
    got.grads.forEach((g, i) => close(g, want.grads[i], `grad ${i}`, 1e-4));
    await use("cpu");
  });
}

Deno.test({
  name: "webgpu: greedy, sampled (same seed) and beam outputs match cpu",
  ignore: noAdapter,
}, async () => {
  const run = async (backend: "cpu" | "webgpu") => {
    await use(backend);
    const { policy, sources } = tinyTransformer("relu", 0);
    const out = {
      greedy: await policy.greedy(sources, { maxLen: 6 }),
      beam: await policy.beam(sources, { maxLen: 5, beamSize: 3, lengthPenalty: 0.6 }),
      samples: await policy.sample(sources, {
        maxLen: 5,
        n: 2,
        temperature: 1,
        topK: 0,
        topP: 1,
        seed: 5,
      }),
    };
    policy.dispose();
    return out;
  };
  const want = await run("cpu");
  const got = await run("webgpu");
  const tokens = (gs: { tokens: number[] }[]) => gs.map((g) => g.tokens);
  assert.deepEqual(tokens(got.greedy), tokens(want.greedy));
  assert.deepEqual(tokens(got.beam), tokens(want.beam));
  assert.deepEqual(got.samples.map(tokens), want.samples.map(tokens));
  close(got.greedy.flatMap((g) => g.logProbs), want.greedy.flatMap((g) => g.logProbs), "lp", 1e-4);
  await use("cpu");
});

Deno.test({
  name: "webgpu: a training step through optimizerStep keeps cpu's loss and new weights",
  ignore: noAdapter,
}, async () => {
  const run = async (backend: "cpu" | "webgpu") => {
    await use(backend);
    const { policy, specials, pairs } = tinyTransformer("relu", 0.1);
    const batch = makeBatch(pairs, specials);
    const adam = new Adam(policy.variables);
    const losses: number[] = [];
    for (let step = 0; step < 2; step++) {
      policy.reseed?.(step);
      const result = await optimizerStep(
        policy.variables,
        adam,
        () => nllLoss(policy, batch, { labelSmoothing: 0, training: true, average: "token" }),
        1e-3,
        1,
      );
      losses.push(result.loss);
    }
    // save() reads synchronously: optimizerStep left the weights readable on the host
    const state = policy.save();
    adam.dispose();
    policy.dispose();
    return { losses, data: state.data };
  };
  const want = await run("cpu");
  const got = await run("webgpu");
  close(got.losses, want.losses, "losses", 1e-5);
  // Adam moves a weight whose gradient is ~0 by up to lr in either direction, so weights
  // agree to 2 steps x lr; the second loss (after the first update) checks the update closely.
  close(got.data, want.data, "weights", 2e-3);
  await use("cpu");
});

Deno.test({ name: "webgpu: software adapters are recognised", ignore: noAdapter }, () => {
  if ("missing" in found) return;
  // the test machines run Mesa's lavapipe; a hardware adapter is simply described
  console.log(`adapter: ${describeAdapter(found.info)}`);
  const llvmpipe = {
    vendor: "65541",
    architecture: "",
    device: "0",
    description: "llvmpipe (LLVM 15.0.6, 256 bits)",
    isFallbackAdapter: false,
  };
  assert.equal(isSoftwareAdapter(llvmpipe), true);
  assert.equal(isSoftwareAdapter({ ...llvmpipe, description: "NVIDIA H200" }), false);
  assert.equal(isSoftwareAdapter({ ...llvmpipe, description: "", isFallbackAdapter: true }), true);
});

Deno.test("auto: webgpu only for a hardware adapter that the probe finds faster", () => {
  const hw = {
    vendor: "nvidia",
    architecture: "hopper",
    device: "0x2335",
    description: "NVIDIA H200",
    isFallbackAdapter: false,
  };
  assert.equal(webgpuVerdict(undefined).use, false);
  assert.equal(
    webgpuVerdict({ ...hw, description: "llvmpipe (LLVM 15.0.6, 256 bits)" }).use,
    false,
  );
  assert.equal(webgpuVerdict({ ...hw, isFallbackAdapter: true }).use, false);
  assert.equal(webgpuVerdict(hw).use, true);
  assert.equal(webgpuVerdict(hw, { hostMs: 10, webgpuMs: 2 }).use, true);
  const slower = webgpuVerdict(hw, { hostMs: 2, webgpuMs: 10 });
  assert.equal(slower.use, false);
  assert.match(slower.why, /NVIDIA H200 not faster \(probe 10\.0 ms vs 2\.0 ms\)/);
});
