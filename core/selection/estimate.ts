/**
 * A device's estimated round time from what is known of it (FedCS's estimate, Nishio & Yonetani, ICC 2019,
 * "Client Selection for Federated Learning with Heterogeneous Resources in Mobile Edge", §IV: update-and-upload
 * time from the clients' reported resource information):
 *
 *   t_i = rtt + downloadBytes / downlink + numSamples · epochs / samplesPerSecond + uploadBytes / uplink
 *
 * A field the device did not report takes the conservative default in ESTIMATE_DEFAULTS (a slow device: it is
 * never preferred over one that reported better figures for lack of information).
 */
import type { DeviceHistory, DeviceProfile, SelectionContext } from "./types";

/** What an unknown profile field is taken to be (documented in docs/selection.md). */
export const ESTIMATE_DEFAULTS = {
  /** Local training samples of a device that did not report them. */
  numSamples: 1000,
  /** Training throughput (samples/s) of a device the profiler has not benchmarked for the job's model. */
  samplesPerSecond: 10,
  /** Uplink of a device without a measurement: 1 Mbit/s. */
  uplinkBytesPerSecond: 125_000,
  /** Downlink without a measurement: the device's uplink if known (links are rarely faster up than down), else 1 Mbit/s. */
  downlinkBytesPerSecond: 125_000,
  /** Round trip to the hub without a measurement. */
  rttMs: 500,
} as const;

const positive = (x: number | undefined): x is number => x !== undefined && Number.isFinite(x) && x > 0;

/** FedCS's t_i of `p` for a round of `ctx` (seconds). */
export function estimateRoundS(p: DeviceProfile, ctx: SelectionContext): number {
  const d = ESTIMATE_DEFAULTS;
  const n = positive(p.numSamples) ? p.numSamples : d.numSamples;
  const sps = positive(p.samplesPerSecond) ? p.samplesPerSecond : d.samplesPerSecond;
  const up = positive(p.uplinkBytesPerSecond) ? p.uplinkBytesPerSecond : d.uplinkBytesPerSecond;
  const down = positive(p.downlinkBytesPerSecond)
    ? p.downlinkBytesPerSecond
    : positive(p.uplinkBytesPerSecond)
      ? p.uplinkBytesPerSecond
      : d.downlinkBytesPerSecond;
  const rtt = p.rttMs !== undefined && Number.isFinite(p.rttMs) && p.rttMs >= 0 ? p.rttMs : d.rttMs;
  return rtt / 1000 + ctx.downloadBytes / down + (n * ctx.epochs) / sps + ctx.uploadBytes / up;
}

/**
 * The round time Oort uses for a device (Lai et al., OSDI 2021, §4.2: t_i is the duration of its last
 * participation): the measured duration of its last completed round when there is one, else FedCS's estimate.
 */
export function observedRoundS(
  p: DeviceProfile,
  h: DeviceHistory | undefined,
  ctx: SelectionContext,
): number {
  const m = h?.lastDurationS;
  return m !== undefined && Number.isFinite(m) && m > 0 ? m : estimateRoundS(p, ctx);
}

/**
 * Hard constraints every informed selector applies: enough memory for the job (when both are known), and online
 * long enough to finish (when the device's remaining online time is known).
 */
export function feasible(p: DeviceProfile, tS: number, ctx: SelectionContext): boolean {
  if (ctx.minMemoryBytes !== undefined && p.memoryBytes !== undefined && p.memoryBytes < ctx.minMemoryBytes)
    return false;
  if (p.onlineForS !== undefined && tS > p.onlineForS) return false;
  return true;
}
