/**
 * Shared helpers of the data plugins (not a plugin itself): the common config
 * options (and the `paths` option of the file-reading plugins), reading whole files under
 * a size limit, expanding paths and globs, and {@link finishSplits}, which cleans,
 * filters, deduplicates, caps and splits a corpus.
 *
 * ## Processing order
 *
 * 1. Normalise: Unicode NFC (`unicodeNormalization`), trim, and collapse runs of
 *    whitespace (tabs, newlines, non-breaking spaces) to one space
 *    (`collapseWhitespace`). With `reverse`, source and reference are swapped.
 * 2. Drop pairs with an empty side.
 * 3. Length filters, in words (whitespace-separated tokens) on both sides:
 *    `minWords`, `maxWords` (0 = no limit), then `maxRatio` (longer side's word
 *    count divided by the shorter side's; 0 = off).
 * 4. Deduplicate (`dedup`): `"pair"` drops exact repeats of (source, reference),
 *    `"source"` keeps only the first pair of each source, `"none"` keeps all.
 * 5. Split by hashing the source. Every distinct source gets a 32-bit key from
 *    an {@link Rng} seeded with `seed` mixed with the FNV-1a hash of the source;
 *    sources are ordered by key (ties by the text). `maxPairs` keeps the pairs of
 *    the first sources in that order; then the first sources go to `valid` until
 *    it holds `validSize` pairs, the next to `test` until it holds `testSize`,
 *    and the rest to `train`. All pairs of one source land in the same split, so
 *    no source is ever in two splits. Within each split the pairs keep their
 *    corpus order. The result depends only on the cleaned corpus and `seed`.
 *
 * `validSize`/`testSize` below 1 are fractions of the pairs left after step 4
 * (and the cap), rounded, and at least one pair when the fraction is positive;
 * values of 1 or more are pair counts.
 *
 * @module
 */

import { isAbsolute, join, resolve } from "node:path";
import { DataError } from "../../core/errors.ts";
import { checkRegularFile, describeEntry, readRegularFile } from "../../core/fs.ts";
import type { JsonSchema } from "../../core/plugin.ts";
import { hashString, Rng } from "../../core/random.ts";
import type { Example, Splits } from "../../core/types.ts";

/** The options every data plugin shares (see {@link commonConfigSchema}). */
export interface CommonDataConfig {
  /** Seed of the train/valid/test split (independent of the run's seed). */
  seed: number;
  /** Validation size: a fraction (< 1) of the pairs or a pair count (>= 1). */
  validSize: number;
  /** Test size: a fraction (< 1) of the pairs or a pair count (>= 1). */
  testSize: number;
  /** Minimum words on each side. */
  minWords: number;
  /** Maximum words on each side; 0 = no limit. */
  maxWords: number;
  /** Maximum ratio of the longer side's word count to the shorter's; 0 = off. */
  maxRatio: number;
  /** Deduplication mode. */
  dedup: "pair" | "source" | "none";
  /** Keep at most this many pairs (a seeded subset); 0 = all. */
  maxPairs: number;
  /** Swap source and reference (e.g. German to English from an English-to-German catalog). */
  reverse: boolean;
  /** Trim and collapse whitespace runs to one space. */
  collapseWhitespace: boolean;
  /** Unicode normalisation applied to both sides. */
  unicodeNormalization: "NFC" | "NFKC" | "none";
}

/**
 * JSON-schema properties of {@link CommonDataConfig}, to spread into each data
 * plugin's `configSchema.properties`.
 */
