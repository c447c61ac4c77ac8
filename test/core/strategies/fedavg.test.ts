import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { FedAvg } from "../../../core/strategies/fedavg";
import { decodeTensor, encodeTensor, parseCompression } from "../../../core/compress";
import type { ClientInfo, FitResult, StrategyOptions } from "../../../core/strategies/strategy";

const FIT = { epochs: 2, batchSize: 16, lr: 0.05 };

function fedavg(over: Partial<StrategyOptions> = {}): FedAvg {
  return new FedAvg({ clientsPerRound: 3, fit: FIT, seed: 42, ...over });
}

function upd(deviceId: string, numSamples: number, delta: number[] | Float32Array): FitResult {
  const d = delta instanceof Float32Array ? delta : Float32Array.from(delta);
  return { deviceId, numSamples, delta: d, metrics: { loss: 1, accuracy: 0.5, trainMs: 10 } };
}

function fleet(n: number): ClientInfo[] {
  return Array.from({ length: n }, (_, i) => ({
    deviceId: `dev-${String(i).padStart(2, "0")}`,
    numSamples: 100,
  }));
}

function assertClose(actual: ArrayLike<number>, expected: readonly number[], tol = 1e-6): void {
  assert.equal(actual.length, expected.length, "length");
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tol * Math.max(1, Math.abs(expected[i])),
      `[${i}] ${actual[i]} != ${expected[i]}`,
    );
  }
}

const code = (c: string) => (e: unknown) => (e as { code?: string }).code === c;

test("new model = global + sample-weighted mean delta (hand-computed)", () => {
  const s = fedavg();
  s.initialize(Float32Array.from([0.5, 1, -2]));
  const agg = s.beginAggregate(1);
  agg.add(upd("a", 1, [1, -2, 0.5]));
  agg.add(upd("b", 3, [3, 2, -1.5]));
  assert.equal(agg.count, 2);
  // mean = ([1,-2,0.5]*1 + [3,2,-1.5]*3) / 4 = [10/4, 4/4, -4/4] = [2.5, 1, -1]
  const next = agg.finish([]).weights;
  assert.deepEqual([...next], [3, 2, -3]);
  assert.equal(next, s.weights, "finish returns the strategy's current model");
  assert.equal(s.lastRound?.status, "aggregated");
  assert.equal(s.lastRound?.accepted, 2);
  assert.equal(s.lastRound?.totalSamples, 4);
});

test("equals the sample-weighted average of the client models", () => {
  const g = [1, 2, 3, 4];
  const clients: [string, number, number[]][] = [
    ["a", 2, [2, 2, 2, 2]],
    ["b", 1, [0, 4, 1, 8]],
    ["c", 5, [1, 1, 1, 1]],
  ];
  const s = fedavg();
  s.initialize(Float32Array.from(g));
  const agg = s.beginAggregate(1);
  for (const [id, n, w] of clients)
    agg.add(
      upd(
        id,
        n,
        w.map((x, i) => x - g[i]),
      ),
    );
  // (2*[2,2,2,2] + 1*[0,4,1,8] + 5*[1,1,1,1]) / 8 = [9, 13, 10, 17] / 8
  assertClose(agg.finish([]).weights, [1.125, 1.625, 1.25, 2.125]);
});

test("the previous global array is not mutated and initialize copies its input", () => {
  const init = Float32Array.from([1, 1]);
  const s = fedavg();
  s.initialize(init);
  init[0] = 99;
  const before = s.weights;
  assert.deepEqual([...before], [1, 1]);
  const agg = s.beginAggregate(1);
  agg.add(upd("a", 1, [1, 2]));
  const next = agg.finish([]).weights;
  assert.notEqual(next, before);
  assert.deepEqual([...before], [1, 1], "the engine may still hold the round's global model");
  assert.deepEqual([...next], [2, 3]);
});

test("updates are not retained: the caller may reuse a delta buffer after add", () => {
  const s = fedavg();
  s.initialize(new Float32Array(2));
  const agg = s.beginAggregate(1);
  const buf = Float32Array.from([2, 4]);
  agg.add(upd("a", 1, buf));
  buf.set([0, 0]);
  agg.add(upd("b", 1, buf));
  assert.deepEqual([...agg.finish([]).weights], [1, 2]);
});

