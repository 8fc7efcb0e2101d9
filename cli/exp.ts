/**
 * `deno task exp <manifest.json>`: validates a manifest and runs its experiment.
 *
 * This file is a launcher. It parses the arguments, works out what the
 * experiment needs to touch (the project, the manifest's folder, the data files
 * and plugin modules it names, the output folder, Deno's npm cache, OpenBLAS),
 * and re-runs Deno on `cli/_exp_worker.ts` with exactly those permissions: no
 * network, no subprocesses, writes only to the output folder and `data/`, FFI
 * only for a backend that needs it. Plugin code, user modules included, runs
 * only in that child. Exit code, output and signals pass through unchanged.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { UserError } from "../core/errors.ts";
import { EXIT_INTERNAL, parseIntegerFlag, runMain } from "./_main.ts";

/** The `--help` text. */
export const HELP = `Usage: deno task exp <manifest.json> [options]

Validates the manifest, then runs every run of the experiment, writing
<out>/<experiment>/<run>/ (manifest.resolved.json, metrics.jsonl, ...).

Options:
  --dry-run        validate, print the resolved plan and exit
  --smoke          scale every budget down to a seconds-long end-to-end check
  --out DIR        output root (default: runs)
  --resume         continue the runs found in the output folder
  --backend NAME   compute backend, overriding the manifest (auto, cpu, wasm, blas, tensorflow)
  --seed N         base seed, overriding the manifest
  --seeds N        repeat every run with N seeds (runs become <name>@seed<k>; the
                   report shows mean and standard deviation), overriding the manifest
  -h, --help       show this help

Exit codes: 0 done, 2 user error (arguments, manifest, data), 1 internal failure.`;

/** The parsed command line of `deno task exp`. */
export interface ExpArgs {
  /** `--help` was given; nothing else is checked then. */
  help: boolean;
  /** The manifest file as given. */
  manifest: string;
  /** `--dry-run`. */
  dryRun: boolean;
  /** `--smoke`. */
  smoke: boolean;
  /** The output root, absolute. */
  out: string;
  /** `--resume`. */
  resume: boolean;
  /** `--backend`. */
  backend?: string;
  /** `--seed`. */
  seed?: number;
  /** `--seeds`. */
  seeds?: number;
}

/**
 * Parses and checks `deno task exp`'s arguments (relative paths against the current folder).
 *
 * @throws {UserError} (or parseArgs' own errors, also user errors) for bad arguments.
 */
export function parseExpArgs(args: string[]): ExpArgs {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      "dry-run": { type: "boolean", default: false },
      smoke: { type: "boolean", default: false },
      out: { type: "string", default: "runs" },
      resume: { type: "boolean", default: false },
      backend: { type: "string" },
      seed: { type: "string" },
      seeds: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const out = resolve(values.out);
  if (values.help) {
    return { help: true, manifest: "", dryRun: false, smoke: false, out, resume: false };
  }
  if (positionals.length !== 1) {
    throw new UserError(
      `expected exactly one manifest file, got ${positionals.length}${
        positionals.length ? ` (${positionals.join(" ")})` : ""
      }; see --help`,
    );
  }
  const seed = parseIntegerFlag("seed", values.seed);
  const seeds = parseIntegerFlag("seeds", values.seeds);
  if (seeds !== undefined && (seeds < 1 || seeds > 100)) {
    throw new UserError(`--seeds must be between 1 and 100 (got ${seeds})`);
  }
  return {
    help: false,
    manifest: positionals[0],
    dryRun: values["dry-run"],
    smoke: values.smoke,
    out,
    resume: values.resume,
    ...(values.backend !== undefined ? { backend: values.backend } : {}),
    ...(seed !== undefined ? { seed } : {}),
    ...(seeds !== undefined ? { seeds } : {}),
  };
}

/** The project root (the folder holding deno.json), absolute, without a trailing separator. */
export const PROJECT_ROOT: string = fileURLToPath(new URL("../", import.meta.url)).replace(
  /[\\/]$/,
  "",
);

/** The script the launcher runs in the restricted child process. */
export const WORKER: string = fileURLToPath(new URL("./_exp_worker.ts", import.meta.url));

/**
 * What the worker does with FFI before any plugin code runs, passed to it as the first
 * argument `--sandbox=<json>`.
 */
export interface WorkerSandbox {
  /** Open OpenBLAS (this path, or the default candidates when "") before loading plugins. */
  preloadBlas?: { libraryPath: string; required: boolean };
  /** Give up FFI permission after the preload, so plugins get none. */
  revokeFfi: boolean;
}

