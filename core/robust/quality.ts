/**
 * Contribution quality and reputation (docs/robustness.md, "Contribution quality and reputation"): a per-device
 * record kept across rounds, the round's anomalies, and the exclusion policy that feeds selection. Pure: the
 * simulator keeps a QualityTracker in memory, the Function keeps its JSON in the job document.
 *
 * Each round, for every device that contributed, the tracker sees its update's L2 norm, its cosine (to the round's
 * aggregate when a robust rule reports it, else to the round's mean update, estimated by the streaming observer of
 * core/round/aggregation.ts from count sketches), its reported training loss, and the round's failures. It flags:
 *
 *   E_QUALITY_NORM       norm far above the round's: modified z-score M = 0.6745 (x − median) / MAD > 3.5 (the
 *                        outlier rule of Iglewicz & Hoaglin 1993, "How to Detect and Handle Outliers") and
 *                        x > 5 × median (honest non-IID sensors devices reach 3 × the median: their data differ)
 *   E_QUALITY_DIRECTION  cosine < 0 while the round's median cosine is > 0 and M < −3.5 over the round's cosines
 *                        (the update points against the round; sign flipping and IPM do)
 *   E_QUALITY_LOSS       training loss a high outlier of the round's (M > 3.5 and > 8 × the median): loss drift
 *                        of a device whose data or training went wrong (label flipping, a stuck sensor); honest
 *                        non-IID devices of the sensors fleet reach 5 × the median late in training, hence 8
 *   E_QUALITY_REJECTED   its update was refused by validation (E_STRATEGY_*, E_MODEL_LAYOUT, E_ROUND_SAMPLES); a
 *                        robust rule leaving it out (E_ROBUST_DROPPED) is not an anomaly by itself (isRejection)
 *
 * The relative rules need at least MIN_ROUND_DEVICES observations in the round (a MAD of two values says nothing).
 * The median and MAD tolerate up to half the round being outliers (breakdown point 50%), so 20% attackers do not
 * shift the honest baseline (the robust-statistics argument of Blades, Li et al. 2023, and of Yin et al. 2018).
 *
 * Reputation: a beta reputation (Jøsang & Ismail 2002, "The Beta Reputation System"; used for federated learning
 * workers by Kang et al. 2019, "Incentive Mechanism for Reliable Federated Learning"): each contribution adds 1 to
 * `good` (clean) or to `bad` (flagged), both first decayed by the forgetting factor λ = 0.9, and the reputation is
 * (good + 1) / (good + bad + 2) ∈ (0, 1) — 0.5 for a device never seen. It is reported (round records, report,
 * dashboard); exclusion uses the simpler, explainable window rule:
 *
 *   a device flagged in at least K of its last W contributions is excluded from selection for R rounds
 *   (default 3 of 5, for 10 rounds: one flag can be noise, three in five is a pattern; a persistent attacker is out
 *   after its third bad contribution). After the cool-down it is on probation: its window still holds the flags,
 *   so one more flagged contribution excludes it again at once. R = "end": for the rest of the job.
 */
import { fail } from "../errors";
import type { RobustReport } from "./aggregation";

/** The exclusion policy: K flags in the last W contributions exclude a device for `cooldown` rounds. */
export interface QualityPolicy {
  /** K: flagged contributions within the window that exclude a device; 0: never exclude (flags are only logged). */
  readonly excludeAfter: number;
  /** W: the window, in the device's last contributions (rounds it took part in). */
  readonly window: number;
  /** R: rounds an exclusion lasts; null: the rest of the job. */
  readonly cooldown: number | null;
}

export const DEFAULT_QUALITY_POLICY: QualityPolicy = { excludeAfter: 3, window: 5, cooldown: 10 };

/** Rule thresholds (see the file comment). */
export const QUALITY_THRESHOLDS = {
  modifiedZ: 3.5,
  normRatio: 5,
  lossRatio: 8,
  maxCosine: 0,
  minRoundDevices: 4,
  forgetting: 0.9,
} as const;

