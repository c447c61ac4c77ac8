import { FlotillaError, fail, isFlotillaError } from "../../../core/errors";
import {
  checkChunkBody,
  checkChunkMeta,
  checkFrame as checkFrameHash,
  checkFrameMeta,
  DEFAULT_CHUNK_BYTES,
  deriveUpdateId,
  isChunkSize,
  MAX_CHUNK_BYTES,
  MAX_ID_BYTES,
  sameUpdate,
  sha256Hex,
  splitFrame,
  type ChunkErrorCodes,
  type ChunkMeta,
  CONTENT_TYPE_PROPERTY,
} from "../../../core/protocol/chunks";
import { decodeMessage, EVALUATION_UPDATE_ID_PREFIX } from "../../../core/protocol/messages";
import { openSqlite, queueError, type SqliteDatabase, type SqliteStatement } from "./sqlite";
import {
  inspectQueueFile,
  prepareQueueFiles,
  quarantineFiles,
  writeMarker,
  type QuarantineReport,
} from "./queue-file";

export type { QuarantineReport };

/**
 * The update-queue's durable outbox: every update the trainer hands over is stored in a SQLite file before the
 * trainer's message is acknowledged, then cut into device-to-cloud sized chunks, sent, resent until the cloud
 * acknowledges it, and finally forgotten. The trainer sends big updates as several input messages
 * (docs/iothub-protocol.md): `stageChunk` stores each one as it arrives and turns the update into a queued one,
 * atomically, when its last chunk is in and the whole matches its sha256.
 *
 * Durability. The file runs in WAL mode with `synchronous=FULL`: each commit appends to the write-ahead log and
 * fsyncs it before `enqueue` returns, so an update whose enqueue returned survives a process crash *and* a power
 * cut (with `synchronous=NORMAL` WAL commits are only synced at checkpoints: the database stays consistent after
 * a power cut but the last commits may be gone, which would lose updates the trainer was already told were safe).
 * Every mutation is one transaction, so a crash mid-enqueue leaves either the whole update or nothing. The file is
 * opened with `locking_mode=EXCLUSIVE`, so a second process (or a second Outbox) on the same file fails with
 * E_QUEUE_LOCKED instead of interleaving writes; with an exclusive lock WAL needs no shared-memory file.
 *
 * Damage and full disks. The file is checked at open (./queue-file.ts, then `PRAGMA quick_check`) and a damaged one
 * — or one that reports SQLITE_CORRUPT / SQLITE_NOTADB later — is quarantined and replaced by a fresh queue
 * (`onQuarantine`). On SQLITE_FULL the send bookkeeping falls back to memory (`beginAttempt`) so the queue drains.
 *
 * Chunks. The wire contract — property names, id rules, the size limits (MAX_CHUNK_BYTES = 256 KB less one 4 KB
 * meter unit for properties; default 255,000 bytes, billed 63 units) and the hash checks — is core/protocol/chunks.ts,
 * shared with the trainer, the quantizer and the Function. `maxChunkBytes` may be set from 1 to MAX_CHUNK_BYTES.
 */

export {
  CONTENT_TYPE_PROPERTY,
  D2C_MAX_MESSAGE_BYTES,
  FLOTILLA_FRAME_CONTENT_TYPE,
  MAX_CHUNK_BYTES,
  PROPERTY_RESERVE_BYTES,
} from "../../../core/protocol/chunks";
export { deriveUpdateId };
export const DEFAULT_MAX_CHUNK_BYTES = DEFAULT_CHUNK_BYTES;

/** The contract's rejections (core/protocol/chunks.ts) under the update-queue's stable codes. */
const CODES: ChunkErrorCodes = {
  malformed: "E_QUEUE_INVALID",
  oversized: "E_QUEUE_INVALID",
  hash: "E_QUEUE_CHECKSUM",
};

const DEFAULTS = {
  maxChunkBytes: DEFAULT_MAX_CHUNK_BYTES,
  /** Bytes of unacknowledged updates kept (the capacity); a new update that does not fit is refused (E_QUEUE_FULL). */
  maxBytes: 256 * 1024 * 1024,
  /** Acked/dropped updates remembered (without their bodies) so a late duplicate enqueue stays a no-op. */
  tombstoneLimit: 10_000,
  /** Freed pages (4 KB each) tolerated before the file is shrunk with an incremental vacuum. */
  vacuumPages: 1024,
  /** How long to wait for a lock held elsewhere before E_QUEUE_LOCKED, in ms. */
  lockTimeoutMs: 200,
  /** A partly received update whose last chunk came in longer ago than this is given up, in ms (edgeHub keeps
   * undelivered messages for 2 h by default, so by then no missing chunk can still arrive). */
  stagingTtlMs: 24 * 3600_000,
};

const SCHEMA_VERSION = 1;

export type UpdateState = "pending" | "sent" | "acked" | "dropped";
/** `overflow`: files written before the capacity refused new updates instead of dropping the oldest ones. */
export type DropReason = "closed_round" | "overflow" | "corrupt" | "expired";

export interface UpdateMeta {
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  /** Caller-chosen id ([A-Za-z0-9_:-], ≤ 100 chars); the first 32 hex digits of the sha256 when absent. */
  readonly updateId?: string;
}

/** One input message of an update the trainer split up: the chunk properties of core/protocol/chunks.ts. */
export type InputChunkMeta = ChunkMeta;

export interface StageResult {
  readonly updateId: string;
  /** True once the whole update is queued (this chunk completed it, or it was queued before). */
  readonly complete: boolean;
  /** Chunks of the update received so far. */
  readonly received: number;
  readonly chunkCount: number;
}

export interface OutboxOptions {
  /** Body bytes per chunk (1 … MAX_CHUNK_BYTES); default 255,000. */
  maxChunkBytes?: number;
  /** The capacity: bytes of unacknowledged updates kept (default 256 MiB); `setCapacityBytes` changes it. */
  maxBytes?: number;
  tombstoneLimit?: number;
  /** Check that every frame is a well-formed FLT1 `result`/`failure`/up `secagg` frame agreeing with its meta; default true. */
  validateFrames?: boolean;
  lockTimeoutMs?: number;
  stagingTtlMs?: number;
  /** Clock in ms since the epoch; injectable for tests. */
  now?: () => number;
  /** Called when a damaged queue file was moved aside and a fresh queue started (at open or while running). */
  onQuarantine?: (report: QuarantineReport) => void;
}

/** Application properties of one chunk. Values are strings because the IoT Hub property bag is string-only. */
export interface ChunkProperties extends Record<string, string> {
  jobId: string;
  round: string;
  deviceId: string;
  updateId: string;
  chunkIndex: string;
  chunkCount: string;
  /** Byte length of the whole update, so the receiver can preallocate. */
  size: string;
  /** sha256 (hex) of the whole update: the receiver checks the reassembled bytes against it. */
  sha256: string;
  /** sha256 (hex) of this chunk's body. */
  chunkSha256: string;
  [CONTENT_TYPE_PROPERTY]: string;
}

