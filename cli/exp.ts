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
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { UserError } from "../core/errors.ts";
import { WEBGPU_DIAGNOSTIC_PATHS, WEBGPU_ENV_VARS } from "../plugins/backends/_webgpu_env.ts";
import {
  netPermission,
  parseQueueUrl,
  type QueueAddress,
} from "../plugins/executors/_queue_url.ts";
import { EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USER, parseIntegerFlag, runMain } from "./_main.ts";

/** The `--help` text. */
export const HELP = `Usage: deno task exp <manifest.json> [options]

Validates the manifest, then runs every run of the experiment, writing
<out>/<experiment>/<run>/ (manifest.resolved.json, metrics.jsonl, ...).

Options:
  --dry-run        validate, print the resolved plan and exit
  --smoke          scale every budget down to a seconds-long end-to-end check
  --out DIR        output root (default: runs)
  --resume         continue the runs found in the output folder
  --backend NAME   compute backend, overriding the manifest (auto, cpu, wasm, blas, webgpu, tensorflow)
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
  /**
   * Deno's npm package cache (where the wasm backend finds its `.wasm` files), given here so
   * that the worker needs no environment variables to find it.
   */
  npmCache?: string;
  /**
   * The worker reads a secret token from its standard input before any plugin code runs and
   * prints {@link completionLine} of it when the experiment has finished; an exit without
   * that line (a plugin calling `Deno.exit(0)`) is never reported as success.
   */
  completionToken: boolean;
}

/** The line the worker prints on standard output when it has finished its work. */
export function completionLine(token: string): string {
  return `\u001e exp-complete ${token}`;
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
  /** Deno's cache root (`DENO_DIR`), when known. */
  denoDir?: string;
  /** Whether a path exists (used to find an installed tfjs-node). */
  exists: (path: string) => boolean;
  /**
   * Whether a tfjs-node folder that exists holds the native addon (`tfjs_binding.node`);
   * absent: assumed to. A copy whose install script never ran must not cost `auto` the
   * blas backend.
   */
  hasAddon?: (folder: string) => boolean;
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
  /** `host:port` the worker may connect to (the `queue` executor's Redis); none when absent. */
  net?: string[];
  /**
   * The worker's whole environment, which it may then read freely (absent: the launcher's
   * environment, none of it readable). The queue's libraries enumerate the environment, so
   * a worker that talks to a queue gets an environment of Deno's cache folder alone.
   */
  cleanEnv?: Record<string, string>;
  /** Unstable Deno features the worker needs (`webgpu` for the webgpu and auto backends). */
  unstable?: string[];
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * Every `"module"` string anywhere in the manifest (user plugin files). Iterative, so that a
 * pathologically nested manifest cannot overflow the stack here (the worker reports it).
 */
function modulePaths(root: unknown): string[] {
  const out: string[] = [];
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const value = stack.pop();
    if (Array.isArray(value)) {
      for (const item of value) stack.push(item);
    } else if (isObject(value)) {
      if (typeof value.module === "string" && value.module !== "") out.push(value.module);
      for (const item of Object.values(value)) stack.push(item);
    }
  }
  return out.reverse();
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
 * - env: none (the npm cache's location is passed in the sandbox argument), except, for
 *   runs that may use WebGPU, the variables that decide which adapters exist
 *   (`WEBGPU_ENV_VARS`), with read access to the Vulkan driver files, so that a missing
 *   adapter is explained; sys: `statfs`
 *   (the free-space check before a Grow step); net, run and import: nothing.
 */
export function sandboxPlan(inputs: SandboxInputs): SandboxPlan {
  const { args, cwd, root, raw } = inputs;
  const manifestFile = resolve(cwd, args.manifest);
  const manifestDir = dirname(manifestFile);
  const modules = isObject(raw) ? unique(modulePaths(raw).map((m) => resolve(manifestDir, m))) : [];
  const data = isObject(raw) ? dataPaths(raw).map((p) => resolve(manifestDir, p)) : [];
  const write = args.dryRun ? [] : unique([args.out, join(root, "data")]);

  const backend = backendOf(args, raw);
  const worker: WorkerSandbox = {
    revokeFfi: false,
    completionToken: true,
    ...(inputs.npmCache ? { npmCache: inputs.npmCache } : {}),
  };
  let ffi: SandboxPlan["ffi"] = [];
  let addons: string[] = [];
  if (!args.dryRun) {
    const tensorflow = backend.name === "tensorflow" ||
      (backend.name === "auto" && backend.config.tryTensorflow !== false);
    const usable = inputs.hasAddon ?? (() => true);
    addons = tensorflow
      ? tensorflowFolders(inputs).filter((f) => inputs.exists(f) && usable(f))
      : [];
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

  // The queue executor talks to its Redis, and nothing else, over the network.
  const queue = args.dryRun ? undefined : queueOf(raw);
  const read = unique([
    root,
    manifestDir,
    ...data,
    ...modules.map((m) => dirname(m)),
    args.out,
    ...(inputs.npmCache ? [inputs.npmCache] : []),
    ...addons,
  ]);
  // WebGPU (navigator.gpu) is an unstable Deno API: only runs that may choose it get it.
  const webgpu = !args.dryRun && (backend.name === "webgpu" ||
    (backend.name === "auto" && backend.config.tryWebgpu !== false));
  return {
    // The driver files and variables the backend reads to explain a missing adapter.
    read: webgpu ? unique([...read, ...WEBGPU_DIAGNOSTIC_PATHS]) : read,
    write,
    env: webgpu ? [...WEBGPU_ENV_VARS] : [],
    sys: ["statfs"],
    ffi,
    modules,
    worker,
    ...(queue === undefined ? {} : {
      net: [netPermission(queue)],
      cleanEnv: cleanEnvironment(inputs.denoDir),
    }),
    ...(webgpu ? { unstable: ["webgpu"] } : {}),
  };
}

/**
 * OpenBLAS's tuning variables, which choose its kernels and so the last bits of every
 * product: a worker or experiment process started with a clean environment gets the
 * launcher's values, so it computes exactly what a process with the full environment would.
 */
export const BLAS_TUNING_ENV = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"] as const;

/** A clean environment: Deno's cache folder and the {@link BLAS_TUNING_ENV} variables set here. */
export function cleanEnvironment(denoDir: string | undefined): Record<string, string> {
  const env: Record<string, string> = denoDir ? { DENO_DIR: denoDir } : {};
  for (const name of BLAS_TUNING_ENV) {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") continue;
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/** The queue executor's address, when the manifest names that executor with a valid URL. */
function queueOf(raw: unknown): QueueAddress | undefined {
  const ref = isObject(raw) ? raw.executor : undefined;
  const name = typeof ref === "string" ? ref : isObject(ref) ? ref.name : undefined;
  if (name !== "queue") return undefined;
  const config = isObject(ref) && isObject(ref.config) ? ref.config : {};
  const url = typeof config.url === "string" ? config.url : "redis://127.0.0.1:6379/0";
  try {
    return parseQueueUrl(url, "/executor/config/url");
  } catch {
    return undefined; // the worker reports it with the manifest's other problems
  }
}

/** Where an installed tfjs-node(-gpu), whose native addon needs FFI, may live. */
/**
 * Whether `folder` (a tfjs-node package folder, its folder of versions in Deno's npm cache, or
 * a `node_modules/.deno` store) holds tfjs-node's native addon, searched a few levels deep.
 */
export function containsTensorflowAddon(folder: string): boolean {
  const search = (dir: string, depth: number): boolean => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      return false;
    }
    for (const entry of entries) {
      if (entry.isFile && entry.name === "tfjs_binding.node") return true;
      // In a node_modules/.deno store, only the tfjs-node packages' folders.
      if (basename(dir) === ".deno" && !entry.name.startsWith("@tensorflow+tfjs-node")) continue;
      if (entry.isDirectory && depth > 0 && search(join(dir, entry.name), depth - 1)) return true;
    }
    return false;
  };
  return search(folder, basename(folder) === ".deno" ? 7 : 4);
}

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
  if (plan.cleanEnv !== undefined) flags.push("--allow-env");
  else if (plan.env.length > 0) flags.push(`--allow-env=${list(plan.env)}`);
  if (plan.net !== undefined && plan.net.length > 0) flags.push(`--allow-net=${list(plan.net)}`);
  if (plan.sys.length > 0) flags.push(`--allow-sys=${list(plan.sys)}`);
  if (plan.ffi === "all") flags.push("--allow-ffi");
  else if (plan.ffi.length > 0) flags.push(`--allow-ffi=${list(plan.ffi)}`);
  return flags;
}

/** The Deno executable to re-run: this one when allowed, else `deno` from PATH. */
export function denoExecutable(): string {
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
export async function denoInfo(
  exe: string,
): Promise<{ npmCache?: string; denoDir?: string; version?: string }> {
  const output = await capture(exe, ["info", "--json"]);
  if (!output.success) return {};
  try {
    const info = JSON.parse(new TextDecoder().decode(output.stdout));
    return { npmCache: info.npmCache, denoDir: info.denoDir, version: info.denoVersion };
  } catch {
    return {};
  }
}

/** The largest manifest the launcher reads (the worker applies the manifest's own limits). */
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;

async function readRaw(file: string): Promise<unknown> {
  try {
    // Only a regular file: a FIFO or a device would block or never end (the worker says why).
    const info = await Deno.stat(file);
    if (!info.isFile || info.size > MAX_MANIFEST_BYTES) return undefined;
    return JSON.parse(await Deno.readTextFile(file));
  } catch {
    return undefined; // the worker reports a missing or malformed manifest
  }
}

/**
 * Entries of the project that hold code or configuration that the launcher, the worker or a
 * later run executes: the output folder may not lie inside them.
 */
const PROJECT_CODE = [
  ".ci",
  ".git",
  "bench",
  "cli",
  "core",
  "deno.json",
  "deno.lock",
  "experiments",
  "mod.ts",
  "node_modules",
  "plugins",
  "tests",
];

/** `path` with symlinks resolved, also when its last parts do not exist yet. */
export function realPath(path: string): string {
  const rest: string[] = [];
  let dir = resolve(path);
  for (;;) {
    try {
      return join(Deno.realPathSync(dir), ...rest.reverse());
    } catch {
      const parent = dirname(dir);
      if (parent === dir) return resolve(path);
      rest.push(basename(dir));
      dir = parent;
    }
  }
}

/** Whether `inner` is `outer` or lies below it (both absolute and normalised). */
function within(inner: string, outer: string): boolean {
  const rel = relative(outer, inner);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/**
 * Checks that plugins, which may write anywhere in the output folder, cannot change code that
 * runs later: the output folder must not contain (or be) the project, a plugin module's folder
 * or Deno's cache, nor lie inside the project's code or Deno's cache; and no plugin module may
 * lie in a folder the worker can write.
 *
 * @throws {UserError} naming the folders and what to do instead.
 */
export function checkOutputFolder(inputs: SandboxInputs, modules: readonly string[]): void {
  const out = realPath(inputs.args.out);
  const root = realPath(inputs.root);
  const refuse = (why: string): never => {
    throw new UserError(
      `--out ${inputs.args.out}: ${why}; plugins may write anywhere in the output folder, so it ` +
        "must hold no code that runs later: choose a folder of its own (the default is runs/)",
    );
  };
  if (within(root, out)) refuse(`the output folder contains the project (${root})`);
  for (const entry of PROJECT_CODE) {
    if (within(out, join(root, entry))) {
      refuse(`the output folder lies inside the project's ${entry}`);
    }
  }
  if (inputs.npmCache !== undefined) {
    const cache = realPath(inputs.npmCache);
    if (within(cache, out) || within(out, cache)) {
      refuse(`the output folder overlaps Deno's package cache (${cache})`);
    }
  }
  const writable = [out, realPath(join(inputs.root, "data"))];
  for (const module of modules) {
    const folder = realPath(dirname(module));
    if (within(folder, out)) {
      refuse(`the output folder contains the plugin module folder ${folder}`);
    }
    const file = realPath(module);
    if (writable.some((w) => within(file, w))) {
      throw new UserError(
        `plugin module ${module} lies in a folder the experiment may write (${
          writable.find((w) => within(file, w))
        }): move it elsewhere, so that no run can change the code a later run executes`,
      );
    }
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

function isRegularFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
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

/** How the worker process ended. */
interface WorkerEnd {
  /** Its exit code (128 + n when a signal ended it). */
  code: number;
  /** The signal that ended it, if one did. */
  signal: Deno.Signal | null;
  /** Its process id. */
  pid: number;
  /** Whether it printed the completion line (it finished its work). */
  completed: boolean;
  /** Whether the launcher was interrupted (and passed the signal on). */
  interrupted: boolean;
}

/**
 * Copies the worker's standard output to ours, line by line, holding back the completion
 * line; resolves to whether that line was seen.
 */
async function relayOutput(stream: ReadableStream<Uint8Array>, token: string): Promise<boolean> {
  const marker = completionLine(token);
  const encoder = new TextEncoder();
  const write = (text: string) => {
    const bytes = encoder.encode(text);
    for (let done = 0; done < bytes.length;) done += Deno.stdout.writeSync(bytes.subarray(done));
  };
  let completed = false;
  let pending = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    let newline = pending.indexOf("\n");
    while (newline >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (line === marker) completed = true;
      else write(`${line}\n`);
      newline = pending.indexOf("\n");
    }
  }
  if (pending === marker) completed = true;
  else if (pending !== "") write(pending);
  return completed;
}

