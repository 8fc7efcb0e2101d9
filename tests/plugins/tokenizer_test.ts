import assert from "node:assert/strict";
import bpe, {
  BPE_DEFAULTS,
  type BpeConfig,
  type BpeState,
  BpeTokenizer,
  UNK_SURFACE,
  WORD_MARKER,
} from "../../plugins/tokenizers/bpe.ts";
import type { PluginDeps } from "../../core/plugin.ts";

const EN = [
  "The file could not be saved.",
  "Do you want to save the changes to the document?",
  "Insert a new row above the current row.",
  "Click OK to continue, or Cancel to stop.",
  "Error: the password is incorrect!",
  "Select the cells (A1:B10) you want to format.",
  "The quick brown fox jumps over the lazy dog.",
  "Show hidden files and folders",
  'Page 3 of 12 - "Summary" & notes',
  "Don't show this message again; it's annoying.",
  "Automatic spell checking is switched off.",
  "Export as PDF...",
  "Zoom level: 100% of the page width",
];

const DE = [
  "Die Datei konnte nicht gespeichert werden.",
  "Möchten Sie die Änderungen am Dokument speichern?",
  "Fügt eine neue Zeile über der aktuellen Zeile ein.",
  "Klicken Sie auf OK, um fortzufahren, oder auf Abbrechen.",
  "Fehler: Das Kennwort ist falsch!",
  "Wählen Sie die Zellen (A1:B10) aus, die Sie formatieren möchten.",
  "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
  "Versteckte Dateien und Ordner anzeigen",
  "Seite 3 von 12 – „Zusammenfassung“ & Notizen",
  "Diese Meldung nicht mehr anzeigen; sie ist lästig.",
  "Die automatische Rechtschreibprüfung ist ausgeschaltet.",
  "Als PDF exportieren …",
  "Zoomfaktor: 100% der Seitenbreite",
  "Ölpreis: Übersicht der Größenänderung (Äpfel & Birnen)",
];

/** A deterministic pseudo-random generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Sentences made of the words of `base` and of invented words built from `syllables`, so the
 * corpus has enough volume and variety for a few hundred merges.
 */
function synthetic(
  base: readonly string[],
  syllables: readonly string[],
  n: number,
  seed: number,
): string[] {
  const words = base.flatMap((s) => s.split(" "));
  const next = rng(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)];
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = 3 + Math.floor(next() * 10);
    const sentence: string[] = [];
    for (let j = 0; j < len; j++) {
      if (next() < 0.7) sentence.push(pick(words));
      else {
        let word = "";
        for (let k = 1 + Math.floor(next() * 3); k > 0; k--) word += pick(syllables);
        sentence.push(next() < 0.2 ? word[0].toUpperCase() + word.slice(1) : word);
      }
    }
    out.push(sentence.join(" "));
  }
  return out;
}

const EN_SYLLABLES = ["ing", "tion", "er", "con", "pre", "able", "ment", "ly", "re", "un", "ex"];
const DE_SYLLABLES = ["ung", "keit", "ver", "ge", "schaft", "lich", "über", "ein", "zu", "ßen"];

const CORPUS = {
  sources: [...EN, ...synthetic(EN, EN_SYLLABLES, 500, 1)],
  targets: [...DE, ...synthetic(DE, DE_SYLLABLES, 500, 2)],
};

function trained(config: Partial<BpeConfig> = {}): BpeTokenizer {
  const tok = new BpeTokenizer(config);
  tok.train(CORPUS);
  return tok;
}

function mergePieces(state: BpeState, name: "joint" | "source" | "target"): string[] {
  const v = state.vocabs[name]!;
  return v.merges.map(([a, b]) => `${v.pieces[a]} ${v.pieces[b]}`);
}

