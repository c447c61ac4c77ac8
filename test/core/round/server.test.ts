import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { MemoryTransport } from "../../../core/protocol/memory-transport";
import { encodeMessage } from "../../../core/protocol/messages";
import { DeviceRuntime } from "../../../core/round/device";
import { runJob, runRound, type JobOptions } from "../../../core/round/server";
import { VirtualFleet } from "../../../core/fleet/virtual-fleet";
import { createStrategy } from "../../../core/strategies/registry";
import { FakeModel, labelsDataset } from "../../helpers/fake-model";

/** Three devices whose fake training moves weights towards their mean label (1, 0, 0.5) with lr 0.5. */
function fleet(
  transport: MemoryTransport,
  models: FakeModel[] = [new FakeModel(), new FakeModel(), new FakeModel()],
) {
  const data = [labelsDataset([1, 1]), labelsDataset([0, 0, 0, 0]), labelsDataset([0, 1, 0, 1, 0, 1])];
  data.forEach((d, i) => {
    const rt = new DeviceRuntime(`d${i}`, d, models[i]);
    const link = transport.connect({ deviceId: `d${i}`, numSamples: d.n });
    link.onMessage(async (frame) => {
      await link.send(await rt.handle(frame)).catch(() => undefined);
    });
  });
}

function strategy(clients = 3) {
  const s = createStrategy("fedavg", {
    clientsPerRound: clients,
    fit: { epochs: 1, batchSize: 1, lr: 0.5 },
    seed: 1,
  });
  s.initialize(new Float32Array(4));
  return s;
}

const layout = new FakeModel().layout;
const base: JobOptions = { jobId: "job", rounds: 1, layout, roundTimeoutInMs: 2000 };

test("a round aggregates the sample-weighted mean of the devices' deltas", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const s = strategy();
  const rec = await runRound(s, t, 1, base);
  // deltas 0.5 (2 samples), 0 (4), 0.25 (6): (1 + 0 + 1.5) / 12
  for (const v of s.weights) assert.ok(Math.abs(v - 2.5 / 12) < 1e-6, `got ${v}`);
  assert.deepEqual([...rec.completed].sort(), ["d0", "d1", "d2"]);
  assert.equal(rec.failures.length, 0);
  assert.ok(rec.downlinkBytes > 0 && rec.uplinkBytes > 0);
  assert.equal(rec.uplinkBytes, t.stats.uplinkBytes);
});

test("an offline device does not block the round: it closes at the deadline and the others count", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const s = strategy(3);
  // d1 is selected, then drops off the network as the round starts.
  const origSend = t.send.bind(t);
  t.send = async (id, frame) => {
    if (id === "d1") t.setOnline("d1", false);
    return origSend(id, frame);
  };
  const rec = await runRound(s, t, 1, { ...base, roundTimeoutInMs: 200 });
  assert.deepEqual(
    rec.failures.map((f) => [f.deviceId, f.code]),
    [["d1", "E_ROUND_TIMEOUT"]],
  );
  // (1 + 1.5) / 8
  assert.ok(Math.abs(s.weights[0] - 2.5 / 8) < 1e-6);
});

test("garbage, stale and duplicate frames are rejected and counted, never fatal", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const intruder = t.connect({ deviceId: "intruder" });
  const rejected: string[] = [];
  const s = strategy(3);
  // Keep the intruder out of the selection.
  const list = t.listDevices.bind(t);
  t.listDevices = async () => (await list()).filter((d) => d.deviceId !== "intruder");
  const p = runRound(s, t, 1, { ...base, events: { onRejected: (code) => rejected.push(code) } });
  await intruder.send(new Uint8Array([1, 2, 3]));
  await intruder.send(
    encodeMessage({
      type: "failure",
      jobId: "job",
      round: 0,
      deviceId: "d0",
      code: "E",
      reason: "old round",
    }),
  );
  const rec = await p;
  assert.equal(rec.completed.length, 3);
  assert.ok(rejected.includes("E_PROTO_TRUNCATED"), rejected.join());
  assert.ok(rejected.includes("E_PROTO_STALE"), rejected.join());
});

