/**
 * Differential privacy (DP-FedAvg) over the aggregation Function: the job definition's `differentialPrivacy`
 * block, the budget stopping a job, central clipping and noise in the Function, adaptive clipping persisted
 * between invocations, and distributed noise with secure aggregation (n' survivors or nothing is unmasked).
 * The test plays the devices through the ingest and the recording Fleet, and drives the clock and timer by hand.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { JsonWebKey } from "node:crypto";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { FlotillaError } from "../../../core/errors";
import { PrivacyAccountant } from "../../../core/privacy/accountant";
import { clipBit, privatizeUpdate } from "../../../core/privacy/dp";
import type { DpOrder, SecAggFrame } from "../../../core/protocol/messages";
import { SecAggClient } from "../../../core/secagg/client";
import { LocalSigner } from "../../../core/secagg/identity";
import type { MaskInputRequest, ShareKeysRequest, UnmaskRequest } from "../../../core/secagg/types";
import { validateJob } from "../../../cloud/aggregator/src/jobs/job";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import type { MethodOutcome } from "../../../cloud/aggregator/src/fleet/fleet";
import { chunkEvents, ctx, get, jobBody, makeDelta, startJob, world, SPEC, type World } from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const N = layout.totalSize;
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

// --- job validation -------------------------------------------------------------------------------------------

const DP = { noiseMultiplier: 1, clip: 1, delta: 1e-5 };
const SECURE = { secureAggregation: { stepSeconds: 20 } };

test("job definitions: a valid differentialPrivacy block is kept with its defaults", () => {
  const d = validateJob(jobBody({ differentialPrivacy: { ...DP, epsilonBudget: 3 } }));
  assert.deepEqual(d.differentialPrivacy, { ...DP, placement: "central", epsilonBudget: 3 });
  const a = validateJob(
    jobBody({
      ...SECURE,
      differentialPrivacy: {
        noiseMultiplier: 0.5,
        clip: "adaptive",
        delta: 1e-6,
        placement: "distributed",
        minSurvivors: 3,
        initialClip: 0.5,
        targetQuantile: 0.7,
        clipLearningRate: 0.1,
        clipCountStddev: 1,
        fleetSize: 50,
      },
    }),
  );
  assert.equal(a.differentialPrivacy?.clip, "adaptive");
  assert.equal(a.differentialPrivacy?.placement, "distributed");
  assert.equal(a.differentialPrivacy?.fleetSize, 50);
  assert.equal(validateJob(jobBody({ differentialPrivacy: null })).differentialPrivacy, undefined);
  assert.equal(validateJob(jobBody()).differentialPrivacy, undefined);
});

test("job definitions: every bad differentialPrivacy block is refused with E_JOB_DP and one line", () => {
  const bad: [string, Record<string, unknown>][] = [
    ["not an object", { differentialPrivacy: 3 }],
    ["an array", { differentialPrivacy: [] }],
    ["unknown key", { differentialPrivacy: { ...DP, sigma: 2 } }],
    ["no noise multiplier", { differentialPrivacy: { clip: 1, delta: 1e-5 } }],
    ["noise multiplier 0", { differentialPrivacy: { ...DP, noiseMultiplier: 0 } }],
    ["noise multiplier a string", { differentialPrivacy: { ...DP, noiseMultiplier: "1" } }],
    ["no clip", { differentialPrivacy: { noiseMultiplier: 1, delta: 1e-5 } }],
    ["negative clip", { differentialPrivacy: { ...DP, clip: -1 } }],
    ["clip 'auto'", { differentialPrivacy: { ...DP, clip: "auto" } }],
    ["no delta", { differentialPrivacy: { noiseMultiplier: 1, clip: 1 } }],
    ["delta 1", { differentialPrivacy: { ...DP, delta: 1 } }],
    ["epsilon budget 0", { differentialPrivacy: { ...DP, epsilonBudget: 0 } }],
    ["epsilon budget a string", { differentialPrivacy: { ...DP, epsilonBudget: "3" } }],
    ["unknown placement", { differentialPrivacy: { ...DP, placement: "edge" } }],
    ["distributed without secure aggregation", { differentialPrivacy: { ...DP, placement: "distributed" } }],
    [
      "min survivors above clientsPerRound",
      { ...SECURE, differentialPrivacy: { ...DP, placement: "distributed", minSurvivors: 4 } },
    ],
    [
      "min survivors not an integer",
      { ...SECURE, differentialPrivacy: { ...DP, placement: "distributed", minSurvivors: 1.5 } },
    ],
    ["min survivors with central placement", { differentialPrivacy: { ...DP, minSurvivors: 2 } }],
    ["adaptive knob with a fixed clip", { differentialPrivacy: { ...DP, targetQuantile: 0.5 } }],
    ["target quantile 1", { differentialPrivacy: { ...DP, clip: "adaptive", targetQuantile: 1 } }],
    // σ_b defaults to clientsPerRound / 20 = 0.15: z = 1 is not < 2σ_b.
    ["adaptive noise too large for σ_b", { differentialPrivacy: { ...DP, clip: "adaptive" } }],
    [
      "adaptive with local placement",
      { differentialPrivacy: { ...DP, clip: "adaptive", placement: "local" } },
    ],
    ["fleet size below clientsPerRound", { differentialPrivacy: { ...DP, fleetSize: 2 } }],
  ];
  for (const [what, over] of bad) {
    assert.throws(
      () => validateJob(jobBody(over)),
      (e: unknown) => {
        assert.ok(e instanceof FlotillaError, what);
        assert.equal(e.code, "E_JOB_DP", `${what}: ${e.message}`);
        assert.doesNotMatch(e.message, /\n/, what);
        return true;
      },
      what,
    );
  }
});

// --- plain rounds (central placement, no secure aggregation) ---------------------------------------------------

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

async function send(w: World, msg: ReturnType<typeof result> & { dpClipBit?: number }): Promise<void> {
  const { events } = chunkEvents(msg, { maxChunkBytes: 500 });
  const r = await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.slice(-5).join("\n"));
}

async function tick(w: World): Promise<void> {
  const r = await w.agg.roundTimer({}, ctxStub);
  for (const j of r.jobs) for (const a of j.actions) assert.doesNotMatch(a, /^error/, a);
}

async function model(w: World, jobId: string, r: number): Promise<Float32Array> {
  const m = await new JobRepository(w.store).getModel(jobId, r);
  assert.ok(m, `model ${r} exists`);
  return m.weights;
}

const DEVICES = ["dev-a", "dev-b", "dev-c"];
const SAMPLES = [10, 30, 60];

/** One plain round: every device sends its delta (numSamples differ: DP ignores them), then the timer closes it. */
async function plainRound(w: World, jobId: string, r: number, deltas: Float32Array[]): Promise<void> {
  for (let i = 0; i < DEVICES.length; i++) await send(w, result(jobId, r, DEVICES[i], SAMPLES[i], deltas[i]));
  w.now.t += 1000;
  await tick(w);
}

