import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");

test("flotilla simulate: a diverged job prints why, writes its results, and exits 3 with E_MODEL_DIVERGED", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-diverged-cli-"));
  try {
    // Central DP noise of std z·C = 1e40 overflows float32, so the model after round 1 is not finite.
    const args = [
      "simulate",
      ...["--devices", "4", "--clients-per-round", "4", "--rounds", "5", "--samples-per-device", "20"],
      ...["--workers", "0", "--dp-noise", "1000", "--dp-clip", "1e37", "--out", out],
    ];
    const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 120_000 });
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stdout, /job stopped: diverged: the global model is not finite after round 1/);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^flotilla: E_MODEL_DIVERGED: the global model is not finite after round 1: /);
    const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
    assert.equal(json.status.state, "diverged");
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
