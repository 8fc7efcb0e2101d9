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

async function readIndex(path: string): Promise<CheckpointIndex> {
  return JSON.parse(await Deno.readTextFile(path));
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
  let index: CheckpointIndex;
  try {
    index = await readIndex(jsonPath);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound ? "not found" : "not valid JSON";
    throw new UserError(`checkpoint ${jsonPath}: ${reason}`);
  }
  if (
    index === null || typeof index !== "object" || index.format !== "rest-policy" ||
    index.version !== 1 || !Array.isArray(index.weights) ||
    (index.file !== undefined && !/^[A-Za-z0-9_.-]+\.bin$/.test(index.file))
  ) {
    throw new UserError(`checkpoint ${jsonPath}: not a policy checkpoint (format/version)`);
  }
  const binPath = join(dir, index.file ?? `${name}.bin`);
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
