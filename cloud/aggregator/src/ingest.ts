/**
 * The Event Hub trigger's body: device-to-cloud chunks of update frames from the update-queue module
 * (docs/iothub-protocol.md, "update-queue → cloud"). Each event is checked, stored once, and when every chunk of
 * an update is in, the frame is reassembled, verified, stored as `updates/{deviceId}.frame` in its round, marked
 * received in the round state and acknowledged to the device.
 *
 * Never throws: a bad event is logged with its reason and counted. A store error on one event is counted as
 * `errors` and the batch goes on (the device resends unacknowledged updates, so nothing is lost for good).
 */
import { readEnvelope } from "../../../core/compress";
import {
  checkChunkBody,
  ChunkError,
  CONTENT_TYPE_PROPERTY,
  FLOTILLA_FRAME_CONTENT_TYPE,
  FrameAssembler,
  MAX_CHUNK_BYTES,
  parseChunkProperties,
  type ChunkMeta,
  type ChunkRejection,
} from "../../../core/protocol/chunks";
import {
  decodeMessage,
  MAX_EVALUATION_FRAME,
  type EvaluationFrame,
  type Message,
  type SecAggFrame,
} from "../../../core/protocol/messages";
import { errorCode, isFlotillaError } from "../../../core/errors";
import { foldEvaluations } from "../../../core/round/evaluation";
import { getJson, isConflict } from "./store/blob-store";
import { step as engineStep } from "../../../core/round/engine";
import {
  JobRepository,
  paths,
  type AsyncJobState,
  type JobDocument,
  type ReceivedUpdate,
  type RoundState,
} from "./jobs/state";
import { stepAsync } from "../../../core/round/async-engine";
import { pool, type EvaluateOrderRecord } from "./dispatch";
import type { AggregatorServices } from "./services";
import { secureExtraValues } from "./jobs/job";

/** An event as the Event Hub trigger delivers it (body + application properties + system properties). */
export interface IngestEvent {
  readonly body: unknown;
  readonly properties?: Readonly<Record<string, unknown>>;
  readonly systemProperties?: Readonly<Record<string, unknown>>;
}

export const INGEST_COUNTERS = [
  "events",
  "chunks_stored",
  "duplicate_chunks",
  "updates_completed",
  "duplicate_updates",
  "failures_received",
  "secagg_frames",
  "acks_sent",
  "acks_failed",
  "rejected_malformed",
  "rejected_oversized",
  "rejected_unknown_job",
  "rejected_not_participant",
  "rejected_hash",
  "rejected_device",
  "rejected_frame",
  "late",
  /** Updates (not chunks) that arrived after their round closed: acknowledged, not aggregated (sync policy). */
  "late_updates",
  /** Async jobs: updates trained from a version older than the job's maxStaleness (E_ASYNC_STALE). */
  "refused_stale",
  "ignored_other",
  /** Devices' evaluations of a published model (docs/evaluation.md): recorded, repeated, refused (E_EVAL_*). */
  "evaluations",
  "duplicate_evaluations",
  "rejected_evaluation",
  "errors",
] as const;
export type IngestCounter = (typeof INGEST_COUNTERS)[number];

/** The wire contract's largest chunk body (core/protocol/chunks.ts): IoT Hub's 256 KB less room for properties. */
export const MAX_CHUNK_BODY = MAX_CHUNK_BYTES;
/** Frame header allowance above the model's payload (JSON header + padding). */
const HEADER_ALLOWANCE = 64 * 1024;
/** An advertisement frame is a small JSON header (two X25519 keys, a signature, ids). */
const MAX_ADVERTISEMENT_FRAME = 16 * 1024;

type ChunkProps = ChunkMeta;

/** The counter of each reason the wire contract refuses a chunk for. */
const REJECTION_COUNTER: Readonly<Record<ChunkRejection, IngestCounter>> = {
  malformed: "rejected_malformed",
  oversized: "rejected_oversized",
  hash: "rejected_hash",
};

/** Store requests in flight at once while a batch completes (listings, chunk and update writes, deletes). */
const STORE_CONCURRENCY = 16;

/** An update whose chunks came in this batch: its properties (from its first chunk) and the bodies by index. */
interface PendingUpdate {
  readonly props: ChunkProps;
  readonly job: JobDocument;
  readonly secure: boolean;
  readonly bodies: Map<number, Uint8Array>;
}

/** What one batch has read and held: jobs and round states (read once each), updates by chunk directory. */
interface Batch {
  readonly jobs: Map<string, JobDocument | undefined>;
  readonly rounds: Map<string, RoundState | undefined>;
  /** Async jobs' states (read once each). */
  readonly asyncStates: Map<string, AsyncJobState | undefined>;
  readonly pending: Map<string, PendingUpdate>;
  /** Chunks earlier batches stored, by chunk directory. */
  readonly stored: Map<string, string[]>;
  /** Evaluation frames (one chunk each), recorded after the batch's updates. */
  readonly evaluations: PendingEvaluation[];
}

interface PendingEvaluation {
  readonly props: ChunkProps;
  readonly msg: EvaluationFrame;
}

