/**
 * How a trained reward model is measured on sources held out from its training, the way issue
 * 13 (item 6) asks every reward model to report:
 *
 * - **pooled** rows, for each held-out source: its reference, one sample of the BC policy at
 *   each of `temperatures`, and `corruptionsPerSource` corruptions of the reference (kinds from
 *   `_corrupt.ts`, drawn uniformly); the reward's pooled Pearson r and Kendall tau-b with
 *   sentence chrF against the reference over all of them;
 * - **within-source** rows: `samples` (N >= 8 for the report) samples of the BC policy per
 *   source at the Grow temperature, and the mean over sources of Kendall tau-b between the
 *   reward and chrF among one source's samples (what ReST's filter and Best-of-N depend on:
 *   they only compare hypotheses of the same source; sources whose samples all tie are skipped).
 *
 * The rows are a deterministic function of the examples, the policy and the seed, so two
 * rewards measured with the same settings and seed see the same rows.
 *
 * @module
 */

import { sentenceChrf } from "../../core/metrics/chrf.ts";
import { kendallTauB, pearson, withinGroupKendall } from "../../core/metrics/correlation.ts";
import { Rng } from "../../core/random.ts";
import type { Example, Policy, Tokenizer } from "../../core/types.ts";
import { corrupt, CORRUPTION_KINDS } from "./_corrupt.ts";

/** What the measurement is made of. */
export interface HeldOutSettings {
  /** One BC sample per source at each of these temperatures (pooled rows). */
  temperatures: readonly number[];
  /** Corruptions of the reference per source (pooled rows). */
  corruptionsPerSource: number;
  /** Samples per source for the within-source Kendall (0: none). */
  samples: number;
  /** Temperature of those samples (the Grow temperature, 0.8 in the paper). */
  temperature: number;
  /** Maximum output tokens when sampling. */
  maxLen: number;
  /** Decoded rows per batch. */
  batchSize: number;
}

/** One held-out row. */
export interface HeldOutRow {
  /** Source sentence. */
  source: string;
  /** Its reference. */
  reference: string;
  /** The hypothesis scored. */
  hypothesis: string;
  /** `reference`, `sample_t<T>`, a corruption kind, or `within` (a within-source sample). */
  kind: string;
  /** Index of the source among the held-out examples. */
  group: number;
  /** Sentence chrF of the hypothesis against the reference, in [0, 1]. */
  chrf: number;
}

/** The figures of one measurement. */
export interface HeldOutStats {
  /** Pooled rows. */
  pooledRows: number;
  /** Pearson r between the reward and chrF over the pooled rows. */
  pearson: number;
  /** Kendall tau-b over the pooled rows. */
  kendall: number;
  /** Mean within-source Kendall tau-b over the within-source samples. */
  withinKendall: number;
  /** Sources with a defined within-source tau-b. */
  withinSources: number;
  /** Per pooled kind: rows, mean chrF and mean reward. */
  byKind: Record<string, { rows: number; chrf: number; reward: number }>;
}

/**
 * Builds the held-out rows of `examples` (see the module doc): pooled rows first, then the
 * within-source samples (kind `within`). Samples come from `policy` (not disposed here).
 */
export async function heldOutRows(
  policy: Policy | undefined,
  tokenizer: Tokenizer,
  examples: readonly Example[],
  settings: HeldOutSettings,
  seed: number,
): Promise<HeldOutRow[]> {
  const rng = new Rng(seed).fork("heldout/rows");
  const sources = examples.map((e) => tokenizer.encode(e.source, "source"));
  const draw = async (n: number, temperature: number, label: string): Promise<string[][]> => {
    if (policy === undefined) throw new RangeError("heldOutRows: samples need a policy");
    if (examples.length === 0) return [];
    const generations = await policy.sample(sources, {
      n,
      temperature,
      topK: 0,
      topP: 1,
      seed: new Rng(seed).fork(label).nextUint32(),
      maxLen: settings.maxLen,
      batchSize: settings.batchSize,
    });
    return generations.map((row) => row.map((g) => tokenizer.decode(g.tokens, "target")));
  };
  const pooledSamples: string[][][] = [];
  for (const t of settings.temperatures) pooledSamples.push(await draw(1, t, `heldout/t${t}`));
  const within = settings.samples > 0
    ? await draw(settings.samples, settings.temperature, "heldout/within")
    : [];
  const rows: HeldOutRow[] = [];
  const add = (group: number, hypothesis: string, kind: string) => {
    const { source, reference } = examples[group];
    rows.push({
      source,
      reference,
      hypothesis,
      kind,
      group,
      chrf: sentenceChrf(hypothesis, reference) / 100,
    });
  };
  examples.forEach((e, i) => {
    add(i, e.reference, "reference");
    settings.temperatures.forEach((t, k) => add(i, pooledSamples[k][i][0], `sample_t${t}`));
    for (let c = 0; c < settings.corruptionsPerSource; c++) {
      const kind = rng.pick(CORRUPTION_KINDS);
      const other = examples.length > 1
        ? examples[(i + 1 + rng.int(examples.length - 1)) % examples.length].reference
        : "";
      add(i, corrupt(kind, { text: e.reference, source: e.source, other }, rng), kind);
    }
  });
  within.forEach((samples, i) => samples.forEach((s) => add(i, s, "within")));
  return rows;
}

/** Correlations of `scores` (one per row of `rows`) with the rows' chrF. */
export function heldOutStats(rows: readonly HeldOutRow[], scores: readonly number[]): HeldOutStats {
  if (rows.length !== scores.length) {
    throw new RangeError(`${rows.length} held-out rows, ${scores.length} scores`);
  }
  const pooled = rows.map((r, i) => ({ r, s: scores[i] })).filter((x) => x.r.kind !== "within");
  const within = rows.map((r, i) => ({ r, s: scores[i] })).filter((x) => x.r.kind === "within");
  const grouped = withinGroupKendall(
    within.map((x) => x.s),
    within.map((x) => x.r.chrf),
    within.map((x) => x.r.group),
  );
  const byKind: HeldOutStats["byKind"] = {};
  for (const { r, s } of pooled) {
    const k = byKind[r.kind] ??= { rows: 0, chrf: 0, reward: 0 };
    k.rows++;
    k.chrf += r.chrf;
    k.reward += s;
  }
  for (const k of Object.values(byKind)) {
    k.chrf /= k.rows;
    k.reward /= k.rows;
  }
  return {
    pooledRows: pooled.length,
    pearson: pearson(pooled.map((x) => x.s), pooled.map((x) => x.r.chrf)),
    kendall: kendallTauB(pooled.map((x) => x.s), pooled.map((x) => x.r.chrf)),
    withinKendall: grouped.mean,
    withinSources: grouped.groups,
    byKind,
  };
}

/** One line: `pooled Pearson 0.512, Kendall 0.401 on 1000 rows; within-source Kendall ...`. */
export function describeStats(stats: HeldOutStats): string {
  const f = (x: number) => Number.isFinite(x) ? x.toFixed(3) : "n/a";
  return `pooled Pearson ${f(stats.pearson)}, Kendall ${f(stats.kendall)} with chrF on ` +
    `${stats.pooledRows} rows; within-source Kendall ${f(stats.withinKendall)} over ` +
    `${stats.withinSources} sources`;
}
