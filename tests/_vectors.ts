/**
 * The sacreBLEU reference vectors: the team's shared file, kept in `tests/fixtures/sacrebleu/` so
 * the tests run from any clone (the shared copy beside the repository, when present, must equal it).
 *
 * @module
 */

/** One line of the shared sacreBLEU reference vectors (scores 0-100). */
export interface Vector {
  /** Hypothesis. */
  hypothesis: string;
  /** Reference. */
  reference: string;
  /** sacreBLEU `CHRF()` sentence score. */
  chrf: number;
  /** sacreBLEU `CHRF(word_order=2)` sentence score. */
  chrf_pp: number;
  /** sacreBLEU `BLEU(effective_order=True)` sentence score. */
  bleu: number;
}

/** Where the vectors live. */
export const VECTORS_URL = new URL(
  "./fixtures/sacrebleu/sacrebleu_sentence_vectors.jsonl",
  import.meta.url,
);

/** The shared copy beside the repository (may be absent). */
export const SHARED_VECTORS_URL = new URL(
  "../../shared/testdata/sacrebleu_sentence_vectors.jsonl",
  import.meta.url,
);

/** Reads every vector. */
export async function loadVectors(): Promise<Vector[]> {
  const text = await Deno.readTextFile(VECTORS_URL);
  return text.split("\n").filter((line) => line.trim() !== "").map((line) => JSON.parse(line));
}
