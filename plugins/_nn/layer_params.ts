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

/** Parameter names of an encoder layer, in the order the layer op takes them. */
export const ENCODER_PARAMS = [
  "ln1.g",
  "ln1.b",
  "qkv.w",
  "qkv.b",
  "out.w",
  "out.b",
  "ln2.g",
  "ln2.b",
  "ff1.w",
  "ff1.b",
  "ff2.w",
  "ff2.b",
] as const;

/** Parameter names of a decoder layer, in the order the layer op takes them. */
export const DECODER_PARAMS = [
  "ln1.g",
  "ln1.b",
  "qkv.w",
  "qkv.b",
  "out.w",
  "out.b",
  "lnc.g",
  "lnc.b",
  "q.w",
  "q.b",
  "kv.w",
  "kv.b",
  "cout.w",
  "cout.b",
  "ln2.g",
  "ln2.b",
  "ff1.w",
  "ff1.b",
  "ff2.w",
  "ff2.b",
] as const;

/** Shapes of a layer's parameters. */
export function layerParamShapes(kind: "encoder" | "decoder", dims: Dims): Map<string, number[]> {
  const { d, ffn } = dims;
  const shapes = new Map<string, number[]>([
    ["ln1.g", [d]],
    ["ln1.b", [d]],
    ["qkv.w", [d, 3 * d]],
    ["qkv.b", [3 * d]],
    ["out.w", [d, d]],
    ["out.b", [d]],
  ]);
  if (kind === "decoder") {
    shapes.set("lnc.g", [d]);
    shapes.set("lnc.b", [d]);
    shapes.set("q.w", [d, d]);
    shapes.set("q.b", [d]);
    shapes.set("kv.w", [d, 2 * d]);
    shapes.set("kv.b", [2 * d]);
    shapes.set("cout.w", [d, d]);
    shapes.set("cout.b", [d]);
  }
  shapes.set("ln2.g", [d]);
  shapes.set("ln2.b", [d]);
  shapes.set("ff1.w", [d, ffn]);
  shapes.set("ff1.b", [ffn]);
  shapes.set("ff2.w", [ffn, d]);
  shapes.set("ff2.b", [d]);
  return shapes;
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
