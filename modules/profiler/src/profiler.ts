import { statfs } from "node:fs/promises";
import * as os from "node:os";
import { Message } from "azure-iot-device";
import { benchTrain, type BenchTrainOptions, type BenchTrainResult } from "../../../core/engine/bench";
import { validateSpec, type ModelSpec } from "../../../core/engine/model-spec";
import { toLogger, type LineLog, type Logger } from "../../../core/log";
import { errorText, updateReported, type EdgeModuleClient } from "../../shared/module-client";
import { ModuleHost } from "../../shared/host";
import type { MethodHandler } from "../../shared/host";
import type { ProfilerMethod } from "./model";
import type { ModuleMetrics } from "../../shared/metrics";
import { defaultProfilerModuleMetrics, profilerMetrics } from "./metrics";
import { WritableProperties } from "../../shared/writable";
import { CLOUD_DESIRED_KEYS, REPORTED_KEYS, profilerProperties, type ProfilerProperties } from "./model";

/**
 * The profiler IoT Edge module: measures what the cloud's device selection needs and reports it in the module
 * twin's reported `capabilities` (docs/iothub-protocol.md):
 *
 *   samplesPerSecond      {[model]: samples/s} of LocalModel.train (core/engine/bench.ts benchTrain, synthetic data)
 *   threads               the training threads those rates were measured with (the wasm backend's; docs/threads.md)
 *                         for the default spec of each model kind in desired `models`/`model` (default mlp), and
 *                         {[modelKey]: ...} for each job's own model spec in desired `jobModels` (the Function
 *                         writes a job's spec there once per device per job: cloud/aggregator/src/dispatch.ts)
 *   memoryBytes, freeMemoryBytes   os.totalmem() / os.freemem()
 *   freeDiskBytes         fs.statfs on the data directory: bavail × bsize (space an unprivileged process can use)
 *   rttMs                 median of 3 reported-property PATCH round trips (publish → the hub's 204 response)
 *   uplinkBytesPerSecond  a 64 KiB message on output `profile`, timed from send to the PUBACK (the hub or edgeHub
 *                         has it). On IoT Edge this measures the module → edgeHub link, not edgeHub → IoT Hub; no
 *                         route is needed for `profile` (edgeHub drops unrouted messages after accepting them).
 *   uptimeSeconds         os.uptime() (the machine's)
 *   availability          fraction of the time since the profiler started that the module was connected
 *   measuredAt            ISO time
 *
 * Measured at start, every desired `scheduleMinutes` (the timer is rescheduled when it changes; 0/absent = only
 * on start and on demand) and by the `profile` direct method. The operator's writable properties scheduleMinutes,
 * models and model (./model.ts) are validated and acknowledged the Plug and Play way (modules/shared/writable.ts);
 * desired `jobModels` is the Function's own entry, never acked. The free disk and memory reported here are what
 * the cloud judges a device's minFreeDiskBytes / minFreeMemoryBytes policy against (core/fleet/policy.ts); the
 * trainer judges them again, measured, at each order. It which answers with the capabilities. Measurements
 * never overlap: a request during one joins it. The benchmark is injectable (`bench`), so a fleet launcher can
 * share one measurement among simulated devices on the same machine.
 *
 * The link, the twin, the `profile` method's dispatch and stopping are the module host's (modules/shared/host.ts);
 * the capabilities are sent again after a reconnection.
 */
export interface Capabilities {
  readonly samplesPerSecond: Record<string, number>;
  /** The backend threads samplesPerSecond was measured with (absent when no benchmark ran). */
  readonly threads?: number;
  readonly memoryBytes: number;
  readonly freeMemoryBytes: number;
  readonly freeDiskBytes: number | null;
  readonly rttMs: number | null;
  readonly uplinkBytesPerSecond: number | null;
  readonly uptimeSeconds: number;
  readonly availability: number;
  readonly measuredAt: string;
}

