/**
 * Data plugins (tsv, jsonl, moses, gettext, synthetic), the shared cleaning and
 * splitting in plugins/data/_common.ts, and the `deno task data` command.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DataError } from "../../core/errors.ts";
import { createAjv } from "../../core/manifest/ajv.ts";
import type { PluginDefinition } from "../../core/plugin.ts";
import type { Example, Splits } from "../../core/types.ts";
import {
  COMMON_DEFAULTS,
  type CommonDataConfig,
  expandGlob,
  expandPaths,
  finishSplits,
} from "../../plugins/data/_common.ts";
import { invalidUtf8Offset } from "../../core/lines.ts";
import gettext, {
  parseMo,
  parsePo,
  parsePoText,
  placeholderShare,
  readCatalog,
  stripAccelerators,
} from "../../plugins/data/gettext.ts";
import jsonl from "../../plugins/data/jsonl.ts";
import moses from "../../plugins/data/moses.ts";
import synthetic from "../../plugins/data/synthetic.ts";
import tsv from "../../plugins/data/tsv.ts";
import { hasStackTrace, ROOT_DIR, runTask } from "../_cli.ts";
import { standaloneDeps, withTempDir as withTempFolder } from "../_experiment.ts";

const FIXTURES = join(ROOT_DIR, "tests/fixtures/data");
const PLUGINS = [tsv, jsonl, moses, gettext, synthetic] as PluginDefinition<"data">[];

const deps = standaloneDeps(FIXTURES, 7);

/** The plugin's config with defaults filled in by ajv, as the manifest loader does. */
function configOf(plugin: PluginDefinition<"data">, config: Record<string, unknown> = {}) {
  const ajv = createAjv();
  const validate = ajv.compile(plugin.configSchema);
  const filled = structuredClone(config);
  assert.ok(validate(filled), `${plugin.name}: ${ajv.errorsText(validate.errors)}`);
  return filled;
}

async function load(
  plugin: PluginDefinition<"data">,
  config: Record<string, unknown> = {},
  baseDir = FIXTURES,
): Promise<Splits> {
  const source = await plugin.create(configOf(plugin, config), { ...deps, baseDir });
  return await source.load();
}

function all(splits: Splits): Example[] {
  return [...splits.train, ...splits.valid, ...splits.test];
}

function sortPairs(pairs: Example[]): string[] {
  return pairs.map((p) => `${p.source} => ${p.reference}`).sort();
}

/** Keeps every pair in train so loaders can be checked on tiny fixtures. */
const NO_SPLIT = { validSize: 0, testSize: 0 };

/** {@link withTempFolder} with folders named rest_data_test_*. */
function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  return withTempFolder(fn, "rest_data_test_");
}

async function rejectsData(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof DataError, `expected DataError, got ${error}`);
    assert.match((error as Error).message, pattern);
    return true;
  });
}

function throwsData(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof DataError, `expected DataError, got ${error}`);
    assert.match((error as Error).message, pattern);
    return true;
  });
}

// --- schemas -----------------------------------------------------------------

Deno.test("data plugins: schemas compile, every option has a default, names are file stems", () => {
  const names = ["tsv", "jsonl", "moses", "gettext", "synthetic"];
  assert.deepEqual(PLUGINS.map((p) => p.name), names);
  for (const plugin of PLUGINS) {
    assert.equal(plugin.kind, "data");
    assert.equal(plugin.configSchema.additionalProperties, false);
    const config = configOf(plugin);
    assert.deepEqual(
      Object.keys(config).sort(),
      Object.keys(plugin.configSchema.properties).sort(),
    );
    for (const key of Object.keys(COMMON_DEFAULTS)) {
      assert.ok(key in config, `${plugin.name}.${key}`);
    }
    const smoke = plugin.smoke?.(structuredClone(config));
    assert.ok(smoke !== undefined, `${plugin.name} has a smoke hook`);
    const validate = createAjv().compile(plugin.configSchema);
    assert.ok(validate(smoke));
  }
});

Deno.test("data plugins: create with the defaults does not touch the disk; load checks required paths", async () => {
  for (const plugin of PLUGINS) {
    const instance = await plugin.create(configOf(plugin), deps);
    assert.equal(typeof instance.load, "function");
  }
});

// --- tsv -----------------------------------------------------------------------

