/**
 * `rest`: Reinforced Self-Training (Gulcehre et al. 2023, Algorithm 1). Starts from the
 * shared BC policy; for g = 1..G runs Grow (core/rest.ts `grow`), then for i = 1..I runs
 * Improve (`improve`) with the run's loss and threshold schedule; reports the final
 * evaluation of the best weights.
 *
 * @module
 */

import { appendAll } from "../../core/append.ts";
import { definePlugin } from "../../core/plugin.ts";
import { DistinctSamples, finalEvaluation, limit, mean } from "../../core/evaluate.ts";
import {
  grow,
  growPath,
  type GrowSettings,
  improve,
  type ImproveSettings,
  readGrowFile,
  type RestContext,
} from "../../core/rest.ts";
import type { GrowRow } from "../../core/policy.ts";
import type { RunContext } from "../../core/types.ts";
import { UserError } from "../../core/errors.ts";
import {
  applyUnitState,
  assignExtras,
  checkMeta,
  loadUnitState,
  rewindMetrics,
  saveUnitState,
  type UnitState,
  unitStateError,
} from "../../core/resume.ts";
import { hashText } from "../../core/experiment.ts";
import { join } from "node:path";

/** Name of the run's resumable state (after each finished Grow or Improve step). */
const STATE = "rest_state";

/** Config of the `rest` algorithm. */
export interface RestConfig {
  /** Grow steps G. */
  growSteps: number;
  /** Improve steps I per Grow step. */
  improveSteps: number;
  /** Grow settings. */
  grow: Omit<GrowSettings, "maxLen" | "batchSize">;
  /** Improve settings. */
  improve: ImproveSettings;
  /** Train each Improve step on every Grow set so far, not only the latest. */
  accumulate: boolean;
}

function int(min: number, max: number, value: number, description: string) {
  return { type: "integer", minimum: min, maximum: max, default: value, description };
}

function num(min: number, max: number, value: number, description: string) {
  return { type: "number", minimum: min, maximum: max, default: value, description };
}

/**
 * Puts a Grow set into the Improve pool: after the sets before it with `accumulate`, in
 * place of them otherwise. Any number of rows (a loop, not `push(...rows)`).
 */
export function addGrowSet(pool: GrowRow[], rows: readonly GrowRow[], accumulate: boolean): void {
  if (!accumulate) pool.length = 0;
  appendAll(pool, rows);
}

/**
 * Checks a loaded ReST state's counters against the run's config: Grow and Improve steps done
 * within the config, one step count per finished Improve step.
 *
 * @throws {UserError} naming the state file otherwise.
 */
function checkRestState(saved: UnitState, config: RestConfig): void {
  checkMeta(saved, { "done.grow": "count", "done.index": "count", steps: "counts" });
  const done = saved.meta.done as { grow: number; index: number };
  const steps = saved.meta.steps as number[];
  const improveSteps = config.growSteps * config.improveSteps;
  const inGrow = done.index >= Math.max(0, done.grow - 1) * config.improveSteps &&
    done.index <= done.grow * config.improveSteps;
  if (done.grow > config.growSteps || done.index > improveSteps || !inGrow) {
    throw unitStateError(
      saved.file,
      `it records Grow step ${done.grow} and Improve step ${done.index} as done, but the run ` +
        `has ${config.growSteps} Grow and ${improveSteps} Improve steps`,
    );
  }
  if (steps.length !== done.index) {
    throw unitStateError(
      saved.file,
      `meta.steps has ${steps.length} entries, expected one per finished Improve step (${done.index})`,
    );
  }
}

