/**
 * Test scaffolding for plugins that train translation models of their own (the `learned` and
 * `dual_xent` rewards): a plugin's default config, and a BPE tokenizer trained on some splits
 * with a tiny transformer factory to go with it.
 */

import bpe from "../../plugins/tokenizers/bpe.ts";
import transformer from "../../plugins/models/transformer/mod.ts";
import type { PluginDefinition } from "../../core/plugin.ts";
import type { ModelFactory, Splits, Tokenizer } from "../../core/types.ts";

/** A plugin's config with every field at its schema default (a new object on every call). */
export function pluginDefaults(plugin: PluginDefinition): Record<string, unknown> {
  const props = plugin.configSchema.properties as Record<string, { default: unknown }>;
  return Object.fromEntries(Object.entries(props).map(([k, v]) => [k, structuredClone(v.default)]));
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
