/**
 * The policy of the `transformer` model plugin (`mod.ts`): a pre-LN encoder-decoder transformer (Vaswani et al. 2017 with layer
 * norm before each sublayer, as in Xiong et al. 2020, and a final layer norm on each
 * stack), written on tfjs-core without tfjs-layers.
 *
 * - Fixed sinusoidal positions (not learned), added to embeddings scaled by sqrt(d).
 * - Multi-head attention with a fused QKV projection; source padding is never attended
 *   (encoder self-attention and cross-attention), decoder self-attention is causal.
 * - ReLU (default) or GELU feed-forward; dropout on embeddings, sublayer outputs and
 *   (optionally) attention probabilities, only when training.
 * - Embeddings shared between source, target and output projection (`shareEmbeddings`).
 * - Optional value head: a linear map of the final decoder states to `[B, T]` values.
 * - Deterministic initialisation from the build seed (Xavier/Glorot uniform for
 *   projections, N(0, 1/d) for embeddings), drawn from {@link Rng}, never tfjs's RNG.
 *
 * Speed: every encoder/decoder layer is a single differentiable op with a hand-written
 * backward pass (see `../_nn/layers.ts`), the loss never materialises the logits as a tensor,
 * and decoding is incremental with key/value caches (see `decode.ts`; the searches are in
 * `search.ts`). On the `blas`
 * backend the layers call OpenBLAS directly and about 80% of a training step is spent
 * in its matrix products; the rest is mostly WebAssembly SIMD kernels (`../_nn/simd.ts`).
 * `bench/README.md` compares the speed with PyTorch.
 *
 * Decoding conventions: sources are id arrays as the tokenizer returns them; the policy
 * appends EOS to a source that does not already end with it. Outputs never contain PAD
 * or BOS. `batchSize` counts decoded rows: greedy decodes `batchSize` sources at once,
 * sampling `ceil(batchSize / n)` sources times `n` samples, beam search
 * `ceil(batchSize / beamSize)` sources times the beam. Sources are sorted by length into
 * buckets and results come back in input order.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
// Registers tfjs's gradient definitions (tfjs-core's Node build carries none).
import "@tensorflow/tfjs";
import { Rng } from "../../../core/random.ts";
import type {
  BeamOptions,
  DecodeOptions,
  ForwardOutput,
  Generation,
  Policy,
  PolicyState,
  SampleOptions,
  SpecialIds,
  TokenBatch,
} from "../../../core/types.ts";
import { values } from "../../_nn/custom_op.ts";
import {
  decoderLayerOps,
  deviceMasks,
  embedOps,
  encoderLayerOps,
  isDeviceBackend,
  layerNormOps,
  outputLogProbsOps,
} from "../../_nn/device.ts";
import type { RunOptions } from "../../_nn/dropout.ts";
import { embedOp, type Lookup, sinusoidTable } from "../../_nn/embedding.ts";
import { fillNormal, fillXavierUniform } from "../../_nn/init.ts";
import { decoderLayerOp, encoderLayerOp } from "../../_nn/layers.ts";
import { layerNormOp } from "../../_nn/layer_norm.ts";
import {
  type Activation,
  DECODER_PARAMS,
  type Dims,
  ENCODER_PARAMS,
  layerParamShapes,
  ParamView,
} from "../../_nn/layer_params.ts";
import { outputLogProbsOp } from "../../_nn/output_log_probs.ts";
import { simdMark, simdRelease } from "../../_nn/simd.ts";
import { encode, type InferenceModel, StepDecoder } from "./decode.ts";
import {
  beamSearch,
  greedyChooser,
  type Hypothesis,
  RowSampler,
  runSearch,
  samplingChooser,
} from "./search.ts";

/** Config of the `transformer` model plugin. */
export interface TransformerConfig {
  /** Model width d. */
  dModel: number;
  /** Attention heads (must divide dModel). */
  heads: number;
  /** Feed-forward inner width. */
  ffn: number;
  /** Encoder layers. */
  encoderLayers: number;
  /** Decoder layers. */
  decoderLayers: number;
  /** Dropout on embeddings and sublayer outputs (training only). */
  dropout: number;
  /** Dropout on attention probabilities (training only). */
  attentionDropout: number;
  /** Feed-forward activation. */
  activation: Activation;
  /** Default label smoothing of {@link nllLoss}-style losses that ask the policy. */
  labelSmoothing: number;
  /** Which embeddings are tied: all three (joint vocabulary), target+output, or none. */
  shareEmbeddings: "all" | "decoder" | "none";
  /** Rows of the precomputed sinusoidal position table (extended on demand). */
  maxPositions: number;
  /** Multiplier on every initial weight's scale. */
  initScale: number;
  /** Layer-norm epsilon. */
  layerNormEps: number;
}

