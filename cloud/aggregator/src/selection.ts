/**
 * Participant selection in the Function (docs/selection.md): the job's selector (core/selection, the same code the
 * simulator runs) over the devices the fleet lists for the job's cohort, with the job's selection history, and a
 * per-device lease so two running jobs never order the same device at once.
 *
 *   jobs/{id}/selection.json   the job's SelectionHistory (core/selection/history.ts), updated with an
 *                              ETag-conditional write when a round closes (picks, completions with loss, samples
 *                              and duration, timeouts for the participants that delivered nothing); each round
 *                              is applied once (its `lastRound`).
 *   leases/{deviceId}.json     {jobId, round, acquiredAt, expiresAt}: created with If-None-Match: * before the
 *                              device is ordered, taken over (If-Match) only from a holder that is stale — its
 *                              lease expired, its job is no longer running, or the leased round is no longer
 *                              open — and deleted (If-Match) when the round closes or the job stops. The expiry
 *                              is the round's deadline (plus the secure-aggregation steps) plus LEASE_GRACE_MS, so
 *                              an aggregator that crashed holds no device for longer.
 *
 * Device policy (core/fleet/policy.ts, docs/operations.md "How the cloud honours policy"): a device whose policy
 * excludes it from the round (disabled, outside its training windows, below its disk or memory floor, a round
 * longer than its cap, an update its metered link defers) is never a candidate; `eligibleDevices` says who and why,
 * the round record counts them per reason.
 */
import { availableForS, parseWindows } from "../../../core/selection/windows";
import {
  createSelector,
  SelectionHistory,
  type DeviceProfile,
  type SelectionContext,
} from "../../../core/selection";
import type { RoundState } from "../../../core/round/engine";
import { isFlotillaError } from "../../../core/errors";
import type { TrainerInfo } from "./fleet/fleet";
import {
  POLICY_EXCLUSIONS,
  policyExclusion,
  type PolicyExclusion,
  type PolicyExclusionCounts,
  type PolicyFacts,
} from "../../../core/fleet/policy";
import { parseCompression } from "../../../core/compress/spec";
import { getJson, isConflict, putJson, type BlobStore } from "./store/blob-store";
import { QualityTracker, type Exclusion } from "../../../core/robust/quality";
import { paths, type JobDocument } from "./jobs/state";

export const selectionPaths = {
  history: (jobId: string) => `jobs/${jobId}/selection.json`,
  leases: "leases/",
  lease: (deviceId: string) => `leases/${encodeURIComponent(deviceId)}.json`,
};

/** How long past its round's deadline a lease holds a device (a crashed aggregator frees it then). */
export const LEASE_GRACE_MS = 10 * 60_000;

export interface DeviceLease {
  readonly jobId: string;
  readonly round: number;
  readonly acquiredAt: number;
  /** ms since epoch; after it the lease is stale whatever its job does. */
  readonly expiresAt: number;
  /**
   * An async job's lease (docs/async.md): it holds while the job runs and it has not expired (its order's deadline
   * plus the grace) or been released (when the device's update is aggregated); there is no round state to consult.
   */
  readonly async?: true;
}

/** A device its policy left out of a round, and why (core/fleet/policy.ts PolicyVerdict). */
export interface PolicyExcludedDevice {
  readonly deviceId: string;
  readonly reason: PolicyExclusion;
  readonly detail: string;
}

/** The job's eligible devices and the connected ones its devices' policies left out. */
export interface Eligibility {
  readonly profiles: DeviceProfile[];
  readonly policyExcluded: PolicyExcludedDevice[];
}

/**
 * The bytes of the update a device would upload for the job's next round, when known: the mean update size the
 * job's last recorded round received (after the codec, as it came), else for a job without lossy compression the
 * dense float32 update; undefined when neither is known (a lossy codec before any round closed).
 */
export function expectedUploadBytes(job: JobDocument): number | undefined {
  for (let i = job.rounds.length - 1; i >= 0; i--) {
    const r = job.rounds[i]!;
    if (r.completed > 0 && r.bytesReceived > 0) return Math.round(r.bytesReceived / r.completed);
  }
  try {
    const c = job.definition.compression;
    if (c === undefined || parseCompression(c).stages.length === 0) return job.modelLength * 4;
  } catch {
    // a codec this build cannot parse: unknown size
  }
  return undefined;
}

