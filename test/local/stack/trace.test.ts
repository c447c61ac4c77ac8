import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { DeviceTrace, FleetTrace } from "../../../core/fleet/trace";
import { DEVICE_MODULES } from "../../../local/stack/device-process";
import {
  createJob,
  roundState,
  startJob,
  waitFor,
  waitJobDone,
  withFaultFleet as withFleet,
} from "./fault-support";

/**
 * The local stack driven by a device trace (local/stack/trace-driver.ts): links that really go down and come back,
 * training paced to the trace's speed, and offline training (a device that loses its link mid-training finishes,
 * and its update reaches the aggregator when the link returns).
 */

const HORIZON = 1e9;
function device(deviceId: string, samplesPerSecond: number, sessions: [number, number][]): DeviceTrace {
  return {
    deviceId,
    samplesPerSecond,
    uplinkBytesPerSecond: 1e6,
    downlinkBytesPerSecond: 1e6,
    rttMs: 50,
    sessions,
    maintenance: [],
  };
}

test("trace: a device offline at the start has its modules disconnected; its session starts and they connect", async () => {
  // Time scale 1: device-1 comes online 8 virtual (= real) seconds after the start (the trace clock starts once
  // every device is up).
  const trace: FleetTrace = {
    horizonS: HORIZON,
    devices: [device("device-0", 1e6, [[0, HORIZON]]), device("device-1", 1e6, [[8, HORIZON]])],
  };
  await withFleet(2, { fleetTrace: trace, timeScale: 1 }, async (f) => {
    const [on, off] = f.deviceIds;
    const hub = f.stack.hub;
    const driver = f.stack.trace;
    assert.ok(driver);
    for (const m of DEVICE_MODULES) assert.equal(hub.isOnline(on, m), true, `${on}/${m} connected`);
    assert.equal(driver.isOnline(off), false, "offline at t = 0");
    await driver.settled();
    for (const m of DEVICE_MODULES) assert.equal(hub.isOnline(off, m), false, `${off}/${m} disconnected`);
    await waitFor(
      `${off}'s modules to connect when its session starts`,
      () => DEVICE_MODULES.every((m) => hub.isOnline(off, m)),
      30_000,
      50,
      f.logs,
    );
    assert.deepEqual(driver.stats().transitions, { [off]: 2 });
  });
});

test("trace: offline training over IoT Hub — a device that loses its link mid-training finishes, and its update reaches the aggregator when the link returns (late, acknowledged, counted)", async () => {
  // device-1 trains slowly (30 samples at 3 samples/s: at least 10 s at time scale 1), so the link can go while it
  // trains; both are online all the time in the trace: the test takes device-1 down itself.
  const trace: FleetTrace = {
    horizonS: HORIZON,
    devices: [device("device-0", 1e6, [[0, HORIZON]]), device("device-1", 3, [[0, HORIZON]])],
  };
  await withFleet(2, { fleetTrace: trace, timeScale: 1 }, async (f) => {
    const jobId = "trace-offline-training";
    const slow = f.deviceIds[1];
    const dev = f.device(slow);
    await createJob(f, {
      jobId,
      clientsPerRound: 2,
      rounds: 1,
      roundDeadlineSeconds: 15,
      minCompletedFraction: 0.5,
    });
    await startJob(f, jobId);
    await waitFor(
      `${slow} to be training`,
      () => dev.trainer.state().status === "training" && dev.trainer.state().jobId === jobId,
      30_000,
      20,
      f.logs,
    );
    await f.stack.setDeviceOnline(slow, false);
    for (const m of DEVICE_MODULES)
      assert.equal(f.stack.hub.isOnline(slow, m), false, `${slow}/${m} offline`);
    const ingest = f.stack.aggregator.ingestor.counters;

    // The round closes at its deadline without it; meanwhile it finished training, offline.
    const doc = await waitJobDone(f, jobId, 60_000);
    assert.equal(doc.status, "completed", doc.error);
    assert.equal(doc.rounds[0].completed, 1);
    assert.deepEqual(
      doc.rounds[0].failures.map((x) => x.deviceId),
      [slow],
    );
    await waitFor(
      `${slow} to finish training offline`,
      () => dev.trainer.state().status === "queued",
      30_000,
    );
    assert.equal(ingest.late_updates, 0, "nothing reached the cloud while offline");

    // The link returns: the update goes trainer → quantizer → update-queue → upstream, and is refused as late.
    await f.stack.setDeviceOnline(slow, true);
    await waitFor(
      `the late update of ${slow} to be acknowledged`,
      () => dev.queue.status().counters.acked === 1 && dev.queue.status().depth === 0,
      60_000,
      50,
      f.logs,
    );
    await f.stack.hub.flushEvents();
    await f.stack.host.deliver([]);
    assert.equal(ingest.late_updates, 1, "counted once, as a late update");
    assert.equal(dev.queue.status().counters.dropped_closed, 0, "dropped by the cloud's ack, not locally");
  });
});

test("trace: a device that is offline when its round order is written reads it when it reconnects, and trains", async () => {
  await withFleet(2, {}, async (f) => {
    const jobId = "order-while-offline";
    const late = f.deviceIds[1];
    const dev = f.device(late);
    // The device is listed as connected when the round selects it, and its link goes down right after: its order
    // is written into its trainer twin while it is offline.
    const fleet = f.stack.aggregator.services.fleet;
    const list = fleet.listTrainers.bind(fleet);
    let once = true;
    fleet.listTrainers = async () => {
      const trainers = await list();
      if (once) {
        once = false;
        await f.stack.setDeviceOnline(late, false);
      }
      return trainers;
    };
    await createJob(f, {
      jobId,
      clientsPerRound: 2,
      rounds: 1,
      roundDeadlineSeconds: 120,
      minCompletedFraction: 1,
    });
    await startJob(f, jobId);
    await waitFor(
      "round 1 to be dispatched",
      async () => (await roundState(f.store, jobId, 1))?.dispatched === true,
      60_000,
      50,
      f.logs,
    );
    assert.equal(dev.trainer.state().jobId, null, "no order reached the offline trainer");
    assert.equal(f.stack.hub.isOnline(late, "trainer"), false);
    await f.stack.setDeviceOnline(late, true);
    const doc = await waitJobDone(f, jobId, 120_000);
    assert.equal(doc.status, "completed", doc.error);
    assert.equal(doc.rounds[0].completed, 2, "the device read its order on reconnect and delivered");
    assert.equal(dev.trainer.state().jobId, jobId);
  });
});
