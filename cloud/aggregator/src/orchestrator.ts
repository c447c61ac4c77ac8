/**
 * Round orchestration: the timer trigger's body. `tick(now)` is idempotent and resumable — every step reads the
 * persisted job and round state, does the next thing, and persists it before moving on, so a Function instance
 * killed at any point is resumed by the next tick (on any instance):
 *
 *   running job, no open round  → publish models/{r-1}.f32, select participants (the job's cohort, connected,
 *                                 fast enough for the deadline, not leased to another running job; then the
 *                                 job's selector, core/selection, and the strategy's configureFit for their
 *                                 configs), lease them (selection.ts), write rounds/{r}/state.json,
 *                                 advance job.currentRound, configure each trainer's twin + startRound +
 *                                 update-queue openRounds, mark the round dispatched
 *   open round                  → close when every participant answered (result or failure frame) or the
 *                                 deadline passed: state `closing` freezes the set of updates
 *   closing round               → stream each stored frame through strategy.beginAggregate(r).add() one at a
 *                                 time, publish models/{r}.f32 with the strategy's state (models/{r}.state),
 *                                 record the round in job.json (its training metrics are the strategy's; completing
 *                                 the job after the last round), state `closed`; then the next round opens in the
 *                                 same tick
 *
 * A round with no usable update keeps the model (round status `failed`) and the job goes on. A round that closes
 * at the deadline with fewer than minCompletedFraction × participants updates is aggregated anyway and recorded
 * with `belowQuorum: true`.
 *
 * A secure job's rounds (definition `secureAggregation`) run SecAgg+ between dispatch and closing: secure-round.ts
 * drives its steps (advertise → share → mask → unmask) tick by tick, and the closing round adds the unmasked mean
 * with RoundAggregation.addAggregate. A secure round aborted for too few survivors keeps the model (`failed`,
 * code E_SECAGG_ABORTED).
 *
 * A DP job's rounds (definition `differentialPrivacy`, core/privacy/dp.ts) fix the fleet size when the first round
 * opens, check the privacy budget before each new round (the job completes with `stopReason: "budget-exhausted"`
 * when one more round would exceed it), put the devices' DP order into the round order, and aggregate through the
 * DP wrapper (equal weights, clipping and central noise in the Function, adaptive clip norm). The privacy state
 * (clip norm, ledger, status) is persisted in job.json with each round record, in the same write.
 */
import { createHash } from "node:crypto";
import { parseCompression } from "../../../core/compress";
import { exportOnnx } from "../../../core/export/onnx";
import { decodeMessage } from "../../../core/protocol/messages";
import { RoundCloser, type RoundOutcome } from "../../../core/round/close";
import { beginRoundAggregation } from "../../../core/round/aggregation";
import {
  anomalyLine,
  exclusionLine,
  qualityInput,
  type QualityRoundInput,
  type QualityRoundRecord,
} from "../../../core/robust/quality";
import {
  openRound as newRound,
  step as engineStep,
  type RoundEvent,
  type RoundSelection,
} from "../../../core/round/engine";
import { downlinkModel } from "../../../core/round/server";
import { initialWeights } from "../../../core/engine/plan";
import { createStrategy } from "../../../core/strategies/registry";
import { decodeStrategyState, encodeStrategyState } from "../../../core/strategies/state";
import type {
  FitInstruction,
  RoundMetrics,
  Strategy,
  StrategyOptions,
} from "../../../core/strategies/strategy";
import type { DeviceProfile } from "../../../core/selection";
import {
  DeviceLeases,
  LEASE_GRACE_MS,
  deviceProfiles,
  eligibleDevices,
  logPolicyExclusions,
  policyCounts,
  policySummary,
  type PolicyExcludedDevice,
  qualityTracker,
  withoutExcluded,
  loadHistory,
  recordRoundInHistory,
  selectDevices,
  selectionContext,
  updateHistory,
} from "./selection";
import type { BufferEntry } from "../../../core/round/async-engine";
import { modelLayout } from "../../../core/engine/plan";
import { weightsHash } from "../../../core/tensor/layout";
import { nonFiniteModelReason } from "../../../core/tensor/finite";
import { FlotillaError } from "../../../core/errors";
import type { QualityTag, TrainerInfo } from "./fleet/fleet";
import { putJson } from "./store/blob-store";
import {
  JobRepository,
  paths,
  type JobDocument,
  type ModelMeta,
  type RoundRecord,
  type RoundState,
} from "./jobs/state";
import type { AggregatorServices } from "./services";
import { dispatchRound, orderFinalEvaluation, pool, releaseDevices } from "./dispatch";
import { initialSecAggState, roundPolicy, secAggRecord, SecureRounds } from "./secure-round";
import type { SecAggResult } from "../../../core/secagg/types";
import { DifferentialPrivacy } from "../../../core/privacy/dp";
import type { RoundAggregation } from "../../../core/strategies/strategy";
import { dpOptionsOf, jobAggregator, jobDeviceNormBound } from "./jobs/job";
import { AsyncRounds, isAsync, type AsyncPicks } from "./async-rounds";
import type { JobDpState } from "./jobs/state";

export interface TickReport {
  readonly jobs: { jobId: string; actions: string[] }[];
}

interface CachedStrategy {
  strategy: Strategy;
  /** The model round its weights are (models/{round}.f32). */
  round: number;
  sha256: string;
}

export interface OrchestratorOptions {
  /** Participants configured at once per round dispatch (default 32; each does 2 twin updates + 1 method). */
  readonly dispatchConcurrency?: number;
  /**
   * Orphan chunks (first chunks of updates that never completed) older than this are deleted by the sweep in the
   * timer tick (default 24 h; a device whose queue still holds the update resends every chunk anyway).
   */
  readonly chunkMaxAgeMs?: number;
  /** How often (at most) a process runs that sweep (default 1 h; the first tick sweeps). */
  readonly chunkSweepIntervalMs?: number;
  /** Builds a job's strategy (default core/strategies/registry createStrategy; tests substitute one). */
  readonly strategyFactory?: (name: string, opts: StrategyOptions) => Strategy;
}

/** The code of a round whose global model is not finite (the job then fails with stopReason "diverged"). */
export const DIVERGED = "E_MODEL_DIVERGED";

export class Orchestrator {
  readonly repo: JobRepository;
  /** Orphan chunks deleted: when their round closed, and by the age sweep. */
  readonly counters = { orphan_chunks_closed: 0, orphan_chunks_swept: 0 };
  private readonly chunkMaxAgeMs: number;
  private readonly chunkSweepIntervalMs: number;
  private nextSweep = 0;
  private readonly strategies = new Map<string, CachedStrategy>();
  private readonly concurrency: number;
  private readonly secure: SecureRounds;
  private readonly createStrategy: (name: string, opts: StrategyOptions) => Strategy;
  /** Per-device leases: two running jobs never order the same device at once (selection.ts). */
  private readonly leases: DeviceLeases;
  private running: Promise<TickReport> | null = null;

