/**
 * The `ensemble` reward: members prepared in their own folders with distinct seeds and
 * training pairs, mean and mean - k * std on known member scores, both calibrations,
 * diagnostics, config errors, the no-diversity warning, and a smoke experiment.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ManifestError, UserError } from "../../core/errors.ts";
import { createPlugin } from "../../core/experiment.ts";
import { resolvePluginRef } from "../../core/manifest/mod.ts";
import { definePlugin } from "../../core/plugin.ts";
import { Rng } from "../../core/random.ts";
import { createRegistries } from "../../core/registry.ts";
import { readMetrics } from "../../core/run.ts";
import type { Example, RewardInput, RewardModel, RewardPrepareContext } from "../../core/types.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import { runTiny, tinyManifest, tinyRestRun, withTempDir } from "../_experiment.ts";
import ensemble, {
  applyKnots,
  calibrationRows,
  ENSEMBLE_FILE,
  type EnsembleConfig,
  EnsembleReward,
  meanStd,
  memberSeed,
  memberTrain,
  quantileKnots,
} from "../../plugins/rewards/ensemble.ts";

/** Member i's scores of the rows whose hypotheses are "0", "1", "2". */
const TABLE = [
  [0.2, 0.5, 1],
  [0.5, 0.5, 1],
  [0.8, 0.5, 0.4],
];

/** What each fake member's prepare saw. */
const prepared: { dir: string; seed: number; train: number }[] = [];

/**
 * A fake member: prepare records its context and picks its row of {@link TABLE} by
 * `seed mod 1000`; other hypotheses score by length and member.
 */
const fakeMember = definePlugin({
  kind: "reward",
  name: "fake_member",
  summary: "Test member with known scores.",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      needsReference: { type: "boolean", default: false, description: "Claims to need it." },
    },
  },
  create(config: { needsReference: boolean }): RewardModel {
    let index: number | undefined;
    let calls = 0;
    return {
      needsReference: config.needsReference,
      prepare(ctx: RewardPrepareContext) {
        index = ctx.seed % 1000;
        ctx.log("ready");
        prepared.push({ dir: ctx.dir, seed: ctx.seed, train: ctx.splits.train.length });
        return Promise.resolve();
      },
      score(rows: readonly RewardInput[]) {
        if (index === undefined) return Promise.reject(new UserError("fake: not prepared"));
        calls++;
        const i = index;
        return Promise.resolve(
          rows.map((r) =>
            /^[0-2]$/.test(r.hypothesis)
              ? TABLE[i][Number(r.hypothesis)]
              : ((r.hypothesis.length + i) % 10) / 10
          ),
        );
      },
      diagnostics() {
        const out = { calls };
        calls = 0;
        return out;
      },
    };
  },
});

const registries = createRegistries([...builtinPlugins, fakeMember]);
const deps = { seed: 1, baseDir: Deno.cwd(), smoke: false, log: () => {} };

const TRAIN: Example[] = Array.from({ length: 10 }, (_, i) => ({
  source: `source sentence number ${i}`,
  reference: `Quellsatz Nummer ${i} hier`,
}));
const VALID: Example[] = TRAIN.slice(0, 5).map((e) => ({ ...e, source: `${e.source} v` }));

async function create(config: Record<string, unknown>): Promise<EnsembleReward> {
  const ref = await resolvePluginRef(registries, "reward", { name: "ensemble", config }, "test");
  const reward = await createPlugin(registries, "reward", ref, deps);
  assert.ok(reward instanceof EnsembleReward);
  return reward;
}

/** A prepare context over TRAIN/VALID in a temporary folder; `logs` collects its lines. */
function context(dir: string, seed: number, logs: string[]): RewardPrepareContext {
  return {
    dir,
    seed,
    splits: { train: TRAIN, valid: VALID, test: [], select: [] },
    smoke: false,
    metrics: { log: () => Promise.resolve() },
    progress: () => ({ tick() {}, done() {} }),
    log: (message: string) => logs.push(message),
  } as unknown as RewardPrepareContext;
}

