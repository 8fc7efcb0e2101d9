/**
 * Improve steps computed once per experiment. Runs of one experiment often repeat each
 * other's first Improve steps: ReST (G=1, I=0) is the first Improve step of ReST (G=1, I=4),
 * whose first four steps ReST (G=2, I=3) repeats. A step is identified by its lineage key, a
 * hash of everything its outcome depends on (the incoming policy's own lineage back to the
 * BC policy, the Grow pool, the threshold tau, the loss, the settings, the seeds); the first
 * run to take it stores the weights (and the loss's variables), the step's result and the
 * metrics records it logged under `shared/improve/<key>/`, and later runs with the same
 * key load them instead of training again. The stored copy is checked like a resume state
 * (shapes, sizes, checksums), and it also records the key's inputs, compared on load.
 *
 * @module
 */

import { join } from "node:path";
import { hashText } from "./hash.ts";
import { assignExtras, type UnitCheckpoint, unitCheckpoint } from "./resume.ts";
import type { Loss, Metrics, MetricsLog, Policy } from "./types.ts";

/** One metrics record a step logged, with its step. */
export interface LoggedRecord {
  /** The record. */
  record: Metrics;
  /** Its step on the run's metrics axis (absent: none given). */
  step?: number;
}

/** What a stored step gives back besides the weights. */
export interface SharedStep {
  /** The step's result (numbers; NaN comes back as null from the JSON file). */
  result: Record<string, number | null>;
  /** The metrics records it logged, in order. */
  records: LoggedRecord[];
  /** The line that summed the step up in the run's log. */
  summary: string;
}

/** The name of the stored state in a step's folder. */
const STATE = "step";

/** The lineage key of a unit of work: a hash of its inputs (any JSON value). */
export function lineageKey(inputs: unknown): string {
  return hashText(JSON.stringify(inputs));
}

/** The folder of the stored step `key` under the experiment's shared folder. */
export function sharedStepDir(sharedDir: string, key: string): string {
  return join(sharedDir, "improve", key);
}

/**
 * Loads stored step `key` into `policy` and the loss's variables (which the caller has
 * prepared), or returns undefined when there is none. A stored step whose recorded inputs
 * differ from `inputs` (a hash collision) is not used.
 *
 * @throws {UserError} when the stored state is corrupt (it names the file).
 */
export function loadSharedStep(
  dir: string,
  inputs: unknown,
  policy: Policy,
  loss: Loss,
): Promise<SharedStep | undefined> {
  return storedStep(dir, inputs, policy, loss).restore();
}

/** Stores the step `key` (the policy's and the loss's current values) atomically. */
export async function saveSharedStep(
  dir: string,
  inputs: unknown,
  policy: Policy,
  loss: Loss,
  step: SharedStep,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await storedStep(dir, inputs, policy, loss).save(step);
}

/** The stored step in `dir` as a unit state: the weights, the loss's variables, the inputs. */
function storedStep(
  dir: string,
  inputs: unknown,
  policy: Policy,
  loss: Loss,
): UnitCheckpoint<SharedStep> {
  return unitCheckpoint({ dir, name: STATE, resume: true }, policy, {
    encode: (step) => ({ extras: loss.variables, meta: { inputs, step } }),
    decode: (saved) =>
      JSON.stringify(saved.meta.inputs) === JSON.stringify(inputs)
        ? saved.meta.step as SharedStep
        : undefined,
    load: (saved) => assignExtras(loss.variables, saved.extras, saved.file),
  });
}

/** A metrics log that forwards to `target` and keeps what it was given. */
export function recordingLog(target: MetricsLog): MetricsLog & { records: LoggedRecord[] } {
  const records: LoggedRecord[] = [];
  return {
    records,
    log(record, step) {
      records.push(
        step === undefined ? { record: { ...record } } : { record: { ...record }, step },
      );
      return target.log(record, step);
    },
  };
}
