/**
 * The experiment's view of a data plugin's splits, made once per experiment:
 *
 * - **select / report**: the validation split is cut in two, deterministically by a hash of
 *   each source, so that model selection (BC's early stopping, ReST's "while reward improves
 *   on D_eval", PPO's best checkpoint) never sees the sources whose reward Table 1 reports;
 * - **test**: test pairs whose source also occurs in training (case-folded, whitespace
 *   collapsed, trailing punctuation stripped) are removed, and counted, so the test columns
 *   measure translation of unseen strings.
 *
 * @module
 */

import { hashString } from "./random.ts";
import type { Example, RunSplits, Splits } from "./types.ts";

/** What {@link prepareSplits} removed or moved, for the log and the report. */
export interface SplitStats {
  /** Test pairs whose source occurs in training. */
  testOverlap: number;
  /** Of those, removed (all of them, unless no test pair would be left). */
  testRemoved: number;
  /** Test pairs before that. */
  testBefore: number;
  /** Validation pairs used for model selection. */
  select: number;
  /** Validation pairs whose rewards are reported. */
  report: number;
}

/** The key under which two sources count as the same string (see the module doc). */
export function overlapKey(source: string): string {
  return source.toLocaleLowerCase("en-US").replace(/\s+/g, " ").trim()
    .replace(/[\s.,;:!?…。、！？'"»«)(\]\[]+$/u, "");
}

/**
 * Splits validation into select/report halves (by source hash; a split of one pair goes to
 * both, so neither is empty) and removes test pairs whose source occurs in training.
 */
export function prepareSplits(splits: Splits): { splits: RunSplits; stats: SplitStats } {
  const seen = new Set<string>();
  for (const e of splits.train) seen.add(overlapKey(e.source));
  let test = splits.test.filter((e) => !seen.has(overlapKey(e.source)));
  // Every test source also in training (a toy corpus): keep them rather than test on nothing;
  // the stats still say how many overlap.
  if (test.length === 0) test = splits.test;
  const select: Example[] = [];
  const report: Example[] = [];
  for (const e of splits.valid) {
    // A hash of the source alone: the same string lands on the same side in every run.
    ((hashString(`select:${e.source}`) & 1) === 0 ? select : report).push(e);
  }
  if (splits.valid.length === 1) {
    select.length = 0;
    report.length = 0;
    select.push(splits.valid[0]);
    report.push(splits.valid[0]);
  } else if (select.length === 0 || report.length === 0) {
    // Too few pairs for the hash to fill both halves: alternate instead.
    select.length = 0;
    report.length = 0;
    splits.valid.forEach((e, i) => (i % 2 === 0 ? select : report).push(e));
  }
  return {
    splits: { train: splits.train, valid: report, select, test },
    stats: {
      testOverlap: splits.test.filter((e) => seen.has(overlapKey(e.source))).length,
      testRemoved: splits.test.length - test.length,
      testBefore: splits.test.length,
      select: select.length,
      report: report.length,
    },
  };
}