export interface OutboxChunk {
  readonly body: Buffer;
  readonly properties: ChunkProperties;
  /** `{updateId}:{chunkIndex}`: what the cloud deduplicates on. */
  readonly messageId: string;
}

export interface UpdateInfo {
  readonly updateId: string;
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  readonly sha256: string;
  readonly size: number;
  readonly state: UpdateState;
  readonly dropReason: DropReason | null;
  /** Send attempts started (including resumed ones). */
  readonly attempts: number;
  /** Times every chunk went out. */
  readonly sentCount: number;
  /** First chunk the next attempt starts from (progress of an interrupted attempt). */
  readonly nextChunk: number;
  readonly enqueuedAt: number;
  readonly lastAttemptAt: number | null;
  /** When the last complete send finished; the resend timer runs from here. */
  readonly sentAt: number | null;
}

export type CounterName =
  | "enqueued"
  | "duplicates"
  | "sent_chunks"
  | "sent_updates"
  | "resent"
  | "acked"
  | "dropped_closed"
  | "dropped_overflow"
  | "dropped_corrupt"
  | "dropped_expired"
  | "staged_chunks"
  | "rejected"
  | "dropped_staged";

export const COUNTER_NAMES: readonly CounterName[] = [
  "enqueued",
  "duplicates",
  "sent_chunks",
  "sent_updates",
  "resent",
  "acked",
  "dropped_closed",
  "dropped_overflow",
  "dropped_corrupt",
  "dropped_expired",
  "staged_chunks",
  "rejected",
  "dropped_staged",
];

export interface OutboxStats {
  /** Updates not yet acknowledged (pending + sent). */
  readonly depth: number;
  readonly pending: number;
  /** Sent completely, awaiting the cloud's ack. */
  readonly awaitingAck: number;
  readonly bytesPending: number;
  /** Updates of which some but not all input chunks have arrived, and their bytes so far. */
  readonly stagedUpdates: number;
  readonly stagedBytes: number;
  readonly counters: Readonly<Record<CounterName, number>>;
}

/** What an attempt to send an update starts from (see `beginAttempt`). */
export interface AttemptPlan {
  readonly chunks: readonly OutboxChunk[];
  readonly startChunk: number;
  readonly attempt: number;
}

interface UpdateRow {
  seq: number;
  update_id: string;
  job_id: string;
  round: number;
  device_id: string;
  sha256: string;
  size: number;
  state: UpdateState;
  drop_reason: DropReason | null;
  attempts: number;
  sent_count: number;
  next_chunk: number;
  chunk_bytes: number;
  enqueued_at: number;
  last_attempt_at: number | null;
  sent_at: number | null;
}

const ROW_COLUMNS = `seq, update_id, job_id, round, device_id, sha256, size, state, drop_reason, attempts, sent_count,
  next_chunk, chunk_bytes, enqueued_at, last_attempt_at, sent_at`;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS updates (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  update_id TEXT NOT NULL UNIQUE,
  job_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  device_id TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  body BLOB,
  state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'acked', 'dropped')),
  drop_reason TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  sent_count INTEGER NOT NULL DEFAULT 0,
  next_chunk INTEGER NOT NULL DEFAULT 0,
  chunk_bytes INTEGER NOT NULL DEFAULT 0,
  enqueued_at INTEGER NOT NULL,
  last_attempt_at INTEGER,
  sent_at INTEGER,
  settled_at INTEGER
);
CREATE INDEX IF NOT EXISTS updates_by_state ON updates (state, seq);
CREATE INDEX IF NOT EXISTS updates_by_round ON updates (job_id, round);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS staged_chunks (
  update_id TEXT NOT NULL,
  chunk_index INTEGER NOT NULL,
  chunk_count INTEGER NOT NULL,
  job_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  device_id TEXT NOT NULL,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  body BLOB NOT NULL,
  received_at INTEGER NOT NULL,
  PRIMARY KEY (update_id, chunk_index)
);
CREATE INDEX IF NOT EXISTS staged_by_round ON staged_chunks (job_id, round);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

const LIVE = "state IN ('pending', 'sent')";

/** Send bookkeeping of one update held in memory while the disk is full. */
interface VolatileAttempt {
  state: "pending" | "sent";
  nextChunk: number;
  chunkBytes: number;
  attempts: number;
  sentAt: number | null;
}

/** quick_check found damage inside an intact header. */
class CorruptFileError extends Error {
  readonly code = "SQLITE_CORRUPT";
}

/** A SQLite error that means the file itself is damaged (extended codes such as SQLITE_CORRUPT_INDEX too). */
function isCorruption(e: unknown): boolean {
  if (isFlotillaError(e)) return false; // a row failing its own sha256 is one damaged update, not the file
  const code = typeof e === "object" && e !== null ? (e as { code?: unknown }).code : undefined;
  return typeof code === "string" && (code.startsWith("SQLITE_CORRUPT") || code === "SQLITE_NOTADB");
}

/** Unacknowledged and partly received updates in an open database (throws if the pages cannot be read). */
function countLive(db: SqliteDatabase): number {
  const live = db.prepare(`SELECT COUNT(*) AS n FROM updates WHERE ${LIVE}`).get() as { n: number };
  const staged = db.prepare(`SELECT COUNT(DISTINCT update_id) AS n FROM staged_chunks`).get() as {
    n: number;
  };
  return Number(live.n) + Number(staged.n);
}

/** countLive on a damaged file that would not open normally, read-only; "unknown" if it cannot be read at all. */
function countLiveReadOnly(file: string): number | "unknown" {
  let db: SqliteDatabase | undefined;
  try {
    db = openSqlite(file, { readonly: true, fileMustExist: true });
    return countLive(db);
  } catch {
    return "unknown";
  } finally {
    try {
      db?.close();
    } catch {
      // best effort
    }
  }
}

export class Outbox {
  readonly file: string;
  private db!: SqliteDatabase;
  private readonly now: () => number;
  private readonly validateFrames: boolean;
  private maxBytes: number;
  private readonly tombstoneLimit: number;
  private chunkBytes: number;
  private stmt!: Record<string, SqliteStatement>;
  private readonly stagingTtlMs: number;
  private enqueueTx!: (frame: Buffer, meta: UpdateMeta, sha: string, updateId: string) => string;
  private stageTx!: (body: Buffer, meta: InputChunkMeta) => StageResult | { rejected: FlotillaError };
  private readonly lockTimeoutMs: number;
  private readonly onQuarantine: ((report: QuarantineReport) => void) | undefined;
  /** The last time a damaged queue file was moved aside (reported by the module), or null. */
  quarantined: QuarantineReport | null = null;
  /**
   * Send bookkeeping kept in memory when the disk is full (see beginAttempt), by update id: it overrides the stored
   * state until a later write succeeds. Lost on a restart, which only means an update is sent again.
   */
  private readonly volatile = new Map<string, VolatileAttempt>();