/** A reassembled, checked update, ready to be recorded. */
interface Completed {
  readonly props: ChunkProps;
  readonly job: JobDocument;
  readonly msg: Exclude<Message, { type: "train" } | EvaluationFrame>;
  readonly frame: Uint8Array;
  /** Its chunks in the store (from earlier batches), deleted once it is recorded. */
  readonly storedNames: readonly string[];
}

class Reject extends Error {
  constructor(
    readonly counter: IngestCounter,
    reason: string,
  ) {
    super(reason);
  }
}

/**
 * The chunk's application properties, parsed and checked by the wire contract (core/protocol/chunks.ts: own
 * properties only, so an inherited value never stands in for a missing one). The Function's rounds start at 1.
 */
export function parseChunkProps(p: Readonly<Record<string, unknown>> | undefined): ChunkProps {
  const props = asReject(() => parseChunkProperties(p));
  if (props.round < 1) throw new Reject("rejected_malformed", `property 'round'=${props.round} is not >= 1`);
  return props;
}

/** Runs a contract check, turning its ChunkError into a Reject counted under the reason's counter. */
function asReject<T>(check: () => T): T {
  try {
    return check();
  } catch (e) {
    if (e instanceof ChunkError) throw new Reject(REJECTION_COUNTER[e.reason], e.message);
    throw e;
  }
}

function bodyBytes(body: unknown): Uint8Array {
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  throw new Reject("rejected_malformed", `body is ${body === null ? "null" : typeof body}, not binary`);
}

export class Ingestor {
  readonly counters: Record<IngestCounter, number> = Object.fromEntries(
    INGEST_COUNTERS.map((c) => [c, 0]),
  ) as Record<IngestCounter, number>;
  private readonly repo: JobRepository;

  constructor(private readonly services: AggregatorServices) {
    this.repo = new JobRepository(services.store, services.telemetry);
  }

  /**
   * Handles a batch; returns how many events were accepted (held for reassembly or harmless duplicates) and how many
   * were refused. Each event is checked in order; an update whose chunks are all in the batch is reassembled in
   * memory (its chunks are never written), one whose rest has not come yet has its chunks stored for a later batch,
   * and every update completed in the batch is recorded in its round state with one conditional write per round.
   */
  async ingestEvents(events: readonly IngestEvent[]): Promise<{ accepted: number; rejected: number }> {
    const batch: Batch = {
      jobs: new Map(),
      rounds: new Map(),
      asyncStates: new Map(),
      pending: new Map(),
      stored: new Map(),
      evaluations: [],
    };
    let accepted = 0;
    let rejected = 0;
    for (const ev of Array.isArray(events) ? events : []) {
      this.counters.events++;
      if (!isFlotillaEvent(ev)) {
        // Other telemetry on the same built-in endpoint (e.g. the profiler's uplink probe): not ours, not an error.
        this.counters.ignored_other++;
        continue;
      }
      try {
        await this.acceptChunk(ev, batch);
        accepted++;
      } catch (e) {
        rejected++;
        this.count(e);
      }
    }
    try {
      // An update refused when it completes was counted as accepted when its last chunk came.
      const refused = await this.completeBatch(batch);
      accepted -= refused;
      rejected += refused;
    } catch (e) {
      this.count(e);
    }
    try {
      const refused = await this.recordEvaluations(batch);
      accepted -= refused;
      rejected += refused;
    } catch (e) {
      this.count(e);
    }
    await Promise.all(this.pendingAcks.splice(0));
    return { accepted, rejected };
  }

