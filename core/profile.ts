/**
 * Where a run's time goes: for each phase (BC, reward training, Grow sampling, Grow
 * scoring, Improve, PPO rollouts, PPO updates, evaluation) the wall time, the process's
 * CPU time split into user and system, the time inside GEMM calls (counted by the backend
 * that does them) and the work done in the phase's own units (tokens, samples, rows).
 *
 * Phases nest (an evaluation inside an Improve step, BC trained on first use inside reward
 * training); time is charged to the innermost open phase only, so the phases' times add up
 * to the time profiled and nothing is counted twice. Time outside every phase is `other`.
 *
 * There is one profiler per process ({@link profiler}): the framework runs one run at a
 * time, and the kernels that report GEMM time have no run context to pass it through.
 *
 * @module
 */

import process from "node:process";

/** The profile of one phase. */
export interface PhaseProfile {
  /** Wall-clock seconds. */
  seconds: number;
  /** CPU seconds in user mode (every thread of the process). */
  userSeconds: number;
  /** CPU seconds in the kernel (system calls, page faults, thread yields). */
  systemSeconds: number;
  /** Wall-clock seconds inside GEMM calls. */
  gemmSeconds: number;
  /** Times the phase was entered. */
  calls: number;
  /** Work done, per unit (`tokens`, `samples`, `rows`, ...). */
  units: Record<string, number>;
}

/** Time outside every phase. */
const OTHER = "other";

interface Mark {
  wall: number;
  user: number;
  system: number;
  gemm: number;
}

let gemmMs = 0;

/** Adds `ms` milliseconds spent inside one GEMM call (called by backends). */
export function addGemmTime(ms: number): void {
  gemmMs += ms;
}

/** Accumulates {@link PhaseProfile}s; see the module's description. */
export class Profiler {
  #phases = new Map<string, PhaseProfile>();
  #stack: string[] = [];
  #mark: Mark = now();

  /** Runs `work` as phase `name` (nested inside whatever phase is open). */
  async phase<T>(name: string, work: () => Promise<T>): Promise<T> {
    this.#charge();
    this.#stack.push(name);
    this.#entry(name).calls++;
    try {
      return await work();
    } finally {
      this.#charge();
      this.#stack.pop();
    }
  }

  /** Records `amount` units of work done in the innermost open phase. */
  count(amount: number, unit: string): void {
    const units = this.#entry(this.#stack.at(-1) ?? OTHER).units;
    units[unit] = (units[unit] ?? 0) + amount;
  }

  /** The phases so far (the open ones charged up to now), by name. */
  snapshot(): Record<string, PhaseProfile> {
    this.#charge();
    return Object.fromEntries(
      [...this.#phases].map(([name, p]) => [name, { ...p, units: { ...p.units } }]),
    );
  }

  /** Forgets every phase; time from now on is charged afresh. */
  reset(): void {
    this.#phases.clear();
    this.#mark = now();
  }

  #entry(name: string): PhaseProfile {
    let entry = this.#phases.get(name);
    if (entry === undefined) {
      entry = emptyPhase();
      this.#phases.set(name, entry);
    }
    return entry;
  }

  /** Charges the time since the last mark to the innermost open phase. */
  #charge(): void {
    const mark = now();
    const entry = this.#entry(this.#stack.at(-1) ?? OTHER);
    entry.seconds += (mark.wall - this.#mark.wall) / 1000;
    entry.userSeconds += (mark.user - this.#mark.user) / 1e6;
    entry.systemSeconds += (mark.system - this.#mark.system) / 1e6;
    entry.gemmSeconds += (mark.gemm - this.#mark.gemm) / 1000;
    this.#mark = mark;
  }
}

/** A phase with nothing charged to it yet. */
function emptyPhase(): PhaseProfile {
  return { seconds: 0, userSeconds: 0, systemSeconds: 0, gemmSeconds: 0, calls: 0, units: {} };
}

function now(): Mark {
  const cpu = process.cpuUsage();
  return { wall: performance.now(), user: cpu.user, system: cpu.system, gemm: gemmMs };
}

/** The process's profiler. */
export const profiler: Profiler = new Profiler();

/** Sums profiles phase by phase (runs of one experiment into the experiment's). */
export function mergeProfiles(
  profiles: readonly Record<string, PhaseProfile>[],
): Record<string, PhaseProfile> {
  const out: Record<string, PhaseProfile> = {};
  for (const profile of profiles) {
    for (const [name, p] of Object.entries(profile)) {
      const into = out[name] ??= emptyPhase();
      into.seconds += p.seconds;
      into.userSeconds += p.userSeconds;
      into.systemSeconds += p.systemSeconds;
      into.gemmSeconds += p.gemmSeconds;
      into.calls += p.calls;
      for (const [unit, n] of Object.entries(p.units)) {
        into.units[unit] = (into.units[unit] ?? 0) + n;
      }
    }
  }
  return out;
}

/**
 * A plain-text table of a profile, longest phase first: wall seconds and share, throughput
 * in each unit, CPU cores busy (CPU time / wall time), the system share of CPU time and the
 * GEMM share of wall time.
 */
export function formatProfile(profile: Record<string, PhaseProfile>): string[] {
  const total = Object.values(profile).reduce((sum, p) => sum + p.seconds, 0);
  const rows = Object.entries(profile)
    .filter(([, p]) => p.seconds >= 0.05)
    .sort((a, b) => b[1].seconds - a[1].seconds)
    .map(([name, p]) => {
      const cpu = p.userSeconds + p.systemSeconds;
      const rates = Object.entries(p.units)
        .map(([unit, n]) => `${formatRate(n / p.seconds)} ${unit}/s`)
        .join(", ");
      return [
        name,
        `${p.seconds.toFixed(1)} s`,
        `${(100 * p.seconds / total).toFixed(0)}%`,
        `${(cpu / p.seconds).toFixed(2)} cores`,
        `sys ${cpu > 0 ? (100 * p.systemSeconds / cpu).toFixed(0) : "0"}%`,
        `gemm ${(100 * p.gemmSeconds / p.seconds).toFixed(0)}%`,
        rates || "-",
      ];
    });
  const widths = rows.reduce(
    (w, row) => row.map((cell, i) => Math.max(w[i] ?? 0, cell.length)),
    [] as number[],
  );
  return rows.map((row) =>
    row.map((cell, i) => i === row.length - 1 ? cell : cell.padEnd(widths[i])).join("  ")
  );
}

function formatRate(rate: number): string {
  if (!Number.isFinite(rate)) return "-";
  return rate >= 100 ? Math.round(rate).toLocaleString("en-US") : rate.toPrecision(3);
}
