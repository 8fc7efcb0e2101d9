import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../../core/errors.ts";
import { reservedEntry } from "../../core/layout.ts";
import { loadRuns, loadSplitStats, parseRunName } from "../../core/report/load.ts";
import { buildReport, SPLITS_FILE, writeReport } from "../../core/report/mod.ts";
import { escapeXml, lineChart, niceTicks, stackedCharts } from "../../core/report/svg.ts";
import { meanStd, renderCsv } from "../../core/report/table.ts";
import { hasStackTrace, runTask } from "../_cli.ts";

const FIXTURE = new URL("../fixtures/report/demo", import.meta.url).pathname;

/** Copies a folder tree (the fixture) so that reports can be written without touching it. */
async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const entry of Deno.readDir(from)) {
    if (entry.isDirectory) await copyDir(join(from, entry.name), join(to, entry.name));
    else await Deno.copyFile(join(from, entry.name), join(to, entry.name));
  }
}

/** A temporary copy of the fixture experiment; removed by the returned function. */
async function fixtureCopy(): Promise<{ dir: string; done: () => Promise<void> }> {
  const root = await Deno.makeTempDir({ prefix: "report_test_" });
  const dir = join(root, "demo");
  await copyDir(FIXTURE, dir);
  return { dir, done: () => Deno.remove(root, { recursive: true }) };
}

function close(actual: number | null | undefined, expected: number, what: string): void {
  assert.ok(
    typeof actual === "number" && Math.abs(actual - expected) < 1e-9,
    `${what}: got ${actual}, expected ${expected}`,
  );
}

/**
 * Checks that `xml` is well-formed (one root, balanced tags, quoted and unique attributes,
 * no stray `<` or bare `&`) and returns the element names and the content of its `<text>`
 * (labels, ticks, legend) and `<title>` elements (the document's, and each point's hover
 * title "series: (x, y)").
 */
function parseXml(xml: string): { elements: string[]; texts: string[] } {
  const stack: string[] = [];
  const elements: string[] = [];
  const texts: string[] = [];
  let roots = 0;
  const badEntity = /&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/;
  const unescape = (s: string) =>
    s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&#39;/g, "'")
      .replace(/&amp;/g, "&");
  for (const match of xml.matchAll(/<[^>]*>|[^<]+/g)) {
    const token = match[0];
    if (!token.startsWith("<")) {
      assert.ok(!badEntity.test(token), `bare & in text ${JSON.stringify(token)}`);
      if (stack.length === 0) assert.equal(token.trim(), "", "text outside the root element");
      else if (["text", "title"].includes(stack[stack.length - 1])) texts.push(unescape(token));
      continue;
    }
    assert.ok(!token.slice(1).includes("<"), `stray < in ${token}`);
    if (token.startsWith("</")) {
      const close = /^<\/([A-Za-z][\w:-]*)\s*>$/.exec(token);
      assert.ok(close, `bad closing tag ${token}`);
      assert.equal(stack.pop(), close[1], `mismatched ${token}`);
      continue;
    }
    const open = /^<([A-Za-z][\w:-]*)((?:\s+[A-Za-z_:][\w:.-]*="[^"]*")*)\s*(\/?)>$/.exec(token);
    assert.ok(open, `bad tag ${token}`);
    const names = [...open[2].matchAll(/([A-Za-z_:][\w:.-]*)="([^"]*)"/g)].map((m) => {
      assert.ok(!badEntity.test(m[2]), `bare & in attribute of ${token}`);
      return m[1];
    });
    assert.equal(new Set(names).size, names.length, `repeated attribute in ${token}`);
    if (stack.length === 0) roots++;
    elements.push(open[1]);
    if (open[3] !== "/") stack.push(open[1]);
  }
  assert.deepEqual(stack, [], "unclosed elements");
  assert.equal(roots, 1, "exactly one root element");
  return { elements, texts };
}

Deno.test("parseRunName: <row>@seed<k> is a seed of <row>; other names are rows", () => {
  assert.deepEqual(parseRunName("rest_g1_i4@seed12"), { row: "rest_g1_i4", seed: 12 });
  assert.deepEqual(parseRunName("rest"), { row: "rest" });
  assert.deepEqual(parseRunName("rest-s1"), { row: "rest-s1" });
  assert.deepEqual(parseRunName("rest@seed"), { row: "rest@seed" });
});