test("a device with another model layout fails cleanly and the job goes on", async () => {
  const t = new MemoryTransport();
  fleet(t, [new FakeModel(), new FakeModel(5), new FakeModel()]);
  const s = strategy();
  const recs = await runJob(s, t, { ...base, rounds: 2 });
  assert.equal(recs.length, 2);
  for (const r of recs) {
    assert.deepEqual(
      r.failures.map((f) => [f.deviceId, f.code]),
      [["d1", "E_MODEL_LAYOUT"]],
    );
    assert.equal(r.completed.length, 2);
  }
});

test("evaluation runs on each new global model", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const s = strategy();
  const recs = await runJob(s, t, {
    ...base,
    rounds: 2,
    evaluate: async (w) => ({ loss: 1 - w[0], accuracy: w[0] }),
  });
  assert.ok(recs[1].accuracy > recs[0].accuracy);
});

test("on a virtual fleet's clock, rounds take trace time and an update delivered after its round is counted late", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const dev = (deviceId: string, sessions: [number, number][]) => ({
    deviceId,
    samplesPerSecond: 1,
    uplinkBytesPerSecond: 1e9,
    downlinkBytesPerSecond: 1e9,
    rttMs: 10,
    sessions,
    maintenance: [],
  });
  // d2 (6 samples at 1 sample/s) loses its link 1 s into round 1, trains offline and reconnects at 62 s.
  const trace = {
    horizonS: 10_000,
    devices: [
      dev("d0", [[0, 10_000]]),
      dev("d1", [[0, 10_000]]),
      dev("d2", [
        [0, 1],
        [62, 10_000],
      ]),
    ],
  };
  const clock = await VirtualFleet.create(t, trace);
  const late: [number, string][] = [];
  const records = await runJob(strategy(3), clock, {
    ...base,
    rounds: 2,
    roundTimeoutInMs: 60_000,
    clock,
    events: { onLate: (round, id) => late.push([round, id]) },
  });
  assert.equal(records[0].startedAt, 0);
  assert.equal(records[0].endedAt, 60_000);
  assert.deepEqual([...records[0].completed].sort(), ["d0", "d1"]);
  assert.deepEqual(
    records[0].failures.map((f) => [f.deviceId, f.code]),
    [["d2", "E_ROUND_TIMEOUT"]],
  );
  // Round 2 offers only the idle devices; d2's round-1 update arrives during it (≈ 62 s) and is counted late.
  assert.equal(records[1].startedAt, 60_000);
  assert.deepEqual([...records[1].participants].sort(), ["d0", "d1"]);
  assert.ok(records[1].endedAt > 64_000 && records[1].endedAt < 64_100, `${records[1].endedAt}`);
  assert.deepEqual(late, [[1, "d2"]]);
});

test("selectParticipants decides which devices the strategy may pick", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const rec = await runRound(strategy(3), t, 1, {
    ...base,
    selectParticipants: (_round, available) => available.filter((d) => d.deviceId !== "d1"),
  });
  assert.deepEqual([...rec.participants].sort(), ["d0", "d2"]);
});

test("on a virtual clock, a round nobody can join waits out its deadline, so time moves on", async () => {
  const t = new MemoryTransport();
  fleet(t);
  const dev = (deviceId: string) => ({
    deviceId,
    samplesPerSecond: 1,
    uplinkBytesPerSecond: 1e9,
    downlinkBytesPerSecond: 1e9,
    rttMs: 10,
    sessions: [[100, 10_000]] as [number, number][],
    maintenance: [],
  });
  const clock = await VirtualFleet.create(t, {
    horizonS: 10_000,
    devices: [dev("d0"), dev("d1"), dev("d2")],
  });
  const records = await runJob(strategy(3), clock, { ...base, rounds: 3, roundTimeoutInMs: 60_000, clock });
  assert.deepEqual(
    records.map((r) => [r.startedAt, r.endedAt, r.participants.length]),
    [
      [0, 60_000, 0],
      [60_000, 120_000, 0],
      [120_000, records[2].endedAt, 3],
    ],
  );
  assert.deepEqual([...records[2].completed].sort(), ["d0", "d1", "d2"]);
  // d0 (2 samples), d1 (4), d2 (6) each train at 1 sample/s after an rtt; the round ends with the slowest.
  assert.ok(records[2].endedAt > 126_000 && records[2].endedAt < 126_100, `${records[2].endedAt}`);
});
