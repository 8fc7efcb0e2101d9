/**
 * A manifest's JSON text, checked before it is parsed: the first syntax error with its
 * position (and advice about common mistakes), nesting deeper than a limit, more values than
 * a limit, and duplicate keys, which `JSON.parse` resolves silently by keeping the last one.
 * Also how messages write places and values: JSON pointers, lines and columns, short values.
 *
 * The scan is one linear pass with an explicit stack, never recursion, and stops at the
 * first limit it passes, so a hostile text (100,000 levels of nesting, millions of numbers)
 * can neither overflow the stack nor take long.
 *
 * @module
 */

import type { ManifestProblem } from "../errors.ts";

/** Limits of {@link scanJsonText}. */
export interface JsonTextLimits {
  /** Deepest nesting of arrays and objects (the top-level value is depth 0). */
  maxDepth: number;
  /** Most values (objects, arrays, strings, numbers, booleans and nulls, keys not counted). */
  maxValues: number;
}

/** What {@link scanJsonText} found. */
export interface JsonTextScan {
  /** The first syntax error: its offset in the text and a short reason. */
  syntax?: { offset: number; reason: string };
  /** Duplicate keys, or the one limit passed; each with the JSON pointer of its place. */
  problems: ManifestProblem[];
}

/** Escapes one JSON pointer segment (`~` as `~0`, `/` as `~1`). */
export function escapePointer(key: string): string {
  return key.replaceAll("~", "~0").replaceAll("/", "~1");
}

/**
 * `value` as a message shows it: JSON, cut to 60 characters; NaN and ±Infinity (which
 * JSON.stringify writes as null, and raw text such as 1e999 parses to) by name.
 */
export function showValue(value: unknown): string {
  if (typeof value === "number" && !Number.isFinite(value)) {
    return Number.isNaN(value) ? "NaN" : `${value}, beyond the range of a double`;
  }
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** 1-based line and column of `offset` in `text`. */
export function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  return { line: before.split("\n").length, column: offset - before.lastIndexOf("\n") };
}

/** An open array or object during the scan. */
interface Frame {
  /** `}` for an object, `]` for an array. */
  closer: "}" | "]";
  /** Arrays: the index of the current item. */
  index: number;
  /** Objects: the current key. */
  key: string;
  /** Objects: the line of each key seen so far. */
  lines: Map<string, number> | undefined;
}

const JSON_NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/**
 * Scans JSON text once: the first syntax error, every duplicate key (reported at the
 * object's JSON pointer, naming the key and both lines), and the first place the text
 * passes `limits`. The scan stops at a syntax error or a passed limit.
 */
