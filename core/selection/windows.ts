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

function minutes(text: string, what: string): number {
  const m = TIME.exec(text.trim());
  if (!m) fail("E_SELECTION_WINDOWS", `${what} '${text}' is not HH:MM (UTC)`);
  const v = Number(m[1]) * 60 + Number(m[2]);
  if (v > DAY_MIN) fail("E_SELECTION_WINDOWS", `${what} '${text}' is after 24:00`);
  return v;
}

/**
 * Parses the tag's value: an array of "HH:MM-HH:MM" strings (or one such string). Anything else is
 * E_SELECTION_WINDOWS with a one-line reason naming the bad entry.
 */
export function parseWindows(value: unknown): DailyWindow[] {
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.length === 0 || list.length > 48)
    fail("E_SELECTION_WINDOWS", 'availability must be a list of 1 to 48 "HH:MM-HH:MM" UTC windows');
  const out: DailyWindow[] = [];
  for (const w of list) {
    if (typeof w !== "string")
      fail("E_SELECTION_WINDOWS", `availability window ${JSON.stringify(w)} is not a string`);
    const [a, b, extra] = w.split("-");
    if (a === undefined || b === undefined || extra !== undefined)
      fail("E_SELECTION_WINDOWS", `availability window '${w}' is not HH:MM-HH:MM`);
    const start = minutes(a, "window start");
    const end = minutes(b, "window end");
    if (start === end) fail("E_SELECTION_WINDOWS", `availability window '${w}' is empty`);
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
