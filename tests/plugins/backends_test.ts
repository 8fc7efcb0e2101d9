/**
 * Tests of the backend plugins: blas and wasm agree with the plain cpu backend on
 * matrix products (every transpose, broadcast batches), fused matMul with its
 * gradients, a small network's loss and gradients, and a tiny attention +
 * embedding training step; the error paths (missing OpenBLAS, absent tfjs-node).
 */

import { tinyTransformerCase } from "./_tiny_translator.ts";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { Rng } from "../../core/random.ts";
import { UserError } from "../../core/errors.ts";
import type { PluginDefinition, PluginDeps } from "../../core/plugin.ts";
import type { BackendInfo } from "../../core/types.ts";
import auto from "../../plugins/backends/auto.ts";
import blas from "../../plugins/backends/blas.ts";
import cpu, { useFastSegmentSumOnCpu } from "../../plugins/backends/cpu.ts";
import tensorflow, { probeTensorflow } from "../../plugins/backends/tensorflow.ts";
import wasm from "../../plugins/backends/wasm.ts";
import { loadBlas, sgemm } from "../../plugins/_nn/blas_ffi.ts";
import {
  rowArgmaxExpSums,
  rowExpSums,
  simdAlloc,
  simdAttend,
  simdF32,
  simdLayerNorm,
  simdLayerNormBackward,
  simdMark,
  SimdMatrix,
  simdRelease,
  simdU8,
} from "../../plugins/_nn/simd.ts";
import { giveBuffer, takeBuffer } from "../../plugins/_nn/buffer_pool.ts";
import { maskedSoftmaxInPlace, softmaxBackwardInPlace } from "../../plugins/_nn/attention.ts";
import { attendOne } from "../../plugins/models/transformer/decode.ts";
import { SIMD_SOURCE_SHA256 } from "../../plugins/_nn/simd_wasm.ts";
import { makeBatch, nllLoss } from "../../core/batch.ts";

const deps = {} as PluginDeps;

function defaults(plugin: PluginDefinition): Record<string, unknown> {
  const props = (plugin.configSchema.properties ?? {}) as Record<string, { default: unknown }>;
  return Object.fromEntries(Object.entries(props).map(([k, v]) => [k, v.default]));
}

async function init(
  plugin: PluginDefinition<"backend">,
  config: Record<string, unknown> = {},
): Promise<BackendInfo> {
  const backend = await plugin.create({ ...defaults(plugin), ...config }, deps);
  return backend.init();
}

/** Random values in [-1, 1), reproducible. */
function values(size: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: size }, () => rng.next() * 2 - 1);
}

function randn(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(values(tf.util.sizeFromShape(shape), seed), shape);
}

/** Runs `fn` on backend `name` and returns every output's values and shape. */
async function on(
  name: string,
  fn: () => tf.Tensor | tf.Tensor[],
): Promise<{ shape: number[]; data: Float32Array }[]> {
  await tf.setBackend(name);
  const before = tf.memory().numTensors;
  const outs = tf.tidy(fn);
  const list = Array.isArray(outs) ? outs : [outs];
  const result = list.map((t) => ({ shape: t.shape, data: Float32Array.from(t.dataSync()) }));
  tf.dispose(list);
  assert.equal(tf.memory().numTensors, before, `${name}: tensors leaked`);
  return result;
}

function assertClose(
  actual: { shape: number[]; data: Float32Array }[],
  expected: { shape: number[]; data: Float32Array }[],
  label: string,
  tol = 1e-4,
): void {
  assert.equal(actual.length, expected.length, `${label}: output count`);
  for (let i = 0; i < actual.length; i++) {
    assert.deepEqual(actual[i].shape, expected[i].shape, `${label}[${i}]: shape`);
    const a = actual[i].data;
    const e = expected[i].data;
    for (let j = 0; j < e.length; j++) {
      const err = Math.abs(a[j] - e[j]);
      if (!(err <= tol * (1 + Math.abs(e[j])))) {
        assert.fail(`${label}[${i}] element ${j}: got ${a[j]}, expected ${e[j]}`);
      }
    }
  }
}

/** Compares backend `name` with cpu on `fn`. */
async function compare(
  name: string,
  label: string,
  fn: () => tf.Tensor | tf.Tensor[],
  tol?: number,
) {
  const expected = await on("cpu", fn);
  const actual = await on(name, fn);
  assertClose(actual, expected, `${name} ${label}`, tol);
}

/** Initialises blas, or explains (once) why its tests are skipped on this machine. */
async function tryBlas(): Promise<BackendInfo | undefined> {
  try {
    return await init(blas);
  } catch (err) {
    if (!(err instanceof UserError)) throw err;
    console.warn(`blas tests skipped: ${err.message}`);
    return undefined;
  }
}

const blasInfo = await tryBlas();
const wasmInfo = await init(wasm);
await init(cpu);
const noBlas = blasInfo === undefined;

/** Registers a test that is skipped when `name` is blas and OpenBLAS is missing. */
function backendTest(name: string, label: string, fn: () => Promise<void> | void): void {
  Deno.test({ name: `${name}: ${label}`, ignore: name === "blas" && noBlas, fn });
}

