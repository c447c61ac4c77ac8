import { createHash } from "node:crypto";
import { Message } from "azure-iot-device";
import { MAX_CHUNK_BYTES } from "./config";

export interface FrameMeta {
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
}

/**
 * A result or failure frame as `updates` output messages (docs/iothub-protocol.md): bodies of at most
 * `maxChunkBytes`, each with application properties jobId, round, deviceId, updateId, chunkIndex, chunkCount,
 * size and sha256 (of the whole frame; updateId = its first 32 hex digits); messageId `{updateId}:{chunkIndex}`.
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
