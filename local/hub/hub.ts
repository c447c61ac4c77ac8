/**
 * startLocalHub: an embedded IoT Hub stand-in the unmodified Azure IoT SDKs talk to.
 *   - devices and modules: azure-iot-device(+ -mqtt) with
 *     `HostName=<hubName>;DeviceId=..;SharedAccessKey=..;GatewayHostName=localhost:<mqttPort>` and
 *     `client.setOptions({ ca: hub.caCertPem })` (MQTT over TLS, SAS authentication);
 *   - service side: azure-iothub Registry / Client through ./service-client (HTTPS REST, SAS with skn);
 *   - D2C telemetry (and module outputs routed to $upstream) reach `onEvent` in batches shaped like the Event Hub
 *     trigger's events from IoT Hub's built-in endpoint.
 * Module outputs are routed edgeHub-style (./message-router) to other modules' inputs on the same device.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { FlotillaError } from "../../core/errors";
import { ConfigurationStore } from "./configurations";
import { D2CDispatcher, type OnEvent } from "./d2c";
import { IdentityStore } from "./identities";
import { MessageRouter } from "./message-router";
import { type HubMetrics, newMetrics } from "./metrics";
import { DirectMethods } from "./methods";
import { MqttFrontEnd } from "./mqtt-broker";
import { buildConnectionString } from "./sas";
import { ServiceApi } from "./service-api";
import { ensureHubTls } from "./tls";
import { clientIdOf } from "./topics";

export const DEFAULT_HUB_NAME = "flotilla-local.azure-devices.net";

export interface LocalHubOptions {
  /** The IoT hub host name devices and the service sign SAS tokens for. */
  hubName?: string;
  /** MQTT over TLS port; 0 = ephemeral (default 0). */
  mqttPort?: number;
  /** HTTPS service API port; 0 = ephemeral (default 0). */
  httpsPort?: number;
  /** Address both listeners bind to (default "127.0.0.1"). */
  host?: string;
  /** Host name put in GatewayHostName of connection strings (default "localhost"; it is in the certificate). */
  gatewayHostName?: string;
  /** Where the CA/server certificate (and the registry, see persistRegistry) live. Default: a temp dir removed on close. */
  stateDir?: string;
  /** Persist the identity registry to stateDir/registry.json (default: true when stateDir is given). */
  persistRegistry?: boolean;
  /** Receives D2C batches from the built-in endpoint, in order, one batch at a time. */
  onEvent?: OnEvent;
  /** Largest batch handed to onEvent (default 100). */
  eventBatchSize?: number;
  /** Hub-wide edgeHub route table (manifest syntax); a device's `$edgeHub` module twin `routes` take precedence. */
  routes?: Record<string, unknown> | readonly string[];
  /** Store-and-forward TTL for module inputs (default 7200 s). */
  storeAndForwardTtlSecs?: number;
  /** MQTT: the TLS handshake, and then the CONNECT, must each complete within this many ms (default 10 000). */
  mqttConnectTimeoutMs?: number;
  /**
   * How often automatic device management configurations are re-evaluated, ms (default 30 000; IoT Hub: five
   * minutes). They are also evaluated at once when one changes and soon after a twin's tags change.
   */
  configurationIntervalMs?: number;
  /** Log sink (default: console.warn with a "[local-hub]" prefix). */
  log?: (line: string) => void;
}

export interface IdentityOptions {
  /** Base64 symmetric key (16-64 bytes); generated when absent. */
  primaryKey?: string;
}

export interface LocalHubMetrics extends HubMetrics {
  connectedClients: number;
  /** Events handed to onEvent, batches that threw, events dropped from a full queue. */
  eventsDelivered: number;
  onEventErrors: number;
  eventsDropped: number;
  methodsInvoked: number;
  methodsCompleted: number;
  methodsTimedOut: number;
  methodsOffline: number;
}

