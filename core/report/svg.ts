/**
 * A small, dependency-free writer of SVG line charts for experiment reports.
 *
 * {@link lineChart} draws one chart (title, axes with ticks and numbers, axis labels, a
 * legend to the right of the plot, one coloured line with point markers per series);
 * {@link stackedCharts} stacks several such panels in one file. The layout estimates text
 * widths from the font size, so tick labels are thinned until they cannot overlap and the
 * legend and title get the room their text needs. Output is plain, well-formed SVG 1.1
 * that any browser displays.
 *
 * ```ts
 * import { lineChart } from "./svg.ts";
 * const svg = lineChart({
 *   title: "Reward per Improve step",
 *   xLabel: "Improve step",
 *   yLabel: "Average reward (x100)",
 *   integerX: true,
 *   series: [{ name: "rest", points: [[1, 71.2], [2, 74.0], [3, 75.1]] }],
 * });
 * if (!svg.startsWith("<svg")) throw new Error("not an SVG document");
 * ```
 *
 * @module
 */

import { maxOf, minOf } from "../append.ts";

/** One line of a chart: a name for the legend and its (x, y) points. */
export interface Series {
  /** Shown in the legend (and in each point's hover title). */
  name: string;
  /** Points; those with a non-finite coordinate (or x <= 0 on a log2 axis) are left out. */
  points: ReadonlyArray<readonly [number, number]>;
}

/** What to draw. */
export interface ChartSpec {
  /** Title above the plot. */
  title: string;
  /** Label under the x axis. */
  xLabel: string;
  /** Label left of the y axis (drawn rotated). */
  yLabel: string;
  /** The lines. At least one must have a drawable point. */
  series: readonly Series[];
  /** `log2` places x at log2(x) and puts ticks at powers of two (default `linear`). */
  xScale?: "linear" | "log2";
  /** Ticks on the x axis at whole numbers only (steps, indices). */
  integerX?: boolean;
  /** Width of the plotting area in pixels (default 480). */
  plotWidth?: number;
  /** Height of the plotting area in pixels (default 280). */
  plotHeight?: number;
}

/** Colour-blind-safe palette (Okabe and Ito), without the yellow that is too light on white. */
const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];
/** Dash patterns, cycled once the colours run out so that every series stays distinct. */
const DASHES = ["", "6 3", "2 3", "8 3 2 3"];

const FONT = 12;
const TITLE_FONT = 15;
const LABEL_FONT = 13;
const LEGEND_ROW = 18;
const LEGEND_SWATCH = 24;
const LEGEND_MAX_CHARS = 48;

/** Escapes text for use in SVG element content and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) =>
      c === "&"
        ? "&amp;"
        : c === "<"
        ? "&lt;"
        : c === ">"
        ? "&gt;"
        : c === '"'
        ? "&quot;"
        : "&#39;",
  );
}

/** A generous estimate of the rendered width of `text` in a sans-serif font of `size` px. */
function textWidth(text: string, size: number): number {
  return text.length * size * 0.62;
}

/** Rounds a coordinate to 0.01 px to keep files small. */
function px(value: number): string {
  return String(Math.round(value * 100) / 100);
}

/**
 * "Nice" tick positions covering [min, max]: steps of 1, 2 or 5 times a power of ten, about
 * `target` of them. With `integer`, the step is at least 1.
 */
export function niceTicks(min: number, max: number, target: number, integer = false): number[] {
  if (!(Number.isFinite(min) && Number.isFinite(max)) || min > max) {
    throw new RangeError(`niceTicks: bad range [${min}, ${max}]`);
  }
  if (min === max) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.05;
    min -= pad;
    max += pad;
  }
  const raw = (max - min) / Math.max(1, target);
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  let step = (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
  if (integer) step = Math.max(1, Math.round(step));
  const first = Math.floor(min / step + 1e-9) * step;
  const last = Math.ceil(max / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let i = 0; first + i * step <= last + step * 1e-9; i++) {
    // Rounding to the step's precision avoids labels such as 0.30000000000000004.
    ticks.push(Number((first + i * step).toPrecision(12)));
  }
  return ticks;
}

