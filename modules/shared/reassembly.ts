import { FlotillaError, fail } from "../../core/errors";
import {
  assembleFrame,
  checkChunkBody,
  checkChunkMeta,
  sameUpdate,
  type ChunkErrorCodes,
  type ChunkMeta,
} from "../../core/protocol/chunks";

/**
 * In-memory reassembly of frames a module receives as chunks (modules/shared/chunks.ts, docs/iothub-protocol.md).
 * Chunks are keyed by updateId; each chunk's properties and body are checked by the wire contract
 * (core/protocol/chunks.ts, as the update-queue and the Function check them), every chunk of an update must agree
 * with the first, and the whole is checked against `size` and `sha256` once the last chunk is in. Repeated chunks (edgeHub redelivers after a reconnect) are ignored, also for
 * a while after their update completed. Memory is bounded: `maxBytes` of chunk bodies in all, the oldest partial
 * update evicted first, and a partial update whose last chunk came in more than `ttlMs` ago is given up.
 *
 * Nothing here is durable: a process that stops loses its partial updates (the update-queue, which must not lose
 * them, stages chunks in SQLite instead). Errors are FlotillaError with one-line messages:
 *   E_QUANT_CHUNK       invalid chunk properties or body (the contract's `malformed` and `oversized`)
 *   E_QUANT_TOO_LARGE   an update larger than maxBytes
 *   E_QUANT_CONFLICT    a chunk disagreeing with the chunks of its update received before
 *   E_QUANT_CHECKSUM    the reassembled frame does not have the announced size and sha256 (the update is dropped),
 *                       or a chunk does not match its chunkSha256 (the contract's `hash`)
 */

/** The contract's rejections under the quantizer's stable codes. */
const CODES: ChunkErrorCodes = {
  malformed: "E_QUANT_CHUNK",
  oversized: "E_QUANT_CHUNK",
  hash: "E_QUANT_CHECKSUM",
};

export interface ReassemblerOptions {
  /** Bytes of chunk bodies held at once, and the largest update accepted (default 64 MiB). */
  maxBytes?: number;
  /** A partial update whose last chunk is older than this is given up, ms (default 30 min). */
  ttlMs?: number;
  /** Completed update ids remembered so that late duplicates of their chunks are ignored (default 1024). */
  rememberCompleted?: number;
  /** Clock in ms; injectable for tests. */
  now?: () => number;
}

export type AddResult =
  | {
      readonly status: "partial";
      readonly updateId: string;
      readonly received: number;
      readonly chunkCount: number;
    }
  /** A chunk already received (or of an update completed a moment ago): nothing to do. */
  | { readonly status: "duplicate"; readonly updateId: string }
  | {
      readonly status: "complete";
      readonly updateId: string;
      readonly meta: ChunkMeta;
      readonly frame: Uint8Array;
    };

export interface ReassemblerStats {
  /** Partial updates held. */
  readonly pending: number;
  /** Chunk bytes held. */
  readonly bytes: number;
  readonly completed: number;
  readonly duplicates: number;
  /** Partial updates given up after ttlMs. */
  readonly expired: number;
  /** Partial updates dropped to make room (maxBytes). */
  readonly evicted: number;
  /** Chunks or updates refused (the errors above). */
  readonly rejected: number;
}

const DEFAULTS = { maxBytes: 64 * 1024 * 1024, ttlMs: 30 * 60_000, rememberCompleted: 1024 };

interface Partial {
  readonly meta: ChunkMeta;
  readonly chunks: Map<number, Uint8Array>;
  bytes: number;
  lastAt: number;
}

export class Reassembler {
  private max: number;
  readonly ttlMs: number;
  private readonly remember: number;
  private readonly now: () => number;
  /** Insertion order = age order (the oldest first). */
  private readonly partials = new Map<string, Partial>();
  /** Completed update ids with the time they completed, oldest first. */
  private readonly done = new Map<string, number>();
  private held = 0;
  private counts = { completed: 0, duplicates: 0, expired: 0, evicted: 0, rejected: 0 };

  constructor(opts: ReassemblerOptions = {}) {
    this.max = positiveInt(opts.maxBytes ?? DEFAULTS.maxBytes, "maxBytes");
    this.ttlMs = positiveInt(opts.ttlMs ?? DEFAULTS.ttlMs, "ttlMs");
    this.remember = Math.max(0, Math.floor(opts.rememberCompleted ?? DEFAULTS.rememberCompleted));
    this.now = opts.now ?? Date.now;
  }

  /** Bytes of chunk bodies held at once, and the largest update accepted. */
  get maxBytes(): number {
    return this.max;
  }

