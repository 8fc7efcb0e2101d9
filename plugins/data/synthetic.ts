/**
 * `synthetic` data plugin: a generated toy translation task from English into
 * "pseudo-German", deterministic from its `seed`, needing no files. Small enough
 * for a tiny transformer to learn in minutes, structured enough that word order
 * and agreement must be learnt, not just a word-for-word lexicon.
 *
 * ## The language
 *
 * The lexicon is fixed English words (50 nouns, 24 adjectives, 24 verbs, 10
 * adverbs); each gets a pseudo-German stem built from syllables drawn with the
 * seed, and each noun a gender (m, f, n). A sentence is
 *
 *     English:        SUBJ VERB OBJ [ADV]
 *     pseudo-German:  SUBJ OBJ VERB         (no adverb: verb last)
 *                     ADV VERB SUBJ OBJ     (adverb: fronted, verb second)
 *
 * where a noun phrase is a determiner, up to two adjectives and a noun:
 *
 * | English | pseudo-German |
 * |---|---|
 * | the / a / some (plural) | definite: der, die, das / plural die; accusative masculine den; indefinite: ein, eine, ein / accusative masculine einen; plural einige |
 * | adjective | stem + gender/number suffix: m `-er`, f `-e`, n `-es`, plural `-en` |
 * | noun, plural noun (`-s`) | stem, plural stem + m `-e`, f `-en`, n `-er` |
 * | verb (`sees`/`see`) | stem + `-t` (singular subject) / `-en` (plural subject) |
 *
 * Both sides of a pair have the same number of words.
 *
 * @module
 */

import { DataError } from "../../core/errors.ts";
import { definePlugin } from "../../core/plugin.ts";
import { Rng } from "../../core/random.ts";
import type { Example } from "../../core/types.ts";
import { commonConfigSchema, type CommonDataConfig, finishSplits } from "./_common.ts";

/** Config of the `synthetic` plugin. */
export interface SyntheticConfig extends CommonDataConfig {
  /** Number of distinct pairs to generate (before splitting). */
  pairs: number;
}

const NOUNS = [
  "dog",
  "cat",
  "bird",
  "horse",
  "fox",
  "wolf",
  "bear",
  "fish",
  "frog",
  "duck",
  "king",
  "queen",
  "farmer",
  "doctor",
  "teacher",
  "student",
  "baker",
  "singer",
  "painter",
  "soldier",
  "house",
  "tree",
  "river",
  "garden",
  "bridge",
  "tower",
  "church",
  "window",
  "door",
  "table",
  "book",
  "letter",
  "apple",
  "cake",
  "box",
  "glass",
  "boat",
  "car",
  "train",
  "ship",
  "city",
  "forest",
  "mountain",
  "village",
  "road",
  "stone",
  "flower",
  "cup",
  "key",
  "song",
];
const ADJECTIVES = [
  "big",
  "small",
  "old",
  "young",
  "red",
  "blue",
  "green",
  "white",
  "black",
  "happy",
  "sad",
  "quick",
  "slow",
  "loud",
  "quiet",
  "rich",
  "poor",
  "strong",
  "tired",
  "clever",
  "brave",
  "strange",
  "warm",
  "cold",
];
const VERBS = [
  "see",
  "find",
  "like",
  "help",
  "call",
  "carry",
  "watch",
  "follow",
  "paint",
  "build",
  "visit",
  "open",
  "close",
  "wash",
  "push",
  "pull",
  "love",
  "hate",
  "catch",
  "miss",
  "touch",
  "fix",
  "greet",
  "draw",
];
const ADVERBS = [
  "today",
  "tomorrow",
  "yesterday",
  "often",
  "rarely",
  "again",
  "now",
  "later",
  "always",
  "sometimes",
];

/** Grammatical gender of a pseudo-German noun. */
export type Gender = "m" | "f" | "n";

