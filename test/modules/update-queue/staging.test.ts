import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Outbox } from "../../../modules/update-queue/src/outbox";
import { chunkMetaOf, codeOf, reassemble, resultFrame, tempDir, trainerChunks } from "./helpers";

function open(dir: string, options: ConstructorParameters<typeof Outbox>[1] = {}): Outbox {
  return new Outbox(join(dir, "outbox.sqlite"), options);
}

test(
  "an update sent by the trainer as several input chunks is queued once the last one is in",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const { frame, meta } = resultFrame({ floats: 3000, round: 3 }); // 12 KB
    const { updateId, chunks } = trainerChunks(frame, meta, 5000); // 3 input chunks
    const [c0, c1, c2] = chunks;
    let r = box.stageChunk(c2.body, chunkMetaOf(c2.properties)); // out of order
    assert.deepEqual(r, { updateId, complete: false, received: 1, chunkCount: 3 });
    r = box.stageChunk(c0.body, chunkMetaOf(c0.properties));
    r = box.stageChunk(c0.body, chunkMetaOf(c0.properties)); // redelivered: a no-op
    assert.equal(r.received, 2);
    assert.equal(box.get(updateId), undefined);
    let s = box.stats();
    assert.deepEqual([s.depth, s.stagedUpdates, s.stagedBytes], [0, 1, c0.body.length + c2.body.length]);
    r = box.stageChunk(c1.body, chunkMetaOf(c1.properties));
    assert.deepEqual(r, { updateId, complete: true, received: 3, chunkCount: 3 });
    s = box.stats();
    assert.deepEqual([s.depth, s.stagedUpdates, s.stagedBytes], [1, 0, 0]);
    assert.deepEqual([s.counters.staged_chunks, s.counters.enqueued, s.counters.duplicates], [3, 1, 1]);
    // The queued update is the original frame, under the trainer's id.
    assert.ok(reassemble(box.chunksOf(updateId)).equals(Buffer.from(frame)));
    // A chunk arriving after the update was queued (edgeHub redelivery) is a no-op too.
    assert.equal(box.stageChunk(c1.body, chunkMetaOf(c1.properties)).complete, true);
    assert.equal(box.stats().counters.enqueued, 1);
    // So is the whole frame enqueued directly.
    assert.equal(box.enqueue(frame, { ...meta, updateId }), updateId);
  }),
);

test(
  "staged chunks survive a restart: the update completes after reopening",
  withContext((t) => {
    const dir = tempDir(t);
    const { frame, meta } = resultFrame({ floats: 3000 });
    const { updateId, chunks } = trainerChunks(frame, meta, 5000);
    const box = open(dir);
    box.stageChunk(chunks[0].body, chunkMetaOf(chunks[0].properties));
    box.stageChunk(chunks[1].body, chunkMetaOf(chunks[1].properties));
    box.close();
    const again = open(dir);
    t.after(() => again.close());
    assert.equal(again.stats().stagedUpdates, 1);
    assert.equal(again.stageChunk(chunks[2].body, chunkMetaOf(chunks[2].properties)).complete, true);
    assert.ok(reassemble(again.chunksOf(updateId)).equals(Buffer.from(frame)));
  }),
);

test(
  "chunks that do not reassemble to their sha256 are rejected: E_QUEUE_CHECKSUM, discarded and counted",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const { frame, meta } = resultFrame({ floats: 3000 });
    const { updateId, chunks } = trainerChunks(frame, meta, 5000);
    box.stageChunk(chunks[0].body, chunkMetaOf(chunks[0].properties));
    const flipped = Buffer.from(chunks[1].body);
    flipped[10] ^= 1;
    box.stageChunk(flipped, chunkMetaOf(chunks[1].properties));
    assert.equal(
      codeOf(() => box.stageChunk(chunks[2].body, chunkMetaOf(chunks[2].properties))),
      "E_QUEUE_CHECKSUM",
    );
    const s = box.stats();
    assert.deepEqual([s.depth, s.stagedUpdates, s.counters.rejected], [0, 0, 1]);
    assert.equal(box.get(updateId), undefined);
    // A frame whose header disagrees with the chunk properties is rejected the same way.
    const other = resultFrame({ round: 9 });
    const lie = trainerChunks(other.frame, { ...other.meta, round: 8 }, 100_000);
    assert.equal(
      codeOf(() => box.stageChunk(lie.chunks[0].body, chunkMetaOf(lie.chunks[0].properties))),
      "E_QUEUE_META_MISMATCH",
    );
    assert.equal(box.stats().counters.rejected, 2);
  }),
);

test(
  "a chunk contradicting the ones before it, or with invalid properties, changes nothing",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const { frame, meta } = resultFrame({ floats: 3000 });
    const { chunks } = trainerChunks(frame, meta, 5000);
    const m0 = chunkMetaOf(chunks[0].properties);
    box.stageChunk(chunks[0].body, m0);
    const before = box.stats();
    const m1 = chunkMetaOf(chunks[1].properties);
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, chunkCount: 4 })),
      "E_QUEUE_CONFLICT",
    );
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, round: 2 })),
      "E_QUEUE_CONFLICT",
    );
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, m0)),
      "E_QUEUE_CONFLICT",
    ); // index 0 again, other bytes
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, chunkIndex: 3 })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, chunkIndex: NaN })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, sha256: "xyz" })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, updateId: "" })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, size: 10 })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.stageChunk(new Uint8Array(0), m1)),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.stageChunk(chunks[1].body, { ...m1, size: 1e12 })),
      "E_QUEUE_TOO_LARGE",
    );
    assert.deepEqual(box.stats(), before);
  }),
);

test(
  "partly received updates expire after stagingTtlMs and are dropped with their closed round",
  withContext((t) => {
    let now = 1_000_000;
    const box = open(tempDir(t), { stagingTtlMs: 60_000, now: () => now });
    t.after(() => box.close());
    const stage = (round: number, jobId = "job-1") => {
      const { frame, meta } = resultFrame({ floats: 3000, round, jobId });
      const { chunks } = trainerChunks(frame, meta, 5000);
      box.stageChunk(chunks[0].body, chunkMetaOf(chunks[0].properties));
    };
    stage(1);
    now += 50_000;
    stage(2);
    now += 20_000; // round 1's chunk is 70 s old, round 2's 20 s
    stage(3, "other-job");
    let s = box.stats();
    assert.deepEqual([s.stagedUpdates, s.counters.dropped_staged], [2, 1]);
    assert.equal(box.dropClosedRounds("job-1", 3), 1);
    s = box.stats();
    assert.deepEqual([s.stagedUpdates, s.counters.dropped_closed], [1, 1]);
  }),
);
