import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";

const base = (over: Partial<SimConfig>): SimConfig => ({
  ...DEFAULT_CONFIG,
  devices: 4,
  clientsPerRound: 4,
  rounds: 5,
  samplesPerDevice: 20,
  workers: 0,
  out: fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-diverged-")),
  ...over,
});

test("a DP job whose global model turns non-finite stops at that round: status diverged in results and report", async () => {
  // Central noise std z·C = 1e40 overflows float32: the model released after round 1 is ±Infinity.
  const config = base({ dpNoise: 1e3, dpClip: 1e37 });
  try {
    const r = await simulate(config);
    assert.equal(r.rounds.length, 1, "no round runs on a non-finite model");
    assert.equal(r.status?.state, "diverged");
    assert.match(r.status?.reason ?? "", /^the global model is not finite after round 1: \d+ of \d+ weights/);
    const json = JSON.parse(fs.readFileSync(path.join(config.out, "results.json"), "utf8"));
    assert.equal(json.status.state, "diverged");
    assert.match(json.status.reason, /after round 1/);
    assert.equal(json.final.rounds, 1);
    assert.equal(typeof json.privacy.epsilon, "number", "ε stays a number");
    assert.equal(json.rejected.E_DP_INPUT, undefined, "no round of rejected updates after the divergence");
    const html = fs.readFileSync(path.join(config.out, "report.html"), "utf8");
    assert.match(html, /Job stopped: <b>diverged<\/b> — the global model is not finite after round 1/);
  } finally {
    fs.rmSync(config.out, { recursive: true, force: true });
  }
});
