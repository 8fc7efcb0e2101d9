/**
 * Improve steps shared between the runs of one experiment (core/step_share.ts): a run whose
 * first Improve steps repeat another run's loads them instead of training, with the same
 * results and metrics; a run that differs (another loss) trains its own.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { readMetrics } from "../../core/run.ts";
import { runTiny, tinyManifest, withTempDir } from "../_experiment.ts";

await (await (await import("../../plugins/backends/cpu.ts")).default.create(
  { fastSegmentSum: true },
  {} as never,
)).init();

function restRun(name: string, improveSteps: number, loss: string) {
  return {
    name,
    algorithm: {
      name: "rest",
      config: {
        growSteps: 1,
        improveSteps,
        grow: { samplesPerSource: 2, sources: 16 },
        improve: { steps: 4, batchSize: 8, evalEvery: 2, evalSize: 6 },
      },
    },
    loss,
    threshold: { name: "percentile", config: { percentiles: [0, 50], aboveMean: false } },
  };
}

/** The metrics records of Improve step 1, without their times. */
function firstStep(records: Record<string, unknown>[]): Record<string, unknown>[] {
  // Each step ends with its summary record, the one carrying `improve/index`.
  const end = records.findIndex((r) => r["improve/index"] === 1);
  return records.slice(0, end + 1)
    .filter((r) => Object.keys(r).some((k) => k.startsWith("improve/")))
    .map(({ time: _, ...rest }) => rest);
}

Deno.test("identical Improve steps are computed once per experiment and reused", async () => {
  await withTempDir(async (out) => {
    const manifest = tinyManifest({
      experiment: "share",
      seed: 4,
      data: { name: "synthetic", config: { pairs: 160 } },
      bc: { steps: 6, batchSize: 8, evalEvery: 3, evalSize: 4 },
      evaluation: { maxLen: 10, validSize: 4, testSize: 4, selectSamples: 2 },
      runs: [restRun("one", 1, "bc"), restRun("two", 2, "bc"), restRun("gold", 1, "gold")],
    });
    const { result, logs } = await runTiny(manifest, out);
    const reused = (run: string) =>
      logs.some((l) => l.startsWith(`${run}: improve 1.1: identical to a step another run took`));
    assert.ok(!reused("one"), "the first run trains its step");
    assert.ok(reused("two"), logs.join("\n"));
    assert.ok(!reused("gold"), "another loss is another step");
    assert.ok(logs.some((l) => l.startsWith("two: improve 1.2: tau")), "step 2 is trained");

    const exp = join(out, "share");
    const one = firstStep(await readMetrics(join(exp, "one", "metrics.jsonl")));
    const two = firstStep(await readMetrics(join(exp, "two", "metrics.jsonl")));
    assert.ok(one.length > 0);
    assert.deepEqual(two, one, "the reused step's metrics are the trained step's");
    // G=1, I=1 ends where G=1, I=2's first step ended: same weights, same final metrics.
    const stepOne = one.at(-1)!;
    assert.equal(typeof stepOne["improve/select_reward"], "number");
    assert.equal(result.runs.one.metrics["train/gradient_steps"], stepOne["improve/steps"]);
  });
});
