/**
 * ReST's reward update between Grow steps (core/reward_update.ts, issue 13 item 5): the
 * source slices, a fine-tuning that repairs a deliberately bad learned reward, the derived
 * Grow set that Improve filters in a real run, resume after a SIGKILL during the update, and
 * the error for a reward that cannot adapt.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import cpu from "../../plugins/backends/cpu.ts";
import synthetic from "../../plugins/data/synthetic.ts";
import bpe from "../../plugins/tokenizers/bpe.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import { resolvePluginRef } from "../../core/manifest/mod.ts";
import { createPlugin } from "../../core/experiment.ts";
import { pluginDefaults } from "../../core/plugin.ts";
import { createRegistries } from "../../core/registry.ts";
import { readGrowFile } from "../../core/grow_file.ts";
import { MetricsWriter, readMetrics } from "../../core/run.ts";
import { ManifestError, UserError } from "../../core/errors.ts";
import {
  labelCorrelation,
  labelRows,
  rescoredPath,
  sliceSources,
  updateReward,
} from "../../core/reward_update.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import type {
  EvalSettings,
  GrowRow,
  RewardAdaptContext,
  RewardModel,
  Tokenizer,
} from "../../core/types.ts";
import { ROOT_DIR, runTask, taskArgs } from "../_cli.ts";
import { runTiny, tinyManifest, withTempDir } from "../_experiment.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

const registries = createRegistries(builtinPlugins);

/** A sample row of a Grow set (tokens and log-probs are not read here). */
function row(source: string, hypothesis: string, reference: string, reward = 0.5): GrowRow {
  return { source, hypothesis, reference, reward, tokens: [], logProbs: [], origin: "sample" };
}

Deno.test("sliceSources: seeded, disjoint, by source, and never every source", () => {
  const rows: GrowRow[] = [];
  for (let s = 0; s < 40; s++) {
    for (let k = 0; k < 3; k++) rows.push(row(`s${s}`, `h${k}`, `r${s}`));
    rows.push({ ...row(`s${s}`, `r${s}`, `r${s}`), origin: "reference" });
  }
  const a = sliceSources(rows, 0.25, 0.1, 7);
  assert.equal(a.labelled.size, 10);
  assert.equal(a.check.size, 4);
  for (const s of a.labelled) assert.ok(!a.check.has(s), `${s} in both slices`);
  assert.deepEqual(sliceSources(rows, 0.25, 0.1, 7), a, "same seed, same slices");
  assert.notDeepEqual([...sliceSources(rows, 0.25, 0.1, 8).labelled], [...a.labelled]);
  // Labelled rows are the samples of the labelled sources only, with chrF / 100 as label.
  const labelled = labelRows(rows, a.labelled);
  assert.equal(labelled.length, 30);
  for (const r of labelled) {
    assert.ok(a.labelled.has(r.source));
    assert.equal(r.label, sentenceChrf(r.hypothesis, r.reference!) / 100);
  }
  // With references, the labelled sources' original pairs too (label 1).
  const anchored = labelRows(rows, a.labelled, true);
  assert.equal(anchored.length, 40);
  assert.deepEqual(anchored.filter((r) => r.hypothesis === r.reference).map((r) => r.label), [
    ...Array(10).fill(1),
  ]);
  // Two sources: one labelled, one left for Improve, whatever the fraction.
  const two = sliceSources(rows.filter((r) => r.source === "s0" || r.source === "s1"), 0.9, 0.9, 1);
  assert.equal(two.labelled.size, 1);
  assert.equal(two.check.size, 1);
});

// --- fine-tuning a learned reward ------------------------------------------------------------

async function tinyTokenizer(): Promise<{ tokenizer: Tokenizer; pairs: GrowRow[][] }> {
  const data = await synthetic.create(
    { ...pluginDefaults(synthetic), pairs: 300, validSize: 20 } as never,
    {} as never,
  );
  const splits = await data.load();
  const tokenizer = await bpe.create(
    { ...pluginDefaults(bpe), vocabSize: 300 } as never,
    {} as never,
  );
  tokenizer.train({
    sources: splits.train.map((e) => e.source),
    targets: splits.train.map((e) => e.reference),
  });
  // Per source: the reference, two truncations, another source's reference and the source
  // copied: hypotheses whose chrF spans 0 to 100.
  const train = splits.train;
  const pairs = train.map(({ source, reference }, i) => {
    const words = reference.split(" ");
    return [
      row(source, reference, reference),
      row(source, words.slice(0, Math.ceil(words.length / 2)).join(" "), reference),
      row(source, words.slice(0, 1).join(" "), reference),
      row(source, train[(i + 7) % train.length].reference, reference),
      row(source, source, reference),
    ];
  });
  return { tokenizer, pairs };
}