export function scanJsonText(text: string, limits: JsonTextLimits): JsonTextScan {
  const problems: ManifestProblem[] = [];
  const frames: Frame[] = [];
  // What comes next: a value, an object key, the colon after a key, or what follows a value.
  let expect: "value" | "key" | "colon" | "after" = "value";
  let justOpened = false;
  let afterComma = false;
  let values = 0;
  let line = 1;
  let i = 0;
  const n = text.length;
  const fail = (offset: number, reason: string): JsonTextScan => ({
    syntax: { offset, reason },
    problems,
  });
  const stop = (path: string, message: string): JsonTextScan => ({
    problems: [{ path, message }],
  });
  // The JSON pointer of the current place inside the first `depth` open frames.
  const pointer = (depth: number): string => {
    let out = "";
    for (let d = 0; d < depth; d++) {
      const f = frames[d];
      out += `/${f.closer === "]" ? f.index : escapePointer(f.key)}`;
    }
    return out;
  };
  // What stands at `offset`, for messages, and advice about common mistakes there.
  const what = (offset: number): string => {
    if (offset >= n) return "the end of the text";
    const ch = String.fromCodePoint(text.codePointAt(offset)!);
    if (ch === '"') return `'"'`;
    if (/^[\x21-\x7e]$/.test(ch)) return `"${ch}"`;
    return `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
  };
  const hint = (offset: number): string => {
    if (offset >= n) return "; is the file truncated?";
    if (/^-?(NaN|Infinity)/.test(text.slice(offset, offset + 9))) {
      return "; NaN and Infinity are not JSON numbers, write a finite number";
    }
    if (text[offset] === "'") return "; strings and keys must be in double quotes";
    if (text[offset] === "/") return "; comments are not allowed in JSON";
    return "";
  };
  const unexpected = (offset: number) =>
    fail(offset, `unexpected ${what(offset).replace(/^the /, "")}${hint(offset)}`);
  const expected = (offset: number, wanted: string) =>
    fail(offset, `expected ${wanted}, got ${what(offset)}${hint(offset)}`);
  const skipSpace = () => {
    for (; i < n; i++) {
      const ch = text[i];
      if (ch === "\n") line++;
      else if (ch !== " " && ch !== "\t" && ch !== "\r") return;
    }
  };
  // Reads a string starting at the quote at `i`; a syntax error, or undefined when it is valid.
  const readString = (): JsonTextScan | undefined => {
    const start = i;
    i++;
    while (i < n) {
      const code = text.charCodeAt(i);
      if (code === 0x22) {
        i++;
        return undefined;
      }
      if (code < 0x20) {
        return fail(i, "control character inside a string (write it as \\n, \\t, ...)");
      }
      if (code === 0x5c) {
        const next = text[i + 1];
        if (next === "u") {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
            return fail(i, "\\u must be followed by four hex digits");
          }
          i += 6;
        } else if (next !== undefined && '"\\/bfnrt'.includes(next)) i += 2;
        else return fail(i, `invalid escape \\${next ?? ""} in a string`);
      } else i++;
    }
    return fail(start, "unterminated string (missing closing quote)");
  };
  // Records the key just read (the string from `start` to `i`) in the innermost object.
  const addKey = (start: number) => {
    const frame = frames[frames.length - 1];
    const key = JSON.parse(text.slice(start, i)) as string;
    frame.key = key;
    const first = frame.lines!.get(key);
    if (first === undefined) {
      frame.lines!.set(key, line);
      return;
    }
    problems.push({
      path: pointer(frames.length - 1),
      message: `duplicate key ${JSON.stringify(key)} on line ${line} (also on line ${first}); ` +
        `JSON would silently keep only the last one, so give each key once`,
    });
  };

  for (;;) {
    skipSpace();
    if (i >= n) {
      if (expect === "after" && frames.length === 0) return { problems };
      return unexpected(n);
    }
    const ch = text[i];
    if (expect === "after") {
      if (frames.length === 0) return expected(i, "nothing after the end of the document");
      const top = frames[frames.length - 1];
      if (ch === ",") {
        i++;
        if (top.closer === "]") top.index++;
        expect = top.closer === "}" ? "key" : "value";
        afterComma = true;
        continue;
      }
      if (ch === top.closer) {
        frames.pop();
        i++;
        continue;
      }
      return expected(i, top.closer === "}" ? '"," or "}"' : '"," or "]"');
    }
    if (expect === "colon") {
      if (ch !== ":") return expected(i, '":" after an object key');
      i++;
      expect = "value";
      continue;
    }
    const opened = justOpened;
    const comma = afterComma;
    justOpened = false;
    afterComma = false;
    if (expect === "key") {
      if (ch === "}" && opened) {
        frames.pop();
        i++;
        expect = "after";
        continue;
      }
      if (ch === "}" && comma) return fail(i, 'trailing comma before "}"');
      if (ch !== '"') return expected(i, "an object key in double quotes");
      const start = i;
      const bad = readString();
      if (bad !== undefined) return bad;
      addKey(start);
      expect = "colon";
      continue;
    }
    // expect === "value"
    if (ch === "]" && opened) {
      frames.pop();
      i++;
      expect = "after";
      continue;
    }
    if (ch === "]" && comma) return fail(i, 'trailing comma before "]"');
    if (++values > limits.maxValues) {
      return stop(
        pointer(frames.length),
        `the manifest holds more than ${limits.maxValues} values (numbers, strings, ...); ` +
          `a manifest describes an experiment, put data in data files`,
      );
    }
    if (ch === "{" || ch === "[") {
      if (frames.length >= limits.maxDepth) {
        return stop(pointer(frames.length), `nested more than ${limits.maxDepth} levels deep`);
      }
      const object = ch === "{";
      frames.push({
        closer: object ? "}" : "]",
        index: 0,
        key: "",
        lines: object ? new Map() : undefined,
      });
      i++;
      expect = object ? "key" : "value";
      justOpened = true;
      continue;
    }
    if (ch === '"') {
      const bad = readString();
      if (bad !== undefined) return bad;
      expect = "after";
      continue;
    }
    JSON_NUMBER.lastIndex = i;
    const number = JSON_NUMBER.exec(text);
    if (number !== null && number[0] !== "-") {
      i += number[0].length;
      expect = "after";
      continue;
    }
    const literal = ["true", "false", "null"].find((word) => text.startsWith(word, i));
    if (literal !== undefined) {
      i += literal.length;
      expect = "after";
      continue;
    }
    return unexpected(i);
  }
}
