/**
 * Resumable units of work. A long computation (BC training, a ReST run, a PPO run) saves a
 * *unit state* after each unit of work it finishes: the policy's weights, any extra tensors
 * (optimizer moments, a loss's own variables), a small JSON `meta` with counters, and the
 * byte length of the run's `metrics.jsonl` at that moment. Restarting with `--resume`
 * loads the state, truncates `metrics.jsonl` back to that length (dropping lines logged by
 * the unfinished unit, which will be logged again) and continues, so the finished run's
 * files equal those of an uninterrupted run.
 *
 * States are policy checkpoints (core/checkpoint.ts: atomic, checksummed); extra tensors are
 * stored beside the policy's weights under names starting with `extra/`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { join } from "node:path";
import { hasCheckpoint, loadCheckpoint, removeCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { UserError } from "./errors.ts";
import { checkRegularFile, readRegularText } from "./fs.ts";
import type { Policy, PolicyState } from "./types.ts";
import { exists } from "./run.ts";

const EXTRA = "extra/";

/** A loaded unit state. */
export interface UnitState {
  /** The policy's weights. */
  policy: PolicyState;
  /** Extra tensors, in the order they were saved. */
  extras: Float32Array[];
  /** Counters and settings saved with the state. */
  meta: Record<string, unknown>;
  /** The state's index file (`<dir>/<name>.json`), for messages. */
  file: string;
}

/** Byte length of a file (0 when it does not exist). */
export async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return 0;
    throw error;
  }
}

/**
 * Saves a unit state `<dir>/<name>` atomically: the policy's weights, the values of
 * `extras`, `meta`, and the current length of `metricsPath` (when given).
 */
export async function saveUnitState(
  dir: string,
  name: string,
  policy: Policy,
  extras: readonly (tf.Tensor | Float32Array)[],
  meta: Record<string, unknown>,
  metricsPath?: string,
): Promise<void> {
  const base = policy.save();
  const arrays = extras.map((e) => e instanceof Float32Array ? e : e.dataSync() as Float32Array);
  const extraShapes = extras.map((e) => e instanceof Float32Array ? [e.length] : [...e.shape]);
  let total = base.data.length;
  for (const a of arrays) total += a.length;
  const data = new Float32Array(total);
  data.set(base.data, 0);
  const weights = [...base.weights];
  let offset = base.data.length;
  arrays.forEach((a, i) => {
    data.set(a, offset);
    weights.push({ name: `${EXTRA}${i}`, shape: extraShapes[i], offset });
    offset += a.length;
  });
  await saveCheckpoint(dir, name, { config: base.config, weights, data }, {
    ...meta,
    metricsBytes: metricsPath === undefined ? undefined : await fileSize(metricsPath),
  });
}

/**
 * Loads a unit state, or returns undefined when there is none. A corrupt state is
 * reported with its file name (never silently used).
 */
export async function loadUnitState(dir: string, name: string): Promise<UnitState | undefined> {
  if (!(await hasCheckpoint(dir, name))) return undefined;
  const file = join(dir, `${name}.json`);
  const { state, meta } = await loadCheckpoint(dir, name);
  const own = state.weights.filter((w) => !w.name.startsWith(EXTRA));
  const extraEntries = state.weights.filter((w) => w.name.startsWith(EXTRA));
  const position = (w: { name: string }) => Number(w.name.slice(EXTRA.length));
  const numbered = extraEntries.every((w) => /^\d+$/.test(w.name.slice(EXTRA.length))) &&
    new Set(extraEntries.map(position)).size === extraEntries.length;
  if (!numbered) {
    throw unitStateError(file, "its extra tensors are not numbered extra/0, extra/1, ...");
  }
  const extras = extraEntries
    .sort((a, b) => position(a) - position(b))
    .map((w) => state.data.slice(w.offset, w.offset + w.shape.reduce((x, y) => x * y, 1)));
  return { policy: { config: state.config, weights: own, data: state.data }, extras, meta, file };
}

/**
 * A {@link UserError} about a unit state file: names it, says what is wrong and how to go on
 * (delete it and that part of the run starts over).
 */
export function unitStateError(file: string, problem: string): UserError {
  return new UserError(
    `${file}: ${problem}; the resume state is corrupt or from another version: delete it to ` +
      `redo that part of the run from its start, or start without --resume in a new --out folder`,
  );
}

/** Kinds of meta fields checked by {@link checkMeta}; a trailing `?` also accepts null. */
export type MetaKind =
  | "count"
  | "number"
  | "number?"
  | "counts"
  | "numbers"
  | "object"
  | "object?";

function hasKind(value: unknown, kind: MetaKind): boolean {
  if (value === null && kind.endsWith("?")) return true;
  const isCount = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  switch (kind) {
    case "count":
      return isCount(value);
    case "number":
    case "number?":
      return typeof value === "number";
    case "counts":
      return Array.isArray(value) && value.every(isCount);
    case "numbers":
      return Array.isArray(value) && value.every((v) => typeof v === "number");
    case "object":
    case "object?":
      return typeof value === "object" && value !== null && !Array.isArray(value);
  }
}