Deno.test("tsv: columns, header, whitespace, empty sides and pair dedup", async () => {
  const splits = await load(tsv, {
    paths: ["pairs.tsv"],
    header: true,
    sourceColumn: 1,
    referenceColumn: 2,
    ...NO_SPLIT,
  });
  const pairs = all(splits);
  assert.equal(pairs.length, 10); // 11 rows: 1 empty source, 1 exact duplicate
  assert.deepEqual(pairs[0], { source: "The house is small.", reference: "Das Haus ist klein." });
  assert.ok(pairs.some((p) => p.source === "Good morning!" && p.reference === "Guten Morgen!"));
  assert.equal(pairs.filter((p) => p.source === "The dog barks.").length, 2); // two references
  const bySource = all(
    await load(tsv, {
      paths: ["pairs.tsv"],
      header: true,
      sourceColumn: 1,
      referenceColumn: 2,
      dedup: "source",
      ...NO_SPLIT,
    }),
  );
  assert.equal(bySource.length, 9);
  assert.deepEqual(bySource.filter((p) => p.source === "The dog barks.").map((p) => p.reference), [
    "Der Hund bellt.",
  ]);
});

Deno.test("tsv: a row with too few columns names the file and line; skipBadRows skips it", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "bad.tsv");
    await Deno.writeTextFile(file, "a\tA\nb\tB\nonly one column\nc\tC\n");
    await rejectsData(
      load(tsv, { paths: [file] }),
      new RegExp(`${file}:3: has 1 tab-separated column`),
    );
    const pairs = all(await load(tsv, { paths: [file], skipBadRows: true, ...NO_SPLIT }));
    assert.deepEqual(pairs.map((p) => p.source), ["a", "b", "c"]);
  });
});

Deno.test("tsv: invalid UTF-8 names the file, line and byte offset", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "latin.tsv");
    await Deno.writeFile(
      file,
      new Uint8Array([0x61, 0x09, 0x62, 0x0a, 0x54, 0xfc, 0x72, 0x09, 0x64]),
    );
    await rejectsData(
      load(tsv, { paths: [file] }),
      new RegExp(`${file}:2: not valid UTF-8 \\(byte offset 5\\)`),
    );
  });
  assert.equal(invalidUtf8Offset(new TextEncoder().encode("grün")), -1);
  assert.equal(invalidUtf8Offset(new Uint8Array([0x61, 0xc3])), 1); // truncated sequence
  assert.equal(invalidUtf8Offset(new Uint8Array([0xed, 0xa0, 0x80])), 0); // surrogate
});

Deno.test("data: a missing file is a DataError naming the path", async () => {
  const missing = join(FIXTURES, "does_not_exist.tsv");
  await rejectsData(
    load(tsv, { paths: ["does_not_exist.tsv"] }),
    new RegExp(`${missing}: file not found`),
  );
  await rejectsData(load(jsonl, { paths: [missing] }), new RegExp(missing));
  await rejectsData(
    load(gettext, { paths: ["nowhere/*.po"] }),
    /glob pattern "nowhere\/\*\.po".*matched no/,
  );
  await rejectsData(
    load(moses, { source: "moses.en", reference: "nope.de" }),
    new RegExp(`${join(FIXTURES, "nope.de")}: file not found`),
  );
  await rejectsData(load(moses, { source: "moses.en" }), /moses: config "reference" is required/);
  await rejectsData(load(tsv), /paths is empty/);
});

// --- jsonl ---------------------------------------------------------------------

Deno.test("jsonl: default fields, blank lines, dedup; dotted field paths", async () => {
  const pairs = all(await load(jsonl, { paths: ["pairs.jsonl"], ...NO_SPLIT }));
  assert.equal(pairs.length, 5);
  assert.deepEqual(pairs[2], {
    source: "The book is on the table.",
    reference: "Das Buch liegt auf dem Tisch.",
  });
  const nested = all(
    await load(jsonl, {
      paths: ["nested.jsonl"],
      sourceField: "translation.en",
      referenceField: "translation.de",
      ...NO_SPLIT,
    }),
  );
  assert.deepEqual(nested.map((p) => p.reference), [
    "Rotwein",
    "Weißbrot",
    "Kaltes Wasser",
    "Heißer Tee",
  ]);
});

Deno.test("jsonl: bad JSON and missing fields name the file and line", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "bad.jsonl");
    await Deno.writeTextFile(file, '{"source": "a", "reference": "A"}\n{"source": "b", \n');
    await rejectsData(load(jsonl, { paths: [file] }), new RegExp(`${file}:2: not valid JSON`));
    await Deno.writeTextFile(
      file,
      '{"source": "a", "reference": "A"}\n{"source": "b"}\n{"source": 3, "reference": "C"}\n',
    );
    await rejectsData(
      load(jsonl, { paths: [file] }),
      new RegExp(`${file}:2: field "reference" is missing`),
    );
    await rejectsData(
      load(jsonl, { paths: [file], sourceField: "nope" }),
      new RegExp(`${file}:1: field "nope" is missing`),
    );
    const kept = all(await load(jsonl, { paths: [file], skipBadRows: true, ...NO_SPLIT }));
    assert.deepEqual(kept, [{ source: "a", reference: "A" }]);
  });
});

