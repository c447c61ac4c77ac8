import { Message } from "azure-iot-device";
import {
  CHUNK_MIME_TYPE,
  CHUNK_PROPERTIES,
  DEFAULT_CHUNK_BYTES,
  isChunk,
  MAX_CHUNK_BYTES,
  readChunkProperties,
  splitFrame,
  type ChunkMeta,
  type FrameMeta,
  type WireChunk,
} from "../../core/protocol/chunks";

/**
 * The chunk contract (core/protocol/chunks.ts, docs/iothub-protocol.md) on azure-iot-device messages: `frameChunks`
 * writes a result or failure frame as messages (trainer, quantizer); `inputChunkMeta` reads an input message's
 * chunk properties (quantizer, update-queue). Names, id rules, size limits and hash checks live in core/protocol.
 */

export { DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES };
export type { ChunkMeta, FrameMeta };

/** One chunk as an azure-iot-device Message (over its body, not a copy): messageId, content type, properties. */
export function chunkMessage(chunk: WireChunk): Message {
  const { body } = chunk;
  const msg = new Message(
    Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength),
  );
  msg.messageId = chunk.messageId;
  // The SDK's type admits only 'application/json', but any MIME type goes into the $.ct system property.
  msg.contentType = CHUNK_MIME_TYPE as Message["contentType"];
  for (const [k, v] of Object.entries(chunk.properties)) msg.properties.add(k, v);
  return msg;
}

/**
 * A result or failure frame as `updates` output messages: bodies of at most `maxChunkBytes` (default 255,000;
 * at most MAX_CHUNK_BYTES), each with the chunk properties; messageId `{updateId}:{chunkIndex}`.
 */
export function frameChunks(
  frame: Uint8Array,
  meta: FrameMeta,
  maxChunkBytes = DEFAULT_CHUNK_BYTES,
  /** The update id (default: the first 32 hex digits of the frame's sha256). */
  updateId?: string,
): { updateId: string; sha256: string; messages: Message[] } {
  const split = splitFrame(frame, meta, { maxChunkBytes, ...(updateId !== undefined ? { updateId } : {}) });
  const { sha256, chunks } = split;
  // Each message gets a copy of its slice: the caller may reuse the frame's memory once this returns.
  return {
    updateId: split.updateId,
    sha256,
    messages: chunks.map((c) => chunkMessage({ ...c, body: Buffer.from(c.body) })),
  };
}

/** A non-empty string application property of a message, or undefined. */
export function messageProperty(msg: Message, key: string): string | undefined {
  const v: unknown = msg.properties?.getValue(key);
  return typeof v === "string" && v !== "" ? v : undefined;
}

/**
 * The chunk properties of an input message, or undefined for a message carrying a whole frame (no `chunkCount`).
 * Missing or malformed values come out as ""/NaN, for the receiver's validation (core/protocol/chunks.ts
 * checkChunkMeta) to reject.
 */
export function inputChunkMeta(msg: Message): ChunkMeta | undefined {
  const props: Record<string, string> = {};
  for (const key of Object.values(CHUNK_PROPERTIES)) {
    const v = messageProperty(msg, key);
    if (v !== undefined) props[key] = v;
  }
  return isChunk(props) ? readChunkProperties(props) : undefined;
}
