import assert from "node:assert/strict";
import { join } from "node:path";
import { hasStackTrace, ROOT_DIR, runTask } from "../_cli.ts";
import { tinyManifest } from "../_experiment.ts";

/** The example loss plugin of the README, between its markers. */
async function readmeExample(): Promise<string> {
  const readme = await Deno.readTextFile(join(ROOT_DIR, "README.md"));
  const block = readme.match(
    /<!-- example-loss:start -->\s*```ts\n([\s\S]*?)```\s*<!-- example-loss:end -->/,
  );
  assert.ok(block, "README.md has the example loss between its markers");
  return block[1];
}

function manifest(loss: unknown): Record<string, unknown> {
  return tinyManifest({
    experiment: "user_plugin",
    seed: 4,
    backend: "auto",
    data: { name: "synthetic", config: { pairs: 300 } },
    bc: undefined,
    evaluation: undefined,
    runs: [{
      name: "rest_rwr",
      algorithm: { name: "rest", config: { growSteps: 1, improveSteps: 2 } },
      loss,
      threshold: "fixed",
    }],
  });
}

Deno.test("the README's loss plugin, kept outside the repository, runs end to end", async () => {
  const dir = await Deno.makeTempDir({ prefix: "user_plugin_" });
  assert.ok(!dir.startsWith(ROOT_DIR));
  try {
    await Deno.mkdir(join(dir, "my_losses"));
    await Deno.mkdir(join(dir, "exp"));
    await Deno.writeTextFile(join(dir, "my_losses", "rwr.ts"), await readmeExample());
    const file = join(dir, "exp", "rwr.json");
    await Deno.writeTextFile(
      file,
      JSON.stringify(manifest({ module: "../my_losses/rwr.ts", config: { beta: 0.05 } })),
    );
    const out = join(dir, "runs");

    const dry = await runTask("exp", [file, "--dry-run"], { cwd: dir });
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /rwr\.ts \{"beta":0\.05\}/);

    const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const lines = (await Deno.readTextFile(join(out, "user_plugin", "rest_rwr", "metrics.jsonl")))
      .trim().split("\n").map((l) => JSON.parse(l));
    const improve = lines.filter((l) => "improve/tau" in l);
    assert.equal(improve.length, 2);
    for (const l of improve) assert.ok(l["improve/weight_max"] > 0 && l["improve/weight_max"] <= 1);

    // The same validation as a built-in: a bad option is named with its path.
    await Deno.writeTextFile(
      file,
      JSON.stringify(manifest({ module: "../my_losses/rwr.ts", config: { beta: -1, bta: 1 } })),
    );
    const bad = await runTask("exp", [file, "--dry-run"], { cwd: dir });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /\/runs\/0\/loss\/config\/beta: must be > 0/);
    assert.match(bad.stderr, /\/runs\/0\/loss\/config.*bta/);
    assert.ok(!hasStackTrace(bad.stderr), bad.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
