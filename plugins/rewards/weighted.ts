/**
 * `weighted`: a weighted mean of other rewards, sum_i w_i r_i / sum_i w_i, so the
 * result stays in [0, 1]. Each component is any reward plugin with its own config; one that
 * needs preparing (a `learned` reward) is prepared in `component_<i>/` of this reward's folder
 * (and restored from there on a queue worker).
 *
 * @module
 */

import { definePlugin, pluginRef, type ResolvedPluginRef } from "../../core/plugin.ts";
import { checkScores } from "../../core/evaluate.ts";
import type {
  RewardInput,
  RewardModel,
  RewardPrepareContext,
  RewardRestoreContext,
} from "../../core/types.ts";
import { prepareWrapped, restoreWrapped } from "./_wrapped.ts";

/** Config of the `weighted` reward (after resolution: components hold resolved references). */
export interface WeightedConfig {
  /** The rewards to combine and their weights. */
  components: { reward: ResolvedPluginRef; weight: number }[];
}

export default definePlugin({
  kind: "reward",
  name: "weighted",
  summary: "Weighted mean of other rewards: sum_i w_i r_i / sum_i w_i.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      components: {
        type: "array",
        minItems: 1,
        default: [{ reward: "chrf", weight: 1 }],
        description: "Rewards to combine, each {reward: <reward plugin>, weight: w > 0}.",
        items: {
          type: "object",
          additionalProperties: false,
          required: ["reward"],
          properties: {
            reward: pluginRef("reward", "chrf", "A reward plugin: its name or {name, config}."),
            weight: {
              type: "number",
              exclusiveMinimum: 0,
              maximum: 1e6,
              default: 1,
              description: "Weight of this reward (> 0).",
            },
          },
        },
      },
    },
  },
  async create(config: WeightedConfig, deps): Promise<RewardModel> {
    const parts: { model: RewardModel; weight: number; name: string }[] = [];
    for (const component of config.components) {
      parts.push({
        model: await deps.create("reward", component.reward),
        weight: component.weight,
        name: component.reward.name,
      });
    }
    const total = parts.reduce((sum, p) => sum + p.weight, 0);
    const model: RewardModel = {
      needsReference: parts.some((p) => p.model.needsReference),
      async score(rows: readonly RewardInput[]): Promise<number[]> {
        const out = new Array<number>(rows.length).fill(0);
        for (const part of parts) {
          const scores = await part.model.score(rows);
          checkScores(scores, rows.length);
          for (let i = 0; i < rows.length; i++) out[i] += (part.weight / total) * scores[i];
        }
        // Guard against rounding just above 1.
        return out.map((s) => Math.min(1, Math.max(0, s)));
      },
    };
    if (parts.some((p) => p.model.prepare !== undefined)) {
      // Components that train or load something (e.g. `learned`) are prepared in
      // component_<i>/ of this reward's folder.
      model.prepare = async (ctx: RewardPrepareContext) => {
        for (let i = 0; i < parts.length; i++) {
          await prepareWrapped(parts[i].model, ctx, `component_${i}`, parts[i].name);
        }
      };
      model.restore = async (ctx: RewardRestoreContext) => {
        for (let i = 0; i < parts.length; i++) {
          await restoreWrapped(parts[i].model, ctx, `component_${i}`, parts[i].name);
        }
      };
    }
    return model;
  },
});
