/**
 * Runs a resolved manifest: sets up the backend, loads the data, trains (or reloads)
 * the shared tokenizer, then executes each run in its own folder.
 *
 * @module
 */

import { hashText } from "./hash.ts";
import { join, resolve } from "node:path";
import { UserError } from "./errors.ts";
import { savePolicy } from "./host_read.ts";
import { readRegularText } from "./fs.ts";
import { PROFILE_FILE, SHARED_FOLDER, SPLITS_FILE, TOKENIZER_FILE } from "./layout.ts";
import { formatProfile, mergeProfiles, type PhaseProfile, profiler } from "./profile.ts";
import type { ResolvedManifest, ResolvedRun } from "./manifest/mod.ts";
import { pluginFor } from "./manifest/resolver.ts";
import type {
  PluginDefinition,
  PluginDeps,
  PluginInstances,
  PluginKind,
  ResolvedPluginRef,
} from "./plugin.ts";
import { setActivity, startProgress } from "./progress.ts";
import { prepareSplits } from "./splits.ts";
import { inProcessExecutor } from "./shards.ts";
import { createGuarded } from "./plugin_guard.ts";
import type { Registries, Registry } from "./registry.ts";
import {
  acquireLock,
  exists,
  MetricsWriter,
  openRunFolder,
  readRunSummary,
  writeFileAtomic,
  writeRunSummary,
} from "./run.ts";
import { sentenceChrf } from "./metrics/chrf.ts";
import type {
  BackendInfo,
  Executor,
  Policy,
  PolicyState,
  RewardModel,
  RunContext,
  RunSplits,
  RunSummary,
  Tokenizer,
} from "./types.ts";

/** Options for {@link runExperiment}. */
export interface ExperimentOptions {
  /** Output root; the experiment writes to `<out>/<experiment>/`. */
  out: string;
  /** Continue runs found in the output folder. */
  resume: boolean;
  /** Scale budgets down (already applied to configs by the manifest resolver). */
  smoke: boolean;
  /** Prints a line to the user (default: standard error). */
  log?: (message: string) => void;
}

/** What {@link runExperiment} returns. */
export interface ExperimentResult {
  /** The experiment folder. */
  dir: string;
  /** The backend in use. */
  backend: BackendInfo;
  /** Summaries by run name. */
  runs: Record<string, RunSummary>;
}

function defaultLog(message: string): void {
  console.error(message);
}

/** Creates a plugin instance from a resolved reference. */
export async function createPlugin<K extends PluginKind>(
  registries: Registries,
  kind: K,
  ref: ResolvedPluginRef,
  deps: Omit<PluginDeps, "create">,
): Promise<PluginInstances[K]> {
  if (ref.kind !== kind) {
    throw new TypeError(
      `expected a ${kind} plugin reference, got a ${ref.kind} one ("${ref.name}")`,
    );
  }
  const plugin = await pluginFor(registries, ref) as PluginDefinition<K>;
  const fullDeps: PluginDeps = {
    ...deps,
    create: (nestedKind, nestedRef) => createPlugin(registries, nestedKind, nestedRef, deps),
  };
  const config = structuredClone(ref.config);
  const origin = (registries[kind] as Registry).origin(plugin.name);
  if (origin === undefined || origin === "built-in") return await plugin.create(config, fullDeps);
  return await createGuarded(
    { kind, name: plugin.name, file: origin },
    () => plugin.create(config, fullDeps),
  );
}