  constructor(
    private readonly services: AggregatorServices,
    opts: OrchestratorOptions = {},
  ) {
    this.repo = new JobRepository(services.store, services.telemetry);
    this.concurrency = opts.dispatchConcurrency ?? 32;
    this.secure = new SecureRounds(services, this.concurrency);
    this.createStrategy = opts.strategyFactory ?? createStrategy;
    this.leases = new DeviceLeases(services.store, services.log);
    this.chunkMaxAgeMs = opts.chunkMaxAgeMs ?? 24 * 3600_000;
    this.chunkSweepIntervalMs = opts.chunkSweepIntervalMs ?? 3600_000;
  }

  /** One pass over every running job. Overlapping calls in one process share the pass in progress. */
  tick(now: number = this.services.clock()): Promise<TickReport> {
    this.running ??= this.tickAll(now).finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async tickAll(now: number): Promise<TickReport> {
    const report: TickReport = { jobs: [] };
    for (const jobId of await this.repo.listJobIds()) {
      const actions: string[] = [];
      try {
        await this.tickJob(jobId, now, actions);
      } catch (e) {
        actions.push(`error: ${e instanceof Error ? e.message : String(e)}`);
        this.services.log(`tick ${jobId}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      }
      if (actions.length > 0) report.jobs.push({ jobId, actions });
    }
    if (now >= this.nextSweep) {
      this.nextSweep = now + this.chunkSweepIntervalMs;
      await this.sweepChunks(now, report).catch((e: Error) => {
        this.services.log(`chunk sweep failed: ${e.message}`);
      });
    }
    return report;
  }

  /**
   * Deletes the chunks (jobs/{id}/rounds/{r}/chunks/…) last written more than chunkMaxAgeMs ago, of every job:
   * the first chunks of updates whose rest never came (the device gave up, or its round closed while the chunks
   * were in flight). Counted in `orphan_chunks_swept` and logged per job.
   */
  async sweepChunks(now: number, report?: TickReport): Promise<number> {
    let total = 0;
    for (const jobId of await this.repo.listJobIds()) {
      const old = (await this.services.store.listInfo(`jobs/${jobId}/rounds/`)).filter(
        (b) => b.name.includes("/chunks/") && now - b.lastModified > this.chunkMaxAgeMs,
      );
      let n = 0;
      for (const b of old) if (await this.services.store.delete(b.name)) n++;
      if (n === 0) continue;
      total += n;
      this.counters.orphan_chunks_swept += n;
      const line = `swept ${n} orphan chunk(s) older than ${Math.round(this.chunkMaxAgeMs / 60_000)} min`;
      this.services.log(`job ${jobId}: ${line}`);
      const entry = report?.jobs.find((j) => j.jobId === jobId);
      if (entry) entry.actions.push(line);
      else report?.jobs.push({ jobId, actions: [line] });
    }
    return total;
  }

  /** Deletes what is left under a closing round's chunks/ (updates that never completed); returns how many. */
  private async dropRoundChunks(jobId: string, round: number): Promise<number> {
    const prefix = `jobs/${jobId}/rounds/${round}/chunks/`;
    let n = 0;
    for (const name of await this.services.store.list(prefix))
      if (await this.services.store.delete(name)) n++;
    if (n > 0) {
      this.counters.orphan_chunks_closed += n;
      this.services.log(
        `round ${jobId}/${round}: deleted ${n} orphan chunk(s) of updates that never completed`,
      );
    }
    return n;
  }

  /** Advances one job as far as it can go now. */
  async tickJob(jobId: string, now: number, actions: string[] = []): Promise<void> {
    const tickStarted = this.services.clock();
    for (let step = 0; step < 4; step++) {
      const job = await this.repo.getJob(jobId);
      if (job && isAsync(job)) return this.tickAsync(job, now, actions);
      if (job?.status === "stopped") {
        await this.pauseRound(job, now, actions); // idempotent: finishes a stop interrupted mid-way
        return;
      }
      if (!job || job.status !== "running") return;
      const r = job.currentRound;
      if (r > 0) {
        let st = await this.repo.getRound(jobId, r);
        if (st && st.status === "open" && st.paused) st = await this.resumeRound(job, st, now, actions);
        if (st && st.status === "open") {
          // What the engine says is due now: the orders (not sent yet), closing a plain round (every participant
          // answered, or its deadline passed); a secure round's steps are secure-round.ts's to carry out.
          const due = engineStep(st, { type: "tick", now }, roundPolicy(job.definition)).decisions;
          if (due.some((x) => x.type === "sendOrders")) {
            st = await this.dispatch(job, st);
            actions.push(`dispatched round ${r}`);
          }
          if (st.secagg) {
            st = await this.secure.advance(job, st, actions);
            if (st.status === "open") return;
          } else {
            if (!due.some((x) => x.type === "aggregate")) return;
            st = (await this.apply(st, { type: "tick", now })) ?? (await this.repo.getRound(jobId, r));
          }
        }
        if (st && st.status === "closing") {
          const at = st.secagg ? this.services.clock() : now;
          try {
            await this.closeRound(job, st, at);
          } catch (e) {
            if ((e as { code?: string }).code !== DIVERGED) throw e;
            await this.diverge(job, st, at, (e as Error).message, actions);
            return;
          }
          actions.push(`closed round ${r}`);
          continue;
        }
        if (!st) {
          // job advanced but the round state is missing: cannot happen with our write order; reopen it
          await this.openRound(job, r, now, actions);
          return;
        }
      }
      if (r >= job.definition.rounds) {
        await this.repo.updateJob(jobId, (cur) =>
          cur.status === "running" ? { ...cur, status: "completed", updatedAt: now } : undefined,
        );
        return;
      }
      // A round opened after closing the previous one in the same tick opens now, not at the tick's start.
      const openAt = now + Math.max(0, this.services.clock() - tickStarted);
      const next = await this.privacyAllows(job, r + 1, openAt, actions);
      if (!next) return;
      if (!(await this.openRound(next, r + 1, openAt, actions))) return;
    }
  }

  /** An async job (async-rounds.ts): a running one advances, a stopped one is paused. */
  private async tickAsync(job: JobDocument, now: number, actions: string[]): Promise<void> {
    if (job.status === "stopped") return this.asyncRounds.pause(job, now);
    if (job.status === "running") return this.asyncRounds.tick(job, now, actions);
  }

  private asyncDriver: AsyncRounds | undefined;

  /** The async driver (async-rounds.ts), with the models, strategies and eligibility of this orchestrator. */
  private get asyncRounds(): AsyncRounds {
    this.asyncDriver ??= new AsyncRounds(
      this.services,
      this.repo,
      {
        ensureInitialModel: (job, now) => this.ensureInitialModel(job, now),
        strategyAt: (job, version) => this.strategyAt(job, version),
        publishModel: (job, version, w, now, s) => this.publishModel(job, version, w, now, s),
        cache: (job, strategy, round, sha256) =>
          this.strategies.set(job.definition.jobId, { strategy, round, sha256 }),
        pick: (job, round, free, exclude, now, deadline, downloadBytes) =>
          this.pickAsync(job, round, free, exclude, now, deadline, downloadBytes),
        flushed: (job, entries, applied) => this.asyncFlushed(job, entries, applied),
        aggregation: (job, version, strategy) => this.aggregation(job, version, strategy, undefined),
        qualityDone: (jobId, version, q, last) => this.qualityDone(jobId, version, q, last),
      },
      this.concurrency,
    );
    return this.asyncDriver;
  }

  /**
   * A stopped job's open round: marks it paused (persisted first, so a crash mid-way is finished by the next tick),
   * then tells every participant — the trainer twin's desired `flotilla` is cleared (null = idle) and `abortRound`
   * `{jobId, round}` is called (modules/trainer drops the round's training and secure-aggregation session) — and
   * records that they were told. The update-queue's `openRounds` and the quantizer's job entry are left as they are:
   * updates already trained are still delivered, and the ingest keeps them for when the job starts again.
   */
  async pauseRound(job: JobDocument, now: number, actions: string[] = []): Promise<void> {
    const d = job.definition;
    const r = job.currentRound;
    if (job.status !== "stopped" || r < 1) return;
    const cur = await this.repo.getRound(d.jobId, r);
    if (!cur) return;
    const st = (await this.apply(cur, { type: "paused", now })) ?? (await this.repo.getRound(d.jobId, r));
    if (!st || st.status !== "open" || !st.paused || st.paused.devicesReleased) return;
    const { fleet, log } = this.services;
    let told = 0;
    const work = st.participants.map((p) => async () => {
      const twin = fleet.configureRound(p.deviceId, null).then(
        () => true,
        (e: Error) => {
          log(`stop ${d.jobId}/${r}: twin of ${p.deviceId} not cleared: ${e.message}`);
          return false;
        },
      );
      const abort = fleet.abortRound(p.deviceId, d.jobId, r).catch(() => false);
      const [cleared] = await Promise.all([twin, abort]);
      if (cleared) told++;
    });
    await pool(work, this.concurrency);
    await this.releaseLeases(
      d.jobId,
      r,
      st.participants.map((p) => p.deviceId),
    );
    await this.apply(st, { type: "devicesReleased" });
    actions.push(
      `paused round ${r}: ${told}/${st.participants.length} trainer twins cleared, abortRound sent`,
    );
    log(
      `job ${d.jobId} stopped: round ${r} paused, its ${st.participants.length} trainers told (abortRound)`,
    );
  }

  /**
   * A paused round of a job that runs again: its deadlines move by the time it was stopped (updates kept meanwhile
   * still count, and nobody is timed out for the pause), and it is dispatched again when its devices were told to
   * abort (the twin carries the round again).
   */
  private async resumeRound(
    job: JobDocument,
    st: RoundState,
    now: number,
    actions: string[],
  ): Promise<RoundState | undefined> {
    const next = await this.apply(st, { type: "resumed", now }, job);
    actions.push(`resumed round ${st.round}`);
    if (next) {
      // the stop released the round's device leases: take them again (a device another job took meanwhile is
      // logged; its order stands)
      const ids = next.participants.map((p) => p.deviceId);
      const got = await this.leases.acquire(
        st.jobId,
        st.round,
        ids,
        now,
        this.leaseExpiry(job, next.deadline),
      );
      if (got.length < ids.length)
        this.services.log(
          `round ${st.jobId}/${st.round} resumed: ${ids.length - got.length} device(s) are leased to another job`,
        );
    }
    return next;
  }

  /**
   * Differential privacy before a new round: fixes the fleet size when the job's first round opens (the definition's
   * `fleetSize`, else the trainers the fleet lists, at least clientsPerRound), then checks the budget. Returns the
   * job (with its DP state) when the round may open; undefined when the budget is exhausted: the job is then
   * completed with `stopReason: "budget-exhausted"` and the reason.
   */
  private async privacyAllows(
    job: JobDocument,
    round: number,
    now: number,
    actions: string[],
  ): Promise<JobDocument | undefined> {
    const d = job.definition;
    const o = d.differentialPrivacy;
    if (!o) return job;
    if (await this.repo.getRound(d.jobId, round)) return job; // already open (a resumed tick): it was allowed
    let doc = job;
    if (!doc.dp) {
      const n = d.strategyOptions.clientsPerRound;
      const listed = o.fleetSize ?? (await this.services.fleet.listTrainers(d.cohort)).length;
      const fleetSize = Math.max(listed, n);
      const fresh = new DifferentialPrivacy(dpOptionsOf(o, fleetSize, n));
      const init: JobDpState = { fleetSize, state: fresh.exportState(), spent: spentOf(fresh) };
      doc =
        (await this.repo.updateJob(d.jobId, (cur) =>
          cur.dp ? undefined : { ...cur, dp: init, updatedAt: now },
        )) ?? doc;
      if (!doc.dp) return undefined;
      actions.push(`privacy: fleet of ${doc.dp.fleetSize} devices, q = ${n}/${doc.dp.fleetSize}`);
    }
    const dp = dpOf(doc)!;
    if (dp.allowsNextRound()) return doc;
    const reason = dp.status.reason ?? "privacy budget exhausted";
    await this.repo.updateJob(d.jobId, (cur) =>
      cur.status === "running"
        ? {
            ...cur,
            status: "completed",
            stopReason: "budget-exhausted",
            stopMessage: reason,
            dp: { ...(cur.dp ?? doc.dp!), state: dp.exportState() },
            updatedAt: now,
          }
        : undefined,
    );
    actions.push(`completed: ${reason}`);
    this.services.log(`job ${d.jobId}: ${reason}`);
    await this.releaseQuantizers(job);
    if (round > 1) await this.orderFinalEvaluation(job, round - 1);
    return undefined;
  }

  /**
   * The job's DP for closing `st`: the persisted state, with the clip norm the round was opened with (so the cloud
   * clips with the norm the devices were told).
   */
  private dpForRound(job: JobDocument, st: RoundState): DifferentialPrivacy | undefined {
    const dp = dpOf(job);
    if (!dp || !job.dp) return undefined;
    if (st.dp && st.dp.clip !== dp.clip) dp.importState({ ...job.dp.state, clip: st.dp.clip });
    return dp;
  }

  /**
   * Applies one engine event (core/round/engine.ts) to the persisted round state with a conditional write; undefined
   * when it changed nothing (or the round is gone).
   */
  private apply(st: RoundState, event: RoundEvent, job?: JobDocument): Promise<RoundState | undefined> {
    const policy = job ? roundPolicy(job.definition) : undefined;
    return this.repo.updateRound(st.jobId, st.round, (cur) => {
      const next = engineStep(cur, event, policy).state;
      return next === cur ? undefined : next;
    });
  }

  /** Publishes the initial model (round 0) once. */
  private async ensureInitialModel(job: JobDocument, now: number): Promise<void> {
    const id = job.definition.jobId;
    if (await this.services.store.exists(paths.modelMeta(id, 0))) return;
    const w = job.definition.initModel
      ? await this.storedInitModel(job)
      : initialWeights(job.definition.modelSpec, job.definition.seed);
    await this.publishModel(job, 0, w, now);
  }

  /** The job's own initial model (jobs/{id}/init.f32, written when the job was created), checked against its record. */
  private async storedInitModel(job: JobDocument): Promise<Float32Array> {
    const d = job.definition;
    const rec = d.initModel!;
    const blob = await this.services.store.get(paths.initModel(d.jobId));
    if (!blob)
      throw new FlotillaError("E_MODEL_INIT", `job ${d.jobId}: its initial model (${rec.source}) is missing`);
    const b = blob.bytes;
    const w = new Float32Array(b.byteLength >> 2);
    new Uint8Array(w.buffer).set(b.subarray(0, w.length * 4));
    if (b.byteLength !== rec.length * 4 || w.length !== job.modelLength || weightsHash(w) !== rec.sha256)
      throw new FlotillaError(
        "E_MODEL_INIT",
        `job ${d.jobId}: its initial model (${rec.source}) does not match its sha256 or size`,
      );
    return w;
  }

  /**
   * Writes models/{round}.f32, the strategy's server-optimizer state after it (models/{round}.state, when the
   * strategy has any), the downlink and ONNX copies, and last the meta (which names the state blob's sha256).
   */
  private async publishModel(
    job: JobDocument,
    round: number,
    w: Float32Array,
    now: number,
    strategy?: Strategy,
  ): Promise<ModelMeta> {
    const id = job.definition.jobId;
    const d = job.definition;
    const bytes = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
    await this.services.store.put(paths.model(id, round), bytes);
    let strategyState: ModelMeta["strategyState"];
    const state = strategy?.exportState();
    if (state && Object.keys(state.tensors).length > 0) {
      const blob = encodeStrategyState(state);
      await this.services.store.put(paths.modelState(id, round), blob);
      strategyState = { sha256: sha256(blob), bytes: blob.byteLength };
    }
    // Downlink compression: the copy devices download, one envelope per model (its sha256 goes in the order).
    let downlink: ModelMeta["downlink"];
    const spec = parseCompression(d.downlinkCompression ?? "none");
    if (!spec.lossless) {
      const enc = downlinkModel(w, round, { downlink: spec, layout: modelLayout(d.modelSpec) }).weights;
      if (!(enc instanceof Float32Array)) {
        await this.services.store.put(paths.modelEncoded(id, round), enc.bytes);
        downlink = { spec: spec.text, sha256: sha256(enc.bytes), bytes: enc.bytes.byteLength };
      }
    }
    // Every published model gets its ONNX files (fp32 and int8) for inference on devices. An export failure is
    // logged and never stops the job.
    let onnx: ModelMeta["onnx"];
    try {
      const fp32 = exportOnnx(d.modelSpec, w, { name: `${id}-${round}` });
      const int8 = exportOnnx(d.modelSpec, w, { quantize: "int8", name: `${id}-${round}-int8` });
      await this.services.store.put(paths.modelOnnx(id, round, "fp32"), fp32);
      await this.services.store.put(paths.modelOnnx(id, round, "int8"), int8);
      onnx = {
        fp32: { bytes: fp32.byteLength, sha256: sha256(fp32) },
        int8: { bytes: int8.byteLength, sha256: sha256(int8) },
      };
    } catch (e) {
      this.services.log(`model ${id}/${round}: ONNX export failed: ${(e as Error).message}`);
    }
    const meta: ModelMeta = {
      jobId: id,
      round,
      sha256: weightsHash(w),
      layoutHash: job.layoutHash,
      length: w.length,
      createdAt: now,
      ...(downlink ? { downlink } : {}),
      ...(onnx ? { onnx } : {}),
      ...(strategyState ? { strategyState } : {}),
    };
    await putJson(this.services.store, paths.modelMeta(id, round), meta);
    return meta;
  }

  /**
   * At the end of a synchronous job: the fleet evaluates its last model (dispatch.ts orderFinalEvaluation). Best
   * effort: a failure is logged and never fails the tick (the job is complete either way).
   */
  private async orderFinalEvaluation(job: JobDocument, round: number): Promise<void> {
    await orderFinalEvaluation(this.services, this.repo, job, round, this.concurrency).catch((e: Error) => {
      this.services.log(
        `job ${job.definition.jobId}: evaluation of round ${round}'s model not ordered: ${e.message}`,
      );
    });
  }

  /** At the end of a job: dispatch.ts releaseDevices (the quantizers' job entries). */
  private async releaseQuantizers(job: JobDocument): Promise<void> {
    await releaseDevices(this.services, this.repo, job, this.concurrency);
  }

  /**
   * Devices that can take part: connected, and (if profiled) fast enough to finish before the deadline, with what
   * the profiler reported and their twin tags (selection.ts deviceProfiles).
   */
  eligible(job: JobDocument, trainers: readonly TrainerInfo[], now?: number): DeviceProfile[] {
    return deviceProfiles(job, trainers, now ?? this.services.clock(), this.services.log);
  }

  /**
   * The round's picks in the selector's order, each with its FitConfig from the strategy (configureFit over the
   * picks only: clientsPerRound ≥ picks, so it keeps them all): the job's selector over the eligible devices of
   * its cohort that no other running job holds, with the job's selection history.
   */
  private async pickDevices(
    job: JobDocument,
    round: number,
    now: number,
    downloadBytes: number,
    trainers: readonly TrainerInfo[],
  ): Promise<{
    picks: FitInstruction[];
    held: number;
    selection: RoundSelection;
    policyExcluded: readonly PolicyExcludedDevice[];
  }> {
    const d = job.definition;
    // Devices their policy excludes are never candidates (core/fleet/policy.ts), nor those the job's contribution
    // quality excludes (core/robust/quality.ts).
    const screened = eligibleDevices(job, trainers, now, this.services.log);
    const eligible = withoutExcluded(job, screened.profiles, round, this.services.log);
    const held = await this.leases.heldByOthers(
      d.jobId,
      eligible.map((p) => p.deviceId),
      now,
    );
    const free = held.size > 0 ? eligible.filter((p) => !held.has(p.deviceId)) : eligible;
    const selection: RoundSelection = {
      candidates: free.length,
      policyExcluded: policyCounts(screened.policyExcluded),
    };
    const history = await loadHistory(this.services.store, d.jobId, this.services.log);
    const ids = selectDevices(job, free, history, selectionContext(job, round, downloadBytes));
    const strategy = this.createStrategy(d.strategy, d.strategyOptions);
    const fit = new Map(
      strategy
        .configureFit(
          round,
          ids.map((deviceId) => ({ deviceId })),
        )
        .map((f) => [f.deviceId, f]),
    );
    return {
      picks: ids.flatMap((id) => fit.get(id) ?? []),
      held: held.size,
      selection,
      policyExcluded: screened.policyExcluded,
    };
  }

  /**
   * An async job's orders (async-rounds.ts): the job's selector over its cohort's eligible trainers that are not
   * in `exclude` (in flight, buffered, or already ordered from this version) and that no other job holds; the picks
   * are leased to the job (async leases: they hold until aggregated, the job stops, or the order's deadline plus
   * the grace) and recorded as selected in the job's history.
   */
  private async pickAsync(
    job: JobDocument,
    round: number,
    free: number,
    exclude: ReadonlySet<string>,
    now: number,
    deadline: number,
    downloadBytes: number,
  ): Promise<AsyncPicks> {
    const d = job.definition;
    // As a sync round (pickDevices): device policy, then contribution quality.
    const screened = eligibleDevices(
      job,
      await this.services.fleet.listTrainers(d.cohort),
      now,
      this.services.log,
    );
    const eligible = withoutExcluded(job, screened.profiles, round, this.services.log).filter(
      (p) => !exclude.has(p.deviceId),
    );
    const policyExcluded = policyCounts(screened.policyExcluded);
    if (eligible.length === 0 || free <= 0)
      return { picks: [], selection: { candidates: 0, policyExcluded } };
    const held = await this.leases.heldByOthers(
      d.jobId,
      eligible.map((p) => p.deviceId),
      now,
    );
    const candidates = held.size > 0 ? eligible.filter((p) => !held.has(p.deviceId)) : eligible;
    const selection: RoundSelection = { candidates: candidates.length, policyExcluded };
    const history = await loadHistory(this.services.store, d.jobId, this.services.log);
    const ctx = { ...selectionContext(job, round, downloadBytes), count: free };
    const ids = selectDevices(job, candidates, history, ctx);
    const leased = new Set(
      await this.leases.acquire(d.jobId, round, ids, now, deadline + LEASE_GRACE_MS, { async: true }),
    );
    const picked = ids.filter((id) => leased.has(id));
    if (picked.length === 0) return { picks: [], selection };
    logPolicyExclusions(this.services.log, `async ${d.jobId}/${round}`, screened.policyExcluded);
    await updateHistory(this.services.store, d.jobId, this.services.log, (h) =>
      h.recordSelected(round, picked),
    ).catch((e: Error) =>
      this.services.log(`async ${d.jobId}/${round}: selection history not updated: ${e.message}`),
    );
    const fit = new Map(
      this.createStrategy(d.strategy, d.strategyOptions)
        .configureFit(
          round,
          picked.map((deviceId) => ({ deviceId })),
        )
        .map((f) => [f.deviceId, f]),
    );
    return { picks: picked.flatMap((id) => fit.get(id) ?? []), selection };
  }

  /** After an async flush: the aggregated devices' leases are released and their completions recorded. */
  private async asyncFlushed(
    job: JobDocument,
    entries: readonly BufferEntry[],
    applied: ReadonlySet<string>,
  ): Promise<void> {
    const d = job.definition;
    for (const x of entries) await this.releaseLeases(d.jobId, x.baseVersion + 1, [x.deviceId]);
    await updateHistory(this.services.store, d.jobId, this.services.log, (h) => {
      for (const x of entries)
        if (applied.has(x.deviceId)) h.recordCompleted(x.deviceId, { samples: x.numSamples });
        else h.recordTimeout(x.deviceId);
    });
  }

  /** When a round's device leases expire: its deadline, the secure-aggregation steps after it, and the grace. */
  private leaseExpiry(job: JobDocument, deadline: number): number {
    const sa = job.definition.secureAggregation;
    return deadline + (sa ? 4 * sa.stepSeconds * 1000 : 0) + LEASE_GRACE_MS;
  }

  /** Releases the leases a round holds on its devices (a failure is logged: the leases then expire). */
  private async releaseLeases(jobId: string, round: number, ids: readonly string[]): Promise<void> {
    await this.leases.release(jobId, round, ids).catch((e: Error) => {
      this.services.log(`round ${jobId}/${round}: device leases not released (${e.message}); they expire`);
    });
  }

  private async openRound(job: JobDocument, round: number, now: number, actions: string[]): Promise<boolean> {
    const d = job.definition;
    await this.ensureInitialModel(job, now);
    let st = await this.repo.getRound(d.jobId, round);
    if (!st) {
      const meta = await this.repo.getModelMeta(d.jobId, round - 1);
      if (!meta) throw new Error(`model ${round - 1} of ${d.jobId} is missing`);
      const trainers = await this.services.fleet.listTrainers(d.cohort);
      const downloadBytes = meta.downlink?.bytes ?? job.modelLength * 4;
      const picked = await this.pickDevices(job, round, now, downloadBytes, trainers);
      let picks = picked.picks;
      if (picks.length === 0) {
        const held = picked.held > 0 ? ` (${picked.held} held by other jobs)` : "";
        const policy = picked.policyExcluded.length
          ? ` (${picked.policyExcluded.length} excluded by their policy: ${policySummary(picked.selection.policyExcluded)})`
          : "";
        actions.push(`round ${round}: no eligible trainer${held}${policy}, waiting`);
        return false;
      }
      const dp = dpOf(job);
      const fewest = Math.max(
        d.secureAggregation ? Math.max(3, d.secureAggregation.minSurvivors) : 1,
        dp?.minSurvivors ?? 0,
      );
      if (picks.length < fewest) {
        actions.push(
          `round ${round}: ${picks.length} eligible trainer(s), ${
            d.secureAggregation ? "secure aggregation" : "differential privacy"
          } needs ${fewest}; waiting`,
        );
        return false;
      }
      const deadline = now + d.roundDeadlineSeconds * 1000;
      const leased = new Set(
        await this.leases.acquire(
          d.jobId,
          round,
          picks.map((p) => p.deviceId),
          now,
          this.leaseExpiry(job, deadline),
        ),
      );
      if (leased.size < picks.length) {
        picks = picks.filter((p) => leased.has(p.deviceId));
        if (picks.length < fewest) {
          await this.releaseLeases(d.jobId, round, [...leased]);
          actions.push(`round ${round}: its picks were taken by another job meanwhile; waiting`);
          return false;
        }
      }
      const order = dp?.deviceOrder(d.secureAggregation !== undefined);
      const declared = new Map(trainers.map((t) => [t.deviceId, t.numSamples]));
      const fresh: RoundState = newRound({
        jobId: d.jobId,
        round,
        participants: picks.map((p) => {
          const n = declared.get(p.deviceId);
          return {
            deviceId: p.deviceId,
            config: p.config,
            ...(n !== undefined ? { declaredSamples: n } : {}),
          };
        }),
        now,
        deadline,
        modelSha256: meta.sha256,
        ...(d.secureAggregation ? { secagg: { graphSeed: initialSecAggState(deadline).graphSeed } } : {}),
        ...(dp ? { dp: { clip: dp.clip, ...(order ? { order } : {}) } } : {}),
        selection: picked.selection,
      });
      st = (await this.repo.createRound(fresh)) ? fresh : await this.repo.getRound(d.jobId, round);
      if (!st) throw new Error(`round ${round} of ${d.jobId} vanished`);
      if (st === fresh)
        logPolicyExclusions(this.services.log, `round ${d.jobId}/${round}`, picked.policyExcluded);
      if (st !== fresh) {
        // another instance opened the round with its own picks: free the devices it did not pick
        const theirs = new Set(st.participants.map((p) => p.deviceId));
        await this.releaseLeases(
          d.jobId,
          round,
          [...leased].filter((id) => !theirs.has(id)),
        );
      }
      actions.push(`opened round ${round} with ${st.participants.length} participants`);
    }
    await this.repo.updateJob(d.jobId, (cur) =>
      cur.currentRound < round ? { ...cur, currentRound: round, updatedAt: now } : undefined,
    );
    if (st.status === "open" && !st.dispatched) {
      await this.dispatch(job, st);
      actions.push(`dispatched round ${round}`);
    }
    return true;
  }

  /** Sends every participant its round order (dispatch.ts); then marks the round dispatched. */
  private async dispatch(job: JobDocument, st: RoundState): Promise<RoundState> {
    await dispatchRound(this.services, this.repo, job, st, this.concurrency);
    const next = await this.apply(st, { type: "dispatched" });
    return next ?? { ...st, dispatched: true };
  }

  /** A strategy holding models/{round}.f32 as its global model (the cached one when it still matches). */
  private async strategyAt(job: JobDocument, round: number): Promise<{ strategy: Strategy; reset: boolean }> {
    const d = job.definition;
    const model = await this.repo.getModel(d.jobId, round);
    if (!model) throw new Error(`model ${round} of ${d.jobId} is missing`);
    const cached = this.strategies.get(d.jobId);
    if (cached && cached.round === round && cached.sha256 === model.sha256) {
      return { strategy: cached.strategy, reset: false };
    }
    const bad = nonFiniteModelReason(model.weights, round);
    if (bad !== undefined) {
      // e.g. written before this check existed, or a damaged blob: no round can train from it.
      throw new FlotillaError(DIVERGED, bad);
    }
    const strategy = this.createStrategy(d.strategy, d.strategyOptions);
    strategy.initialize(model.weights);
    return { strategy, reset: round > 0 && !(await this.restoreState(job, round, strategy)) };
  }

  /**
   * Imports the server-optimizer state published with models/{round}.f32 (a restarted Function, or another
   * instance). True when the strategy now holds the state it had after that round; false when it has state that
   * could not be restored (published without it, missing, damaged or refused blob: logged), so it starts from zero.
   */
  private async restoreState(job: JobDocument, round: number, strategy: Strategy): Promise<boolean> {
    if (Object.keys(strategy.exportState().tensors).length === 0) return true; // the model is all its state
    const id = job.definition.jobId;
    const where = `model ${id}/${round}: ${strategy.name} optimizer state`;
    const ref = (await this.repo.getModelMeta(id, round))?.strategyState;
    const blob = ref ? await this.services.store.get(paths.modelState(id, round)) : undefined;
    if (!ref || !blob || sha256(blob.bytes) !== ref.sha256) {
      this.services.log(
        `${where} ${ref ? "missing or damaged" : "was not published"}: it restarts from zero`,
      );
      return false;
    }
    try {
      strategy.importState(decodeStrategyState(blob.bytes));
      return true;
    } catch (e) {
      this.services.log(`${where} refused (${(e as Error).message}): it restarts from zero`);
      return false;
    }
  }

  /**
   * Closes a round with core's close routine (core/round/close.ts): a plain round streams each stored update
   * through it one at a time (sample counts bounded by the job's policy); a secure round unmasks (secure-round.ts)
   * and adds the mean of the included devices as one aggregate — or, aborted (too few survivors at any step),
   * adds nothing and keeps the model (`failed`, with the abort's code). Then publishes the model with the
   * strategy's state and records the round.
   */
  private async closeRound(job: JobDocument, st: RoundState, now: number): Promise<void> {
    const d = job.definition;
    // The round closes when its model is published: the time spent aggregating and publishing is the round's.
    const started = this.services.clock();
    const closedAt = () => now + Math.max(0, this.services.clock() - started);
    const { strategy, reset } = await this.strategyAt(job, st.round - 1);
    const dp = this.dpForRound(job, st);
    const closer = new RoundCloser({
      round: st.round,
      aggregation: await this.aggregation(job, st.round, strategy, dp, st.secagg !== undefined),
      samplePolicy: d,
      log: (line) => this.services.log(`round ${d.jobId}/${st.round}: ${line}`),
    });
    let bytes = 0;
    let secagg: RoundRecord["secagg"];
    let abortError: { code: string; message: string } | undefined;
    if (st.secagg) {
      ({ secagg, bytes, abortError } = await this.closeSecure(job, st, closer));
    } else {
      // Stored updates are read a few ahead of the one being aggregated (blob reads overlap the summing), and
      // still added one at a time, in participant order.
      const results = st.participants.filter((p) => st.received[p.deviceId]?.kind === "result");
      const reads = prefetch(
        results.map((p) => p.deviceId),
        (id) => this.services.store.get(paths.update(d.jobId, st.round, id)),
        UPDATE_READ_AHEAD,
      );
      for (const p of st.participants) {
        const rec = st.received[p.deviceId];
        if (!rec) {
          closer.fail(p.deviceId, "E_ROUND_TIMEOUT", "no update before the deadline");
          continue;
        }
        bytes += rec.bytes;
        if (rec.kind === "failure") {
          closer.fail(p.deviceId, rec.code ?? "E_DEVICE", rec.reason ?? "device failure");
          continue;
        }
        const blob = await reads.next(p.deviceId);
        if (!blob) {
          closer.fail(p.deviceId, "E_ROUND_MISSING", "stored update is missing");
          continue;
        }
        try {
          const msg = decodeMessage(blob.bytes);
          if (msg.type !== "result") throw new Error(`stored frame is a ${msg.type}`);
          closer.update(msg, p.declaredSamples);
        } catch (e) {
          const code = (e as { code?: string }).code ?? "E_ROUND_UPDATE";
          closer.fail(p.deviceId, code, (e as Error).message);
        }
      }
    }
    const out = closer.finish(st.participants.map((p) => p.deviceId));
    if (out.diverged !== undefined) {
      this.strategies.delete(d.jobId);
      throw new FlotillaError(DIVERGED, `${out.diverged} (not published)`);
    }
    const meta = await this.publishModel(job, st.round, out.weights, now, strategy);
    this.strategies.set(d.jobId, { strategy, round: st.round, sha256: meta.sha256 });
    const record = roundRecord(job, st, {
      outcome: out,
      bytes,
      now: closedAt(),
      modelSha256: meta.sha256,
      optimizerStateReset: reset,
      ...(abortError ? { code: abortError.code } : {}),
      ...(secagg ? { secagg } : {}),
      ...(dp?.lastRound
        ? {
            dp: abortError
              ? { ...dp.lastRound, reason: `${abortError.code}: ${abortError.message}` }
              : dp.lastRound,
          }
        : {}),
    });
    await this.recordRound(job, st, record, dp, qualityInput({ ...out, failures: out.failures }));
  }

  /**
   * A secure round's part of closing: unmasks (secure-round.ts; an abort then is recorded in the round state
   * through the engine), fails every participant not in the sum with the reason it was lost, and adds the sum.
   */
  private async closeSecure(
    job: JobDocument,
    st: RoundState,
    closer: RoundCloser,
  ): Promise<{
    secagg: RoundRecord["secagg"];
    bytes: number;
    abortError?: { code: string; message: string };
  }> {
    const d = job.definition;
    let result: SecAggResult | undefined;
    let abortError: { code: string; message: string } | undefined = st.secagg?.error;
    if (!abortError) {
      try {
        result = await this.secure.finish(job, st);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code !== "E_SECAGG_ABORTED") throw e;
        abortError = { code, message: (e as Error).message };
        this.services.log(`secagg ${d.jobId}/${st.round}: unmasking aborted: ${abortError.message}`);
      }
    }
    const sa = st.secagg!;
    const aborted: RoundEvent | undefined = abortError && { type: "aborted", ...abortError };
    const closed = aborted ? engineStep(st, aborted).state : st;
    const { record: secagg, failures, bytes } = secAggRecord(closed, result);
    for (const f of failures) closer.fail(f.deviceId, f.code, f.reason);
    if (result) {
      // The devices' reports (sample count, loss) came in the clear beside their masked inputs.
      closer.secure({
        included: result.included,
        totalWeight: result.totalWeight,
        mean: result.mean,
        reports: result.included.map((id) => {
          const m = sa.masked[id];
          return { numSamples: m?.numSamples ?? 0, loss: m?.loss };
        }),
      });
    }
    if (aborted) await this.apply(st, aborted);
    return { secagg, bytes, ...(abortError ? { abortError } : {}) };
  }

