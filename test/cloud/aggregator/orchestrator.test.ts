import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { initialWeights, modelLayout } from "../../../core/engine/models";
import { decodeTensor, encodeTensor, parseCompression } from "../../../core/compress";
import { OnnxModel } from "../../../core/export/onnx-runtime";
import { JobRepository, paths } from "../../../cloud/aggregator/src/jobs/state";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { chunkEvents, makeDelta, sha256, shuffle, SPEC, startJob, world, type World } from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);

function result(
  jobId: string,
  round: number,
  deviceId: string,
  numSamples: number,
  delta: Float32Array,
  loss = 1,
) {
  return {
    type: "result" as const,
    jobId,
    round,
    deviceId,
    layoutHash: layout.hash,
    numSamples,
    metrics: { loss, accuracy: 0.5, trainMs: 10 },
    delta,
  };
}

async function send(
  w: World,
  jobId: string,
  round: number,
  deviceId: string,
  n: number,
  delta: Float32Array,
) {
  const { events } = chunkEvents(result(jobId, round, deviceId, n, delta), { maxChunkBytes: 97 });
  const r = await w.agg.ingestUpdates(shuffle(events, n), ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
}

const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

async function model(w: World, jobId: string, round: number): Promise<Float32Array> {
  const m = await new JobRepository(w.store).getModel(jobId, round);
  assert.ok(m, `model ${round} exists`);
  return m.weights;
}

/** FedAvg by hand, in float64: global + Σ n_k Δ_k / Σ n_k. */
function fedavg(global: Float32Array, ups: { n: number; d: Float32Array }[]): Float64Array {
  const total = ups.reduce((s, u) => s + u.n, 0);
  const out = Float64Array.from(global);
  for (const u of ups) for (let i = 0; i < out.length; i++) out[i] += (u.n * u.d[i]) / total;
  return out;
}

function assertClose(a: Float32Array, b: Float64Array) {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  assert.ok(worst < 1e-6, `max |diff| ${worst}`);
}

test("a round end to end: publish, dispatch, ingest chunked frames, aggregate = hand-computed FedAvg", async () => {
  const w = world();
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);

  // round 1 is open: initial model published, every trainer configured and started
  const w0 = await model(w, id, 0);
  assert.deepEqual(w0, initialWeights(SPEC as unknown as ModelSpec, 1));
  const st = await new JobRepository(w.store).getRound(id, 1);
  assert.equal(st?.status, "open");
  assert.equal(st?.dispatched, true);
  assert.deepEqual(st?.participants.map((p) => p.deviceId).sort(), ["dev-a", "dev-b", "dev-c"]);
  assert.equal(w.fleet.configured.length, 3);
  assert.equal(w.fleet.started.length, 3);
  const desired = w.fleet.configured[0].desired;
  assert.equal(desired?.round, 1);
  assert.equal(desired?.modelSha256, sha256(new Uint8Array(w0.buffer)));
  assert.equal(desired?.layoutHash, layout.hash);
  assert.equal(desired?.deadline, w.now.t + 60_000);
  assert.match(String(desired?.modelUrl), /jobs\/job-1\/models\/0\.f32/);
  // One order per device: the trainer twin only (no startRound call; round 1 leaves no stale update to drop).
  assert.deepEqual(w.fleet.startCalls, []);
  assert.deepEqual(w.fleet.openRounds, []);

  // a tick with nothing arrived changes nothing
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  assert.equal((await new JobRepository(w.store).getRound(id, 1))?.status, "open");

  const ups = [
    { dev: "dev-a", n: 10, d: makeDelta(layout.totalSize, 1) },
    { dev: "dev-b", n: 30, d: makeDelta(layout.totalSize, 2) },
    { dev: "dev-c", n: 60, d: makeDelta(layout.totalSize, 3) },
  ];
  for (const u of ups) await send(w, id, 1, u.dev, u.n, u.d);
  assert.equal(w.agg.ingestor.counters.updates_completed, 3);
  assert.equal(w.fleet.acks.length, 3);

  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  assertClose(await model(w, id, 1), fedavg(w0, ups));

  const job = await new JobRepository(w.store).getJob(id);
  assert.equal(job?.rounds.length, 1);
  const rec = job!.rounds[0];
  assert.equal(rec.status, "aggregated");
  assert.equal(rec.completed, 3);
  assert.equal(rec.participants, 3);
  assert.deepEqual(rec.failures, []);
  assert.equal(rec.trainLoss, 1);
  assert.ok(rec.bytesReceived > layout.totalSize * 4 * 3);
  assert.equal(rec.modelSha256, sha256(new Uint8Array((await model(w, id, 1)).buffer)));
  // the next round opened in the same tick, from model 1
  assert.equal(job?.currentRound, 2);
  const r2 = w.fleet.configured.filter((c) => c.desired?.round === 2);
  assert.equal(r2.length, 3);
  assert.equal(r2[0].desired?.modelSha256, rec.modelSha256);
  // the chunks were cleaned up, the frames kept
  assert.deepEqual(await w.store.list(`jobs/${id}/rounds/1/chunks/`), []);
  assert.equal((await w.store.list(`jobs/${id}/rounds/1/updates/`)).length, 3);
});