  private count(e: unknown): void {
    if (e instanceof Reject) {
      this.counters[e.counter]++;
      this.services.log(`ingest: rejected (${e.counter}): ${e.message}`);
    } else {
      this.counters.errors++;
      this.services.log(`ingest: error: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  private async job(jobId: string, batch: Batch): Promise<JobDocument | undefined> {
    if (!batch.jobs.has(jobId)) batch.jobs.set(jobId, await this.repo.getJob(jobId));
    return batch.jobs.get(jobId);
  }

  /** The round state as the batch began (one read per round and batch; the recording write checks it again). */
  private async round(jobId: string, round: number, batch: Batch): Promise<RoundState | undefined> {
    const key = `${jobId}\u0000${round}`;
    if (!batch.rounds.has(key)) batch.rounds.set(key, await this.repo.getRound(jobId, round));
    return batch.rounds.get(key);
  }

  /** Checks one chunk event and holds its body for reassembly (or acknowledges a duplicate of a complete update). */
  private async acceptChunk(ev: IngestEvent, batch: Batch): Promise<void> {
    if (!ev || typeof ev !== "object") throw new Reject("rejected_malformed", "event is not an object");
    const p = parseChunkProps(ev.properties);
    const body = bodyBytes(ev.body);
    // Own property only: an inherited (polluted Object.prototype) value must never name the sender.
    const sys = ev.systemProperties;
    const sender =
      sys && Object.hasOwn(sys, "iothub-connection-device-id")
        ? sys["iothub-connection-device-id"]
        : undefined;
    if (sender !== p.deviceId) {
      throw new Reject("rejected_device", `chunk for '${p.deviceId}' sent by '${String(sender)}'`);
    }
    if (body.byteLength === 0 || body.byteLength > MAX_CHUNK_BODY) {
      throw new Reject("rejected_oversized", `chunk body of ${body.byteLength} bytes`);
    }
    const job = await this.job(p.jobId, batch);
    if (!job) throw new Reject("rejected_unknown_job", `unknown job '${p.jobId}'`);
    if (p.size > job.modelLength * 4 + HEADER_ALLOWANCE) {
      throw new Reject(
        "rejected_oversized",
        `update of ${p.size} bytes for a model of ${job.modelLength} values`,
      );
    }
    // An evaluation (docs/evaluation.md) is one small chunk about a published model, not an update of an open
    // round: it is told apart by its frame before the round checks below.
    if (p.chunkCount === 1 && p.size <= MAX_EVALUATION_FRAME) {
      const msg = await this.peekEvaluation(p, body);
      if (msg) {
        batch.evaluations.push({ props: p, msg });
        return;
      }
    }
    if (job.definition.mode === "async") return this.acceptAsyncChunk(p, body, job, batch);
    const round = await this.round(p.jobId, p.round, batch);
    if (!round || round.round > job.currentRound) {
      throw new Reject("rejected_malformed", `job '${p.jobId}' has no round ${p.round}`);
    }
    if (!round.participants.some((x) => x.deviceId === p.deviceId)) {
      throw new Reject(
        "rejected_not_participant",
        `'${p.deviceId}' is not a participant of ${p.jobId}/${p.round}`,
      );
    }
    if (
      round.received[p.deviceId]?.updateId === p.updateId ||
      round.secagg?.advertised[p.deviceId]?.updateId === p.updateId ||
      round.secagg?.masked[p.deviceId]?.updateId === p.updateId
    ) {
      // Already complete: the device did not get our ack. Acknowledge again.
      this.counters.duplicate_updates++;
      await this.ack(p.deviceId, p.updateId);
      return;
    }
    // A stopped job's open round keeps what arrives (acknowledged, so it must never be dropped): the round resumes
    // with it when the job starts again.
    if (round.status !== "open" || (job.status !== "running" && job.status !== "stopped")) {
      await this.ack(p.deviceId, p.updateId); // it can never be used: let the queue drop it
      if (p.chunkIndex === 0) this.counters.late_updates++; // once per update: its first chunk

      throw new Reject(
        "late",
        `${p.jobId}/${p.round} is ${round.status} (job ${job.status}): update ${p.updateId}`,
      );
    }
    asReject(() => checkChunkBody(body, p));
    const dir = paths.chunkDir(p.jobId, p.round, p.updateId);
    let u = batch.pending.get(dir);
    if (!u) {
      u = { props: p, job, secure: round.secagg !== undefined, bodies: new Map() };
      batch.pending.set(dir, u);
    }
    if (u.bodies.has(p.chunkIndex)) {
      this.counters.duplicate_chunks++;
      return;
    }
    u.bodies.set(p.chunkIndex, body);
  }

  /**
   * A chunk of an async job's update (docs/async.md): its round is the version it trained from plus one. Taken
   * when the device has an order for that version (in flight, or timed out but still waited for); an update
   * already in the buffer is acknowledged again; anything else can never be used and is acknowledged as late, so
   * the device's queue lets it go. Whether it is fresh enough is the engine's call when it completes.
   */
  private async acceptAsyncChunk(
    p: ChunkProps,
    body: Uint8Array,
    job: JobDocument,
    batch: Batch,
  ): Promise<void> {
    if (!batch.asyncStates.has(p.jobId)) batch.asyncStates.set(p.jobId, await this.repo.getAsync(p.jobId));
    const st = batch.asyncStates.get(p.jobId);
    if (!st) throw new Reject("rejected_malformed", `async job '${p.jobId}' has not started`);
    const e = st.engine;
    if (e.entries.some((x) => x.updateId === p.updateId)) {
      this.counters.duplicate_updates++;
      await this.ack(p.deviceId, p.updateId);
      return;
    }
    const base = p.round - 1;
    const ordered = e.inFlight[p.deviceId]?.baseVersion === base || e.expired[p.deviceId] === base;
    if (!ordered || (job.status !== "running" && job.status !== "stopped")) {
      await this.ack(p.deviceId, p.updateId);
      throw new Reject(
        "late",
        `${p.jobId}: update ${p.updateId} from '${p.deviceId}' trained from version ${base} is not awaited ` +
          `(version ${e.version}, job ${job.status})`,
      );
    }
    asReject(() => checkChunkBody(body, p));
    const dir = paths.chunkDir(p.jobId, p.round, p.updateId);
    let u = batch.pending.get(dir);
    if (!u) {
      u = { props: p, job, secure: false, bodies: new Map() };
      batch.pending.set(dir, u);
    }
    if (u.bodies.has(p.chunkIndex)) {
      this.counters.duplicate_chunks++;
      return;
    }
    u.bodies.set(p.chunkIndex, body);
  }

  /**
   * The batch's updates: reassembled (from the batch's chunks, and from chunks stored by earlier batches), checked
   * and recorded; the chunks of updates still incomplete are stored for a later batch. Returns how many of them
   * were refused on completion.
   */
  private async completeBatch(batch: Batch): Promise<number> {
    if (batch.pending.size === 0) return 0;
    const store = this.services.store;
    // One listing per round of what earlier batches stored (usually nothing: an update's chunks travel together).
    const rounds = new Map<string, { jobId: string; round: number }>();
    for (const u of batch.pending.values())
      rounds.set(`${u.props.jobId}\u0000${u.props.round}`, { jobId: u.props.jobId, round: u.props.round });
    await pool(
      [...rounds.values()].map(({ jobId, round }) => async () => {
        const prefix = paths.chunksOfRound(jobId, round);
        for (const name of await store.list(prefix)) {
          const slash = name.lastIndexOf("/");
          const dir = name.slice(0, slash + 1);
          const list = batch.stored.get(dir) ?? [];
          list.push(name);
          batch.stored.set(dir, list);
        }
      }),
      STORE_CONCURRENCY,
    );
    let refused = 0;
    const done: Completed[] = [];
    await pool(
      [...batch.pending].map(([dir, u]) => async () => {
        const storedNames = batch.stored.get(dir) ?? [];
        const storedAt = new Map<number, string>();
        for (const n of storedNames) {
          const i = Number(n.slice(dir.length));
          if (Number.isSafeInteger(i)) storedAt.set(i, n);
        }
        for (const i of u.bodies.keys())
          this.counters[storedAt.has(i) ? "duplicate_chunks" : "chunks_stored"]++;
        let complete = true;
        for (let i = 0; i < u.props.chunkCount && complete; i++)
          complete = u.bodies.has(i) || storedAt.has(i);
        if (!complete) {
          // Kept for a later batch: only the chunks not stored yet (first writer wins).
          for (const [i, body] of u.bodies) {
            if (storedAt.has(i)) continue;
            try {
              await store.put(paths.chunk(u.props.jobId, u.props.round, u.props.updateId, i), body, {
                ifNoneMatch: "*",
              });
            } catch (e) {
              if (!isConflict(e)) throw e;
            }
          }
          return;
        }
        try {
          done.push(await this.reassemble(u, storedAt, storedNames));
        } catch (e) {
          refused++;
          this.count(e);
        }
      }),
      STORE_CONCURRENCY,
    );
    // Secure frames are recorded one by one (their step's rules); results and failures with one write per round.
    const plain = new Map<string, Completed[]>();
    for (const c of done) {
      if (c.msg.type === "secagg") {
        try {
          await this.completeSecAgg(c.props, c.job, c.msg, c.frame, c.storedNames);
        } catch (e) {
          refused++;
          this.count(e);
        }
        continue;
      }
      const key = `${c.props.jobId}\u0000${c.props.round}`;
      plain.set(key, [...(plain.get(key) ?? []), c]);
    }
    for (const group of plain.values())
      refused +=
        group[0].job.definition.mode === "async"
          ? await this.recordAsyncUpdates(group)
          : await this.recordUpdates(group);
    return refused;
  }

  /** Assembles one update in chunkIndex order into one buffer of the announced size, and checks the frame. */
  private async reassemble(
    u: PendingUpdate,
    storedAt: ReadonlyMap<number, string>,
    storedNames: readonly string[],
  ): Promise<Completed> {
    const p = u.props;
    // Checked against its size and sha256 (the wire contract).
    const asm = new FrameAssembler(p);
    let frame: Uint8Array;
    try {
      for (let i = 0; i < p.chunkCount; i++) {
        let body = u.bodies.get(i);
        if (!body) {
          const c = await this.services.store.get(storedAt.get(i)!);
          if (!c) throw new Reject("errors", `update ${p.updateId}: stored chunk ${i} vanished`);
          body = c.bytes;
        }
        asReject(() => asm.add(body));
      }
      frame = asReject(() => asm.finish());
    } catch (e) {
      if (e instanceof Reject && e.counter !== "errors") await this.dropChunks(storedNames);
      throw e;
    }
    let msg: Message;
    try {
      msg = decodeMessage(frame);
    } catch (e) {
      await this.dropChunks(storedNames);
      throw new Reject(
        "rejected_frame",
        `update ${p.updateId}: ${isFlotillaError(e) ? e.message : String(e)}`,
      );
    }
    if (
      msg.type === "train" ||
      (msg.type === "secagg" && msg.direction !== "up") ||
      msg.jobId !== p.jobId ||
      msg.round !== p.round ||
      msg.deviceId !== p.deviceId
    ) {
      await this.dropChunks(storedNames);
      throw new Reject("rejected_frame", `update ${p.updateId}: frame does not match its properties`);
    }
    if (msg.type === "evaluation") {
      // Evaluations travel as one small chunk (peekEvaluation); a larger or split one is refused.
      await this.dropChunks(storedNames);
      await this.ack(p.deviceId, p.updateId);
      throw new Reject(
        "rejected_evaluation",
        `E_EVAL_INVALID: update ${p.updateId}: an evaluation frame of ${p.size} bytes in ${p.chunkCount} chunks`,
      );
    }
    if (msg.type === "secagg") return { props: p, job: u.job, msg, frame, storedNames };
    if (msg.type === "result" && u.secure) {
      // A plaintext update in a secure round (e.g. a trainer without secure aggregation) is never stored or used;
      // it is acknowledged so the device's queue lets it go, and the device counts as not having advertised.
      await this.dropChunks(storedNames);
      await this.ack(p.deviceId, p.updateId);
      throw new Reject(
        "rejected_frame",
        `update ${p.updateId}: a plaintext result in secure round ${p.round}`,
      );
    }
    if (msg.type === "result") {
      const job = u.job;
      let layoutHash = msg.layoutHash;
      let length: number;
      try {
        if (msg.delta instanceof Float32Array) length = msg.delta.length;
        else {
          // A compressed update: its envelope is checked (header, checksum, layout) now, decoded at aggregation.
          const info = readEnvelope(msg.delta.bytes);
          length = info.length;
          if (info.layoutHash !== msg.layoutHash) layoutHash = info.layoutHash;
        }
      } catch (e) {
        await this.dropChunks(storedNames);
        throw new Reject(
          "rejected_frame",
          `update ${p.updateId}: ${isFlotillaError(e) ? e.message : String(e)}`,
        );
      }
      if (layoutHash !== job.layoutHash || length !== job.modelLength) {
        await this.dropChunks(storedNames);
        throw new Reject(
          "rejected_frame",
          `update ${p.updateId}: layout ${String(layoutHash).slice(0, 12)}/${length} values, ` +
            `job needs ${job.layoutHash.slice(0, 12)}/${job.modelLength}`,
        );
      }
      if (typeof msg.numSamples !== "number" || !(msg.numSamples > 0)) {
        await this.dropChunks(storedNames);
        throw new Reject("rejected_frame", `update ${p.updateId}: numSamples ${String(msg.numSamples)}`);
      }
    }
    return { props: p, job: u.job, msg, frame, storedNames };
  }

  /**
   * Results and failure frames completed in one batch for one round: each frame stored as updates/{device}.frame
   * (first writer wins), then all of them recorded in the round's `received` with one conditional write (a round no
   * longer open takes none: they are late), then acknowledged. Returns how many were refused (late).
   */
  private async recordUpdates(group: readonly Completed[]): Promise<number> {
    const store = this.services.store;
    const { jobId, round } = group[0].props;
    const stored = new Map<Completed, boolean>();
    await pool(
      group.map((c) => async () => {
        try {
          await store.put(paths.update(jobId, round, c.props.deviceId), c.frame, { ifNoneMatch: "*" });
          stored.set(c, true);
        } catch (e) {
          if (!isConflict(e)) throw e;
          stored.set(c, false); // an earlier (or concurrent) completion stored this device's update
        }
      }),
      STORE_CONCURRENCY,
    );
    const now = this.services.clock();
    const outcome = new Map<Completed, "recorded" | "duplicate" | "late">();
    // The round engine decides what an arriving update does to the round (core/round/engine.ts, updateReceived):
    // recorded while the round is open, once per participant.
    await this.repo.updateRound(jobId, round, (cur: RoundState) => {
      outcome.clear();
      let st = cur;
      for (const c of group) {
        const p = c.props;
        const msg = c.msg as Exclude<Message, SecAggFrame | EvaluationFrame | { type: "train" }>;
        if (st.received[p.deviceId]) {
          outcome.set(c, "duplicate");
          continue;
        }
        const update: ReceivedUpdate =
          msg.type === "result"
            ? {
                updateId: p.updateId,
                kind: "result" as const,
                bytes: p.size,
                numSamples: msg.numSamples,
                loss: Number.isFinite(msg.metrics?.loss) ? msg.metrics.loss : undefined,
                at: now,
              }
            : {
                updateId: p.updateId,
                kind: "failure" as const,
                bytes: p.size,
                code: msg.code,
                reason: msg.reason,
                at: now,
              };
        const next = engineStep(st, { type: "updateReceived", deviceId: p.deviceId, update }).state;
        outcome.set(c, next === st ? "late" : "recorded");
        st = next;
      }
      return st === cur ? undefined : st;
    });
    let refused = 0;
    await pool(
      group.map((c) => async () => {
        const p = c.props;
        const o = outcome.get(c) ?? "duplicate";
        if (o === "late" && stored.get(c)) await store.delete(paths.update(jobId, round, p.deviceId));
        await this.dropChunks(c.storedNames);
        if (o === "recorded") {
          this.counters[c.msg.type === "result" ? "updates_completed" : "failures_received"]++;
          this.services.log(`ingest: ${c.msg.type} ${p.updateId} from ${p.deviceId} for ${jobId}/${round}`);
        } else if (o === "duplicate") {
          this.counters.duplicate_updates++;
        }
        await this.ack(p.deviceId, p.updateId);
        if (o === "late") {
          refused++;
          this.counters.late_updates++;
          this.count(new Reject("late", `${jobId}/${round} closed while ${p.updateId} completed`));
        }
      }),
      STORE_CONCURRENCY,
    );
    return refused;
  }
  /**
   * An async job's results and failure frames completed in one batch: each result stored as
   * async/updates/{updateId}.frame, then all of them fed to the async engine (core/round/async-engine.ts) in one
   * conditional write of the job's async state: a result joins the buffer with its staleness weight, or is refused
   * (E_ASYNC_STALE: trained from a version older than maxStaleness; counted by the engine and here as
   * `refused_stale`); a failure frees the device's slot. Everything is acknowledged. Returns how many were refused.
   */
  private async recordAsyncUpdates(group: readonly Completed[]): Promise<number> {
    const store = this.services.store;
    const { jobId } = group[0].props;
    await pool(
      group.map((c) => async () => {
        if (c.msg.type !== "result") return;
        try {
          await store.put(paths.asyncUpdate(jobId, c.props.updateId), c.frame, { ifNoneMatch: "*" });
        } catch (e) {
          if (!isConflict(e)) throw e;
        }
      }),
      STORE_CONCURRENCY,
    );
    const now = this.services.clock();
    const outcome = new Map<Completed, "recorded" | "duplicate" | "stale" | "late">();
    await this.repo.updateAsync(jobId, (cur: AsyncJobState) => {
      outcome.clear();
      let eng = cur.engine;
      for (const c of group) {
        const p = c.props;
        const msg = c.msg as Exclude<Message, SecAggFrame | EvaluationFrame | { type: "train" }>;
        if (msg.type === "result") {
          if (eng.entries.some((x) => x.updateId === p.updateId)) {
            outcome.set(c, "duplicate");
            continue;
          }
          const r = stepAsync(eng, {
            type: "updateReceived",
            deviceId: p.deviceId,
            baseVersion: p.round - 1,
            update: { updateId: p.updateId, numSamples: msg.numSamples, at: now },
          });
          const stale = r.decisions.some((x) => x.type === "refuse" && x.code === "E_ASYNC_STALE");
          outcome.set(
            c,
            r.state.entries.some((x) => x.updateId === p.updateId) ? "recorded" : stale ? "stale" : "late",
          );
          eng = r.state;
        } else {
          const next = stepAsync(eng, {
            type: "failure",
            deviceId: p.deviceId,
            baseVersion: p.round - 1,
            code: msg.code,
            reason: msg.reason,
            now,
          }).state;
          outcome.set(c, next === eng ? "late" : "recorded");
          eng = next;
        }
      }
      return eng === cur.engine ? undefined : { ...cur, engine: eng };
    });
    let refused = 0;
    await pool(
      group.map((c) => async () => {
        const p = c.props;
        const o = outcome.get(c) ?? "duplicate";
        if ((o === "late" || o === "stale") && c.msg.type === "result")
          await store.delete(paths.asyncUpdate(jobId, p.updateId));
        await this.dropChunks(c.storedNames);
        if (o === "recorded") {
          this.counters[c.msg.type === "result" ? "updates_completed" : "failures_received"]++;
          this.services.log(`ingest: async ${c.msg.type} ${p.updateId} from ${p.deviceId} for ${jobId}`);
        } else if (o === "duplicate") {
          this.counters.duplicate_updates++;
        }
        await this.ack(p.deviceId, p.updateId);
        if (o === "stale") {
          refused++;
          this.count(
            new Reject(
              "refused_stale",
              `E_ASYNC_STALE: ${jobId}: ${p.updateId} trained from version ${p.round - 1}`,
            ),
          );
        } else if (o === "late") {
          refused++;
          this.count(new Reject("late", `${jobId}: ${p.updateId} from '${p.deviceId}' is no longer awaited`));
        }
      }),
      STORE_CONCURRENCY,
    );
    return refused;
  }

  /**
   * A secure round's device frame (docs/iothub-protocol.md, "Secure aggregation"): the key advertisement (step 1)
   * or the masked input (step 3). Stored as rounds/{r}/secagg/{step}/{device}.frame and recorded in the round's
   * `secagg` state only while that step is open (a masked input after the mask step closed is late: the server
   * may already have asked for the device's mask key, and must never see both).
   */
  private async completeSecAgg(
    p: ChunkProps,
    job: JobDocument,
    msg: SecAggFrame,
    frame: Uint8Array,
    names: readonly string[],
  ): Promise<void> {
    const store = this.services.store;
    const refuse = async (reason: string): Promise<never> => {
      await this.dropChunks(names);
      throw new Reject("rejected_frame", `update ${p.updateId}: ${reason}`);
    };
    const step = msg.step;
    if (step !== "advertise" && step !== "mask")
      return refuse(`a device cannot send a secagg '${step}' frame`);
    const body = msg.body as Record<string, unknown> | null;
    if (
      typeof body !== "object" ||
      body === null ||
      body.jobId !== p.jobId ||
      body.round !== p.round ||
      body.deviceId !== p.deviceId
    ) {
      return refuse(`secagg ${step} body does not name ${p.jobId}/${p.round}/${p.deviceId}`);
    }
    if (step === "advertise") {
      if (msg.masked !== undefined) return refuse("an advertisement carries no payload");
      if (frame.byteLength > MAX_ADVERTISEMENT_FRAME)
        return refuse(`advertisement frame of ${frame.byteLength} bytes`);
    } else {
      // Under DP with adaptive clipping the device appends its clip indicator: one value more than the model.
      const expected = job.modelLength + secureExtraValues(job.definition);
      if (!(msg.masked instanceof Uint32Array) || msg.masked.length !== expected)
        return refuse(
          `masked input has ${msg.masked?.length ?? 0} values, the job's secure vector has ${expected}`,
        );
      if (msg.numSamples !== undefined && !(typeof msg.numSamples === "number" && msg.numSamples > 0))
        return refuse(`numSamples ${String(msg.numSamples)}`);
    }
    const blobPath = paths.secagg(p.jobId, p.round, step, p.deviceId);
    let stored = true;
    try {
      await store.put(blobPath, frame, { ifNoneMatch: "*" });
    } catch (e) {
      if (!isConflict(e)) throw e;
      stored = false;
    }
    const now = this.services.clock();
    let outcome = "duplicate" as "recorded" | "duplicate" | "late" | "not-secure";
    const loss = Number.isFinite(msg.metrics?.loss) ? msg.metrics?.loss : undefined;
    await this.repo.updateRound(p.jobId, p.round, (cur: RoundState) => {
      const sa = cur.secagg;
      if (!sa) {
        outcome = "not-secure";
        return undefined;
      }
      const got = step === "advertise" ? sa.advertised : sa.masked;
      if (got[p.deviceId]) {
        outcome = "duplicate";
        return undefined;
      }
      const receipt = {
        updateId: p.updateId,
        bytes: p.size,
        at: now,
        ...(step === "mask" && msg.numSamples !== undefined ? { numSamples: msg.numSamples } : {}),
        ...(step === "mask" && loss !== undefined ? { loss } : {}),
      };
      // The engine decides whether the frame is expected (core/round/engine.ts, secaggFrame): an advertisement
      // while advertising and before the device's failure frame, a masked input from a device in U2.
      const next = engineStep(cur, { type: "secaggFrame", step, deviceId: p.deviceId, receipt }).state;
      outcome = next === cur ? "late" : "recorded";
      return next === cur ? undefined : next;
    });
    if (outcome === "not-secure") {
      if (stored) await store.delete(blobPath);
      return refuse(`${p.jobId}/${p.round} is not a secure round`);
    }
    if (outcome === "late" && stored) await store.delete(blobPath);
    await this.dropChunks(names);
    if (outcome === "recorded") {
      this.counters.secagg_frames++;
      this.services.log(`ingest: secagg ${step} ${p.updateId} from ${p.deviceId} for ${p.jobId}/${p.round}`);
    } else if (outcome === "duplicate") {
      this.counters.duplicate_updates++;
    }
    await this.ack(p.deviceId, p.updateId);
    if (outcome === "late")
      throw new Reject(
        "late",
        `${p.jobId}/${p.round}: secagg ${step} ${p.updateId} arrived after its step closed`,
      );
  }