  /**
   * The round's aggregation (core/round/aggregation.ts): the strategy's, wrapped by differential privacy when the
   * job has it and by its robust aggregator (definition `aggregator`) when it has one. Round (or async version)
   * `round` is made from model round − 1 (the strategy's weights); centered clipping clips around the previous
   * global step, model round − 1 minus model round − 2 (none for round 1: models/{r}.f32 are all kept).
   */
  private async aggregation(
    job: JobDocument,
    round: number,
    strategy: Strategy,
    dp: DifferentialPrivacy | undefined,
    secure = false,
  ): Promise<RoundAggregation> {
    const aggregator = jobAggregator(job.definition);
    let reference: Float32Array | undefined;
    if (aggregator?.rule === "centered-clip" && round >= 2) {
      const before = await this.repo.getModel(job.definition.jobId, round - 2);
      const now = strategy.weights;
      if (before && before.weights.length === now.length)
        reference = Float32Array.from(now, (w, i) => w - before.weights[i]!);
      else
        this.services.log(
          `round ${job.definition.jobId}/${round}: model ${round - 2} is missing: centered clipping around 0`,
        );
    }
    return beginRoundAggregation(strategy, round, {
      layoutHash: job.layoutHash,
      ...(dp ? { dp } : {}),
      ...(aggregator ? { aggregator } : {}),
      ...(reference ? { reference } : {}),
      // A secure round's devices were ordered to apply a `norm:C+mean` bound themselves (dispatch.ts).
      ...(secure && jobDeviceNormBound(job.definition) !== undefined ? { boundOnDevices: true } : {}),
      ...(job.definition.quality !== false ? { observe: true } : {}),
    });
  }

