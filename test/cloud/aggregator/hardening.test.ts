/**
 * Issue 11 ("Hardening") on the aggregation Function: sample-count takeover, updates arriving while a job is
 * stopped, orphan chunks, stopping a job tells its devices, and a non-finite global model ends the job. The test
 * plays the devices through the ingest and the recording Fleet, and drives the clock and timer by hand.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { createStrategy } from "../../../core/strategies/registry";
import type { Strategy, StrategyOptions } from "../../../core/strategies/strategy";
import { JobRepository, paths } from "../../../cloud/aggregator/src/jobs/state";
import { Orchestrator } from "../../../cloud/aggregator/src/orchestrator";
import { createAggregator } from "../../../cloud/aggregator/src/aggregator";
import { MemoryBlobStore } from "../../../cloud/aggregator/src/store/blob-store";
import {
  chunkEvents,
  ctx,
  get,
  jobBody,
  makeDelta,
  post,
  RecordingFleet,
  startJob,
  world,
  SPEC,
  type World,
} from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const N = layout.totalSize;
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

function result(jobId: string, round: number, deviceId: string, numSamples: number, delta: Float32Array) {
  return {
    type: "result" as const,
    jobId,
    round,
    deviceId,
    layoutHash: layout.hash,
    numSamples,
    metrics: { loss: 1, accuracy: 0.5, trainMs: 10 },
    delta,
  };
}

async function send(w: World, jobId: string, round: number, deviceId: string, n: number, d: Float32Array) {
  const { events } = chunkEvents(result(jobId, round, deviceId, n, d), { maxChunkBytes: 97 });
  const r = await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
}

async function model(w: World, jobId: string, round: number): Promise<Float32Array> {
  const m = await new JobRepository(w.store).getModel(jobId, round);
  assert.ok(m, `model ${round} exists`);
  return m.weights;
}

// --- defect 5: a non-finite global model ends the job ---------------------------------------------------------

/** A strategy whose aggregation yields NaN (what a diverging optimizer or DP release would hand back). */
function nanFactory(name: string, opts: StrategyOptions): Strategy {
  const s = createStrategy(name, opts);
  return {
    name: s.name,
    initialize: (w) => s.initialize(w),
    get weights() {
      return s.weights;
    },
    configureFit: (r, a) => s.configureFit(r, a),
    exportState: () => s.exportState(),
    importState: (st) => s.importState(st),
    beginAggregate(round) {
      const inner = s.beginAggregate(round);
      return {
        add: (r) => inner.add(r),
        addAggregate: (a) => inner.addAggregate(a),
        get count() {
          return inner.count;
        },
        finish(failures) {
          const out = inner.finish(failures);
          const next = out.weights.slice();
          next[3] = Number.NaN;
          return { ...out, weights: next };
        },
      };
    },
  };
}

async function assertDiverged(w: World, id: string, round: number) {
  const job = await new JobRepository(w.store).getJob(id);
  assert.equal(job?.status, "failed");
  assert.equal(job?.stopReason, "diverged");
  assert.match(String(job?.stopMessage), new RegExp(`round ${round}`));
  assert.equal(job?.rounds.at(-1)?.code, "E_MODEL_DIVERGED");
  assert.equal(await w.store.exists(paths.model(id, round)), false, "the non-finite model is not published");
  assert.equal(await w.store.exists(paths.modelMeta(id, round)), false);
  assert.equal((await new JobRepository(w.store).getRound(id, round))?.status, "closed");
  const r = await w.agg.http.getJob(get(`/api/jobs/${id}`, { id }), ctx());
  const body = r.jsonBody as { status: string; stopReason: string; stopMessage: string };
  assert.equal(body.status, "failed");
  assert.equal(body.stopReason, "diverged");
  assert.match(body.stopMessage, new RegExp(`round ${round}`));
  // nothing more happens: no next round
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(await new JobRepository(w.store).getRound(id, round + 1), undefined);
}

