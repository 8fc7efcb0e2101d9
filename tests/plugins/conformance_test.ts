/**
 * Every built-in plugin: its schema compiles in strict mode, its defaults validate,
 * `create` works with the defaults, its name is its file stem (or its folder's name for a
 * plugin folder `<name>/mod.ts`), and every plugin file is listed in plugins/mod.ts.
 */
import { REQUIRED_METHODS } from "../../core/plugin_guard.ts";
import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { createAjv } from "../../core/manifest/ajv.ts";
import type { PluginDefinition, PluginKind } from "../../core/plugin.ts";
import { createRegistries } from "../../core/registry.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import { ROOT_DIR } from "../_cli.ts";

const FOLDERS: Record<string, PluginKind> = {
  algorithms: "algorithm",
  backends: "backend",
  data: "data",
  losses: "loss",
  models: "model",
  rewards: "reward",
  thresholds: "threshold",
  tokenizers: "tokenizer",
};

Deno.test("builtin plugin names are unique per kind", () => {
  createRegistries(builtinPlugins);
});

Deno.test("every plugin file (or folder) is registered, under its stem and its folder's kind", async () => {
  const registered = new Set<PluginDefinition>(builtinPlugins);
  for (const [folder, kind] of Object.entries(FOLDERS)) {
    const dir = join(ROOT_DIR, "plugins", folder);
    const entries = await Array.fromAsync(Deno.readDir(dir)).catch((error) => {
      if (error instanceof Deno.errors.NotFound) return []; // a kind with no built-ins yet
      throw error;
    });
    for (const entry of entries) {
      if (entry.name.startsWith("_")) continue;
      // A plugin is a file `<name>.ts` or a folder `<name>/` whose `mod.ts` is the plugin.
      let file: string, stem: string;
      if (entry.isDirectory) [file, stem] = [`${entry.name}/mod.ts`, entry.name];
      else if (entry.isFile && entry.name.endsWith(".ts")) {
        [file, stem] = [entry.name, basename(entry.name, ".ts")];
      } else continue;
      const module = await import(`file://${join(dir, file)}`);
      const plugin = module.default as PluginDefinition;
      assert.ok(plugin, `${folder}/${file} has no default export`);
      assert.equal(plugin.name, stem, `${folder}/${file}`);
      assert.equal(plugin.kind, kind, `${folder}/${file}`);
      assert.ok(registered.has(plugin), `${folder}/${file} is not listed in plugins/mod.ts`);
    }
  }
});

for (const plugin of builtinPlugins) {
  Deno.test(`conformance: ${plugin.kind}/${plugin.name}`, async () => {
    const ajv = createAjv();
    const validate = ajv.compile(plugin.configSchema);
    const config: Record<string, unknown> = {};
    assert.ok(validate(config), `defaults of ${plugin.name}: ${ajv.errorsText(validate.errors)}`);
    const props = Object.keys(plugin.configSchema.properties ?? {});
    assert.deepEqual(Object.keys(config).sort(), props.sort(), "every option gets its default");
    assert.ok(validate(structuredClone(config)), "a filled-in config validates again");
    assert.equal(plugin.configSchema.additionalProperties, false, "unknown options are rejected");
    if (plugin.smoke) {
      assert.ok(validate(plugin.smoke(structuredClone(config))), "smoke config validates");
    }
    // Nested plugin references in defaults are resolved by the manifest; resolve them here.
    const { resolvePluginRef } = await import("../../core/manifest/mod.ts");
    const registries = createRegistries(builtinPlugins);
    const ref = await resolvePluginRef(registries, plugin.kind, { name: plugin.name }, plugin.name);
    const { createPlugin } = await import("../../core/experiment.ts");
    const instance = await createPlugin(registries, plugin.kind, ref, {
      seed: 1,
      baseDir: ROOT_DIR,
      smoke: false,
      log: () => {},
    });
    assert.equal(typeof instance, "object");
    // The methods the framework calls, the list user plugins are checked against too.
    for (const method of REQUIRED_METHODS[plugin.kind]) {
      assert.equal(
        typeof (instance as unknown as Record<string, unknown>)[method],
        "function",
        `${plugin.name}.${method}`,
      );
    }
  });
}
