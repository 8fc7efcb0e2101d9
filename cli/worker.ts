/**
 * `deno task worker --queue redis://[user:password@]HOST:PORT/DB`: a Grow worker for the
 * `queue` executor, on this machine or any other with the project. A small launcher: it
 * works out the sandbox (that of `deno task exp`: read the project, Deno's cache and the
 * folders named here; write only the artefact cache; FFI only to open OpenBLAS, then given
 * up; plus network access to the queue's host and port alone) and runs the worker
 * (`cli/_worker_process.ts`) in a child Deno process with it, passing the queue URL on the
 * child's standard input so that no password shows in a process list. Workers may join and
 * leave at any time; Ctrl-C stops one after its current shard (twice: at once).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { UserError } from "../core/errors.ts";
import { netPermission, parseQueueUrl } from "../plugins/executors/_queue_url.ts";
import { parseIntegerFlag, runMain } from "./_main.ts";
import {
  cleanEnvironment,
  denoExecutable,
  denoInfo,
  permissionFlags,
  PROJECT_ROOT,
  type SandboxPlan,
} from "./exp.ts";
import type { WorkerOptions } from "./_worker_process.ts";

const HELP = `deno task worker --queue URL [options]

Takes Grow and evaluation shards from the queue executor's Redis and computes them.

Options:
  --queue URL           redis://[user:password@]host:port/db or rediss://... (TLS); default:
                        the REST_QUEUE_URL environment variable
  --name NAME           queue name (default: rest-grow, as the executor's "queue")
  --cache DIR           artefact cache (default: ~/.cache/rest-worker)
  --artefacts DIR       the folder shared with the coordinator, when the executor names one
  --read DIR            another folder the worker may read (a user plugin's), repeatable
  --backend NAME        the backend the jobs use: auto (default), blas, cpu, wasm
  --threads N           BLAS threads, overriding the jobs' backend config (0: keep it)
  --lock-seconds S      a worker silent this long loses its shard to another (default: 60)
  --stalled-seconds S   how often shards of dead workers are looked for (default: 30)
  --max-shards N        leave after N shards (default: 0, never)
  -h, --help            this text
`;

/** The script the launcher runs in the restricted child process. */
const PROCESS = fileURLToPath(new URL("./_worker_process.ts", import.meta.url));

/** Parsed `deno task worker` arguments. */
export interface WorkerArgs {
  /** The queue URL (secret: never printed). */
  url: string;
  /** Extra readable folders. */
  read: string[];
  /** The shared artefact folder, if any. */
  artefacts?: string;
  /** The backend the worker prepares for. */
  backend: string;
  /** What the worker process is told. */
  options: WorkerOptions;
}

/**
 * Parses the worker's arguments.
 *
 * @throws {UserError} for a missing or bad URL or option.
 */
export function parseWorkerArgs(
  args: string[],
  env: { url?: string; home?: string },
): WorkerArgs | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        queue: { type: "string" },
        name: { type: "string", default: "rest-grow" },
        cache: { type: "string" },
        artefacts: { type: "string" },
        read: { type: "string", multiple: true, default: [] },
        backend: { type: "string", default: "auto" },
        threads: { type: "string", default: "0" },
        "lock-seconds": { type: "string", default: "60" },
        "stalled-seconds": { type: "string", default: "30" },
        "max-shards": { type: "string", default: "0" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UserError(`${(error as Error).message}; see --help`);
  }
  if (values.help) return "help";
  const url = values.queue ?? env.url;
  if (url === undefined || url === "") {
    throw new UserError(
      "--queue URL is required (or set REST_QUEUE_URL); see --help",
    );
  }
  parseQueueUrl(url, "--queue");
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(values.name)) {
    throw new UserError(
      `--name ${JSON.stringify(values.name)}: letters, digits, _ . - only`,
    );
  }
  if (!["auto", "blas", "cpu", "wasm"].includes(values.backend)) {
    throw new UserError(
      `--backend ${values.backend}: expected auto, blas, cpu or wasm`,
    );
  }
  const seconds = (flag: string, value: string) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) {
      throw new UserError(`${flag} must be a positive number`);
    }
    return n;
  };
  return {
    url,
    read: values.read.map((p) => resolve(p)),
    ...(values.artefacts !== undefined ? { artefacts: resolve(values.artefacts) } : {}),
    backend: values.backend,
    options: {
      name: values.name,
      cache: resolve(
        values.cache ?? join(env.home ?? ".", ".cache", "rest-worker"),
      ),
      lockSeconds: seconds("--lock-seconds", values["lock-seconds"]),
      stalledSeconds: seconds("--stalled-seconds", values["stalled-seconds"]),
      threads: parseIntegerFlag("--threads", values.threads) ?? 0,
      maxShards: parseIntegerFlag("--max-shards", values["max-shards"]) ?? 0,
    },
  };
}

/**
 * The worker process's permissions: those of `deno task exp` for a run on `backend`, with
 * the artefact cache as the only writable folder, plus network access to the queue's host
 * and port.
 */
export function workerPlan(
  args: WorkerArgs,
  info: { npmCache?: string; denoDir?: string },
): SandboxPlan {
  const blas = args.backend === "auto" || args.backend === "blas";
  return {
    read: [
      PROJECT_ROOT,
      args.options.cache,
      ...(info.npmCache ? [info.npmCache] : []),
      ...(args.artefacts ? [args.artefacts] : []),
      ...args.read,
    ],
    write: [args.options.cache],
    env: [],
    sys: ["statfs", "hostname"],
    ffi: blas ? "all" : [],
    modules: [],
    worker: {
      revokeFfi: blas,
      completionToken: false,
      ...(blas ? { preloadBlas: { libraryPath: "", required: args.backend === "blas" } } : {}),
      ...(info.npmCache ? { npmCache: info.npmCache } : {}),
    },
    net: [netPermission(parseQueueUrl(args.url, "--queue"))],
    cleanEnv: cleanEnvironment(info.denoDir),
  };
}

async function main(): Promise<number> {
  const args = parseWorkerArgs(Deno.args, {
    url: Deno.env.get("REST_QUEUE_URL"),
    home: Deno.env.get("HOME"),
  });
  if (args === "help") {
    console.log(HELP);
    return 0;
  }
  await Deno.mkdir(args.options.cache, { recursive: true });
  const exe = denoExecutable();
  const info = await denoInfo(exe);
  const plan = workerPlan(args, info);
  const config = join(PROJECT_ROOT, "deno.json");
  const cached = await new Deno.Command(exe, {
    args: ["cache", "--quiet", `--config=${config}`, PROCESS],
    stdin: "null",
  }).output();
  if (!cached.success) throw new UserError("cannot fetch the worker's dependencies (see above)");
  const child = new Deno.Command(exe, {
    args: [
      "run",
      `--config=${config}`,
      "--cached-only",
      ...permissionFlags(plan),
      PROCESS,
      `--sandbox=${JSON.stringify(plan.worker)}`,
      `--options=${JSON.stringify(args.options)}`,
    ],
    stdin: "piped",
    clearEnv: true,
    env: plan.cleanEnv ?? {},
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(`${args.url}\n`));
  await writer.close();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      try {
        child.kill(signal);
      } catch { /* already gone */ }
    });
  }
  const status = await child.status;
  return status.code;
}

if (import.meta.main) await runMain("worker", main);