test("the privacy budget stops a job after exactly the rounds it affords, with a clear status", async () => {
  const w = world();
  const dp = { noiseMultiplier: 1.2, clip: 1, delta: 1e-5 };
  // q = 3/3 = 1: each round costs a full Gaussian release. A budget between the costs of 3 and 4 rounds.
  const acc = new PrivacyAccountant({ mode: "sampled", noiseMultiplier: 1.2, samplingRate: 1, delta: 1e-5 });
  const budget = (acc.epsilonAfter(3).epsilon + acc.epsilonAfter(4).epsilon) / 2;
  let expected = 0;
  while (acc.epsilonAfter(expected + 1).epsilon <= budget) expected++;
  assert.equal(expected, 3);
  const jobId = await startJob(w, { rounds: 10, differentialPrivacy: { ...dp, epsilonBudget: budget } });
  await tick(w);
  let r = 1;
  for (; r <= 10; r++) {
    const job = await new JobRepository(w.store).getJob(jobId);
    if (job?.status !== "running") break;
    await plainRound(
      w,
      jobId,
      r,
      DEVICES.map((_, i) => makeDelta(N, 10 * r + i)),
    );
  }
  const job = (await new JobRepository(w.store).getJob(jobId))!;
  assert.equal(job.rounds.length, expected);
  assert.equal(job.status, "completed");
  assert.equal(job.stopReason, "budget-exhausted");
  assert.match(String(job.stopMessage), /privacy budget ε=.* reached: 3 round\(s\) spent ε=/);
  assert.equal(job.dp?.fleetSize, 3);
  assert.equal(job.dp?.state.status?.state, "budget-exhausted");
  // Each round's record carries ε spent so far, growing, within the budget.
  let prev = 0;
  for (const [i, rec] of job.rounds.entries()) {
    assert.equal(rec.status, "aggregated");
    assert.equal(rec.dp?.released, true);
    assert.equal(rec.dp?.placement, "central");
    assert.equal(rec.dp?.clip, 1);
    assert.equal(rec.dp?.noiseStd, 1.2);
    assert.equal(rec.dp?.count, 3);
    assert.ok(Math.abs(rec.dp!.epsilon - acc.epsilonAfter(i + 1).epsilon) < 1e-9, `round ${i + 1}`);
    assert.ok(rec.dp!.epsilon > prev && rec.dp!.epsilon <= budget);
    prev = rec.dp!.epsilon;
  }
  // No fourth round was ever opened, and the HTTP API says why the job ended.
  assert.equal(await new JobRepository(w.store).getRound(jobId, 4), undefined);
  const h = await w.agg.http.getJob(get(`/api/jobs/${jobId}`, { id: jobId }), ctx());
  const body = h.jsonBody as Record<string, unknown> & { privacy: Record<string, unknown> };
  assert.equal(body.status, "completed");
  assert.equal(body.stopReason, "budget-exhausted");
  assert.equal(body.stopMessage, job.stopMessage);
  assert.equal(body.privacy.epsilon, prev);
  assert.equal(body.privacy.epsilonBudget, budget);
  assert.equal(body.privacy.releasedRounds, 3);
  assert.equal(body.privacy.status, "budget-exhausted");
  // Without a device order in central placement the trainers are not told anything about DP.
  assert.ok(w.fleet.started.every((s) => s.payload.dp === undefined));
});

