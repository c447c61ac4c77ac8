import { createHash } from "node:crypto";
import { FlotillaError } from "../errors";

/**
 * The chunk wire contract (docs/iothub-protocol.md, "Chunks"): how an FLT1 frame (core/protocol/messages.ts) too big
 * for one IoT Hub / edgeHub message travels as several, and how a receiver checks what it got. One home for the
 * property names, the id rules, the size limits and the hash checks, used by the trainer and quantizer
 * (modules/shared/chunks.ts), the in-memory reassembler (modules/shared/reassembly.ts), the update-queue's durable
 * outbox (modules/update-queue/src/outbox.ts) and the Function's ingest (cloud/aggregator/src/ingest.ts).
 * Pure TypeScript: no Azure SDK here; building an azure-iot-device `Message` stays in modules/shared/chunks.ts.
 *
 * A chunk is a binary body (a slice of the frame) with string application properties:
 *   jobId, round, deviceId     the frame's header (checked against the reassembled frame by the receiver)
 *   updateId                   [A-Za-z0-9_:-]{1,100}; by default the first 32 hex digits of the frame's sha256
 *   chunkIndex, chunkCount     0 ≤ chunkIndex < chunkCount
 *   size, sha256               bytes and sha256 (64 lower-case hex digits) of the whole frame
 *   chunkSha256                (optional) sha256 of this chunk's body: a damaged chunk is refused on arrival
 *   flotilla-content-type      (optional) "flotilla-frame": tells updates from other telemetry on the same endpoint
 * and messageId `{updateId}:{chunkIndex}` (what receivers deduplicate on).
 */

/** Application property names of a chunk. */
export const CHUNK_PROPERTIES = Object.freeze({
  jobId: "jobId",
  round: "round",
  deviceId: "deviceId",
  updateId: "updateId",
  chunkIndex: "chunkIndex",
  chunkCount: "chunkCount",
  size: "size",
  sha256: "sha256",
  chunkSha256: "chunkSha256",
  contentType: "flotilla-content-type",
} as const);

/** Application property naming what the body is, next to the `application/octet-stream` content type. */
export const CONTENT_TYPE_PROPERTY = CHUNK_PROPERTIES.contentType;
export const FLOTILLA_FRAME_CONTENT_TYPE = "flotilla-frame";
/** The `$.ct` system property of every chunk. */
export const CHUNK_MIME_TYPE = "application/octet-stream";

/**
 * Sizes. IoT Hub (and edgeHub, for module-to-module routes) refuses a device-to-cloud message over 256 KB =
 * 262,144 bytes, body *and* properties together, and meters it in 4 KB units (Microsoft docs:
 * iot-hub-devguide-quotas-throttling, "Other limits"; the SDK's MQTT transport refuses a larger payload itself).
 * The local hub counts the same way: body bytes + the MQTT topic's property-bag segment (local/hub/mqtt-broker.ts,
 * D2C_MAX_BYTES).
 *
 * The largest property bag a valid chunk can carry is bounded by the id rules below (jobId and deviceId ≤ 128
 * UTF-8 bytes, each byte at most 3 characters once %-encoded; updateId ≤ 100 characters; the integers ≤ 15 digits):
 * 1,749 bytes for the update-queue's upstream chunk with every optional property, system properties ($.mid, $.ct,
 * $.on) included — measured with the SDK's own topic builder in test/core/protocol/chunks.test.ts. One 4 KB meter
 * unit is reserved for it, so the one maximum body is 262,144 − 4,096 = 258,048 bytes: a maximal chunk with maximal
 * properties still fits, and one byte more is refused by every sender and receiver.
 *
 * The default body, 255,000 bytes, stays with its properties under 63 × 4,096 = 258,048 bytes, so a chunk is billed
 * 63 units rather than 64; any size from 1 to MAX_CHUNK_BYTES is valid on the wire.
 */
export const D2C_MAX_MESSAGE_BYTES = 256 * 1024;
/** Bytes of every message reserved for system and application properties (one 4 KB meter unit). */
export const PROPERTY_RESERVE_BYTES = 4096;
/** The largest chunk body, for every sender and receiver. */
export const MAX_CHUNK_BYTES = D2C_MAX_MESSAGE_BYTES - PROPERTY_RESERVE_BYTES;
/** The default chunk body (63 meter units with its properties). */
export const DEFAULT_CHUNK_BYTES = 255_000;