// --- moses -----------------------------------------------------------------------

Deno.test("moses: two aligned files; CRLF lines; a line-count mismatch names both files", async () => {
  const pairs = all(await load(moses, { source: "moses.en", reference: "moses.de", ...NO_SPLIT }));
  assert.equal(pairs.length, 6);
  assert.deepEqual(pairs[1], { source: "Two", reference: "Zwei" });
  const en = join(FIXTURES, "moses.en");
  const short = join(FIXTURES, "moses_short.de");
  await rejectsData(
    load(moses, { source: "moses.en", reference: "moses_short.de" }),
    new RegExp(`${en} has 6 lines, ${short} has 3`),
  );
});

Deno.test("data: CR-only (old Mac) line endings are named, in every text format", async () => {
  await withTempDir(async (dir) => {
    const files: [string, string][] = [
      ["mac.tsv", "Hallo\tHello\rWelt\tWorld\rJa\tYes\r"],
      ["mac.jsonl", '{"source":"a","reference":"b"}\r{"source":"c","reference":"d"}\r'],
      ["mac.en", "One\rTwo\rThree\r"],
      ["mac.po", 'msgid ""\rmsgstr ""\r\rmsgid "Open"\rmsgstr "Öffnen"\r'],
      // CR-only lines, then an LF added at the end (as some editors do)
      ["end.tsv", "Hallo\tHello\rWelt\tWorld\n"],
    ];
    for (const [name, text] of files) await Deno.writeTextFile(join(dir, name), text);
    const crOnly = (name: string) =>
      new RegExp(`^${join(dir, name)}: uses CR-only line endings.*convert them to LF`);
    await rejectsData(load(tsv, { paths: ["mac.tsv"] }, dir), crOnly("mac.tsv"));
    await rejectsData(load(jsonl, { paths: ["mac.jsonl"] }, dir), crOnly("mac.jsonl"));
    await rejectsData(
      load(moses, { source: "mac.en", reference: "mac.en" }, dir),
      crOnly("mac.en"),
    );
    await rejectsData(load(gettext, { paths: ["mac.po"] }, dir), crOnly("mac.po"));
    await rejectsData(load(tsv, { paths: ["end.tsv"] }, dir), crOnly("end.tsv"));
    // CRLF and a stray CR after the first line are read as before.
    await Deno.writeTextFile(join(dir, "ok.tsv"), "Hallo\tHello\r\nWelt\tWor\rld\r\nJa\tYes");
    const ok = all(await load(tsv, { paths: ["ok.tsv"], ...NO_SPLIT }, dir));
    assert.deepEqual(ok.map((p) => p.reference), ["Hello", "Wor ld", "Yes"]);
  });
});

// --- gettext: parsing ------------------------------------------------------------------

const APP_PO = join(FIXTURES, "gettext/de/app.po");

Deno.test("gettext: .po entries with context, plurals, flags, multi-line strings and escapes", async () => {
  const catalog = await readCatalog(APP_PO);
  assert.equal(catalog.charset, "utf-8");
  const entries = catalog.entries;
  assert.equal(entries.length, 12); // header + 11 entries; the obsolete #~ entry is skipped
  assert.equal(entries[0].msgid, "");
  assert.match(entries[0].msgstr[0], /^Project-Id-Version: rest-fixture 1.0\nLanguage: de\n/);
  const save = entries.filter((e) => e.msgid === "~Save");
  assert.deepEqual(save.map((e) => [e.context, e.msgstr[0]]), [
    ["menu|file", "~Speichern"],
    ["dialog|button", "Sichern"],
  ]);
  const plural = entries.find((e) => e.msgidPlural !== undefined)!;
  assert.deepEqual(plural.msgstr, ["Eine Datei gelöscht", "%d Dateien gelöscht"]);
  assert.deepEqual(plural.flags, ["c-format"]);
  assert.deepEqual(entries.find((e) => e.msgid === "Close window")!.flags, ["fuzzy"]);
  const long = entries.find((e) => e.msgid.startsWith("This is"))!;
  assert.equal(long.msgid, "This is a long message that spans several lines.");
  assert.equal(
    long.msgstr[0],
    "Dies ist eine lange Nachricht, die sich über mehrere Zeilen erstreckt.",
  );
  assert.equal(long.position, 35);
  const escaped = entries.find((e) => e.msgid.startsWith("Say"))!;
  assert.equal(escaped.msgid, 'Say "hello"\tand\\or wave\n');
  assert.equal(escaped.msgstr[0], 'Sag "hallo"\tund\\oder winke\n');
  assert.equal(entries.find((e) => e.msgid === "Untranslated string")!.msgstr[0], "");
  assert.ok(!entries.some((e) => e.msgid === "Old string"));
  assert.equal(parsePoText('msgid "\\101\\x42\\a\\?"\nmsgstr "x"\n', "t.po")[0].msgid, "AB\x07?");
});

