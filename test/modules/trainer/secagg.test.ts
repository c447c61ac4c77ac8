/**
 * The trainer module's side of secure aggregation: the advertisement instead of a result, and the three direct
 * methods (secaggShareKeys, secaggMaskInput, secaggUnmask), driven by a real core/secagg SecAggServer playing the
 * cloud, with in-memory module clients and a deterministic TrainExecutor.
 */
import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { createHash, type JsonWebKey } from "node:crypto";
import type { Message } from "azure-iot-device";
import type { Dataset } from "../../../core/data/dataset";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { initialWeights, modelLayout } from "../../../core/engine/models";
import { FlotillaError } from "../../../core/errors";
import { decodeMessage, type Message as FltMessage } from "../../../core/protocol/messages";
import { LocalSigner } from "../../../core/secagg/identity";
import { defaultParams } from "../../../core/secagg/params";
import { SecAggServer } from "../../../core/secagg/server";
import type {
  IdentitySigner,
  KeyAdvertisement,
  MaskInputRequest,
  ShareKeysRequest,
  ShareKeysResponse,
  UnmaskRequest,
  UnmaskResponse,
} from "../../../core/secagg/types";
import type { TrainExecutor, TrainOutcome } from "../../../modules/trainer/src/executor";
import { startTrainer, type TrainerHandle, type TrainerState } from "../../../modules/trainer/src/trainer";
import { FakeModuleClient, FakeTwin } from "../update-queue/fake-client";

const SPEC: ModelSpec = { kind: "mlp", inputShape: [4], numClasses: 2, hidden: [8] };
const layout = modelLayout(SPEC);
const global = initialWeights(SPEC, 1);
const blob = new Uint8Array(global.buffer.slice(0));
const blobSha = createHash("sha256").update(blob).digest("hex");

/** An in-test KeyProvider over LocalSigner: the keys stay in this process. */
class MemoryKeys {
  private readonly keys = new Map<string, { signer: LocalSigner; publicKey: JsonWebKey }>();
  async createKey(id: string): Promise<JsonWebKey> {
    if (!this.keys.has(id)) this.keys.set(id, LocalSigner.generate(id));
    return this.keys.get(id)!.publicKey;
  }
  getPublicKey(id: string): JsonWebKey | undefined {
    return this.keys.get(id)?.publicKey;
  }
  signer(id: string): IdentitySigner {
    const k = this.keys.get(id);
    if (!k)
      return {
        deviceId: id,
        sign: () => Promise.reject(new FlotillaError("E_KEY_NOT_FOUND", `no key for ${id}`)),
      };
    return k.signer;
  }
}

function deltaOf(seed: number): Float32Array {
  const d = new Float32Array(layout.totalSize);
  for (let i = 0; i < d.length; i++) d[i] = Math.sin(seed * 7.1 + i * 0.37) * 0.05;
  return d;
}

/** Trains nothing: the delta is a function of the device, so the test knows every update. */
class FixedExecutor implements TrainExecutor {
  async run(job: { deviceId: string }): Promise<TrainOutcome> {
    const i = Number(job.deviceId.split("-")[1]);
    return { delta: deltaOf(i), numSamples: 10 * i, metrics: { loss: 0.25, accuracy: 0.5, trainMs: 3 } };
  }
}

interface Trainer {
  id: string;
  client: FakeModuleClient;
  handle: TrainerHandle;
}

async function startOne(
  id: string,
  keys: MemoryKeys | undefined,
  reported?: Partial<TrainerState>,
): Promise<Trainer> {
  const client = new FakeModuleClient();
  client.twin = new FakeTwin();
  if (reported) client.twin.properties.reported.flotilla = reported;
  const handle = await startTrainer({
    client: client as never,
    deviceId: id,
    data: {} as Dataset,
    trainExecutor: new FixedExecutor(),
    fetch: async () => ({
      ok: true,
      status: 200,
      arrayBuffer: async () => blob.slice().buffer as ArrayBuffer,
    }),
    inference: "off",
    log: () => {},
    ...(keys ? { keys } : {}),
  });
  return { id, client, handle };
}

