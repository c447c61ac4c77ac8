import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";

const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");

function run(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("bench robust --json: every rule next to the plain mean, with the memory a round holds", () => {
  const r = run(["bench", "robust", "--updates", "7", "--params", "3000", "--repeats", "2", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const o = JSON.parse(r.stdout.trim());
  assert.deepEqual(Object.keys(o), ["updates", "params", "repeats", "rows", "peakRssBytes", "loadAverage"]);
  assert.equal(o.updates, 7);
  const specs = o.rows.map((x: { spec: string }) => x.spec);
  assert.deepEqual(specs, [
    "mean",
    "norm:C+mean",
    "norm:q0.5+mean",
    "median",
    "trimmed-mean:0.1",
    "krum:0.1",
    "multi-krum:0.1,0.5",
    "geomed",
    "centered-clip:1",
    "fltrust",
    "default",
  ]);
  const row = (spec: string) => o.rows.find((x: { spec: string }) => x.spec === spec);
  assert.equal(row("mean").ratio, 1);
  assert.equal(row("mean").bufferedBytes, 0);
  assert.equal(row("norm:C+mean").streaming, true);
  assert.equal(row("norm:C+mean").bufferedBytes, 0);
  assert.match(row("norm:C+mean").aggregator, /^norm:[\d.]+\+mean$/);
  for (const spec of specs.slice(2)) {
    assert.equal(row(spec).bufferedBytes, 7 * 3000 * 4, spec);
    assert.ok(row(spec).ms > 0 && row(spec).ratio > 0, spec);
  }
  // Progress on stderr, one line per run (warm-up included).
  assert.equal(r.stderr.trim().split("\n").length, 11 * 3);
});

test("bench robust --rules: only those (and the mean); bad input is one line before anything is allocated", () => {
  const r = run([
    "bench",
    "robust",
    "--updates",
    "5",
    "--params",
    "100",
    "--repeats",
    "1",
    "--rules",
    "median; krum:1",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(
    JSON.parse(r.stdout).rows.map((x: { spec: string }) => x.spec),
    ["mean", "median", "krum:1"],
  );
  const cases: [string[], RegExp][] = [
    [
      ["bench", "robust", "--rules", "krum:0.7"],
      /^flotilla: E_CONFIG_AGGREGATOR: invalid aggregator 'krum:0.7'/,
    ],
    [
      ["bench", "robust", "--params", "1e11"],
      /^flotilla: E_CONFIG_RANGE: --params must be at most 100000000/,
    ],
    [
      ["bench", "robust", "--repeats", "0"],
      /^flotilla: E_CONFIG_VALUE: --repeats must be a positive integer/,
    ],
    [["bench", "robust", "--updates", "1000000", "--params", "100000000"], /^flotilla: E_CONFIG_MEMORY: /],
    [["simulate", "--aggregator", "krum:x"], /^flotilla: E_CONFIG_AGGREGATOR: invalid aggregator 'krum:x'/],
    [
      ["simulate", "--aggregator", "fltrust", "--root-samples", "0"],
      /^flotilla: E_CONFIG_AGGREGATOR: .*root dataset/,
    ],
    [
      ["simulate", "--aggregator", "fltrust", "--root-samples", "1e9"],
      /^flotilla: E_CONFIG_RANGE: --root-samples/,
    ],
    [["simulate", "--root-samples", "5"], /^flotilla: E_CONFIG_CONFLICT: --root-samples .*fltrust/],
  ];
  for (const [args, pattern] of cases) {
    const e = run(args);
    assert.equal(e.code, 2, `${args.join(" ")}: ${e.stderr}`);
    assert.equal(e.stderr.trim().split("\n").length, 1, e.stderr);
    assert.match(e.stderr.trim(), pattern);
  }
});
