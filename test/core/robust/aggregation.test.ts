import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { decodeTensor, encodeTensor, parseCompression } from "../../../core/compress";
import {
  E_ROBUST_DROPPED,
  robustAggregation,
  type RobustRoundResult,
} from "../../../core/robust/aggregation";
import {
  boundNorms,
  centeredClip,
  coordinateMedian,
  flTrust,
  geometricMedian,
  l2Norm,
  multiKrum,
  trimmedMean,
  weightedMean,
  type RobustInput,
} from "../../../core/robust/rules";
import { parseAggregator, type AggregatorSpec } from "../../../core/robust/spec";
import { beginRoundAggregation, type RoundInterceptor } from "../../../core/round/aggregation";
import { RoundCloser } from "../../../core/round/close";
import { createStrategy } from "../../../core/strategies/registry";
import type { FitResult, RoundAggregation, Strategy } from "../../../core/strategies/strategy";
import { assertClose, strategyOptions, update as upd } from "../../helpers/strategy";

const code = (c: string) => (e: unknown) => (e as { code?: string }).code === c;
const LAYOUT = "ab".repeat(32);

/** A seeded generator of uniform values in [-0.5, 0.5). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32 - 0.5;
  };
}

function strategy(name: string, d: number, init = 0.5): Strategy {
  const s = createStrategy(name, strategyOptions({ clientsPerRound: 10, serverLr: 0.5 }));
  s.initialize(Float32Array.from({ length: d }, (_, i) => init * Math.sin(i + 1)));
  return s;
}

/** `n` updates of `d` values around a common direction, with sample counts 10, 20, 30, … */
function honest(n: number, d: number, seed: number, spread = 0.3): FitResult[] {
  const r = rng(seed);
  const center = Float32Array.from({ length: d }, (_, i) => Math.cos(i) * 0.2);
  return Array.from({ length: n }, (_, k) => ({
    ...upd(`h${k}`, 10 * (k + 1), []),
    delta: Float32Array.from(center, (c) => c + spread * r()),
    metrics: { loss: 1 + k / 10, accuracy: 0.5, trainMs: 1 },
  }));
}

const raw = (r: FitResult): Float32Array => r.delta as Float32Array;

/** The rule computed by hand (rules.ts) on the updates as the decorator should see them. */
function byHand(
  spec: AggregatorSpec,
  ups: readonly FitResult[],
  ctx: { root?: Float32Array; ref?: Float32Array },
): Float32Array {
  let inputs: RobustInput[] = ups.map((u) => ({
    deviceId: u.deviceId,
    delta: Float32Array.from(raw(u), (x) => x * (u.discount ?? 1)),
    weight: u.numSamples,
  }));
  if (spec.bound) inputs = boundNorms(inputs, spec.bound).inputs;
  const n = inputs.length;
  switch (spec.rule) {
    case "mean":
      return weightedMean(inputs).delta;
    case "median":
      return coordinateMedian(inputs).delta;
    case "trimmed-mean":
      return trimmedMean(inputs, "count" in spec.trim ? spec.trim.count : Math.floor(spec.trim.fraction * n))
        .delta;
    case "krum":
      return multiKrum(inputs, "count" in spec.f ? spec.f.count : Math.floor(spec.f.fraction * n), 1).delta;
    case "multi-krum":
      return multiKrum(
        inputs,
        "count" in spec.f ? spec.f.count : Math.floor(spec.f.fraction * n),
        "count" in spec.m ? spec.m.count : Math.floor(spec.m.fraction * n),
      ).delta;
    case "geomed":
      return geometricMedian(inputs, { maxIter: 10, tol: 1e-5 }).delta;
    case "centered-clip":
      return centeredClip(
        inputs,
        spec.tau,
        ctx.ref ? { reference: ctx.ref, iterations: 1 } : { iterations: 3 },
      ).delta;
    case "fltrust":
      return flTrust(inputs, ctx.root!).delta;
  }
}

const SPECS = [
  "median",
  "trimmed-mean:1",
  "trimmed-mean:0.2",
  "krum:1",
  "multi-krum:1,3",
  "multi-krum:0.1,0.5",
  "geomed",
  "centered-clip:0.5",
  "fltrust",
  "norm:q0.5+median",
  "norm:1.2+geomed",
  "norm:q0.5+mean",
  "norm:1.5+mean",
];