test("the deadline closes a round with what arrived (quorum recorded); an empty round fails and the job goes on", async () => {
  const w = world();
  const id = await startJob(w, { rounds: 2 });
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  const ups = [
    { dev: "dev-a", n: 5, d: makeDelta(layout.totalSize, 11) },
    { dev: "dev-c", n: 15, d: makeDelta(layout.totalSize, 12) },
  ];
  for (const u of ups) await send(w, id, 1, u.dev, u.n, u.d);
  w.now.t += 59_000;
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(
    (await new JobRepository(w.store).getRound(id, 1))?.status,
    "open",
    "before the deadline: waits",
  );
  w.now.t += 1_001;
  await w.agg.roundTimer({}, ctxStub);
  assertClose(await model(w, id, 1), fedavg(w0, ups));
  let job = await new JobRepository(w.store).getJob(id);
  const rec = job!.rounds[0];
  assert.equal(rec.completed, 2);
  assert.equal(rec.belowQuorum, false, "2 of 3 ≥ ceil(0.6 × 3)");
  assert.deepEqual(
    rec.failures.map((f) => [f.deviceId, f.code]),
    [["dev-b", "E_ROUND_TIMEOUT"]],
  );
  // Round 2's orders: the update-queue's openRounds only for dev-b, which may still hold round 1's update.
  assert.equal(w.fleet.configured.filter((c) => c.desired?.round === 2).length, 3);
  assert.deepEqual(
    w.fleet.openRounds.map((o) => [o.deviceId, o.jobId, o.round]),
    [["dev-b", id, 2]],
  );

  // dev-b's late update is refused as late (and acknowledged so its queue drops it)
  const acks = w.fleet.acks.length;
  const { events } = chunkEvents(result(id, 1, "dev-b", 9, makeDelta(layout.totalSize, 13)));
  await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(w.agg.ingestor.counters.late, 1);
  assert.equal(w.fleet.acks.length, acks + 1);

  // round 2: nobody answers → failed round, model unchanged, job completes (rounds: 2)
  w.now.t += 61_000;
  await w.agg.roundTimer({}, ctxStub);
  job = await new JobRepository(w.store).getJob(id);
  assert.equal(job?.rounds[1].status, "failed");
  assert.equal(job?.rounds[1].completed, 0);
  assert.deepEqual(await model(w, id, 2), await model(w, id, 1));
  assert.equal(job?.status, "completed");
});

test("capability filter and connection state select the participants", async () => {
  const w = world();
  w.fleet.trainers = [
    { deviceId: "fast", connected: true, numSamples: 1000, samplesPerSecond: { mlp: 1000 } },
    { deviceId: "slow", connected: true, numSamples: 1000, samplesPerSecond: { mlp: 10 } }, // 100 s > 60 s
    { deviceId: "unprofiled", connected: true },
    { deviceId: "offline", connected: false, samplesPerSecond: { mlp: 1e6 } },
  ];
  const id = await startJob(w, {
    strategyOptions: { clientsPerRound: 10, fit: { epochs: 1, batchSize: 8, lr: 0.1 } },
  });
  await w.agg.roundTimer({}, ctxStub);
  const st = await new JobRepository(w.store).getRound(id, 1);
  assert.deepEqual(st?.participants.map((p) => p.deviceId).sort(), ["fast", "unprofiled"]);
});

test("no eligible trainer: the round waits, and opens once one connects", async () => {
  const w = world([]);
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(await new JobRepository(w.store).getRound(id, 1), undefined);
  w.fleet.trainers = [{ deviceId: "late-comer", connected: true }];
  await w.agg.roundTimer({}, ctxStub);
  assert.deepEqual(
    (await new JobRepository(w.store).getRound(id, 1))?.participants.map((p) => p.deviceId),
    ["late-comer"],
  );
});

