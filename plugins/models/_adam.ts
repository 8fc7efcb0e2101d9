/**
 * Adam (Kingma & Ba 2015) as a `tf.Optimizer` whose update is one fused loop per variable
 * instead of about a dozen tfjs element-wise ops. On tfjs-cpu (and the `blas` backend,
 * which shares its element-wise kernels) `tf.train.adam` spends about 0.2 s per million
 * parameters per step in those ops; the fused update (WebAssembly SIMD, float32, see
 * `_simd.ts`; {@link adamStep} is the same update in plain JavaScript) takes about a
 * nanosecond per parameter. The moment estimates live in the SIMD module's memory; each
 * step writes new variable values (tfjs tensors are never mutated in place). Works with
 * `optimizer.minimize(f, ...)` and `applyGradients`, like any tfjs optimizer.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { SimdAdamMoments } from "./_simd.ts";

/** A named tensor, as tfjs optimizers take and return them. */
export interface NamedTensor {
  /** Variable (or state) name. */
  name: string;
  /** The value. */
  tensor: tf.Tensor;
}

/** Settings of {@link FusedAdam}. */
export interface FusedAdamOptions {
  /** First-moment decay. */
  beta1: number;
  /** Second-moment decay. */
  beta2: number;
  /** Denominator epsilon. */
  epsilon: number;
}

/** Adam with the update fused into one loop per variable; `learningRate` may change between steps. */
export class FusedAdam extends tf.Optimizer {
  /** Registered class name (tfjs serialization). */
  static get className(): string {
    return "FusedAdam";
  }

  /** The step size; assign to it between steps for schedules. */
  learningRate: number;
  readonly #options: FusedAdamOptions;
  /** Moment estimates (in WebAssembly memory) and the update kernel. */
  #moments = new SimdAdamMoments();
  readonly #steps = new Map<string, number>();

  /** Creates the optimizer (defaults beta1 0.9, beta2 0.999, epsilon 1e-8, as tf.train.adam). */
  constructor(learningRate: number, options: Partial<FusedAdamOptions> = {}) {
    super();
    this.learningRate = learningRate;
    this.#options = { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, ...options };
  }

  /** Applies one Adam update to every variable that has a gradient. */
  applyGradients(variableGradients: tf.NamedTensorMap | NamedTensor[]): void {
    const entries = Array.isArray(variableGradients)
      ? variableGradients.map((g) => [g.name, g.tensor] as const)
      : Object.entries(variableGradients);
    const registry = tf.engine().registeredVariables;
    const { beta1, beta2, epsilon } = this.#options;
    for (const [name, grad] of entries) {
      if (grad == null) continue;
      const variable = registry[name];
      if (variable === undefined || !variable.trainable) continue;
      if (!this.#moments.has(name, variable.size)) {
        this.#moments.reset(name, variable.size);
        this.#steps.set(name, 0);
      }
      const step = this.#steps.get(name)! + 1;
      this.#steps.set(name, step);
      const c1 = 1 - Math.pow(beta1, step);
      const c2 = 1 - Math.pow(beta2, step);
      const stepSize = this.learningRate * Math.sqrt(c2) / c1;
      const eps = epsilon * Math.sqrt(c2);
      const next = this.#moments.step(
        name,
        variable.dataSync() as Float32Array,
        grad.dataSync() as Float32Array,
        beta1,
        beta2,
        stepSize,
        eps,
      );
      const t = tf.tensor(next, variable.shape, "float32");
      variable.assign(t);
      t.dispose();
    }
    this.incrementIterations();
  }

  /** The moment estimates as tensors named `<variable>/m` and `<variable>/v` (for checkpoints). */
  override getWeights(): Promise<NamedTensor[]> {
    const out: NamedTensor[] = [];
    for (const name of this.#moments.names()) {
      const { m, v } = this.#moments.get(name);
      out.push({ name: `${name}/m`, tensor: tf.tensor(m) });
      out.push({ name: `${name}/v`, tensor: tf.tensor(v) });
      out.push({ name: `${name}/step`, tensor: tf.scalar(this.#steps.get(name) ?? 0) });
    }
    return Promise.resolve(out);
  }

  /** Restores moment estimates written by {@link FusedAdam.getWeights}. */
  override setWeights(weights: NamedTensor[]): Promise<void> {
    const byName = new Map(weights.map((w) => [w.name, w.tensor]));
    this.#moments = new SimdAdamMoments();
    this.#steps.clear();
    for (const [key, tensor] of byName) {
      if (!key.endsWith("/m")) continue;
      const name = key.slice(0, -2);
      const v = byName.get(`${name}/v`);
      const step = byName.get(`${name}/step`);
      if (v === undefined || step === undefined) continue;
      this.#moments.set(name, tensor.dataSync(), v.dataSync());
      this.#steps.set(name, step.dataSync()[0]);
    }
    return Promise.resolve();
  }

  /** Drops the moment estimates. */
  override dispose(): void {
    this.#moments = new SimdAdamMoments();
    this.#steps.clear();
  }

  /** The optimizer's settings (tfjs serialization). */
  getConfig(): tf.serialization.ConfigDict {
    return { learningRate: this.learningRate, ...this.#options };
  }
}

/**
 * One Adam step: updates `m` and `v` in place and returns the new weights
 * `w - stepSize * m / (sqrt(v) + eps)` as a new array.
 */
export function adamStep(
  w: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  beta1: number,
  beta2: number,
  stepSize: number,
  eps: number,
): Float32Array {
  const out = new Float32Array(w.length);
  const a1 = 1 - beta1;
  const a2 = 1 - beta2;
  for (let i = 0; i < w.length; i++) {
    const gi = g[i];
    const mi = beta1 * m[i] + a1 * gi;
    const vi = beta2 * v[i] + a2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    out[i] = w[i] - stepSize * mi / (Math.sqrt(vi) + eps);
  }
  return out;
}
