/**
 * Reading the files a user names (manifests, data, plugin modules, run state) safely: only
 * regular files (or symlinks to them) are opened, so a FIFO, a socket, a device such as
 * `/dev/zero` or a folder is refused with a message that names the path and what it is,
 * instead of hanging or reading forever; and a size limit guards formats that are read whole.
 *
 * @module
 */

import { UserError } from "./errors.ts";

/** What a file-system entry is, in words, for error messages ("a FIFO (named pipe)", ...). */
export function describeEntry(info: Deno.FileInfo): string {
  if (info.isFile) return "a regular file";
  if (info.isDirectory) return "a folder";
  if (info.isFifo) return "a FIFO (named pipe)";
  if (info.isSocket) return "a socket";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isSymlink) return "a symbolic link";
  return "not a regular file";
}

/** Options of {@link checkRegularFile} and {@link readRegularFile}. */
export interface RegularFileOptions {
  /** What the file is, for messages ("manifest", "data file", "Grow file"). Default "file". */
  what?: string;
  /** Refuse files larger than this many bytes. Default: no limit. */
  maxBytes?: number;
  /** The error class to throw. Default {@link UserError}. */
  error?: new (message: string, options?: ErrorOptions) => Error;
}

/**
 * Checks that `path` is a regular file (following symlinks) and, when `maxBytes` is given,
 * not larger than that. Returns its size in bytes.
 *
 * @throws {UserError} (or `options.error`) naming the path and what it is instead.
 */
export async function checkRegularFile(
  path: string,
  options: RegularFileOptions = {},
): Promise<number> {
  const what = options.what ?? "file";
  const Failure = options.error ?? UserError;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Failure(`${path}: ${what} not found`, { cause: error });
    }
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw error; // reported as a permission error by the CLI
    }
    throw new Failure(`${path}: cannot read ${what}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  if (!info.isFile) {
    throw new Failure(
      `${path}: is ${describeEntry(info)}, expected the ${what} to be a regular file`,
    );
  }
  if (options.maxBytes !== undefined && info.size > options.maxBytes) {
    throw new Failure(
      `${path}: ${what} is ${info.size} bytes, more than the limit of ${options.maxBytes}`,
    );
  }
  return info.size;
}

/**
 * Reads a regular file's bytes after {@link checkRegularFile}.
 *
 * @throws {UserError} (or `options.error`) naming the path when it is not a readable regular file.
 */
export async function readRegularFile(
  path: string,
  options: RegularFileOptions = {},
): Promise<Uint8Array> {
  await checkRegularFile(path, options);
  try {
    return await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw error;
    }
    const Failure = options.error ?? UserError;
    throw new Failure(
      `${path}: cannot read ${options.what ?? "file"}: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
}

/**
 * Reads a regular file as UTF-8 text after {@link checkRegularFile} (invalid bytes become
 * U+FFFD; use {@link readRegularFile} where they must be reported).
 */
export async function readRegularText(
  path: string,
  options: RegularFileOptions = {},
): Promise<string> {
  return new TextDecoder().decode(await readRegularFile(path, options));
}
