/**
 * Virtual time over a fleet trace: a transport and a round clock in one (core/round/clock.ts). The round drivers
 * send their orders through it and ask it for the next device frame; the frames are computed for real by an inner
 * transport (the simulator's worker-thread fleet), but each one "arrives" at the virtual time the trace gives it,
 * so a 1,000-device, 24-hour fleet runs as fast as this machine can train the updates.
 *
 * Time is in ms from the trace's start (t = 0). The rules (docs/simulation.md, "Virtual time"):
 *
 *   order      an order sent at t reaches the device at t when it is online, else when it next comes online (its
 *              twin holds the order and delivers it on reconnect: nextOnline(t)).
 *   download   rtt + frameBytes / downlink of online time (a transfer pauses while the device is offline and
 *              resumes at its next session: the same link rule as the upload).
 *   training   samples · epochs / speedFor(model) seconds (epochs from the order's config, samples the device's
 *              own); it goes on while the device is offline (it needs no link).
 *   upload     starts at max(trainEnd, nextOnline(trainEnd)) and takes rtt + replyBytes / uplink of online time:
 *              when the session ends first, the rest is sent in the next session (the update-queue keeps it).
 *   horizon    the trace repeats past its horizon (`beyondHorizon: "cycle"`, the default: a 24-hour trace is a
 *              day, replayed); with "offline" a device never comes back after the horizon and its arrival is
 *              Infinity (it never answers).
 *
 * Discrete-event semantics (`next(until)`): every request in flight has a lower bound of its arrival (the arrival
 * with an empty upload: the reply's size is only known once the inner transport has computed it). The earliest
 * request is awaited for its real reply, its exact arrival computed and put back; a frame is handed out only when
 * its exact arrival is the earliest of all events and ≤ until, so frames never come out of order. Ties go to the
 * earlier send. Otherwise the clock moves to `until` and next returns null.
 *
 * Compute is not wasted: `cancelAfter(sentAt, deadline)` (default: never) bounds how late a request may arrive;
 * a request whose lower-bound arrival is later is not sent to the inner transport at all (it is counted in
 * `cancelled` with its round, and the device is busy until that lower bound, as it would be training).
 * Devices are busy from their order to their reply's arrival: listDevices() offers only devices that are online
 * at now and idle.
 *
 * Devices are matched to the trace by id, or, when the trace's ids are not the inner transport's, by position
 * (the k-th device of the inner transport is the k-th device of the trace).
 */
import { FlotillaError } from "../errors";
import type { ServerTransport, TransportStats } from "../protocol/transport";
import type { Arrival, RoundClock } from "../round/clock";
import type { ClientInfo } from "../strategies/strategy";
import type { DeviceProfile } from "../selection/types";
import {
  availability,
  isOnline,
  nextOnline,
  onlineUntil,
  speedFor,
  type DeviceTrace,
  type FleetTrace,
} from "./trace";

export interface VirtualFleetOptions {
  /** The job's model kind (speedFor); default the reference model. */
  readonly model?: string;
  /** The model's cost per sample relative to the reference (speedFor); default 1. */
  readonly relativeCost?: number;
  /** Past the trace's horizon: the trace repeats ("cycle", default) or devices stay offline ("offline"). */
  readonly beyondHorizon?: "cycle" | "offline";
  /**
   * The latest virtual time (ms) a request sent at `sentAt` (with the order's `deadline`, when it has one) is
   * worth computing; a later lower-bound arrival cancels it. Default: never cancel.
   */
  readonly cancelAfter?: (sentAt: number, deadline: number | undefined) => number;
  /** The virtual start time (ms); default 0. */
  readonly start?: number;
}

interface Request {
  readonly seq: number;
  readonly deviceId: string;
  readonly round: number;
  readonly sentAt: number;
  /** When the upload may start (training done and the device online). */
  readonly uploadFrom: number;
  /** Arrival with an empty upload. */
  readonly lowerBound: number;
  /** The inner transport's reply and its exact arrival, once known. */
  reply?: Uint8Array;
  at?: number;
}

/** Transfer of `seconds` of link time starting at `t` (ms) on `dev`: when it ends (ms), pausing while offline. */
export type LinkTime = (trace: DeviceTrace, t: number, seconds: number) => number;