export const commonConfigSchema: Record<string, JsonSchema> = {
  seed: {
    type: "integer",
    minimum: 0,
    maximum: 2147483647,
    default: 1,
    description:
      "Seed of the train/valid/test split and of the maxPairs subset. Independent of the run's seed, so runs with different seeds see the same splits.",
  },
  validSize: {
    type: "number",
    minimum: 0,
    default: 0.05,
    description:
      "Validation split size: below 1 a fraction of the cleaned pairs (at least 1 pair when positive), 1 or more a pair count. Splits are made by hashing the source, so a source is never in two splits.",
  },
  testSize: {
    type: "number",
    minimum: 0,
    default: 0.05,
    description:
      "Test split size: below 1 a fraction of the cleaned pairs (at least 1 pair when positive), 1 or more a pair count.",
  },
  minWords: {
    type: "integer",
    minimum: 0,
    default: 1,
    description:
      "Drop pairs where either side has fewer words (whitespace-separated tokens) than this.",
  },
  maxWords: {
    type: "integer",
    minimum: 0,
    default: 0,
    description:
      "Drop pairs where either side has more words than this; 0 = no limit (the default: " +
      "every pair is kept). A cap applies to every split, so set it from the decoding budget, " +
      "not to speed up training: kept references should fit the evaluation's maxLen (in " +
      "tokens: 1.9 BPE tokens per word for German LibreOffice strings with 4k pieces) and BC's " +
      "maxTokens. LibreOffice en-de: 16 drops 1,751 of 18,946 " +
      "distinct pairs (9%), 24 drops 728 (4%, 97.5% of the kept references under 32 tokens), " +
      "32 drops 315 (2%).",
  },
  maxRatio: {
    type: "number",
    minimum: 0,
    default: 0,
    description:
      "Drop pairs whose longer side has more than maxRatio times the words of the shorter side; 0 = off.",
  },
  dedup: {
    type: "string",
    enum: ["pair", "source", "none"],
    default: "pair",
    description:
      '"pair" drops exact repeats of (source, reference); "source" keeps only the first pair of each source; "none" keeps duplicates.',
  },
  maxPairs: {
    type: "integer",
    minimum: 0,
    default: 0,
    description:
      "Keep at most this many pairs, a seeded subset chosen by source hash before splitting; 0 = all.",
  },
  reverse: {
    type: "boolean",
    default: false,
    description:
      "Swap source and reference, e.g. to translate German to English from an English-to-German catalog.",
  },
  collapseWhitespace: {
    type: "boolean",
    default: true,
    description:
      "Trim both sides and collapse runs of whitespace (including tabs, newlines and non-breaking spaces) to one space.",
  },
  unicodeNormalization: {
    type: "string",
    enum: ["NFC", "NFKC", "none"],
    default: "NFC",
    description: "Unicode normalisation applied to both sides before filtering.",
  },
};

/** The defaults of {@link CommonDataConfig}, read from {@link commonConfigSchema}. */
export const COMMON_DEFAULTS: CommonDataConfig = Object.fromEntries(
  Object.entries(commonConfigSchema).map(([key, prop]) => [key, prop.default]),
) as unknown as CommonDataConfig;

/** Smoke-run cap applied by the data plugins' `smoke` hooks. */
export const SMOKE_MAX_PAIRS = 400;

/**
 * Caps `maxPairs` for `--smoke` runs (used as each data plugin's `smoke` hook), and absolute
 * `validSize`/`testSize` to a quarter of that each, so training keeps at least half.
 */
export function smokeConfig<C extends CommonDataConfig>(config: C): C {
  const maxPairs = config.maxPairs === 0
    ? SMOKE_MAX_PAIRS
    : Math.min(config.maxPairs, SMOKE_MAX_PAIRS);
  const cap = (size: number) => size >= 1 ? Math.min(size, Math.floor(maxPairs / 4)) : size;
  return { ...config, maxPairs, validSize: cap(config.validSize), testSize: cap(config.testSize) };
}

/** Counts of what each processing step of {@link finishSplits} removed. */
export interface FinishStats {
  /** Pairs given to {@link finishSplits}. */
  read: number;
  /** Removed because a side was empty after normalisation. */
  empty: number;
  /** Removed by `minWords`. */
  tooShort: number;
  /** Removed by `maxWords`. */
  tooLong: number;
  /** Removed by `maxRatio`. */
  ratio: number;
  /** Removed as duplicates. */
  duplicates: number;
  /** Removed by the `maxPairs` cap. */
  capped: number;
  /** Pairs in the three splits together. */
  kept: number;
}

const WHITESPACE = /[\s\u00a0\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]+/g;

