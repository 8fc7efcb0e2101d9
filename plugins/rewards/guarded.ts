/**
 * `guarded`: an inner reward whose score is set to 0 for any hypothesis that breaks simple
 * rules learned from the training pairs, a guard against reward hacking in the spirit of
 * RAFT+ (He et al. 2024): the policy cannot raise its reward by outputs that no reference
 * resembles. The inner reward (`reward`, chrF by default) is configured like a `weighted`
 * component: its name or `{name, config}`.
 *
 * ## The rules
 *
 * Each rule has its own config section with `enabled`; what it learns comes from the
 * training pairs in {@link RewardModel.prepare}. Lengths are counted in characters (Unicode
 * code points, whitespace not counted), which works for scripts written without spaces
 * too; "words" are whitespace-separated tokens, lowercased (so the word rules, repetition
 * and dangling words, see little in scripts written without spaces).
 *
 * - `length`: the hypothesis/source length ratio must lie in the band learned from the
 *   reference/source ratios of the training pairs: their `lowQuantile` and `highQuantile`
 *   (nearest-rank quantiles, so on a small training set the band spans every reference),
 *   widened by `slack` characters on each side for short sources. Only pairs whose source
 *   has at least `minSourceChars` characters teach the band (short strings have erratic
 *   ratios); all pairs when fewer than 10 qualify. An empty hypothesis for a non-empty
 *   source is always out of band.
 * - `repetition`: no word n-gram (`n` words) may occur more than `maxCount` times, a limit
 *   raised to the `learnQuantile` quantile of the references' own largest n-gram counts
 *   (so a repetition the references show is not punished).
 * - `copy`: a hypothesis equal to the source (after NFKC, lowercasing and collapsing
 *   whitespace; only sources with a letter) is zeroed unless at least `allowRate` of the
 *   training references equal their source (product names, formulas: then copying is
 *   normal for the data). Also zeroed: a hypothesis of at least `minChars` characters
 *   whose character-trigram overlap with the source (the share of its trigrams found in
 *   the source) exceeds the `overlapQuantile` quantile of the same overlap between
 *   non-identical training references and their sources.
 * - `script`: at most `maxForeignShare` of the hypothesis's letters may be in scripts
 *   (Unicode `Script` property) that hold less than `minShare` of the training references'
 *   letters. Letters of the Common and Inherited scripts are never foreign.
 * - `ending`: the hypothesis must not end with an ending that fewer than `minShare` of the
 *   references end with; an ending is "letter", "digit", "empty" (nothing at all), or the
 *   final punctuation or symbol character itself (`,`, `(`, `-` ...). With
 *   `danglingWords`, it must also not end with a word that occurs at least `minWordCount`
 *   times in the references but ends at most `maxFinalShare` of those (connectors and
 *   articles such as "and", "the", "der": the mark of a truncated output).
 *
 * With `waiveForReference` (the default), a rule is not applied to a row whose reference
 * (when the row has one) breaks it too: the references themselves, which Grow scores as
 * well, are never zeroed, and a legitimate copy or repetition is kept wherever the
 * reference shows it.
 *
 * ## Files
 *
 * `prepare` writes the learned rules to `guards.json` in the reward's folder and logs them
 * in one line; an inner reward that needs preparing (e.g. `learned`) is prepared first, in
 * the subfolder `inner/`. `score` before `prepare` is rejected.
 *
 * ## Diagnostics
 *
 * The reward object has a `diagnostics(): Record<string, number>` method (see
 * {@link GuardedReward.diagnostics}): the counts since its previous call, then reset to
 * zero. `guard_<rule>` counts the rows that rule flagged (for each enabled rule; a row
 * can break several), `guard_rows` the rows zeroed by at least one rule, `guard_scored`
 * every row scored. ReST logs them after each Grow step as `grow/reward_<key>`, PPO after
 * each rollout batch as `ppo/reward_<key>`.
 *
 * @module
 */

