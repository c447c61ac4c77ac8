/**
 * One simulated IoT Edge device of the local stack in its own process: the real trainer, quantizer, update-queue
 * and profiler modules on unmodified azure-iot-device ModuleClients (MQTT over TLS) against the stack's hub, as
 * `startLocalStack` runs them in-process, but in a child process (child_process.fork of this file's compiled
 * output) that a fault test can SIGKILL mid-round and start again over the same state directories — the durable
 * outbox of the update-queue (modules/update-queue/src/outbox.ts) and the quantizer's residuals survive the kill,
 * everything in memory does not.
 *
 * The parent side is `startDeviceProcess`; the child speaks to it over the IPC channel (advanced serialization, so
 * the device's dataset travels as typed arrays) and exits when that channel closes, so a dying test leaves no
 * orphan behind.
 */
import { ModuleClient } from "azure-iot-device";
import { QuietMqtt } from "./quiet-mqtt";
import type { Dataset } from "../../core/data/dataset";
import { FlotillaError } from "../../core/errors";
import { benchTrain } from "../../core/engine/bench";
import { startTrainer, type TrainerState } from "../../modules/trainer/src/trainer";
import { startUpdateQueue, type UpdateQueueStatus } from "../../modules/update-queue/src/main";
import { startQuantizer } from "../../modules/quantizer/src/quantizer";
import { startProfiler } from "../../modules/profiler/src/profiler";
import { forkChild, runAsChild, type ChildLifecycle } from "./child";
import { csField } from "../../modules/shared/module-client";
import type { MetricsEndpoint } from "../../modules/shared/metrics";
import { deviceModuleMetrics, serveDeviceMetrics } from "./module-metrics";
import { MODEL_IDS } from "../pnp/contracts";

export const DEVICE_MODULES = ["trainer", "quantizer", "update-queue", "profiler"] as const;
export type DeviceModule = (typeof DEVICE_MODULES)[number];

export interface DeviceProcessSpec {
  readonly deviceId: string;
  /** Each module's connection string (LocalHub.createModule). */
  readonly connectionStrings: Readonly<Record<DeviceModule, string>>;
  /** The hub's CA certificate (LocalHub.caCertPem). */
  readonly caCertPem: string;
  /** The update-queue's outbox directory and the quantizer's state directory (stack.ts deviceStateDirs). */
  readonly queueDir: string;
  readonly quantizerDir: string;
  readonly data: Dataset;
  /**
   * Start with the update-queue's uplink held: updates are stored in the outbox but not sent (as with the link to
   * the cloud down) until the queue's next (re)connection brings its sender back online.
   */
  readonly holdUplink?: boolean;
}

/** An outbox entry as the child reports it. */
export interface OutboxEntry {
  readonly updateId: string;
  readonly jobId: string;
  readonly round: number;
  readonly state: string;
}

export interface DeviceProcessStatus {
  readonly queue: UpdateQueueStatus;
  readonly outbox: readonly OutboxEntry[];
  readonly trainer: TrainerState;
}

export interface DeviceProcess {
  readonly deviceId: string;
  readonly pid: number;
  /** Settles when the process has exited: its exit code, or the signal that ended it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  status(): Promise<DeviceProcessStatus>;
  /** Where the child's module instances serve their Prometheus metrics (127.0.0.1, a free port each). */
  metricsEndpoints(): readonly MetricsEndpoint[];
  /** SIGKILLs the process (no module gets to stop, flush or close anything); resolves once it has exited. */
  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Polite stop: the modules stop and close their clients, then the process exits (SIGKILL if it hangs). */
  stop(): Promise<void>;
}

type ToChild = { type: "start"; spec: DeviceProcessSpec } | { type: "status"; id: number } | { type: "stop" };
type FromChild =
  | ChildLifecycle
  | { type: "status"; id: number; status: DeviceProcessStatus }
  | { type: "metrics"; endpoints: MetricsEndpoint[] };

