/**
 * `deno task bench`'s option errors: a bad `--shape` or `--seconds`, and a backend that does not
 * start (`--backend webgpu` with every adapter hidden) are exit-2 errors before anything is
 * timed, never a silent measurement of another backend.
 */

import assert from "node:assert/strict";
import { hasStackTrace, runTask } from "../_cli.ts";

Deno.test("bench: a bad --shape or --seconds is a clear exit-2 error", async () => {
  const shape = await runTask("bench", ["--shape", "huge", "--json"]);
  assert.equal(shape.code, 2, shape.stderr);
  assert.match(shape.stderr, /--shape must be one of small, large, got "huge"/);
  const seconds = await runTask("bench", ["--seconds", "0", "--json"]);
  assert.equal(seconds.code, 2, seconds.stderr);
  assert.match(seconds.stderr, /--seconds must be a number in \(0, 3600\], got "0"/);
  assert.ok(!hasStackTrace(shape.stderr + seconds.stderr));
});

Deno.test("bench --backend webgpu without an adapter: exit 2, not a cpu measurement", async () => {
  const r = await runTask("bench", ["--backend", "webgpu", "--model-only", "--json"], {
    env: { DENO_WEBGPU_BACKEND: "vulkan", VK_ICD_FILENAMES: "/nonexistent/gpu_icd.json" },
  });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--backend webgpu: webgpu backend: no WebGPU adapter/);
  assert.equal(r.stdout.trim(), "", "nothing measured");
  assert.ok(!hasStackTrace(r.stderr), r.stderr);
});

Deno.test("bench --phases: BC step, Grow batch and PPO rollout are timed through the framework", async () => {
  // bench/phases.ts at a tiny shape: each phase runs (a warm-up and two timed calls) and
  // reports positive, finite figures, and the PPO rollout frees every tensor it makes.
  await (await (await import("../../plugins/backends/cpu.ts")).default.create(
    { fastSegmentSum: true },
    {} as never,
  )).init();
  const tf = await import("@tensorflow/tfjs-core");
  const { benchPhases, PHASE_SHAPE } = await import("../../bench/phases.ts");
  const tiny = {
    ...PHASE_SHAPE,
    dModel: 8,
    heads: 2,
    ffn: 16,
    layers: 1,
    vocab: 30,
    bcBatch: 4,
    sourceLength: 5,
    targetLength: 5,
    growSources: 2,
    maxLen: 6,
    rolloutSize: 8,
    minibatchSize: 4,
    epochs: 2,
  };
  const before = tf.memory().numTensors;
  const result = await benchPhases(0.001, tiny);
  assert.equal(tf.memory().numTensors, before, "no tensor leaks");
  for (const [phase, timing] of Object.entries(result)) {
    assert.equal(timing.calls, 2, phase);
    for (const key of ["ms", "cpu_ms", "per_s", "per_cpu_s"] as const) {
      assert.ok(Number.isFinite(timing[key]) && timing[key] > 0, `${phase}.${key}: ${timing[key]}`);
    }
  }
  // Units: target tokens per BC step, samples per Grow batch and per rollout batch.
  assert.deepEqual(
    [result.bc_step.units, result.grow_batch.units, result.ppo_rollout.units],
    [4 * 5, 2 * 4, 8],
  );
});
