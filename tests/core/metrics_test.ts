import assert from "node:assert/strict";
import { loadVectors, SHARED_VECTORS_URL, VECTORS_URL } from "../_vectors.ts";
import { chrfFromStats, chrfStats, corpusChrf, sentenceChrf } from "../../core/metrics/chrf.ts";
import {
  addBleuStats,
  bleuFromStats,
  bleuStats,
  corpusBleu,
  sentenceBleu,
  tokenize13a,
} from "../../core/metrics/bleu.ts";

function close(actual: number, expected: number, tolerance: number, what: string): void {
  assert.ok(
    Math.abs(actual - expected) <= tolerance,
    `${what}: got ${actual}, expected ${expected} (tolerance ${tolerance})`,
  );
}

// Values from the shared testdata README (sacreBLEU 2.6.0 over all 22 pairs).
const CORPUS_CHRF = 65.01197994320272;
const CORPUS_BLEU = 42.103408165500696;

Deno.test("sacreBLEU vectors: sentence chrF, chrF++ and BLEU match to 1e-4", async () => {
  const vectors = await loadVectors();
  assert.equal(vectors.length, 22);
  for (const [i, v] of vectors.entries()) {
    const label = `line ${i + 1} ${JSON.stringify(v.hypothesis)} / ${JSON.stringify(v.reference)}`;
    close(sentenceChrf(v.hypothesis, v.reference), v.chrf, 1e-4, `chrF ${label}`);
    close(
      sentenceChrf(v.hypothesis, v.reference, { wordOrder: 2 }),
      v.chrf_pp,
      1e-4,
      `chrF++ ${label}`,
    );
    close(sentenceBleu(v.hypothesis, v.reference), v.bleu, 1e-4, `BLEU ${label}`);
  }
});

Deno.test("the vectors kept in tests/fixtures equal the shared copy when it is present", async () => {
  const shared = await Deno.readTextFile(SHARED_VECTORS_URL).catch(() => undefined);
  if (shared !== undefined) assert.equal(await Deno.readTextFile(VECTORS_URL), shared);
  assert.equal((await loadVectors()).length, 22);
});

Deno.test("sacreBLEU vectors: corpus chrF and corpus BLEU match", async () => {
  const vectors = await loadVectors();
  const hyps = vectors.map((v) => v.hypothesis);
  const refs = vectors.map((v) => v.reference);
  close(corpusChrf(hyps, refs), CORPUS_CHRF, 1e-9, "corpus chrF");
  close(corpusBleu(hyps, refs), CORPUS_BLEU, 1e-9, "corpus BLEU");
});

Deno.test("corpus scores equal the score of summed sentence statistics", async () => {
  const vectors = await loadVectors();
  const hyps = vectors.map((v) => v.hypothesis);
  const refs = vectors.map((v) => v.reference);
  for (const wordOrder of [0, 2]) {
    const summed = vectors
      .map((v) => chrfStats(v.hypothesis, v.reference, { wordOrder }))
      .reduce((a, b) => a.map((x, k) => x + b[k]));
    assert.equal(summed.length, 3 * (6 + wordOrder));
    close(
      chrfFromStats(summed, { wordOrder }),
      corpusChrf(hyps, refs, { wordOrder }),
      1e-12,
      "chrF",
    );
  }
  const bleu = vectors.map((v) => bleuStats(v.hypothesis, v.reference)).reduce(addBleuStats);
  close(bleuFromStats(bleu).score, corpusBleu(hyps, refs), 1e-12, "BLEU");
  // A corpus of one sentence with effective order is the sentence score.
  close(
    corpusBleu([hyps[0]], [refs[0]], { effectiveOrder: true }),
    sentenceBleu(hyps[0], refs[0]),
    1e-12,
    "one-sentence BLEU",
  );
  close(
    corpusChrf([hyps[3]], [refs[3]]),
    sentenceChrf(hyps[3], refs[3]),
    1e-12,
    "one-sentence chrF",
  );
});

