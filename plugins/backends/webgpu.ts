/**
 * The `webgpu` backend plugin: `@tensorflow/tfjs-backend-webgpu` on Deno's built-in WebGPU
 * (`navigator.gpu`, over Vulkan on Linux, Metal on macOS, D3D12 on Windows). Deno exposes
 * WebGPU only with `--unstable-webgpu`; `deno task exp` adds that flag for runs that choose
 * this backend (or `auto`).
 *
 * The package's own backend factory does not work under Deno 2 (it reads `adapter.info` after
 * `requestDevice`, which Deno rejects, and asks for `requiredFeatures` as a nested array), so
 * this plugin builds the adapter and device itself and registers the package's
 * `WebGPUBackend` on them under the name `webgpu`; the package is not patched.
 *
 * Under Deno a GPU tensor cannot be read synchronously (tfjs's `dataSync` on WebGPU needs
 * `OffscreenCanvas`): the transformer therefore runs its teacher-forced passes as tfjs ops
 * on this backend and decodes on the host from weights it reads asynchronously
 * (see `../_nn/device.ts`).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { definePlugin } from "../../core/plugin.ts";
import { UserError } from "../../core/errors.ts";
import type { Backend, BackendInfo } from "../../core/types.ts";
import { activateBackend, errorMessage } from "./_tfjs.ts";
import { LIBVULKAN_PATHS, NVIDIA_PATHS, VULKAN_ICD_DIRS } from "./_webgpu_env.ts";

/** The tfjs backend name this plugin registers. */
export const WEBGPU_BACKEND = "webgpu";

/** Config of the `webgpu` backend. */
export interface WebgpuConfig {
  /** Adapter power preference. */
  powerPreference: "high-performance" | "low-power";
  /** Accept a software (fallback or CPU-emulated) adapter such as Mesa's lavapipe. */
  allowSoftware: boolean;
}

/** What the adapter says about itself (a plain copy of `GPUAdapterInfo`). */
export interface AdapterDescription {
  /** Vendor (a name or a PCI id). */
  vendor: string;
  /** Architecture, often empty. */
  architecture: string;
  /** Device (a name or a PCI id). */
  device: string;
  /** Human-readable description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  description: string;
  /** The adapter is a fallback (software) adapter. */
  isFallbackAdapter: boolean;
}

/** Descriptions of known CPU implementations of Vulkan/Metal/D3D12. */
const SOFTWARE_ADAPTERS = /llvmpipe|lavapipe|swiftshader|softpipe|microsoft basic render|warp/i;

/** Whether `info` describes a software adapter (fallback, or a known CPU rasteriser). */
export function isSoftwareAdapter(info: AdapterDescription): boolean {
  return info.isFallbackAdapter ||
    SOFTWARE_ADAPTERS.test(`${info.description} ${info.device} ${info.vendor}`);
}

/** One line naming an adapter, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (software)`. */
export function describeAdapter(info: AdapterDescription): string {
  const name = info.description || [info.vendor, info.device].filter((s) => s).join(" ") ||
    "unnamed adapter";
  return `${name}${isSoftwareAdapter(info) ? " (software)" : ""}`;
}

function exists(path: string): boolean | undefined {
  try {
    Deno.statSync(path);
    return true;
  } catch (err) {
    return err instanceof Deno.errors.NotFound ? false : undefined; // undefined: not allowed
  }
}

function envVar(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/**
 * Why no adapter was found, as far as the filesystem tells (Linux): libvulkan missing, no
 * Vulkan ICD, `VK_ICD_FILENAMES` naming a missing file, `DENO_WEBGPU_BACKEND` restricting
 * Deno to some wgpu backends, or an NVIDIA container started without the `graphics` driver
 * capability. Returns hints, most likely first. Paths and variables this process may not
 * read are not guessed at.
 */
export function diagnoseNoAdapter(): string[] {
  const hints: string[] = [];
  if (Deno.build.os !== "linux") {
    return ["check that the GPU driver is installed and that the GPU supports WebGPU"];
  }
  if (LIBVULKAN_PATHS.every((p) => exists(p) === false)) {
    hints.push("the Vulkan loader is missing (Debian/Ubuntu: apt-get install libvulkan1)");
  }
  const icdEnv = envVar("VK_ICD_FILENAMES") ?? envVar("VK_DRIVER_FILES");
  if (icdEnv) {
    const missing = icdEnv.split(":").filter((p) => p !== "" && exists(p) === false);
    if (missing.length > 0) {
      hints.push(`VK_ICD_FILENAMES/VK_DRIVER_FILES names a missing file: ${missing.join(", ")}`);
    } else {
      hints.push(`VK_ICD_FILENAMES/VK_DRIVER_FILES restricts Vulkan to ${icdEnv}`);
    }
  }
  const backends = envVar("DENO_WEBGPU_BACKEND");
  if (backends) {
    hints.push(`DENO_WEBGPU_BACKEND=${backends} restricts Deno's WebGPU to those wgpu backends`);
  }
  let unreadable = false;
  const icds = VULKAN_ICD_DIRS.flatMap((dir) => {
    try {
      return [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".json")).map((e) => e.name);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) unreadable = true;
      return [];
    }
  });
  const nvidia = NVIDIA_PATHS.some((p) => exists(p) === true);
  if (nvidia && !icds.some((n) => n.startsWith("nvidia"))) {
    const caps = envVar("NVIDIA_DRIVER_CAPABILITIES");
    hints.push(
      "an NVIDIA GPU is present but its Vulkan driver (nvidia_icd.json) is not: in a " +
        "container, start it with NVIDIA_DRIVER_CAPABILITIES including graphics (e.g. " +
        `NVIDIA_DRIVER_CAPABILITIES=all; now ${caps === undefined ? "unset or unreadable" : caps})`,
    );
  }
  if (icds.length === 0 && !unreadable) {
    hints.push(
      "no Vulkan driver (ICD) is installed in " + VULKAN_ICD_DIRS.join(", ") +
        " (a GPU vendor's driver, or Mesa's software one: apt-get install mesa-vulkan-drivers)",
    );
  }
  if (hints.length === 0) {
    hints.push(
      icds.length > 0
        ? `Vulkan drivers found (${icds.join(", ")}), but none offered a usable adapter`
        : "the GPU driver's files could not be inspected from this process",
    );
  }
  return hints;
}

