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
 * @module
 */

import { guardDefinition, PluginError } from "./plugin_guard.ts";
import { currentActivity } from "./progress.ts";
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import { dirname, isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { appendAll } from "./append.ts";
import { ManifestError, type ManifestProblem } from "./errors.ts";
import { scoresProblem } from "./evaluate.ts";
import { checkRegularFile } from "./fs.ts";
import { EXPERIMENT_FOLDER_ENTRIES, folderNameProblem, reservedEntry } from "./layout.ts";
import { escapePointer, lineAndColumn, scanJsonText } from "./manifest_text.ts";
import {
  definePlugin,
  type JsonSchema,
  type PluginDefinition,
  type PluginKind,
  type ResolvedPluginRef,
} from "./plugin.ts";
import { nearest, type Registries, type Registry } from "./registry.ts";
import type { RewardInput, RunSection } from "./types.ts";
import {
  BC_SCHEMA,
  type BcSettings,
  EVAL_SCHEMA,
  type EvalSettings,
  smokeBc,
  smokeEval,
} from "./sections.ts";

/** Schema keyword marking a config property as a nested plugin reference of the given kind. */
export const PLUGIN_REF_KEYWORD = "x-plugin-kind";

/** Top-level sections holding one plugin reference each, with their kind and default. */
export const TOP_LEVEL_PLUGINS = {
  backend: { kind: "backend", default: "auto" },
  data: { kind: "data", default: undefined },
  tokenizer: { kind: "tokenizer", default: "bpe" },
  model: { kind: "model", default: undefined },
  reward: { kind: "reward", default: "chrf" },
} as const satisfies Record<string, { kind: PluginKind; default: string | undefined }>;

/** Run-level sections holding one plugin reference each. */
export const RUN_PLUGINS = {
  loss: "loss",
  threshold: "threshold",
  reward: "reward",
} as const satisfies Partial<Record<RunSection, PluginKind>>;

const NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]*$";

/** JSON Schema of a plugin reference in the envelope (shape only; configs are checked per plugin). */
export function pluginRefSchema(kind: PluginKind, description: string): JsonSchema {
  return {
    description: `${description} A ${kind} plugin: its name, or {"name": ..., "config": {...}}, ` +
      `or {"module": "./file.ts", "config": {...}} for a local plugin file.`,
    type: ["string", "object"],
  };
}

/** The envelope schema: the manifest's structure, without the plugins' own configs. */
export function envelopeSchema(): JsonSchema {
  const top: Record<string, JsonSchema> = {};
  for (const [key, spec] of Object.entries(TOP_LEVEL_PLUGINS)) {
    top[key] = pluginRefSchema(spec.kind, `Top-level ${key} section.`);
  }
  return {
    $id: "rest-manifest",
    description: "A ReST experiment manifest: shared data, tokenizer, model and reward, and runs.",
    type: "object",
    additionalProperties: false,
    required: ["experiment", "data", "runs"],
    properties: {
      $schema: { type: "string", description: "Path of the JSON Schema, for editors." },
      experiment: {
        type: "string",
        pattern: NAME_PATTERN,
        maxLength: 255,
        description: "Experiment name; outputs go to <out>/<experiment>/.",
      },
      description: { type: "string", description: "Free text describing the experiment." },
      seed: {
        type: "integer",
        minimum: 0,
        maximum: 2147483647,
        default: 1,
        description: "Base seed of every run (a run may set its own).",
      },
      seeds: {
        type: "integer",
        minimum: 1,
        maximum: 100,
        default: 1,
        description: "Repeat every run with this many seeds (runs become <name>@seed<k>, each " +
          "with its own BC policy; the report shows mean and standard deviation).",
      },
      ...top,
      bc: BC_SCHEMA,
      evaluation: EVAL_SCHEMA,
      runs: {
        type: "array",
        minItems: 1,
        description: "The runs of the experiment; they share data, tokenizer, model and reward.",
        items: {
          type: "object",
          additionalProperties: false,
          required: ["name", "algorithm"],
          properties: {
            name: {
              type: "string",
              pattern: NAME_PATTERN,
              maxLength: 255,
              description: "Run name (unique, also up to letter case); it names the run's " +
                "folder, so it may not be one of the experiment folder's own entries " +
                `(${EXPERIMENT_FOLDER_ENTRIES.join(", ")}).`,
            },
            description: { type: "string", description: "Free text describing the run." },
            label: {
              type: "string",
              minLength: 1,
              maxLength: 80,
              description: 'The run\'s name in reports, e.g. "ReST (G=1, I=4)" (default: made ' +
                "from the algorithm and its config).",
            },
            seed: {
              type: "integer",
              minimum: 0,
              maximum: 2147483647,
              description: "Seed of this run; defaults to the manifest's seed.",
            },
            algorithm: pluginRefSchema("algorithm", "The algorithm this run executes."),
            loss: pluginRefSchema("loss", "Loss used by the algorithm."),
            threshold: pluginRefSchema("threshold", "Reward-threshold schedule."),
            reward: pluginRefSchema("reward", "Reward of this run (overrides the top level)."),
          },
        },
      },
    },
  };
}

