import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  FEDADAGRAD_DEFAULTS,
  FEDADAM_DEFAULTS,
  FEDYOGI_DEFAULTS,
  FedAdagrad,
  FedAdam,
  FedYogi,
} from "../../../core/strategies/fedopt";
import {
  aggregateRound as round,
  assertClose,
  strategyOptions as opts,
  update as upd,
} from "../../helpers/strategy";

const isConfigError = (e: unknown) => (e as { code?: string }).code === "E_CONFIG_STRATEGY";

test("defaults are Flower's", () => {
  assert.deepEqual(FEDADAM_DEFAULTS, { serverLr: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-9 });
  assert.deepEqual(FEDYOGI_DEFAULTS, { serverLr: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 });
  assert.equal(FEDADAGRAD_DEFAULTS.serverLr, 0.1);
  assert.equal(FEDADAGRAD_DEFAULTS.beta1, 0);
  assert.equal(FEDADAGRAD_DEFAULTS.tau, 1e-9);
  assert.deepEqual(
    [new FedAdam(opts()), new FedYogi(opts()), new FedAdagrad(opts())].map((s) => s.name),
    ["fedadam", "fedyogi", "fedadagrad"],
  );
});

// Shared two-round case for Adam and Yogi: eta = 0.5, beta1 = 0.5, beta2 = 0.75, tau = 0.25 (so v0 = 0.0625).
//   Round 1: mean of [1, 0] (1 sample) and [1, 2] (3 samples) = [1, 1.5];  m1 = 0.5 * [1, 1.5] = [0.5, 0.75]
//   Round 2: delta [-1, 0.5];  m2 = 0.5 * m1 + 0.5 * [-1, 0.5] = [-0.25, 0.625]
const custom = { serverLr: 0.5, beta1: 0.5, beta2: 0.75, tau: 0.25 };
const round1 = [upd("a", 1, [1, 0]), upd("b", 3, [1, 2])];
const round2 = [upd("a", 2, [-1, 0.5])];

test("FedAdam: one and two steps by hand", () => {
  const s = new FedAdam(opts(custom));
  s.initialize(Float32Array.from([1, -1]));
  // v1 = 0.75 * 0.0625 + 0.25 * [1, 2.25] = [0.296875, 0.609375]
  // w1 = [1, -1] + 0.5 * [0.5, 0.75] / (sqrt(v1) + 0.25)
  //    = [1 + 0.25 / 0.7948627, -1 + 0.375 / 1.0306148] = [1.3145199, -0.6361430]
  const w1 = round(s, 1, round1);
  assertClose(w1, [1.3145198591387564, -0.6361430287087086]);
  assert.ok(Math.abs(w1[0] - (1 + 0.25 / (Math.sqrt(0.296875) + 0.25))) < 1e-6);
  // v2 = 0.75 * v1 + 0.25 * [1, 0.25] = [0.47265625, 0.51953125]   (sqrt(v2[0]) = 0.6875)
  // w2 = w1 + 0.5 * [-0.25, 0.625] / (sqrt(v2) + 0.25) = w1 + [-0.125 / 0.9375, 0.3125 / 0.9707935]
  //    = w1 + [-0.1333333, 0.3219044]
  assertClose(round(s, 2, round2), [
    1.3145198591387564 - 0.13333333333333333,
    -0.6361430287087086 + 0.32190438,
  ]);
});

test("FedYogi: one and two steps by hand, both branches of sign(v - delta^2)", () => {
  const s = new FedYogi(opts(custom));
  s.initialize(Float32Array.from([1, -1]));
  // v0 - delta^2 < 0 in both coordinates, so v grows: v1 = 0.0625 + 0.25 * [1, 2.25] = [0.3125, 0.625]
  // w1 = [1, -1] + 0.5 * [0.5, 0.75] / (sqrt(v1) + 0.25) = [1 + 0.25 / 0.8090170, -1 + 0.375 / 1.0405694]
  const w1 = round(s, 1, round1);
  assertClose(w1, [1.3090169943749475, -0.6396203899719368]);
  // Round 2, delta^2 = [1, 0.25]: v1 - delta^2 = [-0.6875, 0.375]
  //   v2 = [0.3125 + 0.25 * 1, 0.625 - 0.25 * 0.25] = [0.5625, 0.5625]  (sqrt = 0.75, shrinks in coordinate 2)
  //   w2 = w1 + 0.5 * [-0.25, 0.625] / (0.75 + 0.25) = w1 + [-0.125, 0.3125]
  assertClose(round(s, 2, round2), [1.3090169943749475 - 0.125, -0.6396203899719368 + 0.3125]);
});

