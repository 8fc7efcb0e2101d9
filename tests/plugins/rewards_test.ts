import assert from "node:assert/strict";
import Ajv from "ajv";
import type { PluginDeps } from "../../core/plugin.ts";
import type { RewardInput } from "../../core/types.ts";
import { loadVectors, type Vector } from "../_vectors.ts";
import chrfPlugin from "../../plugins/rewards/chrf.ts";
import bleuPlugin from "../../plugins/rewards/bleu.ts";

async function loadRows(): Promise<{ rows: RewardInput[]; vectors: Vector[] }> {
  const vectors = await loadVectors();
  const rows = vectors.map((v) => ({
    source: "",
    hypothesis: v.hypothesis,
    reference: v.reference,
  }));
  return { rows, vectors };
}

const deps: PluginDeps = {
  seed: 1,
  baseDir: ".",
  smoke: false,
  create() {
    return Promise.reject(new Error("not used"));
  },
  log() {},
};

/** Validates `config` against a plugin's schema with defaults filled in, as the manifest does. */
function resolveConfig(schema: Record<string, unknown>, config: Record<string, unknown>) {
  const ajv = new Ajv.default({ useDefaults: true, allErrors: true, strict: true });
  const validate = ajv.compile(schema);
  const copy = structuredClone(config);
  return { ok: validate(copy), config: copy, errors: validate.errors };
}

Deno.test("reward plugins: names, kinds and strict draft-07 schemas with defaults", () => {
  assert.equal(chrfPlugin.name, "chrf");
  assert.equal(bleuPlugin.name, "bleu");
  assert.equal(chrfPlugin.kind, "reward");
  assert.equal(bleuPlugin.kind, "reward");
  const chrf = resolveConfig(chrfPlugin.configSchema, {});
  assert.ok(chrf.ok, JSON.stringify(chrf.errors));
  assert.deepEqual(chrf.config, {
    charOrder: 6,
    wordOrder: 0,
    beta: 2,
    lowercase: false,
    whitespace: false,
  });
  const bleu = resolveConfig(bleuPlugin.configSchema, {});
  assert.ok(bleu.ok, JSON.stringify(bleu.errors));
  assert.deepEqual(bleu.config, {
    lowercase: false,
    tokenize: "13a",
    smoothMethod: "exp",
    effectiveOrder: true,
  });
  for (const bad of [{ charOrder: 0 }, { wordOrder: 1.5 }, { beta: -1 }, { extra: true }]) {
    assert.equal(resolveConfig(chrfPlugin.configSchema, bad).ok, false, JSON.stringify(bad));
  }
  for (const bad of [{ tokenize: "intl" }, { smoothMethod: "add-one" }, { lowercase: "yes" }]) {
    assert.equal(resolveConfig(bleuPlugin.configSchema, bad).ok, false, JSON.stringify(bad));
  }
});

Deno.test("chrf reward: sacreBLEU chrF / 100, chrF++ with wordOrder 2, all in [0, 1]", async () => {
  const { rows, vectors } = await loadRows();
  const chrf = await chrfPlugin.create(resolveConfig(chrfPlugin.configSchema, {}).config, deps);
  assert.equal(chrf.needsReference, true);
  const scores = await chrf.score(rows);
  assert.equal(scores.length, rows.length);
  const chrfPP = await chrfPlugin.create({ wordOrder: 2 }, deps);
  const scoresPP = await chrfPP.score(rows);
  for (const [i, v] of vectors.entries()) {
    for (const s of [scores[i], scoresPP[i]]) assert.ok(s >= 0 && s <= 1, `row ${i}: ${s}`);
    assert.ok(Math.abs(scores[i] - v.chrf / 100) < 1e-6, `row ${i} chrF`);
    assert.ok(Math.abs(scoresPP[i] - v.chrf_pp / 100) < 1e-6, `row ${i} chrF++`);
  }
  assert.deepEqual(await chrf.score([]), []);
});

Deno.test("bleu reward: sacreBLEU sentence BLEU / 100, all in [0, 1]", async () => {
  const { rows, vectors } = await loadRows();
  const bleu = await bleuPlugin.create(resolveConfig(bleuPlugin.configSchema, {}).config, deps);
  assert.equal(bleu.needsReference, true);
  const scores = await bleu.score(rows);
  assert.equal(scores.length, rows.length);
  for (const [i, v] of vectors.entries()) {
    assert.ok(scores[i] >= 0 && scores[i] <= 1, `row ${i}: ${scores[i]}`);
    assert.ok(Math.abs(scores[i] - v.bleu / 100) < 1e-6, `row ${i} BLEU`);
  }
  // Identical sentences reach exactly 1, not 1.0000000000000004.
  assert.deepEqual(
    await bleu.score([{ source: "", hypothesis: "a b c d e", reference: "a b c d e" }]),
    [1],
  );
});

Deno.test("reward plugins: a row without reference is a TypeError naming the row", async () => {
  const rows: RewardInput[] = [
    { source: "s0", hypothesis: "Hallo", reference: "Hallo" },
    { source: "s1", hypothesis: "Welt" },
  ];
  for (const plugin of [chrfPlugin, bleuPlugin]) {
    const reward = await plugin.create({}, deps);
    await assert.rejects(
      () => reward.score(rows),
      (error: unknown) => error instanceof TypeError && /row 1\b/.test(error.message),
    );
  }
});

Deno.test("reward plugins: empty hypothesis or reference scores 0", async () => {
  const rows: RewardInput[] = [
    { source: "", hypothesis: "", reference: "Datei" },
    { source: "", hypothesis: "Datei", reference: "" },
    { source: "", hypothesis: "", reference: "" },
  ];
  for (const plugin of [chrfPlugin, bleuPlugin]) {
    const reward = await plugin.create({}, deps);
    assert.deepEqual(await reward.score(rows), [0, 0, 0]);
  }
});