for (const name of ["blas", "wasm"]) {
  backendTest(name, "matMul matches cpu for every transpose combination", async () => {
    const [m, k, n] = [5, 7, 3];
    for (const transposeA of [false, true]) {
      for (const transposeB of [false, true]) {
        await compare(name, `matMul tA=${transposeA} tB=${transposeB}`, () => {
          const a = randn(transposeA ? [k, m] : [m, k], 1);
          const b = randn(transposeB ? [n, k] : [k, n], 2);
          return tf.matMul(a, b, transposeA, transposeB);
        });
      }
    }
    await compare(name, "matMul 64x96x80", () => tf.matMul(randn([64, 96], 3), randn([96, 80], 4)));
  });

  backendTest(name, "batched matMul with broadcast batch dimensions", async () => {
    const cases: [number[], number[], boolean, boolean][] = [
      [[2, 3, 4, 5], [2, 3, 5, 6], false, false],
      [[4, 3, 5], [5, 6], false, false], // B shared: one folded gemm on blas
      [[4, 5, 3], [6, 5], true, true],
      [[3, 5], [4, 5, 6], false, false], // A shared
      [[1, 3, 5], [4, 6, 5], false, true],
    ];
    for (const [aShape, bShape, tA, tB] of cases) {
      await compare(name, `matMul [${aShape}]x[${bShape}] tA=${tA} tB=${tB}`, () => {
        return tf.matMul(randn(aShape, 5), randn(bShape, 6), tA, tB);
      });
    }
  });

  backendTest(name, "fused matMul with bias and activations, and its gradients", async () => {
    const activations: tf.fused.Activation[] = ["linear", "relu", "relu6", "elu", "sigmoid"];
    for (const activation of activations) {
      await compare(name, `fused ${activation}`, () =>
        tf.fused.matMul({
          a: randn([6, 4], 7),
          b: randn([5, 4], 8),
          transposeB: true,
          bias: randn([5], 9),
          activation,
        }));
    }
    await compare(name, "fused leakyrelu, [M,N] bias", () =>
      tf.fused.matMul({
        a: randn([6, 4], 7),
        b: randn([4, 5], 8),
        bias: randn([6, 5], 10),
        activation: "leakyrelu",
        leakyreluAlpha: 0.3,
      }));
    await compare(name, "fused prelu, scalar bias", () =>
      tf.fused.matMul({
        a: randn([6, 4], 7),
        b: randn([4, 5], 8),
        bias: tf.scalar(0.25),
        activation: "prelu",
        preluActivationWeights: randn([5], 11),
      }));
    await compare(name, "fused relu gradients", () => {
      const f = (a: tf.Tensor, b: tf.Tensor, bias: tf.Tensor) =>
        tf.sum(tf.square(
          tf.fused.matMul({ a, b, bias, activation: "relu", transposeA: true }),
        ));
      return tf.grads(f)([randn([4, 6], 12), randn([4, 5], 13), randn([5], 14)]);
    });
  });

  backendTest(name, "two-layer network loss and variable gradients match cpu", async () => {
    await compare(name, "two-layer net", () => {
      const w1 = tf.variable(randn([8, 16], 20), true, `w1_${name}_${Math.random()}`);
      const b1 = tf.variable(randn([16], 21), true, `b1_${name}_${Math.random()}`);
      const w2 = tf.variable(randn([16, 3], 22), true, `w2_${name}_${Math.random()}`);
      const x = randn([10, 8], 23);
      const labels = tf.oneHot(tf.tensor1d([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], "int32"), 3);
      const { value, grads } = tf.variableGrads(() => {
        const h = tf.fused.matMul({ a: x, b: w1, bias: b1, activation: "relu" });
        const logits = tf.matMul(h, w2);
        return tf.losses.softmaxCrossEntropy(labels, logits) as tf.Scalar;
      }, [w1, b1, w2]);
      const out = [value, grads[w1.name], grads[b1.name], grads[w2.name]];
      tf.dispose([w1, b1, w2]);
      return out;
    });
  });

  backendTest(name, "attention + embedding training step matches cpu", async () => {
    const [vocab, d, t, batch] = [30, 8, 5, 2];
    const ids = [1, 2, 3, 4, 5, 7, 7, 8, 29, 0];
    const targets = [2, 3, 4, 5, 6, 8, 8, 9, 0, 0];
    await compare(name, "attention step", () => {
      const emb = tf.variable(randn([vocab, d], 30), true, `emb_${name}_${Math.random()}`);
      const wqkv = tf.variable(randn([d, 3 * d], 31), true, `qkv_${name}_${Math.random()}`);
      const wo = tf.variable(randn([d, vocab], 32), true, `wo_${name}_${Math.random()}`);
      const mask = tf.linalg.bandPart(tf.ones([t, t]), -1, 0);
      const { value, grads } = tf.variableGrads(() => {
        const x = tf.gather(emb, tf.tensor2d(ids, [batch, t], "int32")); // [b, t, d]
        const qkv = tf.matMul(x, wqkv); // broadcast batch: exercises the patched gradient
        const [q, k, v] = tf.split(qkv, 3, -1);
        const scores = tf.add(
          tf.div(tf.matMul(q, k, false, true), Math.sqrt(d)),
          tf.mul(tf.sub(1, mask), -1e9),
        );
        const h = tf.add(x, tf.matMul(tf.softmax(scores), v));
        const logits = tf.matMul(tf.reshape(h, [batch * t, d]), wo);
        const labels = tf.oneHot(tf.tensor1d(targets, "int32"), vocab);
        return tf.losses.softmaxCrossEntropy(labels, logits) as tf.Scalar;
      }, [emb, wqkv, wo]);
      const out = [value, grads[emb.name], grads[wqkv.name], grads[wo.name]];
      tf.dispose([emb, wqkv, wo]);
      return out;
    }, 1e-3);
  });
}

Deno.test({
  name: "blas: general broadcasting ([2,1] x [1,3] batches) matches an explicit tiling",
  ignore: noBlas,
}, async () => {
  const a = () => randn([2, 1, 3, 4], 40);
  const b = () => randn([1, 3, 4, 2], 41);
  // tfjs-cpu gets this case wrong (it indexes batches modulo); tile to full batches instead.
  const expected = await on(
    "cpu",
    () => tf.matMul(tf.tile(a(), [1, 3, 1, 1]), tf.tile(b(), [2, 1, 1, 1])),
  );
  const actual = await on("blas", () => tf.matMul(a(), b()));
  assertClose(actual, expected, "blas broadcast");
});

