/**
 * Helpers for the local-stack fault tests: a small fleet on a fresh local stack, the aggregation Function's HTTP
 * API, the persisted job/round state, and hooks to hold a device's uplink or capture the hub's event batches.
 */
import { getJson } from "../../../cloud/aggregator/src/store/blob-store";
import type { BlobStore } from "../../../cloud/aggregator/src/store/blob-store";
import { paths, type JobDocument, type RoundState } from "../../../cloud/aggregator/src/jobs/state";
import { DEFAULT_CONFIG } from "../../../local/sim/config";
import { deviceName, fleetHeldOut, loadFleetData, type FleetData } from "../../../local/sim/data";
import {
  deviceStateDirs,
  startLocalStack,
  type LocalStack,
  type LocalStackOptions,
  type StackDevice,
} from "../../../local/stack/stack";
import { createRegistry } from "../../../local/hub";
import {
  DEVICE_MODULES,
  startDeviceProcess,
  type DeviceModule,
  type DeviceProcess,
} from "../../../local/stack/device-process";

export interface FaultFleet {
  readonly stack: LocalStack;
  readonly data: FleetData;
  readonly deviceIds: string[];
  readonly store: BlobStore;
  /** Lines logged by the stack (aggregator, host, hub), for failure messages. */
  readonly logs: string[];
  /** Device processes started by `startDevice` (killed, if still running, by `stopFaultFleet`). */
  readonly processes: DeviceProcess[];
  device(deviceId: string): StackDevice;
}

export async function startFaultFleet(
  devices: number,
  samplesPerDevice = 30,
  opts: Pick<
    LocalStackOptions,
    "identityKeys" | "externalDevices" | "functionsHost" | "fleetTrace" | "timeScale"
  > & {
    /** Give the in-process trainers held-out data (fleet-wide evaluation, local/sim/data.ts fleetHeldOut). */
    heldOut?: boolean;
  } = {},
): Promise<FaultFleet> {
  const data = loadFleetData({ ...DEFAULT_CONFIG, devices, samplesPerDevice });
  const deviceIds = data.devices.map((_, i) => deviceName(i, devices));
  const logs: string[] = [];
  const stack = await startLocalStack({
    data: data.devices,
    ...(opts.heldOut ? { evalData: fleetHeldOut(data, DEFAULT_CONFIG.seed) } : {}),
    deviceIds,
    workers: 1,
    timerIntervalMs: 200,
    ...(opts.identityKeys ? { identityKeys: opts.identityKeys } : {}),
    ...(opts.externalDevices ? { externalDevices: opts.externalDevices } : {}),
    ...(opts.functionsHost ? { functionsHost: opts.functionsHost } : {}),
    ...(opts.fleetTrace ? { fleetTrace: opts.fleetTrace, timeScale: opts.timeScale } : {}),
    log: (l) => {
      logs.push(l);
      if (process.env.FAULT_DEBUG) console.error(`${new Date().toISOString().slice(11, 23)} ${l}`);
      if (logs.length > 400) logs.shift();
    },
  });
  return {
    stack,
    data,
    deviceIds,
    store: stack.aggregator.services.store,
    logs,
    processes: [],
    device(deviceId) {
      const d = stack.devices.find((x) => x.deviceId === deviceId);
      if (!d) throw new Error(`no device ${deviceId}`);
      return d;
    },
  };
}

/**
 * Starts one of the fleet's external devices (`startFaultFleet(n, s, { externalDevices })`) in a child process:
 * its four modules over the same hub identities, outbox and quantizer directories each time, so a process started
 * after a SIGKILL is the same device rebooted.
 */
export async function startDevice(
  f: FaultFleet,
  deviceId: string,
  opts: { holdUplink?: boolean } = {},
): Promise<DeviceProcess> {
  const i = f.deviceIds.indexOf(deviceId);
  if (i < 0) throw new Error(`no device ${deviceId}`);
  const dirs = deviceStateDirs(f.stack.stateDir, deviceId);
  const connectionStrings = Object.fromEntries(
    DEVICE_MODULES.map((m) => [m, f.stack.hub.createModule(deviceId, m)]),
  ) as Record<DeviceModule, string>;
  const p = await startDeviceProcess(
    {
      deviceId,
      connectionStrings,
      caCertPem: f.stack.hub.caCertPem,
      queueDir: dirs.queue,
      quantizerDir: dirs.quantizer,
      data: f.data.devices[i],
      ...(opts.holdUplink ? { holdUplink: true } : {}),
    },
    { log: (l) => f.logs.push(l) },
  );
  f.processes.push(p);
  return p;
}

/** Runs `body` on a fresh fault fleet (startFaultFleet), then stops it (stopFaultFleet) whatever happened. */
export async function withFaultFleet(
  devices: number,
  opts: Parameters<typeof startFaultFleet>[2],
  body: (f: FaultFleet) => Promise<void>,
): Promise<void> {
  const f = await startFaultFleet(devices, 30, opts);
  try {
    await body(f);
  } finally {
    await stopFaultFleet(f);
  }
}

