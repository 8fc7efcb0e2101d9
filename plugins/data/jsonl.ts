/**
 * `jsonl` data plugin: JSON Lines files, one object per line, with configurable
 * field names. A field name may be a dotted path (`translation.de`) into nested
 * objects. Blank lines are skipped.
 *
 * @module
 */

import { DataError } from "../../core/errors.ts";
import { forEachLine } from "../../core/lines.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { Example } from "../../core/types.ts";
import {
  commonConfigSchema,
  type CommonDataConfig,
  loadFileSplits,
  pathsProperty,
  smokeConfig,
} from "./_common.ts";

/** Config of the `jsonl` plugin. */
export interface JsonlConfig extends CommonDataConfig {
  /** Files, folders (every `.jsonl` under them) or glob patterns. */
  paths: string[];
  /** Field (or dotted path) holding the source text. */
  sourceField: string;
  /** Field (or dotted path) holding the reference text. */
  referenceField: string;
  /** Skip lines whose fields are missing or not strings instead of failing. */
  skipBadRows: boolean;
}

function getField(value: unknown, path: string): unknown {
  if (Object.hasOwn(Object(value), path)) return (value as Record<string, unknown>)[path];
  let current = value;
  for (const key of path.split(".")) {
    if (current === null || typeof current !== "object" || !Object.hasOwn(current, key)) {
      return undefined;
    }
    current = (current as Record<string, unknown>)[key];
  }
  return current;
}

/**
 * Reads the pairs of one JSONL file (streamed line by line), appending them to `pairs`,
 * which is returned.
 */
export async function readJsonl(
  file: string,
  config: JsonlConfig,
  pairs: Example[] = [],
): Promise<Example[]> {
  await forEachLine(file, (line, lineNumber) => {
    if (line.trim() === "") return;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (error) {
      throw new DataError(`${file}:${lineNumber}: not valid JSON: ${(error as Error).message}`);
    }
    if (row === null || typeof row !== "object" || Array.isArray(row)) {
      throw new DataError(
        `${file}:${lineNumber}: expected a JSON object, got ${JSON.stringify(row).slice(0, 40)}`,
      );
    }
    const source = getField(row, config.sourceField);
    const reference = getField(row, config.referenceField);
    const bad = typeof source !== "string"
      ? [config.sourceField, source]
      : typeof reference !== "string"
      ? [config.referenceField, reference]
      : undefined;
    if (bad !== undefined) {
      if (config.skipBadRows) return;
      const [field, value] = bad;
      throw new DataError(
        `${file}:${lineNumber}: field "${field}" is ${
          value === undefined ? "missing" : `not a string (${JSON.stringify(value)})`
        }`,
      );
    }
    pairs.push({ source: source as string, reference: reference as string });
  });
  return pairs;
}

/** The `jsonl` data plugin. */
export default definePlugin<"data", JsonlConfig>({
  kind: "data",
  name: "jsonl",
  summary: "JSON Lines files, one {source, reference} object per line (field names configurable).",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      paths: pathsProperty(
        "JSONL files, folders (every .jsonl file under them) or glob patterns (*, ?, **), relative to the manifest's folder. Required.",
      ),
      sourceField: {
        type: "string",
        minLength: 1,
        default: "source",
        description:
          'Field holding the source text; a dotted path such as "translation.en" reaches into nested objects.',
      },
      referenceField: {
        type: "string",
        minLength: 1,
        default: "reference",
        description:
          'Field holding the reference text; a dotted path such as "translation.de" reaches into nested objects.',
      },
      skipBadRows: {
        type: "boolean",
        default: false,
        description:
          "Skip objects whose fields are missing or not strings instead of failing with an error naming the file and line (invalid JSON always fails).",
      },
      ...commonConfigSchema,
    },
  },
  smoke: smokeConfig,
  create(config, deps) {
    return {
      async load() {
        return await loadFileSplits("jsonl", [".jsonl"], config, deps.baseDir, readJsonl);
      },
    };
  },
});
