/**
 * The data types and the narrow interfaces that plugins implement.
 *
 * One interface per plugin kind; the core only talks to plugins through these.
 *
 * @module
 */

import type { Loss, Policy } from "./policy.ts";
import type { BcSettings, EvalSettings } from "./sections.ts";

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
}
