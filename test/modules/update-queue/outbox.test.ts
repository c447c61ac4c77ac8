import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { encodeMessage, evaluationUpdateId, EVALUATION_VERSION } from "../../../core/protocol/messages";
import {
  DEFAULT_MAX_CHUNK_BYTES,
  MAX_CHUNK_BYTES,
  Outbox,
  deriveUpdateId,
  sha256,
} from "../../../modules/update-queue/src/outbox";
import { codeOf, reassemble, resultFrame, sha256hex, tempDir } from "./helpers";

const Sqlite = require("better-sqlite3") as new (file: string) => {
  prepare(sql: string): { run(...a: unknown[]): unknown; get(...a: unknown[]): unknown };
  close(): void;
};

function open(dir: string, options: ConstructorParameters<typeof Outbox>[1] = {}): Outbox {
  return new Outbox(join(dir, "outbox.sqlite"), options);
}

test(
  "an enqueued update comes back as chunks that reassemble to the same bytes and sha256",
  withContext((t) => {
    const box = open(tempDir(t), { maxChunkBytes: 1000 });
    t.after(() => box.close());
    const { frame, meta } = resultFrame({ floats: 2000, round: 7 }); // ~8 KB: 9 chunks
    const id = box.enqueue(frame, meta);
    assert.equal(id, deriveUpdateId(sha256hex(frame)));
    assert.equal(id, sha256hex(frame).slice(0, 32)); // docs/iothub-protocol.md
    const chunks = box.chunksOf(id);
    assert.equal(chunks.length, Math.ceil(frame.byteLength / 1000));
    const back = reassemble(chunks);
    assert.ok(back.equals(Buffer.from(frame)));
    assert.equal(sha256hex(back), chunks[0].properties.sha256);
    chunks.forEach((c, i) => {
      assert.equal(c.messageId, `${id}:${i}`);
      assert.deepEqual(
        { ...c.properties, chunkSha256: "" },
        {
          jobId: "job-1",
          round: "7",
          deviceId: "dev-1",
          updateId: id,
          chunkIndex: String(i),
          chunkCount: String(chunks.length),
          size: String(frame.byteLength),
          sha256: sha256hex(frame),
          chunkSha256: "",
          "flotilla-content-type": "flotilla-frame",
        },
      );
    });
    const info = box.get(id);
    assert.equal(info?.state, "pending");
    assert.equal(info?.size, frame.byteLength);
  }),
);

test(
  "a frame handed over as a Buffer at an unaligned offset (as the MQTT transport does) is accepted",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const { frame, meta } = resultFrame({ floats: 10 });
    const pool = Buffer.alloc(frame.byteLength + 3);
    pool.set(frame, 3);
    const odd = pool.subarray(3);
    const id = box.enqueue(odd, meta);
    assert.ok(reassemble(box.chunksOf(id)).equals(Buffer.from(frame)));
  }),
);

test(
  "a multi-MB update is cut into chunks no larger than the limit (default 255,000 bytes)",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    assert.equal(box.maxChunkBytes, DEFAULT_MAX_CHUNK_BYTES);
    const { frame, meta } = resultFrame({ floats: 1_500_000, seed: 3 }); // 6 MB
    const id = box.enqueue(frame, meta);
    const chunks = box.chunksOf(id);
    assert.equal(chunks.length, Math.ceil(frame.byteLength / 255_000));
    assert.ok(chunks.length >= 24);
    for (const c of chunks) assert.ok(c.body.byteLength <= 255_000 && c.body.byteLength > 0);
    assert.equal(chunks.slice(0, -1).filter((c) => c.body.byteLength !== 255_000).length, 0);
    assert.ok(reassemble(chunks).equals(Buffer.from(frame)));
    // The chunk size can be changed (module twin) but never past 256 KB less the property reserve.
    box.setMaxChunkBytes(MAX_CHUNK_BYTES);
    assert.ok(box.chunksOf(id).every((c) => c.body.byteLength <= MAX_CHUNK_BYTES));
    assert.equal(
      codeOf(() => box.setMaxChunkBytes(256 * 1024)),
      "E_QUEUE_CONFIG",
    );
    assert.equal(
      codeOf(() => open(tempDir(t), { maxChunkBytes: 0 })),
      "E_QUEUE_CONFIG",
    );
  }),
);

