/**
 * Policy checkpoints: `<name>.bin` (all weights, float32 little-endian) and `<name>.json`
 * (architecture config, weight index, metadata, byte count and SHA-256 of the .bin).
 * Both files are written atomically, the .json last, so a checkpoint whose .json exists is
 * complete; a truncated or altered .bin is detected by its checksum and named.
 *
 * @module
 */

import { join } from "node:path";
import { UserError } from "./errors.ts";
import type { PolicyState } from "./policy.ts";
import { exists, writeFileAtomic } from "./run.ts";

/** SHA-256 of bytes, as hex. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

interface CheckpointIndex {
  format: "rest-policy";
  version: 1;
  config: Record<string, unknown>;
  weights: PolicyState["weights"];
  bytes: number;
  sha256: string;
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
  const index: CheckpointIndex = {
    format: "rest-policy",
    version: 1,
    config: state.config,
    weights: state.weights,
    bytes: bytes.byteLength,
    sha256: await sha256Hex(bytes),
    meta,
  };
  await writeFileAtomic(join(dir, `${name}.bin`), bytes);
  await writeFileAtomic(join(dir, `${name}.json`), JSON.stringify(index) + "\n");
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
  const binPath = join(dir, `${name}.bin`);
  let index: CheckpointIndex;
  try {
    index = JSON.parse(await Deno.readTextFile(jsonPath));
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound ? "not found" : "not valid JSON";
    throw new UserError(`checkpoint ${jsonPath}: ${reason}`);
  }
  if (index.format !== "rest-policy" || index.version !== 1 || !Array.isArray(index.weights)) {
    throw new UserError(`checkpoint ${jsonPath}: not a policy checkpoint (format/version)`);
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(binPath);
  } catch {
    throw new UserError(`checkpoint ${binPath}: missing (its index ${jsonPath} exists)`);
  }
  if (bytes.byteLength !== index.bytes) {
    throw new UserError(
      `checkpoint ${binPath}: ${bytes.byteLength} bytes, expected ${index.bytes} (truncated?)`,
    );
  }
  if (await sha256Hex(bytes) !== index.sha256) {
    throw new UserError(`checkpoint ${binPath}: checksum mismatch (the file is corrupt)`);
  }
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return {
    state: { config: index.config, weights: index.weights, data },
    meta: index.meta ?? {},
  };
}
