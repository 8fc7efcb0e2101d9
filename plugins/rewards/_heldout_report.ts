/**
 * Held-out rows of graded quality for measuring a reward model against sentence chrF: for each
 * held-out source, its reference, one sample of the BC policy at each of `temperatures`, and
 * `corruptionsPerSource` corruptions of the reference (kinds from `_corrupt.ts`, drawn
 * uniformly), each labelled with its chrF; and the reward's pooled Pearson r and Kendall tau-b
 * with chrF over them, as the `learned` reward's held-out rows measure it. (The within-source
 * figures over N samples per source and the Best-of-N curve are `core/reward_report.ts`.)
 *
 * The rows are a deterministic function of the examples, the policy and the seed, so two
 * rewards measured with the same settings and seed see the same rows.
 *
 * @module
 */

import { sentenceChrf } from "../../core/metrics/chrf.ts";
import { kendallTauB, pearson } from "../../core/metrics/correlation.ts";
import { Rng } from "../../core/random.ts";
import type { Example, Policy, Tokenizer } from "../../core/types.ts";
import { corrupt, CORRUPTION_KINDS } from "./_corrupt.ts";

/** What the measurement is made of. */
export interface HeldOutSettings {
  /** One BC sample per source at each of these temperatures (pooled rows). */
  temperatures: readonly number[];
  /** Corruptions of the reference per source (pooled rows). */
  corruptionsPerSource: number;
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
  /** `reference`, `sample_t<T>` or a corruption kind. */
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
  /** Per pooled kind: rows, mean chrF and mean reward. */
  byKind: Record<string, { rows: number; chrf: number; reward: number }>;
}

/** Builds the held-out rows of `examples` (see the module doc); samples come from `policy`. */
export async function heldOutRows(
  policy: Policy | undefined,
  tokenizer: Tokenizer,
  examples: readonly Example[],
  settings: HeldOutSettings,
  seed: number,
): Promise<HeldOutRow[]> {
  const rng = new Rng(seed).fork("heldout/rows");
  const sources = examples.map((e) => tokenizer.encode(e.source, "source"));
  const draw = async (temperature: number, label: string): Promise<string[][]> => {
    if (policy === undefined) throw new RangeError("heldOutRows: samples need a policy");
    if (examples.length === 0) return [];
    const generations = await policy.sample(sources, {
      n: 1,
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
  for (const t of settings.temperatures) pooledSamples.push(await draw(t, `heldout/t${t}`));
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
  return rows;
}

/** Correlations of `scores` (one per row of `rows`) with the rows' chrF. */
export function heldOutStats(rows: readonly HeldOutRow[], scores: readonly number[]): HeldOutStats {
  if (rows.length !== scores.length) {
    throw new RangeError(`${rows.length} held-out rows, ${scores.length} scores`);
  }
  const pooled = rows.map((r, i) => ({ r, s: scores[i] }));
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
    byKind,
  };
}

/** One line: `Pearson 0.512, Kendall 0.401 with chrF on 1000 rows`. */
export function describeStats(stats: HeldOutStats): string {
  const f = (x: number) => Number.isFinite(x) ? x.toFixed(3) : "n/a";
  return `Pearson ${f(stats.pearson)}, Kendall ${f(stats.kendall)} with chrF on ` +
    `${stats.pooledRows} rows (references, samples, corruptions)`;
}
