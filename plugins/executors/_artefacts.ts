/**
 * The artefacts a queue worker needs to compute a Grow shard (the policy's weights and the
 * tokenizer's state), as content-addressed blobs: each is stored under the SHA-256 of its
 * bytes, in Redis or in a folder shared by the coordinator and the workers, and every blob a
 * worker fetches is checked against its hash before it is used (and cached by it).
 *
 * @module
 */

import { join } from "node:path";
import { Buffer } from "node:buffer";
import type { Redis } from "ioredis";
import { sha256Hex } from "../../core/checkpoint.ts";
import { DataError } from "../../core/errors.ts";
import type { PolicyState } from "../../core/types.ts";

/** Where blobs live: `redis` (keys `<prefix>:blob:<sha256>`) or a shared folder. */
export type BlobPlace = { kind: "redis"; prefix: string } | { kind: "folder"; path: string };

/** How long a blob stays in Redis after it was last stored (seconds): a day. */
const BLOB_TTL_SECONDS = 86_400;

/** A policy state as one byte string: a 4-byte header length, the JSON header, the weights. */
export function encodePolicy(state: PolicyState): Uint8Array {
  const header = new TextEncoder().encode(
    JSON.stringify({ config: state.config, weights: state.weights }),
  );
  const data = new Uint8Array(state.data.buffer, state.data.byteOffset, state.data.byteLength);
  const out = new Uint8Array(4 + header.length + data.length);
  new DataView(out.buffer).setUint32(0, header.length, true);
  out.set(header, 4);
  out.set(data, 4 + header.length);
  return out;
}

/**
 * Reads {@link encodePolicy}'s bytes back.
 *
 * @throws {DataError} when the bytes are not a policy state.
 */
export function decodePolicy(bytes: Uint8Array): PolicyState {
  const bad = (why: string) => new DataError(`policy artefact: ${why}`);
  if (bytes.length < 4) throw bad("shorter than its header");
  const length = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  if (4 + length > bytes.length || (bytes.length - 4 - length) % 4 !== 0) {
    throw bad("its sizes do not add up");
  }
  let header: { config: PolicyState["config"]; weights: PolicyState["weights"] };
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + length)));
  } catch {
    throw bad("its header is not JSON");
  }
  if (!Array.isArray(header?.weights) || typeof header.config !== "object") {
    throw bad("its header has no config and weights");
  }
  const data = new Float32Array(bytes.slice(4 + length).buffer);
  return { config: header.config, weights: header.weights, data };
}

/** Stores `bytes` under their SHA-256 (unless already there) and returns the hash. */
export async function putBlob(redis: Redis, place: BlobPlace, bytes: Uint8Array): Promise<string> {
  const sha = await sha256Hex(bytes);
  if (place.kind === "folder") {
    const path = join(place.path, sha);
    try {
      await Deno.stat(path);
    } catch {
      await Deno.mkdir(place.path, { recursive: true });
      const temp = `${path}.tmp-${Deno.pid}`;
      await Deno.writeFile(temp, bytes);
      await Deno.rename(temp, path);
    }
    return sha;
  }
  await redis.set(`${place.prefix}:blob:${sha}`, Buffer.from(bytes), "EX", BLOB_TTL_SECONDS);
  return sha;
}

/**
 * The blob `sha` from `cache` (a local folder) or, failing that, from its place (then
 * cached), checked against its hash.
 *
 * @throws {DataError} when the blob is missing or its bytes do not match the hash.
 */
export async function getBlob(
  redis: Redis,
  place: BlobPlace,
  sha: string,
  cache: string,
): Promise<Uint8Array> {
  if (!/^[0-9a-f]{64}$/.test(sha)) throw new DataError(`artefact hash ${sha} is not a SHA-256`);
  const cached = join(cache, sha);
  try {
    const bytes = await Deno.readFile(cached);
    if (await sha256Hex(bytes) === sha) return bytes;
  } catch { /* not cached yet */ }
  let bytes: Uint8Array | null;
  if (place.kind === "folder") {
    bytes = await Deno.readFile(join(place.path, sha)).catch(() => null);
  } else {
    const buffer = await redis.getBuffer(`${place.prefix}:blob:${sha}`);
    bytes = buffer === null ? null : new Uint8Array(buffer);
  }
  const where = place.kind === "folder" ? place.path : "the queue's Redis";
  if (bytes === null) throw new DataError(`artefact ${sha.slice(0, 16)} is not in ${where}`);
  if (await sha256Hex(bytes) !== sha) {
    throw new DataError(`artefact ${sha.slice(0, 16)} from ${where} does not match its hash`);
  }
  await Deno.mkdir(cache, { recursive: true });
  const temp = `${cached}.tmp-${Deno.pid}`;
  await Deno.writeFile(temp, bytes);
  await Deno.rename(temp, cached);
  return bytes;
}
