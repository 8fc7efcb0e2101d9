/**
 * `local`: computes a Grow step's shards in the experiment's own process, one after another
 * (the default executor; no server). The shards, their seeds and the merged Grow set are
 * those of every other executor.
 *
 * @module
 */

import { definePlugin } from "../../core/plugin.ts";
import { inProcessExecutor } from "../../core/shards.ts";

export default definePlugin({
  kind: "executor",
  name: "local",
  summary: "Computes Grow shards in the experiment's own process, one after another.",
  configSchema: { type: "object", additionalProperties: false, properties: {} },
  create: () => inProcessExecutor,
});
