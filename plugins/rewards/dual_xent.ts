/**
 * `dual_xent`: a reference-free bilingual reward from two translation models trained by the
 * framework, one per direction, scored by dual conditional cross-entropy (Junczys-Dowmunt
 * 2018, "Dual conditional cross-entropy filtering of noisy parallel corpora"; Prism,
 * Thompson & Post 2020, scores with a model's length-normalised likelihood the same way).
 *
 * ## Score
 *
 * For a source x and a hypothesis y, with a forward model p_f (source -> target) and a
 * backward model p_b (target -> source):
 *
 *     H_f = -log p_f(y | x) / |y|        H_b = -log p_b(x | y) / |x|
 *     D   = |H_f - H_b| + (H_f + H_b) / 2
 *     adequacy = exp(-D)                 in (0, 1]
 *
 * |y| and |x| count the scored tokens, EOS included (so an empty hypothesis has one, its EOS);
 * log-probabilities are the models' own, at temperature 1 (label smoothing only shapes
 * training). H_f is low for a fluent, likely translation; H_b is low when the source can be
 * recovered from the hypothesis, which is what an output that drops or invents content
 * fails; |H_f - H_b| penalises a pair the two models disagree on.
 *
 * `calibration.method` maps the score to the scale of the target metric:
 *
 * - `sigmoid` (default): reward = sigmoid(a - b D), with a and b >= 0 fitted (soft-target
 *   logistic regression, Newton's method) to sentence chrF / 100 of calibration rows built from
 *   `calibration.sources` pairs of the selection split (the references, BC samples at the
 *   report's temperatures, corruptions; never the reported split). Monotone in D, so rankings
 *   are those of exp(-D); it only makes the values (and Pearson r) comparable to chrF.
 * - `none`: reward = exp(-D / temperature) (temperature 1: the adequacy above).
 *
 * ## Training
 *
 * `prepare` trains both models with the framework's own BC code (`core/bc.ts`,
 * `trainOrLoadBc`, through `_translation.ts`, which `learned`'s `init` shares: `core/train.ts`'s
 * loop, label-smoothed NLL, early stopping on greedy corpus chrF of the selection split, best
 * weights kept, training state saved every
 * `training.checkpointSeconds` for resume), on the experiment's training pairs, with the
 * model plugin and size of `model` and the budget of `training`. Seeds are derived from the
 * experiment's seed and the direction (`forward`, `backward`), so they differ from the policy's
 * and from each other.
 *
 * The backward model reads the target language as its source. The tokenizer knows sides
 * (separate vocabularies, or one joint vocabulary), so the backward model is trained and
 * scored through a view of the tokenizer with its sides swapped ({@link swapSides}): its
 * "source" is the tokenizer's target side and its "target" the source side, and its
 * vocabulary sizes are swapped accordingly. Texts are therefore always encoded with the side
 * of their language, whichever model reads them.
 *
 * ## Files in the reward folder
 *
 * `forward/` and `backward/` (each a BC folder: `policy.json` and weights, `metrics.jsonl`
 * with `bc/...` keys, and while training its resumable state), `tokenizer.sha256` (written
 * before training: a folder trained with another tokenizer is refused), `heldout.jsonl` and
 * last `dual_xent.json` (calibration, held-out figures, seeds, timings). Every file is written
 * atomically and a model is complete once its `.json` exists, so a run killed during training
 * resumes (from the last training state) or retrains, and never loads a half-written model.
 *
 * ## Report
 *
 * Two measurements after training, logged in the reward's `metrics.jsonl`, printed, and stored
 * in `dual_xent.json`:
 *
 * - on `report.sources` validation pairs (the report half, never used for training, selection
 *   or calibration): Pearson and Kendall tau-b with sentence chrF over references, BC samples
 *   at `report.temperatures` and corruptions (`_heldout_report.ts`; `dual_xent/heldout_*`,
 *   also for each direction's cross-entropy alone);
 * - on `report.testSources` test sources, as the `learned` reward reports
 *   (`core/reward_report.ts`): `report.samples` BC samples per source at the evaluation (Grow)
 *   temperature, their pooled Pearson/Kendall with chrF, the within-source Kendall over the
 *   first `report.withinSamples`, and the Best-of-N chrF curve (`dual_xent/report_*`).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { join } from "node:path";
import { buildPolicy } from "../../core/bc.ts";
import { makeBatch } from "../../core/batch.ts";
import { hasCheckpoint, loadPolicyCheckpoint, sha256Hex } from "../../core/checkpoint.ts";
import { UserError } from "../../core/errors.ts";
import { definePlugin, int, pluginRef } from "../../core/plugin.ts";
import type { ResolvedPluginRef } from "../../core/plugin.ts";
import { exists, writeFileAtomic } from "../../core/run.ts";
import { describeRewardReport, reportOnTestSources } from "../../core/reward_report.ts";
import { smokeBc } from "../../core/sections.ts";
import { disposeBatch } from "../../core/train.ts";
import { requirePrepared } from "./_prepared.ts";
import {
  directionSeed,
  guardTokenizer,
  swapSides,
  trainOrLoadDirection,
  translationTrainingSchema,
} from "./_translation.ts";
import type {
  BcSettings,
  Example,
  ModelFactory,
  Policy,
  RewardInput,
  RewardModel,
  RewardPrepareContext,
  RewardRestoreContext,
  Tokenizer,
} from "../../core/types.ts";
import {
  describeStats,
  type HeldOutRow,
  heldOutRows,
  type HeldOutSettings,
  type HeldOutStats,
  heldOutStats,
} from "./_heldout_report.ts";

/** How the dual score is mapped to [0, 1]. */
export interface DualCalibration {
  /** `sigmoid`: sigmoid(a - b D) fitted to chrF; `none`: exp(-D / temperature). */
  method: "sigmoid" | "none";
  /** Temperature of `none`. */
  temperature: number;
  /** Selection pairs whose rows fit `sigmoid`. */
  sources: number;
}

