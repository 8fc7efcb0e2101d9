import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../../core/errors.ts";
import { resolveManifest } from "../../core/manifest/mod.ts";
import { createRegistries } from "../../core/registry.ts";
import { runExperiment } from "../../core/experiment.ts";
import { MetricsWriter, readMetrics, writeFileAtomic } from "../../core/run.ts";
import { fakePlugins, validManifest } from "./_fakes.ts";
import { withTempDir } from "../_experiment.ts";

Deno.test("an experiment writes one folder per run with its resolved manifest and metrics", async () => {
  await withTempDir(async (out) => {
    const registries = createRegistries(fakePlugins);
    const manifest = await resolveManifest(validManifest(), registries);
    const logs: string[] = [];
    const result = await runExperiment(manifest, registries, {
      out,
      resume: false,
      smoke: false,
      log: (m) => logs.push(m),
    });
    assert.equal(result.dir, join(out, "unit"));
    assert.deepEqual(Object.keys(result.runs), ["train", "eval"]);
    const resolved = JSON.parse(
      await Deno.readTextFile(join(out, "unit/eval/manifest.resolved.json")),
    );
    assert.equal(resolved.seed, 9);
    assert.equal(resolved.algorithm.name, "evaluate_only");
    assert.ok(await Deno.stat(join(out, "unit/tokenizer.json")));
    assert.ok(
      logs.some((l) =>
        l.startsWith("data: 2 train / 1 + 1 valid (selection + report) / 2 test pairs")
      ),
      logs.join("\n"),
    );

    // Running again without --resume refuses to touch the existing folder.
    await assert.rejects(
      () =>
        runExperiment(manifest, registries, { out, resume: false, smoke: false, log: () => {} }),
      (error: unknown) =>
        error instanceof UserError && /already exists; pass --resume/.test(error.message),
    );
    // With --resume, completed runs are skipped and the tokenizer is reloaded.
    const again: string[] = [];
    await runExperiment(manifest, registries, {
      out,
      resume: true,
      smoke: false,
      log: (m) => again.push(m),
    });
    assert.ok(again.some((l) => /run train: already complete, skipped/.test(l)));
    assert.ok(again.some((l) => /tokenizer: reloaded/.test(l)));

    // A changed manifest cannot be resumed into the same folder.
    const changed = validManifest();
    (changed.runs as Record<string, unknown>[])[1].seed = 10;
    const m2 = await resolveManifest(changed, registries);
    await assert.rejects(
      () => runExperiment(m2, registries, { out, resume: true, smoke: false, log: () => {} }),
      /cannot resume .*: the manifest changed/,
    );
  });
});

Deno.test("metrics are namespaced JSON lines; non-finite values become null", async () => {
  await withTempDir(async (dir) => {
    const writer = new MetricsWriter(join(dir, "metrics.jsonl"));
    await writer.log({ "eval/reward": 0.5, "bc/loss": NaN }, 3);
    await writer.log({ "eval/reward": 0.75 });
    const records = await readMetrics(join(dir, "metrics.jsonl"));
    assert.equal(records.length, 2);
    assert.equal(records[0].step, 3);
    assert.equal(records[0]["bc/loss"], null);
    assert.equal(records[1]["eval/reward"], 0.75);
    await assert.rejects(() => writer.log({ reward: 1 }), /must be namespaced/);
    await Deno.writeTextFile(join(dir, "bad.jsonl"), '{"a":1}\n{oops\n');
    await assert.rejects(
      () => readMetrics(join(dir, "bad.jsonl")),
      /bad\.jsonl:2: not a JSON line/,
    );
    await Deno.writeTextFile(join(dir, "list.jsonl"), '{"a":1}\n\n[1]\n');
    await assert.rejects(
      () => readMetrics(join(dir, "list.jsonl")),
      /list\.jsonl:3: expected a JSON object per line; restore the file/,
    );
  });
});

Deno.test("atomic writes leave no temporary files behind", async () => {
  await withTempDir(async (dir) => {
    await writeFileAtomic(join(dir, "a.json"), "{}");
    await writeFileAtomic(join(dir, "a.json"), '{"b":1}');
    const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
    assert.deepEqual(names, ["a.json"]);
    assert.equal(await Deno.readTextFile(join(dir, "a.json")), '{"b":1}');
  });
});