function order(round: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    jobId: "job-s",
    round,
    modelUrl: "http://blob.local/model.f32?sig=x",
    modelSha256: blobSha,
    layoutHash: layout.hash,
    modelSpec: SPEC,
    config: { epochs: 1, batchSize: 4, lr: 0.1, seed: 1 },
    deadline: Date.now() + 60_000,
    secagg: { stepSeconds: 30 },
    ...extra,
  };
}

/** The frames a trainer put on its `updates` output, reassembled, in order. */
function frames(client: FakeModuleClient): FltMessage[] {
  const byId = new Map<string, Message[]>();
  for (const o of client.outputs) {
    const id = String(o.msg.properties.getValue("updateId"));
    byId.set(id, [...(byId.get(id) ?? []), o.msg]);
  }
  return [...byId.values()].map((msgs) => {
    msgs.sort(
      (a, b) => Number(a.properties.getValue("chunkIndex")) - Number(b.properties.getValue("chunkIndex")),
    );
    return decodeMessage(new Uint8Array(Buffer.concat(msgs.map((m) => m.getBytes()))));
  });
}

/** Calls a method as the hub would (the payload crossing as JSON). */
async function call(
  t: Trainer,
  method: string,
  payload: unknown,
): Promise<{ status: number; payload: unknown }> {
  return t.client.invoke(method, JSON.parse(JSON.stringify(payload)));
}

async function advertiseAll(trainers: Trainer[], round: number): Promise<Map<string, KeyAdvertisement>> {
  for (const t of trainers) assert.equal((await t.client.invoke("startRound", order(round))).status, 200);
  const ads = new Map<string, KeyAdvertisement>();
  for (const t of trainers) {
    await t.handle.idle();
    const f = frames(t.client).filter((m) => m.type === "secagg" && m.round === round);
    assert.equal(f.length, 1, `${t.id} sent one frame for round ${round}`);
    const m = f[0];
    assert.ok(m.type === "secagg" && m.step === "advertise" && m.direction === "up");
    assert.equal(m.masked, undefined);
    ads.set(t.id, m.body as KeyAdvertisement);
  }
  return ads;
}

