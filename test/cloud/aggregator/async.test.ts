import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { validateJob } from "../../../cloud/aggregator/src/jobs/job";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import { selectionPaths, type DeviceLease } from "../../../cloud/aggregator/src/selection";
import { getJson } from "../../../cloud/aggregator/src/store/blob-store";
import {
  chunkEvents,
  ctx,
  jobBody,
  lineTrainer,
  makeDelta,
  post,
  SPEC,
  startJob,
  world,
  type World,
} from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

async function send(w: World, jobId: string, round: number, deviceId: string, n: number, seed: number) {
  const msg = {
    type: "result" as const,
    jobId,
    round,
    deviceId,
    layoutHash: layout.hash,
    numSamples: n,
    metrics: { loss: 1, accuracy: 0.5, trainMs: 10 },
    delta: makeDelta(layout.totalSize, seed),
  };
  const { events } = chunkEvents(msg, { maxChunkBytes: 200 });
  return w.agg.ingestUpdates(events, ctxStub);
}

async function model(w: World, id: string, v: number): Promise<Float32Array> {
  const m = await new JobRepository(w.store).getModel(id, v);
  assert.ok(m, `model ${v} exists`);
  return m.weights;
}

/** Devices ordered so far with `round`, in order. */
const orderedFor = (w: World, round: number) =>
  w.fleet.configured.filter((c) => c.desired?.round === round).map((c) => c.deviceId);

test("job definitions: mode async with its options, defaults, and the refusals", () => {
  const d = validateJob(jobBody({ mode: "async", buffer: 2, maxStaleness: 1, staleness: "hinge:10,4" }));
  assert.equal(d.mode, "async");
  assert.deepEqual(d.async, { concurrency: 3, buffer: 2, maxStaleness: 1, staleness: "hinge:10,4" });
  assert.deepEqual(validateJob(jobBody({ mode: "async" })).async, {
    concurrency: 3,
    buffer: 2,
    maxStaleness: 4,
    staleness: "poly:0.5",
  });
  assert.equal(validateJob(jobBody()).mode, undefined);
  const bad: [Record<string, unknown>, string][] = [
    [{ mode: "fast" }, "E_JOB_INVALID"],
    [{ buffer: 2 }, "E_JOB_INVALID"], // async options on a sync job
    [{ mode: "async", buffer: 0 }, "E_JOB_INVALID"],
    [{ mode: "async", maxStaleness: -1 }, "E_JOB_INVALID"],
    [{ mode: "async", staleness: "exp:2" }, "E_JOB_INVALID"],
    [{ mode: "async", staleness: 3 }, "E_JOB_INVALID"],
    [{ mode: "async", secureAggregation: true }, "E_ASYNC_SECAGG"],
    [{ mode: "async", differentialPrivacy: { noiseMultiplier: 1, clip: 1, delta: 1e-5 } }, "E_JOB_DP"],
  ];
  for (const [over, code] of bad)
    assert.throws(() => validateJob(jobBody(over)), { code }, JSON.stringify(over));
});

test("secure aggregation with mode async is refused at job creation (400 E_ASYNC_SECAGG)", async () => {
  const w = world();
  const r = await w.agg.http.createJob(
    post("/api/jobs", jobBody({ mode: "async", secureAggregation: true })),
    ctx(),
  );
  assert.equal(r.status, 400);
  assert.equal((r.jsonBody as { code: string }).code, "E_ASYNC_SECAGG");
});

