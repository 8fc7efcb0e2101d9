import assert from "node:assert/strict";
import { join } from "node:path";
import { hasStackTrace, runTask } from "../_cli.ts";
import { loadVectors as vectors, type Vector } from "../_vectors.ts";

async function writeFiles(dir: string, vs: Vector[]): Promise<{ hyp: string; ref: string }> {
  const hyp = join(dir, "hyp.txt");
  const ref = join(dir, "ref.txt");
  await Deno.writeTextFile(hyp, vs.map((v) => v.hypothesis).join("\n") + "\n");
  await Deno.writeTextFile(ref, vs.map((v) => v.reference).join("\n") + "\n");
  return { hyp, ref };
}

Deno.test("score --json matches sacreBLEU on the shared vectors (chrF, chrF++, BLEU)", async () => {
  const vs = await vectors();
  assert.ok(vs.every((v) => !v.hypothesis.includes("\n") && !v.reference.includes("\n")));
  const dir = await Deno.makeTempDir();
  try {
    const { hyp, ref } = await writeFiles(dir, vs);
    const cases: [string, string[], keyof Vector][] = [
      ["chrf", [], "chrf"],
      ["chrf", ["--config", '{"wordOrder": 2}'], "chrf_pp"],
      ["bleu", [], "bleu"],
    ];
    for (const [reward, extra, key] of cases) {
      const r = await runTask("score", [
        "--reward",
        reward,
        ...extra,
        "--hyp",
        hyp,
        "--ref",
        ref,
        "--json",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout);
      assert.equal(out.scores.length, vs.length);
      for (let i = 0; i < vs.length; i++) {
        assert.ok(
          Math.abs(out.scores[i] * 100 - (vs[i][key] as number)) < 1e-4,
          `${reward} ${key} line ${i + 1}: ${out.scores[i] * 100} vs ${vs[i][key]}`,
        );
      }
      const mean = out.scores.reduce((a: number, b: number) => a + b, 0) / vs.length;
      assert.ok(Math.abs(out.mean - mean) < 1e-12);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("score: user errors exit 2 with a message naming the problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const vs = (await vectors()).slice(0, 3);
    const { hyp, ref } = await writeFiles(dir, vs);
    const short = join(dir, "short.txt");
    await Deno.writeTextFile(short, "one line\n");
    const latin1 = join(dir, "latin1.txt");
    await Deno.writeFile(latin1, new Uint8Array([0x47, 0x72, 0xfc, 0xdf, 0x0a]));
    const cases: [string[], RegExp][] = [
      [
        ["--reward", "chfr", "--hyp", hyp, "--ref", ref],
        /unknown reward plugin "chfr"; did you mean "chrf"\?/,
      ],
      [
        ["--reward", "chrf", "--hyp", hyp, "--ref", short],
        /has 3 lines but --ref .*short\.txt has 1/,
      ],
      [
        ["--reward", "chrf", "--hyp", join(dir, "missing.txt"), "--ref", ref],
        /--hyp .*missing\.txt: file not found/,
      ],
      [["--reward", "chrf", "--hyp", hyp], /compares with references: give --ref FILE/],
      [
        ["--reward", "chrf", "--hyp", latin1, "--ref", latin1],
        /--hyp .*latin1\.txt:1: not valid UTF-8 \(byte offset 2\)/,
      ],
      [
        ["--reward", "chrf", "--config", "{bad", "--hyp", hyp, "--ref", ref],
        /--config is not valid JSON/,
      ],
      [
        ["--reward", "chrf", "--config", '{"beta": -1}', "--hyp", hyp, "--ref", ref],
        /\/config\/beta: must be >= /,
      ],
      [["--hyp", hyp], /--reward NAME is required/],
      [["--reward", "chrf", "--hyp", hyp, "--ref", ref, "extra"], /extra/],
    ];
    for (const [args, pattern] of cases) {
      const r = await runTask("score", args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, pattern);
      assert.ok(!hasStackTrace(r.stderr), r.stderr);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("score: the text output prints one score per line and the mean", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { hyp, ref } = await writeFiles(dir, (await vectors()).slice(0, 2));
    const r = await runTask("score", ["--reward", "bleu", "--hyp", hyp, "--ref", ref]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim().split("\n").length, 2);
    assert.match(r.stderr, /bleu: mean 0\.\d{6} \(x100 = \d+\.\d\d\) over 2 lines/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