/** Decimals needed to tell ticks `step` apart. */
function decimalsFor(step: number): number {
  if (!(step > 0)) return 0;
  return Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
}

/** A tick label: fixed decimals, no "-0". */
function formatTick(value: number, decimals: number): string {
  const text = (value + 0).toFixed(decimals);
  return /^-0(\.0*)?$/.test(text) ? text.slice(1) : text;
}

interface Axis {
  /** Domain in axis units (log2(x) on a log axis). */
  lo: number;
  hi: number;
  /** Tick positions in axis units, and their labels. */
  ticks: { at: number; label: string }[];
}

function linearAxis(min: number, max: number, target: number, integer: boolean): Axis {
  const values = niceTicks(min, max, target, integer);
  const step = values.length > 1 ? values[1] - values[0] : 1;
  const decimals = integer ? 0 : decimalsFor(step);
  return {
    lo: values[0],
    hi: values[values.length - 1],
    ticks: values.map((v) => ({ at: v, label: formatTick(v, decimals) })),
  };
}

function log2Axis(min: number, max: number, target: number): Axis {
  let lo = Math.floor(Math.log2(min) + 1e-9);
  let hi = Math.ceil(Math.log2(max) - 1e-9);
  if (lo === hi) {
    lo -= 1;
    hi += 1;
  }
  const every = Math.max(1, Math.ceil((hi - lo) / Math.max(1, target)));
  const ticks: Axis["ticks"] = [];
  for (let e = lo; e <= hi; e += every) ticks.push({ at: e, label: String(2 ** e) });
  return { lo, hi, ticks };
}

/** An axis domain widened by 4% on each side. */
function padded(axis: Axis): [number, number] {
  const pad = (axis.hi - axis.lo) * 0.04 || 0.5;
  return [axis.lo - pad, axis.hi + pad];
}

/** The x axis with as many ticks as fit without their labels touching. */
function fitXAxis(spec: ChartSpec, min: number, max: number, width: number): Axis {
  for (let target = 10; target >= 1; target--) {
    const axis = spec.xScale === "log2"
      ? log2Axis(min, max, target)
      : linearAxis(min, max, target, spec.integerX ?? false);
    const widest = maxOf(axis.ticks.map((t) => textWidth(t.label, FONT)));
    const spacing = width / Math.max(1, axis.ticks.length - 1);
    if (axis.ticks.length <= 1 || widest + 8 <= spacing) return axis;
  }
  return spec.xScale === "log2" ? log2Axis(min, max, 1) : linearAxis(min, max, 1, true);
}

/** The drawable points of each series, in axis units, sorted by x. */
function drawable(spec: ChartSpec): { name: string; points: [number, number][] }[] {
  const log = spec.xScale === "log2";
  return spec.series.map((s) => ({
    name: s.name,
    points: s.points
      .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!log || x > 0))
      .map(([x, y]): [number, number] => [log ? Math.log2(x) : x, y])
      .sort((a, b) => a[0] - b[0]),
  }));
}

/** Whether a chart would have at least one point to draw. */
export function hasDrawablePoints(spec: ChartSpec): boolean {
  return drawable(spec).some((s) => s.points.length > 0);
}

function shorten(name: string): string {
  return name.length > LEGEND_MAX_CHARS ? `${name.slice(0, LEGEND_MAX_CHARS - 1)}…` : name;
}

/** One rendered panel: SVG elements positioned from (0, 0), and its size. */
interface Panel {
  body: string;
  width: number;
  height: number;
}

