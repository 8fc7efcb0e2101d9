import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import cpu from "../../plugins/backends/cpu.ts";
import transformer from "../../plugins/models/transformer/mod.ts";
import {
  restoreTransformer,
  sampleToken,
  TRANSFORMER_DEFAULTS,
  type TransformerPolicy,
} from "../../plugins/models/transformer/policy.ts";
import { makeBatch, nllLoss } from "../../core/batch.ts";
import { Adam } from "../../core/optim.ts";
import { Rng } from "../../core/random.ts";
import type { Generation, ModelFactory, Policy } from "../../core/types.ts";
import { scoreTokens } from "../../core/rest.ts";
import { RowSampler } from "../../plugins/models/transformer/search.ts";
import { preciseExp } from "../../plugins/_nn/exp.ts";
import { referenceBehaviour } from "../_behaviour_reference.ts";

await (await cpu.create({ fastSegmentSum: true }, {} as never)).init();

const specials = { pad: 0, bos: 1, eos: 2, unk: 3 };
const VOCAB = 12;

function tiny(
  options: { valueHead?: boolean; dropout?: number; seed?: number; dModel?: number } = {},
): Policy {
  const factory = transformer.create({
    dModel: options.dModel ?? 16,
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

  // At temperature T: log softmax(logits / T) at the targets, from the forward pass's logits.
  const tempered = tf.tidy(() => {
    const batch = makeBatch(DATA.map((d) => ({ source: d.source, target: d.target })), specials);
    const fast = policy.tokenLogProbs(batch, { training: false, temperature: 0.7 });
    const { logits } = policy.forward(batch, { training: false });
    const reference = tf.mul(
      tf.sum(tf.mul(tf.logSoftmax(tf.div(logits, 0.7)), tf.oneHot(batch.targetOut, VOCAB)), -1),
      batch.targetMask,
    );
    return [fast.arraySync(), reference.arraySync()] as number[][][];
  });
  tempered[0].forEach((row, i) => close(row, tempered[1][i], 1e-4, `tempered row ${i}`));

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

// ---------------------------------------------------------------------------------------
// A plain-tfjs reference of the same architecture (standard ops and tfjs's own gradients):
// the fused layers' forward and hand-written backward passes must agree with it.

function byName(policy: Policy): Map<string, tf.Variable> {
  return new Map(policy.variables.map((v) => [v.name.slice(v.name.indexOf("/") + 1), v]));
}

function refLayerNorm(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-5))), g), b);
}

function refAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  b: number,
  tq: number,
  sk: number,
  heads: number,
  bias: tf.Tensor,
): tf.Tensor2D {
  const d = q.shape[1];
  const dk = d / heads;
  const split = (x: tf.Tensor2D, len: number) =>
    tf.transpose(tf.reshape(x, [b, len, heads, dk]), [0, 2, 1, 3]);
  const scores = tf.add(
    tf.div(tf.matMul(split(q, tq), split(k, sk), false, true), Math.sqrt(dk)),
    bias,
  );
  const out = tf.matMul(tf.softmax(scores), split(v, sk));
  return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b * tq, d]) as tf.Tensor2D;
}