  /**
   * Ends a job whose global model is not finite (`message` names the round): the round is recorded `failed` with
   * code E_MODEL_DIVERGED, the job `failed` with stopReason "diverged", in one write; nothing is published, so
   * devices never download the model (a DP job keeping on would only spend budget at chance accuracy).
   */
  private async diverge(
    job: JobDocument,
    st: RoundState,
    now: number,
    message: string,
    actions: string[],
  ): Promise<void> {
    const d = job.definition;
    const stopMessage = `round ${st.round}: ${message}`;
    const orphans = await this.dropRoundChunks(d.jobId, st.round);
    const record: RoundRecord = {
      ...roundRecord(job, st, {
        bytes: Object.values(st.received).reduce((s, u) => s + u.bytes, 0),
        now,
        modelSha256: st.modelSha256,
        optimizerStateReset: false,
        code: DIVERGED,
      }),
      orphanChunksDeleted: orphans,
    };
    await this.repo.updateJob(d.jobId, (cur) =>
      cur.status !== "running" && cur.status !== "stopped"
        ? undefined
        : {
            ...cur,
            rounds: cur.rounds.some((x) => x.round === st.round) ? cur.rounds : [...cur.rounds, record],
            status: "failed",
            stopReason: "diverged",
            stopMessage,
            updatedAt: now,
          },
    );
    await this.apply(st, { type: "closed" });
    // nothing was aggregated, through no device's fault: those that delivered count as completed
    await this.roundSelectionDone(
      st,
      st.participants.map((p) => p.deviceId).filter((id) => st.received[id]?.kind === "result"),
    );
    this.strategies.delete(d.jobId);
    await this.releaseQuantizers(job);
    actions.push(`failed: ${stopMessage}`);
    this.services.log(`job ${d.jobId} failed (${DIVERGED}, diverged): ${stopMessage}`);
  }

