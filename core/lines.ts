/**
 * Reading UTF-8 text files line by line, streamed and checked: the one line reader behind the
 * data plugins, `deno task score` and the Grow files. Invalid UTF-8 is reported with its line
 * and byte offset, CR-only line endings and overlong lines are refused with a message that
 * says what to do.
 *
 * @module
 */

import { DataError } from "./errors.ts";
import { checkRegularFile } from "./fs.ts";

/**
 * Offset of the first byte that is not part of valid UTF-8, or -1 when all of
 * `bytes` is valid UTF-8.
 */
export function invalidUtf8Offset(bytes: Uint8Array): number {
  let i = 0;
  const n = bytes.length;
  while (i < n) {
    const b = bytes[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let min: number;
    if (b >= 0xc2 && b <= 0xdf) [need, min] = [1, 0x80];
    else if (b >= 0xe0 && b <= 0xef) [need, min] = [2, 0x800];
    else if (b >= 0xf0 && b <= 0xf4) [need, min] = [3, 0x10000];
    else return i;
    if (i + need >= n) return i;
    let cp = b & (0x3f >> need);
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += need + 1;
  }
  return -1;
}

/** 1-based line number of a byte offset. */
export function lineOfOffset(bytes: Uint8Array, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < bytes.length; i++) if (bytes[i] === 0x0a) line++;
  return line;
}

/**
 * Decodes UTF-8 bytes strictly (a leading BOM is dropped).
 *
 * @throws {DataError} naming the file, line and byte offset of the first invalid byte.
 */
export function decodeUtf8(bytes: Uint8Array, label: string): string {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return text.startsWith("\ufeff") ? text.slice(1) : text;
  } catch {
    const offset = Math.max(0, invalidUtf8Offset(bytes));
    throw new DataError(
      `${label}:${lineOfOffset(bytes, offset)}: not valid UTF-8 (byte offset ${offset})`,
    );
  }
}

/** Longest line the line readers accept, in bytes: 256 MiB (a longer one is a {@link DataError}). */
export const MAX_LINE_BYTES = 256 * 2 ** 20;

/** The error for a file whose lines end in a bare carriage return. */
function crOnlyError(label: string): DataError {
  return new DataError(
    `${label}: uses CR-only line endings (old Mac style: lines end in a carriage return without a line feed); convert them to LF, e.g. with: tr '\\r' '\\n' < FILE > FILE.new`,
  );
}

/**
 * Throws when the first line of `text` holds a carriage return that does not end it, i.e.
 * the file uses CR-only (old Mac) line endings. A stray CR later in a file is left alone.
 *
 * @throws {DataError} naming `label` and saying how to convert the line endings.
 */
export function checkNotCrOnly(text: string, label: string): void {
  const lf = text.indexOf("\n");
  const cr = text.indexOf("\r");
  if (cr < 0 || (lf >= 0 && cr > lf)) return;
  if (lf >= 0 && cr === lf - 1) return; // the CRLF ending line 1
  throw crOnlyError(label);
}

function joinChunks(chunks: readonly Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/** Options of {@link forEachLine}. */
export interface LineReadOptions {
  /** Sees every chunk of bytes as it is read, before it is decoded (e.g. to hash the file). */
  onChunk?: (chunk: Uint8Array) => void;
}

/**
 * Calls `onLine(line, lineNumber)` for every line of a UTF-8 text file, in order, reading
 * the file in chunks so that its size is limited only by what the caller keeps (it is never
 * held whole as one string). Lines end at `\n` or `\r\n`; a final newline does not start
 * another line; a leading BOM is dropped. Only regular files (or symlinks to them) are
 * opened: a FIFO, socket, device or folder is refused before anything is read.
 *
 * @throws {DataError} naming the file when it is missing or not a regular file, when it is
 *   not valid UTF-8 (line and byte offset), uses CR-only line endings, or has a line longer
 *   than {@link MAX_LINE_BYTES}.
 */
export async function forEachLine(
  file: string,
  onLine: (line: string, lineNumber: number) => void,
  options: LineReadOptions = {},
): Promise<void> {
  await checkRegularFile(file, { error: DataError });
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(file, { read: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw error;
    }
    throw new DataError(`${file}: cannot read file: ${(error as Error).message}`);
  }
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let lineNumber = 1;
  let offset = 0; // byte offset of the block being decoded
  const emit = (block: Uint8Array, final: boolean) => {
    let text: string;
    try {
      text = decoder.decode(block);
    } catch {
      const bad = Math.max(0, invalidUtf8Offset(block));
      throw new DataError(
        `${file}:${lineNumber + lineOfOffset(block, bad) - 1}: not valid UTF-8 (byte offset ${
          offset + bad
        })`,
      );
    }
    if (offset === 0) {
      if (text.startsWith("\ufeff")) text = text.slice(1);
      checkNotCrOnly(text, file);
    }
    offset += block.length;
    const lines = text.split("\n");
    const last = lines.length - 1; // "" after a final newline, else an unterminated line
    for (let i = 0; i < last; i++) {
      const line = lines[i];
      onLine(line.endsWith("\r") ? line.slice(0, -1) : line, lineNumber++);
    }
    if (final && lines[last] !== "") onLine(lines[last], lineNumber++);
  };
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  try {
    for await (const chunk of handle.readable) {
      options.onChunk?.(chunk);
      const lf = chunk.lastIndexOf(0x0a);
      if (lf < 0) {
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes > MAX_LINE_BYTES) {
          if (lineNumber === 1 && pending.some((c) => c.includes(0x0d))) throw crOnlyError(file);
          throw new DataError(
            `${file}:${lineNumber}: line is longer than ${MAX_LINE_BYTES} bytes (no line feed found); expected a text file with one item per line`,
          );
        }
        continue;
      }
      pending.push(chunk.subarray(0, lf + 1));
      emit(joinChunks(pending, pendingBytes + lf + 1), false);
      pending = [chunk.subarray(lf + 1)];
      pendingBytes = chunk.length - lf - 1;
    }
    emit(joinChunks(pending, pendingBytes), true);
  } finally {
    try {
      handle.close();
    } catch {
      // The stream already closed it.
    }
  }
}

/** Reads a UTF-8 text file as lines with {@link forEachLine} (same checks and errors). */
export async function readLines(file: string): Promise<string[]> {
  const lines: string[] = [];
  await forEachLine(file, (line) => lines.push(line));
  return lines;
}
