/**
 * The holes a plugin could use to get out of `deno task exp`'s sandbox, each closed:
 * native code through the framework's own OpenBLAS binding, an output folder that holds code
 * a later launch runs, ending the experiment with exit 0 and no results, stray exit codes,
 * environment variables; and errors from user plugins that name the plugin.
 */

import { probeManifest, rewardModule } from "./_probe.ts";
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { hasStackTrace, ROOT_DIR, runTask } from "../_cli.ts";
import { checkOutputFolder, exitCodeFor, parseExpArgs, type SandboxInputs } from "../../cli/exp.ts";
import { denialError, permissionDenial } from "../../cli/_exp_worker.ts";
import { loadBlas, sgemm } from "../../plugins/_nn/blas_ffi.ts";
import { createGuarded, PluginError } from "../../core/plugin_guard.ts";
import { setActivity } from "../../core/progress.ts";

const FRAMEWORK = (path: string) => new URL(`../../${path}`, import.meta.url).href;

async function withExperiment(
  module: string,
  fn: (s: { dir: string; file: string; out: string }) => Promise<void>,
  backend?: string,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "exp_sandbox_" });
  try {
    const file = join(dir, "m.json");
    await Deno.writeTextFile(file, probeManifest("sandbox", backend));
    await Deno.writeTextFile(join(dir, "reward.ts"), module);
    await fn({ dir, file, out: join(dir, "runs") });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

let blasAvailable = true;
try {
  loadBlas();
} catch {
  blasAvailable = false;
}

Deno.test({
  name: "blas binding: no raw native symbol is reachable, and every size is checked",
  ignore: !blasAvailable,
  fn() {
    const lib = loadBlas();
    assert.deepEqual(
      Object.keys(lib).sort(),
      ["description", "gemm", "isOpenBlas", "path", "setThreads", "threads"],
    );
    assert.ok(Object.isFrozen(lib), "the library object cannot be extended or patched");
    assert.equal((lib as unknown as Record<string, unknown>).cblasSgemm, undefined);
    const small = new Float32Array(4);
    // Sizes beyond the arrays: refused before the native call.
    assert.throws(
      () =>
        lib.gemm(
          false,
          false,
          1000,
          1000,
          1000,
          1,
          small,
          0,
          1000,
          small,
          0,
          1000,
          0,
          small,
          0,
          1000,
        ),
      RangeError,
    );
    assert.throws(
      () => lib.gemm(false, false, 2, 2, 2, 1, small, 1, 2, small, 0, 2, 0, small, 0, 2),
      /A needs 5 elements/,
    );
    assert.throws(
      () => lib.gemm(false, false, 2, 2, 2, 1, small, -4, 2, small, 0, 2, 0, small, 0, 2),
      RangeError,
    );
    // An array that lies about its length, or is not a Float32Array at all.
    class Liar extends Float32Array {
      override get length(): number {
        return 1 << 30;
      }
    }
    const liar = new Liar(4);
    assert.equal(liar.length, 1 << 30);
    assert.throws(
      () => lib.gemm(false, false, 64, 64, 64, 1, liar, 0, 64, liar, 0, 64, 0, liar, 0, 64),
      /A needs 4096 elements .* has 4/,
    );
    const bytes = new Uint8Array(16) as unknown as Float32Array;
    assert.throws(
      () => lib.gemm(false, false, 2, 2, 2, 1, bytes, 0, 2, small, 0, 2, 0, small, 0, 2),
      TypeError,
    );
    const fake = { length: 1 << 30 } as unknown as Float32Array;
    assert.throws(() => sgemm({ m: 8, n: 8, k: 8, a: fake, b: fake, c: fake }, lib), TypeError);
    assert.throws(() => lib.setThreads(1e9), RangeError);
    // And the checked path still computes: [[1,2],[3,4]] · I at offsets.
    const a = new Float32Array([9, 1, 2, 3, 4]);
    const eye = new Float32Array([1, 0, 0, 1]);
    const c = new Float32Array(6);
    lib.gemm(false, false, 2, 2, 2, 1, a, 1, 2, eye, 0, 2, 0, c, 2, 2);
    assert.deepEqual([...c], [0, 0, 1, 2, 3, 4]);
  },
});

/** Every value reachable from `root` in a few steps, with the path that reaches it. */
function* reachable(root: unknown, label: string, depth = 4): Generator<[string, unknown]> {
  const seen = new Set<unknown>();
  const queue: [string, unknown, number][] = [[label, root, 0]];
  while (queue.length > 0) {
    const [path, value, level] = queue.shift()!;
    if (value === null || (typeof value !== "object" && typeof value !== "function")) continue;
    if (seen.has(value)) continue;
    seen.add(value);
    yield [path, value];
    if (level >= depth) continue;
    for (const key of Reflect.ownKeys(value)) {
      let child: unknown;
      try {
        child = (value as Record<PropertyKey, unknown>)[key];
      } catch {
        continue;
      }
      queue.push([`${path}.${String(key)}`, child, level + 1]);
    }
  }
}

Deno.test({
  name:
    "no framework module exports a native library handle or symbol (checked after loading BLAS)",
  ignore: !blasAvailable,
  async fn() {
    loadBlas();
    const files: string[] = [];
    for (const folder of ["core", "plugins", "cli"]) {
      const walk = async (dir: string) => {
        for await (const entry of Deno.readDir(dir)) {
          const path = join(dir, entry.name);
          if (entry.isDirectory) await walk(path);
          else if (entry.name.endsWith(".ts")) files.push(path);
        }
      };
      await walk(join(ROOT_DIR, folder));
    }
    const seenAny = new Set<string>();
    for (const file of files) {
      const exports = await import(`file://${file}`);
      const roots: [string, unknown][] = [[file, exports]];
      if (file.endsWith("blas_ffi.ts")) roots.push([`${file}:loadBlas()`, exports.loadBlas()]);
      for (const [label, root] of roots) {
        for (const [path, value] of reachable(root, label)) {
          seenAny.add(path);
          const name = (value as { constructor?: { name?: string } }).constructor?.name;
          assert.notEqual(name, "DynamicLibrary", `${path} is a native library handle`);
          if (typeof value === "object" && value !== null && "symbols" in value) {
            assert.fail(`${path} exposes native symbols`);
          }
          if (typeof value === "function") {
            assert.doesNotMatch(
              path,
              /\.(cblas\w*|cblasSgemm|openblas_\w+|mallopt)$/i,
              `${path} is a native function`,
            );
          }
        }
      }
    }
    assert.ok(seenAny.size > 100, "the walk visited the framework's exports");
  },
});

Deno.test({
  name: "exp: a plugin importing the framework's BLAS modules cannot make a native call",
  ignore: !blasAvailable,
  async fn() {
    const body = `
      const results = {};
      const attempt = async (name, f) => {
        try { results[name] = "returned " + String(await f()); }
        catch (error) { results[name] = error.name + ": " + error.message; }
      };
      const ffi = await import(${JSON.stringify(FRAMEWORK("plugins/_nn/blas_ffi.ts"))});
      await import(${JSON.stringify(FRAMEWORK("plugins/backends/blas.ts"))});
      await import(${JSON.stringify(FRAMEWORK("plugins/_nn/gemm.ts"))});
      const lib = ffi.loadBlas();
      results.keys = Object.keys(lib).sort().join(",");
      results.raw = typeof lib.cblasSgemm;
      const tiny = new Float32Array(4);
      await attempt("huge", () => lib.gemm(false, false, 4096, 4096, 4096, 1, tiny, 0, 4096, tiny, 0, 4096, 0, tiny, 0, 4096));
      class Liar extends Float32Array { get length() { return 1 << 30; } }
      const liar = new Liar(4);
      await attempt("liar", () => ffi.sgemm({ m: 512, n: 512, k: 512, a: liar, b: liar, c: liar }, lib));
      await attempt("dlopen", () => Deno.dlopen("libc.so.6", { getpid: { parameters: [], result: "i32" } }));
      await attempt("pointer", () => Deno.UnsafePointer.create(1n));
      await Deno.writeTextFile(OUT, JSON.stringify(results));`;
    await withExperiment(
      rewardModule(body, "const OUT = new URL('./runs/probe.json', import.meta.url).pathname;"),
      async ({ dir, file, out }) => {
        const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /backend: blas /);
        const probe = JSON.parse(await Deno.readTextFile(join(out, "probe.json")));
        assert.equal(probe.keys, "description,gemm,isOpenBlas,path,setThreads,threads");
        assert.equal(probe.raw, "undefined");
        assert.match(probe.huge, /^RangeError: gemm: A needs/);
        assert.match(probe.liar, /^RangeError: gemm: A needs .* has 4$/);
        assert.match(probe.dlopen, /^NotCapable: Requires ffi access/);
        assert.match(probe.pointer, /^NotCapable: Requires ffi access/);
      },
      "blas",
    );
  },
});

