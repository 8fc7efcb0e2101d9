/**
 * Shared command-line plumbing: exit codes and error printing.
 *
 * Exit codes: 0 done; 2 user error (bad arguments, bad manifest, missing data),
 * printed as a message without a stack trace; 1 internal failure.
 *
 * @module
 */

import { UserError } from "../core/errors.ts";

/** Exit code for a user error. */
export const EXIT_USER = 2;
/** Exit code for an internal failure. */
export const EXIT_INTERNAL = 1;
/** Exit code for an interrupted command (Ctrl-C, SIGTERM). */
export const EXIT_INTERRUPTED = 130;

/**
 * `Deno.exit` as it was when this module loaded, before any plugin code could replace it
 * (the experiment worker replaces it so that a plugin calling it is reported).
 */
export const exitProcess: (code?: number) => never = Deno.exit.bind(Deno);

/** Whether an error was caused by the user's input (exit 2, no stack trace). */
export function isUserError(error: unknown): boolean {
  if (error instanceof UserError || isEnvironmentError(error)) return true;
  // node:util parseArgs reports unknown or malformed flags with these codes.
  const code = (error as { code?: unknown })?.code;
  return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_");
}

/**
 * Whether an error is the file system refusing a path the user chose, not a fault of the
 * program: a file where a folder is needed (`--out` naming a file), no write permission, a
 * full disk or quota, a read-only file system. Deno's message names the operation and path.
 */
export function isEnvironmentError(error: unknown): boolean {
  if (error instanceof Deno.errors.NotADirectory || error instanceof Deno.errors.PermissionDenied) {
    return true;
  }
  // ENOSPC (28), EROFS (30), EDQUOT (122) have no class of their own.
  return error instanceof Error && /\(os error (28|30|122)\)/.test(error.message);
}

/** Runs a command's main function and exits with the right code. */
export async function runMain(name: string, main: () => Promise<number | void>): Promise<never> {
  let code: number;
  try {
    code = (await main()) ?? 0;
  } catch (error) {
    if (isUserError(error)) {
      const prefix = isEnvironmentError(error) ? "file system: " : "";
      console.error(`${name}: error: ${prefix}${(error as Error).message}`);
      code = EXIT_USER;
    } else {
      console.error(`${name}: internal error (please report it with the command you ran):`);
      console.error(error instanceof Error ? error.stack ?? error.message : String(error));
      code = EXIT_INTERNAL;
    }
  }
  exitProcess(code);
}

/** Parses a non-negative integer flag, or throws a UserError naming the flag. */
export function parseIntegerFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value)) || Number(value) > 2147483647) {
    throw new UserError(`--${flag} must be an integer between 0 and 2147483647 (got "${value}")`);
  }
  return Number(value);
}