test(
  "enqueueing the same update twice is a no-op, also after it was acked",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const { frame, meta } = resultFrame();
    const id = box.enqueue(frame, meta);
    assert.equal(box.enqueue(frame.slice(), meta), id);
    let s = box.stats();
    assert.equal(s.depth, 1);
    assert.equal(s.counters.enqueued, 1);
    assert.equal(s.counters.duplicates, 1);
    assert.ok(box.ack(id));
    assert.equal(box.enqueue(frame, meta), id); // edgeHub redelivered after the cloud already had it
    s = box.stats();
    assert.equal(s.depth, 0);
    assert.equal(box.get(id)?.state, "acked");
    // A caller-chosen id with different content is a conflict, and changes nothing.
    const a = resultFrame({ seed: 10 });
    const b = resultFrame({ seed: 11 });
    box.enqueue(a.frame, { ...a.meta, updateId: "u-1" });
    assert.equal(
      codeOf(() => box.enqueue(b.frame, { ...b.meta, updateId: "u-1" })),
      "E_QUEUE_CONFLICT",
    );
    assert.equal(box.get("u-1")?.sha256, sha256hex(a.frame));
    assert.equal(box.stats().depth, 1);
  }),
);

test(
  "closing and reopening the file keeps pending updates, their bookkeeping and the counters",
  withContext((t) => {
    const dir = tempDir(t);
    let now = 1_000_000;
    const box = open(dir, { maxChunkBytes: 4000, now: () => now });
    const ids = [1, 2, 3, 4].map((round) => {
      const { frame, meta } = resultFrame({ round, floats: 2800 }); // 11.3 KB: 3 chunks of 4000
      return box.enqueue(frame, meta);
    });
    // Update 0: fully sent. Update 1: acked. Update 2: two chunks of an interrupted attempt. Update 3: untouched.
    let plan = box.beginAttempt(ids[0]);
    assert.ok(plan);
    plan.chunks.forEach((_, i) => box.markChunkSent(ids[0], i));
    now += 10;
    assert.ok(box.markSent(ids[0]));
    assert.ok(box.ack(ids[1]));
    plan = box.beginAttempt(ids[2]);
    assert.ok(plan && plan.chunks.length === 3);
    box.markChunkSent(ids[2], 0);
    box.markChunkSent(ids[2], 1);
    const before = { stats: box.stats(), pending: box.pending() };
    box.close();

    const again = open(dir, { maxChunkBytes: 4000, now: () => now });
    t.after(() => again.close());
    assert.deepEqual(again.stats(), before.stats);
    assert.deepEqual(again.pending(), before.pending);
    assert.deepEqual(
      again.pending().map((u) => [u.updateId, u.state]),
      [
        [ids[0], "sent"],
        [ids[2], "pending"],
        [ids[3], "pending"],
      ],
    );
    assert.equal(again.stats().counters.sent_chunks, 5);
    assert.equal(again.get(ids[0])?.sentAt, 1_000_010);
    // The interrupted attempt resumes at chunk 2, and the bytes are intact.
    const resumed = again.beginAttempt(ids[2]);
    assert.equal(resumed?.startChunk, 2);
    assert.equal(resumed?.attempt, 2);
    assert.equal(sha256hex(reassemble(again.chunksOf(ids[3]))), again.get(ids[3])?.sha256);
  }),
);

test(
  "ack removes an update's bytes; a second ack and unknown ids are reported as not waiting",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const { frame, meta } = resultFrame({ floats: 5000 });
    const id = box.enqueue(frame, meta);
    const other = box.enqueue(resultFrame({ round: 2 }).frame, resultFrame({ round: 2 }).meta);
    assert.equal(box.stats().bytesPending, frame.byteLength + box.get(other)!.size);
    assert.ok(box.ack(id));
    assert.equal(box.ack(id), false);
    assert.equal(box.ack("no-such-update"), false);
    assert.deepEqual(
      box.pending().map((u) => u.updateId),
      [other],
    );
    assert.equal(
      codeOf(() => box.chunksOf(id)),
      "E_QUEUE_NOT_FOUND",
    );
    assert.equal(box.beginAttempt(id), undefined);
    const s = box.stats();
    assert.equal(s.counters.acked, 1);
    assert.equal(s.depth, 1);
    assert.equal(s.bytesPending, box.get(other)!.size);
    assert.equal(box.ackMany([other, id, "x"]), 1);
    assert.equal(
      codeOf(() => box.ackMany([42 as unknown as string])),
      "E_QUEUE_INVALID",
    );
  }),
);