/**
 * Runs the worker, its standard error inherited and its standard output relayed (see
 * {@link relayOutput}); its standard input carries the completion token. A signal to the
 * launcher (Ctrl-C, SIGTERM, a closed terminal) is passed on to the worker; a second one
 * kills it outright, so an interrupted experiment never keeps running on its own.
 */
async function runWorker(
  exe: string,
  args: string[],
  cleanEnv?: Record<string, string>,
): Promise<WorkerEnd> {
  const token = crypto.randomUUID();
  const child = new Deno.Command(exe, {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
    ...(cleanEnv === undefined ? {} : { clearEnv: true, env: cleanEnv }),
  }).spawn();
  const relayed = relayOutput(child.stdout, token);
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(`${token}\n`)).catch(() => {});
  await writer.close().catch(() => {});
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
    const status = await child.status;
    const completed = await relayed;
    return {
      code: status.code,
      signal: status.signal,
      pid: child.pid,
      completed,
      interrupted: received > 0,
    };
  } finally {
    clearInterval(watch);
    for (const [signal, forward] of forwarders) Deno.removeSignalListener(signal, forward);
  }
}

/** Deno's exit code for an unstable API used without its `--unstable-*` flag. */
const DENO_UNSTABLE_EXIT = 70;

/**
 * The launcher's exit code for how the worker ended: only 0 (finished: exit 0 and the
 * completion line), 1 (a fault of the framework), 2 (the user's input or plugins) or 130
 * (interrupted). Anything else is explained on standard error.
 */