Deno.test({
  name: "blas: its elementwise, Slice and SplitV kernels give cpu's exact results",
  ignore: noBlas,
}, async () => {
  const shapes: [number[], number[]][] = [
    [[3, 4], [3, 4]],
    [[3, 4], []],
    [[], [3, 4]],
    [[5, 6], [5, 1]],
    [[5, 6], [1, 6]],
    [[2, 1, 4], [3, 1]],
    [[2, 3, 1, 4], [1, 3, 5, 1]],
    [[0, 3], [1, 3]],
    [[], []],
  ];
  for (const [aShape, bShape] of shapes) {
    const fn = () => {
      const a = randn(aShape, 70);
      const b = tf.add(randn(bShape, 71), 2); // away from 0 for the division
      return [
        tf.add(a, b),
        tf.sub(a, b),
        tf.mul(a, b),
        tf.div(a, b),
        tf.neg(a),
        tf.maximum(a, b),
        tf.minimum(a, b),
        tf.squaredDifference(a, b),
      ];
    };
    assert.deepEqual(await on("blas", fn), await on("cpu", fn), `[${aShape}] op [${bShape}]`);
  }
  const ints = () => tf.add(tf.tensor2d([[1, 2], [3, 4]], [2, 2], "int32"), tf.scalar(3, "int32"));
  assert.deepEqual(await on("blas", ints), await on("cpu", ints));
  const slices = () => {
    const x = randn([4, 5, 6], 72);
    return [
      tf.slice(x, [1, 0, 0], [2, 5, 6]), // contiguous
      tf.slice(x, [1, 2, 3], [3, 2, 2]),
      ...tf.split(x, [1, 2, 3], -1),
      ...tf.split(x, 5, 1),
      tf.slice(tf.tensor2d([[1, 2, 3], [4, 5, 6]], [2, 3], "int32"), [0, 1], [2, 2]),
    ];
  };
  assert.deepEqual(await on("blas", slices), await on("cpu", slices));
});

/** A [-1, 1) tensor with a NaN, a -0 and repeated values in it (for exactness of edge cases). */
function special(shape: number[], seed: number): tf.Tensor {
  const v = values(tf.util.sizeFromShape(shape), seed).map((x) => Math.round(x * 8) / 8);
  if (v.length > 3) {
    v[1] = NaN;
    v[2] = -0;
  }
  return tf.tensor(v, shape);
}

Deno.test({
  name: "blas: Transpose gives cpu's exact results (head split, matrices, size-1 axes, dtypes)",
  ignore: noBlas,
}, async () => {
  const cases: [number[], number[]][] = [
    [[3, 4], [1, 0]],
    [[40, 70], [1, 0]], // several cache blocks, ragged edges
    [[2, 3, 4, 5], [0, 2, 1, 3]],
    [[2, 3, 4, 40], [0, 2, 1, 3]], // runs long enough for TypedArray.set
    [[2, 3, 4, 5], [3, 1, 0, 2]],
    [[2, 3, 4, 5], [0, 1, 3, 2]],
    [[4, 3, 2], [0, 2, 1]],
    [[2, 1, 4], [2, 1, 0]],
    [[1, 5, 1], [2, 0, 1]],
    [[2, 3, 4], [0, 1, 2]],
    [[2, 3, 4], [2, 0, 1]],
    [[0, 3], [1, 0]],
    [[1], [0]],
  ];
  for (const [shape, perm] of cases) {
    const fn = () => [
      tf.transpose(randn(shape, 80), perm),
      tf.transpose(tf.cast(tf.mul(randn(shape, 81), 100), "int32"), perm),
      tf.cast(tf.transpose(tf.greater(randn(shape, 82), 0), perm), "float32"),
    ];
    assert.deepEqual(await on("blas", fn), await on("cpu", fn), `[${shape}] perm [${perm}]`);
  }
});

Deno.test({
  name: "blas: Sum, Mean, Max, Min and Prod over any axes give cpu's exact results",
  ignore: noBlas,
}, async () => {
  const cases: [number[], (number | number[] | null)[]][] = [
    [[5, 6], [null, 0, 1, -1, [0, 1]]],
    [[2, 3, 4], [null, 0, 1, 2, -2, [0, 1], [0, 2], [1, 2], [2, 0]]],
    [[3, 1, 4], [0, 1, [0, 1], [1, 2]]],
    [[1, 7], [0, 1]],
    [[7], [0]],
    [[], [null]],
  ];
  for (const [shape, axesList] of cases) {
    for (const axes of axesList) {
      for (const keepDims of [false, true]) {
        const fn = () => {
          const x = randn(shape, 90);
          const s = special(shape, 91);
          const ints = tf.cast(tf.mul(s, 8), "int32");
          const ax = axes ?? undefined;
          return [
            tf.sum(x, ax, keepDims),
            tf.mean(x, ax, keepDims),
            tf.max(x, ax, keepDims),
            tf.min(x, ax, keepDims),
            tf.prod(tf.add(x, 1.5), ax, keepDims),
            tf.max(s, ax, keepDims),
            tf.min(s, ax, keepDims),
            tf.sum(s, ax, keepDims),
            tf.sum(ints, ax, keepDims),
            tf.mean(ints, ax, keepDims),
            tf.max(ints, ax, keepDims),
            tf.prod(ints, ax, keepDims),
            tf.sum(tf.greater(x, 0), ax, keepDims),
          ];
        };
        const label = `[${shape}] axes ${JSON.stringify(axes)} keepDims=${keepDims}`;
        assert.deepEqual(await on("blas", fn), await on("cpu", fn), label);
      }
    }
  }
  // Large enough that summation order matters in float32; 768x256 column sums as bias gradients.
  const big = () => {
    const x = randn([768, 256], 92);
    return [tf.sum(x, 0), tf.sum(x, -1), tf.mean(x, 0), tf.mean(x, -1, true), tf.sum(x)];
  };
  assert.deepEqual(await on("blas", big), await on("cpu", big));
  await compare("blas", "reduction gradients", () => {
    const f = (x: tf.Tensor) =>
      tf.add(tf.sum(tf.mul(tf.mean(x, 0), tf.max(x, 0))), tf.sum(tf.min(x, -1, true)));
    return tf.grad(f)(randn([6, 5], 93));
  });
});

