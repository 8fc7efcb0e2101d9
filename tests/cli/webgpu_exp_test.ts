/**
 * `deno task exp` on the `webgpu` backend, end to end: a scaled-down quickstart (BC, then
 * ReST with a Grow and two Improve steps, evaluation, checkpoints) under `--smoke` on
 * whatever adapter Deno finds (in CI, Mesa's lavapipe), and the exit-2 error that names what
 * is missing when there is no adapter. The no-adapter case hides every adapter from Deno
 * with `DENO_WEBGPU_BACKEND=vulkan` (Deno's own choice of wgpu backends; without it wgpu
 * falls back to OpenGL and finds llvmpipe there) and `VK_ICD_FILENAMES` naming a missing
 * driver file, so it runs on any machine.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasStackTrace, ROOT_DIR, runTask } from "../_cli.ts";
import { requestAdapter } from "../../plugins/backends/webgpu.ts";

const found = await requestAdapter();
const noAdapter = "missing" in found;

/** The quickstart manifest with budgets small enough for a software adapter in seconds. */
async function tinyQuickstart(dir: string): Promise<string> {
  const manifest = JSON.parse(
    await Deno.readTextFile(join(ROOT_DIR, "experiments/quickstart.json")),
  );
  delete manifest.$schema;
  manifest.data.config.pairs = 200;
  manifest.tokenizer.config.vocabSize = 300;
  manifest.model.config = { dModel: 16, heads: 2, ffn: 32, encoderLayers: 1, decoderLayers: 1 };
  manifest.bc = { steps: 4, batchSize: 16, warmupSteps: 1, evalEvery: 2, evalSize: 4 };
  manifest.evaluation = {
    maxLen: 8,
    validSize: 4,
    testSize: 4,
    bestOfN: [1, 2],
    bestOfNSize: 4,
    selectSamples: 1,
  };
  const rest = manifest.runs[1].algorithm.config;
  rest.grow = { samplesPerSource: 2, sources: 6 };
  rest.improve = { ...rest.improve, epochs: 1, steps: 2, batchSize: 8 };
  rest.improveSteps = 2;
  manifest.runs[1].threshold.config.values = [0.5, 0.6];
  const file = join(dir, "tiny_quickstart.json");
  await Deno.writeTextFile(file, JSON.stringify(manifest, null, 2));
  return file;
}

Deno.test({
  name: "exp --smoke --backend webgpu: the quickstart runs end to end on the adapter",
  ignore: noAdapter,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "webgpu_exp_" });
  try {
    const file = await tinyQuickstart(dir);
    const out = join(dir, "runs");
    const r = await runTask("exp", [file, "--smoke", "--backend", "webgpu", "--out", out]);
    assert.equal(r.code, 0, `exit ${r.code}\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
    assert.match(r.stdout + r.stderr, /backend: webgpu/);
    assert.doesNotMatch(r.stderr, /GPU rejected work/);
    const records = async (path: string) =>
      (await Deno.readTextFile(join(out, "quickstart", path))).trim().split("\n")
        .map((line) => JSON.parse(line) as Record<string, unknown>);
    const values = (rows: Record<string, unknown>[], key: RegExp) =>
      rows.flatMap((m) => Object.entries(m).filter(([k]) => key.test(k)).map(([, v]) => v));
    // Training losses of BC (shared by the runs) and of ReST's Improve steps, then test chrF.
    for (const path of ["shared/bc/metrics.jsonl", "rest/metrics.jsonl"]) {
      const losses = values(await records(path), /\/loss$/);
      assert.ok(losses.length > 0 && losses.every(Number.isFinite), `${path}: losses ${losses}`);
    }
    for (const run of ["bc", "rest"]) {
      const chrf = values(await records(`${run}/metrics.jsonl`), /^eval\/test_chrf$/);
      assert.ok(chrf.length > 0 && chrf.every(Number.isFinite), `${run}: test chrF ${chrf}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("exp --backend webgpu without an adapter: exit 2 naming what is missing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "webgpu_none_" });
  try {
    const r = await runTask(
      "exp",
      ["experiments/quickstart.json", "--smoke", "--backend", "webgpu", "--out", dir],
      { env: { DENO_WEBGPU_BACKEND: "vulkan", VK_ICD_FILENAMES: "/nonexistent/gpu_icd.json" } },
    );
    assert.equal(r.code, 2, `exit ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, /webgpu backend: no WebGPU adapter/);
    // The sandboxed worker may not stat an arbitrary file, so it names the restriction.
    assert.match(r.stderr, /VK_ICD_FILENAMES\/VK_DRIVER_FILES .*\/nonexistent\/gpu_icd\.json/);
    assert.match(r.stderr, /DENO_WEBGPU_BACKEND=vulkan restricts/);
    assert.ok(!hasStackTrace(r.stderr), r.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
