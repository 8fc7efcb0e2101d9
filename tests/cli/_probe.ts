/**
 * The smallest experiment that runs a user reward plugin, for the sandbox and permission
 * tests: a manifest scoring baselines with `./reward.ts`, and that plugin's source.
 *
 * @module
 */

/** A manifest whose only run scores baselines with the reward plugin in `reward.ts`. */
export function probeManifest(experiment: string, backend = "cpu"): string {
  return JSON.stringify({
    experiment,
    seed: 1,
    backend,
    data: { name: "synthetic", config: { pairs: 120 } },
    tokenizer: { name: "bpe", config: { vocabSize: 300 } },
    reward: { module: "./reward.ts" },
    runs: [{ name: "baselines", algorithm: "baselines" }],
  });
}

/** A reward plugin module whose `score` runs `body` first (`rows` in scope). */
export function rewardModule(body: string, topLevel = ""): string {
  return `import { definePlugin } from "@rest/framework";
${topLevel}
export default definePlugin({
  kind: "reward",
  name: "probe",
  summary: "Tries something the sandbox forbids.",
  configSchema: { type: "object", additionalProperties: false, properties: {} },
  create() {
    return {
      needsReference: true,
      async score(rows) {
        ${body}
        return rows.map(() => 0.5);
      },
    };
  },
});
`;
}
