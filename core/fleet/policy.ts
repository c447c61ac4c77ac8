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
import { availableForS, parseWindows, type DailyWindow, type WindowsLabel } from "../selection/windows";

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
    // JSON has no NaN, Infinity or bigint: those read as themselves, not as "null" (or a TypeError).
    s = typeof v === "number" && !Number.isFinite(v) ? String(v) : (JSON.stringify(v) ?? String(v));
  } catch {
    // Nesting too deep for the stack (String() of a deep array recurses as well), or a value JSON cannot write.
    s = Array.isArray(v)
      ? "[an array nested too deep]"
      : typeof v === "object"
        ? "{an object nested too deep}"
        : String(v);
  }
  // eslint-disable-next-line no-control-regex -- control characters (and JS line separators) break the one line
  s = s.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, " ");
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

/** How parseWindows names a trainer's windows: in the device's local time, E_PROPERTY_INVALID. */
function windowsLabel(timeZone: string): WindowsLabel {
  return { name: "trainingWindows.windows", clock: `${timeZone} local time`, code: "E_PROPERTY_INVALID" };
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
  parseWindows(windows, windowsLabel(tz));
  return { timeZone: tz, windows: (typeof windows === "string" ? [windows] : (windows as string[])).slice() };
}

/**
 * The zone's offset from UTC at `nowMs`, in ms (local = UTC + offset). A zone this runtime does not know is
 * E_PROPERTY_INVALID (a zone the device knew may be unknown to an older runtime elsewhere), never a RangeError.
 */
