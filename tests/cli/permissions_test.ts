/**
 * `deno task exp` runs plugins with least privilege: a user plugin module cannot reach the
 * network, write outside the output folder and `data/`, read outside the project, the
 * manifest's folders and the npm cache, start processes or load native code.
 */

import { probeManifest, rewardModule } from "./_probe.ts";
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { hasStackTrace, ROOT_DIR, runTask, spawnTask } from "../_cli.ts";
import {
  containsTensorflowAddon,
  type ExpArgs,
  parseExpArgs,
  permissionFlags,
  sandboxPlan,
} from "../../cli/exp.ts";

interface Setup {
  dir: string;
  file: string;
  out: string;
}

async function setup(experiment: string, module: string, backend?: string): Promise<Setup> {
  const dir = await Deno.makeTempDir({ prefix: "exp_permissions_" });
  const file = join(dir, "m.json");
  await Deno.writeTextFile(file, probeManifest(experiment, backend));
  await Deno.writeTextFile(join(dir, "reward.ts"), module);
  return { dir, file, out: join(dir, "runs") };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

Deno.test("exp: a plugin's network request fails with Deno's permission error, exit 2, no stack", async () => {
  const s = await setup("perm_net", rewardModule(`await fetch("http://127.0.0.1:65531/");`));
  try {
    const r = await runTask("exp", [s.file, "--smoke", "--out", s.out], { cwd: s.dir });
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /^exp: error: permission denied: Requires net access to "127\.0\.0\.1:65531"/m,
    );
    assert.match(r.stderr, /runs without network access.*writes only to the output folder/);
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
    // The interrupted run released its lock.
    assert.equal(await exists(join(s.out, "perm_net", ".lock")), false);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("exp: a plugin module that connects when imported is rejected during validation", async () => {
  const s = await setup(
    "perm_import",
    rewardModule("", `await Deno.connect({ hostname: "127.0.0.1", port: 9 });`),
  );
  try {
    const r = await runTask("exp", [s.file, "--dry-run"], { cwd: s.dir });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /\/reward\/module: cannot load plugin module .*reward\.ts/);
    assert.match(r.stderr, /Requires net access to "127\.0\.0\.1:9"/);
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("exp: a plugin cannot write outside the output folder; nothing is written", async () => {
  const inCore = join(ROOT_DIR, "core", `_sandbox_probe_${crypto.randomUUID()}.txt`);
  const probeDir = await Deno.makeTempDir({ prefix: "exp_permissions_probe_" });
  await Deno.remove(probeDir);
  const tempRoot = dirname(probeDir);
  const inTemp = join(tempRoot, `exp_sandbox_probe_${crypto.randomUUID()}.txt`);
  for (const target of [inCore, inTemp]) {
    const s = await setup(
      "perm_write",
      rewardModule(`await Deno.writeTextFile(${JSON.stringify(target)}, "escaped");`),
    );
    try {
      const r = await runTask("exp", [s.file, "--smoke", "--out", s.out], { cwd: s.dir });
      assert.equal(r.code, 2, r.stderr);
      assert.ok(
        r.stderr.includes(`permission denied: Requires write access to "${target}"`),
        r.stderr,
      );
      assert.ok(!hasStackTrace(r.stderr), r.stderr);
      assert.equal(await exists(target), false, `${target} was written`);
    } finally {
      await Deno.remove(s.dir, { recursive: true });
      await Deno.remove(target).catch(() => {});
    }
  }
});

/** A plugin that tries each forbidden operation, records what happened and carries on. */
function probeModule(targets: { file: string; write: string; read: string }): string {
  return rewardModule(`
        const results = {};
        const attempt = async (name, f) => {
          try {
            await f();
            results[name] = "allowed";
          } catch (error) {
            results[name] = error.name + ": " + error.message;
          }
        };
        await attempt("net", () => fetch("http://127.0.0.1:65531/"));
        await attempt("connect", () => Deno.connect({ hostname: "127.0.0.1", port: 9 }));
        await attempt("write", () => Deno.writeTextFile(${JSON.stringify(targets.write)}, "x"));
        await attempt("read", () => Deno.readTextFile(${JSON.stringify(targets.read)}));
        await attempt("run", () => new Deno.Command("true").output());
        await attempt("ffi", () => Deno.dlopen("libc.so.6", {}));
        await attempt("env", () => Deno.env.get("PATH"));
        await attempt("home", () => Deno.env.get("HOME"));
        await attempt("cache", () => Deno.env.get("XDG_CACHE_HOME"));
        await attempt("deno_dir", () => Deno.env.get("DENO_DIR"));
        // Computed, so that no tool can fetch it ahead of time.
        await attempt("import", () => import(["https://deno.land/x", "no_such_module/mod.ts"].join("/")));
        await Deno.writeTextFile(${JSON.stringify(targets.file)}, JSON.stringify(results));`);
}

for (const backend of ["cpu", "auto"]) {
  Deno.test(`exp: --backend ${backend}: a plugin gets no network, run, FFI, env or outside access; the run completes`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "exp_permissions_" });
    const out = join(dir, "out");
    const file = join(dir, "m.json");
    const results = join(out, "probe.json");
    const outside = await Deno.makeTempDir({ prefix: "exp_permissions_outside_" });
    await Deno.writeTextFile(join(outside, "secret.txt"), "secret");
    try {
      await Deno.writeTextFile(file, probeManifest("perm_probe", backend));
      await Deno.writeTextFile(
        join(dir, "reward.ts"),
        probeModule({
          file: results,
          write: join(dir, "beside_manifest.txt"),
          read: join(outside, "secret.txt"),
        }),
      );
      const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: dir });
      assert.equal(r.code, 0, r.stderr);
      const probe = JSON.parse(await Deno.readTextFile(results));
      for (const name of ["net", "connect", "write", "read", "run", "ffi", "env", "import"]) {
        assert.match(probe[name], /^(NotCapable|TypeError)/, `${name}: ${probe[name]}`);
      }
      assert.match(probe.net, /Requires net access to "127\.0\.0\.1:65531"/);
      assert.match(probe.connect, /Requires net access to "127\.0\.0\.1:9"/);
      assert.match(probe.write, /Requires write access/);
      assert.match(probe.read, /Requires read access/);
      assert.match(probe.run, /Requires run access/);
      assert.match(probe.ffi, /Requires ffi access/);
      assert.match(probe.env, /Requires env access to "PATH"/);
      // No environment variable at all: not even those that locate Deno's cache.
      assert.match(probe.home, /Requires env access to "HOME"/);
      assert.match(probe.cache, /Requires env access to "XDG_CACHE_HOME"/);
      assert.match(probe.deno_dir, /Requires env access to "DENO_DIR"/);
      assert.match(probe.import, /not found in cache|Requires import access/);
      assert.equal(await exists(join(dir, "beside_manifest.txt")), false);
      const metrics = await Deno.readTextFile(
        join(out, "perm_probe", "baselines", "metrics.jsonl"),
      );
      assert.match(metrics, /"eval\/valid_reward_reference":0\.5/);
      if (backend === "auto") {
        // FFI was used (OpenBLAS) before the plugin loaded, then given up.
        assert.match(r.stderr, /backend: (blas|wasm|cpu) /);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  });
}

Deno.test("exp: a run with the default output folder writes runs/<experiment> in the current folder", async () => {
  const experiment = `perm_default_${crypto.randomUUID().slice(0, 8)}`;
  const s = await setup(experiment, rewardModule(""));
  const expected = join(ROOT_DIR, "runs", experiment);
  try {
    const r = await runTask("exp", [s.file, "--smoke", "--backend", "cpu"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(await exists(join(expected, "baselines", "summary.json")), r.stderr);
    assert.match(r.stderr, /backend: cpu /);
  } finally {
    await Deno.remove(expected, { recursive: true }).catch(() => {});
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test("exp: data named by the manifest outside its folder (through a glob) is readable", async () => {
  const root = await Deno.makeTempDir({ prefix: "exp_permissions_" });
  try {
    await Deno.mkdir(join(root, "exp"));
    await Deno.mkdir(join(root, "corpus", "part"), { recursive: true });
    const lines = Array.from({ length: 80 }, (_, i) => `source number ${i}\tZiel Nummer ${i}`);
    await Deno.writeTextFile(join(root, "corpus", "part", "a.tsv"), lines.join("\n") + "\n");
    const file = join(root, "exp", "m.json");
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        experiment: "perm_data",
        seed: 1,
        backend: "cpu",
        data: { name: "tsv", config: { paths: ["../corpus/**/*.tsv"] } },
        tokenizer: { name: "bpe", config: { vocabSize: 300 } },
        reward: "chrf",
        runs: [{ name: "baselines", algorithm: "baselines" }],
      }),
    );
    const out = join(root, "exp", "runs");
    const r = await runTask("exp", [file, "--smoke", "--out", out], { cwd: root });
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /data: \d+ train \/ \d+ \+ \d+ valid \(selection \+ report\) \/ \d+ test pairs/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("exp: a failure inside a user plugin is the plugin's (exit 2, named), not the framework's", async () => {
  const s = await setup("perm_internal", rewardModule(`throw new Error("probe exploded");`));
  try {
    const r = await runTask("exp", [s.file, "--smoke", "--out", s.out], { cwd: s.dir });
    assert.equal(r.code, 2, r.stderr);
    assert.doesNotMatch(r.stderr, /internal error/);
    assert.match(
      r.stderr,
      /^exp: error: reward plugin "probe" \(.*reward\.ts\) failed in score\(\) during run baselines, baselines: probe exploded$/m,
    );
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
  } finally {
    await Deno.remove(s.dir, { recursive: true });
  }
});

Deno.test({
  name: "exp: SIGINT to the launcher stops the experiment process and releases its lock",
  ignore: Deno.build.os === "windows",
  async fn() {
    const s = await setup(
      "perm_signal",
      rewardModule(`await new Promise((resolve) => setTimeout(resolve, 120_000));`),
    );
    try {
      const child = await spawnTask("exp", [s.file, "--smoke", "--out", s.out], { cwd: s.dir });
      const lock = join(s.out, "perm_signal", ".lock");
      let worker: number | undefined;
      for (let i = 0; i < 300 && worker === undefined; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        try {
          worker = JSON.parse(await Deno.readTextFile(lock)).pid;
        } catch { /* not yet */ }
      }
      assert.ok(worker !== undefined, "the experiment took its lock");
      assert.notEqual(worker, child.pid, "the experiment runs in a child of the launcher");
      child.kill("SIGINT");
      const output = await child.output();
      assert.equal(output.code, 130, new TextDecoder().decode(output.stderr));
      assert.equal(processRuns(worker), false, "the experiment process is gone");
      assert.equal(await exists(lock), false, "the lock was released");
    } finally {
      await Deno.remove(s.dir, { recursive: true });
    }
  },
});

/** Whether process `pid` exists (a harmless SIGCONT; Deno reads /proc only with -A). */
function processRuns(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

function args(extra: string[] = []): ExpArgs {
  return parseExpArgs(["/home/u/exp/m.json", "--out", "/home/u/out", ...extra]);
}

const inputs = {
  cwd: "/home/u",
  root: "/repo",
  npmCache: "/cache/npm",
  exists: () => false,
};

Deno.test("sandboxPlan: read, write and FFI follow the manifest, the backend and --dry-run", () => {
  const raw = {
    experiment: "e",
    backend: "cpu",
    data: { name: "gettext", config: { paths: ["../corpus/**/*.po", "/abs/file.mo", "local"] } },
    reward: { name: "weighted", config: { parts: [{ reward: { module: "../plugins/r.ts" } }] } },
    runs: [{ name: "r", algorithm: "rest", loss: { module: "./losses/l.ts" } }],
  };
  const plan = sandboxPlan({ ...inputs, args: args(), raw });
  assert.deepEqual(plan.read, [
    "/repo",
    "/home/u/exp",
    "/home/u/corpus",
    "/abs/file.mo",
    "/home/u/exp/local",
    "/home/u/plugins",
    "/home/u/exp/losses",
    "/home/u/out",
    "/cache/npm",
  ]);
  assert.deepEqual(plan.write, ["/home/u/out", "/repo/data"]);
  assert.deepEqual(plan.env, [], "plugins read no environment variables");
  assert.deepEqual(plan.ffi, []);
  assert.deepEqual(plan.modules, ["/home/u/plugins/r.ts", "/home/u/exp/losses/l.ts"]);
  const flags = permissionFlags(plan);
  assert.ok(flags.includes("--no-prompt"));
  assert.ok(
    !flags.some((f) => /^--allow-(net|run|import|all)|^-A$|^--allow-ffi/.test(f)),
    flags.join(" "),
  );

  const comma = sandboxPlan({ ...inputs, args: parseExpArgs(["/home/u/a,b/m.json"]), raw: {} });
  assert.throws(() => permissionFlags(comma), /cannot grant access to \/home\/u\/a,b: .*comma/);

  const dry = sandboxPlan({ ...inputs, args: args(["--dry-run", "--backend", "blas"]), raw });
  assert.deepEqual(dry.write, []);
  assert.deepEqual(dry.ffi, []);
});

Deno.test("sandboxPlan: only backends that use OpenBLAS get FFI, given up before plugins load", () => {
  const blas = sandboxPlan({
    ...inputs,
    args: args(["--backend", "blas"]),
    raw: { backend: "cpu" },
  });
  assert.equal(blas.ffi, "all");
  assert.deepEqual(blas.worker, {
    preloadBlas: { libraryPath: "", required: true },
    revokeFfi: true,
    completionToken: true,
    npmCache: "/cache/npm",
  });
  assert.ok(permissionFlags(blas).includes("--allow-ffi"));

  const auto = sandboxPlan({ ...inputs, args: args(), raw: {} });
  assert.equal(auto.ffi, "all");
  assert.deepEqual(auto.worker.preloadBlas, { libraryPath: "", required: false });

  const noBlas = { backend: { name: "auto", config: { tryBlas: false } } };
  assert.deepEqual(sandboxPlan({ ...inputs, args: args(), raw: noBlas }).ffi, []);
  const path = { backend: { name: "blas", config: { libraryPath: "/opt/libopenblas.so" } } };
  assert.deepEqual(sandboxPlan({ ...inputs, args: args(), raw: path }).worker.preloadBlas, {
    libraryPath: "/opt/libopenblas.so",
    required: true,
  });
  for (const backend of ["cpu", "wasm"]) {
    const plan = sandboxPlan({ ...inputs, args: args(["--backend", backend]), raw: {} });
    assert.deepEqual(plan.ffi, [], backend);
    assert.equal(plan.worker.revokeFfi, false);
  }
  const userModule = { backend: { module: "./my_backend.ts" } };
  assert.deepEqual(sandboxPlan({ ...inputs, args: args(), raw: userModule }).ffi, []);

  // With tfjs-node installed, auto keeps FFI, but only for the addon's folder.
  const installed = "/cache/npm/registry.npmjs.org/@tensorflow/tfjs-node";
  const tf = sandboxPlan({ ...inputs, exists: (p) => p === installed, args: args(), raw: {} });
  assert.deepEqual(tf.ffi, [installed]);
  assert.equal(tf.worker.revokeFfi, false);
  assert.ok(tf.read.includes(installed));

  // A copy without its native addon (its install script never ran) is no reason to give up
  // blas: auto would otherwise fall back to wasm.
  const broken = sandboxPlan({
    ...inputs,
    exists: (p) => p === installed,
    hasAddon: () => false,
    args: args(),
    raw: {},
  });
  assert.equal(broken.ffi, "all");
  assert.equal(broken.worker.preloadBlas?.required, false);
});

Deno.test("containsTensorflowAddon finds tfjs_binding.node in a package, a cache or a .deno store", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const cache = join(dir, "cache", "@tensorflow", "tfjs-node");
    Deno.mkdirSync(join(cache, "4.22.0", "lib"), { recursive: true });
    assert.equal(containsTensorflowAddon(cache), false, "no addon yet");
    Deno.mkdirSync(join(cache, "4.22.0", "lib", "napi-v8"));
    Deno.writeTextFileSync(join(cache, "4.22.0", "lib", "napi-v8", "tfjs_binding.node"), "");
    assert.equal(containsTensorflowAddon(cache), true);
    const store = join(dir, "node_modules", ".deno");
    const pkg = join(store, "@tensorflow+tfjs-node@4.22.0", "node_modules", "@tensorflow");
    Deno.mkdirSync(join(pkg, "tfjs-node", "lib", "napi-v8"), { recursive: true });
    Deno.mkdirSync(join(store, "other@1.0.0", "lib"), { recursive: true });
    Deno.writeTextFileSync(join(store, "other@1.0.0", "lib", "tfjs_binding.node"), "");
    assert.equal(containsTensorflowAddon(store), false, "only tfjs-node's folders count");
    Deno.writeTextFileSync(join(pkg, "tfjs-node", "lib", "napi-v8", "tfjs_binding.node"), "");
    assert.equal(containsTensorflowAddon(store), true);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("sandboxPlan: runs that may use WebGPU get the unstable flag and the driver diagnosis", () => {
  const gpu = sandboxPlan({ ...inputs, args: args(["--backend", "webgpu"]), raw: {} });
  assert.deepEqual(gpu.unstable, ["webgpu"]);
  assert.deepEqual(gpu.env, [
    "VK_ICD_FILENAMES",
    "VK_DRIVER_FILES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "DENO_WEBGPU_BACKEND",
  ]);
  assert.ok(gpu.read.includes("/usr/share/vulkan/icd.d"), gpu.read.join(" "));
  assert.ok(permissionFlags(gpu).includes(`--allow-env=${gpu.env.join(",")}`));
  const cpu = sandboxPlan({ ...inputs, args: args(["--backend", "cpu"]), raw: {} });
  assert.equal(cpu.unstable, undefined);
  assert.deepEqual(cpu.env, []);
  assert.ok(!cpu.read.includes("/usr/share/vulkan/icd.d"));
  const noGpu = { backend: { name: "auto", config: { tryWebgpu: false } } };
  assert.deepEqual(sandboxPlan({ ...inputs, args: args(), raw: noGpu }).env, []);
});
