/**
 * Device traces: what each device of a fleet can do (compute speed, link bandwidth and latency) and when it is
 * online, over a horizon of `horizonS` seconds from t = 0. Pure data and helpers (no Azure, no tfjs); the JSON
 * lines file format is in core/fleet/trace-file.ts, the seeded generator in core/fleet/synthetic.ts, and
 * docs/fleet-traces.md describes both.
 *
 * Compute speed is `samplesPerSecond` of local training for the reference model (the `mlp` model kind). Other
 * models: `modelSpeed[kind]` when the trace measured that model (e.g. the profiler's reported history), else the
 * reference speed divided by the model's cost relative to the reference (FLOPs per sample of the model / FLOPs per
 * sample of the reference), the usual first-order scaling of training throughput (speedFor below).
 *
 * `sessions` are the device's online intervals [startS, endS), sorted, non-overlapping, inside [0, horizonS].
 * `maintenance` windows are planned offline intervals (updates, reboots), kept apart so a scheduler can tell
 * them from random disconnects; they are already excluded from `sessions` (no session overlaps one).
 */

/** An interval [startS, endS) of seconds from the start of the trace. */
export type Interval = [startS: number, endS: number];

export interface DeviceTrace {
  deviceId: string;
  /** Local training samples per second for the reference model (`mlp`). */
  samplesPerSecond: number;
  /** Measured samples per second of other model kinds (overrides the FLOP scaling of speedFor). */
  modelSpeed?: Record<string, number>;
  uplinkBytesPerSecond: number;
  downlinkBytesPerSecond: number;
  /** Round-trip time to the hub, milliseconds. */
  rttMs: number;
  /** Online intervals: sorted, non-overlapping, inside [0, horizonS], none overlapping a maintenance window. */
  sessions: Interval[];
  /** Planned offline windows (sorted, non-overlapping, inside [0, horizonS]). */
  maintenance: Interval[];
}

export interface FleetTrace {
  /** Length of the trace in seconds; availability beyond it is unknown (treated as offline). */
  horizonS: number;
  devices: DeviceTrace[];
}

/** The model kind whose speed `samplesPerSecond` gives. */
export const REFERENCE_MODEL = "mlp";

/**
 * Samples per second of `model` on `dev`: the measured `modelSpeed[model]` if present, else the reference speed
 * scaled by `relativeCost` (the model's FLOPs per sample over the reference model's; 1 for the reference).
 */
export function speedFor(dev: DeviceTrace, model: string = REFERENCE_MODEL, relativeCost = 1): number {
  const measured = dev.modelSpeed?.[model];
  if (measured !== undefined) return measured;
  return model === REFERENCE_MODEL ? dev.samplesPerSecond : dev.samplesPerSecond / relativeCost;
}

/** Index of the last interval starting at or before t, or -1 (binary search). */
function lastStartingBy(intervals: readonly Interval[], t: number): number {
  let lo = 0;
  let hi = intervals.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (intervals[mid][0] <= t) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/** Whether the device is online at time t (inside one of its sessions). */
export function isOnline(dev: DeviceTrace, t: number): boolean {
  const i = lastStartingBy(dev.sessions, t);
  return i >= 0 && t < dev.sessions[i][1];
}

/** The earliest time ≥ t at which the device is online: t itself when online, else the next session's start; null if none. */
export function nextOnline(dev: DeviceTrace, t: number): number | null {
  const i = lastStartingBy(dev.sessions, t);
  if (i >= 0 && t < dev.sessions[i][1]) return t;
  const next = dev.sessions[i + 1];
  return next === undefined ? null : next[0];
}

/** When the device's current session ends (it is online over [t, onlineUntil)); null when offline at t. */
export function onlineUntil(dev: DeviceTrace, t: number): number | null {
  const i = lastStartingBy(dev.sessions, t);
  return i >= 0 && t < dev.sessions[i][1] ? dev.sessions[i][1] : null;
}

function covered(intervals: readonly Interval[]): number {
  return intervals.reduce((s, [a, b]) => s + (b - a), 0);
}

/** Fraction of the horizon the device is online. */
export function availability(dev: DeviceTrace, horizonS: number): number {
  return horizonS > 0 ? covered(dev.sessions) / horizonS : 0;
}

/** Whether the device goes offline outside its maintenance windows (an intermittently connected device). */
export function isIntermittent(dev: DeviceTrace, horizonS: number): boolean {
  return covered(dev.sessions) + covered(dev.maintenance) < horizonS * (1 - 1e-9);
}

/** The q-quantile (0..1) of `values` by linear interpolation between order statistics. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

export interface Spread {
  p10: number;
  p50: number;
  p90: number;
}

export interface TraceSummary {
  devices: number;
  horizonS: number;
  samplesPerSecond: Spread;
  uplinkBytesPerSecond: Spread;
  downlinkBytesPerSecond: Spread;
  rttMs: Spread;
  meanAvailability: number;
  intermittentShare: number;
}

/** p10/p50/p90 of speed, bandwidth and latency, the mean availability and the intermittent share. */
export function summarize(trace: FleetTrace): TraceSummary {
  const spread = (f: (d: DeviceTrace) => number): Spread => {
    const v = trace.devices.map(f);
    return { p10: quantile(v, 0.1), p50: quantile(v, 0.5), p90: quantile(v, 0.9) };
  };
  const n = trace.devices.length;
  const mean = (f: (d: DeviceTrace) => number) => (n ? trace.devices.reduce((s, d) => s + f(d), 0) / n : 0);
  return {
    devices: n,
    horizonS: trace.horizonS,
    samplesPerSecond: spread((d) => d.samplesPerSecond),
    uplinkBytesPerSecond: spread((d) => d.uplinkBytesPerSecond),
    downlinkBytesPerSecond: spread((d) => d.downlinkBytesPerSecond),
    rttMs: spread((d) => d.rttMs),
    meanAvailability: mean((d) => availability(d, trace.horizonS)),
    intermittentShare: mean((d) => (isIntermittent(d, trace.horizonS) ? 1 : 0)),
  };
}

/** `intervals` minus `holes` (both sorted and non-overlapping); empty pieces are dropped. */
export function subtractIntervals(intervals: readonly Interval[], holes: readonly Interval[]): Interval[] {
  const out: Interval[] = [];
  let h = 0;
  for (const [a0, b] of intervals) {
    let a = a0;
    while (h < holes.length && holes[h][1] <= a) h++;
    for (let k = h; k < holes.length && holes[k][0] < b; k++) {
      const [ha, hb] = holes[k];
      if (ha > a) out.push([a, ha]);
      a = Math.max(a, hb);
      if (a >= b) break;
    }
    if (a < b) out.push([a, b]);
  }
  return out;
}
