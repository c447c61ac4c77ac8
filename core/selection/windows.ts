/**
 * Declared availability windows: an operator (or the device's own provisioning) says when a device may train, as
 * daily UTC windows in the device twin's tags, `tags.flotilla.availability = ["22:00-06:00", "12:00-13:30"]`
 * (a window may wrap midnight; "00:00-24:00" is all day). Selection reads them as `DeviceProfile.onlineForS`:
 * inside a window, the seconds until it ends (adjacent windows join); outside every window the device is not
 * available now and is not a candidate.
 */
import { fail } from "../errors";

/** One daily window, minutes since 00:00 UTC: [start, end) with end > start (a wrapping window is split). */
export interface DailyWindow {
  readonly startMin: number;
  readonly endMin: number;
}

const DAY_MIN = 24 * 60;
const TIME = /^([01]\d|2[0-4]):([0-5]\d)$/;

/** How parseWindows names what it parses in its messages (defaults: the availability tag, UTC). */
export interface WindowsLabel {
  /** The value's name ("availability", "trainingWindows.windows"). */
  readonly name: string;
  /** The clock the windows are in ("UTC", "Europe/Berlin local time"). */
  readonly clock: string;
  /** The error code (default E_SELECTION_WINDOWS). */
  readonly code?: "E_SELECTION_WINDOWS" | "E_PROPERTY_INVALID";
}

const TAG_LABEL: WindowsLabel = { name: "availability", clock: "UTC" };

/** An operator's text for a one-line message: control characters blanked, at most 40 characters. */
function quote(text: string): string {
  // eslint-disable-next-line no-control-regex -- control characters would break the one-line message
  const s = text.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, " ");
  return `'${s.length > 40 ? `${s.slice(0, 37)}...` : s}'`;
}

function minutes(text: string, what: string, label: WindowsLabel): number {
  const code = label.code ?? "E_SELECTION_WINDOWS";
  const m = TIME.exec(text.trim());
  if (!m) fail(code, `${label.name} ${what} ${quote(text)} is not HH:MM (${label.clock})`);
  const v = Number(m[1]) * 60 + Number(m[2]);
  if (v > DAY_MIN) fail(code, `${label.name} ${what} ${quote(text)} is after 24:00`);
  return v;
}

/**
 * Parses the tag's value: an array of "HH:MM-HH:MM" strings (or one such string). Anything else is
 * E_SELECTION_WINDOWS with a one-line reason naming the bad entry. `label` names the value and its clock in the
 * messages (core/fleet/policy.ts parses a trainer's `trainingWindows.windows`, in the device's local time, with it).
 */
export function parseWindows(value: unknown, label: WindowsLabel = TAG_LABEL): DailyWindow[] {
  const code = label.code ?? "E_SELECTION_WINDOWS";
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.length === 0 || list.length > 48)
    fail(code, `${label.name} must be a list of 1 to 48 "HH:MM-HH:MM" windows (${label.clock})`);
  const out: DailyWindow[] = [];
  for (const w of list) {
    if (typeof w !== "string")
      fail(code, `${label.name} window ${String(JSON.stringify(w)).slice(0, 80)} is not a string`);
    const [a, b, extra] = w.split("-");
    if (a === undefined || b === undefined || extra !== undefined)
      fail(code, `${label.name} window ${quote(w)} is not HH:MM-HH:MM`);
    const start = minutes(a, "window start", label);
    const end = minutes(b, "window end", label);
    if (start === end) fail(code, `${label.name} window ${quote(w)} is empty`);
    if (start < end) out.push({ startMin: start, endMin: end });
    else {
      if (start < DAY_MIN) out.push({ startMin: start, endMin: DAY_MIN });
      if (end > 0) out.push({ startMin: 0, endMin: end });
    }
  }
  return out.sort((x, y) => x.startMin - y.startMin);
}

/**
 * Seconds from `nowMs` (epoch ms) until the device's declared availability ends, 0 when it is outside every
 * window. Windows that touch or overlap (also across midnight) count as one.
 */
export function availableForS(windows: readonly DailyWindow[], nowMs: number): number {
  const dayMs = DAY_MIN * 60_000;
  const dayStart = Math.floor(nowMs / dayMs) * dayMs;
  // Windows of yesterday, today and tomorrow as absolute intervals, merged.
  const spans: [number, number][] = [];
  for (let d = -1; d <= 1; d++)
    for (const w of windows)
      spans.push([dayStart + d * dayMs + w.startMin * 60_000, dayStart + d * dayMs + w.endMin * 60_000]);
  spans.sort((x, y) => x[0] - y[0]);
  const merged: [number, number][] = [];
  for (const s of spans) {
    const last = merged[merged.length - 1];
    if (last && s[0] <= last[1]) last[1] = Math.max(last[1], s[1]);
    else merged.push([s[0], s[1]]);
  }
  for (const [a, b] of merged) if (a <= nowMs && nowMs < b) return (b - nowMs) / 1000;
  return 0;
}
