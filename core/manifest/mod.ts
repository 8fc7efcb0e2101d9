/**
 * Experiment manifests: load, validate and resolve, reporting every problem at once.
 *
 * Validation has three steps:
 * 1. the envelope schema (unknown keys rejected, types checked);
 * 2. every plugin reference `{name | module, config}` against that plugin's own
 *    config schema, with defaults filled in (nested references, such as the parts
 *    of a weighted reward, are resolved the same way);
 * 3. each run's sections against what its algorithm uses.
 *
 * Every problem carries a JSON pointer into the manifest, e.g.
 * `/runs/2/loss/config/clip: must be > 0`.
 *
 * This file reads top to bottom: load (read the file, parse its text), then
 * {@link resolveManifest} runs the three steps. The steps' parts live beside it: the envelope
 * schema in envelope.ts, plugin references and the one loader of user plugin modules in
 * resolver.ts, the ajv setup in ajv.ts, JSON text and syntax-error positions in
 * json_text.ts, and the size and number guards in limits.ts.
 *
 * @module
 */

import { dirname, resolve } from "node:path";
import { appendAll } from "../append.ts";
import { ManifestError, type ManifestProblem } from "../errors.ts";
import { checkRegularFile } from "../fs.ts";
import type { PluginDefinition, PluginKind, ResolvedPluginRef } from "../plugin.ts";
import type { Registries } from "../registry.ts";
import type { BcSettings, EvalSettings } from "../types.ts";
import { smokeBc, smokeEval } from "../sections.ts";
import { envelopeProblems, folderProblems, RUN_PLUGINS, TOP_LEVEL_PLUGINS } from "./envelope.ts";
import { lineAndColumn, scanJsonText } from "./json_text.ts";
import {
  capped,
  checkShape,
  MAX_MANIFEST_BYTES,
  MAX_MANIFEST_DEPTH,
  MAX_MANIFEST_VALUES,
  numberProblems,
} from "./limits.ts";
import { Resolver } from "./resolver.ts";

/** One run after resolution. */
export interface ResolvedRun {
  /** Run name, unique within the experiment. */
  name: string;
  /** Seed of the run. */
  seed: number;
  /** Seed of the BC policy the run starts from (runs with equal `bcSeed` share it). */
  bcSeed: number;
  /** The run's name in reports, when the manifest gives one. */
  label?: string;
  /** The algorithm. */
  algorithm: ResolvedPluginRef;
  /** The reward (the run's own or the top-level one). */
  reward: ResolvedPluginRef;
  /** The loss, when given. */
  loss?: ResolvedPluginRef;
  /** The threshold schedule, when given. */
  threshold?: ResolvedPluginRef;
}

/** A validated manifest with every plugin's config resolved and defaults filled in. */
export interface ResolvedManifest {
  /** The manifest file (absolute) or a label. */
  file: string;
  /** Folder relative paths are resolved against. */
  baseDir: string;
  /** Experiment name. */
  experiment: string;
  /** Description, or "". */
  description: string;
  /** Base seed. */
  seed: number;
  /** Seeds per run (runs are already expanded to `<name>@seed<k>` when above 1). */
  seeds: number;
  /** Backend plugin. */
  backend: ResolvedPluginRef;
  /** Data plugin. */
  data: ResolvedPluginRef;
  /** Tokenizer plugin. */
  tokenizer: ResolvedPluginRef;
  /** Model plugin, when given. */
  model?: ResolvedPluginRef;
  /** Default reward plugin. */
  reward: ResolvedPluginRef;
  /** Where Grow shards are computed (absent: in the experiment's process, as `local` does). */
  executor?: ResolvedPluginRef;
  /** Behaviour-cloning settings. */
  bc: BcSettings;
  /** Evaluation settings. */
  evaluation: EvalSettings;
  /** The runs in manifest order. */
  runs: ResolvedRun[];
}

