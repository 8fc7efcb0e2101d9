/**
 * Every contract of the framework: the data types, the narrow interface each plugin kind
 * implements (the core only talks to plugins through these), the policy that a model plugin
 * builds and losses, Grow, Improve and PPO use, and the settings of each phase.
 *
 * This file is the floor every other file stands on: it imports no other file of the
 * project (a test checks it). Tensor shapes are written `[B, T]` (batch, target length),
 * `[B, S]` (source length) and `[B, T, V]` (vocabulary).
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";

// The tfjs-core tensor types the contracts use, under the framework's own names, so that the
// public API (mod.ts) exports every type it refers to. Each is an alias, not a new type: a
// `tf.Tensor2D` of "@tensorflow/tfjs-core" is a `Tensor2D` here, and the other way round.

/** A rank-0 tensor, e.g. a loss value: an alias of tfjs-core's `tf.Scalar`. */
export type Scalar = tf.Scalar;

/** A rank-1 tensor, e.g. a batch's `[B]` rewards: an alias of tfjs-core's `tf.Tensor1D`. */
export type Tensor1D = tf.Tensor1D;

/** A rank-2 tensor, e.g. `[B, T]` token ids: an alias of tfjs-core's `tf.Tensor2D`. */
export type Tensor2D = tf.Tensor2D;

/** A rank-3 tensor, e.g. `[B, T, V]` logits: an alias of tfjs-core's `tf.Tensor3D`. */
export type Tensor3D = tf.Tensor3D;

/** A trainable weight of a policy or a loss: an alias of tfjs-core's `tf.Variable`. */
export type Variable = tf.Variable;

/** A translation pair: the source sentence and its reference translation. */
export interface Example {
  /** Source-language text. */
  source: string;
  /** Reference translation in the target language. */
  reference: string;
}

/** The three splits a data plugin returns. Deterministic for a given config. */
export interface Splits {
  /** Training pairs (BC data and the Grow step's sources). */
  train: Example[];
  /** Validation pairs (early stopping, "while reward improves on D_eval"). */
  valid: Example[];
  /** Held-out test pairs (final report only). */
  test: Example[];
}

/**
 * The splits an experiment's runs see (made by core/splits.ts from a data plugin's): `valid`
 * is the half of validation whose rewards are reported, `select` the disjoint half used for
 * model selection; `test` holds no source that also occurs in training.
 */
export interface RunSplits extends Splits {
  /** Validation pairs for model selection (early stopping, best checkpoint). */
  select: Example[];
}

/** A data plugin: loads a corpus and splits it. */
export interface DataSource {
  /** Loads, cleans, deduplicates, filters and splits the corpus. */
  load(): Promise<Splits>;
}

/** Which side of the translation a text belongs to (matters for separate vocabularies). */
export type Side = "source" | "target";

/** Ids of the special tokens every tokenizer reserves. */
export interface SpecialIds {
  /** Padding, always id 0. */
  pad: number;
  /** Beginning of sequence (decoder start). */
  bos: number;
  /** End of sequence. */
  eos: number;
  /** Unknown symbol. */
  unk: number;
}

/** A subword tokenizer, trained on the training split. */
export interface Tokenizer {
  /** Ids of the special tokens. */
  readonly specials: SpecialIds;
  /** Learns the vocabulary from training texts of both sides. */
  train(corpus: { sources: readonly string[]; targets: readonly string[] }): void;
  /** Whether `train` or `load` has run. */
  readonly trained: boolean;
  /** Vocabulary size of one side (equal for both sides with a joint vocabulary). */
  vocabSize(side: Side): number;
  /** Text to ids, without BOS/EOS. */
  encode(text: string, side: Side): number[];
  /** Ids to text; special tokens are dropped and decoding stops at EOS. */
  decode(ids: readonly number[], side: Side): string;
  /** A JSON-serialisable state that {@link Tokenizer.load} restores exactly. */
  save(): unknown;
  /** Restores a state written by {@link Tokenizer.save}. */
  load(state: unknown): void;
}

