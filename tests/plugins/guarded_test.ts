/**
 * The `guarded` reward: rules learned from a small set of training pairs, each rule zeroing
 * a crafted bad hypothesis while references and good hypotheses keep the inner reward's
 * score, switching rules off, the waiver for references, diagnostics, config errors, the
 * forwarding of `prepare` to an inner reward, and a smoke experiment.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ManifestError, UserError } from "../../core/errors.ts";
import { createPlugin } from "../../core/experiment.ts";
import { resolvePluginRef } from "../../core/manifest/mod.ts";
import { createRegistries } from "../../core/registry.ts";
import { readMetrics } from "../../core/run.ts";
import type { Example, RewardInput, RewardModel, RewardPrepareContext } from "../../core/types.ts";
import { builtinPlugins } from "../../plugins/mod.ts";
import { runTiny, tinyManifest, tinyRestRun, withTempDir } from "../_experiment.ts";
import guarded, {
  type GuardedConfig,
  GuardedReward,
  learnGuards,
  RULES_FILE,
} from "../../plugins/rewards/guarded.ts";

const registries = createRegistries(builtinPlugins);
const deps = { seed: 1, baseDir: Deno.cwd(), smoke: false, log: () => {} };

/** English-German UI strings; one reference (of 12) equals its source. */
const TRAIN: Example[] = [
  { source: "Open the file", reference: "Öffne die Datei" },
  { source: "Save the document", reference: "Speichere das Dokument" },
  { source: "Close the window", reference: "Schließe das Fenster" },
  { source: "Print the current page", reference: "Drucke die aktuelle Seite." },
  { source: "Insert a new table", reference: "Füge eine neue Tabelle ein" },
  { source: "Delete the selected rows", reference: "Lösche die ausgewählten Zeilen" },
  {
    source: "The file could not be saved",
    reference: "Die Datei konnte nicht gespeichert werden.",
  },
  { source: "Name:", reference: "Name:" },
  { source: "Export as PDF", reference: "Als PDF exportieren" },
  { source: "Show the grid lines", reference: "Die Gitterlinien anzeigen" },
  { source: "Undo the last action", reference: "Die letzte Aktion rückgängig machen" },
  { source: "Choose a colour for the text", reference: "Wähle eine Farbe für den Text" },
];

/** Rule sections of the config, every one switched off. */
const ALL_OFF = {
  length: { enabled: false },
  repetition: { enabled: false },
  copy: { enabled: false },
  script: { enabled: false },
  ending: { enabled: false },
};

async function resolvedConfig(config: Record<string, unknown> = {}): Promise<GuardedConfig> {
  const ref = await resolvePluginRef(registries, "reward", { name: "guarded", config }, "test");
  return ref.config as unknown as GuardedConfig;
}

/** A guarded chrF reward prepared on `train`, with the prepare log and folder. */
async function prepared(
  config: Record<string, unknown> = {},
  train: Example[] = TRAIN,
): Promise<{ reward: GuardedReward; logs: string[]; dir: string }> {
  const ref = await resolvePluginRef(registries, "reward", { name: "guarded", config }, "test");
  const reward = await createPlugin(registries, "reward", ref, deps);
  assert.ok(reward instanceof GuardedReward);
  const dir = await Deno.makeTempDir();
  const logs: string[] = [];
  const ctx = {
    dir,
    splits: { train, valid: [], test: [], select: [] },
    log: (message: string) => logs.push(message),
  } as unknown as RewardPrepareContext;
  await reward.prepare(ctx);
  return { reward, logs, dir };
}

/** Only `rule` on (with some overrides of its section). */
function only(rule: keyof typeof ALL_OFF, section: Record<string, unknown> = {}) {
  return { ...ALL_OFF, [rule]: { enabled: true, ...section } };
}

function chars(text: string): number {
  return [...text.replace(/\s/g, "")].length;
}

function rows(source: string, ...hypotheses: string[]): RewardInput[] {
  const reference = TRAIN.find((p) => p.source === source)?.reference;
  assert.ok(reference !== undefined, source);
  return hypotheses.map((hypothesis) => ({ source, hypothesis, reference }));
}