for (const dp of [false, true]) {
  test(`a ${dp ? "DP" : "plain"} job whose aggregated model is not finite fails as "diverged", unpublished`, async () => {
    const w = world();
    const id = await startJob(w, {
      rounds: 3,
      ...(dp ? { differentialPrivacy: { noiseMultiplier: 0.1, clip: 1, delta: 1e-5 } } : {}),
    });
    const orch = new Orchestrator(
      { store: w.store, fleet: w.fleet, clock: () => w.now.t, log: (l) => w.logs.push(l) },
      { strategyFactory: nanFactory },
    );
    await orch.tick(w.now.t);
    for (const [i, dev] of ["dev-a", "dev-b", "dev-c"].entries())
      await send(w, id, 1, dev, 10, makeDelta(N, i + 1));
    w.now.t += 1000;
    const report = await orch.tick(w.now.t);
    assert.match(JSON.stringify(report), /failed: round 1/);
    await assertDiverged(w, id, 1);
  });
}

test("a stored global model with NaN (e.g. from before this check) fails the job as diverged, not a tick error loop", async () => {
  const w = world();
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  w0[0] = Number.POSITIVE_INFINITY;
  await w.store.put(paths.model(id, 0), new Uint8Array(w0.buffer));
  for (const [i, dev] of ["dev-a", "dev-b", "dev-c"].entries())
    await send(w, id, 1, dev, 10, makeDelta(N, i + 1));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  await assertDiverged(w, id, 1);
});

// --- defect 1: sample-count takeover ---------------------------------------------------------------------------

const HONEST = ["dev-a", "dev-b", "dev-c"];
const FOUR = { strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 } };