function refForward(
  policy: Policy,
  batch: ReturnType<typeof makeBatch>,
  config: { heads: number; activation?: "relu" | "gelu" },
): tf.Tensor2D {
  const w = byName(policy);
  const p = (name: string) => {
    const v = w.get(name);
    if (v === undefined) throw new Error(`no ${name}`);
    return v;
  };
  const [b, s] = batch.source.shape;
  const t = batch.targetIn.shape[1];
  const d = p("encoder.norm.g").shape[0];
  const heads = config.heads;
  const pe = (len: number) => {
    const rows: number[][] = [];
    for (let pos = 0; pos < len; pos++) {
      const row: number[] = [];
      for (let i = 0; i < d; i++) {
        const angle = pos / Math.pow(10000, (i - (i % 2)) / d);
        row.push(i % 2 === 0 ? Math.sin(angle) : Math.cos(angle));
      }
      rows.push(row);
    }
    return tf.tensor2d(rows);
  };
  const srcTable = w.has("embed") ? "embed" : "embed.source";
  const tgtTable = w.has("embed") ? "embed" : "embed.target";
  const outTable = w.has("output") ? "output" : tgtTable;
  const embed = (table: string, ids: tf.Tensor2D, len: number) =>
    tf.reshape(
      tf.add(tf.mul(tf.gather(p(table), ids), Math.sqrt(d)), pe(len)),
      [b * len, d],
    ) as tf.Tensor2D;
  const linear = (x: tf.Tensor, name: string) =>
    tf.add(tf.matMul(x as tf.Tensor2D, p(`${name}.w`)), p(`${name}.b`)) as tf.Tensor2D;
  const act = (x: tf.Tensor) =>
    config.activation === "gelu"
      ? tf.mul(
        tf.mul(x, 0.5),
        tf.add(
          1,
          tf.tanh(tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3))))),
        ),
      )
      : tf.relu(x);
  const srcPad = tf.reshape(
    tf.mul(tf.sub(1, tf.cast(tf.notEqual(batch.source, 0), "float32")), -1e9),
    [b, 1, 1, s],
  );
  const causal = tf.tensor2d(
    Array.from({ length: t }, (_, i) => Array.from({ length: t }, (_, j) => (j > i ? -1e9 : 0))),
  );
  let x = embed(srcTable, batch.source, s);
  let l = 0;
  while (w.has(`encoder.${l}.qkv.w`)) {
    const n = `encoder.${l}`;
    const qkv = linear(refLayerNorm(x, p(`${n}.ln1.g`), p(`${n}.ln1.b`)), `${n}.qkv`);
    const [q, k, v] = tf.split(qkv, 3, 1) as tf.Tensor2D[];
    x = tf.add(x, linear(refAttention(q, k, v, b, s, s, heads, srcPad), `${n}.out`));
    const h = act(linear(refLayerNorm(x, p(`${n}.ln2.g`), p(`${n}.ln2.b`)), `${n}.ff1`));
    x = tf.add(x, linear(h, `${n}.ff2`));
    l++;
  }
  const enc = refLayerNorm(x, p("encoder.norm.g"), p("encoder.norm.b"));
  let y = embed(tgtTable, batch.targetIn, t);
  l = 0;
  while (w.has(`decoder.${l}.qkv.w`)) {
    const n = `decoder.${l}`;
    const qkv = linear(refLayerNorm(y, p(`${n}.ln1.g`), p(`${n}.ln1.b`)), `${n}.qkv`);
    const [q, k, v] = tf.split(qkv, 3, 1) as tf.Tensor2D[];
    y = tf.add(y, linear(refAttention(q, k, v, b, t, t, heads, causal), `${n}.out`));
    const cq = linear(refLayerNorm(y, p(`${n}.lnc.g`), p(`${n}.lnc.b`)), `${n}.q`);
    const [ck, cv] = tf.split(linear(enc, `${n}.kv`), 2, 1) as tf.Tensor2D[];
    y = tf.add(y, linear(refAttention(cq, ck, cv, b, t, s, heads, srcPad), `${n}.cout`));
    const h = act(linear(refLayerNorm(y, p(`${n}.ln2.g`), p(`${n}.ln2.b`)), `${n}.ff1`));
    y = tf.add(y, linear(h, `${n}.ff2`));
    l++;
  }
  const hf = refLayerNorm(y, p("decoder.norm.g"), p("decoder.norm.b"));
  return tf.matMul(hf as tf.Tensor2D, p(outTable), false, true);
}

function refLoss(
  policy: Policy,
  batch: ReturnType<typeof makeBatch>,
  config: { heads: number; activation?: "relu" | "gelu" },
  eps: number,
): tf.Scalar {
  const logits = refForward(policy, batch, config);
  const vocab = logits.shape[1];
  const logp = tf.logSoftmax(logits);
  const target = tf.sum(tf.mul(logp, tf.oneHot(tf.reshape(batch.targetOut, [-1]), vocab)), -1);
  const perToken = tf.add(tf.mul(target, 1 - eps), tf.mul(tf.mean(logp, -1), eps));
  const mask = tf.reshape(batch.targetMask, [-1]);
  return tf.div(tf.neg(tf.sum(tf.mul(perToken, mask))), tf.sum(mask)) as tf.Scalar;
}

