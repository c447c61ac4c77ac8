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
import { decodeMessage, type Message, type SecAggFrame } from "../../../core/protocol/messages";
import { isFlotillaError } from "../../../core/errors";
import { isConflict } from "./store/blob-store";
import { JobRepository, paths, type JobDocument, type RoundState } from "./jobs/state";
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
  "ignored_other",
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
    this.repo = new JobRepository(services.store);
  }

  /** Handles a batch in order; returns how many events were accepted (stored or harmless duplicates). */
  async ingestEvents(events: readonly IngestEvent[]): Promise<{ accepted: number; rejected: number }> {
    const jobs = new Map<string, JobDocument | undefined>();
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
        await this.ingestOne(ev, jobs);
        accepted++;
      } catch (e) {
        rejected++;
        if (e instanceof Reject) {
          this.counters[e.counter]++;
          this.services.log(`ingest: rejected (${e.counter}): ${e.message}`);
        } else {
          this.counters.errors++;
          this.services.log(`ingest: error: ${e instanceof Error ? e.message : String(e)}`);
        }
      }
    }
    await Promise.all(this.pendingAcks.splice(0));
    return { accepted, rejected };
  }

  private async job(
    jobId: string,
    cache: Map<string, JobDocument | undefined>,
  ): Promise<JobDocument | undefined> {
    if (!cache.has(jobId)) cache.set(jobId, await this.repo.getJob(jobId));
    return cache.get(jobId);
  }

  private async ingestOne(ev: IngestEvent, jobs: Map<string, JobDocument | undefined>): Promise<void> {
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
    const job = await this.job(p.jobId, jobs);
    if (!job) throw new Reject("rejected_unknown_job", `unknown job '${p.jobId}'`);
    if (p.size > job.modelLength * 4 + HEADER_ALLOWANCE) {
      throw new Reject(
        "rejected_oversized",
        `update of ${p.size} bytes for a model of ${job.modelLength} values`,
      );
    }
    const round = await this.repo.getRound(p.jobId, p.round);
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
      throw new Reject(
        "late",
        `${p.jobId}/${p.round} is ${round.status} (job ${job.status}): update ${p.updateId}`,
      );
    }
    asReject(() => checkChunkBody(body, p));
    try {
      await this.services.store.put(paths.chunk(p.jobId, p.round, p.updateId, p.chunkIndex), body, {
        ifNoneMatch: "*",
      });
      this.counters.chunks_stored++;
    } catch (e) {
      if (!isConflict(e)) throw e;
      this.counters.duplicate_chunks++;
    }
    await this.tryComplete(p, job, round.secagg !== undefined);
  }

  private async tryComplete(p: ChunkProps, job: JobDocument, secure: boolean): Promise<void> {
    const store = this.services.store;
    const dir = paths.chunkDir(p.jobId, p.round, p.updateId);
    const names = await store.list(dir);
    if (names.length < p.chunkCount) return;
    // Reassemble one chunk at a time into one buffer of the announced size, checked against its size and sha256
    // (the wire contract). A chunk still missing was deleted by a concurrent completion, which finishes the update.
    const asm = new FrameAssembler(p);
    let frame: Uint8Array;
    try {
      for (let i = 0; i < p.chunkCount; i++) {
        const c = await store.get(paths.chunk(p.jobId, p.round, p.updateId, i));
        if (!c) return;
        asReject(() => asm.add(c.bytes));
      }
      frame = asReject(() => asm.finish());
    } catch (e) {
      if (e instanceof Reject) await this.dropChunks(names);
      throw e;
    }
    let msg: Message;
    try {
      msg = decodeMessage(frame);
    } catch (e) {
      await this.dropChunks(names);
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
      await this.dropChunks(names);
      throw new Reject("rejected_frame", `update ${p.updateId}: frame does not match its properties`);
    }
    if (msg.type === "secagg") return this.completeSecAgg(p, job, msg, frame, names);
    if (msg.type === "result" && secure) {
      // A plaintext update in a secure round (e.g. a trainer without secure aggregation) is never stored or used;
      // it is acknowledged so the device's queue lets it go, and the device counts as not having advertised.
      await this.dropChunks(names);
      await this.ack(p.deviceId, p.updateId);
      throw new Reject(
        "rejected_frame",
        `update ${p.updateId}: a plaintext result in secure round ${p.round}`,
      );
    }
    if (msg.type === "result") {
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
        await this.dropChunks(names);
        throw new Reject(
          "rejected_frame",
          `update ${p.updateId}: ${isFlotillaError(e) ? e.message : String(e)}`,
        );
      }
      if (layoutHash !== job.layoutHash || length !== job.modelLength) {
        await this.dropChunks(names);
        throw new Reject(
          "rejected_frame",
          `update ${p.updateId}: layout ${String(layoutHash).slice(0, 12)}/${length} values, ` +
            `job needs ${job.layoutHash.slice(0, 12)}/${job.modelLength}`,
        );
      }
      if (typeof msg.numSamples !== "number" || !(msg.numSamples > 0)) {
        await this.dropChunks(names);
        throw new Reject("rejected_frame", `update ${p.updateId}: numSamples ${String(msg.numSamples)}`);
      }
    }
    const updatePath = paths.update(p.jobId, p.round, p.deviceId);
    let stored = true;
    try {
      await store.put(updatePath, frame, { ifNoneMatch: "*" });
    } catch (e) {
      if (!isConflict(e)) throw e;
      stored = false; // an earlier (or concurrent) completion stored this device's update
    }
    const now = this.services.clock();
    let outcome = "duplicate" as "recorded" | "duplicate" | "late";
    await this.repo.updateRound(p.jobId, p.round, (cur: RoundState) => {
      const prev = cur.received[p.deviceId];
      if (prev) {
        outcome = "duplicate";
        return undefined;
      }
      if (cur.status !== "open") {
        outcome = "late";
        return undefined;
      }
      outcome = "recorded";
      const entry =
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
      return { ...cur, received: { ...cur.received, [p.deviceId]: entry } };
    });
    if (outcome === "late" && stored) await store.delete(updatePath);
    await this.dropChunks(names);
    if (outcome === "recorded") {
      this.counters[msg.type === "result" ? "updates_completed" : "failures_received"]++;
      this.services.log(`ingest: ${msg.type} ${p.updateId} from ${p.deviceId} for ${p.jobId}/${p.round}`);
    } else if (outcome === "duplicate") {
      this.counters.duplicate_updates++;
    }
    await this.ack(p.deviceId, p.updateId);
    if (outcome === "late")
      throw new Reject("late", `${p.jobId}/${p.round} closed while ${p.updateId} completed`);
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
      const expected =
        step === "advertise"
          ? sa.phase === "advertise" && cur.received[p.deviceId] === undefined
          : sa.phase === "mask" && (sa.u2 ?? []).includes(p.deviceId);
      if (cur.status !== "open" || !expected) {
        outcome = "late";
        return undefined;
      }
      outcome = "recorded";
      const receipt = {
        updateId: p.updateId,
        bytes: p.size,
        at: now,
        ...(step === "mask" && msg.numSamples !== undefined ? { numSamples: msg.numSamples } : {}),
        ...(step === "mask" && loss !== undefined ? { loss } : {}),
      };
      return {
        ...cur,
        secagg:
          step === "advertise"
            ? { ...sa, advertised: { ...sa.advertised, [p.deviceId]: receipt } }
            : { ...sa, masked: { ...sa.masked, [p.deviceId]: receipt } },
      };
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
