/**
 * Plugin registries: one per kind, with did-you-mean errors for unknown names.
 *
 * @module
 */

import { PLUGIN_KINDS, type PluginDefinition, type PluginKind } from "./plugin.ts";

/** Edit distance with adjacent transpositions (optimal string alignment). */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[][] = Array.from({ length: rows }, () => new Array<number>(cols).fill(0));
  for (let i = 0; i < rows; i++) d[i][0] = i;
  for (let j = 0; j < cols; j++) d[0][j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/**
 * The candidate closest to `name` by edit distance (case-insensitive), if it is
 * close enough to be a plausible typo (distance at most max(2, a third of its length)).
 */
export function nearest(name: string, candidates: Iterable<string>): string | undefined {
  const lower = name.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(lower, candidate.toLowerCase());
    if (
      distance < bestDistance ||
      (distance === bestDistance && best !== undefined && candidate < best)
    ) {
      best = candidate;
      bestDistance = distance;
    }
  }
  if (best === undefined) return undefined;
  const limit = Math.max(2, Math.floor(best.length / 3));
  return bestDistance <= limit ? best : undefined;
}

/** The plugins of one kind, by name. */
export class Registry<K extends PluginKind = PluginKind> {
  /** The kind this registry holds. */
  readonly kind: K;
  readonly #plugins = new Map<string, PluginDefinition<K>>();
  readonly #origins = new Map<string, string>();

  /** Creates an empty registry for `kind`. */
  constructor(kind: K) {
    this.kind = kind;
  }

  /**
   * Adds a plugin. `origin` names where it came from (for duplicate errors).
   *
   * @throws {TypeError} when the plugin is of another kind or the name is already taken.
   */
  register(plugin: PluginDefinition<K>, origin = "built-in"): void {
    if (plugin.kind !== this.kind) {
      throw new TypeError(
        `plugin "${plugin.name}" is a ${plugin.kind} plugin, not a ${this.kind} plugin`,
      );
    }
    const previous = this.#origins.get(plugin.name);
    if (previous !== undefined) {
      throw new TypeError(
        `duplicate ${this.kind} plugin name "${plugin.name}": from ${origin}, already registered from ${previous}`,
      );
    }
    this.#plugins.set(plugin.name, plugin);
    this.#origins.set(plugin.name, origin);
  }

  /** Where the plugin of this name came from: `"built-in"` or its module file. */
  origin(name: string): string | undefined {
    return this.#origins.get(name);
  }

  /** The plugin of this name, or undefined. */
  find(name: string): PluginDefinition<K> | undefined {
    return this.#plugins.get(name);
  }

  /** Registered names, sorted. */
  names(): string[] {
    return [...this.#plugins.keys()].sort();
  }

  /** All registered plugins, sorted by name. */
  list(): PluginDefinition<K>[] {
    return this.names().map((name) => this.#plugins.get(name)!);
  }

  /**
   * Explains that `name` is unknown: lists the valid names and suggests the nearest.
   * Used for error messages; returns e.g. `unknown reward plugin "chfr"; did you mean "chrf"? (valid: bleu, chrf)`.
   */
  unknownMessage(name: string): string {
    const suggestion = nearest(name, this.names());
    const hint = suggestion === undefined ? "" : `; did you mean "${suggestion}"?`;
    return `unknown ${this.kind} plugin ${JSON.stringify(name)}${hint} (valid: ${
      this.names().join(", ") || "none registered"
    })`;
  }

  /**
   * The plugin of this name.
   *
   * @throws {RangeError} with {@link Registry.unknownMessage} when it is not registered.
   */
  get(name: string): PluginDefinition<K> {
    const plugin = this.#plugins.get(name);
    if (plugin === undefined) throw new RangeError(this.unknownMessage(name));
    return plugin;
  }
}

/** One registry per plugin kind. */
export type Registries = { readonly [K in PluginKind]: Registry<K> };

/** Builds the registries from a list of plugin definitions; duplicate names throw `TypeError`. */
export function createRegistries(plugins: readonly PluginDefinition[]): Registries {
  const registries = Object.fromEntries(
    PLUGIN_KINDS.map((kind) => [kind, new Registry(kind)]),
  ) as unknown as Registries;
  for (const plugin of plugins) {
    const registry = registries[plugin.kind] as Registry;
    if (registry === undefined) {
      throw new TypeError(`plugin "${plugin.name}" has unknown kind "${plugin.kind}"`);
    }
    registry.register(plugin);
  }
  return registries;
}
