import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ModuleClient, type Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { loadDirectory } from "../../../core/data/dirloader";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { createModel, initialWeights, modelLayout } from "../../../core/engine/models";
import { decodeMessage } from "../../../core/protocol/messages";
import { createRegistry, createServiceClient, startLocalHub, type LocalHub } from "../../../local/hub";
import { loadTrainerConfig } from "../../../modules/trainer/src/config";
import { startTrainer, type TrainerHandle, type TrainerState } from "../../../modules/trainer/src/trainer";

const SPEC: ModelSpec = { kind: "mlp", inputShape: [4], numClasses: 2, hidden: [64] };
const ROUTE =
  'FROM /messages/modules/trainer/outputs/updates INTO BrokeredEndpoint("/modules/update-queue/inputs/updates")';

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A blob server like Azurite's, for one model: GET /model.f32 (and /other.f32). */
async function blobServer(
  blobs: Record<string, Uint8Array>,
): Promise<{ url: (p: string) => string; server: Server; gets: string[] }> {
  const gets: string[] = [];
  const server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    gets.push(path);
    const blob = blobs[path];
    if (!blob) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": blob.byteLength });
    res.end(Buffer.from(blob));
  });
  server.listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  const port = (server.address() as AddressInfo).port;
  return { server, gets, url: (p) => `http://127.0.0.1:${port}${p}?sv=2023&sig=secret` };
}

type Received = { body: Buffer; props: Record<string, string> };