/**
 * The job's candidates: connected trainers whose device policy does not exclude them now (policyExclusion with the
 * profiler's free disk and memory, the round's expected training time on the device and its upload size) and that
 * (if profiled for the job's model) could train their samples before the deadline — the filter the Function always
 * applied, so `random` keeps its draw — with everything the profiler reported and the twin's tags. The devices
 * their policy excludes are returned with why (the round record counts them; logPolicyExclusions logs them).
 * Without `now` training windows are not judged (unknown facts never exclude).
 */
export function eligibleDevices(
  job: JobDocument,
  trainers: readonly TrainerInfo[],
  now?: number,
  log?: (line: string) => void,
): Eligibility {
  const d = job.definition;
  const out: DeviceProfile[] = [];
  const policyExcluded: PolicyExcludedDevice[] = [];
  const uploadBytes = expectedUploadBytes(job);
  for (const t of trainers) {
    if (!t.connected) continue;
    const sps = t.samplesPerSecond?.[d.modelKey];
    const n = t.numSamples ?? d.defaultNumSamples;
    const trainingSeconds =
      sps !== undefined && sps > 0 ? (n * d.strategyOptions.fit.epochs) / sps : undefined;
    // Device policy (core/fleet/policy.ts): the same judgement the device makes when it gets an order.
    if (t.policy) {
      const facts: PolicyFacts = {
        ...(t.freeDiskBytes !== undefined ? { freeDiskBytes: t.freeDiskBytes } : {}),
        ...(t.freeMemoryBytes !== undefined ? { freeMemoryBytes: t.freeMemoryBytes } : {}),
        ...(trainingSeconds !== undefined ? { trainingSeconds } : {}),
        ...(uploadBytes !== undefined ? { uploadBytes } : {}),
      };
      const policy = now === undefined ? { ...t.policy, trainingWindows: null } : t.policy;
      try {
        const v = policyExclusion(policy, facts, now ?? 0);
        if (v) {
          policyExcluded.push({ deviceId: t.deviceId, reason: v.reason, detail: v.detail });
          continue;
        }
      } catch (e) {
        // A policy this runtime cannot judge (a time zone it does not know): logged, the device is judged without it.
        if (!isFlotillaError(e)) throw e;
        log?.(`device ${t.deviceId}: ${e.code}: ${e.message}; its training windows are not judged`);
      }
    }
    // Declared availability windows (tags.flotilla.availability, core/selection/windows.ts): outside them the
    // device is not a candidate; inside, selection knows how long it stays (onlineForS). A bad tag is logged and
    // ignored (the device is then treated as undeclared), never fatal.
    let onlineForS: number | undefined;
    const declared = (t.tags?.flotilla as Record<string, unknown> | undefined)?.availability;
    if (declared !== undefined && now !== undefined) {
      try {
        onlineForS = availableForS(parseWindows(declared), now);
        if (onlineForS <= 0) continue;
      } catch (e) {
        if (!isFlotillaError(e)) throw e;
        log?.(`device ${t.deviceId}: ${e.code}: ${e.message}; its availability tag is ignored`);
      }
    }
    if (trainingSeconds !== undefined && trainingSeconds > d.roundDeadlineSeconds) continue;
    out.push({
      deviceId: t.deviceId,
      numSamples: n,
      ...(sps !== undefined ? { samplesPerSecond: sps } : {}),
      ...(t.memoryBytes !== undefined ? { memoryBytes: t.memoryBytes } : {}),
      ...(t.freeDiskBytes !== undefined ? { freeDiskBytes: t.freeDiskBytes } : {}),
      ...(t.uplinkBytesPerSecond !== undefined ? { uplinkBytesPerSecond: t.uplinkBytesPerSecond } : {}),
      ...(t.rttMs !== undefined ? { rttMs: t.rttMs } : {}),
      ...(t.availability !== undefined ? { availability: t.availability } : {}),
      ...(onlineForS !== undefined ? { onlineForS } : {}),
      ...(t.tags !== undefined ? { tags: t.tags } : {}),
    });
  }
  return { profiles: out, policyExcluded };
}

