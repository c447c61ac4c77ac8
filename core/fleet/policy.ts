/**
 * Device policy: what an operator allows a device to do, set as writable properties of its module twins (IoT Plug
 * and Play, dtdl/ and docs/operations.md) and honoured twice with the same code — by the device (the trainer
 * declines an order its policy forbids, the update-queue defers uploads on a metered link) and by the cloud's
 * selection (a device its policy excludes is never ordered, and the round record counts why).
 *
 * Pure: no Azure, no clock (callers pass `nowMs`). Every property's parser lives here so the module that acks a
 * value and the cloud that reads it judge it alike (`parsePolicyValue`).
 *
 *   trainer        enabled, maxTrainingMinutes, maxThreads, minFreeDiskBytes, minFreeMemoryBytes, trainingWindows
 *   update-queue   meteredLink, meteredMaxUploadBytes
 *
 * Training windows are daily windows in the device's local time, `{ "timeZone": "Europe/Berlin", "windows":
 * ["22:00-06:00"] }` (IANA zone names, resolved with the ECMA-402 Intl API; a window may wrap midnight). A window is
 * evaluated at the zone's UTC offset at `nowMs`, so on a day the clocks change the window moves by the change.
 */
import { FlotillaError, isFlotillaError } from "../errors";
import { availableForS, parseWindows, type DailyWindow } from "../selection/windows";

/** Daily training windows in a time zone (`null` in the twin: no restriction). */
export interface TrainingWindows {
  /** IANA time-zone name ("Europe/Berlin", "UTC"). */
  readonly timeZone: string;
  /** "HH:MM-HH:MM" in that zone's local time; 1 to 48 of them. */
  readonly windows: readonly string[];
}

/** A device's policy as the cloud and the device judge it; absent members are unrestricted. */
export interface DevicePolicy {
  /** Participation: a disabled device is never ordered and declines orders. */
  readonly enabled: boolean;
  /** At most this many minutes of local training per round (0 or absent: no cap). */
  readonly maxTrainingMinutes?: number;
  /** At most this many training threads (0 or absent: the module's own setting). */
  readonly maxThreads?: number;
  /** Accept a round only with at least this much free disk (bytes, in the data directory's file system). */
  readonly minFreeDiskBytes?: number;
  /** Accept a round only with at least this much free memory (bytes). */
  readonly minFreeMemoryBytes?: number;
  readonly trainingWindows?: TrainingWindows | null;
  /** The device's uplink is metered (per-byte priced): uploads larger than `meteredMaxUploadBytes` wait. */
  readonly meteredLink?: boolean;
  /** On a metered link, the largest update sent at once (bytes); larger ones are deferred. */
  readonly meteredMaxUploadBytes?: number;
}

export const DEFAULT_POLICY: DevicePolicy = { enabled: true };

/** Why a policy excludes a device from a round (the round record counts each). */
export const POLICY_EXCLUSIONS = ["disabled", "window", "disk", "memory", "duration", "metered"] as const;
export type PolicyExclusion = (typeof POLICY_EXCLUSIONS)[number];

/** What the policy is judged against: the device's last measurements and the round's needs. */
export interface PolicyFacts {
  /** The profiler's last free disk and memory (bytes); unknown figures never exclude. */
  readonly freeDiskBytes?: number;
  readonly freeMemoryBytes?: number;
  /** The round's expected local training time on this device (seconds), when known. */
  readonly trainingSeconds?: number;
  /** The bytes of the update the device would upload this round, when known. */
  readonly uploadBytes?: number;
}

export interface PolicyVerdict {
  readonly reason: PolicyExclusion;
  /** One line for logs, the trainer's reported `participation` and the round record. */
  readonly detail: string;
}

/** The names of the policy's writable properties, in the module that owns each. */
export const POLICY_PROPERTIES = {
  trainer: [
    "enabled",
    "maxTrainingMinutes",
    "maxThreads",
    "minFreeDiskBytes",
    "minFreeMemoryBytes",
    "trainingWindows",
  ],
  "update-queue": ["meteredLink", "meteredMaxUploadBytes"],
} as const;
export type PolicyProperty = Exclude<keyof DevicePolicy, never>;