/** One row to score: a hypothesis for a source, with the reference when there is one. */
export interface RewardInput {
  /** Source sentence. */
  source: string;
  /** The output being scored. */
  hypothesis: string;
  /** Reference translation; reference-based rewards require it. */
  reference?: string;
}

/** A reward model: scores rows with numbers in [0, 1]. */
export interface RewardModel {
  /** True when `score` needs `reference` on every row. */
  readonly needsReference: boolean;
  /** One score in [0, 1] per row, in order. */
  score(rows: readonly RewardInput[]): Promise<number[]>;
  /**
   * Optional: called once before the reward's first use in a run, e.g. to train a learned
   * reward model or reload it from `ctx.dir`. A reward with `prepare` is not used to pick
   * the BC checkpoint (validation chrF is, since the BC policy may be its training data).
   */
  prepare?(ctx: RewardPrepareContext): Promise<void>;
  /**
   * Optional, with `prepare`: rebuilds the prepared reward from the files `prepare` saved in
   * `ctx.dir`, without training, sampling or scoring anything (a queue worker calls it on a
   * copy of that folder, fetched by content hash). When a file it needs is missing it throws
   * a user error naming the reward and the file. A reward with `prepare`
   * but without `restore` cannot be used by queue workers (they refuse it by name).
   */
  restore?(ctx: RewardRestoreContext): Promise<void>;
  /**
   * Optional: counters accumulated since the previous call (e.g. how many rows a guard
   * zeroed, per rule), then reset. ReST logs them after each Grow step as
   * `grow/reward_<key>`, PPO after each rollout batch as `ppo/reward_<key>`. Counters are
   * added up over a Grow step's shards when workers compute them, except keys ending in
   * `_mean`, which are averaged weighted by the rows each shard scored.
   */
  diagnostics?(): Record<string, number>;
  /**
   * Optional: a new version of this reward fine-tuned on `rows`, each labelled with the score
   * it should give (e.g. chrF against the reference, a stand-in for fresh human labels);
   * this reward itself is left unchanged. ReST calls it between Grow and Improve when the
   * algorithm's `rewardUpdate` is on. The new version is saved in `ctx.dir` (the run's
   * folder, never the experiment's shared reward folder); when `ctx.dir` already holds a
   * complete version (a resumed run), it is reloaded instead of trained again.
   */
  adapt?(rows: readonly LabelledRow[], ctx: RewardAdaptContext): Promise<RewardAdaptation>;
}

/** A row to fine-tune a reward on: a hypothesis and the score in [0, 1] it should get. */
export interface LabelledRow extends RewardInput {
  /** The target score in [0, 1]. */
  label: number;
}

/** What {@link RewardModel.adapt} gets. */
export interface RewardAdaptContext {
  /** Folder of the new version (created if missing; a complete version there is reloaded). */
  dir: string;
  /** Seed of the fine-tuning (batch order, dropout). */
  seed: number;
  /** Passes over the rows. */
  epochs: number;
  /** Learning rate (constant). */
  learningRate: number;
  /** Rows per step. */
  batchSize: number;
  /** Starts a progress display. */
  progress(label: string, total: number, unit?: string): Progress;
  /** Prints a line to the user. */
  log(message: string): void;
}

/** What {@link RewardModel.adapt} returns. */
export interface RewardAdaptation {
  /** The fine-tuned version (it can adapt again). */
  reward: RewardModel;
  /** Optimizer steps taken (0 when reloaded). */
  steps: number;
  /** True when the version was reloaded from `dir` instead of trained. */
  reloaded: boolean;
  /** Releases the version's weights (the caller calls it when done with the version). */
  dispose(): void;
}