test("an async job: C devices train, every K updates publish a version, a too-stale update is refused and counted", async () => {
  const w = world(["dev-a", "dev-b", "dev-c", "dev-d"]);
  const id = await startJob(w, { mode: "async", rounds: 3, buffer: 2, maxStaleness: 1 });
  const repo = new JobRepository(w.store);
  await w.agg.roundTimer({}, ctxStub);
  // version 0 published, C = 3 devices ordered as round 1 (they train from model 0)
  const first = orderedFor(w, 1);
  assert.equal(first.length, 3);
  assert.match(String(w.fleet.configured[0]!.desired?.modelUrl), /models\/0\.f32/);
  // every ordered device's update-queue keeps rounds ≥ the oldest still accepted (version 0 → round 1)
  assert.deepEqual(
    w.fleet.openRounds.map((o) => [o.deviceId, o.round]),
    first.map((d) => [d, 1]),
  );
  const [s1, s2, straggler] = first as [string, string, string];
  const w0 = await model(w, id, 0);

  // two updates fill the buffer: version 1 = w0 + the sample-weighted mean (τ = 0, s = 1)
  for (const [dev, n, seed] of [
    [s1, 10, 1],
    [s2, 30, 2],
  ] as const)
    assert.equal((await send(w, id, 1, dev, n, seed)).rejected, 0, w.logs.join("\n"));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  const w1 = await model(w, id, 1);
  const d1 = makeDelta(layout.totalSize, 1);
  const d2 = makeDelta(layout.totalSize, 2);
  for (let i = 0; i < w1.length; i++)
    assert.ok(Math.abs(w1[i]! - (w0[i]! + (10 * d1[i]! + 30 * d2[i]!) / 40)) < 1e-6, `[${i}]`);
  let job = await repo.getJob(id);
  assert.equal(job?.currentRound, 1);
  assert.deepEqual(job?.rounds[0]?.async?.staleness, [0, 0]);
  // two free slots refilled from version 1 (round 2); the straggler is still in flight
  const second = orderedFor(w, 2);
  assert.equal(second.length, 2);
  assert.ok(!second.includes(straggler));

  // version 2 from the round-2 updates
  for (const [i, dev] of second.entries())
    assert.equal((await send(w, id, 2, dev, 20, 10 + i)).rejected, 0, w.logs.join("\n"));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  job = await repo.getJob(id);
  assert.equal(job?.currentRound, 2);
  assert.deepEqual(job?.rounds[1]?.async?.applied.length, 2);
  // later orders tell the update-queues the oldest round still accepted: version 2 − maxStaleness 1 → round 2
  assert.ok(w.fleet.openRounds.some((o) => o.round === 2));

  // the straggler trained from version 0: at version 2, τ = 2 > maxStaleness 1 → refused (E_ASYNC_STALE), counted
  const r = await send(w, id, 1, straggler, 50, 99);
  assert.equal(r.rejected, 1);
  assert.equal(w.agg.ingestor.counters.refused_stale, 1);
  assert.ok(
    w.fleet.acks.some((a) => a.deviceId === straggler),
    "acknowledged so the queue lets it go",
  );
  const st = await repo.getAsync(id);
  assert.equal(st?.engine.counters.refusedStale, 1);
  assert.ok(!st?.engine.entries.some((e) => e.deviceId === straggler));
  assert.deepEqual(await w.store.list(`jobs/${id}/async/updates/`), []);
});

test("an async job completes after `rounds` versions", async () => {
  const w = world(["dev-a", "dev-b", "dev-c"]);
  const id = await startJob(w, { mode: "async", rounds: 2, concurrency: 2, buffer: 1 });
  const repo = new JobRepository(w.store);
  for (let v = 0; v < 2; v++) {
    await w.agg.roundTimer({}, ctxStub);
    const dev = orderedFor(w, v + 1)[0]!;
    assert.equal((await send(w, id, v + 1, dev, 10, v + 1)).rejected, 0, w.logs.join("\n"));
    w.now.t += 1000;
  }
  await w.agg.roundTimer({}, ctxStub);
  const job = await repo.getJob(id);
  assert.equal(job?.status, "completed");
  assert.deepEqual(
    job?.rounds.map((r) => r.round),
    [1, 2],
  );
  assert.ok(await model(w, id, 2));
});

