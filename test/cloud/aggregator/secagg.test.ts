/**
 * Secure aggregation rounds in the orchestrator, with in-process fakes: the test plays the devices with real
 * core/secagg SecAggClients behind a recording Fleet (direct methods) and the ingest (their `secagg` frames),
 * and drives the clock and the timer by hand.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { JsonWebKey } from "node:crypto";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { FlotillaError } from "../../../core/errors";
import type { SecAggFrame } from "../../../core/protocol/messages";
import { boundDelta } from "../../../core/round/update-pipeline";
import { SecAggClient } from "../../../core/secagg/client";
import { LocalSigner } from "../../../core/secagg/identity";
import type { MaskInputRequest, ShareKeysRequest, UnmaskRequest } from "../../../core/secagg/types";
import { JobRepository, paths, type RoundState } from "../../../cloud/aggregator/src/jobs/state";
import type { MethodOutcome } from "../../../cloud/aggregator/src/fleet/fleet";
import { chunkEvents, makeDelta, post, ctx, SPEC, startJob, world, type World } from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

type Behaviour = "ok" | "unreachable" | "refuse" | "refuse-bare" | "refuse-message" | "silent";

/** A device: its identity key, its update, and how it behaves at each method step. */
class Device {
  client: SecAggClient | undefined;
  readonly signer: LocalSigner;
  readonly publicKey: JsonWebKey;
  behaviour: Record<"secaggShareKeys" | "secaggMaskInput" | "secaggUnmask", Behaviour> = {
    secaggShareKeys: "ok",
    secaggMaskInput: "ok",
    secaggUnmask: "ok",
  };
  /** Requests this device answered (what it was asked, for checks). */
  readonly asked: { method: string; payload: unknown }[] = [];
  constructor(
    readonly id: string,
    readonly n: number,
    readonly delta: Float32Array,
  ) {
    const k = LocalSigner.generate(id);
    this.signer = k.signer;
    this.publicKey = k.publicKey;
  }
}

interface Fleet {
  w: World;
  devices: Map<string, Device>;
  /** Masked-input frames the devices produced, waiting to be delivered through the ingest. */
  outbox: SecAggFrame[];
}

function secureWorld(ids: string[], samples: (i: number) => number = (i) => 10 * (i + 1)): Fleet {
  const devices = new Map(
    ids.map((id, i) => [id, new Device(id, samples(i), makeDelta(layout.totalSize, i + 1))]),
  );
  const w = world(ids, {
    identityKeys: {
      async getPublicKey(id) {
        const d = devices.get(id);
        if (!d) throw new FlotillaError("E_KEY_NOT_FOUND", `no identity key for ${id}`);
        return d.publicKey;
      },
    },
  });
  const f: Fleet = { w, devices, outbox: [] };
  w.fleet.onCall = (deviceId, method, payload): MethodOutcome => {
    const d = devices.get(deviceId);
    const b = d?.behaviour[method as keyof Device["behaviour"]];
    if (!d || !d.client || b === "unreachable") return { reached: false, reason: "404 device not online" };
    // What crosses the wire is JSON.
    const req = JSON.parse(JSON.stringify(payload)) as Record<string, unknown>;
    d.asked.push({ method, payload: req });
    if (b === "refuse")
      return { reached: true, status: 400, payload: { code: "E_TEST_REFUSED", message: "no" } };
    // A refusal without a code: no body at all, or a message only.
    if (b === "refuse-bare") return { reached: true, status: 503, payload: null };
    if (b === "refuse-message") return { reached: true, status: 500, payload: { message: "busy" } };
    try {
      switch (method) {
        case "secaggShareKeys":
          return {
            reached: true,
            status: 200,
            payload: json(d.client.shareKeys(req as unknown as ShareKeysRequest)),
          };
        case "secaggMaskInput": {
          const mi = d.client.maskInput(req as unknown as MaskInputRequest, d.delta);
          const { masked, ...body } = mi;
          if (b !== "silent") {
            f.outbox.push({
              type: "secagg",
              step: "mask",
              direction: "up",
              jobId: mi.jobId,
              round: mi.round,
              deviceId,
              body,
              masked,
              numSamples: d.n,
              metrics: { loss: 0.5, accuracy: 0.5, trainMs: 1 },
            });
          }
          return {
            reached: true,
            status: 200,
            payload: { accepted: true, jobId: mi.jobId, round: mi.round },
          };
        }
        case "secaggUnmask":
          return {
            reached: true,
            status: 200,
            payload: json(d.client.unmask(req as unknown as UnmaskRequest)),
          };
        default:
          return { reached: true, status: 501, payload: null };
      }
    } catch (e) {
      const code = (e as { code?: string }).code ?? "E_INTERNAL";
      return { reached: true, status: 400, payload: { code, message: (e as Error).message } };
    }
  };
  return f;
}

