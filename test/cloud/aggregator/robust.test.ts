/**
 * Robust aggregation in the Function (docs/robustness.md, "In the Function"): the job's `aggregator` member checked
 * when the job is created (HTTP 400, one line), and the rule applied to a sync round and an async flush through the
 * one aggregation chain (core/round/aggregation.ts), with its report in the round record.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { centeredClip } from "../../../core/robust/rules";
import { DEFAULT_AGGREGATOR, formatAggregator, parseAggregator } from "../../../core/robust/spec";
import { DEFAULT_ROBUST_MAX_BYTES } from "../../../cloud/aggregator/src/jobs/job";
import { JobRepository, type RoundRecord } from "../../../cloud/aggregator/src/jobs/state";
import { robustMaxBytesFromEnv } from "../../../cloud/aggregator/src/aggregator";
import { roundEventFields } from "../../../cloud/aggregator/src/telemetry";
import {
  chunkEvents,
  ctx,
  get,
  jobBody,
  makeDelta,
  post,
  SPEC,
  startJob,
  world,
  type World,
} from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;
const keys = { identityKeys: { getPublicKey: () => Promise.reject(new Error("not used")) } };

async function create(w: World, over: Record<string, unknown>) {
  const r = await w.agg.http.createJob(post("/api/jobs", jobBody(over)), ctx());
  return {
    status: r.status,
    body: r.jsonBody as { code?: string; message?: string; definition?: { aggregator?: string } },
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
  const msg = {
    type: "result" as const,
    jobId,
    round,
    deviceId,
    layoutHash: layout.hash,
    numSamples: n,
    metrics: { loss: 1, accuracy: 0.5, trainMs: 10 },
    delta,
  };
  const r = await w.agg.ingestUpdates(chunkEvents(msg, { maxChunkBytes: 400 }).events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
}

async function model(w: World, id: string, v: number): Promise<Float32Array> {
  const m = await new JobRepository(w.store).getModel(id, v);
  assert.ok(m, `model ${v} exists`);
  return m.weights;
}

const maxAbs = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
};

/** The unweighted mean of some deltas. */
function mean(ds: Float32Array[]): Float64Array {
  const out = new Float64Array(ds[0]!.length);
  for (const d of ds) for (let i = 0; i < out.length; i++) out[i] += d[i]! / ds.length;
  return out;
}

const devices = ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"];
const scaled = (d: Float32Array, k: number) => Float32Array.from(d, (x) => x * k);

test("the job's aggregator: canonical text kept, bad specs and conflicts are one-line 400s", async () => {
  const w = world(devices, keys);
  const ok = await create(w, { jobId: "a", aggregator: " Trimmed-Mean:0.2 " });
  assert.equal(ok.status, 201, JSON.stringify(ok.body));
  assert.equal(ok.body.definition?.aggregator, "trimmed-mean:0.2");
  const dflt = await create(w, { jobId: "b", aggregator: "default" });
  assert.equal(dflt.body.definition?.aggregator, formatAggregator(parseAggregator(DEFAULT_AGGREGATOR)));
  const none = await create(w, { jobId: "c" });
  assert.equal(none.body.definition?.aggregator, undefined);
  // The plain mean and a device-side bound are fine with secure aggregation.
  const sec = {
    strategyOptions: { clientsPerRound: 3, fit: { epochs: 1, batchSize: 8, lr: 0.1 } },
    secureAggregation: true,
  };
  assert.equal((await create(w, { jobId: "d", aggregator: "norm:2+mean", ...sec })).status, 201);
  assert.equal((await create(w, { jobId: "e", aggregator: "mean", ...sec })).status, 201);
  const dp = { differentialPrivacy: { noiseMultiplier: 1, clip: 1, delta: 1e-5 } };
  const bad: [Record<string, unknown>, string, RegExp][] = [
    [{ aggregator: "medianish" }, "E_CONFIG_AGGREGATOR", /unknown rule 'medianish'/],
    [{ aggregator: "krum:0.7" }, "E_CONFIG_AGGREGATOR", /fraction must be in/],
    [{ aggregator: 3 }, "E_CONFIG_AGGREGATOR", /must be a spec string/],
    [{ aggregator: "median", ...sec }, "E_CONFIG_CONFLICT", /secure aggregation/],
    [{ aggregator: "norm:q0.5+mean", ...sec }, "E_CONFIG_CONFLICT", /secure aggregation/],
    [{ aggregator: "norm:1+mean", ...dp }, "E_CONFIG_CONFLICT", /differential privacy/],
    [{ aggregator: "geomed", ...dp }, "E_CONFIG_CONFLICT", /differential privacy/],
    [{ aggregator: "fltrust" }, "E_CONFIG_AGGREGATOR", /root dataset.*trains nothing/],
  ];
  for (const [over, code, why] of bad) {
    const r = await create(w, { jobId: "x", ...over });
    assert.equal(r.status, 400, JSON.stringify(over));
    assert.equal(r.body.code, code, JSON.stringify(r.body));
    assert.match(r.body.message!, why);
    assert.doesNotMatch(r.body.message!, /\n/);
  }
  assert.equal(
    (await w.agg.http.getJob(get("/api/jobs/x", { id: "x" }), ctx())).status,
    404,
    "nothing was created",
  );
});

