/**
 * `deno task score --reward NAME --hyp FILE --ref FILE [--src FILE] [--json]`:
 * scores line-aligned files with any reward plugin.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DataError, UserError } from "../core/errors.ts";
import { resolvePluginRef } from "../core/manifest/mod.ts";
import { createRegistries } from "../core/registry.ts";
import { createPlugin } from "../core/experiment.ts";
import { mean } from "../core/append.ts";
import { checkScores } from "../core/evaluate.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { readLines as readDataLines } from "../core/lines.ts";
import { runMain } from "./_main.ts";

const HELP = `Usage: deno task score --reward NAME --hyp FILE [--ref FILE] [--src FILE] [options]

Scores each line of --hyp against the same line of --ref (and --src) with a
reward plugin. Scores are in [0, 1].

Options:
  --reward NAME    reward plugin (chrf, bleu, weighted, ...)
  --config JSON    the plugin's config, e.g. '{"wordOrder": 2}' for chrF++
  --hyp FILE       hypotheses, one per line
  --ref FILE       references, one per line (needed by reference-based rewards)
  --src FILE       sources, one per line (needed by reference-free rewards)
  --json           print {"scores": [...], "mean": m} instead of text
  -h, --help       show this help`;

/**
 * Reads a UTF-8 text file as lines (a final newline does not start another line), streamed;
 * only a regular file (or a symlink to one) is read, so a FIFO or a device is refused at once.
 *
 * @throws {DataError} starting with `--<flag>` and naming the file: missing, not a regular
 *   file, not valid UTF-8, or CR-only line endings.
 */
export async function readLines(file: string, flag: string): Promise<string[]> {
  try {
    return await readDataLines(file);
  } catch (error) {
    if (error instanceof DataError) {
      throw new DataError(`--${flag} ${error.message}`, { cause: error });
    }
    throw error;
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      reward: { type: "string" },
      config: { type: "string" },
      hyp: { type: "string" },
      ref: { type: "string" },
      src: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.reward === undefined) throw new UserError("--reward NAME is required; see --help");
  if (values.hyp === undefined) throw new UserError("--hyp FILE is required; see --help");
  let config: unknown = {};
  if (values.config !== undefined) {
    try {
      config = JSON.parse(values.config);
    } catch (error) {
      throw new UserError(`--config is not valid JSON: ${(error as Error).message}`);
    }
  }
  const registries = createRegistries(builtinPlugins);
  const ref = await resolvePluginRef(
    registries,
    "reward",
    { name: values.reward, config },
    "--reward/--config",
  );
  const reward = await createPlugin(registries, "reward", ref, {
    seed: 1,
    baseDir: Deno.cwd(),
    smoke: false,
    log: (message) => console.error(message),
  });
  const hyps = await readLines(values.hyp, "hyp");
  const refs = values.ref === undefined ? undefined : await readLines(values.ref, "ref");
  const srcs = values.src === undefined ? undefined : await readLines(values.src, "src");
  if (reward.needsReference && refs === undefined) {
    throw new UserError(`reward "${values.reward}" compares with references: give --ref FILE`);
  }
  for (const [flag, lines] of [["ref", refs], ["src", srcs]] as const) {
    if (lines !== undefined && lines.length !== hyps.length) {
      throw new DataError(
        `--hyp ${values.hyp} has ${hyps.length} lines but --${flag} ${
          flag === "ref" ? values.ref : values.src
        } has ${lines.length}; the files must be line-aligned`,
      );
    }
  }
  const rows = hyps.map((hypothesis, i) => ({
    source: srcs?.[i] ?? "",
    hypothesis,
    ...(refs !== undefined ? { reference: refs[i] } : {}),
  }));
  const scores = rows.length === 0 ? [] : await reward.score(rows);
  checkScores(scores, rows.length);
  const average = rows.length === 0 ? 0 : mean(scores);
  if (values.json) {
    console.log(JSON.stringify({ scores, mean: average }));
  } else {
    for (const s of scores) console.log(s.toFixed(6));
    console.error(
      `${values.reward}: mean ${average.toFixed(6)} (x100 = ${
        (100 * average).toFixed(2)
      }) over ${scores.length} lines`,
    );
  }
  return 0;
}

if (import.meta.main) await runMain("score", main);
