/**
 * The one loader of user plugin modules (core/manifest/resolver.ts), reached from a resolved
 * reference (`pluginFor`, as a run creates its plugins) rather than from a manifest: the
 * module gets the checks it gets while a manifest is resolved.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../../core/errors.ts";
import { loadPluginModule, pluginFor } from "../../core/manifest/resolver.ts";
import type { PluginDefinition } from "../../core/plugin.ts";
import { PluginError } from "../../core/plugin_guard.ts";
import { createRegistries } from "../../core/registry.ts";
import type { RewardModel } from "../../core/types.ts";
import { fakePlugins } from "./_fakes.ts";
import { standaloneDeps } from "../_experiment.ts";

const PLUGIN_MODULE = new URL("../../core/plugin.ts", import.meta.url).href;

const DEPS = standaloneDeps(".");

/** A reward module whose score is `value` for every row. */
function rewardModule(value: number): string {
  return `import { definePlugin } from "${PLUGIN_MODULE}";
export default definePlugin({
  kind: "reward", name: "my_reward", summary: "A user reward.",
  configSchema: { type: "object", properties: {} },
  create: () => ({ needsReference: false, score: (rows) => Promise.resolve(rows.map(() => ${value})) }),
});`;
}

Deno.test("pluginFor loads a module reference through the checked loader", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = join(dir, "good.ts");
    const bad = join(dir, "bad.ts");
    const badName = join(dir, "bad_name.ts");
    await Deno.writeTextFile(good, rewardModule(0.5));
    await Deno.writeTextFile(bad, rewardModule(2));
    await Deno.writeTextFile(
      badName,
      `export default { kind: "reward", name: "Bad-Name", summary: "x", ` +
        `configSchema: { type: "object" }, create() {} };`,
    );

    const registries = createRegistries(fakePlugins);
    const ref = { kind: "reward" as const, name: "my_reward", module: good, config: {} };
    const plugin = await pluginFor(registries, ref) as PluginDefinition<"reward">;
    assert.equal(plugin.name, "my_reward");
    assert.equal(registries.reward.origin("my_reward"), good);
    assert.equal(await pluginFor(registries, ref), plugin, "loaded once per registries");
    const model = await plugin.create({}, DEPS) as RewardModel;
    assert.deepEqual(await model.score([{ source: "s", hypothesis: "h" }]), [0.5]);

    // A reward's scores are checked: 2 is outside [0, 1].
    const other = createRegistries(fakePlugins);
    const checked = await pluginFor(other, { ...ref, module: bad }) as PluginDefinition<"reward">;
    const outOfRange = await checked.create({}, DEPS) as RewardModel;
    await assert.rejects(
      () => outOfRange.score([{ source: "s", hypothesis: "h" }]),
      (error: unknown) => error instanceof PluginError && /my_reward/.test(error.message),
    );

    // definePlugin's checks and the kind apply too.
    await assert.rejects(
      () => pluginFor(createRegistries(fakePlugins), { ...ref, name: "Bad-Name", module: badName }),
      (error: unknown) =>
        error instanceof UserError && /name must be snake_case/.test(error.message),
    );
    await assert.rejects(
      () => pluginFor(createRegistries(fakePlugins), { ...ref, kind: "loss" }),
      (error: unknown) =>
        error instanceof UserError &&
        error.message.includes(`${good} defines a reward plugin ("my_reward"), but a loss plugin`),
    );
    // A missing module is named, as while resolving a manifest.
    const missing = await loadPluginModule(createRegistries(fakePlugins), join(dir, "nope.ts"));
    assert.deepEqual(missing, { problem: `${join(dir, "nope.ts")}: plugin module not found` });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