async function preparedLearned(tokenizer: Tokenizer, dir: string): Promise<RewardModel> {
  const config = {
    model: { dModel: 16, heads: 2, ffn: 32, layers: 1, hidden: 16, maxTokens: 24 },
    training: { steps: 5, batchSize: 16, warmupSteps: 1 },
    dataset: { sources: 40, temperatures: [], corruptionsPerSource: 1 },
    heldOut: 0,
    report: { sources: 0 },
  };
  const ref = await resolvePluginRef(registries, "reward", { name: "learned", config }, "test");
  const reward = await createPlugin(registries, "reward", ref, {
    seed: 1,
    baseDir: "/",
    smoke: false,
    log: () => {},
  });
  const data = await synthetic.create(
    { ...pluginDefaults(synthetic), pairs: 300, validSize: 20 } as never,
    {} as never,
  );
  const splits = await data.load();
  await reward.prepare!({
    dir,
    splits: { ...splits, select: splits.valid },
    tokenizer,
    bcPolicy: () => Promise.reject(new Error("no policy here")),
    evaluation: { maxLen: 16, batchSize: 32 } as EvalSettings,
    seed: 1,
    smoke: false,
    metrics: new MetricsWriter(join(dir, "metrics.jsonl")),
    progress: () => ({ tick() {}, done() {} }),
    log: () => {},
  });
  return reward;
}

function adaptContext(dir: string, overrides: Partial<RewardAdaptContext> = {}) {
  return {
    dir,
    seed: 3,
    epochs: 4,
    learningRate: 0.003,
    batchSize: 16,
    progress: () => ({ tick() {}, done() {} }),
    log: () => {},
    ...overrides,
  };
}

Deno.test("a learned reward made bad on new samples is fine-tuned; its check correlation rises", async () => {
  await withTempDir(async (dir) => {
    const { tokenizer, pairs } = await tinyTokenizer();
    const base = await preparedLearned(tokenizer, join(dir, "base"));
    // Deliberately bad: the base reward fine-tuned towards 1 - chrF on these kinds of rows.
    const inverted = labelRows(pairs.slice(0, 40).flat(), new Set(pairs.map((p) => p[0].source)))
      .map((r) => ({ ...r, label: 1 - r.label }));
    const bad = await base.adapt!(inverted, adaptContext(join(dir, "bad"), { epochs: 6 }));
    const tensors = tf.memory().numTensors;
    const rows = pairs.slice(40, 80).flat();
    const logs: string[] = [];
    const records: Record<string, number>[] = [];
    const ctx = {
      dir,
      metrics: { log: (r: Record<string, number>) => Promise.resolve(void records.push(r)) },
      progress: () => ({ tick() {}, done() {} }),
      log: (m: string) => logs.push(m),
    };
    const settings = {
      fraction: 0.5,
      checkFraction: 0.4,
      epochs: 6,
      learningRate: 0.003,
      batchSize: 16,
      references: false,
    };
    const update = await updateReward(bad.reward, rows, settings, ctx, 1, 11);
    const m = records[0];
    assert.ok(m["grow/reward_update_pearson_before"] < 0, `bad before: ${JSON.stringify(m)}`);
    assert.ok(
      m["grow/reward_update_pearson_after"] > m["grow/reward_update_pearson_before"] + 0.3,
      JSON.stringify(m),
    );
    assert.ok(
      m["grow/reward_update_kendall_after"] > m["grow/reward_update_kendall_before"] + 0.2,
      JSON.stringify(m),
    );
    assert.equal(m["grow/reward_update_rows"], 5 * m["grow/reward_update_sources"]);
    assert.equal(m["grow/reward_update_reloaded"], 0);
    assert.ok(m["grow/reward_update_steps"] > 0 && m["grow/reward_update_seconds"] > 0);
    assert.match(logs[0], /^reward update 1: \d+ labelled rows from \d+ sources, fine-tuned in/);
    // The reward it came from is unchanged; the new version is saved in the run folder.
    const check = labelRows(rows, sliceSources(rows, 0.5, 0.4, 11).check);
    const stillBad = await labelCorrelation(bad.reward, check);
    assert.equal(stillBad.pearson, m["grow/reward_update_pearson_before"]);
    assert.ok((await Deno.stat(join(dir, "reward_update_1", "qe_model.json"))).isFile);
    // The derived set: the labelled sources left out, every row re-scored by the new version.
    const slices = sliceSources(rows, 0.5, 0.4, 11);
    assert.equal(update.rows.length, rows.length - 5 * slices.labelled.size);
    assert.ok(update.rows.every((r) => !slices.labelled.has(r.source)));
    assert.deepEqual(
      update.rows.map((r) => r.reward),
      await update.adaptation.reward.score(update.rows),
    );
    assert.deepEqual(await readGrowFile(rescoredPath(dir, 1)), update.rows);
    // Called again (a resumed run), the version is reloaded and scores identically.
    const again = await updateReward(bad.reward, rows, settings, ctx, 1, 11, true);
    assert.equal(again.adaptation.reloaded, true);
    assert.equal(records.length, 1, "quiet: nothing logged twice");
    assert.deepEqual(
      await again.adaptation.reward.score(check),
      await update.adaptation.reward.score(check),
    );
    const expected = await update.adaptation.reward.score(check);
    update.adaptation.dispose();
    again.adaptation.dispose();
    assert.equal(tf.memory().numTensors, tensors, "no tensors leak");
    // The version is saved with its tokenizer: `path` loads it outside the run (deno task score).
    const ref = await resolvePluginRef(registries, "reward", {
      name: "learned",
      config: { path: join(dir, "reward_update_1") },
    }, "test");
    const loaded = await createPlugin(registries, "reward", ref, {
      seed: 1,
      baseDir: "/",
      smoke: false,
      log: () => {},
    });
    assert.deepEqual(await loaded.score(check), expected);
    bad.dispose();
  }, "reward_update_");
});

