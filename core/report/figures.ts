/**
 * The report's SVG figures, drawn from the runs' metrics (each skipped, with a note in
 * `table1.md`, when no run logged its data):
 *
 * - `fig3_improve_reward.svg` (the paper's Figure 3): validation reward after each
 *   Improve step (`improve/select_reward`) against the Improve index, one line per row;
 * - `fig4_grow_reward.svg` (Figure 4): validation reward after the last Improve step of
 *   each Grow step against G;
 * - `fig6_best_of_n.svg` (Figure 6): Best-of-N validation reward (`bon/valid_reward@N`)
 *   against N on a log2 axis, with a second panel for the picks' chrF against the
 *   references (`bon/valid_chrf@N`) when it was logged;
 * - `ppo_training.svg`: PPO's reward (`ppo/reward`) and KL (`ppo/kl`) over training, two
 *   panels, one line per run.
 *
 * The BC curve, `bc_curve.svg`, is read from other files (bc_curve.ts). Rewards are shown
 * x100, like the paper. Lines of rows with several seeds are the per-point means over the
 * seeds. The charts themselves are drawn by svg.ts.
 *
 * @module
 */

import { finite, groupRuns, REPORT_FILES, type RunData } from "./load.ts";
import { type ChartSpec, hasDrawablePoints, lineChart, stackedCharts } from "./svg.ts";

/** A figure that was drawn. */
export interface Figure {
  /** File name in the experiment folder. */
  file: string;
  /** What it shows. */
  title: string;
  /** The SVG document. */
  svg: string;
}

/** A figure that was not drawn, and why. */
export interface SkippedFigure {
  /** File name it would have had. */
  file: string;
  /** What it would show. */
  title: string;
  /** Why it was skipped. */
  reason: string;
}

/** Averages each run's (x -> y) points over the runs of a row, point by point. */
function meanCurve(list: readonly RunData[], extract: (run: RunData) => Map<number, number>) {
  const sums = new Map<number, number[]>();
  for (const run of list) {
    for (const [x, y] of extract(run)) {
      const ys = sums.get(x);
      if (ys === undefined) sums.set(x, [y]);
      else ys.push(y);
    }
  }
  return [...sums.entries()]
    .map(([x, ys]): [number, number] => [x, ys.reduce((a, b) => a + b, 0) / ys.length])
    .sort((a, b) => a[0] - b[0]);
}

/**
 * The selection reward an Improve summary reports: `improve/select_reward` (the selection half
 * of validation), or `improve/valid_reward` in logs written before the split existed.
 */
function improveReward(r: Record<string, unknown>): number {
  const value = r["improve/select_reward"] ?? r["improve/valid_reward"];
  return finite(value) ? value : NaN;
}

/** Improve summaries: the records that carry `improve/index` and a selection reward. */
function improveRecords(run: RunData): Record<string, unknown>[] {
  return run.records.filter((r) => finite(r["improve/index"]) && finite(improveReward(r)));
}

function seriesName(row: string, list: readonly RunData[]): string {
  return list.length > 1 ? `${row} (mean of ${list.length} seeds)` : row;
}

type FigurePlan = { spec: ChartSpec | ChartSpec[]; title: string } | { reason: string };

function improveFigure(groups: Map<string, RunData[]>): FigurePlan {
  const series = [...groups].map(([row, list]) => ({
    name: seriesName(row, list),
    points: meanCurve(list, (run) =>
      new Map(
        improveRecords(run).map((r) => [
          r["improve/index"] as number,
          100 * improveReward(r),
        ]),
      )),
  })).filter((s) => s.points.length > 0);
  const spec: ChartSpec = {
    title: "Reward per Improve step (paper's Figure 3)",
    xLabel: "Improve step (counted over all Grow steps)",
    yLabel: "Selection reward (x100)",
    integerX: true,
    series,
  };
  return hasDrawablePoints(spec)
    ? { spec, title: spec.title }
    : { reason: "no run logged an Improve step (`improve/index` with `improve/select_reward`)" };
}

function growFigure(groups: Map<string, RunData[]>): FigurePlan {
  const perGrow = (run: RunData) => {
    // The last Improve summary of each Grow step holds the reward after that Grow step.
    const byGrow = new Map<number, { index: number; reward: number }>();
    for (const r of improveRecords(run)) {
      const g = r["improve/grow"];
      if (!finite(g)) continue;
      const index = r["improve/index"] as number;
      const previous = byGrow.get(g);
      if (previous === undefined || index >= previous.index) {
        byGrow.set(g, { index, reward: 100 * improveReward(r) });
      }
    }
    return new Map([...byGrow].map(([g, v]) => [g, v.reward]));
  };
  const series = [...groups].map(([row, list]) => ({
    name: seriesName(row, list),
    points: meanCurve(list, perGrow),
  })).filter((s) => s.points.length > 0);
  const spec: ChartSpec = {
    title: "Reward per Grow step (paper's Figure 4)",
    xLabel: "Grow step G",
    yLabel: "Validation reward after the last Improve step (x100)",
    integerX: true,
    series,
  };
  return hasDrawablePoints(spec)
    ? { spec, title: spec.title }
    : { reason: "no run logged an Improve step with its Grow step (`improve/grow`)" };
}

