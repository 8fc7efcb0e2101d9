/**
 * `optimizerStep`'s diagnostics: what a loss records (numbers, or scalar tensors through
 * the recorder's `tensor`) reaches `onRecord` as numbers, in order, after the step; the
 * recorded tensors are freed, also when the loss throws; `recordScalar` hands a tensor to
 * a recorder that takes one and reads the value for one that does not.
 */

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { Adam } from "../../core/optim.ts";
import { optimizerStep, recordScalar } from "../../core/train.ts";
import type { LossRecorder } from "../../core/types.ts";

await (await (await import("../../plugins/backends/cpu.ts")).default.create(
  { fastSegmentSum: true },
  {} as never,
)).init();

Deno.test("optimizerStep reads recorded numbers and tensors after the step, in order, and frees them", async () => {
  const w = tf.variable(tf.tensor1d([1, -2, 3]));
  const adam = new Adam([w]);
  const before = tf.memory().numTensors;
  const seen: [string, number][] = [];
  const result = await optimizerStep(
    [w],
    adam,
    (record) => {
      const squares = tf.sum(tf.square(w));
      record("first", 7);
      recordScalar(record, "norm2", squares);
      recordScalar(record, "max", tf.max(w));
      record("last", -1);
      return squares as tf.Scalar;
    },
    0.1,
    0,
    (name, value) => seen.push([name, value]),
  );
  assert.deepEqual(seen, [["first", 7], ["norm2", 14], ["max", 3], ["last", -1]]);
  assert.equal(result.loss, 14);
  assert.ok(result.applied);
  assert.equal(tf.memory().numTensors, before, "recorded tensors are freed");
  adam.dispose();
  w.dispose();
});

Deno.test("optimizerStep frees the tensors recorded before the loss threw", async () => {
  const w = tf.variable(tf.tensor1d([1, 2]));
  const adam = new Adam([w]);
  let recorded: tf.Tensor | undefined;
  await assert.rejects(
    () =>
      optimizerStep(
        [w],
        adam,
        (record) => {
          recorded = tf.sum(w);
          recordScalar(record, "sum", recorded);
          throw new RangeError("broken loss");
        },
        0.1,
        0,
      ),
    /broken loss/,
  );
  // (tfjs itself keeps one tensor of a gradient pass that throws, so count this one alone.)
  assert.ok(recorded !== undefined && recorded.isDisposed, "the recorded tensor is freed");
  adam.dispose();
  w.dispose();
});

Deno.test("recordScalar gives a tensor to a recorder that takes one, else the number", () => {
  const got: [string, number | tf.Scalar][] = [];
  const plain: LossRecorder = (name: string, value: number) => void got.push([name, value]);
  tf.tidy(() => recordScalar(plain, "a", tf.scalar(2.5)));
  const withTensors: LossRecorder = (name: string, value: number) => void got.push([name, value]);
  withTensors.tensor = (name, value) => void got.push([name, value]);
  tf.tidy(() => recordScalar(withTensors, "b", tf.scalar(4)));
  assert.equal(got[0][1], 2.5);
  const kept = got[1][1] as tf.Scalar;
  assert.ok(kept instanceof tf.Tensor, "a tensor");
  assert.equal(kept.isDisposed, false, "kept out of the tidy");
  assert.equal(kept.dataSync()[0], 4);
  kept.dispose();
});
