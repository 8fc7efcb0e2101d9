/**
 * `init`: the `learned` reward's QE encoder started from a backward (target -> source)
 * translation model instead of from scratch, as CometKiwi (Rei et al. 2022) fine-tunes a
 * pretrained encoder for quality estimation; no pretrained multilingual encoder can be
 * downloaded here, so the framework trains the translation model itself
 * (`../_translation.ts`, the code `dual_xent` uses for its backward model).
 *
 * ## What is copied
 *
 * The backward model reads the target language (the hypothesis's) and writes the source
 * language, so:
 *
 * - every encoder layer (`encoder.<i>.*`) and the encoder's final layer norm (`encoder.norm.*`
 *   -> `norm.*`) come from the backward model's encoder;
 * - with separate vocabularies, the hypothesis block of the QE embedding table comes from the
 *   backward encoder's embedding and the source block from the backward decoder's (input)
 *   embedding; with a joint vocabulary the one QE table is the backward encoder's (the same
 *   table as the decoder's when the transformer ties them, its default);
 * - the segment embeddings and the head keep their fresh initialisation.
 *
 * The QE network must therefore have the backward encoder's width, heads, FFN width and
 * number of layers, with ReLU and layer-norm epsilon 1e-5 ({@link initMismatches}).
 *
 * @module
 */

import type { ResolvedPluginRef } from "../../../core/plugin.ts";
import type { BcSettings, PolicyState } from "../../../core/types.ts";
import { ENCODER_PARAMS } from "../../_nn/layer_params.ts";
import type { QeArchitecture, QeVocab } from "./model.ts";

/** Where the QE encoder starts (the `init` option of `learned`). */
export interface LearnedInit {
  /** `none`: from scratch; `backward`: from a backward translation model trained in prepare. */
  from: "none" | "backward";
  /** The model plugin and size of the backward translation model. */
  model: ResolvedPluginRef;
  /** Its training budget and selection (the `bc` section's fields). */
  training: BcSettings;
}

/** The transformer option each QE dimension must equal, and what the QE network fixes. */
const SAME_AS: readonly [keyof QeArchitecture, string][] = [
  ["dModel", "dModel"],
  ["heads", "heads"],
  ["ffn", "ffn"],
  ["layers", "encoderLayers"],
];
const FIXED: readonly [string, unknown, string][] = [
  ["activation", "relu", "the QE encoder's feed-forward activation"],
  ["layerNormEps", 1e-5, "the QE encoder's layer-norm epsilon"],
];

/**
 * The config problems of starting a QE network of size `qe` from the backward model `model`
 * (a plugin reference, resolved or as written): each transformer option the reference gives
 * that differs from the QE network's, as `{path: "/init/model", message}`. A reference that
 * leaves an option out is compared only on what it gives (call this again with the resolved
 * reference, whose config has every default); one to another model plugin cannot be checked
 * here (the weights are checked when they are copied).
 */
export function initMismatches(
  qe: QeArchitecture,
  model: unknown,
): { path: string; message: string }[] {
  const ref = typeof model === "string" ? { name: model } : model as Record<string, unknown>;
  if (ref === null || typeof ref !== "object" || ref.name !== "transformer" || "module" in ref) {
    return [];
  }
  const config = (ref.config ?? {}) as Record<string, unknown>;
  const problems: { path: string; message: string }[] = [];
  for (const [own, theirs] of SAME_AS) {
    if (theirs in config && config[theirs] !== qe[own]) {
      problems.push({
        path: "/init/model",
        message: `${theirs} is ${config[theirs]} but model.${own} is ${qe[own]}: init.from ` +
          `"backward" copies this model's encoder into the QE network, so set both to the same value`,
      });
    }
  }
  for (const [key, value, what] of FIXED) {
    if (key in config && config[key] !== value) {
      problems.push({
        path: "/init/model",
        message: `${key} must be ${JSON.stringify(value)} (${what}) for init.from "backward", ` +
          `got ${JSON.stringify(config[key])}`,
      });
    }
  }
  return problems;
}