  constructor(file: string, options: OutboxOptions = {}) {
    this.file = file;
    this.now = options.now ?? Date.now;
    this.validateFrames = options.validateFrames ?? true;
    this.chunkBytes = checkChunkBytes(options.maxChunkBytes ?? DEFAULTS.maxChunkBytes);
    this.maxBytes = positiveInt(options.maxBytes ?? DEFAULTS.maxBytes, "maxBytes");
    this.tombstoneLimit = nonNegativeInt(options.tombstoneLimit ?? DEFAULTS.tombstoneLimit, "tombstoneLimit");
    this.stagingTtlMs = positiveInt(options.stagingTtlMs ?? DEFAULTS.stagingTtlMs, "stagingTtlMs");
    this.lockTimeoutMs = nonNegativeInt(options.lockTimeoutMs ?? DEFAULTS.lockTimeoutMs, "lockTimeoutMs");
    this.onQuarantine = options.onQuarantine;
    this.openQueue();
  }

  /**
   * Opens the queue file, checking it first (./queue-file.ts: marker, header; then `PRAGMA quick_check`). A damaged
   * file is quarantined and a fresh queue started in its place; any other failure throws a coded error.
   */
  private openQueue(): void {
    const file = this.file;
    let damage: string | null;
    try {
      damage = inspectQueueFile(file, prepareQueueFiles(file));
    } catch (e) {
      throw new FlotillaError("E_QUEUE_OPEN", `preparing ${file}: ${(e as Error).message}`);
    }
    if (damage) this.quarantine(damage, "unknown");
    try {
      this.openDb();
    } catch (e) {
      if (!isCorruption(e)) throw queueError(e, `opening ${file}`);
      this.quarantine(`${(e as Error).message}`, countLiveReadOnly(file));
      this.openDb();
    }
    try {
      writeMarker(file, this.now());
    } catch (e) {
      this.close();
      throw new FlotillaError("E_QUEUE_OPEN", `writing the marker of ${file}: ${(e as Error).message}`);
    }
  }

  /** Moves the damaged file aside and reports it; the caller opens a fresh queue. */
  private quarantine(reason: string, lostUpdates: number | "unknown"): void {
    this.volatile.clear();
    let movedTo: string | null;
    try {
      movedTo = quarantineFiles(this.file, this.now());
      prepareQueueFiles(this.file);
    } catch (e) {
      throw new FlotillaError(
        "E_QUEUE_CORRUPT",
        `the queue file ${this.file} is damaged (${reason}) and cannot be moved aside: ${(e as Error).message}`,
      );
    }
    const report: QuarantineReport = {
      file: this.file,
      movedTo,
      at: new Date(this.now()).toISOString(),
      reason,
      lostUpdates,
    };
    this.quarantined = report;
    this.onQuarantine?.(report);
  }

  /**
   * A corruption error while running (SQLITE_CORRUPT / SQLITE_NOTADB): count what is lost (best effort), close,
   * quarantine and start a fresh queue. Failures to reopen leave the outbox closed: every call then fails coded.
   */
  private recoverFromCorruption(reason: string): void {
    let lost: number | "unknown" = "unknown";
    try {
      lost = countLive(this.db);
    } catch {
      // The damage may be in the very pages the count reads.
    }
    try {
      if (this.db.open) this.db.close();
    } catch {
      // Closing a damaged database may fail; the file is moved aside either way.
    }
    this.quarantine(reason, lost);
    this.openDb();
    writeMarker(this.file, this.now());
  }

