/**
 * Incremental decoding of the transformer (`policy.ts`): an encoder pass per batch of
 * sources, then one decoder step per output position with a key/value cache
 * (self-attention keys and values appended per step, cross-attention keys and values
 * computed once per batch). The searches that drive it (greedy, sampling, beam) are in
 * `search.ts`.
 *
 * Only the rows that are still running are computed at each step (finished rows drop
 * out of the matrix products), and the output projection is applied to the newest
 * position only. Matrix products go through `matmul` (OpenBLAS directly on `blas`);
 * attention over the cache runs in WebAssembly SIMD, whose memory holds the caches
 * (a plain loop when the head width is not a multiple of 4); the per-step work buffers
 * and the logits are allocated once per decoder. No tensor outlives a call.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { appendAll } from "../../../core/append.ts";
import type { Rng } from "../../../core/random.ts";
import type { SpecialIds } from "../../../core/types.ts";
import { splitHeads } from "../../_nn/attention.ts";
import type { RunOptions } from "../../_nn/dropout.ts";
import { addInto } from "../../_nn/elementwise.ts";
import { embedRow } from "../../_nn/embedding.ts";
import { matmul } from "../../_nn/gemm.ts";
import { encoderLayerForward } from "../../_nn/layers.ts";
import { layerNormForward } from "../../_nn/layer_norm.ts";
import type { Dims, ParamView } from "../../_nn/layer_params.ts";
import {
  giveSimdMatrix,
  simdAlloc,
  simdAttend,
  simdF32,
  type SimdMatrix,
  simdU8,
  takeSimdMatrix,
} from "../../_nn/simd.ts";

/** A read-only snapshot of the weights that decoding needs. */
export interface InferenceModel {
  /** Model dimensions. */
  dims: Dims;
  /** Target vocabulary size. */
  vocab: number;
  /** Special ids. */
  specials: SpecialIds;
  /** Source embedding table values `[Vs, d]`. */
  srcEmbed: Float32Array;
  /** Target embedding table values `[Vt, d]`. */
  tgtEmbed: Float32Array;
  /** Embedding scale (sqrt(d)). */
  scale: number;
  /** Sinusoidal table with at least `len` rows. */
  positions(len: number): Float32Array;
  /** Encoder layers. */
  encoder: ParamView[];
  /** Final encoder layer norm. */
  encoderNorm: { g: Float32Array; b: Float32Array };
  /** Decoder layers. */
  decoder: ParamView[];
  /** Final decoder layer norm. */
  decoderNorm: { g: Float32Array; b: Float32Array };
  /** Output projection `[Vt, d]` (used with transposeB). */
  output: tf.Tensor;
}

/** An encoded batch of sources. */
export interface Encoded {
  /** Number of sources. */
  b: number;
  /** Padded source length (EOS included). */
  sLen: number;
  /** `[b * sLen]`: 1 at real source tokens. */
  srcMask: Uint8Array;
  /** Per decoder layer: cross-attention keys, head-major `[b, heads, sLen, dk]`. */
  keys: Float32Array[];
  /** Per decoder layer: cross-attention values, head-major `[b, heads, sLen, dk]`. */
  vals: Float32Array[];
}

const INFERENCE: Omit<RunOptions, "rng"> = { training: false, dropout: 0, attentionDropout: 0 };

/** Runs the encoder over `sources` (each already ending with EOS) and precomputes cross-attention keys/values. */
export function encode(model: InferenceModel, sources: readonly number[][], rng: Rng): Encoded {
  const { d } = model.dims;
  const b = sources.length;
  const sLen = Math.max(1, ...sources.map((s) => s.length));
  const ids = new Int32Array(b * sLen);
  const srcMask = new Uint8Array(b * sLen);
  for (let i = 0; i < b; i++) {
    const s = sources[i];
    for (let j = 0; j < s.length; j++) {
      ids[i * sLen + j] = s[j];
      srcMask[i * sLen + j] = s[j] === model.specials.pad ? 0 : 1;
    }
  }
  let x = embedRows(model.srcEmbed, ids, sLen, model.scale, model.positions(sLen), d, 0);
  const run = { ...INFERENCE, rng };
  for (const layer of model.encoder) {
    const forward = encoderLayerForward(x, b, sLen, layer, model.dims, srcMask, run);
    forward.release(); // no backward pass: the work buffers go back to their pools
    x = forward.y;
  }
  const enc =
    layerNormForward(x, d, model.encoderNorm.g, model.encoderNorm.b, model.dims.eps, false).y;
  const keys: Float32Array[] = [];
  const vals: Float32Array[] = [];
  const { heads } = model.dims;
  for (const layer of model.decoder) {
    const kv = matmul(
      { data: enc, shape: [b * sLen, d] },
      layer.t("kv.w"),
      false,
      false,
      layer.tensor("kv.b"),
    );
    keys.push(splitHeads({ buf: kv, stride: 2 * d, offset: 0 }, b, sLen, heads, d / heads));
    vals.push(splitHeads({ buf: kv, stride: 2 * d, offset: d }, b, sLen, heads, d / heads));
  }
  return { b, sLen, srcMask, keys, vals };
}