function renderPanel(spec: ChartSpec): Panel {
  const series = drawable(spec);
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) {
    throw new RangeError(`chart "${spec.title}": no series has a finite point to draw`);
  }
  const plotWidth = spec.plotWidth ?? 480;
  const legendNames = spec.series.map((s) => shorten(s.name));
  const legendHeight = legendNames.length * LEGEND_ROW;
  // Tall enough for the legend and for the rotated y label.
  const plotHeight = Math.max(
    spec.plotHeight ?? 280,
    legendHeight,
    textWidth(spec.yLabel, LABEL_FONT) + 10,
  );

  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  // The log axis works on exponents already; fitXAxis wants the original values.
  const xMin = minOf(xs), xMax = maxOf(xs);
  const xAxis = spec.xScale === "log2"
    ? fitXAxis(spec, 2 ** xMin, 2 ** xMax, plotWidth)
    : fitXAxis(spec, xMin, xMax, plotWidth);
  const yAxis = linearAxis(minOf(ys), maxOf(ys), Math.max(3, plotHeight / 50), false);

  const yTickWidth = maxOf(yAxis.ticks.map((t) => textWidth(t.label, FONT)));
  const left = 10 + LABEL_FONT + 10 + yTickWidth + 8;
  const top = 14 + TITLE_FONT + 14;
  const legendWidth = LEGEND_SWATCH + 8 + maxOf(legendNames.map((n) => textWidth(n, FONT)));
  const right = 24 + legendWidth + 12;
  const bottom = 8 + FONT + 12 + LABEL_FONT + 10;
  const width = Math.max(left + plotWidth + right, textWidth(spec.title, TITLE_FONT) + 20);
  const height = top + plotHeight + bottom;

  // A small margin inside the frame keeps markers on the outermost ticks off the axes.
  const [x0, x1] = padded(xAxis), [y0, y1] = padded(yAxis);
  const sx = (x: number) => left + ((x - x0) / (x1 - x0)) * plotWidth;
  const sy = (y: number) => top + plotHeight - ((y - y0) / (y1 - y0)) * plotHeight;

  const out: string[] = [];
  out.push(
    `<text x="${px(width / 2)}" y="${
      px(14 + TITLE_FONT)
    }" text-anchor="middle" font-size="${TITLE_FONT}" font-weight="bold">${
      escapeXml(spec.title)
    }</text>`,
  );
  // Grid lines and ticks.
  for (const t of yAxis.ticks) {
    const y = px(sy(t.at));
    out.push(
      `<line x1="${px(left)}" y1="${y}" x2="${px(left + plotWidth)}" y2="${y}" stroke="#e4e4e4"/>`,
    );
    out.push(`<line x1="${px(left - 5)}" y1="${y}" x2="${px(left)}" y2="${y}" stroke="#333"/>`);
    out.push(
      `<text x="${px(left - 8)}" y="${
        px(sy(t.at) + FONT * 0.35)
      }" text-anchor="end" font-size="${FONT}">${escapeXml(t.label)}</text>`,
    );
  }
  for (const t of xAxis.ticks) {
    const x = px(sx(t.at));
    const base = top + plotHeight;
    out.push(`<line x1="${x}" y1="${px(top)}" x2="${x}" y2="${px(base)}" stroke="#e4e4e4"/>`);
    out.push(`<line x1="${x}" y1="${px(base)}" x2="${x}" y2="${px(base + 5)}" stroke="#333"/>`);
    out.push(
      `<text x="${x}" y="${px(base + 8 + FONT)}" text-anchor="middle" font-size="${FONT}">${
        escapeXml(t.label)
      }</text>`,
    );
  }
  // Plot frame (the axes).
  out.push(
    `<rect x="${px(left)}" y="${px(top)}" width="${px(plotWidth)}" height="${
      px(plotHeight)
    }" fill="none" stroke="#333"/>`,
  );
  // Axis labels.
  out.push(
    `<text x="${px(left + plotWidth / 2)}" y="${
      px(top + plotHeight + 8 + FONT + 12 + LABEL_FONT)
    }" text-anchor="middle" font-size="${LABEL_FONT}">${escapeXml(spec.xLabel)}</text>`,
  );
  const yLabelX = 10 + LABEL_FONT;
  const yLabelY = top + plotHeight / 2;
  out.push(
    `<text x="${px(yLabelX)}" y="${
      px(yLabelY)
    }" text-anchor="middle" font-size="${LABEL_FONT}" transform="rotate(-90 ${px(yLabelX)} ${
      px(yLabelY)
    })">${escapeXml(spec.yLabel)}</text>`,
  );
  // Lines, markers and legend entries.
  const legendX = left + plotWidth + 24;
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const dash = DASHES[Math.floor(i / COLOURS.length) % DASHES.length];
    const dashAttr = dash ? ` stroke-dasharray="${dash}"` : "";
    const original = spec.series[i];
    const coords = s.points.map(([x, y]) => `${px(sx(x))},${px(sy(y))}`).join(" ");
    out.push(`<g class="series" data-name="${escapeXml(s.name)}">`);
    if (s.points.length > 1) {
      out.push(
        `<polyline points="${coords}" fill="none" stroke="${colour}" stroke-width="2"${dashAttr}/>`,
      );
    }
    for (const [x, y] of s.points) {
      const shownX = spec.xScale === "log2" ? 2 ** x : x;
      out.push(
        `<circle cx="${px(sx(x))}" cy="${px(sy(y))}" r="3.5" fill="${colour}"><title>${
          escapeXml(
            `${original.name}: (${Number(shownX.toPrecision(6))}, ${Number(y.toPrecision(6))})`,
          )
        }</title></circle>`,
      );
    }
    out.push("</g>");
    const ly = top + i * LEGEND_ROW + LEGEND_ROW / 2;
    out.push(
      `<line x1="${px(legendX)}" y1="${px(ly)}" x2="${px(legendX + LEGEND_SWATCH)}" y2="${
        px(ly)
      }" stroke="${colour}" stroke-width="2"${dashAttr}/>`,
    );
    out.push(
      `<circle cx="${px(legendX + LEGEND_SWATCH / 2)}" cy="${px(ly)}" r="3.5" fill="${colour}"/>`,
    );
    out.push(
      `<text x="${px(legendX + LEGEND_SWATCH + 8)}" y="${
        px(ly + FONT * 0.35)
      }" font-size="${FONT}">${escapeXml(legendNames[i])}</text>`,
    );
  });
  return { body: out.join("\n"), width, height };
}

