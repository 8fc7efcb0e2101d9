/**
 * Grow files: `grow_<g>.jsonl`, one {@link GrowRow} per line, written once and never changed,
 * and beside each its record `grow_<g>.record.json` (row count, byte size and SHA-256 of the
 * file). The record is written (atomically) before the Grow file is renamed into place, so a
 * Grow file that exists always has its record; every read checks the file against it, so a
 * Grow file cut at a line boundary, with a changed, extra or missing row, is reported with
 * what was expected and what was found instead of being used.
 *
 * Files are streamed: rows are parsed line by line and hashed as they are read or written.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { basename } from "node:path";
import { DataError } from "./errors.ts";
import { checkRegularFile, readRegularText } from "./fs.ts";
import { forEachLine } from "./lines.ts";
import type { GrowRow } from "./types.ts";
import { writeFileAtomic } from "./run.ts";

/** What a Grow file's record holds. */
export interface GrowRecord {
  /** Number of rows (non-empty lines). */
  rows: number;
  /** Size of the file in bytes. */
  bytes: number;
  /** SHA-256 of the file's bytes, as hex. */
  sha256: string;
}

const RECORD_FORMAT = "rest-grow-record";
const RECORD_MAX_BYTES = 1 << 16;

/** The record file of a Grow file: `grow_1.jsonl` -> `grow_1.record.json`. */
export function growRecordPath(path: string): string {
  return `${path.replace(/\.jsonl$/, "")}.record.json`;
}

function checkRow(row: unknown, where: string): GrowRow {
  const r = row as GrowRow;
  const ok = r !== null && typeof r === "object" && typeof r.source === "string" &&
    typeof r.hypothesis === "string" && typeof r.reference === "string" &&
    typeof r.reward === "number" && r.reward >= 0 && r.reward <= 1 && Array.isArray(r.tokens) &&
    Array.isArray(r.logProbs) && r.tokens.length === r.logProbs.length &&
    (r.origin === "sample" || r.origin === "reference") &&
    (r.temperature === undefined || (typeof r.temperature === "number" && r.temperature > 0));
  if (!ok) throw new DataError(`${where}: not a valid Grow row`);
  return r;
}

/** What to do about a Grow file that does not match its record. */
function regrowHint(path: string): string {
  const name = basename(path);
  return `delete ${name} and ${basename(growRecordPath(path))} (and, in a run folder, the ` +
    `run's state rest_state.json) to grow it again, or restore the file`;
}

/**
 * Reads a Grow file's record.
 *
 * @throws {DataError} naming the record when it is missing, not a regular file, or not a
 *   valid record.
 */
export async function readGrowRecord(path: string): Promise<GrowRecord> {
  const recordPath = growRecordPath(path);
  const name = basename(path);
  let text: string;
  try {
    text = await readRegularText(recordPath, {
      what: `record of ${name}`,
      maxBytes: RECORD_MAX_BYTES,
      error: DataError,
    });
  } catch (error) {
    if (!(error instanceof DataError) || !/not found$/.test(error.message)) throw error;
    throw new DataError(
      `${recordPath}: missing, so ${name} cannot be checked (it was written by an older ` +
        `version, or the record was deleted); ${regrowHint(path)}`,
    );
  }
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch {
    record = undefined;
  }
  const r = record as Record<string, unknown> | undefined;
  const count = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  if (
    r === null || typeof r !== "object" || r.format !== RECORD_FORMAT || !count(r.rows) ||
    !count(r.bytes) || typeof r.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(r.sha256)
  ) {
    throw new DataError(
      `${recordPath}: not a valid Grow record (expected {"format": "${RECORD_FORMAT}", ` +
        `"rows", "bytes", "sha256"}); ${regrowHint(path)}`,
    );
  }
  return { rows: r.rows as number, bytes: r.bytes as number, sha256: r.sha256 as string };
}

async function writeGrowRecord(path: string, record: GrowRecord): Promise<void> {
  const text = JSON.stringify({ format: RECORD_FORMAT, file: basename(path), ...record });
  await writeFileAtomic(growRecordPath(path), text + "\n");
}

