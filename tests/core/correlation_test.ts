/** Correlation statistics: Pearson, Kendall tau-b, within-group Kendall. */
import assert from "node:assert/strict";
import { kendallTauB, pearson, withinGroupKendall } from "../../core/metrics/correlation.ts";
import { Rng } from "../../core/random.ts";

function naiveTauB(x: number[], y: number[]): number {
  let s = 0;
  let tx = 0;
  let ty = 0;
  let n0 = 0;
  for (let i = 0; i < x.length; i++) {
    for (let j = i + 1; j < x.length; j++) {
      n0++;
      const a = Math.sign(x[i] - x[j]);
      const b = Math.sign(y[i] - y[j]);
      s += a * b;
      if (a === 0) tx++;
      if (b === 0) ty++;
    }
  }
  return s / Math.sqrt((n0 - tx) * (n0 - ty));
}

Deno.test("pearson: hand-computed cases", () => {
  assert.equal(pearson([1, 2, 3], [2, 4, 6]), 1);
  assert.equal(pearson([1, 2, 3], [3, 2, 1]), -1);
  // dx = dy-ish: sxy = 4, sxx = syy = 5.
  assert.ok(Math.abs(pearson([1, 2, 3, 4], [1, 3, 2, 4]) - 0.8) < 1e-12);
  assert.ok(Number.isNaN(pearson([1, 1, 1], [1, 2, 3])), "constant side");
  assert.ok(Number.isNaN(pearson([1], [1])));
  assert.throws(() => pearson([1, 2], [1]), RangeError);
});

Deno.test("kendall tau-b: hand-computed cases, ties, and agreement with the O(n^2) definition", () => {
  // 6 pairs, one discordant: (5 - 1) / 6.
  assert.ok(Math.abs(kendallTauB([1, 2, 3, 4], [1, 3, 2, 4]) - 4 / 6) < 1e-12);
  // One tie in x, one in y, four concordant: 4 / sqrt(5 * 5).
  assert.ok(Math.abs(kendallTauB([1, 1, 2, 3], [1, 2, 2, 3]) - 0.8) < 1e-12);
  assert.equal(kendallTauB([1, 2, 3], [3, 2, 1]), -1);
  assert.equal(kendallTauB([1, 2, 3], [10, 20, 30]), 1);
  assert.ok(Number.isNaN(kendallTauB([2, 2, 2], [1, 2, 3])));
  const rng = new Rng(11);
  for (let trial = 0; trial < 20; trial++) {
    const n = 2 + rng.int(60);
    const x = Array.from({ length: n }, () => rng.int(5));
    const y = Array.from({ length: n }, (_, i) => (trial % 2 ? x[i] : 0) + rng.int(4));
    const expected = naiveTauB(x, y);
    const got = kendallTauB(x, y);
    if (Number.isNaN(expected)) assert.ok(Number.isNaN(got));
    else assert.ok(Math.abs(got - expected) < 1e-12, `trial ${trial}: ${got} vs ${expected}`);
  }
});

Deno.test("within-group kendall: per-group tau-b averaged, undefined groups skipped", () => {
  // Group a: perfectly concordant (1); group b: one discordant pair of three (1/3);
  // group c: constant predictions (no tau-b); group d: a single row (no tau-b).
  const x = [1, 2, 3, 1, 3, 2, 5, 5, 9];
  const y = [1, 2, 3, 1, 2, 3, 1, 2, 0];
  const g = ["a", "a", "a", "b", "b", "b", "c", "c", "d"];
  const { mean, groups } = withinGroupKendall(x, y, g);
  assert.equal(groups, 2);
  assert.ok(Math.abs(mean - (1 + 1 / 3) / 2) < 1e-12, `${mean}`);
  // Pooled over all rows the answer differs: the statistic really is per group.
  assert.notEqual(kendallTauB(x, y), mean);
  assert.ok(Number.isNaN(withinGroupKendall([1, 1], [1, 2], [0, 0]).mean));
  assert.throws(() => withinGroupKendall([1, 2], [1, 2], [0]), RangeError);
});
