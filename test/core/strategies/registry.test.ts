import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { FedAvg } from "../../../core/strategies/fedavg";
import { FedAvgM } from "../../../core/strategies/fedavgm";
import { FedAdagrad, FedAdam, FedYogi } from "../../../core/strategies/fedopt";
import { FedProx } from "../../../core/strategies/fedprox";
import { STRATEGY_NAMES, createStrategy } from "../../../core/strategies/registry";
import type { StrategyOptions } from "../../../core/strategies/strategy";

const FIT = { epochs: 1, batchSize: 32, lr: 0.01 };
const OPTS: StrategyOptions = { clientsPerRound: 5, fit: FIT, seed: 3 };
const configError = (pattern?: RegExp) => (e: unknown) => {
  const err = e as { code?: string; message?: string };
  return err.code === "E_CONFIG_STRATEGY" && (pattern === undefined || pattern.test(err.message ?? ""));
};

test("STRATEGY_NAMES lists the six strategies", () => {
  assert.deepEqual([...STRATEGY_NAMES], ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]);
});

test("createStrategy builds each strategy by name", () => {
  const classes = [FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad];
  STRATEGY_NAMES.forEach((name, i) => {
    const s = createStrategy(name, OPTS);
    assert.ok(s instanceof classes[i], name);
    assert.equal(s.name, name);
    s.initialize(Float32Array.from([1, 2]));
    assert.deepEqual([...s.weights], [1, 2]);
  });
  assert.equal(createStrategy("FedAdam", OPTS).name, "fedadam", "names are case-insensitive");
});

test("an unknown name is E_CONFIG_STRATEGY and lists the valid names", () => {
  assert.throws(
    () => createStrategy("fedsgd", OPTS),
    configError(
      /^unknown strategy 'fedsgd' \(expected one of fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad\)$/,
    ),
  );
  assert.throws(() => createStrategy("", OPTS), configError(/unknown strategy ''/));
  assert.throws(() => createStrategy("constructor", OPTS), configError(/unknown strategy/));
});

test("invalid options are E_CONFIG_STRATEGY naming the option", () => {
  const cases: [Partial<StrategyOptions>, RegExp][] = [
    [{ clientsPerRound: 0 }, /clientsPerRound/],
    [{ clientsPerRound: 2.5 }, /clientsPerRound/],
    [{ clientsPerRound: NaN }, /clientsPerRound/],
    [{ seed: 1.5 }, /seed/],
    [{ fit: { ...FIT, lr: 0 } }, /fit\.lr/],
    [{ fit: { ...FIT, lr: -0.1 } }, /fit\.lr/],
    [{ fit: { ...FIT, lr: Infinity } }, /fit\.lr/],
    [{ fit: { ...FIT, epochs: 0 } }, /fit\.epochs/],
    [{ fit: { ...FIT, batchSize: 0 } }, /fit\.batchSize/],
    [{ fit: { ...FIT, mu: -1 } }, /fit\.mu/],
    [{ serverLr: 0 }, /serverLr/],
    [{ serverMomentum: 1 }, /serverMomentum/],
    [{ beta1: 1 }, /beta1/],
    [{ beta2: -0.01 }, /beta2/],
    [{ tau: 0 }, /tau/],
  ];
  for (const name of STRATEGY_NAMES) {
    for (const [over, pattern] of cases) {
      assert.throws(
        () => createStrategy(name, { ...OPTS, ...over }),
        configError(pattern),
        `${name} ${pattern}`,
      );
    }
  }
});

test("a valid full option set is accepted by every strategy", () => {
  const full: StrategyOptions = {
    ...OPTS,
    fit: { ...FIT, mu: 0.1 },
    serverLr: 0.5,
    serverMomentum: 0,
    beta1: 0,
    beta2: 0.5,
    tau: 1e-6,
  };
  for (const name of STRATEGY_NAMES) assert.equal(createStrategy(name, full).name, name);
});