// --- in a run --------------------------------------------------------------------------------

/** A tiny ReST run with the learned reward and a reward update after each Grow step. */
function updateManifest(fraction = 0.3, epochs = 3): Record<string, unknown> {
  return tinyManifest({
    experiment: "update",
    reward: {
      name: "learned",
      config: {
        model: { dModel: 16, heads: 2, ffn: 32, layers: 1, hidden: 16, maxTokens: 24 },
        training: { steps: 20, batchSize: 16, warmupSteps: 2 },
        dataset: { sources: 60, temperatures: [1], corruptionsPerSource: 1 },
        heldOut: 0,
        report: { sources: 0 },
      },
    },
    runs: [{
      name: "rest",
      algorithm: {
        name: "rest",
        config: {
          growSteps: 2,
          improveSteps: 1,
          grow: { sources: 30, samplesPerSource: 3 },
          improve: { steps: 2, evalSize: 4 },
          rewardUpdate: { fraction, checkFraction: 0.2, epochs, learningRate: 0.001 },
        },
      },
      loss: "bc",
      threshold: { name: "fixed", config: { values: [0.5], aboveMean: false } },
    }],
  });
}

Deno.test("in a run, Improve filters the re-scored set without the labelled sources", async () => {
  await withTempDir(async (out) => {
    const { logs } = await runTiny(updateManifest(), out);
    const dir = join(out, "update", "rest");
    const metrics = await readMetrics(join(dir, "metrics.jsonl"));
    for (const g of [1, 2]) {
      const raw = await readGrowFile(join(dir, `grow_${g}.jsonl`));
      const derived = await readGrowFile(rescoredPath(dir, g));
      const update = metrics.find((m) => m.step === g && "grow/reward_update_rows" in m)!;
      assert.ok(update !== undefined, `grow ${g} logged its update`);
      const improve = metrics.find((m) => m["improve/grow"] === g && "improve/rows_kept" in m)!;
      // tau is fixed at 0.5: the kept rows are the derived set's rows above it.
      assert.equal(improve["improve/rows_kept"], derived.filter((r) => r.reward > 0.5).length);
      assert.equal(update["grow/reward_update_improve_rows"], derived.length);
      assert.ok(derived.length < raw.length, "the labelled sources are left out");
      const left = new Set(
        raw.map((r) => r.source).filter((s) => !derived.some((d) => d.source === s)),
      );
      assert.equal(left.size, update["grow/reward_update_sources"]);
      // Their samples and (references: true, the default) their original pairs are labelled.
      assert.equal(raw.filter((r) => left.has(r.source)).length, update["grow/reward_update_rows"]);
      assert.ok(raw.some((r) => left.has(r.source) && r.origin === "reference"));
      // Same rows otherwise, with the new version's rewards.
      const rest = raw.filter((r) => !left.has(r.source));
      assert.deepEqual(
        derived.map((r) => ({ ...r, reward: 0 })),
        rest.map((r) => ({ ...r, reward: 0 })),
      );
      assert.notDeepEqual(derived.map((r) => r.reward), rest.map((r) => r.reward));
      assert.ok((await Deno.stat(join(dir, `reward_update_${g}`, "qe_model.json"))).isFile);
    }
    assert.ok(
      logs.some((l) => /rest: reward update 2: \d+ labelled rows/.test(l)),
      logs.join("\n"),
    );
    // The experiment's shared reward model was not overwritten.
    const shared = join(out, "update", "shared", "rewards");
    for (const entry of Deno.readDirSync(shared)) {
      const meta = JSON.parse(Deno.readTextFileSync(join(shared, entry.name, "qe_model.json")));
      assert.equal(JSON.stringify(meta).includes('"adapted"'), false);
    }
  }, "reward_update_run_");
});