/** What {@link RewardModel.prepare} gets. */
export interface RewardPrepareContext {
  /** A folder the reward owns, shared by every run of the experiment with the same config. */
  dir: string;
  /** The experiment's data. */
  splits: RunSplits;
  /** The experiment's tokenizer. */
  tokenizer: Tokenizer;
  /** A new policy with the experiment's BC weights (the caller disposes it). */
  bcPolicy(): Promise<Policy>;
  /** How policies are decoded. */
  evaluation: EvalSettings;
  /** The experiment's seed. */
  seed: number;
  /** True under `--smoke`. */
  smoke: boolean;
  /** Appends metrics (e.g. held-out correlations) to `<dir>/metrics.jsonl`. */
  metrics: MetricsLog;
  /** Starts a progress display. */
  progress(label: string, total: number, unit?: string): Progress;
  /** Prints a line to the user. */
  log(message: string): void;
}

/** What {@link RewardModel.restore} gets: the folder `prepare` saved in, and the run's basics. */
export type RewardRestoreContext = Pick<
  RewardPrepareContext,
  "dir" | "tokenizer" | "smoke" | "log"
>;

/** What a backend plugin reports after selecting and setting up the tfjs backend. */
export interface BackendInfo {
  /** The plugin's name (`cpu`, `blas`, ...). */
  name: string;
  /** The tfjs backend name that is now active. */
  tfBackend: string;
  /** Threads the backend uses for heavy kernels. */
  threads: number;
  /** Free-form detail (library path, versions). */
  detail?: string;
}

/** A backend plugin: selects and sets up the compute backend. */
export interface Backend {
  /** Makes this backend the active tfjs backend. */
  init(): Promise<BackendInfo>;
}

/** What a threshold schedule is given: the Improve step and the Grow set's rewards. */
export interface ThresholdArgs {
  /** Grow step (1-based). */
  grow: number;
  /** Improve step (1-based) within the Grow step. */
  improve: number;
  /** Number of Improve steps of the Grow step. */
  improveSteps: number;
  /** The Grow set's rewards (every row, before filtering). */
  rewards: readonly number[];
  /** The same rewards grouped by source. */
  bySource: ReadonlyMap<string, readonly number[]>;
  /**
   * The rewards of the sampled rows only (not the original pairs), for schedules that place
   * tau by the policy's own samples; absent when the caller does not tell rows apart.
   */
  sampleRewards?: readonly number[];
}

/** A schedule's threshold for one Improve step, with what it had to adjust and why. */
export interface ThresholdDecision {
  /** tau (global) or a map from source to tau (per source). */
  tau: number | Map<string, number>;
  /**
   * One line per adjustment the schedule made to its configured value (raised above the
   * previous step's tau, capped below the largest reward, a source whose rewards all tie
   * judged by the global tau, ...), for the run's log; empty when none was needed.
   */
  notes: string[];
  /** Counters of those adjustments (`threshold_capped`, ...), for the metrics log. */
  metrics: Record<string, number>;
}

/** A threshold schedule: the reward threshold tau for Improve step `improve` of Grow step `grow`. */
export interface ThresholdSchedule {
  /**
   * Returns tau (global) or a map from source to tau (per source).
   * `rewards` are the Grow set's rewards, `bySource` the same grouped by source.
   */
  threshold(args: ThresholdArgs): number | Map<string, number>;
  /**
   * Optional: the same tau as {@link ThresholdSchedule.threshold} with the notes and
   * counters of every adjustment, so the caller can log why a step keeps what it keeps.
   */
  decide?(args: ThresholdArgs): ThresholdDecision;
}

/** A metrics record: namespaced keys (`grow/mean_reward`, `eval/chrf`, ...) to numbers. */
export type Metrics = Record<string, number>;

/** Sections of a run that an algorithm may use (validated against the manifest). */
export type RunSection = "loss" | "threshold" | "reward" | "bc";

/** Whether an algorithm needs a section, may take it, or (absent) does not use it. */
export type SectionUse = "required" | "optional";

/** An algorithm plugin's instance: runs one manifest run. */
export interface Algorithm {
  /** Runs to completion (or resumes) and returns the final metrics. */
  run(ctx: RunContext): Promise<RunSummary>;
  /**
   * Optional: refuses a reward the algorithm's config cannot work with (e.g. ReST's
   * `rewardUpdate` needs {@link RewardModel.adapt}), called with the run's reward and its
   * plugin name before the reward is prepared.
   *
   * @throws {UserError} naming the reward and the option.
   */
  checkReward?(reward: RewardModel, name: string): void;
}