Deno.test({
  name: "blas: Softmax, unary maps and comparisons give cpu's exact results",
  ignore: noBlas,
}, async () => {
  for (const shape of [[4, 7], [2, 3, 5], [1, 1], [3, 1], [6]]) {
    const fn = () => {
      const x = tf.mul(randn(shape, 100), 5);
      const masked = tf.where(tf.greater(randn(shape, 101), 0.5), tf.fill(shape, -1e9), x);
      return [tf.softmax(x), tf.softmax(masked), tf.logSoftmax(x)];
    };
    assert.deepEqual(await on("blas", fn), await on("cpu", fn), `softmax [${shape}]`);
  }
  await compare("blas", "softmax gradient", () => {
    const w = randn([3, 4, 6], 102);
    return tf.grad((x: tf.Tensor) => tf.sum(tf.mul(tf.softmax(x), w)))(randn([3, 4, 6], 103));
  });
  const unary = () => {
    const x = special([5, 9], 104);
    const pos = tf.add(tf.abs(randn([5, 9], 105)), 0.1);
    return [
      tf.exp(x),
      tf.log(pos),
      tf.log(x),
      tf.sqrt(pos),
      tf.rsqrt(pos),
      tf.square(x),
      tf.abs(x),
      tf.relu(x),
      tf.sigmoid(x),
      tf.tanh(x),
      tf.step(x),
      tf.step(x, 0.3),
      tf.relu(tf.tensor1d([3, -2, 0], "int32")),
    ];
  };
  assert.deepEqual(await on("blas", unary), await on("cpu", unary));
  const shapes: [number[], number[]][] = [
    [[3, 4], [3, 4]],
    [[3, 4], []],
    [[5, 6], [5, 1]],
    [[5, 6], [6]],
    [[2, 3, 1, 4], [1, 3, 5, 1]],
    [[0, 3], [1, 3]],
  ];
  for (const [aShape, bShape] of shapes) {
    const fn = () => {
      const a = special(aShape, 106);
      const b = special(bShape, 107);
      const ai = tf.cast(tf.mul(a, 4), "int32");
      const bi = tf.cast(tf.mul(b, 4), "int32");
      return [a, ai].flatMap((x, i) => {
        const y = i === 0 ? b : bi;
        return [
          tf.equal(x, y),
          tf.notEqual(x, y),
          tf.greater(x, y),
          tf.greaterEqual(x, y),
          tf.less(x, y),
          tf.lessEqual(x, y),
        ];
      });
    };
    assert.deepEqual(await on("blas", fn), await on("cpu", fn), `[${aShape}] cmp [${bShape}]`);
  }
});

Deno.test({
  name: "blas: GatherV2, Tile and Concat give cpu's exact results; bad indices throw",
  ignore: noBlas,
}, async () => {
  const fn = () => {
    const x = randn([6, 5, 40], 110);
    const xi = tf.cast(tf.mul(randn([6, 5], 111), 50), "int32");
    const idx = tf.tensor1d([4, 0, 0, 5, 2], "int32");
    const idx2 = tf.tensor2d([[1, 3], [0, 0], [4, 4]], [3, 2], "int32");
    return [
      tf.gather(x, idx),
      tf.gather(x, idx2),
      tf.gather(x, tf.tensor1d([4, 1], "int32"), 1),
      tf.gather(x, tf.tensor1d([39, 0, 7], "int32"), -1),
      tf.gather(xi, idx2, 0),
      tf.gather(
        xi,
        tf.tensor2d([[1, 1], [0, 4], [2, 3], [4, 0], [0, 0], [3, 3]], [6, 2], "int32"),
        1,
        1,
      ),
      tf.gather(x, tf.tensor1d([], "int32")),
      tf.tile(randn([3, 4], 112), [2, 3]),
      tf.tile(randn([24, 256], 113), [32, 1]),
      tf.tile(randn([2, 1, 3], 114), [1, 4, 2]),
      tf.tile(xi, [1, 1]),
      tf.tile(randn([5], 115), [3]),
      tf.tile(randn([2, 3], 116), [0, 2]),
      tf.concat([randn([2, 3, 40], 118), randn([2, 1, 40], 119)], 1),
      tf.concat([randn([4, 3], 120), randn([4, 5], 121), randn([4, 0], 122)], -1),
      tf.concat([randn([2, 3], 123), randn([1, 3], 124)], 0),
      tf.concat([xi, xi], 1),
      tf.concat([randn([3], 125)], 0),
      tf.concat([randn([0, 2], 126), randn([0, 3], 127)], 1),
    ];
  };
  assert.deepEqual(await on("blas", fn), await on("cpu", fn));
  await tf.setBackend("blas");
  assert.throws(
    () => tf.tidy(() => tf.gather(randn([3, 2], 117), tf.tensor1d([3], "int32"))),
    /GatherV2: the index value 3 is not in \[0, 2\]/,
  );
});

