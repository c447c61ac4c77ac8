/**
 * The local stack that `npm start` runs: the embedded IoT Hub (MQTT/TLS + service REST), Azurite, the aggregation
 * Function's handlers in a local host, and a fleet of simulated IoT Edge devices, each running the real trainer,
 * quantizer, update-queue and profiler modules on unmodified azure-iot-device ModuleClients over TLS (the hub's
 * routes, from the deployment manifest, carry updates trainer → quantizer → update-queue → $upstream).
 *
 * Secure aggregation (`identityKeys`): every device gets an EC P-256 identity key at start (KeyProvider.createKey),
 * in the local Key Vault stand-in (local/keyvault/server.ts, reached through the unmodified @azure/keyvault-keys
 * and @azure/identity SDKs with a device certificate) or in a key directory under the stack's state dir; the
 * trainers sign their advertisements with it and the aggregation Function reads the public keys from the same
 * provider (in Azure: Key Vault, with the Function's managed identity).
 */
import type { Logger } from "../../core/log";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ModuleClient } from "azure-iot-device";
import { QuietMqtt } from "./quiet-mqtt";
import {
  createAggregator,
  robustMaxBytesFromEnv,
  type Aggregator,
} from "../../cloud/aggregator/src/aggregator";
import { IotHubFleet } from "../../cloud/aggregator/src/fleet/fleet";
import { AzureBlobStore, devStorageConnectionString } from "../../cloud/aggregator/src/store/blob-store";
import type { Dataset } from "../../core/data/dataset";
import { startTrainer, type TrainerHandle } from "../../modules/trainer/src/trainer";
import { startUpdateQueue, type UpdateQueueHandle } from "../../modules/update-queue/src/main";
import { startQuantizer, type QuantizerHandle } from "../../modules/quantizer/src/quantizer";
import { startProfiler, type BenchFn, type ProfilerHandle } from "../../modules/profiler/src/profiler";
import { benchTrain, type BenchTrainResult } from "../../core/engine/bench";
import { createRegistry, createServiceClient, startLocalHub, type LocalHub } from "../hub";
import { startAzurite, type Azurite } from "./azurite";
import { startFunctionsHost, type FunctionsHost } from "./functions-host";
import { TrainPool } from "./train-pool";
import { generate } from "selfsigned";
import { FileKeyProvider } from "../../core/secagg/file-key-provider";
import type { KeyProvider } from "../../core/secagg/identity";
import { deviceCredential, KeyVaultKeyProvider } from "../../azure/keyvault-key-provider";
import { startKeyVaultStandIn, type KeyVaultStandIn } from "../keyvault/server";
import type { FleetTrace } from "../../core/fleet/trace";
import { PacedExecutor, TraceDriver, traceFor, traceSpeed, VirtualClock } from "./trace-driver";
import type { MetricsEndpoint, MetricsServer } from "../../modules/shared/metrics";
import { deviceModuleMetrics, serveDeviceMetrics } from "./module-metrics";
import { MODEL_IDS, type ModuleName } from "../pnp/contracts";

/** The edgeHub routes of deployment-manifests/deployment.template.json. */
export function manifestRoutes(): Record<string, unknown> {
  const file = path.join(__dirname, "..", "..", "..", "deployment-manifests", "deployment.template.json");
  const manifest = JSON.parse(fs.readFileSync(file, "utf8")) as {
    modulesContent: { $edgeHub: { "properties.desired": { routes: Record<string, unknown> } } };
  };
  return manifest.modulesContent.$edgeHub["properties.desired"].routes;
}

export interface StackDevice {
  readonly deviceId: string;
  readonly trainer: TrainerHandle;
  /** Compresses the trainer's updates for the jobs its module twin configures; passes the rest through. */
  readonly quantizer: QuantizerHandle;
  readonly queue: UpdateQueueHandle;
  readonly profiler: ProfilerHandle;
  readonly clients: ModuleClient[];
}

