/**
 * The few error classes that callers catch.
 *
 * Misuse of an API throws the built-in `TypeError` / `RangeError`. Problems
 * caused by the user's input (a manifest, a data file, a command-line flag)
 * throw {@link UserError} or one of its subclasses: the CLI prints their
 * message without a stack trace and exits with code 2.
 *
 * @module
 */

/** An error caused by the user's input; the CLI exits with code 2 and prints only the message. */
export class UserError extends Error {
  /** Creates a user error with a message that names what is wrong and where. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UserError";
  }
}

/** One problem found in a manifest: a JSON pointer into the manifest and what is wrong there. */
export interface ManifestProblem {
  /** JSON pointer, e.g. `/runs/2/loss/config/clip`; `""` is the whole document. */
  path: string;
  /** What is wrong, e.g. `must be > 0`. */
  message: string;
}

/** A manifest failed validation; holds every problem found, not just the first. */
export class ManifestError extends UserError {
  /** The manifest file (or a label for an in-memory manifest). */
  readonly file: string;
  /** All problems, in document order. */
  readonly problems: readonly ManifestProblem[];

  /** Creates the error; the message lists every problem as `path: message`. */
  constructor(file: string, problems: readonly ManifestProblem[]) {
    // One line per problem, whatever the manifest held (huge or multi-line names and keys).
    const lines = problems.map((p) =>
      `  ${printable(p.path || "/", 200)}: ${printable(p.message, 500)}`
    );
    super(
      `${file}: ${problems.length} problem${problems.length === 1 ? "" : "s"}\n${lines.join("\n")}`,
    );
    this.name = "ManifestError";
    this.file = file;
    this.problems = problems;
  }
}

/**
 * `text` with control characters escaped (`\n` becomes the two characters `\` `n`) and cut
 * to at most `max` characters, so that a message quoting user input stays on one readable line.
 */
export function printable(text: string, max: number): string {
  // deno-lint-ignore no-control-regex
  let out = text.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (ch) => {
    const escaped = JSON.stringify(ch).slice(1, -1);
    return escaped.length > 1 ? escaped : `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`;
  });
  if (out.length > max) out = `${out.slice(0, max - 3)}...`;
  return out;
}

/** A data file is missing, unreadable or corrupt; the message names the file and line or byte offset. */
export class DataError extends UserError {
  /** Creates a data error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DataError";
  }
}