test(
  "a secure round on the trainer: advertisement instead of a result, then the three methods; the sum unmasks",
  withContext(async (t) => {
    const keys = new MemoryKeys();
    const ids = ["dev-1", "dev-2", "dev-3", "dev-4"];
    for (const id of ids) await keys.createKey(id);
    const trainers = await Promise.all(ids.map((id) => startOne(id, keys)));
    t.after(() => Promise.all(trainers.map((x) => x.handle.stop())));

    const ads = await advertiseAll(trainers, 1);
    for (const tr of trainers) {
      // No result frame: the update stays on the device.
      assert.ok(frames(tr.client).every((m) => m.type !== "result"));
      const s = tr.handle.state();
      assert.equal(s.status, "secagg");
      assert.equal(s.secaggStep, "advertise");
      assert.equal(s.numSamples, 10 * Number(tr.id.split("-")[1]));
    }
    const server = new SecAggServer({ jobId: "job-s", round: 1 }, defaultParams(4), ids, {
      length: layout.totalSize,
      identityKey: (id) => keys.getPublicKey(id),
    });
    for (const ad of ads.values()) server.addAdvertisement(ad);
    const shareReqs = server.closeAdvertise();

    // Step 2. The same request twice (a retry after a lost answer) gets the same answer.
    const answers = new Map<string, ShareKeysResponse>();
    for (const tr of trainers) {
      const r = await call(tr, "secaggShareKeys", shareReqs.get(tr.id));
      assert.equal(r.status, 200, JSON.stringify(r.payload));
      answers.set(tr.id, r.payload as ShareKeysResponse);
    }
    const again = await call(trainers[0], "secaggShareKeys", shareReqs.get("dev-1"));
    assert.equal(again.status, 200);
    assert.deepEqual(again.payload, answers.get("dev-1"));
    // Another round's request for a round this trainer has no session of: refused with a code.
    const none = await call(trainers[0], "secaggShareKeys", { ...shareReqs.get("dev-1"), round: 9 });
    assert.equal(none.status, 400);
    assert.equal((none.payload as { code: string }).code, "E_SECAGG_STATE");
    const junk = await trainers[0].client.invoke("secaggShareKeys", "not json");
    assert.equal(junk.status, 400);
    assert.equal((junk.payload as { code: string }).code, "E_SECAGG_INVALID");
    for (const a of answers.values()) server.addShares(JSON.parse(JSON.stringify(a)) as ShareKeysResponse);
    const maskReqs = server.closeShares();

    // Step 3: accepted at once; the masked input follows on the `updates` output.
    for (const tr of trainers) {
      const r = await call(tr, "secaggMaskInput", maskReqs.get(tr.id));
      assert.equal(r.status, 200, JSON.stringify(r.payload));
      assert.deepEqual(r.payload, { accepted: true, jobId: "job-s", round: 1 });
    }
    // Asked again with the same request: the same answer, nothing sent twice.
    assert.equal((await call(trainers[0], "secaggMaskInput", maskReqs.get("dev-1"))).status, 200);
    // A different mask request after the update was masked: a replay, refused.
    const replay = await call(trainers[0], "secaggMaskInput", {
      ...maskReqs.get("dev-1"),
      shares: [],
    } as MaskInputRequest);
    assert.equal(replay.status, 400);
    assert.equal((replay.payload as { code: string }).code, "E_SECAGG_REPLAY");
    for (const tr of trainers) {
      await tr.handle.idle();
      const masked = frames(tr.client).filter((m) => m.type === "secagg" && m.step === "mask");
      assert.equal(masked.length, 1, `${tr.id}: one masked input`);
      const m = masked[0];
      assert.ok(m.type === "secagg");
      assert.ok(m.masked instanceof Uint32Array && m.masked.length === layout.totalSize);
      assert.deepEqual(m.body, { jobId: "job-s", round: 1, deviceId: tr.id });
      assert.equal(m.numSamples, 10 * Number(tr.id.split("-")[1]));
      assert.equal(m.metrics?.loss, 0.25);
      server.addMaskedInput({ jobId: "job-s", round: 1, deviceId: tr.id, masked: m.masked });
      assert.equal(tr.handle.state().secaggStep, "mask");
    }
    const unmaskReqs = server.closeMasked();

    // Step 4.
    for (const tr of trainers) {
      const r = await call(tr, "secaggUnmask", unmaskReqs.get(tr.id));
      assert.equal(r.status, 200, JSON.stringify(r.payload));
      server.addUnmaskResponse(JSON.parse(JSON.stringify(r.payload)) as UnmaskResponse);
      assert.equal(tr.handle.state().status, "done");
    }
    const result = server.finish();
    // The server learns the weighted mean, and nothing else.
    const total = ids.reduce((s, id) => s + 10 * Number(id.split("-")[1]), 0);
    assert.equal(result.totalWeight, total);
    for (let i = 0; i < layout.totalSize; i++) {
      let want = 0;
      for (const id of ids) {
        const k = Number(id.split("-")[1]);
        want += (10 * k * deltaOf(k)[i]) / total;
      }
      assert.ok(Math.abs(result.mean[i] - want) < 1e-6, `mean[${i}] ${result.mean[i]} vs ${want}`);
    }
  }),
);

