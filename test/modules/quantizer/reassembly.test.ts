import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Message } from "azure-iot-device";
import { frameChunks, inputChunkMeta, type ChunkMeta } from "../../../modules/shared/chunks";
import { Reassembler } from "../../../modules/shared/reassembly";
import { inputChunkMeta as queueInputChunkMeta } from "../../../modules/update-queue/src/main";
import { codeOf, trainerChunks } from "../update-queue/helpers";

const META = { jobId: "job-1", round: 2, deviceId: "dev-1" };

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 17) & 0xff;
  return b;
}

/** Chunks as (body, parsed properties), as a module receives them. */
function chunksOf(frame: Uint8Array, max: number, meta = META): { body: Uint8Array; meta: ChunkMeta }[] {
  return frameChunks(frame, meta, max).messages.map((m) => ({
    body: m.getBytes(),
    meta: inputChunkMeta(m)!,
  }));
}

test("frameChunks and inputChunkMeta agree; the update-queue reads chunk properties with the same function", () => {
  const frame = bytes(2500);
  const { updateId, sha256, messages } = frameChunks(frame, META, 1000);
  assert.equal(messages.length, 3);
  const metas = messages.map((m) => inputChunkMeta(m)!);
  assert.deepEqual(metas[2], { ...META, updateId, chunkIndex: 2, chunkCount: 3, size: 2500, sha256 });
  assert.equal(queueInputChunkMeta, inputChunkMeta);
  assert.equal(inputChunkMeta(new Message(Buffer.from("whole frame"))), undefined);
  const odd = new Message(Buffer.from("x"));
  odd.properties.add("chunkCount", "two");
  assert.ok(Number.isNaN(inputChunkMeta(odd)!.chunkCount));
  // The trainer-format helper of the update-queue tests makes the same properties.
  const t = trainerChunks(frame, META, 1000);
  assert.deepEqual(
    t.chunks.map((c) => c.properties),
    messages.map((m) =>
      Object.fromEntries(Object.keys(t.chunks[0].properties).map((k) => [k, m.properties.getValue(k)])),
    ),
  );
});

test("reassembles in any order, ignores duplicates (also after completion), checks the sha256", () => {
  const r = new Reassembler();
  const frame = bytes(2500);
  const chunks = chunksOf(frame, 1000);
  assert.equal(r.add(chunks[2].body, chunks[2].meta).status, "partial");
  assert.equal(r.add(chunks[0].body, chunks[0].meta).status, "partial");
  assert.equal(r.add(chunks[0].body, chunks[0].meta).status, "duplicate");
  assert.deepEqual(r.stats().bytes, 1500);
  const done = r.add(chunks[1].body, chunks[1].meta);
  assert.equal(done.status, "complete");
  assert.deepEqual(done.status === "complete" && [...done.frame], [...frame]);
  assert.equal(r.add(chunks[1].body, chunks[1].meta).status, "duplicate");
  assert.deepEqual(r.stats(), {
    pending: 0,
    bytes: 0,
    completed: 1,
    duplicates: 2,
    expired: 0,
    evicted: 0,
    rejected: 0,
  });

  const bad = chunksOf(bytes(1500, 2), 1000).map((c) => ({
    body: c.body,
    meta: { ...c.meta, updateId: "x1", sha256: "0".repeat(64) },
  }));
  r.add(bad[0].body, bad[0].meta);
  assert.equal(
    codeOf(() => r.add(bad[1].body, bad[1].meta)),
    "E_QUANT_CHECKSUM",
  );
  assert.equal(r.stats().pending, 0, "a failed update is dropped");
});

test("invalid and conflicting chunks are refused with E_QUANT_* codes", () => {
  const r = new Reassembler({ maxBytes: 10_000 });
  const [c0, c1] = chunksOf(bytes(2000), 1000);
  const cases: [Partial<ChunkMeta>, string][] = [
    [{ jobId: "" }, "E_QUANT_CHUNK"],
    [{ deviceId: "a\nb" }, "E_QUANT_CHUNK"],
    [{ jobId: "j".repeat(129) }, "E_QUANT_CHUNK"],
    [{ round: NaN }, "E_QUANT_CHUNK"],
    [{ round: -1 }, "E_QUANT_CHUNK"],
    [{ updateId: "has space" }, "E_QUANT_CHUNK"],
    [{ chunkIndex: 2 }, "E_QUANT_CHUNK"],
    [{ chunkCount: 0 }, "E_QUANT_CHUNK"],
    [{ size: 1 }, "E_QUANT_CHUNK"],
    [{ sha256: "ABC" }, "E_QUANT_CHUNK"],
    [{ size: 20_000, chunkCount: 20 }, "E_QUANT_TOO_LARGE"],
  ];
  for (const [patch, code] of cases)
    assert.equal(
      codeOf(() => r.add(c0.body, { ...c0.meta, ...patch })),
      code,
    );
  assert.equal(
    codeOf(() => r.add(new Uint8Array(0), c0.meta)),
    "E_QUANT_CHUNK",
  );
  r.add(c0.body, c0.meta);
  assert.equal(
    codeOf(() => r.add(bytes(1000, 9), c0.meta)),
    "E_QUANT_CONFLICT",
  );
  assert.equal(
    codeOf(() => r.add(c1.body, { ...c1.meta, round: 3 })),
    "E_QUANT_CONFLICT",
  );
  assert.equal(
    codeOf(() => r.add(bytes(1001), c1.meta)),
    "E_QUANT_CHUNK",
    "more bytes than the update",
  );
  assert.equal(r.stats().rejected, cases.length + 4);
  assert.equal(r.add(c1.body, c1.meta).status, "complete", "the update survives the bad chunks");
});

test("bounded: the oldest partial update is evicted for room, idle ones expire after the TTL", () => {
  let now = 0;
  const r = new Reassembler({ maxBytes: 2500, ttlMs: 1000, now: () => now });
  const a = chunksOf(bytes(2000, 1), 1000, { ...META, round: 1 });
  const b = chunksOf(bytes(2000, 2), 1000, { ...META, round: 2 });
  const c = chunksOf(bytes(2000, 3), 1000, { ...META, round: 3 });
  r.add(a[0].body, a[0].meta);
  now = 10;
  r.add(b[0].body, b[0].meta);
  assert.equal(r.add(b[1].body, b[1].meta).status, "complete", "a was evicted to make room");
  assert.equal(r.stats().evicted, 1);
  assert.deepEqual([r.stats().pending, r.stats().bytes], [0, 0]);
  assert.equal(
    codeOf(() => r.add(bytes(10), { ...a[0].meta, size: 3000, chunkCount: 3 })),
    "E_QUANT_TOO_LARGE",
  );
  r.add(c[0].body, c[0].meta);
  now = 500;
  assert.equal(r.expire(), 0);
  now = 2000;
  assert.equal(r.expire(), 1);
  assert.deepEqual([r.stats().pending, r.stats().bytes, r.stats().expired], [0, 0, 1]);
  // b's id is forgotten after the TTL too: a new copy of it reassembles again.
  assert.equal(r.add(b[0].body, b[0].meta).status, "partial");
});
