/**
 * The model-poisoning attacks (local/sim/attacks/model.ts): each crafted update on small vectors against a hand
 * computation, and the interceptor in a round: honest updates pass through unchanged, attackers' are replaced.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Rng } from "../../../../core/data/rng";
import { encodeTensor, parseCompression } from "../../../../core/compress";
import type {
  FitResult,
  RoundAggregation,
  RoundResult,
  SecureAggregate,
} from "../../../../core/strategies/strategy";
import {
  ModelAttack,
  RunningMoments,
  alieZ,
  craftUpdate,
  normalQuantile,
} from "../../../../local/sim/attacks/model";

const f32 = (...v: number[]) => Float32Array.from(v);
const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-5) => {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= tol, `[${i}] ${a[i]} vs ${b[i]}`);
};

function moments(...xs: Float32Array[]): RunningMoments {
  const m = new RunningMoments(xs[0]!.length, true);
  for (const x of xs) m.push(x);
  return m;
}

test("the running moments are the mean and sample standard deviation", () => {
  const m = moments(f32(1, 2), f32(3, 2), f32(5, 8));
  close(m.mean, [3, 4]);
  // coordinate 0: deviations -2, 0, 2 -> M2 = 8, s = sqrt(8/2) = 2; coordinate 1: 2,2,8 -> mean 4, M2 = 4+4+16 = 24, s = sqrt(12)
  assert.ok(Math.abs(m.std(0) - 2) < 1e-12);
  assert.ok(Math.abs(m.std(1) - Math.sqrt(12)) < 1e-12);
  assert.equal(moments(f32(7)).std(0), 0);
});

test("the normal quantile matches known values", () => {
  assert.ok(Math.abs(normalQuantile(0.5)) < 1e-9);
  assert.ok(Math.abs(normalQuantile(0.975) - 1.959963985) < 1e-8);
  assert.ok(Math.abs(normalQuantile(0.6) - 0.2533471031) < 1e-8);
  assert.ok(Math.abs(normalQuantile(0.01) + 2.326347874) < 1e-8);
  assert.ok(Math.abs(normalQuantile(0.68) - 0.4676987991) < 1e-8);
});

test("ALIE's z_max follows Baruch et al.'s formula", () => {
  // n = 10, f = 2: s = floor(10/2 + 1) - 2 = 4, z = Φ⁻¹((10 - 4)/10) = Φ⁻¹(0.6)
  assert.ok(Math.abs(alieZ(10, 2) - 0.2533471031) < 1e-8);
  // n = 50, f = 10: s = 26 - 10 = 16, z = Φ⁻¹(34/50) = Φ⁻¹(0.68)
  assert.ok(Math.abs(alieZ(50, 10) - 0.4676987991) < 1e-8);
  // A majority of attackers: a large but finite z.
  assert.ok(Number.isFinite(alieZ(4, 4)) && alieZ(4, 4) > 5);
});

test("ALIE sends μ - z·σ of the honest updates, per coordinate", () => {
  const honest = moments(f32(1, 2), f32(3, 2), f32(5, 8));
  // z from n = 5 updates, f = 2 attackers: s = floor(3.5) - 2 = 1, z = Φ⁻¹(4/5) = 0.8416212336
  const z = 0.8416212336;
  const out = craftUpdate("alie", undefined, { length: 2, honest, n: 5, f: 2 });
  close(out, [3 - z * 2, 4 - z * Math.sqrt(12)]);
  // PARAM overrides z.
  close(craftUpdate("alie", 1.5, { length: 2, honest, n: 5, f: 2 }), [3 - 3, 4 - 1.5 * Math.sqrt(12)]);
});

test("IPM sends -ε times the honest mean", () => {
  const honest = new RunningMoments(3, false);
  honest.push(f32(1, -2, 4));
  honest.push(f32(3, 0, 0));
  close(craftUpdate("ipm", 0.1, { length: 3, honest }), [-0.2, 0.1, -0.2]);
  close(craftUpdate("ipm", 100, { length: 3, honest }), [-200, 100, -200], 1e-3);
  close(craftUpdate("ipm", undefined, { length: 3, honest }), [-0.2, 0.1, -0.2]);
});

test("sign flip and scaling transform the attacker's own update", () => {
  const own = f32(0.5, -1, 2);
  close(craftUpdate("sign-flip", undefined, { length: 3, own }), [-0.5, 1, -2]);
  close(craftUpdate("sign-flip", 3, { length: 3, own }), [-1.5, 3, -6]);
  close(craftUpdate("scaling", 10, { length: 3, own }), [5, -10, 20]);
  close(craftUpdate("scaling", undefined, { length: 3, own }), [50, -100, 200], 1e-4);
});

test("gaussian noise has mean 0 and standard deviation σ", () => {
  const d = 100_000;
  const out = craftUpdate("gaussian", 2, { length: d, rng: new Rng(7) });
  let s = 0;
  let s2 = 0;
  for (const x of out) {
    s += x;
    s2 += x * x;
  }
  const mean = s / d;
  const sd = Math.sqrt(s2 / d - mean * mean);
  // Standard error of the mean 2/sqrt(1e5) ≈ 0.0063; of the sd ≈ 2/sqrt(2e5) ≈ 0.0045.
  assert.ok(Math.abs(mean) < 0.03, `mean ${mean}`);
  assert.ok(Math.abs(sd - 2) < 0.03, `sd ${sd}`);
  // Seeded: the same generator gives the same noise.
  close(craftUpdate("gaussian", 2, { length: 5, rng: new Rng(7) }), out.subarray(0, 5));
});

/** An inner aggregation that records what reaches it. */
class Recorder implements RoundAggregation {
  readonly added: FitResult[] = [];
  get count(): number {
    return this.added.length;
  }
  add(r: FitResult): void {
    this.added.push(r);
  }
  addAggregate(_a: SecureAggregate): void {}
  finish(): RoundResult {
    return { weights: new Float32Array(0), metrics: {} } as unknown as RoundResult;
  }
}

