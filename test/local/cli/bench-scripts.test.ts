/**
 * Issue 11: the benchmark scripts' count flags (dist/scripts/bench-*.js) are parsed with the CLI's bounds before any
 * run starts: one coded line `bench-NAME: E_CODE: …` and exit code 1, instead of a sweep of runs of NaN or 1e9
 * rounds (or devices).
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as path from "node:path";
import { runScript, scratch } from "./spawn-cli";

const scripts = path.join(__dirname, "..", "..", "..", "scripts");

test("bench scripts reject out-of-range and malformed counts before running", async () => {
  const tmp = scratch();
  const cases: [string, string[], RegExp][] = [
    [
      "bench-learning.js",
      ["--max-rounds", "1e9", "mlp-iid"],
      /^bench-learning: E_CONFIG_RANGE: --max-rounds must be at most 100000 \(got 1e9\)$/,
    ],
    [
      "bench-learning.js",
      ["--max-rounds", "many", "mlp-iid"],
      /^bench-learning: E_CONFIG_VALUE: --max-rounds/,
    ],
    [
      "bench-compression.js",
      ["sensors", "--rounds", "1e9"],
      /^bench-compression: E_CONFIG_RANGE: --rounds must be at most 100000 \(got 1e9\)$/,
    ],
    [
      "bench-privacy.js",
      ["sensors", "--rounds", "1e9"],
      /^bench-privacy: E_CONFIG_RANGE: --rounds must be at most/,
    ],
    [
      "bench-fleet.js",
      ["sensors", "--rounds", "1e9"],
      /^bench-fleet: E_CONFIG_RANGE: --rounds must be at most 100000 \(got 1e9\)$/,
    ],
    ["bench-fleet.js", ["nowhere"], /^bench-fleet: E_CONFIG_VALUE: unknown scenario 'nowhere'/],
    [
      "bench-stack.js",
      ["1e9"],
      /^bench-stack: E_CONFIG_RANGE: --devices must be at most 100000 \(got 1e9\)$/,
    ],
  ];
  const problems: string[] = [];
  for (const [script, args, pattern] of cases) {
    const r = await runScript(path.join(scripts, script), args, tmp, 60_000);
    const what = `${script} ${args.join(" ")}: exit ${r.code ?? r.signal}, stderr ${JSON.stringify(r.stderr)}`;
    const lines = r.stderr.replace(/\n$/, "").split("\n");
    if (r.code !== 1 || lines.length !== 1 || !pattern.test(lines[0]))
      problems.push(`${what}: expected ${pattern}`);
  }
  assert.deepEqual(problems, []);
});
