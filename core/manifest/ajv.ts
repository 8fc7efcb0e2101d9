/**
 * The one ajv configuration that manifests are validated with (the envelope and every
 * plugin's config schema: strict, all errors, defaults filled in) and how its errors read,
 * as problems with JSON pointers and the nearest valid key.
 *
 * @module
 */

import { Ajv, type ErrorObject } from "ajv";
import type { ManifestProblem } from "../errors.ts";
import { PLUGIN_REF_KEYWORD } from "../plugin.ts";
import { nearest } from "../registry.ts";
import { escapePointer, showValue } from "./json_text.ts";

/** Creates the ajv instance used for envelopes and plugin configs (strict, all errors, defaults). */
export function createAjv(): Ajv {
  const ajv = new Ajv({
    allErrors: true,
    strict: true,
    useDefaults: true,
    allowUnionTypes: true,
    verbose: true,
  });
  ajv.addKeyword({ keyword: PLUGIN_REF_KEYWORD, schemaType: "string" });
  return ajv;
}

/** Turns an ajv error into a readable problem under `prefix`. */
export function formatAjvError(error: ErrorObject, prefix: string, data: unknown): ManifestProblem {
  const path = prefix + error.instancePath;
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case "additionalProperties": {
      const key = String(params.additionalProperty);
      const allowed = Object.keys(
        (error.parentSchema?.properties ?? {}) as Record<string, unknown>,
      );
      const suggestion = nearest(key, allowed);
      const hint = suggestion === undefined ? "" : `; did you mean "${suggestion}"?`;
      return {
        path: `${path}/${escapePointer(key)}`,
        message: `unknown key${hint} (allowed: ${allowed.join(", ")})`,
      };
    }
    case "required":
      return {
        path: `${path}/${escapePointer(String(params.missingProperty))}`,
        message: "is required",
      };
    case "enum":
      return {
        path,
        message: `must be one of ${
          (params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(", ")
        } (got ${showValue(pointerGet(data, error.instancePath))})`,
      };
    default:
      return {
        path,
        message: `${error.message ?? "is invalid"} (got ${
          showValue(pointerGet(data, error.instancePath))
        })`,
      };
  }
}

/** The value at JSON pointer `pointer` in `data`, or undefined. */
function pointerGet(data: unknown, pointer: string): unknown {
  if (pointer === "") return data;
  let current: unknown = data;
  for (const raw of pointer.slice(1).split("/")) {
    const key = raw.replaceAll("~1", "/").replaceAll("~0", "~");
    if (current === null || typeof current !== "object") return undefined;
    current = (current as Record<string, unknown>)[key];
  }
  return current;
}