test("zero results: weights unchanged and the round is recorded as failed", () => {
  const s = fedavg();
  s.initialize(Float32Array.from([0.25, -1]));
  const before = s.weights;
  const agg = s.beginAggregate(7);
  const failures = [{ deviceId: "a", code: "E_ROUND_TIMEOUT", reason: "late" }];
  const next = agg.finish(failures).weights;
  assert.equal(next, before);
  assert.deepEqual([...s.weights], [0.25, -1]);
  assert.equal(s.lastRound?.status, "failed");
  assert.equal(s.lastRound?.round, 7);
  assert.deepEqual(s.lastRound?.failures, failures);
  assert.deepEqual(s.failedRounds, [7]);
  // The next round works normally.
  const agg2 = s.beginAggregate(8);
  agg2.add(upd("b", 2, [0.25, 1]));
  assert.deepEqual([...agg2.finish([]).weights], [0.5, 0]);
  assert.equal(s.lastRound?.status, "aggregated");
  assert.deepEqual(s.failedRounds, [7]);
});

test("a delta of the wrong length is rejected (E_STRATEGY_SIZE) and the round still finishes correctly", () => {
  const s = fedavg();
  s.initialize(Float32Array.from([0, 0, 0]));
  const agg = s.beginAggregate(1);
  agg.add(upd("a", 1, [3, 3, 3]));
  assert.throws(() => agg.add(upd("bad", 100, [1000, 1000])), code("E_STRATEGY_SIZE"));
  assert.throws(() => agg.add(upd("bad2", 100, [1, 1, 1, 1])), code("E_STRATEGY_SIZE"));
  assert.throws(
    () => agg.add({ ...upd("bad3", 1, [1, 1, 1]), delta: [1, 1, 1] as unknown as Float32Array }),
    code("E_STRATEGY_SIZE"),
  );
  agg.add(upd("b", 2, [0, 0, 1.5]));
  assert.equal(agg.count, 2);
  // (1*[3,3,3] + 2*[0,0,1.5]) / 3 = [1, 1, 2]
  assert.deepEqual([...agg.finish([]).weights], [1, 1, 2]);
  assert.deepEqual(
    s.lastRound?.rejected.map((r) => [r.deviceId, r.code]),
    [
      ["bad", "E_STRATEGY_SIZE"],
      ["bad2", "E_STRATEGY_SIZE"],
      ["bad3", "E_STRATEGY_SIZE"],
    ],
  );
  assert.equal(s.lastRound?.totalSamples, 3);
});

test("NaN or Infinity in a delta is rejected (E_STRATEGY_NONFINITE) without touching the sum", () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    const s = fedavg();
    s.initialize(Float32Array.from([1, 1, 1]));
    const agg = s.beginAggregate(1);
    agg.add(upd("a", 1, [1, 2, 3]));
    assert.throws(() => agg.add(upd("bad", 5, [0, bad, 0])), code("E_STRATEGY_NONFINITE"));
    assert.throws(() => agg.add(upd("bad2", 5, [Infinity, 0, -Infinity])), code("E_STRATEGY_NONFINITE"));
    assert.equal(agg.count, 1);
    assert.deepEqual([...agg.finish([]).weights], [2, 3, 4]);
    assert.equal(s.lastRound?.rejected.length, 2);
  }
});

test("a round whose only update is rejected fails and keeps the model", () => {
  const s = fedavg();
  s.initialize(Float32Array.from([1, 2]));
  const agg = s.beginAggregate(3);
  assert.throws(() => agg.add(upd("bad", 1, [NaN, 0])), code("E_STRATEGY_NONFINITE"));
  assert.deepEqual([...agg.finish([]).weights], [1, 2]);
  assert.equal(s.lastRound?.status, "failed");
  assert.deepEqual(s.failedRounds, [3]);
});

test("bad sample counts are rejected (E_STRATEGY_SAMPLES)", () => {
  const s = fedavg();
  s.initialize(new Float32Array(1));
  const agg = s.beginAggregate(1);
  for (const n of [0, -3, NaN, Infinity]) {
    assert.throws(() => agg.add(upd(`n${n}`, n, [1])), code("E_STRATEGY_SAMPLES"));
  }
  agg.add(upd("ok", 2, [0.5]));
  assert.deepEqual([...agg.finish([]).weights], [0.5]);
});

