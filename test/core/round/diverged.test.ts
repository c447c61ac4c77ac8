import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { MemoryTransport } from "../../../core/protocol/memory-transport";
import { DeviceRuntime } from "../../../core/round/device";
import { runJob, type JobOptions, type RoundRecord } from "../../../core/round/server";
import { createStrategy } from "../../../core/strategies/registry";
import type { Strategy } from "../../../core/strategies/strategy";
import { firstNonFinite, nonFiniteModelReason } from "../../../core/tensor/finite";
import { makeLayout } from "../../../core/tensor/layout";
import { DifferentialPrivacy } from "../../../core/privacy/dp";
import { FakeModel, labelsDataset } from "../../helpers/fake-model";

function fleet(transport: MemoryTransport): void {
  const data = [labelsDataset([1, 1]), labelsDataset([0, 0, 0, 0]), labelsDataset([0, 1, 0, 1, 0, 1])];
  data.forEach((d, i) => {
    const rt = new DeviceRuntime(`d${i}`, d, new FakeModel());
    const link = transport.connect({ deviceId: `d${i}`, numSamples: d.n });
    link.onMessage(async (frame) => {
      await link.send(await rt.handle(frame)).catch(() => undefined);
    });
  });
}

function fedavg(): Strategy {
  const s = createStrategy("fedavg", {
    clientsPerRound: 3,
    fit: { epochs: 1, batchSize: 1, lr: 0.5 },
    seed: 1,
  });
  s.initialize(new Float32Array(4));
  return s;
}

/** A strategy whose aggregate turns into NaN at round `badRound` (a bug or an overflowing custom optimizer). */
function poisonedAt(inner: Strategy, badRound: number): Strategy {
  return {
    name: "poisoned",
    initialize: (w) => inner.initialize(w),
    get weights() {
      return inner.weights;
    },
    configureFit: (round, available) => inner.configureFit(round, available),
    exportState: () => inner.exportState(),
    importState: (s) => inner.importState(s),
    beginAggregate: (round) => {
      const agg = inner.beginAggregate(round);
      return {
        get count() {
          return agg.count;
        },
        add: (r) => agg.add(r),
        addAggregate: (a) => agg.addAggregate(a),
        finish: (failures) => {
          const out = agg.finish(failures);
          const next = out.weights.slice();
          if (round === badRound) next[2] = NaN;
          return { ...out, weights: next };
        },
      };
    },
  };
}

const layout = new FakeModel().layout;

function job(over: Partial<JobOptions> = {}) {
  const rounds: RoundRecord[] = [];
  const diverged: [number, string][] = [];
  const opts: JobOptions = {
    jobId: "job",
    rounds: 6,
    layout,
    roundTimeoutInMs: 2000,
    events: {
      onRoundEnd: (r) => rounds.push(r),
      onDiverged: (round, reason) => diverged.push([round, reason]),
    },
    ...over,
  };
  return { opts, rounds, diverged };
}

test("firstNonFinite / nonFiniteModelReason find NaN and ±Infinity and name the round and tensor", () => {
  assert.equal(firstNonFinite(new Float32Array([1, 2, 3])), -1);
  assert.equal(firstNonFinite(new Float32Array([1, Infinity, NaN])), 1);
  assert.equal(firstNonFinite([0, -Infinity]), 1);
  assert.equal(firstNonFinite(new Float32Array(0)), -1);
  assert.equal(nonFiniteModelReason(new Float32Array([0, 1e38]), 3), undefined);
  const l = makeLayout([
    { name: "a", shape: [2] },
    { name: "b", shape: [3] },
  ]);
  assert.equal(
    nonFiniteModelReason(new Float32Array([0, 0, 0, NaN, -Infinity]), 7, l),
    "the global model is not finite after round 7: 2 of 5 weights are NaN or ±Infinity " +
      "(first: index 3 = NaN, in 'b')",
  );
  assert.match(
    nonFiniteModelReason([Infinity], 0) ?? "",
    /not finite initially: 1 of 1 .*index 0 = Infinity\)$/,
  );
});

test("a job whose global model turns NaN stops at that round and says so (non-DP)", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const { opts, rounds, diverged } = job();
  const records = await runJob(poisonedAt(fedavg(), 2), t, opts);
  assert.deepEqual(
    records.map((r) => r.round),
    [1, 2],
    "no round after the one that produced the NaN model",
  );
  assert.equal(rounds.length, 2, "the diverged round's record is still reported");
  assert.equal(diverged.length, 1);
  assert.equal(diverged[0]![0], 2);
  assert.match(diverged[0]![1], /not finite after round 2: 1 of 4 weights .*index 2 = NaN, in 'w'/);
});

test("a strategy fed non-finite weights: the job stops before round 1", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const s = fedavg();
  s.weights[1] = Infinity; // the global model is poisoned after initialize()
  const { opts, rounds, diverged } = job();
  const records = await runJob(s, t, opts);
  assert.equal(records.length, 0);
  assert.equal(rounds.length, 0);
  assert.deepEqual(
    diverged.map(([r]) => r),
    [0],
  );
  assert.match(diverged[0]![1], /not finite initially: .*index 1 = Infinity/);
});

test("a DP round whose noised mean overflows float32 stops the job as diverged instead of crashing it", async () => {
  const t = new MemoryTransport();
  fleet(t);
  // Noise std z·C = 1e40 > float32's 3.4e38: the released mean is ±Infinity.
  const dp = new DifferentialPrivacy({
    noiseMultiplier: 1e3,
    clip: 1e37,
    delta: 1e-5,
    placement: "central",
    clientsPerRound: 3,
    fleetSize: 3,
    noiseSeed: 1,
  });
  const { opts, rounds, diverged } = job({ dp });
  const records = await runJob(fedavg(), t, opts);
  assert.equal(records.length, 1);
  assert.equal(rounds[0]!.dp?.released, true);
  assert.ok(Number.isFinite(rounds[0]!.dp?.epsilon), "ε of the released round is a finite number");
  assert.deepEqual(
    diverged.map(([r]) => r),
    [1],
  );
  assert.match(diverged[0]![1], /not finite after round 1: 4 of 4 weights/);
});

test("finite jobs are unaffected: no onDiverged, all rounds run", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const { opts, rounds, diverged } = job({ rounds: 3 });
  await runJob(fedavg(), t, opts);
  assert.equal(rounds.length, 3);
  assert.equal(diverged.length, 0);
});