test("memory cap: a buffered rule whose round would exceed FLOTILLA_ROBUST_MAX_BYTES is refused, naming the bytes", async () => {
  // 5 updates x 43 values x 4 bytes = 860 bytes per round.
  const per = 5 * layout.totalSize * 4;
  const w = world(devices, { robustMaxBytes: per - 1 });
  const five = { strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 } } };
  const r = await create(w, { jobId: "big", aggregator: "median", ...five });
  assert.equal(r.status, 400);
  assert.equal(r.body.code, "E_CONFIG_CONFLICT");
  assert.match(
    r.body.message!,
    new RegExp(
      `5 updates x ${layout.totalSize} values x 4 = ${per} bytes, above the aggregator's cap of ${per - 1} bytes \\(FLOTILLA_ROBUST_MAX_BYTES`,
    ),
  );
  // Streaming specs hold nothing; an async job holds its buffer, not its concurrency.
  assert.equal((await create(w, { jobId: "m", aggregator: "norm:3+mean", ...five })).status, 201);
  assert.equal((await create(w, { jobId: "m2", aggregator: "mean", ...five })).status, 201);
  assert.equal(
    (await create(w, { jobId: "as", aggregator: "median", mode: "async", buffer: 4, ...five })).status,
    201,
  );
  assert.equal(
    (await create(w, { jobId: "as2", aggregator: "median", mode: "async", buffer: 5, ...five })).status,
    400,
  );
  // At the cap it is allowed.
  const at = world(devices, { robustMaxBytes: per });
  assert.equal((await create(at, { jobId: "ok", aggregator: "median", ...five })).status, 201);
  // The app setting.
  assert.equal(robustMaxBytesFromEnv({}), undefined);
  assert.equal(robustMaxBytesFromEnv({ FLOTILLA_ROBUST_MAX_BYTES: "2048" }), 2048);
  assert.throws(() => robustMaxBytesFromEnv({ FLOTILLA_ROBUST_MAX_BYTES: "1GB" }), {
    code: "E_CONFIG_INVALID",
  });
  assert.equal(DEFAULT_ROBUST_MAX_BYTES, 2 ** 30);
});

test("a sync job with aggregator median: one device's update x1000 barely moves the model; the record has the robust report", async () => {
  const w = world(devices);
  const id = await startJob(w, {
    aggregator: "median",
    rounds: 1,
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
  });
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  const honest = devices.slice(0, 4).map((_, i) => makeDelta(layout.totalSize, i + 1));
  for (let i = 0; i < 4; i++) await send(w, id, 1, devices[i]!, 100, honest[i]!);
  const attack = scaled(makeDelta(layout.totalSize, 9), 1000);
  await send(w, id, 1, "dev-e", 100, attack);
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  const w1 = await model(w, id, 1);
  const step = Float64Array.from(w1, (x, i) => x - w0[i]!);
  const honestMean = mean(honest);
  // Each coordinate's median lies within the honest values (|Δ| ≤ 0.1); the plain mean would move by ~20.
  assert.ok(maxAbs(step, honestMean) < 0.1, `max |step - honest mean| ${maxAbs(step, honestMean)}`);
  const plainMean = mean([...honest, attack]);
  assert.ok(maxAbs(plainMean, honestMean) > 5, "the attack would have moved the plain mean");

  const r = await w.agg.http.getJob(get(`/api/jobs/${id}`, { id }), ctx());
  const rec = (r.jsonBody as { history: RoundRecord[] }).history[0]!;
  assert.equal(rec.status, "aggregated");
  assert.equal(rec.completed, 5);
  const robust = rec.robust!;
  assert.equal(robust.aggregator, "median");
  assert.equal(robust.updates, 5);
  assert.deepEqual([...robust.kept].sort(), devices);
  assert.equal(robust.devices.length, 5);
  const e = robust.devices.find((d) => d.deviceId === "dev-e")!;
  const a = robust.devices.find((d) => d.deviceId === "dev-a")!;
  assert.ok(e.norm > 100 * a.norm, `attacker norm ${e.norm} vs ${a.norm}`);
  // The round-closed event carries the summary.
  const job = (await new JobRepository(w.store).getJob(id))!;
  const fields = roundEventFields(job, job.rounds[0]!);
  assert.equal(fields.aggregator, "median");
  assert.equal(fields.robustKept, 5);
  assert.equal(fields.robustDropped, 0);
  assert.equal(fields.robustClipped, 0);
  assert.ok(typeof fields.robustAggregateNorm === "number" && fields.robustAggregateNorm > 0);
});

