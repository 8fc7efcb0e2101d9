/**
 * A seeded `--smoke` run of every manifest in `experiments/`, end to end through the CLI.
 * Manifests over the LibreOffice catalogs need `deno task data libreoffice de` first (CI
 * fetches them); without the catalogs those manifests are reported as ignored.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { ROOT_DIR, runTask } from "../_cli.ts";

const EXPERIMENTS = join(ROOT_DIR, "experiments");

const manifests = [...Deno.readDirSync(EXPERIMENTS)]
  .map((e) => e.name)
  .filter((name) => name.endsWith(".json") && name !== "manifest.schema.json")
  .sort();

function needsCatalogs(file: string): boolean {
  return Deno.readTextFileSync(join(EXPERIMENTS, file)).includes("data/libreoffice");
}

function haveCatalogs(): boolean {
  try {
    return Deno.statSync(join(ROOT_DIR, "data", "libreoffice", "de")).isDirectory;
  } catch {
    return false;
  }
}

Deno.test("experiments/ holds the manifests the README promises", () => {
  for (const name of ["quickstart.json", "losses.json", "best_of_n.json", "ppo_vs_rest.json"]) {
    assert.ok(manifests.includes(name), `experiments/${name} is missing`);
  }
});

for (const name of manifests) {
  const ignore = needsCatalogs(name) && !haveCatalogs();
  Deno.test({
    name: `smoke: experiments/${name}${ignore ? " (needs deno task data libreoffice de)" : ""}`,
    ignore,
    async fn() {
      const out = await Deno.makeTempDir({ prefix: "smoke_" });
      try {
        const file = join(EXPERIMENTS, name);
        const r = await runTask("exp", [file, "--smoke", "--seed", "3", "--out", out]);
        assert.equal(r.code, 0, `${name}: exit ${r.code}\n${r.stderr.slice(-3000)}`);
        const experiment = JSON.parse(await Deno.readTextFile(file)).experiment;
        const runs = JSON.parse(await Deno.readTextFile(file)).runs as { name: string }[];
        for (const run of runs) {
          const dir = join(out, experiment, run.name);
          const summary = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
          assert.equal(typeof summary.metrics, "object", `${name}: ${run.name} has a summary`);
          const resolved = JSON.parse(
            await Deno.readTextFile(join(dir, "manifest.resolved.json")),
          );
          assert.equal(resolved.seed, 3, `${name}: ${run.name} ran with --seed 3`);
        }
      } finally {
        await Deno.remove(out, { recursive: true });
      }
    },
  });
}
