import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import cpu from "../../plugins/backends/cpu.ts";
import { Adam, clipByGlobalNorm, learningRate } from "../../core/optim.ts";
import { makeBatch } from "../../core/batch.ts";
import {
  hasCheckpoint,
  loadCheckpoint,
  removeCheckpoint,
  saveCheckpoint,
} from "../../core/checkpoint.ts";
import { join } from "node:path";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

Deno.test("Adam matches the update rule computed by hand", async () => {
  const w = tf.variable(tf.tensor1d([1, -2]));
  const adam = new Adam([w], { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 });
  const g = tf.tensor1d([0.5, -1]);
  adam.apply([g], 0.1);
  // Step 1: m = 0.1 g, v = 0.001 g^2; m_hat = g, v_hat = g^2; update = lr * g / (|g| + eps).
  const after = w.dataSync();
  assert.ok(Math.abs(after[0] - (1 - 0.1)) < 1e-6);
  assert.ok(Math.abs(after[1] - (-2 + 0.1)) < 1e-6);
  adam.apply([g], 0.1);
  const state = await adam.state();
  assert.equal(state.step, 2);
  assert.ok(Math.abs(state.m[0][0] - (0.9 * 0.05 + 0.1 * 0.5)) < 1e-7);
  const before = tf.memory().numTensors;
  adam.apply([g], 0.1);
  assert.equal(tf.memory().numTensors, before, "no tensors leak per step");
  tf.dispose([w, g]);
  adam.dispose();
});

Deno.test("Adam's host loop and tfjs-op update agree, weight decay and restore included", async () => {
  const init = [0.3, -1.2, 2.5, 0.01, -0.7, 1.1];
  const grads = [[0.5, -1, 0.2, 0, 3, -0.1], [-0.2, 0.4, 0.9, 1e-4, -2, 0.3]];
  const run = async (placement: "host" | "device") => {
    const w = tf.variable(tf.tensor2d(init, [2, 3]));
    const adam = new Adam([w, tf.variable(tf.zeros([1]))], { weightDecay: 0.01 }, placement);
    for (let step = 0; step < 6; step++) {
      const g = tf.tensor2d(grads[step % 2], [2, 3]);
      adam.apply([g, undefined], 0.05);
      g.dispose();
    }
    const result = { w: Array.from(w.dataSync()), state: await adam.state() };
    w.dispose();
    return result;
  };
  const host = await run("host");
  const device = await run("device");
  for (let j = 0; j < init.length; j++) {
    assert.ok(Math.abs(host.w[j] - device.w[j]) < 1e-6, `weight ${j}: ${host.w[j]} ${device.w[j]}`);
    assert.ok(Math.abs(host.state.v[0][j] - device.state.v[0][j]) < 1e-7);
  }
  // Decoupled weight decay moved the weights beyond plain Adam's update.
  const w = tf.variable(tf.tensor2d(init, [2, 3]));
  const plain = new Adam([w], {}, "host");
  for (let step = 0; step < 6; step++) {
    const g = tf.tensor2d(grads[step % 2], [2, 3]);
    plain.apply([g], 0.05);
    g.dispose();
  }
  assert.ok(Math.abs(w.dataSync()[2] - host.w[2]) > 1e-4, "weight decay changes the update");
  // A restored state continues exactly where the saved one left off.
  const restored = new Adam([w], {}, "host");
  restored.restore(await plain.state());
  assert.equal(restored.step, 6);
  assert.throws(
    () => restored.restore({ step: 1, m: [new Float32Array(2)], v: [new Float32Array(2)] }),
    /variable 0 has 2 values/,
  );
  w.dispose();
});

Deno.test("gradients are clipped to the global norm", () => {
  const a = tf.tensor1d([3, 0]);
  const b = tf.tensor1d([0, 4]);
  const { grads, norm } = clipByGlobalNorm([a, b], 1);
  assert.equal(norm, 5);
  assert.deepEqual(Array.from(grads[0].dataSync()).map((x) => Number(x.toFixed(6))), [0.6, 0]);
  const unclipped = clipByGlobalNorm([a, b], 10);
  assert.deepEqual(Array.from(unclipped.grads[1].dataSync()), [0, 4]);
  tf.dispose([a, b, ...grads, ...unclipped.grads]);
});