function copyInfo(adapter: GPUAdapter): AdapterDescription {
  const info = adapter.info;
  return {
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    device: info.device ?? "",
    description: info.description ?? "",
    isFallbackAdapter: Boolean(
      (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
        (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter,
    ),
  };
}

/**
 * The WebGPU adapter and its description, or why there is none: `navigator.gpu` is missing
 * (Deno without `--unstable-webgpu`) or no adapter was offered (see {@link diagnoseNoAdapter}).
 */
export async function requestAdapter(
  powerPreference: GPUPowerPreference = "high-performance",
): Promise<{ adapter: GPUAdapter; info: AdapterDescription } | { missing: string }> {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (gpu === undefined) {
    return {
      missing: "this Deno process has no WebGPU (navigator.gpu): run Deno with " +
        "--unstable-webgpu (`deno task exp` and `deno task bench` add it for this backend)",
    };
  }
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference });
  } catch (err) {
    return { missing: `requesting a WebGPU adapter failed: ${errorMessage(err)}` };
  }
  if (adapter === null) {
    return { missing: `no WebGPU adapter: ${diagnoseNoAdapter().join("; ")}` };
  }
  return { adapter, info: copyInfo(adapter) };
}

/** The limits tfjs-backend-webgpu asks for: the adapter's own, so big tensors fit. */
const LIMITS = [
  "maxComputeWorkgroupStorageSize",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupSizeX",
  "maxComputeInvocationsPerWorkgroup",
  "maxStorageBuffersPerShaderStage",
] as const;

let registered: AdapterDescription | undefined;

/**
 * Registers tfjs backend `webgpu` on a device built here from `adapter` (idempotent: a later
 * call keeps the first device). Imports the package only now, and replaces the factory its
 * import registers (which fails under Deno) with one that returns the prepared backend.
 */
async function registerWebgpu(adapter: GPUAdapter, info: AdapterDescription): Promise<void> {
  if (registered !== undefined) return;
  const requiredLimits: Record<string, number> = {};
  for (const key of LIMITS) requiredLimits[key] = adapter.limits[key];
  const device = await adapter.requestDevice({ requiredFeatures: [], requiredLimits });
  // WebGPU reports an invalid shader or buffer only here; the affected results are garbage.
  device.addEventListener("uncapturederror", (event) => {
    const error = (event as GPUUncapturedErrorEvent).error;
    console.error(`webgpu backend: the GPU rejected work, results may be wrong: ${error.message}`);
  });
  const { WebGPUBackend } = await import("@tensorflow/tfjs-backend-webgpu");
  // The package's tfjs-core must be ours: otherwise its kernels land in another registry.
  if (tf.getKernel(tf.BatchMatMul, WEBGPU_BACKEND) === undefined) {
    throw new Error("tfjs-backend-webgpu registered its kernels with another copy of tfjs-core");
  }
  if (tf.findBackendFactory(WEBGPU_BACKEND) !== null) tf.removeBackend(WEBGPU_BACKEND);
  // deno-lint-ignore no-explicit-any
  const backend = new WebGPUBackend(device, adapter.info as any);
  // Priority 0: never chosen by tfjs on its own, only by name.
  tf.registerBackend(WEBGPU_BACKEND, () => backend, 0);
  registered = info;
}

/** The `webgpu` backend plugin. */
export default definePlugin({
  kind: "backend",
  name: "webgpu",
  summary: "tfjs WebGPU backend on Deno's navigator.gpu (Vulkan/Metal/D3D12): GPU training " +
    "without CUDA; needs --unstable-webgpu (added by deno task exp).",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      powerPreference: {
        type: "string",
        enum: ["high-performance", "low-power"],
        default: "high-performance",
        description: "Which adapter to ask for when there are several (discrete or integrated).",
      },
      allowSoftware: {
        type: "boolean",
        default: true,
        description: "Accept a software adapter (Mesa's lavapipe, SwiftShader): correct but " +
          "slower than the cpu backends; false makes such a machine an error.",
      },
    },
  },
  create(config: WebgpuConfig): Backend {
    return {
      async init(): Promise<BackendInfo> {
        if (registered === undefined) {
          const found = await requestAdapter(config.powerPreference);
          if ("missing" in found) throw new UserError(`webgpu backend: ${found.missing}`);
          await registerWebgpu(found.adapter, found.info);
        }
        const info = registered!;
        if (!config.allowSoftware && isSoftwareAdapter(info)) {
          throw new UserError(
            `webgpu backend: the only adapter is a software one (${describeAdapter(info)}) and ` +
              "allowSoftware is false",
          );
        }
        await activateBackend(WEBGPU_BACKEND);
        return {
          name: "webgpu",
          tfBackend: WEBGPU_BACKEND,
          threads: 1,
          detail: `@tensorflow/tfjs-backend-webgpu ${tf.version_core} on ` +
            describeAdapter(info),
        };
      },
    };
  },
});
