/**
 * The shape of core/'s import graph: no cycles (type-only imports included), core/types.ts
 * standing on nothing else in core/, and no core file reaching up into plugins/ or cli/.
 *
 * The imports are read from the source text: every `import ... from "..."`,
 * `import "..."` and `export ... from "..."` statement that starts a line, over as many
 * lines as it spans. Dynamic `import()` calls are not edges.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const CORE = join(ROOT, "core");

/** A static import or re-export at the start of a line; group 1 or 2 is the specifier. */
const STATIC_IMPORT =
  /^(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["']|^import\s*["']([^"']+)["']/gm;

/** Every .ts file under `dir`, as paths relative to the repository root, sorted. */
function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) out.push(...tsFiles(path));
    else if (entry.isFile && entry.name.endsWith(".ts")) out.push(relative(ROOT, path));
  }
  return out.sort();
}

/** The specifiers a source text imports statically, in order. */
function importSpecifiers(text: string): string[] {
  return Array.from(text.matchAll(STATIC_IMPORT), (m) => m[1] ?? m[2]);
}

/** One static import of a core file. */
interface Import {
  /** The specifier as written. */
  specifier: string;
  /** Relative specifiers: the imported file, as a path relative to the repository root. */
  file?: string;
}

/** Each core file (a path relative to the repository root) and its static imports. */
function coreImports(): Map<string, Import[]> {
  const graph = new Map<string, Import[]>();
  for (const file of tsFiles(CORE)) {
    const text = Deno.readTextFileSync(join(ROOT, file));
    graph.set(
      file,
      importSpecifiers(text).map((specifier) =>
        specifier.startsWith(".")
          ? { specifier, file: relative(ROOT, resolve(ROOT, dirname(file), specifier)) }
          : { specifier }
      ),
    );
  }
  return graph;
}

/** The graph of files: each core file and the files it imports. */
function fileGraph(imports: Map<string, Import[]>): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const [file, list] of imports) {
    graph.set(file, list.flatMap((i) => i.file === undefined ? [] : [i.file]));
  }
  return graph;
}

/** One cycle per back edge of a depth-first walk, each written `a -> b -> a`. */
function cycles(graph: Map<string, string[]>): string[] {
  const found: string[] = [];
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (file: string): void => {
    state.set(file, "open");
    path.push(file);
    for (const next of graph.get(file) ?? []) {
      if (!graph.has(next)) continue;
      const seen = state.get(next);
      if (seen === "open") found.push([...path.slice(path.indexOf(next)), next].join(" -> "));
      else if (seen === undefined) visit(next);
    }
    path.pop();
    state.set(file, "done");
  };
  for (const file of graph.keys()) if (!state.has(file)) visit(file);
  return found;
}

Deno.test("the import parser reads multi-line, type-only and re-export statements", () => {
  const text = [
    'import * as tf from "@tensorflow/tfjs-core";',
    "import type {",
    "  A,",
    "  B,",
    '} from "./a.ts";',
    'export { c } from "./c.ts";',
    'export type { D } from "../d.ts";',
    'import "./side.ts";',
    ' * import { e } from "./in_a_doc_comment.ts";',
    'const f = await import("./dynamic.ts");',
    "export const g = \"text from 'elsewhere'\";",
  ].join("\n");
  assert.deepEqual(importSpecifiers(text), [
    "@tensorflow/tfjs-core",
    "./a.ts",
    "./c.ts",
    "../d.ts",
    "./side.ts",
  ]);
  assert.deepEqual(cycles(new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]]])), [
    "a -> b -> c -> a",
  ]);
  assert.deepEqual(cycles(new Map([["a", ["b", "c"]], ["b", ["c"]], ["c", []]])), []);
});

Deno.test("core/ has no import cycle, type-only imports included", () => {
  const graph = fileGraph(coreImports());
  assert.ok(graph.has(join("core", "types.ts")), "core/types.ts was not found");
  const found = cycles(graph);
  assert.deepEqual(found, [], `import cycles in core/:\n  ${found.join("\n  ")}`);
});

Deno.test("core/types.ts imports no other file, only packages", () => {
  const local = coreImports().get(join("core", "types.ts"))!.filter((i) => i.file !== undefined);
  assert.deepEqual(
    local.map((i) => i.specifier),
    [],
    "core/types.ts is the floor every other file stands on: it may import only packages",
  );
});

Deno.test("no core file imports from outside core/ (plugins/, cli/, ...)", () => {
  const outside: string[] = [];
  for (const [file, imports] of fileGraph(coreImports())) {
    for (const target of imports) {
      if (!target.startsWith(`core${sep}`)) outside.push(`${file} -> ${target}`);
    }
  }
  assert.deepEqual(
    outside,
    [],
    `core files importing from outside core/:\n  ${outside.join("\n  ")}`,
  );
});
