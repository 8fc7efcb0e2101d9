/**
 * The rows Improve trains on, held compactly: rewards, origins and per-row offsets in typed
 * arrays, every row's output tokens and behaviour log-probabilities in two shared typed
 * arrays, and each source and reference string once. A Grow set of a million rows costs a
 * few bytes per token instead of a JavaScript object (with two number arrays) per row;
 * a {@link GrowRow} is materialised only for the rows of one batch.
 *
 * @module
 */

import type { GrowRow } from "./types.ts";

/** A growable typed array of one element type. */
class Column<A extends Float64Array | Float32Array | Int32Array | Uint8Array> {
  #data: A;
  length = 0;

  constructor(readonly make: (n: number) => A) {
    this.#data = make(1024);
  }

  push(value: number): void {
    if (this.length === this.#data.length) this.#grow(this.length + 1);
    this.#data[this.length++] = value;
  }

  get(i: number): number {
    return this.#data[i];
  }

  /** The filled part, as a view (valid until the next push). */
  view(): A {
    return this.#data.subarray(0, this.length) as A;
  }

  clear(): void {
    this.length = 0;
  }

  #grow(need: number): void {
    let size = this.#data.length * 2;
    while (size < need) size *= 2;
    const next = this.make(size);
    next.set(this.#data.subarray(0, this.length));
    this.#data = next;
  }
}

const ORIGINS: readonly GrowRow["origin"][] = ["sample", "reference"];

/** Grow rows in columns; see the module doc. */
export class GrowPool {
  readonly #texts: string[] = [];
  readonly #textIds = new Map<string, number>();
  readonly #source = new Column((n) => new Int32Array(n));
  readonly #reference = new Column((n) => new Int32Array(n));
  readonly #hypothesis: string[] = [];
  readonly #reward = new Column((n) => new Float64Array(n));
  readonly #origin = new Column((n) => new Uint8Array(n));
  readonly #temperature = new Column((n) => new Float32Array(n));
  readonly #start = new Column((n) => new Int32Array(n));
  readonly #tokens = new Column((n) => new Int32Array(n));
  readonly #logProbs = new Column((n) => new Float32Array(n));

  /** Number of rows. */
  get size(): number {
    return this.#reward.length;
  }

  /** Removes every row. */
  clear(): void {
    this.#texts.length = 0;
    this.#textIds.clear();
    this.#hypothesis.length = 0;
    for (
      const column of [
        this.#source,
        this.#reference,
        this.#reward,
        this.#origin,
        this.#temperature,
        this.#start,
        this.#tokens,
        this.#logProbs,
      ]
    ) column.clear();
  }

  /** Adds one row. */
  add(row: GrowRow): void {
    this.#source.push(this.#text(row.source));
    this.#reference.push(this.#text(row.reference));
    // A hypothesis equal to the reference (the original pair) shares its string.
    this.#hypothesis.push(row.hypothesis === row.reference ? row.reference : row.hypothesis);
    this.#reward.push(row.reward);
    this.#origin.push(ORIGINS.indexOf(row.origin));
    this.#temperature.push(row.temperature ?? NaN);
    this.#start.push(this.#tokens.length);
    for (let t = 0; t < row.tokens.length; t++) {
      this.#tokens.push(row.tokens[t]);
      this.#logProbs.push(row.logProbs[t] ?? 0);
    }
  }

  /** Adds every row of `rows`. */
  addAll(rows: Iterable<GrowRow>): void {
    for (const row of rows) this.add(row);
  }

  /** The reward of row `i`. */
  reward(i: number): number {
    return this.#reward.get(i);
  }

  /** Every row's reward (a view; do not keep it across `add`). */
  rewards(): Float64Array {
    return this.#reward.view();
  }

  /** The source of row `i`. */
  source(i: number): string {
    return this.#texts[this.#source.get(i)];
  }

  /** The origin of row `i`. */
  origin(i: number): GrowRow["origin"] {
    return ORIGINS[this.#origin.get(i)];
  }

  /** Row `i` as a {@link GrowRow} object. */
  row(i: number): GrowRow {
    const start = this.#start.get(i);
    const end = i + 1 < this.size ? this.#start.get(i + 1) : this.#tokens.length;
    const temperature = this.#temperature.get(i);
    return {
      source: this.source(i),
      hypothesis: this.#hypothesis[i],
      reference: this.#texts[this.#reference.get(i)],
      reward: this.#reward.get(i),
      tokens: Array.from(this.#tokens.view().subarray(start, end)),
      logProbs: Array.from(this.#logProbs.view().subarray(start, end)),
      origin: this.origin(i),
      ...(Number.isNaN(temperature) ? {} : { temperature }),
    };
  }

  /** Rewards grouped by source (what threshold schedules see). */
  rewardsBySource(): Map<string, number[]> {
    const map = new Map<string, number[]>();
    for (let i = 0; i < this.size; i++) {
      const source = this.source(i);
      const list = map.get(source);
      if (list === undefined) map.set(source, [this.#reward.get(i)]);
      else list.push(this.#reward.get(i));
    }
    return map;
  }

  #text(text: string): number {
    let id = this.#textIds.get(text);
    if (id === undefined) {
      id = this.#texts.length;
      this.#texts.push(text);
      this.#textIds.set(text, id);
    }
    return id;
  }
}
