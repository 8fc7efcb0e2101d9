/**
 * Policy checkpoints: `<name>-<hash>.bin` (all weights, float32 little-endian) and
 * `<name>.json` (architecture config, weight index, metadata, the .bin's file name, byte
 * count and SHA-256). The .bin is named by its content and written first, the .json is
 * replaced atomically last, so a checkpoint whose .json exists is complete and a crash at any
 * moment leaves either the old or the new checkpoint; a truncated or altered .bin is
 * detected by its checksum and named.
 *
 * @module
 */

import { join } from "node:path";
import { UserError } from "./errors.ts";
import { readRegularFile, readRegularText } from "./fs.ts";
import type { Policy, PolicyState } from "./types.ts";
import { exists, writeFileAtomic } from "./run.ts";

/** SHA-256 of bytes, as hex. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Largest index file read (its weight list grows with the number of tensors, not their size). */
const INDEX_MAX_BYTES = 64 << 20;

interface CheckpointIndex {
  format: "rest-policy";
  version: 1;
  config: Record<string, unknown>;
  weights: PolicyState["weights"];
  bytes: number;
  sha256: string;
  /** The weights file, relative to the .json (`<name>.bin` in checkpoints written before). */
  file?: string;
  meta: Record<string, unknown>;
}

/** Whether a complete checkpoint `<dir>/<name>` exists. */
export function hasCheckpoint(dir: string, name: string): Promise<boolean> {
  return exists(join(dir, `${name}.json`));
}

/** Writes a checkpoint atomically; `meta` is free-form JSON (step, metrics, ...). */
export async function saveCheckpoint(
  dir: string,
  name: string,
  state: PolicyState,
  meta: Record<string, unknown> = {},
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const bytes = new Uint8Array(state.data.buffer, state.data.byteOffset, state.data.byteLength);
  const sha256 = await sha256Hex(bytes);
  const file = `${name}-${sha256.slice(0, 16)}.bin`;
  const previous = await readIndex(join(dir, `${name}.json`)).catch(() => undefined);
  const index: CheckpointIndex = {
    format: "rest-policy",
    version: 1,
    config: state.config,
    weights: state.weights,
    bytes: bytes.byteLength,
    sha256,
    file,
    meta,
  };
  await writeFileAtomic(join(dir, file), bytes);
  await writeFileAtomic(join(dir, `${name}.json`), JSON.stringify(index) + "\n");
  const old = previous?.file ?? `${name}.bin`;
  if (old !== file) await Deno.remove(join(dir, old)).catch(() => {});
}

/** Reads an index file as JSON (no shape check): for replacing or removing a checkpoint. */
async function readIndex(path: string): Promise<CheckpointIndex> {
  return JSON.parse(await readRegularText(path, { maxBytes: INDEX_MAX_BYTES }));
}

