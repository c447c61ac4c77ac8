import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { parseTrace } from "../../../core/fleet/trace-file";
import { run, scratch } from "./spawn-cli";

const dir = scratch();

test("flotilla fleet-trace synthetic:SPEC --devices N --out FILE writes a readable trace and prints its summary", async () => {
  const out = path.join(dir, "sub", "fleet.jsonl");
  const csv = path.join(dir, "sessions.csv");
  const r = await run(
    [
      "fleet-trace",
      "synthetic:hours=6",
      "--devices",
      "300",
      "--out",
      out,
      "--seed",
      "7",
      "--sessions-csv",
      csv,
    ],
    dir,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^300 devices over 6 h, written to /);
  assert.match(r.stdout, /speed .*p90\/p10 \d/);
  assert.match(r.stdout, /intermittent \d+\.\d%/);
  const t = parseTrace(fs.readFileSync(out, "utf8"), out);
  assert.equal(t.devices.length, 300);
  assert.equal(t.horizonS, 6 * 3600);
  const rows = fs.readFileSync(csv, "utf8").trim().split("\n");
  assert.equal(rows[0], "deviceId,kind,startS,endS");
  const intervals = t.devices.reduce((n, d) => n + d.sessions.length + d.maintenance.length, 0);
  assert.equal(rows.length - 1, intervals);

  // Reading the file back gives the same summary as generating it (--json), and --devices keeps the first n.
  const again = await run(
    ["fleet-trace", "synthetic:hours=6", "--devices", "300", "--seed", "7", "--json"],
    dir,
  );
  const fromFile = await run(["fleet-trace", out, "--json"], dir);
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(JSON.parse(fromFile.stdout), JSON.parse(again.stdout));
  const first = await run(["fleet-trace", out, "--devices", "10", "--json"], dir);
  assert.equal((JSON.parse(first.stdout) as { devices: number }).devices, 10);
});

test("flotilla fleet-trace: bad input is one coded line, exit 2", async () => {
  const bad = path.join(dir, "bad.jsonl");
  fs.writeFileSync(bad, '{"flotillaTrace":1,"horizonS":100}\n{"deviceId":"a"}\n');
  const cases: [string[], RegExp][] = [
    [["fleet-trace", "synthetic:speed=-1"], /^flotilla: E_TRACE_SPEC: synthetic speed must be/],
    [["fleet-trace", bad], /^flotilla: E_TRACE_FILE: .*bad\.jsonl: line 2: samplesPerSecond must be/],
    [
      ["fleet-trace", path.join(dir, "missing.jsonl")],
      /^flotilla: E_TRACE_FILE: .*missing\.jsonl: cannot read/,
    ],
    [
      ["fleet-trace", "synthetic", "--devices", "100001"],
      /^flotilla: E_CONFIG_RANGE: --devices must be at most/,
    ],
    [
      ["fleet-trace", "synthetic", "--devices", "0"],
      /^flotilla: E_CONFIG_VALUE: --devices must be a positive integer/,
    ],
    [["fleet-trace", "synthetic", "--seed", "-1"], /^flotilla: E_CONFIG_VALUE: --seed/],
    [["fleet-trace"], /^flotilla: E_CONFIG_MISSING_ARGUMENT: /],
    [["fleet-trace", "synthetic", "--out", dir], /^flotilla: E_CONFIG_OUT: --out .*cannot write/],
  ];
  for (const [args, pattern] of cases) {
    const r = await run(args, dir);
    const what = `flotilla ${args.join(" ")}: ${JSON.stringify(r.stderr)}`;
    assert.equal(r.code, 2, what);
    assert.equal(r.stderr.trim().split("\n").length, 1, what);
    assert.match(r.stderr, pattern, what);
  }
});

test("flotilla --help lists fleet-trace", async () => {
  const r = await run(["--help"], dir);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /fleet-trace \[options\] <source>/);
});
