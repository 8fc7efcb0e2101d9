/**
 * `deno task data libreoffice <lang>`: fetches LibreOffice's UI translations for a
 * language from Debian (package `libreoffice-l10n-<lang>`), stores the `.mo`
 * catalogs in `data/libreoffice/<lang>/`, and prints the number of pairs and the
 * manifest snippet for the `gettext` data plugin.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { basename, join, relative, resolve } from "node:path";
import { DataError, UserError } from "../core/errors.ts";
import { COMMON_DEFAULTS, finishSplits } from "../plugins/data/_common.ts";
import gettext, { type CatalogOptions, readCatalogPairs } from "../plugins/data/gettext.ts";
import { runMain } from "./_main.ts";

const HELP = `Usage: deno task data libreoffice <lang> [options]

Downloads LibreOffice's UI translations for <lang> (e.g. de, fr, pt-br) with
\`apt-get download libreoffice-l10n-<lang>\`, extracts the package, copies its
.mo catalogs to <dir>/libreoffice/<lang>/ and prints how many English-to-<lang>
pairs they hold, with the manifest snippet that uses them. When the catalogs
are already there, nothing is downloaded.

Needs Debian or Ubuntu (apt-get, and dpkg-deb or ar + tar) and access to the
distribution's archive; run \`sudo apt-get update\` first if the package is not found.

Options:
  --dir DIR      data folder (default: data)
  --force        download again even if the catalogs are present
  -h, --help     show this help

Exit codes: 0 done, 2 user error (arguments, download, data), 1 internal failure.`;

/** What {@link fetchLibreOffice} did. */
export interface FetchResult {
  /** Folder holding the `.mo` catalogs. */
  folder: string;
  /** Number of catalogs in it. */
  catalogs: number;
  /** Whether the catalogs were already there (no download). */
  cached: boolean;
  /** The downloaded package file name, when downloaded. */
  packageFile?: string;
}

/** Checks a language code and returns it lower-cased (the Debian package suffix). */
export function checkLanguage(lang: string | undefined): string {
  if (lang === undefined) {
    throw new UserError("libreoffice: give a language code, e.g. `deno task data libreoffice de`");
  }
  if (!/^[a-z]{2,3}(-[a-z0-9]{2,8})*$/i.test(lang)) {
    throw new UserError(
      `libreoffice: "${lang}" is not a language code (expected e.g. de, fr, pt-br, zh-cn)`,
    );
  }
  return lang.toLowerCase();
}

async function moFilesIn(folder: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const entry of Deno.readDir(folder)) {
      if (entry.isFile && entry.name.endsWith(".mo")) out.push(join(folder, entry.name));
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
  return out.sort();
}

async function walk(folder: string, out: string[]): Promise<string[]> {
  for await (const entry of Deno.readDir(folder)) {
    const path = join(folder, entry.name);
    if (entry.isDirectory) await walk(path, out);
    else if (entry.isFile) out.push(path);
  }
  return out;
}

