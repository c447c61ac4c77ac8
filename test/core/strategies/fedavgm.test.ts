import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { FedAvg } from "../../../core/strategies/fedavg";
import { FEDAVGM_DEFAULTS, FedAvgM } from "../../../core/strategies/fedavgm";
import {
  aggregateRound as round,
  assertClose,
  strategyOptions as opts,
  update as upd,
} from "../../helpers/strategy";

test("defaults: serverLr 1, serverMomentum 0.9", () => {
  assert.deepEqual(FEDAVGM_DEFAULTS, { serverLr: 1, serverMomentum: 0.9 });
  assert.equal(new FedAvgM(opts()).name, "fedavgm");
});

test("two rounds by hand with the defaults (eta = 1, beta = 0.9)", () => {
  const s = new FedAvgM(opts());
  s.initialize(Float32Array.from([1, -1]));
  // Round 1: mean delta [2, -1]  ->  g = [-2, 1], v = [-2, 1], w = [1, -1] - v = [3, -2]
  assertClose(round(s, 1, [upd("a", 1, [2, -1])]), [3, -2]);
  // Round 2: mean delta of [-1, 3] and [3, -1] (equal weights) = [1, 1]  ->  g = [-1, -1]
  //   v = 0.9 * [-2, 1] + [-1, -1] = [-2.8, -0.1];  w = [3, -2] - v = [5.8, -1.9]
  assertClose(round(s, 2, [upd("a", 5, [-1, 3]), upd("b", 5, [3, -1])]), [5.8, -1.9]);
});

test("two rounds by hand with eta = 0.5, beta = 0.5", () => {
  const s = new FedAvgM(opts({ serverLr: 0.5, serverMomentum: 0.5 }));
  s.initialize(Float32Array.from([1, -1]));
  // Round 1: v = g = [-2, 1];  w = [1, -1] - 0.5 * v = [2, -1.5]
  assert.deepEqual(round(s, 1, [upd("a", 1, [2, -1])]), [2, -1.5]);
  // Round 2: mean delta (1*[4, 1] + 3*[0, 1]) / 4 = [1, 1];  v = 0.5 * [-2, 1] + [-1, -1] = [-2, -0.5]
  //   w = [2, -1.5] - 0.5 * [-2, -0.5] = [3, -1.25]
  assert.deepEqual(round(s, 2, [upd("a", 1, [4, 1]), upd("b", 3, [0, 1])]), [3, -1.25]);
});

test("beta = 0 and eta = 1 is exactly FedAvg", () => {
  const m = new FedAvgM(opts({ serverMomentum: 0, serverLr: 1 }));
  const a = new FedAvg(opts());
  const w0 = Float32Array.from([0.3, -0.7, 1.1]);
  m.initialize(w0);
  a.initialize(w0);
  const rounds = [[upd("a", 2, [0.1, 0.2, -0.3]), upd("b", 5, [-0.4, 0.05, 0.6])], [upd("c", 1, [1, 1, 1])]];
  rounds.forEach((rs, i) => assert.deepEqual(round(m, i + 1, rs), round(a, i + 1, rs)));
});

test("a failed round leaves the momentum untouched; initialize resets it", () => {
  const s = new FedAvgM(opts());
  s.initialize(Float32Array.from([1, -1]));
  round(s, 1, [upd("a", 1, [2, -1])]); // v = [-2, 1], w = [3, -2]
  assert.deepEqual(round(s, 2, []), [3, -2]); // no update: w and v unchanged
  assertClose(round(s, 3, [upd("a", 5, [1, 1])]), [5.8, -1.9]); // as round 2 of the default test
  s.initialize(Float32Array.from([1, -1]));
  assertClose(round(s, 1, [upd("a", 1, [2, -1])]), [3, -2], 0); // v started again from 0
});

test("invalid momentum or server learning rate is refused (E_CONFIG_STRATEGY)", () => {
  const bad = [{ serverMomentum: 1 }, { serverMomentum: -0.1 }, { serverLr: 0 }, { serverLr: NaN }];
  for (const o of bad) {
    assert.throws(
      () => new FedAvgM(opts(o)),
      (e: unknown) => (e as { code?: string }).code === "E_CONFIG_STRATEGY",
    );
  }
});
