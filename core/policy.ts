/**
 * The policy contract: what a model plugin builds and what losses, Grow, Improve and
 * PPO use. Tensor shapes are written `[B, T]` (batch, target length), `[B, S]`
 * (source length) and `[B, T, V]` (vocabulary).
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import type { SpecialIds } from "./types.ts";

/** A padded batch of token ids. Padding id is 0 and always masked. */
export interface TokenBatch {
  /** `[B, S]` int32 source ids, each row ending with EOS, right-padded. */
  source: tf.Tensor2D;
  /** `[B, T]` int32 decoder inputs: BOS y_1 ... y_{T-1}. */
  targetIn: tf.Tensor2D;
  /** `[B, T]` int32 decoder targets: y_1 ... y_T (EOS where the output ended). */
  targetOut: tf.Tensor2D;
  /** `[B, T]` float32, 1 at real target positions, 0 at padding. */
  targetMask: tf.Tensor2D;
}

/** The outputs of a teacher-forced forward pass. */
export interface ForwardOutput {
  /** `[B, T, V]` unnormalised logits. */
  logits: tf.Tensor3D;
  /** `[B, T]` value estimates, when the model has a value head. */
  values?: tf.Tensor2D;
}

/** One decoded output. */
export interface Generation {
  /** Output ids without BOS; ends with EOS unless `maxLen` was reached. */
  tokens: number[];
  /** log pi(token_t | ...) of each token under the model itself (temperature 1, no truncation). */
  logProbs: number[];
  /** Score used to rank beams (length-penalised log-probability); greedy/sample: sum of logProbs. */
  score: number;
}

/** Options shared by every decoding method. */
export interface DecodeOptions {
  /** Maximum number of output tokens (EOS included). */
  maxLen: number;
  /** Sources per decoding batch (memory/speed trade-off). */
  batchSize?: number;
}

/** Options of ancestral sampling. */
export interface SampleOptions extends DecodeOptions {
  /** Samples per source. */
  n: number;
  /** Softmax temperature (> 0). */
  temperature: number;
  /** Keep only the k most likely tokens (0: all). */
  topK: number;
  /** Nucleus sampling: keep the smallest set with probability >= p (1: all). */
  topP: number;
  /** Seed of this call's random stream. */
  seed: number;
}

/** Options of beam search. */
export interface BeamOptions extends DecodeOptions {
  /** Beam width. */
  beamSize: number;
  /** Length penalty alpha: score = logp / ((5 + len) / 6)^alpha (GNMT). */
  lengthPenalty: number;
}

/** A trainable sequence-to-sequence policy. */
export interface Policy {
  /** Special token ids (shared with the tokenizer). */
  readonly specials: SpecialIds;
  /** Trainable variables (value head included when present). */
  readonly variables: tf.Variable[];
  /** Whether the model has a value head. */
  readonly hasValueHead: boolean;
  /** Teacher-forced forward pass (call inside `tf.tidy` or an optimizer step). */
  forward(batch: TokenBatch, options: { training: boolean }): ForwardOutput;
  /**
   * `[B, T]` log pi(targetOut_t | ...), 0 at padding (call inside `tf.tidy`); with
   * `temperature` T (default 1) log softmax(logits / T) at the targets, the distribution a
   * sample drawn at temperature T came from.
   */
  tokenLogProbs(
    batch: TokenBatch,
    options: { training: boolean; temperature?: number },
  ): tf.Tensor2D;
  /** n samples for each source: result[i][j] is sample j of source i. */
  sample(sources: readonly number[][], options: SampleOptions): Promise<Generation[][]>;
  /** Greedy decoding, one output per source. */
  greedy(sources: readonly number[][], options: DecodeOptions): Promise<Generation[]>;
  /** Beam search, the best beam per source. */
  beam(sources: readonly number[][], options: BeamOptions): Promise<Generation[]>;
  /** A new policy with the same architecture and a copy of the weights (e.g. the frozen BC reference). */
  clone(): Policy;
  /** Copies every weight from a policy of the same architecture. */
  copyWeightsFrom(other: Policy): void;
  /** Serialises the architecture and weights. */
  save(): PolicyState;
  /** Restores weights saved by `save` (the architecture must match). */
  load(state: PolicyState): void;
  /** Frees every tensor the policy holds. */
  dispose(): void;
  /**
   * Optional: restarts the policy's own random stream (dropout) from `seed`. Training loops
   * call it before every step, so a step's randomness depends only on the loop's seed and
   * the step number, and a resumed run repeats an uninterrupted one exactly.
   */
  reseed?(seed: number): void;
}

