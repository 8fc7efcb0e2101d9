/**
 * Plugin definitions: what a plugin file exports and how a manifest refers to one.
 *
 * A plugin file exports one `definePlugin({kind, name, summary, configSchema, create})`.
 * `configSchema` is a JSON Schema whose every property has a `description` and a
 * `default`: it is the single source of the plugin's options and their docs.
 *
 * {@link definePlugin} and {@link defineLoss} have examples.
 *
 * @module
 */

import type {
  Algorithm,
  Backend,
  DataSource,
  Executor,
  Loss,
  LossContext,
  LossInput,
  LossRecorder,
  ModelFactory,
  RewardModel,
  RunSection,
  Scalar,
  SectionUse,
  ThresholdSchedule,
  Tokenizer,
  Variable,
} from "./types.ts";

/** The plugin kinds, one registry each. */
export const PLUGIN_KINDS = [
  "backend",
  "data",
  "tokenizer",
  "model",
  "reward",
  "loss",
  "threshold",
  "algorithm",
  "executor",
] as const;

/** One of {@link PLUGIN_KINDS}. */
export type PluginKind = typeof PLUGIN_KINDS[number];

/** What `create` returns, per kind. */
export interface PluginInstances {
  /** Compute backend. */
  backend: Backend;
  /** Corpus loader. */
  data: DataSource;
  /** Subword tokenizer. */
  tokenizer: Tokenizer;
  /** Policy model factory. */
  model: ModelFactory;
  /** Reward model. */
  reward: RewardModel;
  /** Offline loss. */
  loss: Loss;
  /** Threshold schedule. */
  threshold: ThresholdSchedule;
  /** Algorithm. */
  algorithm: Algorithm;
  /** Where Grow shards are computed (this process, or a job queue). */
  executor: Executor;
}

/** A JSON Schema object (draft-07 subset used by ajv). */
// deno-lint-ignore no-explicit-any
export type JsonSchema = Record<string, any>;

/**
 * Schema keyword marking a config property as a nested plugin reference of the given kind
 * (e.g. the parts of a weighted reward): the manifest resolves such a value like a top-level
 * `{name | module, config}` reference.
 */
export const PLUGIN_REF_KEYWORD = "x-plugin-kind";

/** What the framework passes to `create` besides the plugin's own config. */
export interface PluginDeps {
  /** The run's seed (plugins derive their own streams from it). */
  seed: number;
  /** Folder that relative paths in the config are resolved against (the manifest's folder). */
  baseDir: string;
  /** True under `--smoke`. */
  smoke: boolean;
  /** Creates a nested plugin from a resolved reference (e.g. the parts of a weighted reward). */
  create<K extends PluginKind>(kind: K, ref: ResolvedPluginRef): Promise<PluginInstances[K]>;
  /** Prints a line of progress or information to the user. */
  log(message: string): void;
}

/** A plugin definition: the single export of a plugin file. */
// deno-lint-ignore no-explicit-any
export interface PluginDefinition<K extends PluginKind = PluginKind, C = any> {
  /** Which registry the plugin belongs to. */
  kind: K;
  /** Unique name within its kind, snake_case, equal to the file stem for built-ins. */
  name: string;
  /** One line saying what the plugin does. */
  summary: string;
  /** JSON Schema of the config; every property has `description` and `default`. */
  configSchema: JsonSchema;
  /** Algorithms only: which run sections they require or accept. Others are rejected. */
  uses?: Partial<Record<RunSection, SectionUse>>;
  /**
   * Optional: checks that need more than the schema, i.e. relations between options (a
   * transformer's `heads` must divide `dModel`, a schedule's `end` must not be below its
   * `start`). Called during validation (also under `--dry-run`) with the config after it
   * passed the schema and got its defaults, and again on the config that `smoke` returns.
   * Returns problems whose `path` is a JSON pointer inside the config (e.g. `/heads`) and
   * whose `message` says what is expected; the manifest reports them like schema errors,
   * e.g. `/model/config/heads: must divide dModel (64) ...`. An empty list means valid.
   */
  check?: (config: C) => { path: string; message: string }[];
  /**
   * Optional: scales budgets in a valid, defaults-filled config down for `--smoke`. The
   * result must be valid too: it is validated against the schema and `check` again.
   */
  smoke?: (config: C) => C;
  /** Builds the instance. */
  create(config: C, deps: PluginDeps): PluginInstances[K] | Promise<PluginInstances[K]>;
}

