/**
 * The `tensorflow` backend plugin: native TensorFlow through
 * `@tensorflow/tfjs-node-gpu` (CUDA) or `@tensorflow/tfjs-node` (CPU).
 *
 * Neither package is a dependency of the framework: their install script
 * downloads libtensorflow from storage.googleapis.com and builds a native
 * addon, which needs internet access (and CUDA 11.2 + cuDNN 8.1 for -gpu).
 * So this plugin looks for an installed copy on disk first and imports it only
 * when `init` runs and the native addon is present; it never makes Deno fetch
 * the package (a fetched copy would lack the addon anyway: Deno does not run
 * install scripts unless told to). Nothing else in the framework imports them.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { definePlugin } from "../../core/plugin.ts";
import { UserError } from "../../core/errors.ts";
import type { Backend, BackendInfo } from "../../core/types.ts";
import { activateBackend, errorMessage, findPackageDirs, loadTfjsExtras } from "./_tfjs.ts";

/** The tfjs backend name tfjs-node registers. */
export const TENSORFLOW_BACKEND = "tensorflow";

/** The tfjs-node version that shares our tfjs-core. */
export const TFJS_NODE_VERSION = "4.22.0";

/** Which package(s) to try. */
export type TensorflowPackage = "auto" | "tfjs-node-gpu" | "tfjs-node";

/** Config of the `tensorflow` backend. */
export interface TensorflowConfig {
  /** Package to load; "auto" tries -gpu, then the CPU one. */
  package: TensorflowPackage;
}

/** How to install the packages; part of the error when none loads. */
export const TENSORFLOW_INSTALL_HINT: string =
  `install one on a machine with internet access: add "nodeModulesDir": "auto" to deno.json, ` +
  `then \`deno install --allow-scripts=npm:@tensorflow/tfjs-node ` +
  `npm:@tensorflow/tfjs-node@${TFJS_NODE_VERSION}\` ` +
  `(or the -gpu package, which needs CUDA 11.2 and cuDNN 8.1); the install script downloads ` +
  `libtensorflow from storage.googleapis.com. Run with --allow-ffi (native addon). ` +
  `Otherwise use the blas, wasm or cpu backend (or auto)`;

/** Result of looking for one tfjs-node package on disk. */
export interface TensorflowProbe {
  /** The npm package name. */
  pkg: string;
  /** A package folder with the native addon, when found. */
  dir?: string;
  /** Why it cannot be used, when `dir` is absent. */
  reason?: string;
}

function readVersion(dir: string): string | undefined {
  try {
    return JSON.parse(Deno.readTextFileSync(`${dir}/package.json`)).version;
  } catch {
    return undefined;
  }
}

function hasAddon(dir: string): boolean {
  try {
    for (const entry of Deno.readDirSync(`${dir}/lib`)) {
      if (!entry.isDirectory || !entry.name.startsWith("napi-v")) continue;
      try {
        if (Deno.statSync(`${dir}/lib/${entry.name}/tfjs_binding.node`).isFile) return true;
      } catch { /* not in this one */ }
    }
  } catch { /* no lib folder */ }
  return false;
}

/**
 * Looks for an installed `@tensorflow/<name>` with its native addon, on disk only
 * (node_modules folders and Deno's npm cache): fast and never touches the network.
 */
export function probeTensorflow(name: "tfjs-node-gpu" | "tfjs-node"): TensorflowProbe {
  const pkg = `@tensorflow/${name}`;
  const dirs = findPackageDirs(pkg);
  if (dirs.length === 0) return { pkg, reason: "not installed" };
  const problems: string[] = [];
  for (const dir of dirs) {
    const version = readVersion(dir);
    if (version !== TFJS_NODE_VERSION) {
      problems.push(`${dir} is version ${version ?? "?"}, need ${TFJS_NODE_VERSION}`);
    } else if (!hasAddon(dir)) {
      problems.push(
        `${dir} has no native addon (lib/napi-v*/tfjs_binding.node): its install script, ` +
          "which downloads libtensorflow, did not run or failed",
      );
    } else {
      return { pkg, dir };
    }
  }
  return { pkg, reason: problems.join("; ") };
}

async function importTensorflow(probe: TensorflowProbe): Promise<void> {
  // A computed specifier keeps `deno check` / the module graph from fetching the package.
  const specifier = ["npm:", probe.pkg, "@", TFJS_NODE_VERSION].join("");
  await import(specifier);
}

/** The `tensorflow` backend plugin. */
export default definePlugin({
  kind: "backend",
  name: "tensorflow",
  summary: "Native TensorFlow via @tensorflow/tfjs-node-gpu (CUDA) or @tensorflow/tfjs-node; " +
    "optional, must be installed separately.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      package: {
        type: "string",
        enum: ["auto", "tfjs-node-gpu", "tfjs-node"],
        default: "auto",
        description: '"auto" tries @tensorflow/tfjs-node-gpu, then @tensorflow/tfjs-node; ' +
          "or name one.",
      },
    },
  },
  create(config: TensorflowConfig): Backend {
    return {
      async init(): Promise<BackendInfo> {
        const names: ("tfjs-node-gpu" | "tfjs-node")[] = config.package === "auto"
          ? ["tfjs-node-gpu", "tfjs-node"]
          : [config.package];
        const reasons: string[] = [];
        for (const name of names) {
          const probe = probeTensorflow(name);
          if (!probe.dir) {
            reasons.push(`${probe.pkg}: ${probe.reason}`);
            continue;
          }
          try {
            await loadTfjsExtras();
            await importTensorflow(probe);
            await activateBackend(TENSORFLOW_BACKEND);
          } catch (err) {
            reasons.push(`${probe.pkg} (${probe.dir}): ${errorMessage(err).split("\n")[0]}`);
            continue;
          }
          return {
            name: "tensorflow",
            tfBackend: TENSORFLOW_BACKEND,
            threads: navigator.hardwareConcurrency || 1,
            detail:
              `${probe.pkg}@${TFJS_NODE_VERSION} from ${probe.dir} (tfjs-core ${tf.version_core})`,
          };
        }
        throw new UserError(
          `tensorflow backend unavailable: ${reasons.join("; ")}. ${TENSORFLOW_INSTALL_HINT}.`,
        );
      },
    };
  },
});