export interface LocalHub {
  readonly hubName: string;
  /** `HostName=<hub>;SharedAccessKeyName=iothubowner;SharedAccessKey=..;GatewayHostName=<gateway>:<httpsPort>`. */
  readonly serviceConnectionString: string;
  readonly caCertPem: string;
  readonly caCertPath: string;
  /** The host name devices dial (GatewayHostName), e.g. "localhost". */
  readonly mqttHost: string;
  readonly mqttPort: number;
  readonly httpsPort: number;
  /** Bind address of both listeners. */
  readonly host: string;
  readonly stateDir: string;
  /** Creates the device if missing (idempotent) and returns its connection string. */
  createDevice(deviceId: string, opts?: IdentityOptions & { edge?: boolean }): string;
  /** Creates the module (and its device, as an IoT Edge device, if missing); returns its connection string. */
  createModule(deviceId: string, moduleId: string, opts?: IdentityOptions): string;
  deviceConnectionString(deviceId: string): string;
  moduleConnectionString(deviceId: string, moduleId: string): string;
  /** Replaces the hub-wide route table. */
  setRoutes(routes: Record<string, unknown> | readonly string[]): void;
  metrics(): LocalHubMetrics;
  isOnline(deviceId: string, moduleId?: string): boolean;
  /** Topic filters the identity's live connection holds. */
  subscriptions(deviceId: string, moduleId?: string): string[];
  /** Drops the identity's network connection (the SDK reconnects by itself). */
  disconnect(deviceId: string, moduleId?: string): boolean;
  /** Resolves when every queued D2C event has been handed to onEvent. */
  flushEvents(): Promise<void>;
  close(): Promise<void>;
}

