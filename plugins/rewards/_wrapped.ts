/**
 * How a reward that wraps other rewards (`guarded`'s inner reward, `ensemble`'s members,
 * `weighted`'s components) prepares one of them: in a subfolder of its own folder, with its
 * own `metrics.jsonl` and its log lines prefixed, so that the wrapped reward's files and
 * messages stay apart; and how it restores one from that subfolder (on a queue worker).
 *
 * @module
 */

import { join } from "node:path";
import { MetricsWriter } from "../../core/run.ts";
import { UserError } from "../../core/errors.ts";
import type { RewardModel, RewardPrepareContext, RewardRestoreContext } from "../../core/types.ts";

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

/**
 * Runs `reward.restore` in `<ctx.dir>/<folder>/` (what {@link prepareWrapped} prepared
 * there), with log lines prefixed by `label`; nothing for a reward that prepares nothing.
 *
 * @throws {UserError} naming `label` when the reward prepares something it cannot restore.
 */
export async function restoreWrapped(
  reward: RewardModel,
  ctx: RewardRestoreContext,
  folder: string,
  label: string,
): Promise<void> {
  if (reward.prepare === undefined) return;
  if (reward.restore === undefined) {
    throw new UserError(
      `reward "${label}" prepares a model of its own but has no restore() to load it from ` +
        "the files its prepare() saved, so queue workers cannot use it: use the local executor",
    );
  }
  await reward.restore({
    ...ctx,
    dir: join(ctx.dir, folder),
    log: (message) => ctx.log(`${label}: ${message}`),
  });
}
