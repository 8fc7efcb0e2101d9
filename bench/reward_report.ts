/**
 * Measures saved `learned` reward models the same way (issue 13, item 6), printing one JSON
 * line per model: `rewardReport` on the first SOURCES (default 200) test sources with 32 BC
 * samples each at temperature 0.8 (the same samples for every model), and the pooled Pearson
 * and Kendall of each model on every model's `heldout.jsonl` rows.
 *
 *     SOURCES=150 deno run --allow-all bench/reward_report.ts <experiment dir> <manifest> <reward dir>...
 *
 * Run it from the manifest's folder (its data paths are relative to it). The experiment dir
 * holds `tokenizer.json` and `shared/bc/`; each reward dir a `qe_model.json` and its
 * `qe_model.tokenizer.json` (older models: copy the experiment's tokenizer.json there).
 * ONLY=0,2 measures only those reward dirs (by position).
 *
 * @module
 */
import { join } from "node:path";
import { resolvePluginRef } from "../core/manifest/mod.ts";
import { createRegistries } from "../core/registry.ts";
import { createPlugin } from "../core/experiment.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { prepareSplits } from "../core/splits.ts";
import { buildPolicy } from "../core/bc.ts";
import { loadPolicyCheckpoint } from "../core/checkpoint.ts";
import { describeRewardReport, powersUpTo, rewardReport } from "../core/reward_report.ts";
import { kendallTauB, pearson } from "../core/metrics/correlation.ts";

const exp = Deno.args[0];
const manifest = JSON.parse(await Deno.readTextFile(Deno.args[1]));
const registries = createRegistries(builtinPlugins);
const deps = { seed: 1, baseDir: Deno.cwd(), smoke: false, log: (m: string) => console.error(m) };
const make = async (kind: never, ref: unknown) =>
  await createPlugin(registries, kind, await resolvePluginRef(registries, kind, ref, "m"), deps);
await (await make("backend" as never, manifest.backend) as { init(): Promise<unknown> }).init();
const data = await make("data" as never, manifest.data) as { load(): Promise<never> };
const { splits } = prepareSplits(await data.load());
const tokenizer = await make("tokenizer" as never, manifest.tokenizer) as never as {
  load(s: unknown): void;
};
tokenizer.load(JSON.parse(await Deno.readTextFile(join(exp, "tokenizer.json"))));
const factory = await make("model" as never, manifest.model);
const policy = buildPolicy(factory as never, tokenizer as never, 1);
await loadPolicyCheckpoint(policy, join(exp, "shared", "bc"), "policy");
const folders = Deno.args.slice(2);
const test = splits.test.slice(0, Number(Deno.env.get("SOURCES") ?? 200));
const heldRows = [];
for (const f of folders) {
  heldRows.push(
    (await Deno.readTextFile(join(f, "heldout.jsonl"))).trim().split("\n").map((l) =>
      JSON.parse(l)
    ),
  );
}
const only = (Deno.env.get("ONLY") ?? "").split(",").filter((x) => x !== "").map(Number);
for (const [index, f] of folders.entries()) {
  if (only.length > 0 && !only.includes(index)) continue;
  const reward = await make("reward" as never, {
    name: "learned",
    config: { path: f },
  }) as never as {
    score(r: unknown[]): Promise<number[]>;
  };
  const started = performance.now();
  const report = await rewardReport(policy, tokenizer as never, reward as never, test, {
    samples: 32,
    withinSamples: 8,
    ns: powersUpTo(32),
    temperature: 0.8,
    seed: 12345,
    maxLen: 32,
    batchSize: 64,
  });
  const pooled: Record<string, number> = {};
  for (let k = 0; k < heldRows.length; k++) {
    const rows = heldRows[k];
    const scores = await reward.score(rows);
    const targets = rows.map((r: { target: number }) => r.target);
    pooled[`rows_of_${k}_pearson`] = pearson(scores, targets);
    pooled[`rows_of_${k}_kendall`] = kendallTauB(scores, targets);
    pooled[`rows_of_${k}_n`] = rows.length;
  }
  const meta = JSON.parse(await Deno.readTextFile(join(f, "qe_model.json"))).meta;
  console.log(
    JSON.stringify({ folder: f, seconds: meta.seconds, heldOut: meta.heldOut, report, pooled }),
  );
  console.error(
    describeRewardReport(report),
    `(${((performance.now() - started) / 1000).toFixed(0)}s)`,
  );
}
