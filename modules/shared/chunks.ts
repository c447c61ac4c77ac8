import { createHash } from "node:crypto";
import { Message } from "azure-iot-device";

/**
 * The chunk contract between edge modules (docs/iothub-protocol.md): a result or failure frame travels between
 * modules as messages of at most 255,000 body bytes, each with application properties jobId, round, deviceId,
 * updateId, chunkIndex, chunkCount, size and sha256 (of the whole frame; updateId = its first 32 hex digits).
 * `frameChunks` writes them (trainer, quantizer); `inputChunkMeta` reads them (quantizer, update-queue).
 */

/** edgeHub, like IoT Hub, refuses messages over 256 KB: bodies stay at 255,000 bytes, leaving room for properties. */
export const MAX_CHUNK_BYTES = 255_000;

export interface FrameMeta {
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
}

/** The application properties of one chunk, parsed (not yet validated: see modules/shared/reassembly.ts). */
export interface ChunkMeta extends FrameMeta {
  readonly updateId: string;
  readonly chunkIndex: number;
  readonly chunkCount: number;
  /** Bytes of the whole frame. */
  readonly size: number;
  /** sha256 (hex) of the whole frame. */
  readonly sha256: string;
}

/**
 * A result or failure frame as `updates` output messages: bodies of at most `maxChunkBytes`, each with the chunk
 * properties above; messageId `{updateId}:{chunkIndex}`.
 */
export function frameChunks(
  frame: Uint8Array,
  meta: FrameMeta,
  maxChunkBytes = MAX_CHUNK_BYTES,
): { updateId: string; sha256: string; messages: Message[] } {
  if (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes < 1 || maxChunkBytes > MAX_CHUNK_BYTES)
    throw new RangeError(`maxChunkBytes must be from 1 to ${MAX_CHUNK_BYTES}`);
  const sha256 = createHash("sha256").update(frame).digest("hex");
  const updateId = sha256.slice(0, 32);
  const chunkCount = Math.max(1, Math.ceil(frame.byteLength / maxChunkBytes));
  const messages: Message[] = [];
  for (let i = 0; i < chunkCount; i++) {
    const body = Buffer.from(
      frame.buffer,
      frame.byteOffset + i * maxChunkBytes,
      chunkLength(frame, i, maxChunkBytes),
    );
    const msg = new Message(Buffer.from(body));
    msg.messageId = `${updateId}:${i}`;
    // The SDK's type admits only 'application/json', but any MIME type goes into the $.ct system property.
    msg.contentType = "application/octet-stream" as Message["contentType"];
    const props: Record<string, string> = {
      jobId: meta.jobId,
      round: String(meta.round),
      deviceId: meta.deviceId,
      updateId,
      chunkIndex: String(i),
      chunkCount: String(chunkCount),
      size: String(frame.byteLength),
      sha256,
    };
    for (const [k, v] of Object.entries(props)) msg.properties.add(k, v);
    messages.push(msg);
  }
  return { updateId, sha256, messages };
}

function chunkLength(frame: Uint8Array, i: number, max: number): number {
  return Math.min(max, frame.byteLength - i * max);
}

/** A non-empty string application property of a message, or undefined. */
export function messageProperty(msg: Message, key: string): string | undefined {
  const v: unknown = msg.properties?.getValue(key);
  return typeof v === "string" && v !== "" ? v : undefined;
}

/**
 * The chunk properties of an input message, or undefined for a message carrying a whole frame (no `chunkCount`).
 * Missing or malformed values come out as ""/NaN, for the receiver's validation to reject.
 */
export function inputChunkMeta(msg: Message): ChunkMeta | undefined {
  if (messageProperty(msg, "chunkCount") === undefined) return undefined;
  const int = (key: string): number => {
    const v = messageProperty(msg, key);
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : NaN;
  };
  return {
    jobId: messageProperty(msg, "jobId") ?? "",
    round: int("round"),
    deviceId: messageProperty(msg, "deviceId") ?? "",
    updateId: messageProperty(msg, "updateId") ?? "",
    chunkIndex: int("chunkIndex"),
    chunkCount: int("chunkCount"),
    size: int("size"),
    sha256: messageProperty(msg, "sha256") ?? "",
  };
}
