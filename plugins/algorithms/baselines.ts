/**
 * `baselines`: scores non-neural reference outputs on the validation and test
 * splits, so a reward model's floor and ceiling are known before training:
 *
 * - `copy`: the source sentence copied unchanged (what an untrained policy that
 *   learned only to copy would get; a reward that likes it is hackable),
 * - `shuffled`: the reference of another, randomly chosen pair (fluent but wrong),
 * - `reference`: the reference itself (the ceiling; 1 for reference-based metrics).
 *
 * It also logs tokenizer statistics (average tokens per sentence, unknown-token rate).
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import { Rng } from "../../core/random.ts";
import { mean } from "../../core/append.ts";
import { scoreOutputs } from "../../core/evaluate.ts";
import type { Example, Metrics, RunContext, Tokenizer } from "../../core/types.ts";

/** Config of the `baselines` algorithm. */
export interface BaselinesConfig {
  /** Which splits to score. */
  splits: ("valid" | "test")[];
  /** Which baselines to score. */
  baselines: ("copy" | "shuffled" | "reference")[];
}

function outputsFor(baseline: string, examples: readonly Example[], rng: Rng): string[] {
  switch (baseline) {
    case "copy":
      return examples.map((e) => e.source);
    case "reference":
      return examples.map((e) => e.reference);
    default: {
      if (examples.length < 2) return examples.map(() => "");
      // A derangement-free shuffle is not needed: the chance of a fixed point is ~1/n.
      const order = rng.shuffle(examples.map((_, i) => i));
      return order.map((j) => examples[j].reference);
    }
  }
}

function tokenizerStats(tokenizer: Tokenizer, examples: readonly Example[]): Metrics {
  let sourceTokens = 0;
  let targetTokens = 0;
  let unknown = 0;
  for (const e of examples) {
    const s = tokenizer.encode(e.source, "source");
    const t = tokenizer.encode(e.reference, "target");
    sourceTokens += s.length;
    targetTokens += t.length;
    for (const id of s) if (id === tokenizer.specials.unk) unknown++;
    for (const id of t) if (id === tokenizer.specials.unk) unknown++;
  }
  const n = Math.max(1, examples.length);
  return {
    "data/source_tokens_mean": sourceTokens / n,
    "data/target_tokens_mean": targetTokens / n,
    "data/unk_rate": unknown / Math.max(1, sourceTokens + targetTokens),
  };
}

export default definePlugin({
  kind: "algorithm",
  name: "baselines",
  summary:
    "Scores copy-the-source, shuffled-reference and reference outputs: a reward's floor and ceiling.",
  uses: { reward: "optional" },
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      splits: {
        type: "array",
        items: { enum: ["valid", "test"] },
        uniqueItems: true,
        minItems: 1,
        default: ["valid", "test"],
        description: "Splits to score.",
      },
      baselines: {
        type: "array",
        items: { enum: ["copy", "shuffled", "reference"] },
        uniqueItems: true,
        minItems: 1,
        default: ["copy", "shuffled", "reference"],
        description:
          "Baselines to score: copy the source, a random other reference, the reference.",
      },
    },
  },
  create(config: BaselinesConfig) {
    return {
      async run(ctx: RunContext) {
        const rng = new Rng(ctx.seed).fork("baselines");
        const metrics: Metrics = {
          "data/train_pairs": ctx.splits.train.length,
          "data/valid_pairs": ctx.splits.valid.length,
          "data/test_pairs": ctx.splits.test.length,
          "data/vocab_source": ctx.tokenizer.vocabSize("source"),
          "data/vocab_target": ctx.tokenizer.vocabSize("target"),
          ...tokenizerStats(ctx.tokenizer, ctx.splits.valid),
        };
        const total = config.splits.length * config.baselines.length;
        const progress = ctx.progress("baselines", total, "scorings");
        for (const split of config.splits) {
          const examples = ctx.splits[split];
          for (const baseline of config.baselines) {
            const outputs = outputsFor(baseline, examples, rng);
            const scores = examples.length === 0
              ? []
              : await scoreOutputs(ctx.reward, examples, outputs);
            metrics[`eval/${split}_reward_${baseline}`] = mean(scores);
            progress.tick();
          }
        }
        progress.done();
        await ctx.metrics.log(metrics, 0);
        for (const [key, value] of Object.entries(metrics)) {
          if (key.startsWith("eval/")) ctx.log(`${key} = ${(100 * value).toFixed(2)}`);
        }
        return { metrics };
      },
    };
  },
});