function sha(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

test("trainer module against the local hub over TLS with real ModuleClients", async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), "flotilla-trainer-data-"));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const rows = ["a,b,c,d,label"];
  for (let i = 0; i < 12; i++) rows.push(`${(i % 3) / 3},${i / 12},${(i * 7) % 5},${i % 2},${i % 2}`);
  writeFileSync(join(dataDir, "local.csv"), rows.join("\n") + "\n");

  const global = initialWeights(SPEC, 7);
  const blob = new Uint8Array(global.buffer.slice(0));
  const blobs = await blobServer({ "/model.f32": blob, "/other.f32": new Uint8Array(blob.byteLength) });
  t.after(() => new Promise<void>((r) => blobs.server.close(() => r())));

  const hub: LocalHub = await startLocalHub({ routes: { toQueue: ROUTE }, log: () => {} });
  // Clean-up in reverse order of start (t.after hooks run first-in first-out): clients before the hub, or the SDK
  // keeps retrying to re-enable methods and twin updates against a closed hub.
  const cleanup: (() => Promise<unknown>)[] = [() => hub.close()];
  t.after(async () => {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
  });
  const info = { serviceConnectionString: hub.serviceConnectionString, caCertPem: hub.caCertPem };
  const registry = createRegistry(info);
  const service = createServiceClient(info);

  // The update-queue side: a plain ModuleClient collecting what edgeHub routes to its `updates` input.
  const queue = ModuleClient.fromConnectionString(hub.createModule("edge-1", "update-queue"), Mqtt);
  await queue.setOptions({ ca: hub.caCertPem });
  await queue.open();
  cleanup.push(() => queue.close());
  const got: Received[] = [];
  queue.on("inputMessage", (input: string, msg: Message) => {
    const props: Record<string, string> = {};
    for (let i = 0; i < msg.properties.count(); i++) {
      const p = msg.properties.getItem(i);
      props[p.key] = p.value;
    }
    if (input === "updates") got.push({ body: Buffer.from(msg.data as Buffer), props });
    void queue.complete(msg);
  });
  await until(
    () => hub.subscriptions("edge-1", "update-queue").some((s) => s.includes("/inputs/")),
    5000,
    "queue subscribed",
  );

  // The trainer, with a spy on the reported patches it sends (the patches still go over the wire).
  const client = ModuleClient.fromConnectionString(hub.createModule("edge-1", "trainer"), Mqtt);
  await client.setOptions({ ca: hub.caCertPem });
  const reported: TrainerState[] = [];
  const getTwin = client.getTwin.bind(client) as () => Promise<{
    properties: { reported: Record<string, unknown> };
  }>;
  (client as unknown as { getTwin: typeof getTwin }).getTwin = async () => {
    const twin = await getTwin();
    const r = twin.properties.reported as {
      update: (p: Record<string, unknown>, cb: (e?: Error) => void) => void;
      __spied?: boolean;
    };
    if (!r.__spied) {
      const update = r.update.bind(r);
      r.update = (patch, cb) => {
        if (patch.flotilla) reported.push(patch.flotilla as TrainerState);
        update(patch, cb);
      };
      Object.defineProperty(r, "__spied", { value: true, enumerable: false });
    }
    return twin;
  };
  const logs: string[] = [];
  const trainer: TrainerHandle = await startTrainer({
    client: client as never,
    dataDir,
    maxChunkBytes: 1024,
    progressIntervalMs: 0,
    closeClient: true,
    log: (l, m) => logs.push(`${l} ${m}`),
  });
  cleanup.push(() => trainer.stop());

  const order = (round: number, extra: Record<string, unknown> = {}) => ({
    jobId: "job-1",
    round,
    modelUrl: blobs.url("/model.f32"),
    modelSha256: sha(blob),
    layoutHash: modelLayout(SPEC).hash,
    modelSpec: SPEC,
    config: { epochs: 2, batchSize: 4, lr: 0.1, mu: 0.01, seed: 3 },
    deadline: Date.now() + 60_000,
    ...extra,
  });
  const frameOf = (from: number): Buffer => {
    const parts = got.slice(from);
    const count = Number(parts[0].props.chunkCount);
    assert.equal(parts.length, count);
    parts.sort((a, b) => Number(a.props.chunkIndex) - Number(b.props.chunkIndex));
    return Buffer.concat(parts.map((p) => p.body));
  };

  await t.test("a desired `flotilla` round: download, train, chunks to update-queue, done", async () => {
    const o = order(1);
    await registry.updateModuleTwin("edge-1", "trainer", { properties: { desired: { flotilla: o } } }, "*");
    await until(() => trainer.state().status === "done" && got.length > 0, 20_000, "round 1 done");
    await trainer.idle();
    assert.ok(got.length >= 2, `the frame is split (${got.length} chunks)`);
    await until(() => got.length === Number(got[0].props.chunkCount), 5000, "all chunks");
    const frame = frameOf(0);
    for (const [i, c] of got.entries()) {
      assert.ok(c.body.byteLength <= 1024);
      assert.equal(c.props.jobId, "job-1");
      assert.equal(c.props.round, "1");
      assert.equal(c.props.deviceId, "edge-1");
      assert.equal(c.props.chunkIndex, String(i));
      assert.equal(c.props.size, String(frame.byteLength));
      assert.equal(c.props.sha256, sha(frame));
      assert.equal(c.props.updateId, sha(frame).slice(0, 32));
    }
    const msg = decodeMessage(frame);
    assert.equal(msg.type, "result");
    if (msg.type !== "result") return;
    assert.equal(msg.numSamples, 12);
    assert.equal(msg.layoutHash, modelLayout(SPEC).hash);
    // The same training done here: the delta must equal trained − global.
    const model = await createModel(SPEC, 3);
    model.setWeights(global);
    await model.train(loadDirectory(dataDir, { inputShape: SPEC.inputShape }), { ...o.config });
    const trained = model.getWeights();
    model.dispose();
    const delta = msg.delta;
    assert.ok(delta instanceof Float32Array, "the trainer sends a raw delta (the quantizer compresses)");
    assert.equal(delta.length, global.length);
    let nonZero = 0;
    for (let i = 0; i < global.length; i++) {
      assert.ok(Math.abs(delta[i] - (trained[i] - global[i])) < 1e-6, `delta[${i}]`);
      if (delta[i] !== 0) nonZero++;
    }
    assert.ok(nonZero > 0);
    const statuses = reported.filter((r) => r.round === 1).map((r) => r.status);
    const order1 = ["downloading", "training", "queued", "done"].map((s) => statuses.indexOf(s as never));
    assert.ok(
      order1.every((i, k) => i >= 0 && (k === 0 || i > order1[k - 1])),
      `statuses ${statuses}`,
    );
    // The hub's twin holds the final state.
    const twin = (await registry.getModuleTwin("edge-1", "trainer")).responseBody;
    const r = twin.properties.reported.flotilla as TrainerState;
    assert.equal(r.status, "done");
    assert.equal(r.numSamples, 12);
    assert.ok(Number.isFinite(r.metrics?.loss));
    assert.equal(r.error, undefined, "a null in a reported patch removes the key");
    assert.ok(!JSON.stringify(logs).includes("secret"), "the SAS never reaches the logs");
  });

  await t.test("startRound with a wrong sha256: error E_MODEL_HASH, nothing sent", async () => {
    const before = got.length;
    const getsBefore = blobs.gets.length;
    const r = await service.invokeDeviceMethod("edge-1", "trainer", {
      methodName: "startRound",
      payload: order(2, { modelSha256: sha(Buffer.from("another model")) }),
      responseTimeoutInSeconds: 5,
    });
    assert.equal(r.result.status, 200);
    await until(
      () => trainer.state().round === 2 && trainer.state().status === "error",
      10_000,
      "hash error",
    );
    await trainer.idle();
    assert.equal(trainer.state().error?.code, "E_MODEL_HASH");
    assert.equal(
      blobs.gets.length,
      getsBefore + 1,
      "the blob was downloaded (no cache entry for that sha256)",
    );
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(got.length, before);
    const status = await service.invokeDeviceMethod("edge-1", "trainer", {
      methodName: "status",
      payload: {},
      responseTimeoutInSeconds: 5,
    });
    assert.equal((status.result.payload as TrainerState).error?.code, "E_MODEL_HASH");
    // The same round again is refused; a bad payload is a 400.
    const again = await service.invokeDeviceMethod("edge-1", "trainer", {
      methodName: "startRound",
      payload: order(2),
      responseTimeoutInSeconds: 5,
    });
    assert.equal(again.result.status, 409);
    const bad = await service.invokeDeviceMethod("edge-1", "trainer", {
      methodName: "startRound",
      payload: { jobId: "x", round: -1 },
      responseTimeoutInSeconds: 5,
    });
    assert.equal(bad.result.status, 400);
    assert.equal((bad.result.payload as { code: string }).code, "E_ROUND_INVALID");
  });

  await t.test("startRound trains at once; abortRound stops a long round, nothing sent", async () => {
    const before = got.length;
    const ok = await service.invokeDeviceMethod("edge-1", "trainer", {
      methodName: "startRound",
      payload: order(3),
      responseTimeoutInSeconds: 5,
    });
    assert.equal(ok.result.status, 200);
    await until(
      () => trainer.state().round === 3 && trainer.state().status === "done",
      20_000,
      "round 3 done",
    );
    await until(
      () => got.length > before && got.length - before === Number(got[before].props.chunkCount),
      5000,
      "round 3 chunks",
    );
    assert.equal(decodeMessage(frameOf(before)).round, 3);

    const before2 = got.length;
    const long = order(4, { config: { epochs: 100_000, batchSize: 1, lr: 0.01, seed: 1 } });
    await service.invokeDeviceMethod("edge-1", "trainer", {
      methodName: "startRound",
      payload: long,
      responseTimeoutInSeconds: 5,
    });
    await until(
      () => trainer.state().round === 4 && trainer.state().status === "training",
      10_000,
      "round 4 training",
    );
    const started = Date.now();
    const ab = await service.invokeDeviceMethod("edge-1", "trainer", {
      methodName: "abortRound",
      payload: { jobId: "job-1", round: 4 },
      responseTimeoutInSeconds: 5,
    });
    assert.equal(ab.result.status, 200);
    await trainer.idle();
    assert.ok(Date.now() - started < 5000, "training stopped soon after the abort");
    assert.equal(trainer.state().status, "error");
    assert.equal(trainer.state().error?.code, "E_ROUND_ABORTED");
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(got.length, before2);
  });

  await t.test("a missed deadline: E_ROUND_DEADLINE reported and a failure frame sent", async () => {
    const before = got.length;
    const late = order(5, {
      deadline: Date.now() + 400,
      config: { epochs: 100_000, batchSize: 1, lr: 0.01, seed: 1 },
    });
    await registry.updateModuleTwin(
      "edge-1",
      "trainer",
      { properties: { desired: { flotilla: late } } },
      "*",
    );
    await until(
      () => trainer.state().round === 5 && trainer.state().status === "error",
      10_000,
      "deadline error",
    );
    assert.equal(trainer.state().error?.code, "E_ROUND_DEADLINE");
    await until(() => got.length > before, 5000, "failure frame");
    const msg = decodeMessage(frameOf(before));
    assert.equal(msg.type, "failure");
    if (msg.type === "failure")
      assert.deepEqual([msg.round, msg.code, msg.deviceId], [5, "E_ROUND_DEADLINE", "edge-1"]);
  });

  await t.test("a bad data directory: E_DATA_NOT_FOUND reported, the process lives on", async () => {
    const c2 = ModuleClient.fromConnectionString(hub.createModule("edge-2", "trainer"), Mqtt);
    await c2.setOptions({ ca: hub.caCertPem });
    const t2 = await startTrainer({
      client: c2 as never,
      dataDir: join(dataDir, "missing"),
      closeClient: true,
      log: () => {},
    });
    try {
      await registry.updateModuleTwin(
        "edge-2",
        "trainer",
        { properties: { desired: { flotilla: order(1) } } },
        "*",
      );
      await until(() => t2.state().status === "error", 10_000, "data error");
      assert.equal(t2.state().error?.code, "E_DATA_NOT_FOUND");
      await t2.idle();
      const twin = (await registry.getModuleTwin("edge-2", "trainer")).responseBody;
      assert.equal((twin.properties.reported.flotilla as TrainerState).error?.code, "E_DATA_NOT_FOUND");
    } finally {
      await t2.stop();
    }
  });
});

