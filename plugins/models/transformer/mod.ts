/**
 * `transformer`: the model plugin of the framework's encoder-decoder transformer: its
 * options (the schema, with the defaults of {@link TRANSFORMER_DEFAULTS}), the check that
 * `heads` divides `dModel`, the smoke-test shape and `create`, whose factory builds a
 * {@link TransformerPolicy}. The model is in `policy.ts`, its incremental decoding with
 * key/value caches in `decode.ts` and the searches (greedy, sampling, beam) in `search.ts`.
 *
 * @module
 */

import { definePlugin } from "../../../core/plugin.ts";
import type { ModelFactory, Policy } from "../../../core/types.ts";
import {
  type BuildOptions,
  TRANSFORMER_DEFAULTS,
  type TransformerConfig,
  TransformerPolicy,
} from "./policy.ts";

export type { TransformerConfig } from "./policy.ts";

/** The smoke-test shape: d 32, 2 heads, FFN 64, one encoder and one decoder layer. */
export function smokeConfig(config: Partial<TransformerConfig>): Partial<TransformerConfig> {
  return { ...config, dModel: 32, heads: 2, ffn: 64, encoderLayers: 1, decoderLayers: 1 };
}

/** The `transformer` model plugin. */
export default definePlugin({
  kind: "model",
  name: "transformer",
  summary: "Pre-LN encoder-decoder transformer with sinusoidal positions, tied embeddings, " +
    "cached incremental decoding (greedy, sampling, beam) and an optional value head.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      dModel: {
        type: "integer",
        minimum: 2,
        default: TRANSFORMER_DEFAULTS.dModel,
        description: "Model width d (embedding and hidden size); a multiple of heads.",
      },
      heads: {
        type: "integer",
        minimum: 1,
        default: TRANSFORMER_DEFAULTS.heads,
        description: "Attention heads per layer; must divide dModel.",
      },
      ffn: {
        type: "integer",
        minimum: 1,
        default: TRANSFORMER_DEFAULTS.ffn,
        description: "Inner width of each feed-forward sublayer.",
      },
      encoderLayers: {
        type: "integer",
        minimum: 0,
        default: TRANSFORMER_DEFAULTS.encoderLayers,
        description: "Number of encoder layers.",
      },
      decoderLayers: {
        type: "integer",
        minimum: 0,
        default: TRANSFORMER_DEFAULTS.decoderLayers,
        description: "Number of decoder layers.",
      },
      dropout: {
        type: "number",
        minimum: 0,
        exclusiveMaximum: 1,
        default: TRANSFORMER_DEFAULTS.dropout,
        description: "Dropout rate on embeddings and sublayer outputs, applied only when training.",
      },
      attentionDropout: {
        type: "number",
        minimum: 0,
        exclusiveMaximum: 1,
        default: TRANSFORMER_DEFAULTS.attentionDropout,
        description: "Dropout rate on attention probabilities, applied only when training.",
      },
      activation: {
        type: "string",
        enum: ["relu", "gelu"],
        default: TRANSFORMER_DEFAULTS.activation,
        description: "Feed-forward activation: relu, or gelu (tanh approximation).",
      },
      labelSmoothing: {
        type: "number",
        minimum: 0,
        exclusiveMaximum: 1,
        default: TRANSFORMER_DEFAULTS.labelSmoothing,
        description: "Label smoothing eps used by nllLoss (core/batch.ts) when the loss does " +
          "not set its own: the target is (1 - eps) one-hot + eps uniform.",
      },
      shareEmbeddings: {
        type: "string",
        enum: ["all", "decoder", "none"],
        default: TRANSFORMER_DEFAULTS.shareEmbeddings,
        description: "Tied embeddings: all (source, target and output projection share one " +
          "table; needs a joint vocabulary, otherwise behaves as decoder), decoder (target " +
          "embedding = output projection), none.",
      },
      maxPositions: {
        type: "integer",
        minimum: 1,
        default: TRANSFORMER_DEFAULTS.maxPositions,
        description: "Rows of the precomputed sinusoidal position table; longer sequences " +
          "extend it (sinusoidal positions have no hard limit).",
      },
      initScale: {
        type: "number",
        exclusiveMinimum: 0,
        default: TRANSFORMER_DEFAULTS.initScale,
        description: "Multiplier on the initial weight scales (Xavier uniform projections, " +
          "N(0, 1/d) embeddings).",
      },
      layerNormEps: {
        type: "number",
        exclusiveMinimum: 0,
        default: TRANSFORMER_DEFAULTS.layerNormEps,
        description: "Epsilon added to the variance in layer norm.",
      },
    },
  },
  check(partial: Partial<TransformerConfig>) {
    // The same rule checkConfig enforces when a policy is built, reported at validation.
    const config = { ...TRANSFORMER_DEFAULTS, ...partial };
    return config.dModel % config.heads === 0 ? [] : [{
      path: "/heads",
      message: `must divide dModel (${config.dModel}) so that every head gets ` +
        `dModel / heads dimensions (got ${config.heads})`,
    }];
  },
  smoke: smokeConfig,
  create(config: Partial<TransformerConfig>): ModelFactory {
    const resolved = { ...TRANSFORMER_DEFAULTS, ...config };
    return {
      build(options: BuildOptions): Policy {
        return new TransformerPolicy(resolved, options);
      },
    };
  },
});