const MIXED = [
  { source: [4, 5, 6, 7, 8], target: [9, 10] },
  { source: [5, 4], target: [11, 10, 9, 8, 7, 6] },
  { source: [8], target: [4, 4, 5] },
];

for (
  const variant of [
    { name: "tied, relu", config: {}, vocabs: [VOCAB, VOCAB] },
    {
      name: "untied, gelu, separate vocabularies",
      config: { activation: "gelu", shareEmbeddings: "none" },
      vocabs: [14, VOCAB],
    },
    {
      name: "decoder-tied, 3 heads, 2+1 layers",
      config: {
        shareEmbeddings: "decoder",
        heads: 3,
        dModel: 12,
        encoderLayers: 2,
        decoderLayers: 1,
      },
      vocabs: [VOCAB, 13],
    },
  ] as const
) {
  Deno.test(`fused layers match a plain-tfjs reference: ${variant.name}`, () => {
    const config = {
      dModel: 16,
      heads: 2,
      ffn: 24,
      encoderLayers: 1,
      decoderLayers: 2,
      dropout: 0,
      shareEmbeddings: "all" as const,
      ...variant.config,
    };
    const policy = (transformer.create(config, {} as never) as ModelFactory).build({
      sourceVocab: variant.vocabs[0],
      targetVocab: variant.vocabs[1],
      specials,
      valueHead: false,
      seed: 11,
    }) as TransformerPolicy;
    const batch = makeBatch(MIXED, specials);
    const ours = tf.tidy(() =>
      tf.reshape(policy.forward(batch, { training: false }).logits, [-1, variant.vocabs[1]])
        .arraySync() as number[][]
    );
    const ref = tf.tidy(() => refForward(policy, batch, config).arraySync() as number[][]);
    const mask = batch.targetMask.dataSync();
    ours.forEach((row, i) => {
      if (mask[i] > 0) close(row, ref[i], 1e-4, `logits row ${i}`);
    });
    for (const eps of [0, 0.1]) {
      const mine = tf.variableGrads(
        () => nllLoss(policy, batch, { labelSmoothing: eps, training: false, average: "token" }),
        policy.variables,
      );
      const theirs = tf.variableGrads(() => refLoss(policy, batch, config, eps), policy.variables);
      assert.ok(
        Math.abs(mine.value.dataSync()[0] - theirs.value.dataSync()[0]) < 1e-4,
        `loss ${mine.value.dataSync()[0]} vs ${theirs.value.dataSync()[0]}`,
      );
      for (const v of policy.variables) {
        const a = Array.from(mine.grads[v.name].dataSync());
        const b = Array.from(theirs.grads[v.name].dataSync());
        const scale = Math.max(1e-3, ...b.map(Math.abs));
        close(a.map((x) => x / scale), b.map((x) => x / scale), 2e-4, `eps ${eps} grad ${v.name}`);
      }
      tf.dispose([
        mine.value,
        theirs.value,
        ...Object.values(mine.grads),
        ...Object.values(theirs.grads),
      ]);
    }
    tf.dispose(Object.values(batch));
    policy.dispose();
  });
}

Deno.test("dropout is on only when training, reproducible from the seed, and leak-free", () => {
  const a = tiny({ dropout: 0.3, seed: 7 });
  const b = tiny({ dropout: 0.3, seed: 7 });
  const batch = makeBatch(DATA, specials);
  const before = tf.memory().numTensors;
  const lp = (p: Policy, training: boolean) =>
    tf.tidy(() => Array.from(p.tokenLogProbs(batch, { training }).dataSync()));
  const evalA = lp(a, false);
  assert.deepEqual(lp(a, false), evalA, "eval is deterministic");
  const trainA = lp(a, true);
  assert.ok(trainA.some((x, i) => Math.abs(x - evalA[i]) > 1e-4), "training applies dropout");
  assert.deepEqual(lp(b, true), trainA, "equal seeds give equal dropout masks");
  const { value, grads } = tf.variableGrads(
    () => nllLoss(a, batch, { labelSmoothing: 0, training: true, average: "sequence" }),
    a.variables,
  );
  assert.ok(Number.isFinite(value.dataSync()[0]));
  tf.dispose([value, ...Object.values(grads)]);
  assert.equal(tf.memory().numTensors, before);
  tf.dispose(Object.values(batch));
  a.dispose();
  b.dispose();
});

