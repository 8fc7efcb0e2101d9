/**
 * Reading back what a reward's `prepare` saved, for its `restore` (on a queue worker): a
 * missing or unreadable file is a user error naming the reward and the file, and saying that
 * a worker loads what the experiment prepared, never trains it.
 *
 * @module
 */

import { UserError } from "../../core/errors.ts";
import { exists } from "../../core/run.ts";

/**
 * Fails unless `path` exists.
 *
 * @throws {UserError} naming `reward` and `path`.
 */
export async function requirePrepared(reward: string, path: string): Promise<void> {
  if (!(await exists(path))) {
    throw new UserError(
      `${reward} reward: ${path} is missing; restore() loads the files the experiment's ` +
        "prepare() saved and never trains: let the experiment prepare the reward first",
    );
  }
}

/**
 * The JSON object in `path`, which must carry `format` (the reward's file format).
 *
 * @throws {UserError} naming `reward` and `path` when the file is missing or not that format.
 */
export async function readPreparedJson(
  reward: string,
  path: string,
  format: string,
): Promise<Record<string, unknown>> {
  await requirePrepared(reward, path);
  let value: unknown;
  try {
    value = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    throw new UserError(`${reward} reward: ${path} is not JSON (${(error as Error).message})`);
  }
  const record = value as Record<string, unknown> | null;
  if (record === null || typeof record !== "object" || record.format !== format) {
    throw new UserError(`${reward} reward: ${path} is not a ${format} file`);
  }
  return record;
}
