/**
 * `ensemble`: K instances ("members") of one reward, combined into a conservative score,
 * the uncertainty-penalised ensemble of Coste et al. 2023 ("Reward model ensembles help
 * mitigate overoptimization"): a hypothesis the members disagree on earns less.
 *
 * ## Members
 *
 * The member reward (`reward`, `learned` by default) is configured like `guarded`'s inner
 * reward: a name or `{name, config}`. `members` instances of it are created, and each one
 * that has a `prepare` is prepared in its own folder `member_<i>/` of the ensemble's folder
 * (i = 0 .. K-1) with its own seed, {@link memberSeed}: `seed * 1000 + i` for the
 * experiment's seed. A `learned` member draws its training rows, batches, dropout and
 * initial weights from that seed, so members differ. With `data` they can also see
 * different training pairs ({@link memberTrain}): `full` (every member all of them),
 * `shards` (member i the pairs whose index j has j mod K = i: a partition) or `bootstrap`
 * (as many pairs drawn with replacement, from the member's seed). Validation and test
 * splits are never changed.
 *
 * ## The score
 *
 * For a row with member scores s_1 .. s_K: mean m = sum_i s_i / K, the *population*
 * standard deviation sd = sqrt(sum_i (s_i - m)^2 / K) (so one member gives sd = 0 and the
 * ensemble is that member, and sd stays defined for any K), and the raw score
 * r = m - conservative * sd. `conservative` = 0 (the default) is the plain mean.
 * `calibrate` maps r into [0, 1]:
 *
 * - `clip` (default): min(1, max(0, r)). Every member scores in [0, 1], so only a
 *   conservative penalty can leave the range, and only below 0.
 * - `quantile`: the empirical CDF of r over calibration rows built in `prepare`, i.e.
 *   about the share of calibration hypotheses the row scores at or above. r is clipped to
 *   [0, 1] first; the CDF is linearly interpolated between the distinct calibration
 *   scores, and pinned at F(0) = 0 and F(1) = 1 so a hypothesis every member scores 0
 *   (e.g. one a `guarded` member zeroed) keeps 0 and a perfect one keeps 1. Calibrated
 *   scores keep the order of raw scores (ties included) but are spread evenly over [0, 1]
 *   for hypotheses like the calibration rows, which makes a fixed threshold mean "better
 *   than this share of them".
 *
 * ## Calibration rows
 *
 * `prepare` builds them from `calibration.sources` validation pairs (training pairs when
 * there is no validation split; a seeded sample when there are more): each reference and
 * `calibration.corruptionsPerSource` corruptions of it (word drops, repeats, shuffles,
 * truncation, the source copied, another pair's reference; see `_corrupt.ts`), so the
 * rows span good to bad hypotheses without needing the policy. They are scored by every
 * member under either `calibrate`: if all members agree on every row, a one-line warning
 * says that the ensemble has no diversity (a deterministic member such as chrF, or a
 * `guarded` one on the same data). The calibration scores and the members' seeds and
 * training-pair counts are written to `ensemble.json` in the ensemble's folder.
 *
 * ## Diagnostics
 *
 * `diagnostics()` returns, since its previous call, `ensemble_std_mean` (the mean of sd
 * over the rows scored; 0 when none) and `ensemble_rows` (rows scored), plus each member's
 * own diagnostics averaged over the members as `member_<key>` (e.g. `member_guard_rows`);
 * ReST logs them after each Grow step as `grow/reward_<key>`, PPO after each rollout batch
 * as `ppo/reward_<key>`.
 *
 * @module
 */

import { join } from "node:path";
import { UserError } from "../../core/errors.ts";
import { checkScores } from "../../core/evaluate.ts";
import { definePlugin, int, num, pluginRef, type ResolvedPluginRef } from "../../core/plugin.ts";
import { Rng } from "../../core/random.ts";
import { writeFileAtomic } from "../../core/run.ts";
import { readPreparedJson } from "./_prepared.ts";
import { prepareWrapped, restoreWrapped } from "./_wrapped.ts";
import type {
  Example,
  RewardInput,
  RewardModel,
  RewardPrepareContext,
  RewardRestoreContext,
} from "../../core/types.ts";
import { corrupt, CORRUPTION_KINDS } from "./_corrupt.ts";

