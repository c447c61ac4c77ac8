/**
 * `flotilla bench metrics --json` (issue 15, docs/metrics.md "Cost"): a short real run — the trainer's local
 * training with and without the four modules' registries served and scraped by a separate process — prints one JSON
 * object whose arms carry CPU per sample and the overhead; bad flags are one coded line before anything runs.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { run, scratch } from "./spawn-cli";

test("bench metrics --json measures CPU per trained sample with and without scraped metrics", async () => {
  const tmp = scratch();
  const r = await run(
    ["bench", "metrics", "--seconds", "1", "--repeats", "2", "--intervals", "0.2", "--json"],
    tmp,
    300_000,
  );
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 1, r.stdout);
  const out = JSON.parse(lines[0]) as {
    repeats: number;
    threads: number;
    runs: { arm: string; samples: number; cpuSecondsPerSample: number; scrapes: number }[];
    arms: {
      arm: string;
      medianCpuSecondsPerSample: number;
      overheadPercent: number;
      scrapesPerRun: number;
    }[];
  };
  assert.equal(out.threads, 1);
  assert.deepEqual(
    out.arms.map((a) => a.arm),
    ["off", "scrape 0.2 s"],
  );
  // Interleaved: the order of the arms rotates between repeats.
  assert.deepEqual(
    out.runs.map((x) => x.arm),
    ["off", "scrape 0.2 s", "scrape 0.2 s", "off"],
  );
  for (const x of out.runs) assert.ok(x.samples > 0 && x.cpuSecondsPerSample > 0, JSON.stringify(x));
  // Every run of the metrics arm was scraped (4 endpoints, at once and then every 0.2 s).
  for (const x of out.runs.filter((y) => y.arm !== "off")) assert.ok(x.scrapes >= 4, JSON.stringify(x));
  assert.equal(out.arms[0].overheadPercent, 0);
  assert.ok(Number.isFinite(out.arms[1].overheadPercent));
  assert.match(r.stderr, /repeat 2\/2 off: \d+ samples in \d+ rounds/);
});

test("bench metrics refuses bad flags before starting anything", async () => {
  const tmp = scratch();
  for (const [flag, value] of [
    ["--seconds", "1e9"],
    ["--intervals", "15,x"],
    ["--repeats", "0"],
  ]) {
    const r = await run(["bench", "metrics", flag, value, "--json"], tmp);
    assert.equal(r.code, 2, `${flag} ${value}: ${r.stderr}`);
    assert.match(r.stderr, /^flotilla: E_CONFIG_[A-Z]+: --(seconds|intervals|repeats)/);
    assert.equal(r.stdout, "");
  }
});