const BEST_OF_N = /^bon\/valid_(reward|chrf)@(\d+)$/;

function bestOfNFigure(groups: Map<string, RunData[]>): FigurePlan {
  const curve = (metric: "reward" | "chrf", scale: number) => (run: RunData) => {
    const points = new Map<number, number>();
    for (const [key, value] of Object.entries(run.values)) {
      const match = BEST_OF_N.exec(key);
      if (match && match[1] === metric && Number(match[2]) > 0) {
        points.set(Number(match[2]), scale * value);
      }
    }
    return points;
  };
  const seriesOf = (metric: "reward" | "chrf", scale: number) =>
    [...groups].map(([row, list]) => ({
      name: seriesName(row, list),
      points: meanCurve(list, curve(metric, scale)),
    })).filter((s) => s.points.length > 0);
  const reward: ChartSpec = {
    title: "Best-of-N validation reward (paper's Figure 6)",
    xLabel: "N (samples per source, log2 scale)",
    yLabel: "Reward of the best of N samples (x100)",
    xScale: "log2",
    series: seriesOf("reward", 100),
  };
  // The picks' chrF against the references shows whether the reward model is being gamed.
  const chrf: ChartSpec = {
    title: "Best-of-N: chrF of the picks against the references",
    xLabel: "N (samples per source, log2 scale)",
    yLabel: "Corpus chrF of the best of N samples",
    xScale: "log2",
    series: seriesOf("chrf", 1),
  };
  if (!hasDrawablePoints(reward)) {
    return { reason: "no run logged Best-of-N results (`bon/valid_reward@N`)" };
  }
  return { spec: [reward, chrf].filter(hasDrawablePoints), title: reward.title };
}

function ppoFigure(runs: readonly RunData[]): FigurePlan {
  const withPpo = runs.filter((run) => run.records.some((r) => "ppo/reward" in r || "ppo/kl" in r));
  // x: the logged step when every PPO record has one, else the iteration count.
  const ppoRecords = (run: RunData) =>
    run.records.filter((r) => finite(r["ppo/reward"]) || finite(r["ppo/kl"]));
  const bySteps = withPpo.every((run) => ppoRecords(run).every((r) => finite(r.step)));
  const curve = (run: RunData, key: string, scale: number) =>
    ppoRecords(run).flatMap((r, i): [number, number][] =>
      finite(r[key]) ? [[bySteps ? r.step as number : i + 1, scale * r[key]]] : []
    );
  const xLabel = bySteps ? "Training step" : "PPO iteration";
  const reward: ChartSpec = {
    title: "PPO: average sampled reward during training",
    xLabel,
    yLabel: "Reward (x100)",
    integerX: true,
    series: withPpo.map((run) => ({ name: run.name, points: curve(run, "ppo/reward", 100) })),
  };
  const kl: ChartSpec = {
    title: "PPO: KL(policy || BC policy) during training",
    xLabel,
    yLabel: "KL (nats per sequence)",
    integerX: true,
    series: withPpo.map((run) => ({ name: run.name, points: curve(run, "ppo/kl", 1) })),
  };
  const panels = [reward, kl].filter(hasDrawablePoints);
  return panels.length > 0
    ? { spec: panels, title: "PPO reward and KL over training" }
    : { reason: "no run logged PPO training metrics (`ppo/reward`, `ppo/kl`)" };
}

/** Draws every figure that has data; lists the others with the reason they were skipped. */
export function buildFigures(runs: readonly RunData[]): {
  figures: Figure[];
  skipped: SkippedFigure[];
} {
  const groups = groupRuns(runs);
  const plans: [string, string, FigurePlan][] = [
    [REPORT_FILES.improve, "Reward per Improve step (Figure 3)", improveFigure(groups)],
    [REPORT_FILES.grow, "Reward per Grow step (Figure 4)", growFigure(groups)],
    [REPORT_FILES.bestOfN, "Best-of-N (Figure 6)", bestOfNFigure(groups)],
    [REPORT_FILES.ppo, "PPO reward and KL over training", ppoFigure(runs)],
  ];
  const figures: Figure[] = [];
  const skipped: SkippedFigure[] = [];
  for (const [file, title, plan] of plans) {
    if ("reason" in plan) {
      skipped.push({ file, title, reason: plan.reason });
    } else {
      const specs = Array.isArray(plan.spec) ? plan.spec : [plan.spec];
      const svg = specs.length === 1 ? lineChart(specs[0]) : stackedCharts(specs, plan.title);
      figures.push({ file, title, svg });
    }
  }
  return { figures, skipped };
}