  /**
   * The evaluation frame a one-chunk update carries (checked by the wire contract: body hash, frame size and
   * sha256), or undefined when it is another frame (left to the update path). A frame that says `evaluation` but
   * is malformed (E_EVAL_*) or does not match its chunk properties is refused and acknowledged: it can never
   * become valid, so the device's queue must let it go.
   */
  private async peekEvaluation(p: ChunkProps, body: Uint8Array): Promise<EvaluationFrame | undefined> {
    asReject(() => checkChunkBody(body, p));
    const asm = new FrameAssembler(p);
    asReject(() => asm.add(body));
    const frame = asReject(() => asm.finish());
    let msg: Message;
    try {
      msg = decodeMessage(frame);
    } catch (e) {
      if (!errorCode(e).startsWith("E_EVAL_")) return undefined;
      await this.ack(p.deviceId, p.updateId);
      throw new Reject(
        "rejected_evaluation",
        `${errorCode(e)}: update ${p.updateId}: ${(e as Error).message}`,
      );
    }
    if (msg.type !== "evaluation") return undefined;
    if (msg.jobId !== p.jobId || msg.round !== p.round || msg.deviceId !== p.deviceId) {
      await this.ack(p.deviceId, p.updateId);
      throw new Reject(
        "rejected_evaluation",
        `E_EVAL_INVALID: update ${p.updateId}: evaluation of ${msg.jobId}/${msg.round} by '${msg.deviceId}' ` +
          `does not match its properties`,
      );
    }
    return msg;
  }

