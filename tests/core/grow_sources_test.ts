/**
 * Grow and PPO draw their training sources as a seeded uniform sample: with a corpus kept in
 * file order (LibreOffice's catalogs are grouped by module), the sample's module mix matches
 * the training split's, where the first N rows would cover only the first modules.
 */

import assert from "node:assert/strict";
import { sampleInOrder } from "../../core/random.ts";

/** 8 modules of 600 strings each, in file order, like a catalog-ordered training split. */
const MODULES = ["cui", "dba", "chart2", "sc", "sw", "sd", "svx", "basctl"];
const TRAIN = MODULES.flatMap((module) =>
  Array.from({ length: 600 }, (_, i) => ({ source: `${module} ${i}`, module }))
);

Deno.test("sampleInOrder: the module mix of a 1,000-source sample matches the split's within sampling error", () => {
  for (const seed of [1, 2, 3, 1001]) {
    const sample = sampleInOrder(TRAIN, 1000, seed);
    assert.equal(sample.length, 1000);
    assert.equal(new Set(sample.map((e) => e.source)).size, 1000, "no source twice");
    // Kept in the split's order (stable batching and files).
    const positions = sample.map((e) => TRAIN.indexOf(e));
    assert.deepEqual(positions, [...positions].sort((a, b) => a - b));
    // Hypergeometric: each module expects 125 with a standard deviation of about 9.9.
    const n = 1000, p = 1 / MODULES.length, total = TRAIN.length;
    const sd = Math.sqrt(n * p * (1 - p) * (total - n) / (total - 1));
    for (const module of MODULES) {
      const count = sample.filter((e) => e.module === module).length;
      assert.ok(Math.abs(count - n * p) < 4.5 * sd, `seed ${seed}: ${module} has ${count} of ${n}`);
    }
  }
});

Deno.test("sampleInOrder: deterministic per seed, different across seeds, all items for 0 or more than the split", () => {
  assert.deepEqual(sampleInOrder(TRAIN, 50, 7), sampleInOrder(TRAIN, 50, 7));
  assert.notDeepEqual(sampleInOrder(TRAIN, 50, 7), sampleInOrder(TRAIN, 50, 8));
  assert.deepEqual(sampleInOrder(TRAIN, 0, 7), TRAIN);
  assert.deepEqual(sampleInOrder(TRAIN, TRAIN.length + 5, 7), TRAIN);
  assert.notEqual(sampleInOrder(TRAIN, 0, 7), TRAIN, "a copy, not the caller's array");
});
