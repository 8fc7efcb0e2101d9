import assert from "node:assert/strict";
import { addGemmTime, formatProfile, mergeProfiles, Profiler } from "../../core/profile.ts";

function busy(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // spin: CPU time in user mode
  }
}

Deno.test("profiler charges time to the innermost phase only, with units and GEMM time", async () => {
  const profiler = new Profiler();
  const started = performance.now();
  await profiler.phase("outer", async () => {
    busy(30);
    profiler.count(100, "tokens");
    await profiler.phase("inner", () => {
      busy(60);
      addGemmTime(25);
      profiler.count(7, "rows");
      return Promise.resolve();
    });
    busy(30);
  });
  const before = (performance.now() - started) / 1000;
  const profile = profiler.snapshot();
  const after = (performance.now() - started) / 1000;
  // Each phase got at least its own busy time, and the phases add up to the time that
  // passed (bracketed by clock reads on either side of the snapshot, so a busy machine
  // cannot fail it): the inner phase's 60 ms were not charged to the outer one as well.
  assert.ok(profile.outer.seconds >= 0.055, `${profile.outer.seconds}`);
  assert.ok(profile.inner.seconds >= 0.055, `${profile.inner.seconds}`);
  const charged = profile.outer.seconds + profile.inner.seconds + (profile.other?.seconds ?? 0);
  assert.ok(
    charged >= before - 0.002 && charged <= after + 0.002,
    `${charged} s charged, ${before}-${after} s passed`,
  );
  assert.equal(profile.inner.gemmSeconds, 0.025);
  assert.equal(profile.outer.gemmSeconds, 0);
  assert.deepEqual(profile.outer.units, { tokens: 100 });
  assert.deepEqual(profile.inner.units, { rows: 7 });
  assert.equal(profile.outer.calls, 1);
  assert.ok(profile.inner.userSeconds > 0 || profile.inner.systemSeconds > 0, "CPU time counted");

  // An exception still closes the phase.
  await assert.rejects(profiler.phase("failing", () => Promise.reject(new Error("boom"))));
  busy(20);
  const later = profiler.snapshot();
  assert.ok(later.other.seconds >= 0.015, "time outside every phase is `other`");

  const merged = mergeProfiles([profile, profile]);
  assert.equal(merged.outer.calls, 2);
  assert.deepEqual(merged.inner.units, { rows: 14 });
  const lines = formatProfile(merged);
  assert.match(lines[0], /^(outer|inner) /);
  assert.ok(lines.some((l) => /inner .* gemm \d+%\s+[\d.,]+ rows\/s/.test(l)), lines.join("\n"));

  profiler.reset();
  assert.deepEqual(Object.keys(profiler.snapshot()), ["other"]);
});
