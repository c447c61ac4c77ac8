import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");

function run(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every bad input: one line on stderr naming the problem, a non-zero exit, no stack trace. */
function expectOneLineError(args: string[], pattern: RegExp): void {
  const r = run(args);
  assert.notEqual(r.code, 0, `expected failure for ${args.join(" ")}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "stack trace leaked");
}

test("--help lists the commands", () => {
  const r = run(["--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /simulate/);
  assert.match(r.stdout, /bench/);
});

test("CLI errors are one clear line", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-cli-"));
  const cases: [string[], RegExp][] = [
    [["simulate", "--bogus"], /unknown option '--bogus'/],
    [["frobnicate"], /unknown command 'frobnicate'/],
    [["simulate", "--devices", "0"], /E_CONFIG_VALUE: --devices must be a positive integer, got '0'/],
    [["simulate", "--devices", "-3"], /--devices must be a positive integer/],
    [["simulate", "--rounds", "two"], /--rounds must be a positive integer, got 'two'/],
    [["simulate", "--lr", "-1"], /--lr must be a positive number/],
    [["simulate", "--devices", "5", "--clients-per-round", "9"], /--clients-per-round 9 exceeds --devices 5/],
    [["simulate", "--dataset", "imagenet"], /E_CONFIG_DATASET: unknown dataset 'imagenet'/],
    [["simulate", "--model", "resnet", "--rounds", "1"], /E_CONFIG_MODEL: unknown model 'resnet'/],
    [["simulate", "--strategy", "fedsgd", "--rounds", "1"], /E_CONFIG_STRATEGY: unknown strategy 'fedsgd'/],
    [["simulate", "--partition", "dirichlet:-1", "--rounds", "1"], /E_CONFIG_PARTITION/],
    [["simulate", "--preset", "nope"], /unknown preset 'nope'/],
    [["simulate", "--dataset", `dir:${path.join(tmp, "missing")}`, "--rounds", "1"], /E_DATA_NOT_FOUND/],
    [["simulate", "--dataset", "mnist", "--model", "cnn1d", "--rounds", "1"], /E_MODEL_SHAPE/],
    [["bench", "train", "--model", "vgg"], /unknown model 'vgg'/],
    [["bench", "train", "--batch-size", "0"], /--batch-size must be a positive integer/],
    [["bench", "aggregate", "--updates", "x"], /--updates must be a positive integer/],
    [["simulate", "--compression", "int7"], /E_COMPRESS_SPEC: .*int7/],
    [["simulate", "--compression", "int8+topk:0.1"], /E_COMPRESS_SPEC/],
    [["simulate", "--downlink-compression", "topk:0.1"], /E_COMPRESS_SPEC: .*cannot be sparsified/],
    [["bench", "compress", "--codecs", "zip"], /E_COMPRESS_SPEC/],
    [["simulate", "--dp-clip", "1"], /E_CONFIG_VALUE: --dp-clip needs --dp-noise/],
    [["simulate", "--dp-noise", "1"], /E_CONFIG_VALUE: --dp-noise needs --dp-clip/],
    [["simulate", "--dp-noise", "0", "--dp-clip", "1"], /--dp-noise must be a positive number/],
    [["simulate", "--time-scale", "0"], /E_CONFIG_VALUE: --time-scale must be a positive number/],
    [["simulate", "--dp-noise", "1", "--dp-clip", "big"], /--dp-clip must be a positive number/],
    [
      ["simulate", "--dp-noise", "1", "--dp-clip", "1", "--dp-delta", "2"],
      /E_CONFIG_VALUE: .*delta must be in \(0, 1\)/,
    ],
    [
      ["simulate", "--dp-noise", "1", "--dp-clip", "1", "--dp-placement", "edge"],
      /--dp-placement must be central/,
    ],
    [
      ["simulate", "--dp-noise", "1", "--dp-clip", "1", "--dp-placement", "distributed"],
      /needs --secure-aggregation/,
    ],
    [
      ["simulate", "--dp-noise", "3", "--dp-clip", "adaptive"],
      /adaptive clipping needs noise multiplier 3 < 2·σ_b/,
    ],
    [
      ["simulate", "--dp-noise", "1", "--dp-clip", "1", "--dp-target-quantile", "0.5"],
      /need --dp-clip adaptive/,
    ],
    [
      ["privacy", "--sampling-rate", "2", "--noise-multiplier", "1", "--rounds", "1", "--delta", "1e-5"],
      /E_DP_CONFIG/,
    ],
  ];
  fs.writeFileSync(path.join(tmp, "bad.csv"), "a,b,label\n1,2,x\n3,oops,y\n");
  cases.push([
    ["simulate", "--dataset", `dir:${tmp}`, "--devices", "1", "--rounds", "1"],
    /E_DATA_PARSE.*bad\.csv/,
  ]);
  for (const [args, pattern] of cases) expectOneLineError(args, pattern);
});

test("bench aggregate --dp --json compares central DP with plain aggregation", () => {
  const r = run(["bench", "aggregate", "--updates", "3", "--params", "1000", "--dp", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const o = JSON.parse(r.stdout.trim());
  assert.deepEqual(Object.keys(o), ["updates", "params", "gbPerSecond", "dpGbPerSecond", "ratio", "noiseMs"]);
  assert.ok(o.dpGbPerSecond > 0 && o.ratio > 0);
});

test("bench aggregate --json prints one object with the documented fields", () => {
  const r = run(["bench", "aggregate", "--updates", "3", "--params", "1000", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const o = JSON.parse(r.stdout.trim());
  assert.deepEqual(Object.keys(o).slice(0, 4), ["updates", "params", "updatesPerSecond", "gbPerSecond"]);
  assert.equal(o.updates, 3);
  assert.ok(o.gbPerSecond > 0);
});