/** global + Σ n_k Δ_k / Σ n_k in float64. */
function fedavg(global: Float32Array, ups: { n: number; d: Float32Array }[]): Float64Array {
  const total = ups.reduce((s, u) => s + u.n, 0);
  const out = Float64Array.from(global);
  for (const u of ups) for (let i = 0; i < out.length; i++) out[i] += (u.n * u.d[i]) / total;
  return out;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/** Three honest devices (100 samples each) and `dev-x` claiming 2^53 samples with a far-off delta. */
async function takeoverRound(w: World, id: string) {
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  const honest = HONEST.map((dev, i) => ({ dev, n: 100, d: makeDelta(N, 40 + i) }));
  const evil = new Float32Array(N).fill(5);
  for (const u of honest) await send(w, id, 1, u.dev, u.n, u.d);
  await send(w, id, 1, "dev-x", 2 ** 53, evil);
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  const rec = (await new JobRepository(w.store).getJob(id))!.rounds[0];
  return { w0, honest, evil, rec, w1: await model(w, id, 1) };
}

test("a device claiming 2^53 samples is clipped to the count its trainer declared: it no longer dominates", async () => {
  const w = world([...HONEST, "dev-x"]); // every trainer reported numSamples 100
  const id = await startJob(w, FOUR);
  const { w0, honest, evil, rec, w1 } = await takeoverRound(w, id);
  // dev-x weighs like any other device: 100 of 400 samples
  assert.ok(maxDiff(w1, fedavg(w0, [...honest, { n: 100, d: evil }])) < 1e-6);
  // within bound of the honest mean: at most 1/4 of the distance to the attacker's update
  const honestMean = fedavg(w0, honest);
  assert.ok(maxDiff(w1, honestMean) <= 0.25 * 5.2 + 1e-6, `moved ${maxDiff(w1, honestMean)}`);
  assert.equal(rec.completed, 4);
  assert.equal(rec.sampleCountClipped, 1);
  assert.equal(rec.sampleCountRejected, 0);
  assert.ok(
    w.logs.some((l) =>
      /sample count clipped: 'dev-x' claims 9007199254740992 samples.*bound 100 \(declared\)/.test(l),
    ),
    w.logs.join("\n"),
  );
});

test("sampleCountPolicy reject: an undeclared device above the job's maxSamplesPerDevice is refused (E_ROUND_SAMPLES)", async () => {
  const w = world([...HONEST, "dev-x"]);
  w.fleet.trainers = w.fleet.trainers.map((t) =>
    t.deviceId === "dev-x" ? { deviceId: "dev-x", connected: true } : t,
  );
  const id = await startJob(w, { ...FOUR, maxSamplesPerDevice: 500, sampleCountPolicy: "reject" });
  const { w0, honest, rec, w1 } = await takeoverRound(w, id);
  assert.ok(maxDiff(w1, fedavg(w0, honest)) < 1e-6, "the honest mean");
  assert.equal(rec.completed, 3);
  assert.equal(rec.sampleCountRejected, 1);
  assert.equal(rec.sampleCountClipped, 0);
  assert.deepEqual(
    rec.failures.map((f) => [f.deviceId, f.code]),
    [["dev-x", "E_ROUND_SAMPLES"]],
  );
  assert.match(rec.failures[0].reason, /bound 500 \(job cap\)/);
});

test("nothing declared and no job cap: the default cap (100,000) bounds the claim", async () => {
  const w = world([...HONEST, "dev-x"]);
  w.fleet.trainers = w.fleet.trainers.map((t) => ({ deviceId: t.deviceId, connected: true }));
  const id = await startJob(w, FOUR);
  const job = await new JobRepository(w.store).getJob(id);
  assert.equal(job?.definition.maxSamplesPerDevice, 100_000);
  assert.equal(job?.definition.sampleCountPolicy, "clip");
  const { w0, honest, evil, rec, w1 } = await takeoverRound(w, id);
  assert.ok(maxDiff(w1, fedavg(w0, [...honest, { n: 100_000, d: evil }])) < 1e-5);
  assert.equal(rec.sampleCountClipped, 1);
});

test("maxSamplesPerDevice and sampleCountPolicy are validated like the other job fields (E_JOB_INVALID, one line)", async () => {
  const w = world();
  for (const over of [
    { maxSamplesPerDevice: 0 },
    { maxSamplesPerDevice: 1.5 },
    { maxSamplesPerDevice: "10" },
    { maxSamplesPerDevice: 2e9 },
    { sampleCountPolicy: "drop" },
    { sampleCountPolicy: 1 },
  ]) {
    const r = await w.agg.http.createJob(post("/api/jobs", jobBody(over)), ctx());
    assert.equal(r.status, 400, JSON.stringify(over));
    const body = r.jsonBody as { code: string; message: string };
    assert.equal(body.code, "E_JOB_INVALID");
    assert.match(body.message, /^(maxSamplesPerDevice|sampleCountPolicy) must be/);
    assert.ok(!body.message.includes("\n"));
  }
});

// --- defects 2 and 4: stopping and starting a job ---------------------------------------------------------------

async function stop(w: World, id: string) {
  const r = await w.agg.http.stopJob(post(`/api/jobs/${id}/stop`, undefined, { id }), ctx());
  assert.equal(r.status, 200, JSON.stringify(r.jsonBody));
}

async function start(w: World, id: string) {
  const r = await w.agg.http.startJob(post(`/api/jobs/${id}/start`, undefined, { id }), ctx());
  assert.equal(r.status, 200, JSON.stringify(r.jsonBody));
}

test("stop then start loses nothing: an update arriving while the job is stopped is kept and aggregated, not timed out", async () => {
  const w = world();
  const id = await startJob(w, { rounds: 2 });
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  const a = { n: 20, d: makeDelta(N, 61) };
  const b = { n: 30, d: makeDelta(N, 62) };
  await send(w, id, 1, "dev-b", b.n, b.d);
  await stop(w, id);
  // dev-a's update arrives while the job is stopped: acknowledged and kept
  const acks = w.fleet.acks.length;
  await send(w, id, 1, "dev-a", a.n, a.d);
  assert.equal(w.agg.ingestor.counters.late, 0);
  assert.equal(w.agg.ingestor.counters.updates_completed, 2);
  assert.equal(w.fleet.acks.length, acks + 1);
  // stopped for longer than the round's deadline: nothing moves meanwhile
  w.now.t += 120_000;
  await w.agg.roundTimer({}, ctxStub);
  const repo = new JobRepository(w.store);
  assert.equal((await repo.getRound(id, 1))?.status, "open");
  assert.equal((await repo.getJob(id))?.rounds.length, 0);
  // started again: the deadline moved by the time stopped, so the round still waits for dev-c
  await start(w, id);
  await w.agg.roundTimer({}, ctxStub);
  const st = await repo.getRound(id, 1);
  assert.equal(st?.status, "open");
  assert.equal(st?.paused, undefined);
  assert.deepEqual(Object.keys(st?.received ?? {}).sort(), ["dev-a", "dev-b"]);
  w.now.t += 61_000;
  await w.agg.roundTimer({}, ctxStub);
  const rec = (await repo.getJob(id))!.rounds[0];
  assert.equal(rec.completed, 2);
  assert.deepEqual(
    rec.failures.map((f) => [f.deviceId, f.code]),
    [["dev-c", "E_ROUND_TIMEOUT"]],
  );
  assert.ok(maxDiff(await model(w, id, 1), fedavg(w0, [a, b])) < 1e-6);
});

test("stopping a job tells its devices: abortRound and an idle trainer twin each; starting dispatches the round again", async () => {
  const w = world();
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  const repo = new JobRepository(w.store);
  const before = await repo.getRound(id, 1);
  const configured = w.fleet.configured.length;
  const started = w.fleet.started.length;
  w.now.t += 5_000;
  await stop(w, id);
  assert.deepEqual(w.fleet.aborted.map((x) => [x.deviceId, x.jobId, x.round]).sort(), [
    ["dev-a", id, 1],
    ["dev-b", id, 1],
    ["dev-c", id, 1],
  ]);
  assert.deepEqual(
    w.fleet.configured
      .slice(configured)
      .map((c) => [c.deviceId, c.desired])
      .sort(),
    [
      ["dev-a", null],
      ["dev-b", null],
      ["dev-c", null],
    ],
  );
  assert.deepEqual((await repo.getRound(id, 1))?.paused, { at: w.now.t, devicesReleased: true });
  const shown = await w.agg.http.getJob(get(`/api/jobs/${id}`, { id }), ctx());
  assert.deepEqual((shown.jsonBody as { currentRoundState: { paused: unknown } }).currentRoundState.paused, {
    at: w.now.t,
    devicesReleased: true,
  });
  // the update-queue keeps the round open (queued updates still come in and are kept)
  assert.ok(!w.fleet.openRounds.some((o) => o.round === null));
  // a tick while stopped does not tell them again
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(w.fleet.aborted.length, 3);
  // start: the twin carries the round again, with the deadline moved by the 30 s stopped
  w.now.t += 30_000;
  await start(w, id);
  await w.agg.roundTimer({}, ctxStub);
  const again = w.fleet.configured.slice(configured + 3);
  assert.deepEqual(
    again.map((c) => c.desired?.round),
    [1, 1, 1],
  );
  assert.equal(again[0].desired?.deadline, before!.deadline + 30_000);
  assert.equal(w.fleet.started.length, started + 3);
});

test("a stop whose devices were not told yet (status written, release not done) is finished by the timer", async () => {
  const w = world();
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  const repo = new JobRepository(w.store);
  await repo.updateJob(id, (cur) => ({ ...cur, status: "stopped" }));
  assert.equal(w.fleet.aborted.length, 0);
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(w.fleet.aborted.length, 3);
  assert.equal(w.fleet.configured.filter((c) => c.desired === null).length, 3);
  assert.equal((await repo.getRound(id, 1))?.paused?.devicesReleased, true);
});

// --- defect 3: orphan chunks -------------------------------------------------------------------------------------

test("orphan chunks are deleted when their round closes, counted in the round record and logged", async () => {
  const w = world();
  const id = await startJob(w, { rounds: 2 });
  await w.agg.roundTimer({}, ctxStub);
  // dev-a's update never completes: only its first two chunks arrive
  const { events } = chunkEvents(result(id, 1, "dev-a", 10, makeDelta(N, 71)), { maxChunkBytes: 97 });
  assert.ok(events.length > 3);
  assert.equal((await w.agg.ingestUpdates(events.slice(0, 2), ctxStub)).rejected, 0);
  for (const dev of ["dev-b", "dev-c"]) await send(w, id, 1, dev, 10, makeDelta(N, 72));
  const chunkDir = `jobs/${id}/rounds/1/chunks/`;
  assert.equal((await w.store.list(chunkDir)).length, 2);
  w.now.t += 61_000;
  await w.agg.roundTimer({}, ctxStub);
  assert.deepEqual(await w.store.list(chunkDir), []);
  const rec = (await new JobRepository(w.store).getJob(id))!.rounds[0];
  assert.equal(rec.completed, 2);
  assert.equal(rec.orphanChunksDeleted, 2);
  assert.equal(w.agg.orchestrator.counters.orphan_chunks_closed, 2);
  assert.ok(w.logs.some((l) => /round job-1\/1: deleted 2 orphan chunk\(s\)/.test(l)));
});

test("the timer's sweep deletes orphan chunks older than the max age, also of a round still open", async () => {
  const now = { t: 1_700_000_000_000 };
  const store = new MemoryBlobStore("memory://sweep", () => now.t);
  const fleet = new RecordingFleet();
  fleet.trainers = HONEST.map((deviceId) => ({ deviceId, connected: true, numSamples: 100 }));
  const logs: string[] = [];
  const services = { store, fleet, clock: () => now.t, log: (l: string) => logs.push(l) };
  const agg = createAggregator(services, { tickAfterIngest: false });
  const orch = new Orchestrator(services, { chunkMaxAgeMs: 3600_000, chunkSweepIntervalMs: 600_000 });
  const body = jobBody({ roundDeadlineSeconds: 7200 });
  assert.equal((await agg.http.createJob(post("/api/jobs", body), ctx())).status, 201);
  const id = String(body.jobId);
  assert.equal(
    (await agg.http.startJob(post(`/api/jobs/${id}/start`, undefined, { id }), ctx())).status,
    200,
  );
  await orch.tick(now.t);
  const { events } = chunkEvents(result(id, 1, "dev-a", 10, makeDelta(N, 81)), { maxChunkBytes: 97 });
  assert.equal((await agg.ingestUpdates(events.slice(0, 3), ctxStub)).rejected, 0);
  const chunkDir = `jobs/${id}/rounds/1/chunks/`;
  assert.equal((await store.list(chunkDir)).length, 3);
  now.t += 30 * 60_000; // 30 min old: kept
  await orch.tick(now.t);
  assert.equal((await store.list(chunkDir)).length, 3);
  now.t += 31 * 60_000; // 61 min old: swept, the round still open
  const report = await orch.tick(now.t);
  assert.deepEqual(await store.list(chunkDir), []);
  assert.equal(orch.counters.orphan_chunks_swept, 3);
  assert.match(JSON.stringify(report), /swept 3 orphan chunk\(s\) older than 60 min/);
  assert.ok(logs.some((l) => l === `job ${id}: swept 3 orphan chunk(s) older than 60 min`));
  assert.equal((await new JobRepository(store).getRound(id, 1))?.status, "open");
  // the update-queue resends the whole update: it completes as usual
  assert.equal((await agg.ingestUpdates(events, ctxStub)).rejected, 0);
  assert.ok((await new JobRepository(store).getRound(id, 1))?.received["dev-a"]);
});
