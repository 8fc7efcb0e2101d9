/**
 * `restore()`: a reward that prepares something is rebuilt by a queue worker from the files
 * its `prepare()` saved, never trained again. A restored reward scores exactly like the
 * prepared one (learned inside weighted, learned inside guarded, an ensemble's calibration,
 * dual_xent's two models);
 * a missing file is an error naming the reward and the file; a wrapped reward that prepares
 * something but cannot restore is refused by name.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import cpu from "../../plugins/backends/cpu.ts";
import { UserError } from "../../core/errors.ts";
import { restoreWrapped } from "../../plugins/rewards/_wrapped.ts";
import type { RewardModel, RewardRestoreContext } from "../../core/types.ts";
import { createReward, withTempDir } from "../_experiment.ts";
import { tinyPrepareContext, tinySyntheticSplits, tinyTranslator } from "./_tiny_translator.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

/** A learned reward small enough to train in a second or two. */
const TINY_LEARNED = {
  model: { dModel: 16, heads: 2, ffn: 32, layers: 1, dropout: 0 },
  training: { steps: 8, batchSize: 32, warmupSteps: 2 },
  dataset: { sources: 30, temperatures: [], corruptionsPerSource: 2 },
  heldOut: 0,
  report: { sources: 0 },
};

async function setup() {
  const splits = await tinySyntheticSplits(200, 40);
  const { tokenizer, factory } = await tinyTranslator(splits, {
    vocabSize: 300,
    dModel: 16,
    ffn: 32,
  });
  return { splits: { ...splits, select: splits.valid }, tokenizer, factory };
}

const reward = createReward;

/** Prepares `name` in a folder, restores a fresh instance from it, and compares scores. */
async function preparedThenRestored(name: string, config: Record<string, unknown>) {
  const s = await setup();
  await withTempDir(async (dir) => {
    const prepared = await reward(name, config);
    await prepared.prepare!(tinyPrepareContext(dir, s, { maxLen: 12 }));
    const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    const restored = await reward(name, config);
    const logs: string[] = [];
    const ctx: RewardRestoreContext = {
      dir,
      tokenizer: s.tokenizer,
      smoke: false,
      log: (m) => logs.push(m),
    };
    await restored.restore!(ctx);
    // Nothing was trained or written: the folder is as prepare left it.
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), files);
    const rows = s.splits.valid.slice(0, 12).map((e, i) => ({
      ...e,
      hypothesis: i % 2 === 0 ? e.reference : e.source,
    }));
    assert.deepEqual(await restored.score(rows), await prepared.score(rows));
    assert.deepEqual(restored.diagnostics?.(), prepared.diagnostics?.());
  });
}

Deno.test("restore: learned inside weighted scores exactly like the prepared one", async () => {
  await preparedThenRestored("weighted", {
    components: [{ reward: { name: "learned", config: TINY_LEARNED } }, { reward: "chrf" }],
  });
});

Deno.test("restore: guarded around learned reads its rules and restores the inner model", async () => {
  await preparedThenRestored("guarded", { reward: { name: "learned", config: TINY_LEARNED } });
});

Deno.test("restore: an ensemble's quantile calibration is read back", async () => {
  await preparedThenRestored("ensemble", { reward: "chrf", members: 2, calibrate: "quantile" });
});

Deno.test("restore: dual_xent loads both translation models and its calibration", async () => {
  await preparedThenRestored("dual_xent", {
    model: {
      name: "transformer",
      config: { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1, dropout: 0 },
    },
    training: { steps: 4, batchSize: 32, warmupSteps: 1, evalEvery: 0, evalSize: 8 },
    calibration: { sources: 10 },
    report: { sources: 0, testSources: 0 },
  });
});

Deno.test("restore: a missing model is an error naming the reward and the file; nothing is trained", async () => {
  const s = await setup();
  await withTempDir(async (dir) => {
    const learned = await reward("learned", TINY_LEARNED);
    const ctx = { dir, tokenizer: s.tokenizer, smoke: false, log: () => {} };
    await assert.rejects(
      () => learned.restore!(ctx),
      (e: Error) =>
        e instanceof UserError && e.message.includes("learned reward") &&
        e.message.includes(join(dir, "qe_model.json")) && e.message.includes("never trains"),
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    const guarded = await reward("guarded", { reward: "chrf" });
    await assert.rejects(
      () => guarded.restore!(ctx),
      (e: Error) => e instanceof UserError && e.message.includes(join(dir, "guards.json")),
    );
  });
});

Deno.test("restore: a wrapped reward that prepares but cannot restore is refused by name", async () => {
  const own: RewardModel = {
    needsReference: false,
    score: (rows) => Promise.resolve(rows.map(() => 0.5)),
    prepare: () => Promise.resolve(),
  };
  const ctx = { dir: "/nonexistent", tokenizer: {} as never, smoke: false, log: () => {} };
  await assert.rejects(
    () => restoreWrapped(own, ctx, "component_0", "my_reward"),
    /reward "my_reward" prepares a model of its own but has no restore\(\)/,
  );
  // A reward that prepares nothing needs nothing restored.
  await restoreWrapped({ ...own, prepare: undefined }, ctx, "component_0", "my_reward");
});
