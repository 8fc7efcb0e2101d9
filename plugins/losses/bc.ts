/**
 * `bc`: behaviour cloning on the kept Grow rows, the loss of the ReST paper's main
 * results (Gulcehre et al. 2023): the negative log-likelihood
 *
 *     L = -(1/N) sum_{b,t} log pi(y_{b,t} | x_b, y_{b,<t})
 *
 * with N the number of target tokens (`average: "token"`) or, per sequence, the mean over
 * rows of each row's summed NLL (`average: "sequence"`). Label smoothing as BC's unless set.
 *
 * This file is the template for new losses: a config interface, a schema whose
 * descriptions are the documentation, and `create` returning the loss's `compute` (through
 * {@link defineLoss}, which hands it the Improve step's context: `ctx.policy` being trained,
 * `ctx.bcPolicy` the frozen BC policy, BC's `ctx.labelSmoothing`).
 *
 * @module
 */

import { nllLoss } from "../../core/batch.ts";
import { defineLoss } from "../../core/plugin.ts";

/** Config of the `bc` loss. */
export interface BcLossConfig {
  /** Label smoothing epsilon (0: plain NLL; null: BC's). */
  labelSmoothing: number | null;
  /** `token`: mean over target tokens; `sequence`: mean over rows of per-row sums. */
  average: "token" | "sequence";
}

/** The `bc` loss plugin. */
export default defineLoss({
  name: "bc",
  summary: "Negative log-likelihood of the kept rows' tokens (ReST's BC loss).",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      labelSmoothing: {
        type: ["number", "null"],
        minimum: 0,
        maximum: 0.99,
        default: null,
        description: "Label smoothing eps (Szegedy et al. 2016): the per-token loss is " +
          "-(1 - eps) log pi(y_t) - eps * mean_v log pi(v); null keeps the value BC was " +
          "trained with (so Improve continues the same objective), 0 gives the plain NLL.",
      },
      average: {
        enum: ["token", "sequence"],
        default: "token",
        description: "`token`: L = -sum_{b,t} log pi(y_bt) / (number of target tokens); " +
          "`sequence`: L = mean_b of -sum_t log pi(y_bt) (longer outputs weigh more).",
      },
    },
  },
  create(config: BcLossConfig) {
    return {
      compute(input, _record, ctx) {
        return nllLoss(ctx.policy, input.batch, {
          labelSmoothing: config.labelSmoothing ?? ctx.labelSmoothing ?? 0,
          average: config.average,
          training: true,
        });
      },
    };
  },
});