test("a second update from the same device in a round is rejected (E_STRATEGY_DUPLICATE)", () => {
  const s = fedavg();
  s.initialize(new Float32Array(1));
  const agg = s.beginAggregate(1);
  agg.add(upd("a", 1, [1]));
  assert.throws(() => agg.add(upd("a", 1, [5])), code("E_STRATEGY_DUPLICATE"));
  agg.add(upd("b", 1, [3]));
  assert.deepEqual([...agg.finish([]).weights], [2]);
});

test("overflow in the server step keeps the model (E_STRATEGY_NONFINITE never reaches the weights)", () => {
  const s = fedavg();
  s.initialize(Float32Array.from([3e38, 0]));
  const agg = s.beginAggregate(1);
  agg.add(upd("a", 1, [3e38, 1])); // finite in float32, but 3e38 + 3e38 overflows
  assert.deepEqual([...agg.finish([]).weights], [Math.fround(3e38), 0]);
  assert.equal(s.lastRound?.status, "failed");
});

test("closed or superseded aggregations refuse further use; uninitialized use is refused", () => {
  const fresh = fedavg();
  assert.throws(() => fresh.beginAggregate(1), code("E_STRATEGY_STATE"));
  assert.throws(() => fresh.weights, code("E_STRATEGY_STATE"));
  assert.throws(() => fresh.initialize(new Float32Array(0)), code("E_STRATEGY_SIZE"));
  assert.throws(() => fresh.initialize(Float32Array.from([NaN])), code("E_STRATEGY_NONFINITE"));

  const s = fedavg();
  s.initialize(new Float32Array(1));
  const a1 = s.beginAggregate(1);
  a1.add(upd("a", 1, [1]));
  a1.finish([]);
  assert.throws(() => a1.add(upd("b", 1, [1])), code("E_STRATEGY_STATE"));
  assert.throws(() => a1.finish([]), code("E_STRATEGY_STATE"));

  const a2 = s.beginAggregate(2);
  a2.add(upd("a", 1, [100]));
  const a3 = s.beginAggregate(3); // abandons round 2
  assert.throws(() => a2.add(upd("b", 1, [1])), code("E_STRATEGY_STATE"));
  assert.throws(() => a2.finish([]), code("E_STRATEGY_STATE"));
  a3.add(upd("a", 1, [2]));
  assert.deepEqual([...a3.finish([]).weights], [3], "round 2's update did not leak into round 3");
  assert.throws(() => s.beginAggregate(-1), code("E_STRATEGY_ROUND"));
  assert.throws(() => s.configureFit(1.5, fleet(3)), code("E_STRATEGY_ROUND"));
});

test("re-initializing with another model size works", () => {
  const s = fedavg();
  s.initialize(new Float32Array(2));
  s.initialize(Float32Array.from([1, 1, 1]));
  const agg = s.beginAggregate(1);
  agg.add(upd("a", 1, [1, 2, 3]));
  assert.deepEqual([...agg.finish([]).weights], [2, 3, 4]);
});

test("configureFit picks min(clientsPerRound, available) distinct available devices", () => {
  const s = fedavg({ clientsPerRound: 3 });
  const avail = fleet(10);
  const ids = new Set(avail.map((c) => c.deviceId));
  for (let round = 1; round <= 20; round++) {
    const picked = s.configureFit(round, avail).map((i) => i.deviceId);
    assert.equal(picked.length, 3);
    assert.equal(new Set(picked).size, 3, "distinct");
    for (const id of picked) assert.ok(ids.has(id));
  }
  assert.equal(s.configureFit(1, fleet(2)).length, 2, "capped by availability");
  assert.deepEqual(s.configureFit(1, []), []);
  const dup = [...fleet(2), ...fleet(2)];
  const picked = s.configureFit(1, dup).map((i) => i.deviceId);
  assert.deepEqual([...picked].sort(), ["dev-00", "dev-01"], "a device listed twice is picked at most once");
});