/** jobId and deviceId: non-empty, at most this many UTF-8 bytes, no control characters. */
export const MAX_ID_BYTES = 128;
/** Rounds are 0 … 2^31 − 1. */
export const MAX_ROUND = 0x7fffffff;
export const UPDATE_ID_PATTERN = /^[A-Za-z0-9_:-]{1,100}$/;
export const SHA256_HEX_PATTERN = /^[0-9a-f]{64}$/;
/** Integer properties on the wire: decimal digits only, at most 15 (safe integers). */
const INT_PATTERN = /^\d{1,15}$/;

/**
 * Why a chunk or its update was refused — what receivers count:
 *   malformed  properties missing, out of range or inconsistent; a body that is not bytes or larger than its update
 *   oversized  a body over MAX_CHUNK_BYTES (or, at a receiver, an update larger than it accepts)
 *   hash       a body not matching its chunkSha256, or a reassembled frame not matching its size and sha256
 */
export type ChunkRejection = "malformed" | "oversized" | "hash";

/** Error codes of the contract's checks (receivers may report them under their own codes: see `codes`). */
export const CHUNK_ERROR_CODES: Readonly<Record<ChunkRejection, string>> = Object.freeze({
  malformed: "E_CHUNK_MALFORMED",
  oversized: "E_CHUNK_OVERSIZED",
  hash: "E_CHUNK_HASH",
});

/** A chunk refused by the contract: a FlotillaError carrying its counted `reason`. */
export class ChunkError extends FlotillaError<string> {
  constructor(
    readonly reason: ChunkRejection,
    message: string,
    code: string = CHUNK_ERROR_CODES[reason],
  ) {
    super(code, message);
  }
}

/** Lets a module keep its own stable codes (e.g. E_QUEUE_INVALID) for the contract's rejections. */
export type ChunkErrorCodes = Partial<Record<ChunkRejection, string>>;

function reject(reason: ChunkRejection, message: string, codes?: ChunkErrorCodes): never {
  throw new ChunkError(reason, message, codes?.[reason] ?? CHUNK_ERROR_CODES[reason]);
}

/** The header every chunk of a frame repeats. */
export interface FrameMeta {
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
}

/** The application properties of one chunk, parsed. */
export interface ChunkMeta extends FrameMeta {
  readonly updateId: string;
  readonly chunkIndex: number;
  readonly chunkCount: number;
  /** Bytes of the whole frame. */
  readonly size: number;
  /** sha256 (hex) of the whole frame. */
  readonly sha256: string;
  /** sha256 (hex) of this chunk's body, when the sender put it on. */
  readonly chunkSha256?: string;
}

/** Application properties of one chunk on the wire: strings, because the IoT Hub property bag is string-only. */
export type ChunkProperties = Record<string, string>;

/** One chunk ready for a transport. */
export interface WireChunk {
  /** A view of the frame (no copy): a transport that keeps it must copy it. */
  readonly body: Uint8Array;
  /** `{updateId}:{chunkIndex}`. */
  readonly messageId: string;
  readonly properties: ChunkProperties;
}

export interface SplitOptions {
  /** Body bytes per chunk, 1 … MAX_CHUNK_BYTES (default DEFAULT_CHUNK_BYTES). */
  maxChunkBytes?: number;
  /** The frame's sha256 when the caller has it (it is not recomputed). */
  sha256?: string;
  /** Caller-chosen update id (default: the first 32 hex digits of the sha256). */
  updateId?: string;
  /** Put chunkSha256 and flotilla-content-type on each chunk (the update-queue's upstream chunks do). */
  upstream?: boolean;
}

/** sha256 of bytes as lower-case hex. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * The id of an update without a caller-chosen one: the first 32 hex digits of its sha256. The same update always
 * gets the same id (idempotent resends); two rounds never collide because the frame's header names job and round.
 */
export function deriveUpdateId(frameSha256: string): string {
  return frameSha256.slice(0, 32);
}

/** True for a valid chunk body size (1 … MAX_CHUNK_BYTES). */
export function isChunkSize(n: unknown): n is number {
  return Number.isSafeInteger(n) && (n as number) >= 1 && (n as number) <= MAX_CHUNK_BYTES;
}

