/** Shared helpers for the local hub tests: real SDK clients and a raw MQTT client over real TLS. */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Client, ModuleClient, type Twin } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import * as mqtt from "mqtt";
import { type D2CEvent, type LocalHub, type LocalHubOptions, startLocalHub } from "../../../local/hub";
import { createSasToken, parseConnectionString } from "../../../local/hub/sas";

export interface TestHub {
  hub: LocalHub;
  events: D2CEvent[];
  logs: string[];
  /** Closes every client opened through this helper, then the hub. */
  close(): Promise<void>;
  device(id: string): Promise<Client>;
  module(deviceId: string, moduleId: string): Promise<ModuleClient>;
  /** Registers a client for cleanup. */
  track<T extends { close(): unknown }>(c: T): T;
}

export async function startTestHub(opts: LocalHubOptions = {}): Promise<TestHub> {
  const events: D2CEvent[] = [];
  const logs: string[] = [];
  const stateDir = opts.stateDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-hub-test-"));
  const hub = await startLocalHub({
    onEvent: (batch) => {
      events.push(...batch);
    },
    log: (l) => logs.push(l),
    ...opts,
    stateDir,
  });
  const open: { close(): unknown }[] = [];
  const track = <T extends { close(): unknown }>(c: T): T => {
    open.push(c);
    return c;
  };
  return {
    hub,
    events,
    logs,
    track,
    async device(id) {
      const c = track(Client.fromConnectionString(hub.createDevice(id), Mqtt));
      await c.setOptions({ ca: hub.caCertPem });
      await c.open();
      return c;
    },
    async module(deviceId, moduleId) {
      const c = track(ModuleClient.fromConnectionString(hub.createModule(deviceId, moduleId), Mqtt));
      await c.setOptions({ ca: hub.caCertPem });
      await c.open();
      return c;
    },
    async close() {
      for (const c of open.reverse()) {
        try {
          await withTimeout(Promise.resolve(c.close()), 3000, "client close");
        } catch {
          // already closed or the hub dropped it: nothing to clean
        }
      }
      await hub.close();
      if (!opts.stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

/** Polls `cond` every 20 ms until true; fails after `ms`. */
export async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A plain mqtt.js client speaking the IoT Hub MQTT dialect with a valid (or deliberately broken) SAS. */
export function rawClient(
  hub: LocalHub,
  deviceId: string,
  opts: { moduleId?: string; key?: string; expiry?: number; clean?: boolean } = {},
): mqtt.MqttClient {
  const cs = parseConnectionString(
    opts.moduleId
      ? hub.moduleConnectionString(deviceId, opts.moduleId)
      : hub.deviceConnectionString(deviceId),
  );
  const clientId = opts.moduleId ? `${deviceId}/${opts.moduleId}` : deviceId;
  const resource = `${hub.hubName}/devices/${deviceId}${opts.moduleId ? `/modules/${opts.moduleId}` : ""}`;
  const token = createSasToken(
    resource,
    opts.key ?? cs.SharedAccessKey,
    opts.expiry ?? Math.floor(Date.now() / 1000) + 3600,
  );
  return mqtt.connect(`mqtts://${hub.mqttHost}:${hub.mqttPort}`, {
    clientId,
    username: `${hub.hubName}/${clientId}/?api-version=2021-04-12`,
    password: token,
    ca: hub.caCertPem,
    protocolVersion: 4,
    clean: opts.clean ?? true,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    keepalive: 30,
  });
}

/** Resolves on CONNACK, rejects on a refused CONNACK or an error. */
export function rawConnected(c: mqtt.MqttClient): Promise<void> {
  return withTimeout(
    new Promise<void>((resolve, reject) => {
      c.once("connect", () => resolve());
      c.once("error", reject);
    }),
    5000,
    "raw mqtt connect",
  );
}

export function rawClosed(c: mqtt.MqttClient): Promise<void> {
  return withTimeout(
    new Promise<void>((resolve) => c.once("close", () => resolve())),
    5000,
    "raw mqtt close",
  );
}

export function rawEnd(c: mqtt.MqttClient): Promise<void> {
  return new Promise((resolve) => c.end(true, {}, () => resolve()));
}

/** The `twin.properties.reported.update` callback API (it has no promise form) as a promise. */
export function reportedUpdate(twin: Twin, patch: unknown): Promise<void> {
  const update = twin.properties.reported.update as (p: unknown, cb: (e?: Error) => void) => void;
  return new Promise<void>((resolve, reject) => update(patch, (e) => (e ? reject(e) : resolve())));
}
