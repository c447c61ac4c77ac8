import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { parseCompression } from "../../../core/compress";
import { MemoryTransport } from "../../../core/protocol/memory-transport";
import { DifferentialPrivacy } from "../../../core/privacy/dp";
import { runAsyncJob, type AsyncJobOptions } from "../../../core/round/async-server";
import { RealClock } from "../../../core/round/clock";
import { DeviceRuntime } from "../../../core/round/device";
import { createStrategy } from "../../../core/strategies/registry";
import type { FitInstruction } from "../../../core/strategies/strategy";
import { FakeModel, labelsDataset } from "../../helpers/fake-model";

const config = { epochs: 1, batchSize: 1, lr: 0.5, seed: 1 };
const layout = new FakeModel().layout;

/**
 * Devices whose fake training moves the weights towards their mean label with lr 0.5. A device named in `hold`
 * keeps its first answer until `release(id)` is called.
 */
function fleet(t: MemoryTransport, labels: Record<string, number[]>, hold: string[] = []) {
  const held = new Map<string, () => void>();
  const waiting = new Map<string, () => void>();
  for (const [id, l] of Object.entries(labels)) {
    const rt = new DeviceRuntime(id, labelsDataset(l), new FakeModel());
    const link = t.connect({ deviceId: id, numSamples: l.length });
    let first = hold.includes(id);
    link.onMessage(async (frame) => {
      const out = await rt.handle(frame);
      const send = () => void link.send(out).catch(() => undefined);
      if (first) {
        first = false;
        held.set(id, send);
        waiting.get(id)?.();
      } else send();
    });
  }
  return {
    release(id: string) {
      const go = held.get(id);
      if (go) go();
      else waiting.set(id, () => held.get(id)!());
    },
  };
}

function strategy() {
  const s = createStrategy("fedavg", {
    clientsPerRound: 1,
    fit: { epochs: 1, batchSize: 1, lr: 0.5 },
    seed: 1,
  });
  s.initialize(new Float32Array(4));
  return s;
}

/** Picks the listed devices in order, skipping those excluded. */
const pickFrom =
  (ids: string[]) =>
  (count: number, exclude: ReadonlySet<string>): FitInstruction[] =>
    ids
      .filter((id) => !exclude.has(id))
      .slice(0, count)
      .map((deviceId) => ({ deviceId, config }));

const base = (o: Partial<AsyncJobOptions>): AsyncJobOptions => ({
  jobId: "job",
  layout,
  versions: 3,
  concurrency: 2,
  buffer: 2,
  maxStaleness: 4,
  trainTimeoutInMs: 60_000,
  pick: pickFrom(["d0", "d1", "d2"]),
  ...o,
});

test("versions advance by buffers of K while C devices keep training", async () => {
  const t = new MemoryTransport();
  fleet(t, { d0: [1, 1], d1: [0, 0, 0, 0], d2: [0, 1, 0, 1, 0, 1] });
  const clock = new RealClock(t);
  const s = strategy();
  const ordered: number[] = [];
  const recs = await runAsyncJob(s, t, clock, {
    ...base({ uplink: parseCompression("fp16") }),
    events: { onOrdered: (_v, ids) => ordered.push(ids.length) },
  });
  clock.close();
  assert.deepEqual(
    recs.map((r) => r.round),
    [1, 2, 3],
  );
  for (const r of recs) {
    assert.equal(r.applied.length, 2);
    assert.equal(r.staleness.length, 2);
    assert.ok(r.staleness.every((x) => x >= 0 && x <= 4));
    assert.ok(r.uplinkBytes > 0 && r.downlinkBytes > 0);
    assert.ok(r.endedAt >= r.startedAt);
    assert.ok(Number.isFinite(r.trainLoss));
  }
  assert.equal(recs[2]!.counters.applied, 6);
  // never more than C in flight: the first order fills both slots
  assert.equal(ordered[0], 2);
  assert.ok(s.weights[0]! > 0);
});

test("the staleness weight is applied: a stale update moves the model by s(τ) of its step", async () => {
  // d0 (mean label 1) answers at once → version 1 = 0.5. d1 (mean label 0.25) trained from version 0 answers after
  // that flush: τ = 1, poly:1 gives s = 1/2, so version 2 = 0.5 + ½ · 0.5 · 0.25 = 0.5625 (0.625 undiscounted).
  const t = new MemoryTransport();
  const f = fleet(t, { d0: [1, 1], d1: [1, 0, 0, 0] }, ["d1"]);
  const clock = new RealClock(t);
  const s = strategy();
  let calls = 0;
  const recs = await runAsyncJob(s, t, clock, {
    ...base({ versions: 2, buffer: 1, staleness: "poly:1" }),
    pick: (count, exclude) => (calls++ === 0 ? pickFrom(["d0", "d1"])(count, exclude) : []),
    events: { onRoundEnd: (r) => r.round === 1 && f.release("d1") },
  });
  clock.close();
  assert.deepEqual(
    recs.map((r) => [r.applied, r.staleness]),
    [
      [["d0"], [0]],
      [["d1"], [1]],
    ],
  );
  for (const v of s.weights) assert.ok(Math.abs(v - 0.5625) < 1e-6, `got ${v}`);
});

