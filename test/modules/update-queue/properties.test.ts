import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import type { Message } from "azure-iot-device";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { withContext } from "../../helpers/context";
import {
  startUpdateQueue,
  type InvokeMethodParams,
  type UpdateQueueHandle,
  type UpdateQueueOptions,
} from "../../../modules/update-queue/src/main";
import { isWritableAck, type WritableAck } from "../../../modules/shared/pnp";
import { FakeModuleClient } from "./fake-client";
import { LocalHub } from "./local-hub";
import { ackOf, desire, resultFrame, tempDir, until } from "./helpers";
import { METERED_CHILD_LIMIT, meteredChildFrames } from "./metered-child-frames";

/**
 * The update-queue's writable properties (modules/update-queue/src/model.ts, docs/operations.md "Update-queue and
 * quantizer properties"): each one acked 200 when applied, 400 with the reason (wrong type, out of range, unknown
 * key) keeping the last good value; and what each does — capacityBytes (refuses, never drops), retentionHours
 * (drops, logs, counts), meteredLink + meteredMaxUploadBytes (defers, then releases; across a SIGKILL).
 */

/** A fake client that records the module-to-module calls telling the trainer about refused updates. */
class TrainerAwareClient extends FakeModuleClient {
  readonly told: { method: string; payload: Record<string, unknown> }[] = [];
  async invokeMethod(_deviceId: string, _moduleId: string, p: InvokeMethodParams): Promise<unknown> {
    this.told.push({ method: p.methodName, payload: p.payload as Record<string, unknown> });
    return { status: 200 };
  }
}

type Logged = { level: string; message: string }[];

async function start(
  t: { after(fn: () => void | Promise<void>): void },
  opts: Partial<UpdateQueueOptions> = {},
): Promise<{ client: TrainerAwareClient; queue: UpdateQueueHandle; dir: string; logged: Logged }> {
  const client = (opts.client as TrainerAwareClient | undefined) ?? new TrainerAwareClient();
  const dir = opts.dir ?? tempDir(t);
  const logged: Logged = [];
  const queue = await startUpdateQueue({
    client,
    dir,
    reconnectBackoff: { initialMs: 5, maxMs: 20 },
    sendBackoff: { initialMs: 5, maxMs: 20 },
    storeBackoff: { initialMs: 5, maxMs: 20 },
    reportIntervalMs: 20,
    log: (level, message) => logged.push({ level, message }),
    ...opts,
  });
  t.after(() => queue.stop());
  return { client, queue, dir, logged };
}

function sentIds(client: FakeModuleClient): string[] {
  return [...new Set(client.sentChunks().map((c) => c.updateId))];
}

async function metric(
  queue: UpdateQueueHandle,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  const m = (await queue.metrics.registry.getMetricsAsJSON()).find(
    (x) => x.name === `flotilla_update_queue_${name}`,
  );
  return m?.values.find((v) => Object.entries(labels).every(([k, l]) => String(v.labels[k]) === l))?.value;
}