function json<T>(x: T): T {
  return JSON.parse(JSON.stringify(x)) as T;
}

async function ingest(w: World, frame: SecAggFrame, expectRejected = 0): Promise<void> {
  const { events } = chunkEvents(frame, { maxChunkBytes: 1000 });
  const r = await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(r.rejected, expectRejected, w.logs.slice(-5).join("\n"));
}

/** The device trains (here: has its delta) and advertises its keys through the ingest. */
async function advertise(f: Fleet, id: string, jobId: string, round: number): Promise<SecAggFrame> {
  const d = f.devices.get(id)!;
  const { client, advertisement } = await SecAggClient.start({ jobId, round }, id, d.n, d.signer);
  d.client = client;
  const frame: SecAggFrame = {
    type: "secagg",
    step: "advertise",
    direction: "up",
    jobId,
    round,
    deviceId: id,
    body: advertisement,
  };
  await ingest(f.w, frame);
  return frame;
}

async function deliverMasked(f: Fleet): Promise<void> {
  for (const frame of f.outbox.splice(0)) await ingest(f.w, frame);
}

async function tick(w: World): Promise<void> {
  const r = await w.agg.roundTimer({}, ctxStub);
  for (const j of r.jobs) for (const a of j.actions) assert.doesNotMatch(a, /^error/, a);
}

async function round(w: World, jobId: string, r: number): Promise<RoundState> {
  const st = await new JobRepository(w.store).getRound(jobId, r);
  assert.ok(st, `round ${r} exists`);
  return st;
}

async function model(w: World, jobId: string, r: number): Promise<Float32Array> {
  const m = await new JobRepository(w.store).getModel(jobId, r);
  assert.ok(m, `model ${r} exists`);
  return m.weights;
}

/** FedAvg of the devices' deltas, float64: global + Σ n Δ / Σ n. */
function fedavg(global: Float32Array, devs: Device[]): Float64Array {
  const total = devs.reduce((s, d) => s + d.n, 0);
  const out = Float64Array.from(global);
  for (const d of devs) for (let i = 0; i < out.length; i++) out[i] += (d.n * d.delta[i]) / total;
  return out;
}

function assertClose(a: Float32Array, b: Float64Array, tol = 1e-5): void {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  assert.ok(worst < tol, `max |diff| ${worst}`);
}

const ids = (n: number) => Array.from({ length: n }, (_, i) => `dev-${String.fromCharCode(97 + i)}`);