Deno.test("bpe plugin: definition, defaults, smoke and create", () => {
  assert.equal(bpe.kind, "tokenizer");
  assert.equal(bpe.name, "bpe");
  const props = bpe.configSchema.properties as Record<string, { default: unknown }>;
  const defaults = Object.fromEntries(Object.entries(props).map(([k, p]) => [k, p.default]));
  assert.deepEqual(defaults, { ...BPE_DEFAULTS });
  const smoke = bpe.smoke!({ ...BPE_DEFAULTS, userSpecials: [] });
  assert.equal(smoke.vocabSize, 500);
  assert.equal(bpe.smoke!({ ...BPE_DEFAULTS, userSpecials: [], vocabSize: 300 }).vocabSize, 300);
  const tok = bpe.create({ ...BPE_DEFAULTS, userSpecials: [] }, {} as PluginDeps);
  assert.ok(tok instanceof BpeTokenizer);
  assert.equal(tok.trained, false);
  assert.deepEqual(tok.specials, { pad: 0, bos: 1, eos: 2, unk: 3 });
});

Deno.test("bpe: invalid options are rejected when created", () => {
  assert.throws(() => new BpeTokenizer({ vocabSize: 100 }), RangeError); // < 261 with bytes
  new BpeTokenizer({ vocabSize: 100, byteFallback: false });
  assert.throws(() => new BpeTokenizer({ minFrequency: 0 }), RangeError);
  assert.throws(() => new BpeTokenizer({ characterCoverage: 0 }), RangeError);
  assert.throws(() => new BpeTokenizer({ userSpecials: ["<s>"] }), TypeError);
  assert.throws(() => new BpeTokenizer({ userSpecials: ["<a>", "<a>"] }), TypeError);
  assert.throws(() => new BpeTokenizer({ userSpecials: ["a b"] }), TypeError);
});

Deno.test("bpe: using it before training throws a clear error", () => {
  const tok = new BpeTokenizer();
  assert.throws(() => tok.encode("hello", "source"), /not trained/);
  assert.throws(() => tok.decode([4], "target"), /not trained/);
  assert.throws(() => tok.vocabSize("source"), /not trained/);
  assert.throws(() => tok.save(), /not trained/);
});

Deno.test("bpe: encode/decode roundtrip on varied text, seen and unseen", () => {
  for (const byteFallback of [true, false]) {
    const tok = trained({ vocabSize: 600, byteFallback, characterCoverage: 1 });
    assert.equal(tok.trained, true);
    const texts = [
      ...EN,
      ...DE,
      "Größenänderung für Übersicht: Äpfel, Öl & Ärger?",
      "spell-checking (auto) ... 100% sure!",
      "x",
      "",
    ];
    for (const text of texts) {
      const ids = tok.encode(text, "target");
      assert.ok(ids.every((id) => Number.isInteger(id) && id > 3 && id < tok.vocabSize("target")));
      assert.equal(tok.decode(ids, "target"), text, `roundtrip of ${JSON.stringify(text)}`);
    }
    // Common words become single pieces, with the word marker in front.
    assert.deepEqual(tok.tokenize("die Datei", "target"), [
      `${WORD_MARKER}die`,
      `${WORD_MARKER}Datei`,
    ]);
  }
});

Deno.test("bpe: whitespace is normalised; NFC and lowercase options apply", () => {
  const tok = trained({ vocabSize: 600 });
  assert.equal(
    tok.decode(tok.encode("  Die   Datei\n\tspeichern ", "target"), "target"),
    "Die Datei speichern",
  );
  // NFD input encodes like NFC input.
  assert.deepEqual(tok.encode("Mu\u0308ller", "target"), tok.encode("M\u00fcller", "target"));
  const none = trained({ vocabSize: 600, normalize: "none" });
  assert.notDeepEqual(none.encode("Mu\u0308ller", "target"), none.encode("M\u00fcller", "target"));
  const lower = trained({ vocabSize: 600, lowercase: true });
  assert.equal(lower.decode(lower.encode("Die DATEI", "target"), "target"), "die datei");
});