export function exitCodeFor(end: WorkerEnd, userModules: boolean): number {
  const say = (text: string) => console.error(`exp: error: ${text}`);
  if (end.interrupted) return EXIT_INTERRUPTED;
  if (end.code === 0) {
    if (end.completed) return 0;
    say(
      "the experiment stopped before finishing its work (its process exited with code 0 but " +
        "never reported completion): " +
        (userModules ? "a plugin may have called Deno.exit(), process.exit() or close(); " : "") +
        "finished runs are kept, continue with --resume",
    );
    return userModules ? EXIT_USER : EXIT_INTERNAL;
  }
  if (end.code === EXIT_USER || end.code === EXIT_INTERNAL) return end.code;
  if (end.code === EXIT_INTERRUPTED) return EXIT_INTERRUPTED;
  if (end.code === DENO_UNSTABLE_EXIT) {
    say(
      "Deno stopped the experiment (exit code 70): a plugin used an unstable Deno API (see " +
        "the message above); `deno task exp` runs without unstable features",
    );
    return EXIT_USER;
  }
  if (end.signal !== null) {
    say(
      `the experiment's process was killed by ${end.signal}` +
        (end.signal === "SIGKILL" ? " (out of memory, or killed from outside)" : "") +
        "; finished work is kept, continue with --resume",
    );
    return EXIT_INTERNAL;
  }
  say(
    `the experiment's process ended with exit code ${end.code} (see the messages above); ` +
      "finished work is kept, continue with --resume",
  );
  return EXIT_INTERNAL;
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
  const inputs: SandboxInputs = {
    args,
    cwd,
    root: PROJECT_ROOT,
    raw,
    ...(info.npmCache ? { npmCache: info.npmCache } : {}),
    ...(info.denoDir ? { denoDir: info.denoDir } : {}),
    exists,
    hasAddon: containsTensorflowAddon,
  };
  const plan = sandboxPlan(inputs);
  checkOutputFolder(inputs, plan.modules);
  const config = join(PROJECT_ROOT, "deno.json");
  // The child may load only cached modules (no network through imports), so fetch the
  // framework's modules and the static imports of the manifest's plugin modules first.
  const cached = await capture(exe, ["cache", "--quiet", `--config=${config}`, WORKER]);
  if (!cached.success) {
    console.error(new TextDecoder().decode(cached.stderr).trimEnd());
    console.error("exp: error: cannot fetch the framework's dependencies (see above)");
    return EXIT_INTERNAL;
  }
  // Regular files only: `deno cache` on a FIFO would wait forever (the worker says why).
  const present = plan.modules.filter(isRegularFile);
  if (present.length > 0) {
    // Failures are reported by the worker, with the manifest path of the module.
    await capture(exe, ["cache", "--quiet", `--config=${config}`, ...present]);
  }
  const end = await runWorker(exe, [
    "run",
    `--config=${config}`,
    "--cached-only",
    ...(plan.unstable ?? []).map((feature) => `--unstable-${feature}`),
    ...permissionFlags(plan),
    WORKER,
    `--sandbox=${JSON.stringify(plan.worker)}`,
    ...Deno.args,
  ], plan.cleanEnv);
  const lock = lockPath(args, raw);
  if (lock !== undefined && end.code !== 0) await releaseLock(exe, lock, end.pid);
  return exitCodeFor(end, plan.modules.length > 0);
}

if (import.meta.main) await runMain("exp", main);