async function withPrepared(
  config: Record<string, unknown>,
  body: (reward: EnsembleReward, dir: string, logs: string[]) => Promise<void>,
  seed = 7,
): Promise<void> {
  const reward = await create({ reward: "fake_member", ...config });
  const dir = await Deno.makeTempDir();
  const logs: string[] = [];
  prepared.length = 0;
  try {
    await reward.prepare(context(dir, seed, logs));
    await body(reward, dir, logs);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const ROWS: RewardInput[] = ["0", "1", "2"].map((h) => ({ source: "s", hypothesis: h }));

Deno.test("ensemble: members are prepared in member_<i>/ with seeds seed * 1000 + i", async () => {
  await withPrepared({}, async (_reward, dir, logs) => {
    assert.deepEqual(prepared.map((p) => p.dir), [0, 1, 2].map((i) => join(dir, `member_${i}`)));
    assert.deepEqual(prepared.map((p) => p.seed), [7000, 7001, 7002]);
    assert.deepEqual(prepared.map((p) => p.train), [10, 10, 10]);
    assert.deepEqual(logs.slice(0, 3), [0, 1, 2].map((i) => `member_${i} (fake_member): ready`));
    assert.match(logs[3], /^3 fake_member members, mean - 0 \* std, clip; members disagree on/);
    const saved = JSON.parse(await Deno.readTextFile(join(dir, ENSEMBLE_FILE)));
    assert.deepEqual(saved.members.map((m: { seed: number }) => m.seed), [7000, 7001, 7002]);
    assert.equal(saved.calibration.rows, 15, "5 validation pairs x (reference + 2 corruptions)");
    assert.equal(saved.calibration.knots, null);
  });
  assert.equal(memberSeed(0, 0), 0);
  assert.notEqual(memberSeed(1, 0), memberSeed(0, 1));
});

Deno.test("ensemble: data shards partition the training pairs; bootstrap resamples them", async () => {
  await withPrepared({ data: "shards" }, () => {
    assert.deepEqual(prepared.map((p) => p.train), [4, 3, 3]);
    return Promise.resolve();
  });
  const shards = [0, 1, 2].map((i) => memberTrain(TRAIN, i, 3, "shards", memberSeed(1, i)));
  assert.deepEqual(shards.flat().map((e) => e.source).sort(), TRAIN.map((e) => e.source).sort());
  const a = memberTrain(TRAIN, 0, 3, "bootstrap", 1000);
  const b = memberTrain(TRAIN, 1, 3, "bootstrap", 1001);
  assert.equal(a.length, TRAIN.length);
  assert.notDeepEqual(a, b, "members draw different samples");
  assert.deepEqual(memberTrain(TRAIN, 0, 3, "bootstrap", 1000), a, "seeded");
  await assert.rejects(
    () => withPrepared({ data: "shards", members: 11 }, () => Promise.resolve()),
    /ensemble reward: member 10 gets no training pairs \(data: "shards", 10 pairs for 11 members\)/,
  );
});

Deno.test("ensemble: the score is the member mean, minus k * population std, clipped", async () => {
  const std0 = Math.sqrt((0.09 + 0 + 0.09) / 3);
  const std2 = Math.sqrt((0.04 + 0.04 + 0.16) / 3);
  await withPrepared({}, async (reward) => {
    const scores = await reward.score(ROWS);
    assert.ok(Math.abs(scores[0] - 0.5) < 1e-15);
    assert.equal(scores[1], 0.5, "agreeing members give their score exactly");
    assert.ok(Math.abs(scores[2] - 0.8) < 1e-15);
  });
  await withPrepared({ conservative: 1 }, async (reward) => {
    const scores = await reward.score(ROWS);
    assert.ok(Math.abs(scores[0] - (0.5 - std0)) < 1e-12);
    assert.equal(scores[1], 0.5);
    assert.ok(Math.abs(scores[2] - (0.8 - std2)) < 1e-12);
  });
  await withPrepared({ conservative: 2 }, async (reward) => {
    const scores = await reward.score(ROWS);
    assert.ok(Math.abs(scores[0] - (0.5 - 2 * std0)) < 1e-12);
    assert.ok(Math.abs(scores[2] - (0.8 - 2 * std2)) < 1e-12);
  });
  await withPrepared({ conservative: 3 }, async (reward) => {
    const scores = await reward.score(ROWS);
    assert.deepEqual(scores, [0, 0.5, 0], "0.5 - 3 * 0.245 and 0.8 - 3 * 0.283 are clipped to 0");
  });
  await withPrepared({ members: 1, conservative: 5 }, async (reward) => {
    assert.deepEqual(await reward.score(ROWS), TABLE[0], "one member: std 0, its own scores");
  });
  assert.deepEqual(meanStd([0.25, 0.75]), { mean: 0.5, std: 0.25 });
  assert.deepEqual(meanStd([0.1, 0.1, 0.1]), { mean: 0.1, std: 0 });
});

Deno.test("ensemble: quantile calibration is the interpolated CDF pinned at 0 and 1", async () => {
  const knots = quantileKnots([0, 0.2, 0.2, 0.6, 1, 1.3, -0.4, 0.6]);
  // Clipped and sorted: 0 0 0.2 0.2 0.6 0.6 1 1.
  assert.deepEqual(knots, [[0, 0], [0.2, 0.5], [0.6, 0.75], [1, 1]]);
  assert.equal(applyKnots(knots, -1), 0);
  assert.equal(applyKnots(knots, 0), 0);
  assert.ok(Math.abs(applyKnots(knots, 0.1) - 0.25) < 1e-12);
  assert.equal(applyKnots(knots, 0.2), 0.5);
  assert.ok(Math.abs(applyKnots(knots, 0.4) - 0.625) < 1e-12);
  assert.equal(applyKnots(knots, 1), 1);
  assert.equal(applyKnots(knots, 2), 1);
  assert.deepEqual(quantileKnots([]), [[0, 0], [1, 1]]);
  const rng = new Rng(3);
  const many = quantileKnots(Array.from({ length: 500 }, () => rng.next() * 1.4 - 0.2));
  let previous = -1;
  for (let x = -0.5; x <= 1.5; x += 0.01) {
    const y = applyKnots(many, x);
    assert.ok(y >= 0 && y <= 1 && y >= previous, `monotone in [0, 1] at ${x}`);
    previous = y;
  }

  await withPrepared({ calibrate: "quantile", conservative: 3 }, async (reward, dir) => {
    assert.ok(reward.knots !== undefined && reward.knots.length >= 2);
    const saved = JSON.parse(await Deno.readTextFile(join(dir, ENSEMBLE_FILE)));
    assert.deepEqual(saved.calibration.knots, reward.knots);
    const rows = calibrationRows(VALID, 4, new Rng(9));
    const scores = await reward.score([...rows, ...ROWS]);
    assert.ok(scores.every((s) => s >= 0 && s <= 1), "scores in [0, 1]");
    assert.equal(scores[rows.length], 0, "a raw score below 0 maps to 0");
  });
  const unprepared = await create({ reward: "fake_member", calibrate: "quantile" });
  await assert.rejects(
    () => unprepared.score(ROWS),
    (error: Error) =>
      error instanceof UserError && /calibrate "quantile" is learned by/.test(error.message),
  );
});

Deno.test("ensemble: diagnostics give the mean std and rows since the last call, then reset", async () => {
  await withPrepared({}, async (reward) => {
    reward.diagnostics(); // the calibration scoring in prepare is not counted
    await reward.score(ROWS);
    await reward.score(ROWS.slice(2));
    const std0 = Math.sqrt(0.06);
    const std2 = Math.sqrt(0.08);
    const d = reward.diagnostics();
    assert.equal(d.ensemble_rows, 4);
    assert.ok(Math.abs(d.ensemble_std_mean - (std0 + 0 + 2 * std2) / 4) < 1e-12);
    assert.equal(d.member_calls, 2, "each member's own counters, averaged over members");
    assert.deepEqual(reward.diagnostics(), {
      ensemble_std_mean: 0,
      ensemble_rows: 0,
      member_calls: 0,
    });
  });
});

Deno.test("ensemble: needsReference is any member's; deterministic members warn of no diversity", async () => {
  assert.equal((await create({ reward: "fake_member" })).needsReference, false);
  const withReference = { name: "fake_member", config: { needsReference: true } };
  assert.equal((await create({ reward: withReference })).needsReference, true);
  const chrf = await create({ reward: "chrf", members: 2 });
  assert.equal(chrf.needsReference, true);
  const dir = await Deno.makeTempDir();
  try {
    const logs: string[] = [];
    await chrf.prepare(context(dir, 1, logs));
    assert.equal(
      logs[0],
      "warning: the 2 chrf members agree on all 15 calibration rows: the ensemble has no " +
        "diversity (std 0)",
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [ENSEMBLE_FILE]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  await withPrepared({}, (_reward, _dir, logs) => {
    assert.ok(!logs.some((l) => l.includes("no diversity")), "seeded members differ");
    return Promise.resolve();
  });
});

Deno.test("ensemble: bad configs are errors naming the field", async () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ members: 0 }, /\/config\/members: must be >= 1/],
    [{ members: 1.5 }, /\/config\/members: must be integer/],
    [{ conservative: -1 }, /\/config\/conservative: must be >= 0/],
    [{ calibrate: "zscore" }, /\/config\/calibrate: .*clip.*quantile/],
    [{ data: "halves" }, /\/config\/data: .*full.*shards.*bootstrap/],
    [{ reward: "chfr" }, /\/config\/reward: unknown reward plugin "chfr"; did you mean "chrf"/],
  ];
  for (const [config, pattern] of cases) {
    await assert.rejects(
      () => resolvePluginRef(registries, "reward", { name: "ensemble", config }, "test"),
      (error: Error) => {
        assert.ok(error instanceof ManifestError, JSON.stringify(config));
        assert.match(error.message, pattern);
        return true;
      },
    );
  }
  // The same checks when create is called directly, as a library user may.
  const ref = await resolvePluginRef(registries, "reward", "ensemble", "test");
  const base = ref.config as unknown as EnsembleConfig;
  const fullDeps = { ...deps, create: () => Promise.reject(new Error("not reached")) };
  for (
    const [bad, pattern] of [
      [{ members: 0 }, /^ensemble reward: members: must be an integer >= 1, got 0$/],
      [{ conservative: -0.5 }, /^ensemble reward: conservative: must be a finite number >= 0/],
      [{ calibrate: "zscore" }, /^ensemble reward: calibrate: must be one of clip, quantile/],
    ] as const
  ) {
    await assert.rejects(
      async () => await ensemble.create({ ...base, ...bad } as EnsembleConfig, fullDeps),
      (error: Error) => error instanceof UserError && pattern.test(error.message),
    );
  }
});