Deno.test("a reward without adapt and rewardUpdate on is refused, naming the reward", async () => {
  await withTempDir(async (out) => {
    const manifest = updateManifest();
    manifest.reward = "chrf";
    await assert.rejects(
      () => runTiny(manifest, out),
      (e: unknown) =>
        e instanceof UserError &&
        /rewardUpdate\.fraction is 0\.3, but reward "chrf" cannot/.test(e.message),
    );
    // accumulate cannot go with it: a manifest error on the option.
    const accumulate = updateManifest();
    const run = (accumulate.runs as { algorithm: { config: Record<string, unknown> } }[])[0];
    run.algorithm.config.accumulate = true;
    await assert.rejects(
      () => runTiny(accumulate, out),
      (e: unknown) =>
        e instanceof ManifestError &&
        /rewardUpdate\/fraction: cannot be used with accumulate/.test(e.message),
    );
  });
});

/** Starts `exp`, kills it with SIGKILL once stderr matches `when`; returns whether it was killed. */
async function killWhen(args: string[], when: RegExp): Promise<boolean> {
  const base = await taskArgs("exp");
  const child = new Deno.Command(Deno.execPath(), {
    args: [...base.map((a) => /^cli\/.*\.ts$/.test(a) ? `${ROOT_DIR}/${a}` : a), ...args],
    cwd: ROOT_DIR,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let seen = "";
  let killed = false;
  for await (const chunk of child.stderr) {
    seen += new TextDecoder().decode(chunk);
    if (!killed && when.test(seen)) {
      child.kill("SIGKILL");
      killed = true;
    }
  }
  return killed && (await child.status).signal === "SIGKILL";
}

Deno.test("a run killed during the reward update resumes to the uninterrupted run's files", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "update.json");
    // Enough epochs (about 40 steps) that the fine-tuning still runs when the kill lands.
    await Deno.writeTextFile(file, JSON.stringify(updateManifest(0.5, 20)));
    const reference = await runTask("exp", [file, "--out", join(dir, "ref")]);
    assert.equal(reference.code, 0, reference.stderr);
    const out = join(dir, "killed");
    assert.ok(await killWhen([file, "--out", out], /rest: fine-tuning the reward: /), "killed");
    const run = join(out, "update", "rest");
    assert.equal(
      await Deno.stat(join(run, "reward_update_1", "qe_model.json")).then(() => true, () => false),
      false,
      "the kill landed before the new reward version was saved",
    );
    const resumed = await runTask("exp", [file, "--out", out, "--resume"]);
    assert.equal(resumed.code, 0, resumed.stderr);
    const ref = join(dir, "ref", "update", "rest");
    for (const name of ["grow_1.rescored.jsonl", "grow_2.rescored.jsonl", "grow_2.jsonl"]) {
      assert.equal(
        await Deno.readTextFile(join(run, name)),
        await Deno.readTextFile(join(ref, name)),
        name,
      );
    }
    const stable = async (d: string) =>
      (await readMetrics(join(d, "metrics.jsonl"))).map((m) =>
        Object.fromEntries(
          Object.entries(m).filter(([k]) => !/(^time$|seconds|tokens_per_s|^sys\/)/.test(k)),
        )
      );
    assert.deepEqual(await stable(run), await stable(ref));
  }, "reward_update_kill_");
});