/** Everything {@link sandboxPlan} needs to know about the machine and the command. */
export interface SandboxInputs {
  /** The parsed arguments. */
  args: ExpArgs;
  /** The current folder. */
  cwd: string;
  /** The project root. */
  root: string;
  /** The manifest as parsed JSON, or undefined when it could not be read (the worker reports why). */
  raw: unknown;
  /** Deno's npm package cache folder, when known. */
  npmCache?: string;
  /** Whether a path exists (used to find an installed tfjs-node). */
  exists: (path: string) => boolean;
}

/** The permissions of the worker process and what it does with them. */
export interface SandboxPlan {
  /** Readable paths. */
  read: string[];
  /** Writable paths. */
  write: string[];
  /** Environment variables the worker may read. */
  env: string[];
  /** System information the worker may read. */
  sys: string[];
  /**
   * FFI: `"all"` (given up by the worker before plugins load), or the folders of native
   * addons the worker may load; empty means none.
   */
  ffi: "all" | string[];
  /** Plugin module files named by the manifest (their static imports are cached first). */
  modules: string[];
  /** Passed to the worker. */
  worker: WorkerSandbox;
}

/** Environment variables the backends read to find Deno's npm cache. */
const WORKER_ENV = ["DENO_DIR", "HOME", "XDG_CACHE_HOME", "USERPROFILE", "LOCALAPPDATA"];

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Every `"module"` string anywhere in the manifest (user plugin files). */
function modulePaths(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) {
    for (const item of value) modulePaths(item, out);
  } else if (isObject(value)) {
    if (typeof value.module === "string" && value.module !== "") out.push(value.module);
    for (const item of Object.values(value)) modulePaths(item, out);
  }
  return out;
}

/** The part of a path before its first wildcard segment (the folder a glob searches). */
function globRoot(path: string): string {
  const segments = path.split(/[\\/]/);
  const wild = segments.findIndex((s) => /[*?[\]{}]/.test(s));
  if (wild < 0) return path;
  const head = segments.slice(0, wild).join("/");
  return head === "" ? (path.startsWith("/") ? "/" : ".") : head;
}

/** The files, folders and glob roots a built-in data plugin's config names. */
function dataPaths(raw: Json): string[] {
  const data = raw.data;
  if (!isObject(data) || !isObject(data.config)) return [];
  const config = data.config;
  const out: string[] = [];
  if (Array.isArray(config.paths)) {
    for (const p of config.paths) if (typeof p === "string" && p !== "") out.push(globRoot(p));
  }
  for (const key of ["source", "reference"]) {
    const p = config[key];
    if (typeof p === "string" && p !== "") out.push(p);
  }
  return out;
}

/** The backend the run will use: its name (or undefined for a user module) and config. */
function backendOf(args: ExpArgs, raw: unknown): { name?: string; config: Json } {
  if (args.backend !== undefined) return { name: args.backend, config: {} };
  const ref = isObject(raw) ? raw.backend : undefined;
  if (ref === undefined) return { name: "auto", config: {} };
  if (typeof ref === "string") return { name: ref, config: {} };
  if (isObject(ref) && typeof ref.name === "string") {
    return { name: ref.name, config: isObject(ref.config) ? ref.config : {} };
  }
  return { config: {} };
}

function unique(paths: string[]): string[] {
  return [...new Set(paths)];
}

/**
 * Works out the worker's permissions for one `deno task exp` command.
 *
 * - read: the project, the manifest's folder, the data files/folders and plugin modules'
 *   folders the manifest names, the output folder and Deno's npm cache;
 * - write: the output folder and the project's `data/` (none for `--dry-run`);
 * - ffi: for `blas`, and `auto` unless `tryBlas` is false: unscoped, because opening
 *   OpenBLAS needs Deno's pointer API, but the worker opens the library before any plugin
 *   code runs and then gives FFI up; for `tensorflow`, and `auto` when a tfjs-node copy is
 *   installed, only the folders holding its native addon (kept, as it loads later); none
 *   for `cpu`, `wasm`, a backend from a user module, or `--dry-run`;
 * - env: the variables that locate Deno's cache; sys: `statfs` (the free-space check
 *   before a Grow step); net, run and import: nothing.
 */