test("restart-resume: a new orchestrator over the same store finishes the round, also from a crash mid-close", async () => {
  const w = world();
  const id = await startJob(w, { rounds: 2 });
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  const ups = [
    { dev: "dev-a", n: 7, d: makeDelta(layout.totalSize, 21) },
    { dev: "dev-b", n: 8, d: makeDelta(layout.totalSize, 22) },
    { dev: "dev-c", n: 9, d: makeDelta(layout.totalSize, 23) },
  ];
  await send(w, id, 1, ups[0].dev, ups[0].n, ups[0].d);
  w.restart(); // the Function host recycled: nothing in memory survives
  await send(w, id, 1, ups[1].dev, ups[1].n, ups[1].d);
  await send(w, id, 1, ups[2].dev, ups[2].n, ups[2].d);
  await w.agg.roundTimer({}, ctxStub);
  assertClose(await model(w, id, 1), fedavg(w0, ups));

  // round 2: all updates in; simulate a crash after the round was frozen as `closing`
  const w1 = await model(w, id, 1);
  const ups2 = ups.map((u, i) => ({ ...u, d: makeDelta(layout.totalSize, 31 + i) }));
  for (const u of ups2) await send(w, id, 2, u.dev, u.n, u.d);
  const repo = new JobRepository(w.store);
  await repo.updateRound(id, 2, (cur) => ({ ...cur, status: "closing" }));
  // ...and after the model was written with garbage (a torn earlier attempt): the resume rewrites it
  await w.store.put(paths.model(id, 2), new Uint8Array(8));
  w.restart();
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  assertClose(await model(w, id, 2), fedavg(w1, ups2));
  const job = await repo.getJob(id);
  assert.equal(job?.status, "completed");
  assert.deepEqual(
    job?.rounds.map((r) => [r.round, r.completed]),
    [
      [1, 3],
      [2, 3],
    ],
  );
  // ticking again is a no-op
  await w.agg.roundTimer({}, ctxStub);
  assert.equal((await repo.getJob(id))?.rounds.length, 2);
});

test("a stopped job does not advance, and keeps the updates that arrive for its open round", async () => {
  const w = world();
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  const { events } = chunkEvents(result(id, 1, "dev-a", 3, makeDelta(layout.totalSize, 5)));
  const stop = await w.agg.http.stopJob(
    { params: { id }, method: "POST", url: "http://x" } as never,
    { error() {} } as never,
  );
  assert.equal(stop.status, 200);
  await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(w.agg.ingestor.counters.late, 0, "acknowledged, so kept for when the job starts again");
  assert.equal(w.agg.ingestor.counters.updates_completed, 1);
  w.now.t += 120_000;
  await w.agg.roundTimer({}, ctxStub);
  const st = await new JobRepository(w.store).getRound(id, 1);
  assert.equal(st?.status, "open");
  assert.ok(st?.received["dev-a"]);
});

