import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isFlotillaError } from "../../../core/errors";
import { encodeMessage } from "../../../core/protocol/messages";
import type { OutboxChunk } from "../../../modules/update-queue/src/outbox";
import { isWritableAck, type WritableAck } from "../../../modules/shared/pnp";
import type { FakeModuleClient } from "./fake-client";

/** A fresh temp directory, removed when the test ends. */
export function tempDir(t: { after(fn: () => void): void }, prefix = "flotilla-uq-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Deterministic pseudo-random floats (mulberry32), so a child process can rebuild the same frame. */
export function deltaOf(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    out[i] = (((x ^ (x >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

export interface FrameSpec {
  jobId?: string;
  round?: number;
  deviceId?: string;
  /** float32 values in the delta. */
  floats?: number;
  seed?: number;
}

/** A real FLT1 `result` frame as the trainer produces it, and the meta the queue takes with it. */
export function resultFrame(spec: FrameSpec = {}): {
  frame: Uint8Array;
  meta: { jobId: string; round: number; deviceId: string };
} {
  const jobId = spec.jobId ?? "job-1";
  const round = spec.round ?? 1;
  const deviceId = spec.deviceId ?? "dev-1";
  const frame = encodeMessage({
    type: "result",
    jobId,
    round,
    deviceId,
    layoutHash: "ab".repeat(32),
    numSamples: 100,
    metrics: { loss: 0.5, accuracy: 0.75, trainMs: 12 },
    delta: deltaOf(spec.floats ?? 1000, spec.seed ?? 1),
  });
  return { frame, meta: { jobId, round, deviceId } };
}

export function sha256hex(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/** What the cloud does: order chunks by index, check each chunk's hash, concatenate. */
export function reassemble(chunks: readonly OutboxChunk[]): Buffer {
  const sorted = [...chunks].sort(
    (a, b) => Number(a.properties.chunkIndex) - Number(b.properties.chunkIndex),
  );
  sorted.forEach((c, i) => {
    assert.equal(Number(c.properties.chunkIndex), i);
    assert.equal(c.properties.chunkSha256, sha256hex(c.body));
  });
  return Buffer.concat(sorted.map((c) => c.body));
}

/** The FlotillaError code a call throws (fails the test if it does not throw one). */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(isFlotillaError(e), `expected a FlotillaError, got ${String(e)}`);
    return e.code;
  }
  return assert.fail("expected an error");
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until `cond()` holds, polling; fails after `timeoutMs`. */
export async function until(cond: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/**
 * An update as the trainer puts it on its `updates` output (docs/iothub-protocol.md): bodies of at most
 * `maxChunkBytes`, each with jobId, round, deviceId, updateId (first 32 hex digits of the frame's sha256),
 * chunkIndex, chunkCount, size and sha256 (of the whole frame).
 */
export function trainerChunks(
  frame: Uint8Array,
  meta: { jobId: string; round: number; deviceId: string },
  maxChunkBytes = 255_000,
): { updateId: string; sha256: string; chunks: { body: Buffer; properties: Record<string, string> }[] } {
  const sha = sha256hex(frame);
  const updateId = sha.slice(0, 32);
  const count = Math.max(1, Math.ceil(frame.byteLength / maxChunkBytes));
  const chunks = [];
  for (let i = 0; i < count; i++) {
    chunks.push({
      body: Buffer.from(
        frame.subarray(i * maxChunkBytes, Math.min(frame.byteLength, (i + 1) * maxChunkBytes)),
      ),
      properties: {
        jobId: meta.jobId,
        round: String(meta.round),
        deviceId: meta.deviceId,
        updateId,
        chunkIndex: String(i),
        chunkCount: String(count),
        size: String(frame.byteLength),
        sha256: sha,
      },
    });
  }
  return { updateId, sha256: sha, chunks };
}

/** The chunk meta Outbox.stageChunk takes, from trainer chunk properties. */
export function chunkMetaOf(p: Record<string, string>) {
  return {
    jobId: p.jobId,
    round: Number(p.round),
    deviceId: p.deviceId,
    updateId: p.updateId,
    chunkIndex: Number(p.chunkIndex),
    chunkCount: Number(p.chunkCount),
    size: Number(p.size),
    sha256: p.sha256,
  };
}

/** The last ack of `name` the module reported (FakeTwin's reported patches), once one answers version `av`. */
export async function ackOf(client: FakeModuleClient, name: string, av: number): Promise<WritableAck> {
  let found: WritableAck | undefined;
  await until(
    () => {
      for (const p of client.twin.reportedPatches) {
        const a = p[name];
        if (isWritableAck(a) && a.av === av) found = a;
      }
      return found !== undefined;
    },
    5000,
    `the ack of ${name} at version ${av}`,
  );
  return found!;
}

let version = 1;
/** A desired patch as the hub sends it (its own $version). */
export function desire(client: FakeModuleClient, patch: Record<string, unknown>): number {
  version++;
  client.twin.patchDesired({ ...patch, $version: version });
  return version;
}