test("central placement: the Function clips each update, averages with equal weight and adds noise of std z·C", async () => {
  // Small noise, small clip: the model is global + mean(clip(Δ_k)) up to N(0, (zC/3)²) per value.
  {
    const w = world();
    const jobId = await startJob(w, {
      rounds: 1,
      differentialPrivacy: { noiseMultiplier: 0.01, clip: 0.05, delta: 1e-5 },
    });
    await tick(w);
    const w0 = await model(w, jobId, 0);
    const deltas = DEVICES.map((_, i) => makeDelta(N, i + 1));
    await plainRound(w, jobId, 1, deltas);
    const w1 = await model(w, jobId, 1);
    const clipped = deltas.map((d) => {
      const norm = Math.hypot(...d);
      assert.ok(norm > 0.05, "every update is clipped");
      return Float64Array.from(d, (x) => (x * 0.05) / norm);
    });
    let worst = 0;
    for (let i = 0; i < N; i++) {
      const want = w0[i] + (clipped[0][i] + clipped[1][i] + clipped[2][i]) / 3;
      worst = Math.max(worst, Math.abs(w1[i] - want));
    }
    // noise std per value = 0.01 · 0.05 / 3 ≈ 1.7e-4: 6 standard deviations, far below the updates' size.
    assert.ok(worst < 1e-3, `max |diff| from the clipped equal-weight mean: ${worst}`);
    const rec = (await new JobRepository(w.store).getJob(jobId))!.rounds[0];
    assert.equal(rec.dp?.noiseStd, 0.01 * 0.05);
  }
  // Large noise: the residual from the plain (unclipped, equal-weight) mean has the expected std z·C/3.
  {
    const w = world();
    const z = 2;
    const jobId = await startJob(w, {
      rounds: 1,
      differentialPrivacy: { noiseMultiplier: z, clip: 10, delta: 1e-5 },
    });
    await tick(w);
    const w0 = await model(w, jobId, 0);
    const deltas = DEVICES.map((_, i) => makeDelta(N, i + 7));
    await plainRound(w, jobId, 1, deltas);
    const w1 = await model(w, jobId, 1);
    let ss = 0;
    for (let i = 0; i < N; i++) {
      const r = w1[i] - (w0[i] + (deltas[0][i] + deltas[1][i] + deltas[2][i]) / 3);
      ss += r * r;
    }
    const std = Math.sqrt(ss / N);
    const want = (z * 10) / 3;
    // N = 43 values: the sample std is within ±40% of σ with probability > 0.9999.
    assert.ok(std > 0.6 * want && std < 1.4 * want, `residual std ${std}, expected ≈ ${want}`);
  }
});

