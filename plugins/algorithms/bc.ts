/**
 * `bc`: the behaviour-cloning baseline (the paper's BC row, G=0 I=0). Trains the shared
 * BC policy on first use (the manifest's `bc` section) and reports its final evaluation.
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import { DistinctSamples } from "../../core/evaluate.ts";
import { finishRun } from "../../core/finish.ts";
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
          // KL(pi_BC || pi_BC) = 0: computed like every other row's, as a check. BC trains on
          // the references only: it samples nothing (see DistinctSamples), and takes no
          // optimizer step after BC.
          return await finishRun(ctx, policy, policy, {
            "train/distinct_samples": new DistinctSamples().size,
            "train/gradient_steps": 0,
          }, 0);
        } finally {
          policy.dispose();
        }
      },
    };
  },
});