test("FedAdagrad: one and two steps by hand (default beta1 = 0, and with momentum)", () => {
  // eta = 1, tau = 0.75 (v0 = 0.5625). beta1 = 0, so m = delta.
  const s = new FedAdagrad(opts({ serverLr: 1, tau: 0.75 }));
  s.initialize(new Float32Array(3));
  // v1 = 0.5625 + [1, 1, 0] = [1.5625, 1.5625, 0.5625]  (sqrt = [1.25, 1.25, 0.75])
  // w1 = [1, -1, 0] / ([1.25, 1.25, 0.75] + 0.75) = [0.5, -0.5, 0]
  assert.deepEqual(round(s, 1, [upd("a", 1, [1, -1, 0])]), [0.5, -0.5, 0]);
  // v2 = v1 + [9, 0, 1] = [10.5625, 1.5625, 1.5625]  (sqrt = [3.25, 1.25, 1.25])
  // w2 = w1 + [3, 0, 1] / ([3.25, 1.25, 1.25] + 0.75) = [0.5 + 0.75, -0.5, 0 + 0.5]
  assert.deepEqual(round(s, 2, [upd("a", 1, [3, 0, 1])]), [1.25, -0.5, 0.5]);

  const mom = new FedAdagrad(opts({ serverLr: 1, tau: 0.75, beta1: 0.5 }));
  mom.initialize(new Float32Array(3));
  // m1 = 0.5 * [1, -1, 0] = [0.5, -0.5, 0];  w1 = m1 / [2, 2, 1.5] = [0.25, -0.25, 0]
  assert.deepEqual(round(mom, 1, [upd("a", 1, [1, -1, 0])]), [0.25, -0.25, 0]);
  // m2 = 0.5 * m1 + 0.5 * [3, 0, 1] = [1.75, -0.25, 0.5];  w2 = w1 + m2 / [4, 2, 2] = [0.6875, -0.375, 0.25]
  assert.deepEqual(round(mom, 2, [upd("a", 1, [3, 0, 1])]), [0.6875, -0.375, 0.25]);
});

test("first step with defaults: Adam and Adagrad move each coordinate by ~eta * sign(delta)", () => {
  // Adam: m1 = 0.1 * d, v1 = 0.01 * d^2 (+ 0.99 tau^2), so m1 / sqrt(v1) = sign(d); eta = 0.1.
  const adam = new FedAdam(opts());
  adam.initialize(new Float32Array(3));
  assertClose(round(adam, 1, [upd("a", 1, [0.5, -2, 0])]), [0.1, -0.1, 0]);
  // Adagrad: m1 = d, v1 = d^2 (+ tau^2): same ~sign(d) step with eta = 0.1.
  const adagrad = new FedAdagrad(opts());
  adagrad.initialize(new Float32Array(2));
  assertClose(round(adagrad, 1, [upd("a", 1, [0.5, -2])]), [0.1, -0.1]);
  // Yogi (eta 0.01, tau 1e-3): v1 = 1e-6 + 0.01 * 1 = 0.010001, m1 = 0.1,
  //   w1 = 0.01 * 0.1 / (sqrt(0.010001) + 0.001) = 0.0099005
  const yogi = new FedYogi(opts());
  yogi.initialize(new Float32Array(1));
  assertClose(round(yogi, 1, [upd("a", 1, [1])]), [0.009900499987500625]);
});

test("a failed round leaves w, m and v untouched; initialize resets the moments", () => {
  const s = new FedAdagrad(opts({ serverLr: 1, tau: 0.75, beta1: 0.5 }));
  s.initialize(new Float32Array(3));
  round(s, 1, [upd("a", 1, [1, -1, 0])]);
  assert.deepEqual(round(s, 2, []), [0.25, -0.25, 0]);
  assert.deepEqual(s.failedRounds, [2]);
  assert.deepEqual(round(s, 3, [upd("a", 1, [3, 0, 1])]), [0.6875, -0.375, 0.25]);
  s.initialize(new Float32Array(3));
  assert.deepEqual(round(s, 1, [upd("a", 1, [1, -1, 0])]), [0.25, -0.25, 0]);
});

test("a rejected update does not reach the server optimizer", () => {
  const s = new FedYogi(opts(custom));
  s.initialize(Float32Array.from([1, -1]));
  const agg = s.beginAggregate(1);
  for (const r of round1) agg.add(r);
  assert.throws(() => agg.add(upd("bad", 100, [NaN, 1])), { code: "E_STRATEGY_NONFINITE" });
  assert.throws(() => agg.add(upd("bad2", 100, [1])), { code: "E_STRATEGY_SIZE" });
  assertClose([...agg.finish([]).weights], [1.3090169943749475, -0.6396203899719368]);
});

test("invalid beta1, beta2, tau or serverLr are refused (E_CONFIG_STRATEGY)", () => {
  const bad = [{ beta1: 1 }, { beta1: -0.5 }, { beta2: 1.5 }, { tau: 0 }, { tau: -1 }, { serverLr: -0.1 }];
  for (const o of bad) {
    for (const C of [FedAdam, FedYogi, FedAdagrad]) assert.throws(() => new C(opts(o)), isConfigError);
  }
});