Deno.test("gettext: .mo in both byte orders equals the .po it was compiled from", async () => {
  const po = (await readCatalog(APP_PO)).entries
    .filter((e) => !e.flags.includes("fuzzy") && e.msgstr.some((s) => s !== ""))
    .map((e) => ({
      context: e.context,
      msgid: e.msgid,
      msgidPlural: e.msgidPlural,
      msgstr: e.msgstr,
    }));
  const strip = (es: typeof po) =>
    sortPairs(
      es.map((e) => ({
        source: `${e.context}|${e.msgid}|${e.msgidPlural}`,
        reference: e.msgstr.join("|"),
      })),
    );
  for (const name of ["app.mo", "app_be.mo"]) {
    const mo = (await readCatalog(join(FIXTURES, "gettext/mo", name))).entries
      .map((e) => ({
        context: e.context,
        msgid: e.msgid,
        msgidPlural: e.msgidPlural,
        msgstr: e.msgstr,
      }));
    assert.deepEqual(strip(mo), strip(po), name);
  }
  const le = all(await load(gettext, { paths: ["gettext/mo/app.mo"], ...NO_SPLIT }));
  const be = all(await load(gettext, { paths: ["gettext/mo/app_be.mo"], ...NO_SPLIT }));
  const fromPo = all(await load(gettext, { paths: ["gettext/de/app.po"], ...NO_SPLIT }));
  assert.deepEqual(sortPairs(le), sortPairs(fromPo));
  assert.deepEqual(be, le);
});

Deno.test("gettext: ISO-8859-1 catalogs (.po and .mo) are decoded with the header's charset", async () => {
  const expected = ["Door => Tür", "Size => Größe", "Street => Straße"];
  for (const path of ["gettext/latin1.po", "gettext/mo/latin1.mo"]) {
    const catalog = await readCatalog(join(FIXTURES, path));
    assert.equal(catalog.charset, "iso-8859-1");
    assert.deepEqual(
      sortPairs(all(await load(gettext, { paths: [path], ...NO_SPLIT }))),
      expected,
      path,
    );
  }
});

Deno.test("gettext: default options give the expected pairs", async () => {
  const pairs = all(await load(gettext, { paths: ["gettext/de/app.po"], ...NO_SPLIT }));
  assert.deepEqual(sortPairs(pairs), [
    "E&xit program => Programm &beenden", // "&" is not a default marker
    "Insert table => Tabelle einfügen", // "_" mnemonics stripped
    "One file deleted => Eine Datei gelöscht", // plural: first form
    "Open file => Datei öffnen",
    "Save => Sichern", // same msgid, other context
    "Save => Speichern",
    'Say "hello" and\\or wave => Sag "hallo" und\\oder winke', // tab and newline collapsed
    "This is a long message that spans several lines. => Dies ist eine lange Nachricht, die sich über mehrere Zeilen erstreckt.",
  ]);
  // Skipped: header, fuzzy "Close window", "%1" (all placeholder), untranslated, obsolete.
});

Deno.test("gettext: includeFuzzy, plurals, stripAccelerators, maxPlaceholderShare, contextAsKey", async () => {
  const run = async (config: Record<string, unknown>) =>
    sortPairs(all(await load(gettext, { paths: ["gettext/de/app.po"], ...NO_SPLIT, ...config })));
  const base = await run({});
  const fuzzy = await run({ includeFuzzy: true });
  assert.deepEqual(fuzzy.filter((p) => !base.includes(p)), ["Close window => Fenster schließen"]);
  const allPlurals = await run({ plurals: "all" });
  assert.deepEqual(allPlurals.filter((p) => !base.includes(p)), [
    "%d files deleted => %d Dateien gelöscht",
  ]);
  const noPlurals = await run({ plurals: "skip" });
  assert.deepEqual(base.filter((p) => !noPlurals.includes(p)), [
    "One file deleted => Eine Datei gelöscht",
  ]);
  const raw = await run({ stripAccelerators: "" });
  assert.ok(
    raw.includes("~Save => ~Speichern") && raw.includes("_Insert table => Tabelle _einfügen"),
  );
  const amp = await run({ stripAccelerators: "&" });
  assert.ok(amp.includes("Exit program => Programm beenden"));
  const placeholders = await run({ maxPlaceholderShare: 1 });
  assert.deepEqual(placeholders.filter((p) => !base.includes(p)), ["%1 => %1"]);
  const byMsgid = await run({ contextAsKey: false });
  assert.deepEqual(byMsgid.filter((p) => p.startsWith("Save")), ["Save => Speichern"]);
});