Deno.test("bpe: unknown characters become bytes (lossless) or <unk>", () => {
  const unseen = "Ωμέγα 😀 naïve ⟨x⟩ and a literal ▁ marker";
  const bytes = trained({ vocabSize: 600 });
  const ids = bytes.encode(unseen, "source");
  assert.ok(!ids.includes(bytes.specials.unk));
  assert.ok(bytes.tokenize(unseen, "source").includes("<0xF0>")); // first byte of 😀
  assert.equal(bytes.decode(ids, "source"), unseen);

  const unk = trained({ vocabSize: 300, byteFallback: false });
  const unkIds = unk.encode("Ω ok", "source");
  assert.deepEqual(unk.tokenize("Ω ok", "source").slice(0, 2), [WORD_MARKER, "<unk>"]);
  assert.ok(unkIds.includes(unk.specials.unk));
  assert.equal(unk.decode(unkIds, "source"), `${UNK_SURFACE} ok`);
  // A literal word marker in the text is not the word boundary: unknown, not a space.
  assert.ok(unk.encode("a▁b", "source").includes(unk.specials.unk));
});

Deno.test("bpe: characterCoverage drops the rarest characters from the alphabet", () => {
  const corpus = { sources: ["aaaa bbbb aaaa bbbb", "aa bb q"], targets: [] };
  const full = new BpeTokenizer({ vocabSize: 100, byteFallback: false, characterCoverage: 1 });
  full.train(corpus);
  assert.ok(!full.encode("q", "source").includes(3));
  const partial = new BpeTokenizer({ vocabSize: 100, byteFallback: false, characterCoverage: 0.9 });
  partial.train(corpus);
  assert.ok(partial.encode("q", "source").includes(3));
});

Deno.test("bpe: the vocabulary size is respected exactly when the corpus allows it", () => {
  for (const vocabSize of [300, 457, 800]) {
    const tok = trained({ vocabSize });
    assert.equal(tok.vocabSize("source"), vocabSize);
    assert.equal(tok.vocabSize("target"), vocabSize);
    assert.equal(tok.save().vocabs.joint!.pieces.length, vocabSize);
  }
  const small = trained({ vocabSize: 80, byteFallback: false, userSpecials: ["<x>"] });
  assert.equal(small.vocabSize("source"), 80);
  // A tiny corpus runs out of pairs with count >= minFrequency before the vocabulary is full.
  const tiny = new BpeTokenizer({ vocabSize: 1000, minFrequency: 2 });
  tiny.train({ sources: ["abc abd"], targets: ["xyz"] });
  const state = tiny.save();
  // Only "a b" and "▁ a" occur twice; ties go to the lexicographically smaller pair ("a" <
  // "▁"), and after that only "▁ ab" is left with a count of 2.
  assert.deepEqual(mergePieces(state, "joint"), ["a b", `${WORD_MARKER} ab`]);
  assert.ok(tiny.vocabSize("source") < 1000);
});

Deno.test("bpe: training is deterministic and independent of corpus order", () => {
  const a = trained({ vocabSize: 700 }).save();
  const b = trained({ vocabSize: 700 }).save();
  assert.deepEqual(a, b);
  const shuffled = new BpeTokenizer({ vocabSize: 700 });
  shuffled.train({
    sources: [...CORPUS.targets].reverse(),
    targets: [...CORPUS.sources].reverse(),
  });
  assert.deepEqual(mergePieces(shuffled.save(), "joint"), mergePieces(a, "joint"));
});

