import assert from "node:assert/strict";
import { createPlugin } from "../../core/experiment.ts";
import { resolvePluginRef } from "../../core/manifest/mod.ts";
import { createRegistries } from "../../core/registry.ts";
import { sentenceBleu } from "../../core/metrics/bleu.ts";
import { sentenceChrf } from "../../core/metrics/chrf.ts";
import { builtinPlugins } from "../../plugins/mod.ts";

const deps = { seed: 1, baseDir: Deno.cwd(), smoke: false, log: () => {} };

Deno.test("weighted reward is the weighted mean of its components", async () => {
  const registries = createRegistries(builtinPlugins);
  const ref = await resolvePluginRef(registries, "reward", {
    name: "weighted",
    config: {
      components: [
        { reward: "chrf", weight: 1 },
        { reward: { name: "bleu", config: { smoothMethod: "floor" } }, weight: 3 },
      ],
    },
  }, "test");
  const reward = await createPlugin(registries, "reward", ref, deps);
  assert.equal(reward.needsReference, true);
  const rows = [
    {
      source: "a",
      hypothesis: "Die Datei wurde gespeichert.",
      reference: "Die Datei ist gespeichert.",
    },
    { source: "b", hypothesis: "", reference: "Zeile" },
  ];
  const scores = await reward.score(rows);
  for (let i = 0; i < rows.length; i++) {
    const chrf = sentenceChrf(rows[i].hypothesis, rows[i].reference) / 100;
    const bleu = sentenceBleu(rows[i].hypothesis, rows[i].reference, { smoothMethod: "floor" }) /
      100;
    assert.ok(Math.abs(scores[i] - (chrf + 3 * bleu) / 4) < 1e-12, `row ${i}`);
  }
});

Deno.test("weighted reward validates its components like a manifest", async () => {
  const registries = createRegistries(builtinPlugins);
  await assert.rejects(
    () =>
      resolvePluginRef(registries, "reward", {
        name: "weighted",
        config: { components: [{ reward: "chfr" }, { reward: "bleu", weight: 0 }] },
      }, "test"),
    (error: Error) => {
      assert.match(
        error.message,
        /\/config\/components\/0\/reward: unknown reward plugin "chfr"; did you mean "chrf"/,
      );
      assert.match(error.message, /\/config\/components\/1\/weight: must be > 0/);
      return true;
    },
  );
});
