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
import { loadManifest } from "../core/manifest.ts";
import { createRegistries } from "../core/registry.ts";
import { describePlan, runExperiment } from "../core/experiment.ts";
import { renderTable, writeReport } from "../core/report.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { loadBlas } from "../plugins/backends/_blas_ffi.ts";
import { EXIT_USER, runMain } from "./_main.ts";
import { onProgressTick } from "../core/progress.ts";
import { HELP, parseExpArgs, type WorkerSandbox } from "./exp.ts";

/** What a denied operation means here, appended to Deno's own message. */
const SANDBOX_HINT = "`deno task exp` runs without network access, reads only the project, " +
  "the manifest's folder and the data and plugin files it names, and writes only to the " +
  "output folder and data/ (README.md, Permissions)";

/** The Deno permission error in `error` or its chain of causes, if any. */
export function permissionDenial(error: unknown): Error | undefined {
  for (let e = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof Deno.errors.NotCapable) return e;
  }
  return undefined;
}

/** A user error that reports a permission denial without a stack trace. */
function denialError(denial: Error): UserError {
  return new UserError(`permission denied: ${denial.message.split("\n")[0]}; ${SANDBOX_HINT}`, {
    cause: denial,
  });
}

/**
 * Does what the launcher asked before any plugin code runs: opens OpenBLAS (the `blas`
 * backend later reuses the open library) and then gives FFI permission up, so plugins
 * cannot load native code. Returns why OpenBLAS could not be opened, if it could not.
 */
function prepareSandbox(sandbox: WorkerSandbox): Error | undefined {
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
  Deno.exit(code);
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
  const blasFailure = sandbox === undefined ? undefined : prepareSandbox(sandbox);
  try {
    const registries = createRegistries(builtinPlugins);
    const manifest = await loadManifest(parsed.manifest, registries, {
      ...(parsed.seed !== undefined ? { seed: parsed.seed } : {}),
      ...(parsed.seeds !== undefined ? { seeds: parsed.seeds } : {}),
      ...(parsed.backend !== undefined ? { backend: parsed.backend } : {}),
      smoke: parsed.smoke,
    });
    if (parsed.dryRun) {
      console.log(describePlan(manifest, parsed.out));
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
    return 0;
  } catch (error) {
    const denial = permissionDenial(error);
    if (denial !== undefined) throw denialError(denial);
    throw error;
  }
}

if (import.meta.main) {
  // A denial in a promise nobody awaits (a plugin's fire-and-forget fetch) ends the run the same way.
  globalThis.addEventListener("unhandledrejection", (event) => {
    const denial = permissionDenial(event.reason);
    if (denial === undefined) return;
    event.preventDefault();
    console.error(`exp: error: ${denialError(denial).message}`);
    exitNow(EXIT_USER);
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
