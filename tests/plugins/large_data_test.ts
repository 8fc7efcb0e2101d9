/**
 * Real-size data: corpora of a million pairs through the data plugins, a .po entry with
 * 200k flags, and a Grow pool of 500k rows through the path ReST uses (write the Grow file,
 * read it back, add it to the Improve pool). Each once overflowed the call stack through
 * `push(...rows)`.
 *
 * Memory bounds (resident-set growth while loading; measured on a 2-core Linux machine
 * with Deno 2.9, the bounds leave about twice that):
 * - 1M tsv pairs: under {@link CORPUS_RSS_MB} MB (measured ~230 MB);
 * - 1M jsonl pairs: under the same bound (measured ~430 MB, JSON.parse garbage included);
 * - 500k Grow rows read and put in the pool: under {@link POOL_RSS_MB} MB (measured ~130 MB).
 * Each test takes a few seconds (about 5 s for a 1M-pair corpus).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { filterPool, growPath, GrowPool, readGrowFile, writeGrowFile } from "../../core/rest.ts";
import type { GrowRow, Splits } from "../../core/types.ts";
import gettext from "../../plugins/data/gettext.ts";
import jsonl from "../../plugins/data/jsonl.ts";
import tsv from "../../plugins/data/tsv.ts";
import { loadStandalone as load, withTempDir as withTempFolder } from "../_experiment.ts";

/** Pairs in each generated corpus. */
const PAIRS = 1_000_000;
/** Rows in the generated Grow set. */
const GROW_ROWS = 500_000;
/** Bound on the resident-set growth while loading one 1M-pair corpus, in MB. */
const CORPUS_RSS_MB = 800;
/** Bound on the resident-set growth while building the 500k-row Grow pool, in MB. */
const POOL_RSS_MB = 400;

/** {@link withTempFolder} with folders named rest_large_data_test_*. */
function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  return withTempFolder(fn, "rest_large_data_test_");
}

/** Writes `count` lines made by `line(i)` to `file`, in blocks (never one huge string). */
async function writeLines(file: string, count: number, line: (i: number) => string) {
  const out = await Deno.open(file, { write: true, create: true, truncate: true });
  const encoder = new TextEncoder();
  try {
    for (let start = 0; start < count; start += 100_000) {
      const block: string[] = [];
      for (let i = start; i < Math.min(count, start + 100_000); i++) block.push(line(i));
      const bytes = encoder.encode(block.join(""));
      let written = 0;
      while (written < bytes.length) written += await out.write(bytes.subarray(written));
    }
  } finally {
    out.close();
  }
}

/** Runs `fn` and returns its result and the growth of the resident set in MB. */
async function measured<T>(fn: () => Promise<T>): Promise<{ result: T; rssMb: number }> {
  const before = Deno.memoryUsage().rss;
  const result = await fn();
  return { result, rssMb: (Deno.memoryUsage().rss - before) / 2 ** 20 };
}

function total(splits: Splits): number {
  return splits.train.length + splits.valid.length + splits.test.length;
}

Deno.test("tsv: a corpus of 1M pairs loads within the memory bound", async () => {
  await withTempDir(async (dir) => {
    await writeLines(join(dir, "big.tsv"), PAIRS, (i) => `s${i}\tr${i}\n`);
    const { result, rssMb } = await measured(() => load(tsv, { paths: ["big.tsv"] }, dir));
    assert.equal(total(result), PAIRS);
    assert.equal(result.valid.length, PAIRS * 0.05);
    assert.ok(rssMb < CORPUS_RSS_MB, `resident set grew by ${rssMb.toFixed(0)} MB`);
  });
});

Deno.test("jsonl: a corpus of 1M pairs in two files loads within the memory bound", async () => {
  await withTempDir(async (dir) => {
    const half = PAIRS / 2;
    const line = (offset: number) => (i: number) =>
      `{"source":"s${offset + i}","reference":"r${offset + i}"}\n`;
    await writeLines(join(dir, "a.jsonl"), half, line(0));
    await writeLines(join(dir, "b.jsonl"), half, line(half));
    const { result, rssMb } = await measured(() => load(jsonl, { paths: ["."] }, dir));
    assert.equal(total(result), PAIRS);
    assert.ok(rssMb < CORPUS_RSS_MB, `resident set grew by ${rssMb.toFixed(0)} MB`);
  });
});

Deno.test("gettext: a .po entry with 200k flags loads; a fuzzy flag among them counts", async () => {
  await withTempDir(async (dir) => {
    const flags = Array.from({ length: 200_000 }, (_, i) => (i === 150_000 ? "fuzzy" : `f${i}`));
    await Deno.writeTextFile(
      join(dir, "many_flags.po"),
      [
        'msgid ""',
        'msgstr "Content-Type: text/plain; charset=UTF-8\\n"',
        "",
        `#, ${flags.join(", ")}`,
        'msgid "Open file"',
        'msgstr "Datei öffnen"',
        "",
        'msgid "Close window"',
        'msgstr "Fenster schließen"',
        "",
      ].join("\n"),
    );
    const config = { paths: ["many_flags.po"], validSize: 0, testSize: 0 };
    const fuzzySkipped = await load(gettext, config, dir);
    assert.deepEqual(fuzzySkipped.train.map((p) => p.source), ["Close window"]);
    const all = await load(gettext, { ...config, includeFuzzy: true }, dir);
    assert.deepEqual(all.train.map((p) => p.source).sort(), ["Close window", "Open file"]);
  });
});

function growRow(i: number): GrowRow {
  return {
    source: `s${i % 1000}`,
    hypothesis: `h${i}`,
    reference: `r${i % 1000}`,
    reward: (i % 100) / 100,
    tokens: [4, 5],
    logProbs: [-0.5, -0.25],
    origin: i % 9 === 0 ? "reference" : "sample",
  };
}

function* growRows(count: number): Generator<GrowRow> {
  for (let i = 0; i < count; i++) yield growRow(i);
}

Deno.test("rest: a Grow pool of 500k rows from grow_1.jsonl, within the memory bound", async () => {
  await withTempDir(async (dir) => {
    const path = growPath(dir, 1);
    await writeGrowFile(path, growRows(GROW_ROWS));
    const pool = new GrowPool();
    const { result: rows, rssMb } = await measured(async () => {
      const rows = await readGrowFile(path);
      pool.addAll(rows);
      return rows;
    });
    assert.equal(rows.length, GROW_ROWS);
    assert.equal(pool.size, GROW_ROWS);
    assert.deepEqual(pool.row(GROW_ROWS - 1), growRow(GROW_ROWS - 1));
    assert.ok(rssMb < POOL_RSS_MB, `resident set grew by ${rssMb.toFixed(0)} MB`);
    // The filter and the per-source rewards of Improve over the whole pool.
    assert.equal(filterPool(pool, 0.5).length, rows.filter((r) => r.reward > 0.5).length);
    assert.equal(pool.rewardsBySource().size, 1000);
    // accumulate keeps the earlier set (1M rows), otherwise the new set replaces it.
    pool.addAll(rows);
    assert.equal(pool.size, 2 * GROW_ROWS);
    pool.clear();
    pool.addAll(rows);
    assert.equal(pool.size, GROW_ROWS);
    assert.deepEqual(pool.row(0), rows[0]);
  });
});