/** Textbook BPE: recount all pairs each step; ties by count, then (left, right) ascending. */
function naiveBpe(texts: readonly string[], merges: number, minFrequency: number): string[] {
  const freq = new Map<string, number>();
  for (const t of texts) {
    for (const w of t.split(/\s+/)) if (w) freq.set(w, (freq.get(w) ?? 0) + 1);
  }
  let words = [...freq].map(([w, f]) => ({ syms: [WORD_MARKER, ...w], f }));
  const out: string[] = [];
  while (out.length < merges) {
    const counts = new Map<string, number>();
    for (const { syms, f } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const k = `${syms[i]}\u0000${syms[i + 1]}`;
        counts.set(k, (counts.get(k) ?? 0) + f);
      }
    }
    let best: [string, string, number] | null = null;
    for (const [k, c] of counts) {
      const [l, r] = k.split("\u0000");
      if (
        best === null || c > best[2] ||
        (c === best[2] && (l < best[0] || (l === best[0] && r < best[1])))
      ) best = [l, r, c];
    }
    if (best === null || best[2] < minFrequency) break;
    const [l, r] = best;
    out.push(`${l} ${r}`);
    words = words.map(({ syms, f }) => {
      const next: string[] = [];
      for (let i = 0; i < syms.length; i++) {
        if (i + 1 < syms.length && syms[i] === l && syms[i + 1] === r) {
          next.push(l + r);
          i++;
        } else next.push(syms[i]);
      }
      return { syms: next, f };
    });
  }
  return out;
}

/** Textbook BPE encoding of one word: merge the lowest-ranked pair everywhere, repeat. */
function naiveEncodeWord(word: string, merges: readonly string[]): string[] {
  const rank = new Map(merges.map((m, i) => [m, i]));
  let syms = [WORD_MARKER, ...word];
  for (;;) {
    let best = -1;
    for (let i = 0; i + 1 < syms.length; i++) {
      const r = rank.get(`${syms[i]} ${syms[i + 1]}`);
      if (r !== undefined && (best < 0 || r < best)) best = r;
    }
    if (best < 0) return syms;
    const [l, r] = merges[best].split(" ");
    const next: string[] = [];
    for (let i = 0; i < syms.length; i++) {
      if (i + 1 < syms.length && syms[i] === l && syms[i + 1] === r) {
        next.push(l + r);
        i++;
      } else next.push(syms[i]);
    }
    syms = next;
  }
}

Deno.test("bpe: merges and encodings match a textbook BPE implementation", () => {
  const tok = trained({ vocabSize: 5000, byteFallback: false, characterCoverage: 1 });
  const merges = mergePieces(tok.save(), "joint");
  assert.ok(merges.length > 100);
  const texts = [...CORPUS.sources, ...CORPUS.targets];
  assert.deepEqual(merges, naiveBpe(texts, merges.length + 10, 2));
  for (const word of ["Änderungen", "speichern?", "Zusammenfassung“", "unseenword", "aaaa"]) {
    assert.deepEqual(tok.tokenize(word, "source"), naiveEncodeWord(word, merges), word);
  }
});

Deno.test("bpe: joint versus separate vocabularies", () => {
  const joint = trained({ vocabSize: 500, byteFallback: false, characterCoverage: 1 });
  assert.deepEqual(joint.encode("Die Datei", "source"), joint.encode("Die Datei", "target"));
  assert.deepEqual(Object.keys(joint.save().vocabs), ["joint"]);

  const separate = trained({
    joint: false,
    vocabSize: 500,
    byteFallback: false,
    characterCoverage: 1,
  });
  assert.equal(separate.vocabSize("source"), 500);
  assert.equal(separate.vocabSize("target"), 500);
  const state = separate.save();
  assert.deepEqual(Object.keys(state.vocabs).sort(), ["source", "target"]);
  assert.notDeepEqual(state.vocabs.source!.pieces, state.vocabs.target!.pieces);
  // "ß" and "ä" occur only in the German (target) text.
  assert.ok(separate.encode("groß", "source").includes(separate.specials.unk));
  assert.ok(!separate.encode("groß", "target").includes(separate.specials.unk));
  assert.equal(separate.decode(separate.encode("Änderungen", "target"), "target"), "Änderungen");
  // Frequent words are whole pieces in their own language's vocabulary only.
  assert.equal(separate.tokenize("Sie", "target").length, 1);
  assert.ok(separate.tokenize("Sie", "source").length > 1);
  // Ids are per side: the same id means different pieces.
  const id = separate.encode("Sie", "target")[0];
  assert.notEqual(separate.piece(id, "source"), separate.piece(id, "target"));
});