test("a compressed job: quantizers configured, int8 model envelope + ONNX files published, compressed updates aggregated", async () => {
  const w = world();
  const id = await startJob(w, { compression: "topk:0.5+int8", downlinkCompression: "int8" });
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  // Every participant's quantizer learns the job's codec.
  assert.deepEqual(w.fleet.quantizers.map((q) => [q.deviceId, q.jobId, q.compression]).sort(), [
    ["dev-a", id, "topk:0.5+int8"],
    ["dev-b", id, "topk:0.5+int8"],
    ["dev-c", id, "topk:0.5+int8"],
  ]);
  // ... and the job's layout: its hash and tensor sizes (per-tensor codecs need them, core/round/update-pipeline.ts).
  for (const q of w.fleet.quantizers)
    assert.deepEqual(q.layout, { layoutHash: layout.hash, segments: layout.entries.map((e) => e.size) });
  // The round order points at the compressed model, with the envelope's own sha256.
  const desired = w.fleet.configured[0].desired!;
  assert.equal(desired.modelEncoding, "flz");
  assert.match(desired.modelUrl, /models\/0\.flz/);
  const env = await w.store.get(paths.modelEncoded(id, 0));
  assert.ok(env);
  assert.equal(desired.modelSha256, sha256(env.bytes));
  const decoded = decodeTensor(env.bytes, { layoutHash: layout.hash, length: layout.totalSize });
  for (let i = 0; i < w0.length; i++) assert.ok(Math.abs(decoded[i] - w0[i]) < 0.01, `w0[${i}]`);
  // ONNX files of the model, named in the order with their hashes; both load in onnxruntime.
  const fp32 = await w.store.get(paths.modelOnnx(id, 0, "fp32"));
  const int8 = await w.store.get(paths.modelOnnx(id, 0, "int8"));
  assert.ok(fp32 && int8);
  assert.equal(desired.onnx?.sha256, sha256(fp32.bytes));
  assert.equal(desired.onnx?.int8Sha256, sha256(int8.bytes));
  for (const f of [fp32, int8]) await (await OnnxModel.load(f.bytes)).close();

  const spec = parseCompression("topk:0.5+int8");
  const ups = [
    { dev: "dev-a", n: 10, d: makeDelta(layout.totalSize, 1) },
    { dev: "dev-b", n: 30, d: makeDelta(layout.totalSize, 2) },
    { dev: "dev-c", n: 60, d: makeDelta(layout.totalSize, 3) },
  ].map((u, i) => {
    const bytes = encodeTensor(u.d, spec, { layoutHash: layout.hash, seed: i });
    return { ...u, bytes, d: decodeTensor(bytes) };
  });
  // An envelope of another layout is refused at ingest (its frame header claims the job's layout).
  const alien = encodeTensor(ups[0].d, spec, { layoutHash: "ef".repeat(32), seed: 0 });
  const bad = chunkEvents({
    ...result(id, 1, "dev-a", 10, ups[0].d),
    delta: { encoding: "flz", bytes: alien },
  });
  assert.equal((await w.agg.ingestUpdates(bad.events, ctxStub)).rejected, 1);
  let frameBytes = 0;
  for (const u of ups) {
    const { events, frame } = chunkEvents({
      ...result(id, 1, u.dev, u.n, u.d),
      delta: { encoding: "flz", bytes: u.bytes },
    });
    assert.equal((await w.agg.ingestUpdates(events, ctxStub)).rejected, 0, w.logs.join("\n"));
    frameBytes += frame.byteLength;
  }
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  assertClose(await model(w, id, 1), fedavg(w0, ups));
  const rec = (await new JobRepository(w.store).getJob(id))!.rounds[0];
  assert.equal(rec.completed, 3);
  // Round 2 is ordered; the quantizers already hold the job's codec: configured once per job, not per round.
  assert.equal(w.fleet.configured.filter((c) => c.desired?.round === 2).length, 3);
  assert.equal(w.fleet.quantizers.length, 3);
  // Likewise the profilers learn the job's model (SPEC is not mlp's default spec) once per job, not per round.
  assert.deepEqual(w.fleet.profilers.map((p) => [p.deviceId, p.modelKey, p.spec]).sort(), [
    ["dev-a", "mlp", SPEC],
    ["dev-b", "mlp", SPEC],
    ["dev-c", "mlp", SPEC],
  ]);
  // What was received is exactly the compressed frames.
  assert.equal(rec.bytesReceived, frameBytes);
  const meta = await new JobRepository(w.store).getModelMeta(id, 1);
  assert.equal(meta?.downlink?.spec, "int8");
  assert.ok(meta?.onnx && meta.onnx.int8.sha256 !== meta.onnx.fp32.sha256, "model 1 has both ONNX files");
});

test("at the end of a compressed job every participant's quantizer is told to drop the job", async () => {
  const w = world();
  const id = await startJob(w, { compression: "int8", rounds: 1 });
  await w.agg.roundTimer({}, ctxStub);
  for (const dev of ["dev-a", "dev-b", "dev-c"])
    await send(w, id, 1, dev, 10, makeDelta(layout.totalSize, 4));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  assert.equal((await new JobRepository(w.store).getJob(id))?.status, "completed");
  assert.deepEqual(
    w.fleet.quantizers
      .filter((q) => q.compression === null)
      .map((q) => q.deviceId)
      .sort(),
    ["dev-a", "dev-b", "dev-c"],
  );
});

test("a job with an invalid codec is refused with E_JOB_COMPRESSION", async () => {
  const w = world();
  for (const over of [{ compression: "topk:2" }, { downlinkCompression: "topk:0.1" }, { compression: 5 }]) {
    await assert.rejects(startJob(w, over), /E_JOB_COMPRESSION/);
  }
});

test("a round's wall time includes its aggregation and publishing, and the next round opens when it is opened", async () => {
  const w = world();
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  const repo = new JobRepository(w.store);
  const opened = (await repo.getRound(id, 1))!.openedAt;
  for (const [i, dev] of ["dev-a", "dev-b", "dev-c"].entries())
    await send(w, id, 1, dev, 10 + i, makeDelta(layout.totalSize, i + 1));
  // Publishing model 1 takes 5 s on this clock (a large model, a slow store).
  const put = w.store.put.bind(w.store);
  w.store.put = async (name, bytes, opts) => {
    if (name === paths.model(id, 1)) w.now.t += 5_000;
    return put(name, bytes, opts);
  };
  const tickAt = w.now.t;
  await w.agg.roundTimer({}, ctxStub);
  const job = await repo.getJob(id);
  const r1 = job!.rounds.find((r) => r.round === 1)!;
  assert.equal(r1.closedAt, tickAt + 5_000, "closed once its model is published");
  assert.equal(r1.durationMs, tickAt + 5_000 - opened);
  const st2 = await repo.getRound(id, 2);
  assert.ok(st2, "round 2 opened in the same tick");
  assert.ok(st2.openedAt >= r1.closedAt, `round 2 opened at ${st2.openedAt}, before round 1 closed`);
});
