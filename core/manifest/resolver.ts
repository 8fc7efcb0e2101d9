/**
 * Step 2 of manifest validation: resolving plugin references (`"name"`, `{name, config}` or
 * `{module, config}`, nested ones included) against the registries, each config checked
 * against its plugin's schema and `check`, with defaults filled in and `--smoke` scaling
 * applied. Holds the one loader of user plugin modules, used both while resolving a manifest
 * and when a run creates a plugin from a resolved reference ({@link pluginFor}).
 *
 * @module
 */

import type { Ajv, ValidateFunction } from "ajv";
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { type ManifestProblem, UserError } from "../errors.ts";
import { scoresProblem } from "../evaluate.ts";
import { checkRegularFile } from "../fs.ts";
import {
  definePlugin,
  type JsonSchema,
  PLUGIN_REF_KEYWORD,
  type PluginDefinition,
  type PluginKind,
  type ResolvedPluginRef,
} from "../plugin.ts";
import { guardDefinition, PluginError } from "../plugin_guard.ts";
import { currentActivity } from "../progress.ts";
import { nearest, type Registries, type Registry } from "../registry.ts";
import type { RewardInput } from "../types.ts";
import { createAjv, formatAjvError } from "./ajv.ts";
import { escapePointer, showValue } from "./json_text.ts";

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
            : ` (source ${showValue(row.source)}, hypothesis ${showValue(row.hypothesis)})`;
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

/** The largest plugin module file the loader imports (source code, not data). */
const MAX_MODULE_BYTES = 64 * 1024 * 1024;

/** User plugin modules registered into each set of registries, by absolute file path. */
const registeredModules = new WeakMap<Registries, Map<string, PluginDefinition>>();

/** What {@link loadPluginModule} found: the plugin, or what is wrong with its module. */
export type ModuleLoad = { plugin: PluginDefinition } | { problem: string };

/**
 * The one loader of user plugin modules. Imports `file` (an absolute path) and registers the
 * plugin it default-exports, once per set of registries (a second manifest naming the same
 * file reuses it instead of registering its name twice), after the checks every user plugin
 * passes: the file is a regular file of at most 64 MiB (importing a FIFO or a device would
 * block or never end), it imports, its default export is an object that
 * {@link definePlugin} accepts, and its name is free in its registry. The registered plugin
 * is guarded (its errors name the module, core/plugin_guard.ts) and a reward's scores are
 * checked on every call.
 *
 * @throws {Deno.errors.NotCapable} when the sandbox denies reading the file.
 */
export async function loadPluginModule(registries: Registries, file: string): Promise<ModuleLoad> {
  let loaded = registeredModules.get(registries);
  if (loaded === undefined) registeredModules.set(registries, loaded = new Map());
  const previous = loaded.get(file);
  if (previous !== undefined) return { plugin: previous };
  try {
    await checkRegularFile(file, { what: "plugin module", maxBytes: MAX_MODULE_BYTES });
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) throw error;
    const message = (error as Error).message.replace(`${file}: `, "");
    return { problem: `${file}: ${message}` };
  }
  let exports: Record<string, unknown>;
  try {
    exports = await import(pathToFileURL(file).href);
  } catch (error) {
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
    return { problem: `cannot load plugin module ${file}: ${message}` };
  }
  const candidate = exports.default;
  if (candidate === undefined || candidate === null || typeof candidate !== "object") {
    return {
      problem:
        `${file} must default-export a plugin definition (export default definePlugin({...}))`,
    };
  }
  let plugin: PluginDefinition;
  try {
    plugin = definePlugin(candidate as PluginDefinition);
  } catch (error) {
    return { problem: `${file}: ${(error as Error).message}` };
  }
  plugin = guardDefinition(plugin, file);
  if (plugin.kind === "reward") {
    plugin = checkedUserReward(plugin as PluginDefinition<"reward">, file);
  }
  const registry = registries[plugin.kind] as Registry | undefined;
  if (registry === undefined) return { plugin }; // definePlugin already rejected unknown kinds
  try {
    registry.register(plugin, file);
  } catch (error) {
    return { problem: (error as Error).message };
  }
  loaded.set(file, plugin);
  return { plugin };
}

