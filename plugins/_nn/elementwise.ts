/**
 * Element-wise kernels on row-major `Float32Array`s: adds, residual connections, mask
 * products and the GELU activation with its backward pass. Each returns a new array or
 * writes where its name says ("...InPlace", "Into"); none touches its other inputs.
 *
 * @module
 */

/** Adds `b` into `a` (same length) and returns `a`. */
export function addInto(a: Float32Array, b: Float32Array): Float32Array {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
  return a;
}

/** `x + u * mask` (mask optional) written over `u`, which is returned. */
export function residualAddInPlace(
  x: Float32Array,
  u: Float32Array,
  mask?: Float32Array,
): Float32Array {
  if (mask === undefined) {
    for (let i = 0; i < x.length; i++) u[i] = x[i] + u[i];
  } else {
    for (let i = 0; i < x.length; i++) u[i] = x[i] + u[i] * mask[i];
  }
  return u;
}

/** `x * mask` elementwise as a new array. */
export function mulMask(x: Float32Array, mask: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * mask[i];
  return out;
}

/** `x *= y` elementwise. */
export function mulInPlace(x: Float32Array, y: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] *= y[i];
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** GELU (tanh approximation) of `x` as a new array. */
export function gelu(x: Float32Array): Float32Array {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    y[i] = 0.5 * v * (1 + Math.tanh(GELU_C * (v + 0.044715 * v * v * v)));
  }
  return y;
}

/** GELU's backward pass in place: `dy *= gelu'(x)` where `x` is the pre-activation. */
export function geluBackwardInPlace(dy: Float32Array, x: Float32Array): void {
  for (let i = 0; i < dy.length; i++) {
    const v = x[i];
    const inner = GELU_C * (v + 0.044715 * v * v * v);
    const th = Math.tanh(inner);
    const dInner = GELU_C * (1 + 3 * 0.044715 * v * v);
    dy[i] *= 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * dInner;
  }
}
