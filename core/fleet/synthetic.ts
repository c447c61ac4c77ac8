/**
 * The seeded synthetic fleet: `synthetic` (the defaults below) or `synthetic:KEY=VALUE,...`.
 *
 * Spread: compute speed and link bandwidth are lognormal with p90/p10 ≈ 10×, about the span of FedScale's
 * device-capacity trace (Lai et al., "FedScale: Benchmarking Model and System Performance of Federated Learning at
 * Scale", ICML 2022: compute and network throughput of real phones, each spanning about an order of magnitude).
 * A lognormal with median m and log-std σ has p90/p10 = exp(2 · 1.2816 · σ) (1.2816 = Φ⁻¹(0.9)), so
 * σ = ln(ratio) / 2.5631. Normals come from the project's seeded Rng (mulberry32 + Box–Muller, core/data/rng.ts).
 *
 * Availability: a share `intermittent` (default 30%) of devices alternate online sessions (exponential, mean
 * `session` minutes: tens of minutes) and offline gaps whose mean follows a day/night cycle in the device's local
 * time, longest at 04:00 (gap mean × (1 + diurnal·cos(2π(h − 4)/24))); the others are online all the time. Every
 * device has `maintenance` windows per day of `maintenanceMin` minutes, at the same times every day: the first at a
 * random time of its local night (00:00 to 06:00, nightly updates), the others evenly spaced over the day; it is
 * offline during them.
 */
import { Rng } from "../data/rng";
import { fail } from "../errors";
import { subtractIntervals, type DeviceTrace, type FleetTrace, type Interval } from "./trace";

export interface SyntheticSpec {
  /** Trace horizon, hours. */
  hours: number;
  /** Median samples/s of the reference model, and the p90/p10 ratio. */
  speed: number;
  speedSpread: number;
  /** Median uplink bytes/s, and the p90/p10 ratio. */
  up: number;
  upSpread: number;
  /** Median downlink bytes/s, and the p90/p10 ratio. */
  down: number;
  downSpread: number;
  /** Median round-trip time (ms), and the p90/p10 ratio. */
  rtt: number;
  rttSpread: number;
  /** Share of intermittently connected devices, in [0, 1]. */
  intermittent: number;
  /** Mean online session of an intermittent device, minutes. */
  session: number;
  /** Mean offline gap of an intermittent device, minutes (before the diurnal modulation). */
  gap: number;
  /** Day/night amplitude of the gap mean, in [0, 1). */
  diurnal: number;
  /** Spread of the devices' local-time offsets, hours (0: one time zone; 24: all around the world). */
  tz: number;
  /** Maintenance windows per day, and their length in minutes. */
  maintenance: number;
  maintenanceMin: number;
}

export const SYNTHETIC_DEFAULTS: Readonly<SyntheticSpec> = {
  hours: 24,
  speed: 200,
  speedSpread: 10,
  up: 250_000,
  upSpread: 10,
  down: 1_000_000,
  downSpread: 10,
  rtt: 80,
  rttSpread: 4,
  intermittent: 0.3,
  session: 30,
  gap: 30,
  diurnal: 0.5,
  tz: 3,
  maintenance: 1,
  maintenanceMin: 20,
};

/** Each key's allowed range [min, max] (inclusive unless noted in `check`). */
const RANGES: Record<keyof SyntheticSpec, [number, number]> = {
  hours: [0.001, 24 * 366],
  speed: [1e-6, 1e12],
  speedSpread: [1, 1e6],
  up: [1e-6, 1e15],
  upSpread: [1, 1e6],
  down: [1e-6, 1e15],
  downSpread: [1, 1e6],
  rtt: [1e-6, 1e7],
  rttSpread: [1, 1e6],
  intermittent: [0, 1],
  session: [0.01, 1e6],
  gap: [0.01, 1e6],
  diurnal: [0, 0.99],
  tz: [0, 24],
  maintenance: [0, 24],
  maintenanceMin: [0, 60],
};

/** Parses `synthetic` or `synthetic:KEY=VALUE,...`; anything else is one E_TRACE_SPEC line. */
export function parseSyntheticSpec(text: string): SyntheticSpec {
  const spec: SyntheticSpec = { ...SYNTHETIC_DEFAULTS };
  if (text === "synthetic") return spec;
  if (!text.startsWith("synthetic:"))
    fail("E_TRACE_SPEC", `'${text}' is not synthetic or synthetic:KEY=VALUE,...`);
  const keys = Object.keys(RANGES) as (keyof SyntheticSpec)[];
  const seen = new Set<string>();
  for (const part of text.slice("synthetic:".length).split(",")) {
    const eq = part.indexOf("=");
    const key = (eq < 0 ? part : part.slice(0, eq)).trim();
    const raw = eq < 0 ? "" : part.slice(eq + 1).trim();
    if (!(keys as string[]).includes(key))
      fail("E_TRACE_SPEC", `unknown synthetic key '${key}' (expected one of ${keys.join(", ")})`);
    if (seen.has(key)) fail("E_TRACE_SPEC", `synthetic key '${key}' given twice`);
    seen.add(key);
    const v = Number(raw);
    const [min, max] = RANGES[key as keyof SyntheticSpec];
    if (raw === "" || !Number.isFinite(v) || v < min || v > max)
      fail("E_TRACE_SPEC", `synthetic ${key} must be a number in [${min}, ${max}], got '${raw}'`);
    spec[key as keyof SyntheticSpec] = v;
  }
  if (!Number.isInteger(spec.maintenance))
    fail(
      "E_TRACE_SPEC",
      `synthetic maintenance (windows per day) must be an integer, got ${spec.maintenance}`,
    );
  return spec;
}

