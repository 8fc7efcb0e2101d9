/**
 * Adam with a per-step learning rate, global-norm gradient clipping and learning-rate
 * schedules. Written here (not tf.train.adam) so the rate can change every step and the
 * optimizer state can be saved with a checkpoint and restored on resume.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

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

/** Adam over a fixed list of variables. */
export class Adam {
  readonly #variables: tf.Variable[];
  readonly #m: tf.Variable[];
  readonly #v: tf.Variable[];
  readonly #options: AdamOptions;
  /** Number of updates applied so far. */
  step = 0;

  /** Creates zeroed moment estimates for `variables`. */
  constructor(variables: readonly tf.Variable[], options: Partial<AdamOptions> = {}) {
    this.#variables = [...variables];
    this.#options = { ...ADAM_DEFAULTS, ...options };
    // tidy frees the zero tensors; the variables (which share their data) survive it.
    this.#m = tf.tidy(() => this.#variables.map((v) => tf.variable(tf.zerosLike(v), false)));
    this.#v = tf.tidy(() => this.#variables.map((v) => tf.variable(tf.zerosLike(v), false)));
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
    const { beta1, beta2, epsilon, weightDecay } = this.#options;
    const correction1 = 1 - beta1 ** this.step;
    const correction2 = 1 - beta2 ** this.step;
    const stepSize = lr * Math.sqrt(correction2) / correction1;
    tf.tidy(() => {
      for (let i = 0; i < this.#variables.length; i++) {
        const g = grads[i];
        if (g === undefined) continue;
        const variable = this.#variables[i];
        const m = tf.add(tf.mul(this.#m[i], beta1), tf.mul(g, 1 - beta1));
        const v = tf.add(tf.mul(this.#v[i], beta2), tf.mul(tf.square(g), 1 - beta2));
        this.#m[i].assign(m);
        this.#v[i].assign(v);
        let update = tf.div(tf.mul(m, stepSize), tf.add(tf.sqrt(v), epsilon));
        if (weightDecay > 0) update = tf.add(update, tf.mul(variable, lr * weightDecay));
        variable.assign(tf.sub(variable, update));
      }
    });
  }

  /** The moment estimates and step, for checkpoints. */
  state(): { step: number; m: Float32Array[]; v: Float32Array[] } {
    return {
      step: this.step,
      m: this.#m.map((t) => t.dataSync() as Float32Array),
      v: this.#v.map((t) => t.dataSync() as Float32Array),
    };
  }

  /** Restores a state from {@link Adam.state}. */
  restore(state: { step: number; m: Float32Array[]; v: Float32Array[] }): void {
    if (state.m.length !== this.#m.length || state.v.length !== this.#v.length) {
      throw new RangeError("optimizer state does not match the model's variables");
    }
    this.step = state.step;
    for (let i = 0; i < this.#m.length; i++) {
      this.#m[i].assign(tf.tensor(state.m[i], this.#m[i].shape));
      this.#v[i].assign(tf.tensor(state.v[i], this.#v[i].shape));
    }
  }

  /** Frees the moment estimates. */
  dispose(): void {
    for (const t of [...this.#m, ...this.#v]) t.dispose();
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
  const norm = Math.sqrt(
    tf.tidy(() => tf.addN(grads.map((g) => tf.sum(tf.square(g)))).dataSync()[0]),
  );
  if (!(maxNorm > 0) || norm <= maxNorm || !Number.isFinite(norm)) {
    return { grads: grads.map((g) => tf.clone(g)), norm };
  }
  const scale = maxNorm / norm;
  return { grads: grads.map((g) => tf.mul(g, scale)), norm };
}

/** Learning-rate schedule names. */
export type Schedule = "constant" | "linear" | "cosine" | "inverse_sqrt";

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