test("an async job orders through its selector and cohort, leases its devices against other jobs, and releases them when aggregated", async () => {
  const w = world([]);
  w.fleet.trainers = [
    lineTrainer("a-1", "a"),
    lineTrainer("s-1", "shared"),
    lineTrainer("s-2", "shared"),
    lineTrainer("b-1", "b"),
    lineTrainer("b-2", "b"),
    lineTrainer("c-1", "c"),
  ];
  const asyncJob = await startJob(w, {
    jobId: "job-async",
    mode: "async",
    rounds: 3,
    concurrency: 3,
    buffer: 2,
    selection: "oort",
    strategyOptions: { clientsPerRound: 3, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 3 },
    cohort: "tags.flotilla.line IN ['a', 'shared']",
  });
  const syncJob = await startJob(w, {
    jobId: "job-sync",
    rounds: 2,
    strategyOptions: { clientsPerRound: 10, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 3 },
    cohort: "tags.flotilla.line IN ['b', 'shared']",
  });
  await w.agg.roundTimer({}, ctxStub);
  assert.ok(
    w.fleet.cohorts.includes("tags.flotilla.line IN ['a', 'shared']"),
    "the async job queried its cohort",
  );
  const ordered = w.fleet.configured
    .filter((c) => c.desired?.jobId === asyncJob)
    .map((c) => c.deviceId)
    .sort();
  assert.deepEqual(ordered, ["a-1", "s-1", "s-2"], "the async job's cohort, C = 3");
  for (const id of ordered) {
    const l = (await getJson<DeviceLease>(w.store, selectionPaths.lease(id)))?.value;
    assert.equal(l?.jobId, asyncJob);
    assert.equal(l?.async, true);
  }
  const st = await new JobRepository(w.store).getRound(syncJob, 1);
  assert.deepEqual(
    st?.participants.map((p) => p.deviceId).sort(),
    ["b-1", "b-2"],
    "the sync job gets only the devices the async job does not hold",
  );
  const h1 = await getJson<{ devices: Record<string, { selected: number }> }>(
    w.store,
    selectionPaths.history(asyncJob),
  );
  assert.deepEqual(
    Object.keys(h1?.value.devices ?? {}).sort(),
    ordered,
    "picks recorded in the job's history",
  );

  // two updates fill the buffer: version 1 is published, the two devices' leases are released, completions counted
  for (const [i, d] of ["s-1", "a-1"].entries())
    assert.equal((await send(w, asyncJob, 1, d, 20, 40 + i)).rejected, 0, w.logs.join("\n"));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  assert.equal((await new JobRepository(w.store).getJob(asyncJob))?.currentRound, 1);
  const h2 = await getJson<{ devices: Record<string, { completions: number }> }>(
    w.store,
    selectionPaths.history(asyncJob),
  );
  assert.equal(h2?.value.devices["s-1"]?.completions, 1);
  assert.equal(h2?.value.devices["a-1"]?.completions, 1);
  const s1 = (await getJson<DeviceLease>(w.store, selectionPaths.lease("s-1")))?.value;
  assert.ok(s1 === undefined || s1.round !== 1 || s1.jobId !== asyncJob, "s-1's round-1 lease is released");
  assert.equal((await getJson<DeviceLease>(w.store, selectionPaths.lease("s-2")))?.value?.jobId, asyncJob);
});

test("an async job never orders a device its policy excludes; the version record counts the exclusions", async () => {
  const w = world(["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"]);
  w.fleet.trainers = w.fleet.trainers.map((t) =>
    t.deviceId === "dev-b" || t.deviceId === "dev-d" ? { ...t, policy: { enabled: false } } : t,
  );
  const id = await startJob(w, { mode: "async", rounds: 1, concurrency: 5, buffer: 2 });
  await w.agg.roundTimer({}, ctxStub);
  const first = orderedFor(w, 1);
  assert.deepEqual([...first].sort(), ["dev-a", "dev-c", "dev-e"]);
  assert.ok(
    w.logs.some(
      (l) =>
        l ===
        `async ${id}/1: device dev-b not ordered: policy disabled: participation is disabled by the operator`,
    ),
  );
  for (const [i, dev] of first.slice(0, 2).entries())
    assert.equal((await send(w, id, 1, dev, 10, i + 1)).rejected, 0, w.logs.join("\n"));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  const job = await new JobRepository(w.store).getJob(id);
  assert.equal(job?.rounds[0]?.round, 1);
  assert.deepEqual(job?.rounds[0]?.policyExcluded, { disabled: 2 });
  assert.equal(job?.rounds[0]?.candidates, 3);
  assert.ok(!w.fleet.started.some((s) => s.deviceId === "dev-b" || s.deviceId === "dev-d"));
});