/** What the held-out report is made of. */
export interface DualReport {
  /** Validation (report half) sources of the pooled rows (0: none). */
  sources: number;
  /** One BC sample per source at each of these temperatures (pooled rows). */
  temperatures: number[];
  /** Corruptions of the reference per source (pooled rows). */
  corruptionsPerSource: number;
  /** Test sources of the samples report (0: none). */
  testSources: number;
  /** BC samples per test source at the evaluation temperature (the largest Best-of-N). */
  samples: number;
  /** Samples per test source for the within-source Kendall. */
  withinSamples: number;
}

/** Config of the `dual_xent` reward (after resolution: `model` is a resolved reference). */
export interface DualXentConfig {
  /** The translation model plugin and size of both directions. */
  model: ResolvedPluginRef;
  /** Training budget and selection of each direction (the `bc` section's fields). */
  training: BcSettings;
  /** Rows per scoring batch. */
  batchSize: number;
  /** Tokens kept per side when scoring (longer texts are cut). */
  maxTokens: number;
  /** Mapping of the score to [0, 1]. */
  calibration: DualCalibration;
  /** Held-out measurement. */
  report: DualReport;
}

/** The two length-normalised cross-entropies of a row (nats per token). */
export interface DualEntropies {
  /** -log p_f(y | x) / |y|. */
  forward: number;
  /** -log p_b(x | y) / |x|. */
  backward: number;
}

/** A fitted or fixed calibration: reward = sigmoid(a - b D), or exp(-D / temperature). */
export type CalibrationParams =
  | { method: "sigmoid"; a: number; b: number }
  | { method: "none"; temperature: number };

const FORMAT = "rest-dual-xent-reward";
const META_FILE = "dual_xent.json";
const DIRECTIONS = ["forward", "backward"] as const;

/** The dual conditional cross-entropy D = |H_f - H_b| + (H_f + H_b) / 2 (>= 0). */
export function dualScore(h: DualEntropies): number {
  return Math.abs(h.forward - h.backward) + (h.forward + h.backward) / 2;
}

/** Maps D to the reward in [0, 1] with `params`. */
export function calibrate(d: number, params: CalibrationParams): number {
  if (params.method === "none") return Math.exp(-d / params.temperature);
  return 1 / (1 + Math.exp(-(params.a - params.b * d)));
}

/**
 * Fits reward = sigmoid(a - b d) to targets in [0, 1] by soft-target logistic regression
 * (convex; Newton's method with a tiny ridge). Returns undefined when the data do not give an
 * increasing map (b <= 0, e.g. the score is unrelated to the target) or fewer than 2 rows.
 */