test("a secure round end to end: all four steps, one dropout at each, the unmasked mean is FedAvg of the rest", async () => {
  // Ten devices, classic SecAgg (k = n-1) with t = 5: one dropout per step still leaves enough shares.
  const all = ids(10);
  const f = secureWorld(all);
  const { w } = f;
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 10, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 2,
    secureAggregation: { neighbours: 9, threshold: 5, stepSeconds: 20 },
  });
  await tick(w);
  const w0 = await model(w, jobId, 0);
  // The order tells every trainer the round is secure.
  assert.equal(w.fleet.configured.length, 10);
  for (const c of w.fleet.configured)
    assert.deepEqual(c.desired?.secagg, { stepSeconds: 20, neighbours: 9, threshold: 5 });
  assert.deepEqual(w.fleet.started[0].payload.secagg, { stepSeconds: 20, neighbours: 9, threshold: 5 });
  let st = await round(w, jobId, 1);
  assert.equal(st.secagg?.phase, "advertise");

  // dev-f never advertises (step 1), dev-g cannot be reached for its shares (2), dev-h accepts the mask request
  // but its masked input never arrives (3), dev-e cannot be reached to unmask (4).
  f.devices.get("dev-g")!.behaviour.secaggShareKeys = "unreachable";
  f.devices.get("dev-h")!.behaviour.secaggMaskInput = "silent";
  f.devices.get("dev-e")!.behaviour.secaggUnmask = "unreachable";
  const frames = [];
  for (const id of all.filter((x) => x !== "dev-f")) frames.push(await advertise(f, id, jobId, 1));
  // A duplicate advertisement (the queue resending before its ack) is harmless.
  const dupBefore = w.agg.ingestor.counters.duplicate_updates;
  await ingest(w, frames[0]);
  assert.equal(w.agg.ingestor.counters.duplicate_updates, dupBefore + 1);
  st = await round(w, jobId, 1);
  assert.equal(Object.keys(st.secagg!.advertised).length, 9);
  assert.ok(
    await w.store.exists(paths.secagg(jobId, 1, "advertise", "dev-a")),
    "the advertisement is stored",
  );

  // Before the training deadline: the round waits for dev-f.
  w.now.t += 59_000;
  await tick(w);
  assert.equal((await round(w, jobId, 1)).secagg?.phase, "advertise");
  assert.equal(w.fleet.calls.length, 0);

  // Deadline: U1 = 9. Step 2 runs at once; dev-g is unreachable, so the step waits for it.
  w.now.t += 1_001;
  await tick(w);
  st = await round(w, jobId, 1);
  assert.equal(st.secagg?.phase, "share");
  assert.deepEqual(
    st.secagg?.u1,
    all.filter((x) => x !== "dev-f"),
  );
  assert.equal(Object.keys(st.secagg!.shared).length, 8);
  const share = w.fleet.calls.filter((c) => c.method === "secaggShareKeys");
  assert.equal(share.length, 9);
  // The request relays each neighbour's advertisement with its identity public key (from the key directory).
  const req = f.devices.get("dev-a")!.asked[0].payload as ShareKeysRequest;
  assert.equal(req.neighbours.length, 8);
  for (const nb of req.neighbours)
    assert.deepEqual(nb.identityKey, f.devices.get(nb.advertisement.deviceId)!.publicKey);
  assert.ok(share.every((c) => c.timeoutSeconds > 0 && c.timeoutSeconds <= 20));
  // The stored answers are what the devices said.
  assert.ok(await w.store.exists(paths.secagg(jobId, 1, "share", "dev-a")));

  // A tick within the step deadline asks dev-g again (still unreachable); the step deadline closes it.
  w.now.t += 5_000;
  await tick(w);
  assert.equal(
    w.fleet.calls.filter((c) => c.method === "secaggShareKeys" && c.deviceId === "dev-g").length,
    2,
  );
  assert.equal((await round(w, jobId, 1)).secagg?.phase, "share");
  w.now.t += 15_001;
  await tick(w);
  st = await round(w, jobId, 1);
  assert.equal(st.secagg?.phase, "mask");
  assert.equal(st.secagg?.u2?.length, 8);
  assert.equal(w.fleet.calls.filter((c) => c.method === "secaggMaskInput").length, 8);
  assert.deepEqual(Object.keys(st.secagg!.acked).sort(), st.secagg!.u2!.slice().sort());

  // The masked inputs travel through the update path; dev-h's never does.
  assert.equal(f.outbox.length, 7);
  await deliverMasked(f);
  st = await round(w, jobId, 1);
  assert.equal(Object.keys(st.secagg!.masked).length, 7);
  // A tick before the step deadline: waits for dev-h without asking again (it accepted).
  w.now.t += 1_000;
  await tick(w);
  assert.equal(w.fleet.calls.filter((c) => c.method === "secaggMaskInput").length, 8);
  assert.equal((await round(w, jobId, 1)).secagg?.phase, "mask");

  // The mask step closes at its deadline: nothing more is accepted, and step 4 asks the 7 survivors.
  w.now.t += 20_000;
  await tick(w);
  st = await round(w, jobId, 1);
  assert.equal(st.secagg?.phase, "unmask");
  assert.deepEqual(st.secagg?.u3, ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-i", "dev-j"]);
  const unmaskReq = f.devices.get("dev-a")!.asked.find((a) => a.method === "secaggUnmask")!
    .payload as UnmaskRequest;
  assert.deepEqual([...unmaskReq.dropped], ["dev-h"], "dev-h's mask key is asked for, it shared keys");
  assert.equal(unmaskReq.survivors.length, 6);
  // A masked input arriving after the mask step closed is late (refused, acknowledged, never stored).
  const late = w.agg.ingestor.counters.late;
  const hd = f.devices.get("dev-h")!;
  await ingest(
    w,
    {
      type: "secagg",
      step: "mask",
      direction: "up",
      jobId,
      round: 1,
      deviceId: "dev-h",
      body: { jobId, round: 1, deviceId: "dev-h" },
      masked: new Uint32Array(layout.totalSize),
      numSamples: hd.n,
    },
    1,
  );
  assert.equal(w.agg.ingestor.counters.late, late + 1);
  assert.equal(await w.store.exists(paths.secagg(jobId, 1, "mask", "dev-h")), false);

  // dev-e never answers step 4; at the deadline the round finishes with the 6 answers it has.
  w.now.t += 20_001;
  await tick(w);
  const job = await new JobRepository(w.store).getJob(jobId);
  const rec = job!.rounds[0];
  assert.equal(rec.status, "aggregated");
  assert.equal(rec.completed, 7);
  assert.deepEqual(rec.secagg?.dropouts, {
    advertise: ["dev-f"],
    share: ["dev-g"],
    mask: ["dev-h"],
    unmask: ["dev-e"],
  });
  assert.deepEqual(rec.secagg?.included, ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-i", "dev-j"]);
  assert.ok(typeof rec.secagg?.unmaskMs === "number" && rec.secagg.unmaskMs >= 0);
  assert.deepEqual(rec.failures.map((x) => [x.deviceId, x.code]).sort(), [
    ["dev-f", "E_ROUND_TIMEOUT"],
    ["dev-g", "E_SECAGG_TIMEOUT"],
    ["dev-h", "E_SECAGG_TIMEOUT"],
  ]);
  // Bytes: every device that took part sent and got something; the masked input dominates.
  const bytes = rec.secagg!.bytes;
  assert.ok(bytes["dev-a"].up > layout.totalSize * 4 && bytes["dev-a"].down > 0);
  assert.equal(bytes["dev-f"].up, 0);
  assert.equal(rec.trainLoss, 0.5);
  // The exact result: FedAvg of the included devices' updates (fixed-point rounding only).
  const included = rec.secagg!.included.map((id) => f.devices.get(id)!);
  assertClose(await model(w, jobId, 1), fedavg(w0, included));
  // The job went on: round 2 opened and was dispatched as a secure round.
  assert.equal(job?.currentRound, 2);
  assert.equal((await round(w, jobId, 2)).secagg?.phase, "advertise");
});

