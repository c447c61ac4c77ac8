import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import {
  REPORTED_KEY,
  createModuleClient,
  startUpdateQueue,
  toMessage,
  type UpdateQueueHandle,
  type UpdateQueueOptions,
} from "../../../modules/update-queue/src/main";
import { loadConfig } from "../../../modules/update-queue/src/config";
import {
  D2C_MAX_MESSAGE_BYTES,
  DEFAULT_MAX_CHUNK_BYTES,
  MAX_CHUNK_BYTES,
  Outbox,
  type OutboxChunk,
} from "../../../modules/update-queue/src/outbox";
import { FakeModuleClient } from "./fake-client";
import { codeOf, resultFrame, sha256hex, sleep, tempDir, trainerChunks, until } from "./helpers";

type Logged = { level: string; message: string }[];

async function start(
  t: { after(fn: () => void | Promise<void>): void },
  opts: Partial<UpdateQueueOptions> = {},
): Promise<{ client: FakeModuleClient; queue: UpdateQueueHandle; dir: string; logged: Logged }> {
  const client = (opts.client as FakeModuleClient | undefined) ?? new FakeModuleClient();
  const dir = opts.dir ?? tempDir(t);
  const logged: Logged = [];
  const queue = await startUpdateQueue({
    client,
    dir,
    reconnectBackoff: { initialMs: 5, maxMs: 20 },
    sendBackoff: { initialMs: 5, maxMs: 20 },
    reportIntervalMs: 20,
    log: (level, message) => logged.push({ level, message }),
    ...opts,
  });
  t.after(() => queue.stop());
  return { client, queue, dir, logged };
}

function bodyOf(client: FakeModuleClient, updateId: string): Buffer {
  const chunks = client.outputs
    .filter(({ msg }) => msg.properties.getValue("updateId") === updateId)
    .map(({ msg }) => ({ index: Number(msg.properties.getValue("chunkIndex")), body: msg.getBytes() }));
  const unique = new Map(chunks.map((c) => [c.index, c.body]));
  return Buffer.concat([...unique.keys()].sort((a, b) => a - b).map((i) => unique.get(i)!));
}

test(
  "an input update is stored before it is completed, then sent on `upstream` as chunks with properties",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    let depthAtComplete = -1;
    const { queue } = await start(t, { client });
    client.onComplete = () => (depthAtComplete = queue.outbox.stats().depth);
    const { frame } = resultFrame({ floats: 150_000, round: 4 }); // 600 KB: 3 chunks
    const input = client.deliver("updates", frame);
    await until(() => client.outputs.length === 3);
    assert.deepEqual(client.completed, [input]);
    assert.equal(depthAtComplete, 1); // durable first, then acknowledged
    const [{ msg }] = client.outputs;
    assert.ok(client.outputs.every((o) => o.output === "upstream"));
    const updateId = String(msg.properties.getValue("updateId"));
    assert.equal(msg.messageId, `${updateId}:0`);
    assert.equal(msg.contentType, "application/octet-stream");
    assert.equal(msg.properties.getValue("flotilla-content-type"), "flotilla-frame");
    assert.equal(msg.properties.getValue("jobId"), "job-1");
    assert.equal(msg.properties.getValue("round"), "4");
    assert.equal(msg.properties.getValue("deviceId"), "dev-1");
    assert.equal(msg.properties.getValue("chunkCount"), "3");
    assert.equal(msg.properties.getValue("sha256"), sha256hex(frame));
    assert.ok(client.outputs.every((o) => o.msg.getBytes().byteLength <= DEFAULT_MAX_CHUNK_BYTES));
    assert.ok(bodyOf(client, updateId).equals(Buffer.from(frame)));
    assert.equal(queue.status().awaitingAck, 1);
    // The trainer may name the update itself.
    const other = resultFrame({ round: 5 });
    client.deliver("updates", other.frame, { updateId: "trainer-chosen-1" });
    await until(() => queue.outbox.get("trainer-chosen-1")?.state === "sent");
  }),
);