/** Forks a device process and resolves once its four modules have started (connected and listening). */
export async function startDeviceProcess(
  spec: DeviceProcessSpec,
  opts: { log?: (line: string) => void } = {},
): Promise<DeviceProcess> {
  const { child, exited, ready, onMessage } = forkChild<DeviceProcessSpec, FromChild>(spec, {
    file: __filename,
    label: `device ${spec.deviceId}`,
    errorCode: "E_DEVICE_PROCESS",
    log: opts.log ?? (() => undefined),
  });
  const waiting = new Map<number, (s: DeviceProcessStatus) => void>();
  let nextId = 1;
  let endpoints: readonly MetricsEndpoint[] = [];
  onMessage((m) => {
    if (m.type === "metrics") {
      endpoints = m.endpoints;
      return;
    }
    waiting.get(m.id)?.(m.status);
    waiting.delete(m.id);
  });
  const send = (m: ToChild): void => {
    child.send(m);
  };
  await ready;
  const kill = async () => {
    child.kill("SIGKILL");
    return exited;
  };
  return {
    deviceId: spec.deviceId,
    pid: child.pid as number,
    exited,
    metricsEndpoints: () => endpoints,
    status: () =>
      new Promise<DeviceProcessStatus>((resolve, reject) => {
        if (child.exitCode !== null || child.signalCode !== null || !child.connected) {
          reject(new FlotillaError("E_DEVICE_PROCESS", `device process ${spec.deviceId} is not running`));
          return;
        }
        const id = nextId++;
        waiting.set(id, resolve);
        void exited.then(() => {
          if (waiting.delete(id))
            reject(new FlotillaError("E_DEVICE_PROCESS", `device process ${spec.deviceId} exited`));
        });
        send({ type: "status", id });
      }),
    kill,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      if (child.connected) send({ type: "stop" });
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// --- the child ------------------------------------------------------------------------------------------------------

async function openModule(
  connectionString: string,
  ca: string,
  moduleId: DeviceModule,
): Promise<ModuleClient> {
  const client = ModuleClient.fromConnectionString(connectionString, QuietMqtt);
  // The CA, and the module's Plug and Play model ID announced at connect (as the container entry does).
  await client.setOptions({ ca, modelId: MODEL_IDS[moduleId] });
  await client.open();
  return client;
}

async function runChild(spec: DeviceProcessSpec): Promise<void> {
  const reply = (m: FromChild): void => {
    process.send?.(m);
  };
  const cs = spec.connectionStrings;
  const [tc, zc, qc, pc] = await Promise.all(DEVICE_MODULES.map((m) => openModule(cs[m], spec.caCertPem, m)));
  const quiet = () => undefined;
  const metrics = deviceModuleMetrics(csField(cs.trainer, "HostName") ?? "unknown", spec.deviceId);
  const served = await serveDeviceMetrics(spec.deviceId, metrics);
  // Downstream first along the route, as stack.ts starts them.
  const queue = await startUpdateQueue({
    client: qc,
    dir: spec.queueDir,
    closeClient: true,
    resendAfterMs: 60_000,
    deviceId: spec.deviceId,
    metrics: metrics["update-queue"],
    log: quiet,
  });
  if (spec.holdUplink) queue.sender.setOnline(false);
  const quantizer = await startQuantizer({
    client: zc,
    stateDir: spec.quantizerDir,
    deviceId: spec.deviceId,
    closeClient: true,
    metrics: metrics.quantizer,
    log: quiet,
  });
  const trainer = await startTrainer({
    client: tc,
    deviceId: spec.deviceId,
    data: spec.data,
    closeClient: true,
    metrics: metrics.trainer,
    log: quiet,
  });
  const profiler = await startProfiler({
    client: pc,
    closeClient: true,
    deviceId: spec.deviceId,
    metrics: metrics.profiler,
    bench: (o) => benchTrain({ ...o, seconds: Math.min(o.seconds ?? 1, 1) }),
    log: quiet,
  });
  process.on("message", (m: ToChild) => {
    if (m.type === "status") {
      const outbox = queue.outbox
        .pending()
        .map((u) => ({ updateId: u.updateId, jobId: u.jobId, round: u.round, state: u.state }));
      reply({
        type: "status",
        id: m.id,
        status: { queue: queue.status(), outbox, trainer: trainer.state() },
      });
    } else if (m.type === "stop") {
      void (async () => {
        for (const stop of [() => trainer.stop(), () => quantizer.stop(), () => queue.stop()])
          await stop().catch(() => undefined);
        await profiler.stop().catch(() => undefined);
        await Promise.all(served.servers.map((s) => s.close()));
        process.exit(0);
      })();
    }
  });
  reply({ type: "metrics", endpoints: served.endpoints });
  reply({ type: "ready" });
}

runAsChild(module, runChild);
