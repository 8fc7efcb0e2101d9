/**
 * The paper's Table 1 for our runs: its columns ({@link COLUMNS}), the rows built from run
 * folders ({@link tabulate}), and the files it is written as: `table1.md` (with footnotes,
 * a legend, the paper's own table and the list of figures), `table1.csv` and
 * `table1.json`.
 *
 * Runs of one row (its seeds, `<row>@seed<k>`) form one row, whose cells show the mean ±
 * sample standard deviation (n - 1 in the denominator) over the runs that have the value.
 * Rewards are shown x100, like the paper.
 *
 * The footnotes ({@link tableNotes}) come from the experiment's `splits.json`: how many test
 * pairs were removed because their source occurs in training, and the validation halves
 * used for model selection and for the report. Rows trained with another reward than the
 * others (the oracle row: ReST on chrF against the references) are named in a footnote.
 *
 * @module
 */

import type { SplitStats } from "../splits.ts";
import type { Figure, SkippedFigure } from "./figures.ts";
import { groupRuns, type RunData, SPLITS_FILE } from "./load.ts";

/** A column of Table 1. */
export interface Column {
  /** Key in table1.csv/json. */
  key: string;
  /** Heading in table1.md. */
  title: string;
  /** The metric key it reads from each run's values. */
  metric: string;
  /** Multiplier applied to the metric (100 for rewards in [0, 1]). */
  scale: number;
  /** Decimals shown in table1.md. */
  digits: number;
  /** One-line explanation for the legend. */
  description: string;
}

/** The columns of Table 1, in order. */
export const COLUMNS: readonly Column[] = [
  {
    key: "avg_reward_x100",
    title: "Average reward (x100)",
    metric: "eval/valid_reward",
    scale: 100,
    digits: 2,
    description:
      "mean reward-model score of the final policy's greedy translations of the report split's sources, x100 (`eval/valid_reward`); the paper's Table 1 metric",
  },
  {
    key: "sampled_reward_x100",
    title: "Sampled reward (x100)",
    metric: "eval/valid_reward_sample",
    scale: 100,
    digits: 2,
    description:
      "the same for one sample per source at the evaluation temperature (`evaluation.temperature`), x100 (`eval/valid_reward_sample`): what the policy's distribution earns, not only its mode",
  },
  {
    key: "distinct_samples",
    title: "Distinct samples",
    metric: "train/distinct_samples",
    scale: 1,
    digits: 0,
    description:
      "distinct (source, output) pairs sampled from a policy for training over the whole run, each counted once however often it was drawn (in one Grow step, across Grow steps or across PPO rollout batches), counted the same way for every row; references are not samples, so BC, which trains on the references only, has 0 (`train/distinct_samples`)",
  },
  {
    key: "kl_bc",
    title: "KL to BC (nats)",
    metric: "eval/valid_kl_bc",
    scale: 1,
    digits: 2,
    description:
      "KL(pi || pi_BC) per sequence on the report split: one output y ~ pi per source at temperature 1, averaging sum_t [log pi(y_t | ...) - log pi_BC(y_t | ...)] (a Monte-Carlo estimate; 0 for BC by definition, computed the same way) (`eval/valid_kl_bc`)",
  },
  {
    key: "test_reward_x100",
    title: "Test reward (x100)",
    metric: "eval/test_reward",
    scale: 100,
    digits: 2,
    description:
      "mean reward of the greedy translations of the test sources, x100 (`eval/test_reward`)",
  },
  {
    key: "test_chrf",
    title: "Test chrF",
    metric: "eval/test_chrf",
    scale: 1,
    digits: 2,
    description: "corpus chrF of the test translations against the references (`eval/test_chrf`)",
  },
  {
    key: "test_bleu",
    title: "Test BLEU",
    metric: "eval/test_bleu",
    scale: 1,
    digits: 2,
    description: "corpus BLEU of the test translations against the references (`eval/test_bleu`)",
  },
  {
    key: "gradient_steps",
    title: "Gradient steps",
    metric: "train/gradient_steps",
    scale: 1,
    digits: 0,
    description:
      "optimizer steps after BC (all Improve steps, or all PPO updates) (`train/gradient_steps`)",
  },
  {
    key: "wall_time_s",
    title: "Wall time (s)",
    metric: "summary/seconds",
    scale: 1,
    digits: 1,
    description:
      "seconds the run took (`seconds` in summary.json); the shared BC policy is trained on first use, so its training time counts in the first run that needs it",
  },
];

/** A table cell: mean, sample standard deviation (null for one value) and count. */
export interface Cell {
  /** Mean over the row's runs that have the value. */
  mean: number;
  /** Sample standard deviation (n - 1), or null when n = 1. */
  std: number | null;
  /** Number of runs that have the value. */
  n: number;
}

