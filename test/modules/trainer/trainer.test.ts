import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ModuleClient, type Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { decodeTensor, encodeTensor, parseCompression } from "../../../core/compress";
import { loadDirectory } from "../../../core/data/dirloader";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { createModel, initialWeights, modelLayout } from "../../../core/engine/models";
import { exportOnnx } from "../../../core/export/onnx";
import { OnnxModel } from "../../../core/export/onnx-runtime";
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

test(
  "trainer module against the local hub over TLS with real ModuleClients",
  withContext(async (t) => {
    const dataDir = mkdtempSync(join(tmpdir(), "flotilla-trainer-data-"));
    t.after(() => rmSync(dataDir, { recursive: true, force: true }));
    writeLocalData(dataDir);

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
      // Counted by reason in the trainer's metrics (docs/metrics.md), and so are the method calls.
      const text = await trainer.metrics.text();
      assert.match(text, /^flotilla_trainer_rounds_failed_total\{reason="E_MODEL_HASH",[^}]*\} 1$/m);
      assert.match(
        text,
        /^flotilla_trainer_method_calls_total\{method="startRound",status="200",[^}]*\} \d+$/m,
      );
      assert.match(text, /^flotilla_trainer_rounds_completed_total\{[^}]*edge_device="edge-1"[^}]*\} 1$/m);
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
      const ab = await service.invokeDeviceMethod("edge-1", "trainer", {
        methodName: "abortRound",
        payload: { jobId: "job-1", round: 4 },
        responseTimeoutInSeconds: 5,
      });
      assert.equal(ab.result.status, 200);
      await trainer.idle();
      // Aborted, not finished: the round ends in E_ABORTED and sends nothing (no timed assertion: speed is a
      // benchmark's business).
      assert.equal(trainer.state().status, "error");
      assert.equal(trainer.state().error?.code, "E_ABORTED");
      await new Promise((res) => setTimeout(res, 300));
      assert.equal(got.length, before2);

      // A job stopped and started again sends the aborted round once more: it trains (not 409 "already tried").
      const again = await service.invokeDeviceMethod("edge-1", "trainer", {
        methodName: "startRound",
        payload: order(4),
        responseTimeoutInSeconds: 5,
      });
      assert.equal(again.result.status, 200);
      await until(
        () => trainer.state().round === 4 && trainer.state().status === "done",
        20_000,
        "round 4 retrained after its abort",
      );
      await until(
        () => got.length > before2 && got.length - before2 === Number(got[before2].props.chunkCount),
        5000,
        "round 4 chunks",
      );
      assert.equal(decodeMessage(frameOf(before2)).round, 4);
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
  }),
);

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

/** The trainer tests' local data: 12 rows of 4 features, labels alternating 0/1. */
function writeLocalData(dir: string): void {
  const rows = ["a,b,c,d,label"];
  for (let i = 0; i < 12; i++) rows.push(`${(i % 3) / 3},${i / 12},${(i * 7) % 5},${i % 2},${i % 2}`);
  writeFileSync(join(dir, "local.csv"), rows.join("\n") + "\n");
}

type MethodAnswer = { status: number; payload: Record<string, unknown> };