test(
  "an update the trainer split into input chunks: each chunk stored before completion, queued when whole",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    const { queue } = await start(t, { client });
    const atComplete: [number, number][] = [];
    client.onComplete = () => {
      const s = queue.outbox.stats();
      atComplete.push([s.counters.staged_chunks, s.depth]);
    };
    const { frame, meta } = resultFrame({ floats: 150_000, round: 6 }); // 600 KB: 3 input chunks
    const { updateId, chunks } = trainerChunks(frame, meta);
    for (const c of chunks) client.deliver("updates", c.body, c.properties);
    assert.deepEqual(atComplete, [
      [1, 0],
      [2, 0],
      [3, 1],
    ]);
    await until(() => queue.outbox.get(updateId)?.state === "sent");
    assert.ok(bodyOf(client, updateId).equals(Buffer.from(frame)));
    assert.equal(client.outputs[0].msg.messageId, `${updateId}:0`);
    // A chunk with broken properties is rejected (completed, counted), and nothing is staged for it.
    client.deliver("updates", chunks[0].body, { ...chunks[0].properties, chunkIndex: "x" });
    const s = queue.status();
    assert.equal(s.invalidInputs, 1);
    assert.equal(s.stagedUpdates, 0);
    assert.match(s.lastError ?? "", /E_QUEUE_INVALID/);
  }),
);

test(
  "input that is not a valid update is completed (a redelivery cannot fix it), counted and not stored",
  withContext(async (t) => {
    const { client, queue, logged } = await start(t);
    const { frame } = resultFrame();
    client.deliver("updates", frame.subarray(0, 20));
    client.deliver("updates", Buffer.from("hello"));
    client.deliver("somewhere-else", frame);
    await until(() => client.completed.length === 3);
    const s = queue.status();
    assert.equal(s.invalidInputs, 2);
    assert.equal(s.depth, 0);
    assert.match(s.lastError ?? "", /E_QUEUE_FRAME/);
    assert.ok(logged.some((l) => l.message.includes("unknown input 'somewhere-else'")));
    await sleep(20);
    assert.equal(client.outputs.length, 0);
  }),
);

test(
  "acks arrive through the twin (GET, array or map patches) and the `ack` method; `status` answers",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    client.linkUp = false; // nothing goes out until the test says so
    const { queue } = await start(t, { client });
    queue.sender.setOnline(false);
    const ids = [1, 2, 3, 4, 5].map((round) =>
      queue.outbox.enqueue(resultFrame({ round }).frame, resultFrame({ round }).meta),
    );
    client.twin.patchDesired({ acks: [ids[0]] });
    assert.equal(queue.outbox.get(ids[0])?.state, "acked");
    client.twin.patchDesired({ acks: { [ids[1]]: true, [ids[2]]: null } });
    assert.equal(queue.outbox.get(ids[1])?.state, "acked");
    assert.equal(queue.outbox.get(ids[2])?.state, "pending");

    let r = await client.invoke("ack", { updateIds: [ids[2], ids[3], "unknown"] });
    assert.deepEqual(r, { status: 200, payload: { acked: 2, depth: 1 } });
    r = await client.invoke("ack", JSON.stringify({ updateIds: [ids[4]] }));
    assert.deepEqual(r, { status: 200, payload: { acked: 1, depth: 0 } });
    r = await client.invoke("ack", { updateIds: "nope" });
    assert.equal(r.status, 400);
    assert.equal((r.payload as { code: string }).code, "E_QUEUE_INVALID");
    r = await client.invoke("ack", {});
    assert.equal(r.status, 400);

    r = await client.invoke("status", null);
    assert.equal(r.status, 200);
    const status = r.payload as ReturnType<UpdateQueueHandle["status"]>;
    assert.equal(status.depth, 0);
    assert.equal(status.counters.acked, 5);
    assert.equal(status.counters.enqueued, 5);
    assert.deepEqual(status.config, {
      maxChunkBytes: DEFAULT_MAX_CHUNK_BYTES,
      resendAfterMs: 600_000,
      capacityBytes: 256 * 1024 * 1024,
      retentionHours: 0,
      meteredLink: false,
      meteredMaxUploadBytes: 0,
    });
    assert.equal(status.deferred, 0);
  }),
);

