/**
 * The device-facing MQTT-over-TLS endpoint, on aedes.
 *
 * Spec: "Communicate with an IoT hub using the MQTT protocol"
 * (https://learn.microsoft.com/azure/iot-hub/iot-hub-mqtt-support) and MQTT 3.1.1 (OASIS):
 *   - CONNECT: ClientId = {device_id} or {device_id}/{module_id}; Username = {iothubhostname}/{client id}/?api-version=...;
 *     an IoT Plug and Play device or module adds `&model-id={DTMI}` (api-version 2020-05-31-preview or later: "IoT
 *     Plug and Play device developer guide", model ID announcement); the hub keeps it as the twin's `modelId`. A
 *     model ID that is not a DTMI is refused (IoT Hub does not document what it does with one: this hub is strict).
 *     Password = a SAS token for {iothubhostname}/devices/{device_id}[/modules/{module_id}]. A bad or expired
 *     token gets CONNACK return code 5 (not authorized) [MQTT-3.2.2-3].
 *   - A client may only publish/subscribe inside its own namespace (topics.ts); a forbidden PUBLISH closes the
 *     network connection (MQTT 3.1.1 has no negative PUBACK), a forbidden SUBSCRIBE gets 0x80 in SUBACK
 *     [MQTT-3.9.3]. QoS 2 publishes close the connection; QoS 2 subscriptions are granted QoS 1.
 *   - D2C messages are limited to 256 KB (body plus properties); larger ones close the connection.
 *   - Packet sizes are bounded on the wire before aedes buffers them (./frame-guard: 64 KiB until the CONNECT
 *     is accepted, 272 KiB after), and a connection whose TLS handshake, or then whose CONNECT, takes longer than
 *     `connectTimeoutMs` (default 10 s, each) is closed.
 * Everything the hub sends to a device goes with `client.publish` on that one connection, never
 * `broker.publish`: all devices subscribe to the same `$iothub/twin/res/#`, so a broker-level publish would reach
 * the whole fleet. aedes runs `client.publish` through authorizeForward too, so hub-originated packets carry a
 * `clientId` marker that no device id can take ('<' is outside the identity alphabet) and authorizeForward lets
 * only those through: nothing a device publishes is ever forwarded to another device.
 */
import * as net from "node:net";
import * as tls from "node:tls";
import type {
  Aedes,
  AuthenticateError,
  Client as AedesClient,
  PublishPacket,
  Subscription,
} from "aedes" with { "resolution-mode": "import" };
import type { IdentityRecord, IdentityStore } from "./identities";
import type { HubMetrics } from "./metrics";
import type { MethodTransport } from "./methods";
import { GuardedConnection, MqttFrameGuard } from "./frame-guard";
import { parseClientJson } from "./safe-json";
import { parseSas, verifySas } from "./sas";
import {
  type ClientIdentity,
  classifyPublish,
  clientIdOf,
  isSubscribeAllowed,
  parsePropertyBag,
  type PropertyBag,
  topicMatches,
} from "./topics";

export const HUB_ORIGIN = "<flotilla-local-hub>";
export const D2C_MAX_BYTES = 256 * 1024;
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const METHODS_FILTER_TOPIC = "$iothub/methods/POST/x/?$rid=0";

export interface MqttFrontEndOptions {
  host: string;
  port: number;
  hubName: string;
  tls: { cert: string; key: string };
  identities: IdentityStore;
  metrics: HubMetrics;
  log: (line: string) => void;
  /** The TLS handshake, and then the CONNECT, must each complete within this (default DEFAULT_CONNECT_TIMEOUT_MS). */
  connectTimeoutMs?: number;
  /** Telemetry accepted from a device/module (already size-checked and parsed). */
  onTelemetry: (id: ClientIdentity, rec: IdentityRecord, bag: PropertyBag, body: Buffer) => void;
  onMethodResponse: (clientId: string, rid: string, status: number, body: Buffer) => void;
  /** The client is online and subscribed to its module inputs (store-and-forward flush point). */
  onInputsReady: (clientId: string) => void;
}

type AedesModule = typeof import("aedes", { with: { "resolution-mode": "import" } });

/** aedes keeps the granted subscriptions on the client object (lib/client.js `subscriptions`). */
function grantedSubscriptions(c: AedesClient): Record<string, { qos: number }> {
  return (c as unknown as { subscriptions?: Record<string, { qos: number }> }).subscriptions ?? {};
}

