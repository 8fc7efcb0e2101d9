import assert from "node:assert/strict";
import { join } from "node:path";
import cpu from "../../plugins/backends/cpu.ts";
import { tinyTransformerFactory } from "../plugins/_tiny_translator.ts";
import { type BcContext, trainOrLoadBc } from "../../core/bc.ts";
import { evaluatePolicy } from "../../core/evaluate.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import type { BcSettings, Example, RewardModel, Tokenizer } from "../../core/types.ts";
import { fakeTokenizer } from "./_fakes.ts";
import { writeReport } from "../../core/report/mod.ts";
import { BC_CURVE_FILE } from "../../core/report/bc_curve.ts";
import { tinyEvalSettings } from "../_experiment.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

// A tiny copy task: the target is the source, character by character.
const WORDS = ["abc", "bca", "cab", "acb", "bac", "cba", "aab", "bba", "cca", "abb"];
const EXAMPLES: Example[] = WORDS.map((w) => ({ source: w, reference: w }));

// A reward that is the opposite of chrF: selecting on it would keep the worst-chrF weights.
const ANTI_CHRF: RewardModel = {
  needsReference: true,
  score: (rows) =>
    Promise.resolve(rows.map((r) => 1 - sentenceChrf(r.hypothesis, r.reference ?? "") / 100)),
};

const SETTINGS: BcSettings = {
  steps: 400,
  batchSize: 4,
  learningRate: 0.01,
  warmupSteps: 5,
  schedule: "constant",
  clipNorm: 1,
  evalEvery: 10,
  patience: 3,
  labelSmoothing: 0.1,
  maxTokens: 16,
  evalSize: 0,
  checkpointSeconds: 0,
};

const EVALUATION = tinyEvalSettings();

function context(dir: string, logs: string[]): BcContext {
  const tokenizer = fakeTokenizer.create({}, {} as never) as Tokenizer;
  tokenizer.train({ sources: WORDS, targets: WORDS });
  const factory = tinyTransformerFactory();
  return {
    experimentDir: dir,
    factory,
    tokenizer,
    splits: { train: EXAMPLES, valid: EXAMPLES, select: EXAMPLES.slice(0, 6), test: [] },
    reward: ANTI_CHRF,
    settings: SETTINGS,
    evaluation: EVALUATION,
    seed: 3,
    log: (message) => logs.push(message),
    progress: () => ({ tick() {}, done() {} }),
  };
}

async function readMetrics(path: string): Promise<Record<string, number>[]> {
  const text = await Deno.readTextFile(path);
  return text.trim().split("\n").map((line) => JSON.parse(line));
}

Deno.test("BC stops on selection chrF with patience and keeps the best-chrF weights", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const logs: string[] = [];
    const ctx = context(dir, logs);
    const policy = await trainOrLoadBc(ctx);
    const evals = (await readMetrics(join(dir, "shared", "bc", "metrics.jsonl")))
      .filter((r) => "eval/chrf" in r);
    const chrf = evals.map((r) => r["eval/chrf"]);
    const best = Math.max(...chrf);
    const bestAt = chrf.indexOf(best);
    // It stopped by patience, well before the cap: `patience` evaluations after the first
    // best, none of them higher.
    assert.ok(evals.length < SETTINGS.steps / SETTINGS.evalEvery, `${evals.length} evaluations`);
    assert.equal(evals.length, bestAt + 1 + SETTINGS.patience);
    assert.match(logs.join("\n"), /patience/);
    assert.match(
      logs.at(-1)!,
      new RegExp(`best selection chrF ${best.toFixed(2)} at step ${evals[bestAt].step}`),
    );
    // The reward disagrees with chrF here: selecting on it would have kept another evaluation.
    const reward = evals.map((r) => r["eval/reward"]);
    assert.notEqual(reward.indexOf(Math.max(...reward)), bestAt);
    // The returned policy has the best evaluation's weights: same chrF on the selection split.
    const again = await evaluatePolicy(policy, ctx.tokenizer, ctx.splits.select, ANTI_CHRF, {
      decode: { mode: "greedy" },
      maxLen: EVALUATION.maxLen,
      batchSize: EVALUATION.batchSize,
    });
    assert.equal(again.chrf, best);
    policy.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// BC's log as trainOrLoadBc writes it: training records, and evaluations every 1000 steps.
const BC_LOG = [
  { step: 500, "bc/loss": 5.1, "bc/lr": 0.002 },
  { step: 1000, "eval/reward": 0.301, "eval/chrf": 31.5, "eval/bleu": 9.1 },
  { step: 2000, "eval/reward": 0.402, "eval/chrf": 44.25, "eval/bleu": 15.3 },
  { step: 3000, "eval/reward": 0.455, "eval/chrf": 47.1, "eval/bleu": 18.0 },
  { step: 4000, "eval/reward": 0.449, "eval/chrf": 46.8, "eval/bleu": 17.7 },
];

Deno.test("the report draws bc_curve.svg from shared/bc/metrics.jsonl", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const run = join(dir, "bc");
    await Deno.mkdir(run, { recursive: true });
    await Deno.writeTextFile(join(run, "manifest.resolved.json"), '{"algorithm": {"name": "bc"}}');
    // No BC folder: no figure and no note.
    let written = await writeReport(dir);
    assert.ok(!written.markdown.includes(BC_CURVE_FILE));
    // A BC folder without evaluations: skipped, with the reason.
    await Deno.mkdir(join(dir, "shared", "bc"), { recursive: true });
    written = await writeReport(dir);
    assert.match(written.markdown, /bc_curve\.svg .*skipped; no BC evaluation was logged/);

    const log = BC_LOG.map((r) => JSON.stringify(r)).join("\n") + "\n";
    await Deno.writeTextFile(join(dir, "shared", "bc", "metrics.jsonl"), log);
    written = await writeReport(dir);
    assert.ok(written.files.includes(join(dir, BC_CURVE_FILE)));
    assert.match(written.markdown, /\[bc_curve\.svg\]\(bc_curve\.svg\): BC validation curve/);
    const svg = await Deno.readTextFile(join(dir, BC_CURVE_FILE));
    assert.ok(svg.startsWith("<svg"));
    assert.match(svg, /<title>BC validation curve; best chrF 47\.1 at step 3000<\/title>/);
    assert.match(svg, /selection chrF/);
    assert.match(svg, /selection reward x100/);
    // One marker per evaluation on each of the two lines, none for the training record.
    assert.equal(svg.match(/<circle /g)!.length - 2, 2 * 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
