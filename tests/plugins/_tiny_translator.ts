/**
 * Test scaffolding for tests that build tiny translation models: the core loop tests' tiny
 * transformer factory, and for plugins that train models of their own (the `learned` and
 * `dual_xent` rewards) a plugin's default config and a BPE tokenizer trained on some splits with
 * a tiny transformer factory to go with it.
 */

import bpe from "../../plugins/tokenizers/bpe.ts";
import synthetic from "../../plugins/data/synthetic.ts";
import transformer from "../../plugins/models/transformer/mod.ts";
import type { TransformerPolicy } from "../../plugins/models/transformer/policy.ts";
import { join } from "node:path";
import { Rng } from "../../core/random.ts";
import { MetricsWriter } from "../../core/run.ts";
import { EVAL_SCHEMA } from "../../core/sections.ts";
import { pluginDefaults } from "../../core/plugin.ts";
import type {
  EvalSettings,
  ModelFactory,
  RewardPrepareContext,
  RunSplits,
  SpecialIds,
  Splits,
  Tokenizer,
} from "../../core/types.ts";

/** A plugin's config with every field at its schema default (core's, re-exported for the tests). */
export { pluginDefaults };

/**
 * The tiny transformer factory of the core loop tests (BC, ReST): 16 wide, 2 heads, FFN 32, one
 * encoder and one decoder layer, positions up to 32, the plugin's defaults for the rest.
 */
export function tinyTransformerFactory(): ModelFactory {
  return transformer.create({
    dModel: 16,
    heads: 2,
    ffn: 32,
    encoderLayers: 1,
    decoderLayers: 1,
    maxPositions: 32,
  }, {} as never) as ModelFactory;
}

/** The synthetic task with `pairs` pairs, `validSize` of them for validation, else its defaults. */
export async function tinySyntheticSplits(pairs: number, validSize: number): Promise<Splits> {
  const data = await synthetic.create(
    { ...pluginDefaults(synthetic), pairs, validSize } as never,
    {} as never,
  );
  return await data.load();
}

/** Sizes of {@link tinyTranslator}. */
export interface TinyTranslatorOptions {
  /** BPE vocabulary size. */
  vocabSize: number;
  /** Transformer width (2 heads, one encoder and one decoder layer, no dropout). */
  dModel: number;
  /** Feed-forward width. */
  ffn: number;
  /** More BPE options (e.g. `joint: false`). */
  tokenizer?: Record<string, unknown>;
}

/** A BPE tokenizer trained on `splits.train` and a tiny transformer factory. */
export async function tinyTranslator(
  splits: Splits,
  options: TinyTranslatorOptions,
): Promise<{ tokenizer: Tokenizer; factory: ModelFactory }> {
  const tokenizer = await bpe.create(
    { ...pluginDefaults(bpe), vocabSize: options.vocabSize, ...options.tokenizer } as never,
    {} as never,
  );
  tokenizer.train({
    sources: splits.train.map((e) => e.source),
    targets: splits.train.map((e) => e.reference),
  });
  const factory = await transformer.create({
    ...pluginDefaults(transformer),
    dModel: options.dModel,
    heads: 2,
    ffn: options.ffn,
    encoderLayers: 1,
    decoderLayers: 1,
    dropout: 0,
  } as never, {} as never);
  return { tokenizer, factory };
}

/**
 * The backend comparisons' case: a transformer 16 wide with 2+2 layers over a 29-token vocabulary
 * (seed 7), three pairs of different lengths (so batches pad), and `ids(n)`, which draws more
 * random token ids from the stream the pairs came from.
 */
export function tinyTransformerCase(activation: "relu" | "gelu", dropout: number) {
  const factory = transformer.create({
    dModel: 16,
    heads: 2,
    ffn: 24,
    encoderLayers: 2,
    decoderLayers: 2,
    dropout,
    attentionDropout: dropout,
    activation,
    shareEmbeddings: "all",
  }, {} as never) as ModelFactory;
  const specials: SpecialIds = { pad: 0, bos: 1, eos: 2, unk: 3 };
  const policy = factory.build({
    sourceVocab: 29,
    targetVocab: 29,
    specials,
    valueHead: false,
    seed: 7,
  }) as TransformerPolicy;
  const rng = new Rng(3);
  const ids = (n: number) => Array.from({ length: n }, () => 4 + rng.int(25));
  const pairs = [
    { source: ids(5), target: ids(4) },
    { source: ids(2), target: ids(6) },
    { source: ids(7), target: ids(1) },
  ];
  return { policy, specials, pairs, ids };
}

/** What {@link tinyPrepareContext} varies. */
export interface TinyPrepareOptions {
  /** `evaluation.maxLen` (batch size 32, the rest at the evaluation schema's defaults). */
  maxLen: number;
  /** Where the reward's log lines go (default: dropped). */
  log?: (message: string) => void;
  /** The seed of each BC policy `bcPolicy()` builds (default: always 5). */
  bcSeed?: () => number;
}

/**
 * The {@link RewardPrepareContext} the reward tests give `prepare`: `dir`, the splits and
 * tokenizer as given, BC policies freshly built by `factory`, seed 1, metrics in
 * `<dir>/metrics.jsonl` and a silent progress display.
 */
export function tinyPrepareContext(
  dir: string,
  setup: { splits: RunSplits; tokenizer: Tokenizer; factory: ModelFactory },
  options: TinyPrepareOptions,
): RewardPrepareContext {
  const { splits, tokenizer, factory } = setup;
  return {
    dir,
    splits,
    tokenizer,
    bcPolicy: () =>
      Promise.resolve(factory.build({
        sourceVocab: tokenizer.vocabSize("source"),
        targetVocab: tokenizer.vocabSize("target"),
        specials: tokenizer.specials,
        valueHead: false,
        seed: options.bcSeed?.() ?? 5,
      })),
    evaluation: {
      ...pluginDefaults({ configSchema: EVAL_SCHEMA } as never),
      maxLen: options.maxLen,
      batchSize: 32,
    } as EvalSettings,
    seed: 1,
    smoke: false,
    metrics: new MetricsWriter(join(dir, "metrics.jsonl")),
    progress: () => ({ tick() {}, done() {} }),
    log: options.log ?? (() => {}),
  };
}
