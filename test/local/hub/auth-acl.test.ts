import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Client, Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import type { ISubscriptionGrant } from "mqtt";
import { buildConnectionString, parseConnectionString } from "../../../local/hub/sas";
import {
  rawClient,
  rawClosed,
  rawConnected,
  rawEnd,
  sleep,
  startTestHub,
  waitFor,
  withTimeout,
} from "./support";

const OTHER_KEY = Buffer.alloc(32, 9).toString("base64");

test("a wrong SAS key is refused by the SDK client; expired and foreign tokens get CONNACK 5", async () => {
  const t = await startTestHub();
  try {
    const good = parseConnectionString(t.hub.createDevice("d-auth"));
    const bad = t.track(
      Client.fromConnectionString(buildConnectionString({ ...good, SharedAccessKey: OTHER_KEY }), Mqtt),
    );
    await bad.setOptions({ ca: t.hub.caCertPem });
    await assert.rejects(
      withTimeout(bad.open(), 10_000, "open with a wrong key"),
      (e: Error) => e.name === "UnauthorizedError",
    );

    const refusedWith = async (c: ReturnType<typeof rawClient>) => {
      const err = await rawConnected(c).then(
        () => undefined,
        (e: Error & { code?: number }) => e,
      );
      await rawEnd(c);
      return err?.code;
    };
    assert.equal(
      await refusedWith(rawClient(t.hub, "d-auth", { expiry: Math.floor(Date.now() / 1000) - 10 })),
      5,
      "expired",
    );
    assert.equal(await refusedWith(rawClient(t.hub, "d-auth", { key: OTHER_KEY })), 5, "wrong key");
    t.hub.createDevice("d-other");
    // d-other's valid token presented as d-auth: signature fine, resource wrong
    const other = parseConnectionString(t.hub.deviceConnectionString("d-other"));
    assert.equal(
      await refusedWith(rawClient(t.hub, "d-auth", { key: other.SharedAccessKey })),
      5,
      "someone else's key",
    );
    assert.equal(t.hub.metrics().connectsRejected, 4);
    assert.ok(t.logs.some((l) => l.includes("token expired")));

    // And the right key works.
    const ok = rawClient(t.hub, "d-auth");
    await rawConnected(ok);
    await rawEnd(ok);
  } finally {
    await t.close();
  }
});

test("a device may not subscribe to or publish on another device's topics", async () => {
  const t = await startTestHub();
  try {
    t.hub.createDevice("victim");
    t.hub.createDevice("mallory");
    const victim = await t.device("victim");
    const m = rawClient(t.hub, "mallory");
    await rawConnected(m);

    const grants = await new Promise<ISubscriptionGrant[]>((resolve, reject) =>
      m.subscribe(
        ["devices/victim/messages/devicebound/#", "$iothub/twin/res/#", "#", "devices/+/messages/events/#"],
        { qos: 1 },
        (err, granted) => (err ? reject(err) : resolve(granted)),
      ),
    );
    assert.deepEqual(
      grants.map((g) => g.qos),
      [128, 1, 128, 128],
      "only the $iothub response topic is granted",
    );
    assert.equal(t.hub.metrics().unauthorizedSubscribe, 3);

    // Twin replies go only to the requester: mallory holds $iothub/twin/res/# but must not see victim's.
    const seen: string[] = [];
    m.on("message", (topic) => seen.push(topic));
    await victim.getTwin();
    await sleep(200);
    assert.deepEqual(seen, [], "a reply to the victim leaked to another device");

    const closed = rawClosed(m);
    m.publish("devices/victim/messages/events/", "forged", { qos: 1 });
    await closed;
    assert.equal(t.hub.metrics().unauthorizedPublish, 1);
    await victim.sendEvent(new Message("genuine"));
    await waitFor(() => t.events.length === 1, 5000, "genuine event");
    assert.equal(t.events[0].body.toString(), "genuine");
    assert.equal(t.events[0].systemProperties["iothub-connection-device-id"], "victim");
    await rawEnd(m);
  } finally {
    await t.close();
  }
});

test("a module cannot inject into a sibling module's input topic", async () => {
  const t = await startTestHub();
  try {
    t.hub.createModule("edge-acl", "trainer");
    const queue = await t.module("edge-acl", "queue");
    const got: string[] = [];
    queue.on("inputMessage", (_input: string, msg: Message) => got.push(msg.data.toString()));
    const raw = rawClient(t.hub, "edge-acl", { moduleId: "trainer" });
    await rawConnected(raw);
    const closed = rawClosed(raw);
    raw.publish("devices/edge-acl/modules/queue/inputs/updates/", "forged", { qos: 1 });
    await closed;
    await sleep(100);
    assert.deepEqual(got, []);
    assert.equal(t.hub.metrics().unauthorizedPublish, 1);
    await rawEnd(raw);
  } finally {
    await t.close();
  }
});