/** How many chunks a frame of `size` bytes needs at `maxChunkBytes` per chunk (at least one). */
export function chunkCountOf(size: number, maxChunkBytes: number): number {
  return Math.max(1, Math.ceil(size / maxChunkBytes));
}

/**
 * Cuts a frame into chunks of at most `maxChunkBytes` with their properties. Throws ChunkError (oversized) for a
 * chunk size outside 1 … MAX_CHUNK_BYTES and (malformed) for an invalid header or update id.
 */
export function splitFrame(
  frame: Uint8Array,
  meta: FrameMeta,
  opts: SplitOptions = {},
): { updateId: string; sha256: string; chunks: WireChunk[] } {
  const max = opts.maxChunkBytes ?? DEFAULT_CHUNK_BYTES;
  if (!isChunkSize(max))
    reject("oversized", `maxChunkBytes ${String(max)} must be an integer from 1 to ${MAX_CHUNK_BYTES}`);
  if (!(frame instanceof Uint8Array) || frame.byteLength === 0)
    reject("malformed", "a frame must be non-empty bytes");
  const sha256 = opts.sha256 ?? sha256Hex(frame);
  const updateId = opts.updateId ?? deriveUpdateId(sha256);
  const chunkCount = chunkCountOf(frame.byteLength, max);
  const head = { ...meta, updateId, chunkCount, size: frame.byteLength, sha256 };
  checkChunkMeta({ ...head, chunkIndex: 0 });
  const chunks: WireChunk[] = [];
  for (let i = 0; i < chunkCount; i++) {
    const body = frame.subarray(i * max, Math.min(frame.byteLength, (i + 1) * max));
    const properties: ChunkProperties = {
      [CHUNK_PROPERTIES.jobId]: meta.jobId,
      [CHUNK_PROPERTIES.round]: String(meta.round),
      [CHUNK_PROPERTIES.deviceId]: meta.deviceId,
      [CHUNK_PROPERTIES.updateId]: updateId,
      [CHUNK_PROPERTIES.chunkIndex]: String(i),
      [CHUNK_PROPERTIES.chunkCount]: String(chunkCount),
      [CHUNK_PROPERTIES.size]: String(frame.byteLength),
      [CHUNK_PROPERTIES.sha256]: sha256,
    };
    if (opts.upstream) {
      properties[CHUNK_PROPERTIES.chunkSha256] = sha256Hex(body);
      properties[CONTENT_TYPE_PROPERTY] = FLOTILLA_FRAME_CONTENT_TYPE;
    }
    chunks.push({ body, messageId: `${updateId}:${i}`, properties });
  }
  return { updateId, sha256, chunks };
}

/** True when properties carry a chunk (an own `chunkCount`); a message without one carries a whole frame. */
export function isChunk(props: Readonly<Record<string, unknown>> | undefined | null): boolean {
  return typeof props === "object" && props !== null && own(props, CHUNK_PROPERTIES.chunkCount) !== undefined;
}

/** Own properties only: an inherited value (a polluted Object.prototype) must never stand in for a missing one. */
function own(p: Readonly<Record<string, unknown>>, k: string): unknown {
  return Object.hasOwn(p, k) ? p[k] : undefined;
}

/** A string (or finite number, as some transports type them) property as text; "" when missing or invalid. */
function text(p: Readonly<Record<string, unknown>>, k: string): string {
  const v = own(p, k);
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  return "";
}

function integer(p: Readonly<Record<string, unknown>>, k: string): number {
  const s = text(p, k);
  return INT_PATTERN.test(s) ? Number(s) : NaN;
}

/**
 * Reads chunk properties (own properties only) without judging them: missing or malformed values come out as
 * ""/NaN, for `checkChunkMeta` to refuse with a reason. Hex digests are lower-cased.
 */
export function readChunkProperties(props: Readonly<Record<string, unknown>>): ChunkMeta {
  const hasChunkSha = own(props, CHUNK_PROPERTIES.chunkSha256) !== undefined;
  return {
    jobId: text(props, CHUNK_PROPERTIES.jobId),
    round: integer(props, CHUNK_PROPERTIES.round),
    deviceId: text(props, CHUNK_PROPERTIES.deviceId),
    updateId: text(props, CHUNK_PROPERTIES.updateId),
    chunkIndex: integer(props, CHUNK_PROPERTIES.chunkIndex),
    chunkCount: integer(props, CHUNK_PROPERTIES.chunkCount),
    size: integer(props, CHUNK_PROPERTIES.size),
    sha256: text(props, CHUNK_PROPERTIES.sha256).toLowerCase(),
    ...(hasChunkSha ? { chunkSha256: text(props, CHUNK_PROPERTIES.chunkSha256).toLowerCase() } : {}),
  };
}