test("a device that refuses a step without a code is refused with the catalogued E_SECAGG_ANSWER, status kept", async () => {
  const all = ids(5);
  const f = secureWorld(all);
  const { w } = f;
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 1,
    secureAggregation: { minSurvivors: 3 },
  });
  await tick(w);
  f.devices.get("dev-d")!.behaviour.secaggShareKeys = "refuse-bare";
  f.devices.get("dev-e")!.behaviour.secaggShareKeys = "refuse-message";
  for (const id of all) await advertise(f, id, jobId, 1);
  await tick(w); // everyone advertised: step 2 is asked; dev-d and dev-e refuse it
  const st = await round(w, jobId, 1);
  assert.deepEqual(st.secagg?.refused["dev-d"], {
    code: "E_SECAGG_ANSWER",
    message: "secaggShareKeys answered 503",
  });
  assert.deepEqual(st.secagg?.refused["dev-e"], {
    code: "E_SECAGG_ANSWER",
    message: "secaggShareKeys answered 500: busy",
  });
});

test("too many dropouts: the round aborts before anything is unmasked, fails with E_SECAGG_ABORTED, the job goes on", async () => {
  const all = ids(5);
  const f = secureWorld(all);
  const { w } = f;
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 2,
    secureAggregation: { minSurvivors: 3 },
  });
  await tick(w);
  const w0 = await model(w, jobId, 0);
  for (const id of ["dev-c", "dev-d", "dev-e"]) f.devices.get(id)!.behaviour.secaggMaskInput = "silent";
  for (const id of all) await advertise(f, id, jobId, 1);
  await tick(w); // everyone advertised: steps 1 and 2 close at once, step 3 is asked
  let st = await round(w, jobId, 1);
  assert.equal(st.secagg?.phase, "mask");
  await deliverMasked(f);
  w.now.t += 31_000;
  await tick(w);
  const job = await new JobRepository(w.store).getJob(jobId);
  const rec = job!.rounds[0];
  assert.equal(rec.status, "failed");
  assert.equal(rec.code, "E_SECAGG_ABORTED");
  assert.equal(rec.completed, 0);
  assert.deepEqual(rec.secagg?.included, []);
  assert.equal(rec.secagg?.error?.code, "E_SECAGG_ABORTED");
  assert.equal(rec.secagg?.unmaskMs, null);
  assert.deepEqual(rec.secagg?.dropouts.mask, ["dev-c", "dev-d", "dev-e"]);
  // Nothing was unmasked: no device was ever asked to reveal shares.
  assert.equal(w.fleet.calls.filter((c) => c.method === "secaggUnmask").length, 0);
  st = await round(w, jobId, 1);
  assert.equal(st.secagg?.phase, "aborted");
  assert.equal(st.status, "closed");
  // The model is kept, and the next round opened.
  assert.deepEqual(await model(w, jobId, 1), w0);
  assert.equal(rec.modelSha256, (await new JobRepository(w.store).getModelMeta(jobId, 0))?.sha256);
  assert.equal(job?.currentRound, 2);
});