Deno.test("gettext: accelerator and placeholder helpers", () => {
  assert.equal(stripAccelerators("~Open", "~_"), "Open");
  assert.equal(stripAccelerators("A_bsatzvorlage:", "~_"), "Absatzvorlage:");
  assert.equal(stripAccelerators("OPT_PROB_HIT", "~_"), "OPT_PROB_HIT"); // several candidates
  assert.equal(stripAccelerators("Kashida_-sensitiv", "~_"), "Kashida-sensitiv");
  assert.equal(stripAccelerators("PDF_/A version:", "~_"), "PDF/A version:");
  assert.equal(stripAccelerators("an underscore (_).", "~_"), "an underscore (_).");
  assert.equal(stripAccelerators("a tilde (~) before", "~_"), "a tilde (~) before");
  assert.equal(stripAccelerators("Ignore ~~ and", "~_"), "Ignore ~~ and");
  assert.equal(stripAccelerators("Run %FILE_NAME now", "~_"), "Run %FILE_NAME now");
  assert.equal(stripAccelerators("Save && E&xit", "&"), "Save & Exit");
  assert.equal(stripAccelerators("Fish &amp; Chips", "&"), "Fish &amp; Chips");
  assert.equal(stripAccelerators("~Open", ""), "~Open");
  assert.equal(placeholderShare("%1"), 1);
  assert.equal(placeholderShare("$(ARG1): %2"), 1);
  assert.equal(placeholderShare("Open file"), 0);
  assert.ok(placeholderShare("%s of %s") > 0.5);
  assert.ok(placeholderShare("Delete %1 files?") < 0.5);
});

Deno.test("gettext: paths accept folders and globs (*, ?, **); the first catalog of a key wins", async () => {
  const rel = (files: string[]) => files.map((f) => f.slice(FIXTURES.length + 1));
  assert.deepEqual(rel(await expandGlob("gettext/**/*.po", FIXTURES, [".po", ".mo"])), [
    "gettext/de/app.po",
    "gettext/de/sub/extra.po",
    "gettext/latin1.po",
  ]);
  assert.deepEqual(rel(await expandGlob("gettext/de/?pp.po", FIXTURES, [".po"])), [
    "gettext/de/app.po",
  ]);
  assert.deepEqual(rel(await expandGlob("gettext/*", FIXTURES, [".po"])), [
    "gettext/de/app.po", // folders matched by * stand for the catalogs under them
    "gettext/de/sub/extra.po",
    "gettext/latin1.po", // README.md is not a catalog
  ]);
  assert.deepEqual(rel(await expandGlob(join(FIXTURES, "gettext/**/*_be.mo"), "/", [".mo"])), [
    "gettext/mo/app_be.mo",
  ]);
  assert.deepEqual(rel(await expandPaths(["gettext/de", "gettext/de/app.po"], FIXTURES, [".po"])), [
    "gettext/de/app.po",
    "gettext/de/sub/extra.po",
  ]);
  const pairs = sortPairs(all(await load(gettext, { paths: ["gettext/de"], ...NO_SPLIT })));
  assert.ok(pairs.includes("Open file => Datei öffnen"));
  assert.ok(!pairs.includes("Open file => Datei aufmachen")); // repeated key: first catalog wins
  assert.ok(pairs.includes("Print => Drucken") && pairs.includes("Quit => Beenden"));
  assert.equal(pairs.length, 10);
});

// --- gettext: corrupt input --------------------------------------------------------------

