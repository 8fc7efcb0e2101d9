/**
 * Shared scaffolding of the tests that run tiny experiments: a temporary folder that is
 * always removed, the deps of a plugin created on its own, the tiny manifest most of them
 * start from, and a run of a manifest with the built-in plugins that collects the log.
 */

import { createPlugin, runExperiment } from "../core/experiment.ts";
import assert from "node:assert/strict";
import { ManifestError } from "../core/errors.ts";
import { resolveManifest, resolvePluginRef } from "../core/manifest/mod.ts";
import { createRegistries, type Registries } from "../core/registry.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import {
  pluginDefaults,
  type PluginDefinition,
  type PluginDeps,
  type PluginKind,
} from "../core/plugin.ts";
import type { EvalSettings, RewardModel, Splits } from "../core/types.ts";

/**
 * Calls `fn` with a fresh temporary folder (its name starting with `prefix`, if given) and
 * removes the folder afterwards, whether `fn` succeeds or throws; returns what `fn` returns.
 */
export async function withTempDir<T>(
  fn: (dir: string) => Promise<T>,
  prefix?: string,
): Promise<T> {
  const dir = await Deno.makeTempDir(prefix === undefined ? {} : { prefix });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The deps of a plugin created on its own, outside a manifest: the run's `seed`, paths
 * relative to `baseDir`, no smoke run, no log, and no nested plugins (creating one rejects).
 */
export function standaloneDeps(baseDir = "/", seed = 1): PluginDeps {
  return {
    seed,
    baseDir,
    smoke: false,
    create: () => Promise.reject(new Error("no nested plugins in a standalone plugin")),
    log: () => {},
  };
}

/**
 * Loads a data plugin as the framework does, standalone: created with its defaults and
 * `config` (paths relative to `baseDir`), then `load()`.
 */
export async function loadStandalone(
  plugin: PluginDefinition<"data">,
  config: Record<string, unknown>,
  baseDir: string,
): Promise<Splits> {
  const source = await plugin.create(
    { ...pluginDefaults(plugin), ...config },
    standaloneDeps(baseDir),
  );
  return await source.load();
}

/**
 * Creates the built-in reward `name` with `config` as a manifest's reward section would (resolved
 * and checked), outside an experiment: seed 1, paths relative to `baseDir`, no log.
 */
export async function createReward(
  name: string,
  config: Record<string, unknown>,
  baseDir = "/",
): Promise<RewardModel> {
  const registries = createRegistries(builtinPlugins);
  const ref = await resolvePluginRef(registries, "reward", { name, config }, "test");
  return await createPlugin(registries, "reward", ref, {
    seed: 1,
    baseDir,
    smoke: false,
    log: () => {},
  });
}

/**
 * Returns `bad(config, pattern)`, which asserts that the manifest resolver refuses the built-in
 * `kind` plugin `name` with `config` by a ManifestError whose message matches `pattern`.
 */
export function configRejecter(
  kind: PluginKind,
  name: string,
): (config: Record<string, unknown>, pattern: RegExp) => Promise<void> {
  const registries = createRegistries(builtinPlugins);
  return async (config, pattern) => {
    await assert.rejects(
      () => resolvePluginRef(registries, kind, { name, config }, "m.json"),
      (e: unknown) => e instanceof ManifestError && pattern.test(e.message),
      JSON.stringify(config),
    );
  };
}

/**
 * The evaluation settings of unit tests that call BC, Improve, PPO or the evaluators directly
 * (a new object on every call): short outputs, no validation/test budget, no Best-of-N, and
 * selection by the mean reward of 2 samples per source; `overrides` replaces fields.
 */
export function tinyEvalSettings(overrides: Partial<EvalSettings> = {}): EvalSettings {
  return {
    maxLen: 8,
    batchSize: 16,
    validSize: 0,
    testSize: 0,
    temperature: 0.8,
    bestOfN: [],
    bestOfNSize: 0,
    selectBy: "sample",
    selectSamples: 2,
    ...overrides,
  };
}

/**
 * A tiny experiment manifest (a new object on every call): synthetic data, a BPE vocabulary of
 * 300, a transformer 16 wide with one encoder and one decoder layer, chrF as reward and small
 * BC and evaluation budgets, with the keys of `overrides` replacing its own (a key whose value
 * is `undefined` is left out). Runs are empty unless given.
 */
export function tinyManifest(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const manifest: Record<string, unknown> = {
    experiment: "tiny",
    seed: 3,
    backend: "cpu",
    data: { name: "synthetic", config: { pairs: 200 } },
    tokenizer: { name: "bpe", config: { vocabSize: 300 } },
    model: {
      name: "transformer",
      config: { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1 },
    },
    reward: "chrf",
    bc: { steps: 4, batchSize: 8, evalEvery: 0, evalSize: 4 },
    evaluation: { maxLen: 10, validSize: 4, testSize: 4 },
    runs: [],
    ...overrides,
  };
  for (const [key, value] of Object.entries(manifest)) {
    if (value === undefined) delete manifest[key];
  }
  return manifest;
}

/**
 * The smallest ReST run, named "rest": one Grow step of 6 sources and one Improve step of 2
 * gradient steps, with the BC loss and a fixed threshold of 0.
 */
export function tinyRestRun(): Record<string, unknown> {
  return {
    name: "rest",
    algorithm: {
      name: "rest",
      config: { growSteps: 1, improveSteps: 1, grow: { sources: 6 }, improve: { steps: 2 } },
    },
    loss: "bc",
    threshold: { name: "fixed", config: { values: [0] } },
  };
}

/** Options of {@link runTiny}. */
export interface RunTinyOptions {
  /** Smoke mode, for both resolving and running (default false). */
  smoke?: boolean;
  /** The registries to resolve and run with (default: the built-in plugins). */
  registries?: Registries;
}

/**
 * Resolves `manifest` and runs it, without resuming, into the folder `out`; returns the
 * experiment's result and the lines it logged.
 */
export async function runTiny(
  manifest: Record<string, unknown>,
  out: string,
  options: RunTinyOptions = {},
): Promise<{ result: Awaited<ReturnType<typeof runExperiment>>; logs: string[] }> {
  const smoke = options.smoke ?? false;
  const registries = options.registries ?? createRegistries(builtinPlugins);
  const resolved = await resolveManifest(manifest, registries, smoke ? { smoke: true } : {});
  const logs: string[] = [];
  const result = await runExperiment(resolved, registries, {
    out,
    resume: false,
    smoke,
    log: (message) => logs.push(message),
  });
  return { result, logs };
}