export function fitSigmoid(
  d: readonly number[],
  targets: readonly number[],
): { a: number; b: number } | undefined {
  const n = d.length;
  if (n !== targets.length) throw new RangeError(`${n} scores, ${targets.length} targets`);
  if (n < 2) return undefined;
  // Standardise d for conditioning, then map the coefficients back.
  const mean = d.reduce((s, x) => s + x, 0) / n;
  const sd = Math.sqrt(d.reduce((s, x) => s + (x - mean) ** 2, 0) / n);
  if (!(sd > 0)) return undefined;
  const z = d.map((x) => (mean - x) / sd);
  let a = 0;
  let b = 0;
  for (let iteration = 0; iteration < 100; iteration++) {
    let ga = 0;
    let gb = 0;
    let haa = 1e-6;
    let hab = 0;
    let hbb = 1e-6;
    for (let i = 0; i < n; i++) {
      const p = 1 / (1 + Math.exp(-(a + b * z[i])));
      const r = p - targets[i];
      const w = p * (1 - p);
      ga += r;
      gb += r * z[i];
      haa += w;
      hab += w * z[i];
      hbb += w * z[i] * z[i];
    }
    const det = haa * hbb - hab * hab;
    if (!(det > 0)) break;
    const da = (hbb * ga - hab * gb) / det;
    const db = (haa * gb - hab * ga) / det;
    a -= da;
    b -= db;
    if (Math.abs(da) + Math.abs(db) < 1e-10) break;
  }
  // sigmoid(a + b (mean - d) / sd) = sigmoid((a + b mean / sd) - (b / sd) d)
  const slope = b / sd;
  const intercept = a + b * mean / sd;
  if (!(slope > 0) || !Number.isFinite(intercept)) return undefined;
  return { a: intercept, b: slope };
}

/**
 * Per-token cross-entropy -log p(target | source) / |target| of each pair under `policy`
 * (teacher-forced, no dropout), |target| counting EOS. Pairs are batched by length.
 */
export async function crossEntropies(
  policy: Policy,
  pairs: readonly { source: number[]; target: number[] }[],
  batchSize: number,
): Promise<number[]> {
  const out = new Array<number>(pairs.length);
  const order = pairs.map((_, i) => i).sort((a, b) =>
    pairs[a].target.length - pairs[b].target.length ||
    pairs[a].source.length - pairs[b].source.length
  );
  for (let start = 0; start < order.length; start += batchSize) {
    const indices = order.slice(start, start + batchSize);
    const batch = makeBatch(indices.map((i) => pairs[i]), policy.specials);
    try {
      const [sums, counts] = tf.tidy(() => {
        const logProbs = policy.tokenLogProbs(batch, { training: false });
        return [tf.sum(tf.mul(logProbs, batch.targetMask), 1), tf.sum(batch.targetMask, 1)];
      });
      const s = await sums.data();
      const c = await counts.data();
      tf.dispose([sums, counts]);
      indices.forEach((row, k) => out[row] = -s[k] / c[k]);
    } finally {
      disposeBatch(batch);
    }
  }
  return out;
}

/** What `dual_xent.json` holds. */
interface DualMeta {
  format: string;
  version: number;
  tokenizer: string;
  seeds: { forward: number; backward: number };
  calibration: CalibrationParams;
  heldOut: HeldOutStats | null;
  report: Record<string, number> | null;
  /** Seconds from the start of prepare (both models, calibration, reports). */
  seconds: number;
  /** Resident memory of the process at the end of prepare, MiB. */
  rssMb: number;
}

/** Scales a config down for `--smoke` (idempotent). */
export function smokeDualXent(config: DualXentConfig): DualXentConfig {
  return {
    ...config,
    training: smokeBc(config.training),
    calibration: { ...config.calibration, sources: Math.min(config.calibration.sources, 8) },
    report: {
      ...config.report,
      sources: Math.min(config.report.sources, 8),
      testSources: Math.min(config.report.testSources, 4),
      samples: Math.min(config.report.samples, 8),
      withinSamples: Math.min(config.report.withinSamples, 8),
    },
  };
}