  /**
   * The batch's evaluations (docs/evaluation.md), per job and round: each device's first evaluation of round r's
   * model is kept in rounds/{r}/evaluations.json (one ETag-conditional write per round and batch; a repeat is
   * counted once), and round r's record gets the fold of all of them (core/round/evaluation.ts foldEvaluations),
   * written only when it covers more devices than the record's (the evaluations only grow, so an instance that
   * read fewer never overwrites a fuller fold). Refused, each with a code: a model the job never published
   * (E_EVAL_ROUND: no record of round r) and a device that was never sent it (E_EVAL_NOT_PARTICIPANT: not a
   * participant of round r + 1, whose order carried the model, nor ordered to evaluate it when no round followed,
   * as the last model of a completed job is: dispatch.ts orderFinalEvaluation; async jobs: never ordered from
   * version r on). Everything is acknowledged. Returns how many were refused.
   */
  private async recordEvaluations(batch: Batch): Promise<number> {
    const groups = new Map<string, PendingEvaluation[]>();
    for (const e of batch.evaluations) {
      const key = `${e.props.jobId}\u0000${e.props.round}`;
      groups.set(key, [...(groups.get(key) ?? []), e]);
    }
    let refused = 0;
    const refuse = async (e: PendingEvaluation, code: string, reason: string): Promise<void> => {
      refused++;
      await this.ack(e.props.deviceId, e.props.updateId);
      this.count(new Reject("rejected_evaluation", `${code}: ${e.props.jobId}/${e.props.round}: ${reason}`));
    };
    for (const group of groups.values()) {
      const { jobId, round } = group[0].props;
      let job = await this.job(jobId, batch);
      if (job && !job.rounds.some((r) => r.round === round)) job = await this.repo.getJob(jobId);
      if (!job || !job.rounds.some((r) => r.round === round)) {
        for (const e of group)
          await refuse(e, "E_EVAL_ROUND", `the job has published no model of round ${round}`);
        continue;
      }
      const sentTo = await this.modelReceivers(job, round, batch);
      const fresh: PendingEvaluation[] = [];
      for (const e of group) {
        if (sentTo(e.props.deviceId)) fresh.push(e);
        else
          await refuse(
            e,
            "E_EVAL_NOT_PARTICIPANT",
            `'${e.props.deviceId}' was never sent round ${round}'s model`,
          );
      }
      if (fresh.length === 0) continue;
      const now = this.services.clock();
      const outcome = new Map<PendingEvaluation, "recorded" | "duplicate">();
      const all = await this.repo.updateEvaluations(jobId, round, (cur) => {
        outcome.clear();
        const devices = { ...cur.devices };
        for (const e of fresh) {
          const id = e.props.deviceId;
          if (Object.hasOwn(devices, id)) {
            outcome.set(e, "duplicate");
            continue;
          }
          const { type: _t, v: _v, jobId: _j, ...evaluation } = e.msg;
          devices[id] = { ...evaluation, at: now };
          outcome.set(e, "recorded");
        }
        return [...outcome.values()].includes("recorded") ? { ...cur, devices } : undefined;
      });
      const fold = all ? foldEvaluations(round, Object.values(all.devices)) : undefined;
      if (fold) {
        await this.repo.updateJob(jobId, (cur) => {
          const rec = cur.rounds.find((r) => r.round === round);
          if (!rec || (rec.evaluation?.devices ?? 0) >= fold.devices) return undefined;
          return {
            ...cur,
            rounds: cur.rounds.map((r) => (r === rec ? { ...r, evaluation: fold } : r)),
            updatedAt: Math.max(cur.updatedAt, now),
          };
        });
      }
      for (const e of fresh) {
        if (outcome.get(e) === "recorded") {
          this.counters.evaluations++;
          this.services.log(
            `ingest: evaluation ${e.props.updateId} of ${jobId}/${round}'s model from ${e.props.deviceId}`,
          );
        } else this.counters.duplicate_evaluations++;
        await this.ack(e.props.deviceId, e.props.updateId);
      }
    }
    return refused;
  }