export type AnomalyCode = "E_QUALITY_NORM" | "E_QUALITY_DIRECTION" | "E_QUALITY_LOSS" | "E_QUALITY_REJECTED";

/** One anomaly: which device, which round, what and why (one line). */
export interface Anomaly {
  readonly deviceId: string;
  readonly round: number;
  readonly code: AnomalyCode;
  readonly reason: string;
}

/** A device barred from selection. */
export interface Exclusion {
  readonly deviceId: string;
  readonly code: "E_QUALITY_EXCLUDED";
  readonly reason: string;
  /** The first round it is excluded from. */
  readonly since: number;
  /** The last round it is excluded from; null: the rest of the job. */
  readonly until: number | null;
}

/** One device's update as the round's aggregation saw it. */
export interface DeviceObservation {
  readonly deviceId: string;
  /** L2 norm of the update. */
  readonly norm: number;
  /** Cosine to the reference (NaN/undefined when there is none, e.g. round 1 without a robust rule). */
  readonly cosine?: number;
  /** What the cosine is to. */
  readonly cosineTo?: "aggregate" | "round-mean";
  /** The device's reported training loss. */
  readonly loss?: number;
  readonly numSamples?: number;
}

/** What the tracker needs of a round. */
export interface QualityRoundInput {
  readonly round: number;
  readonly devices: readonly DeviceObservation[];
  /** The round's failures, robust drops included. */
  readonly failures: readonly { readonly deviceId: string; readonly code: string; readonly reason: string }[];
}

/** What a round's quality check found: in the round record as `quality`. */
export interface QualityRoundRecord {
  /** This round's anomalies. */
  readonly anomalies: readonly Anomaly[];
  /** Devices barred from this round's selection, with why (set by the caller from excludedAt(round)). */
  readonly excluded: readonly Exclusion[];
  /** Devices this round's anomalies excluded from the next rounds. */
  readonly newlyExcluded?: readonly Exclusion[];
  /** Devices whose exclusion ended after this round. */
  readonly released?: readonly string[];
}

/** One device's record across rounds (JSON). */
export interface DeviceQuality {
  /** Contributions seen (updates and refusals). */
  contributions: number;
  /** Contributions flagged. */
  flagged: number;
  /** The last W contributions, oldest first: the round and whether it was flagged. */
  recent: { round: number; flagged: boolean; codes?: AnomalyCode[] }[];
  /** Decayed beta-reputation counts. */
  good: number;
  bad: number;
  reputation: number;
  rejections: number;
  lastRound: number;
  lastNorm?: number;
  /** lastNorm over the round's median norm. */
  lastNormRatio?: number;
  lastCosine?: number;
  lastLoss?: number;
  /** lastLoss over the round's median loss. */
  lastLossRatio?: number;
  lastAnomaly?: Anomaly;
  excluded?: Exclusion;
}

/** The tracker's state as stored (the Function's job document `quality`). */
export interface QualityState {
  readonly version: 1;
  readonly policy: QualityPolicy;
  /** The last round observed (0: none). */
  readonly round: number;
  readonly devices: Readonly<Record<string, DeviceQuality>>;
}

/**
 * Failure codes that mean "this update was refused for what it is" (not a timeout or a device-side failure). A
 * robust rule's drop (E_ROBUST_DROPPED) is not one: Multi-Krum, the default, leaves out n − m updates every round by
 * design, honest ones included, so counting drops excluded honest devices within a few rounds of a clean job; what
 * made a rule drop a bad update shows in its norm and direction, which are checked on their own.
 */
export function isRejection(code: string): boolean {
  return code.startsWith("E_STRATEGY_") || code === "E_MODEL_LAYOUT" || code === "E_ROUND_SAMPLES";
}

/**
 * Parses `--exclude-after`: "K/W" or "K/W:R" (R rounds, or "end" for the rest of the job), or "off" (flag and log,
 * never exclude). One E_CONFIG_QUALITY line otherwise.
 */