test("restarts mid-protocol: a new Function instance resumes at the mask and at the unmask step", async () => {
  const all = ids(5);
  const f = secureWorld(all);
  const { w } = f;
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 1,
    secureAggregation: { stepSeconds: 10 },
  });
  await tick(w);
  const w0 = await model(w, jobId, 0);
  // dev-b cannot be reached for step 4 at first.
  f.devices.get("dev-b")!.behaviour.secaggUnmask = "unreachable";
  for (const id of all) await advertise(f, id, jobId, 1);
  await tick(w);
  assert.equal((await round(w, jobId, 1)).secagg?.phase, "mask");

  // The instance dies in the mask step; a fresh one takes the masked inputs and rebuilds the server by replay.
  w.restart();
  await deliverMasked(f);
  await w.agg.roundTimer({}, ctxStub);
  let st = await round(w, jobId, 1);
  assert.equal(st.secagg?.phase, "unmask");
  assert.equal(Object.keys(st.secagg!.unmasked).length, 4);
  assert.ok(await w.store.exists(paths.secaggUnmaskRequests(jobId, 1)));

  // It dies again in the unmask step; dev-b comes back and answers the stored request.
  const firstAsk = w.fleet.calls.find((c) => c.method === "secaggUnmask" && c.deviceId === "dev-b")!.payload;
  w.restart();
  f.devices.get("dev-b")!.behaviour.secaggUnmask = "ok";
  w.now.t += 2_000;
  await w.agg.roundTimer({}, ctxStub);
  const again = w.fleet.calls.filter((c) => c.method === "secaggUnmask" && c.deviceId === "dev-b");
  assert.equal(again.length, 2);
  assert.deepEqual(again[1].payload, firstAsk, "the same request after the restart");
  st = await round(w, jobId, 1);
  assert.equal(st.status, "closed");
  const rec = (await new JobRepository(w.store).getJob(jobId))!.rounds[0];
  assert.equal(rec.status, "aggregated");
  assert.deepEqual(rec.secagg?.included, all);
  assert.deepEqual(rec.secagg?.dropouts.unmask, []);
  assertClose(await model(w, jobId, 1), fedavg(w0, [...f.devices.values()]));
});