/**
 * Parses and checks the application properties of a chunk (own properties only). Throws ChunkError with reason
 * `malformed` for anything `checkChunkMeta` refuses.
 */
export function parseChunkProperties(
  props: Readonly<Record<string, unknown>> | undefined | null,
  codes?: ChunkErrorCodes,
): ChunkMeta {
  if (typeof props !== "object" || props === null) reject("malformed", "no application properties", codes);
  const meta = readChunkProperties(props);
  checkChunkMeta(meta, codes);
  return meta;
}

/** jobId, round, deviceId (and updateId when given) of a frame or chunk; ChunkError `malformed` otherwise. */
export function checkFrameMeta(
  meta: FrameMeta & { readonly updateId?: unknown },
  codes?: ChunkErrorCodes,
): void {
  if (typeof meta !== "object" || meta === null) reject("malformed", "chunk properties are missing", codes);
  for (const k of ["jobId", "deviceId"] as const) {
    const v: unknown = meta[k];
    if (typeof v !== "string" || v.length === 0)
      reject("malformed", `chunk property '${k}' missing or invalid`, codes);
    if (Buffer.byteLength(v) > MAX_ID_BYTES || hasControlChars(v))
      reject(
        "malformed",
        `chunk property '${k}' must be at most ${MAX_ID_BYTES} bytes without control characters`,
        codes,
      );
  }
  if (!Number.isInteger(meta.round) || meta.round < 0 || meta.round > MAX_ROUND)
    reject("malformed", `chunk property 'round' ${String(meta.round)} is not a round number`, codes);
  if (
    meta.updateId !== undefined &&
    (typeof meta.updateId !== "string" || !UPDATE_ID_PATTERN.test(meta.updateId))
  )
    reject(
      "malformed",
      `chunk property 'updateId' '${String(meta.updateId)}' must match ${UPDATE_ID_PATTERN.source}`,
      codes,
    );
}

/**
 * The contract's rules for one chunk's properties: the header as in `checkFrameMeta`; updateId present;
 * 0 ≤ chunkIndex < chunkCount; chunkCount ≤ size ≤ chunkCount × MAX_CHUNK_BYTES; sha256 (and chunkSha256 when
 * present) 64 lower-case hex digits. Throws ChunkError `malformed`.
 */
export function checkChunkMeta(meta: ChunkMeta, codes?: ChunkErrorCodes): void {
  checkFrameMeta(meta, codes);
  if (typeof meta.updateId !== "string")
    reject("malformed", "chunk property 'updateId' missing or invalid", codes);
  const int = (name: "chunkIndex" | "chunkCount" | "size", min: number): number => {
    const v = meta[name];
    if (!Number.isSafeInteger(v) || v < min)
      reject("malformed", `chunk property '${name}' ${String(v)} is not an integer ≥ ${min}`, codes);
    return v;
  };
  const count = int("chunkCount", 1);
  if (int("chunkIndex", 0) >= count)
    reject("malformed", `chunkIndex ${meta.chunkIndex} ≥ chunkCount ${count}`, codes);
  const size = int("size", 1);
  if (size < count || count * MAX_CHUNK_BYTES < size)
    reject("malformed", `chunkCount ${count} cannot carry ${size} bytes`, codes);
  if (typeof meta.sha256 !== "string" || !SHA256_HEX_PATTERN.test(meta.sha256))
    reject("malformed", `chunk property 'sha256' '${String(meta.sha256)}' is not 64 hex digits`, codes);
  if (
    meta.chunkSha256 !== undefined &&
    (typeof meta.chunkSha256 !== "string" || !SHA256_HEX_PATTERN.test(meta.chunkSha256))
  )
    reject("malformed", `chunk property 'chunkSha256' is not 64 hex digits`, codes);
}

/**
 * The contract's rules for one chunk's body: non-empty bytes (malformed), at most MAX_CHUNK_BYTES (oversized), at
 * most the update's size (malformed), matching chunkSha256 when the sender put one on (hash).
 */