/** Options for {@link resolveManifest}. */
export interface ResolveOptions {
  /** Label used in messages (the file path). */
  file?: string;
  /** Folder for relative paths and `module` references (default: the file's folder). */
  baseDir?: string;
  /** Replaces the manifest's `seed`. */
  seed?: number;
  /** Replaces the manifest's `seeds`. */
  seeds?: number;
  /** Replaces the manifest's `backend` (by name). */
  backend?: string;
  /** Applies each plugin's `smoke` scaling. */
  smoke?: boolean;
}
/**
 * Parses JSON text, turning syntax errors into a ManifestError with line and column. A
 * leading byte-order mark is ignored. The text is scanned before it is parsed, so that
 * duplicate keys (which JSON.parse would resolve silently), nesting deeper than
 * {@link MAX_MANIFEST_DEPTH} and more than {@link MAX_MANIFEST_VALUES} values are reported
 * with their JSON pointers, in linear time and without recursion.
 *
 * @throws {ManifestError} listing what the scan found.
 */
export function parseManifestText(text: string, file: string): unknown {
  const body = text.startsWith("\ufeff") ? text.slice(1) : text;
  const scan = scanJsonText(body, { maxDepth: MAX_MANIFEST_DEPTH, maxValues: MAX_MANIFEST_VALUES });
  if (scan.syntax !== undefined) {
    const { line, column } = lineAndColumn(body, scan.syntax.offset);
    throw new ManifestError(file, [{
      path: "",
      message: `invalid JSON: ${scan.syntax.reason} (line ${line}, column ${column})`,
    }]);
  }
  if (scan.problems.length > 0) throw new ManifestError(file, capped(scan.problems));
  try {
    return JSON.parse(body);
  } catch (error) {
    // Not expected: the scanner accepts exactly what JSON.parse accepts.
    const message = (error instanceof Error ? error.message : String(error)).replace(/\s+/g, " ");
    throw new ManifestError(file, [{ path: "", message: `invalid JSON: ${message}` }]);
  }
}

/**
 * Reads and parses a manifest file. Only a regular file (or a symlink to one) of at most
 * {@link MAX_MANIFEST_BYTES} is read: a FIFO, socket, device or folder is refused at once,
 * naming what it is, instead of hanging or reading forever.
 *
 * @throws {ManifestError} when the file is missing, not a regular file, too large, not
 *   UTF-8, or not valid JSON (see {@link parseManifestText}).
 */
export async function readManifestFile(file: string): Promise<unknown> {
  let bytes: Uint8Array;
  try {
    await checkRegularFile(file, { what: "manifest", maxBytes: MAX_MANIFEST_BYTES });
    bytes = await Deno.readFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw error; // reported as a permission error by the CLI
    }
    const message = error instanceof Error ? error.message : String(error);
    // checkRegularFile's messages start with the path, which ManifestError already names.
    const reason = message.startsWith(`${file}: `) ? message.slice(file.length + 2) : message;
    throw new ManifestError(file, [{ path: "", message: `cannot read manifest: ${reason}` }]);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    // Strict decoding, so that stray bytes never turn silently into U+FFFD in a name or path.
    const lossy = new TextDecoder().decode(bytes);
    const line = lossy.slice(0, Math.max(0, lossy.indexOf("\ufffd"))).split("\n").length;
    throw new ManifestError(file, [{
      path: "",
      message: `not valid UTF-8 (first bad byte on line ${line}); save the manifest as UTF-8`,
    }]);
  }
  return parseManifestText(text, file);
}

/**
 * Validates a parsed manifest and resolves every plugin reference.
 *
 * @throws {ManifestError} listing every problem found, each with its JSON pointer.
 */
