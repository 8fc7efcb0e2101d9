/**
 * `gettext` data plugin: translation pairs from gettext catalogs, `.po` (text)
 * and `.mo` (compiled), e.g. LibreOffice's UI translations (`deno task data
 * libreoffice de`). The English `msgid` is the source, the `msgstr` the reference.
 *
 * What is read:
 * - `.po`: `msgctxt`, `msgid`, `msgid_plural`, `msgstr`, `msgstr[n]`, strings
 *   continued over several lines, C escapes (`\n`, `\t`, `\"`, `\\`, octal, `\x`),
 *   `#,` flags (`fuzzy`). Obsolete `#~` entries and other comments are skipped.
 *   The file is decoded with the header's `charset` (UTF-8 when absent).
 * - `.mo`: both byte orders; the magic number and every table offset are checked,
 *   and a truncated or corrupt file is a {@link DataError} naming the byte offset.
 *   Strings are decoded with the header's `charset`.
 *
 * The header entry (empty `msgid`) is always skipped, as are untranslated entries.
 *
 * Only regular files (or symlinks to them) are read: a FIFO, a socket or a device is
 * refused with an error naming it. Catalogs are read whole, so their size is limited:
 * {@link MAX_PO_BYTES} for `.po`, {@link MAX_MO_BYTES} for `.mo`. A `.po` file with CR-only
 * (old Mac) line endings is an error saying so.
 *
 * @module
 */

import { appendAll } from "../../core/append.ts";
import { DataError } from "../../core/errors.ts";
import { checkNotCrOnly, decodeUtf8 } from "../../core/lines.ts";
import { definePlugin } from "../../core/plugin.ts";
import type { Example } from "../../core/types.ts";
import {
  commonConfigSchema,
  type CommonDataConfig,
  expandPaths,
  finishSplits,
  pathsProperty,
  readDataFile,
  smokeConfig,
  tooLargeError,
} from "./_common.ts";

/** One catalog entry (the header included). */
export interface CatalogEntry {
  /** `msgctxt`, when present. */
  context?: string;
  /** The untranslated (English) string. */
  msgid: string;
  /** `msgid_plural`, for plural entries. */
  msgidPlural?: string;
  /** `msgstr` (one element) or `msgstr[0..n]`. */
  msgstr: string[];
  /** `#,` flags such as `fuzzy` or `c-format` (always empty for `.mo`). */
  flags: string[];
  /** 1-based line of the entry's `msgid` in a `.po` file; byte offset of its table entry in a `.mo`. */
  position: number;
}

/** A parsed catalog. */
export interface Catalog {
  /** The file it was read from. */
  file: string;
  /** The charset the strings were decoded from. */
  charset: string;
  /** Every entry, in file order (the header included). */
  entries: CatalogEntry[];
}

/** Options of {@link catalogPairs} (a subset of the plugin's config). */
export interface CatalogOptions {
  /** Keep entries flagged `fuzzy` (`.po` only). */
  includeFuzzy: boolean;
  /** How plural entries are used. */
  plurals: "first" | "all" | "skip";
  /** Mnemonic marker characters to remove (`"~_"`; `""` keeps texts as they are). */
  stripAccelerators: string;
  /** Skip entries whose source is mostly placeholders; 1 keeps all. */
  maxPlaceholderShare: number;
  /** Identify entries by msgctxt + msgid (true) or by msgid alone (false). */
  contextAsKey: boolean;
}

/** Config of the `gettext` plugin. */
export interface GettextConfig extends CommonDataConfig, CatalogOptions {
  /** `.po`/`.mo` files, folders or glob patterns. */
  paths: string[];
}

/** What {@link catalogPairs} skipped and kept. */
export interface CatalogStats {
  /** Entries read, the headers excluded. */
  entries: number;
  /** Skipped as fuzzy. */
  fuzzy: number;
  /** Skipped as untranslated (empty msgstr). */
  untranslated: number;
  /** Plural entries skipped (`plurals: "skip"`). */
  plural: number;
  /** Skipped as mostly placeholders. */
  placeholders: number;
  /** Skipped because an entry with the same key was read before. */
  duplicateKeys: number;
  /** Pairs produced. */
  pairs: number;
}

// ---------------------------------------------------------------------------
// .po