/** How member raw scores are mapped to [0, 1]. */
export const CALIBRATIONS = ["clip", "quantile"] as const;

/** Which training pairs each member sees. */
export const MEMBER_DATA = ["full", "shards", "bootstrap"] as const;

/** Config of the `ensemble` reward (after resolution: `reward` is a resolved reference). */
export interface EnsembleConfig {
  /** The member reward. */
  reward: ResolvedPluginRef;
  /** Number of members K. */
  members: number;
  /** k in mean - k * std. */
  conservative: number;
  /** How mean - k * std is mapped to [0, 1]. */
  calibrate: typeof CALIBRATIONS[number];
  /** Which training pairs each member sees in its `prepare`. */
  data: typeof MEMBER_DATA[number];
  /** The calibration rows built in `prepare`. */
  calibration: {
    /** Validation pairs whose references (and corruptions) are scored. */
    sources: number;
    /** Corrupted hypotheses per pair. */
    corruptionsPerSource: number;
  };
}

/** Name of the ensemble's record (seeds, calibration) in its folder. */
export const ENSEMBLE_FILE = "ensemble.json";

const FORMAT = "rest-ensemble-reward";

/** The seed of member `index` (0-based) for the experiment's `seed`: `seed * 1000 + index`. */
export function memberSeed(seed: number, index: number): number {
  return seed * 1000 + index;
}

/**
 * The training pairs member `index` of `members` sees: all of them (`full`), every pair
 * whose index j has j mod members = index (`shards`), or `train.length` pairs drawn with
 * replacement from `seed` (`bootstrap`).
 */
export function memberTrain(
  train: readonly Example[],
  index: number,
  members: number,
  data: EnsembleConfig["data"],
  seed: number,
): Example[] {
  switch (data) {
    case "full":
      return [...train];
    case "shards":
      return train.filter((_, j) => j % members === index);
    case "bootstrap": {
      if (train.length === 0) return [];
      const rng = new Rng(seed).fork("ensemble/bootstrap");
      return Array.from({ length: train.length }, () => train[rng.int(train.length)]);
    }
  }
}

/**
 * Mean and population standard deviation (divisor n) of one row's member scores; exactly
 * the common score and 0 when they all agree.
 */
export function meanStd(scores: readonly number[]): { mean: number; std: number } {
  const n = scores.length;
  if (n === 0) throw new RangeError("no member scores");
  // Members that agree give exactly their score and 0 (a sum / n could round off).
  if (scores.every((s) => s === scores[0])) return { mean: scores[0], std: 0 };
  let mean = 0;
  for (const s of scores) mean += s;
  mean /= n;
  let variance = 0;
  for (const s of scores) variance += (s - mean) * (s - mean);
  return { mean, std: Math.sqrt(variance / n) };
}

function clip01(x: number): number {
  return Math.min(1, Math.max(0, x));
}

/**
 * The knots of the `quantile` calibration for some raw calibration scores: (0, 0), then
 * (v, share of scores <= v) for each distinct score v strictly inside (0, 1) (scores
 * clipped to [0, 1] first), then (1, 1). x values increase, y values do not decrease.
 */
export function quantileKnots(raw: readonly number[]): [number, number][] {
  const sorted = raw.map(clip01).sort((a, b) => a - b);
  const knots: [number, number][] = [[0, 0]];
  for (let i = 0; i < sorted.length; i++) {
    const v = sorted[i];
    if (v <= 0 || v >= 1 || sorted[i + 1] === v) continue; // the last of a run of ties
    knots.push([v, (i + 1) / sorted.length]);
  }
  knots.push([1, 1]);
  return knots;
}