/** The result an algorithm returns for one run. */
export interface RunSummary {
  /** Final metrics of the run (eval/..., counts). */
  metrics: Metrics;
}

/** Appends metrics records to a run's `metrics.jsonl`. */
export interface MetricsLog {
  /** Appends one record; `step` is the algorithm's own step counter. */
  log(record: Metrics, step?: number): Promise<void>;
}

/** A progress display for one long piece of work. */
export interface Progress {
  /** Records `n` (default 1) more units done. */
  tick(n?: number): void;
  /** Finishes the display (prints the final line). */
  done(): void;
}

/** Everything an algorithm needs to execute one run of a manifest. */
export interface RunContext {
  /** Experiment name (the manifest's `experiment`). */
  experiment: string;
  /** Run name (unique within the experiment). */
  run: string;
  /** The run folder, `<out>/<experiment>/<run>/`. */
  dir: string;
  /** The experiment's shared folder, `<out>/<experiment>/shared/` (BC, reward models, caches). */
  sharedDir: string;
  /**
   * A hash of everything upstream of the algorithm (data, tokenizer, model, BC settings and
   * seed, reward): runs with equal fingerprints start from identical states, so they may
   * share work keyed by it (with the settings of that work, e.g. Grow's decoding settings).
   */
  fingerprint: string;
  /**
   * A hash of the run's loss section (plugin and config), for sharing Improve steps between
   * runs (absent: the run has no loss, or its steps are not shared).
   */
  lossKey?: string;
  /** The run's seed. */
  seed: number;
  /** True under `--smoke`. */
  smoke: boolean;
  /** True under `--resume`: continue from the run folder's checkpoints. */
  resume: boolean;
  /** The loaded data splits (validation cut into report and select halves). */
  splits: RunSplits;
  /** The trained tokenizer. */
  tokenizer: Tokenizer;
  /** The run's reward model. */
  reward: RewardModel;
  /** The run's loss, when the algorithm uses one. */
  loss?: Loss;
  /** The run's threshold schedule, when the algorithm uses one. */
  threshold?: ThresholdSchedule;
  /** The run's metrics log. */
  metrics: MetricsLog;
  /**
   * A new policy holding the experiment's BC weights (trained on first use, then shared
   * by every run). With `valueHead`, the policy also has a freshly initialised value head
   * (e.g. PPO's critic). The caller owns it and disposes it.
   */
  bcPolicy(options?: { valueHead?: boolean }): Promise<Policy>;
  /**
   * The BC phase's settings (its learning-rate schedule and label smoothing, which Improve
   * continues from).
   */
  bc: BcSettings;
  /** How policies are decoded for evaluation. */
  evaluation: EvalSettings;
  /** Starts a progress display (`unit` e.g. "pairs", "steps"). */
  progress(label: string, total: number, unit?: string): Progress;
  /** Prints a line to the user. */
  log(message: string): void;
  /** Where Grow shards are computed (absent: in this process, one after another). */
  executor?: Executor;
  /** How a remote worker rebuilds the run's plugins (absent: shards run locally only). */
  recipe?: WorkerRecipe;
}

/** A padded batch of token ids. Padding id is 0 and always masked. */
export interface TokenBatch {
  /** `[B, S]` int32 source ids, each row ending with EOS, right-padded. */
  source: Tensor2D;
  /** `[B, T]` int32 decoder inputs: BOS y_1 ... y_{T-1}. */
  targetIn: Tensor2D;
  /** `[B, T]` int32 decoder targets: y_1 ... y_T (EOS where the output ended). */
  targetOut: Tensor2D;
  /** `[B, T]` float32, 1 at real target positions, 0 at padding. */
  targetMask: Tensor2D;
}

/** The outputs of a teacher-forced forward pass. */
export interface ForwardOutput {
  /** `[B, T, V]` unnormalised logits. */
  logits: Tensor3D;
  /** `[B, T]` value estimates, when the model has a value head. */
  values?: Tensor2D;
}

