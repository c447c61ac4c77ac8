import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { paths } from "../../../cloud/aggregator/src/jobs/state";
import { deviceName } from "../../../local/sim/data";
import { DEVICE_MODULES } from "../../../local/stack/device-process";
import { startFunctionProcess, type FunctionProcessHost } from "../../../local/stack/function-process";
import type { TrainerState } from "../../../modules/trainer/src/trainer";
import {
  api,
  createJob,
  holdUplink,
  reportedOf,
  roundState,
  startDevice,
  startJob,
  waitFor,
  waitJobDone,
  withFaultFleet as withFleet,
  type FaultFleet,
} from "./fault-support";

/**
 * Processes killed on the local stack: a device's modules (trainer, quantizer, update-queue, profiler on the
 * unmodified SDK clients) run in a child process (local/stack/device-process.ts), the aggregation Function's host
 * in another (local/stack/function-process.ts), and the tests end them with SIGKILL mid-round — no stop(), flush
 * or close runs — then check the documented recovery (cloud/aggregator/README.md, "Semantics and limits";
 * modules/update-queue/src/main.ts): the round closes at its deadline on quorum, a rebooted device sends the update
 * its durable outbox kept, a new Function process resumes the job from what the old one persisted in Blob Storage.
 */

/** Asserts that the process ended by SIGKILL and that all four of its module connections are gone from the hub. */
async function assertKilled(
  f: FaultFleet,
  deviceId: string,
  how: { code: number | null; signal: NodeJS.Signals | null },
): Promise<void> {
  assert.deepEqual(how, { code: null, signal: "SIGKILL" });
  for (const m of DEVICE_MODULES) {
    await waitFor(`${deviceId}/${m} to drop off the hub`, () => !f.stack.hub.isOnline(deviceId, m), 10_000);
  }
}

test("a device killed (SIGKILL) mid-round: the round closes at the deadline on quorum and the job goes on", async () => {
  const victim = deviceName(2, 4);
  await withFleet(4, { externalDevices: [victim] }, async (f) => {
    const jobId = "fault-kill";
    // The victim's modules run in a child process. Its update can never leave before the kill, however fast
    // it trains: its uplink is held.
    const dead = await startDevice(f, victim, { holdUplink: true });
    await createJob(f, {
      jobId,
      clientsPerRound: 4,
      rounds: 2,
      roundDeadlineSeconds: 15,
      minCompletedFraction: 0.5,
    });
    await startJob(f, jobId);
    const opened = await waitFor("round 1 to open", () => roundState(f.store, jobId, 1), 30_000, 25, f.logs);
    assert.equal(opened.participants.length, 4);
    assert.ok(
      opened.participants.some((p) => p.deviceId === victim),
      "the victim takes part in round 1",
    );
    // The device dies: SIGKILL, nothing stops, flushes or closes.
    await assertKilled(f, victim, await dead.kill());

    const doc = await waitJobDone(f, jobId, 60_000);
    assert.equal(doc.status, "completed", doc.error);
    assert.equal(doc.rounds.length, 2);
    const [r1, r2] = doc.rounds;
    assert.equal(r1.round, 1);
    assert.equal(r1.status, "aggregated");
    assert.equal(r1.participants, 4);
    assert.equal(r1.completed, 3);
    assert.equal(r1.belowQuorum, false);
    assert.deepEqual(
      r1.failures.map((x) => [x.deviceId, x.code]),
      [[victim, "E_ROUND_TIMEOUT"]],
    );
    // It closed on the deadline (the other three had answered long before), not on a complete set.
    assert.ok(r1.durationMs >= 15_000, `round 1 lasted ${r1.durationMs} ms`);
    const st1 = await roundState(f.store, jobId, 1);
    assert.equal(st1?.status, "closed");
    assert.equal(st1?.received[victim], undefined);
    assert.equal(Object.keys(st1?.received ?? {}).length, 3);

    assert.equal(r2.round, 2);
    assert.equal(r2.status, "aggregated");
    assert.equal(r2.completed, 3);
    const st2 = await roundState(f.store, jobId, 2);
    assert.ok(st2);
    const ids2 = st2.participants.map((p) => p.deviceId);
    if (ids2.includes(victim)) {
      assert.deepEqual(
        r2.failures.map((x) => x.deviceId),
        [victim],
      );
    } else {
      assert.equal(ids2.length, 3, "round 2 runs with the three live devices");
      assert.deepEqual(r2.failures, []);
    }
    assert.notEqual(r2.modelSha256, r1.modelSha256, "round 2 moved the model");
  });
});