/** The reward instance (see the module doc). */
export class DualXentReward implements RewardModel {
  readonly needsReference = false;
  readonly #config: DualXentConfig;
  readonly #factory: ModelFactory;
  #models: { forward: Policy; backward: Policy } | undefined;
  #tokenizer: Tokenizer | undefined;
  #calibration: CalibrationParams | undefined;
  #meta: DualMeta | undefined;

  /** A reward whose models `factory` builds; nothing is trained before `prepare`. */
  constructor(config: DualXentConfig, factory: ModelFactory) {
    this.#config = config;
    this.#factory = factory;
  }

  /** The held-out figures of the prepared reward (undefined before prepare or without a report). */
  get heldOut(): HeldOutStats | undefined {
    return this.#meta?.heldOut ?? undefined;
  }

  /** The calibration in use (undefined before prepare). */
  get calibration(): CalibrationParams | undefined {
    return this.#calibration;
  }

  /** H_f and H_b of each row (before calibration). */
  async entropies(rows: readonly RewardInput[]): Promise<DualEntropies[]> {
    const models = this.#models;
    const tokenizer = this.#tokenizer;
    if (models === undefined || tokenizer === undefined) {
      throw new UserError(
        "dual_xent reward: no models loaded; they are trained or loaded by prepare(), which an " +
          "experiment runs before the reward is used (`deno task exp`), not by a bare score()",
      );
    }
    const cut = (ids: number[]) => ids.slice(0, this.#config.maxTokens);
    const sources = rows.map((r) => cut(tokenizer.encode(r.source, "source")));
    const hypotheses = rows.map((r) => cut(tokenizer.encode(r.hypothesis, "target")));
    const size = this.#config.batchSize;
    const forward = await crossEntropies(
      models.forward,
      rows.map((_, i) => ({ source: sources[i], target: hypotheses[i] })),
      size,
    );
    const backward = await crossEntropies(
      models.backward,
      rows.map((_, i) => ({ source: hypotheses[i], target: sources[i] })),
      size,
    );
    return rows.map((_, i) => ({ forward: forward[i], backward: backward[i] }));
  }

  async score(rows: readonly RewardInput[]): Promise<number[]> {
    const calibration = this.#calibration;
    if (rows.length === 0 && this.#models !== undefined) return [];
    const entropies = await this.entropies(rows);
    return entropies.map((h) => calibrate(dualScore(h), calibration!));
  }

  async prepare(ctx: RewardPrepareContext): Promise<void> {
    const config = ctx.smoke ? smokeDualXent(this.#config) : this.#config;
    const started = performance.now();
    await Deno.mkdir(ctx.dir, { recursive: true });
    const fingerprint = await this.#checkTokenizer(ctx);
    const seeds = {
      forward: directionSeed(ctx.seed, "forward"),
      backward: directionSeed(ctx.seed, "backward"),
    };
    const metaPath = join(ctx.dir, META_FILE);
    // The calibration and report belong to the models they were computed with: kept only
    // when both models were already complete.
    const complete = await hasCheckpoint(join(ctx.dir, "forward"), "policy") &&
      await hasCheckpoint(join(ctx.dir, "backward"), "policy");
    const saved = complete && await exists(metaPath)
      ? await readMeta(metaPath, fingerprint)
      : undefined;
    const models = await this.#trainOrLoad(ctx, config, seeds);
    this.#models = models;
    this.#tokenizer = ctx.tokenizer;
    if (saved !== undefined) {
      this.#calibration = saved.calibration;
      this.#meta = saved;
      ctx.log(
        `reloaded ${metaPath}` +
          (saved.heldOut ? `: held-out ${describeStats(saved.heldOut)}` : "") +
          (saved.report ? `; test samples: ${describeRewardReport(saved.report)}` : ""),
      );
      return;
    }
    this.#calibration = await this.#fitCalibration(ctx, config);
    const heldOut = await this.#heldOut(ctx, config);
    const report = await this.#samplesReport(ctx, config);
    const meta: DualMeta = {
      format: FORMAT,
      version: 1,
      tokenizer: fingerprint,
      seeds,
      calibration: this.#calibration,
      heldOut,
      report,
      seconds: (performance.now() - started) / 1000,
      rssMb: Math.round(Deno.memoryUsage().rss / 2 ** 20),
    };
    await writeFileAtomic(metaPath, JSON.stringify(meta, null, 2) + "\n");
    this.#meta = meta;
    ctx.log(
      `ready in ${meta.seconds.toFixed(1)}s (process RSS ${meta.rssMb} MiB); saved ${metaPath}`,
    );
  }

  /**
   * Loads what {@link DualXentReward.prepare} saved in `ctx.dir` (both translation models and
   * the calibration), never training: a missing file is a user error naming it.
   */
  async restore(ctx: RewardRestoreContext): Promise<void> {
    const fingerprint = await sha256Hex(
      new TextEncoder().encode(JSON.stringify(ctx.tokenizer.save())),
    );
    const metaPath = join(ctx.dir, META_FILE);
    await requirePrepared("dual_xent", metaPath);
    const meta = await readMeta(metaPath, fingerprint);
    const loaded: Partial<Record<"forward" | "backward", Policy>> = {};
    try {
      for (const direction of DIRECTIONS) {
        const dir = join(ctx.dir, direction);
        await requirePrepared("dual_xent", join(dir, "policy.json"));
        const tokenizer = direction === "backward" ? swapSides(ctx.tokenizer) : ctx.tokenizer;
        loaded[direction] = buildPolicy(this.#factory, tokenizer, meta.seeds[direction]);
        await loadPolicyCheckpoint(loaded[direction]!, dir, "policy");
      }
    } catch (error) {
      loaded.forward?.dispose();
      loaded.backward?.dispose();
      throw error;
    }
    this.#models = { forward: loaded.forward!, backward: loaded.backward! };
    this.#tokenizer = ctx.tokenizer;
    this.#calibration = meta.calibration;
    this.#meta = meta;
    ctx.log(`loaded ${metaPath} and both translation models`);
  }

  /** Records the tokenizer's fingerprint before anything is trained; refuses a different one. */
  async #checkTokenizer(ctx: RewardPrepareContext): Promise<string> {
    const fingerprint = await sha256Hex(
      new TextEncoder().encode(JSON.stringify(ctx.tokenizer.save())),
    );
    await guardTokenizer("dual_xent", ctx.dir, fingerprint);
    return fingerprint;
  }

  async #trainOrLoad(
    ctx: RewardPrepareContext,
    config: DualXentConfig,
    seeds: { forward: number; backward: number },
  ): Promise<{ forward: Policy; backward: Policy }> {
    const trained: Partial<Record<"forward" | "backward", Policy>> = {};
    try {
      for (const direction of DIRECTIONS) {
        trained[direction] = await trainOrLoadDirection(ctx, {
          direction,
          dir: join(ctx.dir, direction),
          factory: this.#factory,
          training: config.training,
          seed: seeds[direction],
        });
      }
    } catch (error) {
      trained.forward?.dispose();
      throw error;
    }
    return { forward: trained.forward!, backward: trained.backward! };
  }

  /** The settings of the pooled held-out and calibration rows. */
  #rowSettings(ctx: RewardPrepareContext, report: DualReport): HeldOutSettings {
    return {
      temperatures: report.temperatures,
      corruptionsPerSource: report.corruptionsPerSource,
      maxLen: ctx.evaluation.maxLen,
      batchSize: ctx.evaluation.batchSize,
    };
  }

  async #rows(
    ctx: RewardPrepareContext,
    examples: readonly Example[],
    settings: HeldOutSettings,
    seed: number,
  ): Promise<HeldOutRow[]> {
    const needsPolicy = settings.temperatures.length > 0;
    const policy = needsPolicy && examples.length > 0 ? await ctx.bcPolicy() : undefined;
    try {
      return await heldOutRows(policy, ctx.tokenizer, examples, settings, seed);
    } finally {
      policy?.dispose();
    }
  }