/** The defaults of every {@link TransformerConfig} field (the "bench-small" shape, no dropout aside). */
export const TRANSFORMER_DEFAULTS: Readonly<TransformerConfig> = Object.freeze({
  dModel: 256,
  heads: 4,
  ffn: 1024,
  encoderLayers: 3,
  decoderLayers: 3,
  dropout: 0.1,
  attentionDropout: 0,
  activation: "relu",
  labelSmoothing: 0,
  shareEmbeddings: "all",
  maxPositions: 256,
  initScale: 1,
  layerNormEps: 1e-5,
});

/** What `ModelFactory.build` (core/types.ts) receives. */
export interface BuildOptions {
  /** Source vocabulary size. */
  sourceVocab: number;
  /** Target vocabulary size. */
  targetVocab: number;
  /** Special ids. */
  specials: SpecialIds;
  /** Whether to add a value head. */
  valueHead: boolean;
  /** Initialisation seed. */
  seed: number;
}

let policyCounter = 0;

/**
 * The transformer policy (see the module doc). Build it through the plugin's factory or
 * {@link restoreTransformer}; it implements the framework's {@link Policy} contract plus
 * {@link TransformerPolicy.smoothedTokenLogProbs} for label-smoothed losses.
 */
export class TransformerPolicy implements Policy {
  /** Special ids shared with the tokenizer. */
  readonly specials: SpecialIds;
  /** Whether the model has a value head. */
  readonly hasValueHead: boolean;
  /** The plugin config this policy was built with. */
  readonly config: Readonly<TransformerConfig>;
  /** Build options (vocabulary sizes, value head, seed). */
  readonly options: Readonly<BuildOptions>;
  /** Default label smoothing for losses (from the config). */
  readonly labelSmoothing: number;

  readonly #dims: Dims;
  readonly #vars = new Map<string, tf.Variable>();
  readonly #srcTable: string;
  readonly #tgtTable: string;
  readonly #outTable: string;
  #dropoutRng: Rng;
  #positions: Float32Array;
  #positionRows: number;
  #disposed = false;

