/**
 * Asynchronous jobs (definition `mode: "async"`, docs/async.md) in the Function: FedBuff driven by the async engine
 * (core/round/async-engine.ts) from the timer tick, with the engine's state JSON in jobs/{id}/async/state.json
 * (ETag-conditional writes, like the synchronous round state). Each tick:
 *
 *   time passes       orders past their deadline time out (a late update from them still counts while fresh)
 *   flushing          the buffer holds K updates (the ingest recorded them): read each stored frame, aggregate
 *                     Σ n_k s(τ_k) Δ_k / Σ n_k through the strategy (core/round/close.ts, FitResult.discount)
 *                     — or the job's robust aggregator over the staleness-weighted updates (core/robust),
 *                     publish models/{v+1} (with its meta, strategy state and ONNX copies, as a closed round does),
 *                     record version v+1 in job.json (`rounds`, currentRound = v+1), then report `flushed`
 *   free slots        fewer than C devices in flight: pick eligible trainers (not in flight, not ordered from this
 *                     version already: a trainer never runs the same (job, round) twice) with the strategy's
 *                     draw, persist `ordered`, then write their orders (dispatch.ts dispatchAsyncOrders: round
 *                     v+1 from model v; the update-queue's openRounds = the oldest round still accepted)
 *
 * The job completes when `rounds` versions are published. A flush crashed half-way is redone by the next tick: the
 * state still says `flushing` with the same entries, and the aggregation of the same model and frames is the same.
 */
import { decodeMessage } from "../../../core/protocol/messages";
import { RoundCloser } from "../../../core/round/close";
import { qualityInput, type QualityRoundRecord } from "../../../core/robust/quality";
import {
  flushable,
  oldestAccepted,
  openAsync,
  stepAsync,
  type AsyncEvent,
  type BufferEntry,
} from "../../../core/round/async-engine";
import type {
  FitInstruction,
  RoundAggregation,
  RoundMetrics,
  Strategy,
} from "../../../core/strategies/strategy";
import { dispatchAsyncOrders } from "./dispatch";
import type { RoundSelection } from "../../../core/round/engine";
import {
  paths,
  type AsyncJobState,
  type JobDocument,
  type JobRepository,
  type ModelMeta,
  type RoundRecord,
} from "./jobs/state";
import type { AggregatorServices } from "./services";
import { qualityTracker } from "./selection";

/** What the async driver borrows from the orchestrator (models, strategies, eligibility). */
export interface AsyncHooks {
  ensureInitialModel(job: JobDocument, now: number): Promise<void>;
  strategyAt(job: JobDocument, version: number): Promise<{ strategy: Strategy; reset: boolean }>;
  publishModel(
    job: JobDocument,
    version: number,
    w: Float32Array,
    now: number,
    s: Strategy,
  ): Promise<ModelMeta>;
  /** After a flush: the strategy now holds model `version` (the orchestrator's cache). */
  cache(job: JobDocument, strategy: Strategy, version: number, sha256: string): void;
  /**
   * Up to `free` devices to order from `round`, each with its FitConfig: the job's selector over its cohort's
   * eligible trainers, without `exclude` and without devices another job holds; the picks are leased to the job
   * until `deadline` (plus the grace) and recorded as selected in the job's history.
   */
  pick(
    job: JobDocument,
    round: number,
    free: number,
    exclude: ReadonlySet<string>,
    now: number,
    deadline: number,
    downloadBytes: number,
  ): Promise<AsyncPicks>;
  /**
   * Version `version`'s aggregation from the strategy holding version − 1 (the orchestrator's chain,
   * core/round/aggregation.ts: the job's robust aggregator and centered clipping's reference).
   */
  aggregation(job: JobDocument, version: number, strategy: Strategy): Promise<RoundAggregation>;
  /** After a version's quality record is committed: its log lines and the excluded devices' twin tags. */
  qualityDone(jobId: string, version: number, q: QualityRoundRecord, last: boolean): Promise<void>;
  /** After a flush: the aggregated devices' leases are released and their completions recorded. */
  flushed(job: JobDocument, entries: readonly BufferEntry[], applied: ReadonlySet<string>): Promise<void>;
}

/** An async ordering pass's picks and what they were chosen from (RoundState's RoundSelection). */
export interface AsyncPicks {
  readonly picks: FitInstruction[];
  readonly selection: RoundSelection;
}

export const isAsync = (job: JobDocument): boolean => job.definition.mode === "async";

export class AsyncRounds {
  constructor(
    private readonly services: AggregatorServices,
    private readonly repo: JobRepository,
    private readonly hooks: AsyncHooks,
    private readonly concurrency: number,
  ) {}