test(
  "desired properties set the chunk size and resend timeout, and close rounds; bad values are reported",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    client.twin.properties.desired.maxChunkBytes = 4096;
    client.twin.properties.desired.resendAfterMs = 5000;
    const { queue } = await start(t, { client });
    assert.equal(queue.outbox.maxChunkBytes, 4096);
    assert.equal(queue.sender.resendAfterMs, 5000);
    client.twin.patchDesired({ maxChunkBytes: 10 * 1024 * 1024, resendAfterMs: 2000 });
    assert.equal(queue.outbox.maxChunkBytes, 4096);
    assert.equal(queue.sender.resendAfterMs, 2000);
    assert.match(queue.status().lastError ?? "", /desired maxChunkBytes = 10485760 refused/);
    client.twin.patchDesired({ maxChunkBytes: "big", resendAfterMs: null });
    assert.equal(queue.outbox.maxChunkBytes, 4096, "refused: the last good value");
    assert.equal(queue.sender.resendAfterMs, 600_000, "null: the default");

    queue.sender.setOnline(false);
    const add = (jobId: string, round: number) =>
      queue.outbox.enqueue(resultFrame({ jobId, round }).frame, resultFrame({ jobId, round }).meta);
    add("A", 1);
    add("A", 2);
    const b = add("B.v2", 1);
    client.twin.patchDesired({ openRounds: { A: 2 } });
    client.twin.patchDesired({
      openRounds: [
        { jobId: "B.v2", round: 1 },
        { jobId: "A", round: "x" },
      ],
    });
    assert.equal(queue.status().counters.dropped_closed, 1);
    assert.equal(queue.outbox.get(b)?.state, "pending");
    client.twin.patchDesired({ openRounds: [{ jobId: "B.v2", round: 2 }] });
    assert.equal(queue.status().counters.dropped_closed, 2);
  }),
);

test(
  "disconnect: offline, reconnect with backoff, then the twin is read again and unacked updates resent",
  withContext(async (t) => {
    const { client, queue, logged } = await start(t);
    assert.equal(client.getTwinCalls, 1);
    const a = client.deliver("updates", resultFrame({ round: 1 }).frame);
    const b = client.deliver("updates", resultFrame({ round: 2 }).frame);
    void a;
    void b;
    await until(() => queue.status().awaitingAck === 2);
    const [idA, idB] = queue.outbox.pending().map((u) => u.updateId);
    assert.equal(client.outputs.length, 2);

    client.failOpens = 2;
    client.drop();
    assert.equal(queue.status().online, false);
    // The cloud acks A while the module is offline; it learns that from the twin GET after reconnecting.
    client.twin.properties.desired.acks = [idA];
    client.deliver("updates", resultFrame({ round: 3 }).frame); // stored while offline
    await sleep(10);
    assert.equal(client.outputs.length, 2);
    await until(() => queue.status().online, 5000, "reconnection");
    assert.equal(client.opens, 4); // initial + 2 failures + success
    assert.ok(logged.some((l) => l.message.startsWith("update-queue: reconnecting in")));
    assert.equal(client.getTwinCalls, 2);
    await until(() => client.outputs.length === 4);
    await queue.sender.whenIdle();
    const after = client
      .sentChunks()
      .slice(2)
      .map((c) => c.updateId);
    assert.equal(after[0], idB); // B resent (unacked), A not (acked while offline), then the new one
    assert.ok(!after.includes(idA));
    assert.equal(queue.outbox.get(idA)?.state, "acked");
    assert.equal(queue.status().counters.resent, 1);
  }),
);

test(
  "a reconnect done by the SDK itself (`connect` without `disconnect`) also re-reads the twin and resends",
  withContext(async (t) => {
    const { client, queue } = await start(t);
    client.deliver("updates", resultFrame({ round: 1 }).frame);
    await until(() => queue.status().awaitingAck === 1);
    client.emit("connect");
    await until(() => client.getTwinCalls === 2 && client.outputs.length === 2);
    assert.equal(client.sentChunks()[0].messageId, client.sentChunks()[1].messageId);
  }),
);

test(
  "a twin GET that never answers times out: the queue goes online anyway and reads the twin again later",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    client.hangTwinGets = 2;
    const dir = tempDir(t);
    const box = new Outbox(join(dir, "outbox.sqlite"));
    const id = box.enqueue(resultFrame().frame, resultFrame().meta);
    box.close();
    client.twin.properties.desired.acks = [id]; // only the twin knows this one is acked
    const { queue } = await start(t, { client, dir, twinTimeoutMs: 20 });
    assert.equal(queue.status().online, true);
    assert.match(queue.status().lastError ?? "", /E_TIMEOUT: getTwin got no answer in 20 ms/);
    await until(() => queue.outbox.get(id)?.state === "acked", 2000, "the twin to be read");
    assert.equal(client.getTwinCalls, 3);
  }),
);

