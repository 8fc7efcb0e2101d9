/** Whole-array helpers and their users handle arrays far beyond the call-argument limit. */

import "@tensorflow/tfjs-backend-cpu";
import assert from "node:assert/strict";
import { appendAll, maxOf, minOf } from "../../core/append.ts";
import { lineChart } from "../../core/report/svg.ts";
import { makeBatch } from "../../core/batch.ts";

Deno.test("maxOf/minOf: like Math.max/min, for any length", () => {
  assert.equal(maxOf([]), -Infinity);
  assert.equal(minOf([]), Infinity);
  assert.equal(maxOf([3, -1, 7, 2]), 7);
  assert.equal(minOf([3, -1, 7, 2]), -1);
  assert.ok(Number.isNaN(maxOf([1, NaN, 2])));
  const big = Array.from({ length: 500_000 }, (_, i) => (i * 7919) % 500_009);
  assert.equal(maxOf(big), Math.max(...big.slice(0, 1000), maxOf(big.slice(1000))));
  assert.equal(minOf(big), 0);
  assert.deepEqual(appendAll([1], new Set([2, 3])), [1, 2, 3]);
});

Deno.test("lineChart: a curve of 300k points (a long run's metrics) is drawn, not a stack overflow", () => {
  const points: [number, number][] = Array.from({ length: 300_000 }, (_, i) => [i, Math.sin(i)]);
  const svg = lineChart({
    title: "long",
    xLabel: "step",
    yLabel: "value",
    series: [{ name: "s", points }],
  });
  assert.ok(svg.startsWith("<svg"));
});

Deno.test("makeBatch: a batch of 200k pairs pads to the longest without spreading", () => {
  const pairs = Array.from(
    { length: 200_000 },
    (_, i) => ({ source: [5, 6], target: i === 7 ? [5, 6, 7] : [5] }),
  );
  const batch = makeBatch(pairs, { pad: 0, bos: 1, eos: 2, unk: 3 });
  assert.deepEqual(batch.targetOut.shape, [200_000, 8], "4 positions, padded to a multiple of 8");
  for (const t of Object.values(batch)) (t as { dispose?: () => void }).dispose?.();
});
