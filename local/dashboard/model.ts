/**
 * The dashboard's view model, pure (no I/O): module twins → one row per device, the Function's round records →
 * one point per round, and each device's history, accumulated from what the poll loop sees.
 *
 * Per round: accuracy and loss come from the round's fleet-wide evaluation (`evaluation`, core/round/evaluation.ts:
 * devices evaluate each published global model on their held-out data) when the record has one, else from the
 * training metrics the updates reported (`trainAccuracy`, `trainLoss`); `accuracySource` says which. Bytes are the
 * round's `bytesReceived`, ε the DP record's `epsilon` (spent so far).
 */
import type { FleetEvaluation } from "../../core/round/evaluation";
import type { JobDetail, JobSummary, ModuleTwin } from "./sources";

export interface DeviceRow {
  readonly deviceId: string;
  /** Any of its modules connected. */
  readonly connected: boolean;
  /** The latest lastActivityTime of its modules (ISO), when the hub reports one. */
  readonly lastSeen: string | null;
  /** The trainer's reported status (idle, downloading, training, queued, uploading, secagg, done, error). */
  readonly state: string | null;
  readonly jobId: string | null;
  readonly round: number | null;
  /** Training progress 0..1 while training. */
  readonly progress: number | null;
  readonly numSamples: number | null;
  /** The trainer's last round's local metrics. */
  readonly loss: number | null;
  readonly accuracy: number | null;
  /** The published model evaluated on the device's data with onnxruntime (trainer `inference`). */
  readonly inferenceAccuracy: number | null;
  readonly error: string | null;
  /** The update-queue's depth (updates not yet acknowledged) and their bytes. */
  readonly queueDepth: number | null;
  readonly queueBytes: number | null;
  /** The profiler's capabilities. */
  readonly capabilities: {
    readonly samplesPerSecond: Readonly<Record<string, number>>;
    readonly threads: number | null;
    readonly memoryBytes: number | null;
    readonly freeDiskBytes: number | null;
    readonly rttMs: number | null;
    readonly uplinkBytesPerSecond: number | null;
    readonly availability: number | null;
    readonly measuredAt: string | null;
  } | null;
}

export interface RoundPoint {
  readonly round: number;
  readonly status: string;
  readonly participants: number;
  readonly completed: number;
  readonly failures: number;
  readonly accuracy: number | null;
  readonly loss: number | null;
  /** Where accuracy and loss come from. */
  readonly source: "evaluation" | "training";
  readonly bytes: number;
  readonly epsilon: number | null;
  readonly durationMs: number;
  readonly closedAt: number | null;
  /** The fleet-wide evaluation's spread and worst decile, when the round has one. */
  readonly evaluation: FleetEvaluation | null;
}

/** A device's contribution quality in the followed job (core/robust/quality.ts, through the Function's job API). */
export interface DeviceQualityView {
  /** Beta reputation in (0, 1); 0.5 for a device never seen. */
  readonly reputation: number | null;
  readonly contributions: number;
  /** Contributions flagged with an anomaly. */
  readonly flagged: number;
  readonly lastAnomaly: { readonly round: number; readonly code: string; readonly reason: string } | null;
  /** The exclusion holding it out of selection, when there is one. */
  readonly excluded: {
    readonly reason: string;
    readonly since: number;
    readonly until: number | null;
  } | null;
}

/** One anomaly of a device (round record `quality.anomalies`). */
export interface DeviceAnomaly {
  readonly jobId: string;
  readonly round: number;
  readonly code: string;
  readonly reason: string;
}

export interface DashboardError {
  /** function | hub | dashboard */
  readonly source: string;
  readonly code: string;
  readonly message: string;
}