/** A small transformer policy with padding in its batch, for the blas-vs-cpu comparisons. */
function tinyTransformer(activation: "relu" | "gelu", dropout: number) {
  const { policy, specials, pairs, ids } = tinyTransformerCase(activation, dropout);
  // no padding anywhere: the attention softmax takes its unmasked path
  const even = [0, 1, 2].map(() => ({ source: ids(4), target: ids(5) }));
  return {
    policy,
    batch: makeBatch(pairs, specials),
    unpadded: makeBatch(even, specials),
    sources: pairs.map((p) => p.source),
  };
}

for (const [activation, dropout] of [["relu", 0], ["gelu", 0.2]] as const) {
  Deno.test({
    name:
      `blas: the transformer's direct OpenBLAS path matches cpu (${activation}, dropout ${dropout})`,
    ignore: noBlas,
  }, async () => {
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      const { policy, batch, unpadded, sources } = tinyTransformer(activation, dropout);
      const before = tf.memory().numTensors;
      const { value, grads } = tf.variableGrads(
        () =>
          tf.add(
            nllLoss(policy, batch, { labelSmoothing: 0.1, training: true, average: "token" }),
            nllLoss(policy, unpadded, { labelSmoothing: 0, training: true, average: "token" }),
          ) as tf.Scalar,
        policy.variables,
      );
      const lp = tf.tidy(() => policy.tokenLogProbs(batch, { training: false }));
      const out = {
        loss: value.dataSync()[0],
        logProbs: Float32Array.from(lp.dataSync()),
        grads: policy.variables.map((v) => Float32Array.from(grads[v.name].dataSync())),
        greedy: await policy.greedy(sources, { maxLen: 6 }),
        beam: await policy.beam(sources, { maxLen: 5, beamSize: 3, lengthPenalty: 0.6 }),
        samples: await policy.sample(sources, {
          maxLen: 5,
          n: 2,
          temperature: 1,
          topK: 0,
          topP: 1,
          seed: 5,
        }),
      };
      tf.dispose([value, lp, ...Object.values(grads)]);
      assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
      policy.dispose();
      return out;
    };
    const want = await run("cpu");
    const got = await run("blas");
    const close = (a: ArrayLike<number>, b: ArrayLike<number>, label: string, tol = 1e-4) => {
      assert.equal(a.length, b.length, `${label}: length`);
      for (let i = 0; i < a.length; i++) {
        const err = Math.abs(a[i] - b[i]);
        if (!(err <= tol * (1 + Math.abs(b[i])))) {
          assert.fail(`${label}[${i}]: blas ${a[i]}, cpu ${b[i]}`);
        }
      }
    };
    close([got.loss], [want.loss], "loss", 1e-5);
    close(got.logProbs, want.logProbs, "token log-probs", 1e-5);
    got.grads.forEach((g, i) => close(g, want.grads[i], `gradient ${i}`));
    for (const key of ["greedy", "beam"] as const) {
      got[key].forEach((g, i) => {
        assert.deepEqual(g.tokens, want[key][i].tokens, `${key} ${i}: tokens`);
        close(g.logProbs, want[key][i].logProbs, `${key} ${i}: log-probs`, 1e-5);
      });
    }
    got.samples.forEach((row, i) =>
      row.forEach((g, j) => {
        assert.deepEqual(g.tokens, want.samples[i][j].tokens, `sample ${i}/${j}: tokens`);
        close(g.logProbs, want.samples[i][j].logProbs, `sample ${i}/${j}: log-probs`, 1e-5);
      })
    );
    await tf.setBackend("cpu");
  });
}

Deno.test("SIMD row kernels match plain loops (max, sum of exp, exp, first argmax)", () => {
  const rng = new Rng(9);
  for (const [rows, n] of [[3, 1], [4, 7], [5, 8], [2, 37], [70, 1003], [2, 70000]]) {
    const x = Float32Array.from({ length: rows * n }, () => (rng.next() - 0.5) * 60);
    if (n > 3) {
      x[2] = -Infinity;
      x[n + 1] = x[n]; // a tie: the first index wins
    }
    const maxs = new Float64Array(rows);
    const sums = new Float64Array(rows);
    const maxs2 = new Float64Array(rows);
    const sums2 = new Float64Array(rows);
    const arg = new Int32Array(rows);
    const exps = new Float32Array(rows * n);
    rowExpSums(x, 0, rows, n, maxs, sums, exps);
    rowArgmaxExpSums(x, 0, rows, n, maxs2, sums2, arg);
    for (let r = 0; r < rows; r++) {
      let max = -Infinity;
      let best = -1;
      for (let j = 0; j < n; j++) {
        if (x[r * n + j] > max) {
          max = x[r * n + j];
          best = j;
        }
      }
      let sum = 0;
      for (let j = 0; j < n; j++) {
        const y = x[r * n + j] - max;
        const e = Math.exp(y);
        sum += e;
        // float32 precision, plus the rounding of x - max to float32 (relative 6e-8 |y|)
        const tol = e === 0 ? 0 : (3e-7 + 1.2e-7 * Math.abs(y)) * e + 1e-37;
        const err = Math.abs(exps[r * n + j] - e);
        assert.ok(err <= tol, `exp row ${r} col ${j}: ${exps[r * n + j]} vs ${e}`);
      }
      assert.equal(maxs[r], max);
      assert.equal(maxs2[r], max);
      assert.equal(arg[r], best, `argmax row ${r}`);
      assert.ok(Math.abs(sums[r] - sum) <= 1e-6 * sum, `sum row ${r}: ${sums[r]} vs ${sum}`);
      assert.equal(sums2[r], sums[r]);
    }
  }
  // the offset selects rows; the maximum skips NaN (as `v > max` does), the sum is NaN
  const y = Float32Array.from([9, 9, 1, 2, 3, NaN, 0, 1, NaN, NaN, NaN, 5, 6, NaN, 7, 8]);
  const m = new Float64Array(3);
  const s = new Float64Array(3);
  const a = new Int32Array(3);
  rowArgmaxExpSums(y, 2, 3, 3, m, s, a);
  assert.deepEqual(Array.from(m), [3, 1, -Infinity]);
  assert.deepEqual(Array.from(a), [2, 2, -1]);
  assert.ok(Math.abs(s[0] - (Math.exp(-2) + Math.exp(-1) + 1)) < 1e-6);
  assert.ok(Number.isNaN(s[1]) && Number.isNaN(s[2]));
  rowArgmaxExpSums(y, 8, 2, 4, m, s, a);
  assert.deepEqual(Array.from(m.subarray(0, 2)), [5, 8]);
  assert.deepEqual(Array.from(a.subarray(0, 2)), [3, 3]);
});