const update = (deviceId: string, delta: FitResult["delta"]): FitResult => ({
  deviceId,
  numSamples: 10,
  delta,
  metrics: { loss: 1, accuracy: 0.5, trainMs: 1 },
});

test("the interceptor streams honest updates and replaces the attackers' at finish (ALIE, compressed updates)", () => {
  const global = new Float32Array(2);
  const attack = new ModelAttack({ kind: "alie", fraction: 0.4 }, ["a1", "a2"], 1);
  const inner = new Recorder();
  const agg = attack.wrap(inner, { round: 1, global });
  const h = [f32(1, 2), f32(3, 2), f32(5, 8)];
  // One honest update arrives compressed (an fp16 envelope holds these values exactly).
  const enc = encodeTensor(h[1]!, parseCompression("fp16"), { layoutHash: "0".repeat(64), seed: 1 });
  agg.add(update("h0", h[0]!));
  agg.add(update("a1", f32(100, 100)));
  agg.add(update("h1", { encoding: "flz", bytes: enc }));
  agg.add(update("a2", f32(-100, 7)));
  agg.add(update("h2", h[2]!));
  assert.equal(agg.count, 5);
  assert.deepEqual(
    inner.added.map((r) => r.deviceId),
    ["h0", "h1", "h2"],
    "honest updates stream through, attackers are held back",
  );
  agg.finish([]);
  assert.deepEqual(
    inner.added.map((r) => r.deviceId),
    ["h0", "h1", "h2", "a1", "a2"],
  );
  const z = alieZ(5, 2);
  for (const r of inner.added.slice(3)) {
    close(r.delta as Float32Array, [3 - z * 2, 4 - z * Math.sqrt(12)]);
    assert.equal(r.numSamples, 10);
  }
  assert.equal(inner.added[0]!.delta, h[0], "an honest update is passed on as it came");
});

test("the interceptor's sign flip reverses only the attackers, and refuses a duplicate attacker update", () => {
  const attack = new ModelAttack({ kind: "sign-flip", fraction: 0.5 }, ["bad"], 1);
  const inner = new Recorder();
  const agg = attack.wrap(inner, { round: 3, global: new Float32Array(2) });
  agg.add(update("good", f32(1, 1)));
  const reused = f32(2, -3);
  agg.add(update("bad", reused));
  reused.fill(0); // the caller may reuse its array once add returns
  assert.throws(() => agg.add(update("bad", f32(2, -3))), { code: "E_STRATEGY_DUPLICATE" });
  agg.finish([]);
  close(inner.added[0]!.delta as Float32Array, [1, 1]);
  close(inner.added[1]!.delta as Float32Array, [-2, 3]);
});

test("gaussian attackers are seeded by job seed, round and device", () => {
  const run = (seed: number, round: number) => {
    const inner = new Recorder();
    const agg = new ModelAttack({ kind: "gaussian", fraction: 0.5, param: 1 }, ["x"], seed).wrap(inner, {
      round,
      global: new Float32Array(4),
    });
    agg.add(update("x", f32(0, 0, 0, 0)));
    agg.finish([]);
    return Array.from(inner.added[0]!.delta as Float32Array);
  };
  assert.deepEqual(run(1, 1), run(1, 1));
  assert.notDeepEqual(run(1, 1), run(1, 2));
  assert.notDeepEqual(run(1, 1), run(2, 1));
});