export interface Snapshot {
  /** Server time of this snapshot (ms). */
  readonly at: number;
  /** The sources and their poll periods. */
  readonly sources: { readonly function: string | null; readonly hub: string | null };
  readonly jobs: readonly JobSummary[];
  /** The followed job (`--job`, else the running one, else the last updated), with its open round. */
  readonly job:
    | (JobSummary & {
        readonly openRound: {
          readonly round: number;
          readonly status: string;
          readonly participants: number;
          readonly received: number;
          readonly deadline: number | null;
        } | null;
      })
    | null;
  readonly rounds: readonly RoundPoint[];
  readonly devices: readonly DeviceRow[];
  /** The followed job's contribution quality by device id (empty when it keeps none). */
  readonly quality: Readonly<Record<string, DeviceQualityView>>;
  readonly errors: readonly DashboardError[];
  /** Set when the data stopped changing for good (the local stack of `simulate --dashboard` was closed). */
  readonly final: string | null;
}

const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const obj = (v: unknown): Record<string, unknown> | null =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
/** IoT Hub's "never" (0001-01-01T00:00:00Z) and unparsable times are no time. */
const time = (v: unknown): string | null => {
  if (typeof v !== "string") return null;
  const t = Date.parse(v);
  return Number.isFinite(t) && t > 0 ? v : null;
};

/** One row per device from its trainer, update-queue and profiler module twins, sorted by device id. */
export function deviceRows(twins: readonly ModuleTwin[]): DeviceRow[] {
  const byDevice = new Map<string, Map<string, ModuleTwin>>();
  for (const t of twins) {
    if (!byDevice.has(t.deviceId)) byDevice.set(t.deviceId, new Map());
    byDevice.get(t.deviceId)!.set(t.moduleId, t);
  }
  const rows: DeviceRow[] = [];
  for (const [deviceId, modules] of byDevice) {
    const reported = (m: string, key: string) => obj(obj(modules.get(m)?.properties?.reported)?.[key]);
    const tr = reported("trainer", "flotilla");
    const q = reported("update-queue", "updateQueue");
    const caps = reported("profiler", "capabilities");
    const metrics = obj(tr?.metrics);
    const inference = obj(tr?.inference);
    const err = obj(tr?.error);
    const seen = [...modules.values()]
      .map((m) => time(m.lastActivityTime))
      .filter((t): t is string => t !== null)
      .sort((a, b) => Date.parse(b) - Date.parse(a));
    const sps: Record<string, number> = {};
    for (const [k, v] of Object.entries(obj(caps?.samplesPerSecond) ?? {})) {
      if (num(v) !== null) sps[k] = v as number;
    }
    rows.push({
      deviceId,
      connected: [...modules.values()].some((m) => m.connectionState === "Connected"),
      lastSeen: seen[0] ?? null,
      state: str(tr?.status),
      jobId: str(tr?.jobId),
      round: num(tr?.round),
      progress: num(tr?.progress),
      numSamples: num(tr?.numSamples),
      loss: num(metrics?.loss),
      accuracy: num(metrics?.accuracy),
      inferenceAccuracy: num(inference?.accuracy),
      error: err ? `${str(err.code) ?? "E_INTERNAL"}: ${str(err.message) ?? ""}` : null,
      queueDepth: num(q?.depth),
      queueBytes: num(q?.bytesPending),
      capabilities: caps
        ? {
            samplesPerSecond: sps,
            threads: num(caps.threads),
            memoryBytes: num(caps.memoryBytes),
            freeDiskBytes: num(caps.freeDiskBytes),
            rttMs: num(caps.rttMs),
            uplinkBytesPerSecond: num(caps.uplinkBytesPerSecond),
            availability: num(caps.availability),
            measuredAt: str(caps.measuredAt),
          }
        : null,
    });
  }
  return rows.sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
}

/** A round record's fleet-wide evaluation, when it has a well-formed one (helper E's `evaluation`, optional). */
function evaluationOf(v: unknown): FleetEvaluation | null {
  const e = obj(v);
  if (!e || num(e.round) === null || num(e.devices) === null) return null;
  return e as unknown as FleetEvaluation;
}