/** One row of Table 1: the runs of one row name (one per seed). */
export interface TableRow {
  /** Row name (run name without `@seed<k>`). */
  row: string;
  /** Algorithm label(s) of its runs. */
  algorithm: string;
  /** Its run folders. */
  runs: string[];
  /** The seed of each run (null when unknown). */
  seeds: (number | null)[];
  /** The runs without `summary.json`. */
  incomplete: string[];
  /** The distinct rewards of its runs (see {@link RunData.reward}). */
  rewards: { name: string; key: string }[];
  /** Cells by column key; null when no run has the value. */
  values: Record<string, Cell | null>;
}

/**
 * Everything a report holds, before it is written (built by `buildReport` in mod.ts; it
 * lives here, with the renderers that read it, so that this file need not import mod.ts).
 */
export interface Report {
  /** Experiment name (from the runs' manifests, else the folder name). */
  experiment: string;
  /** The experiment folder. */
  dir: string;
  /** Table columns. */
  columns: readonly Column[];
  /** Table rows, in the order the rows started running. */
  rows: TableRow[];
  /** The experiment's split counts from {@link SPLITS_FILE}; null when it has none. */
  splits: SplitStats | null;
  /** The evaluation temperatures of the runs (normally one). */
  temperatures: number[];
  /** Figures drawn. */
  figures: Figure[];
  /** Figures skipped for lack of data. */
  skipped: SkippedFigure[];
}

/**
 * The paper's Table 1 (Gulcehre et al. 2023, arXiv 2308.08998; IWSLT 2014 De-En), as
 * reported in the paper, for orientation next to ours. Different data, model and reward
 * model: only the ordering is comparable.
 */
export const PAPER_TABLE1: readonly { algorithm: string; reward: number; distinct: string }[] = [
  { algorithm: "BC (G=0, I=0)", reward: 70.9, distinct: "16M" },
  { algorithm: "ReST (G=1, I=0)", reward: 71.9, distinct: "16M" },
  { algorithm: "ReST (G=1, I=4)", reward: 77.8, distinct: "16M" },
  { algorithm: "ReST (G=2, I=3)", reward: 83.1, distinct: "32M" },
  { algorithm: "Online PPO", reward: 71.6, distinct: "24M" },
];

/** Mean and sample standard deviation (n - 1; null for a single value). */
export function meanStd(values: readonly number[]): Cell | null {
  if (values.length === 0) return null;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  if (values.length === 1) return { mean, std: null, n: 1 };
  const squares = values.reduce((a, v) => a + (v - mean) ** 2, 0);
  return { mean, std: Math.sqrt(squares / (values.length - 1)), n: values.length };
}

function roundNoise(value: number): number {
  return Number(value.toPrecision(12));
}

/** Builds the table rows from runs. */
export function tabulate(runs: readonly RunData[]): TableRow[] {
  const rows: TableRow[] = [];
  for (const [row, list] of groupRuns(runs)) {
    const values: Record<string, Cell | null> = {};
    for (const column of COLUMNS) {
      const found = list
        .map((run) => run.values[column.metric])
        .filter((v): v is number => v !== undefined)
        .map((v) => v * column.scale);
      const cell = meanStd(found);
      // 12 significant digits drop binary noise such as 66.10000000000001 from x100.
      values[column.key] = cell === null ? null : {
        mean: roundNoise(cell.mean),
        std: cell.std === null ? null : roundNoise(cell.std),
        n: cell.n,
      };
    }
    rows.push({
      row,
      algorithm: [...new Set(list.map((r) => r.algorithm))].join(" / "),
      runs: list.map((r) => r.name),
      seeds: list.map((r) => r.seed ?? null),
      incomplete: list.filter((r) => !r.complete).map((r) => r.name),
      rewards: [
        ...new Map(list.flatMap((r) => r.reward === undefined ? [] : [[r.reward.key, r.reward]]))
          .values(),
      ],
      values,
    });
  }
  return rows;
}

/** `1234567.8` -> `1,234,568` (with `digits` decimals), without depending on the locale. */
function formatNumber(value: number, digits: number): string {
  const text = (value + 0).toFixed(digits);
  const [whole, fraction] = text.split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return fraction === undefined ? grouped : `${grouped}.${fraction}`;
}

/** A cell as text: `mean` or `mean ± std`; `–` when missing. */
export function formatCell(cell: Cell | null, digits: number): string {
  if (cell === null) return "–";
  const mean = formatNumber(cell.mean, digits);
  return cell.std === null ? mean : `${mean} ± ${formatNumber(cell.std, digits)}`;
}