export function zoneOffsetMs(timeZone: string, nowMs: number): number {
  if (!isTimeZone(timeZone))
    invalid(`trainingWindows.timeZone ${show(timeZone)} is not an IANA time zone this runtime knows`);
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

/**
 * Seconds from `nowMs` until the device's training window ends; 0 outside every window; Infinity: no windows.
 * Whether a window is open is judged at the zone's offset now; its end is a local time, converted back at the
 * zone's offset then, so on a day the clocks change the seconds left are real seconds (a 00:00-06:00 window
 * entered at 00:30 on the spring change day has 4.5 h left, not 5.5).
 */
export function trainingWindowOpenForS(w: TrainingWindows | null | undefined, nowMs: number): number {
  if (!w) return Infinity;
  const daily: DailyWindow[] = parseWindows(w.windows, windowsLabel(w.timeZone));
  const offset = zoneOffsetMs(w.timeZone, nowMs);
  const local = nowMs + offset;
  const leftLocalS = availableForS(daily, local);
  if (leftLocalS <= 0) return 0;
  const endLocal = local + leftLocalS * 1000;
  // The UTC instant of that local time: the offset at a first guess, then at the instant it gives.
  let end = endLocal - zoneOffsetMs(w.timeZone, endLocal - offset);
  end = endLocal - zoneOffsetMs(w.timeZone, end);
  return Math.max(0, (end - nowMs) / 1000);
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

/** "free X is below its floor of Y" in MiB, or in bytes when the two would read the same in MiB. */
function belowFloor(what: string, free: number, floor: number): string {
  const [a, b] = mb(free) === mb(floor) ? [`${free} bytes`, `${floor} bytes`] : [mb(free), mb(floor)];
  return `free ${what} ${a} is below its floor of ${b}`;
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
      detail: belowFloor("disk", facts.freeDiskBytes, minDisk),
    };
  const minMem = policy.minFreeMemoryBytes ?? 0;
  if (minMem > 0 && facts.freeMemoryBytes !== undefined && facts.freeMemoryBytes < minMem)
    return {
      reason: "memory",
      detail: belowFloor("memory", facts.freeMemoryBytes, minMem),
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

/** A module that owns policy properties (POLICY_PROPERTIES). */
export type PolicyModule = keyof typeof POLICY_PROPERTIES;

/** The policy the cloud honours for a device, and how it was read. */
export interface EffectivePolicy {
  readonly policy: DevicePolicy;
  /** Properties whose desired value is in effect although the module has not acknowledged it yet. */
  readonly pending: readonly PolicyProperty[];
  /** Desired values that do not parse (the module refuses them too): they never take effect. */
  readonly refused: readonly { readonly name: PolicyProperty; readonly reason: string }[];
}

function desiredVersionOf(d: Readonly<Record<string, unknown>> | undefined): number {
  const v = d?.["$version"];
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

/**
 * The desired version `name` last changed at: `$metadata.<name>.$lastUpdatedVersion` when the twin carries it (IoT
 * Hub's service view does), else the document's `$version`. The Function rewrites other desired keys every round
 * (the trainer's round orders), so the document's version alone would make every ack look out of date.
 */
function changedAtVersion(d: Readonly<Record<string, unknown>> | undefined, name: string): number {
  const meta = d?.["$metadata"];
  if (typeof meta === "object" && meta !== null) {
    const m = (meta as Record<string, unknown>)[name];
    const v =
      typeof m === "object" && m !== null ? (m as Record<string, unknown>).$lastUpdatedVersion : undefined;
    if (typeof v === "number" && Number.isFinite(v)) return v;
  }
  return desiredVersionOf(d);
}

/**
 * A reported `{value, ac, av}` acknowledgement (IoT Plug and Play), or undefined when it is not one. A missing
 * `value` is null: reported patches are merge patches, so the hub drops a null value in effect.
 */
function ackOf(v: unknown): { value: unknown; ac: number; av: number } | undefined {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  if (typeof o.ac !== "number" || typeof o.av !== "number") return undefined;
  return { value: "value" in o ? o.value : null, ac: o.ac, av: o.av };
}

/**
 * The policy in effect for a device as the cloud judges it from its module twins (`desired` and `reported` per
 * module that owns policy properties, POLICY_PROPERTIES). Per property:
 *
 *   1. the desired value, when it parses (parsePolicyValue) and the module has not acknowledged this or a later
 *      desired version (no ack, or the ack's `av` < the version it last changed at, changedAtVersion): an
 *      operator's change takes effect in selection at once, before the device acks it (`pending`);
 *   2. else the module's acknowledged value (`value` of its `{value, ac, av}` ack, whatever `ac`: 200 and 202 carry
 *      the value applied or about to be, 400 and 500 the last good value kept), when it parses;
 *   3. else the default (also when the desired property is absent: the module goes back to its default then).
 *
 * A desired value that does not parse never takes effect (`refused`), exactly as the module refuses it with 400.
 * Pure: the Function's fleet reads (cloud/aggregator/src/fleet/fleet.ts) and `flotilla fleet` share it.
 */
export function effectivePolicy(
  desired: Partial<Record<PolicyModule, Readonly<Record<string, unknown>> | undefined>>,
  reported: Partial<Record<PolicyModule, Readonly<Record<string, unknown>> | undefined>>,
): EffectivePolicy {
  const out: Record<string, unknown> = { ...DEFAULT_POLICY };
  const pending: PolicyProperty[] = [];
  const refused: { name: PolicyProperty; reason: string }[] = [];
  for (const m of Object.keys(POLICY_PROPERTIES) as PolicyModule[]) {
    const d = desired[m];
    const r = reported[m];
    for (const name of POLICY_PROPERTIES[m] as readonly PolicyProperty[]) {
      const version = changedAtVersion(d, name);
      const want = d?.[name];
      if (want === undefined || want === null) continue; // absent: the default
      const ack = ackOf(r?.[name]);
      let valid = false;
      let value: unknown;
      try {
        value = parsePolicyValue(name, want);
        valid = true;
      } catch (e) {
        if (!isFlotillaError(e)) throw e;
        refused.push({ name, reason: e.message });
      }
      if (valid && (!ack || ack.av < version)) {
        out[name] = value;
        pending.push(name);
        continue;
      }
      if (!ack) continue;
      try {
        out[name] = parsePolicyValue(name, ack.value);
      } catch (e) {
        if (!isFlotillaError(e)) throw e;
      }
    }
  }
  return { policy: out as unknown as DevicePolicy, pending, refused };
}