  private openDb(): void {
    const file = this.file;
    let db: SqliteDatabase | undefined;
    try {
      db = openSqlite(file, { timeout: this.lockTimeoutMs });
      // Order matters: the exclusive lock before WAL (so no -shm file is needed), auto_vacuum before any table.
      db.pragma("locking_mode = EXCLUSIVE");
      const version = Number(db.pragma("user_version", { simple: true }));
      if (version > SCHEMA_VERSION) {
        fail(
          "E_QUEUE_SCHEMA",
          `queue file ${file} has schema ${version}; this build reads up to ${SCHEMA_VERSION}`,
        );
      }
      if (version === 0) db.pragma("auto_vacuum = INCREMENTAL");
      const mode = String(db.pragma("journal_mode = WAL", { simple: true }));
      if (mode.toLowerCase() !== "wal")
        fail("E_QUEUE_OPEN", `queue file ${file} refused WAL mode (got ${mode})`);
      // Damaged pages inside an intact header: found here, not when the sender first reads them.
      const check = db.pragma("quick_check", { simple: true });
      if (check !== "ok") throw new CorruptFileError(`quick_check: ${String(check)}`);
      db.pragma("synchronous = FULL");
      // Keep the log from growing without bound after a burst of multi-MB updates (bytes).
      db.pragma("journal_size_limit = 67108864");
      db.exec(SCHEMA);
      if (version === 0) db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } catch (e) {
      try {
        if (db?.open) db.close();
      } catch {
        // As above.
      }
      throw e;
    }
    this.db = db;
    this.stmt = {
      find: db.prepare(`SELECT ${ROW_COLUMNS} FROM updates WHERE update_id = ?`),
      body: db.prepare(`SELECT ${ROW_COLUMNS}, body FROM updates WHERE update_id = ? AND ${LIVE}`),
      insert: db.prepare(
        `INSERT INTO updates (update_id, job_id, round, device_id, sha256, size, body, state, enqueued_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)`,
      ),
      liveBytes: db.prepare(`SELECT COALESCE(SUM(size), 0) AS bytes FROM updates WHERE ${LIVE}`),
      expired: db.prepare(
        `SELECT ${ROW_COLUMNS} FROM updates WHERE ${LIVE} AND enqueued_at < ? ORDER BY seq`,
      ),
      count: db.prepare(
        `INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value`,
      ),
      counters: db.prepare(`SELECT name, value FROM counters`),
      ack: db.prepare(
        `UPDATE updates SET state = 'acked', body = NULL, settled_at = ? WHERE update_id = ? AND ${LIVE}`,
      ),
      dropClosed: db.prepare(
        `UPDATE updates SET state = 'dropped', drop_reason = 'closed_round', body = NULL, settled_at = ?
         WHERE job_id = ? AND round < ? AND ${LIVE} AND update_id NOT LIKE '${EVALUATION_UPDATE_ID_PREFIX}%'`,
      ),
      dropId: db.prepare(
        `UPDATE updates SET state = 'dropped', drop_reason = ?, body = NULL, settled_at = ?
         WHERE update_id = ? AND ${LIVE}`,
      ),
      live: db.prepare(`SELECT ${ROW_COLUMNS} FROM updates WHERE ${LIVE} ORDER BY seq`),
      due: db.prepare(
        `SELECT ${ROW_COLUMNS} FROM updates
         WHERE (state = 'pending' OR (state = 'sent' AND sent_at <= ?)) AND size <= ? ORDER BY seq LIMIT ?`,
      ),
      nextResend: db.prepare(`SELECT MIN(sent_at) AS t FROM updates WHERE state = 'sent' AND size <= ?`),
      begin: db.prepare(
        `UPDATE updates SET state = 'pending', attempts = attempts + 1, last_attempt_at = ?, next_chunk = ?,
         chunk_bytes = ? WHERE update_id = ?`,
      ),
      writeBack: db.prepare(
        `UPDATE updates SET state = 'pending', attempts = MAX(attempts, ?), chunk_bytes = ?
         WHERE update_id = ? AND ${LIVE}`,
      ),
      chunkSent: db.prepare(
        `UPDATE updates SET next_chunk = ? WHERE update_id = ? AND state = 'pending' AND chunk_bytes = ?`,
      ),
      markSent: db.prepare(
        `UPDATE updates SET state = 'sent', sent_at = ?, sent_count = sent_count + 1, next_chunk = 0
         WHERE update_id = ? AND state = 'pending'`,
      ),
      requeue: db.prepare(`UPDATE updates SET state = 'pending', next_chunk = 0 WHERE state = 'sent'`),
      stateCounts: db.prepare(
        `SELECT state, COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM updates WHERE ${LIVE} GROUP BY state`,
      ),
      stagedHead: db.prepare(
        `SELECT job_id, round, device_id, chunk_count, size, sha256 FROM staged_chunks WHERE update_id = ? LIMIT 1`,
      ),
      stagedChunk: db.prepare(`SELECT body FROM staged_chunks WHERE update_id = ? AND chunk_index = ?`),
      stageInsert: db.prepare(
        `INSERT INTO staged_chunks (update_id, chunk_index, chunk_count, job_id, round, device_id, size, sha256, body,
         received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      stagedCount: db.prepare(`SELECT COUNT(*) AS n FROM staged_chunks WHERE update_id = ?`),
      stagedBodies: db.prepare(`SELECT body FROM staged_chunks WHERE update_id = ? ORDER BY chunk_index`),
      unstage: db.prepare(`DELETE FROM staged_chunks WHERE update_id = ?`),
      staleStaged: db.prepare(
        `SELECT update_id FROM staged_chunks GROUP BY update_id HAVING MAX(received_at) < ?`,
      ),
      closedStaged: db.prepare(
        `SELECT DISTINCT update_id FROM staged_chunks WHERE job_id = ? AND round < ?
         AND update_id NOT LIKE '${EVALUATION_UPDATE_ID_PREFIX}%'`,
      ),
      stagedStats: db.prepare(
        `SELECT COUNT(DISTINCT update_id) AS updates, COALESCE(SUM(LENGTH(body)), 0) AS bytes FROM staged_chunks`,
      ),
      setting: db.prepare(`SELECT value FROM settings WHERE name = ?`),
      saveSetting: db.prepare(
        `INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value`,
      ),
      pruneTombstones: db.prepare(
        `DELETE FROM updates WHERE seq IN (SELECT seq FROM updates WHERE state IN ('acked', 'dropped')
         ORDER BY seq DESC LIMIT -1 OFFSET ?)`,
      ),
    };
    this.enqueueTx = db.transaction((frame: Buffer, meta: UpdateMeta, sha: string, updateId: string) =>
      this.insertLocked(frame, meta, sha, updateId),
    ).immediate;
    this.stageTx = db.transaction((body: Buffer, meta: InputChunkMeta) =>
      this.stageLocked(body, meta),
    ).immediate;
  }

  /** Inside a transaction: queues a whole update unless it is there already (idempotent). */
  private insertLocked(frame: Buffer, meta: UpdateMeta, sha: string, updateId: string): string {
    const existing = this.stmt.find.get(updateId) as UpdateRow | undefined;
    if (existing) {
      if (existing.sha256 !== sha) {
        fail("E_QUEUE_CONFLICT", `update ${updateId} is already queued with different content`);
      }
      this.bump("duplicates", 1);
      return updateId;
    }
    const now = this.now();
    // A full queue refuses the new update and keeps every one it holds (also after its capacity was lowered below
    // what it holds): the caller holds the update and tries again when acks, drops or a larger capacity make room.
    const live = Number((this.stmt.liveBytes.get() as { bytes: number }).bytes);
    if (live + frame.byteLength > this.maxBytes) {
      fail(
        "E_QUEUE_FULL",
        `update ${updateId} of ${frame.byteLength} bytes does not fit: ${live} of the queue's ${this.maxBytes} bytes are taken`,
      );
    }
    this.stmt.insert.run(updateId, meta.jobId, meta.round, meta.deviceId, sha, frame.byteLength, frame, now);
    this.bump("enqueued", 1);
    return updateId;
  }

  /** Inside a transaction: stores one input chunk, and queues the update when it is complete. */
  private stageLocked(body: Buffer, meta: InputChunkMeta): StageResult | { rejected: FlotillaError } {
    const { updateId, chunkIndex, chunkCount } = meta;
    this.expireStaged();
    const queued = this.stmt.find.get(updateId) as UpdateRow | undefined;
    if (queued) {
      if (queued.sha256 !== meta.sha256) {
        fail("E_QUEUE_CONFLICT", `update ${updateId} is already queued with different content`);
      }
      this.bump("duplicates", 1);
      return { updateId, complete: true, received: chunkCount, chunkCount };
    }
    const head = this.stmt.stagedHead.get(updateId) as
      | {
          job_id: string;
          round: number;
          device_id: string;
          chunk_count: number;
          size: number;
          sha256: string;
        }
      | undefined;
    if (
      head &&
      !sameUpdate(meta, {
        updateId,
        jobId: head.job_id,
        round: head.round,
        deviceId: head.device_id,
        chunkIndex: 0,
        chunkCount: head.chunk_count,
        size: head.size,
        sha256: head.sha256,
      })
    ) {
      fail(
        "E_QUEUE_CONFLICT",
        `chunk ${chunkIndex} of ${updateId} disagrees with the chunks received before`,
      );
    }
    const same = this.stmt.stagedChunk.get(updateId, chunkIndex) as { body: Buffer } | undefined;
    if (same) {
      if (!same.body.equals(body))
        fail("E_QUEUE_CONFLICT", `chunk ${chunkIndex} of ${updateId} arrived twice, differing`);
      this.bump("duplicates", 1);
    } else {
      this.stmt.stageInsert.run(
        updateId,
        chunkIndex,
        chunkCount,
        meta.jobId,
        meta.round,
        meta.deviceId,
        meta.size,
        meta.sha256,
        body,
        this.now(),
      );
      this.bump("staged_chunks", 1);
    }
    const received = Number((this.stmt.stagedCount.get(updateId) as { n: number }).n);
    if (received < chunkCount) return { updateId, complete: false, received, chunkCount };

    const frame = Buffer.concat(
      (this.stmt.stagedBodies.all(updateId) as { body: Buffer }[]).map((r) => r.body),
    );
    this.stmt.unstage.run(updateId);
    let problem: FlotillaError | undefined;
    try {
      checkFrameHash(frame, meta, CODES);
    } catch (e) {
      problem = e as FlotillaError;
    }
    if (!problem && this.validateFrames) {
      try {
        checkFrame(frame, meta);
      } catch (e) {
        problem = queueError(e, `update ${updateId}`);
      }
    }
    if (problem) {
      // Committed without the update: its chunks are gone and it is counted; the caller reports the error.
      this.bump("rejected", 1);
      return { rejected: problem };
    }
    this.insertLocked(frame, meta, meta.sha256, updateId);
    return { updateId, complete: true, received, chunkCount };
  }