/** The job's candidates (eligibleDevices without the policy exclusions' details). */
export function deviceProfiles(
  job: JobDocument,
  trainers: readonly TrainerInfo[],
  now?: number,
  log?: (line: string) => void,
): DeviceProfile[] {
  return eligibleDevices(job, trainers, now, log).profiles;
}

/** Devices excluded per policy reason, in POLICY_EXCLUSIONS order (reasons that excluded nobody are left out). */
export function policyCounts(
  excluded: readonly { readonly reason: PolicyExclusion }[],
): PolicyExclusionCounts {
  const counts: Record<string, number> = {};
  for (const e of excluded) counts[e.reason] = (counts[e.reason] ?? 0) + 1;
  const out: PolicyExclusionCounts = {};
  for (const r of POLICY_EXCLUSIONS) if (counts[r]) (out as Record<string, number>)[r] = counts[r];
  return out;
}

/** "disabled 5, window 5" (the counts in POLICY_EXCLUSIONS order). */
export function policySummary(counts: PolicyExclusionCounts): string {
  return Object.entries(counts)
    .map(([r, n]) => `${r} ${n}`)
    .join(", ");
}

/** At most this many devices get their own policy log line per round; the rest are summarised in one line. */
export const POLICY_LOG_LINES = 10;

/**
 * One log line per device its policy excluded from `what` (e.g. "round job-1/3"): device, reason, detail; past
 * POLICY_LOG_LINES devices one summary line with the rest's counts per reason (a large fleet does not flood).
 */
export function logPolicyExclusions(
  log: (line: string) => void,
  what: string,
  excluded: readonly PolicyExcludedDevice[],
): void {
  for (const e of excluded.slice(0, POLICY_LOG_LINES))
    log(`${what}: device ${e.deviceId} not ordered: policy ${e.reason}: ${e.detail}`);
  const rest = excluded.slice(POLICY_LOG_LINES);
  if (rest.length > 0) {
    log(
      `${what}: ${rest.length} more device(s) not ordered by their policy (${policySummary(policyCounts(rest))})`,
    );
  }
}

/** The selection context of a job's round (download: the model as devices fetch it; upload: a dense update). */
export function selectionContext(job: JobDocument, round: number, downloadBytes: number): SelectionContext {
  const d = job.definition;
  return {
    round,
    count: d.strategyOptions.clientsPerRound,
    seed: d.strategyOptions.seed,
    deadlineS: d.roundDeadlineSeconds,
    downloadBytes,
    uploadBytes: job.modelLength * 4,
    epochs: d.strategyOptions.fit.epochs,
    ...(d.minMemoryBytes !== undefined ? { minMemoryBytes: d.minMemoryBytes } : {}),
  };
}

/** Parses stored selection.json bytes; a damaged document (not JSON, or invalid) is logged and reads as empty. */
function parseHistory(bytes: Uint8Array, jobId: string, log: (line: string) => void): SelectionHistory {
  try {
    return SelectionHistory.fromJSON(Buffer.from(bytes).toString("utf8"));
  } catch (e) {
    if (!isFlotillaError(e)) throw e;
    log(`job ${jobId}: ${e.code}: ${e.message}; selection goes on from an empty history`);
    return new SelectionHistory();
  }
}

/** The job's selection history; a missing one is empty, a damaged one is logged and starts empty. */
export async function loadHistory(
  store: BlobStore,
  jobId: string,
  log: (line: string) => void,
): Promise<SelectionHistory> {
  const got = await store.get(selectionPaths.history(jobId));
  return got ? parseHistory(got.bytes, jobId, log) : new SelectionHistory();
}

/**
 * The job's contribution-quality tracker (core/robust/quality.ts) from its document: undefined when the job has
 * quality off; a damaged stored state is logged and starts empty.
 */
export function qualityTracker(job: JobDocument, log?: (line: string) => void): QualityTracker | undefined {
  const policy = job.definition.quality;
  if (policy === false) return undefined;
  if (job.quality === undefined) return new QualityTracker(policy);
  try {
    return QualityTracker.fromJSON(job.quality, policy);
  } catch (e) {
    if (!isFlotillaError(e)) throw e;
    log?.(`job ${job.definition.jobId}: ${e.code}: ${e.message}; quality goes on from an empty record`);
    return new QualityTracker(policy);
  }
}

