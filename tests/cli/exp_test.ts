import assert from "node:assert/strict";
import { join } from "node:path";
import { hasStackTrace, ROOT_DIR, runTask } from "../_cli.ts";

async function tempManifest(manifest: unknown): Promise<{ dir: string; file: string }> {
  const dir = await Deno.makeTempDir();
  const file = join(dir, "m.json");
  await Deno.writeTextFile(
    file,
    typeof manifest === "string" ? manifest : JSON.stringify(manifest),
  );
  return { dir, file };
}

function smallManifest(): Record<string, unknown> {
  return {
    experiment: "cli_test",
    seed: 1,
    backend: "cpu",
    data: { name: "synthetic", config: { pairs: 200 } },
    tokenizer: { name: "bpe", config: { vocabSize: 300 } },
    reward: "chrf",
    runs: [{ name: "baselines", algorithm: "baselines" }],
  };
}

Deno.test("exp: a misspelled plugin and a wrong-typed seed exit 2 with both problems, no stack", async () => {
  const manifest = smallManifest();
  manifest.seed = "one";
  manifest.reward = "chfr";
  const { dir, file } = await tempManifest(manifest);
  try {
    const r = await runTask("exp", [file, "--out", join(dir, "runs")]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /\/seed: must be integer \(got "one"\)/);
    assert.match(r.stderr, /\/reward: unknown reward plugin "chfr"; did you mean "chrf"\?/);
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
    assert.equal(r.stdout, "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("exp: argument errors exit 2 without a stack trace", async () => {
  for (
    const args of [
      [],
      ["a.json", "b.json"],
      ["experiments/quickstart.json", "--seed", "abc"],
      ["experiments/quickstart.json", "--bogus"],
      ["/nonexistent/manifest.json"],
      ["experiments/quickstart.json", "--backend", "cuda", "--dry-run"],
    ]
  ) {
    const r = await runTask("exp", args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /^exp: error: /, args.join(" "));
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
  }
});

Deno.test("exp: --help and --dry-run print and exit 0", async () => {
  const help = await runTask("exp", ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--dry-run/);
  const dry = await runTask("exp", ["experiments/quickstart.json", "--dry-run", "--seed", "7"]);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, /experiment quickstart/);
  assert.match(dry.stdout, /seed {6}7/);
  assert.match(dry.stdout, /algorithm rest/);
});

Deno.test("exp: a smoke run writes the run folder; a second run needs --resume", async () => {
  const { dir, file } = await tempManifest(smallManifest());
  try {
    const out = join(dir, "runs");
    const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const runDir = join(out, "cli_test", "baselines");
    const resolved = JSON.parse(await Deno.readTextFile(join(runDir, "manifest.resolved.json")));
    assert.equal(resolved.reward.name, "chrf");
    const metrics = (await Deno.readTextFile(join(runDir, "metrics.jsonl"))).trim().split("\n");
    const record = JSON.parse(metrics[0]);
    assert.equal(record["eval/valid_reward_reference"], 1);
    assert.ok(record["eval/valid_reward_shuffled"] < record["eval/valid_reward_reference"]);

    const again = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already exists; pass --resume/);
    const resumed = await runTask("exp", [file, "--smoke", "--out", out, "--resume"], { cwd: dir });
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stderr, /already complete, skipped/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("exp: --seeds 2 repeats each run and the table reports mean and deviation", async () => {
  const { dir, file } = await tempManifest(smallManifest());
  try {
    const out = join(dir, "runs");
    const r = await runTask("exp", [file, "--smoke", "--seeds", "2", "--out", out], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    for (const k of [1, 2]) {
      const resolved = JSON.parse(
        await Deno.readTextFile(
          join(out, "cli_test", `baselines@seed${k}`, "manifest.resolved.json"),
        ),
      );
      assert.equal(resolved.seed, k);
    }
    const table = JSON.parse(await Deno.readTextFile(join(out, "cli_test", "table1.json")));
    assert.deepEqual(table.rows[0].runs, ["baselines@seed1", "baselines@seed2"]);
    assert.deepEqual(table.rows[0].seeds, [1, 2]);
    assert.equal(table.rows[0].values.wall_time_s.n, 2);
    const bad = await runTask("exp", [file, "--seeds", "0", "--dry-run"], { cwd: dir });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--seeds must be between 1 and 100/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("schema: the committed manifest schema is up to date", async () => {
  const { schemaText } = await import("../../cli/schema.ts");
  const committed = await Deno.readTextFile(join(ROOT_DIR, "experiments/manifest.schema.json"));
  assert.equal(committed, schemaText(), "run `deno task schema` and commit the result");
});

Deno.test("exp --backend tensorflow without tfjs-node: exit 2 naming the packages and the steps", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tensorflow_none_" });
  try {
    const r = await runTask("exp", [
      "experiments/quickstart.json",
      "--smoke",
      "--backend",
      "tensorflow",
      "--out",
      dir,
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /tensorflow backend unavailable: @tensorflow\/tfjs-node-gpu: /);
    assert.match(r.stderr, /deno install --allow-scripts=npm:@tensorflow\/tfjs-node/);
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
