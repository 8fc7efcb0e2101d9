/**
 * `moses` data plugin: two line-aligned plain-text files (the Moses corpus
 * format), line `i` of `source` translated by line `i` of `reference`.
 *
 * @module
 */

import { DataError } from "../../core/errors.ts";
import { readLines } from "../../core/lines.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { Example } from "../../core/types.ts";
import {
  commonConfigSchema,
  type CommonDataConfig,
  finishSplits,
  resolvePath,
  smokeConfig,
} from "./_common.ts";

/** Config of the `moses` plugin. */
export interface MosesConfig extends CommonDataConfig {
  /** The source-side file. */
  source: string;
  /** The reference-side file, line-aligned with `source`. */
  reference: string;
}

/**
 * Reads two line-aligned files into pairs.
 *
 * @throws {DataError} when a file is missing or not UTF-8, or the line counts differ.
 */
export async function readMoses(sourceFile: string, referenceFile: string): Promise<Example[]> {
  const [sources, references] = await Promise.all([
    readLines(sourceFile),
    readLines(referenceFile),
  ]);
  if (sources.length !== references.length) {
    throw new DataError(
      `moses: line counts differ: ${sourceFile} has ${sources.length} lines, ${referenceFile} has ${references.length}`,
    );
  }
  return sources.map((source, i) => ({ source, reference: references[i] }));
}

/** The `moses` data plugin. */
export default definePlugin<"data", MosesConfig>({
  kind: "data",
  name: "moses",
  summary: "Two line-aligned plain-text files: source sentences and their reference translations.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      source: {
        type: "string",
        default: "",
        description:
          "Source-side text file, one sentence per line, relative to the manifest's folder. Required.",
      },
      reference: {
        type: "string",
        default: "",
        description:
          "Reference-side text file, line-aligned with source (same number of lines), relative to the manifest's folder. Required.",
      },
      ...commonConfigSchema,
    },
  },
  smoke: smokeConfig,
  create(config, deps) {
    return {
      async load() {
        if (config.source === "" || config.reference === "") {
          const missing = config.source === "" ? "source" : "reference";
          throw new DataError(`moses: config "${missing}" is required: the path of a text file`);
        }
        const sourceFile = resolvePath(config.source, deps.baseDir);
        const referenceFile = resolvePath(config.reference, deps.baseDir);
        const pairs = await readMoses(sourceFile, referenceFile);
        const { train, valid, test } = finishSplits(pairs, config, sourceFile);
        return { train, valid, test };
      },
    };
  },
});
