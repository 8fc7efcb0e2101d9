/**
 * `deno task report <experiment-folder>`: rebuilds an experiment's Table 1
 * (`table1.md`, `table1.csv`, `table1.json`) and figures from its stored run folders,
 * without retraining, and prints the table.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { UserError } from "../core/errors.ts";
import { renderTable, writeReport } from "../core/report/mod.ts";
import { runMain } from "./_main.ts";

const HELP = `Usage: deno task report <experiment-folder>

Rebuilds the report of an experiment from the run folders that \`deno task exp\`
wrote (e.g. runs/quickstart): table1.md, table1.csv, table1.json and SVG figures
(reward per Improve step, per Grow step, Best-of-N, PPO reward and KL), written
into the experiment folder. Prints the table; figures without data are skipped.

Runs named <row>@seed<k> are seeds of one row: their cells show mean ± sample
standard deviation. Runs without summary.json are marked "(incomplete)".

Options:
  -h, --help       show this help`;

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { help: { type: "boolean", short: "h", default: false } },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UserError(
      `expected one experiment folder, got ${positionals.length}` +
        ` (usage: deno task report <experiment-folder>; --help for more)`,
    );
  }
  const { report } = await writeReport(positionals[0], { log: (m) => console.error(m) });
  console.log(renderTable(report));
  return 0;
}

if (import.meta.main) await runMain("report", main);
