/**
 * The local stack's fleet clock: a device trace (core/fleet/trace.ts, docs/fleet-traces.md) replayed against the
 * real device modules, `timeScale` virtual seconds per real second (600: a 24-hour trace in 2.4 minutes).
 *
 * - Availability: each device's link follows its sessions. Offline (outside every session, maintenance windows
 *   included) its modules' clients are closed (ModuleHost.setLinkEnabled(false): the MQTT/TLS connections end and
 *   the hub reports the modules disconnected; the update-queue holds its outbox, the trainer's output waits);
 *   online again they reconnect (twin GET: a round order written meanwhile is read then; the queue sends its
 *   backlog). The schedule lives here only: one timer per device, set to its next transition.
 * - Speed: `PacedExecutor` makes training take at least the trace's time for it, samples · epochs / speedFor(model)
 *   virtual seconds, divided by the time scale: real training runs, then the rest is waited.
 *
 * Trace devices map to stack devices by id when the trace names them, else by position (trace device i drives the
 * stack's device i), so a synthetic trace fits any fleet.
 */
import { FlotillaError } from "../../core/errors";
import {
  isOnline,
  nextOnline,
  onlineUntil,
  speedFor,
  type DeviceTrace,
  type FleetTrace,
} from "../../core/fleet/trace";
import type { TrainExecutor, TrainJob, TrainOutcome } from "../../modules/trainer/src/executor";

/** The longest delay setTimeout takes (2^31 − 1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** What the driver switches: one device's link (all its modules). */
export type SetOnline = (deviceId: string, online: boolean) => Promise<void>;

/** The trace device that drives each of `deviceIds` (by id when the trace has it, else by position). */
export function traceFor(trace: FleetTrace, deviceIds: readonly string[]): Map<string, DeviceTrace> {
  if (trace.devices.length < deviceIds.length) {
    throw new FlotillaError(
      "E_CONFIG_VALUE",
      `the fleet trace has ${trace.devices.length} devices, the fleet ${deviceIds.length}`,
    );
  }
  const byId = new Map(trace.devices.map((d) => [d.deviceId, d]));
  const named = deviceIds.every((id) => byId.has(id));
  return new Map(deviceIds.map((id, i) => [id, named ? byId.get(id)! : trace.devices[i]]));
}

export function checkTimeScale(timeScale: number): number {
  if (!Number.isFinite(timeScale) || timeScale <= 0)
    throw new FlotillaError("E_CONFIG_VALUE", `--time-scale must be a positive number, got ${timeScale}`);
  return timeScale;
}

/** Virtual time: seconds of the trace since the driver started, `timeScale` per real second. */
export class VirtualClock {
  private t0 = performance.now();
  constructor(readonly timeScale: number) {
    checkTimeScale(timeScale);
  }
  /** Virtual time 0 is now. */
  restart(): void {
    this.t0 = performance.now();
  }
  nowS(): number {
    return ((performance.now() - this.t0) / 1000) * this.timeScale;
  }
  /** Real milliseconds until virtual time `t` (0 when past). */
  realMsUntil(t: number): number {
    return Math.max(0, ((t - this.nowS()) / this.timeScale) * 1000);
  }
}

export interface TraceDriverStats {
  /** Link transitions made, per device (offline and online both count). */
  readonly transitions: Readonly<Record<string, number>>;
}

/**
 * Drives each device's link from its trace. `start()` applies the state at virtual time 0 (devices offline then
 * are taken down) and schedules every device's next transition; `stop()` cancels the timers (links are left as
 * they are). Transitions of one device run one after another; a failed switch is logged, never thrown.
 */
export class TraceDriver {
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly online = new Map<string, boolean>();
  private readonly chains = new Map<string, Promise<void>>();
  private readonly counts: Record<string, number> = {};
  private stopped = false;

