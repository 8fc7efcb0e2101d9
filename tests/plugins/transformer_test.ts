import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import cpu from "../../plugins/backends/cpu.ts";
import transformer, { sampleToken } from "../../plugins/models/transformer.ts";
import { makeBatch, nllLoss } from "../../core/batch.ts";
import { Adam } from "../../core/optim.ts";
import { Rng } from "../../core/random.ts";
import type { Policy } from "../../core/policy.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

const specials = { pad: 0, bos: 1, eos: 2, unk: 3 };
const VOCAB = 12;

function tiny(options: { valueHead?: boolean; dropout?: number; seed?: number } = {}): Policy {
  const factory = transformer.create({
    dModel: 16,
    heads: 2,
    ffn: 32,
    encoderLayers: 1,
    decoderLayers: 2,
    dropout: options.dropout ?? 0,
    shareEmbeddings: "all",
    maxPositions: 64,
  }, {} as never) as ReturnType<typeof transformer.create> & { build: (o: unknown) => Policy };
  return factory.build({
    sourceVocab: VOCAB,
    targetVocab: VOCAB,
    specials,
    valueHead: options.valueHead ?? false,
    seed: options.seed ?? 1,
  });
}

const DATA = [
  { source: [4, 5, 6], target: [7, 8] },
  { source: [5, 4], target: [9, 10, 11] },
  { source: [6, 6, 7, 8], target: [4] },
  { source: [9], target: [5, 6, 7, 8] },
];

function close(a: number[], b: number[], tol: number, what: string): void {
  assert.equal(a.length, b.length, what);
  for (let i = 0; i < a.length; i++) {
    assert.ok(Math.abs(a[i] - b[i]) < tol, `${what}[${i}]: ${a[i]} vs ${b[i]}`);
  }
}

Deno.test("padding and future tokens do not change the outputs", () => {
  const policy = tiny();
  const row = { source: [4, 5], target: [6, 7, 8] };
  const alone = makeBatch([row], specials);
  // The same row beside a longer one: its source and target are padded.
  const padded = makeBatch(
    [row, { source: [4, 5, 6, 7, 8, 9], target: [6, 7, 8, 9, 10, 11] }],
    specials,
  );
  const a = tf.tidy(() =>
    policy.forward(alone, { training: false }).logits.arraySync() as number[][][]
  );
  const b = tf.tidy(() =>
    policy.forward(padded, { training: false }).logits.arraySync() as number[][][]
  );
  for (let t = 0; t < 4; t++) close(b[0][t], a[0][t], 1e-5, `padded position ${t}`);
  // Changing a future decoder input changes nothing before it.
  const tin = alone.targetIn.arraySync() as number[][];
  tin[0][2] = 11;
  const changed = { ...alone, targetIn: tf.tensor2d(tin, undefined, "int32") };
  const c = tf.tidy(() =>
    policy.forward(changed, { training: false }).logits.arraySync() as number[][][]
  );
  close(c[0][0], a[0][0], 1e-5, "position 0");
  close(c[0][1], a[0][1], 1e-5, "position 1");
  assert.ok(Math.abs(c[0][2][0] - a[0][2][0]) > 1e-6, "position 2 sees its own input");
  tf.dispose([...Object.values(alone), ...Object.values(padded), changed.targetIn]);
  policy.dispose();
});

Deno.test("a tiny model memorises a tiny dataset; decoding methods agree; no tensor leaks", async () => {
  const policy = tiny({ valueHead: true });
  const adam = new Adam(policy.variables);
  const batch = makeBatch(DATA, specials);
  const before = tf.memory().numTensors;
  let loss = Infinity;
  for (let step = 0; step < 300; step++) {
    const { value, grads } = tf.variableGrads(
      () => nllLoss(policy, batch, { labelSmoothing: 0, training: true, average: "token" }),
      policy.variables,
    );
    loss = value.dataSync()[0];
    adam.apply(policy.variables.map((v) => grads[v.name]), 0.01);
    value.dispose();
    tf.dispose(Object.values(grads));
    if (step === 1) assert.equal(tf.memory().numTensors, before, "training steps do not leak");
  }
  assert.ok(loss < 0.05, `loss ${loss}`);
  const sources = DATA.map((d) => d.source);
  const beforeDecode = tf.memory().numTensors;
  const greedy = await policy.greedy(sources, { maxLen: 8 });
  assert.equal(tf.memory().numTensors, beforeDecode, "greedy does not leak");
  assert.deepEqual(greedy.map((g) => g.tokens), DATA.map((d) => [...d.target, specials.eos]));

  // Cached incremental decoding equals the teacher-forced forward pass.
  const forced = tf.tidy(() =>
    policy.tokenLogProbs(
      makeBatch(
        greedy.map((g, i) => ({ source: sources[i], target: g.tokens.slice(0, -1) })),
        specials,
      ),
      { training: false },
    ).arraySync() as number[][]
  );
  greedy.forEach((g, i) =>
    close(forced[i].slice(0, g.tokens.length), g.logProbs, 1e-4, `row ${i}`)
  );

  const beam1 = await policy.beam(sources, { maxLen: 8, beamSize: 1, lengthPenalty: 0 });
  assert.deepEqual(beam1.map((g) => g.tokens), greedy.map((g) => g.tokens));
  const beam4 = await policy.beam(sources, { maxLen: 8, beamSize: 4, lengthPenalty: 0.6 });
  assert.equal(tf.memory().numTensors, beforeDecode, "beam does not leak");
  assert.deepEqual(beam4.map((g) => g.tokens), greedy.map((g) => g.tokens));

  // topK = 1 sampling is greedy; sampled log-probs equal the teacher-forced ones.
  const top1 = await policy.sample(sources, {
    n: 2,
    maxLen: 8,
    temperature: 1,
    topK: 1,
    topP: 1,
    seed: 3,
  });
  assert.deepEqual(top1.map((s) => s[0].tokens), greedy.map((g) => g.tokens));
  const samples = await policy.sample(sources, {
    n: 3,
    maxLen: 8,
    temperature: 2,
    topK: 0,
    topP: 1,
    seed: 5,
  });
  const again = await policy.sample(sources, {
    n: 3,
    maxLen: 8,
    temperature: 2,
    topK: 0,
    topP: 1,
    seed: 5,
  });
  assert.deepEqual(samples, again, "sampling is deterministic given the seed");
  assert.equal(tf.memory().numTensors, beforeDecode, "sampling does not leak");
  const flat = samples.flatMap((s, i) => s.map((g) => ({ source: sources[i], g })));
  const lp = tf.tidy(() =>
    policy.tokenLogProbs(
      makeBatch(
        flat.map(({ source, g }) => ({
          source,
          target: g.tokens.at(-1) === specials.eos ? g.tokens.slice(0, -1) : g.tokens,
        })),
        specials,
      ),
      { training: false },
    ).arraySync() as number[][]
  );
  flat.forEach(({ g }, i) =>
    close(lp[i].slice(0, g.tokens.length), g.logProbs, 1e-4, `sample ${i}`)
  );

  const values = tf.tidy(() => policy.forward(batch, { training: false }).values!.shape);
  assert.deepEqual(values, batch.targetOut.shape);
  tf.dispose(Object.values(batch));
  adam.dispose();
  policy.dispose();
});