Deno.test("empty hypothesis, empty reference, both empty: 0", () => {
  for (const [hyp, ref] of [["", "Zeile nach unten"], ["Zeile nach unten", ""], ["", ""]]) {
    assert.equal(sentenceChrf(hyp, ref), 0);
    assert.equal(sentenceChrf(hyp, ref, { wordOrder: 2 }), 0);
    assert.equal(sentenceBleu(hyp, ref), 0);
    assert.equal(corpusChrf([hyp], [ref]), 0);
    assert.equal(corpusBleu([hyp], [ref]), 0);
  }
  // An empty reference has no n-grams, so hypothesis n-grams are not counted either.
  assert.deepEqual(chrfStats("abc", "", { charOrder: 2 }), [0, 0, 0, 0, 0, 0]);
  assert.deepEqual(chrfStats("", "ab", { charOrder: 2 }), [0, 2, 0, 0, 1, 0]);
  assert.deepEqual(bleuStats("a b", ""), {
    hypLen: 2,
    refLen: 0,
    correct: [0, 0, 0, 0],
    total: [2, 1, 0, 0],
  });
});

Deno.test("unicode: umlauts count as one character, astral characters by code point", () => {
  // Orders 1-4 match 5/6, 3/5, 2/4, 1/3 on both sides; orders 5 and 6 match nothing.
  close(
    sentenceChrf("Müller", "Muller"),
    100 * (5 / 6 + 3 / 5 + 1 / 2 + 1 / 3) / 6,
    1e-9,
    "Müller",
  );
  assert.equal(sentenceChrf("Müller", "Müller"), 100);
  // No Unicode normalisation: precomposed ü and u + combining diaeresis differ.
  assert.ok(sentenceChrf("M\u00fcller", "Mu\u0308ller") < 100);
  // Two emoji vs one: order 1 has P = 1/2, R = 1; order 2 has no reference n-gram.
  close(sentenceChrf("😀😀", "😀"), 100 * 5 * 0.5 / (4 * 0.5 + 1), 1e-9, "emoji");
  assert.deepEqual(chrfStats("😀😀", "😀", { charOrder: 2 }), [2, 1, 1, 0, 0, 0]);
  // CJK: whitespace is ignored by chrF; 4 characters give 4 effective character orders.
  assert.equal(sentenceChrf("中文 测试", "中文测试"), 100);
  // chrF++: the word unigram order adds P = R = 0 (the word bigram order has no reference n-gram).
  close(sentenceChrf("中文 测试", "中文测试", { wordOrder: 2 }), 80, 1e-9, "CJK chrF++");
  assert.equal(sentenceBleu("中文 测试", "中文测试"), 0);
  close(sentenceBleu("中文 测试", "中文 测试"), 100, 1e-9, "CJK BLEU");
});

Deno.test("whitespace follows Python's str.split, not JavaScript's \\s", () => {
  // U+00A0 and U+3000 are whitespace in both; U+001C is whitespace in Python only;
  // U+FEFF is whitespace in JavaScript only; U+200B in neither.
  assert.equal(sentenceChrf("a\u00a0b\u3000c", "abc"), 100);
  assert.equal(sentenceChrf("a\u001cb", "ab"), 100);
  assert.ok(sentenceChrf("a\ufeffb", "ab") < 100);
  close(sentenceBleu("a\u001cb", "a b", { tokenize: "none" }), 100, 1e-9, "U+001C splits");
  assert.equal(sentenceBleu("a\u200bb", "a b", { tokenize: "none" }), 0);
  assert.equal(sentenceBleu("a\ufeffb", "a b", { tokenize: "none" }), 0);
});

Deno.test("punctuation only", () => {
  // chrF: order 1 P = 1/3, R = 1/2; order 2 P = R = 0; higher orders have no reference n-grams.
  close(sentenceChrf("!!!", "?!"), 100 * 5 / 22, 1e-9, "chrF");
  // chrF++ adds word orders: "!!!" -> "!!", "!" and "?!" -> "?", "!": unigrams P = R = 1/2,
  // bigrams 0.
  close(sentenceChrf("!!!", "?!", { wordOrder: 2 }), 100 * 25 / 104, 1e-9, "chrF++");
  // BLEU: 13a splits every mark; p1 = 1/3, p2 = 0/2 -> 1/(2*2), p3 = 0/1 -> 1/(4*1).
  assert.equal(tokenize13a("!!!"), "! ! !");
  close(sentenceBleu("!!!", "?!"), Math.cbrt((100 / 3) * 25 * 25), 1e-9, "BLEU");
  assert.equal(sentenceChrf("...", "..."), 100);
});

