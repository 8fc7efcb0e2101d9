/**
 * The artefacts a queue worker needs to compute a shard (the policy's weights, the tokenizer's
 * state and the files a prepared reward saved), as content-addressed blobs: each is stored
 * under the SHA-256 of its bytes, in Redis or in a folder shared by the coordinator and the
 * workers, and every blob a worker fetches is checked against its hash before it is used (and
 * cached by it). A folder travels as a listing (relative path -> hash) and is rebuilt from it.
 *
 * @module
 */

import { dirname, join } from "node:path";
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
  const key = `${place.prefix}:blob:${sha}`;
  // Already there (e.g. the reward's files, stored again every Grow step): only kept longer.
  if (await redis.expire(key, BLOB_TTL_SECONDS) === 1) return sha;
  await redis.set(key, Buffer.from(bytes), "EX", BLOB_TTL_SECONDS);
  return sha;
}

/**
 * Stores every file under `dir` (recursively; temporary `*.tmp-*` files left by a writer are
 * skipped) as a blob, and returns the folder's listing: relative path (with `/`) -> SHA-256.
 */
export async function putFolder(
  redis: Redis,
  place: BlobPlace,
  dir: string,
): Promise<Record<string, string>> {
  const listing: Record<string, string> = {};
  const walk = async (relative: string) => {
    const entries = [];
    for await (const entry of Deno.readDir(join(dir, relative))) entries.push(entry);
    entries.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    for (const entry of entries) {
      const path = relative === "" ? entry.name : `${relative}/${entry.name}`;
      if (entry.isDirectory) await walk(path);
      else if (entry.isFile && !entry.name.includes(".tmp-")) {
        listing[path] = await putBlob(redis, place, await Deno.readFile(join(dir, path)));
      }
    }
  };
  await walk("");
  return listing;
}

/**
 * A local copy of a folder stored by {@link putFolder}: `<cache>/folders/<hash of the
 * listing>/`, built from the blobs (each checked against its hash) on first use, then reused.
 *
 * @throws {DataError} for a listing with an unsafe path, or a blob missing or damaged.
 */
export async function getFolder(
  redis: Redis,
  place: BlobPlace,
  listing: Record<string, string>,
  cache: string,
): Promise<string> {
  const paths = Object.keys(listing).sort();
  for (const path of paths) {
    if (
      path === "" || path.startsWith("/") || path.split("/").some((p) => p === ".." || p === "")
    ) {
      throw new DataError(`artefact folder: unsafe path ${JSON.stringify(path)}`);
    }
  }
  const id = await sha256Hex(
    new TextEncoder().encode(JSON.stringify(paths.map((p) => [p, listing[p]]))),
  );
  const target = join(cache, "folders", id);
  try {
    await Deno.stat(target);
    return target;
  } catch { /* not built yet */ }
  const temp = `${target}.tmp-${Deno.pid}`;
  await Deno.remove(temp, { recursive: true }).catch(() => {});
  for (const path of paths) {
    const bytes = await getBlob(redis, place, listing[path], cache).catch((error) => {
      throw new DataError(`${path}: ${(error as Error).message}`);
    });
    await Deno.mkdir(dirname(join(temp, path)), { recursive: true });
    await Deno.writeFile(join(temp, path), bytes);
  }
  await Deno.mkdir(temp, { recursive: true });
  try {
    await Deno.rename(temp, target);
  } catch (error) {
    // Another worker sharing the cache built it first.
    await Deno.remove(temp, { recursive: true }).catch(() => {});
    if (!(await Deno.stat(target).then(() => true, () => false))) throw error;
  }
  return target;
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