/** Describes the resolved plan in a few human-readable lines. */
export function describePlan(manifest: ResolvedManifest, out: string): string {
  const ref = (r: ResolvedPluginRef | undefined) =>
    r === undefined ? "(none)" : `${r.module ?? r.name} ${JSON.stringify(r.config)}`;
  const lines = [
    `experiment ${manifest.experiment}${manifest.description ? ` - ${manifest.description}` : ""}`,
    `  manifest  ${manifest.file}`,
    `  output    ${join(out, manifest.experiment)}`,
    `  seed      ${manifest.seed}`,
    `  backend   ${ref(manifest.backend)}`,
    `  data      ${ref(manifest.data)}`,
    `  tokenizer ${ref(manifest.tokenizer)}`,
    `  model     ${ref(manifest.model)}`,
    `  reward    ${ref(manifest.reward)}`,
    `  executor  ${manifest.executor ? redactUrls(ref(manifest.executor)) : "local {}"}`,
    `  bc        ${JSON.stringify(manifest.bc)}`,
    `  eval      ${JSON.stringify(manifest.evaluation)}`,
    `  runs (${manifest.runs.length}):`,
  ];
  for (const run of manifest.runs) {
    lines.push(`    ${run.name} (seed ${run.seed})`);
    lines.push(`      algorithm ${ref(run.algorithm)}`);
    if (run.reward !== manifest.reward) lines.push(`      reward    ${ref(run.reward)}`);
    if (run.loss) lines.push(`      loss      ${ref(run.loss)}`);
    if (run.threshold) lines.push(`      threshold ${ref(run.threshold)}`);
  }
  return lines.join("\n");
}

/** `text` with the user and password of every `scheme://user:password@` URL replaced by `***`. */
export function redactUrls(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s"]*@/gi, "$1***@");
}

/**
 * Loads the experiment's saved tokenizer state.
 *
 * @throws {UserError} naming the file when it is not a regular file, not valid JSON or not a
 *   state the tokenizer accepts.
 */
async function loadTokenizerFile(tokenizer: Tokenizer, file: string): Promise<void> {
  const text = await readRegularText(file, { what: "tokenizer state", maxBytes: 1 << 30 });
  const fix = "delete it to train the tokenizer again from the same data and settings";
  let state: unknown;
  try {
    state = JSON.parse(text);
  } catch {
    throw new UserError(`${file}: not valid JSON (truncated or corrupt); ${fix}`);
  }
  try {
    tokenizer.load(state);
  } catch (error) {
    if (
      error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
    ) throw error;
    throw new UserError(
      `${file}: not a valid tokenizer state (${(error as Error).message}); ${fix}`,
    );
  }
}

/** Trains the shared tokenizer, or reloads it from the experiment folder. */
async function prepareTokenizer(
  tokenizer: Tokenizer,
  splits: RunSplits,
  file: string,
  log: (message: string) => void,
): Promise<void> {
  if (await exists(file)) {
    await loadTokenizerFile(tokenizer, file);
    log(`tokenizer: reloaded ${file}`);
    return;
  }
  const started = performance.now();
  tokenizer.train({
    sources: splits.train.map((e) => e.source),
    targets: splits.train.map((e) => e.reference),
  });
  await writeFileAtomic(file, JSON.stringify(tokenizer.save()));
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  log(
    `tokenizer: trained in ${seconds}s, vocabulary ${tokenizer.vocabSize("source")} (source) / ${
      tokenizer.vocabSize("target")
    } (target)`,
  );
}

/**
 * Executes every run of a resolved manifest (from `loadManifest`) in its own folder under
 * `<out>/<experiment>/`: sets up the backend, loads the data, trains the shared tokenizer (or
 * reloads it), then runs each run's algorithm. Holds a lock on the experiment folder while it
 * runs; with `resume`, runs found in the folder continue where they stopped.
 *
 * @example A tiny ReST experiment on synthetic data, in seconds
 * ```ts
 * import assert from "node:assert/strict";
 * import { join } from "node:path";
 * import { builtinPlugins, createRegistries, loadManifest, runExperiment } from "@rest/framework";
 *
 * const registries = createRegistries(builtinPlugins);
 * const out = await Deno.makeTempDir();
 * const file = join(out, "tiny.json");
 * await Deno.writeTextFile(
 *   file,
 *   JSON.stringify({
 *     experiment: "tiny",
 *     backend: "cpu",
 *     data: { name: "synthetic", config: { pairs: 40 } },
 *     tokenizer: { name: "bpe", config: { vocabSize: 300 } },
 *     model: {
 *       name: "transformer",
 *       config: { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1 },
 *     },
 *     reward: "chrf",
 *     bc: { steps: 2, batchSize: 8, evalEvery: 2, evalSize: 4 },
 *     evaluation: { maxLen: 8, validSize: 4, testSize: 4 },
 *     runs: [{
 *       name: "rest",
 *       algorithm: {
 *         name: "rest",
 *         config: { growSteps: 1, improveSteps: 1, grow: { sources: 4 }, improve: { steps: 2 } },
 *       },
 *       loss: "bc",
 *       threshold: { name: "fixed", config: { values: [0.5] } },
 *     }],
 *   }),
 * );
 * const manifest = await loadManifest(file, registries, { smoke: true });
 * const result = await runExperiment(manifest, registries, {
 *   out,
 *   resume: false,
 *   smoke: true,
 *   log: () => {}, // progress bars still go to standard error
 * });
 * assert.equal(result.dir, join(out, "tiny"));
 * assert.equal(result.backend.name, "cpu");
 * const metrics = result.runs["rest"].metrics;
 * assert.ok(metrics["eval/test_chrf"] >= 0 && metrics["eval/test_chrf"] <= 100);
 * assert.ok(metrics["train/gradient_steps"] > 0);
 * assert.ok((await Deno.stat(join(out, "tiny", "rest", "metrics.jsonl"))).isFile);
 * await Deno.remove(out, { recursive: true });
 * ```
 */
