/**
 * `bc`: the behaviour-cloning baseline (the paper's BC row, G=0 I=0). Trains the shared
 * BC policy on first use (the manifest's `bc` section) and reports its final evaluation.
 *
 * @module
 */

import { join } from "node:path";
import { definePlugin } from "../../core/plugin.ts";
import { DistinctSamples, finalEvaluation } from "../../core/evaluate.ts";
import type { RunContext } from "../../core/types.ts";

export default definePlugin({
  kind: "algorithm",
  name: "bc",
  summary: "Behaviour cloning only: the shared BC policy, evaluated (the paper's G=0, I=0 row).",
  uses: { bc: "required", reward: "optional" },
  configSchema: { type: "object", additionalProperties: false, properties: {} },
  create() {
    return {
      async run(ctx: RunContext) {
        const policy = await ctx.bcPolicy();
        try {
          const metrics = {
            ...(await finalEvaluation(
              policy,
              ctx.tokenizer,
              ctx.reward,
              ctx.splits,
              ctx.evaluation,
              ctx.seed,
              // KL(pi_BC || pi_BC) = 0: computed like every other row's, as a check.
              { bcPolicy: policy, outputs: join(ctx.dir, "test_outputs.tsv") },
            )),
            // BC trains on the references only: it samples nothing (see DistinctSamples),
            // and takes no optimizer step after BC.
            "train/distinct_samples": new DistinctSamples().size,
            "train/gradient_steps": 0,
          };
          await ctx.metrics.log(metrics, 0);
          for (const [key, value] of Object.entries(metrics)) {
            ctx.log(`${key} = ${(key.includes("reward") ? 100 * value : value).toFixed(2)}`);
          }
          return { metrics };
        } finally {
          policy.dispose();
        }
      },
    };
  },
});
