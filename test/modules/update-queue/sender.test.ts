import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Outbox, type OutboxChunk } from "../../../modules/update-queue/src/outbox";
import { Sender, type SenderOptions } from "../../../modules/update-queue/src/sender";
import { backoffDelay } from "../../../modules/update-queue/src/backoff";
import { reassemble, resultFrame, sleep, tempDir, until } from "./helpers";

const Sqlite = require("better-sqlite3") as new (file: string) => {
  prepare(sql: string): { run(...a: unknown[]): unknown };
  close(): void;
};

/** A fake upstream: records every chunk; `fail` decides per call whether to throw. */
class Upstream {
  readonly chunks: OutboxChunk[] = [];
  readonly calls: { messageId: string; at: number; ok: boolean }[] = [];
  inFlight = 0;
  maxInFlight = 0;
  fail: (chunk: OutboxChunk, call: number) => boolean = () => false;
  delayMs = 0;
  /** The next n sends never settle (a hub that stops answering). */
  hangNext = 0;
  readonly send = async (chunk: OutboxChunk): Promise<void> => {
    if (this.hangNext > 0) {
      this.hangNext--;
      return new Promise<void>(() => {});
    }
    const call = this.calls.length;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs > 0) await sleep(this.delayMs);
      const bad = this.fail(chunk, call);
      this.calls.push({ messageId: chunk.messageId, at: Date.now(), ok: !bad });
      if (bad) throw new Error(`link error on ${chunk.messageId}`);
      this.chunks.push(chunk);
    } finally {
      this.inFlight--;
    }
  };
  /** Chunks received per update id, deduplicated on messageId the way the cloud does. */
  byUpdate(): Map<string, OutboxChunk[]> {
    const seen = new Map<string, OutboxChunk>();
    for (const c of this.chunks) seen.set(c.messageId, c);
    const out = new Map<string, OutboxChunk[]>();
    for (const c of seen.values()) {
      const list = out.get(c.properties.updateId) ?? [];
      list.push(c);
      out.set(c.properties.updateId, list);
    }
    return out;
  }
}

function setup(
  t: { after(fn: () => void | Promise<void>): void },
  opts: Partial<SenderOptions> & { maxChunkBytes?: number; dir?: string } = {},
) {
  const dir = opts.dir ?? tempDir(t);
  const outbox = new Outbox(join(dir, "outbox.sqlite"), { maxChunkBytes: opts.maxChunkBytes ?? 1000 });
  const up = new Upstream();
  const sender = new Sender(outbox, { send: up.send, backoff: { initialMs: 5, maxMs: 50 }, ...opts });
  t.after(async () => {
    await sender.stop();
    outbox.close();
  });
  const add = (round: number, floats = 600) => {
    const { frame, meta } = resultFrame({ round, floats, seed: round });
    return { id: outbox.enqueue(frame, meta), frame };
  };
  return { dir, outbox, up, sender, add };
}

test(
  "drains every update, oldest first, each one's chunks in order, one update at a time",
  withContext(async (t) => {
    const { outbox, up, sender, add } = setup(t);
    up.delayMs = 1;
    const updates = [1, 2, 3].map((r) => add(r)); // 2.6 KB each: 3 chunks
    const sent: string[] = [];
    sender.on("sent", (e) => sent.push(e.updateId));
    sender.start();
    await until(() => sent.length === 3);
    await sender.whenIdle();
    assert.deepEqual(
      sent,
      updates.map((u) => u.id),
    );
    assert.equal(up.maxInFlight, 1);
    assert.deepEqual(
      up.chunks.map((c) => c.messageId),
      updates.flatMap((u) => [0, 1, 2].map((i) => `${u.id}:${i}`)),
    );
    for (const u of updates) assert.ok(reassemble(up.byUpdate().get(u.id)!).equals(Buffer.from(u.frame)));
    const s = outbox.stats();
    assert.equal(s.awaitingAck, 3);
    assert.equal(s.counters.sent_chunks, 9);
    assert.equal(s.counters.sent_updates, 3);
  }),
);

test(
  "the concurrency limit bounds the updates in flight",
  withContext(async (t) => {
    const { up, sender, add } = setup(t, { concurrency: 3 });
    up.delayMs = 3;
    for (let r = 1; r <= 8; r++) add(r);
    let done = 0;
    sender.on("sent", () => done++);
    sender.start();
    await until(() => done === 8);
    assert.equal(up.maxInFlight, 3);
    // Still in order within each update.
    for (const list of up.byUpdate().values()) {
      const order = up.chunks.filter((c) => c.properties.updateId === list[0].properties.updateId);
      assert.deepEqual(
        order.map((c) => Number(c.properties.chunkIndex)),
        [0, 1, 2],
      );
    }
  }),
);

