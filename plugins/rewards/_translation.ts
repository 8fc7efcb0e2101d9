/**
 * Translation models that a reward trains for itself in its `prepare` (`dual_xent` trains both
 * directions; `learned` with `init.from: "backward"` starts its encoder from the backward one):
 * the seed of each direction, the side-swapped views of the tokenizer and the data that a
 * target -> source model reads, training (or, when complete, loading) one direction with
 * core's BC code into a folder of the reward's, the tokenizer guard of such a folder, and the
 * `training` schema these rewards share.
 *
 * @module
 */

import { join } from "node:path";
import { trainOrLoadBc } from "../../core/bc.ts";
import { UserError } from "../../core/errors.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import type { JsonSchema } from "../../core/plugin.ts";
import { Rng } from "../../core/random.ts";
import { exists, writeFileAtomic } from "../../core/run.ts";
import { BC_SCHEMA } from "../../core/sections.ts";
import type {
  BcSettings,
  Example,
  ModelFactory,
  Policy,
  RewardModel,
  RewardPrepareContext,
  RunSplits,
  Side,
  Tokenizer,
} from "../../core/types.ts";

/** Which way a translation model translates: source -> target, or target -> source. */
export type Direction = "forward" | "backward";

/** The seed of one direction's model: derived from the experiment's seed, never equal to it. */
export function directionSeed(seed: number, direction: Direction): number {
  const derived = new Rng(seed).fork(`dual_xent/${direction}`).nextUint32() % 2_147_483_647;
  return derived === seed ? derived + 1 : derived;
}

function flip(side: Side): Side {
  return side === "source" ? "target" : "source";
}

/**
 * A view of `tokenizer` with its sides swapped, for a model that translates target -> source:
 * `encode(text, "source")` encodes with the tokenizer's target side, and so on. Training or
 * loading through the view changes the underlying tokenizer; the view itself never trains.
 */
export function swapSides(tokenizer: Tokenizer): Tokenizer {
  return {
    specials: tokenizer.specials,
    get trained() {
      return tokenizer.trained;
    },
    train() {
      throw new TypeError("swapSides: the swapped view of a tokenizer cannot be trained");
    },
    vocabSize: (side) => tokenizer.vocabSize(flip(side)),
    encode: (text, side) => tokenizer.encode(text, flip(side)),
    decode: (ids, side) => tokenizer.decode(ids, flip(side)),
    save: () => tokenizer.save(),
    load: (state) => tokenizer.load(state),
  };
}

function swapExamples(examples: readonly Example[]): Example[] {
  return examples.map((e) => ({ source: e.reference, reference: e.source }));
}

/** Every split with source and reference exchanged (the backward model's data). */
export function swapSplits(splits: RunSplits): RunSplits {
  return {
    train: swapExamples(splits.train),
    valid: swapExamples(splits.valid),
    test: swapExamples(splits.test),
    select: swapExamples(splits.select),
  };
}

/** Sentence chrF / 100: what BC logs as `eval/reward` while it trains a reward's model. */
function chrfReward(): RewardModel {
  return {
    needsReference: true,
    score: (rows) =>
      Promise.resolve(rows.map((r) => sentenceChrf(r.hypothesis, r.reference ?? "") / 100)),
  };
}

/** What {@link trainOrLoadDirection} trains. */
export interface DirectionOptions {
  /** Which way the model translates. */
  direction: Direction;
  /** The BC folder of the model (`policy.json` once complete). */
  dir: string;
  /** Builds the model. */
  factory: ModelFactory;
  /** Budget and selection (the `bc` section's fields). */
  training: BcSettings;
  /** Initialisation and batch-order seed (see {@link directionSeed}). */
  seed: number;
}

/**
 * One direction's translation model, trained on the experiment's training pairs with core's
 * BC loop (`trainOrLoadBc`: label-smoothed NLL, early stopping on greedy chrF of the selection
 * split, resumable training state) in `options.dir`, or loaded from there when complete. The
 * backward model sees the tokenizer and the data with their sides swapped, so each text is
 * encoded with the side of its own language. Log lines and progress carry the direction.
 */
export async function trainOrLoadDirection(
  ctx: RewardPrepareContext,
  options: DirectionOptions,
): Promise<Policy> {
  const { direction, training } = options;
  const backward = direction === "backward";
  return await trainOrLoadBc({
    experimentDir: ctx.dir,
    dir: options.dir,
    factory: options.factory,
    tokenizer: backward ? swapSides(ctx.tokenizer) : ctx.tokenizer,
    splits: backward ? swapSplits(ctx.splits) : ctx.splits,
    reward: chrfReward(),
    settings: training,
    evaluation: ctx.evaluation,
    seed: options.seed,
    checkpointSeconds: training.checkpointSeconds,
    log: (message) => ctx.log(`${direction}: ${message}`),
    progress: (label, total, unit) => ctx.progress(`${direction} ${label}`, total, unit),
  });
}

/** Name of the file that records which tokenizer a reward folder's models were trained with. */
export const TOKENIZER_FILE = "tokenizer.sha256";

/**
 * Records `fingerprint` (the tokenizer's) in `<dir>/tokenizer.sha256` before anything is
 * trained there, or checks that the one recorded is the same.
 *
 * @throws {UserError} naming `reward` and the file when the folder's models were trained with
 * another tokenizer.
 */
export async function guardTokenizer(
  reward: string,
  dir: string,
  fingerprint: string,
): Promise<void> {
  const path = join(dir, TOKENIZER_FILE);
  if (!(await exists(path))) {
    await writeFileAtomic(path, fingerprint + "\n");
    return;
  }
  const stored = (await Deno.readTextFile(path)).trim();
  if (stored !== fingerprint) {
    throw new UserError(
      `${reward} reward: ${dir} holds models trained with a different tokenizer ` +
        `(${path}: ${stored.slice(0, 16)}..., this experiment's: ${
          fingerprint.slice(0, 16)
        }...); remove the folder to retrain`,
    );
  }
}

/**
 * The schema of a reward's translation-model `training`: the `bc` section's fields, with
 * these defaults (3,000 steps of 64 pairs, peak rate 0.002 after 400 warm-up steps, selection
 * chrF on 200 pairs every 500 steps, patience 3).
 */
export function translationTrainingSchema(description: string): JsonSchema {
  const schema = structuredClone(BC_SCHEMA);
  schema.description = description;
  const defaults: Record<string, unknown> = {
    steps: 3000,
    batchSize: 64,
    learningRate: 0.002,
    warmupSteps: 400,
    evalEvery: 500,
    patience: 3,
    evalSize: 200,
  };
  for (const [key, value] of Object.entries(defaults)) schema.properties[key].default = value;
  return schema;
}