Deno.test("decoding: EOS handling, maxLen, batching and temperature", async () => {
  const policy = tiny({ seed: 3 });
  const sources = DATA.map((d) => d.source);
  const withEos = sources.map((s) => [...s, specials.eos]);
  const g1 = await policy.greedy(sources, { maxLen: 6 });
  assert.deepEqual(
    await policy.greedy(withEos, { maxLen: 6 }),
    g1,
    "a trailing EOS is not doubled",
  );
  assert.deepEqual(await policy.greedy(sources, { maxLen: 6, batchSize: 1 }), g1, "batching");
  for (const g of g1) {
    assert.ok(g.tokens.length <= 6);
    assert.ok(g.tokens.at(-1) === specials.eos || g.tokens.length === 6);
    assert.ok(!g.tokens.includes(specials.pad) && !g.tokens.includes(specials.bos));
    assert.ok(Math.abs(g.score - g.logProbs.reduce((x, y) => x + y, 0)) < 1e-9);
  }
  const short = await policy.greedy(sources, { maxLen: 1 });
  assert.ok(short.every((g) => g.tokens.length === 1));

  const opts = { n: 4, maxLen: 6, temperature: 1, topK: 0, topP: 1, seed: 9 };
  const s1 = await policy.sample(sources, opts);
  assert.equal(s1.length, sources.length);
  assert.ok(s1.every((s) => s.length === 4));
  assert.deepEqual(
    await policy.sample(sources, { ...opts, batchSize: 3 }),
    s1,
    "batch-independent",
  );
  const other = await policy.sample(sources, { ...opts, seed: 10 });
  assert.notDeepEqual(other, s1, "another seed gives other samples");
  // Sample j of source i depends on (seed, i, j) only, not on the sources after it.
  assert.deepEqual(await policy.sample(sources.slice(0, 3), opts), s1.slice(0, 3));

  const mean = (s: typeof s1) => {
    const all = s.flat().flatMap((g) => g.logProbs);
    return all.reduce((x, y) => x + y, 0) / all.length;
  };
  const cold = await policy.sample(sources, { ...opts, n: 16, temperature: 0.2 });
  const hot = await policy.sample(sources, { ...opts, n: 16, temperature: 5 });
  assert.ok(mean(cold) > mean(hot), `cold ${mean(cold)} vs hot ${mean(hot)}`);

  await assert.rejects(() => policy.sample(sources, { ...opts, temperature: 0 }), RangeError);
  await assert.rejects(() => policy.sample(sources, { ...opts, topP: 0 }), RangeError);
  await assert.rejects(
    () => policy.beam(sources, { maxLen: 4, beamSize: 0, lengthPenalty: 1 }),
    RangeError,
  );
  await assert.rejects(() => policy.greedy([[VOCAB + 3]], { maxLen: 4 }), RangeError);
  policy.dispose();
});

Deno.test("beam search: hypotheses end with EOS, scores are length-penalised, no leaks", async () => {
  const policy = tiny({ seed: 5 });
  const sources = DATA.map((d) => d.source);
  const before = tf.memory().numTensors;
  for (const alpha of [0, 1]) {
    const beams = await policy.beam(sources, { maxLen: 7, beamSize: 3, lengthPenalty: alpha });
    for (const g of beams) {
      const sum = g.logProbs.reduce((x, y) => x + y, 0);
      assert.ok(Math.abs(g.score - sum / Math.pow((5 + g.tokens.length) / 6, alpha)) < 1e-9);
      assert.ok(g.tokens.at(-1) === specials.eos || g.tokens.length === 7);
    }
    // The beam's logProbs are the model's: teacher forcing reproduces them.
    const forced = tf.tidy(() =>
      policy.tokenLogProbs(
        makeBatch(
          beams.map((g, i) => ({
            source: sources[i],
            target: g.tokens.at(-1) === specials.eos ? g.tokens.slice(0, -1) : g.tokens,
          })),
          specials,
        ),
        { training: false },
      ).arraySync() as number[][]
    );
    beams.forEach((g, i) =>
      close(forced[i].slice(0, g.tokens.length), g.logProbs, 1e-4, `beam ${i}`)
    );
  }
  assert.equal(tf.memory().numTensors, before);
  policy.dispose();
});