test("each rule composes with FedAvg, FedAvgM and FedAdam: the server step applies to the rule's output", () => {
  const d = 40;
  for (const name of ["fedavg", "fedavgm", "fedadam"]) {
    for (const text of SPECS) {
      const spec = parseAggregator(text);
      // `wrapped` runs the chain; `reference` is the same strategy fed the rule's output by hand as one update.
      const wrapped = strategy(name, d);
      const reference = strategy(name, d);
      let previous: Float32Array | undefined;
      for (let round = 1; round <= 3; round++) {
        const ups = honest(7, d, 100 * round + text.length);
        ups.push({ ...upd("x", 5, []), delta: Float32Array.from(raw(ups[0]!), (v) => -3 * v) });
        const root = Float32Array.from(raw(ups[1]!), (v, i) => v + 0.01 * Math.sin(i));
        const agg = beginRoundAggregation(wrapped, round, {
          layoutHash: LAYOUT,
          aggregator: spec,
          rootDelta: root,
          ...(previous ? { reference: previous } : {}),
        });
        for (const u of ups) agg.add(u);
        const before = wrapped.weights.slice();
        const out = agg.finish([]) as RobustRoundResult;
        const want = byHand(spec, ups, { root, ...(previous ? { ref: previous } : {}) });
        const ref = reference.beginAggregate(round);
        ref.add({ ...upd("rule", 1, []), delta: want });
        const next = ref.finish([]).weights;
        assertClose(out.weights, [...next], 1e-5);
        assert.ok(out.robust, `${name} ${text}: a report`);
        assert.equal(out.robust.aggregator, text);
        previous = Float32Array.from(wrapped.weights, (w, i) => w - before[i]!);
      }
    }
  }
});

test("by hand: the median of three scalars, then FedAvgM's momentum step on it", () => {
  const s = createStrategy("fedavgm", strategyOptions({ serverLr: 1, serverMomentum: 0.5 }));
  s.initialize(Float32Array.of(10));
  const run = (round: number, values: number[]): number => {
    const agg = beginRoundAggregation(s, round, {
      layoutHash: LAYOUT,
      aggregator: parseAggregator("median"),
    });
    values.forEach((v, k) => agg.add(upd(`d${k}`, 1 + k, [v])));
    return agg.finish([]).weights[0]!;
  };
  // Round 1: median(1, 2, 1000) = 2; v = −2; w = 10 + 2 = 12.
  assert.equal(run(1, [1, 2, 1000]), 12);
  // Round 2: median(−1, 3, −1000) = −1; v = 0.5·(−2) − (−1) = 0; w = 12 − 0 = 12.
  assert.equal(run(2, [-1, 3, -1000]), 12);
  // Round 3: median(4, 4, 4) = 4; v = 0.5·0 − 4 = −4; w = 16.
  assert.equal(run(3, [4, 4, 4]), 16);
});

test("compressed envelopes are decoded before the rule; a damaged or misshapen one is refused at add()", () => {
  const d = 500;
  const ups = honest(5, d, 7);
  const specs = ["fp16", "int8", "topk:0.2+int8", "fp16", "none"].map((c) => parseCompression(c));
  const enc = ups.map((u, k) => ({
    ...u,
    delta: {
      encoding: "flz" as const,
      bytes: encodeTensor(raw(u), specs[k]!, { layoutHash: LAYOUT, seed: k }),
    },
  }));
  const decoded = enc.map((u) => ({ ...u, delta: decodeTensor(u.delta.bytes) }));
  const s = strategy("fedavg", d, 0);
  const agg = beginRoundAggregation(s, 1, { layoutHash: LAYOUT, aggregator: parseAggregator("median") });
  const damaged = enc[0]!.delta.bytes.slice();
  damaged[damaged.length - 20]! ^= 0xff;
  assert.throws(
    () => agg.add({ ...enc[0]!, deviceId: "bad", delta: { encoding: "flz", bytes: damaged } }),
    code("E_ENVELOPE_CHECKSUM"),
  );
  const short = encodeTensor(raw(ups[0]!).subarray(1), specs[0]!, { layoutHash: LAYOUT, seed: 1 });
  assert.throws(
    () => agg.add({ ...enc[0]!, deviceId: "short", delta: { encoding: "flz", bytes: short } }),
    code("E_STRATEGY_SIZE"),
  );
  for (const u of enc) agg.add(u);
  assert.equal(agg.count, 5);
  const out = agg.finish([]) as RobustRoundResult;
  const want = coordinateMedian(
    decoded.map((u) => ({ deviceId: u.deviceId, delta: u.delta, weight: 1 })),
  ).delta;
  assertClose(out.weights, [...want], 1e-7);
  assert.deepEqual(out.robust?.kept, ["h0", "h1", "h2", "h3", "h4"]);
});

