import assert from "node:assert/strict";
import { formatDuration, formatRate, startProgress } from "../../core/progress.ts";

Deno.test("durations and rates are formatted compactly", () => {
  assert.equal(formatDuration(5), "5s");
  assert.equal(formatDuration(65), "1m05s");
  assert.equal(formatDuration(3720), "1h02m");
  assert.equal(formatDuration(NaN), "?");
  assert.equal(formatRate(12.345), "12.3");
  assert.equal(formatRate(2500), "2500");
  assert.equal(formatRate(25000), "25.0k");
  assert.equal(formatRate(2.5e6), "2.5M");
});

Deno.test("plain progress prints periodic lines with rate and ETA", () => {
  let clock = 0;
  const out: string[] = [];
  const p = startProgress("grow", 100, "samples", {
    tty: false,
    interval: 10,
    now: () => clock,
    write: (t) => out.push(t),
  });
  clock = 1000;
  p.tick(10); // first tick always prints
  clock = 5000;
  p.tick(10); // within the interval: silent
  clock = 12000;
  p.tick(30); // 50 done in 12 s
  p.done();
  assert.equal(out.length, 3);
  assert.equal(out[0], "grow: 10% 10/100 samples, 10.0 samples/s, 1s elapsed, ETA 9s\n");
  assert.equal(out[1], "grow: 50% 50/100 samples, 4.2 samples/s, 12s elapsed, ETA 12s\n");
  assert.match(out[2], /^grow: 50% 50\/100/);
});

Deno.test("terminal progress redraws one line and ends with a newline", () => {
  let clock = 0;
  const out: string[] = [];
  const p = startProgress("bc", 4, "steps", {
    tty: true,
    now: () => clock,
    write: (t) => out.push(t),
  });
  for (let i = 0; i < 4; i++) {
    clock += 1000;
    p.tick();
  }
  p.done();
  assert.ok(out.slice(0, -1).every((t) => t.startsWith("\r\x1b[2K")));
  assert.match(out.at(-2)!, /bc \[#{24}\] 100% 4\/4 steps, 1\.0 steps\/s, 4s elapsed, ETA 0s/);
  assert.equal(out.at(-1), "\n");
});