Deno.test("value head, save/restore through the state alone, plugin definition", async () => {
  const policy = tiny({ valueHead: true, seed: 2 }) as TransformerPolicy;
  assert.equal(policy.hasValueHead, true);
  const batch = makeBatch(DATA, specials);
  const shape = tf.tidy(() => policy.values(batch, { training: false }).shape);
  assert.deepEqual(shape, batch.targetOut.shape);
  const { grads } = tf.variableGrads(
    () => tf.mean(tf.square(policy.forward(batch, { training: false }).values!)) as tf.Scalar,
    policy.variables,
  );
  const names = Object.keys(grads).map((n) => n.slice(n.indexOf("/") + 1));
  assert.ok(names.includes("value.w") && names.includes("value.b"));
  tf.dispose(Object.values(grads));

  const state = policy.save();
  assert.equal(state.weights.length, policy.variables.length);
  const restored = restoreTransformer(state);
  const lp = (p: Policy) => tf.tidy(() => p.tokenLogProbs(batch, { training: false }).arraySync());
  assert.deepEqual(lp(restored), lp(policy));
  assert.deepEqual(
    await restored.greedy([[4, 5]], { maxLen: 5 }),
    await policy.greedy([[4, 5]], { maxLen: 5 }),
  );
  const noHead = tiny({ seed: 2 });
  assert.throws(() => noHead.load(state), RangeError);
  noHead.dispose();
  restored.dispose();
  policy.dispose();
  assert.throws(() => policy.variables, /dispose/);
  tf.dispose(Object.values(batch));

  const props = transformer.configSchema.properties as Record<string, { default: unknown }>;
  for (const [key, value] of Object.entries(TRANSFORMER_DEFAULTS)) {
    assert.deepEqual(props[key]?.default, value, key);
  }
  const smoke = transformer.smoke!({ ...TRANSFORMER_DEFAULTS });
  assert.equal(smoke.dModel, 32);
  assert.equal(smoke.encoderLayers, 1);
  assert.throws(
    () =>
      (transformer.create({ dModel: 10, heads: 3 }, {} as never) as ModelFactory).build({
        sourceVocab: VOCAB,
        targetVocab: VOCAB,
        specials,
        valueHead: false,
        seed: 1,
      }),
    RangeError,
  );
});

Deno.test("attention dropout trains and leaves evaluation untouched", () => {
  const factory = transformer.create({
    dModel: 16,
    heads: 2,
    ffn: 32,
    encoderLayers: 1,
    decoderLayers: 1,
    dropout: 0,
    attentionDropout: 0.5,
  }, {} as never) as ModelFactory;
  const policy = factory.build({
    sourceVocab: VOCAB,
    targetVocab: VOCAB,
    specials,
    valueHead: false,
    seed: 1,
  });
  const plain = (transformer.create({
    dModel: 16,
    heads: 2,
    ffn: 32,
    encoderLayers: 1,
    decoderLayers: 1,
    dropout: 0,
  }, {} as never) as ModelFactory).build({
    sourceVocab: VOCAB,
    targetVocab: VOCAB,
    specials,
    valueHead: false,
    seed: 1,
  });
  const batch = makeBatch(DATA, specials);
  const lp = (p: Policy, training: boolean) =>
    tf.tidy(() => Array.from(p.tokenLogProbs(batch, { training }).dataSync()));
  assert.deepEqual(lp(policy, false), lp(plain, false));
  assert.notDeepEqual(lp(policy, true), lp(plain, true));
  const { value, grads } = tf.variableGrads(
    () => nllLoss(policy, batch, { labelSmoothing: 0.1, training: true, average: "token" }),
    policy.variables,
  );
  assert.ok(Object.values(grads).every((g) => Array.from(g.dataSync()).every(Number.isFinite)));
  tf.dispose([value, ...Object.values(grads), ...Object.values(batch)]);
  policy.dispose();
  plain.dispose();
});