export class VirtualFleet implements ServerTransport, RoundClock {
  readonly stats: TransportStats = { uplinkBytes: 0, downlinkBytes: 0 };
  /** Requests not computed because they would have arrived after `cancelAfter`, by round. */
  readonly cancelled = new Map<number, number>();
  /**
   * Each device's last frame handed out: its round, when its order was sent and when it arrived (ms), and the
   * training loss and samples a result reported (selection history: Oort's loss and measured duration).
   */
  readonly delivered = new Map<
    string,
    { round: number; sentAt: number; at: number; loss?: number; numSamples?: number }
  >();
  private clockMs: number;
  private seq = 0;
  private readonly inFlight: Request[] = [];
  /** Until when each device is busy with an order (Infinity: until its reply is handed out). */
  private readonly busyUntil = new Map<string, number>();
  private readonly handlers = new Set<(frame: Uint8Array) => void>();
  private readonly traceOf = new Map<string, DeviceTrace>();
  private readonly infos = new Map<string, ClientInfo>();
  private wake: (() => void) | undefined;
  private readonly off: () => void;
  private readonly horizonMs: number;

  private constructor(
    private readonly inner: ServerTransport,
    private readonly trace: FleetTrace,
    devices: readonly ClientInfo[],
    private readonly opts: VirtualFleetOptions,
  ) {
    this.clockMs = opts.start ?? 0;
    this.horizonMs = trace.horizonS * 1000;
    const byId = new Map(trace.devices.map((d) => [d.deviceId, d]));
    const matchById = devices.every((d) => byId.has(d.deviceId));
    devices.forEach((d, i) => {
      const t = matchById ? byId.get(d.deviceId) : trace.devices[i];
      if (t) {
        this.traceOf.set(d.deviceId, t);
        this.infos.set(d.deviceId, d);
      }
    });
    this.off = inner.onMessage((frame) => this.onReply(frame));
  }

  /** A virtual fleet over `inner`: its devices must all be in the trace (by id or by position). */
  static async create(
    inner: ServerTransport,
    trace: FleetTrace,
    opts: VirtualFleetOptions = {},
  ): Promise<VirtualFleet> {
    const devices = await inner.listDevices();
    if (devices.length > trace.devices.length) {
      throw new FlotillaError(
        "E_CONFIG_FLEET_TRACE",
        `the fleet trace has ${trace.devices.length} devices, the fleet ${devices.length}`,
      );
    }
    return new VirtualFleet(inner, trace, devices, opts);
  }

  /** The trace entry of a device (undefined for a device the fleet does not know). */
  deviceTrace(deviceId: string): DeviceTrace | undefined {
    return this.traceOf.get(deviceId);
  }

  // --- trace time, with the horizon rule -------------------------------------------------------------------

  private cycle(t: number): { base: number; s: number } {
    if (this.opts.beyondHorizon === "offline" || this.horizonMs <= 0) return { base: 0, s: t / 1000 };
    const base = Math.floor(t / this.horizonMs) * this.horizonMs;
    return { base, s: (t - base) / 1000 };
  }

  /** Whether the device is online at t (ms). */
  online(dev: DeviceTrace, t: number): boolean {
    const { s } = this.cycle(t);
    return isOnline(dev, s);
  }

  /** The earliest time ≥ t (ms) the device is online; Infinity if never. */
  nextOnlineMs(dev: DeviceTrace, t: number): number {
    if (!Number.isFinite(t)) return t;
    const { base, s } = this.cycle(t);
    const n = nextOnline(dev, s);
    if (n !== null) return base + n * 1000;
    if (this.opts.beyondHorizon === "offline" || dev.sessions.length === 0) return Infinity;
    return base + this.horizonMs + dev.sessions[0][0] * 1000;
  }

  /** When the device's current session ends (ms; Infinity for a device always online), or null when offline. */
  onlineUntilMs(dev: DeviceTrace, t: number): number | null {
    const { base, s } = this.cycle(t);
    const end = onlineUntil(dev, s);
    if (end === null) return null;
    const endMs = base + end * 1000;
    // A session that reaches the horizon continues into the next cycle when the trace starts online.
    if (this.opts.beyondHorizon !== "offline" && end >= this.trace.horizonS && isOnline(dev, 0)) {
      const first = onlineUntil(dev, 0)!;
      return first >= this.trace.horizonS ? Infinity : endMs + first * 1000;
    }
    return endMs;
  }