  constructor(
    private readonly devices: ReadonlyMap<string, DeviceTrace>,
    readonly clock: VirtualClock,
    private readonly setOnline: SetOnline,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  /** Applies the devices' state at the current virtual time and schedules the next transitions. */
  async start(): Promise<void> {
    this.clock.restart();
    const now = this.clock.nowS();
    for (const [id, dev] of this.devices) {
      this.online.set(id, true);
      this.apply(id, isOnline(dev, now));
      this.schedule(id);
    }
    await Promise.all(this.chains.values());
  }

  /** Whether the driver last put the device online. */
  isOnline(deviceId: string): boolean {
    return this.online.get(deviceId) ?? true;
  }

  stats(): TraceDriverStats {
    return { transitions: { ...this.counts } };
  }

  /** Resolves when every transition begun so far has finished. */
  settled(): Promise<void> {
    return Promise.all(this.chains.values()).then(() => undefined);
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private apply(id: string, online: boolean): void {
    if (this.online.get(id) === online) return;
    this.online.set(id, online);
    this.counts[id] = (this.counts[id] ?? 0) + 1;
    const prev = this.chains.get(id) ?? Promise.resolve();
    this.chains.set(
      id,
      prev.then(async () => {
        if (this.stopped) return;
        this.log(`trace: ${id} ${online ? "online" : "offline"} at t=${Math.round(this.clock.nowS())} s`);
        await this.setOnline(id, online).catch((e: unknown) =>
          this.log(`trace: switching ${id} ${online ? "online" : "offline"} failed: ${String(e)}`),
        );
      }),
    );
  }

  /** The device's next transition after now: the end of its session, or the start of the next one. */
  private schedule(id: string): void {
    if (this.stopped) return;
    const dev = this.devices.get(id)!;
    const now = this.clock.nowS();
    const next = isOnline(dev, now) ? onlineUntil(dev, now) : nextOnline(dev, now);
    if (next === null) return; // offline for the rest of the trace (or online to its end: nothing changes)
    const ms = this.clock.realMsUntil(next) + 1;
    const far = ms > MAX_TIMER_MS; // beyond a timer's reach: wake up then, and look again
    const t = setTimeout(
      () => {
        this.timers.delete(id);
        // The state at the transition's virtual time (a late timer must not flip the device the wrong way).
        if (!far) this.apply(id, isOnline(dev, Math.max(next, this.clock.nowS())));
        this.schedule(id);
      },
      far ? MAX_TIMER_MS : ms,
    );
    t.unref?.();
    this.timers.set(id, t);
  }
}

/**
 * A TrainExecutor whose training takes at least the trace's time: samples · epochs / `speed(job)` virtual seconds,
 * divided by the clock's time scale (real training runs first; the rest is waited, abortable).
 */
export class PacedExecutor implements TrainExecutor {
  constructor(
    private readonly inner: TrainExecutor,
    private readonly clock: VirtualClock,
    private readonly speed: (job: TrainJob) => number,
    private readonly samples: (job: TrainJob) => number,
  ) {}

  /** Real milliseconds training `job` takes at least. */
  minRealMs(job: TrainJob): number {
    const sps = this.speed(job);
    if (!(sps > 0)) return 0;
    const virtualS = (this.samples(job) * Math.max(1, job.config.epochs ?? 1)) / sps;
    return (virtualS / this.clock.timeScale) * 1000;
  }

  async run(
    job: TrainJob,
    signal: AbortSignal,
    onProgress: (samplesDone: number, samplesTotal: number) => void,
  ): Promise<TrainOutcome> {
    const t0 = performance.now();
    const out = await this.inner.run(job, signal, onProgress);
    const rest = this.minRealMs(job) - (performance.now() - t0);
    if (rest > 0) await abortableSleep(rest, signal);
    return out;
  }
}

/** The trace speed of a job's model on a device: speedFor(device, kind). */
export function traceSpeed(dev: DeviceTrace): (job: TrainJob) => number {
  return (job) => speedFor(dev, job.spec.kind);
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(new FlotillaError("E_ABORTED", "training was aborted"));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new FlotillaError("E_ABORTED", "training was aborted"));
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
