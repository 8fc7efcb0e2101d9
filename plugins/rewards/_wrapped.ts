/**
 * How a reward that wraps other rewards (`guarded`'s inner reward, `ensemble`'s members)
 * prepares one of them: in a subfolder of its own folder, with its own `metrics.jsonl` and
 * its log lines prefixed, so that the wrapped reward's files and messages stay apart.
 *
 * @module
 */

import { join } from "node:path";
import { MetricsWriter } from "../../core/run.ts";
import type { RewardModel, RewardPrepareContext } from "../../core/types.ts";

/**
 * Runs `reward.prepare` (when it has one) in `<ctx.dir>/<folder>/`, with log lines prefixed
 * by `label` and `overrides` (a member's seed, data or progress labels) on top of `ctx`.
 */
export async function prepareWrapped(
  reward: RewardModel,
  ctx: RewardPrepareContext,
  folder: string,
  label: string,
  overrides: Partial<RewardPrepareContext> = {},
): Promise<void> {
  if (reward.prepare === undefined) return;
  const dir = join(ctx.dir, folder);
  await Deno.mkdir(dir, { recursive: true });
  await reward.prepare({
    ...ctx,
    dir,
    metrics: new MetricsWriter(join(dir, "metrics.jsonl")),
    log: (message) => ctx.log(`${label}: ${message}`),
    ...overrides,
  });
}