export async function startLocalHub(opts: LocalHubOptions = {}): Promise<LocalHub> {
  const hubName = opts.hubName ?? DEFAULT_HUB_NAME;
  const host = opts.host ?? "127.0.0.1";
  const gateway = opts.gatewayHostName ?? "localhost";
  const log = opts.log ?? ((line: string) => console.warn(`[local-hub] ${line}`));
  const tempState = opts.stateDir === undefined;
  const stateDir = opts.stateDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-hub-"));
  const persist = opts.persistRegistry ?? !tempState;
  const dropTempState = () => {
    if (tempState) fs.rmSync(stateDir, { recursive: true, force: true });
  };

  const names = [
    ...new Set([
      gateway,
      "localhost",
      "127.0.0.1",
      hubName,
      ...(host !== "0.0.0.0" && host !== "::" ? [host] : []),
    ]),
  ];
  const tlsMaterial = await ensureHubTls(stateDir, names).catch((e: unknown) => {
    dropTempState();
    throw e;
  });
  const tls = { cert: tlsMaterial.serverCertPem, key: tlsMaterial.serverKeyPem };
  const metrics = newMetrics();
  const identities = new IdentityStore(persist ? path.join(stateDir, "registry.json") : undefined);
  const dispatcher = new D2CDispatcher(opts.onEvent, log, opts.eventBatchSize ?? 100);

  // The router is built before listening (a bad route table fails fast); its send and the method replies are
  // late-bound to the MQTT front end, which needs the router's callbacks to exist first.
  const link: { front?: MqttFrontEnd; methods?: DirectMethods } = {};
  const router = new MessageRouter({
    identities,
    dispatcher,
    metrics,
    log,
    send: (clientId, topic, payload) => link.front?.send(clientId, topic, payload) ?? false,
    routes: opts.routes,
    timeToLiveSecs: opts.storeAndForwardTtlSecs,
  });
  let front: MqttFrontEnd;
  try {
    front = await MqttFrontEnd.start({
      host,
      port: opts.mqttPort ?? 0,
      hubName,
      tls,
      identities,
      metrics,
      log,
      connectTimeoutMs: opts.mqttConnectTimeoutMs,
      onTelemetry: (id, rec, bag, body) => router.onTelemetry(id, rec, bag, body),
      onMethodResponse: (clientId, rid, status, body) => {
        if (!link.methods?.onResponse(clientId, rid, status, body)) {
          log(`methods: unmatched response rid=${rid} from ${clientId}`);
        }
      },
      onInputsReady: (clientId) => router.flush(clientId),
    });
  } catch (e) {
    dropTempState();
    throw new FlotillaError(
      "E_HUB_LISTEN",
      `cannot listen for MQTT on ${host}:${opts.mqttPort ?? 0}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  link.front = front;
  const methods = new DirectMethods(front);
  link.methods = methods;
  identities.onDesiredChanged(({ record, desiredPatch }) => {
    if (desiredPatch) front.notifyDesired(clientIdOf(record.deviceId, record.moduleId), desiredPatch);
  });
  let configurations: ConfigurationStore;
  try {
    configurations = new ConfigurationStore({
      identities,
      intervalMs: opts.configurationIntervalMs,
      file: persist ? path.join(stateDir, "configurations.json") : undefined,
      log,
    });
  } catch (e) {
    await front.close();
    dropTempState();
    throw e;
  }
  let api: ServiceApi;
  try {
    api = await ServiceApi.start({
      host,
      port: opts.httpsPort ?? 0,
      hubName,
      tls,
      identities,
      configurations,
      methods,
      metrics,
      log,
    });
  } catch (e) {
    configurations.close();
    await front.close();
    dropTempState();
    throw new FlotillaError(
      "E_HUB_LISTEN",
      `cannot listen for HTTPS on ${host}:${opts.httpsPort ?? 0}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  const owner = identities.policies.get("iothubowner");
  if (!owner) throw new FlotillaError("E_HUB_STATE", "no iothubowner policy");
  const mqttPort = front.port;
  const httpsPort = api.port;

  const deviceConnectionString = (deviceId: string): string => {
    const r = identities.require(deviceId);
    return buildConnectionString({
      HostName: hubName,
      DeviceId: deviceId,
      SharedAccessKey: r.primaryKey,
      GatewayHostName: `${gateway}:${mqttPort}`,
    });
  };
  const moduleConnectionString = (deviceId: string, moduleId: string): string => {
    const r = identities.require(deviceId, moduleId);
    return buildConnectionString({
      HostName: hubName,
      DeviceId: deviceId,
      ModuleId: moduleId,
      SharedAccessKey: r.primaryKey,
      GatewayHostName: `${gateway}:${mqttPort}`,
    });
  };
  const ensure = (
    deviceId: string,
    moduleId: string | undefined,
    spec: { primaryKey?: string; iotEdge?: boolean },
  ) => {
    const existing = identities.get(deviceId, moduleId);
    if (!existing) identities.put(deviceId, moduleId, spec);
    else if (
      (spec.primaryKey && spec.primaryKey !== existing.primaryKey) ||
      (spec.iotEdge && !existing.iotEdge)
    ) {
      identities.put(deviceId, moduleId, spec, "*");
    }
  };

  let closing: Promise<void> | undefined;
  const hub: LocalHub = {
    hubName,
    serviceConnectionString: buildConnectionString({
      HostName: hubName,
      SharedAccessKeyName: owner.keyName,
      SharedAccessKey: owner.primaryKey,
      GatewayHostName: `${gateway}:${httpsPort}`,
    }),
    caCertPem: tlsMaterial.caCertPem,
    caCertPath: tlsMaterial.caCertPath,
    mqttHost: gateway,
    mqttPort,
    httpsPort,
    host,
    stateDir,
    createDevice(deviceId, o = {}) {
      ensure(deviceId, undefined, { primaryKey: o.primaryKey, iotEdge: o.edge });
      return deviceConnectionString(deviceId);
    },
    createModule(deviceId, moduleId, o = {}) {
      ensure(deviceId, undefined, { iotEdge: true });
      ensure(deviceId, moduleId, { primaryKey: o.primaryKey });
      return moduleConnectionString(deviceId, moduleId);
    },
    deviceConnectionString,
    moduleConnectionString,
    setRoutes: (routes) => router.setRoutes(routes),
    metrics: () => ({
      ...metrics,
      connectedClients: front.connectedClients,
      eventsDelivered: dispatcher.stats.delivered,
      onEventErrors: dispatcher.stats.errors,
      eventsDropped: dispatcher.stats.dropped,
      methodsInvoked: methods.stats.invoked,
      methodsCompleted: methods.stats.completed,
      methodsTimedOut: methods.stats.timedOut,
      methodsOffline: methods.stats.offline,
    }),
    isOnline: (deviceId, moduleId) => front.isOnline(clientIdOf(deviceId, moduleId)),
    subscriptions: (deviceId, moduleId) => front.subscriptionsOf(clientIdOf(deviceId, moduleId)),
    disconnect: (deviceId, moduleId) => front.disconnect(clientIdOf(deviceId, moduleId)),
    flushEvents: () => dispatcher.drain(),
    close() {
      closing ??= (async () => {
        methods.close();
        configurations.close();
        await Promise.all([front.close(), api.close()]);
        await dispatcher.drain();
        identities.save();
        dropTempState();
      })();
      return closing;
    },
  };
  return hub;
}

/** Writes what a separate process (the CLI's `flotilla hub`, a local Functions host) needs to reach the hub. */
export function writeHubInfo(hub: LocalHub, file: string): void {
  const info = {
    serviceConnectionString: hub.serviceConnectionString,
    caCertPath: hub.caCertPath,
    mqttHost: hub.mqttHost,
    mqttPort: hub.mqttPort,
    httpsPort: hub.httpsPort,
  };
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(info, null, 2) + "\n", { mode: 0o600 });
  fs.renameSync(tmp, file);
}
