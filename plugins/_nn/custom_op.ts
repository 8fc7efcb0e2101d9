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
 * Whether a gradient tape is recording (inside `tf.grad`, `tf.variableGrads`, ...). An op
 * run while none is can never have its backward pass run.
 */
export function recordingGradients(): boolean {
  return tf.engine().state.gradientDepth > 0;
}

/** What the forward pass of a {@link customOp} returns. */
export interface CustomOpResult {
  /** The output buffer (the op's output tensor takes it over). */
  out: Float32Array;
  /** The output's shape. */
  shape: number[];
  /** The backward pass: one gradient buffer per input (run at most once). */
  backward: (dy: Float32Array) => Float32Array[];
  /**
   * Gives back the work buffers kept for the backward pass, when none will run (called by
   * {@link customOp} right after the forward pass when no gradient tape is recording).
   */
  release?: () => void;
}

/**
 * Wraps a hand-written forward/backward pair as a differentiable op over `inputs`.
 * `forward` receives the input tensors and returns the output buffer, its shape, a
 * backward function giving one gradient buffer per input and, optionally, a `release`
 * that returns what the backward pass would have read to the pools. Outside a gradient
 * tape (scoring, evaluation) `release` runs at once, so a forward-only pass reuses the
 * buffers of the one before instead of faulting in fresh memory.
 */
export function customOp(
  inputs: tf.Tensor[],
  forward: (inputs: tf.Tensor[]) => CustomOpResult,
): tf.Tensor {
  const op = tf.customGrad((...args: unknown[]) => {
    const ins = args.slice(0, inputs.length) as tf.Tensor[];
    const res = forward(ins);
    if (!recordingGradients()) res.release?.();
    const gradFunc: GradFunc = (dy) => {
      const grads = res.backward(values(dy));
      return grads.map((g, i) => tf.tensor(g, ins[i].shape, "float32"));
    };
    return { value: tf.tensor(res.out, res.shape, "float32"), gradFunc };
  });
  return op(...inputs);
}