Deno.test("two forward passes on one tape: work buffers stay alive until their backward pass", () => {
  const config = {
    dModel: 16,
    heads: 2,
    ffn: 24,
    encoderLayers: 1,
    decoderLayers: 2,
    dropout: 0,
    shareEmbeddings: "all" as const,
  };
  const policy = (transformer.create(config, {} as never) as ModelFactory).build({
    sourceVocab: VOCAB,
    targetVocab: VOCAB,
    specials,
    valueHead: false,
    seed: 5,
  }) as TransformerPolicy;
  const half1 = makeBatch(DATA.slice(0, 2), specials);
  const half2 = makeBatch(DATA.slice(2), specials);
  const loss = (b: typeof half1) =>
    nllLoss(policy, b, { labelSmoothing: 0, training: false, average: "token" });
  const mine = tf.variableGrads(() => {
    const a = loss(half1);
    // an inference pass in between recycles work buffers; it must not disturb the tape
    tf.tidy(() => policy.tokenLogProbs(half2, { training: false }));
    return tf.add(a, loss(half2)) as tf.Scalar;
  }, policy.variables);
  const theirs = tf.variableGrads(
    () => tf.add(refLoss(policy, half1, config, 0), refLoss(policy, half2, config, 0)) as tf.Scalar,
    policy.variables,
  );
  close([mine.value.dataSync()[0]], [theirs.value.dataSync()[0]], 1e-4, "loss");
  for (const v of policy.variables) {
    const a = Array.from(mine.grads[v.name].dataSync());
    const b = Array.from(theirs.grads[v.name].dataSync());
    const scale = Math.max(1e-3, ...b.map(Math.abs));
    close(a.map((x) => x / scale), b.map((x) => x / scale), 2e-4, `grad ${v.name}`);
  }
  tf.dispose([
    mine.value,
    theirs.value,
    ...Object.values(mine.grads),
    ...Object.values(theirs.grads),
  ]);
  tf.dispose([...Object.values(half1), ...Object.values(half2)]);
  policy.dispose();
});

// ---------------------------------------------------------------------------------------
// Behaviour log-probabilities of samples: log mu(a_t) of the distribution each token was
// drawn from, reported by the sampler itself.

/**
 * Tokens of `tiny({ seed: 3 })` sampled (n 3, maxLen 6, seed 11) by the sampler as committed
 * before it reported behaviour log-probabilities: the draw must not change.
 */
const GOLDEN_SAMPLES: Record<string, number[][][]> = {
  "plain": [
    [[11, 9, 9, 9, 9, 9], [11, 11, 11, 11, 11, 11], [7, 6, 6, 6, 9, 9]],
    [[10, 2], [11, 3, 5, 3, 3, 3], [2]],
    [[5, 2], [9, 9, 9, 5, 11, 11], [8, 11, 11, 11, 3, 2]],
    [[5, 2], [5, 5, 2], [5, 2]],
  ],
  "topK": [
    [[11, 11, 11, 11, 11, 11], [11, 11, 11, 11, 11, 11], [5, 2]],
    [[11, 2], [11, 3, 3, 3, 3, 3], [2]],
    [[2], [9, 9, 9, 5, 9, 9], [9, 9, 9, 9, 5, 2]],
    [[5, 2], [5, 5, 2], [5, 2]],
  ],
  "topP": [[[11, 5, 3, 3, 3, 3], [11, 7, 7, 7, 11, 9], [5, 2]], [[9, 2], [11, 2], [2]], [[5, 2], [
    8,
    7,
    9,
    5,
    9,
    7,
  ], [8, 11, 11, 11, 2]], [[4, 2], [4, 5, 2], [3, 3, 3, 3, 2]]],
};

const GOLDEN_SETTINGS: Record<string, { temperature: number; topK: number; topP: number }> = {
  plain: { temperature: 0.8, topK: 0, topP: 1 },
  topK: { temperature: 1, topK: 3, topP: 1 },
  topP: { temperature: 1.5, topK: 0, topP: 0.7 },
};

const BANNED = [specials.pad, specials.bos];

