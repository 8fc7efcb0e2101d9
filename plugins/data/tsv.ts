/**
 * `tsv` data plugin: tab-separated files with a source and a reference column.
 *
 * Columns are split on every tab; there is no quoting. Blank lines are skipped.
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

/** Config of the `tsv` plugin. */
export interface TsvConfig extends CommonDataConfig {
  /** Files, folders (every `.tsv` under them) or glob patterns. */
  paths: string[];
  /** 0-based index of the source column. */
  sourceColumn: number;
  /** 0-based index of the reference column. */
  referenceColumn: number;
  /** Whether the first line of each file is a header. */
  header: boolean;
  /** Skip rows with too few columns instead of failing. */
  skipBadRows: boolean;
}

/**
 * Reads the pairs of one TSV file (streamed line by line), appending them to `pairs`, which
 * is returned.
 */
export async function readTsv(
  file: string,
  config: TsvConfig,
  pairs: Example[] = [],
): Promise<Example[]> {
  const need = Math.max(config.sourceColumn, config.referenceColumn) + 1;
  await forEachLine(file, (line, lineNumber) => {
    if (config.header && lineNumber === 1) return;
    if (line.trim() === "") return;
    const cells = line.split("\t");
    if (cells.length < need) {
      if (config.skipBadRows) return;
      throw new DataError(
        `${file}:${lineNumber}: has ${cells.length} tab-separated column${
          cells.length === 1 ? "" : "s"
        }, but sourceColumn=${config.sourceColumn} and referenceColumn=${config.referenceColumn} need ${need}`,
      );
    }
    pairs.push({ source: cells[config.sourceColumn], reference: cells[config.referenceColumn] });
  });
  return pairs;
}

/** The `tsv` data plugin. */
export default definePlugin<"data", TsvConfig>({
  kind: "data",
  name: "tsv",
  summary: "Tab-separated files with a source column and a reference column.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      paths: pathsProperty(
        "TSV files, folders (every .tsv file under them) or glob patterns (*, ?, **), relative to the manifest's folder. Required.",
      ),
      sourceColumn: {
        type: "integer",
        minimum: 0,
        default: 0,
        description: "0-based index of the source column.",
      },
      referenceColumn: {
        type: "integer",
        minimum: 0,
        default: 1,
        description: "0-based index of the reference column.",
      },
      header: {
        type: "boolean",
        default: false,
        description: "Whether the first line of each file is a header row (skipped).",
      },
      skipBadRows: {
        type: "boolean",
        default: false,
        description:
          "Skip rows with too few columns instead of failing with an error naming the file and line.",
      },
      ...commonConfigSchema,
    },
  },
  smoke: smokeConfig,
  create(config, deps) {
    return {
      async load() {
        if (config.sourceColumn === config.referenceColumn) {
          throw new DataError(
            `tsv: sourceColumn and referenceColumn are both ${config.sourceColumn}; they must differ`,
          );
        }
        return await loadFileSplits("tsv", [".tsv"], config, deps.baseDir, readTsv);
      },
    };
  },
});