/** How a manifest names a plugin: a name, or a `{name | module, config}` object. */
export type PluginRef =
  | string
  | { name: string; config?: Record<string, unknown> }
  | { module: string; config?: Record<string, unknown> };

/** A plugin reference after validation: the plugin's name and its full config with defaults. */
export interface ResolvedPluginRef {
  /** The plugin kind. */
  kind: PluginKind;
  /** The plugin's name. */
  name: string;
  /** Absolute path of the user module, for plugins loaded through `module`. */
  module?: string;
  /** The validated config with defaults filled in. */
  config: Record<string, unknown>;
}

const NAME_PATTERN = /^[a-z][a-z0-9_]*$/;

/**
 * Checks that every property of an object schema has `description` and `default`, at any
 * depth. Iterative, so that a pathologically nested schema cannot overflow the stack.
 */
function schemaProblems(schema: JsonSchema, path: string): string[] {
  const problems: string[] = [];
  const stack: { schema: JsonSchema; path: string }[] = [{ schema, path }];
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (node.schema?.type !== "object" || typeof node.schema.properties !== "object") continue;
    const entries = Object.entries(node.schema.properties as Record<string, JsonSchema>);
    // Pushed in reverse, so that problems are listed in the order of the properties.
    for (let k = entries.length - 1; k >= 0; k--) {
      stack.push({ schema: entries[k][1], path: `${node.path}/${entries[k][0]}` });
    }
    for (const [key, prop] of entries) {
      const where = `${node.path}/${key}`;
      if (typeof prop?.description !== "string" || prop.description.length === 0) {
        problems.push(`${where} has no description`);
      }
      if (prop === null || typeof prop !== "object" || !("default" in prop)) {
        problems.push(`${where} has no default`);
      }
    }
  }
  return problems;
}

/**
 * Declares a plugin. Checks the definition's shape and returns it unchanged.
 *
 * @example A minimal reward plugin, created and used by hand
 * ```ts
 * import assert from "node:assert/strict";
 * import { definePlugin, type PluginDeps } from "@rest/framework";
 *
 * const exactMatch = definePlugin({
 *   kind: "reward",
 *   name: "exact_match",
 *   summary: "1 when the hypothesis equals the reference, else 0.",
 *   configSchema: {
 *     type: "object",
 *     additionalProperties: false,
 *     properties: {
 *       caseSensitive: { type: "boolean", default: true, description: "Ignore case if false." },
 *     },
 *   },
 *   create(config: { caseSensitive: boolean }) {
 *     const norm = (s: string) => config.caseSensitive ? s : s.toLowerCase();
 *     return {
 *       needsReference: true,
 *       score: (rows) =>
 *         Promise.resolve(rows.map((r) => norm(r.hypothesis) === norm(r.reference ?? "") ? 1 : 0)),
 *     };
 *   },
 * });
 *
 * // A run creates the instance from the manifest's config; here it is created by hand.
 * const deps: PluginDeps = {
 *   seed: 1,
 *   baseDir: ".",
 *   smoke: false,
 *   log: console.log,
 *   create: () => Promise.reject(new Error("no nested plugins here")),
 * };
 * const reward = await exactMatch.create({ caseSensitive: false }, deps);
 * const scores = await reward.score([
 *   { source: "Hallo", hypothesis: "Hello", reference: "hello" },
 *   { source: "Hallo", hypothesis: "Hi", reference: "hello" },
 * ]);
 * assert.deepEqual(scores, [1, 0]);
 *
 * // Every config property needs a description and a default.
 * assert.throws(
 *   () =>
 *     definePlugin({
 *       kind: "reward",
 *       name: "scaled",
 *       summary: "Lacks a default.",
 *       configSchema: {
 *         type: "object",
 *         properties: { scale: { type: "number", description: "Factor." } },
 *       },
 *       create: () => ({ needsReference: false, score: () => Promise.resolve([]) }),
 *     }),
 *   /configSchema\/scale has no default/,
 * );
 * ```
 *
 * @throws {TypeError} when the kind is unknown, the name is not snake_case, the summary is
 *   empty, the schema is not an object schema, or a config property lacks `description`/`default`.
 */