test("adaptive clipping: the clip norm moves with the noisy clipped fraction and persists across a restart", async () => {
  const w = world();
  const jobId = await startJob(w, {
    rounds: 2,
    differentialPrivacy: {
      noiseMultiplier: 0.5,
      clip: "adaptive",
      delta: 1e-5,
      initialClip: 0.1,
      clipCountStddev: 1,
      targetQuantile: 0.5,
    },
  });
  await tick(w);
  let st = await new JobRepository(w.store).getRound(jobId, 1);
  assert.equal(st?.dp?.clip, 0.1);
  await plainRound(
    w,
    jobId,
    1,
    DEVICES.map((_, i) => makeDelta(N, i + 1)),
  );
  let job = (await new JobRepository(w.store).getJob(jobId))!;
  const r1 = job.rounds[0].dp!;
  assert.equal(r1.clip, 0.1);
  assert.ok(typeof r1.unclippedFraction === "number" && typeof r1.nextClip === "number");
  assert.ok(Math.abs(r1.nextClip - 0.1 * Math.exp(-0.2 * (r1.unclippedFraction - 0.5))) < 1e-12);
  assert.equal(job.dp?.state.clip, r1.nextClip, "persisted with the round record");
  // A restarted Function instance opens round 2 with the persisted clip norm.
  w.restart();
  st = await new JobRepository(w.store).getRound(jobId, 2);
  assert.equal(st?.dp?.clip, r1.nextClip);
  await plainRound(
    w,
    jobId,
    2,
    DEVICES.map((_, i) => makeDelta(N, i + 11)),
  );
  job = (await new JobRepository(w.store).getJob(jobId))!;
  assert.equal(job.status, "completed");
  assert.equal(job.stopReason, undefined);
  assert.equal(job.rounds[1].dp?.clip, r1.nextClip);
  assert.ok(job.rounds[1].dp!.epsilon > r1.epsilon);
});

test("local placement: the order tells each device to clip and noise; the Function averages with equal weight", async () => {
  const w = world();
  const jobId = await startJob(w, {
    rounds: 1,
    differentialPrivacy: { noiseMultiplier: 1, clip: 0.5, delta: 1e-5, placement: "local" },
  });
  await tick(w);
  const order: DpOrder = { clip: 0.5, noiseStd: 0.5 };
  assert.ok(w.fleet.started.length === 3 && w.fleet.started.every((s) => deepEq(s.payload.dp, order)));
  assert.ok(w.fleet.configured.every((c) => deepEq(c.desired?.dp, order)));
  const w0 = await model(w, jobId, 0);
  const deltas = DEVICES.map((_, i) => makeDelta(N, i + 1));
  await plainRound(w, jobId, 1, deltas);
  const w1 = await model(w, jobId, 1);
  // The Function adds nothing: exactly the equal-weight mean of what the devices sent.
  let worst = 0;
  for (let i = 0; i < N; i++)
    worst = Math.max(worst, Math.abs(w1[i] - (w0[i] + (deltas[0][i] + deltas[1][i] + deltas[2][i]) / 3)));
  assert.ok(worst < 1e-6, `max |diff| ${worst}`);
  const rec = (await new JobRepository(w.store).getJob(jobId))!.rounds[0];
  assert.equal(rec.dp?.placement, "local");
  assert.equal(rec.dp?.noiseStd, 0.5 * Math.sqrt(3));
});

function deepEq(a: unknown, b: unknown): boolean {
  try {
    assert.deepEqual(a, b);
    return true;
  } catch {
    return false;
  }
}