export async function runExperiment(
  manifest: ResolvedManifest,
  registries: Registries,
  options: ExperimentOptions,
): Promise<ExperimentResult> {
  const log = options.log ?? defaultLog;
  const experimentDir = resolve(options.out, manifest.experiment);
  await Deno.mkdir(experimentDir, { recursive: true });
  const release = await acquireLock(experimentDir, log);
  try {
    return await runLocked(manifest, registries, options, experimentDir, log);
  } finally {
    await release();
  }
}

async function runLocked(
  manifest: ResolvedManifest,
  registries: Registries,
  options: ExperimentOptions,
  experimentDir: string,
  log: (message: string) => void,
): Promise<ExperimentResult> {
  const deps = baseDepsFor(manifest, manifest.seed, options.smoke, log);

  setActivity("starting the backend");
  const backend = await createPlugin(registries, "backend", manifest.backend, deps);
  const backendInfo = await backend.init();
  log(
    `backend: ${backendInfo.name} (tfjs ${backendInfo.tfBackend}, ${backendInfo.threads} threads)`,
  );

  setActivity("loading data");
  const data = await createPlugin(registries, "data", manifest.data, deps);
  const prepared = prepareSplits(await data.load());
  const splits = prepared.splits;
  log(
    `data: ${splits.train.length} train / ${splits.select.length} + ${splits.valid.length} ` +
      `valid (selection + report) / ${splits.test.length} test pairs` +
      (prepared.stats.testOverlap > 0
        ? ` (${prepared.stats.testRemoved} of ${prepared.stats.testBefore} test pairs removed: ` +
          `their source also occurs in training)`
        : ""),
  );
  if (splits.train.length === 0) {
    throw new UserError(`data: the training split is empty (${manifest.file}, /data)`);
  }
  // What the report's footnote on removed test pairs and the validation halves reads.
  await writeFileAtomic(join(experimentDir, SPLITS_FILE), JSON.stringify(prepared.stats) + "\n");

  setActivity("preparing the tokenizer");
  const tokenizer = await createPlugin(
    registries,
    "tokenizer",
    manifest.tokenizer,
    deps,
  );
  await prepareTokenizer(tokenizer, splits, join(experimentDir, TOKENIZER_FILE), log);

  // Each BC policy (one per BC seed) is trained once, on first use, and shared by the runs
  // that start from it.
  const bcStates = new Map<number, PolicyState>();
  const bcPolicy = async (
    bcSeed: number,
    options: { valueHead?: boolean } = {},
  ): Promise<Policy> => {
    if (manifest.model === undefined) {
      throw new UserError(`${manifest.file}: /model is required to train a policy`);
    }
    const factory = await createPlugin(registries, "model", manifest.model, deps);
    let state = bcStates.get(bcSeed);
    if (state === undefined) {
      const { trainOrLoadBc } = await import("./bc.ts");
      const manifestReward = await createPlugin(registries, "reward", manifest.reward, deps);
      const reward = manifestReward.prepare === undefined ? manifestReward : CHRF_SELECTION;
      const policy = await trainOrLoadBc({
        experimentDir,
        folder: bcSeed === manifest.seed ? "bc" : `bc_seed${bcSeed}`,
        factory,
        tokenizer,
        splits,
        reward,
        settings: manifest.bc,
        checkpointSeconds: manifest.bc.checkpointSeconds,
        evaluation: manifest.evaluation,
        seed: bcSeed,
        log,
        progress: (label, total, unit) => {
          setActivity(label);
          return startProgress(label, total, unit);
        },
      });
      state = await savePolicy(policy);
      bcStates.set(bcSeed, state);
      if (!options.valueHead) return policy;
      policy.dispose();
    }
    const { buildPolicy } = await import("./bc.ts");
    const policy = buildPolicy(factory, tokenizer, bcSeed, options.valueHead ?? false);
    policy.load(state);
    return policy;
  };

  const summaries: Record<string, RunSummary> = {};
  const profiles: Record<string, PhaseProfile>[] = [];
  const executor = manifest.executor === undefined
    ? inProcessExecutor
    : await createPlugin(registries, "executor", manifest.executor, deps);
  try {
    for (const run of manifest.runs) {
      const executed = await executeRun(manifest, run, registries, {
        experimentDir,
        splits,
        tokenizer,
        options,
        log,
        backend: backendInfo,
        bcPolicy,
        executor,
      });
      summaries[run.name] = executed.summary;
      if (executed.profile !== undefined) profiles.push(executed.profile);
    }
  } finally {
    await executor.close();
  }
  if (profiles.length > 0) {
    const profile = mergeProfiles(profiles);
    await writeFileAtomic(
      join(experimentDir, PROFILE_FILE),
      JSON.stringify(profile, null, 1) + "\n",
    );
    log(
      `profile of the ${profiles.length} run(s) executed (${join(experimentDir, PROFILE_FILE)}):`,
    );
    for (const line of formatProfile(profile)) log(`  ${line}`);
  }
  return { dir: experimentDir, backend: backendInfo, runs: summaries };
}

