/**
 * The parameter layout of a pre-LN transformer layer, which the fused layer ops of
 * `layers.ts` rely on: the model dimensions ({@link Dims}), the names of an encoder's and a
 * decoder's parameters in the order the ops take them, their shapes, and
 * {@link ParamView}, a layer's parameters by name. How a model lays its layers out among
 * its other weights (embeddings, final norms, heads) stays with the model.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { values } from "./custom_op.ts";
import type { Mat } from "./gemm.ts";

/** The FFN activation. */
export type Activation = "relu" | "gelu";

/** Model dimensions the layers need. */
export interface Dims {
  /** Model width. */
  d: number;
  /** Attention heads. */
  heads: number;
  /** FFN inner width. */
  ffn: number;
  /** FFN activation. */
  activation: Activation;
  /** Layer-norm epsilon. */
  eps: number;
}

/** Parameters of a self-attention sublayer (pre-LN, fused QKV projection). */
const SELF_ATTENTION = ["ln1.g", "ln1.b", "qkv.w", "qkv.b", "out.w", "out.b"] as const;
/** Parameters of a decoder's cross-attention sublayer (query and fused KV projections). */
const CROSS_ATTENTION = [
  "lnc.g",
  "lnc.b",
  "q.w",
  "q.b",
  "kv.w",
  "kv.b",
  "cout.w",
  "cout.b",
] as const;
/** Parameters of a feed-forward sublayer. */
const FEED_FORWARD = ["ln2.g", "ln2.b", "ff1.w", "ff1.b", "ff2.w", "ff2.b"] as const;

/** Parameter names of an encoder layer, in the order the layer op takes them. */
export const ENCODER_PARAMS = [...SELF_ATTENTION, ...FEED_FORWARD] as const;

/** Parameter names of a decoder layer, in the order the layer op takes them. */
export const DECODER_PARAMS = [...SELF_ATTENTION, ...CROSS_ATTENTION, ...FEED_FORWARD] as const;

/** Shapes of a layer's parameters, in the order of {@link ENCODER_PARAMS} or {@link DECODER_PARAMS}. */
export function layerParamShapes(kind: "encoder" | "decoder", dims: Dims): Map<string, number[]> {
  const { d, ffn } = dims;
  const shapes: Record<(typeof DECODER_PARAMS)[number], number[]> = {
    "ln1.g": [d],
    "ln1.b": [d],
    "qkv.w": [d, 3 * d],
    "qkv.b": [3 * d],
    "out.w": [d, d],
    "out.b": [d],
    "lnc.g": [d],
    "lnc.b": [d],
    "q.w": [d, d],
    "q.b": [d],
    "kv.w": [d, 2 * d],
    "kv.b": [2 * d],
    "cout.w": [d, d],
    "cout.b": [d],
    "ln2.g": [d],
    "ln2.b": [d],
    "ff1.w": [d, ffn],
    "ff1.b": [ffn],
    "ff2.w": [ffn, d],
    "ff2.b": [d],
  };
  const names = kind === "encoder" ? ENCODER_PARAMS : DECODER_PARAMS;
  return new Map(names.map((name) => [name, shapes[name]]));
}

/**
 * A layer's parameters by name: the tensors (for matrix products) and, lazily, their
 * buffers (for the loops).
 */
export class ParamView {
  readonly #tensors: ReadonlyMap<string, tf.Tensor>;
  readonly #arrays = new Map<string, Float32Array>();

  /** Wraps named tensors. */
  constructor(tensors: ReadonlyMap<string, tf.Tensor>) {
    this.#tensors = tensors;
  }

  /** The tensor named `name` (or, after it was disposed, its saved values). */
  t(name: string): Mat {
    const t = this.#tensors.get(name);
    if (t === undefined) throw new Error(`unknown parameter ${name}`);
    if (!t.isDisposed) return t;
    return { data: this.a(name), shape: t.shape };
  }

  /** The tensor named `name` itself (for fused biases). */
  tensor(name: string): tf.Tensor {
    const t = this.#tensors.get(name);
    if (t === undefined) throw new Error(`unknown parameter ${name}`);
    return t;
  }

  /** The values of `name`. */
  a(name: string): Float32Array {
    let a = this.#arrays.get(name);
    if (a === undefined) {
      a = values(this.tensor(name));
      this.#arrays.set(name, a);
    }
    return a;
  }
}