test("a sync job with centered clipping clips round 2 around the previous global step (model 1 − model 0)", async () => {
  const w = world(devices);
  const id = await startJob(w, {
    aggregator: "centered-clip:0.05",
    rounds: 2,
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
  });
  await w.agg.roundTimer({}, ctxStub);
  const deltas = (r: number) =>
    devices.map((_, i) =>
      i === 4
        ? scaled(makeDelta(layout.totalSize, 10 * r + i), 1000)
        : makeDelta(layout.totalSize, 10 * r + i),
    );
  for (const r of [1, 2]) {
    const ds = deltas(r);
    for (let i = 0; i < 5; i++) await send(w, id, r, devices[i]!, 100, ds[i]!);
    w.now.t += 1000;
    await w.agg.roundTimer({}, ctxStub);
  }
  const [w0, w1, w2] = [await model(w, id, 0), await model(w, id, 1), await model(w, id, 2)];
  const inputs = (r: number) => deltas(r).map((delta, i) => ({ deviceId: devices[i]!, delta, weight: 100 }));
  // Round 1: no reference (zero), three iterations (core/robust/aggregation.ts).
  const a1 = centeredClip(inputs(1), 0.05, { iterations: 3 }).delta;
  assert.ok(
    maxAbs(
      Float64Array.from(w1, (x, i) => x - w0[i]!),
      a1,
    ) < 1e-6,
  );
  // Round 2: around model 1 − model 0, one iteration.
  const reference = Float32Array.from(w1, (x, i) => x - w0[i]!);
  const a2 = centeredClip(inputs(2), 0.05, { reference, iterations: 1 }).delta;
  assert.ok(
    maxAbs(
      Float64Array.from(w2, (x, i) => x - w1[i]!),
      a2,
    ) < 1e-6,
  );
  const zeroRef = centeredClip(inputs(2), 0.05, { iterations: 1 }).delta;
  assert.ok(maxAbs(a2, zeroRef) > 1e-4, "the reference makes a difference here");
});

test("an async job with aggregator median: a flush with one update x1000 stays near the honest mean; the version's record has the report", async () => {
  const w = world(["dev-a", "dev-b", "dev-c"]);
  const id = await startJob(w, { mode: "async", rounds: 1, buffer: 3, aggregator: "median" });
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  const ordered = w.fleet.configured.filter((c) => c.desired?.round === 1).map((c) => c.deviceId);
  assert.equal(ordered.length, 3);
  const honest = [makeDelta(layout.totalSize, 1), makeDelta(layout.totalSize, 2)];
  await send(w, id, 1, ordered[0]!, 50, honest[0]!);
  await send(w, id, 1, ordered[1]!, 50, honest[1]!);
  await send(w, id, 1, ordered[2]!, 50, scaled(makeDelta(layout.totalSize, 3), 1000));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  const w1 = await model(w, id, 1);
  const step = Float64Array.from(w1, (x, i) => x - w0[i]!);
  // The median of three with one outlier lies between the two honest values.
  for (let i = 0; i < step.length; i++) {
    const lo = Math.min(honest[0]![i]!, honest[1]![i]!);
    const hi = Math.max(honest[0]![i]!, honest[1]![i]!);
    assert.ok(step[i]! >= lo - 1e-6 && step[i]! <= hi + 1e-6, `[${i}] ${step[i]} not in [${lo}, ${hi}]`);
  }
  const rec = (await new JobRepository(w.store).getJob(id))!.rounds[0]!;
  assert.equal(rec.robust?.aggregator, "median");
  assert.equal(rec.robust?.updates, 3);
  assert.deepEqual(rec.async?.staleness, [0, 0, 0]);
});

test("an async job records contribution quality per version: an update x1000 is a norm anomaly in the version's record and the job's quality state", async () => {
  const w = world(devices);
  const id = await startJob(w, {
    mode: "async",
    rounds: 1,
    buffer: 5,
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
  });
  await w.agg.roundTimer({}, ctxStub);
  const ordered = w.fleet.configured.filter((c) => c.desired?.round === 1).map((c) => c.deviceId);
  assert.equal(ordered.length, 5);
  for (const [k, dev] of ordered.entries()) {
    const d = makeDelta(layout.totalSize, k + 1);
    await send(w, id, 1, dev, 50, k === 4 ? scaled(d, 1000) : d);
  }
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  const job = (await new JobRepository(w.store).getJob(id))!;
  const rec = job.rounds[0]!;
  assert.deepEqual(
    rec.quality?.anomalies.map((a) => [a.deviceId, a.code]),
    [[ordered[4], "E_QUALITY_NORM"]],
  );
  assert.equal(job.quality?.devices[ordered[4]!]?.flagged, 1);
  assert.ok(
    w.logs.some((l) => l.includes(`quality: device ${ordered[4]} round 1 E_QUALITY_NORM`)),
    w.logs.join("\n"),
  );
});
