/**
 * ReST (Reinforced Self-Training) research framework: the public API, exported by name.
 *
 * - Plugins: {@link definePlugin}, {@link defineLoss}, the schema helpers {@link int} and
 *   {@link num}, the contracts each plugin kind implements ({@link Policy}, {@link Loss},
 *   {@link RewardModel}, {@link ThresholdSchedule}, {@link DataSource}, {@link Tokenizer},
 *   {@link Backend}) and {@link builtinPlugins}.
 * - Experiments: {@link createRegistries}, {@link loadManifest}, {@link runExperiment}.
 * - The algorithm: {@link runRest} (Algorithm 1), its {@link grow} and {@link improve} steps.
 * - Metrics: {@link corpusChrf}, {@link corpusBleu} and their sentence-level forms.
 * - Errors: {@link UserError}, {@link ManifestError}, {@link DataError}.
 * - Tensor types the contracts use, aliases of tfjs-core's: {@link Scalar}, {@link Tensor1D},
 *   {@link Tensor2D}, {@link Tensor3D}, {@link Variable}.
 *
 * {@link runExperiment} has an example of a whole (tiny) experiment, {@link grow} and
 * {@link improve} of the two steps on their own.
 *
 * @example The registries a manifest's plugin names are looked up in, and a metric
 * ```ts
 * import assert from "node:assert/strict";
 * import { builtinPlugins, corpusChrf, createRegistries } from "@rest/framework";
 *
 * const registries = createRegistries(builtinPlugins);
 * assert.ok(registries.algorithm.names().includes("rest"));
 * assert.equal(registries.reward.get("chrf").kind, "reward");
 * assert.throws(() => registries.reward.get("chrff"), /did you mean "chrf"\?/);
 *
 * assert.equal(corpusChrf(["the cat sat"], ["the cat sat"]), 100);
 * ```
 *
 * @module
 */

export { DataError, ManifestError, type ManifestProblem, UserError } from "./core/errors.ts";
export {
  defineLoss,
  definePlugin,
  int,
  type JsonSchema,
  type LossDefinition,
  type LossParts,
  num,
  PLUGIN_KINDS,
  pluginDefaults,
  type PluginDefinition,
  type PluginDeps,
  type PluginInstances,
  type PluginKind,
  type PluginRef,
  type ResolvedPluginRef,
} from "./core/plugin.ts";
export { createRegistries, type Registries, Registry } from "./core/registry.ts";
export {
  loadManifest,
  type ResolvedManifest,
  type ResolvedRun,
  type ResolveOptions,
} from "./core/manifest/mod.ts";
export type {
  Algorithm,
  Backend,
  BackendInfo,
  BcSettings,
  BeamOptions,
  DataSource,
  DecodeOptions,
  EvalRow,
  EvalSettings,
  EvalShard,
  EvalShardSettings,
  Example,
  Executor,
  ForwardOutput,
  Generation,
  GrowRow,
  GrowSettings,
  GrowShard,
  ImproveSettings,
  LabelledRow,
  Loss,
  LossContext,
  LossInput,
  Metrics,
  MetricsLog,
  ModelFactory,
  Policy,
  PolicyState,
  Progress,
  RewardAdaptation,
  RewardAdaptContext,
  RewardInput,
  RewardModel,
  RewardPrepareContext,
  RewardRestoreContext,
  RunContext,
  RunSection,
  RunSplits,
  RunSummary,
  SampleOptions,
  Scalar,
  Schedule,
  SectionUse,
  ShardDiagnostics,
  ShardJob,
  ShardTask,
  ShardTasks,
  Side,
  SpecialIds,
  Splits,
  Tensor1D,
  Tensor2D,
  Tensor3D,
  ThresholdArgs,
  ThresholdDecision,
  ThresholdSchedule,
  TokenBatch,
  Tokenizer,
  TrainSettings,
  Variable,
  WorkerRecipe,
  WorkerSection,
} from "./core/types.ts";
export { type ExperimentOptions, type ExperimentResult, runExperiment } from "./core/experiment.ts";
export {
  grow,
  GrowPool,
  improve,
  type ImprovePosition,
  type ImproveResult,
  type RestConfig,
  type RestContext,
  runRest,
} from "./core/rest.ts";
export { type RewardUpdateSettings, updateReward } from "./core/reward_update.ts";
export { makeBatch, nllLoss, type NllOptions } from "./core/batch.ts";
export { checkScores } from "./core/evaluate.ts";
export { Rng } from "./core/random.ts";
export { type ChrfOptions, corpusChrf, sentenceChrf } from "./core/metrics/chrf.ts";
export {
  type BleuOptions,
  type BleuScore,
  type BleuSmoothMethod,
  type BleuTokenizer,
  corpusBleu,
  sentenceBleu,
} from "./core/metrics/bleu.ts";
export { builtinPlugins } from "./plugins/mod.ts";