  /**
   * A closed round's selection bookkeeping (selection.ts): the job's history learns who was picked, who delivered
   * (`completed`, with loss, samples, duration) and who timed out (the other participants); the round's device
   * leases are released. Failures are logged, never raised (the round is closed already).
   */
  private async roundSelectionDone(st: RoundState, completed: readonly string[]): Promise<void> {
    await recordRoundInHistory(this.services.store, st, completed, this.services.log).catch((e: Error) => {
      this.services.log(`round ${st.jobId}/${st.round}: selection history not updated: ${e.message}`);
    });
    await this.releaseLeases(
      st.jobId,
      st.round,
      st.participants.map((p) => p.deviceId),
    );
  }

  /**
   * After a round's quality record is committed: one log line per anomaly, exclusion and readmission, and the
   * excluded devices' twin tag (tags.flotilla.quality) written or, when their exclusion ended, removed. A twin
   * write that fails is logged (the exclusion itself holds: it is in the job document).
   */
  private async qualityDone(
    jobId: string,
    round: number,
    q: QualityRoundRecord,
    lastRound: boolean,
  ): Promise<void> {
    const log = this.services.log;
    for (const a of q.anomalies) log(`job ${jobId}: ${anomalyLine(a)}`);
    for (const e of q.newlyExcluded ?? []) {
      log(`job ${jobId}: ${exclusionLine(e)}`);
      if (lastRound) continue; // no round of the job is left to exclude it from: no tag
      const tag: QualityTag = {
        status: "excluded",
        reason: e.reason,
        job: jobId,
        round,
        since: e.since,
        until: e.until,
      };
      await this.services.fleet
        .setQualityTag(e.deviceId, jobId, tag)
        .catch((err: Error) => log(`job ${jobId}: quality tag of ${e.deviceId} not written: ${err.message}`));
    }
    // The job's last round ends every exclusion it holds.
    const ended = lastRound
      ? [...new Set([...(q.released ?? []), ...q.excluded.map((e) => e.deviceId)])]
      : (q.released ?? []);
    for (const id of ended) {
      log(
        `job ${jobId}: quality: device ${id} ${lastRound ? "no longer excluded (the job ended)" : `readmitted from round ${round + 1} (exclusion ended)`}`,
      );
      await this.services.fleet
        .setQualityTag(id, jobId, null)
        .catch((err: Error) => log(`job ${jobId}: quality tag of ${id} not removed: ${err.message}`));
    }
  }

