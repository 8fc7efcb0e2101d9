/**
 * The network of the `learned` reward: a small quality-estimation (QE) regressor that maps
 * a (source, hypothesis) pair to a score in [0, 1] without a reference.
 *
 * ## Architecture
 *
 *     input      source ids, EOS, hypothesis ids, EOS          (one sequence per row)
 *     embedding  token table (scaled by sqrt d) + sinusoidal position + segment (0 source, 1 hyp.)
 *     encoder    `layers` pre-LN transformer encoder layers (bidirectional self-attention
 *                over the whole pair, padding masked), final layer norm
 *     pooling    mean over the source segment and mean over the hypothesis segment: 2d
 *     features   + 6 length features (log token and character counts of both sides, log ratios)
 *     head       ReLU layer of `hidden` units, then one logit; score = sigmoid(logit)
 *
 * Why this shape: the pair is encoded jointly so attention can align hypothesis words with
 * source words (what a reference-free metric must do); mean pooling per segment gives a
 * fixed-size summary that does not depend on padding; and the explicit length features
 * carry what mean pooling loses (how much of the hypothesis there is, which drives a
 * character-F metric such as chrF: truncations and drops). With the defaults (d = 64, two
 * layers, FFN 256) the encoder has about 0.1 M weights beside the embedding table (0.62 M in
 * all with an 8000-piece joint vocabulary), so the default 2000 Adam steps of 64 rows on
 * LibreOffice pairs took about 2.5 minutes on two shared CPU cores with the `blas` backend.
 * (The plain `cpu` backend's matrix products are tens of times slower: use `blas` or `auto`.)
 *
 * Token ids: the source is encoded with the tokenizer's source side and the hypothesis with
 * its target side. With a joint vocabulary both sides share one embedding table (so a
 * hypothesis that copies the source is visibly a copy); with separate vocabularies the
 * target ids are shifted past the source vocabulary into a second block of the table.
 *
 * The encoder layers, layer norm and embedding lookup are the fused, hand-differentiated
 * ops shared with the `transformer` model (`../_nn/layers.ts`); pooling and the head are plain
 * tfjs operations. Everything runs on the active tfjs backend, in `tf.tidy`.
 *
 * @module
 */

import { maxOf } from "../../../core/append.ts";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
// Registers tfjs's gradient definitions (tfjs-core's Node build carries none).
import "@tensorflow/tfjs";
import type { PolicyState } from "../../../core/types.ts";
import { Rng } from "../../../core/random.ts";
import type { RunOptions } from "../../_nn/dropout.ts";
import { embedOp, sinusoidTable } from "../../_nn/embedding.ts";
import { fillNormal, fillXavierUniform } from "../../_nn/init.ts";
import { encoderLayerOp } from "../../_nn/layers.ts";
import { layerNormOp } from "../../_nn/layer_norm.ts";
import { type Dims, ENCODER_PARAMS, layerParamShapes } from "../../_nn/layer_params.ts";

/** Size of the QE network. */
export interface QeArchitecture {
  /** Model width d. */
  dModel: number;
  /** Attention heads (must divide dModel). */
  heads: number;
  /** Feed-forward inner width. */
  ffn: number;
  /** Encoder layers. */
  layers: number;
  /** Units of the head's hidden layer. */
  hidden: number;
  /** Dropout on embeddings and sublayer outputs (training only). */
  dropout: number;
  /** Tokens kept per side (longer sources and hypotheses are cut; lengths still count fully). */
  maxTokens: number;
}

/** The vocabulary the network embeds. */
export interface QeVocab {
  /** Source-side vocabulary size. */
  sourceVocab: number;
  /** Target-side vocabulary size. */
  targetVocab: number;
  /** Whether both sides share ids (one embedding block) or not (target ids shifted). */
  joint: boolean;
  /** Padding id. */
  pad: number;
  /** End-of-sequence id (the segment separator). */
  eos: number;
}