/**
 * The envelope schema enriched with every registered plugin's config schema, for
 * editor completion (`deno task schema` writes it to experiments/manifest.schema.json).
 * Validation itself uses {@link envelopeSchema} plus each plugin's own schema.
 */
export function editorSchema(registries: Registries): JsonSchema {
  const schema = envelopeSchema();
  delete schema.$id;
  schema.$schema = "http://json-schema.org/draft-07/schema#";
  schema.title = "ReST experiment manifest";
  const refFor = (kind: PluginKind, description: string): JsonSchema => {
    const plugins = (registries[kind] as Registry).list();
    return {
      description,
      anyOf: [
        {
          type: "string",
          enum: plugins.map((p) => p.name),
          description: `A ${kind} plugin with its default config.`,
        },
        ...plugins.map((p) => ({
          type: "object",
          description: p.summary,
          additionalProperties: false,
          required: ["name"],
          properties: {
            name: { const: p.name, description: p.summary },
            config: p.configSchema,
          },
        })),
        {
          type: "object",
          description: "A local plugin file that default-exports definePlugin({...}).",
          additionalProperties: false,
          required: ["module"],
          properties: {
            module: { type: "string", description: "Path of the plugin file." },
            config: { type: "object", description: "The plugin's config." },
          },
        },
      ],
    };
  };
  for (const [key, spec] of Object.entries(TOP_LEVEL_PLUGINS)) {
    schema.properties[key] = refFor(spec.kind, schema.properties[key].description);
  }
  const runProps = schema.properties.runs.items.properties;
  runProps.algorithm = refFor("algorithm", runProps.algorithm.description);
  for (const [key, kind] of Object.entries(RUN_PLUGINS)) {
    runProps[key] = refFor(kind, runProps[key].description);
  }
  return schema;
}

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

/** Creates the ajv instance used for envelopes and plugin configs (strict, all errors, defaults). */
export function createAjv(): Ajv {
  const ajv = new Ajv({
    allErrors: true,
    strict: true,
    useDefaults: true,
    allowUnionTypes: true,
    verbose: true,
  });
  ajv.addKeyword({ keyword: PLUGIN_REF_KEYWORD, schemaType: "string" });
  return ajv;
}

/** Turns an ajv error into a readable problem under `prefix`. */
export function formatAjvError(error: ErrorObject, prefix: string, data: unknown): ManifestProblem {
  const path = prefix + error.instancePath;
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case "additionalProperties": {
      const key = String(params.additionalProperty);
      const allowed = Object.keys(
        (error.parentSchema?.properties ?? {}) as Record<string, unknown>,
      );
      const suggestion = nearest(key, allowed);
      const hint = suggestion === undefined ? "" : `; did you mean "${suggestion}"?`;
      return {
        path: `${path}/${escapePointer(key)}`,
        message: `unknown key${hint} (allowed: ${allowed.join(", ")})`,
      };
    }
    case "required":
      return {
        path: `${path}/${escapePointer(String(params.missingProperty))}`,
        message: "is required",
      };
    case "enum":
      return {
        path,
        message: `must be one of ${
          (params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(", ")
        } (got ${show(pointerGet(data, error.instancePath))})`,
      };
    default:
      return {
        path,
        message: `${error.message ?? "is invalid"} (got ${
          show(pointerGet(data, error.instancePath))
        })`,
      };
  }
}

