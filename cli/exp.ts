/**
 * `deno task exp <manifest.json>`: validates a manifest and runs its experiment.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { UserError } from "../core/errors.ts";
import { loadManifest } from "../core/manifest.ts";
import { createRegistries } from "../core/registry.ts";
import { describePlan, runExperiment } from "../core/experiment.ts";
import { renderTable, writeReport } from "../core/report.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { parseIntegerFlag, runMain } from "./_main.ts";

const HELP = `Usage: deno task exp <manifest.json> [options]

Validates the manifest, then runs every run of the experiment, writing
<out>/<experiment>/<run>/ (manifest.resolved.json, metrics.jsonl, ...).

Options:
  --dry-run        validate, print the resolved plan and exit
  --smoke          scale every budget down to a seconds-long end-to-end check
  --out DIR        output root (default: runs)
  --resume         continue the runs found in the output folder
  --backend NAME   compute backend, overriding the manifest (auto, cpu, wasm, blas, tensorflow)
  --seed N         base seed, overriding the manifest
  --seeds N        repeat every run with N seeds (runs become <name>@seed<k>; the
                   report shows mean and standard deviation), overriding the manifest
  -h, --help       show this help

Exit codes: 0 done, 2 user error (arguments, manifest, data), 1 internal failure.`;

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      "dry-run": { type: "boolean", default: false },
      smoke: { type: "boolean", default: false },
      out: { type: "string", default: "runs" },
      resume: { type: "boolean", default: false },
      backend: { type: "string" },
      seed: { type: "string" },
      seeds: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UserError(
      `expected exactly one manifest file, got ${positionals.length}${
        positionals.length ? ` (${positionals.join(" ")})` : ""
      }; see --help`,
    );
  }
  const registries = createRegistries(builtinPlugins);
  const seed = parseIntegerFlag("seed", values.seed);
  const seeds = parseIntegerFlag("seeds", values.seeds);
  if (seeds !== undefined && (seeds < 1 || seeds > 100)) {
    throw new UserError(`--seeds must be between 1 and 100 (got ${seeds})`);
  }
  const manifest = await loadManifest(positionals[0], registries, {
    ...(seed !== undefined ? { seed } : {}),
    ...(seeds !== undefined ? { seeds } : {}),
    ...(values.backend !== undefined ? { backend: values.backend } : {}),
    smoke: values.smoke,
  });
  const out = resolve(values.out);
  if (values["dry-run"]) {
    console.log(describePlan(manifest, out));
    return 0;
  }
  console.error(describePlan(manifest, out));
  const result = await runExperiment(manifest, registries, {
    out,
    resume: values.resume,
    smoke: values.smoke,
  });
  const report = await writeReport(result.dir);
  console.log(renderTable(report.report));
  console.error(`done: ${result.dir} (report: ${join(result.dir, "table1.md")})`);
  return 0;
}

if (import.meta.main) await runMain("exp", main);