/** `x` (clipped to [0, 1]) through the piecewise-linear CDF given by {@link quantileKnots}. */
export function applyKnots(knots: readonly [number, number][], x: number): number {
  const v = clip01(x);
  let lo = 0;
  let hi = knots.length - 1;
  while (hi - lo > 1) { // invariant: knots[lo].x <= v <= knots[hi].x
    const mid = (lo + hi) >> 1;
    if (knots[mid][0] <= v) lo = mid;
    else hi = mid;
  }
  const [x0, y0] = knots[lo];
  const [x1, y1] = knots[hi];
  return x1 > x0 ? clip01(y0 + ((y1 - y0) * (v - x0)) / (x1 - x0)) : y1;
}

/** Calibration rows: each pair's reference and some corruptions of it (see the module doc). */
export function calibrationRows(
  pairs: readonly Example[],
  corruptionsPerSource: number,
  rng: Rng,
): RewardInput[] {
  const rows: RewardInput[] = [];
  for (let i = 0; i < pairs.length; i++) {
    const { source, reference } = pairs[i];
    rows.push({ source, reference, hypothesis: reference });
    const other = pairs.length > 1
      ? pairs[(i + 1 + rng.int(pairs.length - 1)) % pairs.length]
      : undefined;
    for (let c = 0; c < corruptionsPerSource; c++) {
      const kind = rng.pick(CORRUPTION_KINDS);
      const text = { text: reference, source, other: other?.reference ?? "" };
      rows.push({ source, reference, hypothesis: corrupt(kind, text, rng) });
    }
  }
  return rows;
}

/** Problems with a config that did not pass the schema (e.g. one given to `create` directly). */
export function ensembleConfigProblems(
  config: EnsembleConfig,
): { path: string; message: string }[] {
  const problems: { path: string; message: string }[] = [];
  if (!Number.isInteger(config.members) || config.members < 1) {
    problems.push({ path: "/members", message: `must be an integer >= 1, got ${config.members}` });
  }
  if (!Number.isFinite(config.conservative) || config.conservative < 0) {
    problems.push({
      path: "/conservative",
      message: `must be a finite number >= 0, got ${config.conservative}`,
    });
  }
  if (!CALIBRATIONS.includes(config.calibrate)) {
    problems.push({
      path: "/calibrate",
      message: `must be one of ${CALIBRATIONS.join(", ")}, got ${JSON.stringify(config.calibrate)}`,
    });
  }
  if (!MEMBER_DATA.includes(config.data)) {
    problems.push({
      path: "/data",
      message: `must be one of ${MEMBER_DATA.join(", ")}, got ${JSON.stringify(config.data)}`,
    });
  }
  return problems;
}

/** The `ensemble` reward instance (see the module doc). */
export class EnsembleReward implements RewardModel {
  readonly needsReference: boolean;
  readonly #config: EnsembleConfig;
  readonly #members: readonly RewardModel[];
  #knots: [number, number][] | undefined;
  #stdSum = 0;
  #rows = 0;

  /** Combines `members` (K instances of the member reward) as `config` says. */
  constructor(config: EnsembleConfig, members: readonly RewardModel[]) {
    if (members.length !== config.members) {
      throw new RangeError(`${members.length} member rewards for members = ${config.members}`);
    }
    this.#config = config;
    this.#members = members;
    this.needsReference = members.some((m) => m.needsReference);
  }

  /** The `quantile` calibration's knots (undefined before {@link EnsembleReward.prepare}). */
  get knots(): readonly [number, number][] | undefined {
    return this.#knots;
  }