Deno.test("gettext: truncated and corrupt .mo files give DataError with the byte offset", async () => {
  const bytes = await Deno.readFile(join(FIXTURES, "gettext/mo/app.mo"));
  await withTempDir(async (dir) => {
    const file = join(dir, "cut.mo");
    await Deno.writeFile(file, bytes.slice(0, bytes.length - 40));
    await rejectsData(
      readCatalog(file),
      new RegExp(
        `${file}: truncated or corrupt \\.mo file: .*string \\d+ \\(table entry at byte offset \\d+\\).*ends at byte offset ${
          bytes.length - 40
        }`,
      ),
    );
    await Deno.writeFile(file, bytes.slice(0, 40));
    await rejectsData(readCatalog(file), /table .* but the file ends at byte offset 40/);
    await Deno.writeFile(file, bytes.slice(0, 20));
    await rejectsData(readCatalog(file), /header needs 28 bytes, the file ends at byte offset 20/);
    await Deno.writeFile(file, bytes.slice(0, 2));
    await rejectsData(readCatalog(file), /truncated \.mo file: 2 bytes.*byte offset 2/);
    const bad = bytes.slice();
    bad[0] = 0x00;
    await Deno.writeFile(file, bad);
    await rejectsData(readCatalog(file), /not a \.mo file: bad magic number 0x.* at byte offset 0/);
    await rejectsData(load(gettext, { paths: [file] }), /bad magic number/);
  });
  // A string offset pointing past the end (corrupt, not truncated).
  const corrupt = bytes.slice();
  const view = new DataView(corrupt.buffer);
  const originals = view.getUint32(12, true);
  view.setUint32(originals + 4, corrupt.length + 100, true);
  throwsData(
    () => parseMo(corrupt, "c.mo"),
    new RegExp(`original string 0 \\(table entry at byte offset ${originals}\\)`),
  );
});

Deno.test("gettext: bad .po syntax gives DataError naming the line", () => {
  const parse = (text: string) => () => parsePo(new TextEncoder().encode(text), "bad.po");
  throwsData(parse('msgid "a"\nmsgstr "b"\nfoo bar\n'), /^bad\.po:3: expected msgctxt, msgid/);
  throwsData(
    parse('msgid "a"\n\nmsgid "b"\nmsgstr "c"\n'),
    /^bad\.po:2: msgid at line 1 has no msgstr/,
  );
  throwsData(parse('msgid "a"\nmsgstr "b\n'), /^bad\.po:2: unterminated string/);
  throwsData(parse('msgid "a"\nmsgstr "\\q"\n'), /^bad\.po:2: unknown escape sequence \\q/);
  throwsData(
    parse('msgid "a"\nmsgstr "b"\n"c" x\n'),
    /^bad\.po:3: unexpected text after the closing quote/,
  );
  throwsData(parse('"orphan"\n'), /^bad\.po:1: string continuation without a keyword/);
  throwsData(parse('msgid "a"\nmsgid_plural "as"\nmsgstr "b"\n'), /^bad\.po:3: .*needs an index/);
  throwsData(parse('msgid "a"\nmsgstr[0] "b"\n'), /^bad\.po:2: msgstr\[0\] without msgid_plural/);
  throwsData(parse('msgid "a"\nmsgid_plural "as"\nmsgstr[1] "b"\n'), /has no msgstr\[0\]/);
  throwsData(
    parse('msgid ""\nmsgstr "Content-Type: text/plain; charset=x-no-such\\n"\n'),
    /charset "x-no-such" is not supported/,
  );
  const latin = new Uint8Array([
    ...new TextEncoder().encode('msgid "a"\nmsgstr "'),
    0xfc,
    0x22,
    0x0a,
  ]);
  throwsData(() => parsePo(latin, "u.po"), /^u\.po:2: not valid UTF-8 \(byte offset 18\)/);
});

// --- shared cleaning and splitting ---------------------------------------------------------

function corpus(n: number): Example[] {
  return Array.from({ length: n }, (_, i) => ({
    source: `source sentence number ${i}`,
    reference: `Zielsatz Nummer ${i}`,
  }));
}

const common = (config: Partial<CommonDataConfig> = {}): CommonDataConfig => ({
  ...COMMON_DEFAULTS,
  ...config,
});

Deno.test("finishSplits: deterministic for a seed, different across seeds, sources disjoint", () => {
  const pairs = [
    ...corpus(200),
    ...corpus(50).map((p) => ({ ...p, reference: p.reference + " (2)" })),
  ];
  const a = finishSplits(pairs, common({ validSize: 20, testSize: 0.1 }), "c");
  const b = finishSplits(pairs, common({ validSize: 20, testSize: 0.1 }), "c");
  assert.deepEqual(a, b);
  const c = finishSplits(pairs, common({ validSize: 20, testSize: 0.1, seed: 2 }), "c");
  assert.notDeepEqual(c.valid, a.valid);
  assert.equal(all(a).length, 250);
  assert.ok(a.valid.length >= 20 && a.valid.length <= 21, `valid ${a.valid.length}`);
  assert.ok(a.test.length >= 25 && a.test.length <= 26, `test ${a.test.length}`);
  for (const s of [a, c]) {
    const sets = [s.train, s.valid, s.test].map((split) => new Set(split.map((p) => p.source)));
    for (let i = 0; i < 3; i++) {
      for (let j = i + 1; j < 3; j++) {
        for (const source of sets[i]) assert.ok(!sets[j].has(source), `"${source}" in two splits`);
      }
    }
  }
  // Within a split, corpus order is kept.
  const index = new Map(pairs.map((p, i) => [`${p.source}|${p.reference}`, i]));
  const order = a.train.map((p) => index.get(`${p.source}|${p.reference}`)!);
  assert.deepEqual(order, [...order].sort((x, y) => x - y));
});

