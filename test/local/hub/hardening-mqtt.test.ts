/**
 * Issue 11 (hardening): the MQTT endpoint bounds packet sizes on the wire (before and after authentication) and
 * closes connections that never send their CONNECT.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as net from "node:net";
import * as tls from "node:tls";
import type { LocalHub } from "../../../local/hub";
import { MqttFrameGuard } from "../../../local/hub/frame-guard";
import { createSasToken, parseConnectionString } from "../../../local/hub/sas";
import { sleep, startTestHub, waitFor, withTimeout } from "./support";

/** MQTT Remaining Length (base-128, least significant first). */
function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

function str(s: string): Buffer {
  const b = Buffer.from(s, "utf8");
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

/** A complete MQTT 3.1.1 CONNECT with the IoT Hub user name and a valid SAS token for `deviceId`. */
function connectPacket(hub: LocalHub, deviceId: string): Buffer {
  const key = parseConnectionString(hub.deviceConnectionString(deviceId)).SharedAccessKey;
  const sas = createSasToken(`${hub.hubName}/devices/${deviceId}`, key, Math.floor(Date.now() / 1000) + 600);
  const body = Buffer.concat([
    str("MQTT"),
    Buffer.from([4, 0xc2, 0, 60]), // level 4; user name, password, clean session; keepalive 60 s
    str(deviceId),
    str(`${hub.hubName}/${deviceId}/?api-version=2021-04-12`),
    str(sas),
  ]);
  return Buffer.concat([Buffer.from([0x10]), varint(body.length), body]);
}

interface Probe {
  socket: tls.TLSSocket;
  closed: Promise<void>;
  isClosed: () => boolean;
  received: Buffer[];
}

function tlsProbe(hub: LocalHub): Promise<Probe> {
  return new Promise((resolve, reject) => {
    let closed = false;
    const received: Buffer[] = [];
    const socket = tls.connect(
      { port: hub.mqttPort, host: "127.0.0.1", servername: "localhost", ca: hub.caCertPem },
      () => {
        socket.off("error", reject);
        socket.on("error", () => undefined); // EPIPE/ECONNRESET once the hub cuts us off
        resolve({ socket, closed: closedP, isClosed: () => closed, received });
      },
    );
    const closedP = new Promise<void>((r) =>
      socket.once("close", () => {
        closed = true;
        r();
      }),
    );
    socket.on("data", (d: Buffer) => received.push(d));
    socket.once("error", reject);
  });
}

function write(s: net.Socket, b: Buffer): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve();
    s.write(b, () => resolve());
  });
}

/**
 * Sends the body an announced packet would carry, 4 KiB at a time, until the hub closes the connection or
 * `budget` bytes went out. Returns how many body bytes were sent.
 */
async function trickle(p: Probe, budget: number): Promise<number> {
  let sent = 0;
  const chunk = Buffer.alloc(4096, 0x41);
  while (!p.isClosed() && sent < budget) {
    await write(p.socket, chunk);
    sent += chunk.length;
    await sleep(2);
  }
  return sent;
}

test("frame guard: decodes Remaining Length and refuses over-limit packets right after the fixed header", () => {
  const g = new MqttFrameGuard(64 * 1024, 272 * 1024);
  assert.match(g.feed(Buffer.from([0x30, 0])) ?? "", /first packet is not CONNECT/);
  const g2 = new MqttFrameGuard(64 * 1024, 272 * 1024);
  // The header of a 250 MB CONNECT, fed byte by byte: refused on the last length byte, no body needed.
  const head = Buffer.concat([Buffer.from([0x10]), varint(250 * 1024 * 1024)]);
  for (let i = 0; i < head.length - 1; i++) assert.equal(g2.feed(head.subarray(i, i + 1)), undefined);
  assert.match(
    g2.feed(head.subarray(head.length - 1)) ?? "",
    /announces 262144000 bytes.*pre-authentication/,
  );
  // A fine CONNECT and, once authenticated, packets up to the post-authentication bound, in any chunking.
  const g3 = new MqttFrameGuard(64 * 1024, 272 * 1024);
  assert.equal(g3.feed(Buffer.concat([Buffer.from([0x10]), varint(3), Buffer.from([1, 2, 3])])), undefined);
  assert.match(g3.feed(Buffer.concat([Buffer.from([0x30]), varint(65 * 1024)])) ?? "", /pre-authentication/);
  const g4 = new MqttFrameGuard(64 * 1024, 272 * 1024);
  assert.equal(g4.feed(Buffer.concat([Buffer.from([0x10]), varint(2), Buffer.from([1, 2])])), undefined);
  g4.authenticated = true;
  const pub = Buffer.concat([Buffer.from([0x32]), varint(200 * 1024), Buffer.alloc(200 * 1024)]);
  for (let i = 0; i < pub.length; i += 1000) assert.equal(g4.feed(pub.subarray(i, i + 1000)), undefined);
  assert.equal(g4.feed(Buffer.from([0xc0, 0])), undefined, "PINGREQ");
  assert.match(
    g4.feed(Buffer.concat([Buffer.from([0x32]), varint(273 * 1024)])) ?? "",
    /over the limit of 278528/,
  );
  assert.match(new MqttFrameGuard().feed(Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff])) ?? "", /malformed/);
});