/** Normalises one side of a pair as {@link finishSplits} does. */
export function normalizeText(text: string, config: Partial<CommonDataConfig> = {}): string {
  const form = config.unicodeNormalization ?? COMMON_DEFAULTS.unicodeNormalization;
  let out = form === "none" ? text : text.normalize(form);
  if (config.collapseWhitespace ?? COMMON_DEFAULTS.collapseWhitespace) {
    out = out.replace(WHITESPACE, " ").trim();
  }
  return out;
}

/** Number of whitespace-separated words in a normalised text. */
export function countWords(text: string): number {
  const trimmed = text.trim();
  return trimmed === "" ? 0 : trimmed.split(/\s+/).length;
}

function sizeFor(size: number, total: number): number {
  if (size <= 0) return 0;
  if (size < 1) return Math.max(1, Math.round(size * total));
  return Math.floor(size);
}

/** The 32-bit split key of a source under a seed (see the module doc). */
export function splitKey(source: string, seed: number): number {
  return new Rng(seed ^ hashString(source)).nextUint32();
}

/**
 * Cleans, filters, deduplicates, caps and splits a corpus (see the module doc
 * for the exact order and scheme). `label` names the corpus in error messages.
 *
 * @throws {DataError} when no pair survives the filters (the message says how many
 *   pairs were read and what each filter removed), or when the validation and test
 *   sizes leave no pair for training.
 */
export function finishSplits(
  pairs: Iterable<Example>,
  config: CommonDataConfig,
  label: string,
): Splits & { stats: FinishStats } {
  const stats: FinishStats = {
    read: 0,
    empty: 0,
    tooShort: 0,
    tooLong: 0,
    ratio: 0,
    duplicates: 0,
    capped: 0,
    kept: 0,
  };
  // Kept pairs, and their sources as groups: the pairs of one source always share a split.
  // One Map lookup per pair, no per-pair key strings: this scales to millions of pairs.
  const kept: Example[] = [];
  const groupOfPair: number[] = [];
  const groupIds = new Map<string, number>();
  const groupSources: string[] = [];
  const groupSizes: number[] = [];
  const groupReferences: (string | Set<string>)[] = []; // for dedup "pair"
  for (const pair of pairs) {
    stats.read++;
    let source = normalizeText(pair.source, config);
    let reference = normalizeText(pair.reference, config);
    if (config.reverse) [source, reference] = [reference, source];
    if (source.trim() === "" || reference.trim() === "") {
      stats.empty++;
      continue;
    }
    const ws = countWords(source);
    const wr = countWords(reference);
    if (Math.min(ws, wr) < config.minWords) {
      stats.tooShort++;
      continue;
    }
    if (config.maxWords > 0 && Math.max(ws, wr) > config.maxWords) {
      stats.tooLong++;
      continue;
    }
    if (config.maxRatio > 0 && Math.max(ws, wr) > config.maxRatio * Math.max(1, Math.min(ws, wr))) {
      stats.ratio++;
      continue;
    }
    let group = groupIds.get(source);
    if (group === undefined) {
      group = groupSources.length;
      groupIds.set(source, group);
      groupSources.push(source);
      groupSizes.push(0);
      groupReferences.push(reference);
    } else if (config.dedup === "source") {
      stats.duplicates++;
      continue;
    } else if (config.dedup === "pair") {
      const seen = groupReferences[group];
      if (seen === reference || (typeof seen !== "string" && seen.has(reference))) {
        stats.duplicates++;
        continue;
      }
      if (typeof seen === "string") groupReferences[group] = new Set([seen, reference]);
      else seen.add(reference);
    }
    groupSizes[group]++;
    groupOfPair.push(group);
    kept.push({ source, reference });
  }
  if (kept.length === 0) {
    throw new DataError(`${label}: no pairs left after filtering: ${describeStats(stats, config)}`);
  }

  // Order the sources by their seeded hash key (ties by the text).
  const keys = new Uint32Array(groupSources.length);
  for (let g = 0; g < keys.length; g++) keys[g] = splitKey(groupSources[g], config.seed);
  const ordered = Array.from(keys.keys()).sort((a, b) => {
    if (keys[a] !== keys[b]) return keys[a] - keys[b];
    const sa = groupSources[a];
    const sb = groupSources[b];
    return sa < sb ? -1 : sa > sb ? 1 : 0;
  });

  let total = kept.length;
  if (config.maxPairs > 0 && total > config.maxPairs) {
    let taken = 0;
    let cut = 0;
    while (cut < ordered.length && taken < config.maxPairs) {
      const n = groupSizes[ordered[cut]];
      if (taken + n > config.maxPairs && taken > 0) break;
      taken += n;
      cut++;
    }
    stats.capped = total - taken;
    ordered.length = cut;
    total = taken;
  }

  const validWanted = sizeFor(config.validSize, total);
  const testWanted = sizeFor(config.testSize, total);
  if (validWanted + testWanted >= total) {
    throw new DataError(
      `${label}: validSize ${config.validSize} and testSize ${config.testSize} ask for ${validWanted} + ${testWanted} pairs, but only ${total} are left after filtering, leaving none for training; use smaller sizes or fractions`,
    );
  }
  const splitOf = new Int8Array(groupSources.length).fill(-1); // -1 dropped, 0 train, 1 valid, 2 test
  let valid = 0;
  let test = 0;
  for (const group of ordered) {
    let split = 0;
    if (valid < validWanted) {
      split = 1;
      valid += groupSizes[group];
    } else if (test < testWanted) {
      split = 2;
      test += groupSizes[group];
    }
    splitOf[group] = split;
  }
  const result: Splits = { train: [], valid: [], test: [] };
  const targets = [result.train, result.valid, result.test];
  for (let i = 0; i < kept.length; i++) {
    const split = splitOf[groupOfPair[i]];
    if (split >= 0) targets[split].push(kept[i]);
  }
  if (result.train.length === 0) {
    throw new DataError(
      `${label}: the training split is empty (${total} pairs, ${valid} valid, ${test} test); use smaller validSize/testSize`,
    );
  }
  stats.kept = total;
  return { ...result, stats };
}