/** One row to score, already tokenized. */
export interface QeItem {
  /** Source ids (source side of the tokenizer), without EOS. */
  source: readonly number[];
  /** Hypothesis ids (target side), without EOS. */
  hypothesis: readonly number[];
  /** Characters of the source text. */
  sourceChars: number;
  /** Characters of the hypothesis text. */
  hypothesisChars: number;
}

/** Number of length features appended to the pooled states. */
export const LENGTH_FEATURES = 6;

const EPS = 1e-5;

function checkArchitecture(a: QeArchitecture, v: QeVocab): void {
  for (const key of ["dModel", "heads", "ffn", "layers", "hidden", "maxTokens"] as const) {
    if (!Number.isInteger(a[key]) || a[key] < 1) {
      throw new RangeError(`QE model: ${key} must be a positive integer, got ${a[key]}`);
    }
  }
  if (a.dModel % a.heads !== 0) {
    throw new RangeError(`QE model: heads (${a.heads}) must divide dModel (${a.dModel})`);
  }
  if (!(a.dropout >= 0 && a.dropout < 1)) {
    throw new RangeError(`QE model: dropout must be in [0, 1), got ${a.dropout}`);
  }
  for (const key of ["sourceVocab", "targetVocab"] as const) {
    if (!Number.isInteger(v[key]) || v[key] < 1) {
      throw new RangeError(`QE model: ${key} must be a positive integer, got ${v[key]}`);
    }
  }
  if (v.joint && v.sourceVocab !== v.targetVocab) {
    throw new RangeError("QE model: a joint vocabulary has equal source and target sizes");
  }
}

/** A padded batch in the network's layout. */
interface QeBatch {
  /** Rows. */
  b: number;
  /** Padded sequence length. */
  len: number;
  /** `[b * len]` embedding-table ids (padding: `pad`). */
  ids: Int32Array;
  /** `[b * len]` 1 at real tokens. */
  keyMask: Uint8Array;
  /** `[b * len, 2]` segment one-hot (zeros at padding). */
  segments: Float32Array;
  /** `[b, 2, len]` mean-pooling weights of each segment. */
  pool: Float32Array;
  /** `[b, LENGTH_FEATURES]`. */
  features: Float32Array;
}

/** The QE network (see the module doc). Build it with a seed, or from a saved state. */
export class QeModel {
  /** Network size. */
  readonly architecture: Readonly<QeArchitecture>;
  /** Embedded vocabulary. */
  readonly vocab: Readonly<QeVocab>;
  readonly #vars = new Map<string, tf.Variable>();
  readonly #dims: Dims;
  readonly #dropoutRng: Rng;
  #positions: Float32Array;
  #positionRows: number;
  #disposed = false;