export function sandboxPlan(inputs: SandboxInputs): SandboxPlan {
  const { args, cwd, root, raw } = inputs;
  const manifestFile = resolve(cwd, args.manifest);
  const manifestDir = dirname(manifestFile);
  const modules = isObject(raw) ? unique(modulePaths(raw).map((m) => resolve(manifestDir, m))) : [];
  const data = isObject(raw) ? dataPaths(raw).map((p) => resolve(manifestDir, p)) : [];
  const write = args.dryRun ? [] : unique([args.out, join(root, "data")]);

  const backend = backendOf(args, raw);
  const worker: WorkerSandbox = { revokeFfi: false };
  let ffi: SandboxPlan["ffi"] = [];
  let addons: string[] = [];
  if (!args.dryRun) {
    const tensorflow = backend.name === "tensorflow" ||
      (backend.name === "auto" && backend.config.tryTensorflow !== false);
    addons = tensorflow ? tensorflowFolders(inputs).filter(inputs.exists) : [];
    const blas = backend.name === "blas" ||
      (backend.name === "auto" && backend.config.tryBlas !== false && addons.length === 0);
    if (blas) {
      // Opening the library reads OpenBLAS's self-description through a pointer, which Deno
      // allows only with unscoped FFI; the worker does it before any plugin code runs and
      // then gives FFI up entirely.
      ffi = "all";
      const libraryPath = typeof backend.config.libraryPath === "string"
        ? backend.config.libraryPath
        : "";
      worker.preloadBlas = { libraryPath, required: backend.name === "blas" };
      worker.revokeFfi = true;
    } else if (addons.length > 0) {
      // tfjs-node's native addon is loaded when the backend starts, after the plugins.
      ffi = addons;
    }
  }

  const read = unique([
    root,
    manifestDir,
    ...data,
    ...modules.map((m) => dirname(m)),
    args.out,
    ...(inputs.npmCache ? [inputs.npmCache] : []),
    ...addons,
  ]);
  return {
    read,
    write,
    env: WORKER_ENV,
    sys: ["statfs"],
    ffi,
    modules,
    worker,
  };
}

/** Where an installed tfjs-node(-gpu), whose native addon needs FFI, may live. */
function tensorflowFolders(inputs: SandboxInputs): string[] {
  const out: string[] = [];
  for (const pkg of ["tfjs-node", "tfjs-node-gpu"]) {
    if (inputs.npmCache) out.push(join(inputs.npmCache, "registry.npmjs.org", "@tensorflow", pkg));
    for (const base of unique([inputs.cwd, inputs.root])) {
      out.push(join(base, "node_modules", "@tensorflow", pkg));
    }
  }
  for (const base of unique([inputs.cwd, inputs.root])) {
    out.push(join(base, "node_modules", ".deno"));
  }
  return out;
}

/**
 * The `deno run` flags that grant a plan's permissions (and nothing else).
 *
 * @throws {UserError} for a path with a comma, which Deno's flags cannot express.
 */
export function permissionFlags(plan: SandboxPlan): string[] {
  const list = (paths: string[]) => {
    const bad = paths.find((p) => p.includes(","));
    if (bad !== undefined) {
      throw new UserError(
        `cannot grant access to ${bad}: Deno's permission flags cannot name a path with a ` +
          "comma; rename or move it",
      );
    }
    return paths.join(",");
  };
  const flags = ["--no-prompt", `--allow-read=${list(plan.read)}`];
  if (plan.write.length > 0) flags.push(`--allow-write=${list(plan.write)}`);
  if (plan.env.length > 0) flags.push(`--allow-env=${list(plan.env)}`);
  if (plan.sys.length > 0) flags.push(`--allow-sys=${list(plan.sys)}`);
  if (plan.ffi === "all") flags.push("--allow-ffi");
  else if (plan.ffi.length > 0) flags.push(`--allow-ffi=${list(plan.ffi)}`);
  return flags;
}

/** The Deno executable to re-run: this one when allowed, else `deno` from PATH. */
function denoExecutable(): string {
  const exe = Deno.execPath();
  const state = Deno.permissions.querySync({ name: "run", command: exe }).state;
  return state === "granted" ? exe : "deno";
}