  async #fitCalibration(
    ctx: RewardPrepareContext,
    config: DualXentConfig,
  ): Promise<CalibrationParams> {
    const c = config.calibration;
    const none: CalibrationParams = { method: "none", temperature: c.temperature };
    if (c.method === "none") return none;
    const examples = ctx.splits.select.slice(0, c.sources);
    const rows = await this.#rows(
      ctx,
      examples,
      this.#rowSettings(ctx, config.report),
      ctx.seed + 1,
    );
    const d = (await this.entropies(rows)).map(dualScore);
    const fit = fitSigmoid(d, rows.map((r) => r.chrf));
    if (fit === undefined) {
      ctx.log(
        `warning: no increasing sigmoid fits chrF on ${rows.length} calibration rows of the ` +
          `selection split; using exp(-D / ${c.temperature}) instead`,
      );
      return none;
    }
    ctx.log(
      `calibration: reward = sigmoid(${fit.a.toFixed(3)} - ${
        fit.b.toFixed(3)
      } D), fitted to chrF on ${rows.length} rows of ${examples.length} selection sources`,
    );
    await ctx.metrics.log({
      "dual_xent/calibration_a": fit.a,
      "dual_xent/calibration_b": fit.b,
      "dual_xent/calibration_rows": rows.length,
    });
    return { method: "sigmoid", ...fit };
  }

  /** Pooled correlations on validation rows (references, samples, corruptions). */
  async #heldOut(ctx: RewardPrepareContext, config: DualXentConfig): Promise<HeldOutStats | null> {
    const examples = ctx.splits.valid.slice(0, config.report.sources);
    if (examples.length < 2) {
      if (config.report.sources > 0) {
        ctx.log("held-out rows skipped: fewer than 2 validation sources");
      }
      return null;
    }
    const rows = await this.#rows(ctx, examples, this.#rowSettings(ctx, config.report), ctx.seed);
    const entropies = await this.entropies(rows);
    const scores = entropies.map((h) => calibrate(dualScore(h), this.#calibration!));
    const stats = heldOutStats(rows, scores);
    const forwardOnly = heldOutStats(rows, entropies.map((h) => -h.forward));
    const backwardOnly = heldOutStats(rows, entropies.map((h) => -h.backward));
    const record: Record<string, number> = {
      "dual_xent/heldout_rows": stats.pooledRows,
      "dual_xent/heldout_pearson": stats.pearson,
      "dual_xent/heldout_kendall": stats.kendall,
      "dual_xent/heldout_kendall_forward_only": forwardOnly.kendall,
      "dual_xent/heldout_kendall_backward_only": backwardOnly.kendall,
    };
    for (const [kind, k] of Object.entries(stats.byKind)) {
      record[`dual_xent/heldout_chrf_${kind}`] = k.chrf;
      record[`dual_xent/heldout_reward_${kind}`] = k.reward;
    }
    await ctx.metrics.log(record);
    const lines = rows.map((row, i) =>
      JSON.stringify({
        ...row,
        reward: scores[i],
        forward: entropies[i].forward,
        backward: entropies[i].backward,
      })
    );
    await writeFileAtomic(join(ctx.dir, "heldout.jsonl"), lines.join("\n") + "\n");
    ctx.log(
      `held-out (${examples.length} validation sources): ${describeStats(stats)}; Kendall of ` +
        `-H_f alone ${forwardOnly.kendall.toFixed(3)}, of -H_b alone ${
          backwardOnly.kendall.toFixed(3)
        }`,
    );
    return stats;
  }

  /** The samples report of `core/reward_report.ts` on test sources (as `learned` reports). */
  async #samplesReport(
    ctx: RewardPrepareContext,
    config: DualXentConfig,
  ): Promise<Record<string, number> | null> {
    const { testSources, samples, withinSamples } = config.report;
    return await reportOnTestSources(this, ctx, {
      sources: testSources,
      samples,
      withinSamples,
      name: "dual_xent",
    });
  }
}

