import assert from "node:assert/strict";
import { createPlugin } from "../../core/experiment.ts";
import { resolvePluginRef } from "../../core/manifest.ts";
import { createRegistries } from "../../core/registry.ts";
import type { ThresholdSchedule } from "../../core/types.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import { percentile } from "../../plugins/thresholds/_common.ts";

const registries = createRegistries(builtinPlugins);
const deps = { seed: 1, baseDir: Deno.cwd(), smoke: false, log: () => {} };

async function schedule(
  name: string,
  config: Record<string, unknown> = {},
): Promise<ThresholdSchedule> {
  const ref = await resolvePluginRef(registries, "threshold", { name, config }, "test");
  return await createPlugin(registries, "threshold", ref, deps);
}

const rewards = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
const bySource = new Map([["a", [0.1, 0.3, 0.5]], ["b", [0.6, 0.9]]]);
const args = (improve: number, improveSteps = 4) => ({
  grow: 1,
  improve,
  improveSteps,
  rewards,
  bySource,
});

Deno.test("percentile interpolates linearly like numpy", () => {
  assert.equal(percentile([1, 2, 3, 4], 50), 2.5);
  assert.equal(percentile([5], 90), 5);
  assert.ok(Math.abs(percentile(rewards, 90) - 0.91) < 1e-12);
  assert.throws(() => percentile([], 50), /empty/);
});

Deno.test("fixed: the paper's schedule, raised to the Grow mean, last value repeating", async () => {
  const plain = await schedule("fixed", { aboveMean: false });
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((i) => plain.threshold(args(i))), [
    0,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    0.99,
  ]);
  const lifted = await schedule("fixed");
  assert.equal(lifted.threshold(args(1)), 0.55); // mean of rewards > 0
  assert.equal(lifted.threshold(args(2)), 0.7);
});

Deno.test("linear: start to end over the Improve steps", async () => {
  const s = await schedule("linear", { start: 0.6, end: 0.9, aboveMean: false });
  const taus = [1, 2, 3, 4].map((i) => s.threshold(args(i, 4)) as number);
  assert.deepEqual(taus.map((t) => Number(t.toFixed(10))), [0.6, 0.7, 0.8, 0.9]);
  assert.equal(s.threshold(args(1, 1)), 0.6);
});

Deno.test("percentile: global or per source", async () => {
  const global = await schedule("percentile", { percentiles: [50, 90], aboveMean: false });
  assert.ok(Math.abs((global.threshold(args(1)) as number) - 0.55) < 1e-12);
  assert.ok(Math.abs((global.threshold(args(2)) as number) - 0.91) < 1e-12);
  const perSource = await schedule("percentile", {
    percentiles: [50],
    perSource: true,
    aboveMean: false,
  });
  const map = perSource.threshold(args(1)) as Map<string, number>;
  assert.equal(map.get("a"), 0.3);
  assert.ok(Math.abs(map.get("b")! - 0.75) < 1e-12);
});

Deno.test("interpolate: gamma*max + (1-gamma)*mean per source", async () => {
  const s = await schedule("interpolate", { gammas: [0, 0.5] });
  const first = s.threshold(args(1)) as Map<string, number>;
  assert.ok(Math.abs(first.get("a")! - 0.3) < 1e-12);
  assert.ok(Math.abs(first.get("b")! - 0.75) < 1e-12);
  const second = s.threshold(args(2)) as Map<string, number>;
  assert.ok(Math.abs(second.get("a")! - 0.4) < 1e-12);
});

Deno.test("every schedule increases over the Improve steps", async () => {
  for (const name of ["fixed", "linear", "percentile", "interpolate"]) {
    const s = await schedule(name);
    let previous = -Infinity;
    for (let i = 1; i <= 6; i++) {
      const tau = s.threshold(args(i, 6));
      const value = typeof tau === "number" ? tau : tau.get("a")!;
      assert.ok(value >= previous, `${name} step ${i}: ${value} < ${previous}`);
      previous = value;
    }
  }
});

Deno.test("decreasing schedules are rejected with their path", async () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["fixed", { values: [0.5, 0.4] }, /\/config\/values\/1: must be >= the previous value 0\.5/],
    ["linear", { start: 0.9, end: 0.5 }, /\/config\/end: must be >= start \(0\.9\)/],
    [
      "percentile",
      { percentiles: [90, 50] },
      /\/config\/percentiles\/1: must be >= the previous value 90/,
    ],
    [
      "interpolate",
      { gammas: [0.5, 0.1] },
      /\/config\/gammas\/1: must be >= the previous value 0\.5/,
    ],
    ["fixed", { values: [1.5] }, /\/config\/values\/0: must be <= 1/],
  ];
  for (const [name, config, pattern] of cases) {
    await assert.rejects(
      () => resolvePluginRef(registries, "threshold", { name, config }, "test"),
      pattern,
    );
  }
});