Deno.test("ensemble: a smoke experiment with {reward: chrf, members: 2} runs ReST", async () => {
  await withTempDir(async (out) => {
    const manifest = tinyManifest({
      experiment: "ensemble_smoke",
      reward: { name: "ensemble", config: { reward: "chrf", members: 2 } },
      runs: [
        tinyRestRun(),
      ],
    });
    const { result, logs } = await runTiny(manifest, out, { smoke: true, registries });
    assert.ok(
      logs.some((l) => /^reward: warning: the 2 chrf members agree on all \d+ calibration/.test(l)),
      "the no-diversity warning is logged",
    );
    const records = await readMetrics(join(result.dir, "rest", "metrics.jsonl"));
    const grow = records.find((r) => "grow/reward_ensemble_rows" in r);
    assert.ok(grow !== undefined, "grow/reward_ensemble_* logged");
    assert.ok((grow["grow/reward_ensemble_rows"] as number) > 0);
    assert.equal(grow["grow/reward_ensemble_std_mean"], 0);
    const folder = join(result.dir, "shared", "rewards");
    const names = [...Deno.readDirSync(folder)].map((e) => e.name);
    assert.equal(names.length, 1);
    assert.match(names[0], /^ensemble-[0-9a-f]{8}$/);
    const saved = JSON.parse(await Deno.readTextFile(join(folder, names[0], ENSEMBLE_FILE)));
    assert.deepEqual(saved.members.map((m: { seed: number }) => m.seed), [3000, 3001]);
  });
});
