import assert from "node:assert/strict";
import { giveSimdMatrix, pooledSimdBytes, takeSimdMatrix } from "../../plugins/_nn/simd.ts";

Deno.test("SIMD matrices of changing shapes reuse one module memory instead of one per shape", () => {
  // Batch shapes change from step to step (target lengths, batch sizes); a pool keyed by
  // shape kept a memory per shape seen, which grew a training process by gigabytes.
  let largest = 0;
  for (let t = 8; t <= 400; t += 8) {
    const m = takeSimdMatrix(t, 1000, 1);
    m.data.fill(1);
    largest = Math.max(largest, m.instance.memory.buffer.byteLength);
    giveSimdMatrix(m);
  }
  assert.ok(
    pooledSimdBytes() <= largest,
    `pooled ${pooledSimdBytes()} bytes after 50 shapes; one memory of ${largest} should serve all`,
  );
});

Deno.test("a reused SIMD matrix has its own shape and stays valid while held", () => {
  const a = takeSimdMatrix(64, 100);
  giveSimdMatrix(a);
  giveSimdMatrix(a); // a second give is harmless
  const b = takeSimdMatrix(16, 50, 1);
  const c = takeSimdMatrix(16, 50, 1); // a is free once only: c gets a new memory
  assert.notEqual(b.instance, c.instance);
  assert.equal(b.rows, 16);
  assert.equal(b.cols, 50);
  assert.equal(b.slots, 2);
  b.data.set(Array.from({ length: 800 }, (_, i) => i % 7));
  const max = new Float64Array(16);
  const sum = new Float64Array(16);
  b.expSums(16, max, sum, false);
  assert.equal(max[0], 6);
  // Growing past the memory a matrix first had keeps every view of the new one valid.
  giveSimdMatrix(b);
  const d = takeSimdMatrix(512, 512);
  d.data.fill(2);
  assert.equal(d.data.length, 512 * 512);
  assert.equal(d.data[512 * 512 - 1], 2);
  giveSimdMatrix(c);
  giveSimdMatrix(d);
});

Deno.test("a teacher-forced pass outside a gradient tape gives its SIMD memories back", async () => {
  // Scoring (PPO's old and reference log-probabilities, Grow, evaluation) runs the fused
  // layers without a backward pass. They kept their work memories for one that never came,
  // so every scoring pass faulted in fresh memory (a quarter of its time in the kernel).
  await (await (await import("../../plugins/backends/cpu.ts")).default.create(
    { fastSegmentSum: true },
    {} as never,
  )).init();
  const transformer = (await import("../../plugins/models/transformer/mod.ts")).default;
  const { makeBatch } = await import("../../core/batch.ts");
  const tf = await import("@tensorflow/tfjs-core");
  const specials = { pad: 0, bos: 1, eos: 2, unk: 3 };
  const factory = transformer.create(
    { dModel: 8, heads: 2, ffn: 16, encoderLayers: 1, decoderLayers: 1, dropout: 0 },
    {} as never,
  ) as import("../../core/types.ts").ModelFactory;
  const policy = factory.build({
    sourceVocab: 20,
    targetVocab: 20,
    specials,
    valueHead: false,
    seed: 1,
  });
  const batch = makeBatch([{ source: [5, 6, 7], target: [8, 9] }, { source: [5], target: [9] }], {
    ...specials,
  });
  const held = [];
  while (pooledSimdBytes() > 0) held.push(takeSimdMatrix(1, 1)); // an empty pool to start
  const score = () => tf.tidy(() => policy.tokenLogProbs(batch, { training: false }).dataSync());
  const first = score();
  const pooled = pooledSimdBytes();
  assert.ok(pooled > 0, "the pass returned its memories (output layer, feed-forward) to the pool");
  assert.deepEqual(score(), first);
  assert.equal(pooledSimdBytes(), pooled, "a second pass reuses them");
  // Under a gradient tape the memories wait for the backward pass (all held at once, so more
  // of them), which returns them.
  const { value, grads } = tf.variableGrads(
    () =>
      tf.sum(
        policy.tokenLogProbs(batch, { training: false }),
      ) as import("@tensorflow/tfjs-core").Scalar,
    policy.variables,
  );
  assert.ok(pooledSimdBytes() >= pooled, `${pooledSimdBytes()} bytes pooled, had ${pooled}`);
  tf.dispose([value, ...Object.values(grads)]);
  held.forEach(giveSimdMatrix);
  tf.dispose(Object.values(batch));
  policy.dispose();
});