Deno.test("bpe: save/load roundtrip gives identical encodings and state", () => {
  for (const config of [{}, { joint: false, byteFallback: false, lowercase: true }]) {
    const tok = trained({ vocabSize: 700, userSpecials: ["<2de>"], ...config });
    const state = JSON.parse(JSON.stringify(tok.save()));
    const copy = new BpeTokenizer({ vocabSize: 9999, normalize: "none" }); // options get replaced
    copy.load(state);
    assert.equal(copy.trained, true);
    assert.deepEqual(copy.save(), tok.save());
    assert.deepEqual(copy.config.userSpecials, ["<2de>"]);
    const texts = [...EN, ...DE, "<2de> Größe Ω 😀", "Mu\u0308ller"];
    for (const side of ["source", "target"] as const) {
      assert.equal(copy.vocabSize(side), tok.vocabSize(side));
      for (const text of texts) {
        const ids = tok.encode(text, side);
        assert.deepEqual(copy.encode(text, side), ids);
        assert.equal(copy.decode(ids, side), tok.decode(ids, side));
      }
    }
  }
});

Deno.test("bpe: loading a corrupt state throws a TypeError naming the problem", () => {
  const good = trained({ vocabSize: 400 }).save();
  const cases: [string, (s: BpeState) => unknown, RegExp][] = [
    ["not an object", () => 42, /must be an object/],
    ["format", (s) => ({ ...s, format: "wordpiece" }), /format/],
    ["version", (s) => ({ ...s, version: 2 }), /version/],
    ["config missing", (s) => ({ ...s, config: undefined }), /config must be an object/],
    ["config key", (s) => ({ ...s, config: { ...s.config, lowercase: undefined } }), /lowercase/],
    ["config extra", (s) => ({ ...s, config: { ...s.config, extra: 1 } }), /config\.extra/],
    ["config value", (s) => ({ ...s, config: { ...s.config, vocabSize: 3 } }), /vocabSize/],
    ["vocabs", (s) => ({ ...s, vocabs: [] }), /vocabs must be an object/],
    ["vocab names", (s) => ({ ...s, vocabs: { source: s.vocabs.joint } }), /vocabs\.source/],
    ["no joint", (s) => ({ ...s, vocabs: {} }), /vocabs\.joint/],
    [
      "pieces type",
      (s) => ({ ...s, vocabs: { joint: { ...s.vocabs.joint, pieces: [1, 2] } } }),
      /pieces must be an array of strings/,
    ],
    [
      "special piece",
      (s) => {
        const pieces = [...s.vocabs.joint!.pieces];
        pieces[2] = "<eos>";
        return { ...s, vocabs: { joint: { ...s.vocabs.joint, pieces } } };
      },
      /pieces\[2\]/,
    ],
    [
      "duplicate piece",
      (s) => {
        const pieces = [...s.vocabs.joint!.pieces];
        pieces[pieces.length - 1] = pieces[pieces.length - 2];
        return { ...s, vocabs: { joint: { ...s.vocabs.joint, pieces } } };
      },
      /occurs twice/,
    ],
    [
      "too many pieces",
      (s) => ({ ...s, config: { ...s.config, vocabSize: 300 } }),
      /more than vocabSize/,
    ],
    [
      "merge id",
      (s) => {
        const merges = [[0, 999_999], ...s.vocabs.joint!.merges.slice(1)];
        return { ...s, vocabs: { joint: { ...s.vocabs.joint, merges } } };
      },
      /merges\[0\] refers to id/,
    ],
    [
      "merge shape",
      (s) => ({ ...s, vocabs: { joint: { ...s.vocabs.joint, merges: [[1.5]] } } }),
      /merges\[0\] must be a pair/,
    ],
    [
      "merge result",
      (s) => {
        const v = s.vocabs.joint!;
        const marker = v.pieces.indexOf(WORD_MARKER); // "▁▁" is never a piece
        const merges = [...v.merges];
        merges[3] = [marker, marker];
        return { ...s, vocabs: { joint: { ...v, merges } } };
      },
      /merges\[3\] makes/,
    ],
  ];
  for (const [label, mutate, message] of cases) {
    const bad = mutate(structuredClone(good));
    const tok = new BpeTokenizer();
    assert.throws(() => tok.load(bad), (e: unknown) => {
      assert.ok(e instanceof TypeError, `${label}: ${e}`);
      assert.match(e.message, message, label);
      return true;
    });
    assert.equal(tok.trained, false, `${label}: a failed load leaves the tokenizer untrained`);
  }
  // A failed load leaves a trained tokenizer as it was.
  const tok = trained({ vocabSize: 400 });
  const before = tok.encode("Die Datei", "source");
  assert.throws(() => tok.load({ ...good, version: 0 }), TypeError);
  assert.deepEqual(tok.encode("Die Datei", "source"), before);
});