/** The generated lexicon of the pseudo-German side. */
export interface SyntheticLexicon {
  /** English noun to stem and gender. */
  nouns: Map<string, { stem: string; gender: Gender }>;
  /** English adjective to stem. */
  adjectives: Map<string, string>;
  /** English verb (base form) to stem. */
  verbs: Map<string, string>;
  /** English adverb to pseudo-German adverb. */
  adverbs: Map<string, string>;
}

const ONSETS = [
  "b",
  "d",
  "f",
  "g",
  "h",
  "k",
  "l",
  "m",
  "n",
  "p",
  "r",
  "s",
  "t",
  "w",
  "z",
  "sch",
  "st",
  "kr",
  "br",
  "fl",
  "gr",
  "tr",
];
const VOWELS = ["a", "e", "i", "o", "u", "ei", "au", "ie", "ä", "ö", "ü"];
const CODAS = ["", "", "n", "l", "r", "s", "t", "ch", "ck", "nd", "rt", "ng"];

/** Builds the lexicon for a seed: unique pseudo-German stems, noun genders. */
export function syntheticLexicon(seed: number): SyntheticLexicon {
  const rng = new Rng(seed).fork("lexicon");
  const used = new Set<string>(["der", "die", "das", "den", "ein", "eine", "einen", "einige"]);
  const word = (syllables: number): string => {
    for (;;) {
      let w = "";
      for (let s = 0; s < syllables; s++) {
        w += rng.pick(ONSETS) + rng.pick(VOWELS) + rng.pick(CODAS);
      }
      if (!used.has(w)) {
        used.add(w);
        return w;
      }
    }
  };
  const genders: Gender[] = ["m", "f", "n"];
  return {
    nouns: new Map(
      NOUNS.map((n) => [n, { stem: word(1 + rng.int(2)), gender: rng.pick(genders) }]),
    ),
    adjectives: new Map(ADJECTIVES.map((a) => [a, word(1 + rng.int(2))])),
    verbs: new Map(VERBS.map((v) => [v, word(1 + rng.int(2))])),
    adverbs: new Map(ADVERBS.map((a) => [a, word(2)])),
  };
}

function englishPlural(word: string): string {
  if (/[^aeiou]y$/.test(word)) return word.slice(0, -1) + "ies";
  if (/(s|x|z|ch|sh)$/.test(word)) return word + "es";
  return word + "s";
}

const NOUN_PLURAL: Record<Gender, string> = { m: "e", f: "en", n: "er" };
const ADJ_SUFFIX: Record<Gender | "pl", string> = { m: "er", f: "e", n: "es", pl: "en" };

interface NounPhrase {
  english: string[];
  german: string[];
}

function nounPhrase(
  rng: Rng,
  lexicon: SyntheticLexicon,
  accusative: boolean,
): NounPhrase & { plural: boolean } {
  const noun = rng.pick(NOUNS);
  const { stem, gender } = lexicon.nouns.get(noun)!;
  const plural = rng.next() < 0.3;
  const definite = plural ? rng.next() < 0.6 : rng.next() < 0.55;
  const adjectiveCount = [0, 0, 0, 1, 1, 2][rng.int(6)];
  const adjectives: string[] = [];
  while (adjectives.length < adjectiveCount) {
    const a = rng.pick(ADJECTIVES);
    if (!adjectives.includes(a)) adjectives.push(a);
  }
  let enDet: string;
  let deDet: string;
  if (plural) {
    enDet = definite ? "the" : "some";
    deDet = definite ? "die" : "einige";
  } else if (definite) {
    enDet = "the";
    deDet = gender === "m" ? (accusative ? "den" : "der") : gender === "f" ? "die" : "das";
  } else {
    enDet = /^[aeiou]/.test(adjectives[0] ?? noun) ? "an" : "a";
    deDet = gender === "m" ? (accusative ? "einen" : "ein") : gender === "f" ? "eine" : "ein";
  }
  const suffix = ADJ_SUFFIX[plural ? "pl" : gender];
  return {
    plural,
    english: [enDet, ...adjectives, plural ? englishPlural(noun) : noun],
    german: [
      deDet,
      ...adjectives.map((a) => lexicon.adjectives.get(a)! + suffix),
      plural ? stem + NOUN_PLURAL[gender] : stem,
    ],
  };
}

