import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createAggregator } from "../../../cloud/aggregator/src/aggregator";
import { paths } from "../../../cloud/aggregator/src/jobs/state";
import {
  captureEvents,
  createJob,
  eventProps,
  holdUplink,
  isUpdateChunk,
  jobDoc,
  roundState,
  startJob,
  waitFor,
  waitJobDone,
  withFaultFleet as withFleet,
} from "./fault-support";

/**
 * Faults on the local stack (embedded IoT Hub, Azurite, the aggregation Function's handlers, real device modules):
 * a device whose uplink is down while its round closes, and a Function instance replaced in-process mid-round (a
 * polite restart; kills.test.ts SIGKILLs real device and Function processes).
 */

test("a device offline for a round: its queued update arrives later and is handled by policy", async () => {
  await withFleet(3, {}, async (f) => {
    const jobId = "fault-offline";
    const offline = f.deviceIds[1];
    const dev = f.device(offline);
    holdUplink(dev);
    await createJob(f, {
      jobId,
      clientsPerRound: 3,
      rounds: 1,
      // The round waits for this deadline (one device never delivers); the two others must be done by then even
      // on a loaded machine (at 6 s, a load of 12 left them out once).
      roundDeadlineSeconds: 15,
      minCompletedFraction: 0.5,
    });
    await startJob(f, jobId);
    // The trainer finishes and hands its update to the queue, which keeps it in its outbox.
    const queued = await waitFor(
      `an update of ${offline} in its outbox`,
      () => dev.queue.outbox.pending().find((u) => u.jobId === jobId && u.round === 1),
      30_000,
      50,
      f.logs,
    );
    assert.equal(queued.state, "pending");
    assert.equal(dev.queue.status().depth, 1);
    assert.equal(dev.queue.status().online, false);

    const doc = await waitJobDone(f, jobId, 60_000);
    assert.equal(doc.status, "completed", doc.error);
    const [r1] = doc.rounds;
    assert.equal(r1.completed, 2);
    assert.deepEqual(
      r1.failures.map((x) => [x.deviceId, x.code]),
      [[offline, "E_ROUND_TIMEOUT"]],
    );
    // Still queued: nothing reached the cloud while the round closed without it.
    assert.equal(dev.queue.outbox.get(queued.updateId)?.state, "pending");
    const chunks = dev.queue.outbox.chunksOf(queued.updateId).length;
    const ingest = f.stack.aggregator.ingestor.counters;
    const before = { ...ingest };
    assert.equal(before.late, 0);
    const closed = await roundState(f.store, jobId, 1);

    // The link comes back: the connection drops, the module client reconnects, and the queue resends.
    assert.ok(f.stack.hub.disconnect(offline, "update-queue"), "the update-queue was connected");
    await waitFor(
      `the late update of ${offline} to be acknowledged`,
      () => dev.queue.outbox.get(queued.updateId)?.state === "acked",
      30_000,
      50,
      f.logs,
    );
    assert.equal(dev.queue.status().depth, 0);
    assert.equal(dev.queue.status().online, true);
    assert.equal(dev.queue.status().counters.acked, 1);
    assert.equal(dev.queue.status().counters.dropped_closed, 0, "dropped by the cloud's ack, not locally");
    await f.stack.hub.flushEvents();
    await f.stack.host.deliver([]); // every batch before this one has been handled
    // Each chunk that got out before the ack stopped the rest is refused as late, and acknowledged.
    const late = ingest.late - before.late;
    assert.ok(late >= 1 && late <= chunks, `${late} late chunk(s) of ${chunks}`);
    assert.equal(ingest.acks_sent - before.acks_sent, late);
    assert.equal(ingest.acks_failed, before.acks_failed);
    assert.equal(ingest.updates_completed, before.updates_completed, "not counted as a received update");
    assert.equal(ingest.chunks_stored, before.chunks_stored, "its chunks were never stored");
    assert.equal(ingest.errors, 0);

    // The closed round and the job are untouched by it.
    const after = await roundState(f.store, jobId, 1);
    assert.deepEqual(after, closed);
    assert.equal(after?.received[offline], undefined);
    assert.equal(await f.store.exists(paths.update(jobId, 1, offline)), false);
    const doc2 = await jobDoc(f.store, jobId);
    assert.deepEqual(doc2?.rounds, doc.rounds);
    assert.equal(doc2?.status, "completed");
  });
});