export function checkChunkBody(body: unknown, meta: ChunkMeta, codes?: ChunkErrorCodes): Uint8Array {
  if (!(body instanceof Uint8Array) || body.byteLength === 0)
    reject("malformed", "a chunk must be non-empty bytes", codes);
  if (body.byteLength > MAX_CHUNK_BYTES)
    reject("oversized", `chunk body of ${body.byteLength} bytes exceeds ${MAX_CHUNK_BYTES}`, codes);
  if (body.byteLength > meta.size)
    reject("malformed", `chunk of ${body.byteLength} bytes is larger than its update (${meta.size})`, codes);
  if (meta.chunkSha256 !== undefined && sha256Hex(body) !== meta.chunkSha256)
    reject("hash", `chunk ${meta.chunkIndex} of ${meta.updateId}: chunkSha256 mismatch`, codes);
  return body;
}

/** True when two chunks belong to the same update as far as their properties tell (all but index and chunkSha256). */
export function sameUpdate(a: ChunkMeta, b: ChunkMeta): boolean {
  return (
    a.updateId === b.updateId &&
    a.jobId === b.jobId &&
    a.round === b.round &&
    a.deviceId === b.deviceId &&
    a.chunkCount === b.chunkCount &&
    a.size === b.size &&
    a.sha256 === b.sha256
  );
}

/** Checks a reassembled frame against its announced size and sha256; ChunkError `hash` otherwise. */
export function checkFrame(frame: Uint8Array, meta: ChunkMeta, codes?: ChunkErrorCodes): void {
  const sha = sha256Hex(frame);
  if (frame.byteLength !== meta.size || sha !== meta.sha256) {
    reject(
      "hash",
      `update ${meta.updateId} reassembled to ${frame.byteLength} bytes with sha256 ${sha}; expected ${meta.size} bytes, ${meta.sha256}`,
      codes,
    );
  }
}

/**
 * Reassembles one update chunk by chunk, in chunkIndex order, into a single buffer of the announced size (a
 * receiver that reads chunks one at a time, e.g. from blob storage, never holds them all and the frame at once).
 * `add` refuses bodies past the announced size or count, `finish` checks the whole against size and sha256; both
 * throw ChunkError `hash`.
 */
export class FrameAssembler {
  private readonly frame: Uint8Array;
  private offset = 0;
  private added = 0;

  constructor(
    readonly meta: ChunkMeta,
    private readonly codes?: ChunkErrorCodes,
  ) {
    this.frame = new Uint8Array(meta.size);
  }

  /** Appends the body of the next chunk (chunkIndex = the number added so far). */
  add(body: Uint8Array): void {
    const { updateId, size, chunkCount } = this.meta;
    if (this.added >= chunkCount)
      reject("hash", `update ${updateId}: more than its ${chunkCount} chunks`, this.codes);
    if (this.offset + body.byteLength > size)
      reject("hash", `update ${updateId}: chunks exceed the announced ${size} bytes`, this.codes);
    this.frame.set(body, this.offset);
    this.offset += body.byteLength;
    this.added++;
  }

  /** The whole frame, checked against the announced chunk count, size and sha256. */
  finish(): Uint8Array {
    const { updateId, chunkCount } = this.meta;
    if (this.added !== chunkCount)
      reject("hash", `update ${updateId}: ${this.added} of ${chunkCount} chunks`, this.codes);
    const frame = this.offset === this.frame.byteLength ? this.frame : this.frame.subarray(0, this.offset);
    checkFrame(frame, this.meta, this.codes);
    return frame;
  }
}

/**
 * Concatenates the bodies of an update's chunks, in chunkIndex order, into one frame and checks it against the
 * announced size and sha256. Throws ChunkError `hash` when a chunk is missing, the bodies add up to another size,
 * or the digest differs.
 */
export function assembleFrame(
  bodies: readonly (Uint8Array | undefined)[],
  meta: ChunkMeta,
  codes?: ChunkErrorCodes,
): Uint8Array {
  const asm = new FrameAssembler(meta, codes);
  for (let i = 0; i < bodies.length; i++) {
    const b = bodies[i];
    if (!b) reject("hash", `update ${meta.updateId}: chunk ${i} is missing`, codes);
    asm.add(b);
  }
  return asm.finish();
}

function hasControlChars(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}
