/**
 * Adam with a per-step learning rate, global-norm gradient clipping and learning-rate
 * schedules. Written here (not tf.train.adam) so the rate can change every step and the
 * optimizer state can be saved with a checkpoint and restored on resume.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { Schedule } from "./types.ts";

/** Adam hyper-parameters (Kingma & Ba 2015). */
export interface AdamOptions {
  /** First-moment decay. */
  beta1: number;
  /** Second-moment decay. */
  beta2: number;
  /** Denominator epsilon. */
  epsilon: number;
  /** Decoupled weight decay (AdamW); 0 for plain Adam. */
  weightDecay: number;
}

/** Default Adam settings (beta2 0.98 as in Vaswani et al. 2017 for transformers). */
export const ADAM_DEFAULTS: AdamOptions = {
  beta1: 0.9,
  beta2: 0.98,
  epsilon: 1e-9,
  weightDecay: 0,
};

/**
 * Backends whose tensors live on a device, not in JavaScript memory: there the update runs
 * as tfjs ops, since reading the weights back to the host each step would cost more.
 */
const DEVICE_BACKENDS = new Set(["webgpu", "webgl", "tensorflow"]);

/** Backends whose tensors JavaScript cannot read synchronously (`dataSync`) under Deno. */
const ASYNC_READ_BACKENDS = new Set(["webgpu"]);

/**
 * Whether tfjs backend `name` (default: the active one) can read tensors only
 * asynchronously (`await data()`): WebGPU under Deno, where tfjs's synchronous read needs
 * `OffscreenCanvas`. Code that reads tensors on the host must await them first there.
 */
export function readsOnlyAsync(name: string = tf.getBackend()): boolean {
  return ASYNC_READ_BACKENDS.has(name);
}

/**
 * Adam over a fixed list of variables. On host-memory backends (cpu, blas, wasm) the update
 * is one fused loop per variable over its weights, gradient and moment estimates (about
 * eight times faster than the dozen tfjs element-wise ops per variable it replaces); on
 * device backends it runs as tfjs ops. Both compute the same update.
 */
export class Adam {
  readonly #variables: tf.Variable[];
  /** Host moments (host backends): first and second, one array per variable. */
  readonly #m: Float32Array[] = [];
  readonly #v: Float32Array[] = [];
  /** Device moments (device backends): they stay on the device between steps. */
  readonly #dm: tf.Variable[] = [];
  readonly #dv: tf.Variable[] = [];
  readonly #options: AdamOptions;
  readonly #onDevice: boolean;
  /** Number of updates applied so far. */
  step = 0;

  /**
   * Creates zeroed moment estimates for `variables`, where the active backend keeps its
   * tensors. `placement` forces the host loop or the tfjs-op update (default: by backend;
   * the tests compare the two).
   */
  constructor(
    variables: readonly tf.Variable[],
    options: Partial<AdamOptions> = {},
    placement: "auto" | "host" | "device" = "auto",
  ) {
    this.#variables = [...variables];
    this.#options = { ...ADAM_DEFAULTS, ...options };
    this.#onDevice = placement === "auto"
      ? DEVICE_BACKENDS.has(tf.getBackend())
      : placement === "device";
    for (const v of this.#variables) {
      if (this.#onDevice) {
        // tidy frees the zero tensors; the variables (which copy them) survive it.
        tf.tidy(() => {
          this.#dm.push(tf.variable(tf.zerosLike(v), false));
          this.#dv.push(tf.variable(tf.zerosLike(v), false));
        });
      } else {
        this.#m.push(new Float32Array(v.size));
        this.#v.push(new Float32Array(v.size));
      }
    }
  }

  /**
   * Applies one update with learning rate `lr`. `grads[i]` belongs to the i-th variable;
   * missing gradients (variables the loss does not touch) are skipped.
   */
  apply(grads: readonly (tf.Tensor | undefined)[], lr: number): void {
    if (grads.length !== this.#variables.length) {
      throw new RangeError(`${grads.length} gradients for ${this.#variables.length} variables`);
    }
    this.step++;
    const { beta1, beta2 } = this.#options;
    const stepSize = lr * Math.sqrt(1 - beta2 ** this.step) / (1 - beta1 ** this.step);
    for (let i = 0; i < this.#variables.length; i++) {
      const g = grads[i];
      if (g === undefined) continue;
      if (this.#onDevice) {
        this.#deviceUpdate(i, g, stepSize, lr);
        continue;
      }
      const next = tf.tensor(this.#hostUpdate(i, g, stepSize, lr), g.shape, "float32");
      this.#variables[i].assign(next);
      next.dispose();
    }
  }

  /**
   * The new weights of variable `i`: m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
   * w <- w - stepSize m / (sqrt(v) + eps) - lr wd w, one pass over the arrays.
   */
  #hostUpdate(i: number, grad: tf.Tensor, stepSize: number, lr: number): Float32Array {
    const { beta1, beta2, epsilon, weightDecay } = this.#options;
    const w = this.#variables[i].dataSync() as Float32Array;
    const g = grad.dataSync() as Float32Array;
    const m = this.#m[i];
    const v = this.#v[i];
    const out = new Float32Array(w.length);
    const a1 = 1 - beta1;
    const a2 = 1 - beta2;
    const decay = lr * weightDecay;
    for (let j = 0; j < w.length; j++) {
      const gj = g[j];
      const mj = beta1 * m[j] + a1 * gj;
      const vj = beta2 * v[j] + a2 * gj * gj;
      m[j] = mj;
      v[j] = vj;
      out[j] = w[j] - stepSize * mj / (Math.sqrt(vj) + epsilon) - decay * w[j];
    }
    return out;
  }