/** The code a plain FedAvg round and a robust round give for the same bad update, after one good update. */
function refusalCodes(bad: FitResult, spec: string): [string | undefined, string | undefined] {
  const get = (agg: RoundAggregation): string | undefined => {
    agg.add(upd("good", 10, [1, 2, 3]));
    try {
      agg.add(bad);
    } catch (e) {
      return (e as { code?: string }).code;
    }
    return undefined;
  };
  const plain = get(strategy("fedavg", 3).beginAggregate(1));
  const robust = get(
    beginRoundAggregation(strategy("fedavg", 3), 1, {
      layoutHash: LAYOUT,
      aggregator: parseAggregator(spec),
      rootDelta: Float32Array.of(1, 1, 1),
    }),
  );
  return [plain, robust];
}

test("duplicate, wrong size, NaN, bad sample count and bad staleness weight are refused at add() with FedAvg's codes", () => {
  const cases: [FitResult, string][] = [
    [upd("good", 10, [1, 2, 3]), "E_STRATEGY_DUPLICATE"],
    [upd("b", 10, [1, 2]), "E_STRATEGY_SIZE"],
    [upd("b", 10, [1, NaN, 3]), "E_STRATEGY_NONFINITE"],
    [upd("b", 10, [1, 2, Infinity]), "E_STRATEGY_NONFINITE"],
    [upd("b", 0, [1, 2, 3]), "E_STRATEGY_SAMPLES"],
    [upd("b", NaN, [1, 2, 3]), "E_STRATEGY_SAMPLES"],
    [upd("b", -4, [1, 2, 3]), "E_STRATEGY_SAMPLES"],
    [{ ...upd("b", 10, [1, 2, 3]), discount: 1.5 }, "E_STRATEGY_WEIGHT"],
    [{ ...upd("b", 10, [1, 2, 3]), discount: 0 }, "E_STRATEGY_WEIGHT"],
    [{ ...upd("b", 10, []), delta: "x" as unknown as Float32Array }, "E_STRATEGY_SIZE"],
  ];
  for (const spec of ["median", "krum:0", "norm:5+mean", "fltrust"]) {
    for (const [bad, want] of cases) {
      const [plain, robust] = refusalCodes(bad, spec);
      assert.equal(plain, want, `FedAvg: ${want}`);
      assert.equal(robust, want, `${spec}: ${want}`);
    }
  }
  // A refused update is not counted, and its device may not be counted twice either.
  const agg = beginRoundAggregation(strategy("fedavg", 3), 1, {
    layoutHash: LAYOUT,
    aggregator: parseAggregator("median"),
  });
  assert.throws(() => agg.add(upd("a", 10, [NaN, 0, 0])), code("E_STRATEGY_NONFINITE"));
  agg.add(upd("a", 10, [1, 1, 1]));
  assert.equal(agg.count, 1);
});