function markdownEscape(text: string): string {
  return text.replace(/\|/g, "\\|");
}

/** A markdown table with padded columns (readable as plain text too). */
function markdownTable(header: string[], body: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length), 3));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

/** Row label: the row name, marked "(incomplete)" when one of its runs has no summary. */
function rowLabel(row: TableRow): string {
  if (row.incomplete.length === 0) return row.row;
  if (row.runs.length === 1) return `${row.row} (incomplete)`;
  return `${row.row} (incomplete: ${row.incomplete.length} of ${row.runs.length} runs)`;
}

/** Our Table 1 as a markdown table (what `deno task report` prints). */
export function renderTable(report: Report): string {
  const header = ["Run", "Algorithm", "Seeds", ...report.columns.map((c) => c.title)];
  const body = report.rows.map((row) => [
    markdownEscape(rowLabel(row)),
    markdownEscape(row.algorithm),
    row.seeds.map((s) => s ?? "?").join(", "),
    ...report.columns.map((c) => formatCell(row.values[c.key], c.digits)),
  ]);
  return markdownTable(header, body);
}

/** `12,345` without depending on the locale. */
function count(value: number): string {
  return formatNumber(value, 0);
}

/** The note on how the splits were prepared, from {@link SPLITS_FILE}. */
function splitNotes(splits: SplitStats | null): string[] {
  if (splits === null) {
    return [
      `The experiment folder has no ${SPLITS_FILE} (written by \`deno task exp\` since the ` +
      "test split is filtered): how many test sources also occur in training is not recorded.",
    ];
  }
  const rule = "compared case-folded, whitespace collapsed, trailing punctuation stripped";
  const kept = splits.testBefore - splits.testRemoved;
  const test = splits.testOverlap === 0
    ? `0 of ${count(splits.testBefore)} test pairs removed: no test source occurs in ` +
      `training (${rule}).`
    : splits.testRemoved > 0
    ? `${count(splits.testRemoved)} of ${count(splits.testBefore)} test pairs removed: their ` +
      `source occurs in training (${rule}); the test columns use the other ${count(kept)}.`
    : `All ${count(splits.testBefore)} test pairs have a source that occurs in training ` +
      `(${rule}); they were kept, since none would be left, so the test columns measure ` +
      "strings seen in training.";
  return [
    test,
    `Validation is cut in two by a hash of each source: ${count(splits.select)} pairs for ` +
    "model selection (BC's early stopping, ReST's Improve steps, PPO's best checkpoint) and " +
    `${count(splits.report)} for the report; the average and sampled reward and the KL ` +
    "columns use the report half (up to `evaluation.validSize` of its pairs; 0: all), which " +
    "no run selected on.",
  ];
}

/** The reward most rows use (ties: the first row's), or undefined when no row names one. */
function mainReward(rows: readonly TableRow[]): { name: string; key: string } | undefined {
  const counts = new Map<string, { reward: { name: string; key: string }; n: number }>();
  for (const row of rows) {
    for (const reward of row.rewards) {
      const entry = counts.get(reward.key) ?? { reward, n: 0 };
      entry.n++;
      counts.set(reward.key, entry);
    }
  }
  let best: { reward: { name: string; key: string }; n: number } | undefined;
  for (const entry of counts.values()) if (best === undefined || entry.n > best.n) best = entry;
  return best?.reward;
}

/** The note naming rows trained with another reward than the others (the oracle row). */
function rewardNotes(rows: readonly TableRow[]): string[] {
  const main = mainReward(rows);
  if (main === undefined) return [];
  const others = rows.filter((row) => row.rewards.some((r) => r.key !== main.key));
  if (others.length === 0) {
    return [`Every row is scored (ReST and PPO also trained) with the \`${main.name}\` reward.`];
  }
  const named = others.map((row) => {
    const names = row.rewards.filter((r) => r.key !== main.key).map((r) =>
      r.name === main.name ? `${r.name}, another config` : r.name
    );
    return `${markdownEscape(rowLabel(row))} (\`${names.join("`, `")}\`)`;
  });
  return [
    `Rows are scored (ReST and PPO also trained) with the \`${main.name}\` reward, except ` +
    `${named.join(", ")}: there the average, sampled and test reward columns are in that ` +
    "row's own reward and not comparable with the other rows'; compare through the KL, test " +
    "chrF and test BLEU columns. A row trained on chrF against the references is an oracle, " +
    "the upper bound of what Improve achieves with a reward that measures the target itself: " +
    "if it gains test chrF where the other rows lose it, the reward model is the weak link, " +
    "not Improve.",
  ];
}

