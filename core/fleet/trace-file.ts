/**
 * The fleet trace file: JSON lines (docs/fleet-traces.md). An optional first line is the header
 * `{"flotillaTrace":1,"horizonS":86400}`; every other non-blank line is one device:
 * `{"deviceId":"d1","samplesPerSecond":180,"uplinkBytesPerSecond":2.5e5,"downlinkBytesPerSecond":1e6,"rttMs":80,
 * "sessions":[[0,3600],[5400,86400]],"maintenance":[[3600,4800]],"modelSpeed":{"cnn":20}}`
 * (modelSpeed and maintenance optional). Without a header the horizon is the latest session or window end.
 * A bad line is one E_TRACE_FILE error naming the line number.
 */
import { fail, isFlotillaError } from "../errors";
import type { DeviceTrace, FleetTrace, Interval } from "./trace";

export const TRACE_FORMAT_VERSION = 1;

const DEVICE_KEYS = new Set([
  "deviceId",
  "samplesPerSecond",
  "modelSpeed",
  "uplinkBytesPerSecond",
  "downlinkBytesPerSecond",
  "rttMs",
  "sessions",
  "maintenance",
]);

/** Serialises a trace: the header line, then one line per device; ends with a newline. */
export function formatTrace(trace: FleetTrace): string {
  const lines = [JSON.stringify({ flotillaTrace: TRACE_FORMAT_VERSION, horizonS: trace.horizonS })];
  for (const d of trace.devices) {
    const o: Record<string, unknown> = {
      deviceId: d.deviceId,
      samplesPerSecond: d.samplesPerSecond,
      uplinkBytesPerSecond: d.uplinkBytesPerSecond,
      downlinkBytesPerSecond: d.downlinkBytesPerSecond,
      rttMs: d.rttMs,
    };
    if (d.modelSpeed) o.modelSpeed = d.modelSpeed;
    o.sessions = d.sessions;
    o.maintenance = d.maintenance;
    lines.push(JSON.stringify(o));
  }
  return lines.join("\n") + "\n";
}

function positive(line: number, key: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0)
    fail("E_TRACE_FILE", `line ${line}: ${key} must be a number > 0, got ${JSON.stringify(v)}`);
  return v;
}

function intervals(line: number, key: string, v: unknown): Interval[] {
  if (!Array.isArray(v))
    fail("E_TRACE_FILE", `line ${line}: ${key} must be an array of [startS, endS] pairs`);
  const out: Interval[] = [];
  for (const [i, p] of v.entries()) {
    const ok =
      Array.isArray(p) &&
      p.length === 2 &&
      p.every((x) => typeof x === "number" && Number.isFinite(x)) &&
      p[0] >= 0 &&
      p[0] < p[1];
    if (!ok)
      fail(
        "E_TRACE_FILE",
        `line ${line}: ${key}[${i}] must be [startS, endS] with 0 ≤ startS < endS, got ${JSON.stringify(p)}`,
      );
    const prev = out[out.length - 1];
    if (prev && p[0] < prev[1])
      fail(
        "E_TRACE_FILE",
        `line ${line}: ${key}[${i}] starts before ${key}[${i - 1}] ends (intervals must be sorted and disjoint)`,
      );
    out.push([p[0], p[1]]);
  }
  return out;
}

function parseDevice(line: number, o: Record<string, unknown>): DeviceTrace {
  for (const k of Object.keys(o))
    if (!DEVICE_KEYS.has(k)) fail("E_TRACE_FILE", `line ${line}: unknown field '${k}'`);
  if (typeof o.deviceId !== "string" || o.deviceId === "")
    fail("E_TRACE_FILE", `line ${line}: deviceId must be a non-empty string`);
  const dev: DeviceTrace = {
    deviceId: o.deviceId,
    samplesPerSecond: positive(line, "samplesPerSecond", o.samplesPerSecond),
    uplinkBytesPerSecond: positive(line, "uplinkBytesPerSecond", o.uplinkBytesPerSecond),
    downlinkBytesPerSecond: positive(line, "downlinkBytesPerSecond", o.downlinkBytesPerSecond),
    rttMs: positive(line, "rttMs", o.rttMs),
    sessions: intervals(line, "sessions", o.sessions),
    maintenance: o.maintenance === undefined ? [] : intervals(line, "maintenance", o.maintenance),
  };
  if (o.modelSpeed !== undefined) {
    const m = o.modelSpeed;
    if (typeof m !== "object" || m === null || Array.isArray(m))
      fail("E_TRACE_FILE", `line ${line}: modelSpeed must be an object {model: samplesPerSecond}`);
    dev.modelSpeed = {};
    for (const [k, v] of Object.entries(m)) dev.modelSpeed[k] = positive(line, `modelSpeed.${k}`, v);
  }
  for (const [a, b] of dev.sessions)
    for (const [ma, mb] of dev.maintenance)
      if (a < mb && ma < b)
        fail("E_TRACE_FILE", `line ${line}: session [${a}, ${b}] overlaps maintenance window [${ma}, ${mb}]`);
  return dev;
}