/** Largest |a - b| / (atol + rtol |b|) over the elements; <= 1 means close. */
function worst(a: ArrayLike<number>, b: ArrayLike<number>, rtol: number, atol: number): number {
  assert.equal(a.length, b.length, "lengths");
  let w = 0;
  for (let i = 0; i < a.length; i++) {
    const err = Math.abs(a[i] - b[i]) / (atol + rtol * Math.abs(b[i]));
    if (!(err <= w)) w = Number.isNaN(err) ? Infinity : err;
  }
  return w;
}

Deno.test("SIMD layer norm and its backward pass match double-precision loops", () => {
  const rng = new Rng(21);
  for (const [rows, d, residual] of [[3, 8, false], [300, 256, true], [5, 12, true]] as const) {
    const x = Float32Array.from({ length: rows * d }, () => (rng.next() - 0.5) * 6 + 1);
    const g = Float32Array.from({ length: d }, () => rng.next() + 0.5);
    const beta = Float32Array.from({ length: d }, () => rng.next() - 0.5);
    const dy = Float32Array.from({ length: rows * d }, () => rng.next() - 0.5);
    const res = residual ? Float32Array.from({ length: rows * d }, () => rng.next()) : undefined;
    const y = new Float32Array(rows * d);
    const xhat = new Float32Array(rows * d);
    const rstd = new Float32Array(rows);
    simdLayerNorm(x, d, g, beta, 1e-5, y, xhat, rstd);
    const dx = new Float32Array(rows * d);
    const dg = new Float32Array(d).fill(0.25);
    const db = new Float32Array(d).fill(-0.5);
    simdLayerNormBackward(dy, d, g, xhat, rstd, dg, db, dx, res);
    const want = {
      y: [] as number[],
      dx: [] as number[],
      dg: new Array<number>(d).fill(0.25),
      db: new Array<number>(d).fill(-0.5),
    };
    for (let r = 0; r < rows; r++) {
      const row = Array.from(x.subarray(r * d, r * d + d));
      const mean = row.reduce((a, b) => a + b, 0) / d;
      const s = 1 / Math.sqrt(row.reduce((a, v) => a + (v - mean) ** 2, 0) / d + 1e-5);
      const h = row.map((v) => (v - mean) * s);
      h.forEach((hj, j) => want.y.push(hj * g[j] + beta[j]));
      const gy = h.map((_, j) => dy[r * d + j] * g[j]);
      const a = gy.reduce((p, v) => p + v, 0) / d;
      const c = gy.reduce((p, v, j) => p + v * h[j], 0) / d;
      h.forEach((hj, j) => {
        want.dx.push(s * (gy[j] - a - hj * c) + (res ? res[r * d + j] : 0));
        want.dg[j] += dy[r * d + j] * hj;
        want.db[j] += dy[r * d + j];
      });
      assert.ok(Math.abs(rstd[r] - s) <= 1e-5 * s, `rstd row ${r}`);
    }
    assert.ok(worst(y, want.y, 1e-5, 1e-5) <= 1, `layer norm ${rows}x${d}`);
    assert.ok(worst(dx, want.dx, 1e-4, 1e-5) <= 1, `dx ${rows}x${d}`);
    assert.ok(worst(dg, want.dg, 1e-4, 1e-4) <= 1, `dGamma ${rows}x${d}`);
    assert.ok(worst(db, want.db, 1e-4, 1e-4) <= 1, `dBeta ${rows}x${d}`);
  }
});

Deno.test("SIMD cached attention matches the scalar attendOne, masks included", () => {
  const rng = new Rng(23);
  const [heads, dk, n, maxN] = [3, 8, 5, 7];
  const headStride = maxN * dk;
  const q = Float32Array.from({ length: heads * dk }, () => rng.next() - 0.5);
  const keys = Float32Array.from({ length: heads * headStride }, () => rng.next() * 2 - 1);
  const vals = Float32Array.from({ length: heads * headStride }, () => rng.next() * 2 - 1);
  const mark = simdMark();
  try {
    const qOff = simdAlloc(4 * q.length);
    const kOff = simdAlloc(4 * keys.length);
    const vOff = simdAlloc(4 * vals.length);
    const mOff = simdAlloc(n);
    const sOff = simdAlloc(4 * maxN);
    const oOff = simdAlloc(4 * heads * dk);
    const f = simdF32();
    f.set(q, qOff / 4);
    f.set(keys, kOff / 4);
    f.set(vals, vOff / 4);
    for (const mask of [null, Uint8Array.from([1, 0, 1, 1, 0]), new Uint8Array(n)]) {
      if (mask !== null) simdU8().set(mask, mOff);
      simdAttend(qOff, kOff, vOff, 4 * headStride, n, mask ? mOff : 0, heads, dk, 0.3, sOff, oOff);
      const want = new Float32Array(heads * dk);
      const scratch = new Float64Array(maxN);
      attendOne(
        q,
        0,
        keys,
        vals,
        0,
        headStride,
        n,
        mask,
        0,
        heads,
        dk,
        0.3,
        scratch,
        new Float64Array(dk),
        new Float64Array(dk),
        want,
        0,
      );
      const got = simdF32().subarray(oOff / 4, oOff / 4 + heads * dk);
      assert.ok(worst(got, want, 1e-5, 1e-6) <= 1, `attention with mask ${mask}`);
    }
  } finally {
    simdRelease(mark);
  }
});