  /** Inside a transaction: gives up partly received updates whose last chunk is older than stagingTtlMs. */
  private expireStaged(): void {
    const stale = this.stmt.staleStaged.all(this.now() - this.stagingTtlMs) as { update_id: string }[];
    for (const r of stale) this.stmt.unstage.run(r.update_id);
    if (stale.length > 0) this.bump("dropped_staged", stale.length);
  }

  get maxChunkBytes(): number {
    return this.chunkBytes;
  }

  /** Changes the chunk size for attempts started from now on (e.g. from the module twin). */
  setMaxChunkBytes(bytes: number): void {
    this.chunkBytes = checkChunkBytes(bytes);
  }

  /**
   * A module setting kept with the queue (JSON), e.g. the metered-link policy in effect, so that it holds from the
   * start of the next process, before the module twin is read; undefined when absent or unreadable.
   */
  setting(name: string): unknown {
    try {
      const row = this.stmt.setting.get(name) as { value: string } | undefined;
      return row === undefined ? undefined : (JSON.parse(row.value) as unknown);
    } catch {
      return undefined;
    }
  }

  /** Stores a module setting (see `setting`); throws a coded error when the file cannot be written. */
  saveSetting(name: string, value: unknown): void {
    this.write(`saving setting ${name}`, () => void this.stmt.saveSetting.run(name, JSON.stringify(value)));
  }

  /** The capacity: bytes of unacknowledged updates kept. */
  get capacityBytes(): number {
    return this.maxBytes;
  }

  /**
   * Changes the capacity at once (e.g. from the module twin). Lowering it below what is stored drops nothing: new
   * updates are refused (E_QUEUE_FULL) until acks and drops bring the stored bytes under it.
   */
  setCapacityBytes(bytes: number): void {
    this.maxBytes = positiveInt(bytes, "capacityBytes");
  }

  /**
   * Stores an update durably and returns its id. Only after this returns may the trainer's message be
   * acknowledged. Enqueueing the same update again (same id and content) changes nothing but the `duplicates`
   * counter. Invalid input throws E_QUEUE_INVALID / E_QUEUE_FRAME / E_QUEUE_META_MISMATCH / E_QUEUE_TOO_LARGE /
   * E_QUEUE_CONFLICT before anything is written.
   */
  enqueue(frame: Uint8Array, meta: UpdateMeta): string {
    if (!(frame instanceof Uint8Array)) fail("E_QUEUE_INVALID", "an update must be a Uint8Array");
    if (frame.byteLength === 0) fail("E_QUEUE_INVALID", "an update cannot be empty");
    validateMeta(meta);
    if (frame.byteLength > this.maxBytes) {
      // Larger than the whole capacity: waiting cannot make room for it.
      fail(
        "E_QUEUE_TOO_LARGE",
        `update of ${frame.byteLength} bytes exceeds the queue's ${this.maxBytes} bytes`,
      );
    }
    if (this.validateFrames) checkFrame(frame, meta);
    const body = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
    const sha = sha256(body);
    const updateId = meta.updateId ?? deriveUpdateId(sha);
    try {
      return this.enqueueTx(body, meta, sha, updateId);
    } catch (e) {
      throw this.failure(e, `enqueueing update ${updateId}`);
    }
  }

  /**
   * Stores one input chunk of an update the trainer split into several messages, durably: only after this returns
   * may that input message be completed. When the last chunk is in, the chunks are concatenated, checked against
   * `size` and `sha256` (and as an FLT1 frame matching jobId/round/deviceId) and queued as one update, in the same
   * transaction. A repeated chunk is a no-op. A chunk that contradicts earlier ones throws E_QUEUE_CONFLICT and
   * changes nothing; an update that does not reassemble throws E_QUEUE_CHECKSUM (or E_QUEUE_FRAME /
   * E_QUEUE_META_MISMATCH) after its chunks were discarded and counted in `rejected`.
   */
  stageChunk(body: Uint8Array, meta: InputChunkMeta): StageResult {
    if (!(body instanceof Uint8Array) || body.byteLength === 0)
      fail("E_QUEUE_INVALID", "a chunk must be non-empty bytes");
    if (Number.isSafeInteger(meta?.size) && meta.size > this.maxBytes) {
      fail("E_QUEUE_TOO_LARGE", `update of ${meta.size} bytes exceeds the queue's ${this.maxBytes} bytes`);
    }
    checkChunkMeta(meta, CODES);
    checkChunkBody(body, meta, CODES);
    let outcome: StageResult | { rejected: FlotillaError };
    try {
      outcome = this.stageTx(Buffer.from(body.buffer, body.byteOffset, body.byteLength), meta);
    } catch (e) {
      throw this.failure(e, `staging chunk ${meta.chunkIndex} of ${meta.updateId}`);
    }
    this.maybeVacuum();
    if ("rejected" in outcome) throw outcome.rejected;
    return outcome;
  }

  /** State and bookkeeping of one update (also acked/dropped ones while their tombstone is kept). */
  get(updateId: string): UpdateInfo | undefined {
    const row = this.read(
      `reading update ${updateId}`,
      () => this.stmt.find.get(updateId) as UpdateRow | undefined,
    );
    return row && this.info(row);
  }

  /**
   * Cuts a stored update into chunks of at most `maxChunkBytes`. The stored bytes are checked against their
   * sha256 first: a damaged row throws E_QUEUE_CORRUPT rather than sending garbage. An update that is not
   * (or no longer) waiting to be sent throws E_QUEUE_NOT_FOUND.
   */
  chunksOf(updateId: string): OutboxChunk[] {
    const row = this.read(
      `reading update ${updateId}`,
      () => this.stmt.body.get(updateId) as (UpdateRow & { body: Buffer | null }) | undefined,
    );
    if (!row) fail("E_QUEUE_NOT_FOUND", `update ${updateId} is not in the queue (unknown, acked or dropped)`);
    return cut(row, this.chunkBytes);
  }