test("unauthenticated CONNECTs announcing 250 MB are cut after the fixed header; hub memory does not grow", async () => {
  const t = await startTestHub();
  try {
    const mem0 = process.memoryUsage();
    const probes = await Promise.all(Array.from({ length: 4 }, () => tlsProbe(t.hub)));
    const header = Buffer.concat([Buffer.from([0x10]), varint(250 * 1024 * 1024)]);
    const sent = await Promise.all(
      probes.map(async (p) => {
        await write(p.socket, header);
        return trickle(p, 2 * 1024 * 1024);
      }),
    );
    await withTimeout(Promise.all(probes.map((p) => p.closed)), 5000, "the hub closing every probe");
    for (const s of sent)
      assert.ok(s < 2 * 1024 * 1024, `the hub kept reading a 250 MB CONNECT (${s} bytes sent)`);
    await waitFor(() => t.hub.metrics().packetsTooLarge === 4, 5000, "4 refusals counted");
    assert.ok(
      t.logs.some((l) => /announces 262144000 bytes, over the pre-authentication limit of 65536/.test(l)),
      t.logs.join("\n"),
    );
    // Generous: the hub never buffered the announced bodies (4 x 250 MB), nor even the trickled 2 MB each.
    const mem1 = process.memoryUsage();
    assert.ok(
      mem1.arrayBuffers - mem0.arrayBuffers < 64 * 1024 * 1024,
      `arrayBuffers grew ${mem1.arrayBuffers - mem0.arrayBuffers}`,
    );
    assert.ok(mem1.rss - mem0.rss < 256 * 1024 * 1024, `rss grew ${mem1.rss - mem0.rss}`);

    // A first packet that is not CONNECT is refused too.
    const p = await tlsProbe(t.hub);
    await write(p.socket, Buffer.concat([Buffer.from([0x30]), varint(10)]));
    await withTimeout(p.closed, 5000, "close after a non-CONNECT first packet");
    assert.ok(
      t.logs.some((l) => /the first packet is not CONNECT/.test(l)),
      t.logs.join("\n"),
    );
    assert.equal(t.hub.metrics().internalErrors, 0);
  } finally {
    await t.close();
  }
});

test("after authentication a PUBLISH announcing 10 MB is cut after its fixed header; normal traffic still flows", async () => {
  const t = await startTestHub();
  try {
    t.hub.createDevice("hog");
    const p = await tlsProbe(t.hub);
    await write(p.socket, connectPacket(t.hub, "hog"));
    await waitFor(() => Buffer.concat(p.received).length >= 4, 5000, "CONNACK");
    assert.deepEqual([...Buffer.concat(p.received).subarray(0, 4)], [0x20, 2, 0, 0], "CONNACK accepted");
    // A QoS 1 PUBLISH of 200 KiB (under the bound) goes through to onEvent...
    const topic = str("devices/hog/messages/events/");
    const small = Buffer.concat([topic, Buffer.from([0, 1]), Buffer.alloc(200 * 1024, 0x61)]);
    await write(p.socket, Buffer.concat([Buffer.from([0x32]), varint(small.length), small]));
    await waitFor(() => t.events.length === 1, 5000, "the 200 KiB message");
    // ...one announcing 10 MB is refused as soon as its header is in.
    await write(p.socket, Buffer.concat([Buffer.from([0x32]), varint(10 * 1024 * 1024), topic]));
    const sent = await trickle(p, 2 * 1024 * 1024);
    await withTimeout(p.closed, 5000, "the hub closing the connection");
    assert.ok(sent < 2 * 1024 * 1024, `the hub kept reading a 10 MB PUBLISH (${sent} bytes sent)`);
    assert.equal(t.hub.metrics().packetsTooLarge, 1);
    assert.ok(
      t.logs.some((l) => /hog: packet type 3 announces 10485760 bytes, over the limit of 278528/.test(l)),
      t.logs.join("\n"),
    );
    assert.equal(t.events.length, 1);
  } finally {
    await t.close();
  }
});

test("connections that never complete TLS or never send their CONNECT are closed after the connect timeout", async () => {
  const t = await startTestHub({ mqttConnectTimeoutMs: 1000 });
  const mine: net.Socket[] = [];
  try {
    // TLS done, then silence.
    const silent = await tlsProbe(t.hub);
    // TLS done, then a CONNECT that announces 100 bytes and delivers 10.
    const partial = await tlsProbe(t.hub);
    mine.push(silent.socket, partial.socket);
    await write(partial.socket, Buffer.concat([Buffer.from([0x10]), varint(100), Buffer.alloc(10)]));
    // Plain TCP that never starts the TLS handshake.
    const tcpClosed = new Promise<void>((resolve) => {
      const s = net.connect(t.hub.mqttPort, "127.0.0.1");
      mine.push(s);
      s.on("error", () => undefined);
      s.once("close", () => resolve());
    });
    await withTimeout(Promise.all([silent.closed, partial.closed, tcpClosed]), 5000, "all three closed");
    await waitFor(() => t.hub.metrics().connectTimeouts === 2, 5000, "two connect timeouts counted");
    assert.ok(
      t.logs.some((l) => /sent no CONNECT within 1000 ms/.test(l)),
      t.logs.join("\n"),
    );
    // A real device still connects (its CONNECT arrives in time).
    const dev = await t.device("ontime");
    const twin = await dev.getTwin();
    assert.equal(twin.properties.reported.$version, 1);
  } finally {
    for (const s of mine) s.destroy(); // on failure: never leave the hub waiting for our sockets
    await t.close();
  }
});
