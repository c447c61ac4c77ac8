import { createHash } from "node:crypto";
import { FlotillaError, fail } from "../../core/errors";
import type { ChunkMeta } from "./chunks";

/**
 * In-memory reassembly of frames a module receives as chunks (modules/shared/chunks.ts, docs/iothub-protocol.md).
 * Chunks are keyed by updateId; each chunk's properties are validated as the update-queue validates them
 * (outbox.ts), every chunk of an update must agree with the first, and the whole is checked against `size` and
 * `sha256` once the last chunk is in. Repeated chunks (edgeHub redelivers after a reconnect) are ignored, also for
 * a while after their update completed. Memory is bounded: `maxBytes` of chunk bodies in all, the oldest partial
 * update evicted first, and a partial update whose last chunk came in more than `ttlMs` ago is given up.
 *
 * Nothing here is durable: a process that stops loses its partial updates (the update-queue, which must not lose
 * them, stages chunks in SQLite instead). Errors are FlotillaError with one-line messages:
 *   E_QUANT_CHUNK       invalid chunk properties or body
 *   E_QUANT_TOO_LARGE   an update larger than maxBytes
 *   E_QUANT_CONFLICT    a chunk disagreeing with the chunks of its update received before
 *   E_QUANT_CHECKSUM    the reassembled frame does not have the announced size and sha256 (the update is dropped)
 */

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
const MAX_ID_BYTES = 128;
const UPDATE_ID = /^[A-Za-z0-9_:-]{1,100}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

interface Partial {
  readonly meta: ChunkMeta;
  readonly chunks: Map<number, Uint8Array>;
  bytes: number;
  lastAt: number;
}

export class Reassembler {
  readonly maxBytes: number;
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
    this.maxBytes = positiveInt(opts.maxBytes ?? DEFAULTS.maxBytes, "maxBytes");
    this.ttlMs = positiveInt(opts.ttlMs ?? DEFAULTS.ttlMs, "ttlMs");
    this.remember = Math.max(0, Math.floor(opts.rememberCompleted ?? DEFAULTS.rememberCompleted));
    this.now = opts.now ?? Date.now;
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
    validateChunk(body, meta);
    if (meta.size > this.maxBytes)
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
    const frame = new Uint8Array(p.bytes);
    let offset = 0;
    for (let i = 0; i < meta.chunkCount; i++) {
      const c = p.chunks.get(i)!;
      frame.set(c, offset);
      offset += c.byteLength;
    }
    const sha = createHash("sha256").update(frame).digest("hex");
    if (frame.byteLength !== meta.size || sha !== meta.sha256) {
      fail(
        "E_QUANT_CHECKSUM",
        `update ${updateId} reassembled to ${frame.byteLength} bytes with sha256 ${sha}; expected ${meta.size} bytes, ${meta.sha256}`,
      );
    }
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

function sameUpdate(a: ChunkMeta, b: ChunkMeta): boolean {
  return (
    a.jobId === b.jobId &&
    a.round === b.round &&
    a.deviceId === b.deviceId &&
    a.chunkCount === b.chunkCount &&
    a.size === b.size &&
    a.sha256 === b.sha256
  );
}

/**
 * The update-queue's rules (modules/update-queue/src/outbox.ts validateChunkMeta) with E_QUANT_CHUNK: jobId and
 * deviceId non-empty, at most 128 bytes, no control characters; round 0 … 2^31−1; updateId [A-Za-z0-9_:-]{1,100};
 * 0 ≤ chunkIndex < chunkCount ≤ size; sha256 64 lower-case hex digits; a body of 1 … size bytes.
 */
export function validateChunk(body: Uint8Array, meta: ChunkMeta): void {
  const bad = (what: string): never => fail("E_QUANT_CHUNK", what);
  if (typeof meta !== "object" || meta === null) bad("chunk properties are missing");
  for (const k of ["jobId", "deviceId"] as const) {
    const v: unknown = meta[k];
    if (typeof v !== "string" || v.length === 0) bad(`chunk property ${k} must be a non-empty string`);
    if (Buffer.byteLength(v as string) > MAX_ID_BYTES || hasControlChars(v as string))
      bad(`chunk property ${k} must be at most ${MAX_ID_BYTES} bytes without control characters`);
  }
  if (!Number.isInteger(meta.round) || meta.round < 0 || meta.round > 0x7fffffff)
    bad(`chunk property round ${String(meta.round)} is not a round number`);
  if (typeof meta.updateId !== "string" || !UPDATE_ID.test(meta.updateId))
    bad(`chunk property updateId '${String(meta.updateId)}' must match ${UPDATE_ID.source}`);
  const int = (name: "chunkIndex" | "chunkCount" | "size", min: number): number => {
    const v = meta[name];
    if (!Number.isSafeInteger(v) || v < min)
      bad(`chunk property ${name} ${String(v)} is not an integer ≥ ${min}`);
    return v;
  };
  const count = int("chunkCount", 1);
  if (int("chunkIndex", 0) >= count) bad(`chunkIndex ${meta.chunkIndex} ≥ chunkCount ${count}`);
  if (int("size", 1) < count) bad(`${count} chunks cannot make ${meta.size} bytes`);
  if (typeof meta.sha256 !== "string" || !SHA256_HEX.test(meta.sha256))
    bad(`chunk property sha256 '${String(meta.sha256)}' is not 64 lower-case hex digits`);
  if (!(body instanceof Uint8Array) || body.byteLength === 0) bad("a chunk must be non-empty bytes");
  if (body.byteLength > meta.size)
    bad(`chunk of ${body.byteLength} bytes is larger than its update (${meta.size})`);
}

function hasControlChars(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

function positiveInt(n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < 1)
    throw new FlotillaError("E_QUANT_CONFIG", `${name} ${n} must be a positive integer`);
  return n;
}
