import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { isFlotillaError } from "../../../core/errors";
import { runPrivacy } from "../../../local/cli/privacy";

const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");

function run(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const zero = [
  "privacy",
  "--sampling-rate",
  "0.1",
  "--noise-multiplier",
  "0",
  "--rounds",
  "10",
  "--delta",
  "1e-5",
];

test("flotilla privacy: an infinite ε is one E_DP_INFINITE line and a non-zero exit, never null", () => {
  for (const args of [[...zero, "--json"], zero]) {
    const r = run(args);
    assert.notEqual(r.code, 0, `${args.join(" ")} must fail:\n${r.stdout}`);
    assert.equal(r.stdout, "", 'nothing on stdout (no {"epsilon": null})');
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^flotilla: E_DP_INFINITE: ε is infinite .*noise multiplier 0/);
  }
  assert.throws(
    () => runPrivacy({ samplingRate: "0.1", noiseMultiplier: "0", rounds: "10", delta: "1e-5", json: true }),
    (e: unknown) => isFlotillaError(e) && e.code === "E_DP_INFINITE",
  );
});

test("flotilla privacy: q = 0 with z = 0 is a finite ε of 0 (nothing is released), not an error", () => {
  const out = JSON.parse(
    runPrivacy({ samplingRate: "0", noiseMultiplier: "0", rounds: "10", delta: "1e-5", json: true }),
  ) as { epsilon: unknown };
  assert.equal(out.epsilon, 0);
});
