import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as https from "node:https";
import * as net from "node:net";
import * as tls from "node:tls";
import { Message } from "azure-iot-device";
import type { LocalHub } from "../../../local/hub";
import { createSasToken, parseConnectionString } from "../../../local/hub/sas";
import { rawClient, rawClosed, rawConnected, rawEnd, sleep, startTestHub, waitFor } from "./support";

test("an authenticated client sending malformed twin and method traffic gets 400s or is dropped; the hub survives", async () => {
  const t = await startTestHub();
  try {
    t.hub.createDevice("junk");
    const raw = rawClient(t.hub, "junk");
    await rawConnected(raw);
    const replies: { topic: string; body: string }[] = [];
    raw.on("message", (topic, payload) => replies.push({ topic, body: payload.toString() }));
    await new Promise<void>((resolve, reject) =>
      raw.subscribe("$iothub/twin/res/#", { qos: 0 }, (e) => (e ? reject(e) : resolve())),
    );

    raw.publish("$iothub/twin/GET/", " "); // no $rid: nothing to answer
    raw.publish("$iothub/twin/GET/?$rid=%E0%A4%A", " "); // undecodable query
    raw.publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", "{not json");
    raw.publish("$iothub/twin/PATCH/properties/reported/?$rid=r2", JSON.stringify({ "a.b": 1 }));
    raw.publish("$iothub/twin/PATCH/properties/reported/?$rid=r3", "[1,2,3]");
    raw.publish("$iothub/twin/PATCH/properties/reported/?$rid=r4", Buffer.from([0xff, 0xfe, 0x00, 0x01]));
    raw.publish("$iothub/twin/DELETE/?$rid=r5", "{}");
    raw.publish("$iothub/methods/res/abc/?$rid=1", "{}");
    raw.publish("$iothub/methods/res/200/?$rid=nope", "{}"); // a response nobody asked for
    raw.publish("$iothub/twin/GET/?$rid=r6", Buffer.from([0, 1, 2])); // body is ignored for GET
    await waitFor(() => replies.length === 6, 5000, "replies to the requests carrying a $rid");
    const byRid = Object.fromEntries(replies.map((r) => [/\$rid=([^&]+)/.exec(r.topic)?.[1], r]));
    for (const rid of ["r1", "r2", "r3", "r4", "r5"])
      assert.match(byRid[rid].topic, /^\$iothub\/twin\/res\/400\//, rid);
    assert.ok(
      JSON.parse(byRid.r2.body).errorCode,
      "400 bodies carry an errorCode (the SDK turns them into errors)",
    );
    assert.match(byRid.r6.topic, /^\$iothub\/twin\/res\/200\//);
    assert.deepEqual(JSON.parse(byRid.r6.body), { desired: { $version: 1 }, reported: { $version: 1 } });
    assert.ok(t.hub.metrics().malformedRequests >= 7);

    // Outside the $iothub request namespace, or QoS 2: the connection is closed.
    const closed = rawClosed(raw);
    raw.publish("$iothub/anything/else", "x");
    await closed;
    await rawEnd(raw);

    const q2 = rawClient(t.hub, "junk");
    await rawConnected(q2);
    const closed2 = rawClosed(q2);
    q2.publish("devices/junk/messages/events/", "qos2", { qos: 2 });
    await closed2;
    await rawEnd(q2);
    assert.equal(t.events.length, 0);

    await assertHubStillWorks(t.hub, t.device.bind(t), t.events);
  } finally {
    await t.close();
  }
});

test("non-TLS bytes, non-MQTT bytes inside TLS and garbage REST requests do not take the hub down", async () => {
  const t = await startTestHub();
  try {
    // Plain TCP junk at the TLS port.
    await new Promise<void>((resolve) => {
      const s = net.connect(t.hub.mqttPort, "127.0.0.1", () =>
        s.end(Buffer.from("GET / HTTP/1.1\r\n\r\n\x00\xff")),
      );
      s.on("error", () => resolve());
      s.on("close", () => resolve());
    });
    // A TLS session that speaks nonsense instead of MQTT CONNECT.
    await new Promise<void>((resolve) => {
      const s = tls.connect(
        { port: t.hub.mqttPort, host: "127.0.0.1", servername: "localhost", ca: t.hub.caCertPem },
        () => s.write(Buffer.from([0xf0, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3])),
      );
      s.on("error", () => resolve());
      s.on("close", () => resolve());
    });

    const owner = parseConnectionString(t.hub.serviceConnectionString);
    const auth = createSasToken(
      t.hub.hubName,
      owner.SharedAccessKey,
      Math.floor(Date.now() / 1000) + 600,
      "iothubowner",
    );
    const call = (method: string, path: string, body?: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; body: string; headers: Record<string, unknown> }>((resolve, reject) => {
        const req = https.request(
          {
            host: "127.0.0.1",
            port: t.hub.httpsPort,
            servername: "localhost",
            ca: t.hub.caCertPem,
            method,
            path,
            headers,
          },
          (res) => {
            let text = "";
            res.on("data", (c: Buffer) => (text += c.toString()));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text, headers: res.headers }));
          },
        );
        req.on("error", reject);
        req.end(body);
      });
    const v = "?api-version=2021-04-12";
    assert.equal((await call("GET", `/devices/x${v}`)).status, 401);
    assert.equal(
      (await call("GET", `/devices/x${v}`, undefined, { Authorization: "SharedAccessSignature garbage" }))
        .status,
      401,
    );
    const badJson = await call("POST", `/devices/query${v}`, "{nope", {
      Authorization: auth,
      "Content-Type": "application/json",
    });
    assert.equal(badJson.status, 400);
    assert.match(JSON.parse(badJson.body).Message, /^ErrorCode:ArgumentInvalid;/);
    assert.equal(
      (
        await call("POST", `/devices/query${v}`, JSON.stringify({ query: "SELECT * FROM devices WHERE (" }), {
          Authorization: auth,
        })
      ).status,
      400,
    );
    assert.equal(
      (await call("PUT", `/devices/${encodeURIComponent("bad/id?")}${v}`, "{}", { Authorization: auth }))
        .status,
      400,
    );
    assert.equal((await call("GET", `/nothing/here${v}`, undefined, { Authorization: auth })).status, 404);
    assert.equal(
      (await call("GET", `/devices/x`, undefined, { Authorization: auth })).status,
      400,
      "api-version is required",
    );
    const notFound = await call("GET", `/devices/ghost${v}`, undefined, { Authorization: auth });
    assert.equal(notFound.status, 404);
    assert.equal(notFound.headers["iothub-errorcode"], "DeviceNotFound");
    await sleep(50);
    assert.equal(t.hub.metrics().internalErrors, 0);
    await assertHubStillWorks(t.hub, t.device.bind(t), t.events);
  } finally {
    await t.close();
  }
});

async function assertHubStillWorks(
  hub: LocalHub,
  device: (id: string) => Promise<import("azure-iot-device").Client>,
  events: { body: Buffer }[],
): Promise<void> {
  const n = events.length;
  const dev = await device(`healthy-${Date.now()}`);
  await dev.sendEvent(new Message("healthy"));
  await waitFor(() => events.length === n + 1, 5000, "a healthy device's event");
  const twin = await dev.getTwin();
  assert.equal(twin.properties.reported.$version, 1);
  assert.ok(hub.metrics().connections >= 1);
}
