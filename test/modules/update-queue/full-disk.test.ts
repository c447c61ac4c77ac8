import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Message } from "azure-iot-device";
import { Outbox, type OutboxChunk } from "../../../modules/update-queue/src/outbox";
import { Sender } from "../../../modules/update-queue/src/sender";
import {
  QUEUE_FILE,
  startUpdateQueue,
  type InvokeMethodParams,
} from "../../../modules/update-queue/src/main";
import { FakeModuleClient } from "./fake-client";
import { reassemble, resultFrame, sha256hex, tempDir, trainerChunks, until } from "./helpers";

/**
 * A full disk, simulated with SQLite's `PRAGMA max_page_count` set to the file's current size: any write that needs
 * a new page fails with SQLITE_FULL, exactly as on a full file system (https://www.sqlite.org/pragma.html#pragma_max_page_count).
 */
function fillUp(box: Outbox): void {
  const db = (
    box as unknown as {
      db: {
        pragma(s: string, o?: { simple: boolean }): unknown;
        exec(sql: string): void;
        prepare(sql: string): { run(...a: unknown[]): unknown };
      };
    }
  ).db;
  // Free pages inside the file would still take writes: use them up (a table only this test writes).
  db.exec("CREATE TABLE IF NOT EXISTS test_filler (b BLOB)");
  const pages = Number(db.pragma("page_count", { simple: true }));
  db.pragma(`max_page_count = ${pages}`);
  const insert = db.prepare("INSERT INTO test_filler (b) VALUES (zeroblob(?))");
  for (const size of [65536, 4096, 512, 64, 1]) {
    try {
      for (;;) insert.run(size);
    } catch (e) {
      assert.equal((e as { code?: string }).code, "SQLITE_FULL");
    }
  }
}

function update(round: number): ReturnType<typeof resultFrame> {
  return resultFrame({ floats: 4000, round, seed: round }); // ~16 KB: overflow pages
}

test(
  "a full queue still drains: attempts are kept in memory, acks free space, the queue takes updates again",
  withContext(async (t) => {
    const box = new Outbox(join(tempDir(t), QUEUE_FILE), { maxChunkBytes: 4000 });
    t.after(() => box.close());
    const ids = [1, 2, 3].map((r) => box.enqueue(update(r).frame, update(r).meta));
    fillUp(box);
    assert.throws(() => box.enqueue(update(4).frame, update(4).meta), { code: "E_QUEUE_DISK_FULL" });

    const sent: OutboxChunk[] = [];
    const faults: unknown[] = [];
    const sender = new Sender(box, {
      send: async (chunk) => void sent.push(chunk),
      backoff: { initialMs: 5, maxMs: 20 },
      resendAfterMs: 60_000,
    });
    sender.on("fault", ({ error }) => faults.push(error));
    sender.on("retry", ({ error }) => faults.push(error));
    t.after(() => sender.stop());
    sender.start(); // requeues unacked updates first: a write, on a full disk
    await until(
      () => ids.every((id) => box.get(id)?.state === "sent"),
      5000,
      "every update sent on a full disk",
    );
    assert.deepEqual(faults, []);
    assert.deepEqual([box.stats().pending, box.stats().awaitingAck], [0, 3]);
    for (const [i, id] of ids.entries()) {
      const body = reassemble(sent.filter((c) => c.properties.updateId === id));
      assert.equal(sha256hex(body), sha256hex(update(i + 1).frame));
      assert.equal(box.get(id)?.attempts, 1);
    }
    // Sent in memory counts as sent: nothing is due again before resendAfterMs.
    assert.deepEqual(box.due(Date.now() - 60_000, 10), []);
    const chunksSent = sent.length;
    await sender.whenIdle();
    assert.equal(sent.length, chunksSent);
    // A reconnect requeues them (in memory) and they go out again.
    sender.resendUnacked();
    await until(() => sent.length === 2 * chunksSent, 5000, "the resend after a reconnect");
    assert.equal(box.get(ids[0])?.attempts, 2);

    // The cloud's acks are written on the full disk (clearing a body needs no new page) and free space.
    assert.equal(box.ackMany(ids), 3);
    const next = box.enqueue(update(4).frame, update(4).meta);
    sender.kick();
    await until(() => box.get(next)?.state === "sent", 5000, "the next update, stored and sent");
    assert.equal(box.get(next)?.sentCount, 1); // bookkeeping back on disk
  }),
);

type Invocation = { deviceId: string; moduleId: string; params: InvokeMethodParams };

class NotifyingClient extends FakeModuleClient {
  readonly invocations: Invocation[] = [];
  async invokeMethod(deviceId: string, moduleId: string, params: InvokeMethodParams): Promise<unknown> {
    this.invocations.push({ deviceId, moduleId, params });
    return { status: 200, payload: { known: true } };
  }
}