/** The devices the job's contribution quality excludes from round `round`, with why. */
export function qualityExclusions(
  job: JobDocument,
  round: number,
  log?: (line: string) => void,
): Exclusion[] {
  return qualityTracker(job, log)?.excludedAt(round) ?? [];
}

/** `candidates` without the devices the job's contribution quality excludes from round `round`. */
export function withoutExcluded<T extends { readonly deviceId: string }>(
  job: JobDocument,
  candidates: readonly T[],
  round: number,
  log?: (line: string) => void,
): T[] {
  const out = new Set(qualityExclusions(job, round, log).map((e) => e.deviceId));
  return out.size ? candidates.filter((c) => !out.has(c.deviceId)) : [...candidates];
}

/** Picks the round's devices with the job's selector (jobs/job.ts validated the spec). */
export function selectDevices(
  job: JobDocument,
  candidates: readonly DeviceProfile[],
  history: ReadonlyMap<string, import("../../../core/selection").DeviceHistory>,
  ctx: SelectionContext,
): string[] {
  return createSelector(job.definition.selection ?? "random").select(candidates, history, ctx);
}

/**
 * Records a closed round in the job's history, once (a round at or below the history's lastRound is skipped):
 * every participant was picked; `completed` delivered an aggregated update (with the loss and samples it
 * reported and its order-to-arrival time); the others timed out.
 */
export async function recordRoundInHistory(
  store: BlobStore,
  st: RoundState,
  completed: readonly string[],
  log: (line: string) => void,
): Promise<void> {
  const done = new Set(completed);
  const name = selectionPaths.history(st.jobId);
  // A read-modify-write with the blob's ETag (as store/blob-store.ts updateJson, but a damaged document is
  // replaced rather than failing every round).
  for (let attempt = 0; ; attempt++) {
    const cur = await store.get(name);
    const h = cur ? parseHistory(cur.bytes, st.jobId, log) : new SelectionHistory();
    if (h.lastRound >= st.round) return;
    h.recordSelected(
      st.round,
      st.participants.map((p) => p.deviceId),
    );
    for (const p of st.participants) {
      if (!done.has(p.deviceId)) {
        h.recordTimeout(p.deviceId);
        continue;
      }
      const rec = st.received[p.deviceId];
      const masked = st.secagg?.masked?.[p.deviceId];
      const at = rec?.at ?? masked?.at;
      h.recordCompleted(p.deviceId, {
        loss: rec?.loss ?? masked?.loss,
        samples: rec?.numSamples ?? masked?.numSamples,
        ...(at !== undefined ? { durationS: Math.max(0, at - st.openedAt) / 1000 } : {}),
      });
    }
    try {
      await putJson(store, name, h.toJSON(), cur ? { ifMatch: cur.etag } : { ifNoneMatch: "*" });
      return;
    } catch (e) {
      if (!isConflict(e) || attempt >= 20) throw e;
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 20 * (attempt + 1)));
    }
  }
}

/**
 * A read-modify-write of the job's history with the blob's ETag (an async job records picks as it orders and
 * completions as it aggregates; recordRoundInHistory does a sync round's whole outcome at once).
 */
export async function updateHistory(
  store: BlobStore,
  jobId: string,
  log: (line: string) => void,
  change: (h: SelectionHistory) => void,
): Promise<void> {
  const name = selectionPaths.history(jobId);
  for (let attempt = 0; ; attempt++) {
    const cur = await store.get(name);
    const h = cur ? parseHistory(cur.bytes, jobId, log) : new SelectionHistory();
    change(h);
    try {
      await putJson(store, name, h.toJSON(), cur ? { ifMatch: cur.etag } : { ifNoneMatch: "*" });
      return;
    } catch (e) {
      if (!isConflict(e) || attempt >= 20) throw e;
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 20 * (attempt + 1)));
    }
  }
}

/** The cross-job device leases (see the file comment). */
export class DeviceLeases {
  constructor(
    private readonly store: BlobStore,
    private readonly log: (line: string) => void,
  ) {}

