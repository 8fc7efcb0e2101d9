/**
 * How well a reward model serves ReST, measured on held-out sources with the policy's own
 * samples (issue 13, item 6): for each source, `samples` outputs of the policy at the Grow
 * temperature, each scored by the reward and by sentence chrF against the reference.
 *
 * - `pooled_pearson`, `pooled_kendall`: Pearson r and Kendall tau-b between reward and chrF
 *   over all samples of all sources;
 * - `within_kendall`: the mean over sources of Kendall tau-b among the first `withinSamples`
 *   samples of one source (what ReST's filter and Best-of-N use: they compare samples of the
 *   same source), with `within_sources` the sources where it is defined (not all tied);
 * - `bon_chrf@N` for each N in `ns`: corpus chrF of the sample the reward scores highest
 *   among the first N of each source, and `bon_oracle_chrf@N`, the same picking by chrF
 *   itself (the ceiling a perfect reward would reach). A useful reward makes `bon_chrf@N`
 *   rise with N; a gamed one leaves it flat or falling.
 *
 * One sampling pass ({@link sampleAndScore}) serves every figure, so the curves and the
 * correlations are measured on the same outputs.
 *
 * @module
 */

import { UserError } from "./errors.ts";
import { sampleAndScore } from "./evaluate.ts";
import { corpusChrf, sentenceChrf } from "./metrics/chrf.ts";
import { kendallTauB, pearson, withinGroupKendall } from "./metrics/correlation.ts";
import { Rng } from "./random.ts";
import type { Example, Policy, RewardModel, RewardPrepareContext, Tokenizer } from "./types.ts";

/** Settings of {@link rewardReport}. */
export interface RewardReportOptions {
  /** Samples per source (the largest Best-of-N). */
  samples: number;
  /** Samples per source for the within-source Kendall (at most `samples`; the issue asks >= 8). */
  withinSamples: number;
  /** Best-of-N sizes (each at most `samples`). */
  ns: readonly number[];
  /** Sampling temperature (the Grow temperature). */
  temperature: number;
  /** Sampling seed. */
  seed: number;
  /** Maximum output tokens. */
  maxLen: number;
  /** Decoded rows per batch. */
  batchSize: number;
}

/** The Best-of-N sizes 1, 2, 4, ... up to `most` (and `most` itself). */
export function powersUpTo(most: number): number[] {
  const ns: number[] = [];
  for (let n = 1; n < most; n *= 2) ns.push(n);
  ns.push(most);
  return ns;
}

/**
 * The figures of the module doc for `reward` on `examples`, keyed without a namespace
 * (`pooled_pearson`, `within_kendall`, `bon_chrf@8`, ...). chrF values are x100 like
 * sacreBLEU's; correlations are NaN where undefined.
 */
export async function rewardReport(
  policy: Policy,
  tokenizer: Tokenizer,
  reward: RewardModel,
  examples: readonly Example[],
  options: RewardReportOptions,
): Promise<Record<string, number>> {
  const { samples, withinSamples, ns } = options;
  if (!(Number.isInteger(samples) && samples >= 1)) {
    throw new RangeError(`samples must be a positive integer, got ${samples}`);
  }
  if (withinSamples > samples || ns.some((n) => !(n >= 1 && n <= samples))) {
    throw new RangeError(`withinSamples and every N must be in [1, samples = ${samples}]`);
  }
  if (examples.length === 0) return {};
  const { hypotheses, scores } = await sampleAndScore(policy, tokenizer, reward, examples, {
    n: samples,
    temperature: options.temperature,
    seed: options.seed,
    maxLen: options.maxLen,
    batchSize: Math.max(1, Math.floor(options.batchSize / samples)),
  });
  const chrf = hypotheses.flatMap((row, i) =>
    row.map((h) => sentenceChrf(h, examples[i].reference) / 100)
  );
  const within = { x: [] as number[], y: [] as number[], group: [] as number[] };
  for (let i = 0; i < examples.length; i++) {
    for (let j = 0; j < withinSamples; j++) {
      within.x.push(scores[i * samples + j]);
      within.y.push(chrf[i * samples + j]);
      within.group.push(i);
    }
  }
  const grouped = withinGroupKendall(within.x, within.y, within.group);
  const out: Record<string, number> = {
    sources: examples.length,
    samples,
    pooled_pearson: pearson(scores, chrf),
    pooled_kendall: kendallTauB(scores, chrf),
    within_kendall: grouped.mean,
    within_sources: grouped.groups,
  };
  const references = examples.map((e) => e.reference);
  const pick = (by: readonly number[], n: number) =>
    hypotheses.map((row, i) => {
      let best = 0;
      for (let j = 1; j < n; j++) if (by[i * samples + j] > by[i * samples + best]) best = j;
      return row[best];
    });
  for (const n of [...ns].sort((a, b) => a - b)) {
    out[`bon_chrf@${n}`] = corpusChrf(pick(scores, n), references);
    out[`bon_oracle_chrf@${n}`] = corpusChrf(pick(chrf, n), references);
  }
  return out;
}