test(
  "dropClosedRounds drops the unacked updates of closed rounds of that job only, and counts them",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const add = (jobId: string, round: number) => {
      const { frame, meta } = resultFrame({ jobId, round });
      return box.enqueue(frame, meta);
    };
    const a1 = add("A", 1);
    const a2 = add("A", 2);
    const a3 = add("A", 3);
    const b1 = add("B", 1);
    assert.ok(box.ack(a1)); // already acked: not counted as dropped
    assert.equal(box.dropClosedRounds("A", 3), 1);
    assert.equal(box.get(a2)?.state, "dropped");
    assert.equal(box.get(a2)?.dropReason, "closed_round");
    assert.deepEqual(
      box.pending().map((u) => u.updateId),
      [a3, b1],
    );
    assert.equal(box.dropClosedRounds("A", 3), 0);
    assert.equal(box.stats().counters.dropped_closed, 1);
    assert.equal(
      codeOf(() => box.dropClosedRounds("A", -1)),
      "E_QUEUE_INVALID",
    );
  }),
);

test(
  "dropClosedRounds keeps evaluation frames (update id eval:…): they are always of a closed round's model",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const frame = encodeMessage({
      type: "evaluation",
      v: EVALUATION_VERSION,
      jobId: "A",
      deviceId: "dev",
      round: 1,
      samples: 10,
      accuracy: 0.5,
    });
    const meta = { jobId: "A", round: 1, deviceId: "dev" };
    const evaluation = box.enqueue(frame, { ...meta, updateId: evaluationUpdateId(sha256hex(frame)) });
    const update = box.enqueue(resultFrame(meta).frame, meta);
    // A device offline for rounds 2..4: the update of round 1 is useless now, its evaluation of model 1 is not.
    assert.equal(box.dropClosedRounds("A", 5), 1);
    assert.equal(box.get(update)?.dropReason, "closed_round");
    assert.deepEqual(
      box.pending().map((u) => u.updateId),
      [evaluation],
    );
  }),
);

test(
  "async jobs: openRound is the oldest round still accepted; fresher queued updates of several rounds are kept",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    const add = (round: number) => {
      const { frame, meta } = resultFrame({ jobId: "A", round });
      return box.enqueue(frame, meta);
    };
    // A device offline for a while queued updates trained from versions 1..4 (rounds 2..5).
    const [r2, r3, r4, r5] = [add(2), add(3), add(4), add(5)];
    // The cloud is at version 6 with maxStaleness 3: versions ≥ 3 (rounds ≥ 4) are still accepted.
    assert.equal(box.dropClosedRounds("A", 4), 2);
    assert.deepEqual(
      [r2, r3].map((id) => box.get(id)?.dropReason),
      ["closed_round", "closed_round"],
    );
    assert.deepEqual(
      box.pending().map((u) => u.updateId),
      [r4, r5],
    );
    // An older policy value (a twin patch delivered late) never brings anything back nor drops more.
    assert.equal(box.dropClosedRounds("A", 2), 0);
    assert.equal(box.pending().length, 2);
  }),
);

test(
  "the queue is bounded: a full queue refuses a new update (E_QUEUE_FULL) and drops none it holds",
  withContext((t) => {
    const one = resultFrame({ floats: 2500 }).frame.byteLength; // ~10 KB
    const box = open(tempDir(t), { maxBytes: Math.floor(one * 2.5) });
    t.after(() => box.close());
    const add = (round: number) => {
      const { frame, meta } = resultFrame({ floats: 2500, round });
      return box.enqueue(frame, meta);
    };
    const ids = [add(1), add(2)];
    const s = box.stats();
    assert.equal(
      codeOf(() => add(3)),
      "E_QUEUE_FULL",
    );
    assert.deepEqual(box.stats(), s, "nothing written, nothing dropped");
    assert.deepEqual(
      box.pending().map((u) => u.updateId),
      ids,
    );
    assert.equal(s.counters.dropped_overflow, 0);
    // An ack makes room.
    box.ack(ids[0]);
    const third = add(3);
    assert.equal(box.get(third)?.state, "pending");
    // A single update larger than the whole queue is refused for good (E_QUEUE_TOO_LARGE), and nothing is dropped.
    const huge = resultFrame({ floats: 10_000 });
    const before = box.stats();
    assert.equal(
      codeOf(() => box.enqueue(huge.frame, huge.meta)),
      "E_QUEUE_TOO_LARGE",
    );
    assert.deepEqual(box.stats(), before);
  }),
);

