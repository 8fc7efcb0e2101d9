/**
 * `transformer`: a pre-LN encoder-decoder transformer policy (Vaswani et al. 2017 with
 * layer norm before each sub-layer, Xiong et al. 2020), in TensorFlow.js ops.
 *
 * - Sinusoidal positions, embeddings scaled by sqrt(d_model), shared source/target/output
 *   embeddings when the vocabularies are joint (`shareEmbeddings`).
 * - Multi-head attention with one fused QKV projection, padding masks on every attention
 *   over the source, a causal mask in decoder self-attention; ReLU feed-forward; dropout
 *   only while training.
 * - Decoding (greedy, sampling, beam search) is incremental with a per-layer key/value
 *   cache; cross-attention keys/values are computed once per batch. Sources are decoded in
 *   length buckets. EOS is appended to every source by the policy.
 * - Optional value head on the final decoder states (for PPO / BVMPO).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { definePlugin } from "../../core/plugin.ts";
import type {
  BeamOptions,
  DecodeOptions,
  ForwardOutput,
  Generation,
  ModelFactory,
  Policy,
  PolicyState,
  SampleOptions,
  TokenBatch,
} from "../../core/policy.ts";
import { Rng } from "../../core/random.ts";
import type { SpecialIds } from "../../core/types.ts";

/** Config of the `transformer` model. */
export interface TransformerConfig {
  /** Model width. */
  dModel: number;
  /** Attention heads (must divide dModel). */
  heads: number;
  /** Feed-forward width. */
  ffn: number;
  /** Encoder layers. */
  encoderLayers: number;
  /** Decoder layers. */
  decoderLayers: number;
  /** Dropout rate while training. */
  dropout: number;
  /** Share embeddings: "all" (source, target, output), "decoder" (target and output), "none". */
  shareEmbeddings: "all" | "decoder" | "none";
  /** Longest sequence the position table covers. */
  maxPositions: number;
}

type Params = Map<string, tf.Variable>;

interface Built {
  config: TransformerConfig;
  sourceVocab: number;
  targetVocab: number;
}

function glorot(rng: Rng, fanIn: number, fanOut: number, size: number): Float32Array {
  const limit = Math.sqrt(6 / (fanIn + fanOut));
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = (rng.next() * 2 - 1) * limit;
  return out;
}

function sinusoids(length: number, d: number): tf.Tensor2D {
  const table = new Float32Array(length * d);
  for (let pos = 0; pos < length; pos++) {
    for (let i = 0; i < d; i += 2) {
      const angle = pos / Math.pow(10000, i / d);
      table[pos * d + i] = Math.sin(angle);
      if (i + 1 < d) table[pos * d + i + 1] = Math.cos(angle);
    }
  }
  return tf.tensor2d(table, [length, d]);
}