  /** Advances a running async job as far as it can go now. */
  async tick(job: JobDocument, now: number, actions: string[]): Promise<void> {
    const d = job.definition;
    await this.hooks.ensureInitialModel(job, now);
    let s = await this.state(job);
    if (s.engine.paused) s = await this.apply(job, { type: "resumed", now });
    s = await this.apply(job, { type: "tick", now });
    for (let i = 0; i < 4 && s.engine.status === "flushing"; i++) {
      if (!(await this.flush(job, s, now, actions))) return;
      s = (await this.repo.getAsync(d.jobId)) ?? s;
    }
    if (s.engine.version >= d.rounds) {
      await this.repo.updateJob(d.jobId, (cur) =>
        cur.status === "running" ? { ...cur, status: "completed", updatedAt: now } : undefined,
      );
      return;
    }
    const free = s.engine.concurrency - Object.keys(s.engine.inFlight).length;
    if (free > 0 && s.engine.status === "running") await this.order(job, s, free, now, actions);
  }

  /** A stopped async job: nothing is ordered or flushed until it runs again (updates are still recorded). */
  async pause(job: JobDocument, now: number): Promise<void> {
    if (await this.repo.getAsync(job.definition.jobId)) await this.apply(job, { type: "paused", now });
  }

  private async state(job: JobDocument): Promise<AsyncJobState> {
    const d = job.definition;
    const cur = await this.repo.getAsync(d.jobId);
    if (cur) return cur;
    const a = d.async!;
    const fresh: AsyncJobState = {
      engine: openAsync({ jobId: d.jobId, ...a }),
      lastRound: {},
      quantizers: [],
    };
    await this.repo.createAsync(d.jobId, fresh);
    return (await this.repo.getAsync(d.jobId)) ?? fresh;
  }

  /** Applies one engine event to the persisted state (conditional write); returns the state after it. */
  private async apply(
    job: JobDocument,
    ev: AsyncEvent,
    more?: (s: AsyncJobState) => Partial<AsyncJobState>,
  ): Promise<AsyncJobState> {
    const id = job.definition.jobId;
    const out = await this.repo.updateAsync(id, (cur) => {
      const engine = stepAsync(cur.engine, ev).state;
      if (engine === cur.engine && !more) return undefined;
      return { ...cur, engine, ...(more ? more(cur) : {}) };
    });
    if (!out) throw new Error(`async state of ${id} is missing`);
    return out;
  }

  private async order(job: JobDocument, s: AsyncJobState, free: number, now: number, actions: string[]) {
    const d = job.definition;
    const e = s.engine;
    const version = e.version;
    const round = version + 1;
    const meta = await this.repo.getModelMeta(d.jobId, version);
    if (!meta) throw new Error(`model ${version} of ${d.jobId} is missing`);
    // Not twice from one version (a trainer runs a (job, round) once) and not while its update waits in the
    // buffer (one update per device and flush).
    const exclude = new Set([...Object.keys(e.inFlight), ...e.entries.map((x) => x.deviceId)]);
    for (const [id, r] of Object.entries(s.lastRound)) if (r >= round) exclude.add(id);
    const deadline = now + d.roundDeadlineSeconds * 1000;
    const downloadBytes = meta.downlink?.bytes ?? job.modelLength * 4;
    const { picks, selection } = await this.hooks.pick(
      job,
      round,
      free,
      exclude,
      now,
      deadline,
      downloadBytes,
    );
    if (picks.length === 0) return;
    const ids = picks.map((p) => p.deviceId);
    // Persisted before the orders go out: an update can only come for an order the state knows. The selection's
    // counts go with them (the next version's record carries the last ordering pass's).
    const after = await this.apply(
      job,
      { type: "ordered", devices: ids, baseVersion: version, now, deadline },
      (cur) => ({
        lastRound: { ...cur.lastRound, ...Object.fromEntries(ids.map((id) => [id, round])) },
        selection,
      }),
    );
    const { failed, configured } = await dispatchAsyncOrders(
      this.services,
      this.repo,
      job,
      {
        version,
        modelSha256: meta.sha256,
        deadline,
        orders: picks,
        oldestRound: oldestAccepted(after.engine) + 1,
        quantizers: new Set(after.quantizers),
      },
      this.concurrency,
    );
    for (const f of failed) {
      this.services.log(`async ${d.jobId}/${round}: order to ${f.deviceId} not written: ${f.reason}`);
      await this.apply(job, {
        type: "failure",
        deviceId: f.deviceId,
        baseVersion: version,
        code: f.code,
        reason: f.reason,
        now,
      });
    }
    if (configured.length > 0)
      await this.repo.updateAsync(d.jobId, (cur) => ({
        ...cur,
        quantizers: [...new Set([...cur.quantizers, ...configured])].sort(),
      }));
    actions.push(`async: ordered ${ids.length} device(s) from version ${version}`);
  }

