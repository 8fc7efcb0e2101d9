/**
 * A small helper shared by the loss plugins: the check that `prepare` ran. The tensor
 * helpers the losses use (masked means, stop-gradient, token log-probabilities, KL and
 * entropy from logits) are in `../_nn/token_stats.ts`; recording a tensor diagnostic is
 * `recordScalar` in `core/train.ts`.
 *
 * @module
 */

/** Returns `value`, or throws when the loss is used before `prepare`. */
export function prepared<T>(value: T | undefined, loss: string): T {
  if (value === undefined) {
    throw new TypeError(`loss "${loss}": compute was called before prepare`);
  }
  return value;
}
