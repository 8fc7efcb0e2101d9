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
 * A loop sees one small interface, {@link UnitCheckpoint}: `restore()` once before it starts
 * (the weights, optimizer moments and variables put back, `metrics.jsonl` rewound, the
 * loop's counters returned), `save(state)` at its natural boundaries, `due()` for a policy
 * of saving every N seconds. What a loop stores and how it goes back is its
 * {@link UnitCodec}, written beside the loop; {@link unitCheckpoint} joins the two.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { join } from "node:path";
import { hasCheckpoint, loadCheckpoint, removeCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { UserError } from "./errors.ts";
import { savePolicy } from "./host_read.ts";
import { checkRegularFile, readRegularText } from "./fs.ts";
import type { Policy, PolicyState } from "./types.ts";
import { exists, parseMetrics } from "./run.ts";

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

/**
 * The save and restore of one unit of work (a training loop, a ReST or PPO run, a stored
 * Improve step) as the loop doing it sees them; `S` is what the loop carries from one unit
 * to the next besides the tensors it trains (its counters).
 */
export interface UnitCheckpoint<S> {
  /**
   * Puts the last saved state back (the policy's weights, and what the codec loads: optimizer
   * moments, variables), rewinds the metrics log to its length at that moment and returns
   * the loop's state; undefined when there is nothing to continue from, in which case a
   * resumed unit with a metrics log empties it (the unit starts over).
   *
   * @throws {UserError} naming the state file when it is corrupt or does not fit the run.
   */
  restore(): Promise<S | undefined>;
  /** Saves the current weights and tensors with `state`, atomically. */
  save(state: S): Promise<void>;
  /** Whether a save is due: `everySeconds` have passed since the last (or the start). */
  due(): boolean;
}

/** What a {@link UnitCodec} saves beside the policy's weights. */
export interface UnitEncoding {
  /** The tensors to save, in order (read asynchronously, so device tensors are fine). */
  extras: readonly (tf.Tensor | Float32Array)[];
  /** JSON-able meta holding the loop's state. */
  meta: Record<string, unknown>;
}

/** How a loop's state is stored in a unit state and put back: the loop's part of a save. */
export interface UnitCodec<S> {
  /** The tensors to save beside the policy's weights, in order, and the meta holding `state`. */
  encode(
    state: S,
  ): UnitEncoding | Promise<UnitEncoding>;
  /**
   * Checks a loaded state (its meta with {@link checkMeta}, its tensors' count) before anything
   * is applied, and returns the loop's state; undefined when the state was saved for other
   * inputs and must not be used.
   *
   * @throws {UserError} naming the state file ({@link unitStateError}) otherwise.
   */
  decode(saved: UnitState): S | undefined;
  /**
   * Puts the saved extra tensors back once the weights are loaded (optimizer moments, a loss's
   * variables); what fails here is reported as a state that does not fit the run.
   */
  load?(saved: UnitState, state: S): void;
  /** Called once a state is restored (a log line, the progress display). */
  resumed?(state: S): void;
}

/** Where a unit state lives, and when it is read and saved. */
export interface UnitPlace {
  /** The state's folder. */
  dir: string;
  /** The state's name (`<dir>/<name>.json`). */
  name: string;
  /** The metrics log the unit writes, rewound on restore (absent: the unit logs nothing). */
  metricsPath?: string;
  /** Look for a saved state (false: a new run, nothing is read or emptied). */
  resume: boolean;
  /** Seconds between saves, for {@link UnitCheckpoint.due} (absent: always due). */
  everySeconds?: number;
}

/**
 * The {@link UnitCheckpoint} of a unit of work whose state is `policy`'s weights plus what
 * `codec` stores, at `place`.
 */
export function unitCheckpoint<S>(
  place: UnitPlace,
  policy: Policy,
  codec: UnitCodec<S>,
): UnitCheckpoint<S> {
  const { dir, name, metricsPath } = place;
  let lastSave = performance.now();
  const startOver = async () => {
    // Nothing finished yet: start over with an empty log.
    if (metricsPath !== undefined) await Deno.truncate(metricsPath, 0).catch(() => {});
    return undefined;
  };
  return {
    async restore() {
      if (!place.resume) return undefined;
      const saved = await loadUnitState(dir, name);
      if (saved === undefined) return await startOver();
      const state = codec.decode(saved);
      if (state === undefined) return await startOver();
      await applyUnitState(saved, () => {
        policy.load(saved.policy);
        codec.load?.(saved, state);
      });
      if (metricsPath !== undefined) await rewindMetrics(metricsPath, saved.meta);
      codec.resumed?.(state);
      return state;
    },
    async save(state) {
      const { extras, meta } = await codec.encode(state);
      await saveUnitState(dir, name, policy, extras, meta, metricsPath);
      lastSave = performance.now();
    },
    due: () =>
      place.everySeconds === undefined ||
      performance.now() - lastSave >= place.everySeconds * 1000,
  };
}

/** The {@link UnitCheckpoint} of a unit that is not resumable: nothing to restore, never due. */
export function notResumable<S>(): UnitCheckpoint<S> {
  return {
    restore: () => Promise.resolve(undefined),
    save: () => Promise.resolve(),
    due: () => false,
  };
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
async function saveUnitState(
  dir: string,
  name: string,
  policy: Policy,
  extras: readonly (tf.Tensor | Float32Array)[],
  meta: Record<string, unknown>,
  metricsPath?: string,
): Promise<void> {
  const base = await savePolicy(policy);
  // data(), not dataSync(): a device backend (webgpu under Deno) cannot read synchronously.
  const arrays = await Promise.all(
    extras.map(async (e) => e instanceof Float32Array ? e : await e.data() as Float32Array),
  );
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
async function loadUnitState(dir: string, name: string): Promise<UnitState | undefined> {
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
async function applyUnitState<T>(
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
async function rewindMetrics(path: string, meta: Record<string, unknown>): Promise<void> {
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
  if (bytes > 0) parseMetrics(path, await readRegularText(path, { what: "metrics log" }), fix);
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