  /**
   * Starts (or resumes) sending an update: returns its chunks and the index to start from. An attempt resumes an
   * interrupted one when the chunk size is unchanged; an update already sent completely starts over (a resend).
   * Returns undefined when the update is no longer waiting to be sent.
   *
   * On a full disk (E_QUEUE_DISK_FULL) the attempt's bookkeeping — attempt count, next chunk, sent time — is kept in
   * memory instead (`volatile`), so a full queue still drains: sending needs only reads, and the acks it brings
   * back free space (an ack clears the update's body, which needs no new page). The in-memory state is written
   * back with the update's next successful write (markSent) and is lost on a restart, which only means a resend:
   * the cloud deduplicates on the messageId. The counters of such sends are not bumped.
   */
  beginAttempt(updateId: string): AttemptPlan | undefined {
    const what = `starting to send update ${updateId}`;
    const held = this.volatile.get(updateId);
    if (!held) {
      try {
        const tx = this.db.transaction(() => {
          const row = this.stmt.body.get(updateId) as (UpdateRow & { body: Buffer | null }) | undefined;
          if (!row) return undefined;
          const chunks = cut(row, this.chunkBytes);
          const resume = row.state === "pending" && row.chunk_bytes === this.chunkBytes;
          const startChunk = resume ? Math.min(row.next_chunk, chunks.length - 1) : 0;
          this.stmt.begin.run(this.now(), startChunk, this.chunkBytes, updateId);
          return { chunks, startChunk, attempt: row.attempts + 1 };
        });
        return tx.immediate();
      } catch (e) {
        const err = this.failure(e, what);
        if (err.code !== "E_QUEUE_DISK_FULL") throw err;
      }
    }
    const row = this.read(
      what,
      () => this.stmt.body.get(updateId) as (UpdateRow & { body: Buffer | null }) | undefined,
    );
    if (!row) {
      this.volatile.delete(updateId);
      return undefined;
    }
    const chunks = cut(row, this.chunkBytes);
    const prev = held ?? volatileOf(row);
    const resume = prev.state === "pending" && prev.chunkBytes === this.chunkBytes;
    const startChunk = resume ? Math.min(prev.nextChunk, chunks.length - 1) : 0;
    const attempt = prev.attempts + 1;
    this.volatile.set(updateId, {
      state: "pending",
      nextChunk: startChunk,
      chunkBytes: this.chunkBytes,
      attempts: attempt,
      sentAt: null,
    });
    return { chunks, startChunk, attempt };
  }

  /**
   * Records that chunk `chunkIndex` went out. Returns false when the update was acked or dropped meanwhile (or the
   * chunk size changed), telling the sender to stop sending its remaining chunks.
   */
  markChunkSent(updateId: string, chunkIndex: number): boolean {
    const what = `recording a chunk of ${updateId}`;
    if (!this.volatile.has(updateId)) {
      try {
        return this.write(what, () => {
          this.bump("sent_chunks", 1);
          return this.stmt.chunkSent.run(chunkIndex + 1, updateId, this.chunkBytes).changes === 1;
        });
      } catch (e) {
        if (!isDiskFull(e)) throw e;
        const row = this.read(what, () => this.stmt.find.get(updateId) as UpdateRow | undefined);
        if (!row || row.state !== "pending" || row.chunk_bytes !== this.chunkBytes) return false;
        this.volatile.set(updateId, { ...volatileOf(row), nextChunk: chunkIndex + 1 });
        return true;
      }
    }
    const held = this.volatile.get(updateId)!;
    if (!this.isLive(updateId, what)) return false;
    if (held.state !== "pending" || held.chunkBytes !== this.chunkBytes) return false;
    held.nextChunk = chunkIndex + 1;
    return true;
  }

  /** Records that every chunk of the update went out; it now waits for the cloud's ack. */
  markSent(updateId: string): boolean {
    const what = `recording update ${updateId} as sent`;
    const held = this.volatile.get(updateId);
    try {
      const ok = this.write(what, () => {
        const row = this.stmt.find.get(updateId) as UpdateRow | undefined;
        if (!row) return false;
        // An attempt run in memory may be a resend of an update stored as 'sent': write it back either way.
        if (held) this.stmt.writeBack.run(held.attempts, held.chunkBytes, updateId);
        if (this.stmt.markSent.run(this.now(), updateId).changes !== 1) return false;
        this.bump("sent_updates", 1);
        if (row.sent_count > 0) this.bump("resent", 1);
        return true;
      });
      this.volatile.delete(updateId);
      return ok;
    } catch (e) {
      if (!isDiskFull(e)) throw e;
      const row = this.read(what, () => this.stmt.find.get(updateId) as UpdateRow | undefined);
      if (!row || (row.state !== "pending" && row.state !== "sent")) {
        this.volatile.delete(updateId);
        return false;
      }
      if (!held && row.state !== "pending") return false;
      this.volatile.set(updateId, {
        ...(held ?? volatileOf(row)),
        state: "sent",
        nextChunk: 0,
        sentAt: this.now(),
      });
      return true;
    }
  }

  /** The cloud has the update: forget its bytes. Returns false if it was not waiting (unknown, acked, dropped). */
  ack(updateId: string): boolean {
    return this.ackMany([updateId]) === 1;
  }

  /** Acks several updates in one transaction; returns how many were waiting. */
  ackMany(updateIds: readonly string[]): number {
    for (const id of updateIds) {
      if (typeof id !== "string" || id.length === 0 || id.length > MAX_ID_BYTES) {
        fail("E_QUEUE_INVALID", `ack: '${String(id)}' is not an update id`);
      }
    }
    const n = this.write("recording acks", () => {
      const now = this.now();
      let n = 0;
      for (const id of updateIds) n += this.stmt.ack.run(now, id).changes;
      if (n > 0) this.settled("acked", n);
      return n;
    });
    for (const id of updateIds) this.volatile.delete(id);
    return n;
  }

  /**
   * Drops the unacknowledged updates of `jobId` the cloud would refuse, i.e. of every round before `openRound`, and
   * counts them in `dropped_closed`. Returns the count. `openRound` is the oldest round the job still accepts: a
   * synchronous job's open round (an update of a closed round is late), an asynchronous job's oldest accepted
   * version + 1 (version − maxStaleness + 1, docs/async.md): its updates of several rounds may wait here together
   * (a device offline for a while), and those still fresh enough are kept and delivered. Evaluation frames (update
   * id `eval:…`, docs/evaluation.md) are always of a closed round's model and are kept.
   */
  dropClosedRounds(jobId: string, openRound: number): number {
    if (typeof jobId !== "string" || jobId.length === 0)
      fail("E_QUEUE_INVALID", "dropClosedRounds: jobId is empty");
    if (!Number.isSafeInteger(openRound) || openRound < 0) {
      fail("E_QUEUE_INVALID", `dropClosedRounds: openRound ${String(openRound)} is not a round number`);
    }
    return this.write(`dropping closed rounds of ${jobId}`, () => {
      let n = this.stmt.dropClosed.run(this.now(), jobId, openRound).changes;
      for (const r of this.stmt.closedStaged.all(jobId, openRound) as { update_id: string }[]) {
        this.stmt.unstage.run(r.update_id);
        n++;
      }
      if (n > 0) this.settled("dropped_closed", n);
      return n;
    });
  }