  /**
   * Commits the round to the job document (with the DP state after it, in the same write), then marks its state
   * closed.
   */
  private async recordRound(
    job: JobDocument,
    st: RoundState,
    record: RoundRecord,
    dp?: DifferentialPrivacy,
    quality?: QualityRoundInput,
  ): Promise<void> {
    const d = job.definition;
    const now = record.closedAt;
    const completed = record.completed;
    const orphans = await this.dropRoundChunks(d.jobId, st.round);
    // Contribution quality: the round's anomalies and exclusions, computed from the document being written (an
    // ETag retry recomputes them from the fresh one) and committed with the round record.
    let q: QualityRoundRecord | undefined;
    const written = await this.repo.updateJob(d.jobId, (cur) => {
      if (cur.rounds.some((x) => x.round === st.round)) return undefined;
      const done = st.round >= cur.definition.rounds;
      const tracker = quality ? qualityTracker(cur, this.services.log) : undefined;
      q = undefined;
      if (tracker && quality) q = { excluded: tracker.excludedAt(st.round), ...tracker.observe(quality) };
      return {
        ...cur,
        rounds: [...cur.rounds, { ...record, orphanChunksDeleted: orphans, ...(q ? { quality: q } : {}) }],
        status: done && cur.status === "running" ? "completed" : cur.status,
        ...(dp && cur.dp ? { dp: { ...cur.dp, state: dp.exportState(), spent: spentOf(dp) } } : {}),
        ...(tracker ? { quality: tracker.toJSON() } : {}),
        updatedAt: now,
      };
    });
    if (q && written?.rounds.some((x) => x.round === st.round && x.quality === q))
      await this.qualityDone(d.jobId, st.round, q, st.round >= d.rounds);
    await this.apply(st, { type: "closed" });
    const failed = new Set(record.failures.map((f) => f.deviceId));
    await this.roundSelectionDone(
      st,
      st.participants.map((p) => p.deviceId).filter((id) => !failed.has(id)),
    );
    if (st.round >= d.rounds) {
      await this.releaseQuantizers(job);
      await this.orderFinalEvaluation(job, st.round);
    }
    this.services.log(
      `round ${d.jobId}/${st.round} closed: ${completed}/${st.participants.length} updates, model ${record.modelSha256.slice(0, 12)}`,
    );
  }
}