test("staleness weights scale each update before the rule (FedBuff's Σ n s Δ / Σ n for the mean)", () => {
  const ups: FitResult[] = [
    { ...upd("a", 10, [1, 1]), discount: 1 },
    { ...upd("b", 30, [3, 3]), discount: 0.5 },
    { ...upd("c", 20, [8, -8]), discount: 0.25 },
  ];
  // The mean through the buffered path (a bound that clips nothing) equals FedAvg's own.
  const plain = strategy("fedavg", 2, 0).beginAggregate(1);
  for (const u of ups) plain.add(u);
  const buffered = beginRoundAggregation(strategy("fedavg", 2, 0), 1, {
    layoutHash: LAYOUT,
    aggregator: parseAggregator("norm:q1+mean"),
  });
  for (const u of ups) buffered.add(u);
  const want = [(10 + 45 + 40) / 60, (10 + 45 - 40) / 60];
  assertClose(plain.finish([]).weights, want);
  const out = buffered.finish([]) as RobustRoundResult;
  assertClose(out.weights, want);
  // Norms are reported after the staleness weight (b: (3, 3)·0.5, c: (8, −8)·0.25), and the median takes the
  // scaled values: median(1, 1.5, 2) and median(1, 1.5, −2).
  assertClose(
    out.robust!.devices.map((x) => x.norm),
    [Math.SQRT2, 1.5 * Math.SQRT2, 2 * Math.SQRT2],
  );
  const median = beginRoundAggregation(strategy("fedavg", 2, 0), 1, {
    layoutHash: LAYOUT,
    aggregator: parseAggregator("median"),
  });
  for (const u of ups) median.add(u);
  assertClose(median.finish([]).weights, [1.5, 1]);
  // The streaming fixed-bound mean scales too, then clips: b (norm 1.5√2) and c (2√2) are scaled to norm 2.
  const streaming = beginRoundAggregation(strategy("fedavg", 2, 0), 1, {
    layoutHash: LAYOUT,
    aggregator: parseAggregator("norm:2+mean"),
  });
  for (const u of ups) streaming.add(u);
  const k = 2 / (1.5 * Math.SQRT2);
  assertClose(streaming.finish([]).weights, [
    (10 + 30 * 1.5 * k + 20 * Math.SQRT2) / 60,
    (10 + 30 * 1.5 * k - 20 * Math.SQRT2) / 60,
  ]);
});

test("the report: kept and dropped with reasons, norms, cosines, clipping, FLTrust's trust", () => {
  const d = 30;
  const ups = honest(6, d, 3, 0.1);
  const evil = Float32Array.from(raw(ups[0]!), (v) => -50 * v);
  ups.push({ ...upd("evil", 10, []), delta: evil });
  const run = (text: string, root?: Float32Array): RobustRoundResult => {
    const agg = beginRoundAggregation(strategy("fedavg", d, 0), 2, {
      layoutHash: LAYOUT,
      aggregator: parseAggregator(text),
      ...(root ? { rootDelta: root } : {}),
    });
    for (const u of ups) agg.add(u);
    return agg.finish([]) as RobustRoundResult;
  };
  const krum = run("norm:q0.5+multi-krum:1,3").robust!;
  assert.equal(krum.aggregator, "norm:q0.5+multi-krum:1,3");
  assert.equal(krum.updates, 7);
  assert.equal(krum.kept.length, 3);
  assert.equal(krum.dropped.length, 4);
  assert.ok(krum.dropped.every((f) => f.code === E_ROBUST_DROPPED && /krum score/.test(f.reason)));
  assert.ok(
    krum.dropped.some((f) => f.deviceId === "evil"),
    "the attacker is dropped",
  );
  const norms = ups.map((u) => l2Norm(raw(u)));
  const sorted = [...norms].sort((a, b) => a - b);
  assert.equal(krum.bound, sorted[3], "the median norm");
  for (const [k, s] of krum.devices.entries()) {
    assert.equal(s.deviceId, ups[k]!.deviceId, "arrival order");
    assert.ok(Math.abs(s.norm - norms[k]!) < 1e-4, "norm before the bound");
    assert.equal(s.clipped, norms[k]! > krum.bound!);
    assert.equal(s.kept, krum.kept.includes(s.deviceId));
    if (!s.kept) assert.match(s.reason!, /krum score/);
    assert.ok(s.cosine >= -1 - 1e-9 && s.cosine <= 1 + 1e-9);
  }
  const evilStats = krum.devices.find((s) => s.deviceId === "evil")!;
  assert.ok(evilStats.cosine < -0.9, `the attacker points away from the aggregate: ${evilStats.cosine}`);
  assert.ok(krum.devices.filter((s) => s.kept).every((s) => s.cosine > 0.9));
  assert.ok(Math.abs(krum.aggregateNorm - l2Norm(run("norm:q0.5+multi-krum:1,3").weights)) < 1e-5);
  assert.ok(krum.ms >= 0);

  const root = Float32Array.from(raw(ups[1]!));
  const fl = run("fltrust", root).robust!;
  const evilFl = fl.devices.find((s) => s.deviceId === "evil")!;
  assert.equal(evilFl.trust, 0);
  assert.equal(evilFl.kept, false);
  assert.match(evilFl.reason!, /fltrust: cosine -0\.\d+ to the root update is not positive/);
  assert.deepEqual(
    fl.dropped.map((f) => [f.deviceId, f.code]),
    [["evil", E_ROBUST_DROPPED]],
  );
  for (const s of fl.devices.filter((x) => x.deviceId !== "evil")) assert.ok(s.trust! > 0.5 && s.kept);
  assert.equal(fl.devices.find((s) => s.deviceId === "h1")!.trust! > 0.999, true, "the root's twin");
  assert.equal(
    run("median").robust!.devices.every((s) => s.trust === undefined && s.kept && !s.clipped),
    true,
  );
});