async function executeRun(
  manifest: ResolvedManifest,
  run: ResolvedRun,
  registries: Registries,
  shared: {
    experimentDir: string;
    splits: RunSplits;
    tokenizer: Tokenizer;
    options: ExperimentOptions;
    log: (message: string) => void;
    backend: BackendInfo;
    bcPolicy: (bcSeed: number, options?: { valueHead?: boolean }) => Promise<Policy>;
    executor: Executor;
  },
): Promise<{ summary: RunSummary; profile?: Record<string, PhaseProfile> }> {
  const { options, log } = shared;
  const dir = join(shared.experimentDir, run.name);
  const resolvedForRun = {
    experiment: manifest.experiment,
    run: run.name,
    seed: run.seed,
    bcSeed: run.bcSeed,
    ...(run.label !== undefined ? { label: run.label } : {}),
    smoke: options.smoke,
    backend: manifest.backend,
    data: manifest.data,
    tokenizer: manifest.tokenizer,
    ...(manifest.model ? { model: manifest.model } : {}),
    algorithm: run.algorithm,
    reward: run.reward,
    ...(run.loss ? { loss: run.loss } : {}),
    ...(run.threshold ? { threshold: run.threshold } : {}),
    bc: manifest.bc,
    evaluation: manifest.evaluation,
  };
  const folder = await openRunFolder(dir, resolvedForRun, { resume: options.resume });
  if (folder.state === "complete") {
    log(`run ${run.name}: already complete, skipped (${dir})`);
    return { summary: await readRunSummary(dir) as RunSummary };
  }
  profiler.reset();
  log(`run ${run.name}: ${folder.state === "resumed" ? "resuming" : "starting"} in ${dir}`);
  setActivity(`run ${run.name}, set-up`);
  const deps = baseDepsFor(manifest, run.seed, options.smoke, log);
  const algorithm = await createPlugin(registries, "algorithm", run.algorithm, deps);
  const reward = await createPlugin(registries, "reward", run.reward, deps);
  algorithm.checkReward?.(reward, run.reward.name);
  // The folder the reward prepares in (and queue workers restore it from).
  const rewardDir = reward.prepare === undefined
    ? undefined
    : join(shared.experimentDir, SHARED_FOLDER, "rewards", rewardFolderName(run.reward));
  if (reward.prepare !== undefined && rewardDir !== undefined) {
    await Deno.mkdir(rewardDir, { recursive: true });
    setActivity(`run ${run.name}, preparing the reward`);
    const prepare = reward.prepare.bind(reward);
    await profiler.phase("reward", () =>
      prepare({
        dir: rewardDir,
        splits: shared.splits,
        tokenizer: shared.tokenizer,
        bcPolicy: () => shared.bcPolicy(manifest.seed),
        evaluation: manifest.evaluation,
        seed: manifest.seed,
        smoke: options.smoke,
        metrics: new MetricsWriter(join(rewardDir, "metrics.jsonl")),
        progress: (label, total, unit) => {
          setActivity(`run ${run.name}, reward ${label}`);
          return startProgress(`reward: ${label}`, total, unit);
        },
        log: (message) => log(`reward: ${message}`),
      }));
  }
  const ctx: RunContext = {
    experiment: manifest.experiment,
    run: run.name,
    dir,
    sharedDir: join(shared.experimentDir, SHARED_FOLDER),
    fingerprint: hashText(JSON.stringify({
      data: manifest.data,
      tokenizer: manifest.tokenizer,
      model: manifest.model,
      bc: manifest.bc,
      bcSeed: run.bcSeed,
      reward: run.reward,
      smoke: options.smoke,
    })),
    ...(run.loss ? { lossKey: hashText(JSON.stringify(run.loss)) } : {}),
    seed: run.seed,
    smoke: options.smoke,
    resume: folder.state === "resumed",
    splits: shared.splits,
    tokenizer: shared.tokenizer,
    reward,
    metrics: folder.metrics,
    bcPolicy: (options) => shared.bcPolicy(run.bcSeed, options),
    bc: manifest.bc,
    evaluation: manifest.evaluation,
    progress: (label, total, unit) => {
      setActivity(`run ${run.name}, ${label}`);
      return startProgress(`${run.name}: ${label}`, total, unit);
    },
    log: (message) => log(`${run.name}: ${message}`),
    executor: shared.executor,
    ...(manifest.model === undefined ? {} : {
      recipe: {
        sections: {
          backend: manifest.backend,
          tokenizer: manifest.tokenizer,
          model: manifest.model,
          reward: run.reward,
        },
        baseDir: manifest.baseDir,
        seed: run.seed,
        smoke: options.smoke,
        ...(rewardDir === undefined ? {} : { rewardDir }),
      },
    }),
  };
  if (run.loss) ctx.loss = await createPlugin(registries, "loss", run.loss, deps);
  if (run.threshold) {
    ctx.threshold = await createPlugin(registries, "threshold", run.threshold, deps);
  }
  const started = performance.now();
  setActivity(`run ${run.name}`);
  const summary = await algorithm.run(ctx);
  const seconds = (performance.now() - started) / 1000;
  await writeRunSummary(dir, { ...summary, backend: shared.backend.name, seconds });
  const profile = profiler.snapshot();
  await writeFileAtomic(join(dir, PROFILE_FILE), JSON.stringify(profile, null, 1) + "\n");
  log(`run ${run.name}: done in ${seconds.toFixed(1)}s`);
  return { summary, profile };
}

/** BC model selection when the manifest's reward is learned: sentence chrF, in [0, 1]. */
const CHRF_SELECTION: RewardModel = {
  needsReference: true,
  score: (rows) =>
    Promise.resolve(rows.map((r) => sentenceChrf(r.hypothesis, r.reference ?? "") / 100)),
};

/** `<name>-<hash of the config>`: one folder per distinct reward config. */
function rewardFolderName(ref: ResolvedPluginRef): string {
  const text = JSON.stringify({ name: ref.module ?? ref.name, config: ref.config });
  return `${ref.name.replace(/[^A-Za-z0-9_-]/g, "_")}-${hashText(text).slice(0, 8)}`;
}

function baseDepsFor(
  manifest: ResolvedManifest,
  seed: number,
  smoke: boolean,
  log: (message: string) => void,
): Omit<PluginDeps, "create"> {
  return { seed, baseDir: manifest.baseDir, smoke, log };
}