/**
 * One point per round record of `GET /api/jobs/{id}`'s `history`. A job whose records carry fleet-wide evaluations
 * is drawn from them alone (a round whose model the fleet has not evaluated yet — the devices do it as the next
 * round starts — has no accuracy or loss until then), never a mix of evaluation and training figures.
 */
export function roundPoints(history: readonly Record<string, unknown>[]): RoundPoint[] {
  const out: RoundPoint[] = [];
  const evaluated = (r: Record<string, unknown>) => {
    const e = evaluationOf(r.evaluation);
    return e !== null && (num(e.accuracy) !== null || num(e.loss) !== null);
  };
  const fromEval = history.some(evaluated);
  for (const r of history) {
    const round = num(r.round);
    if (round === null) continue;
    const evaluation = evaluationOf(r.evaluation);
    const evalAcc = num(evaluation?.accuracy);
    const evalLoss = num(evaluation?.loss);
    out.push({
      round,
      status: str(r.status) ?? "aggregated",
      participants: num(r.participants) ?? 0,
      completed: num(r.completed) ?? 0,
      failures: Array.isArray(r.failures) ? r.failures.length : 0,
      accuracy: fromEval ? evalAcc : num(r.trainAccuracy),
      loss: fromEval ? evalLoss : num(r.trainLoss),
      source: fromEval ? "evaluation" : "training",
      bytes: num(r.bytesReceived) ?? 0,
      epsilon: num(obj(r.dp)?.epsilon),
      durationMs: num(r.durationMs) ?? 0,
      closedAt: num(r.closedAt),
      evaluation,
    });
  }
  return out.sort((a, b) => a.round - b.round);
}

/** Each device's contribution quality from a job detail's `quality` (malformed entries are left out). */
export function qualityViews(detail: Pick<JobDetail, "quality">): Record<string, DeviceQualityView> {
  const out: Record<string, DeviceQualityView> = {};
  for (const [id, v] of Object.entries(obj(detail.quality?.devices) ?? {})) {
    const d = obj(v);
    if (!d) continue;
    const a = obj(d.lastAnomaly);
    const e = obj(d.excluded);
    out[id] = {
      reputation: num(d.reputation),
      contributions: num(d.contributions) ?? 0,
      flagged: num(d.flagged) ?? 0,
      lastAnomaly:
        a && num(a.round) !== null
          ? { round: num(a.round)!, code: str(a.code) ?? "", reason: str(a.reason) ?? "" }
          : null,
      excluded:
        e && num(e.since) !== null
          ? { reason: str(e.reason) ?? "", since: num(e.since)!, until: num(e.until) }
          : null,
    };
  }
  return out;
}

/** The job the dashboard follows: the one asked for, else a running one, else the last updated. */
export function pickJob(jobs: readonly JobSummary[], wanted?: string): JobSummary | undefined {
  if (wanted !== undefined) return jobs.find((j) => j.jobId === wanted);
  const latest = (a: JobSummary, b: JobSummary) => (b.updatedAt ?? 0) - (a.updatedAt ?? 0);
  return [...jobs.filter((j) => j.status === "running")].sort(latest)[0] ?? [...jobs].sort(latest)[0];
}

/** The job part of a snapshot from its detail. */
export function jobView(detail: JobDetail): NonNullable<Snapshot["job"]> {
  const { history: _h, currentRoundState: open, definition: _d, ...summary } = detail;
  const s = summary as JobSummary & Record<string, unknown>;
  return {
    jobId: s.jobId,
    status: s.status,
    ...(s.strategy !== undefined ? { strategy: s.strategy } : {}),
    currentRound: s.currentRound,
    rounds: s.rounds,
    ...(s.completedRounds !== undefined ? { completedRounds: s.completedRounds } : {}),
    ...(s.createdAt !== undefined ? { createdAt: s.createdAt } : {}),
    ...(s.updatedAt !== undefined ? { updatedAt: s.updatedAt } : {}),
    ...(s.stopReason !== undefined ? { stopReason: s.stopReason, stopMessage: s.stopMessage } : {}),
    ...(s.privacy !== undefined ? { privacy: s.privacy } : {}),
    openRound:
      open && typeof open.round === "number"
        ? {
            round: open.round,
            status: String(open.status),
            participants: Array.isArray(open.participants) ? open.participants.length : 0,
            received: Array.isArray(open.received) ? open.received.length : 0,
            deadline: num(open.deadline),
          }
        : null,
  };
}