test("trainer configuration names what is missing or invalid", () => {
  assert.throws(
    () => loadTrainerConfig({}),
    (e: Error & { code?: string }) => {
      assert.equal(e.code, "E_CONFIG_MISSING");
      assert.match(e.message, /FLOTILLA_CONNECTION_STRING/);
      return true;
    },
  );
  assert.throws(
    () => loadTrainerConfig({ IOTEDGE_DEVICEID: "d", IOTEDGE_MODULEID: "trainer" }),
    (e: Error) => {
      assert.match(e.message, /IOTEDGE_WORKLOADURI/);
      assert.match(e.message, /IOTEDGE_MODULEGENERATIONID/);
      assert.doesNotMatch(e.message, /IOTEDGE_DEVICEID/);
      return true;
    },
  );
  const cs = "HostName=h.azure-devices.net;DeviceId=d1;ModuleId=trainer;SharedAccessKey=aGk=";
  assert.throws(
    () => loadTrainerConfig({ FLOTILLA_CONNECTION_STRING: cs, FLOTILLA_MAX_CHUNK_BYTES: "300000" }),
    /FLOTILLA_MAX_CHUNK_BYTES=300000/,
  );
  assert.throws(
    () => loadTrainerConfig({ FLOTILLA_CONNECTION_STRING: "HostName=h" }),
    /FLOTILLA_CONNECTION_STRING \(needs/,
  );
  const ok = loadTrainerConfig({ FLOTILLA_CONNECTION_STRING: cs });
  assert.equal(ok.dataDir, "/data");
  assert.equal(ok.connection.deviceId, "d1");
  assert.equal(
    loadTrainerConfig({ FLOTILLA_CONNECTION_STRING: cs, FLOTILLA_DATA_DIR: "/mnt/d" }).dataDir,
    "/mnt/d",
  );
});