Deno.test("finishSplits: dedup modes, length filters, maxPairs, reverse", () => {
  const pairs: Example[] = [
    { source: "a b c", reference: "A B C" },
    { source: "a  b c ", reference: "A B C" }, // same after whitespace normalisation
    { source: "a b c", reference: "X Y Z" },
    { source: "one", reference: "eins" },
    { source: "one two three four five six", reference: "eins" },
    { source: "x y", reference: "" },
  ];
  const none = { validSize: 0, testSize: 0 };
  assert.equal(all(finishSplits(pairs, common(none), "t")).length, 4);
  assert.equal(all(finishSplits(pairs, common({ ...none, dedup: "source" }), "t")).length, 3);
  assert.equal(all(finishSplits(pairs, common({ ...none, dedup: "none" }), "t")).length, 5);
  const stats = finishSplits(pairs, common({ ...none, minWords: 2, maxWords: 5 }), "t").stats;
  assert.deepEqual(
    {
      read: stats.read,
      empty: stats.empty,
      tooShort: stats.tooShort,
      duplicates: stats.duplicates,
      kept: stats.kept,
    },
    { read: 6, empty: 1, tooShort: 2, duplicates: 1, kept: 2 },
  );
  assert.equal(finishSplits(pairs, common({ ...none, maxWords: 3 }), "t").stats.tooLong, 1);
  assert.equal(finishSplits(pairs, common({ ...none, maxRatio: 3 }), "t").stats.ratio, 1);
  const capped = finishSplits(corpus(100), common({ ...none, maxPairs: 30 }), "t");
  assert.equal(all(capped).length, 30);
  assert.equal(capped.stats.capped, 70);
  assert.deepEqual(capped, finishSplits(corpus(100), common({ ...none, maxPairs: 30 }), "t"));
  const reversed = all(
    finishSplits([{ source: "one", reference: "eins" }], common({ ...none, reverse: true }), "t"),
  );
  assert.deepEqual(reversed, [{ source: "eins", reference: "one" }]);
});

Deno.test("finishSplits: nothing left after the filters is a DataError saying why", () => {
  throwsData(
    () => finishSplits(corpus(10), common({ minWords: 6 }), "my.tsv"),
    /^my\.tsv: no pairs left after filtering: read 10 pairs, 10 were shorter than minWords=6$/,
  );
  throwsData(
    () =>
      finishSplits([{ source: " ", reference: "x" }, ...corpus(3)], common({ maxWords: 2 }), "c"),
    /read 4 pairs, 1 had an empty side, 3 were longer than maxWords=2/,
  );
  throwsData(
    () => finishSplits([], common(), "empty.tsv"),
    /^empty\.tsv: no pairs left after filtering: read 0 pairs$/,
  );
  throwsData(
    () => finishSplits(corpus(10), common({ validSize: 5, testSize: 5 }), "c"),
    /leaving none for training/,
  );
});

Deno.test("data plugins: same config gives identical splits; the seed changes them", async () => {
  const config = {
    paths: ["pairs.tsv"],
    header: true,
    sourceColumn: 1,
    referenceColumn: 2,
    validSize: 2,
    testSize: 2,
  };
  const a = await load(tsv, config);
  assert.deepEqual(await load(tsv, config), a);
  assert.equal(a.valid.length + a.test.length >= 4, true);
  const seeds = await Promise.all([2, 3, 4, 5].map((seed) => load(tsv, { ...config, seed })));
  assert.ok(seeds.some((s) => JSON.stringify(s) !== JSON.stringify(a)));
});

// --- synthetic -------------------------------------------------------------------------------