/** Creates the parameter set (deterministic from `seed`). Names are stable for save/load. */
function createParams(built: Built, valueHead: boolean, seed: number): Params {
  const { config, sourceVocab, targetVocab } = built;
  const d = config.dModel;
  const rng = new Rng(seed).fork("transformer/init");
  const params: Params = new Map();
  const add = (name: string, shape: number[], init: "glorot" | "zeros" | "ones" | "embed") => {
    const size = shape.reduce((a, b) => a * b, 1);
    let values: Float32Array;
    if (init === "zeros") values = new Float32Array(size);
    else if (init === "ones") values = new Float32Array(size).fill(1);
    else if (init === "embed") {
      values = new Float32Array(size);
      const std = 1 / Math.sqrt(d);
      for (let i = 0; i < size; i++) values[i] = (rng.next() * 2 - 1) * std * Math.sqrt(3);
    } else values = glorot(rng, shape[0], shape[shape.length - 1], size);
    params.set(name, tf.variable(tf.tensor(values, shape), true, name + "_" + crypto.randomUUID()));
  };
  const share = config.shareEmbeddings;
  add("embed/target", [targetVocab, d], "embed");
  if (share !== "all") add("embed/source", [sourceVocab, d], "embed");
  if (share === "none") {
    add("out/w", [d, targetVocab], "glorot");
  }
  add("out/b", [targetVocab], "zeros");
  const ln = (prefix: string) => {
    add(`${prefix}/g`, [d], "ones");
    add(`${prefix}/b`, [d], "zeros");
  };
  const ffn = (prefix: string) => {
    add(`${prefix}/w1`, [d, config.ffn], "glorot");
    add(`${prefix}/b1`, [config.ffn], "zeros");
    add(`${prefix}/w2`, [config.ffn, d], "glorot");
    add(`${prefix}/b2`, [d], "zeros");
  };
  for (let l = 0; l < config.encoderLayers; l++) {
    const p = `enc${l}`;
    ln(`${p}/ln1`);
    add(`${p}/att/wqkv`, [d, 3 * d], "glorot");
    add(`${p}/att/bqkv`, [3 * d], "zeros");
    add(`${p}/att/wo`, [d, d], "glorot");
    add(`${p}/att/bo`, [d], "zeros");
    ln(`${p}/ln2`);
    ffn(`${p}/ffn`);
  }
  ln("enc/ln");
  for (let l = 0; l < config.decoderLayers; l++) {
    const p = `dec${l}`;
    ln(`${p}/ln1`);
    add(`${p}/self/wqkv`, [d, 3 * d], "glorot");
    add(`${p}/self/bqkv`, [3 * d], "zeros");
    add(`${p}/self/wo`, [d, d], "glorot");
    add(`${p}/self/bo`, [d], "zeros");
    ln(`${p}/ln2`);
    add(`${p}/cross/wq`, [d, d], "glorot");
    add(`${p}/cross/bq`, [d], "zeros");
    add(`${p}/cross/wkv`, [d, 2 * d], "glorot");
    add(`${p}/cross/bkv`, [2 * d], "zeros");
    add(`${p}/cross/wo`, [d, d], "glorot");
    add(`${p}/cross/bo`, [d], "zeros");
    ln(`${p}/ln3`);
    ffn(`${p}/ffn`);
  }
  ln("dec/ln");
  if (valueHead) {
    add("value/w", [d, 1], "glorot");
    add("value/b", [1], "zeros");
  }
  return params;
}

/** Per-layer key/value cache of incremental decoding. */
interface LayerCache {
  /** Self-attention keys/values so far, `[R, H, t, dh]`. */
  selfK?: tf.Tensor4D;
  selfV?: tf.Tensor4D;
  /** Cross-attention keys/values, `[R, H, S, dh]`. */
  crossK: tf.Tensor4D;
  crossV: tf.Tensor4D;
}

/** The transformer policy. */
class TransformerPolicy implements Policy {
  readonly specials: SpecialIds;
  readonly hasValueHead: boolean;
  readonly #built: Built;
  readonly #params: Params;
  readonly #positions: tf.Tensor2D;
  readonly #seed: number;
  #dropoutCalls = 0;

  constructor(built: Built, specials: SpecialIds, valueHead: boolean, seed: number) {
    this.#built = built;
    this.specials = specials;
    this.hasValueHead = valueHead;
    this.#seed = seed;
    this.#params = createParams(built, valueHead, seed);
    this.#positions = sinusoids(built.config.maxPositions, built.config.dModel);
  }

  get variables(): tf.Variable[] {
    return [...this.#params.values()];
  }

  #p(name: string): tf.Variable {
    const p = this.#params.get(name);
    if (p === undefined) throw new Error(`transformer: no parameter ${name}`);
    return p;
  }