Deno.test("preciseExp is within 2 ulp of Math.exp", () => {
  const rng = new Rng(8);
  const args = [0, -0, -1e-300, -1 / 64, -59.99, -60, -700, -800, -Infinity];
  for (let i = 0; i < 20000; i++) args.push(-70 * rng.next(), -rng.next() / 16);
  for (const x of args) {
    const e = Math.exp(x);
    const p = preciseExp(x);
    assert.ok(e === 0 ? p === 0 : Math.abs(p - e) <= 4.5e-16 * e, `exp(${x}): ${p} vs ${e}`);
  }
  assert.ok(Number.isNaN(preciseExp(NaN)));
});

/** Every sample of `samples` with its source, in order. */
function flatten(sources: number[][], samples: Generation[][]) {
  return samples.flatMap((s, i) =>
    s.map((g) => ({ source: sources[i], tokens: g.tokens, behaviour: g.behaviourLogProbs! }))
  );
}

Deno.test("sampling: seeded samples are the tokens the sampler drew before it reported behaviour log-probs", async () => {
  const policy = tiny({ seed: 3 });
  const sources = DATA.map((d) => d.source);
  for (const [name, settings] of Object.entries(GOLDEN_SETTINGS)) {
    for (const behaviourLogProbs of [false, true]) {
      const samples = await policy.sample(sources, {
        n: 3,
        maxLen: 6,
        seed: 11,
        ...settings,
        behaviourLogProbs,
      });
      assert.deepEqual(samples.map((s) => s.map((g) => g.tokens)), GOLDEN_SAMPLES[name], name);
      // Reported only when asked for.
      for (const g of samples.flat()) assert.equal("behaviourLogProbs" in g, behaviourLogProbs);
    }
  }
  policy.dispose();
});

Deno.test("sampled behaviour log-probs are log softmax(logits / T) over the drawable ids; teacher forcing also counts the banned ones", async () => {
  const policy = tiny({ seed: 3 });
  const sources = DATA.map((d) => d.source);
  const temperature = 0.8;
  const before = tf.memory().numTensors;
  const samples = await policy.sample(sources, {
    n: 4,
    maxLen: 6,
    temperature,
    topK: 0,
    topP: 1,
    seed: 11,
    behaviourLogProbs: true,
  });
  assert.equal(tf.memory().numTensors, before, "no leaks");
  const flat = flatten(sources, samples);
  for (const s of flat) assert.equal(s.behaviour.length, s.tokens.length);
  // Against a reference with padding and BOS masked out (the sampler never draws them).
  const masked = referenceBehaviour(policy, flat, { temperature, topK: 0, banned: BANNED });
  flat.forEach((s, i) => close(s.behaviour, masked[i], 1e-4, `sample ${i}`));
  // Teacher forcing (scoreTokens, what Grow stored before) normalises over the whole
  // vocabulary: on this untrained model the banned ids hold real mass, so the sampler's
  // log mu is larger by -log(1 - their tempered mass).
  const forced = await scoreTokens(
    policy,
    flat.map((s) => ({ source: s.source, target: s.tokens })),
    8,
    temperature,
  );
  const full = referenceBehaviour(policy, flat, { temperature, topK: 0, banned: [] });
  flat.forEach((_, i) => close(forced[i], full[i], 1e-4, `forced ${i}`));
  let gap = 0;
  flat.forEach((s, i) =>
    s.behaviour.forEach((lp, t) => {
      assert.ok(lp >= forced[i][t] - 1e-4, `sample ${i} token ${t}`);
      gap = Math.max(gap, lp - forced[i][t]);
    })
  );
  assert.ok(gap > 1e-2, `the banned ids' mass shows (${gap})`);
  // Greedy and beam search report none.
  const greedy = await policy.greedy(sources, { maxLen: 6 });
  const beam = await policy.beam(sources, { maxLen: 6, beamSize: 2, lengthPenalty: 0.6 });
  for (const g of [...greedy, ...beam]) assert.ok(!("behaviourLogProbs" in g));
  policy.dispose();
});

