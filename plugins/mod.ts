/**
 * The built-in plugins, as a literal list: importing this module registers nothing
 * by side effect; `createRegistries(builtinPlugins)` builds the registries.
 *
 * @module
 */

import type { PluginDefinition } from "../core/plugin.ts";

import baselines from "./algorithms/baselines.ts";
import bc from "./algorithms/bc.ts";
import ppo from "./algorithms/ppo/mod.ts";
import rest from "./algorithms/rest.ts";
import auto from "./backends/auto.ts";
import blas from "./backends/blas.ts";
import cpu from "./backends/cpu.ts";
import tensorflow from "./backends/tensorflow.ts";
import wasm from "./backends/wasm.ts";
import webgpu from "./backends/webgpu.ts";
import gettext from "./data/gettext.ts";
import jsonl from "./data/jsonl.ts";
import moses from "./data/moses.ts";
import synthetic from "./data/synthetic.ts";
import tsv from "./data/tsv.ts";
import local from "./executors/local.ts";
import queue from "./executors/queue.ts";
import bleu from "./rewards/bleu.ts";
import chrf from "./rewards/chrf.ts";
import dualXent from "./rewards/dual_xent.ts";
import ensemble from "./rewards/ensemble.ts";
import guarded from "./rewards/guarded.ts";
import learned from "./rewards/learned/mod.ts";
import weighted from "./rewards/weighted.ts";
import bcLoss from "./losses/bc.ts";
import bvmpo from "./losses/bvmpo.ts";
import gold from "./losses/gold.ts";
import offlinePpo from "./losses/offline_ppo.ts";
import transformer from "./models/transformer/mod.ts";
import fixed from "./thresholds/fixed.ts";
import interpolate from "./thresholds/interpolate.ts";
import linear from "./thresholds/linear.ts";
import percentile from "./thresholds/percentile.ts";
import bpe from "./tokenizers/bpe.ts";

/** Every built-in plugin definition. */
export const builtinPlugins: readonly PluginDefinition[] = [
  // algorithms
  baselines,
  bc,
  ppo,
  rest,
  // backends
  auto,
  blas,
  cpu,
  tensorflow,
  wasm,
  webgpu,
  // data
  gettext,
  jsonl,
  moses,
  synthetic,
  tsv,
  // executors
  local,
  queue,
  // rewards
  bleu,
  chrf,
  dualXent,
  ensemble,
  guarded,
  learned,
  weighted,
  // losses
  bcLoss,
  bvmpo,
  gold,
  offlinePpo,
  // models
  transformer,
  // thresholds
  fixed,
  interpolate,
  linear,
  percentile,
  // tokenizers
  bpe,
] as PluginDefinition[];