export default definePlugin({
  kind: "algorithm",
  name: "rest",
  summary: "ReST: G Grow steps (sample, score, store), each followed by I filtered Improve steps.",
  uses: { bc: "required", loss: "required", threshold: "required", reward: "optional" },
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      growSteps: int(0, 1000, 1, "Number of Grow steps G."),
      improveSteps: int(0, 1000, 4, "Improve steps I after each Grow step."),
      accumulate: {
        type: "boolean",
        default: false,
        description: "Improve on the union of all Grow sets so far instead of the latest one.",
      },
      grow: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "Grow: sampling from the current policy.",
        properties: {
          samplesPerSource: int(1, 10000, 4, "Samples N per training source."),
          temperature: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 100,
            default: 0.8,
            description: "Sampling temperature (the paper uses 0.8).",
          },
          topK: int(0, 1000000, 0, "Top-k truncation of sampling (0: off)."),
          topP: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 1,
            default: 1,
            description: "Nucleus (top-p) truncation of sampling (1: off).",
          },
          includeOriginal: {
            type: "boolean",
            default: true,
            description: "Add the original (source, reference) pairs, scored, to the Grow set.",
          },
          sources: int(0, 100000000, 0, "Training sources used for Grow (0: all)."),
        },
      },
      improve: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "Improve: filtered fine-tuning of the current weights.",
        properties: {
          steps: int(0, 100000000, 300, "Optimizer steps per Improve step."),
          batchSize: int(1, 65536, 32, "Rows per batch."),
          learningRate: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 1,
            default: 0.0002,
            description: "Learning rate of the first Improve step.",
          },
          learningRateDecay: num(
            0,
            1,
            0.7,
            "Learning-rate multiplier from one Improve step to the next.",
          ),
          warmupSteps: int(0, 100000000, 20, "Warm-up steps of each Improve step."),
          schedule: {
            enum: ["constant", "linear", "cosine", "inverse_sqrt"],
            default: "constant",
            description: "Learning-rate decay within an Improve step.",
          },
          clipNorm: num(0, 1e6, 1, "Global gradient-norm clip (0: off)."),
          evalEvery: int(0, 100000000, 100, "Evaluate on validation every this many steps."),
          evalSize: int(0, 100000000, 200, "Validation pairs for evaluation (0: all)."),
        },
      },
    },
  },
  smoke: (config: RestConfig): RestConfig => ({
    ...config,
    grow: {
      ...config.grow,
      samplesPerSource: Math.min(config.grow.samplesPerSource, 2),
      sources: Math.min(config.grow.sources || 24, 24),
    },
    improve: {
      ...config.improve,
      steps: Math.min(config.improve.steps, 6),
      warmupSteps: Math.min(config.improve.warmupSteps, 2),
      evalEvery: 0,
      evalSize: Math.min(config.improve.evalSize || 8, 8),
    },
  }),
  create(config: RestConfig) {
    return {
      async run(ctx: RunContext) {
        if (ctx.loss === undefined || ctx.threshold === undefined) {
          throw new UserError(`run ${ctx.run}: rest needs a loss and a threshold section`);
        }
        const policy = await ctx.bcPolicy();
        const bcPolicy = await ctx.bcPolicy();
        const restCtx: RestContext = {
          dir: ctx.dir,
          tokenizer: ctx.tokenizer,
          reward: ctx.reward,
          metrics: ctx.metrics,
          progress: ctx.progress,
          log: ctx.log,
        };
        const growSettings: GrowSettings = {
          ...config.grow,
          maxLen: ctx.evaluation.maxLen,
          batchSize: ctx.evaluation.batchSize,
        };
        const valid = limit(ctx.splits.select, config.improve.evalSize);
        const pool: GrowRow[] = [];
        let stepOffset = 0;
        let index = 0;
        // Distinct policy samples over all Grow steps (references not counted).
        const sampled = new DistinctSamples();
        let previousTau = -Infinity;
        // Resume: the state saved after the last finished unit (a Grow step or an Improve
        // step) gives the weights, the loss's variables and the counters; metrics.jsonl is
        // rewound to that moment and later units run again, identically.
        const metricsPath = join(ctx.dir, "metrics.jsonl");
        const saved = ctx.resume ? await loadUnitState(ctx.dir, STATE) : undefined;
        let done = { grow: 0, index: 0 };
        if (saved !== undefined) {
          checkRestState(saved, config);
          await applyUnitState(saved, () => policy.load(saved.policy));
          if (saved.extras.length > 0 && ctx.loss.variables.length === 0) {
            // Losses create their own variables on their first prepare (each Improve step
            // prepares again, so this call changes nothing else).
            ctx.loss.prepare({
              policy,
              bcPolicy,
              improve: 1,
              improveSteps: config.improveSteps,
            });
          }
          assignExtras(ctx.loss.variables, saved.extras, saved.file);
          await rewindMetrics(metricsPath, saved.meta);
          done = saved.meta.done as typeof done;
          ctx.log(`resumed after Grow step ${done.grow}, Improve step ${done.index}`);
        } else if (ctx.resume) {
          // Nothing finished yet: start over with an empty log (Grow files are reused).
          await Deno.truncate(metricsPath, 0).catch(() => {});
        }
        const steps: number[] = saved === undefined ? [] : [...saved.meta.steps as number[]];
        const save = (grow: number, at: number) =>
          saveUnitState(ctx.dir, STATE, policy, ctx.loss!.variables, {
            done: { grow, index: at },
            steps: steps.slice(0, at),
            growSteps: config.growSteps,
            improveSteps: config.improveSteps,
          }, metricsPath);
        try {
          for (let g = 1; g <= config.growSteps; g++) {
            let rows: GrowRow[];
            if (g <= done.grow) {
              rows = await readGrowFile(growPath(ctx.dir, g));
            } else {
              // The first Grow set depends only on the BC policy, the reward, the settings
              // and the seed: runs that agree on all of them share it.
              const shared = g === 1
                ? join(
                  ctx.sharedDir,
                  "grow",
                  `grow_1-${
                    hashText(JSON.stringify([ctx.fingerprint, growSettings, ctx.seed]))
                  }.jsonl`,
                )
                : undefined;
              rows = await grow(
                policy,
                ctx.splits.train,
                growSettings,
                restCtx,
                g,
                ctx.seed * 1000 + g,
                shared,
              );
              await save(g, index);
            }
            for (const r of rows) if (r.origin === "sample") sampled.add(r.source, r.hypothesis);
            addGrowSet(pool, rows, config.accumulate);
            previousTau = -Infinity;
            for (let i = 1; i <= config.improveSteps; i++) {
              index++;
              if (index <= done.index) {
                stepOffset += (saved!.meta.steps as number[])[index - 1];
                continue;
              }
              const result = await improve(
                policy,
                bcPolicy,
                pool,
                ctx.loss,
                ctx.threshold,
                valid,
                {
                  ...config.improve,
                  maxLen: ctx.evaluation.maxLen,
                  decodeBatchSize: ctx.evaluation.batchSize,
                },
                restCtx,
                { grow: g, improve: i, improveSteps: config.improveSteps, index, stepOffset },
                ctx.seed * 1000 + index,
              );
              if (result.tau < previousTau) {
                throw new UserError(
                  `run ${ctx.run}: the threshold decreased from ${previousTau} to ${result.tau} at Improve step ${i}; schedules must increase`,
                );
              }
              previousTau = result.tau;
              stepOffset += result.steps;
              steps.push(result.steps);
              await save(g, index);
            }
          }
          const metrics = {
            ...(await finalEvaluation(
              policy,
              ctx.tokenizer,
              ctx.reward,
              ctx.splits,
              ctx.evaluation,
              ctx.seed,
              { bcPolicy, outputs: join(ctx.dir, "test_outputs.tsv") },
            )),
            "train/distinct_samples": sampled.size,
            "train/gradient_steps": stepOffset,
            "train/grow_mean_reward": pool.length ? mean(pool.map((r) => r.reward)) : NaN,
          };
          await ctx.metrics.log(metrics, stepOffset);
          for (const [key, value] of Object.entries(metrics)) {
            ctx.log(`${key} = ${(key.includes("reward") ? 100 * value : value).toFixed(2)}`);
          }
          return { metrics };
        } finally {
          policy.dispose();
          bcPolicy.dispose();
        }
      },
    };
  },
});
