/**
 * Behaviour cloning (the paper's "BC"): supervised NLL training of the policy on the
 * training pairs, shared by every run of an experiment. The result is the checkpoint
 * `<out>/<experiment>/shared/bc/policy.{json,bin}`; later runs (and `--resume`) load it.
 *
 * Model selection and early stopping: every `evalEvery` steps the policy decodes the
 * selection half of validation (`splits.select`, at most `evalSize` pairs) greedily, and the
 * score is the corpus chrF of those outputs against the references, whatever the manifest's
 * reward (the reward is logged beside it as `eval/reward`). chrF is the reference metric low-
 * resource MT selects on, it cannot be gamed the way a learned reward can, and it makes
 * every manifest's BC checkpoint comparable. Training stops when chrF has not improved for
 * `patience` evaluations in a row ("to convergence"), or at `steps` (a cap); the weights of
 * the best evaluation are kept. The curve is `eval/chrf` in `shared/bc/metrics.jsonl` and
 * the report draws it (`bc_curve.svg`).
 *
 * @module
 */

import { join } from "node:path";
import {
  hasCheckpoint,
  loadPolicyCheckpoint,
  removeCheckpoint,
  saveCheckpoint,
} from "./checkpoint.ts";
import { clearUnitState } from "./resume.ts";
import { savePolicy } from "./host_read.ts";

/** Name of BC's resumable training state in its folder. */
const TRAIN_STATE = "train_state";
import { evaluatePolicy, limit } from "./evaluate.ts";
import { MetricsWriter } from "./run.ts";
import { type TokenPair, trainLoop } from "./train.ts";
import { nllLoss } from "./batch.ts";
import { profiler } from "./profile.ts";
import type {
  BcSettings,
  EvalSettings,
  Example,
  ModelFactory,
  Policy,
  Progress,
  RewardModel,
  RunSplits,
  Tokenizer,
} from "./types.ts";

/** Encodes pairs, leaving out those longer than `maxTokens` on either side. */
export function encodePairs(
  tokenizer: Tokenizer,
  examples: readonly Example[],
  maxTokens: number,
): TokenPair[] {
  const pairs: TokenPair[] = [];
  for (const e of examples) {
    const source = tokenizer.encode(e.source, "source");
    const target = tokenizer.encode(e.reference, "target");
    if (source.length < maxTokens && target.length < maxTokens) pairs.push({ source, target });
  }
  return pairs;
}

/** Everything the BC phase needs. */
export interface BcContext {
  /** The experiment folder; BC writes `<experimentDir>/shared/<folder>/` (unless `dir`). */
  experimentDir: string;
  /** Builds policies. */
  factory: ModelFactory;
  /** The trained tokenizer. */
  tokenizer: Tokenizer;
  /** The data. */
  splits: RunSplits;
  /** Reward logged at each evaluation (`eval/reward`); selection is on corpus chrF. */
  reward: RewardModel;
  /** BC settings. */
  settings: BcSettings;
  /** Evaluation settings. */
  evaluation: EvalSettings;
  /** Seed of the BC phase. */
  seed: number;
  /** Folder under `<experiment>/shared/` (default `bc`). */
  folder?: string;
  /**
   * The folder BC writes, overriding `experimentDir` and `folder` (e.g. a reward that trains
   * its own translation models in its folder).
   */
  dir?: string;
  /** Save the training state this often, for `--resume` (default 120 s). */
  checkpointSeconds?: number;
  /** Log lines. */
  log(message: string): void;
  /** Progress display. */
  progress(label: string, total: number, unit?: string): Progress;
}

/** Builds a fresh policy for the tokenizer's vocabularies. */
export function buildPolicy(
  factory: ModelFactory,
  tokenizer: Tokenizer,
  seed: number,
  valueHead = false,
): Policy {
  return factory.build({
    sourceVocab: tokenizer.vocabSize("source"),
    targetVocab: tokenizer.vocabSize("target"),
    specials: tokenizer.specials,
    valueHead,
    seed,
  });
}