/** One weight of the QE network (or a block of its rows) and the backward weight it comes from. */
interface Copy {
  /** Weight of the QE network. */
  to: string;
  /** First row written (a block of the embedding table); 0 for a whole weight. */
  row: number;
  /** Weight of the backward model, copied whole. */
  from: string;
  /** The shape it must have. */
  shape: number[];
}

/** The copies {@link initFromBackward} makes, given the backward model's weight names. */
function copyPlan(fresh: PolicyState, names: ReadonlySet<string>): Copy[] {
  const { architecture, vocab } = fresh.config as { architecture: QeArchitecture; vocab: QeVocab };
  const d = architecture.dModel;
  const shapes = new Map(fresh.weights.map((w) => [w.name, w.shape]));
  const encoderTable = names.has("embed") ? "embed" : "embed.source";
  const decoderTable = names.has("embed") ? "embed" : "embed.target";
  const plan: Copy[] = vocab.joint
    ? [{ to: "embed", row: 0, from: encoderTable, shape: [vocab.sourceVocab, d] }]
    : [
      { to: "embed", row: 0, from: decoderTable, shape: [vocab.sourceVocab, d] },
      { to: "embed", row: vocab.sourceVocab, from: encoderTable, shape: [vocab.targetVocab, d] },
    ];
  const whole = (to: string, from: string) =>
    plan.push({ to, row: 0, from, shape: shapes.get(to)! });
  for (let i = 0; i < architecture.layers; i++) {
    for (const p of ENCODER_PARAMS) whole(`encoder.${i}.${p}`, `encoder.${i}.${p}`);
  }
  whole("norm.g", "encoder.norm.g");
  whole("norm.b", "encoder.norm.b");
  return plan;
}

/**
 * The state of a QE network whose encoder is the backward model's (see the module doc): a copy
 * of `fresh` (a freshly initialised QE network's {@link QeModel.save} state, which keeps its
 * segment embeddings and head) with the copied weights overwritten from `backward`'s state.
 *
 * @throws {RangeError} listing every weight that is missing or does not fit, e.g. when the
 * backward model has another width or number of encoder layers than the QE network.
 */
export function initFromBackward(fresh: PolicyState, backward: PolicyState): PolicyState {
  const layers = (fresh.config as { architecture: QeArchitecture }).architecture.layers;
  const own = new Map(fresh.weights.map((w) => [w.name, w]));
  const theirs = new Map(backward.weights.map((w) => [w.name, w]));
  const problems: string[] = [];
  const encoderLayers = new Set(
    backward.weights.map((w) => /^encoder\.(\d+)\./.exec(w.name)?.[1]).filter((x) => x),
  ).size;
  if (encoderLayers !== layers) {
    problems.push(
      `the backward model has ${encoderLayers} encoder layers, the QE network ${layers}`,
    );
  }
  const data = fresh.data.slice();
  for (const copy of copyPlan(fresh, new Set(theirs.keys()))) {
    const from = theirs.get(copy.from);
    if (from === undefined) {
      problems.push(`the backward model has no weight ${copy.from}`);
    } else if (from.shape.join("x") !== copy.shape.join("x")) {
      problems.push(
        `its ${copy.from} has shape [${from.shape}], the QE network's ${copy.to} needs ` +
          `[${copy.shape}]${copy.row > 0 ? ` from row ${copy.row}` : ""}`,
      );
    } else {
      const size = from.shape.reduce((a, b) => a * b, 1);
      const to = own.get(copy.to)!;
      const width = copy.shape.length === 2 ? copy.shape[1] : 0;
      data.set(
        backward.data.subarray(from.offset, from.offset + size),
        to.offset + copy.row * width,
      );
    }
  }
  if (problems.length > 0) {
    throw new RangeError(
      `cannot start the QE network from the backward model: ${problems.join("; ")}`,
    );
  }
  return { config: structuredClone(fresh.config), weights: structuredClone(fresh.weights), data };
}
