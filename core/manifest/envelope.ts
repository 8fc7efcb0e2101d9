/**
 * Step 1 of manifest validation, the envelope: the manifest's structure (its sections, the
 * runs and their names) without the plugins' own configs, which step 2 checks per plugin.
 * Unknown keys are rejected, types checked and the defaults of the non-plugin sections filled
 * in; names that become folders are checked against the file system's rules and the
 * experiment folder's own entries. Also the editor schema, the envelope enriched with every
 * registered plugin's config schema.
 *
 * @module
 */

import type { ValidateFunction } from "ajv";
import type { ManifestProblem } from "../errors.ts";
import { EXPERIMENT_FOLDER_ENTRIES, folderNameProblem, reservedEntry } from "../layout.ts";
import type { JsonSchema, PluginKind } from "../plugin.ts";
import type { Registries, Registry } from "../registry.ts";
import { BC_SCHEMA, EVAL_SCHEMA } from "../sections.ts";
import type { RunSection } from "../types.ts";
import { createAjv, formatAjvError } from "./ajv.ts";

/** Top-level sections holding one plugin reference each, with their kind and default. */
export const TOP_LEVEL_PLUGINS = {
  backend: { kind: "backend", default: "auto" },
  data: { kind: "data", default: undefined },
  tokenizer: { kind: "tokenizer", default: "bpe" },
  model: { kind: "model", default: undefined },
  reward: { kind: "reward", default: "chrf" },
  // Absent: the shards of a Grow step are computed in the experiment's process (`local`).
  executor: { kind: "executor", default: undefined },
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

let envelopeValidator: ValidateFunction | undefined;

/**
 * Checks a parsed manifest against {@link envelopeSchema}, filling in the defaults of the
 * envelope (`seed`, `seeds`, `bc`, `evaluation`) in place; the problems found, or [].
 */
export function envelopeProblems(data: unknown): ManifestProblem[] {
  envelopeValidator ??= createAjv().compile(envelopeSchema());
  const problems: ManifestProblem[] = [];
  if (!envelopeValidator(data)) {
    for (const error of envelopeValidator.errors ?? []) {
      problems.push(formatAjvError(error, "", data));
    }
  }
  return problems;
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
export function folderProblems(
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