/** One line: pooled and within-source correlations and the Best-of-N chrF curve. */
export function describeRewardReport(report: Record<string, number>): string {
  const f = (x: number | undefined, digits = 3) =>
    x !== undefined && Number.isFinite(x) ? x.toFixed(digits) : "n/a";
  const curve = Object.keys(report)
    .filter((k) => k.startsWith("bon_chrf@"))
    .map((k) => `${k.slice("bon_chrf@".length)}: ${f(report[k], 2)}`)
    .join(", ");
  return `pooled Pearson ${f(report.pooled_pearson)}, Kendall ${f(report.pooled_kendall)} with ` +
    `chrF over ${report.sources} sources x ${report.samples} samples; within-source Kendall ` +
    `${f(report.within_kendall)} (${report.within_sources} sources); Best-of-N chrF ${curve}`;
}

/** What {@link reportOnTestSources} measures, from a reward's `report` config. */
export interface TestSourcesReport {
  /** Test sources (0: no report). */
  sources: number;
  /** Samples per source. */
  samples: number;
  /** Samples per source for the within-source Kendall. */
  withinSamples: number;
  /** The reward's name: the seed stream `<name>/report` and the metrics `<name>/report_<key>`. */
  name: string;
  /** The step the metrics record carries, if any. */
  step?: number;
}

/**
 * The report a reward model gives of itself at the end of its `prepare`: {@link rewardReport}
 * of `reward` on the first `sources` test sources with the BC policy's samples at the
 * evaluation temperature, logged to the reward's metrics and printed. Null when off, or when
 * there is no BC policy to sample (said in the log).
 */
export async function reportOnTestSources(
  reward: RewardModel,
  ctx: RewardPrepareContext,
  options: TestSourcesReport,
): Promise<Record<string, number> | null> {
  const { sources, samples, withinSamples, name, step } = options;
  const examples = ctx.splits.test.slice(0, sources);
  if (sources === 0 || examples.length === 0) return null;
  let policy: Policy;
  try {
    policy = await ctx.bcPolicy();
  } catch (error) {
    if (!(error instanceof UserError)) throw error;
    ctx.log(`no held-out report: it samples the BC policy (${error.message})`);
    return null;
  }
  try {
    const report = await rewardReport(policy, ctx.tokenizer, reward, examples, {
      samples,
      withinSamples: Math.min(withinSamples, samples),
      ns: powersUpTo(samples),
      temperature: ctx.evaluation.temperature,
      seed: new Rng(ctx.seed).fork(`${name}/report`).nextUint32(),
      maxLen: ctx.evaluation.maxLen,
      batchSize: ctx.evaluation.batchSize,
    });
    const record = Object.fromEntries(
      Object.entries(report).map(([k, v]) => [`${name}/report_${k}`, v]),
    );
    await ctx.metrics.log(record, step);
    ctx.log(`held-out report on test sources: ${describeRewardReport(report)}`);
    return report;
  } finally {
    policy.dispose();
  }
}
