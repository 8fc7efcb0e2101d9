import assert from "node:assert/strict";
import { definePlugin, type PluginDefinition } from "../../core/plugin.ts";
import { createRegistries, editDistance, nearest, Registry } from "../../core/registry.ts";
import { fakeLoss, fakePlugins } from "./_fakes.ts";

Deno.test("edit distance counts insertions, deletions, substitutions and swaps", () => {
  assert.equal(editDistance("", ""), 0);
  assert.equal(editDistance("chrf", "chrf"), 0);
  assert.equal(editDistance("chrf", "chfr"), 1);
  assert.equal(editDistance("bleu", "blue"), 1);
  assert.equal(editDistance("gold", "god"), 1);
  assert.equal(editDistance("abc", "xyz"), 3);
});

Deno.test("nearest suggests plausible typos only", () => {
  assert.equal(nearest("chfr", ["bleu", "chrf", "weighted"]), "chrf");
  assert.equal(nearest("CHRF", ["bleu", "chrf"]), "chrf");
  assert.equal(nearest("offline-ppo", ["offline_ppo", "bc"]), "offline_ppo");
  assert.equal(nearest("zzzzzz", ["bleu", "chrf"]), undefined);
  assert.equal(nearest("x", []), undefined);
});

Deno.test("registries reject duplicate names and plugins of another kind", () => {
  const registries = createRegistries(fakePlugins);
  assert.deepEqual(registries.loss.names(), ["fake_loss"]);
  assert.throws(
    () => createRegistries([...fakePlugins, fakeLoss] as PluginDefinition[]),
    /duplicate loss plugin name "fake_loss": from built-in, already registered from built-in/,
  );
  const registry = new Registry("reward");
  assert.throws(
    () => registry.register(fakeLoss as unknown as PluginDefinition<"reward">),
    /is a loss plugin, not a reward plugin/,
  );
});

Deno.test("unknown names list the valid names and suggest the nearest", () => {
  const registries = createRegistries(fakePlugins);
  assert.throws(
    () => registries.algorithm.get("trainr"),
    (error: unknown) => {
      assert.ok(error instanceof RangeError);
      assert.equal(
        error.message,
        'unknown algorithm plugin "trainr"; did you mean "trainer"? (valid: evaluate_only, trainer)',
      );
      return true;
    },
  );
  assert.equal(
    registries.threshold.unknownMessage("fixed"),
    'unknown threshold plugin "fixed" (valid: none registered)',
  );
});

Deno.test("definePlugin checks the definition's shape", () => {
  const base = {
    kind: "threshold" as const,
    name: "ok_name",
    summary: "s",
    configSchema: { type: "object", properties: {} },
    create: () => ({ threshold: () => 0 }),
  };
  assert.equal(definePlugin(base).name, "ok_name");
  assert.throws(() => definePlugin({ ...base, name: "BadName" }), /name must be snake_case/);
  assert.throws(
    () => definePlugin({ ...base, summary: " " }),
    /summary must be a non-empty string/,
  );
  assert.throws(
    () => definePlugin({ ...base, kind: "widget" as "threshold" }),
    /kind must be one of backend, data/,
  );
  assert.throws(
    () => definePlugin({ ...base, configSchema: { type: "array" } }),
    /configSchema must be a JSON Schema with type "object"/,
  );
  assert.throws(
    () =>
      definePlugin({
        ...base,
        configSchema: { type: "object", properties: { a: { type: "number" } } },
      }),
    /configSchema\/a has no description; configSchema\/a has no default/,
  );
  assert.throws(
    () =>
      definePlugin({
        ...base,
        configSchema: {
          type: "object",
          properties: {
            a: {
              type: "object",
              default: {},
              description: "nested",
              properties: { b: { type: "number", default: 1 } },
            },
          },
        },
      }),
    /configSchema\/a\/b has no description/,
  );
  assert.throws(
    () => definePlugin({ ...base, uses: { loss: "required" } }),
    /only algorithm plugins/,
  );
  assert.throws(
    () =>
      definePlugin({ ...base, create: undefined as unknown as () => { threshold: () => number } }),
    /create must be a function/,
  );
});