/** One observed change of a device (`at`: server ms). */
export interface DeviceEvent {
  readonly at: number;
  readonly connected: boolean;
  readonly state: string | null;
  readonly jobId: string | null;
  readonly round: number | null;
  readonly queueDepth: number | null;
  readonly error: string | null;
}

/** What a device did in one round of a job, as its trainer reported it (and the round records said). */
export interface DeviceRound {
  readonly jobId: string;
  readonly round: number;
  /** Ordered to train in it (the open round's participants, seen while it was open). */
  readonly ordered: boolean;
  /** Its update arrived at the Function (the open round's `received`, or a closed round that does not list it as failed). */
  readonly received: boolean;
  readonly numSamples: number | null;
  readonly loss: number | null;
  readonly accuracy: number | null;
  /** The model published after the previous round, evaluated on the device's data. */
  readonly inferenceAccuracy: number | null;
  /** A failure of it in the round record (code). */
  readonly failure: string | null;
}

export interface DeviceHistory {
  readonly deviceId: string;
  readonly current: DeviceRow | null;
  /** Its contribution quality in the followed job, when the job keeps it. */
  readonly quality: DeviceQualityView | null;
  /** Its anomalies in the round records seen (newest last, bounded). */
  readonly anomalies: readonly DeviceAnomaly[];
  readonly rounds: readonly DeviceRound[];
  readonly events: readonly DeviceEvent[];
}

/**
 * Each device's history as the dashboard saw it: state changes (bounded, the newest kept) and per (job, round)
 * the trainer's metrics, whether it was ordered and its update received, and failures from the round records.
 * It starts when the dashboard starts (twins hold only the present).
 */
export class FleetHistory {
  private readonly events = new Map<string, DeviceEvent[]>();
  private readonly rounds = new Map<string, Map<string, DeviceRound>>();
  private readonly rows = new Map<string, DeviceRow>();
  private readonly anomalies = new Map<string, Map<string, DeviceAnomaly>>();
  private quality: Record<string, DeviceQualityView> = {};

  constructor(
    private readonly maxEvents = 200,
    private readonly maxRounds = 500,
  ) {}

  private round(deviceId: string, jobId: string, round: number): DeviceRound {
    if (!this.rounds.has(deviceId)) this.rounds.set(deviceId, new Map());
    const m = this.rounds.get(deviceId)!;
    const key = `${jobId}\u0000${round}`;
    const cur = m.get(key) ?? {
      jobId,
      round,
      ordered: false,
      received: false,
      numSamples: null,
      loss: null,
      accuracy: null,
      inferenceAccuracy: null,
      failure: null,
    };
    if (!m.has(key)) {
      m.set(key, cur);
      if (m.size > this.maxRounds) m.delete(m.keys().next().value as string);
    }
    return cur;
  }

  private patch(deviceId: string, jobId: string, round: number, p: Partial<DeviceRound>): void {
    const cur = this.round(deviceId, jobId, round);
    const next = { ...cur };
    for (const [k, v] of Object.entries(p)) {
      if (v !== null && v !== undefined && v !== false) (next as Record<string, unknown>)[k] = v;
    }
    this.rounds.get(deviceId)!.set(`${jobId}\u0000${round}`, next);
  }