Deno.test("SimdMatrix: in-place row statistics, ReLU and its gradient, scale-shift", () => {
  const rng = new Rng(24);
  const [rows, n] = [6, 13];
  const m = new SimdMatrix(rows, n, 1);
  const x = Float32Array.from({ length: rows * n }, () => (rng.next() - 0.5) * 20);
  m.data.set(x);
  const maxs = new Float64Array(rows);
  const sums = new Float64Array(rows);
  const arg = new Int32Array(rows);
  const maxs2 = new Float64Array(rows);
  const sums2 = new Float64Array(rows);
  const arg2 = new Int32Array(rows);
  rowArgmaxExpSums(m.data, 0, rows, n, maxs, sums, arg); // in place (owner path)
  rowArgmaxExpSums(Float32Array.from(x), 0, rows, n, maxs2, sums2, arg2); // copied path
  assert.deepEqual([maxs, sums, arg], [maxs2, sums2, arg2]);
  const exps = Float32Array.from(x);
  rowExpSums(exps, 0, rows, n, maxs2, sums2, exps);
  rowExpSums(m.data, 0, rows, n, maxs, sums, m.data);
  assert.deepEqual(m.data, exps);
  const k = Float64Array.from({ length: rows }, (_, i) => i - 2.5);
  const c = Float64Array.from({ length: rows }, (_, i) => 0.5 * i);
  m.scaleShift(rows, k, c);
  for (let i = 0; i < rows * n; i++) {
    const r = Math.floor(i / n);
    assert.ok(Math.abs(m.data[i] - (exps[i] * k[r] + c[r])) <= 1e-6 * (1 + Math.abs(c[r])));
  }
  const y = m.slot(0);
  y.set([-1, 0, -0, 2, NaN, 3, -5, 1e-30, -1e-30, 4, 5, 6, 7]);
  m.relu(0, 13);
  assert.deepEqual(
    Array.from(y.subarray(0, 13)),
    [0, 0, 0, 2, NaN, 3, 0, 1e-30, 0, 4, 5, 6, 7]
      .map((v) => Math.fround(v)),
  );
  const dy = m.slot(1);
  dy.fill(2);
  dy[4] = 7;
  m.reluGrad(1, 0);
  assert.deepEqual(Array.from(dy.subarray(0, 13)), [0, 0, 0, 2, 0, 2, 0, 2, 0, 2, 2, 2, 2]);
});

Deno.test("SimdMatrix softmax rows (plain and causal) and their backward match the JS kernels", () => {
  const rng = new Rng(25);
  const [b, heads, tq, sk] = [2, 3, 5, 5];
  const rows = b * heads * tq;
  for (const causal of [false, true]) {
    const m = new SimdMatrix(rows, sk, 1);
    const x = Float32Array.from({ length: rows * sk }, () => (rng.next() - 0.5) * 8);
    const dp = Float32Array.from({ length: rows * sk }, () => rng.next() - 0.5);
    m.slot(0).set(x);
    m.slot(1).set(dp);
    const want = Float32Array.from(x);
    maskedSoftmaxInPlace(want, b, heads, tq, sk, null, causal);
    m.softmax(0, tq, causal);
    assert.ok(worst(m.slot(0), want, 1e-6, 1e-7) <= 1, `softmax causal=${causal}`);
    const wantGrad = Float32Array.from(dp);
    softmaxBackwardInPlace(want, wantGrad, sk, 1);
    m.softmaxGrad(0, 1);
    assert.ok(worst(m.slot(1), wantGrad, 1e-5, 1e-7) <= 1, `softmax gradient causal=${causal}`);
  }
});

Deno.test("the embedded SIMD module was built from the current simd.wat", async () => {
  const source = await Deno.readTextFile(
    new URL("../../plugins/_nn/simd.wat", import.meta.url),
  );
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(source)),
  );
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(hex, SIMD_SOURCE_SHA256, "rebuild with: deno run --no-lock -A bench/simd/build.ts");
});

Deno.test("work-buffer pool: views and repeats are refused, sizes are kept apart", () => {
  const a = takeBuffer(1234);
  giveBuffer(a);
  giveBuffer(a); // a repeat is ignored
  giveBuffer(new Float32Array(4000).subarray(0, 1234)); // views are never pooled
  const b = takeBuffer(1234);
  const c = takeBuffer(1234);
  assert.equal(b, a);
  assert.notEqual(c, a);
  assert.equal(c.length, 1234);
  assert.equal(c.buffer.byteLength, 1234 * 4);
  assert.equal(takeBuffer(17).length, 17);
});

Deno.test({ name: "blas: BackendInfo names OpenBLAS and its threads", ignore: noBlas }, () => {
  assert.equal(blasInfo!.tfBackend, "blas");
  assert.ok(blasInfo!.threads >= 1);
  assert.match(blasInfo!.detail ?? "", /BatchMatMul/);
});

Deno.test("blas: a missing library is a UserError that says how to install OpenBLAS", async () => {
  const error = await init(blas, { libraryPath: "/nonexistent/libopenblas.so.0" }).then(
    () => assert.fail("init should have thrown"),
    (err) => err,
  );
  assert.ok(error instanceof UserError, String(error));
  assert.match(error.message, /\/nonexistent\/libopenblas\.so\.0/);
  assert.match(error.message, /apt-get install libopenblas0-pthread/);
});

