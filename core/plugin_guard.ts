/**
 * Errors from user plugins name the plugin. A plugin loaded from a manifest's `"module"` file
 * is wrapped so that anything its `create` or its instance's methods throw (or reject with)
 * becomes a {@link PluginError}: the plugin's kind and name, its module file, the method, the
 * step of the experiment it failed in and the plugin's own message. The CLI reports it as a
 * user error (exit 2): exit 1 is kept for faults inside the framework itself.
 *
 * The wrapper is a transparent proxy: properties read through to the plugin's own object and
 * methods are called on it (so private fields work). A model factory's policies are wrapped
 * the same way.
 *
 * @module
 */

import { UserError } from "./errors.ts";
import { currentActivity } from "./progress.ts";

/** Where a plugin came from, for messages. */
export interface PluginOrigin {
  /** The plugin kind ("reward", "loss", ...). */
  kind: string;
  /** The plugin's name. */
  name: string;
  /** The module file it was loaded from. */
  file: string;
}

/** A user plugin failed; the message names it, its file, the method and the step. */
export class PluginError extends UserError {
  /** The plugin that failed. */
  readonly origin: PluginOrigin;
  /** The method that threw (`create`, `score`, `compute`, ...). */
  readonly method: string;
  /** The step of the experiment ("run rest: grow 1", "loading data", ...). */
  readonly step: string;

  /** Wraps `cause`, thrown by `origin`'s `method` during `step`. */
  constructor(origin: PluginOrigin, method: string, step: string, cause: unknown) {
    super(
      `${origin.kind} plugin "${origin.name}" (${origin.file}) failed in ${method}() during ` +
        `${step}: ${messageOf(cause)}`,
      { cause },
    );
    this.name = "PluginError";
    this.origin = origin;
    this.method = method;
    this.step = step;
  }
}

function messageOf(error: unknown): string {
  const text = error instanceof Error
    ? error.message
    : error !== null && typeof error === "object" && "message" in error
    ? String((error as { message: unknown }).message)
    : String(error);
  return text.split("\n")[0] || (error instanceof Error ? error.name : "(no message)");
}

/** `error` as thrown by `origin`'s `method`: a PluginError, unless it already is one. */
function attribute(origin: PluginOrigin, method: string, error: unknown): PluginError {
  if (error instanceof PluginError) return error;
  return new PluginError(origin, method, currentActivity(), error);
}

/** Calls `fn`, attributing a throw or a rejection to the plugin. */
function guarded<T>(origin: PluginOrigin, method: string, fn: () => T): T {
  let result: T;
  try {
    result = fn();
  } catch (error) {
    throw attribute(origin, method, error);
  }
  if (result instanceof Promise) {
    return result.catch((error) => {
      throw attribute(origin, method, error);
    }) as T;
  }
  return result;
}

/** Whether a value is an object worth wrapping (not a tensor, array, typed array or promise). */
function isPlainInstance(value: unknown): value is object {
  if (value === null || typeof value !== "object") return false;
  if (Array.isArray(value) || ArrayBuffer.isView(value) || value instanceof Promise) return false;
  // tfjs tensors and variables are handed to tfjs, which must see the real object.
  return !("dataId" in value && "shape" in value);
}

/**
 * Wraps an instance so that each of its methods attributes errors to `origin`. `wrapResults`
 * names methods whose returned objects are instances too (a model factory's `build`).
 */
export function guardInstance<T extends object>(
  instance: T,
  origin: PluginOrigin,
  wrapResults: readonly string[] = [],
): T {
  const methods = new Map<PropertyKey, unknown>();
  return new Proxy(instance, {
    get(target, key) {
      const value = Reflect.get(target, key, target);
      if (typeof value !== "function" || typeof key === "symbol") return value;
      let method = methods.get(key);
      if (method === undefined || (method as { raw?: unknown }).raw !== value) {
        const name = String(key);
        const wrapped = (...args: unknown[]) => {
          const result = guarded(origin, name, () => Reflect.apply(value, target, args));
          if (wrapResults.includes(name) && isPlainInstance(result)) {
            return guardInstance(result, origin);
          }
          return result;
        };
        (wrapped as { raw?: unknown }).raw = value;
        method = wrapped;
        methods.set(key, method);
      }
      return method;
    },
  });
}

/** The methods every instance of a plugin kind must have (what the framework calls). */
export const REQUIRED_METHODS: Readonly<Record<string, readonly string[]>> = {
  backend: ["init"],
  data: ["load"],
  tokenizer: ["train", "encode", "decode", "save", "load", "vocabSize"],
  model: ["build"],
  reward: ["score"],
  loss: ["prepare", "compute", "afterStep", "dispose"],
  threshold: ["threshold"],
  algorithm: ["run"],
  executor: ["run", "close"],
};

/**
 * Creates an instance of a user plugin through `create`, attributing errors (from `create`
 * and later from the instance's methods) to the plugin. An instance that is not an object,
 * or lacks a method its kind needs, is reported at once, naming what is missing.
 */
export async function createGuarded<T>(
  origin: PluginOrigin,
  create: () => T | Promise<T>,
): Promise<T> {
  const instance = await guarded(origin, "create", create);
  if (instance === null || typeof instance !== "object") {
    throw new PluginError(
      origin,
      "create",
      currentActivity(),
      `it returned ${
        instance === null ? "null" : typeof instance
      }, expected a ${origin.kind} object`,
    );
  }
  const required = REQUIRED_METHODS[origin.kind] ?? [];
  const missing = required.filter((name) =>
    typeof (instance as Record<string, unknown>)[name] !== "function"
  );
  if (missing.length > 0) {
    throw new PluginError(
      origin,
      "create",
      currentActivity(),
      `the object it returned has no ${missing.map((m) => `${m}()`).join(", ")}; a ` +
        `${origin.kind} plugin must provide ${required.map((m) => `${m}()`).join(", ")}`,
    );
  }
  if (!isPlainInstance(instance)) return instance;
  return guardInstance(instance, origin, origin.kind === "model" ? ["build"] : []);
}

/**
 * A user plugin definition whose `check` and `smoke` hooks (run while the manifest is
 * validated) attribute their errors to the plugin; a `check` must return an array.
 */
export function guardDefinition<
  D extends {
    kind: string;
    name: string;
    check?: (config: never) => unknown;
    smoke?: (config: never) => unknown;
  },
>(definition: D, file: string): D {
  const origin = { kind: definition.kind, name: definition.name, file };
  const { check, smoke } = definition;
  return {
    ...definition,
    ...(check === undefined ? {} : {
      check: (config: never) => {
        const problems = guarded(origin, "check", () => check(config));
        if (!Array.isArray(problems)) {
          throw new PluginError(origin, "check", currentActivity(), "it must return an array");
        }
        return problems;
      },
    }),
    ...(smoke === undefined
      ? {}
      : { smoke: (config: never) => guarded(origin, "smoke", () => smoke(config)) }),
  };
}
