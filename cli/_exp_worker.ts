/**
 * The body of `deno task exp`, run by the launcher in `cli/exp.ts` as a child
 * Deno process with narrow permissions (see `sandboxPlan` there): it
 * validates the manifest (importing any user plugin modules), runs the
 * experiment and writes the report. Started directly it behaves the same, with
 * whatever permissions it was given.
 *
 * A permission denial (a plugin reaching for the network, or writing outside
 * the output folder) is reported like any other user error: one line, exit 2.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { UserError } from "../core/errors.ts";
import { loadManifest } from "../core/manifest/mod.ts";
import { createRegistries } from "../core/registry.ts";
import { describePlan, runExperiment } from "../core/experiment.ts";
import { renderTable, writeReport } from "../core/report/mod.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { loadBlas } from "../plugins/backends/blas.ts";
import { EXIT_USER, exitProcess, runMain } from "./_main.ts";
import { PluginError } from "../core/plugin_guard.ts";
import { setNpmCacheDir } from "../plugins/backends/_tfjs.ts";
import { onProgressTick, setActivity } from "../core/progress.ts";
import { completionLine, HELP, parseExpArgs, type WorkerSandbox } from "./exp.ts";

/** What a denied operation means here, appended to Deno's own message. */
const SANDBOX_HINT = "`deno task exp` runs without network access, reads only the project, " +
  "the manifest's folder and the data and plugin files it names, and writes only to the " +
  "output folder and data/ (README.md, Permissions)";

/** Deno's wording of a denied permission (a dynamic `import()` throws it as a TypeError). */
const DENIAL_MESSAGE = /^Requires [\w-]+ access to /;

/** The Deno permission error in `error` or its chain of causes, if any. */
export function permissionDenial(error: unknown): Error | undefined {
  for (let e = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof Deno.errors.NotCapable) return e;
    if (e instanceof TypeError && DENIAL_MESSAGE.test(e.message)) return e;
  }
  return undefined;
}

/**
 * A user error that reports a permission denial without a stack trace, naming the plugin
 * that asked when a plugin did.
 */
export function denialError(denial: Error, error?: unknown): UserError {
  let plugin = "";
  for (let e = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof PluginError) {
      plugin = ` (by ${e.origin.kind} plugin "${e.origin.name}", ${e.origin.file}, in ` +
        `${e.method}() during ${e.step})`;
      break;
    }
  }
  return new UserError(
    `permission denied: ${denial.message.split("\n")[0]}${plugin}; ${SANDBOX_HINT}`,
    { cause: denial },
  );
}

/**
 * Does what the launcher asked before any plugin code runs: opens OpenBLAS (the `blas`
 * backend later reuses the open library) and then gives FFI permission up, so plugins
 * cannot load native code. Returns why OpenBLAS could not be opened, if it could not.
 */
export function prepareSandbox(sandbox: WorkerSandbox): Error | undefined {
  if (sandbox.npmCache !== undefined) setNpmCacheDir(sandbox.npmCache);
  let failure: Error | undefined;
  if (sandbox.preloadBlas !== undefined) {
    try {
      loadBlas(sandbox.preloadBlas.libraryPath || undefined);
    } catch (error) {
      failure = error instanceof Error ? error : new Error(String(error));
    }
  }
  if (sandbox.revokeFfi) Deno.permissions.revokeSync({ name: "ffi" });
  return failure;
}

/** The experiment folder's lock, once the manifest names the folder. */
let lockFile: string | undefined;

/** Exits at once, first removing the experiment lock if this process holds it. */
function exitNow(code: number): never {
  try {
    if (lockFile !== undefined && JSON.parse(Deno.readTextFileSync(lockFile)).pid === Deno.pid) {
      Deno.removeSync(lockFile);
    }
  } catch { /* no lock, or not ours */ }
  exitProcess(code);
}

/** The launcher's completion token, read from standard input before any plugin code runs. */
let completionToken: string | undefined;

async function readCompletionToken(): Promise<string> {
  const text = await new Response(Deno.stdin.readable).text();
  const token = text.trim();
  if (!/^[0-9a-f-]{36}$/.test(token)) {
    throw new UserError(
      "the experiment worker is started by `deno task exp`; run that instead (no completion " +
        "token on standard input)",
    );
  }
  return token;
}