/**
 * Reads a Grow file, checking every row and then the whole file against its record; a bad
 * line is a DataError naming file and line, a mismatch one naming what the record expects
 * and what the file holds. The file is streamed line by line (never held whole as text).
 *
 * @throws {DataError} when the file or its record is missing, not a regular file, has a bad
 *   row, or does not match the record.
 */
export async function readGrowFile(path: string): Promise<GrowRow[]> {
  try {
    await checkRegularFile(path, { what: "Grow file", error: DataError });
  } catch (error) {
    if (!(error instanceof DataError) || !/not found$/.test(error.message)) throw error;
    const expected = await readGrowRecord(path).then(
      (r) => `; its record says ${r.rows} rows (${r.bytes} bytes)`,
      () => "",
    );
    throw new DataError(`${path}: Grow file missing${expected}; ${regrowHint(path)}`);
  }
  const record = await readGrowRecord(path);
  const rows: GrowRow[] = [];
  const hash = createHash("sha256");
  let bytes = 0;
  const onChunk = (chunk: Uint8Array) => {
    hash.update(chunk);
    bytes += chunk.length;
  };
  await forEachLine(path, (line, lineNumber) => {
    if (line === "") return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      throw new DataError(
        `${path}:${lineNumber}: not a JSON line (truncated or corrupt Grow file); ${
          regrowHint(path)
        }`,
      );
    }
    rows.push(checkRow(parsed, `${path}:${lineNumber}`));
  }, { onChunk });
  const sha256 = hash.digest("hex");
  const name = basename(path);
  if (rows.length !== record.rows || bytes !== record.bytes) {
    throw new DataError(
      `${path}: ${name} has ${rows.length} rows (${bytes} bytes), its record ` +
        `${basename(growRecordPath(path))} says ${record.rows} rows (${record.bytes} bytes): ` +
        `the file was truncated or changed; ${regrowHint(path)}`,
    );
  }
  if (sha256 !== record.sha256) {
    throw new DataError(
      `${path}: ${name} has the recorded ${record.rows} rows and ${record.bytes} bytes but ` +
        `its SHA-256 is ${sha256}, not the recorded ${record.sha256}: a row was changed; ${
          regrowHint(path)
        }`,
    );
  }
  return rows;
}

/**
 * Writes rows as JSON lines to a temporary file (streamed in chunks, hashed as written),
 * then the record, then renames the file into place. Returns the record.
 */
export async function writeGrowFile(path: string, rows: Iterable<GrowRow>): Promise<GrowRecord> {
  const temp = `${path}.tmp-${Deno.pid}`;
  const file = await Deno.open(temp, { write: true, create: true, truncate: true });
  const encoder = new TextEncoder();
  const hash = createHash("sha256");
  const record: GrowRecord = { rows: 0, bytes: 0, sha256: "" };
  const flush = async (chunk: string) => {
    const bytes = encoder.encode(chunk);
    hash.update(bytes);
    record.bytes += bytes.length;
    await writeAll(file, bytes);
  };
  try {
    let chunk = "";
    for (const row of rows) {
      chunk += JSON.stringify(row) + "\n";
      record.rows++;
      if (chunk.length > 1 << 20) {
        await flush(chunk);
        chunk = "";
      }
    }
    if (chunk !== "") await flush(chunk);
    await file.sync();
  } finally {
    file.close();
  }
  record.sha256 = hash.digest("hex");
  await writeGrowRecord(path, record);
  await Deno.rename(temp, path);
  return record;
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await file.write(bytes.subarray(written));
}

/**
 * Copies a Grow file and its record (record first, the file through a temporary file and a
 * rename), so `to` is never partial and always has its record. Check `from` first.
 */
export async function copyGrowFile(from: string, to: string): Promise<void> {
  await writeGrowRecord(to, await readGrowRecord(from));
  const temp = `${to}.tmp-${Deno.pid}`;
  await Deno.copyFile(from, temp);
  await Deno.rename(temp, to);
}