test("a secure job's definition is checked; plaintext results in a secure round are never stored", async () => {
  const f = secureWorld(ids(4));
  const { w } = f;
  const bad: [Record<string, unknown>, RegExp][] = [
    [
      {
        secureAggregation: { neighbours: 3 },
        strategyOptions: { clientsPerRound: 8, fit: { epochs: 1, batchSize: 8, lr: 0.1 } },
      },
      /E_JOB_SECAGG/,
    ],
    [{ secureAggregation: { threshold: 1 } }, /E_JOB_SECAGG/],
    [{ secureAggregation: { stepSeconds: 1 } }, /E_JOB_SECAGG/],
    [{ secureAggregation: { clipRange: -1 } }, /E_JOB_SECAGG/],
    [{ secureAggregation: { bogus: 1 } }, /E_JOB_SECAGG/],
    [{ secureAggregation: 7 }, /E_JOB_SECAGG/],
    [{ secureAggregation: true, compression: "topk:0.1+int8" }, /E_JOB_SECAGG_COMPRESSION/],
    [
      {
        secureAggregation: true,
        strategyOptions: { clientsPerRound: 2, fit: { epochs: 1, batchSize: 8, lr: 0.1 } },
      },
      /E_JOB_SECAGG/,
    ],
  ];
  for (const [over, re] of bad)
    await assert.rejects(startJob(w, { jobId: "bad", ...over }), re, JSON.stringify(over));
  // Without identity keys the aggregator refuses secure jobs.
  const plain = world(ids(4));
  const r = await plain.agg.http.createJob(
    post("/api/jobs", { ...baseJob(), secureAggregation: true }),
    ctx(),
  );
  assert.equal(r.status, 400);
  assert.equal((r.jsonBody as { code: string }).code, "E_JOB_SECAGG");

  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 8, lr: 0.1 } },
    secureAggregation: true,
    downlinkCompression: "int8",
  });
  await tick(w);
  const { events } = chunkEvents({
    type: "result",
    jobId,
    round: 1,
    deviceId: "dev-a",
    layoutHash: layout.hash,
    numSamples: 5,
    metrics: { loss: 1, accuracy: 0, trainMs: 1 },
    delta: makeDelta(layout.totalSize, 1),
  });
  const acks = w.fleet.acks.length;
  const res = await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(res.rejected, 1);
  assert.equal(w.fleet.acks.length, acks + 1, "acknowledged so the queue lets it go");
  assert.equal(await w.store.exists(paths.update(jobId, 1, "dev-a")), false);
  const st = await round(w, jobId, 1);
  assert.deepEqual(st.received, {});
  // An advertisement naming another device is refused.
  const d = f.devices.get("dev-b")!;
  const { advertisement } = await SecAggClient.start({ jobId, round: 1 }, "dev-b", d.n, d.signer);
  await ingest(
    w,
    {
      type: "secagg",
      step: "advertise",
      direction: "up",
      jobId,
      round: 1,
      deviceId: "dev-a",
      body: advertisement,
    },
    1,
  );
});

function baseJob(): Record<string, unknown> {
  return {
    jobId: "job-x",
    modelSpec: SPEC,
    strategy: "fedavg",
    strategyOptions: { clientsPerRound: 3, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 1,
  };
}

test("a secure round: an advertisement whose weight exceeds the device's bound is refused (E_ROUND_SAMPLES), the rest aggregate", async () => {
  // Every trainer declared 100 samples; dev-e advertises 2^52 (a signed weight cannot be clipped).
  const all = ids(5);
  const f = secureWorld(all, (i) => (i === 4 ? 2 ** 52 : 10 * (i + 1)));
  const { w } = f;
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 1,
    secureAggregation: { stepSeconds: 10 },
  });
  await tick(w);
  const w0 = await model(w, jobId, 0);
  for (const id of all) await advertise(f, id, jobId, 1);
  await tick(w);
  await deliverMasked(f);
  await tick(w);
  assert.equal((await round(w, jobId, 1)).status, "closed");
  const rec = (await new JobRepository(w.store).getJob(jobId))!.rounds[0];
  assert.equal(rec.status, "aggregated");
  assert.deepEqual(rec.secagg?.included, ["dev-a", "dev-b", "dev-c", "dev-d"]);
  assert.equal(rec.sampleCountRejected, 1);
  const failure = rec.failures.find((x) => x.deviceId === "dev-e");
  assert.equal(failure?.code, "E_ROUND_SAMPLES");
  assertClose(
    await model(w, jobId, 1),
    fedavg(
      w0,
      [...f.devices.values()].filter((d) => d.id !== "dev-e"),
    ),
  );
});