export type BenchFn = (opts: BenchTrainOptions) => Promise<BenchTrainResult>;

export interface ProfilerOptions {
  client: EdgeModuleClient;
  /** Models to benchmark. Default: desired `models` (array) or `model`, else ['mlp']. */
  models?: string[];
  benchSeconds?: number;
  batchSize?: number;
  /** Threads to measure with (default: FLOTILLA_THREADS, else the cores; docs/threads.md). */
  threads?: number;
  /** Free disk is measured on this directory's file system (default /data, else the working directory). */
  dataDir?: string;
  bench?: BenchFn;
  /** A Logger, or a `(level, message)` callback; default: JSON lines (FLOTILLA_LOG_LEVEL/FORMAT). */
  log?: Logger | LineLog;
  /** Bytes of the uplink probe message (default 64 KiB). */
  uplinkProbeBytes?: number;
  outputName?: string;
  twinTimeoutMs?: number;
  /** One scheduling minute in ms (tests shorten it; default 60,000). */
  minuteMs?: number;
  closeClient?: boolean;
  /** This device's id (the metrics' edge_device label; default: IoT Edge's environment). */
  deviceId?: string;
  /**
   * The profiler's Prometheus metrics (./metrics.ts, docs/metrics.md). Default: its own registry with IoT Edge's
   * labels from the environment and `deviceId`.
   */
  metrics?: ModuleMetrics;
}

export interface ProfilerHandle {
  /** Measures now (joining a measurement in progress) and reports. */
  measure(): Promise<Capabilities>;
  last(): Capabilities | undefined;
  /** Current schedule in minutes (0 = none). */
  scheduleMinutes(): number;
  /** The profiler's metrics (serve them with serveMetrics, modules/shared/metrics.ts). */
  readonly metrics: ModuleMetrics;
  /**
   * Takes the module's link down (false: its client closes, as when the device loses its network) or brings it
   * back (true): the module host's setLinkEnabled (modules/shared/host.ts). For launchers replaying availability.
   */
  setLinkEnabled(enabled: boolean): Promise<void>;
  stop(): Promise<void>;
}

export const REPORTED_KEY = REPORTED_KEYS[0];
/** The reported key the RTT probe patches (never a desired property's ack). */
export const PROBE_KEY = REPORTED_KEYS[1];