import { join } from "node:path";
import { UserError } from "../../core/errors.ts";
import { checkScores } from "../../core/evaluate.ts";
import { definePlugin, int, num, pluginRef, type ResolvedPluginRef } from "../../core/plugin.ts";
import { writeFileAtomic } from "../../core/run.ts";
import { readPreparedJson } from "./_prepared.ts";
import { prepareWrapped, restoreWrapped } from "./_wrapped.ts";
import type {
  Example,
  LabelledRow,
  RewardAdaptation,
  RewardAdaptContext,
  RewardInput,
  RewardModel,
  RewardPrepareContext,
  RewardRestoreContext,
} from "../../core/types.ts";

/** The rules, in the order they are checked and reported. */
export const GUARD_RULES = ["length", "repetition", "copy", "script", "ending"] as const;

/** One of {@link GUARD_RULES}. */
export type GuardRule = typeof GUARD_RULES[number];

/** Config of the `length` rule. */
export interface LengthGuardConfig {
  /** Apply the rule. */
  enabled: boolean;
  /** Quantile of the reference/source ratios giving the band's lower end. */
  lowQuantile: number;
  /** Quantile of the reference/source ratios giving the band's upper end. */
  highQuantile: number;
  /** Characters of slack on each side of the band. */
  slack: number;
  /** Only pairs whose source has at least this many characters teach the band. */
  minSourceChars: number;
}

/** Config of the `repetition` rule. */
export interface RepetitionGuardConfig {
  /** Apply the rule. */
  enabled: boolean;
  /** Words per n-gram. */
  n: number;
  /** Most occurrences of one n-gram (before learning). */
  maxCount: number;
  /** Quantile of the references' largest n-gram counts the limit is raised to. */
  learnQuantile: number;
}

/** Config of the `copy` rule. */
export interface CopyGuardConfig {
  /** Apply the rule. */
  enabled: boolean;
  /** Copying is allowed when at least this share of training references equal their source. */
  allowRate: number;
  /** Quantile of the references' trigram overlap with their source that a hypothesis may reach. */
  overlapQuantile: number;
  /** The overlap test applies to hypotheses of at least this many characters. */
  minChars: number;
}

/** Config of the `script` rule. */
export interface ScriptGuardConfig {
  /** Apply the rule. */
  enabled: boolean;
  /** A script is the references' when it holds at least this share of their letters. */
  minShare: number;
  /** Most share of a hypothesis's letters allowed in other scripts. */
  maxForeignShare: number;
}

/** Config of the `ending` rule. */
export interface EndingGuardConfig {
  /** Apply the rule. */
  enabled: boolean;
  /** An ending is suspicious when fewer than this share of references end with it. */
  minShare: number;
  /** Also flag endings on words that rarely end a reference. */
  danglingWords: boolean;
  /** A word counts only when the references hold it at least this many times. */
  minWordCount: number;
  /** A word dangles when at most this share of its occurrences end a reference. */
  maxFinalShare: number;
}

/** Config of the `guarded` reward (after resolution: `reward` is a resolved reference). */
export interface GuardedConfig {
  /** The inner reward whose scores are passed through or zeroed. */
  reward: ResolvedPluginRef;
  /** Skip a rule on a row whose reference breaks it too. */
  waiveForReference: boolean;
  /** Length-ratio band. */
  length: LengthGuardConfig;
  /** Repeated word n-grams. */
  repetition: RepetitionGuardConfig;
  /** Copies of the source. */
  copy: CopyGuardConfig;
  /** Letters in scripts the references do not use. */
  script: ScriptGuardConfig;
  /** Suspicious final characters and dangling words. */
  ending: EndingGuardConfig;
}

/**
 * The rule parameters learned from the training pairs (what `guards.json` holds). A rule
 * that is switched off, or that the training pairs cannot teach, is absent.
 */
export interface GuardRules {
  /** Training pairs learned from. */
  trainPairs: number;
  /** Allowed hypothesis length in [low * s - slack, high * s + slack] for s source characters. */
  length?: { low: number; high: number; slack: number; pairs: number };
  /** No word `n`-gram may occur more than `limit` times; `referenceCount` is the learned part. */
  repetition?: { n: number; limit: number; referenceCount: number };
  /**
   * Copies are zeroed unless `copyAllowed`; `identityRate` is the share of references equal
   * to their source; `overlapThreshold` (null: not learned) bounds the trigram overlap of
   * hypotheses of at least `minChars` characters.
   */
  copy?: {
    identityRate: number;
    copyAllowed: boolean;
    overlapThreshold: number | null;
    minChars: number;
  };
  /** Share of the references' letters per script, and the scripts allowed. */
  script?: { shares: Record<string, number>; allowed: string[]; maxForeignShare: number };
  /** Share of references per ending, the endings allowed, and the dangling words. */
  ending?: { shares: Record<string, number>; allowed: string[]; danglingWords: string[] };
}