test("the Function replaced in-process mid-round (polite restart) resumes the round", async () => {
  await withFleet(3, {}, async (f) => {
    const jobId = "fault-restart";
    const slow = f.deviceIds[0];
    const slowDev = f.device(slow);
    const capture = captureEvents(f.stack);
    // One device's update waits in its outbox so that round 1 is still open when the Function is replaced.
    holdUplink(slowDev);
    await createJob(f, {
      jobId,
      clientsPerRound: 3,
      rounds: 2,
      roundDeadlineSeconds: 120,
      minCompletedFraction: 1,
    });
    await startJob(f, jobId);
    const open = await waitFor(
      "two updates received in round 1",
      async () => {
        const st = await roundState(f.store, jobId, 1);
        return st && Object.keys(st.received).length >= 2 ? st : undefined;
      },
      30_000,
      50,
      f.logs,
    );
    await waitFor(`${slow}'s update in its outbox`, () => slowDev.queue.status().depth === 1, 30_000);
    assert.equal(open.status, "open");
    assert.equal(open.participants.length, 3);
    assert.deepEqual(Object.keys(open.received).sort(), f.deviceIds.filter((d) => d !== slow).sort());

    // The instance dies; a new one starts over the same storage account and IoT Hub, with fresh memory.
    const old = f.stack.aggregator;
    const services = old.services;
    const fresh = createAggregator({
      store: services.store,
      fleet: services.fleet,
      clock: Date.now,
      log: services.log,
    });
    f.stack.host.replaceAggregator(fresh);
    // A batch in flight on the old instance (with the tick its ingest runs) has finished, and so has a timer run.
    await f.stack.host.deliver([]);
    await f.stack.host.tick();
    const oldCounters = { ...old.ingestor.counters };
    assert.equal(oldCounters.updates_completed, 2);
    assert.equal((await roundState(f.store, jobId, 1))?.status, "open", "round 1 waits for the third update");

    // Event Hub delivers at least once: the chunks the old instance handled arrive again at the new one.
    const receivedIds = new Set(Object.values(open.received).map((r) => r.updateId));
    const seen = capture.batches
      .flat()
      .filter((ev) => isUpdateChunk(ev) && receivedIds.has(eventProps(ev).updateId as string));
    assert.ok(seen.length >= 2, `${seen.length} chunks of the received updates were captured`);
    await f.stack.host.deliver(seen);
    assert.equal(fresh.ingestor.counters.events, seen.length);
    assert.equal(fresh.ingestor.counters.duplicate_updates, seen.length, "each counted as a duplicate");
    assert.equal(fresh.ingestor.counters.updates_completed, 0);
    assert.equal(fresh.ingestor.counters.chunks_stored, 0);
    assert.equal((await roundState(f.store, jobId, 1))?.status, "open");

    // The held update goes out now and reaches the new instance, its first chunk twice (before the update is
    // complete); the new instance closes the round and runs the job.
    capture.duplicate = (ev) =>
      isUpdateChunk(ev) && eventProps(ev).deviceId === slow && String(eventProps(ev).chunkIndex) === "0";
    assert.ok(f.stack.hub.disconnect(slow, "update-queue"));
    const doc = await waitJobDone(f, jobId, 60_000);
    capture.duplicate = undefined;
    assert.equal(doc.status, "completed", doc.error);
    assert.deepEqual(old.ingestor.counters, oldCounters, "the old instance got nothing after the restart");
    assert.equal(doc.rounds.length, 2);
    for (const r of doc.rounds) {
      assert.equal(r.status, "aggregated");
      assert.equal(r.participants, 3);
      assert.equal(r.completed, 3, `round ${r.round}`);
      assert.deepEqual(r.failures, []);
      assert.equal(r.belowQuorum, false);
    }
    assert.ok(doc.rounds[0].durationMs < 120_000, "round 1 closed on all participants, not the deadline");
    for (const round of [1, 2]) {
      const st = await roundState(f.store, jobId, round);
      assert.equal(st?.status, "closed");
      assert.deepEqual(Object.keys(st?.received ?? {}).sort(), [...f.deviceIds].sort());
    }
    const slowChunks = capture.batches
      .flat()
      .filter(
        (ev) => isUpdateChunk(ev) && eventProps(ev).deviceId === slow && String(eventProps(ev).round) === "1",
      );
    const firstChunks = slowChunks.filter((ev) => String(eventProps(ev).chunkIndex) === "0").length;
    assert.ok(firstChunks >= 2, `${slow}'s first chunk was delivered ${firstChunks} times`);
    assert.ok(fresh.ingestor.counters.duplicate_chunks >= 1, "the repeated chunk was stored once");
    // Every update counted exactly once across the two instances: 3 participants × 2 rounds.
    assert.equal(old.ingestor.counters.updates_completed + fresh.ingestor.counters.updates_completed, 6);
    assert.equal(fresh.ingestor.counters.updates_completed, 4);
    assert.equal(fresh.ingestor.counters.late, 0);
    assert.equal(fresh.ingestor.counters.errors, 0);
    for (const d of f.stack.devices) {
      await waitFor(`${d.deviceId}'s outbox to drain`, () => d.queue.status().depth === 0, 10_000);
    }
  });
});