Deno.test("with top-k, behaviour log-probs are those of the truncated, renormalised distribution", async () => {
  const policy = tiny({ seed: 3 });
  const sources = DATA.map((d) => d.source);
  const settings = { temperature: 1.3, topK: 3, topP: 1 };
  const samples = await policy.sample(sources, {
    n: 4,
    maxLen: 6,
    seed: 12,
    ...settings,
    behaviourLogProbs: true,
  });
  const flat = flatten(sources, samples);
  const reference = referenceBehaviour(policy, flat, { ...settings, banned: BANNED });
  flat.forEach((s, i) => close(s.behaviour, reference[i], 1e-4, `sample ${i}`));
  policy.dispose();

  // One row directly: the kept tokens' probabilities sum to 1.
  const logits = Float32Array.from([5, 4, 1, 0.5, 0.2, -1, 2, 0.7]);
  const direct = (options: { temperature: number; topK: number; topP: number }) => {
    const sampler = new RowSampler(logits.length, options, BANNED);
    const rng = new Rng(4);
    const drawn = { behaviourLogProb: NaN };
    const seen = new Map<number, number>();
    for (let i = 0; i < 2000; i++) {
      const j = sampler.sample(logits, 0, rng, drawn);
      const known = seen.get(j);
      if (known !== undefined) assert.equal(drawn.behaviourLogProb, known, `token ${j}`);
      seen.set(j, drawn.behaviourLogProb);
    }
    return seen;
  };
  const expected = (kept: number[], temperature: number) => {
    const z = kept.map((id) => logits[id] / temperature);
    const lse = Math.log(z.reduce((s, v) => s + Math.exp(v), 0));
    return new Map(kept.map((id, k) => [id, z[k] - lse]));
  };
  const total = (seen: Map<number, number>) =>
    [...seen.values()].reduce((s, lp) => s + Math.exp(lp), 0);
  // top-3 of the allowed ids (0 and 1 are banned): 6, 2, 7.
  const topK = direct({ temperature: 0.9, topK: 3, topP: 1 });
  assert.deepEqual([...topK.keys()].sort(), [2, 6, 7]);
  assert.ok(Math.abs(total(topK) - 1) < 1e-12, `sum ${total(topK)}`);
  for (const [id, lp] of expected([6, 2, 7], 0.9)) {
    assert.ok(Math.abs(topK.get(id)! - lp) < 1e-12, `token ${id}`);
  }
  // The nucleus of mass 0.8 at T = 1: 6, 2, 7, 3 (0.48 + 0.18 + 0.13 + 0.11).
  const topP = direct({ temperature: 1, topK: 0, topP: 0.8 });
  assert.deepEqual([...topP.keys()].sort(), [2, 3, 6, 7]);
  assert.ok(Math.abs(total(topP) - 1) < 1e-12, `sum ${total(topP)}`);
  for (const [id, lp] of expected([6, 2, 7, 3], 1)) {
    assert.ok(Math.abs(topP.get(id)! - lp) < 1e-12, `token ${id}`);
  }
});

Deno.test("cached decoding (greedy, sampling, beam) equals teacher forcing with either attention kernel: head width 6 (plain loops) and 8 (SIMD)", async () => {
  const sources = DATA.map((d) => d.source);
  for (const dModel of [12, 16]) {
    const policy = tiny({ dModel, seed: 5 });
    const greedy = await policy.greedy(sources, { maxLen: 6 });
    // several rows per source: each row's cache and its source's encoder states are apart
    const sampled = await policy.sample(sources, {
      n: 3,
      maxLen: 6,
      temperature: 1,
      topK: 0,
      topP: 1,
      seed: 2,
    });
    const beam = await policy.beam(sources, { maxLen: 6, beamSize: 2, lengthPenalty: 0.6 });
    const rows = [
      ...greedy.map((g, i) => ({ source: sources[i], g })),
      ...sampled.flatMap((s, i) => s.map((g) => ({ source: sources[i], g }))),
      ...beam.map((g, i) => ({ source: sources[i], g })),
    ];
    const forced = await scoreTokens(
      policy,
      rows.map((r) => ({ source: r.source, target: r.g.tokens })),
      32,
    );
    rows.forEach((r, i) => close(r.g.logProbs, forced[i], 1e-4, `d ${dModel}, row ${i}`));
    policy.dispose();
  }
});