function svgDocument(width: number, height: number, title: string, body: string): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="${px(width)}" height="${
      px(height)
    }" viewBox="0 0 ${px(width)} ${px(height)}" font-family="Helvetica, Arial, sans-serif">`,
    `<title>${escapeXml(title)}</title>`,
    `<rect x="0" y="0" width="${px(width)}" height="${px(height)}" fill="#ffffff"/>`,
    body,
    "</svg>",
    "",
  ].join("\n");
}

/**
 * One chart as a complete SVG document.
 *
 * @throws {RangeError} when no series has a drawable point.
 */
export function lineChart(spec: ChartSpec): string {
  const panel = renderPanel(spec);
  return svgDocument(panel.width, panel.height, spec.title, panel.body);
}

/**
 * Several charts stacked vertically in one SVG document (e.g. PPO's reward and KL).
 *
 * @throws {RangeError} when `specs` is empty or a chart has no drawable point.
 */
export function stackedCharts(specs: readonly ChartSpec[], title: string): string {
  if (specs.length === 0) throw new RangeError("stackedCharts: no charts");
  const panels = specs.map(renderPanel);
  const width = maxOf(panels.map((p) => p.width));
  let y = 0;
  const parts: string[] = [];
  for (const panel of panels) {
    // Centre narrower panels so their titles stay centred on the page.
    const dx = (width - panel.width) / 2;
    parts.push(`<g transform="translate(${px(dx)} ${px(y)})">\n${panel.body}\n</g>`);
    y += panel.height;
  }
  return svgDocument(width, y, title, parts.join("\n"));
}