test("FLTrust: the round's training metrics and sample total count only the kept updates; nobody kept keeps the model", () => {
  const d = 8;
  const ups = honest(3, d, 5, 0.05);
  const s = strategy("fedavg", d, 0);
  const before = s.weights.slice();
  const agg = beginRoundAggregation(s, 1, {
    layoutHash: LAYOUT,
    aggregator: parseAggregator("fltrust"),
    rootDelta: Float32Array.from(raw(ups[0]!), (v) => -v),
  });
  for (const u of ups) agg.add(u);
  const out = agg.finish([]) as RobustRoundResult;
  assert.deepEqual([...out.weights], [...before], "the model is kept");
  assert.deepEqual(out.robust!.kept, []);
  assert.equal(out.robust!.dropped.length, 3);
  assert.equal(out.metrics.updates, 0);
});

test("the streaming fixed-bound mean clips each update as it arrives and keeps none of them", () => {
  const d = 16;
  const ups = honest(4, d, 9);
  ups.push({ ...upd("big", 10, []), delta: Float32Array.from(raw(ups[0]!), (v) => 100 * v) });
  const bound = 1;
  const want = weightedMean(
    ups.map((u) => {
      const n = l2Norm(raw(u));
      return {
        deviceId: u.deviceId,
        delta: Float32Array.from(raw(u), (v) => (n > bound ? (v * bound) / n : v)),
        weight: u.numSamples,
      };
    }),
  ).delta;
  const inner = strategy("fedavg", d, 0);
  const agg = robustAggregation(inner.beginAggregate(1), {
    spec: parseAggregator("norm:1+mean"),
    round: 1,
    length: d,
  });
  for (const u of ups) {
    agg.add(u);
    // Nothing is kept: the caller may reuse (here: wipe) its buffer as soon as add() returns.
    raw(u).fill(1e6);
  }
  const out = agg.finish([]) as RobustRoundResult;
  assertClose(out.weights, [...want], 1e-6);
  assert.equal(out.robust!.bound, 1);
  assert.equal(out.robust!.updates, 5);
  assert.deepEqual(out.robust!.devices, [], "no per-update statistics: nothing was kept");
  assert.deepEqual(
    out.robust!.kept,
    ups.map((u) => u.deviceId),
  );
});

test("a buffered rule owns what it buffers: the caller may reuse its update's memory after add()", () => {
  const ups = [upd("a", 1, [1, 1]), upd("b", 1, [2, 2]), upd("c", 1, [3, 3])];
  const agg = beginRoundAggregation(strategy("fedavg", 2, 0), 1, {
    layoutHash: LAYOUT,
    aggregator: parseAggregator("median"),
  });
  for (const u of ups) {
    agg.add(u);
    raw(u).fill(1000);
  }
  assertClose(agg.finish([]).weights, [2, 2]);
});