  /**
   * Creates a policy; weights are initialised from `options.seed`, or copied from
   * `state` when given (whose architecture must match).
   */
  constructor(config: Partial<TransformerConfig>, options: BuildOptions, state?: PolicyState) {
    const c = { ...TRANSFORMER_DEFAULTS, ...config };
    checkConfig(c, options);
    this.config = Object.freeze(c);
    this.options = Object.freeze({ ...options, specials: { ...options.specials } });
    this.specials = Object.freeze({ ...options.specials });
    this.hasValueHead = options.valueHead;
    this.labelSmoothing = c.labelSmoothing;
    this.#dims = {
      d: c.dModel,
      heads: c.heads,
      ffn: c.ffn,
      activation: c.activation,
      eps: c.layerNormEps,
    };
    const joint = options.sourceVocab === options.targetVocab;
    const share = c.shareEmbeddings === "all" && !joint ? "decoder" : c.shareEmbeddings;
    this.#srcTable = share === "all" ? "embed" : "embed.source";
    this.#tgtTable = share === "all" ? "embed" : "embed.target";
    this.#outTable = share === "none" ? "output" : this.#tgtTable;
    this.#dropoutRng = new Rng(options.seed).fork("dropout");
    this.#positionRows = c.maxPositions;
    this.#positions = sinusoidTable(c.maxPositions, c.dModel);
    const prefix = `transformer_${++policyCounter}`;
    const shapes = this.#shapes();
    const init = new Rng(options.seed);
    const stateIndex = new Map(state?.weights.map((w) => [w.name, w]));
    if (state !== undefined) checkState(state, shapes);
    for (const [name, shape] of shapes) {
      let data: Float32Array;
      if (state !== undefined) {
        const w = stateIndex.get(name)!;
        const size = shape.reduce((a, b) => a * b, 1);
        data = state.data.slice(w.offset, w.offset + size);
      } else {
        data = this.#initialValues(name, shape, init.fork(name));
      }
      const t = tf.tensor(data, shape, "float32");
      this.#vars.set(name, tf.variable(t, true, `${prefix}/${name}`));
      t.dispose();
    }
  }

  /** Trainable variables, in a fixed order (value head included when present). */
  get variables(): tf.Variable[] {
    this.#alive();
    return [...this.#vars.values()];
  }

  /** Names and shapes of every weight, in {@link TransformerPolicy.variables} order. */
  #shapes(): Map<string, number[]> {
    const { sourceVocab, targetVocab } = this.options;
    const d = this.#dims.d;
    const shapes = new Map<string, number[]>();
    shapes.set(this.#srcTable, [sourceVocab, d]);
    if (this.#tgtTable !== this.#srcTable) shapes.set(this.#tgtTable, [targetVocab, d]);
    if (this.#outTable !== this.#tgtTable) shapes.set(this.#outTable, [targetVocab, d]);
    for (let i = 0; i < this.config.encoderLayers; i++) {
      for (const [n, s] of layerParamShapes("encoder", this.#dims)) {
        shapes.set(`encoder.${i}.${n}`, s);
      }
    }
    shapes.set("encoder.norm.g", [d]);
    shapes.set("encoder.norm.b", [d]);
    for (let i = 0; i < this.config.decoderLayers; i++) {
      for (const [n, s] of layerParamShapes("decoder", this.#dims)) {
        shapes.set(`decoder.${i}.${n}`, s);
      }
    }
    shapes.set("decoder.norm.g", [d]);
    shapes.set("decoder.norm.b", [d]);
    if (this.hasValueHead) {
      shapes.set("value.w", [d, 1]);
      shapes.set("value.b", [1]);
    }
    return shapes;
  }

  #initialValues(name: string, shape: number[], rng: Rng): Float32Array {
    const size = shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(size);
    const scale = this.config.initScale;
    const last = name.slice(name.lastIndexOf(".") + 1);
    if (name === "embed" || name.startsWith("embed.") || name === "output") {
      fillNormal(out, scale / Math.sqrt(this.#dims.d), rng);
    } else if (last === "g") {
      out.fill(1);
    } else if (last === "w") {
      // Xavier/Glorot uniform; fused QKV/KV projections count as separate d x d matrices.
      const [fanIn, fanOut] = shape;
      const parts = name.endsWith("qkv.w") ? 3 : name.endsWith("kv.w") ? 2 : 1;
      fillXavierUniform(out, fanIn, fanOut, rng, parts, scale);
    }
    return out;
  }

  #v(name: string): tf.Variable {
    const v = this.#vars.get(name);
    if (v === undefined) throw new Error(`transformer: no weight ${name}`);
    return v;
  }

  #layerTensors(stack: "encoder" | "decoder", i: number): tf.Tensor[] {
    const names = stack === "encoder" ? ENCODER_PARAMS : DECODER_PARAMS;
    return names.map((n) => this.#v(`${stack}.${i}.${n}`));
  }

  /** The sinusoidal table with at least `len` rows. */
  #positionTable = (len: number): Float32Array => {
    if (len > this.#positionRows) {
      this.#positionRows = Math.max(len, 2 * this.#positionRows);
      this.#positions = sinusoidTable(this.#positionRows, this.#dims.d);
    }
    return this.#positions;
  };

  #alive(): void {
    if (this.#disposed) throw new Error("transformer policy used after dispose()");
  }

  /** The dropout settings of a pass (`training` switches them on). */
  #runOptions(training: boolean): RunOptions {
    return {
      training,
      dropout: this.config.dropout,
      attentionDropout: this.config.attentionDropout,
      rng: this.#dropoutRng,
    };
  }

  /**
   * The embedded source and target rows (`rows` of each): one lookup packing both, with one
   * dropout mask, when they share a table, else one lookup each (source first). `embed` is
   * the host op or its device counterpart.
   */
  #embedPair<B>(
    embed: (table: tf.Tensor2D, blocks: B[]) => tf.Tensor2D,
    source: B,
    target: B,
    rows: [number, number],
  ): [tf.Tensor2D, tf.Tensor2D] {
    const table = (name: string) => this.#v(name) as tf.Tensor2D;
    if (this.#srcTable === this.#tgtTable) {
      return tf.split(embed(table(this.#srcTable), [source, target]), rows, 0) as [
        tf.Tensor2D,
        tf.Tensor2D,
      ];
    }
    return [embed(table(this.#srcTable), [source]), embed(table(this.#tgtTable), [target])];
  }

  /** `[B * T, d]` final decoder states of a teacher-forced pass. */
  #decoderStates(batch: TokenBatch, training: boolean): tf.Tensor2D {
    this.#alive();
    const [b, sLen] = batch.source.shape;
    const [b2, tLen] = batch.targetIn.shape;
    if (b !== b2) throw new RangeError(`source batch ${b} != target batch ${b2}`);
    if (isDeviceBackend()) return this.#deviceDecoderStates(batch, training);
    const pad = this.specials.pad;
    const srcIds = toInt32(batch.source);
    const tgtIds = toInt32(batch.targetIn);
    // null when nothing is padding: the attention softmax then skips the mask checks
    const srcMask = paddingMask(srcIds, pad);
    const tgtMask = paddingMask(tgtIds, pad);
    const run = this.#runOptions(training);
    const scale = Math.sqrt(this.#dims.d);
    const src: Lookup = { ids: srcIds, len: sLen };
    const tgt: Lookup = { ids: tgtIds, len: tLen };
    let [xs, xt] = this.#embedPair(
      (table, blocks: Lookup[]) => embedOp(table, blocks, scale, this.#positionTable, run),
      src,
      tgt,
      [b * sLen, b * tLen],
    );
    for (let i = 0; i < this.config.encoderLayers; i++) {
      xs = encoderLayerOp(xs, this.#layerTensors("encoder", i), b, sLen, this.#dims, srcMask, run);
    }
    const enc = layerNormOp(
      xs,
      this.#v("encoder.norm.g"),
      this.#v("encoder.norm.b"),
      this.#dims.eps,
    );
    for (let i = 0; i < this.config.decoderLayers; i++) {
      xt = decoderLayerOp(
        xt,
        enc,
        this.#layerTensors("decoder", i),
        b,
        tLen,
        sLen,
        this.#dims,
        tgtMask,
        srcMask,
        run,
      );
    }
    return layerNormOp(xt, this.#v("decoder.norm.g"), this.#v("decoder.norm.b"), this.#dims.eps);
  }

  /** {@link TransformerPolicy.#decoderStates} as tfjs ops, for a device backend (`../_nn/device.ts`). */
  #deviceDecoderStates(batch: TokenBatch, training: boolean): tf.Tensor2D {
    const [b, sLen] = batch.source.shape;
    const tLen = batch.targetIn.shape[1];
    const run = this.#runOptions(training);
    const scale = Math.sqrt(this.#dims.d);
    const source = tf.cast(batch.source, "int32") as tf.Tensor2D;
    const targetIn = tf.cast(batch.targetIn, "int32") as tf.Tensor2D;
    const masks = deviceMasks(source, targetIn, this.specials.pad);
    let [xs, xt] = this.#embedPair(
      (table, blocks: tf.Tensor2D[]) => embedOps(table, blocks, scale, this.#positionTable, run),
      source,
      targetIn,
      [b * sLen, b * tLen],
    );
    for (let i = 0; i < this.config.encoderLayers; i++) {
      xs = encoderLayerOps(xs, this.#layerTensors("encoder", i), b, sLen, this.#dims, masks, run);
    }
    const eps = this.#dims.eps;
    const enc = layerNormOps(xs, this.#v("encoder.norm.g"), this.#v("encoder.norm.b"), eps);
    for (let i = 0; i < this.config.decoderLayers; i++) {
      const params = this.#layerTensors("decoder", i);
      xt = decoderLayerOps(xt, enc, params, b, tLen, sLen, this.#dims, masks, run);
    }
    return layerNormOps(xt, this.#v("decoder.norm.g"), this.#v("decoder.norm.b"), eps);
  }

  /** Teacher-forced forward pass: logits `[B, T, V]` (+ values `[B, T]` with a value head). */
  forward(batch: TokenBatch, options: { training: boolean }): ForwardOutput {
    const [b, tLen] = batch.targetIn.shape;
    const h = this.#decoderStates(batch, options.training);
    const vocab = this.options.targetVocab;
    const logits = tf.reshape(tf.matMul(h, this.#v(this.#outTable), false, true), [
      b,
      tLen,
      vocab,
    ]) as tf.Tensor3D;
    if (!this.hasValueHead) return { logits };
    return { logits, values: this.#values(h, b, tLen) };
  }

  #values(h: tf.Tensor2D, b: number, tLen: number): tf.Tensor2D {
    return tf.reshape(tf.add(tf.matMul(h, this.#v("value.w")), this.#v("value.b")), [
      b,
      tLen,
    ]) as tf.Tensor2D;
  }

  /** `[B, T]` value estimates alone, without the output projection (requires the value head). */
  values(batch: TokenBatch, options: { training: boolean }): tf.Tensor2D {
    if (!this.hasValueHead) throw new TypeError("transformer: this policy has no value head");
    const [b, tLen] = batch.targetIn.shape;
    return this.#values(this.#decoderStates(batch, options.training), b, tLen);
  }

  /**
   * `[B, T]` log softmax(logits / temperature)(targetOut_t) (temperature default 1), exactly 0
   * at padding (`targetMask` 0).
   */
  tokenLogProbs(
    batch: TokenBatch,
    options: { training: boolean; temperature?: number },
  ): tf.Tensor2D {
    return this.smoothedTokenLogProbs(batch, { ...options, labelSmoothing: 0 });
  }

  /**
   * `[B, T]` label-smoothed log-likelihood per token, `(1 - eps) log p(y_t) + eps mean_v log p(v)`,
   * 0 at padding; with `labelSmoothing` 0 this is {@link TransformerPolicy.tokenLogProbs}.
   */
  smoothedTokenLogProbs(
    batch: TokenBatch,
    options: { training: boolean; labelSmoothing: number; temperature?: number },
  ): tf.Tensor2D {
    const eps = options.labelSmoothing;
    if (!(eps >= 0 && eps < 1)) {
      throw new RangeError(`labelSmoothing must be in [0, 1), got ${eps}`);
    }
    const temperature = options.temperature ?? 1;
    if (!(temperature > 0 && Number.isFinite(temperature))) {
      throw new RangeError(`temperature must be a positive number, got ${temperature}`);
    }
    return this.#outputLogProbs(
      this.#decoderStates(batch, options.training),
      batch,
      eps,
      temperature,
    );
  }

  /**
   * {@link TransformerPolicy.tokenLogProbs} and {@link TransformerPolicy.values} from one
   * pass through the encoder and decoder (one dropout draw; requires the value head).
   */
  tokenLogProbsAndValues(
    batch: TokenBatch,
    options: { training: boolean; temperature?: number },
  ): { logProbs: tf.Tensor2D; values: tf.Tensor2D } {
    if (!this.hasValueHead) throw new TypeError("transformer: this policy has no value head");
    const temperature = options.temperature ?? 1;
    if (!(temperature > 0 && Number.isFinite(temperature))) {
      throw new RangeError(`temperature must be a positive number, got ${temperature}`);
    }
    const [b, tLen] = batch.targetIn.shape;
    const states = this.#decoderStates(batch, options.training);
    return {
      logProbs: this.#outputLogProbs(states, batch, 0, temperature),
      values: this.#values(states, b, tLen),
    };
  }

  /** `[B, T]` smoothed log-likelihoods of the targets from the final decoder states (fused op). */
  #outputLogProbs(
    states: tf.Tensor2D,
    batch: TokenBatch,
    eps: number,
    temperature: number,
  ): tf.Tensor2D {
    const [b, tLen] = batch.targetOut.shape;
    // The output layer has no bias: logits / T are the logits of the states scaled by 1 / T.
    const h = temperature === 1 ? states : tf.div(states, temperature) as typeof states;
    if (isDeviceBackend()) {
      const lp = outputLogProbsOps(
        h,
        this.#v(this.#outTable) as tf.Tensor2D,
        tf.reshape(tf.cast(batch.targetOut, "int32"), [b * tLen]) as tf.Tensor1D,
        tf.reshape(tf.cast(tf.greater(batch.targetMask, 0), "float32"), [b * tLen]) as tf.Tensor1D,
        eps,
      );
      return tf.reshape(lp, [b, tLen]) as tf.Tensor2D;
    }
    const targets = toInt32(batch.targetOut);
    const maskValues = batch.targetMask.dataSync();
    const active = Uint8Array.from(maskValues, (m) => (m > 0 ? 1 : 0));
    const lp = outputLogProbsOp(h, this.#v(this.#outTable) as tf.Tensor2D, targets, active, eps);
    return tf.reshape(lp, [b, tLen]) as tf.Tensor2D;
  }

  /**
   * On a device backend (`../_nn/device.ts`), reads every weight back to the host (cached
   * there by tfjs until the weight changes), so that decoding and {@link TransformerPolicy.save}
   * can read them synchronously; nothing to do elsewhere.
   */
  async #hostWeights(): Promise<void> {
    if (isDeviceBackend()) await Promise.all([...this.#vars.values()].map((v) => v.data()));
  }

  /** A read-only view of the weights for decoding. */
  #inference(): InferenceModel {
    this.#alive();
    const layers = (stack: "encoder" | "decoder", n: number) =>
      Array.from({ length: n }, (_, i) => {
        const names = stack === "encoder" ? ENCODER_PARAMS : DECODER_PARAMS;
        return new ParamView(
          new Map(names.map((p) => [p, this.#v(`${stack}.${i}.${p}`) as tf.Tensor])),
        );
      });
    return {
      dims: this.#dims,
      vocab: this.options.targetVocab,
      specials: this.specials,
      srcEmbed: values(this.#v(this.#srcTable)),
      tgtEmbed: values(this.#v(this.#tgtTable)),
      scale: Math.sqrt(this.#dims.d),
      positions: this.#positionTable,
      encoder: layers("encoder", this.config.encoderLayers),
      encoderNorm: { g: values(this.#v("encoder.norm.g")), b: values(this.#v("encoder.norm.b")) },
      decoder: layers("decoder", this.config.decoderLayers),
      decoderNorm: { g: values(this.#v("decoder.norm.g")), b: values(this.#v("decoder.norm.b")) },
      output: this.#v(this.#outTable),
    };
  }

  /**
   * Runs `decodeGroup` over length-sorted groups of at most `max(1, floor(batchSize /
   * rowsPerSource))` sources (each ending with EOS) and puts results back in input order.
   */
  #bucketed<T>(
    sources: readonly number[][],
    rowsPerSource: number,
    batchSize: number,
    decodeGroup: (group: number[][], indices: number[]) => T[],
  ): T[] {
    const eos = this.specials.eos;
    const vocab = this.options.sourceVocab;
    const normalised = sources.map((s, i) => {
      for (const id of s) {
        if (!Number.isInteger(id) || id < 0 || id >= vocab) {
          throw new RangeError(`source ${i}: token id ${id} outside the vocabulary [0, ${vocab})`);
        }
      }
      return s.length > 0 && s[s.length - 1] === eos ? [...s] : [...s, eos];
    });
    const order = normalised.map((_, i) => i).sort((a, b) =>
      normalised[a].length - normalised[b].length || a - b
    );
    const perGroup = Math.max(1, Math.floor(batchSize / rowsPerSource));
    const out = new Array<T>(sources.length);
    for (let start = 0; start < order.length; start += perGroup) {
      const indices = order.slice(start, start + perGroup);
      let results: T[] = [];
      const mark = simdMark();
      try {
        tf.tidy(() => {
          results = decodeGroup(indices.map((i) => normalised[i]), indices);
        });
      } finally {
        // frees the attention caches the group's StepDecoder kept in the SIMD memory
        simdRelease(mark);
      }
      indices.forEach((i, k) => (out[i] = results[k]));
    }
    return out;
  }

  /** Greedy decoding, one output per source. */
  async greedy(sources: readonly number[][], options: DecodeOptions): Promise<Generation[]> {
    await this.#hostWeights();
    const maxLen = checkMaxLen(options.maxLen);
    const model = this.#inference();
    const choose = greedyChooser(model);
    const rng = new Rng(0);
    return this.#bucketed(sources, 1, options.batchSize ?? 64, (group) => {
      const enc = encode(model, group, rng);
      const rowSource = Int32Array.from(group, (_, i) => i);
      const decoder = new StepDecoder(model, enc, rowSource, maxLen);
      try {
        return runSearch(decoder, group.length, maxLen, model, choose).map(toGeneration);
      } finally {
        decoder.dispose();
      }
    });
  }

  /**
   * `n` samples per source (`result[i][j]`); sample j of source i is reproducible from the
   * seed alone. With `options.behaviourLogProbs` each carries its behaviour log-probabilities
   * (see {@link Generation.behaviourLogProbs}); the tokens are the same either way.
   */
  async sample(sources: readonly number[][], options: SampleOptions): Promise<Generation[][]> {
    await this.#hostWeights();
    const maxLen = checkMaxLen(options.maxLen);
    const { n, temperature, topK, topP, seed } = options;
    if (!Number.isInteger(n) || n < 1) {
      throw new RangeError(`n must be a positive integer, got ${n}`);
    }
    if (!(temperature > 0)) throw new RangeError(`temperature must be > 0, got ${temperature}`);
    if (!Number.isInteger(topK) || topK < 0) {
      throw new RangeError(`topK must be an integer >= 0, got ${topK}`);
    }
    if (!(topP > 0 && topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${topP}`);
    const model = this.#inference();
    const rng = new Rng(0);
    return this.#bucketed(sources, n, options.batchSize ?? 64, (group, indices) => {
      const enc = encode(model, group, rng);
      const rows = group.length * n;
      const rowSource = Int32Array.from({ length: rows }, (_, r) => Math.floor(r / n));
      const rowRngs = Array.from(
        { length: rows },
        (_, r) => new Rng(seed).fork(`${indices[Math.floor(r / n)]}/${r % n}`),
      );
      const choose = samplingChooser(
        model,
        { temperature, topK, topP },
        (row) => rowRngs[row],
        options.behaviourLogProbs === true,
      );
      const decoder = new StepDecoder(model, enc, rowSource, maxLen);
      let hyps: Generation[];
      try {
        hyps = runSearch(decoder, rows, maxLen, model, choose).map(toGeneration);
      } finally {
        decoder.dispose();
      }
      return group.map((_, i) => hyps.slice(i * n, (i + 1) * n));
    });
  }

  /** Beam search; returns the best finished hypothesis per source (score: length-penalised). */
  async beam(sources: readonly number[][], options: BeamOptions): Promise<Generation[]> {
    await this.#hostWeights();
    const maxLen = checkMaxLen(options.maxLen);
    const { beamSize, lengthPenalty } = options;
    if (!Number.isInteger(beamSize) || beamSize < 1) {
      throw new RangeError(`beamSize must be a positive integer, got ${beamSize}`);
    }
    if (!Number.isFinite(lengthPenalty)) {
      throw new RangeError(`lengthPenalty must be finite, got ${lengthPenalty}`);
    }
    const model = this.#inference();
    const rng = new Rng(0);
    return this.#bucketed(sources, beamSize, options.batchSize ?? 64, (group) => {
      const enc = encode(model, group, rng);
      const rowSource = Int32Array.from(
        { length: group.length * beamSize },
        (_, r) => Math.floor(r / beamSize),
      );
      const decoder = new StepDecoder(model, enc, rowSource, maxLen);
      try {
        return beamSearch(decoder, group.length, maxLen, model, { beamSize, lengthPenalty }).map(
          toGeneration,
        );
      } finally {
        decoder.dispose();
      }
    });
  }

  /** A new policy with the same architecture and a copy of the weights. */
  clone(): TransformerPolicy {
    return new TransformerPolicy(this.config, this.options, this.save());
  }

  /** Copies every weight from a policy of the same architecture. */
  copyWeightsFrom(other: Policy): void {
    if (other === this) return;
    this.load(other.save());
  }

  /** Serialises the config, vocabulary sizes and all weights. */
  save(): PolicyState {
    this.#alive();
    let total = 0;
    const weights: PolicyState["weights"] = [];
    for (const [name, v] of this.#vars) {
      weights.push({ name, shape: [...v.shape], offset: total });
      total += v.size;
    }
    const data = new Float32Array(total);
    let i = 0;
    for (const v of this.#vars.values()) {
      data.set(values(v), weights[i++].offset);
    }
    return {
      config: {
        model: "transformer",
        ...this.config,
        sourceVocab: this.options.sourceVocab,
        targetVocab: this.options.targetVocab,
        valueHead: this.options.valueHead,
        seed: this.options.seed,
        specials: { ...this.specials },
      },
      weights,
      data,
    };
  }

  /**
   * Restores weights saved by {@link TransformerPolicy.save}; names and shapes must match,
   * except that a state without a value head loads into a policy with one (the head keeps
   * its initialisation: how PPO starts a critic from the BC weights).
   */
  load(state: PolicyState): void {
    this.#alive();
    const index = new Map(state.weights.map((w) => [w.name, w]));
    const fresh = this.hasValueHead && !index.has("value.w") && !index.has("value.b");
    const shapes = new Map(
      [...this.#vars]
        .filter(([n]) => !(fresh && n.startsWith("value.")))
        .map(([n, v]) => [n, [...v.shape]]),
    );
    checkState(state, shapes);
    for (const [name, v] of this.#vars) {
      const w = index.get(name);
      if (w === undefined) continue;
      const t = tf.tensor(state.data.slice(w.offset, w.offset + v.size), v.shape, "float32");
      v.assign(t);
      t.dispose();
    }
  }

  /** Restarts the dropout stream from `seed` (see {@link Policy.reseed}). */
  reseed(seed: number): void {
    this.#dropoutRng = new Rng(seed).fork("dropout");
  }

  /** Frees every variable. Further use throws. */
  dispose(): void {
    if (this.#disposed) return;
    for (const v of this.#vars.values()) v.dispose();
    this.#vars.clear();
    this.#disposed = true;
  }
}

/** 1 where the id is not padding, or null when none is. */
function paddingMask(ids: Int32Array, pad: number): Uint8Array | null {
  if (!ids.includes(pad)) return null;
  return Uint8Array.from(ids, (id) => (id === pad ? 0 : 1));
}

function toInt32(t: tf.Tensor): Int32Array {
  const v = t.dataSync();
  return v instanceof Int32Array ? v : Int32Array.from(v as ArrayLike<number>);
}

function toGeneration(h: Hypothesis): Generation {
  const { tokens, logProbs, behaviourLogProbs, score } = h;
  return behaviourLogProbs === undefined
    ? { tokens, logProbs, score }
    : { tokens, logProbs, behaviourLogProbs, score };
}

function checkMaxLen(maxLen: number): number {
  if (!Number.isInteger(maxLen) || maxLen < 1) {
    throw new RangeError(`maxLen must be a positive integer, got ${maxLen}`);
  }
  return maxLen;
}

function checkConfig(c: TransformerConfig, o: BuildOptions): void {
  const positiveInts: (keyof TransformerConfig)[] = ["dModel", "heads", "ffn", "maxPositions"];
  for (const key of positiveInts) {
    const v = c[key] as number;
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`transformer: ${key} must be a positive integer, got ${v}`);
    }
  }
  for (const key of ["encoderLayers", "decoderLayers"] as const) {
    if (!Number.isInteger(c[key]) || c[key] < 0) {
      throw new RangeError(`transformer: ${key} must be an integer >= 0, got ${c[key]}`);
    }
  }
  if (c.dModel % c.heads !== 0) {
    throw new RangeError(`transformer: heads (${c.heads}) must divide dModel (${c.dModel})`);
  }
  for (const key of ["dropout", "attentionDropout", "labelSmoothing"] as const) {
    if (!(c[key] >= 0 && c[key] < 1)) {
      throw new RangeError(`transformer: ${key} must be in [0, 1), got ${c[key]}`);
    }
  }
  for (const key of ["sourceVocab", "targetVocab"] as const) {
    const v = o[key];
    if (!Number.isInteger(v) || v < 2) {
      throw new RangeError(`transformer: ${key} must be an integer >= 2, got ${v}`);
    }
  }
  for (const [name, id] of Object.entries(o.specials)) {
    if (!Number.isInteger(id) || id < 0 || id >= o.targetVocab) {
      throw new RangeError(`transformer: special id ${name}=${id} outside the target vocabulary`);
    }
  }
}

function checkState(state: PolicyState, shapes: ReadonlyMap<string, number[]>): void {
  const index = new Map(state.weights.map((w) => [w.name, w]));
  const problems: string[] = [];
  for (const [name, shape] of shapes) {
    const w = index.get(name);
    if (w === undefined) problems.push(`missing weight ${name}`);
    else if (w.shape.join("x") !== shape.join("x")) {
      problems.push(`${name} has shape [${w.shape}], expected [${shape}]`);
    } else if (w.offset < 0 || w.offset + shape.reduce((a, b) => a * b, 1) > state.data.length) {
      problems.push(`${name} lies outside the data buffer`);
    }
  }
  for (const name of index.keys()) {
    if (!shapes.has(name)) problems.push(`unexpected weight ${name}`);
  }
  if (problems.length > 0) {
    throw new RangeError(
      `transformer: saved state does not match the architecture: ${problems.join("; ")}`,
    );
  }
}

/**
 * Rebuilds a policy from {@link TransformerPolicy.save}'s output alone (its config holds the
 * architecture, vocabulary sizes, value head and special ids).
 */
export function restoreTransformer(state: PolicyState): TransformerPolicy {
  const c = state.config as Record<string, unknown>;
  const config = { ...TRANSFORMER_DEFAULTS } as Record<string, unknown>;
  for (const key of Object.keys(TRANSFORMER_DEFAULTS)) if (key in c) config[key] = c[key];
  const options: BuildOptions = {
    sourceVocab: Number(c.sourceVocab),
    targetVocab: Number(c.targetVocab),
    valueHead: Boolean(c.valueHead),
    seed: Number(c.seed ?? 0),
    specials: c.specials as SpecialIds,
  };
  return new TransformerPolicy(config as unknown as TransformerConfig, options, state);
}

/**
 * Draws a token id from a row of log-probabilities (or logits) with temperature, top-k and
 * nucleus truncation, using one draw from `rng`; the same sampler the policy uses.
 */
export function sampleToken(
  logProbs: Float32Array,
  options: { temperature: number; topK: number; topP: number },
  rng: Rng,
): number {
  return new RowSampler(logProbs.length, options).sample(logProbs, 0, rng);
}