test(
  "failed sends are retried with exponential backoff and jitter, resuming at the failed chunk",
  withContext(async (t) => {
    const { outbox, up, sender, add } = setup(t, {
      backoff: { initialMs: 20, maxMs: 1000 },
      random: () => 1,
    });
    const u = add(1);
    // Chunk 1 fails three times in a row, then the link recovers.
    let failures = 0;
    up.fail = (c) => c.messageId === `${u.id}:1` && failures++ < 3;
    const retries: { delayMs: number; failures: number }[] = [];
    sender.on("retry", (e) => retries.push({ delayMs: e.delayMs, failures: e.failures }));
    let sent = false;
    sender.on("sent", () => (sent = true));
    sender.start();
    await until(() => sent, 5000, "the update to be sent");
    assert.deepEqual(retries, [
      { delayMs: 20, failures: 1 },
      { delayMs: 40, failures: 2 },
      { delayMs: 80, failures: 3 },
    ]);
    // The waits really happened (timers may fire a little late, never early).
    const attempts = up.calls.filter((c) => c.messageId === `${u.id}:1`);
    assert.equal(attempts.length, 4);
    for (let i = 1; i < attempts.length; i++) {
      assert.ok(attempts[i].at - attempts[i - 1].at >= retries[i - 1].delayMs - 2, `wait ${i} too short`);
    }
    // Chunk 0 went out once: the retries resumed at chunk 1.
    assert.equal(up.calls.filter((c) => c.messageId === `${u.id}:0`).length, 1);
    assert.ok(reassemble(up.byUpdate().get(u.id)!).equals(Buffer.from(u.frame)));
    assert.equal(outbox.get(u.id)?.attempts, 4);
  }),
);

test("backoff: cap grows by the factor up to maxMs, delay jitters within [cap/2, cap]", () => {
  const o = { initialMs: 100, maxMs: 1000, factor: 2 };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, o, () => 1)),
    [100, 200, 400, 800, 1000, 1000],
  );
  assert.deepEqual(
    [1, 2, 3].map((n) => backoffDelay(n, o, () => 0)),
    [50, 100, 200],
  );
  assert.equal(
    backoffDelay(2, o, () => 0.5),
    150,
  );
});

test(
  "offline: nothing is sent; back online: the queue drains; going offline mid-update pauses it",
  withContext(async (t) => {
    const { outbox, up, sender, add } = setup(t, { online: false });
    const a = add(1);
    const b = add(2);
    sender.start();
    await sleep(30);
    assert.equal(up.calls.length, 0);
    await sender.whenIdle(); // offline counts as idle
    // Take the link down right after the first chunk of `a` goes out.
    sender.on("chunk", (e) => {
      if (e.updateId === a.id && e.chunkIndex === 0 && up.calls.length === 1) sender.setOnline(false);
    });
    sender.setOnline(true);
    await until(() => !sender.online && sender.inFlight === 0);
    await sleep(20);
    assert.deepEqual(
      up.calls.map((c) => c.messageId),
      [`${a.id}:0`],
    );
    assert.equal(outbox.get(a.id)?.nextChunk, 1);
    sender.setOnline(true);
    await until(() => outbox.stats().awaitingAck === 2);
    assert.deepEqual(
      up.calls.map((c) => c.messageId),
      [`${a.id}:0`, `${a.id}:1`, `${a.id}:2`, `${b.id}:0`, `${b.id}:1`, `${b.id}:2`],
    );
  }),
);

test(
  "an update not acked within resendAfterMs is sent again; an acked one is not",
  withContext(async (t) => {
    const { outbox, up, sender, add } = setup(t, { resendAfterMs: 60 });
    const a = add(1);
    const b = add(2);
    const sent: { id: string; resend: boolean }[] = [];
    const at: number[] = [];
    sender.on("sent", (e) => {
      sent.push({ id: e.updateId, resend: e.resend });
      at.push(Date.now());
      if (e.updateId === b.id && !e.resend) outbox.ack(b.id); // the cloud acks b right away
    });
    sender.start();
    await until(() => sent.length === 3, 2000, "a resend");
    assert.ok(at[2] - at[0] >= 55, `resent after ${at[2] - at[0]} ms`);
    assert.deepEqual(sent, [
      { id: a.id, resend: false },
      { id: b.id, resend: false },
      { id: a.id, resend: true },
    ]);
    outbox.ack(a.id);
    await sleep(150);
    assert.equal(sent.length, 3);
    const s = outbox.stats();
    assert.equal(s.counters.resent, 1);
    assert.equal(s.counters.sent_chunks, 9);
    assert.equal(s.depth, 0);
    assert.equal(up.calls.filter((c) => c.messageId.startsWith(b.id)).length, 3);
  }),
);