test(
  "status is reported in the twin's reported properties, throttled",
  withContext(async (t) => {
    const { client, queue } = await start(t, { reportIntervalMs: 100 });
    for (let r = 1; r <= 5; r++) client.deliver("updates", resultFrame({ round: r }).frame);
    await until(() => queue.status().awaitingAck === 5);
    await sleep(150);
    const patches = client.twin.reportedPatches;
    assert.ok(patches.length >= 1 && patches.length <= 3, `${patches.length} patches`);
    await until(() => {
      const last = client.twin.reportedPatches.at(-1)?.[REPORTED_KEY] as { awaitingAck?: number } | undefined;
      return last?.awaitingAck === 5;
    });
    const last = client.twin.reportedPatches.at(-1)![REPORTED_KEY] as Record<string, unknown>;
    assert.equal(last.depth, 5);
    assert.equal((last.counters as Record<string, number>).enqueued, 5);
    assert.equal(last.online, true);
    assert.equal(typeof last.reportedAt, "string");
  }),
);

test(
  "stop() releases the queue file; a restarted queue resends what was not acked; instances are independent",
  withContext(async (t) => {
    const dir = tempDir(t);
    const first = new FakeModuleClient();
    const q1 = await startUpdateQueue({ client: first, dir, log: () => {} });
    const other = await start(t); // a second instance in the same process, its own dir and client
    first.deliver("updates", resultFrame({ round: 1 }).frame);
    await until(() => q1.status().awaitingAck === 1);
    await q1.stop();
    assert.equal(first.closes, 0); // an injected client is the caller's to close
    assert.deepEqual(await first.invoke("status", null), {
      status: 503,
      payload: { code: "E_QUEUE_STOPPED", message: "the update queue is stopped" },
    });
    first.deliver("updates", resultFrame({ round: 2 }).frame); // ignored after stop
    assert.equal(first.completed.length, 1);
    assert.equal(other.queue.status().depth, 0);

    const second = new FakeModuleClient();
    const q2 = await startUpdateQueue({ client: second, dir, closeClient: true, log: () => {} });
    await until(() => second.outputs.length === 1);
    assert.equal(second.sentChunks()[0].messageId, first.sentChunks()[0].messageId);
    await q2.stop();
    assert.equal(second.closes, 1);
    const box = new Outbox(join(dir, "outbox.sqlite"));
    assert.equal(box.stats().counters.resent, 1);
    box.close();
  }),
);

test("a chunk with the largest allowed properties still fits IoT Hub's 256 KB, as the MQTT transport encodes it", () => {
  const topicOf = (
    Mqtt.prototype as unknown as { _getEventTopicFromMessage: (m: unknown, p: unknown) => string }
  )._getEventTopicFromMessage;
  const deviceId = "%".repeat(128); // every byte %-encoded
  const chunk = (bytes: number): OutboxChunk => ({
    body: Buffer.alloc(bytes),
    messageId: `${"u:".repeat(50)}:99999`,
    properties: {
      jobId: "é".repeat(64), // 128 UTF-8 bytes, 6 characters each once encoded
      round: "2147483647",
      deviceId,
      updateId: "u:".repeat(50),
      chunkIndex: "99999",
      chunkCount: "99999",
      size: "268435456",
      sha256: "f".repeat(64),
      chunkSha256: "f".repeat(64),
      "flotilla-content-type": "flotilla-frame",
    },
  });
  for (const bytes of [DEFAULT_MAX_CHUNK_BYTES, MAX_CHUNK_BYTES]) {
    const msg = toMessage(chunk(bytes));
    const topic = topicOf.call(
      { _topicTelemetryPublish: `devices/${deviceId}/modules/update-queue/messages/events/` },
      msg,
      { "$.on": "upstream" },
    );
    assert.ok(topic.includes("%24.ct=application%2Foctet-stream"));
    const total = Buffer.byteLength(topic) + msg.getBytes().byteLength;
    assert.ok(total <= D2C_MAX_MESSAGE_BYTES, `${total} bytes`);
    if (bytes === DEFAULT_MAX_CHUNK_BYTES) assert.ok(total <= 63 * 4096, `${total} bytes: 64 meter units`);
  }
});

