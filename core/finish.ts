/**
 * How every policy-training algorithm (bc, rest, ppo) ends a run: the final evaluation of its
 * policy ({@link finalEvaluation}), merged with the algorithm's own training counters, written
 * to the run's metrics log and printed one line per metric (rewards x100).
 *
 * @module
 */

import { join } from "node:path";
import { finalEvaluation } from "./evaluate.ts";
import { profiler } from "./profile.ts";
import type { Metrics, Policy, RunContext, RunSummary } from "./types.ts";

/**
 * Evaluates `policy` (KL measured against `bcPolicy`; the decoding on the run's executor),
 * writes the test translations to `<run>/test_outputs.tsv`, logs the evaluation and
 * `training` (`train/...` counters) at `step`, and returns them as the run's summary.
 */
export async function finishRun(
  ctx: RunContext,
  policy: Policy,
  bcPolicy: Policy,
  training: Metrics,
  step: number,
): Promise<RunSummary> {
  const evaluation = await profiler.phase("evaluation", () =>
    finalEvaluation(
      policy,
      ctx.tokenizer,
      ctx.reward,
      ctx.splits,
      ctx.evaluation,
      ctx.seed,
      {
        bcPolicy,
        outputs: join(ctx.dir, "test_outputs.tsv"),
        place: {
          ...(ctx.executor === undefined ? {} : { executor: ctx.executor }),
          ...(ctx.recipe === undefined ? {} : { recipe: ctx.recipe }),
        },
      },
    ));
  const metrics: Metrics = { ...evaluation, ...training };
  await ctx.metrics.log(metrics, step);
  for (const [key, value] of Object.entries(metrics)) {
    ctx.log(`${key} = ${(key.includes("reward") ? 100 * value : value).toFixed(2)}`);
  }
  return { metrics };
}