  /** The device's lease blob; `lease` is undefined when the blob is damaged (then it holds nothing). */
  private async read(deviceId: string): Promise<{ lease?: DeviceLease; etag: string } | undefined> {
    const got = await this.store.get(selectionPaths.lease(deviceId));
    if (!got) return undefined;
    try {
      const l = JSON.parse(Buffer.from(got.bytes).toString("utf8")) as DeviceLease;
      const ok =
        typeof l === "object" &&
        l !== null &&
        typeof l.jobId === "string" &&
        Number.isSafeInteger(l.round) &&
        typeof l.expiresAt === "number";
      return ok ? { lease: l, etag: got.etag } : { etag: got.etag };
    } catch {
      return { etag: got.etag };
    }
  }

  /** Whether a lease still holds its device: not expired, its job running, and the leased round open. */
  private async live(
    l: DeviceLease | undefined,
    now: number,
    cache: Map<string, Promise<boolean>>,
  ): Promise<boolean> {
    if (!l || !(l.expiresAt > now)) return false;
    const key = `${l.jobId}/${l.round}${l.async ? "/async" : ""}`;
    let p = cache.get(key);
    if (!p) {
      p = (async () => {
        const job = await getJson<JobDocument>(this.store, paths.job(l.jobId));
        if (job?.value.status !== "running") return false;
        if (l.async) return true;
        const st = await getJson<RoundState>(this.store, paths.round(l.jobId, l.round));
        // A lease taken before its round state was written (the round is being opened) holds.
        if (!st) return job.value.currentRound < l.round;
        return st.value.status !== "closed";
      })();
      cache.set(key, p);
    }
    return p;
  }

  /** The devices among `ids` that another job holds with a live lease. */
  async heldByOthers(jobId: string, ids: readonly string[], now: number): Promise<Set<string>> {
    const leased = new Set(
      (await this.store.list(selectionPaths.leases)).map((n) =>
        decodeURIComponent(n.slice(selectionPaths.leases.length, -".json".length)),
      ),
    );
    const cache = new Map<string, Promise<boolean>>();
    const out = new Set<string>();
    for (const id of ids) {
      if (!leased.has(id)) continue;
      const cur = await this.read(id);
      if (cur?.lease && cur.lease.jobId !== jobId && (await this.live(cur.lease, now, cache))) out.add(id);
    }
    return out;
  }

  /**
   * Leases `ids` to the job's round until `expiresAt`; returns the ids it got (a device another job holds, or
   * won in a race, is left out). A lease of the same job (an earlier round, or this one after a restart) is
   * renewed.
   */
  async acquire(
    jobId: string,
    round: number,
    ids: readonly string[],
    now: number,
    expiresAt: number,
    opts: { async?: true } = {},
  ): Promise<string[]> {
    const lease: DeviceLease = {
      jobId,
      round,
      acquiredAt: now,
      expiresAt,
      ...(opts.async ? { async: true } : {}),
    };
    const cache = new Map<string, Promise<boolean>>();
    const got: string[] = [];
    for (const id of ids) {
      const name = selectionPaths.lease(id);
      try {
        const cur = await this.read(id);
        if (!cur) await putJson(this.store, name, lease, { ifNoneMatch: "*" });
        else if (cur.lease?.jobId === jobId || !(await this.live(cur.lease, now, cache))) {
          if (cur.lease?.jobId !== jobId)
            this.log(
              `lease of ${id}: taking over the ${
                cur.lease ? `stale lease of ${cur.lease.jobId}/${cur.lease.round}` : "damaged lease"
              } for ${jobId}/${round}`,
            );
          await putJson(this.store, name, lease, { ifMatch: cur.etag });
        } else continue;
        got.push(id);
      } catch (e) {
        if (!isConflict(e)) throw e; // another writer won: the device is not ours this round
      }
    }
    return got;
  }

  /** Deletes the leases the job's `round` holds on `ids` (only while they are still that round's). */
  async release(jobId: string, round: number, ids: readonly string[]): Promise<number> {
    let n = 0;
    for (const id of ids) {
      const cur = await this.read(id);
      if (!cur?.lease || cur.lease.jobId !== jobId || cur.lease.round !== round) continue;
      try {
        if (await this.store.delete(selectionPaths.lease(id), { ifMatch: cur.etag })) n++;
      } catch (e) {
        if (!isConflict(e)) throw e;
      }
    }
    return n;
  }
}