/** `table[id] * scale + positions[pos]` for each id, with position `i % len + posOffset`. */
function embedRows(
  table: Float32Array,
  ids: Int32Array,
  len: number,
  scale: number,
  pe: Float32Array,
  d: number,
  posOffset: number,
): Float32Array {
  const vocab = table.length / d;
  const out = new Float32Array(ids.length * d);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id < 0 || id >= vocab) {
      throw new RangeError(`token id ${id} outside the vocabulary [0, ${vocab})`);
    }
    embedRow(table, id * d, scale, pe, ((i % len) + posOffset) * d, out, i * d, d);
  }
  return out;
}

/** Per-step work buffers of a {@link StepDecoder}, sized for all of its rows. */
interface StepBuffers {
  x: Float32Array;
  ln: Float32Array;
  qkv: Float32Array;
  att: Float32Array;
  u: Float32Array;
  q: Float32Array;
  h: Float32Array;
  logits: Float32Array;
}

/**
 * The decoder run one position at a time for `rows` rows, each attached to a source
 * (`rowSource`), with per-layer self-attention caches. The work buffers (activations and
 * the logits) are allocated once per decoder and reused at every step.
 */
export class StepDecoder {
  readonly #model: InferenceModel;
  readonly #enc: Encoded;
  readonly #rowSource: Int32Array;
  readonly #maxSteps: number;
  readonly #keys: Float32Array[];
  readonly #vals: Float32Array[];
  readonly #buf: StepBuffers;
  /** The feed-forward hidden layer (`#buf.h`), where the ReLU runs vectorised. */
  readonly #hidden: SimdMatrix;
  /** The SIMD matrices to give back in {@link StepDecoder.dispose}. */
  readonly #matrices: SimdMatrix[];
  #disposed = false;
  readonly #scores: Float64Array;
  readonly #qh: Float64Array;
  readonly #acc: Float64Array;
  /** Byte offsets in the SIMD module's memory, when attention runs there (dk % 4 == 0). */
  readonly #simd?: {
    keys: number[];
    vals: number[];
    crossKeys: number[];
    crossVals: number[];
    mask: number;
    q: number;
    out: number;
    scores: number;
  };

  /** Prepares caches for `rowSource.length` rows and up to `maxSteps` positions. */
  constructor(model: InferenceModel, enc: Encoded, rowSource: Int32Array, maxSteps: number) {
    this.#model = model;
    this.#enc = enc;
    this.#rowSource = rowSource;
    this.#maxSteps = maxSteps;
    const rows = rowSource.length;
    const { d, ffn, heads } = model.dims;
    const dk = d / heads;
    const size = rows * maxSteps * d;
    if (dk % 4 === 0) {
      // The caches live in the SIMD module's memory (freed by the caller's simdRelease).
      const layers = model.decoder.length;
      const block = (floats: number) => Array.from({ length: layers }, () => simdAlloc(4 * floats));
      const simd = {
        keys: block(size),
        vals: block(size),
        crossKeys: block(enc.keys[0]?.length ?? 0),
        crossVals: block(enc.vals[0]?.length ?? 0),
        mask: simdAlloc(enc.srcMask.length),
        q: simdAlloc(4 * rows * 3 * d),
        out: simdAlloc(4 * rows * d),
        scores: simdAlloc(4 * Math.max(maxSteps, enc.sLen)),
      };
      const f = simdF32();
      for (let l = 0; l < layers; l++) {
        f.set(enc.keys[l], simd.crossKeys[l] / 4);
        f.set(enc.vals[l], simd.crossVals[l] / 4);
      }
      simdU8().set(enc.srcMask, simd.mask);
      this.#simd = simd;
      this.#keys = [];
      this.#vals = [];
    } else {
      this.#keys = model.decoder.map(() => new Float32Array(size));
      this.#vals = model.decoder.map(() => new Float32Array(size));
    }
    const hidden = takeSimdMatrix(rows, ffn);
    const logits = takeSimdMatrix(rows, model.vocab);
    this.#matrices = [hidden, logits];
    this.#hidden = hidden;
    this.#buf = {
      x: new Float32Array(rows * d),
      ln: new Float32Array(rows * d),
      qkv: new Float32Array(rows * 3 * d),
      att: new Float32Array(rows * d),
      u: new Float32Array(rows * d),
      q: new Float32Array(rows * d),
      h: hidden.data,
      // in SIMD memory: the per-step log-softmax statistics run there without a copy
      logits: logits.data,
    };
    this.#scores = new Float64Array(Math.max(maxSteps, enc.sLen));
    this.#qh = new Float64Array(d / heads);
    this.#acc = new Float64Array(d / heads);
  }

  /**
   * Feeds `tokens[i]` at position `t` to row `active[i]` and returns the next-token logits
   * `[active.length, V]`: a view of the decoder's buffer, overwritten by the next step.
   */
  step(active: Int32Array, tokens: Int32Array, t: number): Float32Array {
    if (this.#disposed) throw new Error("StepDecoder used after dispose()");
    if (t >= this.#maxSteps) throw new RangeError(`step ${t} beyond the cache (${this.#maxSteps})`);
    const model = this.#model;
    const { d, heads, eps, ffn } = model.dims;
    const dk = d / heads;
    const a = active.length;
    const scale = 1 / Math.sqrt(dk);
    const buf = this.#buf;
    const view = (b: Float32Array, width: number) => b.subarray(0, a * width);
    const x = view(buf.x, d);
    const ln = view(buf.ln, d);
    const qkv = view(buf.qkv, 3 * d);
    const att = view(buf.att, d);
    const u = view(buf.u, d);
    const q = view(buf.q, d);
    const h = view(buf.h, ffn);
    const pe = model.positions(t + 1);
    const vocab = model.tgtEmbed.length / d;
    for (let i = 0; i < a; i++) {
      const id = tokens[i];
      if (id < 0 || id >= vocab) {
        throw new RangeError(`token id ${id} outside the vocabulary [0, ${vocab})`);
      }
      embedRow(model.tgtEmbed, id * d, model.scale, pe, t * d, x, i * d, d);
    }
    const rowStride = this.#maxSteps * d;
    const headStride = this.#maxSteps * dk;
    const relu = model.dims.activation === "relu";
    for (let l = 0; l < model.decoder.length; l++) {
      const p = model.decoder[l];
      // masked self-attention over the cache
      layerNormForward(x, d, p.a("ln1.g"), p.a("ln1.b"), eps, false, ln);
      affine(ln, a, d, p, "qkv", qkv);
      const [keys, vals] = this.#cache(l);
      for (let i = 0; i < a; i++) {
        storeKeyValue(
          qkv,
          i * 3 * d,
          d,
          keys,
          vals,
          active[i] * rowStride + t * dk,
          headStride,
          heads,
          dk,
        );
      }
      this.#attend(l, false, active, qkv, 3 * d, t + 1, scale, att);
      affine(att, a, d, p, "out", u);
      addInto(x, u);
      // cross-attention to the encoder
      layerNormForward(x, d, p.a("lnc.g"), p.a("lnc.b"), eps, false, ln);
      affine(ln, a, d, p, "q", q);
      this.#attend(l, true, active, q, d, this.#enc.sLen, scale, att);
      affine(att, a, d, p, "cout", u);
      addInto(x, u);
      // feed-forward
      layerNormForward(x, d, p.a("ln2.g"), p.a("ln2.b"), eps, false, ln);
      affine(ln, a, d, p, "ff1", h);
      if (relu) this.#hidden.relu(0, a * ffn);
      else geluArray(h);
      affine(h, a, ffn, p, "ff2", u);
      addInto(x, u);
    }
    layerNormForward(x, d, model.decoderNorm.g, model.decoderNorm.b, eps, false, ln);
    const logits = view(buf.logits, model.vocab);
    return matmul({ data: ln, shape: [a, d] }, model.output, false, true, undefined, false, logits);
  }

  /**
   * Returns the decoder's SIMD matrices (the logits buffer among them) to their pool; the
   * decoder and any logits it returned must not be used afterwards.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const m of this.#matrices) giveSimdMatrix(m);
  }

  /** The self-attention key and value caches of layer `l` (views: valid until memory grows). */
  #cache(l: number): [Float32Array, Float32Array] {
    const simd = this.#simd;
    if (simd === undefined) return [this.#keys[l], this.#vals[l]];
    const f = simdF32();
    const size = this.#rowSource.length * this.#maxSteps * this.#model.dims.d;
    return [
      f.subarray(simd.keys[l] / 4, simd.keys[l] / 4 + size),
      f.subarray(simd.vals[l] / 4, simd.vals[l] / 4 + size),
    ];
  }

  /**
   * Attention of each active row in decoder layer `l`: row i's query (at `i * qStride` in
   * `queries`) over the first `len` positions of its own self-attention cache or, when `cross`,
   * over its source's encoder keys and values under the source mask. Writes `[a, d]` into `att`.
   * Both stores are head-major with `capacity` positions per slot (a row's or a source's).
   */
  #attend(
    l: number,
    cross: boolean,
    active: Int32Array,
    queries: Float32Array,
    qStride: number,
    len: number,
    scale: number,
    att: Float32Array,
  ): void {
    const { d, heads } = this.#model.dims;
    const dk = d / heads;
    const a = active.length;
    const capacity = cross ? this.#enc.sLen : this.#maxSteps;
    const headStride = capacity * dk;
    const slot = (i: number) => cross ? this.#rowSource[active[i]] : active[i];
    const simd = this.#simd;
    if (simd !== undefined) {
      const keys = cross ? simd.crossKeys[l] : simd.keys[l];
      const vals = cross ? simd.crossVals[l] : simd.vals[l];
      simdF32().set(queries, simd.q / 4);
      for (let i = 0; i < a; i++) {
        const s = slot(i);
        simdAttend(
          simd.q + 4 * i * qStride,
          keys + 4 * s * capacity * d,
          vals + 4 * s * capacity * d,
          4 * headStride,
          len,
          cross ? simd.mask + s * capacity : 0,
          heads,
          dk,
          scale,
          simd.scores,
          simd.out + 4 * i * d,
        );
      }
      att.set(simdF32().subarray(simd.out / 4, simd.out / 4 + a * d));
      return;
    }
    const [keys, vals] = cross ? [this.#enc.keys[l], this.#enc.vals[l]] : this.#cache(l);
    const mask = cross ? this.#enc.srcMask : null;
    for (let i = 0; i < a; i++) {
      const s = slot(i);
      attendOne(
        queries,
        i * qStride,
        keys,
        vals,
        s * capacity * d,
        headStride,
        len,
        mask,
        s * capacity,
        heads,
        dk,
        scale,
        this.#scores,
        this.#qh,
        this.#acc,
        att,
        i * d,
      );
    }
  }

  /** Copies the caches of rows `from[i]` to rows `to[i]` for positions `< len` (beam reordering). */
  copyRows(to: Int32Array, from: Int32Array, len: number): void {
    const { d, heads } = this.#model.dims;
    const dk = d / heads;
    const span = len * dk;
    const headStride = this.#maxSteps * dk;
    const rowStride = this.#maxSteps * d;
    const moved: number[] = [];
    for (let i = 0; i < to.length; i++) if (to[i] !== from[i]) moved.push(i);
    if (moved.length === 0) return;
    const tmp = new Float32Array(moved.length * heads * span);
    const caches: Float32Array[] = [];
    for (let l = 0; l < this.#model.decoder.length; l++) appendAll(caches, this.#cache(l));
    for (const cache of caches) {
      moved.forEach((i, k) => {
        for (let h = 0; h < heads; h++) {
          const o = from[i] * rowStride + h * headStride;
          tmp.set(cache.subarray(o, o + span), (k * heads + h) * span);
        }
      });
      moved.forEach((i, k) => {
        for (let h = 0; h < heads; h++) {
          const o = (k * heads + h) * span;
          cache.set(tmp.subarray(o, o + span), to[i] * rowStride + h * headStride);
        }
      });
    }
  }
}

/** `input W + b` over the `[rows, width]` rows of `input`, with the layer's `<name>.w` and `<name>.b`, into `out`. */
function affine(
  input: Float32Array,
  rows: number,
  width: number,
  p: ParamView,
  name: string,
  out: Float32Array,
): void {
  matmul(
    { data: input, shape: [rows, width] },
    p.t(`${name}.w`),
    false,
    false,
    p.tensor(`${name}.b`),
    false,
    out,
  );
}

/** Appends one row's new key and value (from its fused QKV projection) to the head-major cache. */
function storeKeyValue(
  qkv: Float32Array,
  src: number,
  d: number,
  keys: Float32Array,
  vals: Float32Array,
  dst: number,
  headStride: number,
  heads: number,
  dk: number,
): void {
  for (let h = 0; h < heads; h++) {
    const s = src + h * dk;
    const o = dst + h * headStride;
    for (let j = 0; j < dk; j++) {
      keys[o + j] = qkv[s + d + j];
      vals[o + j] = qkv[s + 2 * d + j];
    }
  }
}

function geluArray(x: Float32Array): Float32Array {
  const c = Math.sqrt(2 / Math.PI);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    x[i] = 0.5 * v * (1 + Math.tanh(c * (v + 0.044715 * v * v * v)));
  }
  return x;
}

/**
 * One query row attending over `n` keys stored head-major: the keys of head h are at
 * `keys[base + h * headStride + s * dk ...]` (values likewise in `vals`), with an optional
 * key mask at `mask[mOff + s]`. Writes the `[heads * dk]` output into `out` at `outOff`.
 * `qh` and `acc` are scratch buffers of at least `dk` floats.
 */
export function attendOne(
  q: Float32Array,
  qOff: number,
  keys: Float32Array,
  vals: Float32Array,
  base: number,
  headStride: number,
  n: number,
  mask: Uint8Array | null,
  mOff: number,
  heads: number,
  dk: number,
  scale: number,
  scores: Float64Array,
  qh: Float64Array,
  acc: Float64Array,
  out: Float32Array,
  outOff: number,
): void {
  const dk4 = dk - (dk % 4);
  for (let h = 0; h < heads; h++) {
    const qo = qOff + h * dk;
    for (let i = 0; i < dk; i++) {
      qh[i] = q[qo + i] * scale;
      acc[i] = 0;
    }
    let max = -Infinity;
    for (let s = 0; s < n; s++) {
      if (mask !== null && mask[mOff + s] === 0) {
        scores[s] = -Infinity;
        continue;
      }
      const ko = base + h * headStride + s * dk;
      let a0 = 0;
      let a1 = 0;
      let a2 = 0;
      let a3 = 0;
      let i = 0;
      for (; i < dk4; i += 4) {
        a0 += qh[i] * keys[ko + i];
        a1 += qh[i + 1] * keys[ko + i + 1];
        a2 += qh[i + 2] * keys[ko + i + 2];
        a3 += qh[i + 3] * keys[ko + i + 3];
      }
      for (; i < dk; i++) a0 += qh[i] * keys[ko + i];
      const v = (a0 + a1) + (a2 + a3);
      scores[s] = v;
      if (v > max) max = v;
    }
    const oo = outOff + h * dk;
    if (max === -Infinity) {
      for (let i = 0; i < dk; i++) out[oo + i] = 0;
      continue;
    }
    let sum = 0;
    for (let s = 0; s < n; s++) {
      const e = scores[s] === -Infinity ? 0 : Math.exp(scores[s] - max);
      scores[s] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let s = 0; s < n; s++) {
      const w = scores[s] * inv;
      if (w === 0) continue;
      const vo = base + h * headStride + s * dk;
      let i = 0;
      for (; i < dk4; i += 4) {
        acc[i] += w * vals[vo + i];
        acc[i + 1] += w * vals[vo + i + 1];
        acc[i + 2] += w * vals[vo + i + 2];
        acc[i + 3] += w * vals[vo + i + 3];
      }
      for (; i < dk; i++) acc[i] += w * vals[vo + i];
    }
    for (let i = 0; i < dk; i++) out[oo + i] = acc[i];
  }
}