test(
  "trainer: flz-encoded global models and ONNX inference (evaluation, predict)",
  withContext(async (t) => {
    const dataDir = mkdtempSync(join(tmpdir(), "flotilla-trainer-flz-"));
    t.after(() => rmSync(dataDir, { recursive: true, force: true }));
    writeLocalData(dataDir);
    const data = loadDirectory(dataDir, { inputShape: SPEC.inputShape });
    assert.equal(data.n, 12);
    // Held-out data (FLOTILLA_EVAL_DIR): every other row of the local data's format, never trained on.
    const evalDir = mkdtempSync(join(tmpdir(), "flotilla-trainer-eval-"));
    t.after(() => rmSync(evalDir, { recursive: true, force: true }));
    writeFileSync(
      join(evalDir, "held-out.csv"),
      ["a,b,c,d,label", "0,0.5,1,0,0", "0.3,0.1,2,1,1", "0.6,0.9,3,1,1", "0,0.2,4,0,0", "0.3,0.7,0,1,0"].join(
        "\n",
      ) + "\n",
    );
    const heldOut = loadDirectory(evalDir, { inputShape: SPEC.inputShape });

    const layoutHash = modelLayout(SPEC).hash;
    const global = initialWeights(SPEC, 11);
    const raw = new Uint8Array(global.buffer.slice(0));
    // The downlink copy: one int8 envelope of the global weights (lossy, so its decoding differs from `global`).
    const envelope = encodeTensor(global, parseCompression("int8"), { layoutHash, seed: 5 });
    const decoded = decodeTensor(envelope, { layoutHash, length: global.length });
    assert.ok(
      decoded.some((v, i) => v !== global[i]),
      "the fixture is lossy: training from `global` would not pass the delta check",
    );
    // One payload byte flipped: served under the good envelope's sha256 it is "tampered" (hash mismatch); ordered
    // with its own sha256 it passes the hash check and must fail the envelope's own checks.
    const corrupted = envelope.slice();
    corrupted[envelope.byteLength - 10] ^= 0xff;
    assert.throws(
      () => decodeTensor(corrupted),
      (e: Error & { code?: string }) => e.code === "E_ENVELOPE_CHECKSUM",
    );
    const onnxFp32 = exportOnnx(SPEC, global);
    const onnxInt8 = exportOnnx(SPEC, global, { quantize: "int8" });
    const blobs = await blobServer({
      "/model.f32": raw,
      "/model.flz": envelope,
      "/tampered.flz": corrupted,
      "/model.onnx": onnxFp32,
      "/model.int8.onnx": onnxInt8,
    });
    t.after(() => new Promise<void>((r) => blobs.server.close(() => r())));

    const hub: LocalHub = await startLocalHub({ routes: { toQueue: ROUTE }, log: () => {} });
    const cleanup: (() => Promise<unknown>)[] = [() => hub.close()];
    t.after(async () => {
      for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
    });
    const info = { serviceConnectionString: hub.serviceConnectionString, caCertPem: hub.caCertPem };
    const registry = createRegistry(info);
    const service = createServiceClient(info);

    const queue = ModuleClient.fromConnectionString(hub.createModule("edge-z", "update-queue"), Mqtt);
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
      () => hub.subscriptions("edge-z", "update-queue").some((s) => s.includes("/inputs/")),
      5000,
      "queue subscribed",
    );

    const client = ModuleClient.fromConnectionString(hub.createModule("edge-z", "trainer"), Mqtt);
    await client.setOptions({ ca: hub.caCertPem });
    const trainer: TrainerHandle = await startTrainer({
      client: client as never,
      dataDir,
      evalDir,
      progressIntervalMs: 0,
      closeClient: true,
      log: () => {},
    });
    cleanup.push(() => trainer.stop());

    const order = (round: number, extra: Record<string, unknown> = {}) => ({
      jobId: "job-z",
      round,
      modelUrl: blobs.url("/model.f32"),
      modelSha256: sha(raw),
      layoutHash,
      modelSpec: SPEC,
      config: { epochs: 2, batchSize: 4, lr: 0.1, seed: 3 },
      deadline: Date.now() + 60_000,
      ...extra,
    });
    const onnxRef = (extra: Record<string, unknown> = {}) => ({
      url: blobs.url("/model.onnx"),
      sha256: sha(onnxFp32),
      int8Url: blobs.url("/model.int8.onnx"),
      int8Sha256: sha(onnxInt8),
      ...extra,
    });
    const call = async (
      methodName: string,
      payload: unknown,
      moduleId = "trainer",
    ): Promise<MethodAnswer> => {
      const r = await service.invokeDeviceMethod("edge-z", moduleId, {
        methodName,
        payload,
        responseTimeoutInSeconds: 10,
      });
      return r.result as MethodAnswer;
    };
    /** Orders the round through startRound and waits for it to end (done or error). */
    const runRound = async (o: ReturnType<typeof order>): Promise<TrainerState> => {
      const r = await call("startRound", o);
      assert.equal(r.status, 200, JSON.stringify(r.payload));
      await until(
        () => trainer.state().round === o.round && ["done", "error"].includes(trainer.state().status),
        20_000,
        `round ${o.round} to end`,
      );
      await trainer.idle();
      return trainer.state();
    };
    /** The frame of the chunks from index `from` on (waits until they are all there). */
    const frameAt = async (from: number): Promise<Buffer> => {
      await until(
        () => got.length > from && got.length - from >= Number(got[from].props.chunkCount),
        5000,
        "all chunks of a frame",
      );
      const parts = got.slice(from, from + Number(got[from].props.chunkCount));
      parts.sort((a, b) => Number(a.props.chunkIndex) - Number(b.props.chunkIndex));
      return Buffer.concat(parts.map((p) => p.body));
    };
    const reportedInference = async (): Promise<TrainerState["inference"]> => {
      const twin = (await registry.getModuleTwin("edge-z", "trainer")).responseBody;
      return (twin.properties.reported.flotilla as TrainerState | undefined)?.inference;
    };

    await t.test("predict before any model: 404 E_PREDICT_NO_MODEL", async () => {
      const r = await call("predict", { inputs: [[0, 0, 0, 0]] });
      assert.equal(r.status, 404);
      assert.equal(r.payload.code, "E_PREDICT_NO_MODEL");
    });

    await t.test("a tampered flz envelope: E_MODEL_HASH, nothing sent", async () => {
      const before = got.length;
      const getsBefore = blobs.gets.length;
      const st = await runRound(
        order(1, { modelUrl: blobs.url("/tampered.flz"), modelSha256: sha(envelope), modelEncoding: "flz" }),
      );
      assert.equal(st.status, "error");
      assert.equal(st.error?.code, "E_MODEL_HASH");
      assert.deepEqual(blobs.gets.slice(getsBefore), ["/tampered.flz"]);
      await new Promise((res) => setTimeout(res, 300));
      assert.equal(got.length, before, "no frame after E_MODEL_HASH");
    });

    await t.test(
      "a corrupted envelope whose sha256 matches the order: E_MODEL_SIZE and a failure frame",
      async () => {
        const before = got.length;
        const st = await runRound(
          order(2, {
            modelUrl: blobs.url("/tampered.flz"),
            modelSha256: sha(corrupted),
            modelEncoding: "flz",
          }),
        );
        assert.equal(st.status, "error");
        assert.equal(st.error?.code, "E_MODEL_SIZE");
        assert.match(st.error?.message ?? "", /envelope/);
        const msg = decodeMessage(await frameAt(before));
        assert.equal(msg.type, "failure");
        if (msg.type === "failure") assert.deepEqual([msg.round, msg.code], [2, "E_MODEL_SIZE"]);
      },
    );

    await t.test("modelEncoding flz: the trainer trains from the decoded weights", async () => {
      const before = got.length;
      const getsBefore = blobs.gets.length;
      const o = order(3, {
        modelUrl: blobs.url("/model.flz"),
        modelSha256: sha(envelope),
        modelEncoding: "flz",
      });
      const st = await runRound(o);
      assert.equal(st.status, "done", JSON.stringify(st.error));
      assert.equal(st.numSamples, 12);
      assert.deepEqual(
        blobs.gets.slice(getsBefore),
        ["/model.flz"],
        "the failed download was not cached: fetched again",
      );
      const msg = decodeMessage(await frameAt(before));
      assert.equal(msg.type, "result");
      if (msg.type !== "result") return;
      assert.equal(msg.round, 3);
      assert.equal(msg.layoutHash, layoutHash);
      const model = await createModel(SPEC, 3);
      model.setWeights(decoded);
      await model.train(data, { ...o.config });
      const trained = model.getWeights();
      model.dispose();
      const delta = msg.delta;
      assert.ok(delta instanceof Float32Array, "the trainer sends a raw delta");
      assert.equal(delta.length, decoded.length);
      let nonZero = 0;
      for (let i = 0; i < decoded.length; i++) {
        assert.ok(Math.abs(delta[i] - (trained[i] - decoded[i])) < 1e-6, `delta[${i}]`);
        if (delta[i] !== 0) nonZero++;
      }
      assert.ok(nonZero > 0);
      // No ONNX model in the order: still nothing to predict with.
      assert.equal(trainer.state().inference, undefined);
      assert.equal((await call("predict", { inputs: [[0, 0, 0, 0]] })).status, 404);
    });

    await t.test(
      "a wrong sha256 for the ONNX file: inference.error E_ONNX_HASH, the round still done",
      async () => {
        const st = await runRound(
          order(4, { onnx: onnxRef({ int8Sha256: sha(Buffer.from("not the model")) }) }),
        );
        assert.equal(st.status, "done", JSON.stringify(st.error));
        assert.equal(st.error, null);
        await until(() => trainer.state().inference != null, 10_000, "an inference report");
        const inf = trainer.state().inference as { error?: { code: string } };
        assert.equal(inf.error?.code, "E_ONNX_HASH");
        assert.equal(trainer.state().status, "done");
        await trainer.idle();
        const rep = (await reportedInference()) as { error?: { code: string } } | undefined;
        assert.equal(rep?.error?.code, "E_ONNX_HASH", "the error is reported in the twin");
        assert.equal((await call("predict", { inputs: [[0, 0, 0, 0]] })).status, 404, "no model was loaded");
      },
    );

    await t.test(
      "an order with onnx: the int8 model is evaluated on the local data and serves predict",
      async () => {
        const getsBefore = blobs.gets.length;
        const st = await runRound(order(5, { onnx: onnxRef() }));
        assert.equal(st.status, "done", JSON.stringify(st.error));
        await until(
          () => (trainer.state().inference as { modelRound?: number } | null | undefined)?.modelRound === 4,
          10_000,
          "the inference report of round 5's model",
        );
        const inf = trainer.state().inference as Record<string, unknown>;
        const gets = blobs.gets.slice(getsBefore);
        assert.ok(gets.includes("/model.int8.onnx"), `downloads ${gets}`);
        assert.ok(
          !gets.includes("/model.onnx"),
          "int8 is the default precision: the fp32 file is not downloaded",
        );
        const reference = await OnnxModel.load(onnxInt8, { threads: 1 });
        t.after(() => reference.close());
        const expected = await reference.evaluate(data);
        assert.equal(inf.jobId, "job-z");
        assert.equal(inf.modelRound, 4);
        assert.equal(inf.precision, "int8");
        assert.equal(inf.n, 12);
        assert.ok(
          Math.abs((inf.accuracy as number) - expected.accuracy) <= 1e-9,
          `${inf.accuracy} vs ${expected.accuracy}`,
        );
        assert.ok(Number.isFinite(inf.msPerSample) && (inf.msPerSample as number) >= 0);
        await trainer.idle();

        // Fleet-wide evaluation (docs/evaluation.md): after the result, the same model on the held-out data, sent
        // as an `evaluation` frame of round 4's model (one chunk, update id eval:…) on the updates output.
        const resultAt = got.findIndex((g) => g.props.round === "5");
        assert.ok(resultAt >= 0, "the result of round 5");
        const evalAt = resultAt + Number(got[resultAt].props.chunkCount);
        const evalFrame = decodeMessage(await frameAt(evalAt));
        assert.equal(evalFrame.type, "evaluation");
        assert.equal(got[evalAt].props.round, "4");
        assert.match(got[evalAt].props.updateId, /^eval:[0-9a-f]{32}$/);
        const onHeldOut = await reference.evaluate(heldOut);
        assert.deepEqual(evalFrame, {
          type: "evaluation",
          v: 1,
          jobId: "job-z",
          deviceId: "edge-z",
          round: 4,
          samples: 5,
          accuracy: onHeldOut.accuracy,
          loss: onHeldOut.loss,
          precision: "int8",
        });

        const inputs = [
          [0, 0, 0, 0],
          [1, 1, 4, 1],
          [0.5, -2, 3, 0],
        ];
        const r = await call("predict", { inputs });
        assert.equal(r.status, 200, JSON.stringify(r.payload));
        const out = await reference.predict(Float32Array.from(inputs.flat()), inputs.length);
        const width = out.length / inputs.length;
        const argmax = inputs.map((_, i) => {
          let best = 0;
          for (let k = 1; k < width; k++) if (out[i * width + k] > out[i * width + best]) best = k;
          return best;
        });
        assert.deepEqual(r.payload.classes, argmax);
        assert.deepEqual([r.payload.jobId, r.payload.modelRound, r.payload.precision], ["job-z", 4, "int8"]);
        const outputs = r.payload.outputs as number[][];
        assert.equal(outputs.length, inputs.length);
        for (let i = 0; i < inputs.length; i++)
          for (let k = 0; k < width; k++) assert.ok(Math.abs(outputs[i][k] - out[i * width + k]) < 1e-6);

        for (const bad of [
          {},
          { inputs: [] },
          { inputs: "x" },
          { inputs: [[1, 2, 3]] },
          { inputs: [[1, 2, "3", 4]] },
          { inputs: [[1, 2, null, 4]] },
          { inputs: [[0, 0, 0, 0], 7] },
        ]) {
          const b = await call("predict", bad);
          assert.equal(b.status, 400, JSON.stringify(bad));
          assert.equal(b.payload.code, "E_PREDICT_INPUT", JSON.stringify(bad));
        }
      },
    );

    await t.test("inference off: predict answers 501", async () => {
      const c2 = ModuleClient.fromConnectionString(hub.createModule("edge-z2", "trainer"), Mqtt);
      await c2.setOptions({ ca: hub.caCertPem });
      const t2 = await startTrainer({
        client: c2 as never,
        dataDir,
        inference: "off",
        closeClient: true,
        log: () => {},
      });
      try {
        const r = await service.invokeDeviceMethod("edge-z2", "trainer", {
          methodName: "predict",
          payload: { inputs: [[0, 0, 0, 0]] },
          responseTimeoutInSeconds: 10,
        });
        assert.equal(r.result.status, 501);
        assert.equal((r.result.payload as { code: string }).code, "E_PREDICT_DISABLED");
      } finally {
        await t2.stop();
      }
    });
  }),
);