  get #d(): number {
    return this.#built.config.dModel;
  }

  get #heads(): number {
    return this.#built.config.heads;
  }

  #sourceEmbedding(): tf.Variable {
    return this.#params.get("embed/source") ?? this.#p("embed/target");
  }

  /** `[R*L, d]` -> `[R*L, V]` output logits. */
  #logits(h: tf.Tensor2D): tf.Tensor2D {
    const w = this.#params.get("out/w");
    const logits = w === undefined
      ? tf.matMul(h, this.#p("embed/target"), false, true)
      : tf.matMul(h, w);
    return tf.add(logits, this.#p("out/b"));
  }

  #layerNorm(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    const { mean, variance } = tf.moments(x, -1, true);
    const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-5)));
    return tf.add(tf.mul(normed, this.#p(`${prefix}/g`)), this.#p(`${prefix}/b`));
  }

  #dense(x: tf.Tensor2D, w: string, b: string): tf.Tensor2D {
    return tf.add(tf.matMul(x, this.#p(w)), this.#p(b));
  }

  #dropout(x: tf.Tensor2D, training: boolean): tf.Tensor2D {
    const rate = this.#built.config.dropout;
    if (!training || rate <= 0) return x;
    this.#dropoutCalls++;
    return tf.dropout(x, rate, undefined, this.#seed * 7919 + this.#dropoutCalls) as tf.Tensor2D;
  }

  /** `[R*L, d]` -> `[R, H, L, dh]`. */
  #splitHeads(x: tf.Tensor2D, rows: number, length: number): tf.Tensor4D {
    const h = this.#heads;
    return tf.transpose(tf.reshape(x, [rows, length, h, this.#d / h]), [0, 2, 1, 3]);
  }

  /** `[R, H, L, dh]` -> `[R*L, d]`. */
  #mergeHeads(x: tf.Tensor4D, rows: number, length: number): tf.Tensor2D {
    return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [rows * length, this.#d]);
  }

  /** Scaled dot-product attention; `bias` is added to the scores (masks). */
  #attend(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, bias?: tf.Tensor): tf.Tensor4D {
    let scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(this.#d / this.#heads));
    if (bias !== undefined) scores = tf.add(scores, bias);
    return tf.matMul(tf.softmax(scores), v);
  }

  #embed(ids: tf.Tensor2D, table: tf.Tensor, offset: number): tf.Tensor2D {
    const [rows, length] = ids.shape;
    if (offset + length > this.#built.config.maxPositions) {
      throw new RangeError(
        `sequence of ${
          offset + length
        } tokens exceeds maxPositions ${this.#built.config.maxPositions}`,
      );
    }
    const flat = tf.gather(table, tf.reshape(ids, [-1]));
    const scaled = tf.mul(flat, Math.sqrt(this.#d));
    const pos = tf.tile(tf.slice(this.#positions, [offset, 0], [length, this.#d]), [rows, 1]);
    return tf.add(scaled, pos);
  }

  /** Encoder: `[R, S]` ids -> memory `[R*S, d]` and the `[R, 1, 1, S]` padding bias. */
  #encode(source: tf.Tensor2D, training: boolean): { memory: tf.Tensor2D; bias: tf.Tensor4D } {
    const [rows, length] = source.shape;
    const bias = tf.reshape(
      tf.mul(tf.cast(tf.equal(source, this.specials.pad), "float32"), -1e9),
      [rows, 1, 1, length],
    ) as tf.Tensor4D;
    let x = this.#dropout(this.#embed(source, this.#sourceEmbedding(), 0), training);
    for (let l = 0; l < this.#built.config.encoderLayers; l++) {
      const p = `enc${l}`;
      const h = this.#layerNorm(x, `${p}/ln1`);
      const qkv = this.#dense(h, `${p}/att/wqkv`, `${p}/att/bqkv`);
      const [q, k, v] = tf.split(qkv, 3, 1).map((t) =>
        this.#splitHeads(t as tf.Tensor2D, rows, length)
      );
      const att = this.#mergeHeads(this.#attend(q, k, v, bias), rows, length);
      x = tf.add(x, this.#dropout(this.#dense(att, `${p}/att/wo`, `${p}/att/bo`), training));
      x = tf.add(
        x,
        this.#dropout(this.#ffn(this.#layerNorm(x, `${p}/ln2`), `${p}/ffn`, training), training),
      );
    }
    return { memory: this.#layerNorm(x, "enc/ln"), bias };
  }

  #ffn(x: tf.Tensor2D, prefix: string, training: boolean): tf.Tensor2D {
    const hidden = this.#dropout(tf.relu(this.#dense(x, `${prefix}/w1`, `${prefix}/b1`)), training);
    return this.#dense(hidden, `${prefix}/w2`, `${prefix}/b2`);
  }

  /** Cross-attention keys/values of one decoder layer from the memory. */
  #crossKV(
    memory: tf.Tensor2D,
    layer: number,
    rows: number,
    length: number,
  ): [tf.Tensor4D, tf.Tensor4D] {
    const p = `dec${layer}/cross`;
    const kv = this.#dense(memory, `${p}/wkv`, `${p}/bkv`);
    const [k, v] = tf.split(kv, 2, 1).map((t) => this.#splitHeads(t as tf.Tensor2D, rows, length));
    return [k, v];
  }

  /**
   * Decoder over `length` new positions starting at `offset`. With `cache`, self-attention
   * keys/values are appended to it (incremental decoding); without, `causal` masks the future.
   */
  #decode(
    x: tf.Tensor2D,
    rows: number,
    length: number,
    crossKV: [tf.Tensor4D, tf.Tensor4D][],
    sourceBias: tf.Tensor4D,
    training: boolean,
    cache?: LayerCache[],
  ): tf.Tensor2D {
    let causal: tf.Tensor | undefined;
    if (cache === undefined && length > 1) {
      const mask = tf.linalg.bandPart(tf.ones([length, length]), -1, 0);
      causal = tf.reshape(tf.mul(tf.sub(1, mask), -1e9), [1, 1, length, length]);
    }
    for (let l = 0; l < this.#built.config.decoderLayers; l++) {
      const p = `dec${l}`;
      const h = this.#layerNorm(x, `${p}/ln1`);
      const qkv = this.#dense(h, `${p}/self/wqkv`, `${p}/self/bqkv`);
      let [q, k, v] = tf.split(qkv, 3, 1).map((t) =>
        this.#splitHeads(t as tf.Tensor2D, rows, length)
      );
      if (cache !== undefined) {
        const c = cache[l];
        const previous = [c.selfK, c.selfV];
        if (c.selfK !== undefined && c.selfV !== undefined) {
          k = tf.concat([c.selfK, k], 2);
          v = tf.concat([c.selfV, v], 2);
        }
        c.selfK = tf.keep(k);
        c.selfV = tf.keep(v);
        for (const t of previous) t?.dispose();
      }
      const selfAtt = this.#mergeHeads(this.#attend(q, k, v, causal), rows, length);
      x = tf.add(x, this.#dropout(this.#dense(selfAtt, `${p}/self/wo`, `${p}/self/bo`), training));
      const h2 = this.#layerNorm(x, `${p}/ln2`);
      const cq = this.#splitHeads(this.#dense(h2, `${p}/cross/wq`, `${p}/cross/bq`), rows, length);
      const [ck, cv] = crossKV[l];
      const crossAtt = this.#mergeHeads(this.#attend(cq, ck, cv, sourceBias), rows, length);
      x = tf.add(
        x,
        this.#dropout(this.#dense(crossAtt, `${p}/cross/wo`, `${p}/cross/bo`), training),
      );
      x = tf.add(
        x,
        this.#dropout(this.#ffn(this.#layerNorm(x, `${p}/ln3`), `${p}/ffn`, training), training),
      );
    }
    return this.#layerNorm(x, "dec/ln");
  }

  forward(batch: TokenBatch, options: { training: boolean }): ForwardOutput {
    const [rows, sourceLength] = batch.source.shape;
    const length = batch.targetIn.shape[1];
    const { memory, bias } = this.#encode(batch.source, options.training);
    const crossKV = Array.from(
      { length: this.#built.config.decoderLayers },
      (_, l) => this.#crossKV(memory, l, rows, sourceLength),
    );
    const x = this.#dropout(
      this.#embed(batch.targetIn, this.#p("embed/target"), 0),
      options.training,
    );
    const states = this.#decode(x, rows, length, crossKV, bias, options.training);
    const logits = tf.reshape(this.#logits(states), [
      rows,
      length,
      this.#built.targetVocab,
    ]) as tf.Tensor3D;
    if (!this.hasValueHead) return { logits };
    const values = tf.reshape(this.#dense(states, "value/w", "value/b"), [
      rows,
      length,
    ]) as tf.Tensor2D;
    return { logits, values };
  }

  tokenLogProbs(batch: TokenBatch, options: { training: boolean }): tf.Tensor2D {
    return tf.tidy(() => {
      const { logits } = this.forward(batch, options);
      const [rows, length, vocab] = logits.shape;
      const flat = tf.reshape(logits, [rows * length, vocab]);
      const indices = tf.add(
        tf.mul(tf.range(0, rows * length, 1, "int32"), tf.scalar(vocab, "int32")),
        tf.reshape(batch.targetOut, [-1]),
      );
      const picked = tf.gather(tf.reshape(flat, [-1]), indices);
      const logProbs = tf.sub(picked, tf.logSumExp(flat, -1));
      return tf.mul(tf.reshape(logProbs, [rows, length]), batch.targetMask) as tf.Tensor2D;
    });
  }

  /** Pads id lists (EOS appended) into a `[R, S]` int32 tensor. */
  #sourceTensor(sources: readonly number[][]): tf.Tensor2D {
    const withEos = sources.map((s) =>
      s.at(-1) === this.specials.eos ? s : [...s, this.specials.eos]
    );
    const length = Math.max(...withEos.map((s) => s.length));
    const data = new Int32Array(withEos.length * length).fill(this.specials.pad);
    withEos.forEach((s, i) => data.set(s, i * length));
    return tf.tensor2d(data, [withEos.length, length], "int32");
  }

  /**
   * Runs incremental decoding for `rows` decoder rows (row r decodes source `sourceOf[r]`).
   * `choose(logProbs, step, alive)` picks the next token of every row from `[R, V]`
   * log-probabilities (already transformed to the caller's distribution) and may reorder rows
   * (beam search) by returning `parents`.
   */
  #incremental(
    sources: readonly number[][],
    sourceOf: readonly number[],
    maxLen: number,
    choose: (
      logProbs: Float32Array,
      vocab: number,
      step: number,
    ) => { tokens: number[]; parents?: number[]; done: boolean },
  ): void {
    const vocab = this.#built.targetVocab;
    const rows = sourceOf.length;
    const layers = this.#built.config.decoderLayers;
    const setup = tf.tidy(() => {
      const source = this.#sourceTensor(sources);
      const { memory, bias } = this.#encode(source, false);
      const sourceLength = source.shape[1];
      const take = tf.tensor1d(sourceOf as number[], "int32");
      const kv = Array.from({ length: layers }, (_, l) => {
        const [k, v] = this.#crossKV(memory, l, sources.length, sourceLength);
        return [tf.gather(k, take), tf.gather(v, take)] as [tf.Tensor4D, tf.Tensor4D];
      });
      return { kv, bias: tf.gather(bias, take) as tf.Tensor4D };
    });
    let crossKV = setup.kv;
    let sourceBias = setup.bias;
    let cache: LayerCache[] = crossKV.map(([k, v]) => ({ crossK: k, crossV: v }));
    let tokens = new Array<number>(rows).fill(this.specials.bos);
    try {
      for (let step = 0; step < maxLen; step++) {
        const logProbs = tf.tidy(() => {
          const ids = tf.tensor2d(tokens, [rows, 1], "int32");
          const x = this.#embed(ids, this.#p("embed/target"), step);
          const states = this.#decode(x, rows, 1, crossKV, sourceBias, false, cache);
          return tf.logSoftmax(this.#logits(states));
        });
        const values = Float32Array.from(logProbs.dataSync() as Float32Array);
        logProbs.dispose();
        // Padding and BOS are never generated.
        for (let r = 0; r < rows; r++) {
          values[r * vocab + this.specials.pad] = -Infinity;
          values[r * vocab + this.specials.bos] = -Infinity;
        }
        const choice = choose(values, vocab, step);
        tokens = choice.tokens;
        if (choice.done) break;
        if (choice.parents !== undefined) {
          const parents = tf.tensor1d(choice.parents, "int32");
          const reorder = <T extends tf.Tensor>(t: T | undefined): T | undefined => {
            if (t === undefined) return undefined;
            const next = tf.gather(t, parents) as T;
            t.dispose();
            return next;
          };
          cache = cache.map((c) => ({
            selfK: reorder(c.selfK),
            selfV: reorder(c.selfV),
            crossK: reorder(c.crossK)!,
            crossV: reorder(c.crossV)!,
          }));
          crossKV = cache.map((c) => [c.crossK, c.crossV]);
          sourceBias = reorder(sourceBias)!;
          parents.dispose();
        }
      }
    } finally {
      for (const c of cache) {
        tf.dispose(
          [c.selfK, c.selfV, c.crossK, c.crossV].filter((t) => t !== undefined) as tf.Tensor[],
        );
      }
      sourceBias.dispose();
    }
  }

  /** Decodes sources in length buckets of `batchSize`, restoring the input order. */
  async #bucketed<T>(
    sources: readonly number[][],
    batchSize: number,
    run: (chunk: number[][], chunkIndex: number) => T[],
  ): Promise<T[]> {
    const order = sources.map((_, i) => i).sort((a, b) =>
      sources[a].length - sources[b].length || a - b
    );
    const out = new Array<T>(sources.length);
    for (let start = 0; start < order.length; start += batchSize) {
      const ids = order.slice(start, start + batchSize);
      const results = run(ids.map((i) => sources[i]), start);
      ids.forEach((i, j) => (out[i] = results[j]));
      // Yield to the event loop between buckets (progress output, signals).
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    return out;
  }

  greedy(sources: readonly number[][], options: DecodeOptions): Promise<Generation[]> {
    return this.#bucketed(sources, options.batchSize ?? 64, (chunk) => {
      const gens = chunk.map(() => ({
        tokens: [] as number[],
        logProbs: [] as number[],
        score: 0,
      }));
      const finished = new Array<boolean>(chunk.length).fill(false);
      this.#incremental(chunk, chunk.map((_, i) => i), options.maxLen, (lp, vocab) => {
        const next: number[] = [];
        for (let r = 0; r < chunk.length; r++) {
          if (finished[r]) {
            next.push(this.specials.pad);
            continue;
          }
          let best = this.specials.eos;
          for (let v = 0; v < vocab; v++) if (lp[r * vocab + v] > lp[r * vocab + best]) best = v;
          gens[r].tokens.push(best);
          gens[r].logProbs.push(lp[r * vocab + best]);
          gens[r].score += lp[r * vocab + best];
          if (best === this.specials.eos) finished[r] = true;
          next.push(best);
        }
        return { tokens: next, done: finished.every(Boolean) };
      });
      return gens;
    });
  }

  sample(sources: readonly number[][], options: SampleOptions): Promise<Generation[][]> {
    const n = options.n;
    const perBatch = Math.max(1, Math.floor((options.batchSize ?? 64) / n));
    return this.#bucketed(sources, perBatch, (chunk, chunkIndex) => {
      const rng = new Rng(options.seed).fork(`sample/${chunkIndex}`);
      const sourceOf = chunk.flatMap((_, i) => new Array<number>(n).fill(i));
      const rows = sourceOf.length;
      const gens = sourceOf.map(() => ({
        tokens: [] as number[],
        logProbs: [] as number[],
        score: 0,
      }));
      const finished = new Array<boolean>(rows).fill(false);
      this.#incremental(chunk, sourceOf, options.maxLen, (lp, vocab) => {
        const next: number[] = [];
        for (let r = 0; r < rows; r++) {
          if (finished[r]) {
            next.push(this.specials.pad);
            continue;
          }
          const token = sampleToken(lp.subarray(r * vocab, (r + 1) * vocab), options, rng);
          gens[r].tokens.push(token);
          gens[r].logProbs.push(lp[r * vocab + token]);
          gens[r].score += lp[r * vocab + token];
          if (token === this.specials.eos) finished[r] = true;
          next.push(token);
        }
        return { tokens: next, done: finished.every(Boolean) };
      });
      return chunk.map((_, i) => gens.slice(i * n, (i + 1) * n));
    });
  }

  beam(sources: readonly number[][], options: BeamOptions): Promise<Generation[]> {
    const k = Math.max(1, options.beamSize);
    const perBatch = Math.max(1, Math.floor((options.batchSize ?? 64) / k));
    const penalty = (length: number) => Math.pow((5 + length) / 6, options.lengthPenalty);
    return this.#bucketed(sources, perBatch, (chunk) => {
      interface Hyp {
        tokens: number[];
        logProbs: number[];
        score: number;
      }
      // Row r = source floor(r / k), beam r % k. Start with one live beam per source.
      let beams: Hyp[][] = chunk.map(() => [{ tokens: [], logProbs: [], score: 0 }]);
      const finished: Hyp[][] = chunk.map(() => []);
      const done = new Array<boolean>(chunk.length).fill(false);
      const sourceOf = chunk.flatMap((_, i) => new Array<number>(k).fill(i));
      this.#incremental(chunk, sourceOf, options.maxLen, (lp, vocab, step) => {
        const tokens: number[] = [];
        const parents: number[] = [];
        const nextBeams: Hyp[][] = [];
        for (let s = 0; s < chunk.length; s++) {
          const candidates: { parent: number; token: number; score: number }[] = [];
          if (!done[s]) {
            beams[s].forEach((hyp, b) => {
              const row = s * k + b;
              const top = topIndices(lp.subarray(row * vocab, (row + 1) * vocab), k + 1);
              for (const token of top) {
                candidates.push({ parent: b, token, score: hyp.score + lp[row * vocab + token] });
              }
            });
            candidates.sort((a, b) => b.score - a.score);
          }
          const alive: Hyp[] = [];
          const aliveParents: number[] = [];
          for (let rank = 0; rank < candidates.length; rank++) {
            const c = candidates[rank];
            // A finished hypothesis counts only if it ranks among the k best candidates.
            if (c.token === this.specials.eos && rank >= k) continue;
            const parent = beams[s][c.parent];
            const hyp: Hyp = {
              tokens: [...parent.tokens, c.token],
              logProbs: [...parent.logProbs, lp[(s * k + c.parent) * vocab + c.token]],
              score: c.score,
            };
            if (c.token === this.specials.eos) {
              finished[s].push(hyp);
            } else if (alive.length < k) {
              alive.push(hyp);
              aliveParents.push(c.parent);
            }
            if (alive.length >= k && rank >= k) break;
          }
          const normalized = (h: Hyp) => h.score / penalty(h.tokens.length);
          finished[s].sort((a, b) => normalized(b) - normalized(a));
          finished[s].length = Math.min(finished[s].length, k);
          // Done when k hypotheses finished and none alive scores better (normalised).
          const bestAlive = alive.length > 0 ? Math.max(...alive.map(normalized)) : -Infinity;
          if (
            finished[s].length >= k && normalized(finished[s][0]) >= bestAlive ||
            alive.length === 0
          ) {
            done[s] = true;
          } else if (step === options.maxLen - 1) {
            finished[s].push(...alive);
            done[s] = true;
          }
          // Keep k rows per source (duplicates of beam 0 when fewer are alive).
          const keep = alive.length > 0 ? alive : beams[s].slice(0, 1);
          const keepParents = alive.length > 0 ? aliveParents : [0];
          nextBeams.push(keep);
          for (let b = 0; b < k; b++) {
            const j = Math.min(b, keep.length - 1);
            tokens.push(keep[j].tokens.at(-1) ?? this.specials.bos);
            parents.push(s * k + keepParents[j]);
          }
        }
        beams = nextBeams;
        return { tokens, parents, done: done.every(Boolean) };
      });
      return chunk.map((_, s) => {
        const pool = finished[s].length > 0 ? finished[s] : beams[s];
        let best = pool[0];
        let bestScore = -Infinity;
        for (const hyp of pool) {
          const normalized = hyp.score / penalty(hyp.tokens.length);
          if (normalized > bestScore) {
            best = hyp;
            bestScore = normalized;
          }
        }
        return { tokens: best.tokens, logProbs: best.logProbs, score: bestScore };
      });
    });
  }

  clone(): Policy {
    const copy = new TransformerPolicy(this.#built, this.specials, this.hasValueHead, this.#seed);
    copy.copyWeightsFrom(this);
    return copy;
  }

  copyWeightsFrom(other: Policy): void {
    if (!(other instanceof TransformerPolicy)) {
      throw new TypeError("copyWeightsFrom: the other policy is not a transformer");
    }
    for (const [name, variable] of this.#params) {
      const source = other.#params.get(name);
      if (source === undefined || !tf.util.arraysEqual(source.shape, variable.shape)) {
        throw new TypeError(`copyWeightsFrom: parameter ${name} differs between the policies`);
      }
      variable.assign(source);
    }
  }

  save(): PolicyState {
    const weights: PolicyState["weights"] = [];
    let offset = 0;
    for (const [name, variable] of this.#params) {
      weights.push({ name, shape: variable.shape, offset });
      offset += variable.size;
    }
    const data = new Float32Array(offset);
    let i = 0;
    for (const variable of this.#params.values()) {
      data.set(variable.dataSync() as Float32Array, weights[i++].offset);
    }
    return {
      config: {
        model: "transformer",
        ...this.#built.config,
        sourceVocab: this.#built.sourceVocab,
        targetVocab: this.#built.targetVocab,
        valueHead: this.hasValueHead,
      },
      weights,
      data,
    };
  }

  load(state: PolicyState): void {
    const byName = new Map(state.weights.map((w) => [w.name, w]));
    for (const [name, variable] of this.#params) {
      const entry = byName.get(name);
      if (entry === undefined) throw new TypeError(`load: the saved weights have no ${name}`);
      if (!tf.util.arraysEqual(entry.shape, variable.shape)) {
        throw new TypeError(
          `load: ${name} has shape [${entry.shape}] in the saved weights, [${variable.shape}] here`,
        );
      }
      const values = state.data.subarray(entry.offset, entry.offset + variable.size);
      if (values.length !== variable.size) throw new TypeError(`load: ${name} is truncated`);
      tf.tidy(() => variable.assign(tf.tensor(values, variable.shape)));
    }
  }

  dispose(): void {
    for (const variable of this.#params.values()) variable.dispose();
    this.#positions.dispose();
  }
}

/** Indices of the `k` largest values (descending). */
function topIndices(values: Float32Array, k: number): number[] {
  const best: number[] = [];
  for (let i = 0; i < values.length; i++) {
    if (best.length < k) {
      best.push(i);
      best.sort((a, b) => values[b] - values[a]);
    } else if (values[i] > values[best[k - 1]]) {
      best[k - 1] = i;
      best.sort((a, b) => values[b] - values[a]);
    }
  }
  return best;
}

/** Draws a token from log-probabilities with temperature, top-k and top-p truncation. */
export function sampleToken(
  logProbs: Float32Array,
  options: { temperature: number; topK: number; topP: number },
  rng: Rng,
): number {
  const vocab = logProbs.length;
  const t = options.temperature;
  let candidates: number[];
  if (options.topK > 0 && options.topK < vocab) candidates = topIndices(logProbs, options.topK);
  else candidates = Array.from({ length: vocab }, (_, i) => i);
  let max = -Infinity;
  for (const i of candidates) max = Math.max(max, logProbs[i] / t);
  let weights = candidates.map((i) => Math.exp(logProbs[i] / t - max));
  if (options.topP < 1) {
    const order = candidates.map((_, j) => j).sort((a, b) => weights[b] - weights[a]);
    const total = weights.reduce((a, b) => a + b, 0);
    let mass = 0;
    const kept = new Set<number>();
    for (const j of order) {
      kept.add(j);
      mass += weights[j] / total;
      if (mass >= options.topP) break;
    }
    weights = weights.map((w, j) => (kept.has(j) ? w : 0));
  }
  const total = weights.reduce((a, b) => a + b, 0);
  let u = rng.next() * total;
  for (let j = 0; j < candidates.length; j++) {
    u -= weights[j];
    if (u < 0) return candidates[j];
  }
  // Rounding: the last candidate with non-zero weight.
  for (let j = candidates.length - 1; j >= 0; j--) if (weights[j] > 0) return candidates[j];
  return candidates[0];
}

export default definePlugin({
  kind: "model",
  name: "transformer",
  summary: "Pre-LN encoder-decoder transformer policy with cached incremental decoding.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      dModel: {
        type: "integer",
        minimum: 2,
        maximum: 8192,
        default: 256,
        description: "Model width d_model.",
      },
      heads: {
        type: "integer",
        minimum: 1,
        maximum: 128,
        default: 4,
        description: "Attention heads (must divide dModel).",
      },
      ffn: {
        type: "integer",
        minimum: 1,
        maximum: 65536,
        default: 1024,
        description: "Feed-forward width.",
      },
      encoderLayers: {
        type: "integer",
        minimum: 1,
        maximum: 64,
        default: 3,
        description: "Encoder layers.",
      },
      decoderLayers: {
        type: "integer",
        minimum: 1,
        maximum: 64,
        default: 3,
        description: "Decoder layers.",
      },
      dropout: {
        type: "number",
        minimum: 0,
        maximum: 0.9,
        default: 0.1,
        description: "Dropout rate while training.",
      },
      shareEmbeddings: {
        enum: ["all", "decoder", "none"],
        default: "all",
        description:
          "Share embeddings: all (source, target and output; needs a joint vocabulary), " +
          "decoder (target and output), none.",
      },
      maxPositions: {
        type: "integer",
        minimum: 8,
        maximum: 65536,
        default: 256,
        description: "Longest sequence (tokens) the position table covers.",
      },
    },
  },
  check: (config: TransformerConfig) =>
    config.dModel % config.heads === 0 ? [] : [{
      path: "/heads",
      message: `must divide dModel (${config.dModel}) (got ${config.heads})`,
    }],
  smoke: (config: TransformerConfig): TransformerConfig => ({
    ...config,
    dModel: Math.min(config.dModel, 32),
    heads: Math.min(config.heads, 2),
    ffn: Math.min(config.ffn, 64),
    encoderLayers: 1,
    decoderLayers: 1,
  }),
  create(config: TransformerConfig): ModelFactory {
    return {
      build({ sourceVocab, targetVocab, specials, valueHead, seed }) {
        if (config.shareEmbeddings === "all" && sourceVocab !== targetVocab) {
          throw new RangeError(
            `transformer: shareEmbeddings "all" needs a joint vocabulary (source ${sourceVocab}, target ${targetVocab}); use "decoder"`,
          );
        }
        return new TransformerPolicy(
          { config, sourceVocab, targetVocab },
          specials,
          valueHead,
          seed,
        );
      },
    };
  },
});
