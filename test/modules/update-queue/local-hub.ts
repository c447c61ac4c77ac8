import { createHmac, randomBytes } from "node:crypto";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { parse as parseQuery } from "node:querystring";
import { createServer, type Server, type TLSSocket } from "node:tls";
import type { Aedes, AedesPublishPacket, Client } from "aedes" with { "resolution-mode": "import" };

/**
 * A minimal IoT Hub / edgeHub stand-in on aedes over TLS, enough for one module with the unmodified
 * azure-iot-device-mqtt client: SAS authentication, module inputs, module outputs, twin GET / reported PATCH /
 * desired notifications and direct methods (topics: /work/shared/notes/azure-iot.md). Hub-to-device packets go
 * through `client.publish` on the module's own connection.
 */

const noop = (): void => {};

export const HUB_HOST = "localhub.azure-devices.net";

export interface ReceivedEvent {
  readonly deviceId: string;
  readonly moduleId: string;
  /** `$.on`: the module output. */
  readonly output: string | undefined;
  readonly messageId: string | undefined;
  readonly contentType: string | undefined;
  readonly properties: Record<string, string>;
  readonly body: Buffer;
  readonly topicBytes: number;
}

export class LocalHub {
  readonly events: ReceivedEvent[] = [];
  readonly reported: Record<string, unknown>[] = [];
  twinGets = 0;
  connects = 0;
  desired: Record<string, unknown> = {};
  private version = 1;
  private rid = 1;
  private readonly methodWaiters = new Map<string, (r: { status: number; payload: unknown }) => void>();
  private readonly sockets = new Set<TLSSocket>();
  private readonly key = randomBytes(32).toString("base64");

  private constructor(
    private readonly broker: Aedes,
    private readonly server: Server,
    readonly ca: string,
    readonly deviceId: string,
    readonly moduleId: string,
  ) {}

