import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createStrategy, STRATEGY_NAMES } from "../../../core/strategies/registry";
import { decodeStrategyState, encodeStrategyState } from "../../../core/strategies/state";
import type { FitResult, Strategy, StrategyState } from "../../../core/strategies/strategy";
import { strategyOptions as opts, update as upd } from "../../helpers/strategy";

const code = (c: string) => (e: unknown) => (e as { code?: string }).code === c;

/** Round r's updates: deterministic, different each round. */
function updates(r: number): FitResult[] {
  const d = (k: number) => [0.1 * r - 0.03 * k, -0.2 + 0.05 * k * r, 0.01 * (r + k)];
  return [upd("a", 3, d(1)), upd("b", 5, d(2)), upd("c", 1, d(3))];
}

function step(s: Strategy, r: number): Float32Array {
  const agg = s.beginAggregate(r);
  for (const u of updates(r)) agg.add(u);
  return agg.finish([]).weights.slice();
}

const TENSORS: Record<string, string[]> = {
  fedavg: [],
  fedprox: [],
  fedavgm: ["momentum"],
  fedadam: ["m", "v"],
  fedyogi: ["m", "v"],
  fedadagrad: ["m", "v"],
};

for (const name of STRATEGY_NAMES) {
  test(`${name}: state exported after round 2 and imported into a fresh strategy gives bitwise the same rounds 3-4`, () => {
    const init = Float32Array.from([0.5, -1, 2]);
    const a = createStrategy(name, opts({ beta1: name === "fedadagrad" ? undefined : 0.8 }));
    a.initialize(init);
    step(a, 1);
    step(a, 2);
    const exported = a.exportState();
    assert.equal(exported.strategy, name);
    assert.equal(exported.size, 3);
    assert.equal(exported.steps, 2);
    assert.deepEqual(Object.keys(exported.tensors).sort(), TENSORS[name]);
    // through the blob, as the Function stores it
    const blob = encodeStrategyState(exported);
    const b = createStrategy(name, opts({ beta1: name === "fedadagrad" ? undefined : 0.8 }));
    b.initialize(a.weights);
    b.importState(decodeStrategyState(blob));
    assert.deepEqual(b.exportState(), exported);
    for (const r of [3, 4]) assert.deepEqual(step(b, r), step(a, r), `round ${r}`);
    if (TENSORS[name].length === 0) return;
    // without the state, the stateful strategies would diverge from it: the test above is not vacuous
    const c = createStrategy(name, opts({ beta1: name === "fedadagrad" ? undefined : 0.8 }));
    c.initialize(init);
    step(c, 1);
    step(c, 2);
    const fresh = createStrategy(name, opts({ beta1: name === "fedadagrad" ? undefined : 0.8 }));
    fresh.initialize(c.weights);
    assert.notDeepEqual(step(fresh, 3), step(c, 3));
  });
}

test("exportState returns copies: changing them changes nothing in the strategy", () => {
  const s = createStrategy("fedadam", opts());
  s.initialize(Float32Array.from([1, 2, 3]));
  step(s, 1);
  const st = s.exportState();
  const before = s.exportState().tensors.m.slice();
  st.tensors.m.fill(42);
  assert.deepEqual(s.exportState().tensors.m, before);
});

test("importState refuses another strategy, size, tensor set, non-finite values or an open round; nothing changes", () => {
  const s = createStrategy("fedavgm", opts());
  s.initialize(Float32Array.from([1, 2, 3]));
  step(s, 1);
  const good = s.exportState();
  const bad: [string, StrategyState][] = [
    ["other strategy", { ...good, strategy: "fedadam" }],
    ["other size", { ...good, size: 4, tensors: { momentum: new Float64Array(4) } }],
    ["missing tensor", { ...good, tensors: {} }],
    ["extra tensor", { ...good, tensors: { ...good.tensors, v: new Float64Array(3) } }],
    ["short tensor", { ...good, tensors: { momentum: new Float64Array(2) } }],
    ["NaN", { ...good, tensors: { momentum: Float64Array.from([0, NaN, 0]) } }],
    ["steps", { ...good, steps: -1 }],
  ];
  for (const [why, st] of bad) {
    assert.throws(() => s.importState(st), code("E_STRATEGY_STATE"), why);
    assert.deepEqual(s.exportState(), good, `${why}: state unchanged`);
  }
  const agg = s.beginAggregate(2);
  assert.throws(() => s.importState(good), code("E_STRATEGY_STATE"), "a round is open");
  agg.add(upd("a", 1, [0, 0, 0]));
  agg.finish([]);
});

test("a server step that overflows resets the optimizer state, and the exported state says so (steps 0)", () => {
  const s = createStrategy("fedavgm", opts({ serverLr: 1, serverMomentum: 0.9 }));
  s.initialize(Float32Array.from([3e38, 0]));
  const first = s.beginAggregate(1);
  first.add(upd("a", 1, [-1e30, 1]));
  first.finish([]);
  assert.equal(s.exportState().steps, 1);
  const agg = s.beginAggregate(2);
  agg.add(upd("a", 1, [3e38, 0]));
  agg.finish([]);
  const st = s.exportState();
  assert.equal(st.steps, 0);
  assert.deepEqual([...st.tensors.momentum], [0, 0]);
});

test("decodeStrategyState refuses what encodeStrategyState did not write: one line, E_STRATEGY_STATE", () => {
  const blob = encodeStrategyState({
    strategy: "fedadam",
    size: 2,
    steps: 1,
    tensors: { m: Float64Array.from([1, -2]), v: Float64Array.from([0.5, 1e-300]) },
  });
  const back = decodeStrategyState(blob);
  assert.deepEqual([...back.tensors.v], [0.5, 1e-300], "float64 values round-trip exactly");
  const cases: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["bad magic", Uint8Array.from([1, 2, 3, 4, 1, 0, 0, 0, 0, 0, 0, 0])],
    ["truncated", blob.subarray(0, blob.byteLength - 8)],
    ["longer", Uint8Array.from([...blob, 0, 0, 0, 0, 0, 0, 0, 0])],
    ["other version", Uint8Array.from(blob, (b, i) => (i === 4 ? 9 : b))],
    ["header not JSON", Uint8Array.from(blob, (b, i) => (i === 12 ? 0x21 : b))],
  ];
  for (const [why, bytes] of cases) {
    assert.throws(
      () => decodeStrategyState(bytes),
      (e: unknown) => code("E_STRATEGY_STATE")(e) && !(e as Error).message.includes("\n"),
      why,
    );
  }
});