test("selection is deterministic per (seed, round): independent of history and of listing order", () => {
  const avail = fleet(12);
  const a = fedavg({ clientsPerRound: 4 });
  const b = fedavg({ clientsPerRound: 4 });
  for (let r = 1; r <= 4; r++) a.configureFit(r, avail); // a has history, b has none
  const reversed = [...avail].reverse();
  assert.deepEqual(a.configureFit(5, avail), b.configureFit(5, reversed));
  // Different rounds and different seeds choose differently (not a fixed subset).
  const sets = new Set<string>();
  for (let r = 1; r <= 10; r++) sets.add(JSON.stringify(a.configureFit(r, avail).map((i) => i.deviceId)));
  assert.ok(sets.size > 5, `only ${sets.size} distinct selections in 10 rounds`);
  const other = fedavg({ clientsPerRound: 4, seed: 43 });
  let differs = 0;
  for (let r = 1; r <= 10; r++) {
    const x = a.configureFit(r, avail).map((i) => i.deviceId);
    const y = other.configureFit(r, avail).map((i) => i.deviceId);
    if (JSON.stringify(x) !== JSON.stringify(y)) differs++;
  }
  assert.ok(differs >= 8, `seed 42 and 43 agreed in ${10 - differs} of 10 rounds`);
});

test("selection is uniform: each device is picked about k/n of the time", () => {
  const s = fedavg({ clientsPerRound: 3, seed: 7 });
  const avail = fleet(10);
  const counts = new Map<string, number>();
  const rounds = 2000;
  for (let r = 1; r <= rounds; r++) {
    for (const i of s.configureFit(r, avail)) counts.set(i.deviceId, (counts.get(i.deviceId) ?? 0) + 1);
  }
  // Expected 600 each, sd = sqrt(2000 * 0.3 * 0.7) ≈ 20.5; allow ±5 sd.
  for (const c of avail) {
    const n = counts.get(c.deviceId) ?? 0;
    assert.ok(Math.abs(n - 600) < 103, `${c.deviceId} picked ${n} times`);
  }
});

test("each device gets the fit hyperparameters and its own per-round seed", () => {
  const s = fedavg({ clientsPerRound: 5, fit: { ...FIT, mu: 0.5 } });
  const avail = fleet(5);
  const r1 = s.configureFit(1, avail);
  const r2 = s.configureFit(2, avail);
  for (const ins of r1) {
    assert.equal(ins.config.epochs, 2);
    assert.equal(ins.config.batchSize, 16);
    assert.equal(ins.config.lr, 0.05);
    assert.equal(ins.config.mu, undefined, "FedAvg does not ask devices for the proximal term");
    assert.ok(Number.isInteger(ins.config.seed) && ins.config.seed >= 0 && ins.config.seed < 2 ** 32);
  }
  assert.equal(new Set(r1.map((i) => i.config.seed)).size, 5, "seeds differ between devices");
  const seedOf = (xs: typeof r1, id: string) => xs.find((i) => i.deviceId === id)?.config.seed;
  for (const c of avail)
    assert.notEqual(seedOf(r1, c.deviceId), seedOf(r2, c.deviceId), "and between rounds");
  // A device's seed depends only on (seed, round, device): not on who else is available.
  const alone = s.configureFit(1, [avail[3]]);
  assert.equal(alone[0].config.seed, seedOf(r1, avail[3].deviceId));
});

test("invalid options are refused at construction (E_CONFIG_STRATEGY)", () => {
  assert.throws(() => fedavg({ clientsPerRound: 0 }), code("E_CONFIG_STRATEGY"));
  assert.throws(() => fedavg({ fit: { ...FIT, lr: 0 } }), code("E_CONFIG_STRATEGY"));
});