async function readMeta(path: string, fingerprint: string): Promise<DualMeta> {
  let meta: DualMeta;
  try {
    meta = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    throw new UserError(
      `dual_xent reward: ${path}: not valid JSON (${(error as Error).message}); remove it to ` +
        `recompute the calibration and report`,
    );
  }
  const c = meta?.calibration as Partial<Record<string, unknown>> | undefined;
  const valid = meta?.format === FORMAT && meta.version === 1 && c !== undefined &&
    (c.method === "sigmoid"
      ? Number.isFinite(c.a) && Number.isFinite(c.b)
      : c.method === "none" && typeof c.temperature === "number" && c.temperature > 0);
  if (!valid) {
    throw new UserError(
      `dual_xent reward: ${path}: not a dual_xent reward file of version 1 with a calibration; ` +
        `remove it to recompute`,
    );
  }
  if (meta.tokenizer !== fingerprint) {
    throw new UserError(
      `dual_xent reward: ${path} was made with a different tokenizer; remove its folder to retrain`,
    );
  }
  return meta;
}

export default definePlugin({
  kind: "reward",
  name: "dual_xent",
  summary:
    "Reference-free bilingual reward: dual conditional cross-entropy of translation models trained in both directions (Junczys-Dowmunt 2018), calibrated to [0, 1].",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      model: pluginRef(
        "model",
        {
          name: "transformer",
          config: {
            dModel: 128,
            heads: 4,
            ffn: 512,
            encoderLayers: 2,
            decoderLayers: 2,
            dropout: 0.1,
          },
        },
        "Model plugin (name or {name, config}) of both translation models; the default is the LibreOffice policy's size.",
      ),
      training: translationTrainingSchema(
        "Training of each direction, with BC's fields and code: label-smoothed NLL, greedy corpus " +
          "chrF on the selection split every evalEvery steps, stop after patience evaluations " +
          "without a higher one (or at steps), best weights kept.",
      ),
      batchSize: int(1, 65536, 64, "Rows per scoring batch."),
      maxTokens: int(
        1,
        4096,
        128,
        "Tokens kept per side when scoring (longer sources and hypotheses are cut).",
      ),
      calibration: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "How the dual score D is mapped to [0, 1].",
        properties: {
          method: {
            enum: ["sigmoid", "none"],
            default: "sigmoid",
            description:
              "sigmoid: sigmoid(a - b D) with a, b >= 0 fitted to sentence chrF on rows of the selection split (monotone: rankings unchanged); none: exp(-D / temperature).",
          },
          temperature: {
            type: "number",
            exclusiveMinimum: 0,
            maximum: 1000,
            default: 1,
            description:
              "Method none: reward = exp(-D / temperature); 1 is Junczys-Dowmunt's adequacy exp(-D).",
          },
          sources: int(
            2,
            100_000,
            200,
            "Method sigmoid: selection-split pairs whose references, BC samples and corruptions the map is fitted on.",
          ),
        },
      },
      report: {
        type: "object",
        additionalProperties: false,
        default: {},
        description:
          "Held-out measurement after training: pooled correlation with sentence chrF on validation rows (references, BC samples, corruptions), and on test sources the samples report of core/reward_report.ts (pooled and within-source Kendall, Best-of-N chrF), as the learned reward reports.",
        properties: {
          sources: int(
            0,
            100_000,
            200,
            "Validation (report-half) sources of the pooled rows (0: none).",
          ),
          temperatures: {
            type: "array",
            items: { type: "number", exclusiveMinimum: 0, maximum: 100 },
            maxItems: 16,
            default: [0.5, 1, 1.5],
            description:
              "Pooled rows: one BC sample per source at each temperature (besides the reference and corruptions).",
          },
          corruptionsPerSource: int(
            0,
            100,
            2,
            "Pooled rows: corruptions of the reference per source.",
          ),
          testSources: int(0, 100_000, 100, "Test sources of the samples report (0: none)."),
          samples: int(
            1,
            256,
            32,
            "Samples report: BC samples per test source at the evaluation (Grow) temperature; the Best-of-N curve is N = 1, 2, 4, ... up to this.",
          ),
          withinSamples: int(
            2,
            256,
            8,
            "Samples report: samples per source for the within-source Kendall (the issue asks for N >= 8; at most samples).",
          ),
        },
      },
    },
  },
  check(config: DualXentConfig) {
    const problems: { path: string; message: string }[] = [];
    if (config.training.steps < 1) {
      problems.push({ path: "/training/steps", message: "must be at least 1 for a reward model" });
    }
    if (config.report.withinSamples > config.report.samples) {
      problems.push({
        path: "/report/withinSamples",
        message: `must not exceed report.samples (${config.report.samples})`,
      });
    }
    return problems;
  },
  smoke: smokeDualXent,
  async create(config: DualXentConfig, deps): Promise<RewardModel> {
    const factory = await deps.create("model", config.model);
    return new DualXentReward(config, factory);
  },
});