/**
 * The job document's record of a round — the one builder for every way a round ends: closed with the outcome of
 * core's close routine (core/round/close.ts), aborted (secure rounds, `code`), or diverged (no outcome: nothing was
 * aggregated, `code` E_MODEL_DIVERGED).
 */
function roundRecord(
  job: JobDocument,
  st: RoundState,
  r: {
    outcome?: RoundOutcome;
    bytes: number;
    now: number;
    modelSha256: string;
    optimizerStateReset: boolean;
    code?: string;
    secagg?: RoundRecord["secagg"];
    dp?: RoundRecord["dp"];
  },
): RoundRecord {
  const o = r.outcome;
  const completed = o ? o.completed.length : 0;
  const quorum = Math.ceil(job.definition.minCompletedFraction * st.participants.length);
  return {
    round: st.round,
    status: o?.status ?? "failed",
    participants: st.participants.length,
    completed,
    failures: o ? [...o.failures] : [],
    ...(o ? trainMetrics(o.metrics) : { trainLoss: null }),
    bytesReceived: r.bytes,
    durationMs: r.now - st.openedAt,
    belowQuorum: o ? completed < quorum : true,
    modelSha256: r.modelSha256,
    optimizerStateReset: r.optimizerStateReset,
    closedAt: r.now,
    ...(r.code ? { code: r.code } : {}),
    ...(st.selection
      ? { candidates: st.selection.candidates, policyExcluded: { ...st.selection.policyExcluded } }
      : {}),
    ...(o ? { sampleCountClipped: o.sampleCountClipped, sampleCountRejected: o.sampleCountRejected } : {}),
    ...(r.secagg ? { secagg: r.secagg } : {}),
    ...(r.dp ? { dp: r.dp } : {}),
    ...(o?.robust ? { robust: o.robust } : {}),
  };
}