  /** When `seconds` of link time starting at t (ms) end: the transfer pauses while the device is offline. */
  linkDone(dev: DeviceTrace, t: number, seconds: number): number {
    let left = seconds * 1000;
    let at = this.nextOnlineMs(dev, t);
    for (let guard = 0; guard < 1_000_000 && Number.isFinite(at); guard++) {
      const end = this.onlineUntilMs(dev, at) ?? at;
      if (end - at >= left) return at + left;
      left -= end - at;
      at = this.nextOnlineMs(dev, end);
    }
    return Infinity;
  }

  // --- ServerTransport ----------------------------------------------------------------------------------------

  /** Devices online at virtual now and not busy with an order. */
  async listDevices(): Promise<ClientInfo[]> {
    const out: ClientInfo[] = [];
    for (const [id, info] of this.infos) {
      const dev = this.traceOf.get(id)!;
      if (this.isBusy(id) || !this.online(dev, this.clockMs)) continue;
      out.push({ ...info, samplesPerSecond: this.speed(dev) });
    }
    return out;
  }

  /** What the trace says of each device listDevices() offers now (selection input). */
  profiles(devices: readonly ClientInfo[]): DeviceProfile[] {
    return devices.map((d) => {
      const dev = this.traceOf.get(d.deviceId);
      if (!dev) return { deviceId: d.deviceId, numSamples: d.numSamples };
      const until = this.onlineUntilMs(dev, this.clockMs);
      return {
        deviceId: d.deviceId,
        numSamples: d.numSamples,
        samplesPerSecond: this.speed(dev),
        uplinkBytesPerSecond: dev.uplinkBytesPerSecond,
        downlinkBytesPerSecond: dev.downlinkBytesPerSecond,
        rttMs: dev.rttMs,
        availability: availability(dev, this.trace.horizonS),
        ...(until === null ? {} : { onlineForS: (until - this.clockMs) / 1000 }),
      };
    });
  }

  private speed(dev: DeviceTrace): number {
    return speedFor(dev, this.opts.model, this.opts.relativeCost ?? 1);
  }

  private isBusy(deviceId: string): boolean {
    return (this.busyUntil.get(deviceId) ?? -Infinity) > this.clockMs;
  }

  /**
   * Sends an order at virtual now: its lower-bound arrival is computed from the trace; the inner transport
   * computes the reply at once (or never, when the request is cancelled).
   */
  async send(deviceId: string, frame: Uint8Array): Promise<void> {
    const dev = this.traceOf.get(deviceId);
    if (!dev)
      throw new FlotillaError(
        "E_TRANSPORT_UNKNOWN_DEVICE",
        `unknown device '${deviceId}' (not in the fleet trace)`,
      );
    const head = peekHeader(frame);
    const sentAt = this.clockMs;
    const reached = this.nextOnlineMs(dev, sentAt);
    const downloaded = this.linkDone(
      dev,
      reached,
      dev.rttMs / 1000 + frame.byteLength / dev.downlinkBytesPerSecond,
    );
    const samples = this.infos.get(deviceId)?.numSamples ?? 0;
    const epochs = head?.type === "train" ? Number(head.config?.epochs ?? 1) : 0;
    const trainEnd = downloaded + ((samples * epochs) / this.speed(dev)) * 1000;
    const uploadFrom = this.nextOnlineMs(dev, trainEnd);
    const lowerBound = this.linkDone(dev, uploadFrom, dev.rttMs / 1000);
    const round = Number(head?.round ?? 0);
    this.stats.downlinkBytes += frame.byteLength;
    const limit = this.opts.cancelAfter?.(
      sentAt,
      typeof head?.deadline === "number" ? head.deadline : undefined,
    );
    if (limit !== undefined && lowerBound > limit) {
      this.cancelled.set(round, (this.cancelled.get(round) ?? 0) + 1);
      this.busyUntil.set(deviceId, Math.max(this.busyUntil.get(deviceId) ?? -Infinity, lowerBound));
      return;
    }
    const req: Request = { seq: this.seq++, deviceId, round, sentAt, uploadFrom, lowerBound };
    this.inFlight.push(req);
    this.busyUntil.set(deviceId, Infinity);
    try {
      await this.inner.send(deviceId, frame);
    } catch (e) {
      this.inFlight.splice(this.inFlight.indexOf(req), 1);
      this.settleBusy(deviceId);
      throw e;
    }
  }

