/**
 * Special files named as data: a FIFO, `/dev/zero`, `/dev/null`, a Unix socket, named
 * directly, found in a data folder or matched by a glob, and a catalog over its size limit.
 * Each is refused at once with a DataError naming the path and what it is; none is opened
 * (reading a FIFO blocks until a writer comes, `/dev/zero` never ends). Every case runs
 * under a time limit, so a hang fails the test instead of stalling the suite.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DataError } from "../../core/errors.ts";
import { readLines as readScoreLines } from "../../cli/score.ts";
import gettext, { MAX_MO_BYTES, MAX_PO_BYTES, readCatalog } from "../../plugins/data/gettext.ts";
import jsonl from "../../plugins/data/jsonl.ts";
import moses from "../../plugins/data/moses.ts";
import tsv from "../../plugins/data/tsv.ts";
import { loadStandalone as load, withTempDir as withTempFolder } from "../_experiment.ts";

/** How long a refusal may take before the case counts as a hang. */
const LIMIT_MS = 5000;

/** {@link withTempFolder} with folders named rest_special_files_test_*. */
function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  return withTempFolder(fn, "rest_special_files_test_");
}

async function mkfifo(path: string): Promise<void> {
  const { code, stderr } = await new Deno.Command("mkfifo", { args: [path] }).output();
  assert.equal(code, 0, `mkfifo ${path}: ${new TextDecoder().decode(stderr)}`);
}

/**
 * Writes nothing into each FIFO and closes it, so a reader stuck on one gets end-of-file
 * (used after a timeout: lets a hung read finish so the test run can end).
 */
async function releaseFifos(fifos: readonly string[]): Promise<void> {
  for (const fifo of fifos) {
    await new Deno.Command("timeout", { args: ["2", "sh", "-c", ': > "$1"', "sh", fifo] })
      .output();
  }
}

/**
 * Awaits `promise` and expects a DataError matching every pattern within {@link LIMIT_MS};
 * a hang fails (after releasing `fifos`).
 */
async function refusedQuickly(
  promise: Promise<unknown>,
  patterns: RegExp[],
  fifos: readonly string[] = [],
): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<"hang">((resolve) => {
    timer = setTimeout(() => resolve("hang"), LIMIT_MS);
  });
  const outcome = await Promise.race([
    promise.then(() => "resolved" as const, (error: unknown) => error),
    hang,
  ]);
  clearTimeout(timer);
  if (outcome === "hang") {
    await releaseFifos(fifos);
    await promise.catch(() => {});
    assert.fail(`no answer within ${LIMIT_MS} ms: the special file was opened and read`);
  }
  assert.ok(outcome instanceof DataError, `expected a DataError, got ${String(outcome)}`);
  for (const pattern of patterns) assert.match(outcome.message, pattern);
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

const FIFO = /is a FIFO \(named pipe\)/;

Deno.test("data: a FIFO named as a tsv, jsonl, po or moses file is refused at once", async () => {
  await withTempDir(async (dir) => {
    const fifos = ["pipe.tsv", "pipe.jsonl", "pipe.po", "pipe.en"].map((n) => join(dir, n));
    for (const fifo of fifos) await mkfifo(fifo);
    await Deno.writeTextFile(join(dir, "ok.de"), "Hallo Welt\n");
    const named = (path: string) => new RegExp(`^${escape(path)}: ${FIFO.source}`);
    await refusedQuickly(load(tsv, { paths: ["pipe.tsv"] }, dir), [named(fifos[0])], fifos);
    await refusedQuickly(load(jsonl, { paths: [fifos[1]] }, dir), [named(fifos[1])], fifos);
    await refusedQuickly(load(gettext, { paths: ["pipe.po"] }, dir), [named(fifos[2])], fifos);
    await refusedQuickly(readCatalog(fifos[2]), [named(fifos[2])], fifos);
    await refusedQuickly(
      load(moses, { source: "pipe.en", reference: "ok.de" }, dir),
      [named(fifos[3])],
      fifos,
    );
  });
});

Deno.test("data: a FIFO in paths is called a FIFO, not a folder", async () => {
  await withTempDir(async (dir) => {
    const fifo = join(dir, "corpus");
    await mkfifo(fifo);
    await refusedQuickly(load(tsv, { paths: ["corpus"] }, dir), [
      new RegExp(`^${escape(fifo)}: is a FIFO \\(named pipe\\) \\(from paths "corpus"\\)`),
      /expected a regular \.tsv file or a folder/,
    ], [fifo]);
    await assert.rejects(load(tsv, { paths: ["corpus"] }, dir), (error: Error) => {
      assert.doesNotMatch(error.message, /folder "corpus"/);
      return true;
    });
  });
});