/** A one-line account of what the filters removed, for messages. */
export function describeStats(stats: FinishStats, config: CommonDataConfig): string {
  const parts = [`read ${stats.read} pairs`];
  if (stats.empty) parts.push(`${stats.empty} had an empty side`);
  if (stats.tooShort) parts.push(`${stats.tooShort} were shorter than minWords=${config.minWords}`);
  if (stats.tooLong) parts.push(`${stats.tooLong} were longer than maxWords=${config.maxWords}`);
  if (stats.ratio) parts.push(`${stats.ratio} exceeded maxRatio=${config.maxRatio}`);
  if (stats.duplicates) parts.push(`${stats.duplicates} were duplicates (dedup="${config.dedup}")`);
  if (stats.capped) parts.push(`${stats.capped} were over maxPairs=${config.maxPairs}`);
  return parts.join(", ");
}

/** Resolves a config path against the manifest's folder. */
export function resolvePath(path: string, baseDir: string): string {
  return isAbsolute(path) ? path : resolve(baseDir, path);
}

/**
 * Reads a data file's bytes whole, after checking that it is a regular file (not a FIFO,
 * socket, device or folder) of at most `maxBytes` bytes. `format` names the kind of file
 * in the size message (".mo file").
 *
 * @throws {DataError} naming the file and what it is, or its size and the limit.
 */
export async function readDataFile(
  file: string,
  maxBytes: number,
  format: string,
): Promise<Uint8Array> {
  const size = await checkRegularFile(file, { error: DataError });
  if (size > maxBytes) throw tooLargeError(file, size, maxBytes, format);
  return await readRegularFile(file, { error: DataError });
}

/** The error for a file over the size limit of a format that is read whole. */
export function tooLargeError(
  file: string,
  size: number,
  maxBytes: number,
  format: string,
): DataError {
  return new DataError(
    `${file}: is ${size} bytes, more than the limit of ${maxBytes} bytes for a ${format} (it is read whole); split it into smaller files`,
  );
}

