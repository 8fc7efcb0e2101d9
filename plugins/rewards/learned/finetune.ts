/**
 * Fine-tuning a trained QE network on freshly labelled rows (the `learned` reward's
 * `RewardModel.adapt`): a copy of the network, a few epochs at a small constant
 * learning rate, the regression loss only (soft-target cross-entropy on the sigmoid output,
 * the loss the network was trained with), batches of rows of similar length in a seeded order.
 *
 * @module
 */

import { Adam } from "../../../core/optim.ts";
import { UserError } from "../../../core/errors.ts";
import { Rng } from "../../../core/random.ts";
import { optimizerStep } from "../../../core/train.ts";
import type { Progress } from "../../../core/types.ts";
import { type QeItem, QeModel } from "./model.ts";

/** How a fine-tuning runs. */
export interface QeFineTune {
  /** Passes over the rows (a fraction runs part of one). */
  epochs: number;
  /** Constant learning rate. */
  learningRate: number;
  /** Rows per step. */
  batchSize: number;
  /** Global gradient-norm clip (0: off). */
  clipNorm: number;
  /** Seed of the batch order and of the dropout masks. */
  seed: number;
}

/**
 * A copy of `model` fine-tuned on `items` towards `targets` (in [0, 1]); `model` itself is
 * unchanged. Returns the copy and the optimizer steps taken, ceil(epochs * rows / batchSize).
 *
 * @throws {UserError} when the loss stops being finite (the learning rate is too high).
 */
export async function fineTuneQe(
  model: QeModel,
  items: readonly QeItem[],
  targets: readonly number[],
  settings: QeFineTune,
  progress: Progress,
): Promise<{ model: QeModel; steps: number }> {
  if (items.length !== targets.length) {
    throw new RangeError(`${items.length} rows but ${targets.length} targets`);
  }
  const copy = new QeModel(model.architecture, model.vocab, settings.seed, model.save());
  const steps = items.length === 0
    ? 0
    : Math.max(1, Math.ceil(settings.epochs * items.length / settings.batchSize));
  const rng = new Rng(settings.seed).fork("qe/finetune");
  const optimizer = new Adam(copy.variables, {});
  let batches: number[][] = [];
  try {
    for (let step = 1; step <= steps; step++) {
      if (batches.length === 0) batches = epochBatches(items, settings.batchSize, rng);
      const batch = batches.pop()!;
      const update = await optimizerStep(
        copy.variables,
        optimizer,
        () => copy.loss(batch.map((i) => items[i]), batch.map((i) => targets[i])),
        settings.learningRate,
        settings.clipNorm,
      );
      if (!update.applied) {
        throw new UserError(
          `learned reward: fine-tuning loss became ${update.loss} at step ${step}; lower ` +
            `rewardUpdate.learningRate (now ${settings.learningRate})`,
        );
      }
      progress.tick();
    }
  } catch (error) {
    copy.dispose();
    throw error;
  } finally {
    optimizer.dispose();
    progress.done();
  }
  return { model: copy, steps };
}

/** One epoch: rows in a seeded order, cut into batches of similar length, batches shuffled. */
function epochBatches(items: readonly QeItem[], size: number, rng: Rng): number[][] {
  const order = rng.shuffle(items.map((_, i) => i));
  const len = (i: number) => items[i].source.length + items[i].hypothesis.length;
  order.sort((a, b) => len(a) - len(b));
  const batches: number[][] = [];
  for (let i = 0; i < order.length; i += size) batches.push(order.slice(i, i + size));
  return rng.shuffle(batches);
}