  static async start(deviceId = "edge-1", moduleId = "update-queue"): Promise<LocalHub> {
    const selfsigned = (await import("selfsigned")) as unknown as {
      generate(
        attrs: { name: string; value: string }[],
        opts: Record<string, unknown>,
      ): Promise<{ private: string; cert: string }>;
    };
    const pems = await selfsigned.generate([{ name: "commonName", value: "localhost" }], {
      keyType: "ec",
      algorithm: "sha256",
    });
    const { Aedes } = await import("aedes");
    const broker = await Aedes.createBroker();
    const server = createServer({ key: pems.private, cert: pems.cert }, (socket) => broker.handle(socket));
    const hub = new LocalHub(broker, server, pems.cert, deviceId, moduleId);
    server.on("secureConnection", (s: TLSSocket) => {
      hub.sockets.add(s);
      s.on("close", () => hub.sockets.delete(s));
    });
    broker.authenticate = (client, username, password, done) => {
      const ok = hub.checkSas(client.id, username, password);
      if (ok) hub.connects++;
      done(ok ? null : Object.assign(new Error("bad SAS"), { returnCode: 4 }), ok);
    };
    broker.on("publish", (packet, client) => {
      if (client) hub.fromModule(packet, client);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    return hub;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** The module's connection string: TLS goes to the gateway (this hub), SAS keeps the hub's name. */
  connectionString(): string {
    return (
      `HostName=${HUB_HOST};DeviceId=${this.deviceId};ModuleId=${this.moduleId};` +
      `SharedAccessKey=${this.key};GatewayHostName=localhost:${this.port}`
    );
  }

  /** edgeHub routes a message to a module input. */
  sendInput(inputName: string, body: Uint8Array, properties: Record<string, string> = {}): void {
    const bag = Object.entries(properties)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
      .join("&");
    this.toModule(
      `devices/${this.deviceId}/modules/${this.moduleId}/inputs/${inputName}/${bag}`,
      Buffer.from(body),
      1,
    );
  }

  patchDesired(patch: Record<string, unknown>): void {
    this.version++;
    Object.assign(this.desired, patch);
    this.toModule(
      `$iothub/twin/PATCH/properties/desired/?$version=${this.version}`,
      Buffer.from(JSON.stringify({ ...patch, $version: this.version })),
    );
  }

  invokeMethod(
    name: string,
    payload: unknown,
    timeoutMs = 5000,
  ): Promise<{ status: number; payload: unknown }> {
    const rid = String(this.rid++);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`method ${name} timed out`)), timeoutMs);
      this.methodWaiters.set(rid, (r) => {
        clearTimeout(t);
        resolve(r);
      });
      this.toModule(`$iothub/methods/POST/${name}/?$rid=${rid}`, Buffer.from(JSON.stringify(payload)));
    });
  }

  /** Cuts every TLS connection, as a link failure would. */
  dropConnections(): void {
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.dropConnections();
    await new Promise<void>((r) => this.broker.close(() => r()));
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private checkSas(clientId: string, username: string | undefined, password: Buffer | undefined): boolean {
    if (clientId !== `${this.deviceId}/${this.moduleId}`) return false;
    if (!username?.startsWith(`${HUB_HOST}/${clientId}/?`) || !password) return false;
    const sas = new URLSearchParams(
      password
        .toString()
        .replace(/^SharedAccessSignature /, "")
        .replace(/\+/g, "%2B"),
    );
    const sr = sas.get("sr");
    const se = sas.get("se");
    if (
      sr !== `${HUB_HOST}/devices/${this.deviceId}/modules/${this.moduleId}` ||
      !se ||
      Number(se) * 1000 < Date.now()
    ) {
      return false;
    }
    const expected = createHmac("sha256", Buffer.from(this.key, "base64"))
      .update(`${encodeURIComponent(sr)}\n${se}`)
      .digest("base64");
    return sas.get("sig") === expected;
  }

  private client(): Client | undefined {
    const clients = (this.broker as unknown as { clients: Record<string, Client> }).clients;
    return clients[`${this.deviceId}/${this.moduleId}`];
  }

  private toModule(topic: string, payload: Buffer, qos: 0 | 1 = 0): void {
    const client = this.client();
    if (!client) throw new Error("the module is not connected");
    client.publish({ cmd: "publish", topic, payload, qos, dup: false, retain: false }, noop);
  }

  private fromModule(packet: AedesPublishPacket, client: Client): void {
    const topic = packet.topic;
    const payload = Buffer.from(packet.payload as Buffer);
    const rid = /\$rid=([^&]+)/.exec(topic)?.[1];
    const eventPrefix = `devices/${this.deviceId}/modules/${this.moduleId}/messages/events/`;
    if (topic.startsWith("$iothub/twin/GET/")) {
      this.twinGets++;
      const body = { desired: { ...this.desired, $version: this.version }, reported: {} };
      client.publish(
        {
          cmd: "publish",
          topic: `$iothub/twin/res/200/?$rid=${rid}`,
          payload: Buffer.from(JSON.stringify(body)),
          qos: 0,
          dup: false,
          retain: false,
        },
        noop,
      );
    } else if (topic.startsWith("$iothub/twin/PATCH/properties/reported/")) {
      this.reported.push(JSON.parse(payload.toString()) as Record<string, unknown>);
      client.publish(
        {
          cmd: "publish",
          topic: `$iothub/twin/res/204/?$rid=${rid}&$version=${this.version}`,
          payload: Buffer.alloc(0),
          qos: 0,
          dup: false,
          retain: false,
        },
        noop,
      );
    } else if (topic.startsWith("$iothub/methods/res/")) {
      const status = Number(topic.split("/")[3]);
      const text = payload.toString();
      this.methodWaiters.get(rid ?? "")?.({ status, payload: text ? JSON.parse(text) : null });
    } else if (topic.startsWith(eventPrefix)) {
      const bag = parseQuery(topic.slice(eventPrefix.length).replace(/\/$/, ""));
      const properties: Record<string, string> = {};
      for (const [k, v] of Object.entries(bag))
        if (!k.startsWith("$.") && typeof v === "string") properties[k] = v;
      this.events.push({
        deviceId: this.deviceId,
        moduleId: this.moduleId,
        output: bag["$.on"] as string | undefined,
        messageId: bag["$.mid"] as string | undefined,
        contentType: bag["$.ct"] as string | undefined,
        properties,
        body: payload,
        topicBytes: Buffer.byteLength(topic),
      });
    }
  }
}