/** σ of a lognormal whose p90/p10 is `ratio`: p90/p10 = exp(2 · Φ⁻¹(0.9) · σ). */
export function sigmaForSpread(ratio: number): number {
  return Math.log(ratio) / (2 * 1.2815515655446004);
}

const lognormal = (rng: Rng, median: number, ratio: number) =>
  median * Math.exp(sigmaForSpread(ratio) * rng.normal());

const HOUR = 3600;
const DAY = 24 * HOUR;

/** Online sessions of an intermittent device: alternating exponential sessions and diurnally modulated gaps. */
function intermittentSessions(rng: Rng, s: SyntheticSpec, horizonS: number, tzOffsetS: number): Interval[] {
  const exp = (mean: number) => -mean * Math.log(1 - rng.next());
  const sessions: Interval[] = [];
  // Start at a random phase: online with probability session / (session + gap), then a partial first period.
  let t = 0;
  let online = rng.next() < s.session / (s.session + s.gap);
  while (t < horizonS) {
    if (online) {
      const end = Math.min(horizonS, t + exp(s.session * 60));
      if (end > t) sessions.push([t, end]);
      t = end;
    } else {
      const localHour = ((((t + tzOffsetS) % DAY) + DAY) % DAY) / HOUR;
      const mean = s.gap * 60 * (1 + s.diurnal * Math.cos((2 * Math.PI * (localHour - 4)) / 24));
      t += exp(mean);
    }
    online = !online;
  }
  return sessions;
}

/** Daily maintenance windows inside [0, horizonS]: the first in the device's local night, the others evenly spaced. */
function maintenanceWindows(rng: Rng, s: SyntheticSpec, horizonS: number, tzOffsetS: number): Interval[] {
  const len = s.maintenanceMin * 60;
  const count = s.maintenance;
  if (count === 0 || len === 0) return [];
  // `count` start times of day, spaced evenly from a random night-time start (they cannot overlap: count·len ≤ 1 day).
  const first = rng.next() * 6 * HOUR;
  const starts = Array.from({ length: count }, (_, k) => first + (k * DAY) / count);
  const out: Interval[] = [];
  for (let day = -1; day * DAY < horizonS + DAY; day++) {
    for (const st of starts) {
      const a = day * DAY + st - tzOffsetS;
      const lo = Math.max(0, a);
      const hi = Math.min(horizonS, a + len);
      if (hi > lo) out.push([lo, hi]);
    }
  }
  out.sort((x, y) => x[0] - y[0]);
  // Merge any touching windows (a window wrapping past midnight next to the next day's).
  const merged: Interval[] = [];
  for (const w of out) {
    const last = merged[merged.length - 1];
    if (last && w[0] <= last[1]) last[1] = Math.max(last[1], w[1]);
    else merged.push([w[0], w[1]]);
  }
  return merged;
}

/** A seeded synthetic fleet trace of `devices` devices (device ids `dev-0`, `dev-1`, ...). */
export function generateSynthetic(spec: SyntheticSpec, devices: number, seed: number): FleetTrace {
  const horizonS = spec.hours * HOUR;
  const rng = new Rng(seed);
  const out: DeviceTrace[] = [];
  for (let i = 0; i < devices; i++) {
    // One generator per device, seeded from the fleet's: a device's trace does not depend on how many follow it.
    const d = new Rng((rng.nextU32() ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0);
    const tzOffsetS = (d.next() - 0.5) * spec.tz * HOUR;
    const intermittent = d.next() < spec.intermittent;
    const maintenance = maintenanceWindows(d, spec, horizonS, tzOffsetS);
    const online: Interval[] = intermittent
      ? intermittentSessions(d, spec, horizonS, tzOffsetS)
      : [[0, horizonS]];
    out.push({
      deviceId: `dev-${i}`,
      samplesPerSecond: lognormal(d, spec.speed, spec.speedSpread),
      uplinkBytesPerSecond: lognormal(d, spec.up, spec.upSpread),
      downlinkBytesPerSecond: lognormal(d, spec.down, spec.downSpread),
      rttMs: lognormal(d, spec.rtt, spec.rttSpread),
      sessions: subtractIntervals(online, maintenance),
      maintenance,
    });
  }
  return { horizonS, devices: out };
}
