/**
 * Fleet-wide evaluation in the memory-transport simulator (docs/evaluation.md): every round's results.json entry
 * has `evaluation`, the fold of every device's evaluation on its held-out data, and training is unchanged by it.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";
import { fleetHeldOut, loadFleetData } from "../../../local/sim/data";

const config = (out: string, fleetEval: boolean): SimConfig => ({
  ...DEFAULT_CONFIG,
  devices: 6,
  clientsPerRound: 3,
  rounds: 3,
  samplesPerDevice: 60,
  workers: 0,
  fleetEval,
  out,
});

test("each round's model is evaluated on every device's held-out data; training and test accuracy do not change", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-eval-sim-"));
  const off = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-eval-sim-off-"));
  const c = config(out, true);
  const r = await simulate(c);
  const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
  const heldOut = fleetHeldOut(loadFleetData(c), c.seed);
  const samples = heldOut.reduce((a, d) => a + d.n, 0);
  for (const round of json.rounds) {
    const e = round.evaluation;
    assert.ok(e, `round ${round.round} has no evaluation`);
    assert.equal(e.round, round.round);
    assert.equal(e.devices, 6, "fleet-wide: every device, not only the round's participants");
    assert.equal(e.samples, samples);
    assert.ok(e.accuracy >= 0 && e.accuracy <= 1 && e.loss > 0);
    assert.ok(e.spread.min <= e.spread.p10 && e.spread.p10 <= e.spread.median);
    assert.ok(e.spread.median <= e.spread.p90 && e.spread.p90 <= e.spread.max);
    // 6 devices: the worst decile is one device, the least accurate.
    assert.equal(e.worstDecile.devices.length, 1);
    assert.equal(e.worstDecile.value, e.spread.min);
  }
  // The held-out data is drawn from the test set (never trained on): the same run without it trains the same.
  const r0 = await simulate(config(off, false));
  assert.deepEqual(
    r0.rounds.map((x) => [x.accuracy, x.loss, x.trainLoss]),
    r.rounds.map((x) => [x.accuracy, x.loss, x.trainLoss]),
  );
  assert.ok(r0.rounds.every((x) => x.evaluation === undefined));
  const html = fs.readFileSync(path.join(out, "report.html"), "utf8");
  assert.match(html, /<canvas id="fleetEval">/);
});