/** Name of the learned rules' file in the reward folder. */
export const RULES_FILE = "guards.json";

const FORMAT = "rest-guarded-reward";
const MIN_BAND_PAIRS = 10;

// ---------------------------------------------------------------------------------------
// Text measures

/** Characters of a text, whitespace not counted. */
function visibleLength(text: string): number {
  let n = 0;
  for (const _ of text.replace(/\s+/gu, "")) n++;
  return n;
}

/** Lowercased whitespace-separated words. */
function words(text: string): string[] {
  return text.toLowerCase().split(/\s+/u).filter((w) => w.length > 0);
}

/** The largest number of occurrences of one word n-gram (0 with fewer than n words). */
function maxNgramCount(tokens: readonly string[], n: number): number {
  const counts = new Map<string, number>();
  let most = 0;
  for (let i = 0; i + n <= tokens.length; i++) {
    const key = tokens.slice(i, i + n).join("\u0000");
    const count = (counts.get(key) ?? 0) + 1;
    counts.set(key, count);
    if (count > most) most = count;
  }
  return most;
}

/** NFKC, lowercased, whitespace runs collapsed to one space, trimmed. */
function normalise(text: string): string {
  return text.normalize("NFKC").toLowerCase().replace(/\s+/gu, " ").trim();
}

/** Character trigrams of a normalised text (the text itself when shorter). */
function trigrams(text: string): Map<string, number> {
  const chars = [...text];
  const grams = new Map<string, number>();
  if (chars.length === 0) return grams;
  if (chars.length < 3) return grams.set(text, 1);
  for (let i = 0; i + 3 <= chars.length; i++) {
    const gram = chars[i] + chars[i + 1] + chars[i + 2];
    grams.set(gram, (grams.get(gram) ?? 0) + 1);
  }
  return grams;
}

/** Share of the hypothesis's trigrams (counts clipped) found in the source; texts normalised. */
function trigramOverlap(hypothesis: string, source: string): number {
  const hyp = trigrams(hypothesis);
  const src = trigrams(source);
  let total = 0;
  let shared = 0;
  for (const [gram, count] of hyp) {
    total += count;
    shared += Math.min(count, src.get(gram) ?? 0);
  }
  return total === 0 ? 0 : shared / total;
}

const SCRIPTS = [
  "Latin",
  "Greek",
  "Cyrillic",
  "Armenian",
  "Hebrew",
  "Arabic",
  "Syriac",
  "Thaana",
  "Nko",
  "Devanagari",
  "Bengali",
  "Gurmukhi",
  "Gujarati",
  "Oriya",
  "Tamil",
  "Telugu",
  "Kannada",
  "Malayalam",
  "Sinhala",
  "Thai",
  "Lao",
  "Tibetan",
  "Myanmar",
  "Georgian",
  "Hangul",
  "Ethiopic",
  "Cherokee",
  "Canadian_Aboriginal",
  "Khmer",
  "Mongolian",
  "Hiragana",
  "Katakana",
  "Bopomofo",
  "Han",
  "Yi",
  "Tifinagh",
  "Javanese",
  "Common",
  "Inherited",
];
const SCRIPT_PATTERNS = SCRIPTS.map((name) => ({
  name,
  pattern: new RegExp(`^\\p{Script=${name}}$`, "u"),
}));
const NEUTRAL_SCRIPTS = new Set(["Common", "Inherited"]);
const scriptCache = new Map<string, string>();

/** The Unicode script of a character if it is a letter ("Other" for scripts not listed), else "". */
function scriptOf(ch: string): string {
  let script = scriptCache.get(ch);
  if (script === undefined) {
    script = /\p{L}/u.test(ch)
      ? SCRIPT_PATTERNS.find((s) => s.pattern.test(ch))?.name ?? "Other"
      : "";
    if (scriptCache.size < 100_000) scriptCache.set(ch, script);
  }
  return script;
}