// --- secure aggregation with distributed noise ------------------------------------------------------------------

class Device {
  client: SecAggClient | undefined;
  update: Float32Array | undefined;
  readonly signer: LocalSigner;
  readonly publicKey: JsonWebKey;
  /** The device accepts the mask request but its masked input never arrives. */
  silentAtMask = false;
  constructor(
    readonly id: string,
    readonly delta: Float32Array,
  ) {
    const k = LocalSigner.generate(id);
    this.signer = k.signer;
    this.publicKey = k.publicKey;
  }
}

function secureWorld(ids: string[]): { w: World; devices: Map<string, Device>; outbox: SecAggFrame[] } {
  const devices = new Map(ids.map((id, i) => [id, new Device(id, makeDelta(N, i + 1))]));
  const w = world(ids, {
    identityKeys: {
      async getPublicKey(id) {
        const d = devices.get(id);
        if (!d) throw new FlotillaError("E_KEY_NOT_FOUND", `no identity key for ${id}`);
        return d.publicKey;
      },
    },
  });
  const outbox: SecAggFrame[] = [];
  w.fleet.onCall = (deviceId, method, payload): MethodOutcome => {
    const d = devices.get(deviceId);
    if (!d?.client) return { reached: false, reason: "404 device not online" };
    const req = JSON.parse(JSON.stringify(payload)) as Record<string, unknown>;
    const ok = (p: unknown): MethodOutcome => ({
      reached: true,
      status: 200,
      payload: JSON.parse(JSON.stringify(p)),
    });
    switch (method) {
      case "secaggShareKeys":
        return ok(d.client.shareKeys(req as unknown as ShareKeysRequest));
      case "secaggMaskInput": {
        const { masked, ...body } = d.client.maskInput(req as unknown as MaskInputRequest, d.update!);
        if (!d.silentAtMask)
          outbox.push({
            type: "secagg",
            step: "mask",
            direction: "up",
            jobId: body.jobId,
            round: body.round,
            deviceId,
            body,
            masked,
            numSamples: 20,
            metrics: { loss: 0.5, accuracy: 0.5, trainMs: 1 },
          });
        return ok({ accepted: true, jobId: body.jobId, round: body.round });
      }
      case "secaggUnmask":
        return ok(d.client.unmask(req as unknown as UnmaskRequest));
      default:
        return { reached: true, status: 501, payload: null };
    }
  };
  return { w, devices, outbox };
}

async function ingestFrame(w: World, frame: SecAggFrame): Promise<void> {
  const { events } = chunkEvents(frame, { maxChunkBytes: 1000 });
  const r = await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.slice(-5).join("\n"));
}

/** Every device follows the round's order: clips, adds its noise share, appends its clip bit, weighs 1. */
async function trainAndAdvertise(
  s: ReturnType<typeof secureWorld>,
  jobId: string,
  round: number,
): Promise<Map<string, number>> {
  const norms = new Map<string, number>();
  for (const [id, d] of s.devices) {
    const order = s.w.fleet.started.filter((x) => x.deviceId === id && x.payload.round === round).at(-1)!
      .payload.dp!;
    const delta = d.delta.slice();
    const { norm, clipBit: bit } = privatizeUpdate(delta, order);
    norms.set(id, norm);
    assert.equal(typeof bit, "number", "adaptive: the order asks for the clip bit");
    d.update = new Float32Array(N + 1);
    d.update.set(delta);
    d.update[N] = bit!;
    const { client, advertisement } = await SecAggClient.start({ jobId, round }, id, 1, d.signer);
    d.client = client;
    await ingestFrame(s.w, {
      type: "secagg",
      step: "advertise",
      direction: "up",
      jobId,
      round,
      deviceId: id,
      body: advertisement,
    });
  }
  return norms;
}