export interface LocalStack {
  readonly hub: LocalHub;
  readonly azurite: Azurite;
  readonly aggregator: Aggregator;
  readonly host: FunctionsHost;
  /** The devices whose modules run in this process (not `externalDevices`). */
  readonly devices: StackDevice[];
  readonly pool: TrainPool;
  readonly stateDir: string;
  /** Devices' identity keys (secure aggregation), when the stack was started with `identityKeys`. */
  readonly keys?: KeyProvider;
  /** The Key Vault stand-in holding them (identityKeys "keyvault"). */
  readonly keyVault?: KeyVaultStandIn;
  /** Drops one device's module connections (fault injection); the SDK clients reconnect by themselves. */
  dropConnections(deviceId: string): void;
  /**
   * Takes an in-process device's link down (its four module clients close: the hub sees them disconnected; the
   * update-queue keeps its outbox, the trainer finishes and its output waits) or brings it back (they reconnect,
   * read their twins, and the queue sends its backlog). Switches of one device run in order.
   */
  setDeviceOnline(deviceId: string, online: boolean): Promise<void>;
  /** The fleet trace's driver, when the stack was started with `fleetTrace`. */
  readonly trace?: TraceDriver;
  /**
   * Where each in-process module instance serves its Prometheus metrics (127.0.0.1, a free port each; docs/metrics.md).
   * Devices in child processes list their own (DeviceProcess.metricsEndpoints).
   */
  metricsEndpoints(): readonly MetricsEndpoint[];
  close(): Promise<void>;
}

export interface LocalStackOptions {
  /** Each device's local data, index i = device i. */
  data: Dataset[];
  /** Each device's held-out data (fleet-wide evaluation, docs/evaluation.md); absent: the trainers send none. */
  evalData?: Dataset[];
  deviceIds: string[];
  /** Worker threads for training. */
  workers: number;
  /** Backend threads of each training worker (default: the cores divided among the workers). */
  threads?: number;
  stateDir?: string;
  timerIntervalMs?: number;
  log?: (line: string) => void;
  /** The in-process devices' modules log here (each record with its deviceId); absent: they are quiet. */
  moduleLogger?: Logger;
  onProgress?: (deviceId: string, line: string) => void;
  /**
   * Secure aggregation: create every device's identity key at start, in the Key Vault stand-in ("keyvault") or a
   * key directory under stateDir ("file"). Absent: no identity keys, and the aggregator refuses secure jobs.
   */
  identityKeys?: "keyvault" | "file";
  /**
   * Devices whose module identities the hub gets but whose modules the stack does not start: they run elsewhere,
   * e.g. in a child process (local/stack/device-process.ts, for fault tests that SIGKILL a device). Their queue
   * and quantizer state go under the same paths as an in-process device's (`deviceStateDirs`).
   */
  externalDevices?: readonly string[];
  /**
   * Starts the host of the aggregation Function instead of the in-process one (local/stack/functions-host.ts),
   * e.g. a child process (local/stack/function-process.ts). The stack still builds its in-process aggregator
   * over the same store and fleet (`LocalStack.aggregator`), whose handlers then serve nothing.
   */
  functionsHost?: (ctx: FunctionsHostContext) => Promise<FunctionsHost>;
  /**
   * Replays a device trace (local/stack/trace-driver.ts, docs/fleet-traces.md "The local IoT Hub stack"): each
   * in-process device's link follows its sessions, and its training takes at least the trace's time. Absent: every
   * device is always online and trains at this machine's speed.
   */
  fleetTrace?: FleetTrace;
  /** Virtual seconds of the trace per real second (default 600). */
  timeScale?: number;
}

/** What a Functions host started outside the stack's process needs to reach the stack's services. */
export interface FunctionsHostContext {
  readonly aggregator: Aggregator;
  /** Azurite's blob endpoint (`devStorageConnectionString(blobEndpoint)`). */
  readonly blobEndpoint: string;
  readonly hub: LocalHub;
  readonly timerIntervalMs: number;
  readonly log: (line: string) => void;
}

/** Where a device's update-queue outbox and quantizer state live under the stack's state directory. */
export function deviceStateDirs(stateDir: string, deviceId: string): { queue: string; quantizer: string } {
  return {
    queue: path.join(stateDir, "queues", deviceId),
    quantizer: path.join(stateDir, "quantizers", deviceId),
  };
}

/** The app id the stack's devices and aggregator authenticate to the Key Vault stand-in as (one fleet identity). */
const STACK_CLIENT_ID = "f1071119-0000-4000-8000-000000000001";

async function stackKeys(
  kind: "keyvault" | "file",
  stateDir: string,
): Promise<{ keys: KeyProvider; keyVault?: KeyVaultStandIn }> {
  if (kind === "file") return { keys: new FileKeyProvider(path.join(stateDir, "keys")) };
  const [keyVault, cert] = await Promise.all([
    startKeyVaultStandIn({ dataDir: path.join(stateDir, "keyvault") }),
    generate([{ name: "commonName", value: "flotilla-stack-fleet" }], {
      keyType: "rsa",
      keySize: 2048,
      algorithm: "sha256",
    }),
  ]);
  const pem = cert.private + cert.cert;
  keyVault.registerClient(STACK_CLIENT_ID, pem);
  const keys = new KeyVaultKeyProvider({
    vaultUrl: keyVault.url,
    credential: deviceCredential({
      tenantId: keyVault.tenantId,
      clientId: STACK_CLIENT_ID,
      certificate: pem,
      authorityHost: keyVault.authorityHost,
      ca: keyVault.ca,
    }),
    ca: keyVault.ca,
    clientOptions: { disableChallengeResourceVerification: true },
  });
  return { keys, keyVault };
}