test("a device killed (SIGKILL) after storing its update, before sending it: rebooted, it delivers the update from its durable outbox", async () => {
  const victim = deviceName(1, 3);
  await withFleet(3, { externalDevices: [victim] }, async (f) => {
    const jobId = "fault-kill-outbox";
    // Its uplink is held: the update-queue stores the update in its outbox and sends nothing.
    const first = await startDevice(f, victim, { holdUplink: true });
    await createJob(f, {
      jobId,
      clientsPerRound: 3,
      rounds: 2,
      roundDeadlineSeconds: 120,
      minCompletedFraction: 1,
    });
    await startJob(f, jobId);
    const stored = await waitFor(
      `${victim}'s round-1 update in its outbox`,
      async () => (await first.status()).outbox.find((u) => u.jobId === jobId && u.round === 1),
      60_000,
      100,
      f.logs,
    );
    assert.equal(stored.state, "pending");
    // The hub holds the trainer's report that the round is handed over (a rebooted trainer does not train again a
    // round it reported done).
    await waitFor(
      `${victim}'s trainer to report round 1 done`,
      async () => {
        const r = (await reportedOf(f, victim, "trainer")).flotilla as Partial<TrainerState> | undefined;
        return r?.jobId === jobId && r.round === 1 && r.status === "done";
      },
      30_000,
      100,
      f.logs,
    );
    const open = await roundState(f.store, jobId, 1);
    assert.equal(open?.status, "open");
    assert.equal(open?.received[victim], undefined, "nothing of it reached the cloud");

    // SIGKILL: the update was stored but never sent.
    await assertKilled(f, victim, await first.kill());
    // The device reboots: the same identities and the same outbox; its queue connects and sends what it stored.
    const second = await startDevice(f, victim);
    assert.notEqual(second.pid, first.pid);

    const doc = await waitJobDone(f, jobId, 90_000);
    assert.equal(doc.status, "completed", doc.error);
    assert.equal(doc.rounds.length, 2);
    for (const r of doc.rounds) {
      assert.equal(r.status, "aggregated", `round ${r.round}`);
      assert.equal(r.participants, 3);
      assert.equal(r.completed, 3, `round ${r.round}`);
      assert.deepEqual(r.failures, []);
    }
    const st1 = await roundState(f.store, jobId, 1);
    assert.equal(
      st1?.received[victim]?.updateId,
      stored.updateId,
      "round 1 got the update stored before the kill",
    );
    assert.equal(await f.store.exists(paths.update(jobId, 1, victim)), true);
    // The rebooted device took part in round 2 too, and its outbox drained (the cloud acknowledged both updates).
    assert.ok((await roundState(f.store, jobId, 2))?.received[victim], `${victim} sent its round-2 update`);
    await waitFor(
      `${victim}'s outbox to drain`,
      async () => (await second.status()).queue.depth === 0,
      30_000,
    );
  });
});

test("the Function killed (SIGKILL) mid-round: a new Function process resumes the job from Blob Storage and completes it", async () => {
  await withFleet(3, { functionsHost: startFunctionProcess }, async (f) => {
    const host = f.stack.host as FunctionProcessHost;
    const jobId = "fault-function-kill";
    const slow = f.deviceIds[0];
    const slowDev = f.device(slow);
    // One device's update waits in its outbox so that round 1 is still open when the Function dies.
    holdUplink(slowDev);
    await createJob(f, {
      jobId,
      clientsPerRound: 3,
      rounds: 2,
      roundDeadlineSeconds: 120,
      minCompletedFraction: 1,
    });
    await startJob(f, jobId);
    await waitFor(
      "two updates received in round 1",
      async () => {
        const st = await roundState(f.store, jobId, 1);
        return st && Object.keys(st.received).length >= 2 ? st : undefined;
      },
      60_000,
      50,
      f.logs,
    );
    await waitFor(`${slow}'s update in its outbox`, () => slowDev.queue.status().depth === 1, 30_000);
    const oldPid = host.pid;
    // The batch that completed the second update has been checkpointed (its counters are final).
    await host.deliver([]);
    assert.equal((await host.counters()).updates_completed, 2);

    // SIGKILL the Function process mid-round: whatever it had in memory is gone.
    assert.deepEqual(await host.kill(), { code: null, signal: "SIGKILL" });
    assert.equal(host.pid, undefined);
    await assert.rejects(fetch(`${host.url}/api/jobs/${jobId}`), "no Function answers its HTTP API");
    const open = await roundState(f.store, jobId, 1);
    assert.equal(open?.status, "open");
    assert.equal(Object.keys(open?.received ?? {}).length, 2);

    // The held update goes out while no Function runs: its chunks wait in the event stream. A new Function process
    // starts over the same storage account and hub, with nothing but what the old one persisted.
    assert.ok(f.stack.hub.disconnect(slow, "update-queue"));
    await host.restart();
    assert.ok(host.pid !== undefined && host.pid !== oldPid);

    const doc = await waitJobDone(f, jobId, 90_000);
    assert.equal(doc.status, "completed", doc.error);
    assert.equal(doc.rounds.length, 2);
    for (const r of doc.rounds) {
      assert.equal(r.status, "aggregated", `round ${r.round}`);
      assert.equal(r.participants, 3);
      assert.equal(r.completed, 3, `round ${r.round}`);
      assert.deepEqual(r.failures, []);
      assert.equal(r.belowQuorum, false);
    }
    for (const round of [1, 2]) {
      const st = await roundState(f.store, jobId, round);
      assert.equal(st?.status, "closed");
      assert.deepEqual(Object.keys(st?.received ?? {}).sort(), [...f.deviceIds].sort());
    }
    // The new process took the held update of round 1 and all of round 2; nothing was counted twice.
    const fresh = await host.counters();
    assert.equal(fresh.updates_completed, 4);
    assert.equal(fresh.late, 0);
    assert.equal(fresh.errors, 0);
    // Its HTTP API serves the job it resumed.
    const body = (await api(host.url, "GET", `jobs/${jobId}`)) as { status?: string };
    assert.equal(body.status, "completed");
    for (const d of f.stack.devices) {
      await waitFor(`${d.deviceId}'s outbox to drain`, () => d.queue.status().depth === 0, 30_000);
    }
  });
});
