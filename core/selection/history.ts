/**
 * What a job remembers of each device's participation, kept the same way by the simulator and the Azure Function
 * (which persists it as jobs/{id}/selection.json): picks, completions with their loss, sample count and duration,
 * and timeouts. Selectors read it as a ReadonlyMap<string, DeviceHistory> (core/selection/types.ts).
 */
import { fail } from "../errors";
import type { DeviceHistory } from "./types";

/** A completed pick: the training loss the device reported (if any), its samples, and order-to-update seconds. */
export interface Completion {
  readonly loss?: number;
  readonly samples?: number;
  readonly durationS?: number;
}

/** selection.json: the version, the last round whose outcome was recorded, and each device's history. */
export interface SelectionHistoryJson {
  readonly version: 1;
  readonly lastRound: number;
  readonly devices: Record<string, DeviceHistory>;
}

const EMPTY: DeviceHistory = { selected: 0, completions: 0, timeouts: 0 };

const finite = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x);

export class SelectionHistory extends Map<string, DeviceHistory> {
  /** The last round recorded with recordSelected (0: none); lets a store apply each round's outcome once. */
  lastRound = 0;

  /** `ids` were picked in `round`. */
  recordSelected(round: number, ids: Iterable<string>): void {
    if (!Number.isSafeInteger(round) || round < 0)
      fail("E_SELECTION_HISTORY", `round must be a non-negative integer, got ${round}`);
    for (const id of ids) {
      const h = this.get(id) ?? EMPTY;
      this.set(id, { ...h, selected: h.selected + 1, lastSelectedRound: round });
    }
    if (round > this.lastRound) this.lastRound = round;
  }

  /** `id` delivered an update that was aggregated. Non-finite or negative figures are not remembered. */
  recordCompleted(id: string, c: Completion = {}): void {
    const h = this.get(id) ?? EMPTY;
    const next: DeviceHistory = {
      ...h,
      completions: h.completions + 1,
      consecutiveTimeouts: 0,
      ...(finite(c.loss) && c.loss >= 0 ? { lastLoss: c.loss } : {}),
      ...(finite(c.samples) && c.samples > 0 ? { lastSamples: c.samples } : {}),
      ...(finite(c.durationS) && c.durationS >= 0 ? { lastDurationS: c.durationS } : {}),
    };
    this.set(id, next);
  }

  /** `id` was picked and delivered no usable update (deadline, failure, refused). */
  recordTimeout(id: string): void {
    const h = this.get(id) ?? EMPTY;
    this.set(id, { ...h, timeouts: h.timeouts + 1, consecutiveTimeouts: (h.consecutiveTimeouts ?? 0) + 1 });
  }

  toJSON(): SelectionHistoryJson {
    const devices: Record<string, DeviceHistory> = {};
    for (const id of [...this.keys()].sort()) devices[id] = this.get(id)!;
    return { version: 1, lastRound: this.lastRound, devices };
  }

  /** Reads selection.json (an object or its text); anything malformed is E_SELECTION_HISTORY naming the field. */
  static fromJSON(input: unknown): SelectionHistory {
    let v = input;
    if (typeof v === "string") {
      try {
        v = JSON.parse(v);
      } catch (e) {
        fail("E_SELECTION_HISTORY", `selection history is not JSON: ${(e as Error).message}`, { cause: e });
      }
    }
    const bad = (why: string): never => fail("E_SELECTION_HISTORY", `selection history: ${why}`);
    if (typeof v !== "object" || v === null || Array.isArray(v)) return bad("not an object");
    const o = v as Record<string, unknown>;
    if (o.version !== 1) return bad(`version ${JSON.stringify(o.version)} is not 1`);
    if (!Number.isSafeInteger(o.lastRound) || (o.lastRound as number) < 0)
      return bad(`lastRound ${JSON.stringify(o.lastRound)} is not a non-negative integer`);
    const devs = o.devices;
    if (typeof devs !== "object" || devs === null || Array.isArray(devs))
      return bad("devices is not an object");
    const out = new SelectionHistory();
    out.lastRound = o.lastRound as number;
    for (const [id, raw] of Object.entries(devs as Record<string, unknown>)) {
      if (id.length === 0 || id.length > 128) bad(`device id ${JSON.stringify(id)} is not 1-128 characters`);
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) bad(`device ${id} is not an object`);
      const r = raw as Record<string, unknown>;
      const count = (k: string, required: boolean): number | undefined => {
        const x = r[k];
        if (x === undefined && !required) return undefined;
        if (!Number.isSafeInteger(x) || (x as number) < 0)
          bad(`device ${id}: ${k} ${JSON.stringify(x)} is not a non-negative integer`);
        return x as number;
      };
      const real = (k: string): number | undefined => {
        const x = r[k];
        if (x === undefined) return undefined;
        if (!finite(x) || x < 0) bad(`device ${id}: ${k} ${JSON.stringify(x)} is not a finite number >= 0`);
        return x as number;
      };
      const known = [
        "selected",
        "completions",
        "timeouts",
        "consecutiveTimeouts",
        "lastSelectedRound",
        "lastLoss",
        "lastSamples",
        "lastDurationS",
      ];
      const extra = Object.keys(r).find((k) => !known.includes(k));
      if (extra !== undefined) bad(`device ${id}: unknown field ${extra}`);
      const h: Record<string, number> = {
        selected: count("selected", true)!,
        completions: count("completions", true)!,
        timeouts: count("timeouts", true)!,
      };
      const opt: [string, number | undefined][] = [
        ["consecutiveTimeouts", count("consecutiveTimeouts", false)],
        ["lastSelectedRound", count("lastSelectedRound", false)],
        ["lastLoss", real("lastLoss")],
        ["lastSamples", real("lastSamples")],
        ["lastDurationS", real("lastDurationS")],
      ];
      for (const [k, x] of opt) if (x !== undefined) h[k] = x;
      out.set(id, h as unknown as DeviceHistory);
    }
    return out;
  }
}