  /** Records the devices as seen at `at`. */
  observeDevices(rows: readonly DeviceRow[], at: number): void {
    for (const r of rows) {
      this.rows.set(r.deviceId, r);
      const list = this.events.get(r.deviceId) ?? [];
      const last = list[list.length - 1];
      const ev: DeviceEvent = {
        at,
        connected: r.connected,
        state: r.state,
        jobId: r.jobId,
        round: r.round,
        queueDepth: r.queueDepth,
        error: r.error,
      };
      const same =
        last &&
        last.connected === ev.connected &&
        last.state === ev.state &&
        last.jobId === ev.jobId &&
        last.round === ev.round &&
        last.queueDepth === ev.queueDepth &&
        last.error === ev.error;
      if (!same) {
        list.push(ev);
        if (list.length > this.maxEvents) list.splice(0, list.length - this.maxEvents);
        this.events.set(r.deviceId, list);
      }
      if (r.jobId !== null && r.round !== null) {
        // The trainer's `metrics` belong to its reported (jobId, round) once it trained it.
        const trained = r.state !== "downloading" && r.state !== "training";
        this.patch(r.deviceId, r.jobId, r.round, {
          numSamples: r.numSamples,
          ...(trained ? { loss: r.loss, accuracy: r.accuracy } : {}),
          inferenceAccuracy: r.inferenceAccuracy,
        });
      }
    }
  }

  /** Records the followed job's open round (who was ordered, whose update arrived) and its round records' failures. */
  observeJob(detail: JobDetail): void {
    const open = detail.currentRoundState;
    if (open && typeof open.round === "number") {
      for (const id of open.participants ?? []) this.patch(id, detail.jobId, open.round, { ordered: true });
      for (const id of open.received ?? []) this.patch(id, detail.jobId, open.round, { received: true });
    }
    this.quality = qualityViews(detail);
    for (const rec of detail.history) {
      const round = num(rec.round);
      const q = obj(rec.quality);
      if (round !== null && q && Array.isArray(q.anomalies)) {
        for (const a of q.anomalies as unknown[]) {
          const x = obj(a);
          const id = str(x?.deviceId);
          if (!x || id === null) continue;
          if (!this.anomalies.has(id)) this.anomalies.set(id, new Map());
          const m = this.anomalies.get(id)!;
          const code = str(x.code) ?? "";
          m.set(`${detail.jobId}\u0000${round}\u0000${code}`, {
            jobId: detail.jobId,
            round,
            code,
            reason: str(x.reason) ?? "",
          });
          if (m.size > this.maxRounds) m.delete(m.keys().next().value as string);
        }
      }
      if (round === null || !Array.isArray(rec.failures)) continue;
      const failed = new Set<string>();
      for (const f of rec.failures as { deviceId?: unknown; code?: unknown }[]) {
        if (typeof f?.deviceId !== "string") continue;
        failed.add(f.deviceId);
        this.patch(f.deviceId, detail.jobId, round, { failure: str(f.code) ?? "failed" });
      }
      // A participant the closed round does not list as failed delivered its update (the open round may have
      // closed between two polls, before its `received` was seen).
      if (rec.status !== "aggregated") continue;
      for (const [deviceId, m] of this.rounds) {
        const r = m.get(`${detail.jobId}\u0000${round}`);
        if (r?.ordered && !r.received && !failed.has(deviceId))
          this.patch(deviceId, detail.jobId, round, { received: true });
      }
    }
  }

  /** A device's history, or undefined for a device never seen. */
  history(deviceId: string): DeviceHistory | undefined {
    if (!this.rows.has(deviceId) && !this.rounds.has(deviceId)) return undefined;
    return {
      deviceId,
      current: this.rows.get(deviceId) ?? null,
      quality: this.quality[deviceId] ?? null,
      anomalies: [...(this.anomalies.get(deviceId)?.values() ?? [])],
      rounds: [...(this.rounds.get(deviceId)?.values() ?? [])].sort(
        (a, b) => (a.jobId < b.jobId ? -1 : a.jobId > b.jobId ? 1 : 0) || a.round - b.round,
      ),
      events: [...(this.events.get(deviceId) ?? [])],
    };
  }
}
