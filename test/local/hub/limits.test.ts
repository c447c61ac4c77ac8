import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Message } from "azure-iot-device";
import {
  rawClient,
  rawClosed,
  rawConnected,
  rawEnd,
  reportedUpdate,
  sleep,
  startTestHub,
  waitFor,
} from "./support";

test("D2C over 256 KB is rejected, counted and logged; the hub keeps serving", async () => {
  const t = await startTestHub();
  try {
    t.hub.createDevice("big");
    const raw = rawClient(t.hub, "big");
    await rawConnected(raw);
    // Just under the limit (body + property bag) is accepted...
    const bag = "%24.mid=ok";
    const fits = Buffer.alloc(256 * 1024 - bag.length, 0x61);
    await new Promise<void>((resolve, reject) =>
      raw.publish(`devices/big/messages/events/${bag}/`, fits, { qos: 1 }, (e) =>
        e ? reject(e) : resolve(),
      ),
    );
    await waitFor(() => t.events.length === 1, 5000, "the message at the limit");
    assert.equal(t.events[0].body.length, fits.length);

    // ...one byte more is not: the hub closes the connection (MQTT 3.1.1 has no negative PUBACK).
    const closed = rawClosed(raw);
    raw.publish(`devices/big/messages/events/${bag}/`, Buffer.alloc(fits.length + 1, 0x62), { qos: 1 });
    await closed;
    await rawEnd(raw);
    await sleep(50);
    assert.equal(t.events.length, 1, "the oversized message never reached onEvent");
    const m = t.hub.metrics();
    assert.equal(m.d2cRejectedTooLarge, 1);
    assert.equal(m.d2cAccepted, 1);
    assert.ok(
      t.logs.some((l) => /big.*262145-byte message/.test(l)),
      t.logs.join("\n"),
    );

    const dev = await t.device("small");
    await dev.sendEvent(new Message("still alive"));
    await waitFor(() => t.events.length === 2, 5000, "a normal message afterwards");
  } finally {
    await t.close();
  }
});

test("a reported-properties patch over 32 KB is refused with an error and leaves the twin unchanged", async () => {
  const t = await startTestHub();
  try {
    const dev = await t.device("chatty");
    const twin = await dev.getTwin();
    await reportedUpdate(twin, { ok: 1 });
    const big: Record<string, string> = {};
    for (let i = 0; i < 10; i++) big[`k${i}`] = "x".repeat(4000);
    await assert.rejects(reportedUpdate(twin, big));
    const fresh = await dev.getTwin();
    assert.equal(fresh.properties.reported.ok, 1);
    assert.equal(fresh.properties.reported.k0, undefined);
    assert.equal(fresh.properties.reported.$version, 2);
  } finally {
    await t.close();
  }
});