  /** A reply of the inner transport: matched to the device's oldest unanswered request. */
  private onReply(frame: Uint8Array): void {
    const head = peekHeader(frame);
    const id = head?.deviceId;
    const req = this.inFlight.find((r) => r.deviceId === id && r.reply === undefined);
    if (!req) {
      // Not an answer to an order of ours (cannot happen with the simulator's fleets): it arrives now.
      this.inFlight.push({
        seq: this.seq++,
        deviceId: String(id ?? ""),
        round: 0,
        sentAt: this.clockMs,
        uploadFrom: this.clockMs,
        lowerBound: this.clockMs,
        reply: frame,
        at: this.clockMs,
      });
    } else {
      const dev = this.traceOf.get(req.deviceId)!;
      req.reply = frame;
      req.at = this.linkDone(
        dev,
        req.uploadFrom,
        dev.rttMs / 1000 + frame.byteLength / dev.uplinkBytesPerSecond,
      );
    }
    this.wake?.();
  }

  private settleBusy(deviceId: string): void {
    // A cancelled request keeps its device busy until its (finite) lower bound; a computed one until handed out.
    if (this.busyUntil.get(deviceId) === Infinity && !this.inFlight.some((r) => r.deviceId === deviceId))
      this.busyUntil.delete(deviceId);
  }

  onMessage(handler: (frame: Uint8Array) => void): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  async close(): Promise<void> {
    this.off();
    this.wake?.();
    await this.inner.close();
  }

  // --- RoundClock -------------------------------------------------------------------------------------------

  now(): number {
    return this.clockMs;
  }

  /** Requests in flight (sent, not yet handed out). */
  get pending(): number {
    return this.inFlight.length;
  }

  async next(until: number, signal?: AbortSignal): Promise<Arrival | null> {
    for (;;) {
      if (signal?.aborted) return null;
      const head = this.earliest();
      const key = head === undefined ? Infinity : (head.at ?? head.lowerBound);
      if (head === undefined || key > until) {
        // Nothing arrives by `until`: the clock moves there (it never moves to Infinity).
        if (Number.isFinite(until)) this.clockMs = Math.max(this.clockMs, until);
        return null;
      }
      if (head.reply === undefined || head.at === undefined) {
        // The earliest event is a lower bound: wait for the real reply to know its exact arrival.
        await new Promise<void>((resolve) => {
          const done = () => {
            signal?.removeEventListener("abort", done);
            this.wake = undefined;
            resolve();
          };
          signal?.addEventListener("abort", done, { once: true });
          this.wake = done;
        });
        continue;
      }
      this.inFlight.splice(this.inFlight.indexOf(head), 1);
      this.clockMs = Math.max(this.clockMs, head.at);
      this.settleBusy(head.deviceId);
      this.stats.uplinkBytes += head.reply.byteLength;
      const h = peekHeader(head.reply);
      this.delivered.set(head.deviceId, {
        round: head.round,
        sentAt: head.sentAt,
        at: head.at,
        ...(typeof h?.metrics?.loss === "number" ? { loss: h.metrics.loss } : {}),
        ...(typeof h?.numSamples === "number" ? { numSamples: h.numSamples } : {}),
      });
      this.handlers.forEach((h) => h(head.reply!));
      return { frame: head.reply, at: head.at };
    }
  }

  /** The in-flight request with the smallest (exact or lower-bound) arrival; ties to the earlier send. */
  private earliest(): Request | undefined {
    let best: Request | undefined;
    let bestKey = Infinity;
    for (const r of this.inFlight) {
      const k = r.at ?? r.lowerBound;
      if (best === undefined || k < bestKey || (k === bestKey && r.seq < best.seq)) {
        best = r;
        bestKey = k;
      }
    }
    return best;
  }
}

/** The frame's JSON header, without decoding its payload (undefined if unreadable). */
function peekHeader(frame: Uint8Array):
  | {
      type?: string;
      deviceId?: string;
      round?: number;
      deadline?: number;
      config?: { epochs?: number };
      metrics?: { loss?: number };
      numSamples?: number;
    }
  | undefined {
  try {
    const n = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(4, true);
    return JSON.parse(Buffer.from(frame.buffer, frame.byteOffset + 8, n).toString("utf8"));
  } catch {
    return undefined;
  }
}
