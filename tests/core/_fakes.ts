/**
 * Small plugins used by core tests, so they do not depend on the built-ins.
 *
 * @module
 */

import { definePlugin, PLUGIN_REF_KEYWORD, type PluginDefinition } from "../../core/plugin.ts";

/** A data plugin with one numeric option. */
export const fakeData = definePlugin({
  kind: "data",
  name: "fake_data",
  summary: "Three pairs.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      pairs: { type: "integer", minimum: 1, default: 3, description: "Number of pairs." },
    },
  },
  smoke: (config: { pairs: number }) => ({ ...config, pairs: 1 }),
  create(config: { pairs: number }) {
    const pairs = Array.from({ length: config.pairs }, (_, i) => ({
      source: `s${i}`,
      reference: `r${i}`,
    }));
    return { load: () => Promise.resolve({ train: pairs, valid: pairs, test: pairs }) };
  },
});

/** A loss plugin with a `clip` that must be > 0. */
export const fakeLoss = definePlugin({
  kind: "loss",
  name: "fake_loss",
  summary: "Does nothing.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      clip: { type: "number", exclusiveMinimum: 0, default: 0.2, description: "Clip range." },
    },
  },
  create: () => ({
    variables: [],
    prepare() {},
    compute(): never {
      throw new Error("fake_loss computes nothing");
    },
    afterStep() {},
    dispose() {},
  }),
});

/** A reward plugin combining others (nested references). */
export const fakeCombo = definePlugin({
  kind: "reward",
  name: "combo",
  summary: "Nested rewards.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      parts: {
        type: "array",
        default: [],
        description: "Parts.",
        items: { [PLUGIN_REF_KEYWORD]: "reward", type: ["string", "object"] },
      },
    },
  },
  create: () => ({ needsReference: false, score: (rows) => Promise.resolve(rows.map(() => 0.5)) }),
});

/** A constant reward. */
export const fakeReward = definePlugin({
  kind: "reward",
  name: "constant",
  summary: "Always `value`.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      value: { type: "number", minimum: 0, maximum: 1, default: 0.5, description: "The value." },
    },
  },
  create: (config: { value: number }) => ({
    needsReference: false,
    score: (rows) => Promise.resolve(rows.map(() => config.value)),
  }),
});

/** An algorithm that requires a loss and accepts a threshold. */
export const fakeTrainer = definePlugin({
  kind: "algorithm",
  name: "trainer",
  summary: "Needs a loss.",
  uses: { loss: "required", threshold: "optional", reward: "optional" },
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      steps: { type: "integer", minimum: 0, default: 10, description: "Steps." },
    },
  },
  smoke: (config: { steps: number }) => ({ ...config, steps: 1 }),
  create: () => ({ run: () => Promise.resolve({ metrics: {} }) }),
});

/** An algorithm that uses nothing but the reward. */
export const fakeEval = definePlugin({
  kind: "algorithm",
  name: "evaluate_only",
  summary: "Uses no loss.",
  uses: { reward: "optional" },
  configSchema: { type: "object", additionalProperties: false, properties: {} },
  create: () => ({ run: () => Promise.resolve({ metrics: { "eval/x": 1 } }) }),
});

/** A tokenizer plugin (untrained stub is fine for manifest tests). */
export const fakeTokenizer = definePlugin({
  kind: "tokenizer",
  name: "chars",
  summary: "One token per character.",
  configSchema: { type: "object", additionalProperties: false, properties: {} },
  create() {
    const vocab = new Map<string, number>();
    let trained = false;
    const specials = { pad: 0, bos: 1, eos: 2, unk: 3 };
    return {
      specials,
      get trained() {
        return trained;
      },
      train(corpus: { sources: readonly string[]; targets: readonly string[] }) {
        for (const text of [...corpus.sources, ...corpus.targets]) {
          for (const ch of text) if (!vocab.has(ch)) vocab.set(ch, vocab.size + 4);
        }
        trained = true;
      },
      vocabSize: () => vocab.size + 4,
      encode: (text: string) => [...text].map((ch) => vocab.get(ch) ?? specials.unk),
      decode: (ids: readonly number[]) => {
        const inverse = new Map([...vocab].map(([k, v]) => [v, k]));
        return ids.map((id) => inverse.get(id) ?? "").join("");
      },
      save: () => ({ vocab: [...vocab] }),
      load(state: unknown) {
        vocab.clear();
        for (const [k, v] of (state as { vocab: [string, number][] }).vocab) vocab.set(k, v);
        trained = true;
      },
    };
  },
});

/** A backend that changes nothing. */
export const fakeBackend = definePlugin({
  kind: "backend",
  name: "none",
  summary: "No tfjs.",
  configSchema: { type: "object", additionalProperties: false, properties: {} },
  create: () => ({ init: () => Promise.resolve({ name: "none", tfBackend: "none", threads: 1 }) }),
});

/** All fakes. */
export const fakePlugins: PluginDefinition[] = [
  fakeData,
  fakeLoss,
  fakeCombo,
  fakeReward,
  fakeTrainer,
  fakeEval,
  fakeTokenizer,
  fakeBackend,
] as PluginDefinition[];

/** A valid manifest over the fakes. */
export function validManifest(): Record<string, unknown> {
  return {
    experiment: "unit",
    seed: 3,
    backend: "none",
    data: { name: "fake_data", config: { pairs: 2 } },
    tokenizer: "chars",
    reward: "constant",
    runs: [
      { name: "train", algorithm: "trainer", loss: { name: "fake_loss", config: { clip: 0.1 } } },
      { name: "eval", algorithm: "evaluate_only", seed: 9 },
    ],
  };
}