  /** The same update as {@link Adam.#hostUpdate} as tfjs ops; nothing leaves the device. */
  #deviceUpdate(i: number, grad: tf.Tensor, stepSize: number, lr: number): void {
    const { beta1, beta2, epsilon, weightDecay } = this.#options;
    const variable = this.#variables[i];
    tf.tidy(() => {
      const m = tf.add(tf.mul(this.#dm[i], beta1), tf.mul(grad, 1 - beta1));
      const v = tf.add(tf.mul(this.#dv[i], beta2), tf.mul(tf.square(grad), 1 - beta2));
      this.#dm[i].assign(m);
      this.#dv[i].assign(v);
      const update = tf.div(tf.mul(m, stepSize), tf.add(tf.sqrt(v), epsilon));
      variable.assign(tf.sub(tf.sub(variable, update), tf.mul(variable, lr * weightDecay)));
    });
  }

  /**
   * The moment estimates and step, for checkpoints (copies). Asynchronous because device
   * moments are read back with `data()`: WebGPU under Deno has no synchronous read.
   */
  async state(): Promise<{ step: number; m: Float32Array[]; v: Float32Array[] }> {
    const step = this.step;
    if (!this.#onDevice) {
      return { step, m: this.#m.map((a) => a.slice()), v: this.#v.map((a) => a.slice()) };
    }
    const read = (device: tf.Variable[]) =>
      Promise.all(device.map(async (t) => Float32Array.from(await t.data() as Float32Array)));
    const [m, v] = await Promise.all([read(this.#dm), read(this.#dv)]);
    return { step, m, v };
  }

  /** Restores a state from {@link Adam.state}. */
  restore(state: { step: number; m: Float32Array[]; v: Float32Array[] }): void {
    const n = this.#variables.length;
    if (state.m.length !== n || state.v.length !== n) {
      throw new RangeError("optimizer state does not match the model's variables");
    }
    for (let i = 0; i < n; i++) {
      const size = this.#variables[i].size;
      if (state.m[i].length !== size || state.v[i].length !== size) {
        throw new RangeError(
          `optimizer state of variable ${i} has ${state.m[i].length} values, the variable ` +
            `${size}`,
        );
      }
    }
    this.step = state.step;
    for (let i = 0; i < n; i++) {
      if (this.#onDevice) {
        const shape = this.#variables[i].shape;
        tf.tidy(() => {
          this.#dm[i].assign(tf.tensor(state.m[i], shape));
          this.#dv[i].assign(tf.tensor(state.v[i], shape));
        });
      } else {
        this.#m[i].set(state.m[i]);
        this.#v[i].set(state.v[i]);
      }
    }
  }

  /** Drops the moment estimates; the optimizer is not used afterwards. */
  dispose(): void {
    tf.dispose([...this.#dm, ...this.#dv]);
    this.#dm.length = 0;
    this.#dv.length = 0;
    this.#m.length = 0;
    this.#v.length = 0;
  }
}

/**
 * Scales gradients so their global L2 norm is at most `maxNorm` (no-op for maxNorm <= 0).
 * Returns the clipped gradients (new tensors) and the norm before clipping.
 */
export function clipByGlobalNorm(
  grads: readonly tf.Tensor[],
  maxNorm: number,
): { grads: tf.Tensor[]; norm: number } {
  const squared = globalNormSquared(grads);
  const norm = Math.sqrt(squared.dataSync()[0]);
  squared.dispose();
  return clipToNorm(grads, norm, maxNorm);
}

/**
 * The squared global L2 norm of `grads`, as a scalar tensor the caller disposes. Summed
 * pairwise, not with `addN`: tfjs-webgpu's AddN binds every input to one shader, and past
 * the adapter's storage-buffer limit that shader is invalid and its command buffer (with the
 * loss computed in it) silently yields zeros.
 */
export function globalNormSquared(grads: readonly tf.Tensor[]): tf.Scalar {
  return tf.tidy(() =>
    grads.map((g) => tf.sum(tf.square(g))).reduce((a, b) => tf.add(a, b), tf.scalar(0))
  ) as tf.Scalar;
}

/**
 * {@link clipByGlobalNorm} given the norm (e.g. read asynchronously from
 * {@link globalNormSquared}): new tensors scaled to at most `maxNorm`.
 */
export function clipToNorm(
  grads: readonly tf.Tensor[],
  norm: number,
  maxNorm: number,
): { grads: tf.Tensor[]; norm: number } {
  if (!(maxNorm > 0) || norm <= maxNorm || !Number.isFinite(norm)) {
    return { grads: grads.map((g) => tf.clone(g)), norm };
  }
  const scale = maxNorm / norm;
  return { grads: grads.map((g) => tf.mul(g, scale)), norm };
}

/**
 * The learning rate at `step` (1-based): linear warm-up over `warmup` steps to `peak`, then
 * the schedule's decay over the remaining steps up to `total` (`inverse_sqrt` decays as
 * sqrt(warmup / step), Vaswani et al. 2017).
 */
export function learningRate(
  step: number,
  options: { peak: number; warmup: number; total: number; schedule: Schedule; minRatio?: number },
): number {
  const { peak, warmup, total, schedule } = options;
  const floor = peak * (options.minRatio ?? 0);
  if (warmup > 0 && step <= warmup) return (peak * step) / warmup;
  const progress = total > warmup ? Math.min(1, (step - warmup) / (total - warmup)) : 1;
  switch (schedule) {
    case "constant":
      return peak;
    case "linear":
      return floor + (peak - floor) * (1 - progress);
    case "cosine":
      return floor + (peak - floor) * 0.5 * (1 + Math.cos(Math.PI * progress));
    case "inverse_sqrt":
      return Math.max(floor, peak * Math.sqrt(Math.max(1, warmup) / Math.max(1, step)));
  }
}