Deno.test("guarded: rules learned from the training pairs, written to guards.json and logged in one line", async () => {
  const { reward, logs, dir } = await prepared({ ending: { minWordCount: 2 } });
  try {
    const rules = reward.rules!;
    assert.equal(rules.trainPairs, 12);
    // Length band: "Name:" (5 characters) is below minSourceChars, so 11 pairs teach it;
    // on so few pairs the nearest-rank quantiles are the extreme ratios.
    const ratios = TRAIN.filter((p) => chars(p.source) >= 10)
      .map((p) => chars(p.reference) / chars(p.source));
    assert.deepEqual(rules.length, {
      low: Math.min(...ratios),
      high: Math.max(...ratios),
      slack: 5,
      pairs: 11,
    });
    assert.deepEqual(rules.repetition, { n: 3, limit: 2, referenceCount: 1 });
    assert.equal(rules.copy!.identityRate, 0.083333);
    assert.equal(rules.copy!.copyAllowed, false, "1 in 12 is below allowRate 0.1");
    assert.ok(rules.copy!.overlapThreshold! > 0 && rules.copy!.overlapThreshold! < 1);
    assert.deepEqual(rules.script!.allowed, ["Latin"]);
    assert.deepEqual(rules.script!.shares, { Latin: 1 });
    assert.deepEqual(rules.ending!.allowed, ["letter", ".", ":"]);
    assert.equal(rules.ending!.shares.letter, 0.75);
    // Frequent in the references (>= 2 times) but never last; "datei" ends one of its two.
    assert.deepEqual(rules.ending!.danglingWords, ["die", "das", "eine"]);
    const saved = JSON.parse(await Deno.readTextFile(join(dir, RULES_FILE)));
    assert.equal(saved.format, "rest-guarded-reward");
    assert.deepEqual(saved.rules, rules);
    assert.equal(logs.length, 1);
    assert.ok(!logs[0].includes("\n"));
    assert.match(logs[0], /^guards from 12 training pairs: length ratio in \[/);
    assert.match(logs[0], /3-grams at most 2x; copies zeroed \(8\.3% /);
    assert.match(
      logs[0],
      /scripts Latin; endings "letter" "\." ":"; 3 dangling words \(die, das, eine\)/,
    );
    assert.ok(logs[0].endsWith(join(dir, RULES_FILE)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("guarded: learning repetition limits, rare scripts, copy rates and switched-off rules", async () => {
  const repeated = [...TRAIN, { source: "No no no", reference: "Nein nein nein nein nein" }];
  // "nein nein nein" occurs 3 times in one reference: the maximum raises the limit to 3.
  assert.equal(learnGuards(repeated, await resolvedConfig()).repetition!.limit, 3);
  const median = await resolvedConfig({ repetition: { learnQuantile: 0.5 } });
  assert.equal(learnGuards(repeated, median).repetition!.limit, 2);
  // A Greek word among the references: allowed by default, not at minShare 0.05.
  const greek = [...TRAIN, { source: "alpha", reference: "Ein Wert αβγ" }];
  assert.deepEqual(learnGuards(greek, await resolvedConfig()).script!.allowed, ["Latin", "Greek"]);
  const strict = await resolvedConfig({ script: { minShare: 0.05 } });
  assert.deepEqual(learnGuards(greek, strict).script!.allowed, ["Latin"]);
  // Copies allowed when identity is common enough for the data.
  const lenient = await resolvedConfig({ copy: { allowRate: 0.05 } });
  assert.equal(learnGuards(TRAIN, lenient).copy!.copyAllowed, true);
  // Switched-off rules are not learned.
  const off = learnGuards(TRAIN, await resolvedConfig({ ...ALL_OFF, ending: { enabled: true } }));
  assert.deepEqual(Object.keys(off).sort(), ["ending", "trainPairs"]);
});

Deno.test("guarded: references and good hypotheses keep the inner reward's score", async () => {
  const { reward, dir } = await prepared({ ending: { minWordCount: 2 }, waiveForReference: false });
  try {
    const chrf = await createPlugin(
      registries,
      "reward",
      await resolvePluginRef(registries, "reward", "chrf", "test"),
      deps,
    );
    // Without the waiver, the rules alone let every reference through but the one copy.
    const references = TRAIN.filter((p) => p.source !== "Name:")
      .map((p) => ({ source: p.source, hypothesis: p.reference, reference: p.reference }));
    assert.deepEqual(await reward.score(references), references.map(() => 1));
    const good = [
      ...rows("Open the file", "Öffne eine Datei", "Die Datei öffnen"),
      ...rows("Close the window", "Schließe die Fenster"),
      ...rows("Export as PDF", "Als PDF speichern"),
      ...rows("The file could not be saved", "Die Datei wurde nicht gespeichert."),
    ];
    const scores = await reward.score(good);
    assert.deepEqual(scores, await chrf.score(good));
    assert.ok(scores.every((s) => s > 0 && s < 1));
    assert.deepEqual(reward.diagnostics(), {
      guard_length: 0,
      guard_repetition: 0,
      guard_copy: 0,
      guard_script: 0,
      guard_ending: 0,
      guard_rows: 0,
      guard_scored: references.length + good.length,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Each rule alone: the bad hypotheses get 0, the good one its chrF, the counters say so. */
const CASES: {
  rule: keyof typeof ALL_OFF;
  section?: Record<string, unknown>;
  source: string;
  bad: string[];
  good: string;
}[] = [
  {
    rule: "length",
    source: "The file could not be saved",
    bad: [
      "Datei",
      "",
      "Die Datei konnte leider wirklich überhaupt nicht gespeichert werden, nein.",
    ],
    good: "Die Datei wurde nicht gespeichert.",
  },
  {
    rule: "repetition",
    source: "Open the file",
    bad: ["Öffne die Datei die Datei die Datei die Datei", "ja ja ja ja ja"],
    good: "Öffne die Datei, die Datei",
  },
  {
    rule: "copy",
    source: "Delete the selected rows",
    bad: ["delete  the SELECTED rows", "Delete the selected rowz"],
    good: "Lösche die gewählten Zeilen",
  },
  {
    rule: "script",
    source: "Open the file",
    bad: ["Откройте файл", "Öffne die Datei ファイル"],
    good: "Öffne die Datei µ",
  },
  {
    rule: "ending",
    section: { minWordCount: 2 },
    source: "Print the current page",
    bad: ["Drucke die aktuelle Seite,", "Drucke die", "Drucke die aktuelle Seite -", "   "],
    good: "Drucke die Seite",
  },
];

for (const { rule, section, source, bad, good } of CASES) {
  Deno.test(`guarded: the ${rule} rule zeroes crafted bad hypotheses, alone and with the others`, async () => {
    const alone = await prepared(only(rule, section));
    const all = await prepared({ ending: { minWordCount: 2 } });
    const other = rule === "repetition" ? "copy" : "repetition";
    const off = await prepared({ ...only(other), waiveForReference: false });
    try {
      const chrf = await createPlugin(
        registries,
        "reward",
        await resolvePluginRef(registries, "reward", "chrf", "test"),
        deps,
      );
      const input = rows(source, ...bad, good);
      const inner = await chrf.score(input);
      assert.ok(inner.slice(0, -1).some((s) => s > 0), "the inner reward alone likes some");
      const expected = [...bad.map(() => 0), inner[inner.length - 1]];
      assert.deepEqual(await alone.reward.score(input), expected, `${rule} alone`);
      const counts = alone.reward.diagnostics();
      assert.deepEqual(counts, {
        [`guard_${rule}`]: bad.length,
        guard_rows: bad.length,
        guard_scored: input.length,
      });
      assert.deepEqual(await all.reward.score(input.slice(0, -1)), bad.map(() => 0), "all rules");
      assert.ok(all.reward.diagnostics()[`guard_${rule}`] >= 1);
      // With this rule switched off (another on), its bad hypotheses are not its business.
      const without = await off.reward.score(input);
      const counted = off.reward.diagnostics();
      assert.equal(counted[`guard_${rule}`], undefined, "no counter for a rule switched off");
      assert.deepEqual(without, inner);
    } finally {
      for (const p of [alone, all, off]) await Deno.remove(p.dir, { recursive: true });
    }
  });
}

Deno.test("guarded: a rule is waived on a row whose reference breaks it too", async () => {
  const waived = await prepared(only("copy"));
  const strict = await prepared({ ...only("copy"), waiveForReference: false });
  try {
    // "Name:" -> "Name:": copies are zeroed for this data, but this reference is a copy.
    const copyOfCopy = { source: "Name:", hypothesis: "name:", reference: "Name:" };
    const copy = {
      source: "Open the file",
      hypothesis: "Open the file",
      reference: "Öffne die Datei",
    };
    const scores = await waived.reward.score([copyOfCopy, copy]);
    assert.ok(scores[0] > 0, "waived");
    assert.equal(scores[1], 0);
    assert.deepEqual(waived.reward.diagnostics(), {
      guard_copy: 1,
      guard_rows: 1,
      guard_scored: 2,
    });
    assert.deepEqual(await strict.reward.score([copyOfCopy]), [0]);
  } finally {
    for (const p of [waived, strict]) await Deno.remove(p.dir, { recursive: true });
  }
});

Deno.test("guarded: diagnostics count since the previous call, then reset", async () => {
  const { reward, dir } = await prepared();
  try {
    assert.deepEqual(reward.diagnostics(), {
      guard_length: 0,
      guard_repetition: 0,
      guard_copy: 0,
      guard_script: 0,
      guard_ending: 0,
      guard_rows: 0,
      guard_scored: 0,
    });
    // "Open the file" copied: copy; "" : length and ending; a Cyrillic loop: script,
    // repetition and length (too long); a good one: nothing.
    const input = rows(
      "Open the file",
      "Open the file",
      "",
      "файл файл файл файл файл файл файл файл",
      "Öffne die Datei",
    );
    await reward.score(input);
    await reward.score(input.slice(0, 1));
    assert.deepEqual(reward.diagnostics(), {
      guard_length: 2,
      guard_repetition: 1,
      guard_copy: 2,
      guard_script: 1,
      guard_ending: 1,
      guard_rows: 4,
      guard_scored: 5,
    });
    assert.equal(reward.diagnostics().guard_scored, 0, "reset");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("guarded: bad configs and use before prepare are UserErrors naming the plugin and field", async () => {
  const badBand = { length: { lowQuantile: 0.9, highQuantile: 0.1 } };
  await assert.rejects(
    () => resolvePluginRef(registries, "reward", { name: "guarded", config: badBand }, "test"),
    (error: Error) => {
      assert.ok(error instanceof ManifestError);
      assert.match(
        error.message,
        /\/config\/length\/lowQuantile: must be below length\.highQuantile \(0\.1\), got 0\.9/,
      );
      return true;
    },
  );
  await assert.rejects(
    () => resolvePluginRef(registries, "reward", { name: "guarded", config: ALL_OFF }, "test"),
    /\/config: every rule is switched off/,
  );
  await assert.rejects(
    () =>
      resolvePluginRef(
        registries,
        "reward",
        { name: "guarded", config: { reward: "chfr" } },
        "test",
      ),
    /\/config\/reward: unknown reward plugin "chfr"; did you mean "chrf"/,
  );
  // The same checks when create is called directly, as a library user may.
  const config = { ...(await resolvedConfig()), length: { ...(await resolvedConfig()).length } };
  config.length.lowQuantile = 0.9;
  config.length.highQuantile = 0.1;
  const fullDeps = { ...deps, create: () => Promise.reject(new Error("not reached")) };
  await assert.rejects(
    async () => await guarded.create(config, fullDeps),
    (error: Error) => {
      assert.ok(error instanceof UserError);
      assert.match(error.message, /^guarded reward: length\.lowQuantile: must be below/);
      return true;
    },
  );
  const ref = await resolvePluginRef(registries, "reward", "guarded", "test");
  const reward = await createPlugin(registries, "reward", ref, deps);
  await assert.rejects(
    () => reward.score(rows("Open the file", "Öffne die Datei")),
    (error: Error) =>
      error instanceof UserError && /guarded reward: no rules learned/.test(error.message),
  );
});

Deno.test("guarded: an inner reward's prepare runs first, in inner/; needsReference is the inner one's", async () => {
  const calls: string[] = [];
  const inner: RewardModel = {
    needsReference: false,
    score: (input) => Promise.resolve(input.map(() => 0.5)),
    prepare(ctx) {
      calls.push(ctx.dir);
      ctx.log("ready");
      return Promise.resolve();
    },
  };
  const config = await resolvedConfig();
  const reward = await guarded.create(config, {
    ...deps,
    create: () => Promise.resolve(inner) as never,
  });
  assert.equal(reward.needsReference, false);
  const dir = await Deno.makeTempDir();
  try {
    const logs: string[] = [];
    await reward.prepare!({
      dir,
      splits: { train: TRAIN, valid: [], test: [], select: [] },
      log: (message: string) => logs.push(message),
    } as unknown as RewardPrepareContext);
    assert.deepEqual(calls, [join(dir, "inner")]);
    assert.equal(logs[0], "chrf: ready");
    assert.match(logs[1], /^guards from 12 training pairs/);
    assert.deepEqual(
      await reward.score([
        { source: "Open the file", hypothesis: "Öffne die Datei" },
        { source: "Open the file", hypothesis: "Open the file" },
      ]),
      [0.5, 0],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("guarded: a smoke experiment with {reward: chrf} runs (baselines and ReST)", async () => {
  await withTempDir(async (out) => {
    const manifest = tinyManifest({
      experiment: "guarded_smoke",
      reward: { name: "guarded", config: { reward: "chrf" } },
      runs: [
        { name: "baselines", algorithm: "baselines" },
        tinyRestRun(),
      ],
    });
    const { result, logs } = await runTiny(manifest, out, { smoke: true, registries });
    const learned = logs.filter((l) => /^reward: guards from \d+ training pairs: /.test(l));
    assert.equal(learned.length, 2, "learned once per run");
    const base = result.runs.baselines.metrics;
    // The source copied (English into pseudo-German) is zeroed; references keep chrF 1.
    assert.equal(base["eval/valid_reward_copy"], 0);
    assert.equal(base["eval/valid_reward_reference"], 1);
    // ReST logs the guard's counters of its Grow step.
    const records = await readMetrics(join(result.dir, "rest", "metrics.jsonl"));
    const grow = records.find((r) => "grow/reward_guard_scored" in r);
    assert.ok(grow !== undefined, "grow/reward_guard_* logged");
    assert.ok((grow["grow/reward_guard_scored"] as number) > 0);
    for (const rule of ["length", "repetition", "copy", "script", "ending"]) {
      assert.equal(typeof grow[`grow/reward_guard_${rule}`], "number", rule);
    }
    assert.ok(
      (grow["grow/reward_guard_rows"] as number) <= (grow["grow/reward_guard_scored"] as number),
    );
    const folder = join(result.dir, "shared", "rewards");
    const names = [...Deno.readDirSync(folder)].map((e) => e.name);
    assert.equal(names.length, 1);
    assert.match(names[0], /^guarded-[0-9a-f]{8}$/);
    const saved = JSON.parse(await Deno.readTextFile(join(folder, names[0], RULES_FILE)));
    assert.deepEqual(saved.rules.script.allowed, ["Latin"]);
  });
});

Deno.test("guarded: adapts when its inner reward can (same rules on the new version), else has no adapt", async () => {
  const config = await resolvedConfig({ ...ALL_OFF, copy: { enabled: true } });
  const rules = learnGuards(TRAIN, config);
  assert.equal(
    new GuardedReward(config, { needsReference: true, score: () => Promise.resolve([]) }).adapt,
    undefined,
  );
  const seen: unknown[] = [];
  const inner: RewardModel = {
    needsReference: false,
    score: (rows) => Promise.resolve(rows.map(() => 0.5)),
    adapt: (rows, ctx) => {
      seen.push(rows.length, ctx.dir);
      const reward = {
        needsReference: false,
        score: (r: readonly RewardInput[]) => Promise.resolve(r.map(() => 0.9)),
      };
      return Promise.resolve({ reward, steps: 3, reloaded: false, dispose() {} });
    },
  };
  const guarded = new GuardedReward(config, inner);
  guarded.useRules(rules);
  const ctx = {
    dir: "/nowhere",
    seed: 1,
    epochs: 1,
    learningRate: 0.001,
    batchSize: 4,
    progress: () => ({ tick() {}, done() {} }),
    log: () => {},
  };
  const adapted = await guarded.adapt!([{ source: "a", hypothesis: "b", label: 0.2 }], ctx);
  assert.deepEqual(seen, [1, "/nowhere"]);
  assert.equal(adapted.steps, 3);
  const rows = [
    { source: "Open the file", hypothesis: "Öffne die Datei" },
    { source: "Export the document as PDF", hypothesis: "Export the document as PDF" },
  ];
  // The new version's scores, with the copy of the source still zeroed by the same rule.
  assert.deepEqual(await adapted.reward.score(rows), [0.9, 0]);
});