test("configuration from the environment names every missing or invalid setting", () => {
  let e = codeOf(() => loadConfig({}));
  assert.equal(e, "E_CONFIG_MISSING");
  assert.throws(() => loadConfig({}), /FLOTILLA_CONNECTION_STRING/);
  assert.throws(
    () => loadConfig({ IOTEDGE_MODULEID: "update-queue", IOTEDGE_DEVICEID: "d1" }),
    /missing settings: IOTEDGE_WORKLOADURI, IOTEDGE_IOTHUBHOSTNAME, IOTEDGE_AUTHSCHEME, IOTEDGE_MODULEGENERATIONID/,
  );
  e = codeOf(() =>
    loadConfig({
      FLOTILLA_CONNECTION_STRING: "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=k",
      FLOTILLA_MAX_CHUNK_BYTES: "300000",
    }),
  );
  assert.equal(e, "E_CONFIG_INVALID");
  assert.throws(
    () =>
      loadConfig({ FLOTILLA_CONNECTION_STRING: "HostName=h;DeviceId=d", FLOTILLA_RESEND_AFTER_MS: "soon" }),
    /FLOTILLA_RESEND_AFTER_MS=soon.*FLOTILLA_CONNECTION_STRING \(needs/,
  );
  const local = loadConfig({
    FLOTILLA_CONNECTION_STRING: "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=k",
    FLOTILLA_CA_CERT: "/certs/ca.pem",
    FLOTILLA_QUEUE_DIR: "/data/q",
    FLOTILLA_RESEND_AFTER_MS: "30000",
  });
  assert.deepEqual(local, {
    queueDir: "/data/q",
    maxChunkBytes: DEFAULT_MAX_CHUNK_BYTES,
    resendAfterMs: 30000,
    maxBytes: 256 * 1024 * 1024,
    metricsPort: 9600,
    connection: {
      mode: "connectionString",
      connectionString: "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=k",
      caCertPath: "/certs/ca.pem",
    },
  });
  const edge = loadConfig({
    IOTEDGE_WORKLOADURI: "unix:///var/run/iotedge/workload.sock",
    IOTEDGE_DEVICEID: "d1",
    IOTEDGE_MODULEID: "update-queue",
    IOTEDGE_IOTHUBHOSTNAME: "hub.azure-devices.net",
    IOTEDGE_AUTHSCHEME: "sasToken",
    IOTEDGE_MODULEGENERATIONID: "g1",
  });
  assert.deepEqual(edge.connection, { mode: "edge" });
  assert.equal(edge.queueDir, "/var/lib/flotilla/queue");
  assert.deepEqual(
    loadConfig({ EdgeHubConnectionString: "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=k" }).connection,
    {
      mode: "edge",
    },
  );
});

test(
  "createModuleClient: a connection string (+ PEM CA) locally, fromEnvironment on IoT Edge; bad CA files fail",
  withContext(async (t) => {
    const dir = tempDir(t);
    const cs =
      "HostName=hub.example;DeviceId=d1;ModuleId=update-queue;SharedAccessKey=" +
      Buffer.from("k").toString("base64");
    const pem = join(dir, "ca.pem");
    writeFileSync(pem, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    const notPem = join(dir, "ca.txt");
    writeFileSync(notPem, "hello");
    const local = (caCertPath?: string) =>
      createModuleClient({
        ...loadConfig({ FLOTILLA_CONNECTION_STRING: cs }),
        connection: { mode: "connectionString", connectionString: cs, caCertPath },
      });
    const client = await local(pem);
    assert.ok(client instanceof ModuleClient);
    await assert.rejects(local(notPem), (e: { code?: string }) => e.code === "E_CONFIG_CA_CERT");
    await assert.rejects(
      local(join(dir, "missing.pem")),
      (e: { code?: string }) => e.code === "E_CONFIG_CA_CERT",
    );

    const saved = process.env.EdgeHubConnectionString;
    process.env.EdgeHubConnectionString = cs;
    t.after(() => {
      if (saved === undefined) delete process.env.EdgeHubConnectionString;
      else process.env.EdgeHubConnectionString = saved;
    });
    const edge = await createModuleClient(loadConfig({ EdgeHubConnectionString: cs }));
    assert.ok(edge instanceof ModuleClient);
  }),
);