  /**
   * Changes the bound at once (e.g. the quantizer's writable property maxPendingBytes): partial updates beyond a
   * lowered bound are given up, the oldest first (counted as evicted); returns how many.
   */
  setMaxBytes(bytes: number): number {
    this.max = positiveInt(bytes, "maxBytes");
    let n = 0;
    for (const id of [...this.partials.keys()]) {
      if (this.held <= this.max) break;
      this.drop(id);
      n++;
    }
    this.counts.evicted += n;
    return n;
  }

  /**
   * Takes one chunk. Returns the whole frame when this chunk completed its update; throws (and counts) the errors
   * above. A failed checksum drops the update's chunks.
   */
  add(body: Uint8Array, meta: ChunkMeta): AddResult {
    try {
      return this.addChunk(body, meta);
    } catch (e) {
      this.counts.rejected++;
      throw e;
    }
  }

  private addChunk(body: Uint8Array, meta: ChunkMeta): AddResult {
    checkChunkMeta(meta, CODES);
    checkChunkBody(body, meta, CODES);
    if (meta.size > this.max)
      fail(
        "E_QUANT_TOO_LARGE",
        `update ${meta.updateId} of ${meta.size} bytes exceeds ${this.maxBytes} bytes`,
      );
    const now = this.now();
    this.expire(now);
    const { updateId, chunkIndex } = meta;
    if (this.done.has(updateId)) {
      this.counts.duplicates++;
      return { status: "duplicate", updateId };
    }
    let p = this.partials.get(updateId);
    if (p && !sameUpdate(p.meta, meta))
      fail(
        "E_QUANT_CONFLICT",
        `chunk ${chunkIndex} of ${updateId} disagrees with the chunks received before`,
      );
    const same = p?.chunks.get(chunkIndex);
    if (same) {
      if (!Buffer.from(same.buffer, same.byteOffset, same.byteLength).equals(body))
        fail("E_QUANT_CONFLICT", `chunk ${chunkIndex} of ${updateId} arrived twice, differing`);
      this.counts.duplicates++;
      p!.lastAt = now;
      return { status: "duplicate", updateId };
    }
    if (p && p.bytes + body.byteLength > meta.size)
      fail("E_QUANT_CHUNK", `chunks of ${updateId} add up to more than its ${meta.size} bytes`);
    this.makeRoom(body.byteLength, updateId);
    if (!p) {
      p = { meta, chunks: new Map(), bytes: 0, lastAt: now };
      this.partials.set(updateId, p);
    }
    p.chunks.set(chunkIndex, new Uint8Array(body)); // a copy: the transport may reuse its buffer
    p.bytes += body.byteLength;
    p.lastAt = now;
    this.held += body.byteLength;
    if (p.chunks.size < meta.chunkCount)
      return { status: "partial", updateId, received: p.chunks.size, chunkCount: meta.chunkCount };

    this.drop(updateId);
    const frame = assembleFrame(
      Array.from({ length: meta.chunkCount }, (_, i) => p!.chunks.get(i)),
      meta,
      CODES,
    );
    this.counts.completed++;
    this.done.set(updateId, now);
    while (this.done.size > this.remember) this.done.delete(this.done.keys().next().value as string);
    return { status: "complete", updateId, meta: p.meta, frame };
  }

  /** Gives up partial updates idle for longer than ttlMs (also done on every add); returns how many. */
  expire(now = this.now()): number {
    let n = 0;
    for (const [id, p] of this.partials) {
      if (now - p.lastAt > this.ttlMs) {
        this.drop(id);
        n++;
      }
    }
    for (const [id, at] of this.done) {
      if (now - at <= this.ttlMs) break;
      this.done.delete(id);
    }
    this.counts.expired += n;
    return n;
  }

  stats(): ReassemblerStats {
    return { pending: this.partials.size, bytes: this.held, ...this.counts };
  }

  /** Forgets everything held (e.g. when the module stops). */
  clear(): void {
    this.partials.clear();
    this.done.clear();
    this.held = 0;
  }

  private makeRoom(bytes: number, keep: string): void {
    for (const id of [...this.partials.keys()]) {
      if (this.held + bytes <= this.maxBytes) return;
      if (id === keep) continue;
      this.drop(id);
      this.counts.evicted++;
    }
    if (this.held + bytes > this.maxBytes) {
      // Only the update itself is held: its size was checked against maxBytes, so its chunks disagree with it.
      fail("E_QUANT_TOO_LARGE", `update ${keep} needs more than ${this.maxBytes} bytes`);
    }
  }

  private drop(updateId: string): void {
    const p = this.partials.get(updateId);
    if (!p) return;
    this.partials.delete(updateId);
    this.held -= p.bytes;
  }
}

function positiveInt(n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < 1)
    throw new FlotillaError("E_QUANT_CONFIG", `${name} ${n} must be a positive integer`);
  return n;
}
