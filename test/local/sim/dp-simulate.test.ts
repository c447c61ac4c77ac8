import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";
import { PrivacyAccountant } from "../../../core/privacy/accountant";

const base = (over: Partial<SimConfig>): SimConfig => ({
  ...DEFAULT_CONFIG,
  devices: 16,
  clientsPerRound: 8,
  rounds: 3,
  samplesPerDevice: 40,
  workers: 0,
  secaggStepTimeoutMs: 5000,
  out: fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-dpsim-")),
  ...over,
});

test("an exhausted privacy budget stops the job with a clear status, before the round that would exceed it", async () => {
  const z = 0.8;
  const budget = 6;
  const acc = new PrivacyAccountant({
    mode: "sampled",
    noiseMultiplier: z,
    samplingRate: 8 / 16,
    delta: 1e-5,
  });
  let expected = 0;
  while (acc.epsilonAfter(expected + 1).epsilon <= budget) expected++;
  assert.ok(expected >= 1 && expected < 10, `expected ${expected} rounds`);
  const r = await simulate(base({ rounds: 10, dpNoise: z, dpClip: 1, dpEpsilonBudget: budget }));
  assert.equal(r.rounds.length, expected);
  assert.equal(r.status?.state, "budget-exhausted");
  assert.match(r.status?.reason ?? "", new RegExp(`budget ε=${budget} .*reached: ${expected} round`));
  let last = 0;
  for (const round of r.rounds) {
    assert.ok(round.dp?.released);
    assert.ok(
      round.dp.epsilon > last && round.dp.epsilon <= budget,
      `ε ${round.dp.epsilon} after round ${round.round}`,
    );
    last = round.dp.epsilon;
  }
  assert.ok(Math.abs((r.privacy?.epsilon ?? 0) - acc.epsilonAfter(expected).epsilon) < 1e-12);
  const json = JSON.parse(fs.readFileSync(path.join(r.config.out, "results.json"), "utf8"));
  assert.equal(json.status.state, "budget-exhausted");
  assert.equal(typeof json.rounds[0].dp.epsilon, "number");
  assert.equal(
    json.rounds[0].epsilon,
    json.rounds[0].dp.epsilon,
    "per-round epsilon at the top of each round",
  );
  const html = fs.readFileSync(path.join(r.config.out, "report.html"), "utf8");
  assert.match(html, /<canvas id="dpEps">/);
  assert.match(html, /budget-exhausted/);
});

test("central DP: the server's noise (std zC on the sum) changes the model", async () => {
  const plain = await simulate(base({ rounds: 2 }));
  const noisy = await simulate(base({ rounds: 2, dpNoise: 5, dpClip: 1 }));
  assert.notEqual(noisy.rounds[1].loss, plain.rounds[1].loss);
  // z = 5 with clip 1 over 8 devices: noise std 0.625 per coordinate of the mean destroys the model.
  assert.ok(
    noisy.final.accuracy < plain.final.accuracy,
    `${noisy.final.accuracy} vs ${plain.final.accuracy}`,
  );
  assert.equal(noisy.rounds[0].dp?.noiseStd, 5);
});

test("distributed DP over SecAgg+ with adaptive clipping: the clip bit rides in the masked sum", async () => {
  const r = await simulate(
    base({
      secureAggregation: true,
      dpNoise: 0.5,
      dpClip: "adaptive",
      dpClipCountStddev: 2,
      dpPlacement: "distributed",
      rounds: 3,
    }),
  );
  for (const round of r.rounds) {
    assert.ok(round.secagg && !round.secagg.aborted, round.secagg?.aborted?.reason);
    assert.equal(round.dp?.released, true);
    assert.ok(round.dp.unclippedFraction !== undefined && Number.isFinite(round.dp.unclippedFraction));
    assert.notEqual(round.dp.nextClip, round.dp.clip);
    assert.ok(
      Number.isNaN(round.trainLoss),
      "devices that noise their own update withhold their training loss",
    );
  }
  assert.equal(r.rounds[1].dp?.clip, r.rounds[0].dp?.nextClip, "the next round uses the adapted clip norm");
  assert.equal(r.privacy?.placement, "distributed");
});

test("distributed DP: a round with fewer masked inputs than n' aborts before unmasking and costs nothing", async () => {
  const r = await simulate(
    base({
      secureAggregation: true,
      dropout: 0.25,
      dpNoise: 1,
      dpClip: 1,
      dpPlacement: "distributed",
      dpMinSurvivors: 8,
      rounds: 3,
    }),
  );
  let released = 0;
  for (const round of r.rounds) {
    const s = round.secagg!;
    const lostBeforeSum = Object.values(s.simulatedDropouts ?? {}).filter((step) => step !== "unmask").length;
    if (lostBeforeSum > 0) {
      assert.equal(s.aborted?.code, "E_DP_TOO_FEW", `round ${round.round}`);
      assert.equal(s.unmaskMs, 0);
      assert.equal(round.dp?.released, false);
    } else {
      assert.equal(round.dp?.released, true);
      released++;
    }
  }
  assert.ok(
    released < r.rounds.length,
    "with 2 of 8 vanishing each round, some round lost inputs before the sum",
  );
  assert.equal(r.privacy?.steps, released);
});