const KEYWORD = /^(msgctxt|msgid_plural|msgid|msgstr)(?:\[(\d+)\])?(?=[\s"])\s*(.*)$/;

function parsePoString(text: string, file: string, line: number): string {
  if (!text.startsWith('"')) {
    throw new DataError(
      `${file}:${line}: expected a quoted string, got ${JSON.stringify(text.slice(0, 30))}`,
    );
  }
  let out = "";
  let i = 1;
  for (;;) {
    if (i >= text.length) {
      throw new DataError(`${file}:${line}: unterminated string (missing closing ")`);
    }
    const ch = text[i];
    if (ch === '"') break;
    if (ch !== "\\") {
      out += ch;
      i++;
      continue;
    }
    const next = text[i + 1];
    i += 2;
    switch (next) {
      case "n":
        out += "\n";
        break;
      case "t":
        out += "\t";
        break;
      case "r":
        out += "\r";
        break;
      case "a":
        out += "\x07";
        break;
      case "b":
        out += "\b";
        break;
      case "f":
        out += "\f";
        break;
      case "v":
        out += "\v";
        break;
      case "\\":
      case '"':
      case "'":
      case "?":
        out += next;
        break;
      case "x": {
        const m = /^[0-9a-fA-F]{1,2}/.exec(text.slice(i));
        if (m === null) throw new DataError(`${file}:${line}: \\x escape without hex digits`);
        out += String.fromCharCode(parseInt(m[0], 16));
        i += m[0].length;
        break;
      }
      default: {
        const m = /^[0-7]{1,3}/.exec(text.slice(i - 1));
        if (m === null) {
          throw new DataError(
            `${file}:${line}: unknown escape sequence \\${next ?? ""} in a string`,
          );
        }
        out += String.fromCharCode(parseInt(m[0], 8));
        i += m[0].length - 1;
      }
    }
  }
  const rest = text.slice(i + 1).trim();
  if (rest !== "") {
    throw new DataError(
      `${file}:${line}: unexpected text after the closing quote: ${
        JSON.stringify(rest.slice(0, 30))
      }`,
    );
  }
  return out;
}

interface PendingEntry {
  context?: string;
  msgid?: string;
  msgidPlural?: string;
  msgstr: string[];
  flags: string[];
  line: number;
}

/**
 * Parses the text of a `.po` file (already decoded). With `headerOnly`, stops after
 * the first entry (used to find the charset).
 *
 * @throws {DataError} naming the file and line of a syntax error.
 */
export function parsePoText(text: string, file: string, headerOnly = false): CatalogEntry[] {
  const lines = text.split("\n");
  const entries: CatalogEntry[] = [];
  let entry: PendingEntry = { msgstr: [], flags: [], line: 0 };
  // Which string a continuation line appends to.
  let target:
    | { kind: "context" | "msgid" | "msgidPlural" }
    | { kind: "msgstr"; index: number }
    | null = null;
  let done = false;

  const complete = () => entry.msgid !== undefined && entry.msgstr.length > 0;
  const flush = (lineNo: number) => {
    if (entry.msgid === undefined) {
      if (entry.context !== undefined) {
        throw new DataError(
          `${file}:${lineNo}: msgctxt at line ${entry.line} is not followed by a msgid`,
        );
      }
    } else if (entry.msgstr.length === 0) {
      throw new DataError(`${file}:${lineNo}: msgid at line ${entry.line} has no msgstr`);
    } else {
      for (let k = 0; k < entry.msgstr.length; k++) {
        if (entry.msgstr[k] === undefined) {
          throw new DataError(`${file}:${lineNo}: entry at line ${entry.line} has no msgstr[${k}]`);
        }
      }
      entries.push({
        ...(entry.context === undefined ? {} : { context: entry.context }),
        msgid: entry.msgid,
        ...(entry.msgidPlural === undefined ? {} : { msgidPlural: entry.msgidPlural }),
        msgstr: entry.msgstr,
        flags: entry.flags,
        position: entry.line,
      });
      if (headerOnly) done = true;
    }
    entry = { msgstr: [], flags: [], line: 0 };
    target = null;
  };

  for (let index = 0; index < lines.length && !done; index++) {
    const lineNo = index + 1;
    const line = lines[index].replace(/\r$/, "").trim();
    if (line === "") {
      if (entry.msgid !== undefined || entry.context !== undefined) flush(lineNo);
      else entry.flags = [];
      continue;
    }
    if (line.startsWith("#")) {
      if (complete()) flush(lineNo);
      else if (entry.msgid !== undefined || entry.context !== undefined) {
        throw new DataError(
          `${file}:${lineNo}: comment inside an entry (the entry at line ${entry.line} has no msgstr yet)`,
        );
      }
      if (line.startsWith("#,")) {
        for (const flag of line.slice(2).split(",")) {
          const trimmed = flag.trim();
          if (trimmed !== "") entry.flags.push(trimmed);
        }
      }
      // "#~" (obsolete), "#|" (previous), "#." "#:" and translator comments are skipped.
      continue;
    }
    if (line.startsWith('"')) {
      if (target === null) {
        throw new DataError(`${file}:${lineNo}: string continuation without a keyword before it`);
      }
      const value = parsePoString(line, file, lineNo);
      if (target.kind === "msgstr") entry.msgstr[target.index] += value;
      else entry[target.kind] = (entry[target.kind] ?? "") + value;
      continue;
    }
    const m = KEYWORD.exec(line);
    if (m === null) {
      throw new DataError(
        `${file}:${lineNo}: expected msgctxt, msgid, msgstr, a quoted string or a comment, got ${
          JSON.stringify(line.slice(0, 40))
        }`,
      );
    }
    const [, keyword, indexText, rest] = m;
    if (keyword !== "msgstr" && indexText !== undefined) {
      throw new DataError(`${file}:${lineNo}: ${keyword} takes no [index]`);
    }
    const value = parsePoString(rest, file, lineNo);
    switch (keyword) {
      case "msgctxt":
        if (complete()) flush(lineNo);
        if (entry.context !== undefined || entry.msgid !== undefined) {
          throw new DataError(
            `${file}:${lineNo}: msgctxt in the middle of the entry at line ${entry.line}`,
          );
        }
        entry.context = value;
        entry.line = lineNo;
        target = { kind: "context" };
        break;
      case "msgid":
        if (complete()) flush(lineNo);
        if (entry.msgid !== undefined) {
          throw new DataError(`${file}:${lineNo}: msgid at line ${entry.line} has no msgstr`);
        }
        entry.msgid = value;
        entry.line = lineNo;
        target = { kind: "msgid" };
        break;
      case "msgid_plural":
        if (
          entry.msgid === undefined || entry.msgstr.length > 0 || entry.msgidPlural !== undefined
        ) {
          throw new DataError(
            `${file}:${lineNo}: msgid_plural must follow a msgid (and come before msgstr)`,
          );
        }
        entry.msgidPlural = value;
        target = { kind: "msgidPlural" };
        break;
      default: {
        if (entry.msgid === undefined) {
          throw new DataError(`${file}:${lineNo}: msgstr without a msgid`);
        }
        const plural = entry.msgidPlural !== undefined;
        if (plural && indexText === undefined) {
          throw new DataError(
            `${file}:${lineNo}: the entry at line ${entry.line} has msgid_plural, so msgstr needs an index (msgstr[0])`,
          );
        }
        if (!plural && indexText !== undefined) {
          throw new DataError(`${file}:${lineNo}: msgstr[${indexText}] without msgid_plural`);
        }
        const k = indexText === undefined ? 0 : Number(indexText);
        if (entry.msgstr[k] !== undefined || (!plural && entry.msgstr.length > 0)) {
          throw new DataError(
            `${file}:${lineNo}: duplicate msgstr${
              plural ? `[${k}]` : ""
            } in the entry at line ${entry.line}`,
          );
        }
        entry.msgstr[k] = value;
        target = { kind: "msgstr", index: k };
      }
    }
  }
  if (!done && (entry.msgid !== undefined || entry.context !== undefined)) flush(lines.length);
  return entries;
}

/** The `charset` of a header entry's msgstr, lower-cased, or undefined when absent. */
export function headerCharset(entries: readonly CatalogEntry[]): string | undefined {
  const header = entries.find((e) => e.msgid === "" && e.context === undefined);
  const m = header === undefined
    ? null
    : /charset\s*=\s*([^\s;\\"]+)/i.exec(header.msgstr[0] ?? "");
  return m === null ? undefined : m[1].toLowerCase();
}

function isUtf8Label(charset: string | undefined): boolean {
  return charset === undefined || charset === "charset" || /^utf-?8$/i.test(charset) ||
    /^(us-)?ascii$/i.test(charset);
}

function decoderFor(charset: string, file: string): TextDecoder {
  try {
    return new TextDecoder(charset, { fatal: true });
  } catch {
    throw new DataError(
      `${file}: the header's charset "${charset}" is not supported (TextDecoder cannot decode it); convert the file to UTF-8, e.g. with msgconv`,
    );
  }
}

/**
 * Parses a `.po` file's bytes, decoding them with the header's charset.
 *
 * @throws {DataError} for a syntax error (file and line), invalid bytes, or an
 *   unsupported charset.
 */
export function parsePo(bytes: Uint8Array, file: string): Catalog {
  // The syntax is ASCII, so a byte-transparent single-byte decoding finds the header.
  const latin = new TextDecoder("iso-8859-1").decode(bytes);
  checkNotCrOnly(latin, file);
  const charset = headerCharset(parsePoText(latin, file, true));
  let text: string;
  if (isUtf8Label(charset)) {
    text = decodeUtf8(bytes, file);
  } else {
    try {
      text = decoderFor(charset!, file).decode(bytes);
    } catch (error) {
      if (error instanceof DataError) throw error;
      throw new DataError(`${file}: not valid ${charset} text`);
    }
  }
  return { file, charset: charset ?? "utf-8", entries: parsePoText(text, file) };
}

// ---------------------------------------------------------------------------
// .mo

const MO_MAGIC = 0x950412de;
const MO_HEADER_SIZE = 28;

/**
 * Parses a `.mo` file's bytes (either byte order).
 *
 * @throws {DataError} naming the byte offset when the file is truncated, has a bad
 *   magic number or revision, a table or string runs past the end, or a string is
 *   not valid in the header's charset.
 */
export function parseMo(bytes: Uint8Array, file: string): Catalog {
  const size = bytes.length;
  if (size < 4) {
    throw new DataError(
      `${file}: truncated .mo file: ${size} bytes, the magic number needs 4 (byte offset ${size})`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let little: boolean;
  if (view.getUint32(0, true) === MO_MAGIC) little = true;
  else if (view.getUint32(0, false) === MO_MAGIC) little = false;
  else {
    const found = view.getUint32(0, false).toString(16).padStart(8, "0");
    throw new DataError(
      `${file}: not a .mo file: bad magic number 0x${found} at byte offset 0 (expected 0x950412de in either byte order)`,
    );
  }
  if (size < MO_HEADER_SIZE) {
    throw new DataError(
      `${file}: truncated .mo file: the header needs ${MO_HEADER_SIZE} bytes, the file ends at byte offset ${size}`,
    );
  }
  const u32 = (offset: number) => view.getUint32(offset, little);
  const revision = u32(4);
  if (revision >>> 16 > 1) {
    throw new DataError(
      `${file}: unsupported .mo revision ${revision >>> 16}.${revision & 0xffff} at byte offset 4`,
    );
  }
  const count = u32(8);
  const originals = u32(12);
  const translations = u32(16);
  for (
    const [name, at, table] of [["original", 12, originals], [
      "translation",
      16,
      translations,
    ]] as const
  ) {
    if (table + count * 8 > size) {
      throw new DataError(
        `${file}: truncated or corrupt .mo file: the ${name} table (offset read at byte offset ${at}) spans bytes ${table}..${
          table + count * 8
        } with ${count} entries, but the file ends at byte offset ${size}`,
      );
    }
  }
  const raw = (table: number, i: number, name: string): Uint8Array => {
    const at = table + i * 8;
    const length = u32(at);
    const offset = u32(at + 4);
    if (offset + length > size) {
      throw new DataError(
        `${file}: truncated or corrupt .mo file: ${name} string ${i} (table entry at byte offset ${at}) spans bytes ${offset}..${
          offset + length
        }, but the file ends at byte offset ${size}`,
      );
    }
    return bytes.subarray(offset, offset + length);
  };

  // Find the header (empty original) to learn the charset.
  let charset: string | undefined;
  for (let i = 0; i < count; i++) {
    if (u32(originals + i * 8) === 0) {
      const header = new TextDecoder("iso-8859-1").decode(raw(translations, i, "translation"));
      charset = headerCharset([{ msgid: "", msgstr: [header], flags: [], position: 0 }]);
      break;
    }
  }
  const decoder = isUtf8Label(charset)
    ? new TextDecoder("utf-8", { fatal: true })
    : decoderFor(charset!, file);
  const label = isUtf8Label(charset) ? "UTF-8" : charset!;
  const decode = (table: number, i: number, name: string): string => {
    const data = raw(table, i, name);
    try {
      return decoder.decode(data);
    } catch {
      throw new DataError(
        `${file}: ${name} string ${i} at byte offset ${
          u32(table + i * 8 + 4)
        } is not valid ${label}`,
      );
    }
  };

  const entries: CatalogEntry[] = [];
  for (let i = 0; i < count; i++) {
    let original = decode(originals, i, "original");
    let context: string | undefined;
    const eot = original.indexOf("\u0004");
    if (eot >= 0) {
      context = original.slice(0, eot);
      original = original.slice(eot + 1);
    }
    const [msgid, msgidPlural] = original.split("\u0000");
    const msgstr = decode(translations, i, "translation").split("\u0000");
    entries.push({
      ...(context === undefined ? {} : { context }),
      msgid,
      ...(msgidPlural === undefined ? {} : { msgidPlural }),
      msgstr,
      flags: [],
      position: originals + i * 8,
    });
  }
  return { file, charset: charset ?? "utf-8", entries };
}

/**
 * Largest `.po` file read, in bytes: 500 MiB. A `.po` file is decoded whole into one
 * string, and a JavaScript string holds at most about 512 Mi characters.
 */
export const MAX_PO_BYTES = 500 * 2 ** 20;

/**
 * Largest `.mo` file read, in bytes: 2 GiB. A `.mo` file is read whole into memory (its
 * strings are decoded one by one); its offsets are 32-bit.
 */
export const MAX_MO_BYTES = 2 * 2 ** 30;

/**
 * Reads a `.po` or `.mo` catalog (chosen by the extension, or by the `.mo` magic
 * number for other names). Only regular files (or symlinks to them) are read, of at most
 * {@link MAX_PO_BYTES} (`.po`) or {@link MAX_MO_BYTES} (`.mo`) bytes.
 *
 * @throws {DataError} when the file is missing, not a regular file (a FIFO, a socket,
 *   a device, a folder), too large, unreadable or corrupt.
 */
export async function readCatalog(file: string): Promise<Catalog> {
  const lower = file.toLowerCase();
  const named = lower.endsWith(".po") || lower.endsWith(".pot")
    ? "po"
    : lower.endsWith(".mo") || lower.endsWith(".gmo")
    ? "mo"
    : undefined;
  const bytes = named === "po"
    ? await readDataFile(file, MAX_PO_BYTES, ".po file")
    : await readDataFile(file, MAX_MO_BYTES, named === "mo" ? ".mo file" : "gettext catalog");
  const looksMo = named === "mo" ||
    (named === undefined && bytes.length >= 4 &&
      [0x950412de, 0xde120495].includes(new DataView(bytes.buffer, bytes.byteOffset).getUint32(0)));
  if (!looksMo && bytes.length > MAX_PO_BYTES) {
    throw tooLargeError(file, bytes.length, MAX_PO_BYTES, ".po file");
  }
  return looksMo ? parseMo(bytes, file) : parsePo(bytes, file);
}

// ---------------------------------------------------------------------------
// entries to pairs

/** What may follow a mnemonic marker: not a space, closing bracket, quote or punctuation. */
const MNEMONIC_TARGET = /^[^\s)\]}>'"\u2019\u201d,;:.!?]$/u;

/**
 * Removes a mnemonic (accelerator) marker: for each character of `markers`
 * (e.g. `"~_"` for LibreOffice, `"&"` for Qt), when the text holds exactly one
 * occurrence of it directly before a character other than a space, a closing
 * bracket, a quote or punctuation (`~Open`, `PDF_/A`), outside placeholders and
 * entities ({@link PLACEHOLDER}), that occurrence is removed and doubled markers
 * (`__`, `&&`) become single. Texts with no or several candidates are left as
 * they are (`_underline_`, `OPT_PROB_HIT`); placeholders such as `%FILE_NAME`
 * are never touched.
 *
 * @example
 * ```ts
 * import { stripAccelerators } from "./gettext.ts";
 * console.assert(stripAccelerators("~Open", "~_") === "Open");
 * console.assert(stripAccelerators("A_bsatzvorlage:", "~_") === "Absatzvorlage:");
 * console.assert(stripAccelerators("OPT_PROB_HIT", "~_") === "OPT_PROB_HIT");
 * ```
 */
export function stripAccelerators(text: string, markers: string): string {
  let out = text;
  for (const marker of markers) {
    if (!out.includes(marker)) continue;
    const protectedRanges: [number, number][] = [];
    for (const m of out.matchAll(PLACEHOLDER)) {
      protectedRanges.push([m.index, m.index + m[0].length]);
    }
    const inPlaceholder = (i: number) => protectedRanges.some(([a, b]) => i >= a && i < b);
    const candidates: number[] = [];
    for (let i = 0; i < out.length; i++) {
      if (out[i] !== marker) continue;
      if (out[i + 1] === marker) {
        i++; // an escaped (doubled) marker
        continue;
      }
      if (MNEMONIC_TARGET.test(out[i + 1] ?? " ") && !inPlaceholder(i)) candidates.push(i);
    }
    if (candidates.length !== 1) continue;
    const at = candidates[0];
    const doubled = marker + marker;
    out = (out.slice(0, at).split(doubled).join(marker)) +
      out.slice(at + 1).split(doubled).join(marker);
  }
  return out;
}

/**
 * Placeholders and markup counted by `maxPlaceholderShare`: `%1`, printf
 * conversions (`%s`, `%5.2f`, `%ld`), `%NAME%`, `%PRODUCTNAME`, `$(ARG1)`, `$NAME$`,
 * `{0}`/`{name}`, XML/HTML tags and character entities.
 */
export const PLACEHOLDER =
  /%[A-Za-z_][A-Za-z0-9_]*%|%[A-Z][A-Z0-9_]{2,}|%\d+|%[-+#0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspn]|\$\([A-Za-z0-9_]+\)|\$[A-Za-z_][A-Za-z0-9_]*\$?|\{[A-Za-z0-9_.:]*\}|<[^<>]+>|&(?:[a-zA-Z][a-zA-Z0-9]*|#[0-9]+|#x[0-9a-fA-F]+);/g;

/**
 * Share (0..1) of a text's non-space characters that belong to placeholders or
 * markup ({@link PLACEHOLDER}); 1 when no letter is left outside them.
 */
export function placeholderShare(text: string): number {
  const total = text.replace(/\s+/g, "").length;
  if (total === 0) return 1;
  const rest = text.replace(PLACEHOLDER, " ");
  if (!/\p{L}/u.test(rest)) return 1;
  return 1 - rest.replace(/\s+/g, "").length / total;
}

/**
 * Turns catalog entries into (msgid, msgstr) pairs according to the options,
 * counting what was skipped into `stats`. `seen` holds the keys of entries already
 * taken (shared across catalogs so the first catalog read wins).
 */
export function catalogPairs(
  entries: readonly CatalogEntry[],
  options: CatalogOptions,
  stats: CatalogStats,
  seen: Set<string> = new Set(),
): Example[] {
  const pairs: Example[] = [];
  const clean = (text: string) => stripAccelerators(text, options.stripAccelerators);
  for (const entry of entries) {
    if (entry.msgid === "") continue; // the header (or a malformed empty key)
    stats.entries++;
    if (entry.flags.includes("fuzzy") && !options.includeFuzzy) {
      stats.fuzzy++;
      continue;
    }
    if (entry.msgstr.every((s) => s === "")) {
      stats.untranslated++;
      continue;
    }
    const plural = entry.msgidPlural !== undefined;
    if (plural && options.plurals === "skip") {
      stats.plural++;
      continue;
    }
    const key = options.contextAsKey && entry.context !== undefined
      ? `${entry.context}\u0004${entry.msgid}`
      : entry.msgid;
    if (seen.has(key)) {
      stats.duplicateKeys++;
      continue;
    }
    seen.add(key);
    const candidates: Example[] = [{ source: entry.msgid, reference: entry.msgstr[0] }];
    if (plural && options.plurals === "all") {
      for (let k = 1; k < entry.msgstr.length; k++) {
        candidates.push({ source: entry.msgidPlural!, reference: entry.msgstr[k] });
      }
    }
    let kept = 0;
    for (const candidate of candidates) {
      const source = clean(candidate.source);
      if (candidate.reference === "") continue;
      if (
        options.maxPlaceholderShare < 1 && placeholderShare(source) > options.maxPlaceholderShare
      ) {
        continue;
      }
      pairs.push({ source, reference: clean(candidate.reference) });
      kept++;
    }
    if (kept === 0) stats.placeholders++;
    stats.pairs += kept;
  }
  return pairs;
}

/** A fresh, all-zero {@link CatalogStats}. */
export function emptyCatalogStats(): CatalogStats {
  return {
    entries: 0,
    fuzzy: 0,
    untranslated: 0,
    plural: 0,
    placeholders: 0,
    duplicateKeys: 0,
    pairs: 0,
  };
}

/**
 * Expands `paths` (files, folders, globs; see the plugin's `paths` option), reads
 * every catalog and returns the pairs of all of them, before cleaning and splitting.
 */
export async function readCatalogPairs(
  paths: readonly string[],
  baseDir: string,
  options: CatalogOptions,
): Promise<{ files: string[]; pairs: Example[]; stats: CatalogStats }> {
  const files = await expandPaths(paths, baseDir, [".po", ".mo"]);
  const stats = emptyCatalogStats();
  const seen = new Set<string>();
  const pairs: Example[] = [];
  for (const file of files) {
    const catalog = await readCatalog(file);
    appendAll(pairs, catalogPairs(catalog.entries, options, stats, seen));
  }
  return { files, pairs, stats };
}

/** The `gettext` data plugin. */
export default definePlugin<"data", GettextConfig>({
  kind: "data",
  name: "gettext",
  summary:
    "Gettext catalogs (.po and .mo files, e.g. LibreOffice's UI translations): msgid as source, msgstr as reference.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      paths: pathsProperty(
        'Catalogs: .po/.mo files, folders (every .po and .mo file under them) or glob patterns with *, ? and ** (e.g. "../data/libreoffice/de/*.mo"), relative to the manifest\'s folder. Read in order, each expansion sorted. Required.',
      ),
      includeFuzzy: {
        type: "boolean",
        default: false,
        description:
          'Keep .po entries flagged "#, fuzzy" (unreviewed translations). .mo files hold no fuzzy entries.',
      },
      plurals: {
        type: "string",
        enum: ["first", "all", "skip"],
        default: "first",
        description:
          '"first": a plural entry gives (msgid, msgstr[0]); "all": also (msgid_plural, msgstr[n]) for every n >= 1; "skip": plural entries are dropped.',
      },
      stripAccelerators: {
        type: "string",
        default: "~_",
        description:
          'Mnemonic (keyboard accelerator) marker characters to remove from both sides. For each character, a text with exactly one occurrence before a letter, digit or symbol (not a space, closing bracket, quote or punctuation), outside placeholders, loses it ("~Open" -> "Open", "A_bsatz" -> "Absatz") and doubled markers become single; texts with several candidates are kept as they are. "~_" suits LibreOffice (~ in .hrc strings, _ in .ui dialogs) and GTK; use "&" for Qt/KDE or Windows catalogs; "" keeps texts unchanged.',
      },
      maxPlaceholderShare: {
        type: "number",
        minimum: 0,
        maximum: 1,
        default: 0.5,
        description:
          "Skip entries whose source is mostly placeholders: more than this share of its non-space characters are placeholders or markup (%1, %s, %PRODUCTNAME, $(ARG1), {0}, <tags>, &entities;), or no letter is left outside them. 1 keeps every entry.",
      },
      contextAsKey: {
        type: "boolean",
        default: true,
        description:
          "How entries are identified across catalogs: true = by msgctxt + msgid (the gettext key; the same English string in different contexts gives separate pairs), false = by msgid alone (each English string keeps only its first translation). For a repeated key, the first catalog read wins. The header (empty msgid) is always skipped.",
      },
      ...commonConfigSchema,
    },
  },
  smoke: smokeConfig,
  create(config, deps) {
    return {
      async load() {
        const { files, pairs } = await readCatalogPairs(config.paths, deps.baseDir, config);
        const label = files.length === 1 ? files[0] : `gettext (${files.length} catalogs)`;
        const { train, valid, test } = finishSplits(pairs, config, label);
        return { train, valid, test };
      },
    };
  },
});