test(
  "an update the full disk refuses is not completed, held and retried, reported, and the trainer is told",
  withContext(async (t) => {
    const client = new NotifyingClient();
    const logged: string[] = [];
    const queue = await startUpdateQueue({
      client,
      dir: tempDir(t),
      sendBackoff: { initialMs: 5, maxMs: 20 },
      storeBackoff: { initialMs: 5, maxMs: 20 },
      reportIntervalMs: 10,
      log: (level, message) => logged.push(`${level} ${message}`),
    });
    t.after(() => queue.stop());
    client.deliver("updates", update(1).frame, { updateId: "u1" });
    client.deliver("updates", update(2).frame, { updateId: "u2" });
    await until(() => queue.status().awaitingAck === 2, 5000, "two updates sent");
    fillUp(queue.outbox);

    const refused: Message = client.deliver("updates", update(3).frame, { updateId: "u3" });
    assert.ok(!client.completed.includes(refused), "a refused update is not completed");
    assert.equal(queue.status().unstored, 1);
    assert.ok(queue.status().unstoredBytes > 0);
    assert.ok(
      logged.some((l) => /^error .*could not store update u3 .*E_QUEUE_DISK_FULL/.test(l)),
      logged.join("\n"),
    );
    assert.deepEqual(
      client.invocations.map((i) => [i.deviceId, i.moduleId, i.params.methodName]),
      [["dev-1", "trainer", "updateNotStored"]],
    );
    assert.deepEqual(
      { ...(client.invocations[0].params.payload as object), message: "" },
      { updateId: "u3", jobId: "job-1", round: 3, code: "E_QUEUE_DISK_FULL", held: true, message: "" },
    );
    // Retries keep failing while the disk is full, without crashing or completing anything.
    await until(() => logged.filter((l) => /still not stored/.test(l)).length >= 2, 5000, "retries");
    assert.ok(!client.completed.includes(refused));

    // The cloud acks the first two: space is freed, the held update is stored, completed, sent; the trainer told.
    assert.equal((await client.invoke("ack", { updateIds: ["u1", "u2"] })).status, 200);
    await until(() => client.completed.includes(refused), 5000, "the held update stored and completed");
    assert.equal(queue.status().unstored, 0);
    assert.equal(queue.status().unstoredBytes, 0);
    await until(() => queue.outbox.get("u3")?.state === "sent", 5000, "the held update sent");
    assert.deepEqual(
      client.invocations.map((i) => i.params.methodName),
      ["updateNotStored", "updateStored"],
    );
  }),
);

test(
  "refused updates beyond maxHeldBytes are counted lost, logged, and the trainer told they are not held",
  withContext(async (t) => {
    const client = new NotifyingClient();
    const logged: string[] = [];
    const queue = await startUpdateQueue({
      client,
      dir: tempDir(t),
      storeBackoff: { initialMs: 5, maxMs: 20 },
      maxHeldBytes: 20_000, // one ~16 KB update
      log: (level, message) => logged.push(`${level} ${message}`),
    });
    t.after(() => queue.stop());
    client.deliver("updates", update(1).frame, { updateId: "u1" });
    await until(() => queue.status().depth === 1, 5000, "first update stored");
    fillUp(queue.outbox);
    client.deliver("updates", update(2).frame, { updateId: "u2" });
    client.deliver("updates", update(3).frame, { updateId: "u3" });
    const status = queue.status();
    assert.equal(status.unstored, 1);
    assert.equal(status.lostInputs, 1);
    assert.ok(
      logged.some((l) => /^error .*u3 .*cannot hold it/.test(l)),
      logged.join("\n"),
    );
    assert.deepEqual(
      client.invocations.map((i) => [
        (i.params.payload as { updateId: string }).updateId,
        (i.params.payload as { held: boolean }).held,
      ]),
      [
        ["u2", true],
        ["u3", false],
      ],
    );
  }),
);

test(
  "a module client without invokeMethod (not on IoT Edge) still holds and retries refused updates",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    const queue = await startUpdateQueue({
      client,
      dir: tempDir(t),
      storeBackoff: { initialMs: 5, maxMs: 20 },
      log: () => {},
    });
    t.after(() => queue.stop());
    client.deliver("updates", update(1).frame, { updateId: "u1" });
    await until(() => queue.status().depth === 1, 5000, "first update stored");
    fillUp(queue.outbox);
    const refused = client.deliver("updates", update(2).frame, { updateId: "u2" });
    assert.equal(queue.status().unstored, 1);
    client.twin.patchDesired({ acks: { u1: true } }); // the path the cloud uses; frees space and retries at once
    await until(() => client.completed.includes(refused), 5000, "stored after the ack");
  }),
);

test(
  "an update split into chunks that the full disk refuses: every chunk held, the trainer told once, all stored later",
  withContext(async (t) => {
    const client = new NotifyingClient();
    const queue = await startUpdateQueue({
      client,
      dir: tempDir(t),
      storeBackoff: { initialMs: 5, maxMs: 20 },
      log: () => {},
    });
    t.after(() => queue.stop());
    for (const r of [3, 4, 5]) client.deliver("updates", update(r).frame, { updateId: `u${r}` });
    await until(() => queue.status().depth === 3, 5000, "three updates stored");
    fillUp(queue.outbox);
    const { frame, meta } = update(2);
    const { updateId, chunks } = trainerChunks(frame, meta, 6000); // 3 input messages
    assert.equal(chunks.length, 3);
    const msgs = chunks.map((c) => client.deliver("updates", c.body, c.properties));
    assert.equal(queue.status().unstored, 3);
    assert.ok(msgs.every((m) => !client.completed.includes(m)));
    assert.deepEqual(
      client.invocations.map((i) => [
        i.params.methodName,
        (i.params.payload as { updateId: string }).updateId,
      ]),
      [["updateNotStored", updateId]],
    );
    // Staging and then queueing the whole takes about twice its size: three acks free enough.
    client.twin.patchDesired({ acks: { u3: true, u4: true, u5: true } });
    await until(
      () => msgs.every((m) => client.completed.includes(m)),
      5000,
      "every chunk stored and completed",
    );
    assert.equal(queue.outbox.get(updateId)?.size, frame.byteLength);
    assert.deepEqual(
      client.invocations.map((i) => i.params.methodName),
      ["updateNotStored", "updateStored"],
    );
  }),
);