export function definePlugin<K extends PluginKind, C>(
  definition: PluginDefinition<K, C>,
): PluginDefinition<K, C> {
  const { kind, name, summary, configSchema, create } = definition;
  const label = `plugin ${JSON.stringify(name)} (${kind})`;
  if (!(PLUGIN_KINDS as readonly string[]).includes(kind)) {
    throw new TypeError(`${label}: kind must be one of ${PLUGIN_KINDS.join(", ")}`);
  }
  if (typeof name !== "string" || !NAME_PATTERN.test(name)) {
    throw new TypeError(`${label}: name must be snake_case (${NAME_PATTERN})`);
  }
  if (typeof summary !== "string" || summary.trim() === "") {
    throw new TypeError(`${label}: summary must be a non-empty string`);
  }
  if (typeof configSchema !== "object" || configSchema === null || configSchema.type !== "object") {
    throw new TypeError(`${label}: configSchema must be a JSON Schema with type "object"`);
  }
  const problems = schemaProblems(configSchema, "configSchema");
  if (problems.length > 0) throw new TypeError(`${label}: ${problems.join("; ")}`);
  if (typeof create !== "function") throw new TypeError(`${label}: create must be a function`);
  for (const hook of ["check", "smoke"] as const) {
    if (definition[hook] !== undefined && typeof definition[hook] !== "function") {
      throw new TypeError(`${label}: ${hook} must be a function when given`);
    }
  }
  if (definition.uses !== undefined && kind !== "algorithm") {
    throw new TypeError(`${label}: only algorithm plugins declare "uses"`);
  }
  return definition;
}

/**
 * A plugin's default config: every top-level property's `default` (nested defaults are
 * filled in by the manifest's validation, not here).
 */
export function pluginDefaults(plugin: PluginDefinition): Record<string, unknown> {
  const props = (plugin.configSchema.properties ?? {}) as Record<string, { default?: unknown }>;
  return Object.fromEntries(
    Object.entries(props).map(([key, prop]) => [key, structuredClone(prop.default)]),
  );
}

/** A config-schema integer in [min, max] with its default and description. */
export function int(min: number, max: number, value: number, description: string): JsonSchema {
  return { type: "integer", minimum: min, maximum: max, default: value, description };
}

/** A config-schema number in [min, max] with its default and description. */
export function num(min: number, max: number, value: number, description: string): JsonSchema {
  return { type: "number", minimum: min, maximum: max, default: value, description };
}

/**
 * A config-schema property naming a plugin of `kind` (its name or `{name, config}`); the
 * manifest's validation resolves it and checks its config against that plugin's schema.
 */
export function pluginRef(kind: PluginKind, value: unknown, description: string): JsonSchema {
  return { [PLUGIN_REF_KEYWORD]: kind, type: ["string", "object"], default: value, description };
}

/**
 * What a loss declared with {@link defineLoss} implements: `compute`, and only what else it
 * needs. The rest of {@link Loss} is supplied: no `variables`, nothing to do before an
 * Improve step or after an optimizer step, nothing to dispose.
 */