/** Tells the launcher that the work is done (see `completionLine` in cli/exp.ts). */
function reportCompletion(): void {
  if (completionToken !== undefined) console.log(completionLine(completionToken));
}

/**
 * Replaces `Deno.exit` for plugin code: a plugin ending the process would end the experiment
 * with nothing reported, so the call throws instead, naming the code it was called with.
 */
function forbidExit(): void {
  Object.defineProperty(Deno, "exit", {
    value: (code?: number): never => {
      throw new UserError(
        `plugin code tried to end the experiment's process (Deno.exit(${code ?? ""}), ` +
          "process.exit() or close()): plugins must throw an error (or return) instead",
      );
    },
    writable: false,
    configurable: false,
  });
}

async function main(args: string[]): Promise<number> {
  let sandbox: WorkerSandbox | undefined;
  if (args[0]?.startsWith("--sandbox=")) {
    sandbox = JSON.parse(args[0].slice("--sandbox=".length)) as WorkerSandbox;
    args = args.slice(1);
  }
  const parsed = parseExpArgs(args);
  if (parsed.help) {
    console.log(HELP);
    return 0;
  }
  if (sandbox?.completionToken) completionToken = await readCompletionToken();
  const blasFailure = sandbox === undefined ? undefined : prepareSandbox(sandbox);
  if (sandbox !== undefined) forbidExit();
  try {
    setActivity("validation of the manifest");
    const registries = createRegistries(builtinPlugins);
    const manifest = await loadManifest(parsed.manifest, registries, {
      ...(parsed.seed !== undefined ? { seed: parsed.seed } : {}),
      ...(parsed.seeds !== undefined ? { seeds: parsed.seeds } : {}),
      ...(parsed.backend !== undefined ? { backend: parsed.backend } : {}),
      smoke: parsed.smoke,
    });
    if (parsed.dryRun) {
      console.log(describePlan(manifest, parsed.out));
      reportCompletion();
      return 0;
    }
    console.error(describePlan(manifest, parsed.out));
    lockFile = join(resolve(parsed.out, manifest.experiment), ".lock");
    if (blasFailure !== undefined) {
      // With FFI given up, the backend could only report a permission error: say the real
      // reason here (the `blas` backend fails with it; `auto` moves on to the next backend).
      if (sandbox?.preloadBlas?.required) throw blasFailure;
      console.error(`OpenBLAS not loaded: ${blasFailure.message.split("\n")[0]}`);
    }
    const result = await runExperiment(manifest, registries, {
      out: parsed.out,
      resume: parsed.resume,
      smoke: parsed.smoke,
    });
    const report = await writeReport(result.dir);
    console.log(renderTable(report.report));
    console.error(`done: ${result.dir} (report: ${join(result.dir, "table1.md")})`);
    reportCompletion();
    return 0;
  } catch (error) {
    const denial = permissionDenial(error);
    if (denial !== undefined) throw denialError(denial, error);
    throw error;
  }
}

if (import.meta.main) {
  // A denial in a promise nobody awaits (a plugin's fire-and-forget fetch) ends the run the same way.
  // A user error thrown where nobody catches it (a plugin's timer or fire-and-forget promise)
  // is still reported as one line and exit 2, never as a stack trace.
  const reportStray = (reason: unknown): boolean => {
    const denial = permissionDenial(reason);
    const message = denial !== undefined
      ? denialError(denial, reason).message
      : reason instanceof UserError
      ? reason.message
      : undefined;
    if (message === undefined) return false;
    console.error(`exp: error: ${message}`);
    exitNow(EXIT_USER);
  };
  globalThis.addEventListener("unhandledrejection", (event) => {
    if (reportStray(event.reason)) event.preventDefault();
  });
  globalThis.addEventListener("error", (event) => {
    if (reportStray(event.error)) event.preventDefault();
  });
  // When the launcher dies (even by SIGKILL) the worker stops too, instead of writing on
  // unseen: its parent changes. Checked on progress ticks (long work ticks while busy) and on
  // a timer (idle moments).
  const parent = Deno.ppid;
  const checkParent = () => {
    if (Deno.ppid !== parent) {
      console.error("exp: the launcher has ended; stopping (continue with --resume)");
      exitNow(143);
    }
  };
  onProgressTick(checkParent);
  Deno.unrefTimer(setInterval(checkParent, 500));
  await runMain("exp", () => main(Deno.args));
}
