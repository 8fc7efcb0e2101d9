/**
 * Correlation statistics between a reward model's scores and a reference metric: Pearson's r,
 * Kendall's tau-b (pooled over all rows), and the within-source Kendall tau-b that ReST's
 * filter and Best-of-N depend on (they only ever compare hypotheses of the same source).
 *
 * @module
 */

/** Pearson's correlation coefficient (NaN with fewer than two rows or a constant side). */
export function pearson(x: readonly number[], y: readonly number[]): number {
  if (x.length !== y.length) throw new RangeError(`${x.length} x values, ${y.length} y values`);
  const n = x.length;
  if (n < 2) return NaN;
  let mx = 0;
  let my = 0;
  for (let i = 0; i < n; i++) {
    mx += x[i];
    my += y[i];
  }
  mx /= n;
  my /= n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = x[i] - mx;
    const dy = y[i] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : NaN;
}

/**
 * Kendall's tau-b, (concordant - discordant) / sqrt((n0 - n1)(n0 - n2)) with n1, n2 the
 * pairs tied in x, in y; O(n log n) by Knight's method (sort by x, count inversions of y by
 * merge sort). NaN with fewer than two rows or a constant side.
 */
export function kendallTauB(x: readonly number[], y: readonly number[]): number {
  if (x.length !== y.length) throw new RangeError(`${x.length} x values, ${y.length} y values`);
  const n = x.length;
  if (n < 2) return NaN;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => x[a] - x[b] || y[a] - y[b]);
  let tiedX = 0;
  let tiedBoth = 0;
  for (let i = 0; i < n;) {
    let j = i;
    while (j < n && x[order[j]] === x[order[i]]) j++;
    tiedX += ((j - i) * (j - i - 1)) / 2;
    for (let k = i; k < j;) {
      let m = k;
      while (m < j && y[order[m]] === y[order[k]]) m++;
      tiedBoth += ((m - k) * (m - k - 1)) / 2;
      k = m;
    }
    i = j;
  }
  // Discordant pairs = strict inversions of y in this order (merge sort).
  let ys = order.map((i) => y[i]);
  let buffer = new Array<number>(n);
  let discordant = 0;
  for (let width = 1; width < n; width *= 2) {
    for (let lo = 0; lo < n; lo += 2 * width) {
      const mid = Math.min(lo + width, n);
      const hi = Math.min(lo + 2 * width, n);
      let a = lo;
      let b = mid;
      let k = lo;
      while (a < mid && b < hi) {
        if (ys[b] < ys[a]) {
          discordant += mid - a;
          buffer[k++] = ys[b++];
        } else buffer[k++] = ys[a++];
      }
      while (a < mid) buffer[k++] = ys[a++];
      while (b < hi) buffer[k++] = ys[b++];
    }
    [ys, buffer] = [buffer, ys];
  }
  let tiedY = 0;
  for (let i = 0; i < n;) {
    let j = i;
    while (j < n && ys[j] === ys[i]) j++;
    tiedY += ((j - i) * (j - i - 1)) / 2;
    i = j;
  }
  const total = (n * (n - 1)) / 2;
  const denominator = Math.sqrt((total - tiedX) * (total - tiedY));
  if (!(denominator > 0)) return NaN;
  return (total - tiedX - tiedY + tiedBoth - 2 * discordant) / denominator;
}

/** Within-source Kendall: the mean tau-b over groups, and how many groups had one. */
export interface GroupedKendall {
  /** Mean of the groups' tau-b (NaN when no group has a defined tau-b). */
  mean: number;
  /** Groups with a defined tau-b (at least two rows and neither side constant). */
  groups: number;
}

/**
 * Kendall's tau-b between `x` and `y` inside each group of rows sharing `group[i]`
 * (e.g. the hypotheses of one source), averaged over the groups where it is defined;
 * a group whose x or y is constant (say, every sample equal) has no tau-b and is skipped.
 */
export function withinGroupKendall(
  x: readonly number[],
  y: readonly number[],
  group: readonly (string | number)[],
): GroupedKendall {
  if (x.length !== y.length || x.length !== group.length) {
    throw new RangeError(`${x.length} x values, ${y.length} y values, ${group.length} groups`);
  }
  const members = new Map<string | number, number[]>();
  group.forEach((g, i) => {
    const list = members.get(g);
    if (list === undefined) members.set(g, [i]);
    else list.push(i);
  });
  let total = 0;
  let groups = 0;
  for (const rows of members.values()) {
    const tau = kendallTauB(rows.map((i) => x[i]), rows.map((i) => y[i]));
    if (Number.isNaN(tau)) continue;
    total += tau;
    groups++;
  }
  return { mean: groups > 0 ? total / groups : NaN, groups };
}