/** Ends the fleet: device processes still running are killed, then the stack closes. */
export async function stopFaultFleet(f: FaultFleet): Promise<void> {
  await Promise.all(f.processes.map((p) => p.kill()));
  await f.stack.close();
}

/** A module's reported properties, as the hub holds them (read through the unmodified azure-iothub Registry). */
export async function reportedOf(
  f: FaultFleet,
  deviceId: string,
  moduleId: string,
): Promise<Record<string, unknown>> {
  const registry = createRegistry({
    serviceConnectionString: f.stack.hub.serviceConnectionString,
    caCertPem: f.stack.hub.caCertPem,
  });
  const twin = (await registry.getModuleTwin(deviceId, moduleId)).responseBody as unknown as {
    properties: { reported: Record<string, unknown> };
  };
  return twin.properties.reported;
}

export async function api(base: string, method: string, route: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`${base}/api/${route}`, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await res.json().catch(() => ({}))) as unknown;
  if (!res.ok) throw new Error(`${method} ${route}: HTTP ${res.status} ${JSON.stringify(json)}`);
  return json;
}

export interface JobOptions {
  jobId: string;
  clientsPerRound: number;
  rounds: number;
  roundDeadlineSeconds: number;
  minCompletedFraction: number;
}

/** Creates the job through the HTTP API (not started). */
export async function createJob(f: FaultFleet, o: JobOptions): Promise<void> {
  await api(f.stack.host.url, "POST", "jobs", {
    jobId: o.jobId,
    modelSpec: f.data.spec,
    strategy: "fedavg",
    strategyOptions: {
      clientsPerRound: o.clientsPerRound,
      fit: { epochs: 1, batchSize: 10, lr: 0.05 },
      seed: 7,
    },
    rounds: o.rounds,
    roundDeadlineSeconds: o.roundDeadlineSeconds,
    minCompletedFraction: o.minCompletedFraction,
    seed: 7,
  });
}

export async function startJob(f: FaultFleet, jobId: string): Promise<void> {
  await api(f.stack.host.url, "POST", `jobs/${jobId}/start`);
}

export async function jobDoc(store: BlobStore, jobId: string): Promise<JobDocument | undefined> {
  return (await getJson<JobDocument>(store, paths.job(jobId)))?.value;
}

export async function roundState(
  store: BlobStore,
  jobId: string,
  round: number,
): Promise<RoundState | undefined> {
  return (await getJson<RoundState>(store, paths.round(jobId, round)))?.value;
}

/** Polls `probe` until it returns a value other than undefined/false; throws with `what` after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  everyMs = 50,
  logs?: readonly string[],
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) {
      const tail = logs ? `\n--- last log lines ---\n${logs.slice(-40).join("\n")}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${tail}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Waits until the job leaves `running` (or was never started); returns its document. */
export function waitJobDone(f: FaultFleet, jobId: string, timeoutMs: number): Promise<JobDocument> {
  return waitFor(
    `job ${jobId} to finish`,
    async () => {
      const doc = await jobDoc(f.store, jobId);
      if (!doc || doc.status === "running" || doc.status === "created") return undefined;
      // The orchestrator commits a round to the job document first and marks the round's own state closed just
      // after: wait for that second write too, so callers see a settled store.
      for (const r of doc.rounds) {
        if ((await roundState(f.store, jobId, r.round))?.status !== "closed") return undefined;
      }
      return doc;
    },
    timeoutMs,
    100,
    f.logs,
  );
}

/**
 * Holds a device's uplink: its update-queue keeps storing updates in its durable outbox but sends nothing (as
 * with its link to the cloud down), until the queue's next (re)connection brings the sender back online.
 */
export function holdUplink(device: StackDevice): void {
  device.queue.sender.setOnline(false);
}

export interface EventCapture {
  /** Every batch handed to the host, as delivered. */
  readonly batches: unknown[][];
  /** When set, matching events are delivered twice in a row (Event Hub's at-least-once delivery). */
  duplicate: ((ev: unknown) => boolean) | undefined;
}

/**
 * Records every event batch the hub hands to the Functions host (the Event Hub trigger's input), while still
 * delivering it. The hub looks the host's `deliver` up on every batch, so wrapping it catches them all.
 */
export function captureEvents(stack: LocalStack): EventCapture {
  const capture: EventCapture = { batches: [], duplicate: undefined };
  const deliver = stack.host.deliver.bind(stack.host);
  stack.host.deliver = (events) => {
    const dup = capture.duplicate;
    const batch = dup ? events.flatMap((ev) => (dup(ev) ? [ev, ev] : [ev])) : events;
    capture.batches.push(batch);
    return deliver(batch);
  };
  return capture;
}

/** The application properties of a captured event (the update-queue's chunk metadata). */
export function eventProps(ev: unknown): Record<string, unknown> {
  return ((ev as { properties?: Record<string, unknown> }).properties ?? {}) as Record<string, unknown>;
}

/** Whether a captured event is a chunk of an update frame (not, e.g., the profiler's uplink probe). */
export function isUpdateChunk(ev: unknown): boolean {
  const p = eventProps(ev);
  return (
    typeof p.updateId === "string" && (p["flotilla-content-type"] ?? "flotilla-frame") === "flotilla-frame"
  );
}