Deno.test(
  { name: "sgemm: strides, subarrays, transposes and bounds checks", ignore: noBlas },
  () => {
    const lib = loadBlas();
    // A = [[1,2],[3,4]] stored with a padding column (lda = 3) after one leading pad element.
    const aStore = new Float32Array([9, 1, 2, 9, 3, 4, 9]);
    const c = new Float32Array(4).fill(1);
    sgemm({
      m: 2,
      n: 2,
      k: 2,
      a: aStore.subarray(1),
      lda: 3,
      b: new Float32Array([1, 0, 0, 1]),
      c,
      transA: true,
      alpha: 2,
      beta: 1,
    }, lib);
    assert.deepEqual([...c], [3, 7, 5, 9]); // 2 * A^T + 1
    assert.throws(
      () => sgemm({ m: 3, n: 2, k: 2, a: new Float32Array(4), b: new Float32Array(4), c }, lib),
      RangeError,
    );
    const empty = new Float32Array(4).fill(5);
    sgemm({ m: 2, n: 2, k: 0, a: new Float32Array(0), b: new Float32Array(0), c: empty }, lib);
    assert.deepEqual([...empty], [0, 0, 0, 0]);
  },
);

Deno.test("wasm: reports the JS kernels it added, UnsortedSegmentSum among them", () => {
  assert.equal(wasmInfo.tfBackend, "wasm");
  assert.equal(wasmInfo.threads, 1);
  assert.match(wasmInfo.detail ?? "", /UnsortedSegmentSum/);
});

Deno.test("wasm: gather gradient and bridged Einsum match cpu", async () => {
  await compare("wasm", "gather grad", () => {
    const e = randn([6, 3], 50);
    const idx = tf.tensor1d([1, 1, 4, 5, 0, 1], "int32");
    return tf.grad((x: tf.Tensor) => tf.sum(tf.mul(tf.gather(x, idx), randn([6, 3], 51))))(e);
  });
  await compare(
    "wasm",
    "einsum",
    () => tf.einsum("ij,jk->ik", randn([3, 4], 52), randn([4, 2], 53)),
  );
});

Deno.test("wasm: threads > 1 is a clear UserError", async () => {
  await assert.rejects(init(wasm, { threads: 2 }), (err: Error) => {
    assert.ok(err instanceof UserError);
    assert.match(err.message, /not supported under Deno/);
    return true;
  });
});

Deno.test("cpu: the O(n) UnsortedSegmentSum gives the stock kernel's exact results", async () => {
  const fn = () =>
    tf.unsortedSegmentSum(
      randn([40, 7], 60),
      tf.tensor1d(
        Array.from({ length: 40 }, (_, i) => (i * 7) % 13 - 1), // includes -1: dropped
        "int32",
      ),
      12,
    );
  useFastSegmentSumOnCpu(false);
  const stock = await on("cpu", fn);
  useFastSegmentSumOnCpu(true);
  const fast = await on("cpu", fn);
  assert.deepEqual(fast, stock);
});

Deno.test("tensorflow: without tfjs-node, init fails fast with an install hint", async () => {
  if (probeTensorflow("tfjs-node-gpu").dir || probeTensorflow("tfjs-node").dir) return; // installed
  const start = performance.now();
  const error = await init(tensorflow).then(() => assert.fail("init should have thrown"), (e) => e);
  assert.ok(error instanceof UserError, String(error));
  assert.match(error.message, /@tensorflow\/tfjs-node-gpu: not installed/);
  // A copy in Deno's npm cache whose install script never ran counts as not installed.
  assert.match(error.message, /@tensorflow\/tfjs-node: (not installed|\S+ has no native addon)/);
  assert.match(error.message, /libtensorflow/);
  assert.match(error.message, /blas, wasm or cpu/);
  assert.ok(performance.now() - start < 2000, "should not try the network");
});

Deno.test("tensorflow: a copy without its native addon is reported as such", () => {
  const dir = Deno.makeTempDirSync();
  const pkg = `${dir}/node_modules/@tensorflow/tfjs-node`;
  Deno.mkdirSync(pkg, { recursive: true });
  Deno.writeTextFileSync(`${pkg}/package.json`, JSON.stringify({ version: "4.22.0" }));
  const cwd = Deno.cwd();
  Deno.chdir(dir);
  try {
    const probe = probeTensorflow("tfjs-node");
    assert.equal(probe.dir, undefined);
    assert.match(probe.reason ?? "", /no native addon/);
  } finally {
    Deno.chdir(cwd);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("auto: picks the first backend that works and explains the others", async () => {
  const info = await init(auto);
  assert.ok(["tensorflow", "blas", "wasm", "cpu"].includes(info.name));
  assert.match(info.detail ?? "", /^auto: tensorflow: /);
  if (info.name !== "tensorflow") assert.match(info.detail ?? "", /tfjs-node not installed|addon/);
  assert.match(info.detail ?? "", new RegExp(`${info.name}: chosen`));
  const plain = await init(auto, { tryTensorflow: false, tryBlas: false, tryWasm: false });
  assert.equal(plain.name, "cpu");
  assert.match(plain.detail ?? "", /tensorflow: disabled by config/);
  await tf.setBackend("cpu");
});

Deno.test("backend plugins: names match file stems and configs have defaults", () => {
  const plugins: [string, PluginDefinition][] = [
    ["auto", auto],
    ["blas", blas],
    ["cpu", cpu],
    ["tensorflow", tensorflow],
    ["wasm", wasm],
  ];
  for (const [stem, plugin] of plugins) {
    assert.equal(plugin.kind, "backend");
    assert.equal(plugin.name, stem);
    assert.equal(plugin.configSchema.additionalProperties, false);
  }
});
