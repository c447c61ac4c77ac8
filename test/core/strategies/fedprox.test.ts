import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { FedAvg } from "../../../core/strategies/fedavg";
import { FEDPROX_DEFAULT_MU, FedProx } from "../../../core/strategies/fedprox";
import type { ClientInfo, FitResult, StrategyOptions } from "../../../core/strategies/strategy";

const FIT = { epochs: 1, batchSize: 8, lr: 0.1 };
const opts = (over: Partial<StrategyOptions> = {}): StrategyOptions => ({
  clientsPerRound: 3,
  fit: FIT,
  seed: 5,
  ...over,
});
const fleet = (n: number): ClientInfo[] => Array.from({ length: n }, (_, i) => ({ deviceId: `d${i}` }));
const upd = (deviceId: string, numSamples: number, delta: number[]): FitResult => ({
  deviceId,
  numSamples,
  delta: Float32Array.from(delta),
  metrics: { loss: 0, accuracy: 0, trainMs: 0 },
});

test("FedProx sends mu = options.fit.mu to every device", () => {
  const s = new FedProx(opts({ fit: { ...FIT, mu: 0.25 } }));
  assert.equal(s.name, "fedprox");
  const ins = s.configureFit(1, fleet(6));
  assert.equal(ins.length, 3);
  for (const i of ins) {
    assert.equal(i.config.mu, 0.25);
    assert.equal(i.config.lr, 0.1);
    assert.equal(i.config.epochs, 1);
    assert.equal(i.config.batchSize, 8);
  }
});

test("mu defaults to 0.01 when not given; an explicit 0 is kept", () => {
  assert.equal(FEDPROX_DEFAULT_MU, 0.01);
  for (const i of new FedProx(opts()).configureFit(1, fleet(4))) assert.equal(i.config.mu, 0.01);
  for (const i of new FedProx(opts({ fit: { ...FIT, mu: 0 } })).configureFit(1, fleet(4))) {
    assert.equal(i.config.mu, 0);
  }
});

test("FedProx differs from FedAvg only in mu: same participants, seeds and aggregation", () => {
  const prox = new FedProx(opts());
  const avg = new FedAvg(opts());
  for (let r = 1; r <= 5; r++) {
    const a = avg.configureFit(r, fleet(9));
    const p = prox.configureFit(r, fleet(9));
    assert.deepEqual(
      p.map((i) => [i.deviceId, i.config.seed]),
      a.map((i) => [i.deviceId, i.config.seed]),
    );
  }
  for (const s of [prox, avg]) s.initialize(Float32Array.from([1, -1]));
  const results = [upd("a", 3, [1, 1]), upd("b", 1, [-3, 5])];
  const outs = [prox, avg].map((s) => {
    const agg = s.beginAggregate(1);
    for (const r of results) agg.add(r);
    return [...agg.finish([]).weights];
  });
  // (3*[1,1] + 1*[-3,5]) / 4 = [0, 2]
  assert.deepEqual(outs[0], [1, 1]);
  assert.deepEqual(outs[1], [1, 1]);
});

test("a negative or non-finite mu is refused (E_CONFIG_STRATEGY)", () => {
  for (const mu of [-0.1, NaN, Infinity]) {
    assert.throws(
      () => new FedProx(opts({ fit: { ...FIT, mu } })),
      (e: unknown) => (e as { code?: string }).code === "E_CONFIG_STRATEGY",
    );
  }
});