  /** Builds a network initialised from `seed`, or holding the weights of `state`. */
  constructor(architecture: QeArchitecture, vocab: QeVocab, seed: number, state?: PolicyState) {
    checkArchitecture(architecture, vocab);
    this.architecture = Object.freeze({ ...architecture });
    this.vocab = Object.freeze({ ...vocab });
    this.#dims = {
      d: architecture.dModel,
      heads: architecture.heads,
      ffn: architecture.ffn,
      activation: "relu",
      eps: EPS,
    };
    this.#dropoutRng = new Rng(seed).fork("qe/dropout");
    this.#positionRows = 2 * architecture.maxTokens + 2;
    this.#positions = sinusoidTable(this.#positionRows, architecture.dModel);
    const shapes = this.#shapes();
    const index = new Map(state?.weights.map((w) => [w.name, w]));
    if (state !== undefined) {
      const problems: string[] = [];
      for (const [name, shape] of shapes) {
        const w = index.get(name);
        if (w === undefined) problems.push(`${name} missing`);
        else if (w.shape.join("x") !== shape.join("x")) {
          problems.push(`${name} has shape [${w.shape}], expected [${shape}]`);
        } else if (w.offset + shape.reduce((a, b) => a * b, 1) > state.data.length) {
          problems.push(`${name} runs past the end of the weights`);
        }
      }
      if (problems.length > 0) {
        throw new RangeError(`QE model: saved weights do not fit: ${problems.join("; ")}`);
      }
    }
    const init = new Rng(seed);
    for (const [name, shape] of shapes) {
      const size = shape.reduce((a, b) => a * b, 1);
      const data = state !== undefined
        ? state.data.slice(index.get(name)!.offset, index.get(name)!.offset + size)
        : this.#initialValues(name, shape, init.fork(name));
      const t = tf.tensor(data, shape, "float32");
      this.#vars.set(name, tf.variable(t, true));
      t.dispose();
    }
  }

  /** Rows of the embedding table: one block, or source block then target block. */
  get tableRows(): number {
    const { sourceVocab, targetVocab, joint } = this.vocab;
    return joint ? sourceVocab : sourceVocab + targetVocab;
  }

  #shapes(): Map<string, number[]> {
    const { dModel: d, hidden, layers } = this.architecture;
    const shapes = new Map<string, number[]>();
    shapes.set("embed", [this.tableRows, d]);
    shapes.set("segment", [2, d]);
    for (let i = 0; i < layers; i++) {
      for (const [n, s] of layerParamShapes("encoder", this.#dims)) {
        shapes.set(`encoder.${i}.${n}`, s);
      }
    }
    shapes.set("norm.g", [d]);
    shapes.set("norm.b", [d]);
    shapes.set("head.w1", [2 * d + LENGTH_FEATURES, hidden]);
    shapes.set("head.b1", [hidden]);
    shapes.set("head.w2", [hidden, 1]);
    shapes.set("head.b2", [1]);
    return shapes;
  }

  #initialValues(name: string, shape: number[], rng: Rng): Float32Array {
    const size = shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(size);
    const last = name.slice(name.lastIndexOf(".") + 1);
    if (name === "embed" || name === "segment") {
      fillNormal(out, 1 / Math.sqrt(this.#dims.d), rng);
    } else if (last === "g") {
      out.fill(1);
    } else if (last === "w" || last === "w1" || last === "w2") {
      // Xavier/Glorot uniform; the fused QKV projection counts as three d x d matrices.
      const [fanIn, fanOut] = shape;
      const parts = name.endsWith("qkv.w") ? 3 : 1;
      fillXavierUniform(out, fanIn, fanOut, rng, parts);
    }
    return out;
  }

  #v(name: string): tf.Variable {
    if (this.#disposed) throw new Error("QE model used after dispose()");
    const v = this.#vars.get(name);
    if (v === undefined) throw new Error(`QE model: no weight ${name}`);
    return v;
  }

  /** Trainable variables in a fixed order. */
  get variables(): tf.Variable[] {
    if (this.#disposed) throw new Error("QE model used after dispose()");
    return [...this.#vars.values()];
  }

  /** Number of weights. */
  get size(): number {
    return this.variables.reduce((sum, v) => sum + v.size, 0);
  }

  /** Sets the output bias (e.g. to the logit of the mean training target before training). */
  setOutputBias(value: number): void {
    tf.tidy(() => this.#v("head.b2").assign(tf.tensor1d([value])));
  }

  #positionTable = (len: number): Float32Array => {
    if (len > this.#positionRows) {
      this.#positionRows = Math.max(len, 2 * this.#positionRows);
      this.#positions = sinusoidTable(this.#positionRows, this.#dims.d);
    }
    return this.#positions;
  };

  /** Packs rows into the network's layout (ids checked against the vocabularies). */
  #batch(items: readonly QeItem[]): QeBatch {
    const { maxTokens } = this.architecture;
    const { sourceVocab, targetVocab, joint, pad, eos } = this.vocab;
    const shift = joint ? 0 : sourceVocab;
    const b = items.length;
    const cut = items.map((item) => ({
      source: item.source.slice(0, maxTokens),
      hypothesis: item.hypothesis.slice(0, maxTokens),
    }));
    const len = maxOf(cut.map((c) => c.source.length + c.hypothesis.length + 2));
    const ids = new Int32Array(b * len).fill(pad);
    const keyMask = new Uint8Array(b * len);
    const segments = new Float32Array(b * len * 2);
    const pool = new Float32Array(b * 2 * len);
    const features = new Float32Array(b * LENGTH_FEATURES);
    for (let i = 0; i < b; i++) {
      const { source, hypothesis } = cut[i];
      const o = i * len;
      const srcCount = source.length + 1;
      const hypCount = hypothesis.length + 1;
      for (let t = 0; t < source.length; t++) {
        const id = source[t];
        if (!Number.isInteger(id) || id < 0 || id >= sourceVocab) {
          throw new RangeError(`row ${i}: source id ${id} outside [0, ${sourceVocab})`);
        }
        ids[o + t] = id;
      }
      ids[o + source.length] = eos;
      for (let t = 0; t < hypothesis.length; t++) {
        const id = hypothesis[t];
        if (!Number.isInteger(id) || id < 0 || id >= targetVocab) {
          throw new RangeError(`row ${i}: hypothesis id ${id} outside [0, ${targetVocab})`);
        }
        ids[o + srcCount + t] = id + shift;
      }
      ids[o + srcCount + hypothesis.length] = eos + shift;
      keyMask.fill(1, o, o + srcCount + hypCount);
      for (let t = 0; t < srcCount + hypCount; t++) {
        segments[(o + t) * 2 + (t < srcCount ? 0 : 1)] = 1;
      }
      pool.fill(1 / srcCount, i * 2 * len, i * 2 * len + srcCount);
      pool.fill(
        1 / hypCount,
        i * 2 * len + len + srcCount,
        i * 2 * len + len + srcCount + hypCount,
      );
      const item = items[i];
      const ls = Math.log1p(item.source.length);
      const lh = Math.log1p(item.hypothesis.length);
      const cs = Math.log1p(item.sourceChars);
      const ch = Math.log1p(item.hypothesisChars);
      features.set([ls / 4, lh / 4, cs / 6, ch / 6, (lh - ls) / 2, (ch - cs) / 2], i * 6);
    }
    return { b, len, ids, keyMask, segments, pool, features };
  }

  /** `[B]` logits of a batch (call inside `tf.tidy` or a gradient function). */
  logits(items: readonly QeItem[], training: boolean): tf.Tensor1D {
    if (items.length === 0) throw new RangeError("QE model: empty batch");
    const batch = this.#batch(items);
    const { b, len } = batch;
    const d = this.#dims.d;
    const run: RunOptions = {
      training,
      dropout: this.architecture.dropout,
      attentionDropout: 0,
      rng: this.#dropoutRng,
    };
    let x = embedOp(
      this.#v("embed") as tf.Tensor2D,
      [{ ids: batch.ids, len }],
      Math.sqrt(d),
      this.#positionTable,
      run,
    );
    x = tf.add(x, tf.matMul(tf.tensor2d(batch.segments, [b * len, 2]), this.#v("segment")));
    for (let i = 0; i < this.architecture.layers; i++) {
      const params = ENCODER_PARAMS.map((n) => this.#v(`encoder.${i}.${n}`) as tf.Tensor);
      x = encoderLayerOp(x, params, b, len, this.#dims, batch.keyMask, run);
    }
    x = layerNormOp(x, this.#v("norm.g"), this.#v("norm.b"), EPS);
    const pooled = tf.reshape(
      tf.matMul(tf.tensor3d(batch.pool, [b, 2, len]), tf.reshape(x, [b, len, d])),
      [b, 2 * d],
    );
    const features = tf.concat([pooled, tf.tensor2d(batch.features, [b, LENGTH_FEATURES])], 1);
    const h = tf.relu(tf.add(tf.matMul(features, this.#v("head.w1")), this.#v("head.b1")));
    const z = tf.add(tf.matMul(h, this.#v("head.w2")), this.#v("head.b2"));
    return tf.reshape(z, [b]) as tf.Tensor1D;
  }

  /**
   * Mean binary cross-entropy between sigmoid(logits) and soft targets in [0, 1]:
   * softplus(z) - y z, whose minimum over z is at sigmoid(z) = y; plus, when `ranking` is
   * given with a positive weight, that weight times {@link rankingLoss} of the same logits.
   */
  loss(
    items: readonly QeItem[],
    targets: readonly number[],
    ranking?: { groups: readonly number[]; weight: number },
  ): tf.Scalar {
    return tf.tidy(() => {
      const z = this.logits(items, true);
      const y = tf.tensor1d(targets as number[], "float32");
      const regression = tf.mean(tf.sub(tf.softplus(z), tf.mul(y, z))) as tf.Scalar;
      if (ranking === undefined || ranking.weight <= 0) return regression;
      const rank = rankingLoss(z, targets, ranking.groups);
      return tf.add(regression, tf.mul(rank, ranking.weight)) as tf.Scalar;
    });
  }

  /**
   * Scores in [0, 1], in input order. Rows are sorted by length into batches of at most
   * `batchSize` so padding stays small; the result does not depend on the batching.
   */
  predict(items: readonly QeItem[], batchSize: number): number[] {
    if (!(Number.isInteger(batchSize) && batchSize >= 1)) {
      throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
    }
    const out = new Array<number>(items.length);
    const order = items.map((_, i) => i).sort((a, b) =>
      items[a].source.length + items[a].hypothesis.length -
        (items[b].source.length + items[b].hypothesis.length) || a - b
    );
    for (let start = 0; start < order.length; start += batchSize) {
      const indices = order.slice(start, start + batchSize);
      tf.tidy(() => {
        const scores = tf.sigmoid(this.logits(indices.map((i) => items[i]), false)).dataSync();
        indices.forEach((i, k) => (out[i] = Math.min(1, Math.max(0, scores[k]))));
      });
    }
    return out;
  }

  /** Architecture, vocabulary and weights, for a checkpoint. */
  save(): PolicyState {
    const weights: PolicyState["weights"] = [];
    let offset = 0;
    for (const [name, v] of this.#vars) {
      weights.push({ name, shape: [...v.shape], offset });
      offset += v.size;
    }
    const data = new Float32Array(offset);
    let k = 0;
    for (const v of this.#vars.values()) {
      data.set(v.dataSync() as Float32Array, weights[k++].offset);
    }
    return {
      config: { architecture: { ...this.architecture }, vocab: { ...this.vocab } },
      weights,
      data,
    };
  }

  /** Frees the weights. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const v of this.#vars.values()) v.dispose();
  }
}

/**
 * Within-source pairwise ranking loss (RankNet's logistic loss): over every ordered pair
 * (i, j) of rows in the same group with `targets[i] > targets[j]`, the mean of
 * softplus(-(z_i - z_j)) = -log sigmoid(z_i - z_j), so a pair costs little once the better
 * hypothesis has the clearly higher logit. Pairs are found on the host and applied as a
 * `[B, B]` mask, so one batch costs one B x B element-wise pass. 0 when no pair differs.
 * Call inside `tf.tidy` or a gradient function.
 */
export function rankingLoss(
  z: tf.Tensor1D,
  targets: readonly number[],
  groups: readonly number[],
): tf.Scalar {
  const b = targets.length;
  if (z.shape[0] !== b || groups.length !== b) {
    throw new RangeError(`${z.shape[0]} logits, ${b} targets, ${groups.length} groups`);
  }
  const mask = new Float32Array(b * b);
  let pairs = 0;
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < b; j++) {
      if (groups[i] === groups[j] && targets[i] > targets[j]) {
        mask[i * b + j] = 1;
        pairs++;
      }
    }
  }
  if (pairs === 0) return tf.scalar(0);
  const diff = tf.sub(tf.reshape(z, [b, 1]), tf.reshape(z, [1, b]));
  const losses = tf.mul(tf.softplus(tf.neg(diff)), tf.tensor2d(mask, [b, b]));
  return tf.div(tf.sum(losses), pairs) as tf.Scalar;
}

/** Rebuilds a network from {@link QeModel.save}'s state. */
export function restoreQeModel(state: PolicyState): QeModel {
  const config = state.config as { architecture?: QeArchitecture; vocab?: QeVocab };
  if (typeof config?.architecture !== "object" || typeof config?.vocab !== "object") {
    throw new RangeError("QE model: the saved state has no architecture/vocab");
  }
  return new QeModel(config.architecture, config.vocab, 0, state);
}