export async function resolveManifest(
  raw: unknown,
  registries: Registries,
  options: ResolveOptions = {},
): Promise<ResolvedManifest> {
  const file = options.file ?? "<manifest>";
  const baseDir = options.baseDir ??
    (options.file === undefined ? Deno.cwd() : dirname(resolve(options.file)));
  checkShape(raw, file);
  const data = structuredClone(raw) as Record<string, unknown>;
  if (data !== null && typeof data === "object" && !Array.isArray(data)) {
    if (options.seed !== undefined) data.seed = options.seed;
    if (options.seeds !== undefined) data.seeds = options.seeds;
    if (options.backend !== undefined) data.backend = options.backend;
  }

  // Step 1: the envelope.
  const problems = envelopeProblems(data);
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new ManifestError(file, problems);
  }

  // Step 2: plugin references (only those whose envelope part is well-formed).
  const resolver = new Resolver(registries, baseDir, options.smoke ?? false);
  // A path is bad when it has a problem or holds one: every problem's path and its prefixes.
  const badPaths = new Set<string>();
  for (const { path } of problems) {
    for (let end = path.length; end > 0; end = path.lastIndexOf("/", end - 1)) {
      badPaths.add(path.slice(0, end));
    }
  }
  const isBad = (path: string) => badPaths.has(path);

  const top: Partial<Record<keyof typeof TOP_LEVEL_PLUGINS, ResolvedPluginRef>> = {};
  for (const [key, spec] of Object.entries(TOP_LEVEL_PLUGINS)) {
    const section = key as keyof typeof TOP_LEVEL_PLUGINS;
    const value = data[key] ?? spec.default;
    if (value === undefined || isBad(`/${key}`)) continue;
    const result = await resolver.resolve(spec.kind, value, `/${key}`);
    if (result !== undefined) top[section] = result.ref;
  }

  const runs: ResolvedRun[] = [];
  const rawRuns = Array.isArray(data.runs) ? data.runs as Record<string, unknown>[] : [];
  let modelReported = false;
  const seed = typeof data.seed === "number" ? data.seed : 1;
  for (let i = 0; i < rawRuns.length; i++) {
    const run = rawRuns[i];
    const path = `/runs/${i}`;
    if (run === null || typeof run !== "object" || Array.isArray(run)) continue;
    if (run.algorithm === undefined || isBad(`${path}/algorithm`)) continue;
    const algorithm = await resolver.resolve("algorithm", run.algorithm, `${path}/algorithm`);
    const sections: Partial<Record<keyof typeof RUN_PLUGINS, ResolvedPluginRef>> = {};
    for (const [key, kind] of Object.entries(RUN_PLUGINS)) {
      const section = key as keyof typeof RUN_PLUGINS;
      if (run[key] === undefined || isBad(`${path}/${key}`)) continue;
      const result = await resolver.resolve(kind, run[key], `${path}/${key}`);
      if (result !== undefined) sections[section] = result.ref;
    }
    if (algorithm === undefined) continue;

    // Step 3: sections against what the algorithm uses.
    appendAll(resolver.problems, sectionProblems(run, path, algorithm, top.reward !== undefined));
    if (algorithm.plugin.uses?.bc === "required" && data.model === undefined && !modelReported) {
      modelReported = true;
      resolver.problem(
        "/model",
        `is required: ${path} uses algorithm "${algorithm.ref.name}", which needs a policy model`,
      );
    }
    if (typeof run.name !== "string" || top.reward === undefined && sections.reward === undefined) {
      continue;
    }
    const seeds = typeof data.seeds === "number" ? data.seeds : 1;
    const runSeed = typeof run.seed === "number" ? run.seed : seed;
    for (let k = 1; k <= seeds; k++) {
      runs.push({
        name: seeds > 1 ? `${run.name}@seed${k}` : run.name,
        seed: runSeed + k - 1,
        bcSeed: seed + k - 1,
        ...(typeof run.label === "string" ? { label: run.label } : {}),
        algorithm: algorithm.ref,
        reward: sections.reward ?? top.reward!,
        ...(sections.loss ? { loss: sections.loss } : {}),
        ...(sections.threshold ? { threshold: sections.threshold } : {}),
      });
    }
  }

  appendAll(problems, resolver.problems);
  appendAll(problems, folderProblems(data, isBad));
  appendAll(problems, numberProblems(data, problems));
  if (problems.length > 0) {
    problems.sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
    throw new ManifestError(file, capped(problems));
  }
  return {
    file,
    baseDir,
    experiment: data.experiment as string,
    description: typeof data.description === "string" ? data.description : "",
    seed,
    seeds: typeof data.seeds === "number" ? data.seeds : 1,
    backend: top.backend!,
    data: top.data!,
    tokenizer: top.tokenizer!,
    ...(top.model ? { model: top.model } : {}),
    reward: top.reward!,
    ...(top.executor ? { executor: top.executor } : {}),
    bc: options.smoke ? smokeBc(data.bc as BcSettings) : data.bc as BcSettings,
    evaluation: options.smoke
      ? smokeEval(data.evaluation as EvalSettings)
      : data.evaluation as EvalSettings,
    runs,
  };
}

/**
 * Step 3 for run `path`: a run section its algorithm does not use, or a section it requires
 * that is missing (a run without a reward uses the top-level one, `hasTopReward`).
 */
