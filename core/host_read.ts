/**
 * Reading a policy's weights on the host when the backend keeps them on a device. Under Deno
 * a WebGPU tensor can only be read asynchronously, and tfjs drops a tensor's host copy once
 * it is uploaded (after `load`, `copyWeightsFrom` or an update), so code about to read the
 * weights synchronously (`Policy.save`) awaits their host copies first. Nothing happens on
 * host-memory backends.
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { readsOnlyAsync } from "./optim.ts";
import type { Policy, PolicyState } from "./types.ts";

/** Brings `tensors` to the host where the active backend reads only asynchronously. */
export async function hostCopies(tensors: readonly tf.Tensor[]): Promise<void> {
  if (readsOnlyAsync()) await Promise.all(tensors.map((t) => t.data()));
}

/** `policy.save()`, after its weights are readable on the host on every backend. */
export async function savePolicy(policy: Policy): Promise<PolicyState> {
  await hostCopies(policy.variables);
  return policy.save();
}