test(
  "the capacity changes live: lowered below what is stored it drops nothing and refuses new updates until there is room",
  withContext((t) => {
    const one = resultFrame({ floats: 2500 }).frame.byteLength;
    const box = open(tempDir(t), { maxBytes: one * 10 });
    t.after(() => box.close());
    const add = (round: number) => {
      const { frame, meta } = resultFrame({ floats: 2500, round });
      return box.enqueue(frame, meta);
    };
    const ids = [1, 2, 3, 4].map(add);
    box.setCapacityBytes(Math.floor(one * 2.5));
    assert.equal(box.capacityBytes, Math.floor(one * 2.5));
    assert.equal(box.stats().depth, 4, "nothing dropped");
    assert.equal(
      codeOf(() => add(5)),
      "E_QUEUE_FULL",
    );
    box.ackMany(ids.slice(0, 2));
    assert.equal(
      codeOf(() => add(5)),
      "E_QUEUE_FULL",
      "still 2 of 2.5 updates' room taken",
    );
    box.ack(ids[2]);
    add(5);
    assert.equal(box.stats().depth, 2);
    box.setCapacityBytes(one * 10);
    add(6);
    add(7);
    assert.equal(box.stats().depth, 4);
    assert.equal(
      codeOf(() => box.setCapacityBytes(0)),
      "E_QUEUE_CONFIG",
    );
    assert.equal(box.capacityBytes, one * 10);
  }),
);

test(
  "retention: dropExpired drops the undelivered updates enqueued before a time (pending and awaiting an ack), counted",
  withContext((t) => {
    let now = 1_000_000;
    const box = open(tempDir(t), { now: () => now });
    t.after(() => box.close());
    const add = (round: number) => {
      const { frame, meta } = resultFrame({ round });
      return box.enqueue(frame, meta);
    };
    const a = add(1);
    const b = add(2);
    box.beginAttempt(b);
    box.markSent(b);
    now += 3600_000;
    const c = add(3);
    assert.deepEqual(box.dropExpired(now - 3600_000), [], "not older than the limit");
    const dropped = box.dropExpired(now - 1800_000);
    assert.deepEqual(
      dropped.map((u) => [u.updateId, u.round, u.dropReason]),
      [
        [a, 1, "expired"],
        [b, 2, "expired"],
      ],
    );
    assert.equal(box.get(a)?.state, "dropped");
    assert.equal(box.get(b)?.dropReason, "expired");
    assert.deepEqual(
      box.pending().map((u) => u.updateId),
      [c],
    );
    assert.equal(box.stats().counters.dropped_expired, 2);
    assert.equal(
      codeOf(() => box.dropExpired(Number.NaN)),
      "E_QUEUE_INVALID",
    );
  }),
);

test(
  "due and oldestSentAt leave out updates larger than a size limit (a metered link defers them)",
  withContext((t) => {
    let now = 1_000_000;
    const box = open(tempDir(t), { now: () => now });
    t.after(() => box.close());
    const small = resultFrame({ floats: 100, round: 1 });
    const big = resultFrame({ floats: 10_000, round: 2 });
    const s = box.enqueue(small.frame, small.meta);
    const b = box.enqueue(big.frame, big.meta);
    const limit = small.frame.byteLength + 100;
    assert.deepEqual(
      box.due(now, 10, limit).map((u) => u.updateId),
      [s],
    );
    assert.deepEqual(
      box.due(now, 10).map((u) => u.updateId),
      [s, b],
    );
    for (const id of [s, b]) {
      box.beginAttempt(id);
      box.markSent(id);
    }
    now += 10;
    assert.equal(box.oldestSentAt(), now - 10);
    box.ack(s);
    assert.equal(box.oldestSentAt(limit), undefined, "the big one's resend is deferred: no wake-up for it");
    assert.deepEqual(box.due(now, 10, limit), []);
    assert.deepEqual(
      box.due(now, 10).map((u) => u.updateId),
      [b],
    );
  }),
);