function sectionProblems(
  run: Record<string, unknown>,
  path: string,
  algorithm: { ref: ResolvedPluginRef; plugin: PluginDefinition },
  hasTopReward: boolean,
): ManifestProblem[] {
  const problems: ManifestProblem[] = [];
  const uses = algorithm.plugin.uses ?? {};
  for (const key of Object.keys(RUN_PLUGINS) as (keyof typeof RUN_PLUGINS)[]) {
    const use = uses[key];
    const given = run[key] !== undefined;
    if (given && use === undefined && key !== "reward") {
      problems.push({
        path: `${path}/${key}`,
        message: `algorithm "${algorithm.ref.name}" does not use a ${key}; remove this section`,
      });
    }
    if (!given && use === "required" && !(key === "reward" && hasTopReward)) {
      problems.push({
        path: `${path}/${key}`,
        message: `is required by algorithm "${algorithm.ref.name}"`,
      });
    }
  }
  return problems;
}

/**
 * Validates and resolves a single plugin reference outside a manifest (used by the
 * `score` command). `label` names the source of the reference in messages.
 *
 * @throws {ManifestError} listing the problems.
 */
export async function resolvePluginRef(
  registries: Registries,
  kind: PluginKind,
  ref: unknown,
  label: string,
  baseDir: string = Deno.cwd(),
): Promise<ResolvedPluginRef> {
  checkShape(ref, label);
  const resolver = new Resolver(registries, baseDir, false);
  const result = await resolver.resolve(kind, ref, "");
  const problems = [...resolver.problems];
  appendAll(problems, numberProblems(ref, problems));
  if (result === undefined || problems.length > 0) throw new ManifestError(label, problems);
  return result.ref;
}

/**
 * Reads, validates and resolves a manifest file: every plugin reference is checked against
 * its plugin's config schema and gets its defaults, `options.smoke` applies each plugin's
 * `--smoke` scaling, and relative paths resolve against the file's folder.
 *
 * @example Load a small manifest, then one with mistakes
 * ```ts
 * import assert from "node:assert/strict";
 * import { join } from "node:path";
 * import { builtinPlugins, createRegistries, loadManifest, ManifestError } from "@rest/framework";
 *
 * const registries = createRegistries(builtinPlugins);
 * const dir = await Deno.makeTempDir();
 * const file = join(dir, "tiny.json");
 * await Deno.writeTextFile(
 *   file,
 *   JSON.stringify({
 *     experiment: "tiny",
 *     data: { name: "synthetic", config: { pairs: 1000 } },
 *     tokenizer: "bpe",
 *     model: "transformer",
 *     reward: "chrf",
 *     runs: [{ name: "bc", algorithm: "bc" }],
 *   }),
 * );
 * const manifest = await loadManifest(file, registries, { smoke: true });
 * assert.equal(manifest.backend.name, "auto"); // the default backend
 * assert.equal(manifest.reward.config.charOrder, 6); // chrF's defaults are filled in
 * assert.equal(manifest.data.config.pairs, 400); // --smoke scaled the data down
 * assert.equal(manifest.bc.steps, 30); // ... and the BC budget
 *
 * // Every problem is reported at once, each at its JSON pointer.
 * await Deno.writeTextFile(
 *   file,
 *   JSON.stringify({
 *     experiment: "tiny",
 *     data: "synthetic",
 *     tokenizer: "bpe",
 *     reward: "chrff",
 *     bc: { steps: -1 },
 *     runs: [{ name: "bc", algorithm: "bc" }],
 *   }),
 * );
 * await assert.rejects(loadManifest(file, registries), (e) => {
 *   assert.ok(e instanceof ManifestError);
 *   assert.deepEqual(e.problems.map((p) => p.path), ["/bc/steps", "/model", "/reward"]);
 *   assert.match(e.message, /unknown reward plugin "chrff"; did you mean "chrf"\?/);
 *   return true;
 * });
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @throws {ManifestError} listing every problem with its JSON pointer, or saying why the file
 *   could not be read (see {@link readManifestFile}).
 */
export async function loadManifest(
  file: string,
  registries: Registries,
  options: Omit<ResolveOptions, "file"> = {},
): Promise<ResolvedManifest> {
  const raw = await readManifestFile(file);
  return await resolveManifest(raw, registries, { ...options, file });
}