test(
  "every property: a valid value is applied and acked 200; wrong type, out of range and unknown keys are acked 400 with the reason, the last good value kept",
  withContext(async (t) => {
    const { client, queue } = await start(t);
    const cases: { name: string; good: unknown; bad: { value: unknown; why: RegExp }[] }[] = [
      {
        name: "maxChunkBytes",
        good: 4096,
        bad: [
          { value: 10, why: /maxChunkBytes 10 is out of range \(1024 to 258048\)/ },
          { value: "4096", why: /maxChunkBytes must be an integer from 1024 to 258048, not "4096"/ },
          { value: 4096.5, why: /maxChunkBytes must be an integer, not 4096.5/ },
        ],
      },
      {
        name: "resendAfterMs",
        good: 5000,
        bad: [
          { value: 999, why: /resendAfterMs 999 is out of range \(1000 to 604800000\)/ },
          { value: "soon", why: /resendAfterMs must be an integer/ },
        ],
      },
      {
        name: "capacityBytes",
        good: 2 * 1024 * 1024,
        bad: [
          { value: 1000, why: /capacityBytes 1000 is out of range \(1048576 to / },
          { value: { bytes: 1 }, why: /capacityBytes must be an integer/ },
        ],
      },
      {
        name: "retentionHours",
        good: 1.5,
        bad: [
          { value: -1, why: /retentionHours -1 is out of range \(0 to 8760\)/ },
          { value: "1h", why: /retentionHours must be a number from 0 to 8760, not "1h"/ },
        ],
      },
      {
        name: "meteredLink",
        good: true,
        bad: [
          { value: "yes", why: /meteredLink must be true or false, not "yes"/ },
          { value: 1, why: /meteredLink must be true or false, not 1/ },
        ],
      },
      {
        name: "meteredMaxUploadBytes",
        good: 100_000,
        bad: [
          { value: -5, why: /meteredMaxUploadBytes -5 is out of range/ },
          { value: [1], why: /meteredMaxUploadBytes must be an integer/ },
        ],
      },
    ];
    for (const c of cases) {
      const v = desire(client, { [c.name]: c.good });
      assert.deepEqual(await ackOf(client, c.name, v), { value: c.good, ac: 200, av: v, ad: null }, c.name);
      assert.equal(queue.status().config[c.name as keyof ReturnType<typeof queue.status>["config"]], c.good);
      for (const bad of c.bad) {
        const vb = desire(client, { [c.name]: bad.value });
        const ack = await ackOf(client, c.name, vb);
        assert.equal(ack.ac, 400, `${c.name} = ${JSON.stringify(bad.value)}`);
        assert.equal(ack.value, c.good, "the last good value");
        assert.match(ack.ad ?? "", /^E_PROPERTY_INVALID: /);
        assert.match(ack.ad ?? "", bad.why);
        assert.equal(
          queue.status().config[c.name as keyof ReturnType<typeof queue.status>["config"]],
          c.good,
        );
      }
    }
    // The values took effect where they act.
    assert.equal(queue.outbox.maxChunkBytes, 4096);
    assert.equal(queue.sender.resendAfterMs, 5000);
    assert.equal(queue.outbox.capacityBytes, 2 * 1024 * 1024);
    assert.equal(queue.sender.uploadLimit, 100_000);

    const vu = desire(client, { capacity: 5, acks: [], openRounds: {} });
    const unknown = await ackOf(client, "capacity", vu);
    assert.equal(unknown.ac, 400);
    assert.equal(unknown.value, null);
    assert.match(
      unknown.ad ?? "",
      /^E_PROPERTY_UNKNOWN: unknown property 'capacity' \(known: maxChunkBytes, /,
    );
    assert.ok(
      client.twin.reportedPatches.every((p) => !("acks" in p) && !("openRounds" in p)),
      "the Function's keys are never acked",
    );

    // null: back to the default (the environment's), acked 200.
    const vn = desire(client, { capacityBytes: null, meteredLink: null });
    assert.deepEqual(await ackOf(client, "capacityBytes", vn), {
      value: 256 * 1024 * 1024,
      ac: 200,
      av: vn,
      ad: null,
    });
    assert.equal((await ackOf(client, "meteredLink", vn)).value, false);
    assert.equal(queue.sender.uploadLimit, undefined);
  }),
);

test(
  "capacityBytes lowered below what is stored drops nothing; new updates are held and the trainer told until acks or a larger capacity make room",
  withContext(async (t) => {
    const { client, queue, logged } = await start(t);
    const frames = [1, 2, 3, 4, 5].map((round) => resultFrame({ floats: 100_000, round })); // ~400 KB each
    for (const f of frames.slice(0, 3)) client.deliver("updates", f.frame);
    await until(() => queue.status().awaitingAck === 3, 5000, "three updates sent");
    const ids = queue.outbox.pending().map((u) => u.updateId);

    const v = desire(client, { capacityBytes: 1024 * 1024 });
    assert.equal((await ackOf(client, "capacityBytes", v)).ac, 200);
    assert.equal(queue.status().depth, 3, "lowering the capacity drops nothing");
    assert.equal(queue.status().counters.dropped_overflow, 0);

    const fourth = client.deliver("updates", frames[3].frame);
    const s = queue.status();
    assert.equal(s.unstored, 1, "refused, held in memory");
    assert.equal(s.depth, 3);
    assert.ok(!client.completed.includes(fourth), "not completed while it is not stored");
    assert.match(s.lastError ?? "", /E_QUEUE_FULL/);
    assert.deepEqual(
      client.told.map((c) => [c.method, c.payload.code, c.payload.held]),
      [["updateNotStored", "E_QUEUE_FULL", true]],
    );
    assert.ok(
      logged.some((l) => l.level === "error" && /could not store update .*E_QUEUE_FULL/.test(l.message)),
    );

    // The cloud acks two: 400 KB stored of 1 MiB, so the held one fits and is stored, completed, the trainer told.
    desire(client, { acks: ids.slice(0, 2) });
    await until(() => queue.status().unstored === 0, 5000, "the held update stored");
    assert.ok(client.completed.includes(fourth));
    assert.equal(client.told.at(-1)?.method, "updateStored");
    assert.equal(queue.status().depth, 2);

    // Full again (800 KB of 1 MiB): the fifth waits until the capacity is raised.
    client.deliver("updates", frames[4].frame);
    assert.equal(queue.status().unstored, 1);
    desire(client, { capacityBytes: 8 * 1024 * 1024 });
    await until(() => queue.status().unstored === 0, 5000, "stored after the capacity rose");
    assert.equal(queue.status().depth, 3);
    assert.equal(queue.status().lostInputs, 0);
    assert.equal(queue.status().counters.dropped_overflow, 0);
  }),
);

test(
  "retentionHours: undelivered updates older than it are dropped at once and then at every sweep, one log line each, counted and reported",
  withContext(async (t) => {
    let now = Date.parse("2026-01-01T00:00:00Z");
    const client = new TrainerAwareClient();
    client.linkUp = false; // nothing is delivered: the updates stay in the queue
    const { queue, logged } = await start(t, { client, now: () => now });
    queue.sender.setOnline(false);
    const add = (round: number) => {
      const { frame, meta } = resultFrame({ round });
      return queue.outbox.enqueue(frame, meta);
    };
    const old = [add(1), add(2)];
    now += 2 * 3600_000;
    const fresh = add(3);

    const v = desire(client, { retentionHours: 1 });
    assert.equal((await ackOf(client, "retentionHours", v)).ac, 200);
    const s = queue.status();
    assert.deepEqual(
      queue.outbox.pending().map((u) => u.updateId),
      [fresh],
    );
    assert.equal(s.counters.dropped_expired, 2);
    assert.equal(s.config.retentionHours, 1);
    for (const id of old) {
      assert.equal(queue.outbox.get(id)?.dropReason, "expired");
      const lines = logged.filter((l) => l.message.includes(`dropped update ${id} `));
      assert.equal(lines.length, 1, "one line per update");
      assert.match(lines[0].message, /undelivered for more than retentionHours 1$/);
    }
    assert.equal(await metric(queue, "drops_total", { reason: "expired" }), 2);

    // The sweep (every retentionSweepMs) with the clock moved on.
    now += 3600_000 + 1;
    assert.equal(queue.expireOld(), 1);
    assert.equal(queue.status().depth, 0);
    assert.equal(queue.status().counters.dropped_expired, 3);

    // 0: no age limit.
    add(4);
    desire(client, { retentionHours: 0 });
    now += 1000 * 3600_000;
    assert.equal(queue.expireOld(), 0);
    assert.equal(queue.status().depth, 1);
  }),
);

/** A client whose sends wait, after `after` chunks, until released. */
class GatedClient extends TrainerAwareClient {
  gateAfter = Infinity;
  private release: (() => void) | undefined;
  private gate: Promise<void> | undefined;
  override async sendOutputEvent(output: string, msg: Message): Promise<unknown> {
    if (this.outputs.length >= this.gateAfter) {
      this.gate ??= new Promise((r) => (this.release = r));
      await this.gate;
    }
    return super.sendOutputEvent(output, msg);
  }
  letGo(): void {
    this.gateAfter = Infinity;
    this.release?.();
    this.gate = undefined;
  }
  get waiting(): boolean {
    return this.gate !== undefined;
  }
}

test(
  "meteredLink: updates larger than meteredMaxUploadBytes are deferred (status, metric) while smaller ones go; released when the link is not metered or the limit rises or is 0",
  withContext(async (t) => {
    const client = new GatedClient();
    const { queue } = await start(t, { client, maxChunkBytes: 100_000 });
    const v = desire(client, { meteredLink: true, meteredMaxUploadBytes: 100_000 });
    assert.equal((await ackOf(client, "meteredMaxUploadBytes", v)).ac, 200);

    const big = resultFrame({ floats: 100_000, round: 1 }); // ~400 KB
    const small = resultFrame({ floats: 1000, round: 2 }); // ~4 KB
    client.deliver("updates", big.frame);
    client.deliver("updates", small.frame);
    const [bigId, smallId] = queue.outbox.pending().map((u) => u.updateId);
    await until(() => queue.outbox.get(smallId)?.state === "sent", 5000, "the small update sent");
    await queue.sender.whenIdle();
    assert.deepEqual(sentIds(client), [smallId], "the big one is not sent");
    let s = queue.status();
    assert.equal(s.deferred, 1);
    assert.equal(s.deferredBytes, big.frame.byteLength);
    assert.equal(await metric(queue, "deferred_updates"), 1);
    await until(() => {
      const r = client.twin.reportedPatches.at(-1)?.updateQueue as { deferred?: number } | undefined;
      return r?.deferred === 1;
    });

    // The limit rises above it: sent.
    desire(client, { meteredMaxUploadBytes: 1_000_000 });
    await until(() => queue.outbox.get(bigId)?.state === "sent", 5000, "the big update sent");
    assert.equal(queue.status().deferred, 0);

    // A limit of 0 is no limit; meteredLink false releases too.
    desire(client, { meteredMaxUploadBytes: 100_000 });
    const big2 = resultFrame({ floats: 100_000, round: 3 });
    client.deliver("updates", big2.frame);
    const id2 = queue.outbox.pending().at(-1)!.updateId;
    await queue.sender.whenIdle();
    assert.equal(queue.outbox.get(id2)?.state, "pending");
    desire(client, { meteredMaxUploadBytes: 0 });
    await until(() => queue.outbox.get(id2)?.state === "sent", 5000, "sent with no limit");
    desire(client, { meteredMaxUploadBytes: 100_000 });
    const big3 = resultFrame({ floats: 100_000, round: 4 });
    client.deliver("updates", big3.frame);
    const id3 = queue.outbox.pending().at(-1)!.updateId;
    await queue.sender.whenIdle();
    assert.equal(queue.status().deferred, 1);
    desire(client, { meteredLink: false });
    await until(() => queue.outbox.get(id3)?.state === "sent", 5000, "sent on an unmetered link");
    assert.equal(queue.status().deferred, 0);

    // An update being sent when the link becomes metered stops before its next chunk, and resumes where it was.
    const big4 = resultFrame({ floats: 100_000, round: 5 });
    client.gateAfter = client.outputs.length + 2;
    client.deliver("updates", big4.frame);
    const id4 = queue.outbox.pending().at(-1)!.updateId;
    await until(() => client.waiting, 5000, "the third chunk waiting");
    desire(client, { meteredLink: true });
    client.letGo();
    await queue.sender.whenIdle();
    const chunks4 = () => client.sentChunks().filter((c) => c.updateId === id4);
    const sentBefore = chunks4().length;
    assert.ok(sentBefore >= 2 && sentBefore < 5, `${sentBefore} chunks before the deferral`);
    assert.equal(queue.outbox.get(id4)?.state, "pending");
    s = queue.status();
    assert.equal(s.deferred, 1);
    desire(client, { meteredLink: false });
    await until(() => queue.outbox.get(id4)?.state === "sent", 5000, "resumed");
    assert.deepEqual(
      chunks4().map((c) => c.chunkIndex),
      [0, 1, 2, 3, 4].slice(0, chunks4().length),
      "resumed from the next chunk, none sent twice",
    );
  }),
);

test(
  "metered deferral survives a SIGKILL: the deferred update is still queued, still deferred after the restart (also before the twin can be read), and sent when the link is not metered",
  withContext(async (t) => {
    const dir = tempDir(t);
    // The child: a queue whose twin says metered, given a big and a small update; it prints `sent` once the
    // small one went out, and is killed then.
    const child = spawn(process.execPath, [join(__dirname, "metered-child.js"), dir], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const killed = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on("exit", (_code, signal) => resolve(signal)),
    );
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("sent\n")) child.kill("SIGKILL");
    });
    assert.equal(await killed, "SIGKILL", `the child ended by itself: ${out} ${err}`);
    const { big, small } = meteredChildFrames();

    // Restarted where the twin cannot be read (the GET never answers): the policy saved with the queue holds.
    const blind = new TrainerAwareClient();
    blind.hangTwinGets = 1_000_000;
    const first = await startUpdateQueue({ client: blind, dir, twinTimeoutMs: 20, log: () => {} });
    try {
      assert.equal(first.status().online, true, "online without a twin");
      await until(() => first.status().awaitingAck === 1, 5000, "the small update resent");
      await first.sender.whenIdle();
      assert.equal(first.status().deferred, 1, "the big one still deferred");
      assert.equal(new Set(blind.sentChunks().map((c) => c.updateId)).size, 1);
    } finally {
      await first.stop();
    }

    const client = new TrainerAwareClient();
    client.twin.properties.desired.meteredLink = true;
    client.twin.properties.desired.meteredMaxUploadBytes = METERED_CHILD_LIMIT;
    const { queue } = await start(t, { client, dir });
    await queue.sender.whenIdle();
    const stored = queue.outbox.pending();
    assert.equal(stored.length, 2, "both updates survived the kill");
    const bigId = stored.find((u) => u.size === big.frame.byteLength)!.updateId;
    const smallId = stored.find((u) => u.size === small.frame.byteLength)!.updateId;
    assert.deepEqual(sentIds(client), [smallId], "only the small one is (re)sent");
    assert.equal(queue.status().deferred, 1);

    desire(client, { meteredLink: false });
    await until(() => queue.outbox.get(bigId)?.state === "sent", 5000, "the deferred update sent");
    const body = Buffer.concat(
      client.outputs
        .filter(({ msg }) => msg.properties.getValue("updateId") === bigId)
        .map(({ msg }) => msg.getBytes()),
    );
    assert.ok(body.equals(Buffer.from(big.frame)));
  }),
);