/** One decoded output. */
export interface Generation {
  /** Output ids without BOS; ends with EOS unless `maxLen` was reached. */
  tokens: number[];
  /** log pi(token_t | ...) of each token under the model itself (temperature 1, no truncation). */
  logProbs: number[];
  /**
   * Optional, `sample()` with `behaviourLogProbs: true` only (greedy and beam leave it
   * undefined; a policy may leave it out, e.g. a user model): per token, the exact
   * log-probability of the drawn token under the distribution it was actually drawn from,
   * log mu(a_t) = log softmax(logits_t / T)[a_t] over the tokens the sampler may draw
   * (after top-k / top-p truncation, renormalised), computed in float64. The sampler never
   * draws padding or BOS, so its distribution excludes them: with top-k 0 and top-p 1 this
   * is the teacher-forced tempered log-probability minus log(1 - their tempered mass). The
   * Grow step stores it as the rows' behaviour log-probabilities; a policy that leaves it
   * out has its samples scored by teacher forcing instead.
   */
  behaviourLogProbs?: number[];
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
  /**
   * Ask for {@link Generation.behaviourLogProbs} (default false: they cost the sampler one
   * float64 exp per vocabulary entry per token). A policy may ignore it and leave them out.
   */
  behaviourLogProbs?: boolean;
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
  readonly variables: Variable[];
  /** Whether the model has a value head. */
  readonly hasValueHead: boolean;
  /** Teacher-forced forward pass (call inside `tf.tidy` or an optimizer step). */
  forward(batch: TokenBatch, options: { training: boolean }): ForwardOutput;
  /**
   * `[B, T]` log pi(targetOut_t | ...), 0 at padding (call inside `tf.tidy`); with
   * `temperature` T (default 1) log softmax(logits / T) at the targets, the distribution a
   * sample drawn at temperature T came from (up to the ids the sampler never draws and any
   * truncation: see {@link Generation.behaviourLogProbs}).
   */
  tokenLogProbs(
    batch: TokenBatch,
    options: { training: boolean; temperature?: number },
  ): Tensor2D;
  /**
   * Optional: the value head's `[B, T]` estimates alone, without the output projection to
   * the vocabulary (call inside `tf.tidy` or an optimizer step; gradients flow). Only for a
   * policy with a value head; callers fall back to `forward(...).values` when it is absent.
   */
  values?(batch: TokenBatch, options: { training: boolean }): Tensor2D;
  /**
   * Optional: `tokenLogProbs(batch, options)` and `values(batch, options)` from one pass
   * through the network (one dropout draw), for a policy with a value head; callers fall
   * back to the two calls when it is absent.
   */
  tokenLogProbsAndValues?(
    batch: TokenBatch,
    options: { training: boolean; temperature?: number },
  ): { logProbs: Tensor2D; values: Tensor2D };
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

/**
 * A policy that computes label-smoothed per-token log-likelihoods itself (without
 * materialising `[B, T, V]` log-probabilities), as the `transformer` model does.
 */
export interface SmoothedLogProbs {
  /** `[B, T]` `(1 - eps) log p(y_t) + eps mean_v log p(v)`, 0 at padding. */
  smoothedTokenLogProbs(
    batch: TokenBatch,
    options: { training: boolean; labelSmoothing: number },
  ): Tensor2D;
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
   * were drawn from (samples: {@link Generation.behaviourLogProbs} where the policy reports
   * them, which also reflect top-k / top-p truncation and leave out the never-drawn special
   * ids; references: teacher-forced). Absent (Grow files written before it existed):
   * `logProbs` are the untempered log pi(a_t) (T = 1).
   */
  temperature?: number;
}

/** What a loss sees for one batch of Grow rows (tensors are owned by the caller). */
export interface LossInput {
  /** The padded batch (targets are the rows' tokens). */
  batch: TokenBatch;
  /** `[B]` rewards of the rows. */
  rewards: Tensor1D;
  /** `[B, T]` behaviour log-probabilities (0 at padding). */
  behaviourLogProbs: Tensor2D;
  /** `[B]` mean reward of each row's source over the Grow set (a per-source baseline). */
  sourceMeanRewards: Tensor1D;
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
 * Takes a loss's diagnostics: `record(name, value)` a number. A receiver that can also take
 * tensors has `tensor(name, value)`: a scalar tensor kept out of the tape's tidy
 * (`tf.keep`), which the receiver reads after the step (asynchronously, as device backends
 * require) and disposes; a loss uses it where present instead of reading the value itself.
 */
export interface LossRecorder {
  /** Records the number `value` as `name`. */
  (name: string, value: number): void;
  /** Optional: records the kept scalar tensor `value` as `name` (the receiver disposes it). */
  tensor?(name: string, value: Scalar): void;
}

/**
 * An offline loss: what a loss plugin's `create` returns. `compute` runs inside the
 * gradient tape; gradients flow to `policy.variables` and the loss's own `variables`.
 */
export interface Loss {
  /** Extra trainable variables (e.g. a temperature or a value network); [] if none. */
  readonly variables: Variable[];
  /** Called before each Improve step's optimisation starts. */
  prepare(ctx: LossContext): void;
  /**
   * The scalar loss of a batch. `record(name, value)` logs a diagnostic (e.g. "kl"),
   * averaged over steps under `improve/<name>` (see {@link LossRecorder}).
   */
  compute(input: LossInput, record: LossRecorder): Scalar;
  /** Called after every optimizer step (e.g. to sync a lagged copy every K steps). */
  afterStep(step: number): void;
  /** Frees whatever the loss holds. */
  dispose(): void;
}

/** Learning-rate schedule names. */
export type Schedule = "constant" | "linear" | "cosine" | "inverse_sqrt";

/** Optimisation settings of a training loop. */
export interface TrainSettings {
  /** Maximum optimizer steps. */
  steps: number;
  /** Sentence pairs per batch. */
  batchSize: number;
  /** Peak learning rate. */
  learningRate: number;
  /** Linear warm-up steps. */
  warmupSteps: number;
  /** Decay after warm-up. */
  schedule: Schedule;
  /** Global gradient-norm clip (0: off). */
  clipNorm: number;
  /** Evaluate every this many steps (0: only at the end). */
  evalEvery: number;
  /** Stop after this many evaluations without improvement (0: never). */
  patience: number;
  /**
   * Also evaluate the incoming weights before the first step, so that they are a candidate
   * for the best checkpoint (an Improve step that only makes things worse keeps them).
   */
  evalAtStart?: boolean;
}

/** Settings of the BC phase (the manifest's `bc` section). */
export interface BcSettings extends TrainSettings {
  /** Label smoothing of the NLL (0: plain NLL). */
  labelSmoothing: number;
  /** Pairs whose source or target exceeds this many tokens are left out of training. */
  maxTokens: number;
  /** Selection-split pairs used for the periodic chrF evaluation (0: all). */
  evalSize: number;
  /** Seconds between saved training states (for `--resume`). */
  checkpointSeconds: number;
}

/** Settings of decoding for evaluation (the manifest's `evaluation` section). */
export interface EvalSettings {
  /** Maximum output tokens. */
  maxLen: number;
  /** Sources per decoding batch. */
  batchSize: number;
  /** Validation pairs used in final evaluations (0: all). */
  validSize: number;
  /** Test pairs used in final evaluations (0: all). */
  testSize: number;
  /** Sampling temperature of the sampled and Best-of-N evaluations. */
  temperature: number;
  /** Best-of-N evaluation: the values of N (empty: off). */
  bestOfN: number[];
  /** Validation pairs used for Best-of-N (0: all). */
  bestOfNSize: number;
  /** How ReST's Improve steps and PPO score candidate weights on the selection split. */
  selectBy: "greedy" | "sample";
  /** selectBy `sample`: outputs per selection source. */
  selectSamples: number;
  /**
   * Sources per shard of the final evaluation's decoding (the unit an executor computes;
   * part of each shard's seed; default 256).
   */
  shardSources?: number;
}

/** Settings of the Grow step. */
export interface GrowSettings {
  /** Samples per training source (N). */
  samplesPerSource: number;
  /** Sampling temperature (the paper uses 0.8). */
  temperature: number;
  /** Top-k truncation (0: off). */
  topK: number;
  /** Nucleus truncation (1: off). */
  topP: number;
  /** Maximum output tokens. */
  maxLen: number;
  /** Sources per decoding batch. */
  batchSize: number;
  /** Add the original dataset D (every training pair, scored) to the Grow set. */
  includeOriginal: boolean;
  /** Training sources sampled from (a seeded uniform sample; 0: all). */
  sources: number;
  /**
   * Sources per Grow shard (the unit an executor computes and a resumed step keeps; default
   * 256). Shards of the original pairs hold this many times N pairs.
   */
  shardSources?: number;
}

/** One shard of a Grow step: a slice of its sources, computed as a unit by an executor. */
export interface GrowShard {
  /** Position in the step's plan (0-based): shards are merged in this order. */
  index: number;
  /** `samples`: N samples per source, scored; `references`: the original pairs, scored. */
  kind: "samples" | "references";
  /** The shard's pairs. */
  examples: Example[];
  /** Seed of the shard's sampling, a pure function of (run seed, Grow step, shard index). */
  seed: number;
}

/**
 * One shard of an evaluation's decoding: a slice of one evaluated part's sources, decoded
 * greedily or sampled `n` times each, every output scored by the reward.
 */
export interface EvalShard {
  /** Position in the evaluation's plan (0-based): results are put together in this order. */
  index: number;
  /** What is evaluated, e.g. `valid_greedy` or `bon` (part of the seed). */
  part: string;
  /** `greedy`: one greedy output per source; `sample`: `n` samples per source. */
  decode: "greedy" | "sample";
  /** Outputs per source (1 for greedy). */
  n: number;
  /** Sampling temperature (`sample`). */
  temperature: number;
  /** Sources per decoding batch. */
  batchSize: number;
  /** The shard's pairs. */
  examples: Example[];
  /** Seed of the shard's sampling: a pure function of (run seed, part, shard index). */
  seed: number;
}

/** What every shard of an evaluation shares. */
export interface EvalShardSettings {
  /** Maximum output tokens. */
  maxLen: number;
}

/** One output of an evaluation shard, scored. */
export interface EvalRow {
  /** The source it translates. */
  source: string;
  /** The decoded output. */
  hypothesis: string;
  /** Its reward, in [0, 1]. */
  reward: number;
}

/** A plugin reference as a remote worker rebuilds it (a resolved manifest section). */
export interface WorkerSection {
  /** The plugin kind. */
  kind: string;
  /** The plugin's name. */
  name: string;
  /** Absolute path of a user plugin module, when the section names one. */
  module?: string;
  /** The full config, defaults filled in. */
  config: Record<string, unknown>;
}

/** How a remote worker rebuilds a run's Grow computation: its resolved sections and deps. */
export interface WorkerRecipe {
  /** The backend, tokenizer, model and reward sections of the run. */
  sections: Record<"backend" | "tokenizer" | "model" | "reward", WorkerSection>;
  /** Folder relative paths in configs resolve against (the manifest's folder). */
  baseDir: string;
  /** The run's seed (plugins derive their streams from it). */
  seed: number;
  /** True under `--smoke`. */
  smoke: boolean;
  /**
   * The folder the reward's `prepare` saved its files in (absent: the reward prepares
   * nothing). Its files travel to the workers by content hash; they rebuild the reward with
   * {@link RewardModel.restore}.
   */
  rewardDir?: string;
}

/**
 * What an executor computes, by task: `grow` (Grow shards: N scored samples per source, or
 * the scored original pairs) and `evaluate` (evaluation decoding: greedy outputs or samples
 * per source, scored). A worker computes a shard of either with the same function as the
 * experiment's own process.
 */
export interface ShardTasks {
  /** A Grow step's shards. */
  grow: { shard: GrowShard; settings: GrowSettings; row: GrowRow };
  /** An evaluation's decoding shards. */
  evaluate: { shard: EvalShard; settings: EvalShardSettings; row: EvalRow };
}

/** A task an executor computes shards of (see {@link ShardTasks}). */
export type ShardTask = keyof ShardTasks;

/** The shards of one Grow step or evaluation, handed to an {@link Executor}. */
export interface ShardJob<T extends ShardTask = "grow"> {
  /** What the shards are (default `grow`). */
  task?: T;
  /** Content key of the step (its weights, settings and seed): names its shards everywhere. */
  key: string;
  /** Label for messages, e.g. `grow 1`. */
  label: string;
  /** The settings every shard uses. */
  settings: ShardTasks[T]["settings"];
  /** The shards still to compute (finished ones are not handed out again). */
  shards: ShardTasks[T]["shard"][];
  /** Computes one shard in this process (what the `local` executor does with every shard). */
  compute(shard: ShardTasks[T]["shard"]): Promise<ShardTasks[T]["row"][]>;
  /** What a remote worker rebuilds `compute` from (undefined: this job runs locally only). */
  artefacts?(): { recipe: WorkerRecipe; policy: PolicyState; tokenizer: unknown };
  /**
   * Checks a shard's rows computed elsewhere before they are handed on (`from` names the
   * worker; `checksum` is the one it sent), throwing a `DataError` saying what is wrong.
   */
  check?(
    shard: ShardTasks[T]["shard"],
    rows: readonly ShardTasks[T]["row"][],
    from: string,
    checksum?: string,
  ): void;
}

/** A reward's diagnostic counters over the rows one shard scored (see `diagnostics`). */
export interface ShardDiagnostics {
  /** The counters, as the worker's reward returned them after the shard. */
  counters: Record<string, number>;
  /** Rows the shard scored (the weight of `_mean` counters). */
  rows: number;
}

/**
 * An executor plugin: where a Grow step's shards are computed (in this process, or by
 * workers on a job queue). It decides nothing about the results: each shard's rows depend
 * only on the shard, so the merged Grow set is the same whatever executor computed it.
 */
export interface Executor {
  /**
   * Computes every shard of `job`, calling `finished` once per shard with its rows, in any
   * order, as soon as they are in; resolves when every shard is finished. A shard computed
   * in another process comes with its reward's diagnostic counters, when the reward keeps
   * any (in this process the caller reads its own reward's).
   */
  run<T extends ShardTask>(
    job: ShardJob<T>,
    finished: (
      shard: ShardTasks[T]["shard"],
      rows: ShardTasks[T]["row"][],
      diagnostics?: ShardDiagnostics,
    ) => Promise<void>,
  ): Promise<void>;
  /** Releases what the executor holds (connections); called once, after the experiment. */
  close(): Promise<void>;
}

/** Settings of the Improve steps. */
export interface ImproveSettings {
  /** Passes over the kept rows per Improve step. */
  epochs: number;
  /** Cap on the optimizer steps of one Improve step. */
  steps: number;
  /** Rows per batch. */
  batchSize: number;
  /** Learning rate of the run's first Improve step (0: half of BC's final rate). */
  learningRate: number;
  /** Multiplier of the learning rate from one Improve step to the next, over the whole run. */
  learningRateDecay: number;
  /** Warm-up steps of each Improve step. */
  warmupSteps: number;
  /** Decay within an Improve step. */
  schedule: Schedule;
  /** Global gradient-norm clip (0: off). */
  clipNorm: number;
  /** Evaluate on the selection split every this many steps (0: only before and after). */
  evalEvery: number;
  /** Stop an Improve step after this many evaluations without improvement (0: never). */
  patience: number;
  /** Selection pairs for evaluation (0: all). */
  evalSize: number;
  /** `filter`: references pass through the filter like samples (paper); `keep`: always kept. */
  references: "filter" | "keep";
}
