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
import { hasCheckpoint, loadCheckpoint, removeCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import type { Policy, PolicyState } from "./policy.ts";

const EXTRA = "extra/";

/** A loaded unit state. */
export interface UnitState {
  /** The policy's weights. */
  policy: PolicyState;
  /** Extra tensors, in the order they were saved. */
  extras: Float32Array[];
  /** Counters and settings saved with the state. */
  meta: Record<string, unknown>;
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
  const { state, meta } = await loadCheckpoint(dir, name);
  const own = state.weights.filter((w) => !w.name.startsWith(EXTRA));
  const extras = state.weights
    .filter((w) => w.name.startsWith(EXTRA))
    .sort((a, b) => Number(a.name.slice(EXTRA.length)) - Number(b.name.slice(EXTRA.length)))
    .map((w) => state.data.slice(w.offset, w.offset + w.shape.reduce((x, y) => x * y, 1)));
  return { policy: { config: state.config, weights: own, data: state.data }, extras, meta };
}

/** Truncates `metrics.jsonl` to the length recorded in a unit state's meta. */
export async function rewindMetrics(path: string, meta: Record<string, unknown>): Promise<void> {
  const bytes = meta.metricsBytes;
  if (typeof bytes !== "number") return;
  const size = await fileSize(path);
  if (size > bytes) await Deno.truncate(path, bytes);
}

/** Assigns saved values to variables (same order and sizes as when saved). */
export function assignExtras(variables: readonly tf.Variable[], values: readonly Float32Array[]) {
  if (variables.length !== values.length) {
    throw new RangeError(
      `saved state has ${values.length} extra tensors, expected ${variables.length}`,
    );
  }
  variables.forEach((v, i) => {
    if (values[i].length !== v.size) {
      throw new RangeError(
        `saved extra tensor ${i} has ${values[i].length} values, expected ${v.size}`,
      );
    }
    tf.tidy(() => v.assign(tf.tensor(values[i], v.shape, "float32")));
  });
}

/** Deletes a unit state (after the unit's final result is saved elsewhere). */
export function clearUnitState(dir: string, name: string): Promise<void> {
  return removeCheckpoint(dir, name);
}
