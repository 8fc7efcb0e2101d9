/** The experiment's splits: disjoint selection/report halves of validation, no train overlap in test. */

import assert from "node:assert/strict";
import { overlapKey, prepareSplits } from "../../core/splits.ts";

const pair = (source: string) => ({ source, reference: `${source} (de)` });

Deno.test("prepareSplits: validation is cut into disjoint, deterministic select and report halves", () => {
  const valid = Array.from({ length: 400 }, (_, i) => pair(`valid sentence ${i}`));
  const { splits, stats } = prepareSplits({ train: [pair("x")], valid, test: [pair("y")] });
  const select = new Set(splits.select.map((e) => e.source));
  assert.ok(
    splits.valid.every((e) => !select.has(e.source)),
    "no report source is a selection source",
  );
  assert.equal(splits.select.length + splits.valid.length, 400);
  assert.ok(splits.select.length > 150 && splits.select.length < 250, `${splits.select.length}`);
  assert.deepEqual(stats, {
    testOverlap: 0,
    testRemoved: 0,
    testBefore: 1,
    select: splits.select.length,
    report: splits.valid.length,
  });
  // The side of a source depends on the source alone, not on the order or the other pairs.
  const again = prepareSplits({
    train: [],
    valid: [...valid].reverse().slice(0, 300),
    test: [pair("y")],
  });
  for (const e of again.splits.select) assert.ok(select.has(e.source), e.source);
  // Tiny validation splits still give both halves something.
  const one = prepareSplits({ train: [], valid: [pair("a")], test: [pair("y")] }).splits;
  assert.deepEqual([one.select.length, one.valid.length], [1, 1]);
  const two = prepareSplits({ train: [], valid: [pair("a"), pair("b")], test: [pair("y")] }).splits;
  assert.deepEqual([two.select.length, two.valid.length], [1, 1]);
});

Deno.test("prepareSplits: test sources that occur in training (case, spacing, end punctuation aside) are removed and counted", () => {
  const train = [pair("Open File"), pair("Save as…"), pair("Close")];
  const test = [
    pair("open file."),
    pair("Save  as"),
    pair("CLOSE!"),
    pair("Close window"),
    pair("Print"),
  ];
  const { splits, stats } = prepareSplits({ train, valid: [pair("v")], test });
  assert.deepEqual(splits.test.map((e) => e.source), ["Close window", "Print"]);
  assert.equal(stats.testOverlap, 3);
  assert.equal(stats.testRemoved, 3);
  assert.equal(overlapKey("  Hello,   World!! "), "hello, world");
  // A toy corpus whose every test source is in training keeps its test split (and says so).
  const all = prepareSplits({ train, valid: [pair("v")], test: [pair("close")] });
  assert.equal(all.splits.test.length, 1);
  assert.deepEqual([all.stats.testOverlap, all.stats.testRemoved], [1, 0]);
});