test(
  "trainer refusals are 400 {code}: bad signatures, both shares of a neighbour, and no identity key",
  withContext(async (t) => {
    const keys = new MemoryKeys();
    const ids = ["dev-1", "dev-2", "dev-3"];
    for (const id of ids) await keys.createKey(id);
    const trainers = await Promise.all(ids.map((id) => startOne(id, keys)));
    t.after(() => Promise.all(trainers.map((x) => x.handle.stop())));

    // Round 1: the server relays a forged identity key for dev-2: dev-1 refuses with E_SECAGG_SIGNATURE.
    const ads = await advertiseAll(trainers, 1);
    const server = new SecAggServer({ jobId: "job-s", round: 1 }, defaultParams(3), ids, {
      length: layout.totalSize,
      identityKey: (id) => keys.getPublicKey(id),
    });
    for (const ad of ads.values()) server.addAdvertisement(ad);
    const reqs = server.closeAdvertise();
    const forged = JSON.parse(JSON.stringify(reqs.get("dev-1"))) as ShareKeysRequest;
    const other = LocalSigner.generate("dev-2").publicKey;
    (forged.neighbours as { identityKey: JsonWebKey; advertisement: KeyAdvertisement }[]).find(
      (n) => n.advertisement.deviceId === "dev-2",
    )!.identityKey = other;
    const sig = await call(trainers[0], "secaggShareKeys", forged);
    assert.equal(sig.status, 400);
    assert.equal((sig.payload as { code: string }).code, "E_SECAGG_SIGNATURE");

    // Round 2: all honest up to step 4, where dev-1 is asked for both shares of dev-2: E_SECAGG_REFUSED.
    const ads2 = await advertiseAll(trainers, 2);
    const s2 = new SecAggServer({ jobId: "job-s", round: 2 }, defaultParams(3), ids, {
      length: layout.totalSize,
      identityKey: (id) => keys.getPublicKey(id),
    });
    for (const ad of ads2.values()) s2.addAdvertisement(ad);
    const share2 = s2.closeAdvertise();
    for (const tr of trainers)
      s2.addShares((await call(tr, "secaggShareKeys", share2.get(tr.id))).payload as ShareKeysResponse);
    const mask2 = s2.closeShares();
    for (const tr of trainers)
      assert.equal((await call(tr, "secaggMaskInput", mask2.get(tr.id))).status, 200);
    const greedy: UnmaskRequest = {
      jobId: "job-s",
      round: 2,
      survivors: ["dev-2", "dev-3"],
      dropped: ["dev-2"],
    };
    const refused = await call(trainers[0], "secaggUnmask", greedy);
    assert.equal(refused.status, 400);
    assert.equal((refused.payload as { code: string }).code, "E_SECAGG_REFUSED");
    // abortRound forgets the session: later steps are E_SECAGG_STATE.
    assert.equal((await trainers[1].client.invoke("abortRound", { jobId: "job-s", round: 2 })).status, 200);
    const gone = await call(trainers[1], "secaggUnmask", {
      jobId: "job-s",
      round: 2,
      survivors: [],
      dropped: [],
    });
    assert.equal((gone.payload as { code: string }).code, "E_SECAGG_STATE");

    // A trainer without an identity key provider: the secure round fails with a failure frame E_SECAGG_NO_KEY.
    const bare = await startOne("dev-9", undefined);
    t.after(() => bare.handle.stop());
    await bare.client.invoke("startRound", order(1));
    await bare.handle.idle();
    const f = frames(bare.client);
    assert.equal(f.length, 1);
    assert.ok(f[0].type === "failure");
    assert.equal(f[0].code, "E_SECAGG_NO_KEY");
    // A key provider without this device's key: E_KEY_NOT_FOUND, also as a failure frame.
    const nokey = await startOne("dev-8", keys);
    t.after(() => nokey.handle.stop());
    await nokey.client.invoke("startRound", order(1));
    await nokey.handle.idle();
    const g = frames(nokey.client);
    assert.ok(g[0].type === "failure" && g[0].code === "E_KEY_NOT_FOUND", JSON.stringify(g[0]));
  }),
);

test(
  "a trainer restarted mid-round does not train it again and answers the later steps with E_SECAGG_STATE",
  withContext(async (t) => {
    const keys = new MemoryKeys();
    await keys.createKey("dev-1");
    const tr = await startOne("dev-1", keys, {
      status: "secagg",
      jobId: "job-s",
      round: 1,
      secaggStep: "share",
    });
    t.after(() => tr.handle.stop());
    // The twin still orders round 1: not retrained (its keys and update died with the old process).
    assert.equal(tr.handle.startRound(order(1)), false);
    await tr.handle.idle();
    assert.equal(tr.client.outputs.length, 0);
    const r = await call(tr, "secaggMaskInput", { jobId: "job-s", round: 1, shares: [] });
    assert.equal(r.status, 400);
    assert.equal((r.payload as { code: string }).code, "E_SECAGG_STATE");
    // A newer round is trained as usual.
    assert.equal(tr.handle.startRound(order(2)), true);
    await tr.handle.idle();
    assert.equal(frames(tr.client)[0].type, "secagg");
  }),
);
