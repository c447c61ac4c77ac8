import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  DEFAULT_QUALITY_POLICY,
  QualityTracker,
  checkQualityPolicy,
  detectAnomalies,
  formatQualityPolicy,
  modifiedZ,
  parseQualityPolicy,
  qualityInput,
  type DeviceObservation,
} from "../../../core/robust/quality";
import { beginRoundAggregation, type ObservedRoundResult } from "../../../core/round/aggregation";
import { createStrategy } from "../../../core/strategies/registry";
import { isFlotillaError } from "../../../core/errors";

/** A seeded stream in [-0.5, 0.5). */
function rng(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5;
}

const DIM = 32;

/** One round: 8 honest updates near a common direction (norm ~1, cosine to it ~0.9) and the attackers' ones. */
function roundUpdates(
  r: number,
  attack: "scale" | "flip" | "none",
  rand: () => number,
): { id: string; delta: Float32Array; loss: number }[] {
  const center = Float32Array.from({ length: DIM }, (_, i) => Math.sin(i + r * 0.1) / Math.sqrt(DIM / 2));
  const out = [];
  for (let k = 0; k < 10; k++) {
    const delta = Float32Array.from(center, (c) => c + 0.1 * rand() * (1 + (k % 3)));
    const bad = k >= 8 && attack !== "none";
    if (bad) for (let i = 0; i < DIM; i++) delta[i] = attack === "scale" ? delta[i]! * 20 : -delta[i]!;
    out.push({ id: bad ? `bad-${k}` : `dev-${k}`, delta, loss: 0.5 + 0.2 * rand() });
  }
  return out;
}

/** Observations of a round as the observer and a robust report would give them (cosine to the mean). */
function observe(updates: { id: string; delta: Float32Array; loss: number }[]): DeviceObservation[] {
  const mean = new Float32Array(DIM);
  for (const u of updates) for (let i = 0; i < DIM; i++) mean[i]! += u.delta[i]! / updates.length;
  const norm = (v: Float32Array) => Math.hypot(...v);
  return updates.map((u) => {
    let dot = 0;
    for (let i = 0; i < DIM; i++) dot += u.delta[i]! * mean[i]!;
    return {
      deviceId: u.id,
      norm: norm(u.delta),
      cosine: dot / (norm(u.delta) * norm(mean)),
      cosineTo: "aggregate" as const,
      loss: u.loss,
    };
  });
}

for (const attack of ["scale", "flip"] as const) {
  test(`devices sending ${attack === "scale" ? "scaled" : "sign-flipped"} updates are excluded after K of W rounds, with the reason; honest ones are never flagged`, () => {
    const t = new QualityTracker();
    const rand = rng(attack === "scale" ? 3 : 4);
    const code = attack === "scale" ? "E_QUALITY_NORM" : "E_QUALITY_DIRECTION";
    for (let r = 1; r <= 3; r++) {
      assert.deepEqual(t.excludedAt(r), [], `nobody is excluded before round ${r}`);
      const rec = t.observe({ round: r, devices: observe(roundUpdates(r, attack, rand)), failures: [] });
      assert.deepEqual(
        [...new Set(rec.anomalies.map((a) => a.deviceId))].sort(),
        ["bad-8", "bad-9"],
        `round ${r}: only the attackers are flagged: ${JSON.stringify(rec.anomalies)}`,
      );
      assert.ok(rec.anomalies.every((a) => a.code === code && a.round === r && a.reason.length > 0));
      if (r < 3) assert.equal(rec.newlyExcluded, undefined);
      else {
        assert.deepEqual(
          rec.newlyExcluded?.map((e) => e.deviceId),
          ["bad-8", "bad-9"],
        );
      }
    }
    const ex = t.excludedAt(4);
    assert.deepEqual(
      ex.map((e) => e.deviceId),
      ["bad-8", "bad-9"],
    );
    for (const e of ex) {
      assert.equal(e.code, "E_QUALITY_EXCLUDED");
      assert.equal(e.since, 4);
      assert.equal(e.until, 3 + DEFAULT_QUALITY_POLICY.cooldown!);
      assert.match(e.reason, new RegExp(`flagged in 3 of its last 3 contributions \\(${code} ×3`));
    }
    assert.ok(t.device("bad-8")!.reputation < 0.3, "a flagged device's reputation falls");
    assert.ok(t.device("dev-0")!.reputation > 0.7, "an honest device's reputation rises");
  });
}

