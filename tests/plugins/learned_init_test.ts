/**
 * The `learned` reward's `init.from: "backward"`: the QE network built from a backward
 * translation model holds that model's encoder weights in the right places (joint and separate
 * vocabularies), prepare trains the backward model once and reuses it when a run killed before
 * the QE model was saved is resumed, the saved model works with restore() and `path`, and
 * inconsistent sizes are config errors naming the options.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import cpu from "../../plugins/backends/cpu.ts";
import transformer from "../../plugins/models/transformer/mod.ts";
import { initFromBackward } from "../../plugins/rewards/learned/init.ts";
import { type QeArchitecture, QeModel, type QeVocab } from "../../plugins/rewards/learned/model.ts";
import { loadCheckpoint } from "../../core/checkpoint.ts";
import { UserError } from "../../core/errors.ts";
import { Rng } from "../../core/random.ts";
import type { ModelFactory, PolicyState, RewardModel } from "../../core/types.ts";
import { configRejecter, createReward, withTempDir } from "../_experiment.ts";
import {
  pluginDefaults,
  tinyPrepareContext,
  tinySyntheticSplits,
  tinyTranslator,
} from "./_tiny_translator.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

const ARCH: QeArchitecture = {
  dModel: 16,
  heads: 2,
  ffn: 32,
  layers: 2,
  hidden: 8,
  dropout: 0,
  maxTokens: 16,
};

/** A backward transformer of the QE network's encoder size, every weight a distinct random value. */
function randomBackward(
  vocab: QeVocab,
  config: Record<string, unknown> = {},
): PolicyState {
  const factory = transformer.create({
    ...pluginDefaults(transformer),
    dModel: ARCH.dModel,
    heads: ARCH.heads,
    ffn: ARCH.ffn,
    encoderLayers: ARCH.layers,
    decoderLayers: 1,
    ...config,
  } as never, {} as never) as ModelFactory;
  // The backward model reads the target language: its vocabularies are the QE's, swapped.
  const policy = factory.build({
    sourceVocab: vocab.targetVocab,
    targetVocab: vocab.sourceVocab,
    specials: { pad: 0, bos: 1, eos: 2, unk: 3 },
    valueHead: false,
    seed: 3,
  });
  const state = policy.save();
  policy.dispose();
  const rng = new Rng(8);
  for (let i = 0; i < state.data.length; i++) state.data[i] = rng.next() - 0.5;
  return state;
}

function weight(state: PolicyState, name: string): Float32Array {
  const w = state.weights.find((x) => x.name === name);
  assert.ok(w !== undefined, `no weight ${name}`);
  return state.data.slice(w.offset, w.offset + w.shape.reduce((a, b) => a * b, 1));
}

/** The QE network started from `backward`, its state, and a fresh one's for comparison. */
function started(vocab: QeVocab, backward: PolicyState) {
  const fresh = new QeModel(ARCH, vocab, 5);
  const freshState = fresh.save();
  fresh.dispose();
  const model = new QeModel(ARCH, vocab, 5, initFromBackward(freshState, backward));
  const state = model.save();
  model.dispose();
  return { state, freshState };
}

function assertEncoderCopied(state: PolicyState, backward: PolicyState, fresh: PolicyState) {
  for (const w of state.weights) {
    if (!w.name.startsWith("encoder.")) continue;
    assert.deepEqual(weight(state, w.name), weight(backward, w.name), w.name);
  }
  assert.deepEqual(weight(state, "norm.g"), weight(backward, "encoder.norm.g"));
  assert.deepEqual(weight(state, "norm.b"), weight(backward, "encoder.norm.b"));
  // Segment embeddings and the head keep the fresh network's values.
  for (const name of ["segment", "head.w1", "head.b1", "head.w2", "head.b2"]) {
    assert.deepEqual(weight(state, name), weight(fresh, name), name);
  }
}