/**
 * Checks the fields of a unit state's meta: `fields` maps dotted paths (`done.grow`) to their
 * kind. A path through a null value is accepted when its kind ends in `?`.
 *
 * @throws {UserError} naming the state file, the field, its value and the expected kind.
 */
export function checkMeta(saved: UnitState, fields: Record<string, MetaKind>): void {
  for (const [path, kind] of Object.entries(fields)) {
    let value: unknown = saved.meta;
    for (const key of path.split(".")) {
      if (value === null && kind.endsWith("?")) break;
      value = typeof value === "object" && value !== null
        ? (value as Record<string, unknown>)[key]
        : undefined;
    }
    if (!hasKind(value, kind)) {
      const shown = value === undefined ? "missing" : JSON.stringify(value)?.slice(0, 80);
      throw unitStateError(saved.file, `meta.${path} is ${shown}, expected ${describeKind(kind)}`);
    }
  }
}

function describeKind(kind: MetaKind): string {
  const base = {
    count: "an integer >= 0",
    number: "a number",
    counts: "an array of integers >= 0",
    numbers: "an array of numbers",
    object: "an object",
  }[kind.replace("?", "") as "count"];
  return kind.endsWith("?") ? `${base} or null` : base;
}

/**
 * Applies a loaded unit state with `apply` (loading the weights, optimizer moments,
 * counters): a mismatch found there (weights that do not fit the model, tensors of the wrong
 * size) is reported as a {@link UserError} naming the state file, not as an internal error.
 */
export async function applyUnitState<T>(
  saved: UnitState,
  apply: () => T | Promise<T>,
): Promise<T> {
  try {
    return await apply();
  } catch (error) {
    if (
      error instanceof UserError || error instanceof Deno.errors.NotCapable ||
      error instanceof Deno.errors.PermissionDenied
    ) throw error;
    throw unitStateError(saved.file, `it does not fit this run (${(error as Error).message})`);
  }
}

/**
 * Truncates `metrics.jsonl` to the length recorded in a unit state's meta (dropping what the
 * unfinished unit logged) and checks what is kept.
 *
 * @throws {UserError} naming the file when it is not a regular file, shorter than recorded
 *   (truncated) or holds a line that is not a JSON object (corrupt).
 */
export async function rewindMetrics(path: string, meta: Record<string, unknown>): Promise<void> {
  const bytes = meta.metricsBytes;
  if (bytes === undefined) return;
  const fix = "restore it, or start the run again without --resume in a new --out folder";
  if (typeof bytes !== "number" || !Number.isSafeInteger(bytes) || bytes < 0) {
    throw new UserError(
      `the resume state beside ${path} records a metrics length of ${JSON.stringify(bytes)}, ` +
        `not a byte count; ${fix}`,
    );
  }
  const size = bytes === 0 && !(await exists(path))
    ? 0
    : await checkRegularFile(path, { what: "metrics log" });
  if (size < bytes) {
    throw new UserError(
      `${path}: ${size} bytes, but the run's resume state recorded ${bytes}: the metrics log ` +
        `was truncated; ${fix}`,
    );
  }
  if (size > bytes) await Deno.truncate(path, bytes);
  if (bytes > 0) checkMetricsText(path, await readRegularText(path, { what: "metrics log" }), fix);
}

/**
 * Checks that every non-empty line of a metrics log is a JSON object.
 *
 * @throws {UserError} naming the file and line otherwise, with `fix` (what to do).
 */
export function checkMetricsText(path: string, text: string, fix: string): void {
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    let record: unknown;
    try {
      record = JSON.parse(lines[i]);
    } catch {
      record = undefined;
    }
    if (record === null || typeof record !== "object" || Array.isArray(record)) {
      throw new UserError(`${path}:${i + 1}: not a JSON object (corrupt metrics log); ${fix}`);
    }
  }
}

/**
 * Assigns saved values to variables (same order and sizes as when saved). With `file`, a
 * mismatch is a {@link UserError} naming that state file.
 */
export function assignExtras(
  variables: readonly tf.Variable[],
  values: readonly Float32Array[],
  file?: string,
) {
  const fail = (problem: string) =>
    file === undefined ? new RangeError(problem) : unitStateError(file, problem);
  if (variables.length !== values.length) {
    throw fail(`saved state has ${values.length} extra tensors, expected ${variables.length}`);
  }
  variables.forEach((v, i) => {
    if (values[i].length !== v.size) {
      throw fail(`saved extra tensor ${i} has ${values[i].length} values, expected ${v.size}`);
    }
    tf.tidy(() => v.assign(tf.tensor(values[i], v.shape, "float32")));
  });
}

/** Deletes a unit state (after the unit's final result is saved elsewhere). */
export function clearUnitState(dir: string, name: string): Promise<void> {
  return removeCheckpoint(dir, name);
}