function show(value: unknown): string {
  // JSON.stringify writes NaN and ±Infinity (from raw text such as 1e999) as null.
  if (typeof value === "number" && !Number.isFinite(value)) {
    return Number.isNaN(value) ? "NaN" : `${value}, beyond the range of a double`;
  }
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function pointerGet(data: unknown, pointer: string): unknown {
  if (pointer === "") return data;
  let current: unknown = data;
  for (const raw of pointer.slice(1).split("/")) {
    const key = raw.replaceAll("~1", "/").replaceAll("~0", "~");
    if (current === null || typeof current !== "object") return undefined;
    current = (current as Record<string, unknown>)[key];
  }
  return current;
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
 * A user reward plugin whose instances check every score they return: a score that is NaN
 * or outside [0, 1] (or a wrong number of scores) is a {@link UserError} naming the module
 * file, the plugin and the row, rather than an internal error deep in the algorithm.
 */
function checkedUserReward(
  plugin: PluginDefinition<"reward">,
  file: string,
): PluginDefinition<"reward"> {
  return {
    ...plugin,
    async create(config, deps) {
      const model = await plugin.create(config, deps);
      if (model === null || typeof model !== "object" || typeof model.score !== "function") {
        throw new PluginError(
          { kind: "reward", name: plugin.name, file },
          "create",
          currentActivity(),
          "the object it returned has no score(); a reward plugin must provide score()",
        );
      }
      const score = async (rows: readonly RewardInput[]): Promise<number[]> => {
        const scores = await model.score(rows);
        const problem = scoresProblem(scores, rows.length);
        if (problem !== undefined) {
          const row = problem.row === undefined ? undefined : rows[problem.row];
          const where = row === undefined
            ? ""
            : ` (source ${show(row.source)}, hypothesis ${show(row.hypothesis)})`;
          const origin = { kind: "reward", name: plugin.name, file };
          throw new PluginError(origin, "score", currentActivity(), `${problem.message}${where}`);
        }
        return scores;
      };
      // Everything else is the plugin's own object, methods bound to it (private fields work).
      return new Proxy(model, {
        get(target, key) {
          if (key === "score") return score;
          const value = Reflect.get(target, key, target);
          return typeof value === "function" ? value.bind(target) : value;
        },
      });
    },
  };
}

// Compiling a schema takes milliseconds, so each plugin's validator is compiled once per process.
let configAjv: Ajv | undefined;
const configValidators = new WeakMap<PluginDefinition, ValidateFunction>();

/** The largest plugin module file the resolver imports (source code, not data). */
const MAX_MODULE_BYTES = 64 * 1024 * 1024;

/** User plugin modules registered into each set of registries, by absolute file path. */
const registeredModules = new WeakMap<Registries, Map<string, PluginDefinition>>();

/** Resolves plugin references against registries, collecting problems. */
class Resolver {
  readonly problems: ManifestProblem[] = [];
  readonly #modules = new Map<string, PluginDefinition | null>();

  constructor(
    readonly registries: Registries,
    readonly baseDir: string,
    readonly smoke: boolean,
  ) {}

  problem(path: string, message: string): void {
    this.problems.push({ path, message });
  }

  /** Loads a user plugin module (once per absolute path) and registers it. */
  async loadModule(
    specifier: string,
    kind: PluginKind,
    path: string,
  ): Promise<PluginDefinition | undefined> {
    const file = isAbsolute(specifier) ? specifier : resolve(this.baseDir, specifier);
    if (!this.#modules.has(file)) {
      this.#modules.set(file, await this.#importPlugin(file, path));
    }
    const plugin = this.#modules.get(file);
    if (plugin === null || plugin === undefined) return undefined;
    if (plugin.kind !== kind) {
      this.problem(
        `${path}/module`,
        `${file} defines a ${plugin.kind} plugin ("${plugin.name}"), but a ${kind} plugin is expected here`,
      );
      return undefined;
    }
    return plugin;
  }

  async #importPlugin(file: string, path: string): Promise<PluginDefinition | null> {
    // Resolving again with the same registries (a second manifest naming the same file)
    // reuses the registered plugin instead of registering its name twice.
    let loaded = registeredModules.get(this.registries);
    if (loaded === undefined) registeredModules.set(this.registries, loaded = new Map());
    const previous = loaded.get(file);
    if (previous !== undefined) return previous;
    try {
      // Only a regular file: importing a FIFO or a device would block or never end.
      await checkRegularFile(file, { what: "plugin module", maxBytes: MAX_MODULE_BYTES });
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable) throw error;
      const message = (error as Error).message.replace(`${file}: `, "");
      this.problem(`${path}/module`, `${file}: ${message}`);
      return null;
    }
    let exports: Record<string, unknown>;
    try {
      exports = await import(pathToFileURL(file).href);
    } catch (error) {
      const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
      this.problem(`${path}/module`, `cannot load plugin module ${file}: ${message}`);
      return null;
    }
    const candidate = exports.default;
    if (candidate === undefined || candidate === null || typeof candidate !== "object") {
      this.problem(
        `${path}/module`,
        `${file} must default-export a plugin definition (export default definePlugin({...}))`,
      );
      return null;
    }
    let plugin: PluginDefinition;
    try {
      plugin = definePlugin(candidate as PluginDefinition);
    } catch (error) {
      this.problem(`${path}/module`, `${file}: ${(error as Error).message}`);
      return null;
    }
    plugin = guardDefinition(plugin, file);
    if (plugin.kind === "reward") {
      plugin = checkedUserReward(plugin as PluginDefinition<"reward">, file);
    }
    const registry = this.registries[plugin.kind] as Registry | undefined;
    if (registry === undefined) return plugin; // definePlugin already rejected unknown kinds
    try {
      registry.register(plugin, file);
    } catch (error) {
      this.problem(`${path}/module`, (error as Error).message);
      return null;
    }
    loaded.set(file, plugin);
    return plugin;
  }

  validator(plugin: PluginDefinition, path: string): ValidateFunction | undefined {
    let validate = configValidators.get(plugin);
    if (validate === undefined) {
      try {
        configAjv ??= createAjv();
        validate = configAjv.compile(plugin.configSchema);
      } catch (error) {
        this.problem(
          path,
          `the config schema of ${plugin.kind} plugin "${plugin.name}" is invalid: ${
            (error as Error).message
          }`,
        );
        return undefined;
      }
      configValidators.set(plugin, validate);
    }
    return validate;
  }

  /** Resolves one reference found at `path`; undefined when it has problems. */
  async resolve(
    kind: PluginKind,
    ref: unknown,
    path: string,
  ): Promise<{ ref: ResolvedPluginRef; plugin: PluginDefinition } | undefined> {
    let name: string | undefined;
    let module: string | undefined;
    let config: unknown = {};
    if (typeof ref === "string") {
      name = ref;
    } else if (ref !== null && typeof ref === "object" && !Array.isArray(ref)) {
      const object = ref as Record<string, unknown>;
      let ok = true;
      for (const key of Object.keys(object)) {
        if (!["name", "module", "config"].includes(key)) {
          const suggestion = nearest(key, ["name", "module", "config"]);
          const hint = suggestion === undefined ? "" : `; did you mean "${suggestion}"?`;
          this.problem(
            `${path}/${escapePointer(key)}`,
            `unknown key${hint} (allowed: name, module, config)`,
          );
          ok = false;
        }
      }
      if ("name" in object && "module" in object) {
        this.problem(path, `give either "name" or "module", not both`);
        ok = false;
      } else if ("name" in object) {
        if (typeof object.name !== "string") {
          this.problem(`${path}/name`, `must be a string (got ${show(object.name)})`);
          ok = false;
        } else name = object.name;
      } else if ("module" in object) {
        if (typeof object.module !== "string" || object.module === "") {
          this.problem(`${path}/module`, `must be a file path (got ${show(object.module)})`);
          ok = false;
        } else module = object.module;
      } else {
        this.problem(path, `must have "name" (a ${kind} plugin) or "module" (a plugin file)`);
        ok = false;
      }
      if ("config" in object) {
        config = object.config;
        if (config === null || typeof config !== "object" || Array.isArray(config)) {
          this.problem(`${path}/config`, `must be an object (got ${show(config)})`);
          ok = false;
        }
      }
      if (!ok) return undefined;
    } else {
      this.problem(
        path,
        `must be a ${kind} plugin name or an object {"name", "config"} (got ${show(ref)})`,
      );
      return undefined;
    }

    let plugin: PluginDefinition | undefined;
    if (module !== undefined) {
      plugin = await this.loadModule(module, kind, path);
    } else {
      const registry = this.registries[kind] as Registry;
      plugin = registry.find(name!);
      if (plugin === undefined) {
        this.problem(
          typeof ref === "string" ? path : `${path}/name`,
          registry.unknownMessage(name!),
        );
      }
    }
    if (plugin === undefined) return undefined;

    const copy = structuredClone(config) as Record<string, unknown>;
    const validate = this.validator(plugin, path);
    if (validate === undefined) return undefined;
    let valid = validate(copy);
    if (!valid) {
      for (const error of validate.errors ?? []) {
        this.problems.push(formatAjvError(error, `${path}/config`, copy));
      }
    } else if (plugin.check !== undefined) {
      for (const problem of plugin.check(copy)) {
        this.problem(`${path}/config${problem.path}`, problem.message);
        valid = false;
      }
    }
    // Nested references are checked even when the config has other problems, so that
    // every problem is reported at once.
    const nestedOk = await this.#resolveNested(plugin.configSchema, copy, `${path}/config`);
    if (!valid || !nestedOk) return undefined;
    let finalConfig = copy;
    if (this.smoke && plugin.smoke !== undefined) {
      // The user's config was checked above, before scaling; the scaled one is checked too,
      // so that --smoke never runs (or hides) an invalid config.
      finalConfig = plugin.smoke(structuredClone(copy));
      if (!this.#checkSmoked(plugin, validate, finalConfig, path)) return undefined;
    }
    const resolved: ResolvedPluginRef = { kind, name: plugin.name, config: finalConfig };
    if (module !== undefined) {
      resolved.module = isAbsolute(module) ? module : resolve(this.baseDir, module);
    }
    return { ref: resolved, plugin };
  }

  /** Validates a config scaled by the plugin's `smoke`; false (with problems) when invalid. */
  #checkSmoked(
    plugin: PluginDefinition,
    validate: ValidateFunction,
    config: Record<string, unknown>,
    path: string,
  ): boolean {
    const problems: ManifestProblem[] = [];
    if (!validate(structuredClone(config))) {
      for (const error of validate.errors ?? []) {
        problems.push(formatAjvError(error, `${path}/config`, config));
      }
    } else if (plugin.check !== undefined) {
      for (const problem of plugin.check(config)) {
        problems.push({ path: `${path}/config${problem.path}`, message: problem.message });
      }
    }
    for (const problem of problems) {
      this.problem(
        problem.path,
        `under --smoke, ${plugin.kind} plugin "${plugin.name}" scaled this config into an ` +
          `invalid one: ${problem.message}`,
      );
    }
    return problems.length === 0;
  }

  /** Replaces nested plugin references (schema nodes marked with x-plugin-kind) in place. */
  async #resolveNested(schema: JsonSchema, value: unknown, path: string): Promise<boolean> {
    let ok = true;
    if (value === null || typeof value !== "object") return ok;
    if (Array.isArray(value)) {
      const items = schema.items as JsonSchema | undefined;
      if (items === undefined) return ok;
      for (let i = 0; i < value.length; i++) {
        const nestedKind = items[PLUGIN_REF_KEYWORD] as PluginKind | undefined;
        if (nestedKind !== undefined) {
          const result = await this.resolve(nestedKind, value[i], `${path}/${i}`);
          if (result === undefined) ok = false;
          else value[i] = result.ref;
        } else if (!(await this.#resolveNested(items, value[i], `${path}/${i}`))) ok = false;
      }
      return ok;
    }
    const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
    const object = value as Record<string, unknown>;
    for (const [key, propSchema] of Object.entries(properties)) {
      if (!(key in object)) continue;
      const nestedKind = propSchema[PLUGIN_REF_KEYWORD] as PluginKind | undefined;
      const where = `${path}/${escapePointer(key)}`;
      if (nestedKind !== undefined) {
        const result = await this.resolve(nestedKind, object[key], where);
        if (result === undefined) ok = false;
        else object[key] = result.ref;
      } else if (!(await this.#resolveNested(propSchema, object[key], where))) ok = false;
    }
    return ok;
  }
}

/** Deepest nesting of arrays and objects a manifest may have (real ones stay below 10). */
export const MAX_MANIFEST_DEPTH = 64;

/** Most values a manifest may hold (real ones hold a few hundred). */
export const MAX_MANIFEST_VALUES = 100_000;

/** Largest manifest file read, in bytes (16 MiB; real ones are a few KiB). */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

/** Most problems listed in one ManifestError; the rest are counted. */
export const MAX_LISTED_PROBLEMS = 50;

/** `problems`, cut to {@link MAX_LISTED_PROBLEMS} with a last line counting the others. */
function capped(problems: ManifestProblem[]): ManifestProblem[] {
  if (problems.length <= MAX_LISTED_PROBLEMS) return problems;
  const more = problems.length - MAX_LISTED_PROBLEMS;
  return [
    ...problems.slice(0, MAX_LISTED_PROBLEMS),
    { path: "", message: `... and ${more} more problem${more === 1 ? "" : "s"}` },
  ];
}

/**
 * The first place where a parsed manifest is nested deeper than `maxDepth` or passes
 * `maxValues` values, or undefined. Iterative and stops at the first problem, so that a
 * hostile in-memory document costs neither stack nor time (texts are checked before
 * parsing by {@link parseManifestText}).
 */
function shapeProblem(
  value: unknown,
  maxDepth: number,
  maxValues: number,
): ManifestProblem | undefined {
  const stack: { value: unknown; path: string; depth: number }[] = [{ value, path: "", depth: 0 }];
  let values = 0;
  while (stack.length > 0) {
    const { value: node, path, depth } = stack.pop()!;
    if (++values > maxValues) {
      return {
        path,
        message: `the manifest holds more than ${maxValues} values (numbers, strings, ...); ` +
          `a manifest describes an experiment, put data in data files`,
      };
    }
    if (node === null || typeof node !== "object") continue;
    if (depth >= maxDepth) return { path, message: `nested more than ${maxDepth} levels deep` };
    const keys = Object.keys(node);
    // Pushed in reverse, so that the walk (and the place reported) follows document order.
    for (let k = keys.length - 1; k >= 0; k--) {
      const key = keys[k];
      stack.push({
        value: (node as Record<string, unknown>)[key],
        path: `${path}/${escapePointer(key)}`,
        depth: depth + 1,
      });
    }
  }
  return undefined;
}

function checkShape(raw: unknown, file: string): void {
  const problem = shapeProblem(raw, MAX_MANIFEST_DEPTH, MAX_MANIFEST_VALUES);
  if (problem !== undefined) throw new ManifestError(file, [problem]);
}

/**
 * Numbers no manifest option can sensibly hold: non-finite ones (`1e999` parses as
 * Infinity) and those beyond ±(2^53 - 1), where integers stop being exact. Schemas bound
 * most options; this also covers options whose schema sets no maximum, so that a huge
 * budget or size is an error rather than a hang. A path that already has a problem
 * (e.g. `must be <= 100`) is not reported twice.
 */
function numberProblems(value: unknown, known: readonly ManifestProblem[]): ManifestProblem[] {
  const out: ManifestProblem[] = [];
  const seen = new Set(known.map((p) => p.path));
  const stack: { value: unknown; path: string }[] = [{ value, path: "" }];
  while (stack.length > 0) {
    const { value: node, path } = stack.pop()!;
    if (typeof node === "number") {
      if (Math.abs(node) <= Number.MAX_SAFE_INTEGER || seen.has(path)) continue;
      out.push({
        path,
        message: Number.isNaN(node)
          ? "must be a number (got NaN)"
          : `${show(node)} is out of range: numbers in a manifest must lie within ` +
            `±9007199254740991 (2^53 - 1)`,
      });
    } else if (node !== null && typeof node === "object") {
      for (const [key, child] of Object.entries(node)) {
        stack.push({ value: child, path: `${path}/${escapePointer(key)}` });
      }
    }
  }
  return out.reverse();
}

/** `name`, cut to 40 characters for messages. */
function shortName(name: string): string {
  return JSON.stringify(name.length > 40 ? `${name.slice(0, 37)}...` : name);
}

/**
 * Problems with the names that become folders, found before anything runs: the
 * experiment's name, and each run's folder name (`<name>@seed<k>` when `seeds` > 1) that
 * is not a valid folder name, is too long for the file system, is the name of a file or
 * folder the framework writes in the experiment folder ({@link EXPERIMENT_FOLDER_ENTRIES}),
 * or equals another run's folder name up to letter case. Names the envelope already
 * rejected (`isBad`) are skipped.
 */
function folderProblems(
  data: Record<string, unknown>,
  isBad: (path: string) => boolean,
): ManifestProblem[] {
  const problems: ManifestProblem[] = [];
  if (typeof data.experiment === "string" && !isBad("/experiment")) {
    const problem = folderNameProblem(data.experiment);
    if (problem !== undefined) problems.push({ path: "/experiment", message: problem });
  }
  const seeds = typeof data.seeds === "number" ? data.seeds : 1;
  const runs = Array.isArray(data.runs) ? data.runs : [];
  // Run folders by their lower-case name (macOS and Windows ignore letter case).
  const taken = new Map<string, { index: number; folder: string }>();
  for (let i = 0; i < runs.length; i++) {
    const name = (runs[i] as Record<string, unknown> | null)?.name;
    const path = `/runs/${i}/name`;
    if (typeof name !== "string" || isBad(path)) continue;
    const folders = seeds > 1
      ? Array.from({ length: seeds }, (_, k) => `${name}@seed${k + 1}`)
      : [name];
    const message = runFolderProblem(name, folders, i, taken);
    if (message !== undefined) problems.push({ path, message });
  }
  return problems;
}

/** What is wrong with the folders of run `index` named `name`, or undefined; claims them. */
function runFolderProblem(
  name: string,
  folders: string[],
  index: number,
  taken: Map<string, { index: number; folder: string }>,
): string | undefined {
  const invalid = folderNameProblem(name);
  if (invalid !== undefined) return invalid;
  const longest = folders[folders.length - 1];
  const tooLong = folderNameProblem(longest);
  if (tooLong !== undefined) return `its folder ${shortName(longest)} ${tooLong}`;
  for (const folder of folders) {
    const entry = reservedEntry(folder);
    if (entry !== undefined) {
      return `${shortName(folder)} is reserved: the experiment folder holds the framework's ` +
        `own ${JSON.stringify(entry)} (reserved names: ${EXPERIMENT_FOLDER_ENTRIES.join(", ")})`;
    }
    const other = taken.get(folder.toLowerCase());
    if (other !== undefined && other.index !== index) {
      return other.folder === folder
        ? `duplicate run name ${shortName(name)} (also /runs/${other.index})`
        : `run folder ${shortName(folder)} differs from /runs/${other.index}'s ` +
          `${shortName(other.folder)} only in letter case, which file systems such as ` +
          `macOS's and Windows' ignore; rename one`;
    }
  }
  for (const folder of folders) taken.set(folder.toLowerCase(), { index, folder });
  return undefined;
}

let envelopeValidator: ValidateFunction | undefined;

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
  envelopeValidator ??= createAjv().compile(envelopeSchema());
  const problems: ManifestProblem[] = [];
  if (!envelopeValidator(data)) {
    for (const error of envelopeValidator.errors ?? []) {
      problems.push(formatAjvError(error, "", data));
    }
  }
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
    const uses = algorithm.plugin.uses ?? {};
    for (const key of Object.keys(RUN_PLUGINS) as (keyof typeof RUN_PLUGINS)[]) {
      const use = uses[key];
      const given = run[key] !== undefined;
      if (given && use === undefined && key !== "reward") {
        resolver.problem(
          `${path}/${key}`,
          `algorithm "${algorithm.ref.name}" does not use a ${key}; remove this section`,
        );
      }
      if (!given && use === "required" && !(key === "reward" && top.reward !== undefined)) {
        resolver.problem(
          `${path}/${key}`,
          `is required by algorithm "${algorithm.ref.name}"`,
        );
      }
    }
    if (uses.bc === "required" && data.model === undefined && !modelReported) {
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
    bc: options.smoke ? smokeBc(data.bc as BcSettings) : data.bc as BcSettings,
    evaluation: options.smoke
      ? smokeEval(data.evaluation as EvalSettings)
      : data.evaluation as EvalSettings,
    runs,
  };
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

/** Reads, validates and resolves a manifest file. */
export async function loadManifest(
  file: string,
  registries: Registries,
  options: Omit<ResolveOptions, "file"> = {},
): Promise<ResolvedManifest> {
  const raw = await readManifestFile(file);
  return await resolveManifest(raw, registries, { ...options, file });
}