Deno.test("save/load round-trips; clones are independent", () => {
  const a = tiny({ seed: 1 });
  const b = tiny({ seed: 2 });
  const batch = makeBatch(DATA, specials);
  const lpA = tf.tidy(() => a.tokenLogProbs(batch, { training: false }).arraySync() as number[][]);
  b.load(a.save());
  const lpB = tf.tidy(() => b.tokenLogProbs(batch, { training: false }).arraySync() as number[][]);
  assert.deepEqual(lpB, lpA);
  const c = a.clone();
  a.variables[0].assign(tf.zerosLike(a.variables[0]));
  const lpC = tf.tidy(() => c.tokenLogProbs(batch, { training: false }).arraySync() as number[][]);
  assert.deepEqual(lpC, lpA);
  tf.dispose(Object.values(batch));
  [a, b, c].forEach((p) => p.dispose());
});

Deno.test("nllLoss gradients match finite differences", () => {
  const policy = tiny({ seed: 4 });
  const batch = makeBatch(DATA.slice(0, 2), specials);
  const lossOf = () =>
    nllLoss(policy, batch, { labelSmoothing: 0.1, training: false, average: "token" });
  const { grads } = tf.variableGrads(lossOf, policy.variables);
  for (const variable of policy.variables.slice(0, 6)) {
    const values = variable.dataSync().slice();
    const g = grads[variable.name].dataSync();
    for (const index of [0, Math.floor(values.length / 2)]) {
      const h = 1e-2;
      const at = (delta: number) => {
        const copy = values.slice();
        copy[index] += delta;
        variable.assign(tf.tensor(copy, variable.shape));
        return tf.tidy(() => lossOf().dataSync()[0]);
      };
      const numeric = (at(h) - at(-h)) / (2 * h);
      variable.assign(tf.tensor(values, variable.shape));
      assert.ok(
        Math.abs(numeric - g[index]) < 2e-3 + 0.05 * Math.abs(numeric),
        `${variable.name}[${index}]: ${numeric} vs ${g[index]}`,
      );
    }
  }
  tf.dispose(Object.values(grads));
  tf.dispose(Object.values(batch));
  policy.dispose();
});

Deno.test("sampleToken respects temperature, top-k and top-p", () => {
  const lp = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
  const rng = new Rng(1);
  const counts = [0, 0, 0];
  for (let i = 0; i < 3000; i++) {
    counts[sampleToken(lp, { temperature: 1, topK: 0, topP: 1 }, rng)]++;
  }
  assert.ok(
    Math.abs(counts[0] / 3000 - 0.5) < 0.05 && Math.abs(counts[2] / 3000 - 0.2) < 0.05,
    String(counts),
  );
  for (let i = 0; i < 50; i++) {
    assert.equal(sampleToken(lp, { temperature: 1, topK: 1, topP: 1 }, rng), 0);
  }
  for (let i = 0; i < 50; i++) {
    assert.notEqual(sampleToken(lp, { temperature: 1, topK: 0, topP: 0.75 }, rng), 2);
  }
  let low = 0;
  for (let i = 0; i < 1000; i++) {
    if (sampleToken(lp, { temperature: 0.1, topK: 0, topP: 1 }, rng) === 0) low++;
  }
  assert.ok(low > 980, `temperature 0.1 picks the mode almost always (${low})`);
});