const GLOB_CHARS = /[*?[]/;

function globSegmentRegex(segment: string): RegExp {
  let source = "";
  for (const ch of segment) {
    if (ch === "*") source += "[^/]*";
    else if (ch === "?") source += "[^/]";
    else source += ch.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${source}$`);
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw new DataError(`${path}: cannot read: ${(error as Error).message}`);
  }
}

/** Whether the folder link `path` resolves to `dir` itself or a folder above it. */
async function linksToAncestor(path: string, dir: string): Promise<boolean> {
  const target = await Deno.realPath(path);
  const here = await Deno.realPath(dir);
  return here === target || here.startsWith(target.endsWith("/") ? target : `${target}/`);
}

async function readDirSorted(
  dir: string,
): Promise<{ name: string; path: string; info: Deno.FileInfo }[]> {
  const out: { name: string; path: string; info: Deno.FileInfo }[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      const path = join(dir, entry.name);
      const info = entry.isSymlink ? await statOrNull(path) : await Deno.stat(path);
      if (info === null) continue;
      // A link back to this folder or one above it would be walked forever: its files are
      // read through the folder itself.
      if (entry.isSymlink && info.isDirectory && await linksToAncestor(path, dir)) continue;
      out.push({ name: entry.name, path, info });
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    if (error instanceof DataError) throw error;
    throw new DataError(`${dir}: cannot list folder: ${(error as Error).message}`);
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

function hasExtension(name: string, extensions: readonly string[]): boolean {
  return extensions.some((e) => name.toLowerCase().endsWith(e));
}

/**
 * The error for a matched path that is neither a regular file nor a folder (a FIFO, a
 * socket, a device): it is reported, never opened (reading it could block forever).
 */
function notAFileError(
  path: string,
  info: Deno.FileInfo,
  extensions: readonly string[],
  where = "",
): DataError {
  return new DataError(
    `${path}: is ${describeEntry(info)}${where}, expected a regular ${
      extensions.join("/")
    } file or a folder`,
  );
}

/** All files under a folder (recursively) whose names end with one of `extensions`. */
async function filesUnder(
  dir: string,
  extensions: readonly string[],
  out: string[],
): Promise<void> {
  for (const entry of await readDirSorted(dir)) {
    if (entry.info.isDirectory) await filesUnder(entry.path, extensions, out);
    else if (hasExtension(entry.name, extensions)) {
      if (!entry.info.isFile) {
        throw notAFileError(entry.path, entry.info, extensions, ` (found in folder ${dir})`);
      }
      out.push(entry.path);
    }
  }
}

async function matchGlob(
  dir: string,
  segments: readonly string[],
  extensions: readonly string[],
  out: string[],
): Promise<void> {
  if (segments.length === 0) return;
  const [head, ...rest] = segments;
  if (head === "**") {
    if (rest.length === 0) {
      await filesUnder(dir, extensions, out);
      return;
    }
    await matchGlob(dir, rest, extensions, out);
    for (const entry of await readDirSorted(dir)) {
      if (entry.info.isDirectory) await matchGlob(entry.path, segments, extensions, out);
    }
    return;
  }
  if (!GLOB_CHARS.test(head)) {
    const path = join(dir, head);
    const info = await statOrNull(path);
    if (info === null) return;
    if (rest.length === 0) {
      if (info.isFile) out.push(path);
      else if (info.isDirectory) await filesUnder(path, extensions, out);
      else throw notAFileError(path, info, extensions);
    } else if (info.isDirectory) await matchGlob(path, rest, extensions, out);
    return;
  }
  const regex = globSegmentRegex(head);
  for (const entry of await readDirSorted(dir)) {
    if (!regex.test(entry.name)) continue;
    if (rest.length === 0) {
      if (entry.info.isDirectory) await filesUnder(entry.path, extensions, out);
      else if (hasExtension(entry.name, extensions)) {
        if (!entry.info.isFile) throw notAFileError(entry.path, entry.info, extensions);
        out.push(entry.path);
      }
    } else if (entry.info.isDirectory) {
      await matchGlob(entry.path, rest, extensions, out);
    }
  }
}

/**
 * Expands a glob pattern into the sorted list of files it matches.
 *
 * `*` matches any characters within one path segment, `?` one character, and a
 * `**` segment any number of folders (including none). Only files whose names
 * end with one of `extensions` match a pattern, and a matched folder stands for
 * every such file under it; a path without wildcards naming a file is taken
 * whatever its extension. Relative patterns resolve against `baseDir`.
 *
 * A matched entry that is neither a regular file nor a folder (a FIFO, a socket, a device)
 * is an error, never opened or silently skipped.
 *
 * @example
 * ```ts ignore
 * await expandGlob("po/**\/*.po", "/project", [".po"]); // ["/project/po/a.po", "/project/po/x/b.po"]
 * ```
 */
export async function expandGlob(
  pattern: string,
  baseDir: string,
  extensions: readonly string[],
): Promise<string[]> {
  const absolute = resolvePath(pattern, baseDir);
  const segments = absolute.split("/").filter((s) => s !== "");
  const firstGlob = segments.findIndex((s) => GLOB_CHARS.test(s) || s === "**");
  const out: string[] = [];
  if (firstGlob < 0) {
    const info = await statOrNull(absolute);
    if (info === null) return out;
    if (info.isFile) out.push(absolute);
    else if (info.isDirectory) await filesUnder(absolute, extensions, out);
    else throw notAFileError(absolute, info, extensions);
    return out;
  }
  const root = "/" + segments.slice(0, firstGlob).join("/");
  await matchGlob(root, segments.slice(firstGlob), extensions, out);
  return [...new Set(out)].sort();
}

/**
 * The `paths` option of the data plugins that read files, folders or glob patterns
 * (expanded by {@link expandPaths}): a list of strings, empty by default (which
 * {@link expandPaths} refuses, so the option is required); `description` says which files.
 */
export function pathsProperty(description: string): JsonSchema {
  return { type: "array", items: { type: "string" }, default: [], description };
}

/**
 * The splits of a plugin that reads files line by line: every file that `config.paths`
 * names (with one of `extensions`, relative to `baseDir`), read in order by `read` into one
 * corpus, then {@link finishSplits}. `plugin` labels a corpus of several files.
 */
export async function loadFileSplits<C extends CommonDataConfig & { paths: string[] }>(
  plugin: string,
  extensions: readonly string[],
  config: C,
  baseDir: string,
  read: (file: string, config: C, pairs: Example[]) => Promise<Example[]>,
): Promise<Splits> {
  const files = await expandPaths(config.paths, baseDir, extensions);
  const pairs: Example[] = [];
  for (const file of files) await read(file, config, pairs);
  const label = files.length === 1 ? files[0] : `${plugin} (${files.length} files)`;
  const { train, valid, test } = finishSplits(pairs, config, label);
  return { train, valid, test };
}

/**
 * Expands the `paths` option of a data plugin: files, folders (every file under
 * them ending in one of `extensions`) and glob patterns (see {@link expandGlob}),
 * relative to `baseDir`. Files keep the order of `paths`; each expansion is sorted.
 *
 * @throws {DataError} when `paths` is empty, a plain path does not exist or is neither a
 *   file nor a folder (a FIFO, a socket, a device), a glob or folder matches no file, or a
 *   matched entry is not a regular file. A file matched twice is read once.
 */
export async function expandPaths(
  paths: readonly string[],
  baseDir: string,
  extensions: readonly string[],
  option = "paths",
): Promise<string[]> {
  if (paths.length === 0) {
    throw new DataError(`${option} is empty: give at least one file, folder or glob pattern`);
  }
  const files: string[] = [];
  const seen = new Set<string>();
  for (const path of paths) {
    if (typeof path !== "string" || path === "") {
      throw new DataError(`${option}: entries must be non-empty strings`);
    }
    const absolute = resolvePath(path, baseDir);
    const isGlob = absolute.split("/").some((s) => GLOB_CHARS.test(s));
    if (!isGlob) {
      const info = await statOrNull(absolute);
      if (info === null) {
        throw new DataError(`${absolute}: file not found (from ${option} "${path}")`);
      }
      if (!info.isFile && !info.isDirectory) {
        throw notAFileError(absolute, info, extensions, ` (from ${option} "${path}")`);
      }
    }
    const matched = await expandGlob(path, baseDir, extensions);
    if (matched.length === 0) {
      const what = isGlob ? "glob pattern" : "folder";
      throw new DataError(
        `${option}: ${what} "${path}" (${absolute}) matched no ${extensions.join("/")} files`,
      );
    }
    for (const file of matched) {
      if (seen.has(file)) continue;
      seen.add(file);
      files.push(file);
    }
  }
  return files;
}
