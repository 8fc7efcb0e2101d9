/**
 * `deno task schema`: writes experiments/manifest.schema.json (the manifest schema with
 * every built-in plugin's options) for editor completion. Manifests point at it with
 * `"$schema": "./manifest.schema.json"`.
 *
 * @module
 */

import { editorSchema } from "../core/manifest/envelope.ts";
import { createRegistries } from "../core/registry.ts";
import { builtinPlugins } from "../plugins/mod.ts";
import { runMain } from "./_main.ts";

/** Where the schema is written, relative to the project root. */
export const SCHEMA_PATH = new URL("../experiments/manifest.schema.json", import.meta.url);

/** The schema file's text. */
export function schemaText(): string {
  return JSON.stringify(editorSchema(createRegistries(builtinPlugins)), null, 2) + "\n";
}

if (import.meta.main) {
  await runMain("schema", async () => {
    if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
      console.log("Usage: deno task schema\nWrites experiments/manifest.schema.json.");
      return 0;
    }
    await Deno.writeTextFile(SCHEMA_PATH, schemaText());
    console.log(`wrote ${SCHEMA_PATH.pathname}`);
    return 0;
  });
}