Deno.test("data: a FIFO inside a data folder or matched by a glob is reported", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "corpus");
    await Deno.mkdir(folder);
    await Deno.writeTextFile(join(folder, "a.tsv"), "Hallo\tHello\nWelt\tWorld\nJa\tYes\n");
    const fifo = join(folder, "b.tsv");
    await mkfifo(fifo);
    await mkfifo(join(folder, "notes.txt")); // another extension: not data, left alone
    const config = { validSize: 0, testSize: 0 };
    await refusedQuickly(load(tsv, { ...config, paths: ["corpus"] }, dir), [
      new RegExp(
        `^${escape(fifo)}: is a FIFO \\(named pipe\\) \\(found in folder ${escape(folder)}\\)`,
      ),
    ], [fifo]);
    await refusedQuickly(load(tsv, { ...config, paths: ["corpus/*.tsv"] }, dir), [
      new RegExp(`^${escape(fifo)}: ${FIFO.source}`),
    ], [fifo]);
    await refusedQuickly(load(tsv, { ...config, paths: ["**/b.tsv"] }, dir), [FIFO], [fifo]);
    await Deno.remove(fifo);
    const splits = await load(tsv, { ...config, paths: ["corpus"] }, dir);
    assert.equal(splits.train.length, 3);
  });
});

Deno.test("data: /dev/zero and /dev/null are refused as character devices", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "ok.en"), "Hello world\n");
    const device = (path: string) => new RegExp(`^${escape(path)}: is a character device`);
    for (const path of ["/dev/zero", "/dev/null"]) {
      await refusedQuickly(load(tsv, { paths: [path] }, dir), [device(path)]);
      await refusedQuickly(load(jsonl, { paths: [path] }, dir), [device(path)]);
      await refusedQuickly(load(gettext, { paths: [path] }, dir), [device(path)]);
      await refusedQuickly(readCatalog(path), [device(path)]);
      await refusedQuickly(load(moses, { source: "ok.en", reference: path }, dir), [
        device(path),
      ]);
    }
  });
});

/**
 * Makes a Unix socket file at `path`: a child Deno process (the only one allowed the network
 * access that binding needs) listens on it and exits without closing it, which leaves the
 * socket file behind.
 */
async function makeSocket(path: string): Promise<void> {
  const script = `Deno.listen({ transport: "unix", path: ${JSON.stringify(path)} }); Deno.exit(0);`;
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", `--allow-net=unix:${path}`, "--allow-read", "--allow-write", script],
  }).output();
  assert.equal(code, 0, `binding ${path}: ${new TextDecoder().decode(stderr)}`);
  assert.ok((await Deno.stat(path)).isSocket, `${path} is not a socket`);
}

Deno.test("data: a Unix socket named as a data file or in a data folder is refused", async () => {
  await withTempDir(async (dir) => {
    const socketPath = join(dir, "live.tsv");
    await makeSocket(socketPath);
    const socket = new RegExp(`^${escape(socketPath)}: is a socket`);
    await refusedQuickly(load(tsv, { paths: ["live.tsv"] }, dir), [socket]);
    await refusedQuickly(load(tsv, { paths: ["."] }, dir), [socket, /found in folder/]);
    await refusedQuickly(load(moses, { source: socketPath, reference: socketPath }, dir), [
      socket,
    ]);
    await refusedQuickly(readCatalog(socketPath), [socket]);
  });
});

Deno.test("score: a FIFO or a device given as --hyp is refused at once", async () => {
  await withTempDir(async (dir) => {
    const fifo = join(dir, "hyp.txt");
    await mkfifo(fifo);
    await refusedQuickly(readScoreLines(fifo, "hyp"), [
      new RegExp(`^--hyp ${escape(fifo)}: ${FIFO.source}`),
    ], [fifo]);
    await refusedQuickly(readScoreLines("/dev/zero", "ref"), [
      /^--ref \/dev\/zero: is a character device/,
    ]);
  });
});

Deno.test("gettext: catalogs over the size limit are refused before reading", async () => {
  await withTempDir(async (dir) => {
    // Sparse files: their size is set without writing (or reading) any data.
    const po = join(dir, "huge.po");
    const mo = join(dir, "huge.mo");
    await Deno.writeFile(po, new Uint8Array());
    await Deno.truncate(po, MAX_PO_BYTES + 1);
    await Deno.writeFile(mo, new Uint8Array());
    await Deno.truncate(mo, MAX_MO_BYTES + 1);
    await refusedQuickly(readCatalog(po), [
      new RegExp(
        `^${escape(po)}: is ${
          MAX_PO_BYTES + 1
        } bytes, more than the limit of ${MAX_PO_BYTES} bytes for a \\.po file`,
      ),
    ]);
    await refusedQuickly(load(gettext, { paths: ["."] }, dir), [
      new RegExp(
        `^${escape(mo)}: is ${
          MAX_MO_BYTES + 1
        } bytes, more than the limit of ${MAX_MO_BYTES} bytes for a \\.mo file`,
      ),
    ]);
  });
});

Deno.test("data: a symlink loop inside a data folder is not walked forever; each file is read once", async () => {
  await withTempDir(async (dir) => {
    const corpus = join(dir, "corpus");
    await Deno.mkdir(join(corpus, "sub"), { recursive: true });
    const lines = Array.from({ length: 40 }, (_, i) => `source ${i}\tZiel ${i}`).join("\n");
    await Deno.writeTextFile(join(corpus, "a.tsv"), lines + "\n");
    await Deno.symlink("..", join(corpus, "sub", "loop"));
    await Deno.symlink(corpus, join(corpus, "self"));
    const splits = await load(tsv, { paths: ["corpus"], validSize: 0, testSize: 0 }, dir);
    assert.equal(splits.train.length, 40);
  });
});