/** Parses a trace file's text; `name` (the file) prefixes errors. */
export function parseTrace(text: string, name = "trace"): FleetTrace {
  const devices: DeviceTrace[] = [];
  const lineOf = new Map<DeviceTrace, number>();
  const ids = new Set<string>();
  let horizonS: number | undefined;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const raw = lines[i].trim();
    if (raw === "") continue;
    let o: unknown;
    try {
      o = JSON.parse(raw);
    } catch (e) {
      fail("E_TRACE_FILE", `${name}: line ${n}: not JSON (${(e as Error).message.split("\n")[0]})`, {
        cause: e,
      });
    }
    if (typeof o !== "object" || o === null || Array.isArray(o))
      fail("E_TRACE_FILE", `${name}: line ${n}: expected a JSON object`);
    const rec = o as Record<string, unknown>;
    try {
      if ("flotillaTrace" in rec) {
        if (devices.length > 0 || horizonS !== undefined)
          fail("E_TRACE_FILE", `line ${n}: the header must be the first line`);
        if (rec.flotillaTrace !== TRACE_FORMAT_VERSION)
          fail(
            "E_TRACE_FILE",
            `line ${n}: unsupported flotillaTrace version ${JSON.stringify(rec.flotillaTrace)} (this build reads 1)`,
          );
        for (const k of Object.keys(rec))
          if (k !== "flotillaTrace" && k !== "horizonS")
            fail("E_TRACE_FILE", `line ${n}: unknown header field '${k}'`);
        horizonS = positive(n, "horizonS", rec.horizonS);
        continue;
      }
      const dev = parseDevice(n, rec);
      if (ids.has(dev.deviceId)) fail("E_TRACE_FILE", `line ${n}: device '${dev.deviceId}' appears twice`);
      ids.add(dev.deviceId);
      devices.push(dev);
      lineOf.set(dev, n);
    } catch (e) {
      if (isFlotillaError(e) && e.code === "E_TRACE_FILE")
        fail("E_TRACE_FILE", `${name}: ${e.message}`, { cause: e });
      throw e;
    }
  }
  if (devices.length === 0) fail("E_TRACE_FILE", `${name}: no devices`);
  if (horizonS === undefined) {
    horizonS = 0;
    for (const d of devices)
      for (const [, b] of [...d.sessions, ...d.maintenance]) horizonS = Math.max(horizonS, b);
    if (horizonS === 0) fail("E_TRACE_FILE", `${name}: no header and no sessions: the horizon is unknown`);
  }
  for (const d of devices) {
    const last = [...d.sessions, ...d.maintenance].reduce((m, [, b]) => Math.max(m, b), 0);
    if (last > horizonS)
      fail(
        "E_TRACE_FILE",
        `${name}: line ${lineOf.get(d)}: an interval ends at ${last}, after the horizon ${horizonS}`,
      );
  }
  return { horizonS, devices };
}

/**
 * The sessions as CSV for a spreadsheet or a plotting tool: header `deviceId,kind,startS,endS`, one row per
 * interval, kind `online` (a session) or `maintenance`. Write-only: the JSON lines file is the replayable format.
 */
export function formatSessionsCsv(trace: FleetTrace): string {
  const rows = ["deviceId,kind,startS,endS"];
  const id = (s: string) => (/[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  for (const d of trace.devices) {
    const all = [
      ...d.sessions.map((iv) => ["online", iv] as const),
      ...d.maintenance.map((iv) => ["maintenance", iv] as const),
    ].sort((a, b) => a[1][0] - b[1][0]);
    for (const [kind, [a, b]] of all) rows.push(`${id(d.deviceId)},${kind},${a},${b}`);
  }
  return rows.join("\n") + "\n";
}