const MAX_BYTES = Number.MAX_SAFE_INTEGER;

function invalid(message: string): never {
  throw new FlotillaError("E_PROPERTY_INVALID", message);
}

/** A finite number in [min, max] (integers only when `integer`), or E_PROPERTY_INVALID naming the range. */
export function numberIn(name: string, v: unknown, min: number, max: number, integer: boolean): number {
  if (typeof v !== "number" || !Number.isFinite(v))
    invalid(`${name} must be ${integer ? "an integer" : "a number"} from ${min} to ${max}, not ${show(v)}`);
  if (integer && !Number.isInteger(v)) invalid(`${name} must be an integer, not ${v}`);
  if (v < min || v > max) invalid(`${name} ${v} is out of range (${min} to ${max})`);
  return v;
}

/** A value for a one-line message (bounded: an operator's value may be large). */
export function show(v: unknown): string {
  let s: string;
  try {
    s = v === undefined ? "undefined" : JSON.stringify(v);
  } catch {
    // Nesting too deep for the stack (String() of a deep array recurses as well), or a value JSON cannot write.
    s = Array.isArray(v)
      ? "[an array nested too deep]"
      : typeof v === "object"
        ? "{an object nested too deep}"
        : String(v);
  }
  // eslint-disable-next-line no-control-regex -- control characters would break the one-line message
  s = s.replace(/[\u0000-\u001f\u007f]/g, " ");
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Is `tz` an IANA time zone this runtime knows? */
export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** Parses a `trainingWindows` value (null: no restriction); E_PROPERTY_INVALID with the reason otherwise. */
export function parseTrainingWindows(v: unknown): TrainingWindows | null {
  if (v === null) return null;
  if (typeof v !== "object" || Array.isArray(v))
    invalid(`trainingWindows must be {"timeZone": "...", "windows": ["HH:MM-HH:MM", ...]}, not ${show(v)}`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (k !== "timeZone" && k !== "windows" && !k.startsWith("$"))
      invalid(`trainingWindows has an unknown member '${k}' (known: timeZone, windows)`);
  const tz = o.timeZone;
  if (typeof tz !== "string" || tz.length === 0 || tz.length > 64 || !isTimeZone(tz))
    invalid(`trainingWindows.timeZone ${show(tz)} is not an IANA time zone (e.g. "Europe/Berlin", "UTC")`);
  const windows = o.windows;
  try {
    parseWindows(windows);
  } catch (e) {
    if (!isFlotillaError(e)) throw e;
    invalid(`trainingWindows.windows: ${e.message.replace(/ ?\(?UTC\)?/g, "")}`);
  }
  return { timeZone: tz, windows: (typeof windows === "string" ? [windows] : (windows as string[])).slice() };
}

/** The zone's offset from UTC at `nowMs`, in ms (local = UTC + offset). */
export function zoneOffsetMs(timeZone: string, nowMs: number): number {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone,
    hourCycle: "h23",
    year: "numeric",
    month: "numeric",
    day: "numeric",
    hour: "numeric",
    minute: "numeric",
    second: "numeric",
  }).formatToParts(new Date(nowMs));
  const get = (t: string): number => Number(parts.find((p) => p.type === t)?.value ?? 0);
  const local = Date.UTC(
    get("year"),
    get("month") - 1,
    get("day"),
    get("hour"),
    get("minute"),
    get("second"),
  );
  return local - Math.floor(nowMs / 1000) * 1000;
}

/** Seconds from `nowMs` until the device's training window ends; 0 outside every window; Infinity: no windows. */
export function trainingWindowOpenForS(w: TrainingWindows | null | undefined, nowMs: number): number {
  if (!w) return Infinity;
  const daily: DailyWindow[] = parseWindows(w.windows);
  return availableForS(daily, nowMs + zoneOffsetMs(w.timeZone, nowMs));
}