test("compressed updates are decoded inside the streaming sum; a damaged envelope is refused and changes nothing", () => {
  const layoutHash = "cd".repeat(32);
  const n = 1000;
  const a = Float32Array.from({ length: n }, (_, i) => Math.sin(i) / 10);
  const b = Float32Array.from({ length: n }, (_, i) => Math.cos(i) / 10);
  const envA = encodeTensor(a, parseCompression("topk:0.1+int8"), { layoutHash, seed: 1 });
  const envB = encodeTensor(b, parseCompression("fp16"), { layoutHash, seed: 2 });
  const s = fedavg({ clientsPerRound: 3 });
  s.initialize(new Float32Array(n));
  const agg = s.beginAggregate(1);
  agg.add({ ...upd("a", 10, []), delta: { encoding: "flz", bytes: envA } });
  const damaged = envB.slice();
  damaged[damaged.length - 20] ^= 0xff;
  assert.throws(
    () => agg.add({ ...upd("c", 10, []), delta: { encoding: "flz", bytes: damaged } }),
    (e: unknown) => (e as { code?: string }).code === "E_ENVELOPE_CHECKSUM",
  );
  assert.throws(
    () =>
      agg.add({
        ...upd("d", 10, []),
        delta: {
          encoding: "flz",
          bytes: encodeTensor(a.subarray(1), parseCompression("int8"), { layoutHash, seed: 1 }),
        },
      }),
    (e: unknown) => (e as { code?: string }).code === "E_STRATEGY_SIZE",
  );
  agg.add({ ...upd("b", 30, []), delta: { encoding: "flz", bytes: envB } });
  assert.equal(agg.count, 2);
  const next = agg.finish([]).weights;
  const da = decodeTensor(envA);
  const db = decodeTensor(envB);
  const expected = Array.from({ length: n }, (_, i) => (10 * da[i] + 30 * db[i]) / 40);
  assertClose(next, expected, 1e-6);
  assert.deepEqual(
    agg.rejected.map((r) => [r.deviceId, r.code]),
    [
      ["c", "E_ENVELOPE_CHECKSUM"],
      ["d", "E_STRATEGY_SIZE"],
    ],
  );
});

test("staleness weights scale the sum, not the denominator: a stale buffer moves the model less (FedBuff)", () => {
  // Σ n_k s_k Δ_k / Σ n_k: updates 1 (n=10, s=1) and 3 (n=30, s=0.5) give (10 + 45) / 40.
  const s = fedavg();
  s.initialize(new Float32Array(2));
  const agg = s.beginAggregate(1);
  agg.add({ ...upd("a", 10, [1, 1]), discount: 1 });
  agg.add({ ...upd("b", 30, [3, 3]), discount: 0.5 });
  assertClose(agg.finish([]).weights, [55 / 40, 55 / 40]);
  // A buffer of equally stale updates is not renormalised to full size: s = 1/√(1+3) halves the step.
  const fresh = fedavg();
  fresh.initialize(new Float32Array(2));
  const f = fresh.beginAggregate(1);
  f.add(upd("a", 10, [2, 2]));
  f.add(upd("b", 10, [2, 2]));
  const stale = fedavg();
  stale.initialize(new Float32Array(2));
  const st = stale.beginAggregate(1);
  st.add({ ...upd("a", 10, [2, 2]), discount: 0.5 });
  st.add({ ...upd("b", 10, [2, 2]), discount: 0.5 });
  assertClose(f.finish([]).weights, [2, 2]);
  assertClose(st.finish([]).weights, [1, 1]);
  // the training loss stays weighted by samples alone
  assert.equal(stale.lastRound?.totalSamples, 20);
});

test("a compressed update's staleness weight applies inside the streaming decode", () => {
  const layoutHash = "ab".repeat(32);
  const a = Float32Array.from({ length: 64 }, () => 0.5);
  const s = fedavg();
  s.initialize(new Float32Array(64));
  const agg = s.beginAggregate(1);
  const bytes = encodeTensor(a, parseCompression("fp16"), { layoutHash, seed: 1 });
  agg.add({ ...upd("a", 10, []), delta: { encoding: "flz", bytes }, discount: 0.25 });
  const w = agg.finish([]).weights;
  for (const v of w) assert.ok(Math.abs(v - 0.125) < 1e-4, `${v}`);
});

test("a staleness weight outside (0, 1] is refused (E_STRATEGY_WEIGHT)", () => {
  const s = fedavg();
  s.initialize(new Float32Array(2));
  const agg = s.beginAggregate(1);
  for (const discount of [0, -0.5, 1.5, NaN])
    assert.throws(() => agg.add({ ...upd(`x${discount}`, 10, [1, 1]), discount }), code("E_STRATEGY_WEIGHT"));
  assert.equal(agg.count, 0);
});