function authError(message: string): AuthenticateError {
  const e = new Error(message) as AuthenticateError;
  e.returnCode = 5; // AuthErrorCode.NOT_AUTHORIZED: a const enum, not importable at runtime from CJS
  return e;
}

export class MqttFrontEnd implements MethodTransport {
  private readonly identityOf = new WeakMap<AedesClient, ClientIdentity>();
  private readonly guardOwner = new WeakMap<MqttFrameGuard, string>();
  private readonly online = new Map<string, AedesClient>();
  private readonly sockets = new Set<net.Socket>();
  private readonly readyWaiters = new Set<() => void>();
  private closed = false;

  private constructor(
    private readonly opts: MqttFrontEndOptions,
    private readonly broker: Aedes,
    private readonly server: tls.Server,
  ) {}

  static async start(opts: MqttFrontEndOptions): Promise<MqttFrontEnd> {
    const { Aedes } = (await import("aedes")) as AedesModule;
    // Handlers are attached after construction so they can close over the instance.
    const connectTimeout = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const broker = new Aedes({ maxClientsIdLength: 257, heartbeatInterval: 60_000, connectTimeout });
    const server = tls.createServer({
      cert: opts.tls.cert,
      key: opts.tls.key,
      minVersion: "TLSv1.2",
      handshakeTimeout: connectTimeout,
    });
    const fe = new MqttFrontEnd(opts, broker, server);
    broker.authenticate = (c, u, p, done) => fe.authenticate(c, u, p, done);
    broker.authorizePublish = (c, packet, done) => fe.authorizePublish(c, packet, done);
    broker.authorizeSubscribe = (c, sub, done) => fe.authorizeSubscribe(c, sub, done);
    // aedes-packet copies `clientId` from the packet given to client.publish (and keeps it in the offline queue).
    broker.authorizeForward = (_c, packet) =>
      (packet as { clientId?: string }).clientId === HUB_ORIGIN ? packet : null;
    broker.on("clientReady", (c) => fe.onClientReady(c));
    broker.on("clientDisconnect", (c) => fe.onClientGone(c));
    broker.on("subscribe", (_subs, c) => fe.onSubscribed(c));
    broker.on("clientError", () => opts.metrics.clientErrors++);
    broker.on("connectionError", (_c, err) => {
      opts.metrics.clientErrors++;
      if (/connect did not arrive in time/.test(err?.message ?? "")) {
        opts.metrics.connectTimeouts++;
        opts.log(`mqtt: a connection sent no CONNECT within ${connectTimeout} ms; closed`);
      }
    });
    await broker.listen();
    server.on("secureConnection", (socket) => {
      fe.sockets.add(socket);
      socket.once("close", () => fe.sockets.delete(socket));
      const guard = new MqttFrameGuard();
      const conn = new GuardedConnection(socket, guard, (why) => {
        opts.metrics.packetsTooLarge++;
        const who = fe.guardOwner.get(guard) ?? `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
        opts.log(`mqtt: ${who}: ${why}; closing the connection`);
      });
      broker.handle(conn as unknown as net.Socket);
    });
    // Node leaves the socket open after a TLS error, even a handshake timeout, when this event has a listener.
    server.on("tlsClientError", (_e, socket) => {
      opts.metrics.tlsErrors++;
      socket.destroy();
    });
    // Sockets still in the TLS handshake are tracked too, so close() never waits for them.
    server.on("connection", (socket: net.Socket) => {
      fe.sockets.add(socket);
      socket.once("close", () => fe.sockets.delete(socket));
    });
    opts.identities.onRemoved((ids) => {
      for (const id of ids) fe.online.get(id)?.close();
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(opts.port, opts.host, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } catch (e) {
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      throw e;
    }
    return fe;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  get connectedClients(): number {
    return this.online.size;
  }

  private authenticate(
    client: AedesClient,
    username: string | undefined,
    password: Buffer | undefined,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
  ): void {
    const { hubName, identities, metrics, log } = this.opts;
    const reject = (why: string) => {
      metrics.connectsRejected++;
      log(`mqtt: refused ${JSON.stringify(client.id)}: ${why}`);
      done(authError(why), null);
    };
    const parts = (client.id ?? "").split("/");
    if (parts.length > 2 || !parts[0] || parts[1] === "")
      return reject("client id must be deviceId or deviceId/moduleId");
    const [deviceId, moduleId] = parts;
    const rec = identities.get(deviceId, moduleId);
    if (!rec) return reject("unknown identity");
    if (rec.status !== "enabled" || (moduleId && identities.get(deviceId)?.status !== "enabled"))
      return reject("identity is disabled");
    const clientId = clientIdOf(deviceId, moduleId);
    const userPrefix = `${hubName}/${clientId}/`.toLowerCase();
    if (!username || !username.toLowerCase().startsWith(userPrefix))
      return reject(`user name must start with ${hubName}/${clientId}/`);
    if (!password) return reject("no password (SAS token) given");
    let check;
    try {
      const want = `${hubName}/devices/${deviceId}${moduleId ? `/modules/${moduleId}` : ""}`.toLowerCase();
      check = verifySas(
        parseSas(password.toString("utf8")),
        [rec.primaryKey, rec.secondaryKey],
        (r) => r.toLowerCase() === want,
      );
    } catch (e) {
      return reject((e as Error).message);
    }
    if (!check.ok) return reject(check.reason);
    const announced = connectModelId(username.slice(userPrefix.length));
    if ("invalid" in announced) return reject(announced.invalid);
    if (announced.ignored) log(`mqtt: ${clientId}: ${announced.ignored}`);
    this.identityOf.set(client, { deviceId, moduleId, clientId, modelId: announced.modelId });
    // From now on packets may be as large as an authenticated client's messages.
    const conn = client.conn as unknown;
    if (conn instanceof GuardedConnection) {
      conn.guard.authenticated = true;
      this.guardOwner.set(conn.guard, clientId);
    }
    done(null, true);
  }

  private authorizePublish(
    client: AedesClient | null,
    packet: PublishPacket,
    done: (error?: Error | null) => void,
  ): void {
    const { metrics, log, identities } = this.opts;
    const id = client ? this.identityOf.get(client) : undefined;
    if (!id) return done(new Error("publish from an unauthenticated client"));
    if (packet.qos === 2) {
      metrics.unauthorizedPublish++;
      log(`mqtt: ${id.clientId} published with QoS 2 (not supported); closing`);
      return done(new Error("QoS 2 is not supported"));
    }
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload ?? "");
    const c = classifyPublish(id, packet.topic);
    try {
      switch (c.kind) {
        case "denied":
          metrics.unauthorizedPublish++;
          log(`mqtt: ${c.reason}; closing the connection`);
          return done(new Error(c.reason));
        case "malformed":
          metrics.malformedRequests++;
          log(`mqtt: ${id.clientId}: ${c.reason}`);
          if (c.twinRid) this.twinReply(id.clientId, 400, c.twinRid, errorBody(400004, c.reason));
          return done(null);
        case "telemetry": {
          const size = payload.length + Buffer.byteLength(c.bag);
          if (size > D2C_MAX_BYTES) {
            metrics.d2cRejectedTooLarge++;
            log(
              `mqtt: ${id.clientId} sent a ${size}-byte message (limit ${D2C_MAX_BYTES}); rejected, closing the connection`,
            );
            return done(new Error("message too large"));
          }
          let bag: PropertyBag;
          try {
            bag = parsePropertyBag(c.bag);
          } catch (e) {
            metrics.malformedRequests++;
            log(`mqtt: ${id.clientId} sent a bad property bag (${(e as Error).message}); closing`);
            return done(new Error("malformed property bag"));
          }
          const rec = identities.get(id.deviceId, id.moduleId);
          if (!rec) return done(new Error("identity was deleted"));
          identities.touch(id.deviceId, id.moduleId);
          this.opts.onTelemetry(id, rec, bag, payload);
          return done(null);
        }
        case "twin-get": {
          metrics.twinGets++;
          const rec = identities.get(id.deviceId, id.moduleId);
          if (!rec) return done(new Error("identity was deleted"));
          this.twinReply(id.clientId, 200, c.rid, Buffer.from(JSON.stringify(rec.twin.deviceView())));
          return done(null);
        }
        case "twin-patch-reported": {
          let patch: unknown;
          try {
            patch = parseClientJson(payload.toString("utf8"), "a reported patch");
          } catch (e) {
            metrics.malformedRequests++;
            const msg = e instanceof SyntaxError ? "reported patch is not valid JSON" : (e as Error).message;
            log(`mqtt: ${id.clientId} reported patch refused: ${msg}`);
            this.twinReply(id.clientId, 400, c.rid, errorBody(400004, msg));
            return done(null);
          }
          try {
            const version = identities.patchReported(id.deviceId, id.moduleId, patch);
            metrics.twinReportedPatches++;
            this.twinReply(id.clientId, 204, c.rid, Buffer.alloc(0), version);
          } catch (e) {
            metrics.malformedRequests++;
            const msg = (e as Error).message;
            log(`mqtt: ${id.clientId} reported patch refused: ${msg}`);
            this.twinReply(id.clientId, 400, c.rid, errorBody(400004, msg));
          }
          return done(null);
        }
        case "method-response":
          this.opts.onMethodResponse(id.clientId, c.rid, c.status, payload);
          return done(null);
      }
    } catch (e) {
      // A bug or an unexpected input must cost this one connection, never the hub.
      metrics.internalErrors++;
      log(`mqtt: error handling ${packet.topic} from ${id.clientId}: ${(e as Error).stack ?? String(e)}`);
      return done(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private authorizeSubscribe(
    client: AedesClient,
    sub: Subscription,
    done: (error: Error | null, subscription?: Subscription | null) => void,
  ): void {
    const id = this.identityOf.get(client);
    if (!id) return done(new Error("subscribe from an unauthenticated client"));
    if (!isSubscribeAllowed(id, sub.topic)) {
      this.opts.metrics.unauthorizedSubscribe++;
      this.opts.log(`mqtt: ${id.clientId} may not subscribe to ${sub.topic}; refused (SUBACK 0x80)`);
      return done(null, null);
    }
    if (sub.qos > 1) sub.qos = 1;
    done(null, sub);
  }

  private onClientReady(c: AedesClient): void {
    const id = this.identityOf.get(c);
    if (!id) return;
    this.online.set(id.clientId, c);
    this.opts.metrics.connections++;
    this.opts.identities.setConnection(id.deviceId, id.moduleId, true, id.modelId ?? "");
    this.onSubscribed(c);
  }

  private onClientGone(c: AedesClient): void {
    const id = this.identityOf.get(c);
    if (!id || this.online.get(id.clientId) !== c) return;
    this.online.delete(id.clientId);
    this.opts.identities.setConnection(id.deviceId, id.moduleId, false);
  }

  private onSubscribed(c: AedesClient): void {
    const id = this.identityOf.get(c);
    if (!id || this.online.get(id.clientId) !== c) return;
    for (const w of [...this.readyWaiters]) w();
    if (
      id.moduleId &&
      this.subscribedQos(c, `devices/${id.deviceId}/modules/${id.moduleId}/inputs/x/`) !== undefined
    ) {
      this.opts.onInputsReady(id.clientId);
    }
  }

  private subscribedQos(c: AedesClient, topic: string): number | undefined {
    let best: number | undefined;
    for (const [filter, s] of Object.entries(grantedSubscriptions(c))) {
      if (topicMatches(filter, topic)) best = Math.max(best ?? 0, s.qos);
    }
    return best;
  }

  isOnline(clientId: string): boolean {
    return this.online.has(clientId);
  }

  /** Topic filters the client currently holds (empty when offline). */
  subscriptionsOf(clientId: string): string[] {
    const c = this.online.get(clientId);
    return c ? Object.keys(grantedSubscriptions(c)) : [];
  }

  /** Whether `clientId` is online and would receive `topic`. */
  wouldReceive(clientId: string, topic: string): boolean {
    const c = this.online.get(clientId);
    return !!c && this.subscribedQos(c, topic) !== undefined;
  }

  /**
   * Sends one packet on the client's own connection, honouring its subscriptions like a broker would
   * (QoS = min(granted, 1)). Returns false when offline or not subscribed.
   */
  send(clientId: string, topic: string, payload: Buffer): boolean {
    const c = this.online.get(clientId);
    if (!c || c.closed || this.closed) return false;
    const qos = this.subscribedQos(c, topic);
    if (qos === undefined) return false;
    const packet = {
      cmd: "publish",
      topic,
      payload,
      qos: Math.min(qos, 1),
      retain: false,
      dup: false,
      clientId: HUB_ORIGIN,
    };
    c.publish(packet as unknown as PublishPacket, (err) => {
      if (err) this.opts.log(`mqtt: send to ${clientId} failed: ${err.message}`);
    });
    return true;
  }

  private twinReply(clientId: string, status: number, rid: string, body: Buffer, version?: number): void {
    const q = `?$rid=${encodeURIComponent(rid)}` + (version === undefined ? "" : `&$version=${version}`);
    this.send(clientId, `$iothub/twin/res/${status}/${q}`, body);
  }

  /** `$iothub/twin/PATCH/properties/desired/?$version=N` with the patch (including `$version`) as body. */
  notifyDesired(clientId: string, patch: object & { $version?: unknown }): boolean {
    const ok = this.send(
      clientId,
      `$iothub/twin/PATCH/properties/desired/?$version=${String(patch.$version)}`,
      Buffer.from(JSON.stringify(patch)),
    );
    if (ok) this.opts.metrics.twinDesiredNotifications++;
    return ok;
  }

  methodsReady(clientId: string): boolean {
    return this.wouldReceive(clientId, METHODS_FILTER_TOPIC);
  }

  waitMethodsReady(clientId: string, ms: number): Promise<boolean> {
    if (this.methodsReady(clientId)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = () => {
        if (!this.methodsReady(clientId) && !this.closed) return;
        clearTimeout(timer);
        this.readyWaiters.delete(check);
        resolve(!this.closed);
      };
      const timer = setTimeout(() => {
        this.readyWaiters.delete(check);
        resolve(false);
      }, ms);
      this.readyWaiters.add(check);
    });
  }

  /** Drops the network connection of a client (the SDK will retry on its own). */
  disconnect(clientId: string): boolean {
    const c = this.online.get(clientId);
    if (!c) return false;
    c.conn.destroy();
    return true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of [...this.readyWaiters]) w();
    await new Promise<void>((resolve) => this.broker.close(() => resolve()));
    const serverClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await serverClosed;
  }
}

function errorBody(errorCode: number, message: string): Buffer {
  return Buffer.from(JSON.stringify({ errorCode, message, timestampUtc: new Date().toISOString() }));
}

/**
 * The first api-version that carries an IoT Plug and Play model ID: 2020-05-31-preview (the SDKs' Plug and Play
 * preview; Azure/azure-iot-sdk-c PR 1552), then 2020-09-30 at general availability. Compared as text, so
 * "2020-05-31-preview" counts.
 */
export const PNP_API_VERSION = "2020-05-31";
/** A DTMI (DTDL v3 "Digital Twin Model Identifier"): segments of letters, digits and '_', then ';' and a version. */
const DTMI =
  /^dtmi:[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?(?::[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?)*;[1-9][0-9]{0,8}$/;
/** IoT Hub's limit on a model ID's length. */
const MAX_MODEL_ID = 512;

/**
 * The model ID of a CONNECT user name's query (`?api-version=...&model-id=...&DeviceClientType=...`): "" when none
 * is announced; `ignored` when the api-version predates Plug and Play (the ID is not kept); `invalid` for a model ID
 * that is not a DTMI (the connection is refused).
 */
export function connectModelId(query: string): { modelId: string; ignored?: string } | { invalid: string } {
  const params = new Map<string, string>();
  for (const part of query.replace(/^\?/, "").split("&")) {
    const i = part.indexOf("=");
    if (i <= 0) continue;
    let value = part.slice(i + 1);
    try {
      value = decodeURIComponent(value);
    } catch {
      // kept as sent
    }
    params.set(part.slice(0, i).toLowerCase(), value);
  }
  const modelId = params.get("model-id");
  if (modelId === undefined || modelId === "") return { modelId: "" };
  if (modelId.length > MAX_MODEL_ID || !DTMI.test(modelId))
    return { invalid: `model-id ${JSON.stringify(modelId.slice(0, 80))} is not a valid DTMI` };
  const apiVersion = params.get("api-version") ?? "";
  if (apiVersion < PNP_API_VERSION)
    return {
      modelId: "",
      ignored: `model-id ignored: api-version ${apiVersion || "(none)"} predates ${PNP_API_VERSION}`,
    };
  return { modelId };
}