test("an exclusion ends after its cool-down; one more flag excludes the device again (probation)", () => {
  const t = new QualityTracker(parseQualityPolicy("2/4:3"));
  const rand = rng(9);
  t.observe({ round: 1, devices: observe(roundUpdates(1, "scale", rand)), failures: [] });
  t.observe({ round: 2, devices: observe(roundUpdates(2, "scale", rand)), failures: [] });
  assert.ok(t.exclusion("bad-8", 3) && t.exclusion("bad-8", 5) && !t.exclusion("bad-8", 6));
  // Rounds 3..5 without the excluded devices.
  let released: readonly string[] | undefined;
  for (let r = 3; r <= 5; r++) {
    const honest = roundUpdates(r, "none", rand).filter((u) => !u.id.startsWith("bad"));
    released = t.observe({ round: r, devices: observe(honest), failures: [] }).released;
  }
  assert.deepEqual(released, ["bad-8", "bad-9"]);
  assert.deepEqual(t.excludedAt(6), []);
  const again = t.observe({ round: 6, devices: observe(roundUpdates(6, "scale", rand)), failures: [] });
  assert.deepEqual(
    again.newlyExcluded?.map((e) => [e.deviceId, e.since, e.until]),
    [
      ["bad-8", 7, 9],
      ["bad-9", 7, 9],
    ],
  );
});

test("validation rejections are anomalies; timeouts and robust drops are not (Multi-Krum drops n − m honest updates by design)", () => {
  const a = detectAnomalies({
    round: 4,
    devices: [],
    failures: [
      { deviceId: "a", code: "E_STRATEGY_NONFINITE", reason: "NaN at 3" },
      { deviceId: "b", code: "E_ROUND_TIMEOUT", reason: "late" },
      { deviceId: "c", code: "E_ROBUST_DROPPED", reason: "krum score" },
      { deviceId: "d", code: "E_MODEL_LAYOUT", reason: "other layout" },
      { deviceId: "e", code: "E_ROUND_SAMPLES", reason: "claims 1e9 samples" },
    ],
  });
  assert.deepEqual(
    a.map((x) => [x.deviceId, x.code]),
    [
      ["a", "E_QUALITY_REJECTED"],
      ["d", "E_QUALITY_REJECTED"],
      ["e", "E_QUALITY_REJECTED"],
    ],
  );
  assert.match(a[0]!.reason, /E_STRATEGY_NONFINITE: NaN at 3/);
});

test("loss drift: a device whose training loss is far above the round's is flagged", () => {
  const devices = Array.from({ length: 8 }, (_, k) => ({ deviceId: `d${k}`, norm: 1, loss: 0.4 + k * 0.01 }));
  devices.push({ deviceId: "lf", norm: 1.1, loss: 4.5 });
  const a = detectAnomalies({ round: 2, devices, failures: [] });
  assert.deepEqual(
    a.map((x) => [x.deviceId, x.code]),
    [["lf", "E_QUALITY_LOSS"]],
  );
});

test("too few devices for the relative rules: nothing but rejections is flagged", () => {
  const a = detectAnomalies({
    round: 1,
    devices: [
      { deviceId: "a", norm: 1, cosine: 0.9 },
      { deviceId: "b", norm: 100, cosine: -1 },
    ],
    failures: [],
  });
  assert.deepEqual(a, []);
});

test("the modified z-score of a tight round with one outlier", () => {
  const { median, z } = modifiedZ([1, 1, 1, 1.1, 0.9, 10]);
  assert.equal(median, 1);
  assert.ok(z[5]! > 3.5 && Math.abs(z[0]!) < 1e-9);
});

test("the state round-trips through JSON (text and object) and restores exclusions", () => {
  const t = new QualityTracker();
  const rand = rng(5);
  for (let r = 1; r <= 4; r++)
    t.observe({ round: r, devices: observe(roundUpdates(r, "flip", rand)), failures: [] });
  const text = JSON.stringify(t);
  const back = QualityTracker.fromJSON(text);
  assert.deepEqual(back.toJSON(), t.toJSON());
  assert.deepEqual(QualityTracker.fromJSON(JSON.parse(text)).excludedAt(5), t.excludedAt(5));
  assert.equal(back.round, 4);
  // A round already observed is ignored (a restarted Function may see it again).
  assert.deepEqual(back.observe({ round: 4, devices: [], failures: [] }), { anomalies: [] });
  for (const bad of [
    "{",
    "null",
    '{"version":2}',
    '{"version":1,"round":1,"devices":{"x":{}},"policy":{}}',
  ]) {
    assert.throws(
      () => QualityTracker.fromJSON(bad),
      (e: unknown) => isFlotillaError(e) && e.code === "E_QUALITY_STATE",
    );
  }
});