Deno.test("synthetic: deterministic, sized by pairs, seed-dependent, aligned word counts", async () => {
  const a = await load(synthetic, { pairs: 500 });
  const b = await load(synthetic, { pairs: 500 });
  assert.deepEqual(a, b);
  const pairs = all(a);
  assert.equal(pairs.length, 500);
  assert.equal(new Set(pairs.map((p) => p.source)).size, 500);
  assert.equal(a.valid.length, 25);
  assert.equal(a.test.length, 25);
  for (const p of pairs) {
    const n = p.source.split(" ").length;
    assert.equal(p.reference.split(" ").length, n, `${p.source} => ${p.reference}`);
    assert.ok(n >= 5 && n <= 10);
  }
  const c = await load(synthetic, { pairs: 500, seed: 2 });
  assert.notDeepEqual(all(c).map((p) => p.reference), pairs.map((p) => p.reference));
  const short = all(await load(synthetic, { pairs: 200, minWords: 5, maxWords: 6 }));
  assert.ok(short.every((p) => p.source.split(" ").length <= 6));
  const full = await load(synthetic);
  assert.equal(all(full).length, 3000);
  await rejectsData(
    load(synthetic, { pairs: 50, minWords: 11 }),
    /could only generate 0 distinct pairs/,
  );
});

Deno.test("synthetic: grammar — verb-final without an adverb, agreement on plural subjects", async () => {
  const pairs = all(await load(synthetic, { pairs: 300 }));
  const simple = pairs.find((p) => /^the \w+ \w+s the \w+$/.test(p.source))!;
  assert.ok(simple, "a 'the N Vs the N' sentence exists");
  const de = simple.reference.split(" ");
  assert.ok(de[de.length - 1].endsWith("t"), `singular verb last: ${simple.reference}`);
  assert.match(simple.reference, /^(der|die|das) \S+ (den|die|das) \S+ \S+t$/);
  const adverbs = [
    "today",
    "tomorrow",
    "yesterday",
    "often",
    "rarely",
    "again",
    "now",
    "later",
    "always",
    "sometimes",
  ];
  const withAdverb = pairs.find((p) => adverbs.includes(p.source.split(" ").at(-1)!))!;
  const words = withAdverb.reference.split(" ");
  assert.ok(
    /(t|en)$/.test(words[1]),
    `verb second after the fronted adverb: ${withAdverb.reference}`,
  );
});

// --- deno task data ------------------------------------------------------------------------------

Deno.test("cli data: --help, usage errors exit 2 without a stack trace", async () => {
  const help = await runTask("data", ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: deno task data libreoffice <lang>/);
  for (const args of [[], ["nonsense"], ["libreoffice"], ["libreoffice", "de/../x"], ["--bogus"]]) {
    const r = await runTask("data", args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});

Deno.test("cli data libreoffice: uses catalogs already in the data folder", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "libreoffice", "de");
    await Deno.mkdir(target, { recursive: true });
    await Deno.copyFile(join(FIXTURES, "gettext/mo/app.mo"), join(target, "app.mo"));
    const r = await runTask("data", ["libreoffice", "de", "--dir", dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /already in/);
    assert.match(r.stdout, /8 English-to-de pairs/);
    assert.match(r.stdout, /"name": "gettext"/);
  });
});

Deno.test("cli data libreoffice: a failing apt-get is a one-line user error with advice", async () => {
  await withTempDir(async (dir) => {
    const bin = join(dir, "bin");
    await Deno.mkdir(bin);
    await Deno.writeTextFile(
      join(bin, "apt-get"),
      "#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n",
    );
    await Deno.chmod(join(bin, "apt-get"), 0o755);
    const r = await runTask("data", ["libreoffice", "xx", "--dir", join(dir, "data")], {
      env: { PATH: bin },
    });
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /apt-get download libreoffice-l10n-xx failed \(exit 100: E: Unable to locate package\)/,
    );
    assert.match(r.stderr, /apt-get update/);
    assert.ok(!hasStackTrace(r.stderr));
    const empty = await runTask("data", ["libreoffice", "xx", "--dir", join(dir, "data")], {
      env: { PATH: join(dir, "nothing") },
    });
    assert.equal(empty.code, 2);
    assert.match(empty.stderr, /apt-get is not installed/);
  });
});

// --- the real LibreOffice catalogs, when `deno task data libreoffice de` has run -----------------

const LIBREOFFICE_DE = join(ROOT_DIR, "data/libreoffice/de");
const haveLibreOffice = (() => {
  try {
    return Deno.statSync(LIBREOFFICE_DE).isDirectory;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "gettext: LibreOffice German UI catalogs (data/libreoffice/de, when downloaded)",
  ignore: !haveLibreOffice,
  async fn() {
    const splits = await load(gettext, { paths: [LIBREOFFICE_DE] });
    const pairs = all(splits);
    assert.ok(pairs.length > 10000, `${pairs.length} pairs`);
    assert.ok(splits.valid.length > 0 && splits.test.length > 0);
    const marked = pairs.filter((p) => /(^|\s)[~_]\p{L}/u.test(p.source + " " + p.reference));
    assert.deepEqual(marked, [], "accelerators stripped");
  },
});
