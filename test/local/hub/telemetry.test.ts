import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Message } from "azure-iot-device";
import { startTestHub, waitFor } from "./support";

test("device telemetry with system and application properties reaches onEvent in order", async () => {
  const t = await startTestHub();
  try {
    const dev = await t.device("sensor-1");
    const before = Date.now();
    for (let i = 0; i < 5; i++) {
      const m = new Message(JSON.stringify({ i, temp: 20 + i }));
      m.messageId = `msg-${i}`;
      m.correlationId = "round-7";
      m.contentType = "application/json";
      m.contentEncoding = "utf-8";
      m.properties.add("kind", "update");
      m.properties.add("weird key & =", "va/lue ü%");
      await dev.sendEvent(m);
    }
    await waitFor(() => t.events.length === 5, 5000, "5 events");
    await t.hub.flushEvents();
    t.events.forEach((e, i) => {
      assert.ok(Buffer.isBuffer(e.body));
      assert.deepEqual(JSON.parse(e.body.toString()), { i, temp: 20 + i });
      assert.deepEqual(e.properties, { kind: "update", "weird key & =": "va/lue ü%" });
      const s = e.systemProperties;
      assert.equal(s["iothub-connection-device-id"], "sensor-1");
      assert.equal(s["iothub-connection-module-id"], undefined);
      assert.equal(s["message-id"], `msg-${i}`);
      assert.equal(s["correlation-id"], "round-7");
      assert.equal(s["content-type"], "application/json");
      assert.equal(s["content-encoding"], "utf-8");
      assert.equal(s["iothub-message-source"], "Telemetry");
      assert.equal(JSON.parse(s["iothub-connection-auth-method"]).type, "sas");
      assert.ok(e.enqueuedTimeUtc.getTime() >= before - 1000 && e.enqueuedTimeUtc.getTime() <= Date.now());
      assert.equal(s["iothub-enqueuedtime"], e.enqueuedTimeUtc.toISOString());
      if (i > 0) assert.ok(e.sequenceNumber > t.events[i - 1].sequenceNumber, "sequence numbers increase");
    });
    const m = t.hub.metrics();
    assert.equal(m.d2cAccepted, 5);
    assert.equal(m.eventsDelivered, 5);
    assert.equal(m.d2cRejectedTooLarge, 0);
  } finally {
    await t.close();
  }
});

test("a failing onEvent handler is counted and logged and does not stop later batches", async () => {
  let calls = 0;
  const seen: string[] = [];
  const t = await startTestHub({
    onEvent: async (batch) => {
      calls++;
      if (calls === 1) throw new Error("function crashed");
      seen.push(...batch.map((e) => e.body.toString()));
    },
  });
  try {
    const dev = await t.device("sensor-2");
    await dev.sendEvent(new Message("first"));
    await waitFor(() => calls === 1, 5000, "first batch");
    await t.hub.flushEvents();
    await dev.sendEvent(new Message("second"));
    await waitFor(() => seen.length === 1, 5000, "second batch");
    assert.deepEqual(seen, ["second"]);
    assert.equal(t.hub.metrics().onEventErrors, 1);
    assert.ok(t.logs.some((l) => l.includes("function crashed")));
  } finally {
    await t.close();
  }
});
