import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { PrivacyAccountant } from "../../../core/privacy/accountant";
import { DifferentialPrivacy } from "../../../core/privacy/dp";
import { epsilonFromRdp, computeRdp } from "../../../core/privacy/rdp";

test("the accountant refuses a noise multiplier whose ε is infinite, so no ledger ever reports ε = ∞ / null", () => {
  // σ = 1e-200: σ² underflows to 0 and every order's RDP is infinite (the library reports ∞ as a number).
  assert.equal(epsilonFromRdp([2, 3], computeRdp(0.5, 1e-200, 1, [2, 3]), 1e-5).epsilon, Infinity);
  for (const mode of ["sampled", "local"] as const) {
    assert.throws(
      () => new PrivacyAccountant({ mode, noiseMultiplier: 1e-200, samplingRate: 0.5, delta: 1e-5 }),
      (e: Error & { code?: string }) =>
        e.code === "E_DP_CONFIG" && /noise multiplier 1e-200 gives an infinite ε/.test(e.message),
    );
  }
  // σ = 0 was and is refused.
  assert.throws(
    () => new PrivacyAccountant({ mode: "sampled", noiseMultiplier: 0, samplingRate: 0.5, delta: 1e-5 }),
    { code: "E_DP_CONFIG" },
  );
  assert.throws(
    () =>
      new DifferentialPrivacy({
        noiseMultiplier: 1e-200,
        clip: 1,
        delta: 1e-5,
        placement: "central",
        clientsPerRound: 4,
        fleetSize: 8,
      }),
    { code: "E_DP_CONFIG" },
  );
  // A tiny but usable multiplier still gives a (huge) finite ε.
  const ok = new PrivacyAccountant({
    mode: "sampled",
    noiseMultiplier: 0.01,
    samplingRate: 0.5,
    delta: 1e-5,
  });
  ok.record(["a"]);
  assert.ok(Number.isFinite(ok.spent().epsilon) && ok.spent().epsilon > 0);
});
