import assert from "node:assert/strict";
import { createPlugin } from "../../core/experiment.ts";
import { resolvePluginRef } from "../../core/manifest/mod.ts";
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
    0.995, // the repeated 0.99 is raised halfway to the next reward above it (1.0)
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

Deno.test("every schedule increases strictly over the Improve steps and keeps rows", async () => {
  for (const name of ["fixed", "linear", "percentile", "interpolate"]) {
    for (const perSource of [false, true]) {
      if (perSource && name !== "percentile") continue;
      const s = await schedule(name, name === "percentile" ? { perSource } : {});
      const previous = new Map<string, number>();
      for (let i = 1; i <= 8; i++) {
        const tau = s.threshold(args(i, 6));
        const taus = typeof tau === "number" ? new Map([["all", tau]]) : tau;
        for (const [key, value] of taus) {
          const before = previous.get(key) ?? -Infinity;
          assert.ok(value > before, `${name} step ${i} ${key}: ${value} <= ${before}`);
          const values = key === "all" ? rewards : bySource.get(key)!;
          assert.ok(values.some((r) => r > value), `${name} step ${i} ${key}: keeps nothing`);
          previous.set(key, value);
        }
      }
    }
  }
});

Deno.test("ties at the maximum: tau is capped below it, so the strict filter keeps rows", async () => {
  // Saturated rewards: the 50th and 90th percentiles are both 1.0, which kept nothing.
  const saturated = [0.2, 0.5, 1, 1, 1, 1];
  const at = (improve: number) => ({
    grow: 1,
    improve,
    improveSteps: 2,
    rewards: saturated,
    bySource: new Map([["x", saturated]]),
  });
  const s = await schedule("percentile", { percentiles: [50, 90], aboveMean: false });
  // Step 1: capped to the largest distinct reward below 1.0 (0.5): the four 1.0 rows stay.
  assert.equal(s.threshold(at(1)), 0.5);
  // Step 2: must exceed 0.5 and stay below 1.0: the midpoint.
  assert.equal(s.threshold(at(2)), 0.75);
  const decision = s.decide!(at(2));
  assert.equal(decision.tau, 0.75);
  assert.equal(decision.metrics.threshold_capped, 1);
  assert.equal(decision.metrics.threshold_raw, 1);
  assert.match(decision.notes.join("\n"), /capped to 0\.75/);
  // The paper's fixed schedule on rewards that never reach 0.9 keeps the best rows too.
  const fixed = await schedule("fixed", { values: [0.9], aboveMean: false });
  const low = [0.2, 0.5, 0.85, 0.85];
  assert.equal(fixed.threshold({ ...at(1), rewards: low, bySource: new Map([["x", low]]) }), 0.5);
  // Every reward equal: no ranking, tau just below it, every row kept, and said so.
  const flat = [0.7, 0.7, 0.7];
  const linear = await schedule("linear");
  const d = linear.decide!({ ...at(1), rewards: flat, bySource: new Map([["x", flat]]) });
  assert.ok(Math.abs((d.tau as number) - (0.7 - 1e-6)) < 1e-12);
  assert.equal(d.metrics.threshold_capped, 1);
  assert.equal(d.notes.length, 1);
});

Deno.test("repeated or mean-raised values are raised just above the previous tau, with a note", async () => {
  const s = await schedule("fixed", { values: [0.5], aboveMean: false });
  // rewards 0.1 .. 1.0: 0.5, then halfway to the next reward above (0.6) each step.
  assert.equal(s.threshold(args(1)), 0.5);
  assert.ok(Math.abs((s.threshold(args(2)) as number) - 0.55) < 1e-12);
  assert.ok(Math.abs((s.threshold(args(3)) as number) - 0.575) < 1e-12);
  const d = s.decide!(args(2));
  assert.equal(d.metrics.threshold_raised, 1);
  assert.match(d.notes[0], /raised to 0\.55/);
  assert.deepEqual(s.decide!(args(1)).notes, []);
});

Deno.test("per source: a source whose rewards all tie is judged by the global tau", async () => {
  const tied = new Map([
    ["good", [0.8, 0.8, 0.8]],
    ["bad", [0.2, 0.2, 0.2]],
    ["mixed", [0.1, 0.5, 0.9]],
  ]);
  const all = [...tied.values()].flat();
  const at = (improve: number) => ({
    grow: 1,
    improve,
    improveSteps: 2,
    rewards: all,
    bySource: tied,
  });
  // percentile 50 with aboveMean: the global median and mean are both 0.5.
  const p = await schedule("percentile", { percentiles: [50], perSource: true });
  const d = p.decide!(at(1));
  const map = d.tau as Map<string, number>;
  const close = (x: number | undefined, y: number) => assert.ok(Math.abs(x! - y) < 1e-12, `${x}`);
  close(map.get("good"), 0.5); // was 0.8: `0.8 > 0.8` dropped the whole source
  close(map.get("bad"), 0.5); // 0.2 is not above it: dropped
  close(map.get("mixed"), 0.5);
  assert.equal(d.metrics.threshold_tied_sources, 2);
  assert.equal(d.metrics.threshold_tied_sources_kept, 1);
  assert.match(d.notes[0], /2 of 3 sources have all rewards equal.*\(1 kept, 1 dropped\)/);
  // interpolate, gamma 0.5: global 0.5 * 0.9 + 0.5 * 0.5 = 0.7 keeps "good" (0.8).
  const half = (await schedule("interpolate", { gammas: [0.5] })).threshold(at(1));
  assert.ok(Math.abs((half as Map<string, number>).get("good")! - 0.7) < 1e-12);
  // gamma 1: each source keeps its best rows (tau capped to its second-best reward).
  const top = (await schedule("interpolate", { gammas: [1] })).threshold(at(1));
  assert.equal((top as Map<string, number>).get("mixed"), 0.5);
});

Deno.test("decide and threshold agree for every schedule", async () => {
  for (const name of ["fixed", "linear", "percentile", "interpolate"]) {
    const s = await schedule(name);
    for (let i = 1; i <= 3; i++) assert.deepEqual(s.decide!(args(i)).tau, s.threshold(args(i)));
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

Deno.test("percentile over: samples places tau by the samples when the originals saturate the reward", async () => {
  // 7 original pairs at the maximum (chrF of a reference against itself), 3 samples.
  const saturated = [1, 1, 1, 1, 1, 1, 1, 0.2, 0.5, 0.8];
  const input = (improve: number) => ({
    grow: 1,
    improve,
    improveSteps: 2,
    rewards: saturated,
    bySource: new Map([["a", saturated]]),
    sampleRewards: [0.2, 0.5, 0.8],
  });
  const all = await schedule("percentile", { percentiles: [0, 50], aboveMean: false });
  const samples = await schedule("percentile", {
    percentiles: [0, 50],
    aboveMean: false,
    over: "samples",
  });
  // Over all rows the 50th percentile is the maximum, capped to the largest reward below it:
  // only the maxima (the originals) pass the strict filter.
  assert.equal(all.threshold(input(2)), 0.8);
  assert.equal(samples.threshold(input(2)), 0.5);
  assert.equal(samples.threshold(input(1)), 0.2);
  // Without sample rewards (a caller that does not tell rows apart) it falls back to all rows.
  const { sampleRewards: _, ...plain } = input(2);
  assert.equal(samples.threshold(plain), 0.8);
  await assert.rejects(
    () => schedule("percentile", { over: "samples", perSource: true }),
    /over.*must be "all" with perSource/,
  );
});