Deno.test("bpe: user specials are never split and keep their ids", () => {
  const specials = ["<2de>", "<2en>", "<sep>", "[MASK]"];
  const corpus = {
    sources: CORPUS.sources.map((s) => `<2de> ${s}`),
    targets: CORPUS.targets.map((s, i) => i % 2 ? `<2en> ${s} <sep> [MASK]` : `${s}<sep>x`),
  };
  const tok = new BpeTokenizer({ vocabSize: 600, userSpecials: specials });
  tok.train(corpus);
  assert.deepEqual(specials.map((_, i) => tok.piece(4 + i, "source")), specials);
  const ids = tok.encode("<2de> Die Datei<sep>[MASK] x <2en><2en>", "source");
  assert.equal(ids[0], 4);
  for (const id of [5, 6, 7]) assert.ok(ids.includes(id));
  assert.equal(ids.filter((id) => id === 5).length, 2);
  // No learned piece contains a special.
  for (const piece of tok.save().vocabs.joint!.pieces.slice(4 + specials.length)) {
    assert.ok(!specials.some((s) => piece.includes(s)), piece);
  }
  for (
    const text of [
      "<2de> Die Datei<sep>[MASK] x <2en><2en>",
      "<sep>",
      "a <sep> b",
      "Ende.<2en>",
      "<2de>Hallo",
    ]
  ) {
    assert.equal(tok.decode(tok.encode(text, "target"), "target"), text);
  }
  // Without the option the same text is split into ordinary pieces.
  const plain = trained({ vocabSize: 600 });
  assert.ok(plain.tokenize("<sep>", "source").length > 1);
});

Deno.test("bpe: decode drops pad and bos, stops at eos, rejects unknown ids", () => {
  const tok = trained({ vocabSize: 500 });
  const { pad, bos, eos } = tok.specials;
  const ids = tok.encode("Die Datei speichern", "target");
  assert.equal(
    tok.decode([bos, ...ids, eos, ...tok.encode("Rest", "target"), pad], "target"),
    "Die Datei speichern",
  );
  assert.equal(tok.decode([pad, pad], "target"), "");
  assert.equal(tok.decode([eos, ...ids], "target"), "");
  assert.throws(() => tok.decode([500], "target"), RangeError);
  assert.throws(() => tok.decode([-1], "target"), RangeError);
  // Bytes that are not valid UTF-8 decode to replacement characters, not an exception.
  assert.equal(tok.decode([tok.encode("😀", "target")[1]], "target"), "\ufffd");
});

Deno.test("bpe: a tiny word cache gives the same encodings as a large one", () => {
  const big = trained({ vocabSize: 600 });
  const tiny = new BpeTokenizer({ maxWordCache: 2 });
  tiny.load(big.save());
  const none = new BpeTokenizer({ maxWordCache: 0 });
  none.load(big.save());
  for (const text of [...CORPUS.targets.slice(0, 50), ...CORPUS.targets.slice(0, 50)]) {
    const ids = big.encode(text, "target");
    assert.deepEqual(tiny.encode(text, "target"), ids);
    assert.deepEqual(none.encode(text, "target"), ids);
  }
});
