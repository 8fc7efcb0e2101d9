/**
 * What the `webgpu` backend looks at to explain a missing adapter, without importing tfjs:
 * `deno task exp` grants its sandboxed worker read access to these paths and these
 * environment variables for runs that may use WebGPU, so the diagnosis sees what the
 * Vulkan loader sees.
 *
 * @module
 */

/** Where Linux distributions put the Vulkan loader. */
export const LIBVULKAN_PATHS: readonly string[] = [
  "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
  "/usr/lib/aarch64-linux-gnu/libvulkan.so.1",
  "/usr/lib64/libvulkan.so.1",
  "/usr/lib/libvulkan.so.1",
];

/** Folders the Vulkan loader searches for driver (ICD) manifests. */
export const VULKAN_ICD_DIRS: readonly string[] = [
  "/usr/share/vulkan/icd.d",
  "/etc/vulkan/icd.d",
  "/usr/local/share/vulkan/icd.d",
];

/** Paths whose presence tells that an NVIDIA driver is loaded. */
export const NVIDIA_PATHS: readonly string[] = ["/proc/driver/nvidia", "/dev/nvidia0"];

/**
 * Environment variables that decide which adapters Deno's WebGPU finds: the Vulkan loader's
 * driver list, NVIDIA's container capabilities, and Deno's own choice of wgpu backends
 * (`DENO_WEBGPU_BACKEND`, a comma list such as `vulkan` or `gl`).
 */
export const WEBGPU_ENV_VARS: readonly string[] = [
  "VK_ICD_FILENAMES",
  "VK_DRIVER_FILES",
  "NVIDIA_DRIVER_CAPABILITIES",
  "DENO_WEBGPU_BACKEND",
];

/** Every path {@link WEBGPU_ENV_VARS}' diagnosis may read. */
export const WEBGPU_DIAGNOSTIC_PATHS: readonly string[] = [
  ...LIBVULKAN_PATHS,
  ...VULKAN_ICD_DIRS,
  ...NVIDIA_PATHS,
];