test("a secure norm:C+mean job: the order carries the bound, an update above it arrives clipped, the sum matches, the record says so", async () => {
  const all = ids(4);
  const f = secureWorld(all);
  const { w } = f;
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 1,
    secureAggregation: { stepSeconds: 10 },
    aggregator: "norm:0.5+mean",
  });
  await tick(w);
  const w0 = await model(w, jobId, 0);
  // Every trainer is told the bound (the cloud sees only the sum, so it cannot bound anything itself).
  assert.equal(w.fleet.configured.length, 4);
  for (const c of w.fleet.configured) assert.equal(c.desired?.normBound, 0.5);
  // dev-d's update is 1000 times too large; the others are under the bound.
  const big = f.devices.get("dev-d")!;
  big.delta.set(big.delta.map((x) => x * 1000));
  const norm = (d: Float32Array) => Math.sqrt(d.reduce((s, x) => s + x * x, 0));
  for (const d of f.devices.values()) if (d.id !== "dev-d") assert.ok(norm(d.delta) < 0.5);
  const before = Float32Array.from(big.delta);
  // Each device runs the update pipeline's bound step as its order says (modules/trainer, core/round/device.ts).
  for (const d of f.devices.values()) {
    const order = w.fleet.configured.find((c) => c.deviceId === d.id)!.desired!;
    boundDelta(d.delta, order.normBound);
  }
  assert.ok(Math.abs(norm(big.delta) - 0.5) < 1e-5, `dev-d's update arrives at norm ${norm(big.delta)}`);
  for (let i = 0; i < before.length; i++)
    assert.ok(Math.abs(big.delta[i]! - (before[i]! * 0.5) / norm(before)) < 1e-6, "same direction");
  for (const id of all) await advertise(f, id, jobId, 1);
  await tick(w);
  await deliverMasked(f);
  await tick(w);
  const rec = (await new JobRepository(w.store).getJob(jobId))!.rounds[0]!;
  assert.equal(rec.status, "aggregated");
  assert.deepEqual(rec.secagg?.included, all);
  // The unmasked mean is FedAvg of the clipped updates.
  assertClose(await model(w, jobId, 1), fedavg(w0, [...f.devices.values()]));
  assert.equal(rec.robust?.aggregator, "norm:0.5+mean");
  assert.equal(rec.robust?.bound, 0.5);
  assert.equal(rec.robust?.onDevices, true);
  assert.deepEqual(rec.robust?.kept, all);
});

test("a secure round never orders a device its policy excludes; its state counts the exclusions", async () => {
  const all = ids(6);
  const f = secureWorld(all);
  const { w } = f;
  w.fleet.trainers = w.fleet.trainers.map((t) =>
    t.deviceId === all[0] ? { ...t, policy: { enabled: false } } : t,
  );
  const jobId = await startJob(w, {
    strategyOptions: { clientsPerRound: 6, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 1,
    secureAggregation: { minSurvivors: 3 },
  });
  await tick(w);
  const st = await round(w, jobId, 1);
  assert.deepEqual(st.participants.map((p) => p.deviceId).sort(), all.slice(1).sort());
  assert.deepEqual(st.selection, { candidates: 5, policyExcluded: { disabled: 1 } });
  assert.ok(!w.fleet.started.some((s) => s.deviceId === all[0]), "never ordered");
});