Deno.test("meanStd: mean and sample standard deviation (n - 1)", () => {
  assert.equal(meanStd([]), null);
  assert.deepEqual(meanStd([3]), { mean: 3, std: null, n: 1 });
  const cell = meanStd([2, 4, 4, 4, 5, 5, 7, 9])!;
  assert.equal(cell.mean, 5);
  close(cell.std, Math.sqrt(32 / 7), "sample std");
  assert.equal(cell.n, 8);
});

Deno.test("loadRuns: run folders are those with manifest.resolved.json; seeds and labels", async () => {
  const runs = await loadRuns(FIXTURE);
  // bc/ (the shared BC training folder, no manifest) is not a run.
  assert.deepEqual(runs.map((r) => r.name), [
    "bc_only",
    "ppo",
    "rest_g1_i0",
    "rest_g1_i4@seed1",
    "rest_g1_i4@seed2",
    "rest_g2_i3",
    "rest_oracle",
  ]);
  const byName = new Map(runs.map((r) => [r.name, r]));
  assert.equal(byName.get("rest_g1_i4@seed2")!.row, "rest_g1_i4");
  assert.equal(byName.get("rest_g1_i4@seed2")!.seed, 2);
  assert.equal(byName.get("rest_g2_i3")!.algorithm, "ReST (G=2, I=3)");
  assert.equal(byName.get("bc_only")!.algorithm, "BC (G=0, I=0)");
  assert.equal(byName.get("ppo")!.algorithm, "Online PPO");
  assert.equal(byName.get("rest_oracle")!.algorithm, "ReST (G=1, I=4), oracle reward (chrF)");
  assert.equal(byName.get("rest_oracle")!.reward?.name, "chrf");
  assert.equal(byName.get("ppo")!.reward?.name, "learned");
  assert.equal(byName.get("ppo")!.evalTemperature, 0.8);
  assert.ok(runs.every((r) => r.complete));
  assert.equal(byName.get("ppo")!.values["summary/seconds"], 30);
});

Deno.test("buildReport: Table 1 rows in run order, means and sample std over seeds", async () => {
  const report = await buildReport(FIXTURE);
  assert.equal(report.experiment, "report_fixture");
  // Rows follow the order the runs started (first metrics time), not the folder names.
  assert.deepEqual(report.rows.map((r) => r.row), [
    "bc_only",
    "rest_g1_i0",
    "rest_g1_i4",
    "rest_g2_i3",
    "ppo",
    "rest_oracle",
  ]);
  const row = report.rows[2];
  assert.deepEqual(row.runs, ["rest_g1_i4@seed1", "rest_g1_i4@seed2"]);
  assert.deepEqual(row.seeds, [1, 2]);
  assert.deepEqual(row.incomplete, []);
  close(row.values.avg_reward_x100?.mean, 77, "avg reward mean");
  close(row.values.avg_reward_x100?.std, Math.SQRT2, "avg reward std");
  assert.equal(row.values.avg_reward_x100?.n, 2);
  close(row.values.distinct_samples?.mean, 1010, "distinct mean");
  close(row.values.distinct_samples?.std, 10 * Math.SQRT2, "distinct std");
  close(row.values.sampled_reward_x100?.mean, 73, "sampled reward mean");
  close(row.values.sampled_reward_x100?.std, Math.SQRT2, "sampled reward std");
  close(row.values.kl_bc?.mean, 4.5, "KL mean");
  close(row.values.kl_bc?.std, Math.SQRT1_2, "KL std");
  close(row.values.test_reward_x100?.mean, 72, "test reward mean");
  close(row.values.test_reward_x100?.std, 2 * Math.SQRT2, "test reward std");
  close(row.values.test_chrf?.mean, 50.5, "chrF mean");
  close(row.values.test_bleu?.mean, 23.5, "BLEU mean");
  close(row.values.gradient_steps?.mean, 400, "gradient steps");
  close(row.values.gradient_steps?.std, 0, "gradient steps std");
  close(row.values.wall_time_s?.mean, 13, "wall time mean");
  close(row.values.wall_time_s?.std, Math.SQRT1_2, "wall time std");

  const bc = report.rows[0];
  close(bc.values.avg_reward_x100?.mean, 65.2, "BC reward");
  assert.equal(bc.values.avg_reward_x100?.std, null);
  // BC samples nothing: counted the same way as every other row, it is 0, not missing.
  assert.deepEqual(bc.values.distinct_samples, { mean: 0, std: null, n: 1 });
  assert.deepEqual(bc.values.kl_bc, { mean: 0, std: null, n: 1 });
  assert.equal(bc.values.gradient_steps, null);
  const ppo = report.rows[4];
  close(ppo.values.avg_reward_x100?.mean, 71.6, "PPO reward");
  close(ppo.values.test_bleu?.mean, 16.1, "PPO BLEU");
  close(report.rows[3].values.wall_time_s?.mean, 25.25, "G=2 wall time");
});