function inputs(out: string, root: string, npmCache?: string): SandboxInputs {
  return {
    args: parseExpArgs(["m.json", "--out", out]),
    cwd: "/",
    root,
    raw: {},
    ...(npmCache ? { npmCache } : {}),
    exists: () => false,
  };
}

Deno.test("checkOutputFolder: refuses folders that contain or lie above code that runs later", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "exp_outcheck_" });
  try {
    const root = join(tmp, "project");
    const cache = join(tmp, "cache", "npm");
    for (const d of [join(root, "cli"), join(root, "data"), cache, join(tmp, "mods")]) {
      await Deno.mkdir(d, { recursive: true });
    }
    const module = join(tmp, "mods", "reward.ts");
    const refused: [string, string[], RegExp][] = [
      [root, [], /contains the project/],
      [tmp, [], /contains the project/],
      [join(root, "cli"), [], /inside the project's cli/],
      [join(root, "cli", "new"), [], /inside the project's cli/],
      [join(tmp, "cache"), [], /overlaps Deno's package cache/],
      [join(cache, "x"), [], /overlaps Deno's package cache/],
      [join(tmp, "mods"), [module], /contains the plugin module folder/],
      [
        join(tmp, "elsewhere"),
        [join(root, "data", "evil.ts")],
        /lies in a folder the experiment may write/,
      ],
      [
        join(tmp, "mods", "runs"),
        [join(tmp, "mods", "runs", "m.ts")],
        /contains the plugin module folder/,
      ],
    ];
    for (const [out, modules, pattern] of refused) {
      assert.throws(() => checkOutputFolder(inputs(out, root, cache), modules), pattern, out);
    }
    // Through a symlink too.
    await Deno.symlink(root, join(tmp, "link"));
    assert.throws(
      () => checkOutputFolder(inputs(join(tmp, "link"), root, cache), []),
      /contains the project/,
    );
    // Allowed: the default runs/ in the project, a folder of its own, one beside the modules.
    for (const out of [join(root, "runs"), join(tmp, "out"), join(tmp, "mods", "runs")]) {
      checkOutputFolder(inputs(out, root, cache), [module]);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("exp: --out above the project is refused (exit 2) before any plugin runs", async () => {
  await withExperiment(
    rewardModule(
      "",
      `await Deno.writeTextFile(${JSON.stringify(join(ROOT_DIR, "data", "pwned.txt"))}, "x");`,
    ),
    async ({ dir, file }) => {
      for (const out of [dirname(ROOT_DIR), ROOT_DIR, join(ROOT_DIR, "cli")]) {
        const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, /^exp: error: --out .*must hold no code that runs later/m);
        assert.ok(!hasStackTrace(r.stderr), r.stderr);
      }
    },
  );
});

Deno.test("exp: a plugin calling Deno.exit(0) or process.exit(0) never ends the experiment with exit 0", async () => {
  const cases: [string, string, RegExp][] = [
    ["Deno.exit(0);", "", /plugin code tried to end the experiment's process \(Deno\.exit\(0\)/],
    ["Deno.exit();", "", /tried to end the experiment's process|stopped before finishing/],
    ["process.exit(0);", 'import process from "node:process";', /tried to end|stopped before/],
    ["globalThis.close();", "", /tried to end the experiment's process|stopped before finishing/],
  ];
  for (const [body, top, pattern] of cases) {
    await withExperiment(rewardModule(body, top), async ({ dir, file, out }) => {
      const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, pattern);
      assert.ok(!hasStackTrace(r.stderr), r.stderr);
    });
  }
});

Deno.test("exitCodeFor: only 0, 1, 2 and 130 leave the launcher, each explained", () => {
  const end = { signal: null, pid: 1, completed: false, interrupted: false };
  const quiet = console.error;
  const said: string[] = [];
  console.error = (text: string) => said.push(text);
  try {
    assert.equal(exitCodeFor({ ...end, code: 0, completed: true }, false), 0);
    assert.equal(exitCodeFor({ ...end, code: 0 }, true), 2);
    assert.equal(exitCodeFor({ ...end, code: 0 }, false), 1);
    assert.equal(exitCodeFor({ ...end, code: 2 }, false), 2);
    assert.equal(exitCodeFor({ ...end, code: 1 }, false), 1);
    assert.equal(exitCodeFor({ ...end, code: 70 }, true), 2);
    assert.equal(exitCodeFor({ ...end, code: 137, signal: "SIGKILL" }, false), 1);
    assert.equal(exitCodeFor({ ...end, code: 143 }, false), 1);
    assert.equal(exitCodeFor({ ...end, code: 130, interrupted: true }, false), 130);
  } finally {
    console.error = quiet;
  }
  assert.equal(said.length, 5);
  assert.match(said[2], /unstable Deno API/);
  assert.match(said[3], /killed by SIGKILL/);
});

Deno.test("exp: an error inside a user plugin names the plugin, its file and the step (exit 2)", async () => {
  await withExperiment(
    rewardModule(`throw new TypeError("cannot read properties of undefined (reading 'x')");`),
    async ({ dir, file, out }) => {
      const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        /^exp: error: reward plugin "probe" \(.*reward\.ts\) failed in score\(\) during run baselines, baselines: cannot read properties of undefined \(reading 'x'\)$/m,
      );
      assert.ok(!hasStackTrace(r.stderr), r.stderr);
    },
  );
});

Deno.test("exp: a permission denial inside a plugin's dynamic import() is a permission error (exit 2)", async () => {
  await withExperiment(
    rewardModule(`await import(["file:///etc", "hostname"].join("/"));`),
    async ({ dir, file, out }) => {
      const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        /^exp: error: permission denied: Requires read access to "\/etc\/hostname".* \(by reward plugin "probe", .*reward\.ts, in score\(\)/m,
      );
      assert.ok(!hasStackTrace(r.stderr), r.stderr);
    },
  );
});

Deno.test("permissionDenial: finds Deno's denial in the cause chain, also as a dynamic import's TypeError", () => {
  const imported = new TypeError(
    'Requires read access to "/etc/x", run again with the --allow-read flag',
  );
  const origin = { kind: "loss", name: "mine", file: "/u/mine.ts" };
  const wrapped = new PluginError(origin, "compute", "run r: improve 1.1", imported);
  assert.equal(permissionDenial(wrapped), imported);
  assert.equal(permissionDenial(new TypeError("x is not a function")), undefined);
  assert.match(
    denialError(imported, wrapped).message,
    /^permission denied: Requires read access to "\/etc\/x".* \(by loss plugin "mine", \/u\/mine\.ts, in compute\(\) during run r: improve 1\.1\)/,
  );
});

Deno.test("createGuarded: errors from create and from methods (sync or async) name the plugin and the step", async () => {
  const origin = { kind: "model", name: "mine", file: "/u/model.ts" };
  setActivity("run r: grow 2");
  await assert.rejects(
    () =>
      createGuarded(origin, () => {
        throw new Error("bad config");
      }),
    /^PluginError: model plugin "mine" \(\/u\/model\.ts\) failed in create\(\) during run r: grow 2: bad config$/,
  );
  class Policy {
    #secret = 3;
    value = 7;
    sample(): number {
      return this.#secret;
    }
    greedy(): never {
      throw new RangeError("index out of range");
    }
    async beam(): Promise<never> {
      await Promise.resolve();
      throw "a string";
    }
  }
  const factory = await createGuarded(origin, () => ({ build: () => new Policy() }));
  const policy = factory.build();
  assert.equal(policy.sample(), 3, "private fields work through the wrapper");
  assert.equal(policy.value, 7);
  assert.throws(() => policy.greedy(), (error: unknown) => {
    assert.ok(error instanceof PluginError);
    assert.equal(error.method, "greedy");
    assert.equal(error.step, "run r: grow 2");
    assert.ok(error.cause instanceof RangeError);
    return true;
  });
  await assert.rejects(() => policy.beam(), /failed in beam\(\) during run r: grow 2: a string$/);
});

Deno.test("exp: a FIFO named as a plugin module is refused at once (exit 2), not waited on", async () => {
  const dir = await Deno.makeTempDir({ prefix: "exp_sandbox_fifo_" });
  try {
    const file = join(dir, "m.json");
    await Deno.writeTextFile(file, probeManifest("fifo_module"));
    const made = await new Deno.Command("mkfifo", { args: [join(dir, "reward.ts")] }).output();
    assert.ok(made.success);
    const started = performance.now();
    const r = await runTask("exp", [file, "--dry-run"], { cwd: dir });
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /\/reward\/module: .*reward\.ts: is a FIFO \(named pipe\), expected the plugin module/,
    );
    assert.ok(performance.now() - started < 60_000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("exp: a user plugin's check() that throws, or an instance without its kind's methods, is the plugin's error (exit 2)", async () => {
  const checkThrows = rewardModule("").replace(
    "  create() {",
    '  check() { throw new Error("check exploded"); },\n  create() {',
  );
  await withExperiment(checkThrows, async ({ dir, file }) => {
    const r = await runTask("exp", [file, "--dry-run"], { cwd: dir });
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /^exp: error: reward plugin "probe" \(.*reward\.ts\) failed in check\(\) during validation of the manifest: check exploded$/m,
    );
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
  });
  const noScore = rewardModule("").replace(/async score\(rows\) \{[\s\S]*?\n {6}\},/, "");
  assert.doesNotMatch(noScore, /score\(rows\)/);
  await withExperiment(noScore, async ({ dir, file, out }) => {
    const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /failed in create\(\) during run baselines, set-up: the object it returned has no score\(\)/,
    );
  });
});

Deno.test("createGuarded: an instance missing its kind's methods, or not an object, is reported at once", async () => {
  const origin = { kind: "loss", name: "mine", file: "/u/loss.ts" };
  await assert.rejects(
    () => createGuarded(origin, () => ({ variables: [], prepare() {}, dispose() {} })),
    /failed in create\(\) .*: the object it returned has no compute\(\), afterStep\(\); a loss plugin must provide prepare\(\), compute\(\), afterStep\(\), dispose\(\)$/,
  );
  await assert.rejects(
    () => createGuarded(origin, () => undefined as unknown as object),
    /it returned undefined, expected a loss object/,
  );
});

Deno.test("exp: Deno.exit(0) from a plugin's timer or an uncaught promise is one line and exit 2, no stack", async () => {
  const bodies = [
    "setTimeout(() => Deno.exit(0), 0); await new Promise((r) => setTimeout(r, 200));",
    "Promise.resolve().then(() => Deno.exit(0)); await new Promise((r) => setTimeout(r, 200));",
  ];
  for (const body of bodies) {
    await withExperiment(rewardModule(body), async ({ dir, file, out }) => {
      const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /^exp: error: plugin code tried to end the experiment's process/m);
      assert.ok(!hasStackTrace(r.stderr), r.stderr);
    });
  }
});