/** A saved policy: its config as JSON and its weights as one float32 buffer. */
export interface PolicyState {
  /** The model plugin's config and vocabulary sizes. */
  config: Record<string, unknown>;
  /** Weight names, shapes and offsets into `data` (in floats). */
  weights: { name: string; shape: number[]; offset: number }[];
  /** All weights, concatenated. */
  data: Float32Array;
}

/** What a model plugin's `create` returns: builds a policy once vocabularies are known. */
export interface ModelFactory {
  /** Builds a freshly initialised policy (initialisation seeded by `seed`). */
  build(options: {
    sourceVocab: number;
    targetVocab: number;
    specials: SpecialIds;
    valueHead: boolean;
    seed: number;
  }): Policy;
}

/** One stored Grow row (a line of `grow_<g>.jsonl`). Written once, never mutated. */
export interface GrowRow {
  /** Source sentence. */
  source: string;
  /** The output: a policy sample or the reference. */
  hypothesis: string;
  /** Reference translation of the source. */
  reference: string;
  /** Reward of the hypothesis, in [0, 1]. */
  reward: number;
  /** Output token ids (without BOS, ending with EOS when the output ended). */
  tokens: number[];
  /** Behaviour log-probabilities of `tokens` under the policy that produced the Grow set. */
  logProbs: number[];
  /** `sample` (policy output) or `reference` (the original pair). */
  origin: "sample" | "reference";
  /**
   * Optional: the sampling temperature T of the Grow step, recorded when `logProbs` are the
   * tempered log mu(a_t) = log softmax(logits_t / T)[a_t] of the distribution the samples
   * were drawn from (references: the same, teacher-forced). Absent (Grow files written
   * before it existed): `logProbs` are the untempered log pi(a_t) (T = 1).
   */
  temperature?: number;
}

/** What a loss sees for one batch of Grow rows (tensors are owned by the caller). */
export interface LossInput {
  /** The padded batch (targets are the rows' tokens). */
  batch: TokenBatch;
  /** `[B]` rewards of the rows. */
  rewards: tf.Tensor1D;
  /** `[B, T]` behaviour log-probabilities (0 at padding). */
  behaviourLogProbs: tf.Tensor2D;
  /** `[B]` mean reward of each row's source over the Grow set (a per-source baseline). */
  sourceMeanRewards: tf.Tensor1D;
  /** The rows themselves. */
  rows: readonly GrowRow[];
}

/** Context a loss gets before an Improve step starts. */
export interface LossContext {
  /** The policy being trained. */
  policy: Policy;
  /** The frozen BC policy (for KL terms or GOLD's p_BC); do not train or dispose it. */
  bcPolicy: Policy;
  /** Improve step (1-based) and the number of Improve steps. */
  improve: number;
  /** Number of Improve steps of this Grow step. */
  improveSteps: number;
  /**
   * The label smoothing BC was trained with: losses whose own setting is unset (null) keep
   * it, so Improve does not silently change the objective's regularisation.
   */
  labelSmoothing?: number;
}

/**
 * An offline loss: what a loss plugin's `create` returns. `compute` runs inside the
 * gradient tape; gradients flow to `policy.variables` and the loss's own `variables`.
 */
export interface Loss {
  /** Extra trainable variables (e.g. a temperature or a value network); [] if none. */
  readonly variables: tf.Variable[];
  /** Called before each Improve step's optimisation starts. */
  prepare(ctx: LossContext): void;
  /**
   * The scalar loss of a batch. `record(name, value)` logs a diagnostic (e.g. "kl"),
   * averaged over steps under `improve/<name>`.
   */
  compute(input: LossInput, record: (name: string, value: number) => void): tf.Scalar;
  /** Called after every optimizer step (e.g. to sync a lagged copy every K steps). */
  afterStep(step: number): void;
  /** Frees whatever the loss holds. */
  dispose(): void;
}
