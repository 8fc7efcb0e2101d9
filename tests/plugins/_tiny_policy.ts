/**
 * A minimal differentiable {@link Policy} for loss tests: a bigram model over the previous
 * target token, logits[b, t, :] = E[targetIn[b, t]] W + bias (the source is ignored), with
 * an optional value head values[b, t] = E[targetIn[b, t]] . v + c. Weights are seeded.
 * Decoding methods are not supported.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { Rng } from "../../core/random.ts";
import type {
  ForwardOutput,
  Policy,
  PolicyState,
  SpecialIds,
  TokenBatch,
} from "../../core/types.ts";

/** Special ids of the tiny policy: pad 0, bos 1, eos 2, unk 3. */
export const TINY_SPECIALS: SpecialIds = { pad: 0, bos: 1, eos: 2, unk: 3 };

/** Options of {@link TinyPolicy}. */
export interface TinyOptions {
  /** Vocabulary size (specials included). */
  vocab?: number;
  /** Embedding width. */
  dim?: number;
  /** Seed of the weights. */
  seed?: number;
  /** Whether to add a value head. */
  valueHead?: boolean;
  /** Scale of the initial weights. */
  scale?: number;
}

/** A bigram policy with tf.variable weights (see the module doc). */
export class TinyPolicy implements Policy {
  /** Special ids. */
  readonly specials: SpecialIds = TINY_SPECIALS;
  /** Whether the value head exists. */
  readonly hasValueHead: boolean;
  /** Vocabulary size. */
  readonly vocab: number;
  /** Embedding width. */
  readonly dim: number;
  readonly #weights: Map<string, tf.Variable>;

  /** Builds a seeded policy. */
  constructor(options: TinyOptions = {}) {
    this.vocab = options.vocab ?? 7;
    this.dim = options.dim ?? 4;
    this.hasValueHead = options.valueHead ?? false;
    const rng = new Rng(options.seed ?? 1);
    const scale = options.scale ?? 1;
    const init = (shape: number[]) => {
      const size = shape.reduce((a, b) => a * b, 1);
      const values = Float32Array.from({ length: size }, () => (2 * rng.next() - 1) * scale);
      return tf.tidy(() => tf.variable(tf.tensor(values, shape)));
    };
    const shapes: [string, number[]][] = [
      ["embedding", [this.vocab, this.dim]],
      ["output", [this.dim, this.vocab]],
      ["bias", [this.vocab]],
    ];
    if (this.hasValueHead) shapes.push(["value", [this.dim, 1]], ["valueBias", [1]]);
    this.#weights = new Map(shapes.map(([name, shape]) => [name, init(shape)]));
  }

  /** Trainable variables. */
  get variables(): tf.Variable[] {
    return [...this.#weights.values()];
  }

  /** A weight by name. */
  weight(name: string): tf.Variable {
    return this.#weights.get(name)!;
  }

  /** Teacher-forced logits (and values). */
  forward(batch: TokenBatch, _options: { training: boolean }): ForwardOutput {
    return tf.tidy(() => {
      const [b, t] = batch.targetIn.shape;
      const embedded = tf.reshape(tf.gather(this.weight("embedding"), batch.targetIn), [
        b * t,
        this.dim,
      ]);
      const logits = tf.reshape(
        tf.add(tf.matMul(embedded, this.weight("output")), this.weight("bias")),
        [b, t, this.vocab],
      ) as tf.Tensor3D;
      if (!this.hasValueHead) return { logits };
      const values = tf.reshape(
        tf.add(tf.matMul(embedded, this.weight("value")), this.weight("valueBias")),
        [b, t],
      ) as tf.Tensor2D;
      return { logits, values };
    });
  }

  /** `[B, T]` log-probabilities of targetOut, 0 at padding. */
  tokenLogProbs(
    batch: TokenBatch,
    options: { training: boolean; temperature?: number },
  ): tf.Tensor2D {
    return tf.tidy(() => {
      const { logits } = this.forward(batch, options);
      const logP = tf.sum(
        tf.mul(
          tf.logSoftmax(tf.div(logits, options.temperature ?? 1)),
          tf.oneHot(batch.targetOut, this.vocab),
        ),
        -1,
      );
      return tf.mul(logP, batch.targetMask) as tf.Tensor2D;
    });
  }

  /** Not supported. */
  sample(): never {
    throw new Error("TinyPolicy: sample is not supported");
  }

  /** Not supported. */
  greedy(): never {
    throw new Error("TinyPolicy: greedy is not supported");
  }

  /** Not supported. */
  beam(): never {
    throw new Error("TinyPolicy: beam is not supported");
  }

  /** A copy with the same weights. */
  clone(): TinyPolicy {
    const copy = new TinyPolicy({
      vocab: this.vocab,
      dim: this.dim,
      valueHead: this.hasValueHead,
    });
    copy.copyWeightsFrom(this);
    return copy;
  }

  /** Copies every weight from another tiny policy. */
  copyWeightsFrom(other: Policy): void {
    const source = other as TinyPolicy;
    for (const [name, v] of this.#weights) v.assign(source.weight(name));
  }

  /** Serialises the weights. */
  save(): PolicyState {
    const weights: PolicyState["weights"] = [];
    const chunks: Float32Array[] = [];
    let offset = 0;
    for (const [name, v] of this.#weights) {
      weights.push({ name, shape: v.shape, offset });
      chunks.push(v.dataSync() as Float32Array);
      offset += v.size;
    }
    const data = new Float32Array(offset);
    chunks.forEach((chunk, i) => data.set(chunk, weights[i].offset));
    return {
      config: { vocab: this.vocab, dim: this.dim, valueHead: this.hasValueHead },
      weights,
      data,
    };
  }

  /** Restores weights saved by {@link TinyPolicy.save}. */
  load(state: PolicyState): void {
    for (const { name, shape, offset } of state.weights) {
      const v = this.weight(name);
      const size = shape.reduce((a, b) => a * b, 1);
      tf.tidy(() => v.assign(tf.tensor(state.data.subarray(offset, offset + size), shape)));
    }
  }

  /** Frees the weights. */
  dispose(): void {
    for (const v of this.#weights.values()) v.dispose();
  }
}