/** What is wrong when module `file` defines `plugin` where a `kind` plugin is expected. */
function kindProblem(plugin: PluginDefinition, file: string, kind: PluginKind): string | undefined {
  if (plugin.kind === kind) return undefined;
  return `${file} defines a ${plugin.kind} plugin ("${plugin.name}"), but a ${kind} plugin ` +
    `is expected here`;
}

/**
 * Finds the definition of a resolved reference: the registered plugin of that name, or else
 * the plugin of the module it names, loaded by {@link loadPluginModule}.
 *
 * @throws {UserError} when the module does not load or defines another kind of plugin.
 * @throws {RangeError} when no plugin of that name is registered and no module is named.
 */
export async function pluginFor(
  registries: Registries,
  ref: ResolvedPluginRef,
): Promise<PluginDefinition> {
  const registry = registries[ref.kind] as Registry;
  const found = registry.find(ref.name);
  if (found !== undefined) return found;
  if (ref.module === undefined) throw new RangeError(registry.unknownMessage(ref.name));
  const loaded = await loadPluginModule(registries, ref.module);
  if ("problem" in loaded) throw new UserError(loaded.problem);
  const problem = kindProblem(loaded.plugin, ref.module, ref.kind);
  if (problem !== undefined) throw new UserError(problem);
  return loaded.plugin;
}

/** Resolves plugin references against registries, collecting problems. */
export class Resolver {
  /** Every problem found so far, in the order found. */
  readonly problems: ManifestProblem[] = [];
  readonly #modules = new Map<string, PluginDefinition | null>();

  /**
   * A resolver for references in a manifest whose relative `module` paths start at
   * `baseDir`; `smoke` applies each plugin's `--smoke` scaling.
   */
  constructor(
    readonly registries: Registries,
    readonly baseDir: string,
    readonly smoke: boolean,
  ) {}

  /** Records a problem at JSON pointer `path`. */
  problem(path: string, message: string): void {
    this.problems.push({ path, message });
  }

  /**
   * The plugin of the user module `specifier` (relative to `baseDir`), loaded once per
   * resolver; undefined, with a problem at `path`, when it does not load or is not a `kind`
   * plugin.
   */
  async loadModule(
    specifier: string,
    kind: PluginKind,
    path: string,
  ): Promise<PluginDefinition | undefined> {
    const file = isAbsolute(specifier) ? specifier : resolve(this.baseDir, specifier);
    if (!this.#modules.has(file)) {
      const loaded = await loadPluginModule(this.registries, file);
      if ("problem" in loaded) this.problem(`${path}/module`, loaded.problem);
      this.#modules.set(file, "plugin" in loaded ? loaded.plugin : null);
    }
    const plugin = this.#modules.get(file);
    if (plugin === null || plugin === undefined) return undefined;
    const problem = kindProblem(plugin, file, kind);
    if (problem !== undefined) {
      this.problem(`${path}/module`, problem);
      return undefined;
    }
    return plugin;
  }

  /** The compiled config validator of `plugin`; undefined (with a problem) when its schema is invalid. */
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
          this.problem(`${path}/name`, `must be a string (got ${showValue(object.name)})`);
          ok = false;
        } else name = object.name;
      } else if ("module" in object) {
        if (typeof object.module !== "string" || object.module === "") {
          this.problem(`${path}/module`, `must be a file path (got ${showValue(object.module)})`);
          ok = false;
        } else module = object.module;
      } else {
        this.problem(path, `must have "name" (a ${kind} plugin) or "module" (a plugin file)`);
        ok = false;
      }
      if ("config" in object) {
        config = object.config;
        if (config === null || typeof config !== "object" || Array.isArray(config)) {
          this.problem(`${path}/config`, `must be an object (got ${showValue(config)})`);
          ok = false;
        }
      }
      if (!ok) return undefined;
    } else {
      this.problem(
        path,
        `must be a ${kind} plugin name or an object {"name", "config"} (got ${showValue(ref)})`,
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