  /** Gives up on one update whose stored bytes are damaged (counted in `dropped_corrupt`). */
  dropCorrupt(updateId: string): boolean {
    return this.write(`dropping damaged update ${updateId}`, () => {
      const n = this.stmt.dropId.run("corrupt", this.now(), updateId).changes;
      if (n > 0) this.settled("dropped_corrupt", n);
      return n === 1;
    });
  }

  /**
   * Drops the unacknowledged updates enqueued before `enqueuedBefore` (ms since the epoch; the retention limit), and
   * counts them in `dropped_expired`. Returns them (no bodies), so each can be logged.
   */
  dropExpired(enqueuedBefore: number): UpdateInfo[] {
    if (!Number.isFinite(enqueuedBefore))
      fail("E_QUEUE_INVALID", `dropExpired: ${String(enqueuedBefore)} is not a time`);
    const dropped = this.write("dropping expired updates", () => {
      const rows = this.stmt.expired.all(enqueuedBefore) as UpdateRow[];
      const now = this.now();
      for (const r of rows) this.stmt.dropId.run("expired", now, r.update_id);
      if (rows.length > 0) this.settled("dropped_expired", rows.length);
      return rows.map((r) => ({ ...toInfo(r), state: "dropped" as const, dropReason: "expired" as const }));
    });
    for (const u of dropped) this.volatile.delete(u.updateId);
    return dropped;
  }

  /** Every update not yet acknowledged, oldest first (no bodies). */
  pending(): UpdateInfo[] {
    return this.live();
  }

  /**
   * Updates to send now, oldest first: those not yet sent completely, and those sent at or before
   * `resendSentBefore` without an ack; only those of at most `maxSize` bytes (larger ones are deferred: a metered
   * link).
   */
  due(resendSentBefore: number, limit: number, maxSize = Number.MAX_SAFE_INTEGER): UpdateInfo[] {
    if (this.volatile.size === 0) {
      return this.read("reading the queue", () =>
        (this.stmt.due.all(resendSentBefore, maxSize, limit) as UpdateRow[]).map(toInfo),
      );
    }
    return this.live()
      .filter((u) => u.state === "pending" || (u.sentAt !== null && u.sentAt <= resendSentBefore))
      .filter((u) => u.size <= maxSize)
      .slice(0, limit);
  }

  /** Completion time of the oldest update (of at most `maxSize` bytes) awaiting an ack, or undefined. */
  oldestSentAt(maxSize = Number.MAX_SAFE_INTEGER): number | undefined {
    if (this.volatile.size > 0) {
      const times = this.live().flatMap((u) =>
        u.state === "sent" && u.sentAt !== null && u.size <= maxSize ? [u.sentAt] : [],
      );
      return times.length > 0 ? Math.min(...times) : undefined;
    }
    const t = this.read(
      "reading the queue",
      () => (this.stmt.nextResend.get(maxSize) as { t: number | null }).t,
    );
    return t === null ? undefined : Number(t);
  }

  /** Marks every update awaiting an ack for sending again (after a restart or a reconnect). Returns the count. */
  requeueUnacked(): number {
    for (const held of this.volatile.values()) {
      if (held.state === "sent") Object.assign(held, { state: "pending", nextChunk: 0, sentAt: null });
    }
    try {
      return this.write("requeueing unacked updates", () => this.stmt.requeue.run().changes);
    } catch (e) {
      if (!isDiskFull(e)) throw e;
      // In memory, as beginAttempt: every update stored as sent is due again.
      let n = 0;
      for (const row of this.read("reading the queue", () => this.stmt.live.all() as UpdateRow[])) {
        if (row.state !== "sent" || this.volatile.has(row.update_id)) continue;
        this.volatile.set(row.update_id, {
          ...volatileOf(row),
          state: "pending",
          nextChunk: 0,
          sentAt: null,
        });
        n++;
      }
      return n;
    }
  }

  /** Live updates with the in-memory bookkeeping applied; forgets in-memory state of updates no longer live. */
  private live(): UpdateInfo[] {
    const rows = this.read("reading the queue", () => this.stmt.live.all() as UpdateRow[]);
    if (this.volatile.size > 0) {
      const ids = new Set(rows.map((r) => r.update_id));
      for (const id of [...this.volatile.keys()]) if (!ids.has(id)) this.volatile.delete(id);
    }
    return rows.map((r) => this.info(r));
  }

  private info(row: UpdateRow): UpdateInfo {
    const info = toInfo(row);
    const held = this.volatile.get(row.update_id);
    if (!held || (info.state !== "pending" && info.state !== "sent")) return info;
    return {
      ...info,
      state: held.state,
      nextChunk: held.nextChunk,
      attempts: held.attempts,
      sentAt: held.sentAt ?? info.sentAt,
    };
  }

  private isLive(updateId: string, what: string): boolean {
    const row = this.read(what, () => this.stmt.find.get(updateId) as UpdateRow | undefined);
    const live = row !== undefined && (row.state === "pending" || row.state === "sent");
    if (!live) this.volatile.delete(updateId);
    return live;
  }

  stats(): OutboxStats {
    return this.read("reading the queue's status", () => this.statsLocked());
  }

  private statsLocked(): OutboxStats {
    const counters = Object.fromEntries(COUNTER_NAMES.map((n) => [n, 0])) as Record<CounterName, number>;
    for (const r of this.stmt.counters.all() as { name: string; value: number }[]) {
      if (r.name in counters) counters[r.name as CounterName] = Number(r.value);
    }
    let pending = 0;
    let awaitingAck = 0;
    let bytesPending = 0;
    for (const r of this.stmt.stateCounts.all() as { state: UpdateState; n: number; bytes: number }[]) {
      if (r.state === "pending") pending = Number(r.n);
      else awaitingAck = Number(r.n);
      bytesPending += Number(r.bytes);
    }
    if (this.volatile.size > 0) {
      // Send state kept in memory on a full disk (beginAttempt) counts as it will be written.
      const live = this.live();
      awaitingAck = live.filter((u) => u.state === "sent").length;
      pending = live.length - awaitingAck;
    }
    const staged = this.stmt.stagedStats.get() as { updates: number; bytes: number };
    return {
      depth: pending + awaitingAck,
      pending,
      awaitingAck,
      bytesPending,
      stagedUpdates: Number(staged.updates),
      stagedBytes: Number(staged.bytes),
      counters,
    };
  }