Deno.test("brevity penalty: long hypotheses are not penalised, short ones are", () => {
  // Long: p = 4/8, 3/7, 2/6, 1/5 with BP = 1.
  close(sentenceBleu("a b c d e f g h", "a b c d"), 100 * (1 / 70) ** 0.25, 1e-9, "long BLEU");
  // Short: all precisions 1, BP = exp(1 - 8/4).
  close(sentenceBleu("a b c d", "a b c d e f g h"), 100 * Math.exp(-1), 1e-9, "short BLEU");
  close(corpusBleu(["a b c d"], ["a b c d e f g h"]), 100 * Math.exp(-1), 1e-9, "short corpus");
  // chrF: recall 1 on orders 1-4 (the reference has no 5- or 6-grams), precisions 4/8 .. 1/5.
  const p = (1 / 2 + 3 / 7 + 1 / 3 + 1 / 5) / 4;
  close(sentenceChrf("a b c d e f g h", "a b c d"), 100 * 5 * p / (4 * p + 1), 1e-9, "long chrF");
});

Deno.test("repeated words are clipped to their reference count", () => {
  // p1 = 1/4 (clipped), p2 = 0/3 -> 1/(2*3), p3 = 0/2 -> 1/(4*2), p4 = 0/1 -> 1/(8*1).
  const expected = 100 * ((1 / 4) * (1 / 6) * (1 / 8) * (1 / 8)) ** 0.25;
  close(sentenceBleu("the the the the", "the cat"), expected, 1e-9, "BLEU");
  assert.deepEqual(bleuStats("the the the the", "the cat"), {
    hypLen: 4,
    refLen: 2,
    correct: [1, 0, 0, 0],
    total: [4, 3, 2, 1],
  });
  // chrF: "aaaa" vs "aa": order 1 matches 2 of 4, order 2 1 of 3, order 3 has no reference n-gram.
  assert.deepEqual(chrfStats("aaaa", "aa", { charOrder: 3 }), [4, 2, 2, 3, 1, 1, 0, 0, 0]);
});

Deno.test("13a tokenizer", () => {
  const cases: [string, string][] = [
    ["Hello, world!", "Hello , world !"],
    ["Preis: 3.50 EUR (inkl. MwSt.)", "Preis : 3.50 EUR ( inkl . MwSt . )"],
    ["1,000.5 and 20-30 but -20 %", "1,000.5 and 20 - 30 but -20 %"],
    ["it's e-mail", "it's e-mail"],
    ["a.b,c", "a . b , c"],
    [".5", ". 5"],
    ["&quot;A&quot; &amp; B &lt;C&gt;", '" A " & B < C >'],
    ["&amp;quot;", "& quot ;"],
    ["&amp;lt;b&amp;gt;", "< b >"],
    ["x <skipped> y", "x y"],
    ["hyphen-\nated\nline", "hyphenated line"],
    ["  spaced\tout  ", "spaced out"],
    ["{[(<a|b>)]}~^_`@#$*+=/\\", "{ [ ( < a | b > ) ] } ~ ^ _ ` @ # $ * + = / \\"],
    ["Einfügen…", "Einfügen…"],
    ["", ""],
  ];
  for (const [input, expected] of cases) {
    assert.equal(tokenize13a(input), expected, JSON.stringify(input));
  }
  // &quot; unescaping makes a quoted reference match a plain-quote hypothesis.
  close(sentenceBleu('Spalte "A" ist gut', "Spalte &quot;A&quot; ist gut"), 100, 1e-9, "&quot;");
  // Tokenizer "none" splits on whitespace only.
  assert.equal(sentenceBleu("Hello, world!", "Hello , world !", { tokenize: "none" }), 0);
});

