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