/**
 * Trains the BC policy, or loads it when `<experiment>/shared/bc/policy` exists. Returns a new
 * policy with the best BC weights (the caller owns and disposes it).
 */
export async function trainOrLoadBc(ctx: BcContext): Promise<Policy> {
  const dir = ctx.dir ?? join(ctx.experimentDir, "shared", ctx.folder ?? "bc");
  const policy = buildPolicy(ctx.factory, ctx.tokenizer, ctx.seed);
  if (await hasCheckpoint(dir, "policy")) {
    await loadPolicyCheckpoint(policy, dir, "policy");
    ctx.log(`bc: loaded ${join(dir, "policy.json")}`);
    return policy;
  }
  await Deno.mkdir(dir, { recursive: true });
  const metrics = new MetricsWriter(join(dir, "metrics.jsonl"));
  // An interrupted BC run continues from its last training state (saved every few minutes);
  // without one it restarts from scratch, so its partial log is cleared.
  if (!(await hasCheckpoint(dir, TRAIN_STATE))) await Deno.remove(metrics.path).catch(() => {});
  const pairs = encodePairs(ctx.tokenizer, ctx.splits.train, ctx.settings.maxTokens);
  const valid = limit(ctx.splits.select, ctx.settings.evalSize);
  ctx.log(
    `bc: ${pairs.length} training pairs (${
      ctx.splits.train.length - pairs.length
    } longer than ${ctx.settings.maxTokens} tokens left out), at most ${ctx.settings.steps} ` +
      `steps; selection chrF on ${valid.length} pairs every ${ctx.settings.evalEvery} steps, ${
        ctx.settings.patience > 0
          ? `stopping after ${ctx.settings.patience} evaluations without a higher one`
          : "no early stopping"
      }`,
  );
  const progress = ctx.progress("bc", ctx.settings.steps, "steps");
  let saved = false;
  const result = await profiler.phase("bc", () =>
    trainLoop(policy, pairs, ctx.settings, {
      prefix: "bc",
      metrics,
      progress,
      log: ctx.log,
      loss: (batch) =>
        nllLoss(policy, batch, {
          labelSmoothing: ctx.settings.labelSmoothing,
          training: true,
          average: "token",
        }),
      evaluate: async () => {
        const evaluation = await evaluatePolicy(policy, ctx.tokenizer, valid, ctx.reward, {
          decode: { mode: "greedy" },
          maxLen: ctx.evaluation.maxLen,
          batchSize: ctx.evaluation.batchSize,
        });
        // Select on corpus chrF (0-100) of the selection split, not on the reward.
        return {
          score: evaluation.chrf,
          metrics: {
            "eval/reward": evaluation.reward,
            "eval/chrf": evaluation.chrf,
            "eval/bleu": evaluation.bleu,
          },
        };
      },
      onBest: async (step, score) => {
        await saveCheckpoint(dir, "best", await savePolicy(policy), { step, score });
        saved = true;
      },
      checkpoint: {
        dir,
        name: TRAIN_STATE,
        everySeconds: ctx.checkpointSeconds ?? 120,
        metricsPath: metrics.path,
      },
    }, ctx.seed));
  progress.done();
  saved ||= await hasCheckpoint(dir, "best");
  if (saved) {
    await loadPolicyCheckpoint(policy, dir, "best");
  }
  await saveCheckpoint(dir, "policy", await savePolicy(policy), {
    steps: result.steps,
    bestStep: result.bestStep,
    bestChrf: result.bestScore,
    tokensPerSecond: result.tokensPerSecond,
  });
  await clearUnitState(dir, TRAIN_STATE);
  await removeCheckpoint(dir, "best");
  ctx.log(
    `bc: ${result.steps} steps (${result.stopped}), best selection chrF ${
      result.bestScore.toFixed(2)
    } at step ${result.bestStep}, ${result.tokensPerSecond.toFixed(0)} target tokens/s`,
  );
  return policy;
}