/** Letters of a text per script. */
function letterScripts(text: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const ch of text) {
    const script = scriptOf(ch);
    if (script !== "") counts.set(script, (counts.get(script) ?? 0) + 1);
  }
  return counts;
}

/** The ending of a text: "empty", "letter", "digit", or its last non-space character. */
function endingOf(text: string): string {
  const chars = [...text.trimEnd()];
  if (chars.length === 0) return "empty";
  const last = chars[chars.length - 1];
  if (/[\p{L}\p{M}]/u.test(last)) return "letter";
  if (/\p{N}/u.test(last)) return "digit";
  return last;
}

/** The last word when it is made of letters only (lowercased), else undefined. */
function finalWord(text: string): string | undefined {
  const tokens = words(text);
  const last = tokens[tokens.length - 1];
  return last !== undefined && /^[\p{L}\p{M}]+$/u.test(last) ? last : undefined;
}

/** The nearest-rank quantile of some values (q = 0: the minimum, q = 1: the maximum). */
function nearestRank(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[index];
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

// ---------------------------------------------------------------------------------------
// Learning

function learnLength(pairs: readonly Example[], c: LengthGuardConfig): GuardRules["length"] {
  const ratios = (minSource: number) =>
    pairs.flatMap(({ source, reference }) => {
      const s = visibleLength(source);
      return s > 0 && s >= minSource ? [visibleLength(reference) / s] : [];
    });
  let usable = ratios(c.minSourceChars);
  if (usable.length < MIN_BAND_PAIRS) usable = ratios(1);
  if (usable.length === 0) return undefined;
  return {
    low: nearestRank(usable, c.lowQuantile),
    high: nearestRank(usable, c.highQuantile),
    slack: c.slack,
    pairs: usable.length,
  };
}

function learnRepetition(
  pairs: readonly Example[],
  c: RepetitionGuardConfig,
): GuardRules["repetition"] {
  const counts = pairs.map((p) => maxNgramCount(words(p.reference), c.n));
  const referenceCount = counts.length > 0 ? nearestRank(counts, c.learnQuantile) : 0;
  return { n: c.n, limit: Math.max(c.maxCount, referenceCount), referenceCount };
}

function learnCopy(pairs: readonly Example[], c: CopyGuardConfig): GuardRules["copy"] {
  let identical = 0;
  const overlaps: number[] = [];
  for (const { source, reference } of pairs) {
    const src = normalise(source);
    const ref = normalise(reference);
    if (ref === src) identical++;
    else if (visibleLength(ref) >= c.minChars) overlaps.push(trigramOverlap(ref, src));
  }
  const identityRate = pairs.length > 0 ? identical / pairs.length : 0;
  return {
    identityRate: round(identityRate),
    copyAllowed: pairs.length > 0 && identityRate >= c.allowRate,
    overlapThreshold: overlaps.length > 0 ? nearestRank(overlaps, c.overlapQuantile) : null,
    minChars: c.minChars,
  };
}

function learnScript(pairs: readonly Example[], c: ScriptGuardConfig): GuardRules["script"] {
  const counts = new Map<string, number>();
  let letters = 0;
  for (const { reference } of pairs) {
    for (const [script, n] of letterScripts(reference)) {
      counts.set(script, (counts.get(script) ?? 0) + n);
      letters += n;
    }
  }
  if (letters === 0) return undefined;
  const shares = Object.fromEntries(
    [...counts].sort((a, b) => b[1] - a[1]).map(([script, n]) => [script, round(n / letters)]),
  );
  const allowed = [...counts].filter(([, n]) => n / letters >= c.minShare).map(([s]) => s);
  return { shares, allowed, maxForeignShare: c.maxForeignShare };
}

function learnEnding(pairs: readonly Example[], c: EndingGuardConfig): GuardRules["ending"] {
  if (pairs.length === 0) return undefined;
  const endings = new Map<string, number>();
  const seen = new Map<string, { count: number; final: number }>();
  for (const { reference } of pairs) {
    const ending = endingOf(reference);
    endings.set(ending, (endings.get(ending) ?? 0) + 1);
    const tokens = words(reference);
    tokens.forEach((token, i) => {
      if (!/^[\p{L}\p{M}]+$/u.test(token)) return;
      const entry = seen.get(token) ?? { count: 0, final: 0 };
      entry.count++;
      if (i === tokens.length - 1) entry.final++;
      seen.set(token, entry);
    });
  }
  const sorted = [...endings].sort((a, b) => b[1] - a[1]);
  const shares = Object.fromEntries(sorted.map(([e, n]) => [e, round(n / pairs.length)]));
  const allowed = sorted.filter(([, n]) => n / pairs.length >= c.minShare).map(([e]) => e);
  const danglingWords = c.danglingWords
    ? [...seen]
      .filter(([, w]) => w.count >= c.minWordCount && w.final / w.count <= c.maxFinalShare)
      .sort((a, b) => b[1].count - a[1].count || (a[0] < b[0] ? -1 : 1))
      .map(([word]) => word)
    : [];
  return { shares, allowed, danglingWords };
}

/** Learns the parameters of every enabled rule from training pairs (see the module doc). */
export function learnGuards(pairs: readonly Example[], config: GuardedConfig): GuardRules {
  const rules: GuardRules = { trainPairs: pairs.length };
  if (config.length.enabled) rules.length = learnLength(pairs, config.length);
  if (config.repetition.enabled) rules.repetition = learnRepetition(pairs, config.repetition);
  if (config.copy.enabled) rules.copy = learnCopy(pairs, config.copy);
  if (config.script.enabled) rules.script = learnScript(pairs, config.script);
  if (config.ending.enabled) rules.ending = learnEnding(pairs, config.ending);
  for (const key of GUARD_RULES) if (rules[key] === undefined) delete rules[key];
  return rules;
}

/** The learned rules in one line, for the log. */
export function describeGuards(rules: GuardRules): string {
  const parts: string[] = [];
  const { length, repetition, copy, script, ending } = rules;
  if (length) {
    parts.push(
      `length ratio in [${length.low.toFixed(2)}, ${length.high.toFixed(2)}] +-${length.slack} ` +
        `chars (from ${length.pairs} pairs)`,
    );
  }
  if (repetition) parts.push(`${repetition.n}-grams at most ${repetition.limit}x`);
  if (copy) {
    const rate = `${(100 * copy.identityRate).toFixed(1)}% of references equal their source`;
    const overlap = copy.overlapThreshold === null
      ? ""
      : `, trigram overlap above ${copy.overlapThreshold.toFixed(2)} zeroed`;
    parts.push(`copies ${copy.copyAllowed ? "allowed" : "zeroed"} (${rate})${overlap}`);
  }
  if (script) parts.push(`scripts ${script.allowed.join("+") || "none"}`);
  if (ending) {
    const shown = ending.allowed.slice(0, 12).map((e) => JSON.stringify(e)).join(" ");
    const words = ending.danglingWords;
    parts.push(
      `endings ${shown}${ending.allowed.length > 12 ? " ..." : ""}; ${words.length} dangling ` +
        `words${
          words.length > 0
            ? ` (${words.slice(0, 5).join(", ")}${words.length > 5 ? ", ..." : ""})`
            : ""
        }`,
    );
  }
  const off = GUARD_RULES.filter((r) => rules[r] === undefined);
  if (off.length > 0) parts.push(`off: ${off.join(", ")}`);
  return `guards from ${rules.trainPairs} training pairs: ${parts.join("; ")}`;
}

// ---------------------------------------------------------------------------------------
// Checking

/** Whether `text`, as an output for `source`, breaks one learned rule. */
export function breaksRule(
  rule: GuardRule,
  text: string,
  source: string,
  rules: GuardRules,
): boolean {
  switch (rule) {
    case "length": {
      const band = rules.length;
      if (band === undefined) return false;
      const s = visibleLength(source);
      const h = visibleLength(text);
      const low = s > 0 ? Math.max(1, band.low * s - band.slack) : 0;
      return h < low || h > band.high * s + band.slack;
    }
    case "repetition": {
      const r = rules.repetition;
      return r !== undefined && maxNgramCount(words(text), r.n) > r.limit;
    }
    case "copy": {
      const c = rules.copy;
      if (c === undefined) return false;
      const hyp = normalise(text);
      const src = normalise(source);
      if (hyp === src) return !c.copyAllowed && /\p{L}/u.test(src);
      return c.overlapThreshold !== null && visibleLength(hyp) >= c.minChars &&
        trigramOverlap(hyp, src) > c.overlapThreshold;
    }
    case "script": {
      const s = rules.script;
      if (s === undefined) return false;
      let letters = 0;
      let foreign = 0;
      for (const [script, n] of letterScripts(text)) {
        letters += n;
        if (!NEUTRAL_SCRIPTS.has(script) && !s.allowed.includes(script)) foreign += n;
      }
      return letters > 0 && foreign / letters > s.maxForeignShare;
    }
    case "ending": {
      const e = rules.ending;
      if (e === undefined) return false;
      if (!e.allowed.includes(endingOf(text))) return true;
      const word = finalWord(text);
      return word !== undefined && danglingSet(e).has(word);
    }
  }
}

const danglingSets = new WeakMap<object, ReadonlySet<string>>();

/** The dangling words of learned ending rules as a set, built once per rules object. */
function danglingSet(ending: NonNullable<GuardRules["ending"]>): ReadonlySet<string> {
  let set = danglingSets.get(ending);
  if (set === undefined) {
    set = new Set(ending.danglingWords);
    danglingSets.set(ending, set);
  }
  return set;
}

// ---------------------------------------------------------------------------------------
// The reward

/** The `guarded` reward instance (see the module doc). */
export class GuardedReward implements RewardModel {
  readonly needsReference: boolean;
  readonly #config: GuardedConfig;
  readonly #inner: RewardModel;
  readonly #active: GuardRule[];
  #rules: GuardRules | undefined;
  #counts: Record<string, number> = {};

  /**
   * Present when the inner reward can adapt (ReST's `rewardUpdate`): the inner reward's new
   * version, guarded by the same rules.
   */
  readonly adapt?: (
    rows: readonly LabelledRow[],
    ctx: RewardAdaptContext,
  ) => Promise<RewardAdaptation>;

  /** Wraps `inner`; the rules are learned by {@link GuardedReward.prepare}. */
  constructor(config: GuardedConfig, inner: RewardModel) {
    this.#config = config;
    this.#inner = inner;
    this.needsReference = inner.needsReference;
    this.#active = GUARD_RULES.filter((rule) => config[rule].enabled);
    this.#reset();
    const adapt = inner.adapt?.bind(inner);
    if (adapt !== undefined) {
      this.adapt = async (rows, ctx) => {
        const adapted = await adapt(rows, ctx);
        const next = new GuardedReward(this.#config, adapted.reward);
        if (this.#rules !== undefined) next.useRules(this.#rules);
        return { ...adapted, reward: next };
      };
    }
  }

  /** The learned rules (undefined before {@link GuardedReward.prepare}). */
  get rules(): GuardRules | undefined {
    return this.#rules;
  }

  /** Installs learned rules directly (e.g. ones read back from `guards.json`). */
  useRules(rules: GuardRules): void {
    this.#rules = rules;
  }

  /** Prepares the inner reward, then learns the rules from the training pairs and saves them. */
  async prepare(ctx: RewardPrepareContext): Promise<void> {
    await prepareWrapped(this.#inner, ctx, "inner", this.#config.reward.name);
    const rules = learnGuards(ctx.splits.train, this.#config);
    await Deno.mkdir(ctx.dir, { recursive: true });
    const path = join(ctx.dir, RULES_FILE);
    const record = { format: FORMAT, version: 1, rules };
    await writeFileAtomic(path, JSON.stringify(record, null, 2) + "\n");
    this.useRules(rules);
    ctx.log(`${describeGuards(rules)}; wrote ${path}`);
  }

  /** Restores the inner reward, then reads the rules {@link GuardedReward.prepare} saved. */
  async restore(ctx: RewardRestoreContext): Promise<void> {
    await restoreWrapped(this.#inner, ctx, "inner", this.#config.reward.name);
    const record = await readPreparedJson("guarded", join(ctx.dir, RULES_FILE), FORMAT);
    this.useRules(record.rules as GuardRules);
  }

  /** The inner reward's scores, 0 for rows that break an enabled rule. */
  async score(rows: readonly RewardInput[]): Promise<number[]> {
    const rules = this.#rules;
    if (rules === undefined) {
      throw new UserError(
        "guarded reward: no rules learned; they are learned from the training pairs by " +
          "prepare(), which an experiment runs before the reward is used (`deno task exp`), " +
          "not by a bare score() nor inside another reward (e.g. a weighted component)",
      );
    }
    const scores = await this.#inner.score(rows);
    checkScores(scores, rows.length);
    const out = [...scores];
    const waived = new Map<string, Set<GuardRule>>();
    for (let i = 0; i < rows.length; i++) {
      const broken = this.#broken(rows[i], rules, waived);
      for (const rule of broken) this.#counts[`guard_${rule}`]++;
      if (broken.length > 0) {
        this.#counts.guard_rows++;
        out[i] = 0;
      }
    }
    this.#counts.guard_scored += rows.length;
    return out;
  }

  /**
   * The counts since the previous call (or since creation), then reset: `guard_<rule>` per
   * enabled rule (rows it flagged), `guard_rows` (rows zeroed), `guard_scored` (rows scored).
   */
  diagnostics(): Record<string, number> {
    const counts = this.#counts;
    this.#reset();
    return counts;
  }

  #reset(): void {
    this.#counts = Object.fromEntries([
      ...this.#active.map((rule) => [`guard_${rule}`, 0]),
      ["guard_rows", 0],
      ["guard_scored", 0],
    ]);
  }

  /** The enabled rules a row breaks, less those its reference breaks too (when waived). */
  #broken(row: RewardInput, rules: GuardRules, waived: Map<string, Set<GuardRule>>): GuardRule[] {
    const broken = this.#active.filter((rule) =>
      breaksRule(rule, row.hypothesis, row.source, rules)
    );
    const reference = row.reference;
    if (broken.length === 0 || !this.#config.waiveForReference || typeof reference !== "string") {
      return broken;
    }
    const key = `${row.source}\u0000${reference}`;
    let byReference = waived.get(key);
    if (byReference === undefined) {
      byReference = new Set(
        this.#active.filter((r) => breaksRule(r, reference, row.source, rules)),
      );
      waived.set(key, byReference);
    }
    return broken.filter((rule) => !byReference.has(rule));
  }
}

/** Relations between options the schema cannot express: `{path, message}` per problem. */
export function guardedConfigProblems(config: GuardedConfig): { path: string; message: string }[] {
  const problems: { path: string; message: string }[] = [];
  if (!GUARD_RULES.some((rule) => config[rule].enabled)) {
    problems.push({
      path: "",
      message: "every rule is switched off (enable one, or use the inner reward directly)",
    });
  }
  const { lowQuantile, highQuantile } = config.length;
  if (config.length.enabled && !(lowQuantile < highQuantile)) {
    problems.push({
      path: "/length/lowQuantile",
      message: `must be below length.highQuantile (${highQuantile}), got ${lowQuantile}`,
    });
  }
  return problems;
}

/** The `guarded` reward plugin (see the module doc). */
export default definePlugin({
  kind: "reward",
  name: "guarded",
  summary:
    "An inner reward set to 0 for hypotheses that break rules learned from the training pairs (length band, repeated n-grams, source copies, foreign scripts, suspicious endings).",
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      reward: pluginRef(
        "reward",
        "chrf",
        "The inner reward: a reward plugin's name or {name, config}.",
      ),
      waiveForReference: {
        type: "boolean",
        default: true,
        description:
          "Do not apply a rule to a row whose reference (when the row has one) breaks it too, so references are never zeroed.",
      },
      length: {
        type: "object",
        additionalProperties: false,
        default: {},
        description:
          "Zero hypotheses whose length (characters, whitespace not counted) is outside the band of reference/source ratios learned from the training pairs.",
        properties: {
          enabled: { type: "boolean", default: true, description: "Apply the length rule." },
          lowQuantile: num(
            0,
            1,
            0.005,
            "Nearest-rank quantile of the training reference/source ratios giving the band's lower end.",
          ),
          highQuantile: num(
            0,
            1,
            0.995,
            "Nearest-rank quantile of the training reference/source ratios giving the band's upper end.",
          ),
          slack: int(
            0,
            100_000,
            5,
            "Characters of slack on each side: allowed lengths are [low * s - slack, high * s + slack] for s source characters (an empty hypothesis is never allowed for a non-empty source).",
          ),
          minSourceChars: int(
            0,
            100_000,
            10,
            "Only training pairs whose source has at least this many characters teach the band (all pairs when fewer than 10 qualify).",
          ),
        },
      },
      repetition: {
        type: "object",
        additionalProperties: false,
        default: {},
        description: "Zero hypotheses in which a word n-gram occurs too often.",
        properties: {
          enabled: { type: "boolean", default: true, description: "Apply the repetition rule." },
          n: int(1, 20, 3, "Words per n-gram (lowercased, split at whitespace)."),
          maxCount: int(
            1,
            1_000_000,
            2,
            "Most occurrences of one n-gram in a hypothesis, before learning.",
          ),
          learnQuantile: num(
            0,
            1,
            0.999,
            "The limit is raised to this nearest-rank quantile of the training references' own largest n-gram counts (1: the most any reference shows; 0: maxCount stays unless every reference repeats more).",
          ),
        },
      },
      copy: {
        type: "object",
        additionalProperties: false,
        default: {},
        description:
          "Zero hypotheses that copy the source (equal after NFKC, lowercasing and whitespace collapsing) or overlap it unusually much.",
        properties: {
          enabled: { type: "boolean", default: true, description: "Apply the copy rule." },
          allowRate: num(
            0,
            1,
            0.1,
            "Copies are allowed when at least this share of the training references equal their source.",
          ),
          overlapQuantile: num(
            0,
            1,
            0.995,
            "A hypothesis's character-trigram overlap with the source (share of its trigrams found there) may reach this nearest-rank quantile of the non-identical training references' overlaps, no more.",
          ),
          minChars: int(
            0,
            100_000,
            10,
            "The overlap test applies to hypotheses (and is learned from references) of at least this many characters.",
          ),
        },
      },
      script: {
        type: "object",
        additionalProperties: false,
        default: {},
        description:
          "Zero hypotheses whose letters are largely in Unicode scripts the training references do not use.",
        properties: {
          enabled: { type: "boolean", default: true, description: "Apply the script rule." },
          minShare: num(
            0,
            1,
            0.0001,
            "A script is the references' when it holds at least this share of their letters.",
          ),
          maxForeignShare: num(
            0,
            1,
            0.1,
            "Most share of a hypothesis's letters allowed in other scripts (Common and Inherited letters never count).",
          ),
        },
      },
      ending: {
        type: "object",
        additionalProperties: false,
        default: {},
        description:
          "Zero hypotheses with an ending the training references (almost) never have: a final punctuation or symbol, nothing at all, or a dangling word.",
        properties: {
          enabled: { type: "boolean", default: true, description: "Apply the ending rule." },
          minShare: num(
            0,
            1,
            0.001,
            "An ending (letter, digit, empty, or the final punctuation/symbol character) is suspicious when fewer than this share of references end with it.",
          ),
          danglingWords: {
            type: "boolean",
            default: true,
            description:
              "Also zero hypotheses ending on a word that is frequent in the references but rarely ends one (connectors, articles).",
          },
          minWordCount: int(
            1,
            1_000_000_000,
            20,
            "A word can dangle only when the references hold it at least this many times.",
          ),
          maxFinalShare: num(
            0,
            1,
            0.01,
            "A word dangles when at most this share of its occurrences in the references end one.",
          ),
        },
      },
    },
  },
  check: guardedConfigProblems,
  async create(config: GuardedConfig, deps): Promise<RewardModel> {
    const problems = guardedConfigProblems(config);
    if (problems.length > 0) {
      const { path, message } = problems[0];
      const field = path === "" ? "config" : path.slice(1).replaceAll("/", ".");
      throw new UserError(`guarded reward: ${field}: ${message}`);
    }
    return new GuardedReward(config, await deps.create("reward", config.reward));
  },
});