test("a secure aggregate is refused by every rule that needs each update (E_CONFIG_CONFLICT)", () => {
  const sum = { deviceIds: ["a", "b"], totalSamples: 20, mean: Float32Array.of(1, 1, 1) };
  for (const spec of [
    "median",
    "krum:0",
    "geomed",
    "norm:1+mean",
    "norm:q0.5+mean",
    "fltrust",
    "centered-clip:1",
  ]) {
    const agg = beginRoundAggregation(strategy("fedavg", 3), 1, {
      layoutHash: LAYOUT,
      aggregator: parseAggregator(spec),
      rootDelta: Float32Array.of(1, 1, 1),
    });
    assert.throws(() => agg.addAggregate(sum), code("E_CONFIG_CONFLICT"), spec);
  }
  // The plain mean is the strategy's own aggregation: the sum goes in.
  const plain = beginRoundAggregation(strategy("fedavg", 3, 0), 1, {
    layoutHash: LAYOUT,
    aggregator: parseAggregator("mean"),
  });
  plain.addAggregate(sum);
  assertClose(plain.finish([]).weights, [1, 1, 1]);
});

test("fltrust without the server's root update is refused when the round begins, before anyone trains", () => {
  assert.throws(
    () =>
      beginRoundAggregation(strategy("fedavg", 3), 1, {
        layoutHash: LAYOUT,
        aggregator: parseAggregator("fltrust"),
      }),
    (e: unknown) =>
      (e as { code?: string }).code === "E_CONFIG_AGGREGATOR" && /root/.test((e as Error).message),
  );
  assert.throws(
    () =>
      beginRoundAggregation(strategy("fedavg", 3), 1, {
        layoutHash: LAYOUT,
        aggregator: parseAggregator("fltrust"),
        rootDelta: Float32Array.of(1, 2),
      }),
    code("E_STRATEGY_SIZE"),
  );
});

test("end to end: one update scaled x1000 drags FedAvg far; every robust rule keeps the model close", () => {
  const d = 50;
  const rounds = 3;
  /** Plays one attacker: the first update of each round is scaled by 1000 before the chain sees it. */
  const scaling: RoundInterceptor = {
    wrap: (agg) => ({
      get count() {
        return agg.count;
      },
      add: (r) =>
        agg.add(r.deviceId === "h0" ? { ...r, delta: Float32Array.from(raw(r), (v) => 1000 * v) } : r),
      addAggregate: (a) => agg.addAggregate(a),
      finish: (f) => agg.finish(f),
    }),
  };
  const run = (text: string, attack: boolean): number => {
    const s = strategy("fedavg", d, 0);
    const clean = strategy("fedavg", d, 0);
    let distance = 0;
    for (let round = 1; round <= rounds; round++) {
      const ups = honest(10, d, round, 0.1);
      const honestMean = weightedMean(
        ups.slice(1).map((u) => ({ deviceId: u.deviceId, delta: raw(u), weight: u.numSamples })),
      );
      const root = Float32Array.from(honestMean.delta, (v, i) => v + 0.02 * Math.cos(3 * i));
      const closer = new RoundCloser({
        round,
        layoutHash: LAYOUT,
        aggregation: beginRoundAggregation(s, round, {
          layoutHash: LAYOUT,
          ...(text === "plain" ? {} : { aggregator: parseAggregator(text) }),
          rootDelta: root,
          ...(attack ? { interceptor: scaling } : {}),
        }),
      });
      for (const u of ups) assert.equal(closer.update(u), undefined);
      const out = closer.finish(ups.map((u) => u.deviceId));
      s.weights.set(out.weights);
      // The model the honest devices alone would make (FedAvg of the nine honest updates).
      const c = clean.beginAggregate(round);
      for (const u of ups.slice(1)) c.add(u);
      c.finish([]);
      distance = l2Norm(Float32Array.from(s.weights, (w, i) => w - clean.weights[i]!));
    }
    return distance;
  };
  const step = l2Norm(Float32Array.from({ length: d }, (_, i) => Math.cos(i) * 0.2));
  const fedavg = run("plain", true);
  assert.ok(fedavg > 50 * step, `FedAvg is dragged ${fedavg} (one honest step is ${step})`);
  for (const text of [
    "median",
    "trimmed-mean:0.1",
    "krum:1",
    "multi-krum:1,5",
    "geomed",
    "centered-clip:1",
    "fltrust",
    "norm:q0.5+mean",
    "norm:2+mean",
    "default",
  ]) {
    const attacked = run(text, true);
    assert.ok(attacked < 0.5 * step, `${text}: ${attacked} from the honest model (one step is ${step})`);
  }
});