Deno.test("init: separate vocabularies: source block from the backward decoder's embedding, hypothesis block from its encoder's", () => {
  const vocab: QeVocab = { sourceVocab: 30, targetVocab: 40, joint: false, pad: 0, eos: 2 };
  for (const shareEmbeddings of ["all", "decoder", "none"]) {
    const backward = randomBackward(vocab, { shareEmbeddings });
    // Unequal sizes: the transformer keeps an encoder table and a (tied or not) decoder table.
    assert.ok(backward.weights.some((w) => w.name === "embed.source"));
    const { state, freshState } = started(vocab, backward);
    const d = ARCH.dModel;
    const embed = weight(state, "embed");
    assert.deepEqual(embed.slice(0, 30 * d), weight(backward, "embed.target"), shareEmbeddings);
    assert.deepEqual(embed.slice(30 * d), weight(backward, "embed.source"), shareEmbeddings);
    assertEncoderCopied(state, backward, freshState);
  }
});

Deno.test("init: a joint vocabulary's one table is the backward encoder's embedding", () => {
  const vocab: QeVocab = { sourceVocab: 30, targetVocab: 30, joint: true, pad: 0, eos: 2 };
  const tied = randomBackward(vocab);
  const a = started(vocab, tied);
  assert.deepEqual(weight(a.state, "embed"), weight(tied, "embed"));
  assertEncoderCopied(a.state, tied, a.freshState);
  const untied = randomBackward(vocab, { shareEmbeddings: "none" });
  const b = started(vocab, untied);
  assert.deepEqual(weight(b.state, "embed"), weight(untied, "embed.source"));
  assert.notDeepEqual(weight(b.state, "embed"), weight(untied, "embed.target"));
});

Deno.test("init: a backward model of another size is refused, naming what does not fit", () => {
  const vocab: QeVocab = { sourceVocab: 30, targetVocab: 30, joint: true, pad: 0, eos: 2 };
  const fresh = new QeModel(ARCH, vocab, 5);
  const state = fresh.save();
  fresh.dispose();
  assert.throws(
    () => initFromBackward(state, randomBackward(vocab, { encoderLayers: 3 })),
    /has 3 encoder layers, the QE network 2/,
  );
  assert.throws(
    () => initFromBackward(state, randomBackward(vocab, { ffn: 24 })),
    /its encoder\.0\.ff1\.w has shape \[16,24\], the QE network's encoder\.0\.ff1\.w needs \[16,32\]/,
  );
  const other: QeVocab = { ...vocab, sourceVocab: 31, targetVocab: 31 };
  assert.throws(
    () => initFromBackward(state, randomBackward(other)),
    /its embed has shape \[31,16\]/,
  );
});

Deno.test("init: config errors name the options; from none ignores the backward model's size", async () => {
  const bad = configRejecter("reward", "learned");
  const init = (config: Record<string, unknown>) => ({
    init: { from: "backward", model: { name: "transformer", config } },
  });
  await bad(
    init({ dModel: 128 }),
    /\/config\/init\/model: dModel is 128 but model\.dModel is 64: init\.from "backward" copies/,
  );
  await bad(init({ encoderLayers: 3 }), /encoderLayers is 3 but model\.layers is 2/);
  await bad(init({ activation: "gelu" }), /activation must be "relu"/);
  await bad({ init: { from: "forward" } }, /\/config\/init\/from/);
  await bad({ init: { model: "transformr" } }, /did you mean "transformer"/);
  // Consistent sizes resolve; so does any size when init is off.
  const ok = { model: { dModel: 32, heads: 4, ffn: 64, layers: 1 } };
  await makeReward({
    ...ok,
    init: {
      from: "backward",
      model: { name: "transformer", config: { dModel: 32, heads: 4, ffn: 64, encoderLayers: 1 } },
    },
  });
  await makeReward({ init: { model: { name: "transformer", config: { dModel: 128 } } } });
  // A reference that leaves sizes out gets the transformer's defaults (d = 256), which create()
  // compares.
  await assert.rejects(
    () => makeReward({ init: { from: "backward", model: "transformer" } }),
    (e: unknown) =>
      e instanceof UserError &&
      /learned reward: \/init\/model: dModel is 256 but model\.dModel is 64/.test(e.message),
  );
});

function makeReward(config: Record<string, unknown>, baseDir = "/"): Promise<RewardModel> {
  return createReward("learned", config, baseDir);
}

