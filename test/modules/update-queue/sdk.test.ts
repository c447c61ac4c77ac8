import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { NoRetry } from "azure-iot-common";
import { REPORTED_KEY, startUpdateQueue } from "../../../modules/update-queue/src/main";
import { LocalHub } from "./local-hub";
import { resultFrame, sha256hex, tempDir, trainerChunks, until } from "./helpers";

/**
 * The module wired to the unmodified azure-iot-device / azure-iot-device-mqtt client, against a local hub over
 * TLS: what the fakes cannot show (topics, property bags, twin and method round trips, the SDK's reconnects).
 */
test(
  "with the real ModuleClient: input → durable queue → chunks on `upstream`; twin, methods, link loss",
  withContext(async (t) => {
    const hub = await LocalHub.start();
    hub.desired = { resendAfterMs: 600_000 };
    const client = ModuleClient.fromConnectionString(hub.connectionString(), Mqtt);
    await client.setOptions({ ca: hub.ca });
    const logged: string[] = [];
    const queue = await startUpdateQueue({
      client,
      dir: tempDir(t),
      closeClient: true,
      reportIntervalMs: 50,
      reconnectBackoff: { initialMs: 20, maxMs: 200 },
      log: (level, message) => logged.push(`${level} ${message}`),
    });
    t.after(async () => {
      await queue.stop(); // closes the client first: the SDK retries pending operations against a closed hub
      await hub.close();
    });
    assert.equal(queue.status().online, true);
    assert.equal(hub.twinGets, 1);

    // An update of 600 KB from the trainer, as three input messages; three chunks go upstream.
    const { frame, meta } = resultFrame({ floats: 150_000, round: 2, deviceId: "edge-1" });
    const input = trainerChunks(frame, meta);
    for (const c of input.chunks) hub.sendInput("updates", c.body, c.properties);
    await until(() => hub.events.length === 3, 10_000, "three chunks upstream");
    const updateId = hub.events[0].properties.updateId;
    assert.equal(updateId, input.updateId);
    await until(() => queue.outbox.get(updateId)?.state === "sent"); // after the last PUBACK
    for (const [i, e] of hub.events.entries()) {
      assert.equal(e.output, "upstream");
      assert.equal(e.messageId, `${updateId}:${i}`);
      assert.equal(e.contentType, "application/octet-stream");
      assert.equal(e.properties["flotilla-content-type"], "flotilla-frame");
      assert.equal(e.properties.chunkIndex, String(i));
      assert.equal(e.properties.chunkSha256, sha256hex(e.body));
      assert.ok(e.body.byteLength + e.topicBytes <= 256 * 1024);
    }
    const whole = Buffer.concat(hub.events.map((e) => e.body));
    assert.ok(whole.equals(Buffer.from(frame)));
    assert.equal(hub.events[0].properties.sha256, sha256hex(whole));

    // Status reaches the reported properties; `status` and `ack` direct methods answer.
    await until(() =>
      hub.reported.some((p) => (p[REPORTED_KEY] as { awaitingAck?: number })?.awaitingAck === 1),
    );
    const status = await hub.invokeMethod("status", {});
    assert.equal(status.status, 200);
    assert.equal((status.payload as { awaitingAck: number }).awaitingAck, 1);
    assert.deepEqual(await hub.invokeMethod("ack", { updateIds: [updateId] }), {
      status: 200,
      payload: { acked: 1, depth: 0 },
    });

    // A second update goes out; then the link drops before the cloud acks it.
    hub.sendInput("updates", resultFrame({ round: 3, deviceId: "edge-1" }).frame, { updateId: "edge-1-r3" });
    await until(() => hub.events.length === 4, 10_000, "the second update");
    assert.equal(hub.events[3].messageId, "edge-1-r3:0");
    // Its PUBACK first, so the update is waiting for the cloud's ack (not still in flight) when the link drops.
    await until(() => queue.outbox.get("edge-1-r3")?.state === "sent", 10_000, "the second update's PUBACK");
    const connectsBefore = hub.connects;
    hub.dropConnections();
    // Once back (by the SDK's retry or ours), the twin is read again and the unacked update resent.
    await until(
      () => hub.connects > connectsBefore && hub.twinGets >= 2,
      15_000,
      "reconnection and twin GET",
    );
    await until(() => hub.events.length >= 5, 15_000, "the resend");
    assert.equal(hub.events[4].messageId, "edge-1-r3:0");
    // The hub has the resend before its PUBACK reaches the queue, which counts the resend then.
    await until(() => queue.outbox.stats().counters.resent === 1, 10_000, "the resend counted");

    // The cloud acks through the twin.
    hub.patchDesired({ acks: { "edge-1-r3": true } });
    await until(() => queue.outbox.get("edge-1-r3")?.state === "acked", 5000, "the twin ack");
    assert.equal(queue.status().depth, 0);
  }),
  20_000,
);

test(
  "with the real ModuleClient and no SDK retries: `disconnect` reaches the queue, which reconnects itself",
  withContext(async (t) => {
    const hub = await LocalHub.start();
    const client = ModuleClient.fromConnectionString(hub.connectionString(), Mqtt);
    await client.setOptions({ ca: hub.ca });
    client.setRetryPolicy(new NoRetry());
    const logged: string[] = [];
    const queue = await startUpdateQueue({
      client,
      dir: tempDir(t),
      closeClient: true,
      reconnectBackoff: { initialMs: 20, maxMs: 100 },
      log: (level, message) => logged.push(`${level} ${message}`),
    });
    t.after(async () => {
      await queue.stop();
      await hub.close();
    });
    hub.sendInput("updates", resultFrame({ round: 1, deviceId: "edge-1" }).frame, { updateId: "u1" });
    await until(() => queue.outbox.get("u1")?.state === "sent", 10_000, "the update to be sent");
    const gets = hub.twinGets;
    hub.dropConnections();
    await until(
      () => logged.some((l) => l.includes("update-queue: disconnected")),
      10_000,
      "the disconnect event",
    );
    await until(
      () => hub.twinGets > gets && hub.events.length === 2,
      10_000,
      "reconnection, twin GET and resend",
    );
    assert.ok(logged.some((l) => l.includes("reconnecting in")));
    assert.equal(hub.events[1].messageId, "u1:0");
    assert.equal(queue.status().online, true);
  }),
  20_000,
);