/** What to do about a bad checkpoint: deleting its index makes the framework recompute it. */
function recomputeHint(jsonPath: string): string {
  return `delete ${jsonPath} to recompute it (that part of the work starts over)`;
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** The first thing wrong with a parsed index, in words, or undefined when it is well formed. */
function indexProblem(index: unknown): string | undefined {
  if (index === null || typeof index !== "object" || Array.isArray(index)) {
    return "not a JSON object";
  }
  const i = index as Record<string, unknown>;
  if (i.format !== "rest-policy" || i.version !== 1) {
    return `not a policy checkpoint (format ${JSON.stringify(i.format)}, version ${
      JSON.stringify(i.version)
    }; expected "rest-policy", 1)`;
  }
  if (i.config === null || typeof i.config !== "object" || Array.isArray(i.config)) {
    return "config must be an object";
  }
  if (!isCount(i.bytes) || i.bytes % 4 !== 0) {
    return `bytes must be a whole number of float32 values (got ${JSON.stringify(i.bytes)})`;
  }
  if (typeof i.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(i.sha256)) {
    return "sha256 must be 64 hex digits";
  }
  if (
    i.file !== undefined && (typeof i.file !== "string" || !/^[A-Za-z0-9_.-]+\.bin$/.test(i.file))
  ) {
    return `file must name a .bin file in the same folder (got ${JSON.stringify(i.file)})`;
  }
  if (
    i.meta !== undefined && (i.meta === null || typeof i.meta !== "object" || Array.isArray(i.meta))
  ) {
    return "meta must be an object";
  }
  if (!Array.isArray(i.weights)) return "weights must be an array";
  const values = i.bytes / 4;
  for (const [k, w] of (i.weights as unknown[]).entries()) {
    const entry = w as Record<string, unknown>;
    if (
      entry === null || typeof entry !== "object" || typeof entry.name !== "string" ||
      !Array.isArray(entry.shape) || !entry.shape.every(isCount) || !isCount(entry.offset)
    ) {
      return `weights[${k}] must be {name: string, shape: integers >= 0, offset: integer >= 0}`;
    }
    const size = (entry.shape as number[]).reduce((a, b) => a * b, 1);
    if (entry.offset + size > values) {
      return `weights[${k}] (${entry.name}) lies outside the ${values} values of the weights file`;
    }
  }
  return undefined;
}

/** Deletes checkpoint `<dir>/<name>` (its .json first, then its weights); absent is fine. */
export async function removeCheckpoint(dir: string, name: string): Promise<void> {
  const path = join(dir, `${name}.json`);
  const index = await readIndex(path).catch(() => undefined);
  await Deno.remove(path).catch(() => {});
  if (index !== undefined) {
    await Deno.remove(join(dir, index.file ?? `${name}.bin`)).catch(() => {});
  }
}

/**
 * Reads a checkpoint and verifies its size and checksum.
 *
 * @throws {UserError} naming the file when it is missing, truncated or corrupt.
 */
export async function loadCheckpoint(
  dir: string,
  name: string,
): Promise<{ state: PolicyState; meta: Record<string, unknown> }> {
  const jsonPath = join(dir, `${name}.json`);
  const text = await readRegularText(jsonPath, {
    what: "checkpoint index",
    maxBytes: INDEX_MAX_BYTES,
  });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new UserError(
      `checkpoint ${jsonPath}: not valid JSON (truncated or corrupt); ${recomputeHint(jsonPath)}`,
    );
  }
  const problem = indexProblem(parsed);
  if (problem !== undefined) {
    throw new UserError(`checkpoint ${jsonPath}: ${problem}; ${recomputeHint(jsonPath)}`);
  }
  const index = parsed as CheckpointIndex;
  const binPath = join(dir, index.file ?? `${name}.bin`);
  if (!(await exists(binPath))) {
    throw new UserError(
      `checkpoint ${binPath}: missing (its index ${jsonPath} exists); ${recomputeHint(jsonPath)}`,
    );
  }
  const bytes = await readRegularFile(binPath, { what: "checkpoint weights file" });
  if (bytes.byteLength !== index.bytes) {
    throw new UserError(
      `checkpoint ${binPath}: ${bytes.byteLength} bytes, expected ${index.bytes} (truncated?); ${
        recomputeHint(jsonPath)
      }`,
    );
  }
  if (await sha256Hex(bytes) !== index.sha256) {
    throw new UserError(
      `checkpoint ${binPath}: checksum mismatch (the file is corrupt); ${recomputeHint(jsonPath)}`,
    );
  }
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return {
    state: { config: index.config, weights: index.weights, data },
    meta: index.meta ?? {},
  };
}

/**
 * Loads checkpoint `<dir>/<name>` into `policy`; weights that do not fit the policy's model
 * are a {@link UserError} naming the checkpoint. Returns the checkpoint's metadata.
 */
export async function loadPolicyCheckpoint(
  policy: Policy,
  dir: string,
  name: string,
): Promise<Record<string, unknown>> {
  const { state, meta } = await loadCheckpoint(dir, name);
  try {
    policy.load(state);
  } catch (error) {
    if (error instanceof UserError) throw error;
    const jsonPath = join(dir, `${name}.json`);
    throw new UserError(
      `checkpoint ${jsonPath}: its weights do not fit this experiment's model (${
        (error as Error).message
      }); ${recomputeHint(jsonPath)}`,
    );
  }
  return meta;
}