/** The round record's training metrics (the strategy's, core/strategies/metrics.ts), in the record's JSON form. */
function trainMetrics(m: RoundMetrics): Pick<RoundRecord, "trainLoss" | "trainAccuracy"> {
  return {
    trainLoss: Number.isFinite(m.trainLoss) ? m.trainLoss : null,
    ...(Number.isFinite(m.trainAccuracy) ? { trainAccuracy: m.trainAccuracy } : {}),
  };
}

/** The job's DifferentialPrivacy with its persisted state; undefined without DP (or before its first round). */
function dpOf(job: JobDocument): DifferentialPrivacy | undefined {
  const o = job.definition.differentialPrivacy;
  if (!o || !job.dp) return undefined;
  const dp = new DifferentialPrivacy(
    dpOptionsOf(o, job.dp.fleetSize, job.definition.strategyOptions.clientsPerRound),
  );
  dp.importState(job.dp.state);
  return dp;
}

function spentOf(dp: DifferentialPrivacy): JobDpState["spent"] {
  const s = dp.spent();
  return { epsilon: s.epsilon, delta: s.delta, steps: s.steps };
}

function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/** Updates read ahead of the one being aggregated when a round closes. */
const UPDATE_READ_AHEAD = 8;

/**
 * Reads `ids` in order, keeping up to `window` reads in flight ahead of the consumer; `next(id)` must be called
 * for the ids in that order and returns that id's read.
 */
function prefetch<T>(
  ids: readonly string[],
  read: (id: string) => Promise<T>,
  window: number,
): { next(id: string): Promise<T> } {
  const pending: Promise<T>[] = [];
  let started = 0;
  let taken = 0;
  const fill = () => {
    while (started < ids.length && started - taken < window) {
      const p = read(ids[started++]);
      p.catch(() => undefined); // rejections are seen by next(); never unhandled while waiting in the window
      pending.push(p);
    }
  };
  fill();
  return {
    next(id: string): Promise<T> {
      if (ids[taken] !== id)
        return Promise.reject(new FlotillaError("E_INTERNAL", `prefetch: expected ${ids[taken]}, got ${id}`));
      const p = pending[taken];
      pending[taken++] = undefined as unknown as Promise<T>;
      fill();
      return p;
    },
  };
}