  /**
   * Prepares each member that has a `prepare` in `member_<i>/` with its own seed and
   * training pairs, then scores the calibration rows, warns when the members never
   * disagree, learns the `quantile` calibration and writes `ensemble.json`.
   */
  async prepare(ctx: RewardPrepareContext): Promise<void> {
    const c = this.#config;
    const name = c.reward.name;
    const record: Record<string, unknown>[] = [];
    for (let i = 0; i < this.#members.length; i++) {
      const member = this.#members[i];
      const seed = memberSeed(ctx.seed, i);
      const train = memberTrain(ctx.splits.train, i, c.members, c.data, seed);
      record.push({ member: i, seed, trainPairs: train.length });
      if (member.prepare === undefined) continue;
      if (train.length === 0) {
        throw new UserError(
          `ensemble reward: member ${i} gets no training pairs (data: "${c.data}", ` +
            `${ctx.splits.train.length} pairs for ${c.members} members); use fewer members`,
        );
      }
      const label = `member_${i} (${name})`;
      await prepareWrapped(member, ctx, `member_${i}`, label, {
        seed,
        splits: { ...ctx.splits, train },
        progress: (what, total, unit) => ctx.progress(`${label} ${what}`, total, unit),
      });
    }
    const rows = this.#calibrationSet(ctx);
    const raw: number[] = [];
    let disagreements = 0;
    if (rows.length > 0) {
      const { score, std } = await this.#raw(rows);
      raw.push(...score);
      disagreements = std.filter((s) => s > 0).length;
    }
    if (this.#members.length > 1 && rows.length > 0 && disagreements === 0) {
      ctx.log(
        `warning: the ${c.members} ${name} members agree on all ${rows.length} calibration ` +
          `rows: the ensemble has no diversity (std 0)`,
      );
    }
    if (c.calibrate === "quantile") {
      if (rows.length === 0) {
        throw new UserError(
          `ensemble reward: calibrate "quantile" needs calibration rows, but the experiment ` +
            `has no validation or training pairs`,
        );
      }
      this.#knots = quantileKnots(raw);
    }
    await Deno.mkdir(ctx.dir, { recursive: true });
    const path = join(ctx.dir, ENSEMBLE_FILE);
    const saved = {
      format: FORMAT,
      version: 1,
      members: record,
      calibration: { rows: rows.length, disagreements, knots: this.#knots ?? null },
    };
    await writeFileAtomic(path, JSON.stringify(saved, null, 2) + "\n");
    ctx.log(
      `${c.members} ${name} members, mean - ${c.conservative} * std, ${c.calibrate}; ` +
        `members disagree on ${disagreements} of ${rows.length} calibration rows; wrote ${path}`,
    );
  }

  /**
   * Restores each member that prepares something from `member_<i>/`, then reads the
   * calibration {@link EnsembleReward.prepare} saved in `ensemble.json`.
   */
  async restore(ctx: RewardRestoreContext): Promise<void> {
    const name = this.#config.reward.name;
    for (let i = 0; i < this.#members.length; i++) {
      await restoreWrapped(this.#members[i], ctx, `member_${i}`, `member_${i} (${name})`);
    }
    const record = await readPreparedJson("ensemble", join(ctx.dir, ENSEMBLE_FILE), FORMAT);
    const calibration = record.calibration as { knots?: [number, number][] | null } | undefined;
    const knots = calibration?.knots ?? undefined;
    if (this.#config.calibrate === "quantile" && !Array.isArray(knots)) {
      throw new UserError(
        `ensemble reward: ${join(ctx.dir, ENSEMBLE_FILE)} holds no quantile calibration`,
      );
    }
    this.#knots = knots;
  }

  /** mean - k * std over the members, calibrated into [0, 1]. */
  async score(rows: readonly RewardInput[]): Promise<number[]> {
    const knots = this.#knots;
    if (this.#config.calibrate === "quantile" && knots === undefined) {
      throw new UserError(
        'ensemble reward: calibrate "quantile" is learned by prepare(), which an experiment ' +
          "runs before the reward is used (`deno task exp`), not by a bare score() nor inside " +
          "another reward (e.g. a weighted component)",
      );
    }
    const { score, std } = await this.#raw(rows);
    for (const s of std) this.#stdSum += s;
    this.#rows += rows.length;
    return score.map((r) => knots === undefined ? clip01(r) : applyKnots(knots, r));
  }

  /**
   * Since the previous call (or creation), then reset: `ensemble_std_mean`, `ensemble_rows`,
   * and `member_<key>` for each key of the members' own diagnostics (mean over members).
   */
  diagnostics(): Record<string, number> {
    const out: Record<string, number> = {
      ensemble_std_mean: this.#rows > 0 ? this.#stdSum / this.#rows : 0,
      ensemble_rows: this.#rows,
    };
    this.#stdSum = 0;
    this.#rows = 0;
    for (const member of this.#members) {
      for (const [key, value] of Object.entries(member.diagnostics?.() ?? {})) {
        const name = `member_${key}`;
        out[name] = (out[name] ?? 0) + value / this.#members.length;
      }
    }
    return out;
  }

  /** Raw scores mean - k * std (not yet calibrated) and the std, per row. */
  async #raw(rows: readonly RewardInput[]): Promise<{ score: number[]; std: number[] }> {
    const byMember: number[][] = [];
    for (const member of this.#members) {
      const scores = await member.score(rows);
      checkScores(scores, rows.length);
      byMember.push(scores);
    }
    const score = new Array<number>(rows.length);
    const std = new Array<number>(rows.length);
    for (let j = 0; j < rows.length; j++) {
      const stats = meanStd(byMember.map((s) => s[j]));
      score[j] = stats.mean - this.#config.conservative * stats.std;
      std[j] = stats.std;
    }
    return { score, std };
  }

  /** The calibration rows from the validation pairs (or training pairs), seeded. */
  #calibrationSet(ctx: RewardPrepareContext): RewardInput[] {
    const c = this.#config.calibration;
    const pool = ctx.splits.valid.length > 0 ? ctx.splits.valid : ctx.splits.train;
    const rng = new Rng(ctx.seed).fork("ensemble/calibration");
    const pairs = pool.length > c.sources ? rng.shuffle([...pool]).slice(0, c.sources) : pool;
    return calibrationRows(pairs, c.corruptionsPerSource, rng);
  }
}

