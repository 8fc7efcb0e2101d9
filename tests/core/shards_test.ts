/**
 * Putting together the reward counters of shards computed by workers ({@link DiagnosticsSum}):
 * counters add up, `_mean` keys average weighted by the rows each shard scored.
 */
import assert from "node:assert/strict";
import { DiagnosticsSum } from "../../core/shards.ts";

Deno.test("DiagnosticsSum: counters add up; _mean keys are row-weighted means", () => {
  const sum = new DiagnosticsSum();
  assert.equal(sum.shards, 0);
  assert.deepEqual(sum.counters(), {});
  sum.add({ counters: { guard_rows: 2, ensemble_std_mean: 0.1 }, rows: 10 });
  sum.add({ counters: { guard_rows: 3, ensemble_std_mean: 0.4 }, rows: 30 });
  sum.add({ counters: { guard_rows: 0, ensemble_std_mean: 0 }, rows: 0 });
  assert.equal(sum.shards, 3);
  const counters = sum.counters();
  assert.equal(counters.guard_rows, 5);
  assert.ok(Math.abs(counters.ensemble_std_mean - (0.1 * 10 + 0.4 * 30) / 40) < 1e-12);
  const empty = new DiagnosticsSum();
  empty.add({ counters: { x_mean: 0.5 }, rows: 0 });
  assert.deepEqual(empty.counters(), { x_mean: 0 });
});
