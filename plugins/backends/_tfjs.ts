/**
 * What every backend plugin does around `tf.setBackend`: load the parts of
 * TensorFlow.js that `@tensorflow/tfjs-core` alone lacks, switch backends with
 * a clear error, and find npm package folders on disk.
 *
 * `@tensorflow/tfjs-core`'s Node build registers no gradient definitions and
 * no chained tensor methods (`x.add(y)`); the `@tensorflow/tfjs` union package
 * does both (and adds layers/converter). It shares the single tfjs-core copy,
 * so {@link loadTfjsExtras} imports it once for those side effects (and fixes
 * the BatchMatMul gradient for broadcast batch dimensions).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";

let extras: Promise<void> | undefined;

/**
 * Imports `@tensorflow/tfjs` once, which registers every gradient definition, the chained
 * tensor methods and the optimizers on the shared tfjs-core engine. Idempotent.
 */
export function loadTfjsExtras(): Promise<void> {
  extras ??= import("@tensorflow/tfjs").then(() => patchBatchMatMulGradient());
  return extras;
}

/** Sums a gradient over the batch dimensions its input was broadcast along. */
function reduceToShape(grad: tf.Tensor, shape: number[]): tf.Tensor {
  if (tf.util.arraysEqual(grad.shape, shape)) return grad;
  const axes = tf.broadcast_util.getReductionAxes(shape.slice(0, -2), grad.shape.slice(0, -2));
  return tf.reshape(axes.length > 0 ? tf.sum(grad, axes) : grad, shape);
}

let patchedGradient = false;

/**
 * Fixes tfjs 4.22's BatchMatMul gradient for broadcast batch dimensions (e.g.
 * `matMul(x[b, t, d], w[d, e])`): the stock one returns a gradient of the broadcast shape for
 * the smaller input, and tfjs then throws "gradient of input 'b' has shape ...". The patched
 * one sums over the broadcast dimensions; results where shapes already matched are unchanged.
 * (The fused matMul's built-in gradient has the same flaw and cannot be patched this way.)
 */
export function patchBatchMatMulGradient(): void {
  if (patchedGradient) return;
  const original = tf.getGradient(tf.BatchMatMul);
  if (original === undefined) return;
  tf.unregisterGradient(tf.BatchMatMul);
  tf.registerGradient({
    ...original,
    gradFunc: (dy, saved, attrs) => {
      const grads = original.gradFunc(dy, saved, attrs);
      const [a, b] = saved;
      return {
        a: () => reduceToShape(grads.a(), a.shape),
        b: () => reduceToShape(grads.b(), b.shape),
      };
    },
  });
  patchedGradient = true;
}

/**
 * Makes `name` the active tfjs backend and waits until it is ready.
 *
 * @throws {Error} when the backend is not registered or its initialisation fails; the
 *   message names the backend and tfjs's reason.
 */
export async function activateBackend(name: string): Promise<void> {
  await loadTfjsExtras();
  if (tf.findBackendFactory(name) === null && tf.findBackend(name) === null) {
    throw new Error(`tfjs backend "${name}" is not registered`);
  }
  let ok: boolean;
  try {
    ok = await tf.setBackend(name);
  } catch (err) {
    throw new Error(`tfjs could not initialise the "${name}" backend: ${errorMessage(err)}`, {
      cause: err,
    });
  }
  if (!ok) throw new Error(`tfjs could not initialise the "${name}" backend (see warnings above)`);
  await tf.ready();
  quietCpuHint(tf.backend());
}

/**
 * Turns off the "looks like you are running TensorFlow.js in Node.js" hint that
 * tfjs-backend-cpu prints on first use: under Deno it only points at tfjs-node.
 */
export function quietCpuHint(backend: unknown): void {
  if (backend !== null && typeof backend === "object" && "firstUse" in backend) {
    (backend as { firstUse: boolean }).firstUse = false;
  }
}

/** The message of an unknown thrown value. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (err !== null && typeof err === "object" && "message" in err) {
    return String((err as { message: unknown }).message);
  }
  return String(err);
}

let npmCacheDir: string | undefined;

/**
 * Tells {@link findPackageDirs} where Deno's npm cache is (`deno info --json`'s `npmCache`),
 * so that it needs no environment variables: the experiment worker, which may read none,
 * gets the folder from its launcher.
 */
export function setNpmCacheDir(dir: string): void {
  npmCacheDir = dir;
}

/** Deno's cache folder: `$DENO_DIR`, else the platform default. */
export function denoDir(): string | undefined {
  const env = (key: string) => {
    try {
      return Deno.env.get(key);
    } catch {
      return undefined; // no --allow-env
    }
  };
  const explicit = env("DENO_DIR");
  if (explicit) return explicit;
  const home = env("HOME") ?? env("USERPROFILE");
  switch (Deno.build.os) {
    case "darwin":
      return home ? `${home}/Library/Caches/deno` : undefined;
    case "windows": {
      const local = env("LOCALAPPDATA");
      return local ? `${local}\\deno` : undefined;
    }
    default: {
      const xdg = env("XDG_CACHE_HOME");
      if (xdg) return `${xdg}/deno`;
      return home ? `${home}/.cache/deno` : undefined;
    }
  }
}

function isDir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

function ancestors(start: string): string[] {
  const out: string[] = [];
  let dir = start.replace(/[\\/]+$/, "");
  while (dir !== "") {
    out.push(dir);
    const parent = dir.replace(/[\\/][^\\/]*$/, "");
    if (parent === dir) break;
    dir = parent;
  }
  return out;
}

/**
 * Folders on disk that hold npm package `name` (e.g. `@tensorflow/tfjs-node`), optionally at
 * `version`: `node_modules/<name>` and Deno's `node_modules/.deno/...` layout in the current
 * folder, this project's folder and their ancestors, then Deno's global npm cache.
 * Only looks at the filesystem: it never resolves through the network.
 */
export function findPackageDirs(name: string, version?: string): string[] {
  const found = new Set<string>();
  const starts: string[] = [];
  try {
    starts.push(Deno.cwd());
  } catch { /* no --allow-read for cwd */ }
  const here = new URL(".", import.meta.url);
  if (here.protocol === "file:") starts.push(decodeURIComponent(here.pathname));
  const flat = name.replace("/", "+");
  for (const start of starts) {
    for (const dir of ancestors(start)) {
      const direct = `${dir}/node_modules/${name}`;
      if (isDir(direct)) found.add(direct);
      const denoLayout = `${dir}/node_modules/.deno`;
      if (!isDir(denoLayout)) continue;
      try {
        for (const entry of Deno.readDirSync(denoLayout)) {
          const prefix = version ? `${flat}@${version}` : `${flat}@`;
          if (entry.isDirectory && entry.name.startsWith(prefix)) {
            const inner = `${denoLayout}/${entry.name}/node_modules/${name}`;
            if (isDir(inner)) found.add(inner);
          }
        }
      } catch { /* unreadable */ }
    }
  }
  const cacheRoot = denoDir();
  const npmCache = npmCacheDir ?? (cacheRoot ? `${cacheRoot}/npm` : undefined);
  if (npmCache) {
    const pkgRoot = `${npmCache}/registry.npmjs.org/${name}`;
    try {
      for (const entry of Deno.readDirSync(pkgRoot)) {
        if (entry.isDirectory && (!version || entry.name === version)) {
          found.add(`${pkgRoot}/${entry.name}`);
        }
      }
    } catch { /* not cached */ }
  }
  return [...found];
}