test(
  "invalid input throws E_QUEUE_* and leaves the queue untouched",
  withContext((t) => {
    const dir = tempDir(t);
    const box = open(dir);
    const { frame, meta } = resultFrame({ floats: 3000 });
    const id = box.enqueue(frame, meta);
    const before = box.stats();

    const truncated = frame.subarray(0, frame.byteLength - 8);
    assert.equal(
      codeOf(() => box.enqueue(truncated, meta)),
      "E_QUEUE_FRAME",
    );
    const badMagic = frame.slice();
    badMagic[0] ^= 0xff;
    assert.equal(
      codeOf(() => box.enqueue(badMagic, meta)),
      "E_QUEUE_FRAME",
    );
    const garbage = new Uint8Array(100).fill(7);
    assert.equal(
      codeOf(() => box.enqueue(garbage, meta)),
      "E_QUEUE_FRAME",
    );
    const train = encodeMessage({
      type: "train",
      jobId: "job-1",
      round: 1,
      modelHash: "m",
      layoutHash: "l",
      config: { epochs: 1, batchSize: 1, lr: 0.1, seed: 1 },
      deadline: 0,
      weights: new Float32Array(4),
    });
    assert.equal(
      codeOf(() => box.enqueue(train, meta)),
      "E_QUEUE_FRAME",
    );
    assert.equal(
      codeOf(() => box.enqueue(frame, { ...meta, round: 2 })),
      "E_QUEUE_META_MISMATCH",
    );
    assert.equal(
      codeOf(() => box.enqueue(frame, { ...meta, deviceId: "dev-2" })),
      "E_QUEUE_META_MISMATCH",
    );
    assert.equal(
      codeOf(() => box.enqueue(frame, { ...meta, round: -1 })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.enqueue(frame, { ...meta, jobId: "" })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.enqueue(frame, { ...meta, deviceId: "x".repeat(129) })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.enqueue(frame, { ...meta, updateId: "has space" })),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.enqueue(new Uint8Array(0), meta)),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.enqueue("frame" as unknown as Uint8Array, meta)),
      "E_QUEUE_INVALID",
    );
    assert.equal(
      codeOf(() => box.enqueue(frame, null as never)),
      "E_QUEUE_INVALID",
    );

    assert.deepEqual(box.stats(), before);
    assert.ok(reassemble(box.chunksOf(id)).equals(Buffer.from(frame)));
    box.close();
    const again = open(dir);
    t.after(() => again.close());
    assert.deepEqual(again.stats(), before);
  }),
);

test(
  "a damaged stored update is detected by its sha256; the others stay intact",
  withContext((t) => {
    const dir = tempDir(t);
    const box = open(dir);
    const a = resultFrame({ round: 1, floats: 3000 });
    const b = resultFrame({ round: 2, floats: 3000 });
    const idA = box.enqueue(a.frame, a.meta);
    const idB = box.enqueue(b.frame, b.meta);
    box.close();

    // Flip one byte of A's body behind the outbox's back (bit rot, a bad sector, a buggy tool).
    const raw = new Sqlite(join(dir, "outbox.sqlite"));
    const row = raw.prepare("SELECT body FROM updates WHERE update_id = ?").get(idA) as { body: Buffer };
    row.body[500] ^= 0x01;
    raw.prepare("UPDATE updates SET body = ? WHERE update_id = ?").run(row.body, idA);
    raw.close();

    const again = open(dir);
    t.after(() => again.close());
    assert.equal(
      codeOf(() => again.chunksOf(idA)),
      "E_QUEUE_CORRUPT",
    );
    assert.equal(
      codeOf(() => again.beginAttempt(idA)),
      "E_QUEUE_CORRUPT",
    );
    assert.equal(again.get(idA)?.attempts, 0); // the failed attempt was rolled back
    assert.ok(reassemble(again.chunksOf(idB)).equals(Buffer.from(b.frame)));
    assert.ok(again.dropCorrupt(idA));
    assert.equal(again.stats().counters.dropped_corrupt, 1);
    assert.deepEqual(
      again.pending().map((u) => u.updateId),
      [idB],
    );
  }),
);