  /** The SQLite settings durability rests on, read back from the connection (journal mode, synchronous level). */
  durability(): {
    journalMode: string;
    synchronous: "OFF" | "NORMAL" | "FULL" | "EXTRA";
    lockingMode: string;
  } {
    const sync = Number(this.db.pragma("synchronous", { simple: true }));
    return {
      journalMode: String(this.db.pragma("journal_mode", { simple: true })),
      synchronous: (["OFF", "NORMAL", "FULL", "EXTRA"] as const)[sync],
      lockingMode: String(this.db.pragma("locking_mode", { simple: true })),
    };
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private bump(name: CounterName, by: number): void {
    this.stmt.count.run(name, by);
  }

  private settled(counter: CounterName, n: number): void {
    this.bump(counter, n);
    this.pruneTombstones();
  }

  private pruneTombstones(): void {
    this.stmt.pruneTombstones.run(this.tombstoneLimit);
  }

  private write<R>(what: string, fn: () => R): R {
    let result: R;
    try {
      result = this.db.transaction(fn).immediate();
    } catch (e) {
      throw this.failure(e, what);
    }
    this.maybeVacuum();
    return result;
  }

  /** A read; a damaged file found by it is quarantined like one found by a write. */
  private read<R>(what: string, fn: () => R): R {
    try {
      return fn();
    } catch (e) {
      throw this.failure(e, what);
    }
  }

  /**
   * The coded error for a failed operation. SQLITE_CORRUPT / SQLITE_NOTADB mean the file is damaged: it is moved
   * aside and a fresh queue started (recoverFromCorruption) before E_QUEUE_CORRUPT is thrown, so the next call works.
   */
  private failure(e: unknown, what: string): FlotillaError {
    const err = queueError(e, what);
    if (!isCorruption(e)) return err;
    try {
      this.recoverFromCorruption(`${what}: ${(e as Error).message}`);
    } catch (e2) {
      return new FlotillaError(
        "E_QUEUE_CORRUPT",
        `${err.message}; starting a fresh queue failed: ${(e2 as Error).message}`,
      );
    }
    return new FlotillaError(
      "E_QUEUE_CORRUPT",
      `${err.message}; the file was moved aside, a fresh queue started`,
    );
  }

  /** Gives freed pages (acked bodies) back to the file system, a bounded amount at a time. */
  private maybeVacuum(): void {
    try {
      const free = Number(this.db.pragma("freelist_count", { simple: true }));
      if (free >= DEFAULTS.vacuumPages) this.db.pragma(`incremental_vacuum(${free})`);
    } catch {
      // Best effort: the write before it is committed; the pages are reused by later updates anyway.
    }
  }
}

/** sha256 of bytes as lower-case hex (core/protocol/chunks.ts). */
export const sha256 = sha256Hex;

/** jobId, round and deviceId read from an FLT1 `result`/`failure`/up `secagg` frame; E_QUEUE_FRAME if it is not one. */
export function frameMeta(frame: Uint8Array): UpdateMeta {
  let msg;
  try {
    // A plain Uint8Array view, never a Buffer: decodeMessage copies an unaligned payload with `slice`, which on a
    // Buffer returns a view of the whole (pooled) ArrayBuffer instead of a copy, and the Float32Array then throws
    // a RangeError. Input messages from the MQTT transport are such Buffers, at any byte offset.
    msg = decodeMessage(new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength));
  } catch (e) {
    const detail = isFlotillaError(e) ? `${e.code}: ${e.message}` : String(e);
    return fail("E_QUEUE_FRAME", `update is not a valid FLT1 frame (${detail})`);
  }
  if (msg.type === "train" || (msg.type === "secagg" && msg.direction !== "up")) {
    fail(
      "E_QUEUE_FRAME",
      `update frame has type '${msg.type}'; only 'result', 'failure', 'evaluation' and device 'secagg' frames go upstream`,
    );
  }
  return { jobId: msg.jobId, round: msg.round, deviceId: msg.deviceId };
}

function checkFrame(frame: Uint8Array, meta: UpdateMeta): void {
  const header = frameMeta(frame);
  for (const k of ["jobId", "round", "deviceId"] as const) {
    if (header[k] !== meta[k]) {
      fail(
        "E_QUEUE_META_MISMATCH",
        `update meta ${k}=${String(meta[k])} but the frame says ${String(header[k])}`,
      );
    }
  }
}

function validateMeta(meta: UpdateMeta): void {
  checkFrameMeta(meta, CODES);
}

function cut(row: UpdateRow & { body: Buffer | null }, chunkBytes: number): OutboxChunk[] {
  const body = row.body;
  if (!body || body.byteLength !== row.size || sha256(body) !== row.sha256) {
    throw new FlotillaError(
      "E_QUEUE_CORRUPT",
      `stored update ${row.update_id} does not match its sha256 (${body?.byteLength ?? 0} of ${row.size} bytes)`,
    );
  }
  const meta = { jobId: row.job_id, round: Number(row.round), deviceId: row.device_id };
  const opts = { maxChunkBytes: chunkBytes, sha256: row.sha256, updateId: row.update_id, upstream: true };
  return splitFrame(body, meta, opts).chunks.map((c) => ({
    body: Buffer.from(c.body.buffer, c.body.byteOffset, c.body.byteLength),
    messageId: c.messageId,
    properties: c.properties as ChunkProperties,
  }));
}

function isDiskFull(e: unknown): boolean {
  return isFlotillaError(e) && e.code === "E_QUEUE_DISK_FULL";
}

function volatileOf(row: UpdateRow): VolatileAttempt {
  return {
    state: row.state === "sent" ? "sent" : "pending",
    nextChunk: Number(row.next_chunk),
    chunkBytes: Number(row.chunk_bytes),
    attempts: Number(row.attempts),
    sentAt: row.sent_at === null ? null : Number(row.sent_at),
  };
}

function toInfo(r: UpdateRow): UpdateInfo {
  return {
    updateId: r.update_id,
    jobId: r.job_id,
    round: Number(r.round),
    deviceId: r.device_id,
    sha256: r.sha256,
    size: Number(r.size),
    state: r.state,
    dropReason: r.drop_reason,
    attempts: Number(r.attempts),
    sentCount: Number(r.sent_count),
    nextChunk: Number(r.next_chunk),
    enqueuedAt: Number(r.enqueued_at),
    lastAttemptAt: r.last_attempt_at === null ? null : Number(r.last_attempt_at),
    sentAt: r.sent_at === null ? null : Number(r.sent_at),
  };
}

function checkChunkBytes(n: number): number {
  if (!isChunkSize(n)) {
    throw new FlotillaError(
      "E_QUEUE_CONFIG",
      `maxChunkBytes ${String(n)} must be an integer from 1 to ${MAX_CHUNK_BYTES} (256 KB less room for properties)`,
    );
  }
  return n;
}

function positiveInt(n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < 1)
    fail("E_QUEUE_CONFIG", `${name} ${String(n)} must be a positive integer`);
  return n;
}

function nonNegativeInt(n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < 0)
    fail("E_QUEUE_CONFIG", `${name} ${String(n)} must be a non-negative integer`);
  return n;
}
