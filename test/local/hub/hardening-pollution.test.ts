/**
 * Issue 11 (hardening): prototype pollution through client-supplied JSON, and the chain it enabled: a polluted
 * Object.prototype mapping a device's `$.x` message property onto iothub-connection-device-id, so that the
 * aggregator took its messages for another device's.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as https from "node:https";
import type * as mqtt from "mqtt";
import { type IngestEvent, Ingestor } from "../../../cloud/aggregator/src/ingest";
import type { AggregatorServices } from "../../../cloud/aggregator/src/services";
import type { D2CEvent, LocalHub } from "../../../local/hub";
import { createSasToken, parseConnectionString } from "../../../local/hub/sas";
import { rawClient, rawClosed, rawConnected, rawEnd, sleep, startTestHub, waitFor } from "./support";

const PROTO_KEYS = () => Object.getOwnPropertyNames(Object.prototype).sort();
const SPOOF_KEYS = ["spoofKey", "spoofKey2", "polluted", "iothub-connection-device-id"];

/** Undoes whatever a failing (unfixed) run wrote into Object.prototype, so later tests are not affected. */
function unpollute(): void {
  for (const k of SPOOF_KEYS) delete (Object.prototype as Record<string, unknown>)[k];
}

function polluted(): boolean {
  const probe = {} as Record<string, unknown>;
  return SPOOF_KEYS.some((k) => probe[k] !== undefined);
}