test("distributed placement over secure aggregation: clip bits ride in the masked vector; too few survivors unmask nothing", async () => {
  const ids = ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"];
  const s = secureWorld(ids);
  const { w } = s;
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 2,
    secureAggregation: { stepSeconds: 20, minSurvivors: 3 },
    differentialPrivacy: {
      noiseMultiplier: 0.5,
      clip: "adaptive",
      initialClip: 0.2,
      clipCountStddev: 1,
      delta: 1e-5,
      placement: "distributed",
    },
  });
  await tick(w);
  // n' = ⌈0.8 · 5⌉ = 4: each device adds (z_Δ·C)²/4 of the variance, and a noised clip bit.
  const order = w.fleet.started[0].payload.dp!;
  assert.equal(order.clip, 0.2);
  const zd = 1 / Math.sqrt(1 / 0.25 - 1 / 4);
  assert.ok(Math.abs(order.noiseStd - (zd * 0.2) / 2) < 1e-12);
  assert.equal(order.clipBitNoiseStd, 0.5);
  assert.ok(w.fleet.started.every((x) => deepEq(x.payload.secagg, { stepSeconds: 20 })));

  // Round 1: everyone takes part; the Function sees only the sum (model + clip bits).
  const w0 = await model(w, jobId, 0);
  const norms = await trainAndAdvertise(s, jobId, 1);
  await tick(w);
  for (const f of s.outbox.splice(0)) await ingestFrame(w, f);
  await tick(w);
  let job = (await new JobRepository(w.store).getJob(jobId))!;
  const r1 = job.rounds[0];
  assert.equal(r1.status, "aggregated", JSON.stringify(r1));
  assert.equal(r1.completed, 5);
  assert.equal(r1.dp?.released, true);
  assert.equal(r1.dp?.count, 5);
  assert.ok(Math.abs(r1.dp!.noiseStd - zd * 0.2 * Math.sqrt(5 / 4)) < 1e-12);
  assert.ok(r1.dp!.epsilon > 0);
  // The clip bits' mean came out of the secure sum (their noise has std 0.5·√(5/4)/5 ≈ 0.11 on the fraction).
  const trueFraction = [...norms.values()].filter((n) => clipBit(n, 0.2) > 0).length / 5;
  assert.ok(
    Math.abs(r1.dp!.unclippedFraction! - trueFraction) < 0.6,
    `${r1.dp!.unclippedFraction} vs ${trueFraction}`,
  );
  assert.equal(job.dp?.state.clip, r1.dp!.nextClip);
  const w1 = await model(w, jobId, 1);
  let moved = 0;
  for (let i = 0; i < N; i++) moved = Math.max(moved, Math.abs(w1[i] - w0[i]));
  assert.ok(moved > 0 && moved < 1, `model moved by ${moved}`);

  // Round 2: two devices' masked inputs never arrive: 3 ≥ secure aggregation's minimum but < n' = 4.
  const order2 = w.fleet.started.filter((x) => x.payload.round === 2)[0].payload.dp!;
  assert.equal(order2.clip, r1.dp!.nextClip, "round 2 uses the adapted clip norm");
  s.devices.get("dev-b")!.silentAtMask = true;
  s.devices.get("dev-d")!.silentAtMask = true;
  const unmaskBefore = w.fleet.calls.filter((c) => c.method === "secaggUnmask").length;
  await trainAndAdvertise(s, jobId, 2);
  await tick(w);
  for (const f of s.outbox.splice(0)) await ingestFrame(w, f);
  w.now.t += 20_001;
  await tick(w);
  job = (await new JobRepository(w.store).getJob(jobId))!;
  const r2 = job.rounds[1];
  assert.equal(r2.status, "failed");
  assert.equal(r2.code, "E_DP_TOO_FEW");
  assert.match(String(r2.secagg?.error?.message), /3 masked input\(s\), fewer than the 4/);
  assert.equal(r2.dp?.released, false);
  assert.match(String(r2.dp?.reason), /E_DP_TOO_FEW/);
  assert.equal(r2.dp?.epsilon, r1.dp!.epsilon, "nothing released, nothing spent");
  assert.equal(
    w.fleet.calls.filter((c) => c.method === "secaggUnmask").length,
    unmaskBefore,
    "nothing unmasked",
  );
  assert.deepEqual(await model(w, jobId, 2), w1, "the model is kept");
  assert.equal(job.status, "completed");
});