export async function startProfiler(opts: ProfilerOptions): Promise<ProfilerHandle> {
  const { client } = opts;
  const log = toLogger(opts.log, "profiler");
  const bench = opts.bench ?? benchTrain;
  const benchSeconds = opts.benchSeconds ?? 5;
  const minuteMs = opts.minuteMs ?? 60_000;
  const twinTimeoutMs = opts.twinTimeoutMs ?? 30_000;
  const outputName = opts.outputName ?? "profile";
  const probeBytes = opts.uplinkProbeBytes ?? 64 * 1024;
  const dataDir = opts.dataDir ?? "/data";

  const moduleMetrics = opts.metrics ?? defaultProfilerModuleMetrics(opts.deviceId);
  const metered = profilerMetrics(moduleMetrics);
  const startedAt = Date.now();
  let connectedMs = 0;
  let connectedSince: number | undefined;
  let last: Capabilities | undefined;
  let inFlight: Promise<Capabilities> | undefined;
  let schedule = 0;
  let timer: NodeJS.Timeout | undefined;

  const setOnline = (on: boolean): void => {
    const now = Date.now();
    if (on && connectedSince === undefined) connectedSince = now;
    if (!on && connectedSince !== undefined) {
      connectedMs += now - connectedSince;
      connectedSince = undefined;
    }
  };
  const availability = (): number => {
    const now = Date.now();
    const total = now - startedAt;
    const up = connectedMs + (connectedSince !== undefined ? now - connectedSince : 0);
    return total <= 0 ? (connectedSince !== undefined ? 1 : 0) : Math.min(1, up / total);
  };

  const kindsToBench = (): string[] => {
    if (opts.models && opts.models.length > 0) return opts.models;
    const models = props.get("models");
    return models.length > 0 ? models : [props.get("model")];
  };
  /** Desired `jobModels`: {[modelKey]: ModelSpec}; an invalid entry is logged and skipped, null ones are removed. */
  const jobModels = (): [string, ModelSpec][] => {
    const jm = host.twin?.properties.desired?.jobModels as unknown;
    if (typeof jm !== "object" || jm === null) return [];
    const out: [string, ModelSpec][] = [];
    for (const [key, spec] of Object.entries(jm as Record<string, unknown>)) {
      if (spec === null || key.startsWith("$")) continue;
      try {
        out.push([key, validateSpec(spec)]);
      } catch (e) {
        log.warn(`desired jobModels.${key} ignored: ${errorText(e)}`, { modelKey: key });
      }
    }
    return out;
  };
  const modelsToBench = (): { key: string; spec?: ModelSpec }[] => [
    ...kindsToBench().map((key) => ({ key })),
    ...jobModels().map(([key, spec]) => ({ key, spec })),
  ];

  const measureOnce = async (): Promise<Capabilities> => {
    const samplesPerSecond: Record<string, number> = {};
    let threads: number | undefined;
    for (const { key, spec } of modelsToBench()) {
      try {
        const r = await bench({
          model: key,
          ...(spec ? { spec } : {}),
          batchSize: opts.batchSize ?? 32,
          seconds: benchSeconds,
          ...(opts.threads !== undefined ? { threads: opts.threads } : {}),
        });
        samplesPerSecond[key] = Math.round(r.samplesPerSecond * 10) / 10;
        if (r.threads !== undefined) threads = r.threads;
      } catch (e) {
        log.warn(`benchmark of ${key} failed: ${errorText(e)}`, { model: key, err: e });
      }
    }
    let freeDiskBytes: number | null = null;
    for (const dir of [dataDir, process.cwd()]) {
      try {
        const s = await statfs(dir);
        freeDiskBytes = Number(s.bavail) * Number(s.bsize);
        break;
      } catch {
        // the data directory may not be mounted: fall back to the working directory
      }
    }
    const rttMs = await measureRtt();
    const uplinkBytesPerSecond = await measureUplink();
    return {
      samplesPerSecond,
      ...(threads !== undefined ? { threads } : {}),
      memoryBytes: os.totalmem(),
      freeMemoryBytes: os.freemem(),
      freeDiskBytes,
      rttMs,
      uplinkBytesPerSecond,
      uptimeSeconds: Math.round(os.uptime()),
      availability: Math.round(availability() * 10_000) / 10_000,
      measuredAt: new Date().toISOString(),
    };
  };

  /** Median of 3 reported-property PATCH round trips (a tiny patch of the probe's own key). */
  const measureRtt = async (): Promise<number | null> => {
    const twin = host.twin;
    if (!twin) return null;
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      try {
        await updateReported(twin, { [PROBE_KEY]: { seq: i } }, twinTimeoutMs);
        times.push(performance.now() - t0);
      } catch (e) {
        log.warn(`RTT probe failed: ${errorText(e)}`, { err: e });
      }
    }
    if (times.length === 0) return null;
    times.sort((a, b) => a - b);
    return Math.round(times[times.length >> 1] * 100) / 100;
  };

  const measureUplink = async (): Promise<number | null> => {
    const body = Buffer.alloc(probeBytes, 0x5a);
    const msg = new Message(body);
    msg.properties.add("flotilla-content-type", "profile-probe");
    const t0 = performance.now();
    try {
      await host.sendOnce(outputName, msg, 30_000);
    } catch (e) {
      log.warn(`uplink probe failed: ${errorText(e)}`, { err: e });
      return null;
    }
    const s = Math.max(1e-4, (performance.now() - t0) / 1000);
    return Math.round(probeBytes / s);
  };

  const measure = (): Promise<Capabilities> => {
    if (inFlight) return inFlight;
    inFlight = (async () => {
      try {
        const caps = await measureOnce();
        last = caps;
        metered.record(caps);
        if (!host.stopped) {
          host.reportNow();
          await host.reportsSettled();
        }
        return caps;
      } finally {
        inFlight = undefined;
      }
    })();
    return inFlight;
  };

  const reschedule = (minutes: number): void => {
    if (minutes === schedule && (timer !== undefined || minutes === 0)) return;
    schedule = minutes;
    if (timer) clearInterval(timer);
    timer = undefined;
    if (minutes > 0 && !host.stopped) {
      timer = setInterval(() => {
        measure().catch((e: unknown) =>
          log.warn(`scheduled measurement failed: ${errorText(e)}`, { err: e }),
        );
      }, minutes * minuteMs);
      timer.unref?.();
    }
    log.info(`schedule every ${minutes} min`, { scheduleMinutes: minutes });
  };

  /**
   * The operator's writable properties (./model.ts), acked the Plug and Play way: scheduleMinutes reschedules at
   * once, models/model are read by the next measurement.
   */
  const props: WritableProperties<ProfilerProperties> = new WritableProperties({
    specs: profilerProperties(),
    cloudKeys: CLOUD_DESIRED_KEYS,
    reservedKeys: REPORTED_KEYS,
    ack: (outcomes, version) => host.ackDesired(outcomes, version),
    apply: (name, value) => {
      if (name === "scheduleMinutes") reschedule(value as number);
    },
    log: (level, line) => log.log(level, `property ${line}`),
  });

  const onTwin = (desired: Record<string, unknown>, reported: Record<string, unknown> | undefined): void => {
    props.onTwin(desired, reported);
    // The schedule in effect (also when it was restored from the reported ack, which applies no change).
    reschedule(props.get("scheduleMinutes"));
    measureNewJobModels(desired);
  };
  const onDesiredPatch = (delta: Record<string, unknown>): void => {
    props.onPatch(delta);
    measureNewJobModels(delta);
  };
  const measureNewJobModels = (delta: Record<string, unknown>): void => {
    if ("jobModels" in delta && last !== undefined) {
      // A job's model to measure (a twin read at start is measured by the first measurement).
      const known = new Set(Object.keys(last.samplesPerSecond));
      if (jobModels().some(([key]) => !known.has(key)))
        measure().catch((e: unknown) => log.warn(`measurement failed: ${errorText(e)}`, { err: e }));
    }
  };

  const host: ModuleHost = new ModuleHost({
    name: "profiler",
    client,
    log,
    stoppedCode: "E_PROFILER_STOPPED",
    stoppedMessage: "stopped",
    twinTimeoutMs,
    reportIntervalMs: 0,
    closeClient: opts.closeClient,
    metrics: moduleMetrics,
    reportedKeys: REPORTED_KEYS,
    hooks: {
      onTwin: (twin) =>
        onTwin(twin.properties.desired, twin.properties.reported as Record<string, unknown> | undefined),
      onDesiredPatch: (delta) => onDesiredPatch(delta),
      onLinkUp: () => setOnline(true),
      onOffline: () => setOnline(false),
      reported: () => (last ? { [REPORTED_KEY]: last } : undefined),
    },
    methods: {
      profile: async () => {
        try {
          return { status: 200, payload: await measure() };
        } catch (e) {
          return { status: 500, payload: { code: "E_PROFILER", message: errorText(e) } };
        }
      },
    } satisfies Record<ProfilerMethod, MethodHandler>,
  });

  await host.start();
  await measure();

  return {
    metrics: moduleMetrics,
    measure,
    last: () => last,
    scheduleMinutes: () => schedule,
    setLinkEnabled: (enabled: boolean) => host.setLinkEnabled(enabled),
    stop: () =>
      host.stop({
        drain: async () => {
          if (timer) clearInterval(timer);
          await inFlight?.catch(() => undefined);
        },
      }),
  };
}
