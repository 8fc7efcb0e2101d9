/**
 * ReST (Reinforced Self-Training) research framework: public API.
 *
 * @module
 */

export * from "./core/errors.ts";
export * from "./core/plugin.ts";
export * from "./core/registry.ts";
export * from "./core/manifest.ts";
export * from "./core/types.ts";
export * from "./core/policy.ts";
export * from "./core/run.ts";
export * from "./core/progress.ts";
export * from "./core/random.ts";
export * from "./core/evaluate.ts";
export { makeBatch, nllLoss } from "./core/batch.ts";
export * from "./core/experiment.ts";
export { builtinPlugins } from "./plugins/mod.ts";