test("an update staler than maxStaleness is refused (E_ASYNC_STALE) and counted; the job goes on", async () => {
  const t = new MemoryTransport();
  const f = fleet(t, { slow: [1, 1], d0: [1, 1], d1: [0, 0] }, ["slow"]);
  const clock = new RealClock(t);
  const s = strategy();
  const rejected: string[] = [];
  const recs = await runAsyncJob(s, t, clock, {
    ...base({ versions: 4, concurrency: 3, buffer: 1, maxStaleness: 1 }),
    pick: pickFrom(["slow", "d0", "d1"]),
    events: {
      onRejected: (code) => rejected.push(code),
      onRoundEnd: (r) => r.round === 2 && f.release("slow"),
    },
  });
  clock.close();
  assert.equal(recs.length, 4);
  assert.deepEqual(rejected, ["E_ASYNC_STALE"]);
  const last = recs[3]!;
  assert.equal(last.counters.refusedStale, 1);
  const refused = recs.flatMap((r) => r.refused);
  assert.deepEqual(
    refused.map((r) => [r.deviceId, r.code]),
    [["slow", "E_ASYNC_STALE"]],
  );
  assert.ok(!recs.some((r) => r.applied.includes("slow") && r.staleness.some((x) => x > 1)));
});

test("secure aggregation and distributed DP are refused with E_ASYNC_SECAGG; DP must count K per step", async () => {
  const t = new MemoryTransport();
  const clock = new RealClock(t);
  const s = strategy();
  await assert.rejects(
    runAsyncJob(s, t, clock, {
      ...base({}),
      secureAggregation: { identityKey: () => undefined, stepTimeoutMs: 1000 },
    }),
    { code: "E_ASYNC_SECAGG" },
  );
  const dp = (placement: "distributed" | "central", clientsPerRound: number) =>
    new DifferentialPrivacy({
      noiseMultiplier: 1,
      clip: 1,
      delta: 1e-5,
      placement,
      clientsPerRound,
      fleetSize: 10,
    });
  await assert.rejects(runAsyncJob(s, t, clock, { ...base({}), dp: dp("distributed", 2) }), {
    code: "E_ASYNC_SECAGG",
  });
  await assert.rejects(runAsyncJob(s, t, clock, { ...base({}), dp: dp("central", 5) }), {
    code: "E_DP_CONFIG",
  });
  clock.close();
});

test("central DP: each flush is one accounted release", async () => {
  const t = new MemoryTransport();
  fleet(t, { d0: [1, 1], d1: [0, 0, 0, 0], d2: [0, 1, 0, 1, 0, 1] });
  const clock = new RealClock(t);
  const s = strategy();
  const dp = new DifferentialPrivacy({
    noiseMultiplier: 1,
    clip: 10,
    delta: 1e-5,
    placement: "central",
    clientsPerRound: 2,
    fleetSize: 3,
    noiseSeed: 1,
  });
  const recs = await runAsyncJob(s, t, clock, { ...base({ versions: 2 }), dp });
  clock.close();
  assert.equal(recs.length, 2);
  assert.equal(dp.accountant.countedSteps, 2);
  assert.ok(recs.every((r) => r.dp?.released === true && r.dp.count === 2));
  assert.ok(recs[1]!.dp!.epsilon > recs[0]!.dp!.epsilon);
});

test("a device is not ordered again while its update waits in the buffer", async () => {
  const t = new MemoryTransport();
  fleet(t, { d0: [1, 1], d1: [0, 0, 0, 0], d2: [0, 1, 0, 1, 0, 1] });
  const clock = new RealClock(t);
  const s = strategy();
  const excluded: string[][] = [];
  const recs = await runAsyncJob(s, t, clock, {
    ...base({ versions: 2, concurrency: 2, buffer: 2 }),
    pick: (count, exclude) => {
      excluded.push([...exclude].sort());
      return pickFrom(["d0", "d1", "d2"])(count, exclude);
    },
  });
  clock.close();
  assert.equal(recs.length, 2);
  // The first answer (from d0 or d1) frees a slot: the other is in flight and the first one's update is buffered.
  assert.deepEqual(excluded[0], []);
  assert.deepEqual(excluded[1], ["d0", "d1"]);
  for (const r of recs) assert.equal(new Set(r.applied).size, r.applied.length);
});