export interface LossParts {
  /**
   * The scalar loss of a batch, inside the gradient tape (see {@link Loss.compute}). `ctx` is
   * the context of the Improve step under way (`ctx.policy` is being trained, `ctx.bcPolicy`
   * is the frozen BC policy), captured by `prepare` for it.
   */
  compute(
    input: LossInput,
    record: LossRecorder,
    ctx: LossContext,
  ): Scalar;
  /** Extra trainable variables (default none); read each time the trainer asks. */
  readonly variables?: Variable[];
  /** Called before each Improve step, before its context is handed to `compute`. */
  prepare?(ctx: LossContext): void;
  /** Called after every optimizer step. */
  afterStep?(step: number): void;
  /** Frees whatever the loss holds. */
  dispose?(): void;
}

/** A loss plugin's definition for {@link defineLoss}: a plugin definition without `kind`. */
export interface LossDefinition<C> extends Omit<PluginDefinition<"loss", C>, "kind" | "create"> {
  /** Builds the loss's parts from its config. */
  create(config: C, deps: PluginDeps): LossParts | Promise<LossParts>;
}

/**
 * Declares a loss plugin whose `create` returns only its {@link LossParts}: at least
 * `compute(input, record, ctx)`. The returned {@link Loss} captures each Improve step's
 * context in `prepare` and passes it to `compute` (which throws a `TypeError` when called
 * before any `prepare` or after `dispose`), and supplies the empty defaults of the rest.
 *
 * @example A loss that is only its formula: the mean NLL of the kept rows' tokens
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs-core";
 * import { defineLoss, type PluginDeps, type Scalar } from "@rest/framework";
 *
 * const plainNll = defineLoss({
 *   name: "plain_nll",
 *   summary: "Mean negative log-likelihood of the kept rows' tokens.",
 *   configSchema: { type: "object", additionalProperties: false, properties: {} },
 *   create: () => ({
 *     compute({ batch }, _record, { policy }) {
 *       const logProbs = policy.tokenLogProbs(batch, { training: true });
 *       return tf.neg(tf.div(tf.sum(logProbs), tf.sum(batch.targetMask))) as Scalar;
 *     },
 *   }),
 * });
 * assert.equal(plainNll.kind, "loss");
 *
 * // The created loss is a full `Loss`: no variables, and no-op hooks besides `compute`.
 * const deps: PluginDeps = {
 *   seed: 1,
 *   baseDir: ".",
 *   smoke: false,
 *   log: console.log,
 *   create: () => Promise.reject(new Error("no nested plugins here")),
 * };
 * const loss = await plainNll.create({}, deps);
 * assert.deepEqual(loss.variables, []);
 * loss.afterStep(1);
 * loss.dispose();
 * ```
 *
 * @throws {TypeError} like {@link definePlugin}.
 */
export function defineLoss<C>(definition: LossDefinition<C>): PluginDefinition<"loss", C> {
  const { create, ...rest } = definition;
  if (typeof create !== "function") {
    throw new TypeError(`plugin ${JSON.stringify(rest.name)} (loss): create must be a function`);
  }
  return definePlugin<"loss", C>({
    ...rest,
    kind: "loss",
    create(config, deps) {
      const parts = create(config, deps);
      return parts instanceof Promise
        ? parts.then((p) => lossFromParts(rest.name, p))
        : lossFromParts(rest.name, parts);
    },
  });
}

/** The full {@link Loss} around a loss's parts (see {@link defineLoss}). */
function lossFromParts(name: string, parts: LossParts): Loss {
  let context: LossContext | undefined;
  return {
    get variables() {
      return parts.variables ?? [];
    },
    prepare(ctx) {
      parts.prepare?.(ctx);
      context = ctx;
    },
    compute(input, record) {
      if (context === undefined) {
        throw new TypeError(`loss "${name}": compute was called before prepare`);
      }
      return parts.compute(input, record, context);
    },
    afterStep(step) {
      parts.afterStep?.(step);
    },
    dispose() {
      context = undefined;
      parts.dispose?.();
    },
  };
}