  /**
   * Who was sent round r's model: the participants of round r + 1, or without one the devices ordered to evaluate
   * it (`evaluate-order.json`) (sync); devices ordered since (async).
   */
  private async modelReceivers(
    job: JobDocument,
    round: number,
    batch: Batch,
  ): Promise<(deviceId: string) => boolean> {
    const jobId = job.definition.jobId;
    if (job.definition.mode === "async") {
      if (!batch.asyncStates.has(jobId)) batch.asyncStates.set(jobId, await this.repo.getAsync(jobId));
      const lastRound = batch.asyncStates.get(jobId)?.lastRound ?? {};
      return (id) => Object.hasOwn(lastRound, id) && lastRound[id] >= round + 1;
    }
    // The last model of a job goes to no round: the devices ordered to evaluate it (dispatch.ts
    // orderFinalEvaluation) were sent it.
    const next = await this.round(jobId, round + 1, batch);
    const ordered = next
      ? undefined
      : await getJson<EvaluateOrderRecord>(this.services.store, paths.evaluateOrder(jobId, round));
    return (id) =>
      (next?.participants.some((x) => x.deviceId === id) ?? false) ||
      (ordered?.value.devices.includes(id) ?? false);
  }

  private async dropChunks(names: readonly string[]): Promise<void> {
    for (const n of names) {
      try {
        await this.services.store.delete(n);
      } catch {
        // best effort: leftover chunks are harmless
      }
    }
  }

  /** Acks go out together at the end of the batch (concurrently), not one round trip per update. */
  private readonly pendingAcks: Promise<void>[] = [];

  private async ack(deviceId: string, updateId: string): Promise<void> {
    this.pendingAcks.push(
      this.services.fleet
        .ack(deviceId, [updateId])
        .catch(() => false)
        .then((ok) => {
          this.counters[ok ? "acks_sent" : "acks_failed"]++;
        }),
    );
  }
}

/** Messages marked with another flotilla content type (e.g. the profiler's uplink probe) are not updates. */
function isFlotillaEvent(ev: IngestEvent): boolean {
  const p = ev && typeof ev === "object" ? (ev.properties as Record<string, unknown> | undefined) : undefined;
  if (!p || typeof p !== "object") return true; // let validation reject it with a reason
  const kind = Object.hasOwn(p, CONTENT_TYPE_PROPERTY) ? p[CONTENT_TYPE_PROPERTY] : undefined;
  return kind === undefined || kind === FLOTILLA_FRAME_CONTENT_TYPE;
}