test(
  "a file that is not a queue is moved aside (files.test.ts); one already open elsewhere is refused with a code",
  withContext((t) => {
    const dir = tempDir(t);
    const junk = join(dir, "junk.sqlite");
    writeFileSync(junk, "definitely not a SQLite database ".repeat(200));
    const moved = new Outbox(junk);
    assert.match(moved.quarantined?.reason ?? "", /no SQLite header/);
    assert.equal(moved.stats().depth, 0);
    moved.close();
    writeFileSync(join(dir, "a-file"), "");
    assert.equal(
      codeOf(() => new Outbox(join(dir, "a-file", "q.sqlite"))),
      "E_QUEUE_OPEN",
    );

    const box = open(dir, { lockTimeoutMs: 10 });
    t.after(() => box.close());
    box.enqueue(resultFrame().frame, resultFrame().meta);
    assert.equal(
      codeOf(() => open(dir, { lockTimeoutMs: 10 })),
      "E_QUEUE_LOCKED",
    );
    assert.equal(box.stats().depth, 1);
  }),
);

test(
  "durability settings: WAL journal, synchronous=FULL, exclusive lock",
  withContext((t) => {
    const box = open(tempDir(t));
    t.after(() => box.close());
    box.enqueue(resultFrame().frame, resultFrame().meta);
    assert.deepEqual(box.durability(), { journalMode: "wal", synchronous: "FULL", lockingMode: "exclusive" });
  }),
);

test(
  "an attempt resumes after its last sent chunk, restarts when the chunk size changed or after a full send",
  withContext((t) => {
    const box = open(tempDir(t), { maxChunkBytes: 1000 });
    t.after(() => box.close());
    const { frame, meta } = resultFrame({ floats: 1000 }); // ~4.1 KB: 5 chunks
    const id = box.enqueue(frame, meta);
    let plan = box.beginAttempt(id)!;
    assert.deepEqual([plan.startChunk, plan.attempt, plan.chunks.length], [0, 1, 5]);
    assert.ok(box.markChunkSent(id, 0));
    assert.ok(box.markChunkSent(id, 1));
    plan = box.beginAttempt(id)!;
    assert.deepEqual([plan.startChunk, plan.attempt], [2, 2]);
    box.setMaxChunkBytes(2000);
    assert.equal(box.markChunkSent(id, 2), false); // chunk size changed under the attempt: stop it
    plan = box.beginAttempt(id)!;
    assert.deepEqual([plan.startChunk, plan.chunks.length], [0, 3]);
    for (let i = 0; i < 3; i++) assert.ok(box.markChunkSent(id, i));
    assert.ok(box.markSent(id));
    assert.equal(box.get(id)?.state, "sent");
    assert.equal(box.stats().counters.resent, 0);
    plan = box.beginAttempt(id)!; // resend after the ack timeout: from the start
    assert.equal(plan.startChunk, 0);
    for (let i = 0; i < 3; i++) box.markChunkSent(id, i);
    assert.ok(box.markSent(id));
    const s = box.stats();
    assert.equal(s.counters.resent, 1);
    assert.equal(s.counters.sent_updates, 2);
    assert.equal(box.get(id)?.sentCount, 2);
    // Acked while a chunk was in flight: markChunkSent tells the sender to stop.
    box.beginAttempt(id);
    box.ack(id);
    assert.equal(box.markChunkSent(id, 0), false);
    assert.equal(box.markSent(id), false);
  }),
);

test(
  "requeueUnacked and due(): what the sender picks, oldest first",
  withContext((t) => {
    let now = 5000;
    const box = open(tempDir(t), { now: () => now });
    t.after(() => box.close());
    const ids = [1, 2, 3].map((round) =>
      box.enqueue(resultFrame({ round }).frame, resultFrame({ round }).meta),
    );
    for (const id of ids.slice(0, 2)) {
      box.beginAttempt(id);
      box.markChunkSent(id, 0);
      box.markSent(id);
    }
    assert.deepEqual(
      box.due(now - 100, 10).map((u) => u.updateId),
      [ids[2]],
    );
    assert.equal(box.oldestSentAt(), 5000);
    now += 100;
    assert.deepEqual(
      box.due(now - 100, 10).map((u) => u.updateId),
      ids,
    );
    assert.deepEqual(
      box.due(now - 100, 2).map((u) => u.updateId),
      ids.slice(0, 2),
    );
    assert.equal(box.requeueUnacked(), 2);
    assert.deepEqual(
      box.due(0, 10).map((u) => u.state),
      ["pending", "pending", "pending"],
    );
    assert.equal(box.oldestSentAt(), undefined);
    assert.equal(sha256(Buffer.from("x")), sha256hex(Buffer.from("x")));
  }),
);