  /** Aggregates the first K buffered updates into version v+1 and publishes it; false when the job stopped. */
  private async flush(job: JobDocument, s: AsyncJobState, now: number, actions: string[]): Promise<boolean> {
    const d = job.definition;
    const e = s.engine;
    const next = e.version + 1;
    const entries = flushable(e);
    const { strategy, reset } = await this.hooks.strategyAt(job, e.version);
    const closer = new RoundCloser({
      round: next,
      aggregation: await this.hooks.aggregation(job, next, strategy),
      samplePolicy: d,
      layoutHash: job.layoutHash,
      log: (line) => this.services.log(`async ${d.jobId}/${next}: ${line}`),
    });
    let bytes = 0;
    for (const x of entries) {
      const blob = await this.services.store.get(paths.asyncUpdate(d.jobId, x.updateId));
      if (!blob) {
        closer.fail(x.deviceId, "E_ROUND_MISSING", "stored update is missing");
        continue;
      }
      bytes += blob.bytes.byteLength;
      try {
        const msg = decodeMessage(blob.bytes);
        if (msg.type !== "result") throw new Error(`stored frame is a ${msg.type}`);
        closer.update({ ...msg, discount: x.weight });
      } catch (err) {
        closer.fail(x.deviceId, (err as { code?: string }).code ?? "E_ROUND_UPDATE", (err as Error).message);
      }
    }
    const out = closer.finish(entries.map((x) => x.deviceId));
    if (out.diverged !== undefined) {
      await this.repo.updateJob(d.jobId, (cur) =>
        cur.status === "running" || cur.status === "stopped"
          ? {
              ...cur,
              status: "failed",
              stopReason: "diverged",
              stopMessage: `version ${next}: ${out.diverged} (not published)`,
              updatedAt: now,
            }
          : undefined,
      );
      actions.push(`failed: version ${next} diverged`);
      return false;
    }
    const meta = await this.hooks.publishModel(job, next, out.weights, now, strategy);
    this.hooks.cache(job, strategy, next, meta.sha256);
    const applied = new Set(out.completed);
    const kept = entries.filter((x) => applied.has(x.deviceId));
    const started = job.rounds.at(-1)?.closedAt ?? job.createdAt;
    const record: RoundRecord = {
      round: next,
      status: out.status,
      participants: entries.length,
      completed: out.completed.length,
      failures: [...out.failures],
      ...trainMetrics(out.metrics),
      bytesReceived: bytes,
      durationMs: Math.max(0, now - started),
      belowQuorum: false,
      modelSha256: meta.sha256,
      optimizerStateReset: reset,
      closedAt: now,
      sampleCountClipped: out.sampleCountClipped,
      sampleCountRejected: out.sampleCountRejected,
      async: {
        applied: kept.map((x) => x.deviceId),
        staleness: kept.map((x) => x.staleness),
        counters: { ...e.counters, applied: e.counters.applied + entries.length },
      },
      ...(out.robust ? { robust: out.robust } : {}),
      ...(s.selection
        ? { candidates: s.selection.candidates, policyExcluded: { ...s.selection.policyExcluded } }
        : {}),
    };
    // Contribution quality, as a sync round records it: computed from the document being written (an ETag retry
    // recomputes it) and committed with the version's record.
    const observed = d.quality !== false ? qualityInput({ ...out, failures: out.failures }) : undefined;
    let q: QualityRoundRecord | undefined;
    const written = await this.repo.updateJob(d.jobId, (cur) => {
      if (cur.rounds.some((x) => x.round === next)) return undefined;
      const done = next >= cur.definition.rounds;
      const tracker = observed ? qualityTracker(cur, this.services.log) : undefined;
      q = undefined;
      if (tracker && observed) q = { excluded: tracker.excludedAt(next), ...tracker.observe(observed) };
      return {
        ...cur,
        rounds: [...cur.rounds, { ...record, ...(q ? { quality: q } : {}) }],
        currentRound: Math.max(cur.currentRound, next),
        status: done && cur.status === "running" ? "completed" : cur.status,
        ...(tracker ? { quality: tracker.toJSON() } : {}),
        updatedAt: now,
      };
    });
    if (q && written?.rounds.some((x) => x.round === next && x.quality === q))
      await this.hooks.qualityDone(d.jobId, next, q, next >= d.rounds);
    await this.apply(job, { type: "flushed", newVersion: next, now });
    await this.hooks.flushed(job, entries, applied).catch((e: Error) => {
      this.services.log(
        `async ${d.jobId}/${next}: selection bookkeeping not done (${e.message}); leases expire`,
      );
    });
    for (const x of entries) await this.services.store.delete(paths.asyncUpdate(d.jobId, x.updateId));
    actions.push(
      `async: published version ${next} (${kept.length} update(s), staleness ${record.async!.staleness.join(",")})`,
    );
    this.services.log(`async ${d.jobId}: version ${next} published from ${kept.length} update(s)`);
    return true;
  }
}

function trainMetrics(m: RoundMetrics): Pick<RoundRecord, "trainLoss" | "trainAccuracy"> {
  return {
    trainLoss: Number.isFinite(m.trainLoss) ? m.trainLoss : null,
    ...(Number.isFinite(m.trainAccuracy) ? { trainAccuracy: m.trainAccuracy } : {}),
  };
}