/** The table's footnotes: splits, rewards, the sampling temperature and distinct samples. */
export function tableNotes(report: Report): string[] {
  const t = report.temperatures;
  const temperature = t.length === 0 ? [] : [
    `Sampled reward: one sample per source at temperature ${t.join(", ")}` +
    (t.length > 1
      ? " (the runs' evaluation temperatures differ)."
      : " (the evaluation temperature).") +
    " The KL column samples at temperature 1.",
  ];
  return [
    ...splitNotes(report.splits),
    ...rewardNotes(report.rows),
    ...temperature,
    "Distinct samples are counted one way for every row: distinct (source, output) pairs " +
    "sampled from a policy for training over the whole run, references not counted. BC " +
    "samples nothing and shows 0 (the paper's BC row lists 16M).",
  ];
}

/** The full `table1.md`: our table, the paper's, a legend and the list of figures. */
export function renderMarkdown(report: Report): string {
  const paper = markdownTable(
    ["Algorithm", "Average reward (x100)", "Distinct samples"],
    PAPER_TABLE1.map((r) => [r.algorithm, r.reward.toFixed(1), r.distinct]),
  );
  const legend = [
    "- **Run**: the run folder's name; runs named `<row>@seed<k>` are seeds of one row. " +
    "Cells of a row with several seeds show mean ± sample standard deviation over the seeds " +
    'that have the value. "(incomplete)" marks runs without `summary.json` (interrupted or ' +
    "still running); their cells show the last values they logged.",
    "- **Algorithm**: the algorithm and its main settings from `manifest.resolved.json` " +
    "(G: Grow steps, I: Improve steps per Grow step).",
    "- **Seeds**: the seed of each run in the row.",
    ...report.columns.map((c) => `- **${c.title}**: ${c.description}.`),
    "- `–`: not logged by the row's runs (e.g. runs made before the column existed).",
    "",
    "The test chrF and BLEU against reference translations stand in for the paper's human " +
    "evaluation: a reward model can be over-optimised (the reward rises while the " +
    "reference metrics fall), which is what the paper's human ratings revealed for PPO.",
  ];
  const figures = [
    ...report.figures.map((f) => `- [${f.file}](${f.file}): ${f.title}.`),
    ...report.skipped.map((s) => `- ${s.file} (${s.title}): skipped; ${s.reason}.`),
  ];
  return [
    `# Table 1: ${report.experiment}`,
    "",
    `Built from the run folders in \`${report.dir}\`; rebuild with ` +
    `\`deno task report ${report.dir}\`.`,
    "",
    renderTable(report),
    "",
    ...tableNotes(report).map((note) => `- ${note}`),
    "",
    "## Columns",
    "",
    ...legend,
    "",
    "## The paper's Table 1, for orientation",
    "",
    "As reported in the paper (Gulcehre et al. 2023, arXiv 2308.08998, Table 1; IWSLT 2014 " +
    "De-En, a learned reward model, Transformer policies). Different data, model sizes and " +
    "reward: these are not comparable with ours in absolute terms, only in their ordering.",
    "",
    paper,
    "",
    "## Figures",
    "",
    ...figures,
    "",
  ].join("\n");
}

function csvField(value: string): string {
  return /[",\n\r]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** `table1.csv`: one line per row; each column's mean and `<key>_std`; empty when missing. */
export function renderCsv(report: Report): string {
  const header = [
    "run",
    "algorithm",
    "seeds",
    "incomplete",
    ...report.columns.flatMap((c) => [c.key, `${c.key}_std`]),
  ];
  const lines = [header.join(",")];
  for (const row of report.rows) {
    const cells = [
      row.row,
      row.algorithm,
      row.seeds.map((s) => s ?? "").join(";"),
      String(row.incomplete.length > 0),
      ...report.columns.flatMap((c) => {
        const cell = row.values[c.key];
        return [cell === null ? "" : String(cell.mean), cell?.std == null ? "" : String(cell.std)];
      }),
    ];
    lines.push(cells.map(csvField).join(","));
  }
  return lines.join("\n") + "\n";
}

/** `table1.json`: the table with full-precision cells, the columns, figures and the paper's rows. */
export function renderJson(report: Report): unknown {
  return {
    experiment: report.experiment,
    seedConvention: "runs named <row>@seed<k> are seeds of one row; cells are mean and " +
      "sample standard deviation (n - 1) over the runs that have the value",
    columns: report.columns,
    rows: report.rows,
    splits: report.splits,
    notes: tableNotes(report),
    figures: report.figures.map((f) => ({ file: f.file, title: f.title })),
    skippedFigures: report.skipped,
    paper: {
      source: "Gulcehre et al. 2023, arXiv 2308.08998, Table 1 (IWSLT 2014 De-En), as reported",
      rows: PAPER_TABLE1,
    },
  };
}
