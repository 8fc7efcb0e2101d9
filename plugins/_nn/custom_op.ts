/**
 * The bridge between tfjs tensors and the hand-written kernels, which work on plain
 * `Float32Array`s: {@link values} reads a tensor's own buffer, and {@link customOp} wraps a
 * forward pass over buffers and its hand-written backward pass as one differentiable tfjs
 * op (`tf.customGrad`), so a whole layer is a single node on the autodiff tape.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/** The values of a float32 tensor (tfjs-cpu's own buffer: never mutate it). */
export function values(t: tf.Tensor): Float32Array {
  return t.dataSync() as Float32Array;
}

type GradFunc = (dy: tf.Tensor) => tf.Tensor[];

/**
 * Wraps a hand-written forward/backward pair as a differentiable op over `inputs`.
 * `forward` receives the input tensors and returns the output buffer, its shape and a
 * backward function giving one gradient buffer per input.
 */
export function customOp(
  inputs: tf.Tensor[],
  forward: (
    inputs: tf.Tensor[],
  ) => { out: Float32Array; shape: number[]; backward: (dy: Float32Array) => Float32Array[] },
): tf.Tensor {
  const op = tf.customGrad((...args: unknown[]) => {
    const ins = args.slice(0, inputs.length) as tf.Tensor[];
    const res = forward(ins);
    const gradFunc: GradFunc = (dy) => {
      const grads = res.backward(values(dy));
      return grads.map((g, i) => tf.tensor(g, ins[i].shape, "float32"));
    };
    return { value: tf.tensor(res.out, res.shape, "float32"), gradFunc };
  });
  return op(...inputs);
}