Deno.test("writeReport: table1.md/csv/json hold our table, the paper's, a legend and figures", async () => {
  const { dir, done } = await fixtureCopy();
  try {
    const logged: string[] = [];
    const { files, markdown } = await writeReport(dir, { log: (m) => logged.push(m) });
    const names = files.map((f) => f.slice(dir.length + 1)).sort();
    assert.deepEqual(names, [
      "fig3_improve_reward.svg",
      "fig4_grow_reward.svg",
      "fig6_best_of_n.svg",
      "ppo_training.svg",
      "table1.csv",
      "table1.json",
      "table1.md",
    ]);
    assert.equal(logged.length, 7);

    const md = await Deno.readTextFile(join(dir, "table1.md"));
    assert.equal(md, markdown);
    assert.match(md, /^# Table 1: report_fixture$/m);
    assert.match(
      md,
      /^\| rest_g1_i4 +\| ReST \(G=1, I=4\) +\| 1, 2 +\| 77\.00 ± 1\.41 +\| 73\.00 ± 1\.41 +\| 1,010 ± 14 +\| 4\.50 ± 0\.71 +\| 72\.00 ± 2\.83 +\| 50\.50 ± 0\.71 +\| 23\.50 ± 0\.71 +\| 400 ± 0 +\| 13\.0 ± 0\.7 +\|$/m,
    );
    assert.match(
      md,
      /^\| bc_only +\| BC \(G=0, I=0\) +\| 1 +\| 65\.20 +\| 60\.10 +\| 0 +\| 0\.00 +\|/m,
    );
    assert.match(
      md,
      /^\| rest_g2_i3 .*\| 82\.00 +\| 79\.00 +\| 2,010 +\| 7\.25 +\|.*\| 600 +\| 25\.3 +\|$/m,
    );
    // The paper's numbers, kept apart from ours and labelled as reported.
    assert.match(md, /## The paper's Table 1, for orientation/);
    assert.match(md, /As reported in the paper/);
    assert.match(md, /^\| ReST \(G=2, I=3\) +\| 83\.1 +\| 32M +\|$/m);
    assert.match(md, /^\| Online PPO +\| 71\.6 +\| 24M +\|$/m);
    assert.ok(md.indexOf("83.1") > md.indexOf("## The paper's Table 1"));
    assert.match(md, /stand in for the paper's human\s+evaluation/);
    assert.match(md, /\*\*Distinct samples\*\*/);
    assert.match(md, /\[fig3_improve_reward\.svg\]\(fig3_improve_reward\.svg\)/);
    assert.doesNotMatch(md, /skipped/);

    const csv = (await Deno.readTextFile(join(dir, "table1.csv"))).trimEnd().split("\n");
    assert.equal(csv.length, 7);
    assert.equal(
      csv[0],
      "run,algorithm,seeds,incomplete,avg_reward_x100,avg_reward_x100_std,sampled_reward_x100," +
        "sampled_reward_x100_std,distinct_samples,distinct_samples_std,kl_bc,kl_bc_std," +
        "test_reward_x100,test_reward_x100_std,test_chrf,test_chrf_std,test_bleu,test_bleu_std," +
        "gradient_steps,gradient_steps_std,wall_time_s,wall_time_s_std",
    );
    assert.equal(
      csv[1],
      'bc_only,"BC (G=0, I=0)",1,false,65.2,,60.1,,0,,0,,64.1,,48.3,,21.7,,,,3.2,',
    );
    const rest = csv[3].split(/,(?=(?:[^"]*"[^"]*")*[^"]*$)/);
    assert.equal(rest[0], "rest_g1_i4");
    assert.equal(rest[2], "1;2");
    close(Number(rest[4]), 77, "csv mean");
    close(Number(rest[5]), Math.SQRT2, "csv std");
    assert.equal(rest[20], "13");

    const json = JSON.parse(await Deno.readTextFile(join(dir, "table1.json")));
    assert.equal(json.experiment, "report_fixture");
    assert.equal(json.rows.length, 6);
    assert.equal(json.rows[2].row, "rest_g1_i4");
    close(json.rows[2].values.test_reward_x100.std, 2 * Math.SQRT2, "json std");
    assert.equal(json.rows[0].values.gradient_steps, null);
    assert.equal(json.columns[0].metric, "eval/valid_reward");
    assert.equal(json.paper.rows.length, 5);
    assert.deepEqual(json.splits, {
      testOverlap: 12,
      testRemoved: 12,
      testBefore: 512,
      select: 148,
      report: 152,
    });
    assert.ok(json.notes.some((n: string) => n.startsWith("12 of 512 test pairs removed")));
    assert.equal(json.figures.length, 4);
    assert.deepEqual(json.skippedFigures, []);
  } finally {
    await done();
  }
});

Deno.test("figures: well-formed SVG with titles, axis labels, series and the right points", async () => {
  const report = await buildReport(FIXTURE);
  const svg = new Map(report.figures.map((f) => [f.file, f.svg]));

  const fig3 = parseXml(svg.get("fig3_improve_reward.svg")!);
  assert.ok(fig3.texts.includes("Reward per Improve step (paper's Figure 3)"));
  assert.ok(fig3.texts.includes("Improve step (counted over all Grow steps)"));
  assert.ok(fig3.texts.includes("Selection reward (x100)"));
  assert.ok(fig3.texts.includes("rest_g1_i4 (mean of 2 seeds)"));
  assert.ok(fig3.texts.includes("rest_g2_i3"));
  assert.ok(!fig3.texts.includes("bc_only"), "BC has no Improve step");
  // Point titles carry the data: seed means, and only the Improve summaries (not the
  // evaluations logged in the middle of an Improve step).
  const seedMean = fig3.texts.filter((t) => t.startsWith("rest_g1_i4 (mean of 2 seeds): "));
  assert.deepEqual(seedMean, [
    "rest_g1_i4 (mean of 2 seeds): (1, 69.5)",
    "rest_g1_i4 (mean of 2 seeds): (2, 72.5)",
    "rest_g1_i4 (mean of 2 seeds): (3, 75.5)",
    "rest_g1_i4 (mean of 2 seeds): (4, 77)",
  ]);
  // Tick numbers on both axes.
  for (const tick of ["1", "2", "6", "70", "80"]) assert.ok(fig3.texts.includes(tick), tick);

  const fig4 = parseXml(svg.get("fig4_grow_reward.svg")!);
  assert.ok(fig4.texts.includes("Grow step G"));
  assert.deepEqual(fig4.texts.filter((t) => t.startsWith("rest_g2_i3: ")), [
    "rest_g2_i3: (1, 74)",
    "rest_g2_i3: (2, 82)",
  ]);

  const fig6 = parseXml(svg.get("fig6_best_of_n.svg")!);
  assert.ok(fig6.texts.includes("N (samples per source, log2 scale)"));
  assert.ok(fig6.texts.includes("Corpus chrF of the best of N samples"));
  assert.ok(fig6.texts.includes("rest_g1_i4 (mean of 2 seeds): (8, 79.5)"));
  assert.ok(fig6.texts.includes("bc_only: (4, 67)"));
  for (const tick of ["1", "2", "4", "8"]) assert.ok(fig6.texts.includes(tick), tick);

  const ppo = parseXml(svg.get("ppo_training.svg")!);
  assert.ok(ppo.texts.includes("PPO: average sampled reward during training"));
  assert.ok(ppo.texts.includes("KL (nats per sequence)"));
  assert.ok(ppo.texts.includes("Training step"));
  assert.ok(ppo.texts.includes("ppo: (160, 75)"));
  assert.ok(ppo.texts.includes("ppo: (160, 3.1)"));
  assert.ok(!ppo.texts.some((t) => t.startsWith("rest")), "only PPO runs in the PPO figure");
});

Deno.test("writeReport: figures without data are skipped with a note; stale copies removed", async () => {
  const { dir, done } = await fixtureCopy();
  try {
    for (const run of ["ppo", "rest_g1_i4@seed1", "rest_g1_i4@seed2", "rest_g2_i3"]) {
      await Deno.remove(join(dir, run), { recursive: true });
    }
    await Deno.writeTextFile(join(dir, "fig3_improve_reward.svg"), "<svg/>");
    const { report, markdown } = await writeReport(dir);
    assert.deepEqual(report.figures.map((f) => f.file), ["fig6_best_of_n.svg"]);
    assert.deepEqual(report.skipped.map((s) => s.file), [
      "fig3_improve_reward.svg",
      "fig4_grow_reward.svg",
      "ppo_training.svg",
    ]);
    assert.match(
      markdown,
      /- fig3_improve_reward\.svg \(Reward per Improve step \(Figure 3\)\): skipped; no run logged an Improve step/,
    );
    assert.match(markdown, /- ppo_training\.svg .*: skipped; no run logged PPO training metrics/);
    await assert.rejects(Deno.stat(join(dir, "fig3_improve_reward.svg")), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(join(dir, "ppo_training.svg")), Deno.errors.NotFound);
    const json = JSON.parse(await Deno.readTextFile(join(dir, "table1.json")));
    assert.equal(json.skippedFigures.length, 3);
  } finally {
    await done();
  }
});

Deno.test("writeReport: runs without summary.json are marked (incomplete), not fatal", async () => {
  const { dir, done } = await fixtureCopy();
  try {
    await Deno.remove(join(dir, "rest_g1_i4@seed2", "summary.json"));
    await Deno.remove(join(dir, "ppo", "summary.json"));
    // A run that only just started: a manifest and nothing else.
    await Deno.mkdir(join(dir, "late"));
    await Deno.copyFile(
      join(dir, "rest_g2_i3", "manifest.resolved.json"),
      join(dir, "late", "manifest.resolved.json"),
    );
    const { report } = await writeReport(dir);
    const rows = new Map(report.rows.map((r) => [r.row, r]));
    assert.deepEqual(rows.get("rest_g1_i4")!.incomplete, ["rest_g1_i4@seed2"]);
    // Values logged before the interruption still count; wall time needs summary.json.
    assert.equal(rows.get("rest_g1_i4")!.values.avg_reward_x100?.n, 2);
    assert.deepEqual(rows.get("rest_g1_i4")!.values.wall_time_s, { mean: 12.5, std: null, n: 1 });
    close(rows.get("ppo")!.values.avg_reward_x100?.mean, 71.6, "incomplete PPO reward");
    assert.equal(rows.get("ppo")!.values.wall_time_s, null);
    assert.ok(Object.values(rows.get("late")!.values).every((v) => v === null));
    assert.equal(report.rows[report.rows.length - 1].row, "late", "runs with no metrics go last");

    const md = await Deno.readTextFile(join(dir, "table1.md"));
    assert.match(md, /^\| rest_g1_i4 \(incomplete: 1 of 2 runs\) +\|/m);
    assert.match(md, /^\| ppo \(incomplete\) +\| Online PPO +\|.*\| – +\|$/m);
    assert.match(md, /^\| late \(incomplete\) +\| ReST \(G=2, I=3\) +\| 1 +\| – +\|/m);
    assert.match(renderCsv(report), /^ppo,Online PPO,1,true,71\.6,/m);
  } finally {
    await done();
  }
});

Deno.test("loadRuns: clear user errors for missing, empty or corrupt experiment folders", async () => {
  const root = await Deno.makeTempDir({ prefix: "report_err_" });
  try {
    await assert.rejects(
      loadRuns(join(root, "nope")),
      (e: unknown) => e instanceof UserError && /nope does not exist/.test(e.message),
    );
    await Deno.mkdir(join(root, "empty", "bc"), { recursive: true });
    await assert.rejects(
      loadRuns(join(root, "empty")),
      (e: unknown) => e instanceof UserError && /holds no runs/.test(e.message),
    );
    await Deno.writeTextFile(join(root, "file.txt"), "x");
    await assert.rejects(
      loadRuns(join(root, "file.txt")),
      (e: unknown) => e instanceof UserError && /is not a folder/.test(e.message),
    );
    const run = join(root, "bad", "r");
    await Deno.mkdir(run, { recursive: true });
    await Deno.writeTextFile(join(run, "manifest.resolved.json"), '{"algorithm": {"name": "bc"}}');
    await Deno.writeTextFile(join(run, "summary.json"), "{not json");
    await assert.rejects(
      loadRuns(join(root, "bad")),
      (e: unknown) =>
        e instanceof UserError && e.message.includes(join(run, "summary.json")) &&
        /not valid JSON/.test(e.message),
    );
    await Deno.remove(join(run, "summary.json"));
    await Deno.writeTextFile(join(run, "metrics.jsonl"), '{"step": 1}\n{broken\n');
    await assert.rejects(
      loadRuns(join(root, "bad")),
      (e: unknown) =>
        e instanceof UserError && e.message.includes(`${join(run, "metrics.jsonl")}:2`),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("svg: nice ticks, escaping, log2 ticks and no-data errors", () => {
  assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(1, 4, 10, true), [1, 2, 3, 4]);
  assert.deepEqual(niceTicks(0.62, 0.75, 5), [0.6, 0.65, 0.7, 0.75]);
  assert.deepEqual(niceTicks(5, 5, 4), [4.6, 4.8, 5, 5.2, 5.4]);
  assert.throws(() => niceTicks(2, 1, 5), RangeError);
  assert.equal(escapeXml(`a<b & "c" 'd'>`), "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;");

  const odd = lineChart({
    title: "Tricky <names> & more",
    xLabel: "N",
    yLabel: "y",
    xScale: "log2",
    series: [
      { name: `a&b <"c">`, points: [[1, 0.5], [16, 0.7], [0, 9], [4, NaN]] },
      { name: "empty", points: [] },
    ],
  });
  const parsed = parseXml(odd);
  assert.ok(parsed.texts.includes("Tricky <names> & more"));
  assert.ok(parsed.texts.includes(`a&b <"c">`));
  assert.ok(parsed.texts.includes("empty"), "every series is in the legend");
  // Powers of two on the log axis; x <= 0 and NaN points are left out.
  for (const tick of ["1", "2", "4", "8", "16"]) assert.ok(parsed.texts.includes(tick), tick);
  assert.equal(parsed.texts.filter((t) => t.startsWith(`a&b <"c">: `)).length, 2);

  assert.throws(
    () => lineChart({ title: "t", xLabel: "x", yLabel: "y", series: [{ name: "s", points: [] }] }),
    RangeError,
  );
  const stacked = parseXml(stackedCharts([
    { title: "top", xLabel: "x1", yLabel: "y1", series: [{ name: "s", points: [[0, 1]] }] },
    { title: "bottom", xLabel: "x2", yLabel: "y2", series: [{ name: "s", points: [[0, 2]] }] },
  ], "both"));
  for (const label of ["top", "bottom", "x1", "y2"]) assert.ok(stacked.texts.includes(label));
});

Deno.test("deno task report: prints the table and writes the files; exit 2 on user errors", async () => {
  const { dir, done } = await fixtureCopy();
  const empty = await Deno.makeTempDir({ prefix: "report_empty_" });
  try {
    const ok = await runTask("report", [dir]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^\| Run +\| Algorithm +\| Seeds +\| Average reward \(x100\) +\|/m);
    assert.match(
      ok.stdout,
      /^\| rest_g1_i4 +\| ReST \(G=1, I=4\) +\| 1, 2 +\| 77\.00 ± 1\.41 +\|/m,
    );
    assert.match(ok.stderr, /wrote .*table1\.md/);
    for (const file of ["table1.md", "table1.csv", "table1.json", "fig3_improve_reward.svg"]) {
      assert.ok((await Deno.stat(join(dir, file))).isFile, file);
    }

    const help = await runTask("report", ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: deno task report <experiment-folder>/);

    for (
      const [args, message] of [
        [[], /expected one experiment folder, got 0/],
        [[dir, dir], /expected one experiment folder, got 2/],
        [["--bogus", dir], /bogus/],
        [[join(empty, "missing")], /does not exist/],
        [[empty], /holds no runs/],
      ] as [string[], RegExp][]
    ) {
      const r = await runTask("report", args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /^report: error: /, args.join(" "));
      assert.match(r.stderr, message, args.join(" "));
      assert.ok(!hasStackTrace(r.stderr), r.stderr);
      assert.equal(r.stdout, "");
    }
  } finally {
    await done();
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("Table 1 footnotes: removed test pairs, the oracle row, the temperature, distinct samples", async () => {
  const { dir, done } = await fixtureCopy();
  try {
    const { markdown: md, report } = await writeReport(dir);
    // The oracle (ReST on chrF against the references) is a row of its own, labelled as such.
    assert.equal(report.rows[5].row, "rest_oracle");
    assert.match(
      md,
      /^\| rest_oracle +\| ReST \(G=1, I=4\), oracle reward \(chrF\) +\| 1 +\| 58\.00 +\| 55\.00 +\| 990 +\| 3\.00 +\| 57\.00 +\| 56\.00 +\|/m,
    );
    const notes = md.slice(md.indexOf("| rest_oracle"), md.indexOf("## Columns"));
    assert.match(
      notes,
      /^- 12 of 512 test pairs removed: their source occurs in training \(compared case-folded, whitespace collapsed, trailing punctuation stripped\); the test columns use the other 500\.$/m,
    );
    assert.match(notes, /148 pairs for model selection .* and 152 for the report/);
    assert.match(
      notes,
      /^- Rows are scored \(ReST and PPO also trained\) with the `learned` reward, except rest_oracle \(`chrf`\): there the average, sampled and test reward columns are in that row's own reward/m,
    );
    assert.match(notes, /one sample per source at temperature 0\.8 \(the evaluation temperature\)/);
    assert.match(
      notes,
      /Distinct samples are counted one way for every row: distinct \(source, output\)/,
    );
    assert.match(
      md,
      /\*\*KL to BC \(nats\)\*\*: KL\(pi \|\| pi_BC\) per sequence on the report split/,
    );
    assert.match(md, /\*\*Sampled reward \(x100\)\*\*: the same for one sample per source/);
  } finally {
    await done();
  }
});

Deno.test("Table 1 footnotes: splits.json missing, every test source seen, or corrupt", async () => {
  const { dir, done } = await fixtureCopy();
  try {
    await Deno.remove(join(dir, SPLITS_FILE));
    let { markdown } = await writeReport(dir);
    assert.match(markdown, /^- The experiment folder has no splits\.json/m);
    assert.equal(await loadSplitStats(dir), null);

    // A toy corpus whose test sources all occur in training: kept, and the note says so.
    const all = { testOverlap: 5, testRemoved: 0, testBefore: 5, select: 1, report: 1 };
    await Deno.writeTextFile(join(dir, SPLITS_FILE), JSON.stringify(all));
    ({ markdown } = await writeReport(dir));
    assert.match(markdown, /^- All 5 test pairs have a source that occurs in training .* kept/m);

    const none = { testOverlap: 0, testRemoved: 0, testBefore: 1234, select: 3, report: 4 };
    await Deno.writeTextFile(join(dir, SPLITS_FILE), JSON.stringify(none));
    ({ markdown } = await writeReport(dir));
    assert.match(markdown, /^- 0 of 1,234 test pairs removed: no test source occurs in training/m);

    await Deno.writeTextFile(join(dir, SPLITS_FILE), JSON.stringify({ ...none, select: -1 }));
    await assert.rejects(
      loadSplitStats(dir),
      (e: unknown) =>
        e instanceof UserError && e.message.includes(join(dir, SPLITS_FILE)) &&
        /"select"/.test(e.message),
    );
  } finally {
    await done();
  }
});

Deno.test("Table 1 footnotes: one reward for every row is said once; splits.json is reserved", async () => {
  const { dir, done } = await fixtureCopy();
  try {
    await Deno.remove(join(dir, "rest_oracle"), { recursive: true });
    const { markdown } = await writeReport(dir);
    assert.match(
      markdown,
      /^- Every row is scored \(ReST and PPO also trained\) with the `learned` reward\.$/m,
    );
    assert.doesNotMatch(markdown, /oracle/);
  } finally {
    await done();
  }
  // A run may not be named like the file the report reads.
  assert.equal(reservedEntry("splits.json"), "splits.json");
  assert.equal(reservedEntry("Splits.JSON"), "splits.json");
});