Deno.test("learning-rate schedules warm up linearly then decay", () => {
  const base = { peak: 1, warmup: 10, total: 110 };
  assert.equal(learningRate(5, { ...base, schedule: "constant" }), 0.5);
  assert.equal(learningRate(10, { ...base, schedule: "linear" }), 1);
  assert.equal(learningRate(60, { ...base, schedule: "linear" }), 0.5);
  assert.equal(learningRate(110, { ...base, schedule: "linear" }), 0);
  assert.ok(Math.abs(learningRate(60, { ...base, schedule: "cosine" }) - 0.5) < 1e-12);
  assert.equal(learningRate(40, { ...base, schedule: "inverse_sqrt" }), 0.5);
});

Deno.test("makeBatch appends EOS, shifts targets behind BOS and masks padding", () => {
  const specials = { pad: 0, bos: 1, eos: 2, unk: 3 };
  const batch = makeBatch(
    [{ source: [5, 6], target: [7] }, { source: [8], target: [9, 10] }],
    specials,
  );
  // Padded to LENGTH_MULTIPLE (8) positions: fewer distinct shapes, so buffers are reused.
  const pad = (row: number[]) => [...row, ...new Array(8 - row.length).fill(0)];
  assert.deepEqual(batch.source.arraySync(), [pad([5, 6, 2]), pad([8, 2])]);
  assert.deepEqual(batch.targetIn.arraySync(), [pad([1, 7]), pad([1, 9, 10])]);
  assert.deepEqual(batch.targetOut.arraySync(), [pad([7, 2]), pad([9, 10, 2])]);
  assert.deepEqual(batch.targetMask.arraySync(), [pad([1, 1]), pad([1, 1, 1])]);
  tf.dispose(Object.values(batch));
  const cut = makeBatch([{ source: [5], target: [7, 8], truncated: true }], specials);
  assert.deepEqual(cut.targetOut.arraySync(), [pad([7, 8])]);
  assert.deepEqual(cut.targetMask.arraySync(), [pad([1, 1])]);
  tf.dispose(Object.values(cut));
  const long = makeBatch([{ source: [5], target: new Array(8).fill(7) }], specials);
  assert.deepEqual(long.targetOut.shape, [1, 16], "9 positions round up to 16");
  tf.dispose(Object.values(long));
});

Deno.test("checkpoints round-trip and corrupt or truncated files are named", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const state = {
      config: { dModel: 4 },
      weights: [{ name: "w", shape: [2, 2], offset: 0 }],
      data: new Float32Array([1, 2, 3, 4]),
    };
    assert.equal(await hasCheckpoint(dir, "best"), false);
    await saveCheckpoint(dir, "best", state, { step: 7 });
    assert.equal(await hasCheckpoint(dir, "best"), true);
    const loaded = await loadCheckpoint(dir, "best");
    assert.deepEqual(Array.from(loaded.state.data), [1, 2, 3, 4]);
    assert.deepEqual(loaded.meta, { step: 7 });
    // Weights files are named by content; saving again replaces the old one.
    const bins = () =>
      [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".bin"));
    assert.equal(bins().length, 1);
    await saveCheckpoint(dir, "best", { ...state, data: new Float32Array([5, 6, 7, 8]) });
    assert.equal(bins().length, 1);
    assert.deepEqual(Array.from((await loadCheckpoint(dir, "best")).state.data), [5, 6, 7, 8]);
    const bin = join(dir, bins()[0]);
    const bytes = await Deno.readFile(bin);
    await Deno.writeFile(bin, bytes.slice(0, 8));
    await assert.rejects(
      () => loadCheckpoint(dir, "best"),
      /best-[0-9a-f]{16}\.bin: 8 bytes, expected 16 \(truncated\?\)/,
    );
    bytes[3] ^= 0xff;
    await Deno.writeFile(bin, bytes);
    await assert.rejects(
      () => loadCheckpoint(dir, "best"),
      /best-[0-9a-f]{16}\.bin: checksum mismatch/,
    );
    await removeCheckpoint(dir, "best");
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    await saveCheckpoint(dir, "best", state);
    await Deno.writeTextFile(join(dir, "best.json"), "{");
    await assert.rejects(() => loadCheckpoint(dir, "best"), /best\.json: not valid JSON/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
