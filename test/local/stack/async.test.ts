import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import { api, holdUplink, jobDoc, startFaultFleet, startJob, waitFor } from "./fault-support";

/**
 * Asynchronous (FedBuff) rounds over the local stack: embedded IoT Hub, Azurite, the aggregation Function's handlers
 * and real device modules, unchanged. C = 4 devices train at all times and every K = 2 updates publish a version. One
 * device's uplink is down while it trains from version 0: its update waits in its update-queue (the cloud told the
 * queue round 1 is still accepted, so it keeps it) and, when the link comes back at version ≥ 2, is refused as too
 * stale (maxStaleness 1) and counted. The job is stopped while that happens (a stopped job still records what
 * arrives), so it cannot complete first; started again, it goes on to its last version.
 */
test("async job over IoT Hub: versions advance in buffers of K; a too-stale queued update is refused and counted", async () => {
  const f = await startFaultFleet(4, 20);
  try {
    const jobId = "async-fedbuff";
    const slow = f.deviceIds[0]!;
    const dev = f.device(slow);
    holdUplink(dev);
    await api(f.stack.host.url, "POST", "jobs", {
      jobId,
      modelSpec: f.data.spec,
      strategy: "fedavg",
      strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 10, lr: 0.05 }, seed: 7 },
      rounds: 6,
      roundDeadlineSeconds: 120,
      minCompletedFraction: 0.5,
      seed: 7,
      mode: "async",
      concurrency: 4,
      buffer: 2,
      maxStaleness: 1,
    });
    await startJob(f, jobId);
    const repo = new JobRepository(f.store);
    // The held device trained from version 0 (round 1) and queued its update.
    const queued = await waitFor(
      `an update of ${slow} in its outbox`,
      () => dev.queue.outbox.pending().find((u) => u.jobId === jobId && u.round === 1),
      60_000,
      50,
      f.logs,
    );
    // The three others carry the job to version 2 meanwhile.
    await waitFor(
      "version 2",
      async () => ((await jobDoc(f.store, jobId))?.currentRound ?? 0) >= 2,
      90_000,
      100,
      f.logs,
    );
    await api(f.stack.host.url, "POST", `jobs/${jobId}/stop`);
    const ingest = f.stack.aggregator.ingestor.counters;
    assert.equal(ingest.refused_stale, 0);
    // The link comes back: the queue resends, the cloud refuses the update as too stale and acknowledges it.
    assert.ok(f.stack.hub.disconnect(slow, "update-queue"), "the update-queue was connected");
    await waitFor(
      `the stale update of ${slow} to be acknowledged`,
      () => dev.queue.outbox.get(queued.updateId)?.state === "acked",
      60_000,
      50,
      f.logs,
    );
    await waitFor(
      "the refusal to be counted",
      async () => ((await repo.getAsync(jobId))?.engine.counters.refusedStale ?? 0) >= 1,
      30_000,
      100,
      f.logs,
    );
    assert.equal(ingest.refused_stale, 1);
    // Started again, the job completes its 6 versions.
    await startJob(f, jobId);
    const doc = await waitFor(
      `job ${jobId} to complete`,
      async () => {
        const d = await jobDoc(f.store, jobId);
        return d && d.status !== "running" ? d : undefined;
      },
      120_000,
      100,
      f.logs,
    );
    assert.equal(doc.status, "completed", doc.error);
    assert.deepEqual(
      doc.rounds.map((r) => r.round),
      [1, 2, 3, 4, 5, 6],
    );
    for (const r of doc.rounds) {
      assert.equal(r.status, "aggregated", JSON.stringify(r));
      assert.equal(r.async?.applied.length, 2);
      assert.ok(r.async!.staleness.every((t) => t >= 0 && t <= 1));
      assert.ok(!r.async!.applied.includes(slow) || r.round > 2);
    }
    // The job document is written before the engine's state takes the last flush: read the last record's counters.
    const counters = doc.rounds.at(-1)?.async?.counters;
    assert.equal(counters?.refusedStale, 1);
    assert.equal(counters?.applied, 12);
    assert.ok(await repo.getModel(jobId, 6), "version 6 published");
  } finally {
    await f.stack.close();
  }
}, 300_000);