/** Runs a command; returns its exit code and output, or null when the program is not installed. */
async function run(
  cmd: string,
  args: string[],
  cwd: string,
): Promise<{ code: number; stdout: string; stderr: string } | null> {
  try {
    const output = await new Deno.Command(cmd, {
      args,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

function lastLines(text: string, n = 3): string {
  return text.trim().split("\n").filter((l) => l.trim() !== "").slice(-n).join(" | ");
}

async function extractDeb(deb: string, into: string, work: string): Promise<void> {
  await Deno.mkdir(into, { recursive: true });
  const dpkg = await run("dpkg-deb", ["-x", deb, into], work);
  if (dpkg !== null) {
    if (dpkg.code !== 0) {
      throw new DataError(`${deb}: dpkg-deb -x failed: ${lastLines(dpkg.stderr)}`);
    }
    return;
  }
  // No dpkg-deb: a .deb is an ar archive holding data.tar.{xz,gz,zst}.
  const ar = await run("ar", ["x", deb], work);
  if (ar === null) {
    throw new UserError(
      "neither dpkg-deb nor ar is installed: cannot unpack the .deb package (install dpkg or binutils)",
    );
  }
  if (ar.code !== 0) throw new DataError(`${deb}: ar x failed: ${lastLines(ar.stderr)}`);
  const tarball = (await filesIn(work)).find((f) => /^data\.tar(\.\w+)?$/.test(basename(f)));
  if (tarball === undefined) throw new DataError(`${deb}: no data.tar.* member in the package`);
  const tar = await run("tar", ["-xf", tarball, "-C", into], work);
  if (tar === null) throw new UserError("tar is not installed: cannot unpack the .deb package");
  if (tar.code !== 0) throw new DataError(`${tarball}: tar -xf failed: ${lastLines(tar.stderr)}`);
}

async function filesIn(folder: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(folder)) {
    if (entry.isFile) out.push(join(folder, entry.name));
  }
  return out;
}

/**
 * Makes sure `<dataDir>/libreoffice/<lang>/` holds LibreOffice's `.mo` catalogs for
 * `lang`, downloading and unpacking `libreoffice-l10n-<lang>` when they are absent
 * (or `force` is set). The download happens in a temporary folder under
 * `<dataDir>/.cache/`, removed afterwards.
 *
 * @throws {UserError} when apt-get is missing or fails, or the package holds no catalogs.
 */
export async function fetchLibreOffice(
  lang: string,
  dataDir: string,
  options: { force?: boolean; log?: (message: string) => void } = {},
): Promise<FetchResult> {
  const log = options.log ?? (() => {});
  const code = checkLanguage(lang);
  const folder = resolve(dataDir, "libreoffice", code);
  const existing = await moFilesIn(folder);
  if (existing.length > 0 && !options.force) {
    log(`using the ${existing.length} catalogs already in ${folder} (--force downloads again)`);
    return { folder, catalogs: existing.length, cached: true };
  }
  const pkg = `libreoffice-l10n-${code}`;
  const cacheRoot = resolve(dataDir, ".cache");
  await Deno.mkdir(cacheRoot, { recursive: true });
  const work = await Deno.makeTempDir({ dir: cacheRoot, prefix: `${pkg}-` });
  try {
    log(`downloading ${pkg} with apt-get ...`);
    const apt = await run("apt-get", ["download", pkg], work);
    const advice =
      `this command needs Debian or Ubuntu (apt-get) and access to the distribution's archive; run \`sudo apt-get update\` and check that the package exists (\`apt-cache search libreoffice-l10n\`)`;
    if (apt === null) throw new UserError(`apt-get is not installed: ${advice}`);
    if (apt.code !== 0) {
      throw new UserError(
        `apt-get download ${pkg} failed (exit ${apt.code}: ${
          lastLines(apt.stderr) || lastLines(apt.stdout)
        }); ${advice}`,
      );
    }
    const deb = (await filesIn(work)).find((f) => f.endsWith(".deb"));
    if (deb === undefined) {
      throw new UserError(`apt-get download ${pkg} succeeded but left no .deb file in ${work}`);
    }
    const extracted = join(work, "extracted");
    await extractDeb(deb, extracted, work);
    const all = await walk(extracted, []);
    const catalogs = all.filter((f) => f.endsWith(".mo") && f.includes("/LC_MESSAGES/"));
    if (catalogs.length === 0) {
      throw new DataError(
        `${
          basename(deb)
        } holds no .mo catalogs (LC_MESSAGES/*.mo); it has ${all.length} files, e.g. ${
          all.slice(0, 3).map((f) => relative(extracted, f)).join(", ")
        }`,
      );
    }
    await Deno.mkdir(folder, { recursive: true });
    for (const old of existing) await Deno.remove(old);
    const names = new Set<string>();
    for (const file of catalogs.sort()) {
      let name = basename(file);
      // Two catalogs with one name (different folders): keep both.
      for (let k = 2; names.has(name); k++) name = basename(file, ".mo") + `_${k}.mo`;
      names.add(name);
      await Deno.copyFile(file, join(folder, name));
    }
    await Deno.writeTextFile(
      join(folder, "SOURCE.txt"),
      `Debian package: ${decodeURIComponent(basename(deb))}\nDownloaded: ${
        new Date().toISOString()
      }\n` +
        `Catalogs copied from: ${
          [...new Set(catalogs.map((f) => relative(extracted, join(f, ".."))))].join(", ")
        }\n`,
    );
    return {
      folder,
      catalogs: catalogs.length,
      cached: false,
      packageFile: decodeURIComponent(basename(deb)),
    };
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

async function libreoffice(args: string[], dir: string, force: boolean): Promise<number> {
  if (args.length > 1) {
    throw new UserError(
      `libreoffice takes one language code, got ${args.length}: ${args.join(" ")}`,
    );
  }
  const started = performance.now();
  const result = await fetchLibreOffice(args[0], dir, { force, log: (m) => console.log(m) });
  const fetched = performance.now();
  const defaults = Object.fromEntries(
    Object.entries(gettext.configSchema.properties as Record<string, { default: unknown }>).map(
      ([k, v]) => [k, v.default],
    ),
  );
  const options = defaults as unknown as CatalogOptions;
  const { pairs, stats } = await readCatalogPairs([result.folder], Deno.cwd(), options);
  const splits = finishSplits(pairs, { ...COMMON_DEFAULTS }, result.folder);
  const loaded = performance.now();
  const lang = checkLanguage(args[0]);
  const fromExperiments = relative(resolve("experiments"), result.folder);
  console.log(
    `${result.catalogs} catalogs in ${result.folder}${
      result.packageFile ? ` (from ${result.packageFile})` : ""
    }`,
  );
  console.log(
    `${stats.entries} entries; ${stats.pairs} English-to-${lang} pairs (skipped: ${stats.untranslated} untranslated, ${stats.fuzzy} fuzzy, ${stats.placeholders} mostly placeholders, ${stats.duplicateKeys} repeated keys)`,
  );
  console.log(
    `with the gettext plugin's defaults: ${splits.stats.kept} distinct pairs (${splits.stats.duplicates} duplicates dropped): train ${splits.train.length} / valid ${splits.valid.length} / test ${splits.test.length}`,
  );
  console.log(
    `time: ${
      result.cached ? "cached" : `download+extract ${((fetched - started) / 1000).toFixed(1)} s`
    }, parse ${((loaded - fetched) / 1000).toFixed(1)} s`,
  );
  console.log(`in a manifest under experiments/:`);
  console.log(
    `  "data": { "name": "gettext", "config": { "paths": [${JSON.stringify(fromExperiments)}] } }`,
  );
  return 0;
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      dir: { type: "string", default: "data" },
      force: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const [command, ...rest] = positionals;
  if (command === undefined) throw new UserError("give a command (libreoffice); see --help");
  if (command === "libreoffice") return await libreoffice(rest, values.dir, values.force);
  throw new UserError(`unknown command "${command}"; the only command is libreoffice (see --help)`);
}

if (import.meta.main) await runMain("data", main);