async function openModule(hub: LocalHub, deviceId: string, moduleId: ModuleName): Promise<ModuleClient> {
  const client = ModuleClient.fromConnectionString(hub.createModule(deviceId, moduleId), QuietMqtt);
  // The CA, and the module's Plug and Play model ID announced at connect (as the container entry does).
  await client.setOptions({ ca: hub.caCertPem, modelId: MODEL_IDS[moduleId] });
  await client.open();
  return client;
}

export async function startLocalStack(opts: LocalStackOptions): Promise<LocalStack> {
  const log = opts.log ?? (() => undefined);
  const stateDir = opts.stateDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-stack-"));
  fs.mkdirSync(stateDir, { recursive: true });
  const azurite = await startAzurite();
  // Events can only be delivered once the host exists; the hub starts first (the host needs the hub's fleet).
  const hostRef: { current?: FunctionsHost } = {};
  const hub = await startLocalHub({
    stateDir: path.join(stateDir, "hub"),
    routes: manifestRoutes(),
    onEvent: async (batch) => hostRef.current?.deliver(batch),
    log: (l: string) => log(`[hub] ${l}`),
  } as Parameters<typeof startLocalHub>[0]);
  const store = new AzureBlobStore({ connectionString: devStorageConnectionString(azurite.blobEndpoint) });
  const fleet = new IotHubFleet(createRegistry(hub), createServiceClient(hub), { log });
  const { keys, keyVault } = opts.identityKeys
    ? await stackKeys(opts.identityKeys, stateDir)
    : { keys: undefined, keyVault: undefined };
  if (keys) {
    // Provisioning: each device's identity key exists before its trainer can be asked to sign with it.
    for (let i = 0; i < opts.deviceIds.length; i += 16)
      await Promise.all(opts.deviceIds.slice(i, i + 16).map((id) => keys.createKey(id)));
  }
  const robustMaxBytes = robustMaxBytesFromEnv(process.env);
  const aggregator = createAggregator({
    store,
    fleet,
    clock: Date.now,
    log,
    ...(keys ? { identityKeys: keys } : {}),
    // The Function's app setting, read from this process's environment as the Functions host would.
    ...(robustMaxBytes !== undefined ? { robustMaxBytes } : {}),
  });
  const timerIntervalMs = opts.timerIntervalMs ?? 1000;
  const host = opts.functionsHost
    ? await opts.functionsHost({ aggregator, blobEndpoint: azurite.blobEndpoint, hub, timerIntervalMs, log })
    : await startFunctionsHost(aggregator, { timerIntervalMs, log });
  hostRef.current = host;
  const pool = new TrainPool(opts.workers, opts.threads);
  const devices: StackDevice[] = [];
  const endpoints: MetricsEndpoint[] = [];
  const metricsServers: MetricsServer[] = [];
  const clock = opts.fleetTrace ? new VirtualClock(opts.timeScale ?? 600) : undefined;
  const traces = opts.fleetTrace ? traceFor(opts.fleetTrace, opts.deviceIds) : undefined;
  // The simulated devices share this machine: one real measurement per (model, batch size) serves them all.
  const measured = new Map<string, Promise<BenchTrainResult>>();
  const sharedBench: BenchFn = (o) => {
    const key = `${o.model}/${o.batchSize}/${o.spec ? JSON.stringify(o.spec) : ""}`;
    if (!measured.has(key)) measured.set(key, benchTrain({ ...o, seconds: Math.min(o.seconds ?? 2, 2) }));
    return measured.get(key)!;
  };
  const quiet = () => undefined;
  const moduleLog = (deviceId: string): Logger | (() => undefined) =>
    opts.moduleLogger?.child({ deviceId }) ?? quiet;
  // Connect in small batches: hundreds of TLS handshakes at once starve the event loop on 2 cores.
  const batch = 10;
  const external = new Set(opts.externalDevices ?? []);
  for (const deviceId of external) {
    for (const m of ["trainer", "quantizer", "update-queue", "profiler"]) hub.createModule(deviceId, m);
  }
  const entries = opts.deviceIds.map((deviceId, i) => ({
    deviceId,
    data: opts.data[i],
    evalData: opts.evalData?.[i],
  }));
  const inProcess = entries.filter((d) => !external.has(d.deviceId));
  for (let i = 0; i < inProcess.length; i += batch) {
    const ids = inProcess.slice(i, i + batch);
    devices.push(
      ...(await Promise.all(
        ids.map(async ({ deviceId, data, evalData }) => {
          const dirs = deviceStateDirs(stateDir, deviceId);
          const metrics = deviceModuleMetrics(hub.hubName, deviceId);
          const served = await serveDeviceMetrics(deviceId, metrics);
          endpoints.push(...served.endpoints);
          metricsServers.push(...served.servers);
          const [tc, qc, pc, zc] = await Promise.all([
            openModule(hub, deviceId, "trainer"),
            openModule(hub, deviceId, "update-queue"),
            openModule(hub, deviceId, "profiler"),
            openModule(hub, deviceId, "quantizer"),
          ]);
          // Downstream first: each module is listening before the one routing to it can send.
          const queue = await startUpdateQueue({
            client: qc,
            dir: dirs.queue,
            closeClient: true,
            resendAfterMs: 60_000,
            deviceId,
            metrics: metrics["update-queue"],
            log: moduleLog(deviceId),
          });
          const quantizer = await startQuantizer({
            client: zc,
            stateDir: dirs.quantizer,
            deviceId,
            closeClient: true,
            metrics: metrics.quantizer,
            log: moduleLog(deviceId),
          });
          const trainer = await startTrainer({
            client: tc,
            deviceId,
            data,
            ...(evalData ? { evalData } : {}),
            trainExecutor:
              clock && traces
                ? new PacedExecutor(pool, clock, traceSpeed(traces.get(deviceId)!), () => data.n)
                : pool,
            closeClient: true,
            metrics: metrics.trainer,
            log: moduleLog(deviceId),
            ...(keys ? { keys } : {}),
          });
          const profiler = await startProfiler({
            client: pc,
            closeClient: true,
            bench: sharedBench,
            deviceId,
            metrics: metrics.profiler,
            log: moduleLog(deviceId),
          });
          return { deviceId, trainer, quantizer, queue, profiler, clients: [tc, qc, pc, zc] };
        }),
      )),
    );
  }
  // One device's link switches, in order: down upstream first along the route (nothing is sent into a closed
  // module), up downstream first (each module listens before the one routing to it sends).
  const switching = new Map<string, Promise<void>>();
  const setDeviceOnline = (deviceId: string, online: boolean): Promise<void> => {
    const d = devices.find((x) => x.deviceId === deviceId);
    if (!d) return Promise.reject(new Error(`no in-process device ${deviceId}`));
    const order = online
      ? [d.queue, d.quantizer, d.profiler, d.trainer]
      : [d.trainer, d.quantizer, d.queue, d.profiler];
    const next = (switching.get(deviceId) ?? Promise.resolve()).then(async () => {
      for (const m of order) await m.setLinkEnabled(online);
    });
    switching.set(
      deviceId,
      next.catch(() => undefined),
    );
    return next;
  };
  const trace =
    clock && traces
      ? new TraceDriver(
          new Map(devices.map((d) => [d.deviceId, traces.get(d.deviceId)!])),
          clock,
          setDeviceOnline,
          log,
        )
      : undefined;
  await trace?.start();
  return {
    hub,
    azurite,
    setDeviceOnline,
    ...(trace ? { trace } : {}),
    aggregator,
    host,
    devices,
    pool,
    stateDir,
    ...(keys ? { keys } : {}),
    ...(keyVault ? { keyVault } : {}),
    metricsEndpoints: () => [...endpoints],
    dropConnections(deviceId) {
      for (const m of ["trainer", "quantizer", "update-queue", "profiler"]) hub.disconnect(deviceId, m);
    },
    async close() {
      trace?.stop();
      for (const d of devices) {
        // Upstream first along the route, so no module is stopped while the one feeding it still sends.
        const stopPipeline = async (): Promise<void> => {
          for (const stop of [() => d.trainer.stop(), () => d.quantizer.stop(), () => d.queue.stop()]) {
            await stop().catch(() => undefined);
          }
        };
        await Promise.allSettled([stopPipeline(), d.profiler.stop()]);
      }
      await Promise.all(metricsServers.map((s) => s.close()));
      await host.close();
      await pool.close();
      await hub.close();
      await azurite.stop();
      await keyVault?.close();
    },
  };
}