Deno.test("options: lowercase, whitespace, beta, eps smoothing", () => {
  assert.equal(sentenceChrf("HELLO World", "hello world", { lowercase: true }), 100);
  assert.ok(sentenceChrf("HELLO World", "hello world") < 100);
  close(sentenceBleu("HELLO World", "hello world", { lowercase: true }), 100, 1e-9, "lc BLEU");
  assert.equal(sentenceChrf("a b", "ab"), 100);
  assert.ok(sentenceChrf("a b", "ab", { whitespace: true }) < 100);
  // beta 0 is precision only: "ab" vs "abcd" has precision 1.
  close(sentenceChrf("ab", "abcd", { beta: 0 }), 100, 1e-9, "beta 0");
  // eps smoothing averages per-order F over all 6 orders: orders 3-6 contribute eps each.
  close(sentenceChrf("ab", "ab", { epsSmoothing: true }), 100 * (2 + 4e-16) / 6, 1e-9, "eps");
});

Deno.test("BLEU smoothing methods", () => {
  // "a b c" vs "a b d": p1 = 2/3, p2 = 1/2, p3 = 0/1; no 4-grams (effective order 3).
  const p1 = 200 / 3;
  close(sentenceBleu("a b c", "a b d"), Math.cbrt(p1 * 50 * 50), 1e-9, "exp");
  close(
    sentenceBleu("a b c", "a b d", { smoothMethod: "floor" }),
    Math.cbrt(p1 * 50 * 10),
    1e-9,
    "floor",
  );
  close(
    sentenceBleu("a b c", "a b d", { smoothMethod: "floor", smoothValue: 0.5 }),
    Math.cbrt(p1 * 50 * 50),
    1e-9,
    "floor 0.5",
  );
  assert.equal(sentenceBleu("a b c", "a b d", { smoothMethod: "none" }), 0);
  // add-k adds 1 to matches and totals of orders >= 2, so order 4 becomes 1/1.
  close(
    sentenceBleu("a b c", "a b d", { smoothMethod: "add-k" }),
    (p1 * p1 * 50 * 100) ** 0.25,
    1e-9,
    "add-k",
  );
  // Without effective order, missing 4-grams count as log(0): corpus BLEU of short text is 0.
  assert.equal(corpusBleu(["a b"], ["a b"]), 0);
  close(sentenceBleu("a b", "a b"), 100, 1e-9, "effective order");
  close(
    sentenceBleu("a b c", "a b c", { maxNgramOrder: 2, effectiveOrder: false }),
    100,
    1e-9,
    "order 2",
  );
});

Deno.test("several references", () => {
  assert.equal(sentenceChrf("abc", ["xyz", "abc"]), 100);
  assert.equal(sentenceChrf("abc", ["", "abc"]), 100);
  assert.deepEqual(chrfStats("abc", ["xyz", "abc"]), chrfStats("abc", "abc"));
  // n-gram counts are the maximum over references; the closest length wins, ties to the shorter.
  close(sentenceBleu("a b c d", ["a b c", "a b c d e"]), 100, 1e-9, "BLEU refs");
  assert.equal(bleuStats("a b c d", ["a b c", "a b c d e"]).refLen, 3);
  assert.equal(bleuStats("a b c d", ["a b c d e", "a b"]).refLen, 5);
  assert.deepEqual(bleuStats("a b", ["", "a b"]), bleuStats("a b", "a b"));
  close(corpusChrf(["abc", "def"], [["abc"], ["x", "def"]]), 100, 1e-9, "corpus chrF refs");
});

Deno.test("misuse throws RangeError", () => {
  assert.throws(() => corpusChrf(["a"], []), RangeError);
  assert.throws(() => corpusBleu(["a"], ["a", "b"]), RangeError);
  assert.throws(() => sentenceChrf("a", "a", { charOrder: 0, wordOrder: 0 }), RangeError);
  assert.throws(() => sentenceChrf("a", "a", { charOrder: 1.5 }), RangeError);
  assert.throws(() => sentenceChrf("a", "a", { beta: -1 }), RangeError);
  assert.throws(() => chrfFromStats([1, 2, 3]), RangeError);
  assert.throws(() => sentenceBleu("a", "a", { maxNgramOrder: 0 }), RangeError);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => sentenceBleu("a", "a", { smoothMethod: "add-one" as any }), RangeError);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => sentenceBleu("a", "a", { tokenize: "intl" as any }), RangeError);
  assert.throws(() => bleuFromStats(bleuStats("a", "a"), { maxNgramOrder: 3 }), RangeError);
});