async function tinySetup() {
  const splits = await tinySyntheticSplits(300, 40);
  const { tokenizer, factory } = await tinyTranslator(splits, {
    vocabSize: 300,
    dModel: 16,
    ffn: 32,
  });
  return { splits: { ...splits, select: splits.valid }, tokenizer, factory };
}

/**
 * QE training of one step at a negligible rate (Adam moves each weight by about 1e-9), so the
 * saved QE encoder still equals the backward model's: this checks prepare's wiring.
 */
const INIT_CONFIG = {
  model: { ...ARCH, layers: 1 },
  training: { steps: 1, batchSize: 32, learningRate: 1e-9, warmupSteps: 0 },
  dataset: { sources: 40, temperatures: [], corruptionsPerSource: 2 },
  heldOut: 0.1,
  report: { sources: 0 },
  init: {
    from: "backward",
    model: {
      name: "transformer",
      config: { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1, dropout: 0 },
    },
    training: {
      steps: 20,
      batchSize: 32,
      warmupSteps: 5,
      evalEvery: 10,
      patience: 0,
      evalSize: 8,
    },
  },
};

Deno.test("learned with init: prepare trains the backward model, starts the QE encoder from it, resumes without retraining it; restore() and path load the result", async () => {
  const setup = await tinySetup();
  await withTempDir(async (dir) => {
    const logs: string[] = [];
    const reward = await makeReward(INIT_CONFIG);
    await reward.prepare!(tinyPrepareContext(dir, setup, { maxLen: 12, log: (m) => logs.push(m) }));
    const text = logs.join("\n");
    assert.match(text, /backward: bc: \d+ training pairs/);
    assert.match(text, /QE encoder and embeddings start from the backward model in .*backward/);

    const { state: qe, meta } = await loadCheckpoint(dir, "qe_model");
    const { state: backward } = await loadCheckpoint(join(dir, "backward"), "policy");
    assert.equal((meta.init as { from: string }).from, "backward");
    const close = (name: string, from: string) => {
      const a = weight(qe, name);
      const b = weight(backward, from);
      assert.equal(a.length, b.length, name);
      const worst = a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
      assert.ok(worst < 1e-6, `${name}: off by ${worst}`);
    };
    for (const w of qe.weights.filter((w) => w.name.startsWith("encoder.0."))) {
      close(w.name, w.name);
    }
    close("norm.g", "encoder.norm.g");
    close("embed", "embed");

    // A run killed after the backward model was saved but before the QE model was (its .json
    // is written last): the resumed prepare loads the backward model and does not retrain it.
    const policyFiles = async () =>
      Object.fromEntries(
        await Promise.all(
          [...Deno.readDirSync(join(dir, "backward"))]
            .filter((e) => e.name.startsWith("policy"))
            .map(async (e) => [e.name, (await Deno.stat(join(dir, "backward", e.name))).mtime]),
        ),
      );
    const before = await policyFiles();
    await Deno.remove(join(dir, "qe_model.json"));
    const resumedLogs: string[] = [];
    const resumed = await makeReward(INIT_CONFIG);
    await resumed.prepare!(
      tinyPrepareContext(dir, setup, { maxLen: 12, log: (m) => resumedLogs.push(m) }),
    );
    const resumedText = resumedLogs.join("\n");
    assert.match(resumedText, /backward: bc: loaded .*backward\/policy\.json/);
    assert.doesNotMatch(resumedText, /backward: bc: \d+ training pairs/);
    assert.deepEqual(await policyFiles(), before, "the backward model's files were not rewritten");

    // The saved QE model holds every weight: restore() and path load it without the backward
    // model, and score exactly like the prepared reward.
    const rows = setup.splits.valid.slice(0, 10).map((e, i) => ({
      source: e.source,
      hypothesis: i % 2 === 0 ? e.reference : e.source,
    }));
    const scores = await resumed.score(rows);
    const restored = await makeReward(INIT_CONFIG);
    await restored.restore!({ dir, tokenizer: setup.tokenizer, smoke: false, log: () => {} });
    assert.deepEqual(await restored.score(rows), scores);
    const viaPath = await makeReward({ ...INIT_CONFIG, path: dir });
    assert.deepEqual(await viaPath.score(rows), scores);
  });
});