test("--exclude-after parses K/W[:R|end] and off; bad values are one E_CONFIG_QUALITY line", () => {
  assert.deepEqual(parseQualityPolicy("3/5"), { excludeAfter: 3, window: 5, cooldown: 10 });
  assert.deepEqual(parseQualityPolicy("2/4:7"), { excludeAfter: 2, window: 4, cooldown: 7 });
  assert.deepEqual(parseQualityPolicy("1/1:end"), { excludeAfter: 1, window: 1, cooldown: null });
  assert.equal(parseQualityPolicy("off").excludeAfter, 0);
  assert.equal(formatQualityPolicy(parseQualityPolicy("2/4:end")), "2/4:end");
  assert.equal(formatQualityPolicy(DEFAULT_QUALITY_POLICY), "3/5:10");
  for (const bad of ["", "3", "6/5", "3/0", "3/5:0", "a/b", "3/5:x", "-1/5"]) {
    assert.throws(
      () => parseQualityPolicy(bad),
      (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_QUALITY" && !e.message.includes("\n"),
      bad,
    );
  }
  assert.deepEqual(checkQualityPolicy({}), DEFAULT_QUALITY_POLICY);
  assert.deepEqual(checkQualityPolicy({ excludeAfter: 2, window: 3, cooldown: null }), {
    excludeAfter: 2,
    window: 3,
    cooldown: null,
  });
  assert.throws(() => checkQualityPolicy({ k: 1 }), /unknown member 'k'/);
  assert.throws(() => checkQualityPolicy("3/5"), /must be an object/);
});

test("the observer in the aggregation chain records norm, loss and the cosine to the round's mean without changing the result", () => {
  const opts = { clientsPerRound: 2, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 1 } as Parameters<
    typeof createStrategy
  >[1];
  const strategy = createStrategy("fedavg", opts);
  const plain = createStrategy("fedavg", opts);
  const D = 4096;
  strategy.initialize(new Float32Array(D));
  plain.initialize(new Float32Array(D));
  const rand = rng(11);
  const base = Float32Array.from({ length: D }, () => rand());
  const updates = [0, 1, 2, 3].map((k) => ({
    deviceId: `d${k}`,
    numSamples: 10 + k,
    delta: Float32Array.from(base, (x) => (k === 3 ? -2 * x : x + 0.3 * rand())),
    metrics: { loss: 0.5 + k, accuracy: 0.9, trainMs: 1 },
  }));
  const agg = beginRoundAggregation(strategy, 1, { layoutHash: "x", observe: true });
  const ref = beginRoundAggregation(plain, 1, { layoutHash: "x" });
  for (const u of updates) {
    agg.add(u);
    ref.add(u);
  }
  const out = agg.finish([]) as ObservedRoundResult;
  assert.deepEqual([...out.weights], [...ref.finish([]).weights], "the observer changes nothing");
  // The exact cosines to the weighted mean, against the sketch's estimates.
  const total = updates.reduce((s, u) => s + u.numSamples, 0);
  const mean = new Float64Array(D);
  for (const u of updates) for (let i = 0; i < D; i++) mean[i]! += (u.delta[i]! * u.numSamples) / total;
  const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));
  assert.equal(out.observed!.length, 4);
  out.observed!.forEach((o, k) => {
    const u = updates[k]!;
    let d = 0;
    for (let i = 0; i < D; i++) d += u.delta[i]! * mean[i]!;
    const exact = d / (norm(u.delta) * norm(mean));
    assert.equal(o.deviceId, u.deviceId);
    assert.ok(Math.abs(o.norm - norm(u.delta)) < 1e-3);
    assert.equal(o.loss, 0.5 + k);
    assert.equal(o.cosineTo, "round-mean");
    assert.ok(Math.abs(o.cosine! - exact) < 0.1, `cosine ${o.cosine} vs exact ${exact}`);
  });
  assert.ok(out.observed![3]!.cosine! < -0.5, "the flipped update points against the mean");
  // qualityInput prefers a robust report's cosine to the aggregate and adds its drops.
  const input = qualityInput({
    round: 1,
    failures: [],
    observed: out.observed,
    robust: {
      aggregator: "median",
      updates: 4,
      kept: ["d0"],
      dropped: [{ deviceId: "d3", code: "E_ROBUST_DROPPED", reason: "far" }],
      aggregateNorm: 1,
      devices: [{ deviceId: "d0", norm: 5, cosine: 0.9, clipped: false, kept: true }],
      ms: 0,
    },
  });
  assert.equal(input.devices[0]!.cosine, 0.9);
  assert.equal(input.devices[0]!.cosineTo, "aggregate");
  assert.equal(input.devices[1]!.cosineTo, "round-mean");
  assert.deepEqual(input.failures, [{ deviceId: "d3", code: "E_ROBUST_DROPPED", reason: "far" }]);
});