test(
  "after a restart (new Sender on the reopened file) and after a reconnect, every unacked update is resent",
  withContext(async (t) => {
    const dir = tempDir(t);
    {
      const outbox = new Outbox(join(dir, "outbox.sqlite"), { maxChunkBytes: 1000 });
      const up = new Upstream();
      const sender = new Sender(outbox, { send: up.send, resendAfterMs: 3_600_000 });
      const ids = [1, 2, 3].map((round) =>
        outbox.enqueue(resultFrame({ round }).frame, resultFrame({ round }).meta),
      );
      sender.start();
      await until(() => outbox.stats().awaitingAck === 3);
      outbox.ack(ids[1]);
      await sender.stop();
      outbox.close();
    }
    const { outbox, up, sender } = setup(t, { dir, resendAfterMs: 3_600_000 });
    const resent: string[] = [];
    sender.on("sent", (e) => {
      assert.ok(e.resend);
      resent.push(e.updateId);
    });
    sender.start();
    await until(() => resent.length === 2);
    assert.equal(new Set(up.chunks.map((c) => c.properties.updateId)).size, 2);
    await sender.whenIdle();
    // A reconnect: everything unacked goes out again although the hour has not passed.
    sender.setOnline(false);
    sender.resendUnacked();
    sender.setOnline(true);
    await until(() => resent.length === 4);
    assert.equal(outbox.stats().counters.resent, 4);
  }),
);

test(
  "an update acked while its chunks are going out stops being sent",
  withContext(async (t) => {
    const { outbox, up, sender, add } = setup(t);
    const a = add(1, 2000); // 9 chunks
    sender.on("chunk", (e) => {
      if (e.chunkIndex === 2) outbox.ack(a.id);
    });
    sender.start();
    await until(() => up.calls.length >= 3);
    await sender.whenIdle();
    assert.equal(up.calls.length, 3);
    assert.equal(outbox.get(a.id)?.state, "acked");
  }),
);

test(
  "a damaged stored update is dropped (counted, reported) and the rest still drains",
  withContext(async (t) => {
    const dir = tempDir(t);
    const first = new Outbox(join(dir, "outbox.sqlite"));
    const bad = first.enqueue(resultFrame({ round: 1 }).frame, resultFrame({ round: 1 }).meta);
    const good = first.enqueue(resultFrame({ round: 2 }).frame, resultFrame({ round: 2 }).meta);
    first.close();
    const raw = new Sqlite(join(dir, "outbox.sqlite"));
    raw.prepare("UPDATE updates SET body = zeroblob(size) WHERE update_id = ?").run(bad);
    raw.close();

    const { outbox, up, sender } = setup(t, { dir });
    const dropped: string[] = [];
    sender.on("dropped", (e) => dropped.push(e.updateId));
    sender.start();
    await until(() => outbox.stats().awaitingAck === 1);
    assert.deepEqual(dropped, [bad]);
    assert.deepEqual([...up.byUpdate().keys()], [good]);
    assert.equal(outbox.stats().counters.dropped_corrupt, 1);
  }),
);

test(
  "a send that never settles times out and is retried",
  withContext(async (t) => {
    const { up, sender, add } = setup(t, { sendTimeoutMs: 30 });
    const a = add(1, 100);
    up.hangNext = 1;
    const retries: unknown[] = [];
    sender.on("retry", (e) => retries.push(e.error));
    let sent = false;
    sender.on("sent", () => (sent = true));
    sender.start();
    await until(() => sent, 2000, "the send after the timeout");
    assert.equal(retries.length, 1);
    assert.equal((retries[0] as { code?: string }).code, "E_QUEUE_SEND_TIMEOUT");
    assert.deepEqual(
      up.chunks.map((c) => c.messageId),
      [`${a.id}:0`],
    );
  }),
);
