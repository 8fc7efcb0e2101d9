/**
 * Progress display for long work: a redrawn bar with rate and ETA on a terminal,
 * periodic plain lines otherwise (logs, CI).
 *
 * @module
 */

import type { Progress } from "./types.ts";

/** Where progress goes and how often plain lines are printed. */
export interface ProgressOptions {
  /** Writes text (default: standard error). */
  write?: (text: string) => void;
  /** Redraw in place (default: standard error is a terminal). */
  tty?: boolean;
  /** Seconds between plain lines when not on a terminal (default 10). */
  interval?: number;
  /** Clock in milliseconds (for tests). */
  now?: () => number;
}

const encoder = new TextEncoder();

function writeStderr(text: string): void {
  Deno.stderr.writeSync(encoder.encode(text));
}

/** Formats seconds as `1h02m`, `3m05s` or `12s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s >= 3600) {
    return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  }
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** Formats a rate with a k/M suffix. */
export function formatRate(rate: number): string {
  if (!Number.isFinite(rate)) return "?";
  if (rate >= 1e6) return `${(rate / 1e6).toFixed(1)}M`;
  if (rate >= 1e4) return `${(rate / 1e3).toFixed(1)}k`;
  if (rate >= 100) return rate.toFixed(0);
  return rate.toFixed(1);
}

/** Starts a progress display for `total` units of work. */
let tickHook: (() => void) | undefined;
let lastHook = 0;

/**
 * Registers a check run (at most every 200 ms) whenever any progress display ticks: long
 * work ticks often even while it never yields to the event loop, so this is where a worker
 * process notices that its launcher has gone.
 */
export function onProgressTick(check: (() => void) | undefined): void {
  tickHook = check;
}

function runTickHook(): void {
  if (tickHook === undefined) return;
  const t = performance.now();
  if (t - lastHook < 200) return;
  lastHook = t;
  tickHook();
}

let activity = "the experiment's set-up";

/**
 * Names what the experiment is doing now ("loading data", "run rest: grow 1"), for error
 * messages that say which step a plugin failed in.
 */
export function setActivity(label: string): void {
  activity = label;
}

/** What the experiment is doing now (see {@link setActivity}). */
export function currentActivity(): string {
  return activity;
}

/** Starts a progress display for `total` units of work labelled `label`. */
export function startProgress(
  label: string,
  total: number,
  unit = "items",
  options: ProgressOptions = {},
): Progress {
  const write = options.write ?? writeStderr;
  const tty = options.tty ?? Deno.stderr.isTerminal();
  const interval = (options.interval ?? 10) * 1000;
  const now = options.now ?? (() => performance.now());
  const start = now();
  let done = 0;
  let lastDraw = -Infinity;
  let finished = false;

  function line(): string {
    const elapsed = (now() - start) / 1000;
    const rate = elapsed > 0 ? done / elapsed : NaN;
    const remaining = total > done && rate > 0 ? (total - done) / rate : 0;
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : 100;
    const counts = `${done}/${total} ${unit}`;
    const timing = `${formatRate(rate)} ${unit}/s, ${formatDuration(elapsed)} elapsed, ETA ${
      formatDuration(remaining)
    }`;
    if (tty) {
      const width = 24;
      const filled = Math.round((pct / 100) * width);
      return `${label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${
        pct.toFixed(0).padStart(3)
      }% ${counts}, ${timing}`;
    }
    return `${label}: ${pct.toFixed(0)}% ${counts}, ${timing}`;
  }

  function draw(force: boolean): void {
    const t = now();
    if (tty) {
      if (!force && t - lastDraw < 100) return;
      write(`\r\x1b[2K${line()}`);
    } else {
      if (!force && t - lastDraw < interval) return;
      write(`${line()}\n`);
    }
    lastDraw = t;
  }

  return {
    tick(n = 1) {
      runTickHook();
      if (finished) return;
      done += n;
      draw(false);
    },
    done() {
      if (finished) return;
      finished = true;
      draw(true);
      if (tty) write("\n");
    },
  };
}
