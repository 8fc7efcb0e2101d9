/**
 * The place of plugins/_nn/ in the import graph (cli -> plugins -> plugins/_nn -> core):
 * its files import tfjs, each other and a few core modules only, never a plugin; and
 * outside plugins/ only tests and benchmarks import it.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";
import { ROOT_DIR } from "../_cli.ts";

/** The core modules plugins/_nn/ may stand on. */
const ALLOWED_CORE = ["core/random.ts", "core/profile.ts", "core/errors.ts"];

/** Every `.ts` file under `dir` (relative to the repository root, `/`-separated). */
function tsFilesUnder(dir: string): string[] {
  const files: string[] = [];
  for (const entry of Deno.readDirSync(join(ROOT_DIR, dir))) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) files.push(...tsFilesUnder(path));
    else if (entry.name.endsWith(".ts")) files.push(path);
  }
  return files;
}

/**
 * The specifiers of a file's static imports and re-exports: statements that start a line
 * (`import ... from "x"`, `import "x"`, `export ... from "x"`), however many lines they span.
 */
function staticImports(text: string): string[] {
  const statement =
    /^(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["']|^import\s*["']([^"']+)["']/gm;
  return [...text.matchAll(statement)].map((m) => m[1] ?? m[2]);
}

/** Each relative import of `file` as a repository path; packages as written. */
function importsOf(file: string): string[] {
  const text = Deno.readTextFileSync(join(ROOT_DIR, file));
  return staticImports(text).map((spec) =>
    spec.startsWith(".")
      ? relative(ROOT_DIR, resolve(ROOT_DIR, dirname(file), spec)).replaceAll("\\", "/")
      : spec
  );
}

Deno.test("the import reader sees multi-line, type-only and re-export statements only", () => {
  const text = [
    'import * as tf from "@tensorflow/tfjs-core";',
    "import {",
    "  a,",
    '} from "./a.ts";',
    'import type { B } from "../b.ts";',
    'export { c } from "./c.ts";',
    ' * import { d } from "./in_a_comment.ts";',
    'const e = await import("./dynamic.ts");',
  ].join("\n");
  assert.deepEqual(staticImports(text), ["@tensorflow/tfjs-core", "./a.ts", "../b.ts", "./c.ts"]);
});

Deno.test("plugins/_nn imports tfjs, itself and core's random, profile and errors only", () => {
  const files = tsFilesUnder("plugins/_nn");
  assert.ok(files.includes("plugins/_nn/gemm.ts"), "plugins/_nn/gemm.ts was not found");
  const bad: string[] = [];
  for (const file of files) {
    for (const target of importsOf(file)) {
      const ok = target.startsWith("@tensorflow/") || target.startsWith("plugins/_nn/") ||
        ALLOWED_CORE.includes(target);
      if (!ok) bad.push(`${file} -> ${target}`);
    }
  }
  assert.deepEqual(bad, [], `imports out of plugins/_nn's layer:\n  ${bad.join("\n  ")}`);
});

Deno.test("outside plugins/, only tests and benchmarks import plugins/_nn", () => {
  const files = ["mod.ts", ...tsFilesUnder("core"), ...tsFilesUnder("cli")];
  const bad: string[] = [];
  for (const file of files) {
    for (const target of importsOf(file)) {
      if (target.startsWith("plugins/_nn/")) bad.push(`${file} -> ${target}`);
    }
  }
  assert.deepEqual(bad, [], `plugins/_nn imported from outside plugins/:\n  ${bad.join("\n  ")}`);
});