/**
 * Parses one policy property's desired value (the same judgement on the device, which acks it, and in the cloud,
 * which may read a value the device has not acked yet). `null` is "back to the default". E_PROPERTY_INVALID with the
 * one-line reason for a bad value; E_PROPERTY_UNKNOWN for a name that is not a policy property.
 */
export function parsePolicyValue<K extends PolicyProperty>(name: K, v: unknown): DevicePolicy[K] {
  const out = (x: unknown): DevicePolicy[K] => x as DevicePolicy[K];
  switch (name) {
    case "enabled":
    case "meteredLink":
      if (v === null) return out(name === "enabled");
      if (typeof v !== "boolean") invalid(`${name} must be true or false, not ${show(v)}`);
      return out(v);
    case "maxTrainingMinutes":
      return out(v === null ? 0 : numberIn(name, v, 0, 1440, false));
    case "maxThreads":
      return out(v === null ? 0 : numberIn(name, v, 0, 64, true));
    case "minFreeDiskBytes":
    case "minFreeMemoryBytes":
    case "meteredMaxUploadBytes":
      return out(v === null ? 0 : numberIn(name, v, 0, MAX_BYTES, true));
    case "trainingWindows":
      return out(parseTrainingWindows(v));
    default:
      throw new FlotillaError("E_PROPERTY_UNKNOWN", `'${String(name)}' is not a device policy property`);
  }
}

function mb(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)} MiB`;
}

/**
 * Does `policy` exclude the device from a round now? The first reason in POLICY_EXCLUSIONS order, or undefined.
 * Figures that are unknown never exclude (a device that has not been profiled yet is judged by what is known).
 */
export function policyExclusion(
  policy: DevicePolicy,
  facts: PolicyFacts,
  nowMs: number,
): PolicyVerdict | undefined {
  if (!policy.enabled) return { reason: "disabled", detail: "participation is disabled by the operator" };
  const w = policy.trainingWindows;
  if (w && trainingWindowOpenForS(w, nowMs) <= 0)
    return {
      reason: "window",
      detail: `outside its training windows (${w.windows.join(", ")} ${w.timeZone})`,
    };
  const minDisk = policy.minFreeDiskBytes ?? 0;
  if (minDisk > 0 && facts.freeDiskBytes !== undefined && facts.freeDiskBytes < minDisk)
    return {
      reason: "disk",
      detail: `free disk ${mb(facts.freeDiskBytes)} is below its floor of ${mb(minDisk)}`,
    };
  const minMem = policy.minFreeMemoryBytes ?? 0;
  if (minMem > 0 && facts.freeMemoryBytes !== undefined && facts.freeMemoryBytes < minMem)
    return {
      reason: "memory",
      detail: `free memory ${mb(facts.freeMemoryBytes)} is below its floor of ${mb(minMem)}`,
    };
  const maxMin = policy.maxTrainingMinutes ?? 0;
  if (maxMin > 0 && facts.trainingSeconds !== undefined && facts.trainingSeconds > maxMin * 60)
    return {
      reason: "duration",
      detail: `the round needs about ${(facts.trainingSeconds / 60).toFixed(1)} min of training, over its cap of ${maxMin} min`,
    };
  const maxUp = policy.meteredMaxUploadBytes ?? 0;
  if (policy.meteredLink && maxUp > 0 && facts.uploadBytes !== undefined && facts.uploadBytes > maxUp)
    return {
      reason: "metered",
      detail: `its metered link defers uploads over ${maxUp} bytes; this round's update is ${facts.uploadBytes} bytes`,
    };
  return undefined;
}

/** Counts of devices excluded by each policy reason (the round record's `policyExcluded`). */
export type PolicyExclusionCounts = Partial<Record<PolicyExclusion, number>>;

/** The error a device declines an order with when its policy excludes it (E_POLICY_EXCLUDED, the verdict's line). */
export function policyError(v: PolicyVerdict): FlotillaError {
  return new FlotillaError("E_POLICY_EXCLUDED", `${v.reason}: ${v.detail}`);
}