/** Generates one sentence pair from the stream `rng`. */
export function syntheticSentence(rng: Rng, lexicon: SyntheticLexicon): Example {
  const subject = nounPhrase(rng, lexicon, false);
  const verb = rng.pick(VERBS);
  const object = nounPhrase(rng, lexicon, true);
  const adverb = rng.next() < 0.35 ? rng.pick(ADVERBS) : undefined;
  const enVerb = subject.plural ? verb : englishPlural(verb);
  const deVerb = lexicon.verbs.get(verb)! + (subject.plural ? "en" : "t");
  const english = [...subject.english, enVerb, ...object.english, ...(adverb ? [adverb] : [])];
  const german = adverb === undefined
    ? [...subject.german, ...object.german, deVerb]
    : [lexicon.adverbs.get(adverb)!, deVerb, ...subject.german, ...object.german];
  return { source: english.join(" "), reference: german.join(" ") };
}

/**
 * Generates `count` distinct pairs whose English side has between `minWords` and
 * `maxWords` words (0 = no maximum).
 *
 * @throws {DataError} when the length range cannot produce that many distinct pairs.
 */
export function generateSynthetic(
  count: number,
  seed: number,
  minWords: number,
  maxWords: number,
): Example[] {
  const lexicon = syntheticLexicon(seed);
  const rng = new Rng(seed).fork("sentences");
  const seen = new Set<string>();
  const out: Example[] = [];
  const maxAttempts = count * 50 + 1000;
  for (let attempt = 0; out.length < count && attempt < maxAttempts; attempt++) {
    const pair = syntheticSentence(rng, lexicon);
    const words = pair.source.split(" ").length;
    if (words < minWords || (maxWords > 0 && words > maxWords) || seen.has(pair.source)) continue;
    seen.add(pair.source);
    out.push(pair);
  }
  if (out.length < count) {
    throw new DataError(
      `synthetic: could only generate ${out.length} distinct pairs of ${minWords} to ${
        maxWords || "any number of"
      } words, ${count} asked; widen minWords/maxWords or lower pairs`,
    );
  }
  return out;
}

/** The `synthetic` data plugin. */
export default definePlugin<"data", SyntheticConfig>({
  kind: "data",
  name: "synthetic",
  summary:
    'A generated English to "pseudo-German" task (word order change, agreement); no files needed.',
  configSchema: {
    type: "object",
    additionalProperties: false,
    properties: {
      pairs: {
        type: "integer",
        minimum: 1,
        maximum: 10_000_000,
        default: 3000,
        description:
          "Number of distinct sentence pairs to generate, before the train/valid/test split.",
      },
      ...commonConfigSchema,
      // the common options, described as this plugin applies them
      seed: {
        ...commonConfigSchema.seed,
        description:
          "Seed of the generated language (pseudo-German word stems, noun genders), of the sentences and of the train/valid/test split.",
      },
      minWords: {
        ...commonConfigSchema.minWords,
        description:
          "Generate only sentences with at least this many words (both sides have the same number of words; the grammar yields 5 to 10).",
      },
      maxWords: {
        ...commonConfigSchema.maxWords,
        description: "Generate only sentences with at most this many words; 0 = no limit.",
      },
    },
  },
  smoke(config) {
    return { ...config, pairs: Math.min(config.pairs, 400) };
  },
  create(config) {
    return {
      load() {
        const pairs = generateSynthetic(
          config.pairs,
          config.seed,
          config.minWords,
          config.maxWords,
        );
        const { train, valid, test } = finishSplits(pairs, config, "synthetic");
        return Promise.resolve({ train, valid, test });
      },
    };
  },
});