Deno.test("performance: 20k sentence pairs (chrF + BLEU) score in seconds, not minutes", () => {
  const words = "der die das ein eine Datei Zeile Spalte öffnen speichern nach unten oben".split(
    " ",
  );
  let seed = 1;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const sentence = () =>
    Array.from(
      { length: 5 + Math.floor(random() * 20) },
      () => words[Math.floor(random() * words.length)],
    )
      .join(" ");
  const hyps = Array.from({ length: 20000 }, sentence);
  const refs = Array.from({ length: 20000 }, sentence);
  const start = performance.now();
  for (let i = 0; i < hyps.length; i++) sentenceChrf(hyps[i], refs[i]);
  for (let i = 0; i < hyps.length; i++) sentenceBleu(hyps[i], refs[i]);
  const elapsed = performance.now() - start;
  assert.ok(elapsed < 20000, `took ${elapsed.toFixed(0)} ms`);
});

// A direct, string-keyed count of the statistics (sacreBLEU's Counter approach), to check the
// integer n-gram ids against on random text. Inputs use plain spaces only.
function stringCounts(items: readonly string[], n: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (let i = 0; i + n <= items.length; i++) {
    const key = items.slice(i, i + n).join("\u0000");
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

function stringStats(hyp: Map<string, number>, ref: Map<string, number>): number[] {
  let hypTotal = 0;
  let refTotal = 0;
  let match = 0;
  for (const [key, count] of hyp) {
    hypTotal += count;
    match += Math.min(count, ref.get(key) ?? 0);
  }
  for (const count of ref.values()) refTotal += count;
  return [ref.size > 0 ? hypTotal : 0, refTotal, match];
}

function naiveWords(text: string): string[] {
  const punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  return text.split(" ").filter((w) => w !== "").flatMap((w) => {
    if (Array.from(w).length === 1) return [w];
    if (punct.includes(w[w.length - 1])) return [w.slice(0, -1), w[w.length - 1]];
    if (punct.includes(w[0])) return [w[0], w.slice(1)];
    return [w];
  });
}

function naiveChrfStats(hyp: string, ref: string): number[] {
  const stats: number[] = [];
  const hc = Array.from(hyp.replaceAll(" ", ""));
  const rc = Array.from(ref.replaceAll(" ", ""));
  for (let n = 1; n <= 6; n++) stats.push(...stringStats(stringCounts(hc, n), stringCounts(rc, n)));
  const hw = naiveWords(hyp);
  const rw = naiveWords(ref);
  for (let n = 1; n <= 2; n++) stats.push(...stringStats(stringCounts(hw, n), stringCounts(rw, n)));
  return stats;
}

Deno.test("random text: n-gram statistics equal a direct string-keyed count", () => {
  const alphabet = ["a", "b", "ä", "ß", "中", "😀", ".", ",", "!", "(", "1", "-", " ", " ", " "];
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const text = () =>
    Array.from(
      { length: Math.floor(random() * 30) },
      () => alphabet[Math.floor(random() * alphabet.length)],
    )
      .join("");
  for (let trial = 0; trial < 500; trial++) {
    const hyp = text();
    const ref = text();
    const label = JSON.stringify([hyp, ref]);
    assert.deepEqual(chrfStats(hyp, ref, { wordOrder: 2 }), naiveChrfStats(hyp, ref), label);
    const refs = [ref, text()];
    const ht = hyp.split(" ").filter((w) => w !== "");
    const rts = refs.map((r) => r.split(" ").filter((w) => w !== ""));
    const correct: number[] = [];
    const total: number[] = [];
    for (let n = 1; n <= 4; n++) {
      const refMax = new Map<string, number>();
      for (const rt of rts) {
        for (const [key, count] of stringCounts(rt, n)) {
          refMax.set(key, Math.max(count, refMax.get(key) ?? 0));
        }
      }
      const stats = stringStats(stringCounts(ht, n), refMax);
      correct.push(stats[2]);
      total.push(Math.max(0, ht.length - n + 1));
    }
    const got = bleuStats(hyp, refs, { tokenize: "none" });
    assert.deepEqual(got.correct, correct, label);
    assert.deepEqual(got.total, total, label);
  }
});