export function parseQualityPolicy(text: string): QualityPolicy {
  const t = text.trim();
  if (t === "off") return { ...DEFAULT_QUALITY_POLICY, excludeAfter: 0 };
  const m = /^(\d+)\/(\d+)(?::(\d+|end))?$/.exec(t);
  if (!m)
    fail("E_CONFIG_QUALITY", `--exclude-after '${text}': expected K/W, K/W:R (R rounds or 'end') or 'off'`);
  const cooldown =
    m[3] === undefined ? DEFAULT_QUALITY_POLICY.cooldown : m[3] === "end" ? null : Number(m[3]);
  return checkQualityPolicy(
    { excludeAfter: Number(m[1]), window: Number(m[2]), cooldown },
    "--exclude-after",
  );
}

/** The canonical text of a policy (parseQualityPolicy's inverse). */
export function formatQualityPolicy(p: QualityPolicy): string {
  if (p.excludeAfter === 0) return "off";
  return `${p.excludeAfter}/${p.window}:${p.cooldown === null ? "end" : p.cooldown}`;
}

/** Validates a policy object (the Function's job spec `quality`); `where` names it in the error. */
export function checkQualityPolicy(v: unknown, where = "quality"): QualityPolicy {
  if (typeof v !== "object" || v === null || Array.isArray(v))
    fail("E_CONFIG_QUALITY", `${where} must be an object {excludeAfter, window, cooldown}`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (k !== "excludeAfter" && k !== "window" && k !== "cooldown")
      fail("E_CONFIG_QUALITY", `${where}: unknown member '${k}' (excludeAfter, window, cooldown)`);
  const int = (k: string, min: number, max: number, dflt: number): number => {
    const x = o[k] === undefined ? dflt : o[k];
    if (typeof x !== "number" || !Number.isSafeInteger(x) || x < min || x > max)
      fail(
        "E_CONFIG_QUALITY",
        `${where}: ${k} must be an integer in [${min}, ${max}], got ${JSON.stringify(x)}`,
      );
    return x;
  };
  const window = int("window", 1, 1000, DEFAULT_QUALITY_POLICY.window);
  const excludeAfter = int("excludeAfter", 0, window, DEFAULT_QUALITY_POLICY.excludeAfter);
  const cooldown =
    o.cooldown === null ? null : int("cooldown", 1, 1_000_000, DEFAULT_QUALITY_POLICY.cooldown ?? 10);
  return { excludeAfter, window, cooldown };
}

/** Median of finite values (NaN when none). */
function median(xs: readonly number[]): number {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const h = v.length >> 1;
  return v.length % 2 ? v[h]! : (v[h - 1]! + v[h]!) / 2;
}

/**
 * Modified z-scores (Iglewicz & Hoaglin 1993): 0.6745 (x − median) / MAD. A zero MAD (half the values equal) gives
 * ±Infinity for any other value, 0 for the equal ones.
 */
export function modifiedZ(xs: readonly number[]): { median: number; z: number[] } {
  const med = median(xs);
  const mad = median(xs.map((x) => Math.abs(x - med)));
  return {
    median: med,
    z: xs.map((x) => {
      const d = x - med;
      if (d === 0 || !Number.isFinite(d)) return 0;
      return mad > 0 ? (0.6745 * d) / mad : d > 0 ? Infinity : -Infinity;
    }),
  };
}

const fmt = (x: number) => (Math.abs(x) >= 100 || Number.isInteger(x) ? x.toFixed(0) : x.toPrecision(3));
const fz = (z: number) => (Number.isFinite(z) ? z.toFixed(1) : z > 0 ? "∞" : "−∞");

/** The round's anomalies (pure: no state). */
export function detectAnomalies(input: QualityRoundInput): Anomaly[] {
  const T = QUALITY_THRESHOLDS;
  const out: Anomaly[] = [];
  const round = input.round;
  const obs = input.devices.filter((d) => Number.isFinite(d.norm));
  if (obs.length >= T.minRoundDevices) {
    const norms = modifiedZ(obs.map((d) => d.norm));
    const withCos = obs.filter((d) => d.cosine !== undefined && Number.isFinite(d.cosine));
    const cos = modifiedZ(withCos.map((d) => d.cosine!));
    const cosZ = new Map(withCos.map((d, i) => [d.deviceId, cos.z[i]!]));
    const withLoss = obs.filter((d) => d.loss !== undefined && Number.isFinite(d.loss));
    const loss = modifiedZ(withLoss.map((d) => d.loss!));
    const lossZ = new Map(withLoss.map((d, i) => [d.deviceId, loss.z[i]!]));
    obs.forEach((d, i) => {
      const z = norms.z[i]!;
      if (z > T.modifiedZ && d.norm > T.normRatio * norms.median)
        out.push({
          deviceId: d.deviceId,
          round,
          code: "E_QUALITY_NORM",
          reason: `update norm ${fmt(d.norm)} is ${fmt(d.norm / norms.median)}× the round's median ${fmt(
            norms.median,
          )} (modified z ${fz(z)} > ${T.modifiedZ})`,
        });
      const cz = cosZ.get(d.deviceId);
      if (
        cz !== undefined &&
        withCos.length >= T.minRoundDevices &&
        d.cosine! < T.maxCosine &&
        cos.median > 0 &&
        cz < -T.modifiedZ
      )
        out.push({
          deviceId: d.deviceId,
          round,
          code: "E_QUALITY_DIRECTION",
          reason: `cosine ${fmt(d.cosine!)} to the ${
            d.cosineTo === "round-mean" ? "round's mean update" : "round's aggregate"
          } (round median ${fmt(cos.median)}, modified z ${fz(cz)} < −${T.modifiedZ})`,
        });
      const lz = lossZ.get(d.deviceId);
      if (
        lz !== undefined &&
        withLoss.length >= T.minRoundDevices &&
        lz > T.modifiedZ &&
        d.loss! > T.lossRatio * loss.median
      )
        out.push({
          deviceId: d.deviceId,
          round,
          code: "E_QUALITY_LOSS",
          reason: `training loss ${fmt(d.loss!)} is ${fmt(d.loss! / loss.median)}× the round's median ${fmt(
            loss.median,
          )} (modified z ${fz(lz)} > ${T.modifiedZ})`,
        });
    });
  }
  const seen = new Set<string>();
  for (const f of input.failures) {
    if (!isRejection(f.code) || seen.has(f.deviceId)) continue;
    seen.add(f.deviceId);
    out.push({
      deviceId: f.deviceId,
      round,
      code: "E_QUALITY_REJECTED",
      reason: `update refused: ${f.code}: ${f.reason}`.slice(0, 300),
    });
  }
  return out;
}

function freshDevice(): DeviceQuality {
  return {
    contributions: 0,
    flagged: 0,
    recent: [],
    good: 0,
    bad: 0,
    reputation: 0.5,
    rejections: 0,
    lastRound: 0,
  };
}

/** The per-device quality record across rounds, and the exclusion policy over it. */
export class QualityTracker {
  private readonly devices = new Map<string, DeviceQuality>();
  private last = 0;

  constructor(readonly policy: QualityPolicy = DEFAULT_QUALITY_POLICY) {}

  /** The last round observed. */
  get round(): number {
    return this.last;
  }

  /** A device's record (undefined: never seen). */
  device(deviceId: string): Readonly<DeviceQuality> | undefined {
    return this.devices.get(deviceId);
  }

  /** The exclusion holding `deviceId` out of round `round`, if any. */
  exclusion(deviceId: string, round: number): Exclusion | undefined {
    const e = this.devices.get(deviceId)?.excluded;
    return e && e.since <= round && (e.until === null || round <= e.until) ? e : undefined;
  }

  /** Every device barred from round `round`'s selection. */
  excludedAt(round: number): Exclusion[] {
    const out: Exclusion[] = [];
    for (const id of [...this.devices.keys()].sort()) {
      const e = this.exclusion(id, round);
      if (e) out.push(e);
    }
    return out;
  }

  /**
   * Records round `input.round`: its anomalies, each contributor's record and reputation, the exclusions it
   * triggers (from the next round on) and the ones that ended. A round at or below the last observed one is
   * ignored (the Function may see a round twice after a restart): its record is empty.
   */
  observe(input: QualityRoundInput): Omit<QualityRoundRecord, "excluded"> {
    if (input.round <= this.last) return { anomalies: [] };
    this.last = input.round;
    const round = input.round;
    const anomalies = detectAnomalies(input);
    const byDevice = new Map<string, Anomaly[]>();
    for (const a of anomalies) byDevice.set(a.deviceId, [...(byDevice.get(a.deviceId) ?? []), a]);
    const normMed = median(input.devices.map((d) => d.norm));
    const lossMed = median(input.devices.map((d) => d.loss ?? NaN));
    const contributors = new Set<string>([
      ...input.devices.map((d) => d.deviceId),
      ...input.failures.filter((f) => isRejection(f.code)).map((f) => f.deviceId),
    ]);
    const obsOf = new Map(input.devices.map((d) => [d.deviceId, d]));
    const newlyExcluded: Exclusion[] = [];
    const released: string[] = [];
    const lambda = QUALITY_THRESHOLDS.forgetting;
    for (const id of [...contributors].sort()) {
      const q = this.devices.get(id) ?? freshDevice();
      this.devices.set(id, q);
      const mine = byDevice.get(id) ?? [];
      const flagged = mine.length > 0;
      q.contributions++;
      q.lastRound = round;
      if (flagged) q.flagged++;
      if (mine.some((a) => a.code === "E_QUALITY_REJECTED")) q.rejections++;
      q.good = lambda * q.good + (flagged ? 0 : 1);
      q.bad = lambda * q.bad + (flagged ? 1 : 0);
      q.reputation = (q.good + 1) / (q.good + q.bad + 2);
      q.recent.push({ round, flagged, ...(flagged ? { codes: mine.map((a) => a.code) } : {}) });
      while (q.recent.length > this.policy.window) q.recent.shift();
      const o = obsOf.get(id);
      if (o) {
        q.lastNorm = o.norm;
        if (normMed > 0) q.lastNormRatio = o.norm / normMed;
        if (o.cosine !== undefined && Number.isFinite(o.cosine)) q.lastCosine = o.cosine;
        if (o.loss !== undefined && Number.isFinite(o.loss)) {
          q.lastLoss = o.loss;
          if (lossMed > 0) q.lastLossRatio = o.loss / lossMed;
        }
      }
      if (flagged) q.lastAnomaly = mine[mine.length - 1];
      const k = this.policy.excludeAfter;
      const inWindow = q.recent.filter((c) => c.flagged);
      if (flagged && k > 0 && inWindow.length >= k && !this.exclusion(id, round + 1)) {
        const codes = new Map<string, number>();
        for (const c of inWindow)
          for (const code of new Set(c.codes ?? [])) codes.set(code, (codes.get(code) ?? 0) + 1);
        const what = [...codes].map(([c, n]) => `${c} ×${n}`).join(", ");
        const until = this.policy.cooldown === null ? null : round + this.policy.cooldown;
        const e: Exclusion = {
          deviceId: id,
          code: "E_QUALITY_EXCLUDED",
          reason:
            `flagged in ${inWindow.length} of its last ${q.recent.length} contributions (${what}; last: round ${round} ${
              mine[0]!.code
            }: ${mine[0]!.reason}); excluded ${until === null ? "for the rest of the job" : `until round ${until}`}`.slice(
              0,
              500,
            ),
          since: round + 1,
          until,
        };
        q.excluded = e;
        newlyExcluded.push(e);
      }
    }
    // Exclusions that end with this round.
    for (const [id, q] of this.devices) {
      const e = q.excluded;
      if (e && e.until !== null && e.until <= round && !newlyExcluded.includes(e)) {
        delete q.excluded;
        released.push(id);
      }
    }
    return {
      anomalies,
      ...(newlyExcluded.length ? { newlyExcluded } : {}),
      ...(released.length ? { released: released.sort() } : {}),
    };
  }

  toJSON(): QualityState {
    return {
      version: 1,
      policy: this.policy,
      round: this.last,
      devices: Object.fromEntries([...this.devices].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
    };
  }

  /** Restores a tracker from its JSON (an object or its text); a damaged state is one E_QUALITY_STATE error. */
  static fromJSON(json: unknown, policy?: QualityPolicy): QualityTracker {
    let v = json;
    if (typeof v === "string") {
      try {
        v = JSON.parse(v);
      } catch (e) {
        fail("E_QUALITY_STATE", `quality state is not JSON: ${(e as Error).message}`, { cause: e });
      }
    }
    const s = v as Partial<QualityState> | null;
    if (
      typeof s !== "object" ||
      s === null ||
      s.version !== 1 ||
      !Number.isSafeInteger(s.round) ||
      typeof s.devices !== "object" ||
      s.devices === null
    )
      fail("E_QUALITY_STATE", "quality state: expected {version: 1, policy, round, devices}");
    let p: QualityPolicy;
    try {
      p = policy ?? checkQualityPolicy(s.policy, "quality state policy");
    } catch (e) {
      fail("E_QUALITY_STATE", `quality state: ${(e as Error).message}`, { cause: e });
    }
    const t = new QualityTracker(p);
    t.last = s.round!;
    for (const [id, d] of Object.entries(s.devices!)) {
      const ok =
        typeof d === "object" &&
        d !== null &&
        Array.isArray(d.recent) &&
        Number.isFinite(d.good) &&
        Number.isFinite(d.bad) &&
        Number.isFinite(d.reputation);
      if (!ok) fail("E_QUALITY_STATE", `quality state: device '${id}' is malformed`);
      t.devices.set(id, structuredClone(d));
    }
    return t;
  }
}

/** One log line per anomaly (simulator console, Function log). */
export function anomalyLine(a: Anomaly): string {
  return `quality: device ${a.deviceId} round ${a.round} ${a.code}: ${a.reason}`;
}

/** One log line per exclusion. */
export function exclusionLine(e: Exclusion): string {
  return `quality: device ${e.deviceId} excluded from round ${e.since} (E_QUALITY_EXCLUDED): ${e.reason}`;
}

/**
 * A round's quality input from its record: the observer's observations (norm, loss, cosine to the round's mean),
 * with the robust rule's cosine to the round's aggregate instead when it reports one; the failures plus the robust
 * drops.
 */
export function qualityInput(rec: {
  readonly round: number;
  readonly failures: readonly { deviceId: string; code: string; reason: string }[];
  readonly observed?: readonly DeviceObservation[];
  readonly robust?: RobustReport;
}): QualityRoundInput {
  const robust = new Map((rec.robust?.devices ?? []).map((d) => [d.deviceId, d]));
  const devices: DeviceObservation[] = (rec.observed ?? []).map((o) => {
    const r = robust.get(o.deviceId);
    return r && Number.isFinite(r.cosine) && rec.robust!.aggregateNorm > 0
      ? { ...o, cosine: r.cosine, cosineTo: "aggregate" as const }
      : o;
  });
  // Without the observer (not expected: quality turns it on), the robust report's statistics stand alone.
  if (!rec.observed)
    for (const r of robust.values())
      devices.push({ deviceId: r.deviceId, norm: r.norm, cosine: r.cosine, cosineTo: "aggregate" });
  return { round: rec.round, devices, failures: [...rec.failures, ...(rec.robust?.dropped ?? [])] };
}