test(
  "with the real SDK against a local hub: the properties are acked in the reported twin and a metered link defers",
  withContext(async (t) => {
    const hub = await LocalHub.start();
    hub.desired = { meteredLink: true, meteredMaxUploadBytes: 50_000, capacityBytes: 100 };
    const client = ModuleClient.fromConnectionString(hub.connectionString(), Mqtt);
    await client.setOptions({ ca: hub.ca });
    const queue = await startUpdateQueue({
      client,
      dir: tempDir(t),
      closeClient: true,
      reportIntervalMs: 50,
      log: () => {},
    });
    t.after(async () => {
      await queue.stop();
      await hub.close();
    });
    const acks = (): Record<string, unknown> => Object.assign({}, ...hub.reported) as Record<string, unknown>;
    await until(() => isWritableAck(acks().capacityBytes), 10_000, "the acks of the first twin read");
    assert.deepEqual(acks().meteredLink, { value: true, ac: 200, av: 1, ad: null });
    assert.deepEqual(acks().meteredMaxUploadBytes, { value: 50_000, ac: 200, av: 1, ad: null });
    const cap = acks().capacityBytes as WritableAck;
    assert.equal(cap.ac, 400);
    assert.equal(cap.value, 256 * 1024 * 1024);
    assert.match(cap.ad ?? "", /capacityBytes 100 is out of range/);

    const big = resultFrame({ floats: 100_000, round: 1, deviceId: "edge-1" });
    const small = resultFrame({ floats: 1000, round: 2, deviceId: "edge-1" });
    hub.sendInput("updates", big.frame);
    hub.sendInput("updates", small.frame);
    await until(() => hub.events.length === 1, 10_000, "the small update upstream");
    await until(() => queue.outbox.pending().length === 2, 10_000, "both stored");
    await queue.sender.whenIdle();
    assert.equal(hub.events.length, 1);
    assert.equal(Number(hub.events[0].properties.size), small.frame.byteLength);

    hub.patchDesired({ meteredLink: false });
    await until(() => hub.events.length === 3, 10_000, "the big update upstream (2 chunks)");
    await until(
      () => (acks().meteredLink as WritableAck | undefined)?.value === false,
      10_000,
      "the ack of meteredLink false",
    );
    assert.equal((acks().meteredLink as WritableAck).ac, 200);
    assert.equal((acks().meteredLink as WritableAck).av, 2);
  }),
);

test(
  "the saved metered-link policy gives way to the twin's at the first twin read (a property removed meanwhile is back to its default)",
  withContext(async (t) => {
    const dir = tempDir(t);
    const before = new TrainerAwareClient();
    before.twin.properties.desired.meteredLink = true;
    before.twin.properties.desired.meteredMaxUploadBytes = 100_000;
    const q1 = await startUpdateQueue({ client: before, dir, log: () => {} });
    const big = resultFrame({ floats: 100_000, round: 1 });
    before.deliver("updates", big.frame);
    await q1.sender.whenIdle();
    assert.equal(q1.status().deferred, 1);
    await q1.stop();

    const { client, queue } = await start(t, { dir }); // the operator removed both meanwhile
    await until(() => queue.status().awaitingAck === 1, 5000, "the big update sent");
    assert.equal(sentIds(client).length, 1);
    assert.equal(queue.status().config.meteredLink, false);
  }),
);