/** Application properties of a well-formed update chunk claiming to come from `deviceId`. */
function chunkBag(deviceId: string): string {
  const app: Record<string, string> = {
    jobId: "job1",
    round: "1",
    deviceId,
    updateId: "u1",
    chunkIndex: "0",
    chunkCount: "1",
    size: "4",
    sha256: "a".repeat(64),
  };
  return Object.entries(app)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`)
    .join("&");
}

/** A real Ingestor; the sender check runs before any store or fleet access, which these stubs would fail. */
function ingestor(logs: string[]): Ingestor {
  return new Ingestor({
    store: {},
    fleet: {},
    clock: () => Date.now(),
    log: (l: string) => logs.push(l),
  } as unknown as AggregatorServices);
}

function publish(c: mqtt.MqttClient, topic: string, payload: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) =>
    c.publish(topic, payload, { qos: 1 }, (e) => (e ? reject(e) : resolve())),
  );
}

test("a device's __proto__ reported patch gets a 400 twin reply, Object.prototype stays untouched, its D2C keeps its own identity", async () => {
  const t = await startTestHub();
  const before = PROTO_KEYS();
  try {
    t.hub.createDevice("victim");
    t.hub.createDevice("mallory");
    const raw = rawClient(t.hub, "mallory");
    await rawConnected(raw);
    const replies = new Map<string, { status: number; body: string }>();
    raw.on("message", (topic, payload) => {
      const m = /^\$iothub\/twin\/res\/(\d+)\/\?\$rid=([^&]+)/.exec(topic);
      if (m) replies.set(m[2], { status: Number(m[1]), body: payload.toString() });
    });
    await new Promise<void>((resolve, reject) =>
      raw.subscribe("$iothub/twin/res/#", { qos: 0 }, (e) => (e ? reject(e) : resolve())),
    );
    const patches: Record<string, string> = {
      p1: '{"__proto__":{"spoofKey":"iothub-connection-device-id","polluted":"yes"}}',
      p2: '{"a":{"__proto__":{"polluted":"yes"}}}',
      p3: '{"constructor":{"prototype":{"polluted":"yes"}}}',
      p4: '{"x":[{"__proto__":{"polluted":"yes"}}]}',
      p5: '{"prototype":1}',
      ok: '{"fine":1}',
    };
    for (const [rid, body] of Object.entries(patches))
      raw.publish(`$iothub/twin/PATCH/properties/reported/?$rid=${rid}`, body);
    await waitFor(() => replies.size === 6, 5000, "a reply to every reported patch");
    for (const rid of ["p1", "p2", "p3", "p4", "p5"]) {
      const r = replies.get(rid);
      assert.equal(r?.status, 400, `${rid}: ${r?.body}`);
      const body = JSON.parse(r.body) as { errorCode: number; message: string };
      assert.equal(body.errorCode, 400004);
      assert.match(body.message, /"(__proto__|constructor|prototype)" is not allowed|invalid property name/);
    }
    assert.equal(replies.get("ok")?.status, 204);
    assert.equal(polluted(), false, "Object.prototype of the hub process was written");
    assert.deepEqual(PROTO_KEYS(), before);
    raw.publish("$iothub/twin/GET/?$rid=g1", " ");
    await waitFor(() => replies.has("g1"), 5000, "the twin");
    const twin = JSON.parse(replies.get("g1")?.body ?? "") as { reported: Record<string, unknown> };
    assert.deepEqual(
      Object.keys(twin.reported).sort(),
      ["$version", "fine"],
      "the refused patches left the twin as it was",
    );

    // The chain: a message property `$.spoofKey=victim` plus a chunk claiming to be victim's.
    await publish(
      raw,
      `devices/mallory/messages/events/%24.spoofKey=victim&%24.mid=m1&${chunkBag("victim")}/`,
      Buffer.from([1, 2, 3, 4]),
    );
    await waitFor(() => t.events.length === 1, 5000, "mallory's message");
    const ev = t.events[0];
    assert.equal(ev.systemProperties["iothub-connection-device-id"], "mallory");
    assert.equal(ev.systemProperties["message-id"], "m1");
    const logs: string[] = [];
    const ing = ingestor(logs);
    const res = await ing.ingestEvents([ev as unknown as IngestEvent]);
    assert.deepEqual(res, { accepted: 0, rejected: 1 });
    assert.equal(ing.counters.rejected_device, 1, logs.join("\n"));
    assert.match(logs.join("\n"), /chunk for 'victim' sent by 'mallory'/);

    // A forbidden property name in a D2C property bag: refused (the connection closes: MQTT 3.1.1 has no
    // negative PUBACK), logged with the reason, nothing reaches onEvent.
    const closed = rawClosed(raw);
    raw.publish("devices/mallory/messages/events/__proto__=x/", "body", { qos: 1 });
    await closed;
    await rawEnd(raw);
    await sleep(50);
    assert.equal(t.events.length, 1);
    assert.ok(
      t.logs.some((l) => /mallory sent a bad property bag.*"__proto__" is not allowed/.test(l)),
      t.logs.join("\n"),
    );
    assert.equal(t.hub.metrics().internalErrors, 0);
  } finally {
    unpollute();
    await t.close();
  }
});

test("with Object.prototype already polluted, system-property mapping and the aggregator's sender read use own properties only", async () => {
  const t = await startTestHub();
  try {
    t.hub.createDevice("victim");
    t.hub.createDevice("mallory");
    const raw = rawClient(t.hub, "mallory");
    await rawConnected(raw);
    // Pollution from anywhere else in the process (this test does it itself, then removes it).
    (Object.prototype as Record<string, unknown>).spoofKey2 = "iothub-connection-device-id";
    await publish(raw, `devices/mallory/messages/events/%24.spoofKey2=victim&${chunkBag("victim")}/`, "abcd");
    await waitFor(() => t.events.length === 1, 5000, "mallory's message");
    const ev: D2CEvent = t.events[0];
    assert.equal(ev.systemProperties["iothub-connection-device-id"], "mallory");
    assert.equal(Object.hasOwn(ev.systemProperties, "function Object() { [native code] }"), false);
    await rawEnd(raw);

    // The aggregator must not take an inherited sender either.
    (Object.prototype as Record<string, unknown>)["iothub-connection-device-id"] = "victim";
    const props = Object.fromEntries(
      chunkBag("victim")
        .split("&")
        .map((kv) => kv.split("=")),
    );
    const logs: string[] = [];
    const ing = ingestor(logs);
    const res = await ing.ingestEvents([
      { body: Buffer.from("abcd"), properties: props, systemProperties: {} },
    ]);
    unpollute();
    assert.deepEqual(res, { accepted: 0, rejected: 1 });
    assert.equal(ing.counters.rejected_device, 1, logs.join("\n"));
  } finally {
    unpollute();
    await t.close();
  }
});

function serviceCall(hub: LocalHub, method: string, path: string, body: string) {
  const owner = parseConnectionString(hub.serviceConnectionString);
  const auth = createSasToken(
    hub.hubName,
    owner.SharedAccessKey,
    Math.floor(Date.now() / 1000) + 600,
    "iothubowner",
  );
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port: hub.httpsPort,
        servername: "localhost",
        ca: hub.caCertPem,
        method,
        path: `${path}?api-version=2021-04-12`,
        headers: { Authorization: auth, "Content-Type": "application/json" },
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

test("service API: desired properties, tags, twin replace, method bodies and query aliases with __proto__/constructor/prototype are 400s", async () => {
  const t = await startTestHub();
  const before = PROTO_KEYS();
  try {
    t.hub.createDevice("d1");
    const cases: [string, string, string][] = [
      ["PATCH", "/twins/d1", '{"properties":{"desired":{"__proto__":{"polluted":"yes"}}}}'],
      ["PATCH", "/twins/d1", '{"properties":{"desired":{"a":{"__proto__":{"polluted":"yes"}}}}}'],
      ["PATCH", "/twins/d1", '{"tags":{"constructor":{"prototype":{"polluted":"yes"}}}}'],
      ["PUT", "/twins/d1", '{"tags":{"__proto__":{"polluted":"yes"}}}'],
      ["POST", "/twins/d1/methods", '{"methodName":"m","payload":{"__proto__":{"polluted":"yes"}}}'],
      ["POST", "/devices/query", '{"query":"SELECT deviceId AS __proto__ FROM devices"}'],
      ["POST", "/devices/query", '{"query":"SELECT tags.constructor FROM devices"}'],
    ];
    for (const [method, path, body] of cases) {
      const r = await serviceCall(t.hub, method, path, body);
      assert.equal(r.status, 400, `${method} ${path} ${body}: ${r.body}`);
      assert.match(
        (JSON.parse(r.body) as { Message: string }).Message,
        /^ErrorCode:ArgumentInvalid;.*(__proto__|constructor|prototype)/,
      );
    }
    assert.equal(polluted(), false, "Object.prototype of the hub process was written");
    assert.deepEqual(PROTO_KEYS(), before);
    const got = await serviceCall(t.hub, "GET", "/twins/d1", "");
    const twin = JSON.parse(got.body) as { version: number };
    assert.equal(twin.version, 1, "no refused request changed the twin");
    assert.equal(t.hub.metrics().internalErrors, 0);
  } finally {
    unpollute();
    await t.close();
  }
});