async function capture(exe: string, args: string[]): Promise<Deno.CommandOutput> {
  try {
    return await new Deno.Command(exe, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .output();
  } catch (error) {
    throw new UserError(
      `cannot start ${exe} (${(error as Error).message}): the exp task re-runs Deno with ` +
        "narrow permissions and needs the deno executable on PATH (or --allow-run for it)",
      { cause: error },
    );
  }
}

/** Deno's cache folders, from `deno info --json`. */
async function denoInfo(exe: string): Promise<{ npmCache?: string; version?: string }> {
  const output = await capture(exe, ["info", "--json"]);
  if (!output.success) return {};
  try {
    const info = JSON.parse(new TextDecoder().decode(output.stdout));
    return { npmCache: info.npmCache, version: info.denoVersion };
  } catch {
    return {};
  }
}

async function readRaw(file: string): Promise<unknown> {
  try {
    return JSON.parse(await Deno.readTextFile(file));
  } catch {
    return undefined; // the worker reports a missing or malformed manifest
  }
}

/** The experiment folder's lock file, when the run will take one. */
function lockPath(args: ExpArgs, raw: unknown): string | undefined {
  if (args.dryRun || !isObject(raw) || typeof raw.experiment !== "string") return undefined;
  return join(resolve(args.out, raw.experiment), ".lock");
}

/** Removes `path` if it still names process `pid` (run with access to that file only). */
const UNLOCK = "data:application/javascript," + encodeURIComponent(
  "const [path, pid] = Deno.args; try { if (JSON.parse(Deno.readTextFileSync(path)).pid === " +
    "Number(pid)) Deno.removeSync(path); } catch { /* gone or not ours */ }",
);

/**
 * After the worker has ended, removes the experiment lock it still holds (it was killed by a
 * signal, so it could not), letting `--resume` continue at once. The worker's lock names its
 * process id; Deno cannot look into /proc without full permissions to tell that it is gone.
 */
async function releaseLock(exe: string, path: string, pid: number): Promise<void> {
  let holder: unknown;
  try {
    holder = JSON.parse(await Deno.readTextFile(path)).pid;
  } catch {
    return;
  }
  if (holder !== pid) return;
  const scope = [`--allow-read=${path}`, `--allow-write=${path}`];
  await capture(exe, ["run", "--no-prompt", ...scope, UNLOCK, path, String(pid)]);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

const SIGNALS: Deno.Signal[] = Deno.build.os === "windows"
  ? ["SIGINT", "SIGBREAK"]
  : ["SIGINT", "SIGTERM", "SIGHUP"];

/**
 * Runs the worker with inherited stdio; resolves to its exit code and process id. A signal to the
 * launcher (Ctrl-C, SIGTERM, a closed terminal) is passed on to the worker; a second one
 * kills it outright, so an interrupted experiment never keeps running on its own.
 */
async function runWorker(exe: string, args: string[]): Promise<{ code: number; pid: number }> {
  const child = new Deno.Command(exe, {
    args,
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  let received = 0;
  const forwarders = SIGNALS.map((signal) => {
    const forward = () => {
      received++;
      try {
        child.kill(received === 1 ? signal : "SIGKILL");
      } catch { /* already gone */ }
    };
    Deno.addSignalListener(signal, forward);
    return [signal, forward] as const;
  });
  // If whatever started the launcher dies (e.g. `deno task` killed with SIGKILL), stop the
  // worker too, so no experiment keeps writing unseen; it resumes with --resume.
  const parent = Deno.ppid;
  const watch = setInterval(() => {
    if (Deno.ppid === parent) return;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, 500);
  try {
    return { code: (await child.status).code, pid: child.pid };
  } finally {
    clearInterval(watch);
    for (const [signal, forward] of forwarders) Deno.removeSignalListener(signal, forward);
  }
}

async function main(): Promise<number> {
  const args = parseExpArgs(Deno.args);
  if (args.help) {
    console.log(HELP);
    return 0;
  }
  const exe = denoExecutable();
  const info = await denoInfo(exe);
  if (info.version !== undefined && info.version !== Deno.version.deno) {
    console.error(
      `exp: warning: running the experiment with ${exe} ${info.version} from PATH ` +
        `(this is Deno ${Deno.version.deno})`,
    );
  }
  const cwd = Deno.cwd();
  const raw = await readRaw(resolve(cwd, args.manifest));
  const plan = sandboxPlan({
    args,
    cwd,
    root: PROJECT_ROOT,
    raw,
    ...(info.npmCache ? { npmCache: info.npmCache } : {}),
    exists,
  });
  const config = join(PROJECT_ROOT, "deno.json");
  // The child may load only cached modules (no network through imports), so fetch the
  // framework's modules and the static imports of the manifest's plugin modules first.
  const cached = await capture(exe, ["cache", "--quiet", `--config=${config}`, WORKER]);
  if (!cached.success) {
    console.error(new TextDecoder().decode(cached.stderr).trimEnd());
    console.error("exp: error: cannot fetch the framework's dependencies (see above)");
    return EXIT_INTERNAL;
  }
  const present = plan.modules.filter(exists);
  if (present.length > 0) {
    // Failures are reported by the worker, with the manifest path of the module.
    await capture(exe, ["cache", "--quiet", `--config=${config}`, ...present]);
  }
  const { code, pid } = await runWorker(exe, [
    "run",
    `--config=${config}`,
    "--cached-only",
    ...permissionFlags(plan),
    WORKER,
    `--sandbox=${JSON.stringify(plan.worker)}`,
    ...Deno.args,
  ]);
  const lock = lockPath(args, raw);
  if (lock !== undefined && code !== 0) await releaseLock(exe, lock, pid);
  return code;
}

if (import.meta.main) await runMain("exp", main);
