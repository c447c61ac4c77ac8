import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { encodeMessage } from "../../../core/protocol/messages";
import { JobRepository, paths } from "../../../cloud/aggregator/src/jobs/state";
import { parseChunkProps } from "../../../cloud/aggregator/src/ingest";
import { decodeMessage } from "../../../core/protocol/messages";
import { chunkEvents, makeDelta, sha256, shuffle, SPEC, startJob, world } from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

function result(deviceId: string, over: Record<string, unknown> = {}) {
  return {
    type: "result" as const,
    jobId: "job-1",
    round: 1,
    deviceId,
    layoutHash: layout.hash,
    numSamples: 10,
    metrics: { loss: 0.5, accuracy: 0.5, trainMs: 10 },
    delta: makeDelta(layout.totalSize, 3),
    ...over,
  };
}

async function openRound() {
  const w = world();
  await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  return w;
}

test("chunks out of order with duplicates: stored once, reassembled, verified, recorded, acked", async () => {
  const w = await openRound();
  const msg = result("dev-a");
  const { events, updateId, frame } = chunkEvents(msg, { maxChunkBytes: 50 });
  assert.ok(events.length > 5);
  const noisy = shuffle([...events, events[0], events[3], events[3]], 99);
  // the last chunk to arrive completes the update; redeliver the whole batch afterwards too
  const r = await w.agg.ingestUpdates(noisy, ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
  const c = w.agg.ingestor.counters;
  assert.equal(c.updates_completed, 1);
  const stored = await w.store.get(paths.update("job-1", 1, "dev-a"));
  assert.deepEqual(stored?.bytes, frame);
  const decoded = decodeMessage(stored!.bytes);
  assert.equal(decoded.type, "result");
  const st = await new JobRepository(w.store).getRound("job-1", 1);
  assert.equal(st?.received["dev-a"]?.updateId, updateId);
  assert.equal(st?.received["dev-a"]?.numSamples, 10);
  assert.deepEqual(w.fleet.acks.at(-1), { deviceId: "dev-a", updateIds: [updateId] });
  // a chunk delivered twice before completion counts once
  assert.equal(c.chunks_stored, events.length);
  assert.equal(c.duplicate_chunks + c.duplicate_updates, 3);
  // redelivery after completion: acked again, nothing recorded twice
  await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(c.updates_completed, 1);
  assert.equal(c.duplicate_updates >= events.length, true);
  assert.equal(Object.keys((await new JobRepository(w.store).getRound("job-1", 1))!.received).length, 1);
});

test("a tampered chunk is rejected by chunkSha256; a bad whole-update hash is rejected at reassembly", async () => {
  const w = await openRound();
  const { events } = chunkEvents(result("dev-a"), { maxChunkBytes: 100 });
  const bad = { ...events[1], body: Buffer.from(events[1].body as Buffer).fill(7) };
  await w.agg.ingestUpdates([bad], ctxStub);
  assert.equal(w.agg.ingestor.counters.rejected_hash, 1);

  const { events: ev2 } = chunkEvents(result("dev-b"), { maxChunkBytes: 100, chunkSha: false });
  ev2[2] = { ...ev2[2], body: Buffer.from(ev2[2].body as Buffer).fill(1) };
  await w.agg.ingestUpdates(ev2, ctxStub);
  assert.equal(w.agg.ingestor.counters.rejected_hash, 2);
  assert.equal(w.agg.ingestor.counters.updates_completed, 0);
  assert.equal(await w.store.get(paths.update("job-1", 1, "dev-b")), undefined);
  assert.deepEqual(
    await w.store.list("jobs/job-1/rounds/1/chunks/"),
    [],
    "a failed reassembly drops the chunks",
  );
});

test("a chunk sent by another device than its deviceId is rejected; so is a non-participant", async () => {
  const w = await openRound();
  const { events } = chunkEvents(result("dev-a"), { sender: "dev-evil" });
  await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(w.agg.ingestor.counters.rejected_device, events.length);
  const { events: ev2 } = chunkEvents(result("stranger"));
  await w.agg.ingestUpdates(ev2, ctxStub);
  assert.equal(w.agg.ingestor.counters.rejected_not_participant, ev2.length);
  assert.equal(w.agg.ingestor.counters.updates_completed, 0);
  assert.equal(w.fleet.acks.length, 0);
});

test("unknown job, wrong layout, frame/property mismatch and device failure frames", async () => {
  const w = await openRound();
  const c = w.agg.ingestor.counters;
  await w.agg.ingestUpdates(chunkEvents(result("dev-a", { jobId: "nope" })).events, ctxStub);
  assert.equal(c.rejected_unknown_job, 1);
  await w.agg.ingestUpdates(chunkEvents(result("dev-a", { layoutHash: "f".repeat(64) })).events, ctxStub);
  assert.equal(c.rejected_frame, 1);
  await w.agg.ingestUpdates(chunkEvents(result("dev-a", { delta: new Float32Array(3) })).events, ctxStub);
  assert.equal(c.rejected_frame, 2);
  const f = chunkEvents({
    type: "failure",
    jobId: "job-1",
    round: 1,
    deviceId: "dev-c",
    code: "E_OOM",
    reason: "x",
  });
  await w.agg.ingestUpdates(f.events, ctxStub);
  assert.equal(c.failures_received, 1);
  const st = await new JobRepository(w.store).getRound("job-1", 1);
  assert.equal(st?.received["dev-c"]?.kind, "failure");
  assert.equal(st?.received["dev-a"], undefined);
});

test("garbage never throws: every malformed event is counted", async () => {
  const w = await openRound();
  const good = chunkEvents(result("dev-a")).events[0];
  const props = good.properties as Record<string, string>;
  const garbage: unknown[] = [
    null,
    42,
    {},
    { body: "a string" },
    { body: Buffer.from("x"), properties: {} },
    { body: Buffer.from("x"), properties: { ...props, round: "-1" } },
    { body: Buffer.from("x"), properties: { ...props, chunkIndex: "9", chunkCount: "2" } },
    { body: Buffer.from("x"), properties: { ...props, sha256: "zz" } },
    { body: Buffer.from("x"), properties: { ...props, updateId: "../../etc" } },
    {
      body: Buffer.from("x"),
      properties: { ...props, size: "99999999999" },
      systemProperties: good.systemProperties,
    },
    { body: Buffer.alloc(300 * 1024), properties: props, systemProperties: good.systemProperties },
    { body: good.body, properties: { ...props, round: "7" }, systemProperties: good.systemProperties },
  ];
  const r = await w.agg.ingestUpdates(garbage, ctxStub);
  assert.equal(r.accepted, 0);
  assert.equal(r.rejected, garbage.length);
  const c = w.agg.ingestor.counters;
  assert.equal(c.rejected_malformed + c.rejected_oversized + c.rejected_device, garbage.length);
  assert.equal(c.rejected_oversized, 1, "the 300 KB body");
  // not even an array, or a frame that is not FLT1 at all
  await w.agg.ingestUpdates("nonsense", ctxStub);
  const junk = Buffer.from("definitely not a frame");
  const ev = {
    body: junk,
    properties: {
      ...props,
      chunkIndex: "0",
      chunkCount: "1",
      size: String(junk.length),
      sha256: sha256(junk),
    },
    systemProperties: good.systemProperties,
  };
  delete (ev.properties as Record<string, string>).chunkSha256;
  await w.agg.ingestUpdates([ev], ctxStub);
  assert.equal(c.rejected_frame, 1);
  assert.equal(c.updates_completed, 0);
});

test("Event Hub trigger shape: bodies + triggerMetadata.propertiesArray/systemPropertiesArray", async () => {
  const w = await openRound();
  const { events } = chunkEvents(result("dev-b"), { maxChunkBytes: 200 });
  const context = {
    log() {},
    warn() {},
    error() {},
    triggerMetadata: {
      propertiesArray: events.map((e) => e.properties),
      systemPropertiesArray: events.map((e) => e.systemProperties),
    },
  } as never;
  const r = await w.agg.ingestUpdates(
    events.map((e) => new Uint8Array(e.body as Buffer)),
    context,
  );
  assert.equal(r.accepted, events.length, w.logs.join("\n"));
  assert.equal(w.agg.ingestor.counters.updates_completed, 1);
  assert.ok(encodeMessage);
});

test("chunk properties are read as own properties only: a polluted Object.prototype cannot fill in a missing one", () => {
  const own = {
    jobId: "job-1",
    round: "1",
    deviceId: "dev-1",
    updateId: "u-1",
    chunkIndex: "0",
    chunkCount: "1",
    size: "10",
    sha256: "a".repeat(64),
  };
  assert.equal(parseChunkProps(own).deviceId, "dev-1");
  const proto = Object.prototype as Record<string, unknown>;
  proto.deviceId = "victim";
  proto.chunkSha256 = "b".repeat(64);
  try {
    const { deviceId: _omit, ...withoutDevice } = own;
    assert.throws(() => parseChunkProps(withoutDevice), /property 'deviceId' missing or invalid/);
    assert.equal(Object.hasOwn(parseChunkProps(own), "chunkSha256"), false);
  } finally {
    delete proto.deviceId;
    delete proto.chunkSha256;
  }
});

/** Counts the store's writes by kind of blob. */
function countPuts(w: { store: { put: (...a: never[]) => Promise<string> } }) {
  const puts = { chunk: 0, state: 0, update: 0 };
  const put = w.store.put.bind(w.store);
  (w.store as { put: unknown }).put = (name: string, ...rest: never[]) => {
    if (name.includes("/chunks/")) puts.chunk++;
    else if (name.endsWith("/state.json")) puts.state++;
    else if (name.includes("/updates/")) puts.update++;
    return (put as (n: string, ...r: never[]) => Promise<string>)(name as never, ...rest);
  };
  return puts;
}

test("a batch: updates complete in memory (no chunk written) and are recorded with one round-state write", async () => {
  const w = await openRound();
  const puts = countPuts(w as never);
  const a = chunkEvents(result("dev-a"), { maxChunkBytes: 60 });
  const b = chunkEvents(result("dev-b", { delta: makeDelta(layout.totalSize, 5) }), { maxChunkBytes: 60 });
  const r = await w.agg.ingestUpdates(shuffle([...a.events, ...b.events], 7), ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
  assert.equal(w.agg.ingestor.counters.updates_completed, 2);
  assert.deepEqual(puts, { chunk: 0, state: 1, update: 2 });
  const st = await new JobRepository(w.store).getRound("job-1", 1);
  assert.deepEqual(Object.keys(st!.received).sort(), ["dev-a", "dev-b"]);
  assert.deepEqual(
    w.fleet.acks.map((x) => x.deviceId).sort(),
    ["dev-a", "dev-b"],
    "each update acknowledged once",
  );
});

test("an update split across batches: the first batch stores its chunks, the next completes it and deletes them", async () => {
  const w = await openRound();
  const { events, updateId, frame } = chunkEvents(result("dev-a"), { maxChunkBytes: 60 });
  const half = Math.floor(events.length / 2);
  const r1 = await w.agg.ingestUpdates([...events.slice(0, half), events[0]], ctxStub);
  assert.equal(r1.rejected, 0);
  assert.equal(w.agg.ingestor.counters.updates_completed, 0);
  assert.equal((await w.store.list("jobs/job-1/rounds/1/chunks/")).length, half);
  assert.equal(w.fleet.acks.length, 0, "nothing acknowledged before it is complete");
  // the rest, with one chunk of the first half again (stored already: counted as a duplicate)
  const r2 = await w.agg.ingestUpdates([events[1], ...events.slice(half)], ctxStub);
  assert.equal(r2.rejected, 0, w.logs.join("\n"));
  const c = w.agg.ingestor.counters;
  assert.equal(c.updates_completed, 1);
  assert.equal(c.chunks_stored, events.length);
  assert.equal(c.duplicate_chunks, 2);
  assert.deepEqual((await w.store.get(paths.update("job-1", 1, "dev-a")))?.bytes, frame);
  assert.deepEqual(await w.store.list("jobs/job-1/rounds/1/chunks/"), [], "stored chunks deleted");
  assert.deepEqual(w.fleet.acks, [{ deviceId: "dev-a", updateIds: [updateId] }]);
});
