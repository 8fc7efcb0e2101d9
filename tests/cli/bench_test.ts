/**
 * `deno task bench`'s option errors: a bad `--shape` or `--seconds`, and a backend that does not
 * start (`--backend webgpu` with every adapter hidden) are exit-2 errors before anything is
 * timed, never a silent measurement of another backend.
 */

import assert from "node:assert/strict";
import { hasStackTrace, runTask } from "../_cli.ts";

Deno.test("bench: a bad --shape or --seconds is a clear exit-2 error", async () => {
  const shape = await runTask("bench", ["--shape", "huge", "--json"]);
  assert.equal(shape.code, 2, shape.stderr);
  assert.match(shape.stderr, /--shape must be one of small, large, got "huge"/);
  const seconds = await runTask("bench", ["--seconds", "0", "--json"]);
  assert.equal(seconds.code, 2, seconds.stderr);
  assert.match(seconds.stderr, /--seconds must be a number in \(0, 3600\], got "0"/);
  assert.ok(!hasStackTrace(shape.stderr + seconds.stderr));
});

Deno.test("bench --backend webgpu without an adapter: exit 2, not a cpu measurement", async () => {
  const r = await runTask("bench", ["--backend", "webgpu", "--model-only", "--json"], {
    env: { DENO_WEBGPU_BACKEND: "vulkan", VK_ICD_FILENAMES: "/nonexistent/gpu_icd.json" },
  });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--backend webgpu: webgpu backend: no WebGPU adapter/);
  assert.equal(r.stdout.trim(), "", "nothing measured");
  assert.ok(!hasStackTrace(r.stderr), r.stderr);
});