/** Scales the calibration set down for `--smoke` (idempotent). */
export function smokeEnsemble(config: EnsembleConfig): EnsembleConfig {
  return {
    ...config,
    calibration: { ...config.calibration, sources: Math.min(config.calibration.sources, 24) },
  };
}

/** The `ensemble` reward plugin (see the module doc). */
export default definePlugin({
  kind: "reward",
  name: "ensemble",
  summary:
    "K seeded instances (or data shards) of a reward; score mean - k * std over members (conservative, Coste et al. 2023), clipped or quantile-calibrated to [0, 1].",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      reward: pluginRef(
        "reward",
        "learned",
        "The member reward: a reward plugin's name or {name, config}; each member is a separate instance prepared in member_<i>/ with seed seed * 1000 + i.",
      ),
      members: int(1, 64, 3, "Number of members K."),
      conservative: num(
        0,
        100,
        0,
        "k in the score mean - k * std over the members (std: the population standard deviation, divisor K); 0: the plain mean.",
      ),
      calibrate: {
        enum: [...CALIBRATIONS],
        default: "clip",
        description:
          "How mean - k * std is mapped to [0, 1]: clip (clamp), or quantile (the empirical CDF of the same score over the calibration rows, linearly interpolated, with 0 -> 0 and 1 -> 1).",
      },
      data: {
        enum: [...MEMBER_DATA],
        default: "full",
        description:
          "Training pairs each member's prepare sees: full (all), shards (member i the pairs with index mod K = i), bootstrap (as many drawn with replacement from the member's seed).",
      },
      calibration: {
        type: "object",
        additionalProperties: false,
        default: {},
        description:
          "Calibration rows built in prepare (references and corruptions of validation pairs): they check the members' diversity and give the quantile calibration.",
        properties: {
          sources: int(
            0,
            1_000_000,
            200,
            "Validation pairs used (training pairs when there is no validation split; a seeded sample when there are more).",
          ),
          corruptionsPerSource: int(0, 100, 2, "Corrupted references per pair."),
        },
      },
    },
  },
  smoke: smokeEnsemble,
  async create(config: EnsembleConfig, deps): Promise<RewardModel> {
    const problems = ensembleConfigProblems(config);
    if (problems.length > 0) {
      const { path, message } = problems[0];
      throw new UserError(`ensemble reward: ${path.slice(1)}: ${message}`);
    }
    const members: RewardModel[] = [];
    for (let i = 0; i < config.members; i++) {
      members.push(await deps.create("reward", config.reward));
    }
    return new EnsembleReward(config, members);
  },
});
