/**
 * Participant selection in the Function (cloud/aggregator/src/selection.ts): the job's `selection` and `cohort`,
 * the profiler's capabilities reaching the selector, the selection history, and the per-device leases that keep
 * two running jobs from ordering the same device at once.
 */
import { afterAll, beforeAll, describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import { validateJob } from "../../../cloud/aggregator/src/jobs/job";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import {
  AzureBlobStore,
  MemoryBlobStore,
  devStorageConnectionString,
  getJson,
  putJson,
  type BlobStore,
} from "../../../cloud/aggregator/src/store/blob-store";
import { createAggregator } from "../../../cloud/aggregator/src/aggregator";
import {
  deviceProfiles,
  eligibleDevices,
  expectedUploadBytes,
  policyCounts,
  recordRoundInHistory,
  selectionContext,
  selectionPaths,
  type DeviceLease,
} from "../../../cloud/aggregator/src/selection";
import { FedAvg } from "../../../core/strategies/fedavg";
import { SelectionHistory, createSelector } from "../../../core/selection";
import { isFlotillaError } from "../../../core/errors";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import {
  RecordingFleet,
  chunkEvents,
  ctx,
  jobBody,
  makeDelta,
  post,
  SPEC,
  startAzurite,
  startJob,
  world,
  type Azurite,
  type World,
  lineTrainer,
  asTrainers,
  type TestTrainer,
} from "./support";

const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;
const layout = modelLayout(SPEC as unknown as ModelSpec);

async function participants(w: World, jobId: string, round: number): Promise<string[]> {
  const st = await new JobRepository(w.store).getRound(jobId, round);
  assert.ok(st, `round ${jobId}/${round} exists`);
  return st.participants.map((p) => p.deviceId).sort();
}

async function lease(w: World, deviceId: string): Promise<DeviceLease | undefined> {
  return (await getJson<DeviceLease>(w.store, selectionPaths.lease(deviceId)))?.value;
}

async function deliver(w: World, jobId: string, round: number, deviceId: string, loss: number) {
  const msg = {
    type: "result" as const,
    jobId,
    round,
    deviceId,
    layoutHash: layout.hash,
    numSamples: 50,
    metrics: { loss, accuracy: 0.5, trainMs: 10 },
    delta: makeDelta(layout.totalSize, deviceId.length + round),
  };
  const r = await w.agg.ingestUpdates(chunkEvents(msg).events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
}

function invalid(over: Record<string, unknown>, re: RegExp): void {
  assert.throws(
    () => validateJob(jobBody(over)),
    (e: unknown) => {
      assert.ok(isFlotillaError(e) && e.code === "E_JOB_INVALID", String(e));
      assert.match(e.message, re);
      assert.ok(!e.message.includes("\n"));
      return true;
    },
  );
}

test("a job's selection defaults to random and is checked with createSelector; its cohort is a bounded condition", () => {
  assert.equal(validateJob(jobBody()).selection, "random");
  assert.equal(validateJob(jobBody()).cohort, undefined);
  assert.equal(validateJob(jobBody({ selection: "oort:floor=5" })).selection, "oort:floor=5");
  assert.equal(validateJob(jobBody({ selection: "Deadline" })).selection, "deadline");
  invalid(
    { selection: "fastest" },
    /selection: unknown selection 'fastest' \(valid: random, deadline, oort\)/,
  );
  invalid({ selection: "oort:floor=-1" }, /floor='-1'/);
  invalid({ selection: 5 }, /selection must be a string/);
  const ok = "tags.flotilla.fleet = 'line-3' AND (tags.site IN ['a', 'b(1)'] OR NOT IS_DEFINED(tags.x))";
  assert.equal(validateJob(jobBody({ cohort: ` ${ok} ` })).cohort, ok);
  assert.equal(
    validateJob(jobBody({ cohort: "tags.name = 'it''s Zürich'" })).cohort,
    "tags.name = 'it''s Zürich'",
  );
  invalid({ cohort: "" }, /cohort must not be empty/);
  invalid({ cohort: 3 }, /cohort must be a string/);
  invalid({ cohort: "tags.a = 'x" }, /unterminated string/);
  invalid({ cohort: "tags.a = 'x')" }, /unbalanced '\)'/);
  invalid({ cohort: "(tags.a = 'x'" }, /unclosed '\('/);
  invalid({ cohort: "tags.a = 'x'; DROP" }, /';'/);
  invalid({ cohort: "tags.a = 1 FROM devices" }, /'FROM' is not allowed/);
  invalid({ cohort: "tags.a = 'x'\n" + "OR 1 = 1" }, /control characters/);
  invalid({ cohort: `tags.a = '${"x".repeat(1100)}'` }, /at most 1024/);
  invalid({ minMemoryBytes: -1 }, /minMemoryBytes/);
});

test("the job's selector gets the profiler's capabilities: deadline picks the devices that finish in time", async () => {
  const w = world([]);
  const base = { connected: true, numSamples: 1000, uplinkBytesPerSecond: 1e6, rttMs: 20 };
  w.fleet.trainers = [
    { deviceId: "fast-1", ...base, samplesPerSecond: { mlp: 500 } },
    { deviceId: "fast-2", ...base, samplesPerSecond: { mlp: 400 } },
    // fast, but a 2 KB/s uplink makes its upload far longer than the 60 s deadline
    { deviceId: "thin-link", ...base, samplesPerSecond: { mlp: 600 }, uplinkBytesPerSecond: 2 },
    // fast, but too little memory for the job
    { deviceId: "small", ...base, samplesPerSecond: { mlp: 600 }, memoryBytes: 1000 },
    { deviceId: "slow", ...base, samplesPerSecond: { mlp: 20 } },
  ] satisfies TestTrainer[];
  const id = await startJob(w, {
    selection: "deadline",
    minMemoryBytes: 1e6,
    strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
  });
  await w.agg.roundTimer({}, ctxStub);
  // slow: 1000 samples / 20 per s = 50 s + transfers; the deadline selector leaves out everything that cannot finish
  assert.deepEqual(await participants(w, id, 1), ["fast-1", "fast-2", "slow"]);
  const st = await new JobRepository(w.store).getRound(id, 1);
  assert.deepEqual(
    st!.participants.map((p) => p.deviceId),
    ["fast-1", "fast-2", "slow"],
    "ordered fastest first (FedCS)",
  );
});

test("random keeps FedAvg's draw and order; the history records loss, samples, duration and timeouts", async () => {
  const w = world(["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"]);
  const id = await startJob(w, { rounds: 2 });
  await w.agg.roundTimer({}, ctxStub);
  const st = await new JobRepository(w.store).getRound(id, 1);
  const ids = st!.participants.map((p) => p.deviceId);
  assert.equal(ids.length, 3);
  const fedavg = new FedAvg({ clientsPerRound: 3, seed: 7, fit: { epochs: 1, batchSize: 8, lr: 0.1 } });
  assert.deepEqual(
    ids,
    fedavg
      .configureFit(
        1,
        w.fleet.trainers.map((t) => ({ deviceId: t.deviceId })),
      )
      .map((f) => f.deviceId),
  );
  w.now.t += 5_000;
  await deliver(w, id, 1, ids[0], 0.75);
  await deliver(w, id, 1, ids[1], 1.25);
  w.now.t += 60_000; // the third never delivers: the round closes at its deadline
  await w.agg.roundTimer({}, ctxStub);
  const h = SelectionHistory.fromJSON((await getJson(w.store, selectionPaths.history(id)))!.value);
  assert.equal(h.lastRound, 1);
  assert.deepEqual(h.get(ids[0]), {
    selected: 1,
    completions: 1,
    timeouts: 0,
    consecutiveTimeouts: 0,
    lastSelectedRound: 1,
    lastLoss: 0.75,
    lastSamples: 50,
    lastDurationS: 5,
  });
  assert.equal(h.get(ids[1])!.lastLoss, 1.25);
  assert.deepEqual(h.get(ids[2]), {
    selected: 1,
    completions: 0,
    timeouts: 1,
    consecutiveTimeouts: 1,
    lastSelectedRound: 1,
  });
  // round 2 opened in the same tick; a restarted Function closing round 1 again does not count it twice
  assert.equal((await new JobRepository(w.store).getRound(id, 2))?.status, "open");
  await recordRoundInHistory(w.store, st!, [ids[0]], () => {});
  const again = SelectionHistory.fromJSON((await getJson(w.store, selectionPaths.history(id)))!.value);
  assert.deepEqual(again.toJSON(), h.toJSON());
});

test("two running jobs with overlapping cohorts never order the same device at once", async () => {
  const w = world([]);
  w.fleet.trainers = [
    lineTrainer("x-1", "x"),
    lineTrainer("x-2", "x"),
    lineTrainer("s-1", "shared"),
    lineTrainer("s-2", "shared"),
    lineTrainer("s-3", "shared"),
    lineTrainer("y-1", "y"),
    lineTrainer("y-2", "y"),
    lineTrainer("z-1", "z"),
  ];
  const opts = { clientsPerRound: 10, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 };
  const a = await startJob(w, {
    jobId: "job-a",
    rounds: 1,
    strategyOptions: opts,
    cohort: "tags.flotilla.line IN ['x', 'shared']",
  });
  const b = await startJob(w, {
    jobId: "job-b",
    rounds: 3,
    strategyOptions: opts,
    cohort: "tags.flotilla.line = 'y' OR tags.flotilla.line = 'shared'",
  });
  await w.agg.roundTimer({}, ctxStub);
  assert.ok(w.fleet.cohorts.includes("tags.flotilla.line IN ['x', 'shared']"));
  const a1 = await participants(w, a, 1);
  const b1 = await participants(w, b, 1);
  assert.deepEqual(a1, ["s-1", "s-2", "s-3", "x-1", "x-2"], "job-a ticks first and takes its whole cohort");
  assert.deepEqual(b1, ["y-1", "y-2"], "job-b gets only the devices job-a does not hold");
  assert.equal((await lease(w, "s-2"))?.jobId, "job-a");
  assert.equal((await lease(w, "y-1"))?.jobId, "job-b");
  // every device ordered once: the twin orders of both jobs are disjoint
  const ordered = w.fleet.started.map((o) => o.deviceId);
  assert.equal(new Set(ordered).size, ordered.length);

  // job-a's only round closes at its deadline: the job completes and its leases are released; job-b's next round
  // may then take the shared devices
  w.now.t += 61_000;
  await w.agg.roundTimer({}, ctxStub);
  assert.equal((await new JobRepository(w.store).getJob(a))?.status, "completed");
  for (const d of a1) assert.notEqual((await lease(w, d))?.jobId, "job-a", `${d} released`);
  assert.deepEqual(await participants(w, b, 2), ["s-1", "s-2", "s-3", "y-1", "y-2"]);
  assert.equal((await lease(w, "s-1"))?.jobId, "job-b");
  assert.equal((await lease(w, "s-1"))?.round, 2);

  // stopping job-b releases its devices
  const stop = await w.agg.http.stopJob(post(`/api/jobs/${b}/stop`, undefined, { id: b }), ctx());
  assert.equal(stop.status, 200);
  await w.agg.roundTimer({}, ctxStub);
  assert.deepEqual(await w.store.list(selectionPaths.leases), []);
  // started again: the resumed round takes its devices' leases again
  const start = await w.agg.http.startJob(post(`/api/jobs/${b}/start`, undefined, { id: b }), ctx());
  assert.equal(start.status, 200);
  await w.agg.roundTimer({}, ctxStub);
  for (const d of ["s-1", "s-2", "s-3", "y-1", "y-2"])
    assert.deepEqual(
      [(await lease(w, d))?.jobId, (await lease(w, d))?.round],
      ["job-b", 2],
      `${d} leased again`,
    );
});

test("a stale lease (expired, or of a job that no longer runs) does not hold its device; a live one does", async () => {
  const w = world(["d-1", "d-2", "d-3", "d-4"]);
  const put = (deviceId: string, l: DeviceLease) => putJson(w.store, selectionPaths.lease(deviceId), l);
  // d-1: a crashed aggregator's lease, expired; d-2: a job that does not exist (any more);
  // d-3: a running job's open round, not expired
  await put("d-1", { jobId: "ghost", round: 4, acquiredAt: 0, expiresAt: w.now.t - 1 });
  await put("d-2", { jobId: "gone", round: 1, acquiredAt: 0, expiresAt: w.now.t + 3_600_000 });
  const other = await startJob(w, {
    jobId: "job-other",
    strategyOptions: { clientsPerRound: 1, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 3 },
  });
  await w.agg.roundTimer({}, ctxStub);
  const held = await participants(w, other, 1);
  assert.equal(held.length, 1);
  const id = await startJob(w, {
    jobId: "job-mine",
    strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
  });
  await w.agg.roundTimer({}, ctxStub);
  const mine = await participants(w, id, 1);
  assert.deepEqual(
    mine,
    ["d-1", "d-2", "d-3", "d-4"].filter((d) => d !== held[0]),
  );
  for (const d of mine) assert.equal((await lease(w, d))?.jobId, "job-mine", d);
  assert.equal((await lease(w, held[0]))?.jobId, "job-other");
  assert.ok(w.logs.some((l) => /taking over the stale lease of (ghost\/4|gone\/1)/.test(l)));
});

/**
 * Two Function instances (two aggregators over one store) open rounds of two jobs with overlapping cohorts at the
 * same time, many times over: every device is leased to one of them and ordered by that one only.
 */
async function concurrentOpenings(makeStore: () => BlobStore, repeats: number): Promise<void> {
  for (let rep = 0; rep < repeats; rep++) {
    const store = makeStore();
    const fleet = new RecordingFleet();
    fleet.trainers = Array.from({ length: 12 }, (_, i) => ({
      deviceId: `dev-${String(i).padStart(2, "0")}`,
      connected: true,
      numSamples: 100,
      tags: { line: i < 4 ? "a" : i < 8 ? "shared" : "b" },
    }));
    const now = { t: 1_700_000_000_000 };
    const services = { store, fleet, clock: () => now.t, log: () => {} };
    const one = createAggregator(services, { tickAfterIngest: false });
    const two = createAggregator(services, { tickAfterIngest: false });
    const opts = { clientsPerRound: 12, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: rep };
    for (const [jobId, cohort] of [
      ["job-a", "tags.line IN ['a', 'shared']"],
      ["job-b", "tags.line IN ['b', 'shared']"],
    ]) {
      const body = jobBody({ jobId, strategyOptions: opts, cohort });
      assert.equal((await one.http.createJob(post("/api/jobs", body), ctx())).status, 201);
      const s = await one.http.startJob(post(`/api/jobs/${jobId}/start`, undefined, { id: jobId }), ctx());
      assert.equal(s.status, 200);
    }
    await Promise.all([one.orchestrator.tickJob("job-a", now.t), two.orchestrator.tickJob("job-b", now.t)]);
    const repo = new JobRepository(store);
    const a = (await repo.getRound("job-a", 1))?.participants.map((p) => p.deviceId) ?? [];
    const b = (await repo.getRound("job-b", 1))?.participants.map((p) => p.deviceId) ?? [];
    assert.ok(a.length + b.length >= 8, `rep ${rep}: both jobs' own devices are ordered (${a} / ${b})`);
    assert.deepEqual(
      a.filter((id) => b.includes(id)),
      [],
      `rep ${rep}: no device in both rounds`,
    );
    for (const id of a)
      assert.equal((await getJson<DeviceLease>(store, selectionPaths.lease(id)))?.value.jobId, "job-a");
    for (const id of b)
      assert.equal((await getJson<DeviceLease>(store, selectionPaths.lease(id)))?.value.jobId, "job-b");
    const orders = fleet.started.map((o) => o.deviceId);
    assert.equal(new Set(orders).size, orders.length, `rep ${rep}: one order per device`);
  }
}

test("concurrent round openings of two jobs share no device (memory store)", async () => {
  await concurrentOpenings(() => new MemoryBlobStore(), 20);
});

describe("over Azurite", () => {
  let azurite: Azurite;
  let n = 0;
  beforeAll(async () => {
    azurite = await startAzurite();
  });
  afterAll(async () => {
    await azurite?.stop();
  });
  test("concurrent round openings of two jobs share no device (Azure Blob Storage ETags)", async () => {
    await concurrentOpenings(
      () =>
        new AzureBlobStore({
          connectionString: devStorageConnectionString(azurite.blobEndpoint),
          containerName: `sel${process.pid}-${++n}`,
        }),
      3,
    );
  });
});

test("an oort job's later rounds are the selector's picks over the stored history", async () => {
  const w = world([]);
  w.fleet.trainers = Array.from({ length: 10 }, (_, i) => ({
    deviceId: `dev-${i}`,
    connected: true,
    numSamples: 100,
    samplesPerSecond: { mlp: 10 * (i + 1) },
  }));
  const spec = "oort:floor=0,epsilon=0.5";
  const id = await startJob(w, {
    rounds: 3,
    selection: spec,
    strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 5 },
  });
  const repo = new JobRepository(w.store);
  for (let r = 1; r <= 2; r++) {
    await w.agg.roundTimer({}, ctxStub);
    const st = (await repo.getRound(id, r))!;
    const job = (await repo.getJob(id))!;
    const stored = await getJson(w.store, selectionPaths.history(id));
    const history = stored ? SelectionHistory.fromJSON(stored.value) : new SelectionHistory();
    const meta = (await repo.getModelMeta(id, r - 1))!;
    const want = createSelector(spec).select(
      deviceProfiles(job, asTrainers(w.fleet.trainers)),
      history,
      selectionContext(job, r, meta.downlink?.bytes ?? job.modelLength * 4),
    );
    assert.deepEqual(
      st.participants.map((p) => p.deviceId),
      want,
      `round ${r}`,
    );
    w.now.t += 2_000;
    for (const [k, p] of st.participants.entries()) await deliver(w, id, r, p.deviceId, 0.5 + k);
    w.now.t += 1_000;
  }
  await w.agg.roundTimer({}, ctxStub);
  const h = SelectionHistory.fromJSON((await getJson(w.store, selectionPaths.history(id)))!.value);
  assert.equal(h.lastRound, 2);
  const picked = [...h.values()].reduce((s, x) => s + x.selected, 0);
  assert.equal(picked, 8);
});

test("a damaged selection.json or lease blob never stops a job: it is logged and replaced", async () => {
  const w = world(["d-1", "d-2", "d-3"]);
  const id = await startJob(w, { rounds: 2 });
  const bytes = (text: string) => new Uint8Array(Buffer.from(text));
  await w.store.put(selectionPaths.history(id), bytes("{not json"));
  await w.store.put(selectionPaths.lease("d-2"), bytes("[]"));
  await w.store.put(selectionPaths.lease("d-3"), bytes("garbage"));
  await w.agg.roundTimer({}, ctxStub);
  assert.deepEqual(await participants(w, id, 1), ["d-1", "d-2", "d-3"]);
  for (const d of ["d-1", "d-2", "d-3"]) assert.equal((await lease(w, d))?.jobId, id);
  assert.ok(w.logs.some((l) => /E_SELECTION_HISTORY: selection history is not JSON/.test(l)));
  assert.ok(w.logs.some((l) => /lease of d-3: taking over the damaged lease/.test(l)));
  w.now.t += 61_000;
  await w.agg.roundTimer({}, ctxStub);
  const h = SelectionHistory.fromJSON((await getJson(w.store, selectionPaths.history(id)))!.value);
  assert.equal(h.lastRound, 1);
  assert.equal(h.get("d-1")?.timeouts, 1);
});

test("declared availability windows (tags.flotilla.availability): outside them a device is not picked, inside its remaining time reaches the selector, a bad tag is logged and ignored", async () => {
  const w = world([]);
  // world's clock: pick a time of day and declare windows around it
  const day = 24 * 3600_000;
  const minuteOfDay = Math.floor((w.now.t % day) / 60_000);
  const hhmm = (m: number) => {
    const x = ((m % 1440) + 1440) % 1440;
    return `${String(Math.floor(x / 60)).padStart(2, "0")}:${String(x % 60).padStart(2, "0")}`;
  };
  const dev = (deviceId: string, availability?: unknown): TestTrainer => ({
    deviceId,
    connected: true,
    numSamples: 100,
    ...(availability !== undefined ? { tags: { flotilla: { availability } } } : {}),
  });
  w.fleet.trainers = [
    dev("in-window", [`${hhmm(minuteOfDay - 60)}-${hhmm(minuteOfDay + 30)}`]),
    dev("out-of-window", [`${hhmm(minuteOfDay + 60)}-${hhmm(minuteOfDay + 120)}`]),
    dev("bad-tag", ["soon"]),
    dev("undeclared"),
  ];
  const id = await startJob(w, {
    selection: "deadline",
    strategyOptions: { clientsPerRound: 10, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 5 },
  });
  const job = (await new JobRepository(w.store).getJob(id))!;
  const logs: string[] = [];
  const profiles = deviceProfiles(job, asTrainers(w.fleet.trainers), w.now.t, (l) => logs.push(l));
  assert.deepEqual(profiles.map((p) => p.deviceId).sort(), ["bad-tag", "in-window", "undeclared"]);
  const inside = profiles.find((p) => p.deviceId === "in-window")!;
  assert.ok(
    Math.abs(inside.onlineForS! - (30 * 60 - (w.now.t % 60_000) / 1000)) < 1,
    String(inside.onlineForS),
  );
  assert.ok(
    logs.some((l) => l.includes("bad-tag") && l.includes("E_SELECTION_WINDOWS")),
    logs.join("\n"),
  );
  await w.agg.roundTimer({}, ctxStub);
  assert.deepEqual(await participants(w, id, 1), ["bad-tag", "in-window", "undeclared"]);
});

describe("device policy (core/fleet/policy.ts) in selection", () => {
  const now = Date.UTC(2026, 11, 7, 12); // 12:00 UTC
  const closedWindow = { timeZone: "Asia/Kolkata", windows: ["08:00-12:00"] }; // 17:30 IST
  const openWindow = { timeZone: "Asia/Kolkata", windows: ["17:00-18:00"] };

  test("eligibleDevices: each reason from the device's figures and the job's needs; unknown figures never exclude", async () => {
    const w = world([]);
    const id = await startJob(w, {
      strategyOptions: { clientsPerRound: 3, fit: { epochs: 2, batchSize: 8, lr: 0.1 }, seed: 7 },
    });
    const job = (await new JobRepository(w.store).getJob(id))!;
    const dense = job.modelLength * 4;
    const t = (deviceId: string, over: Partial<TestTrainer> = {}): TestTrainer => ({
      deviceId,
      connected: true,
      numSamples: 100,
      ...over,
    });
    const trainers = asTrainers([
      t("ok"),
      t("disabled", { policy: { enabled: false, trainingWindows: closedWindow } }),
      t("window", { policy: { enabled: true, trainingWindows: closedWindow } }),
      t("in-window", { policy: { enabled: true, trainingWindows: openWindow } }),
      t("disk", { policy: { enabled: true, minFreeDiskBytes: 2 ** 30 }, freeDiskBytes: 2 ** 20 }),
      t("disk-unknown", { policy: { enabled: true, minFreeDiskBytes: 2 ** 30 } }),
      t("memory", { policy: { enabled: true, minFreeMemoryBytes: 2 ** 30 }, freeMemoryBytes: 2 ** 20 }),
      // 100 samples × 2 epochs / 2 samples/s = 100 s > 1 min
      t("duration", { policy: { enabled: true, maxTrainingMinutes: 1 }, samplesPerSecond: { mlp: 2 } }),
      t("duration-unknown", { policy: { enabled: true, maxTrainingMinutes: 1 } }),
      t("metered", { policy: { enabled: true, meteredLink: true, meteredMaxUploadBytes: dense - 1 } }),
      t("metered-fits", { policy: { enabled: true, meteredLink: true, meteredMaxUploadBytes: dense } }),
      t("offline", { connected: false, policy: { enabled: false } }),
    ]);
    const logs: string[] = [];
    const got = eligibleDevices(job, trainers, now, (l) => logs.push(l));
    assert.deepEqual(
      got.profiles.map((p) => p.deviceId),
      ["ok", "in-window", "disk-unknown", "duration-unknown", "metered-fits"],
    );
    assert.deepEqual(
      got.policyExcluded.map((e) => [e.deviceId, e.reason]),
      [
        ["disabled", "disabled"],
        ["window", "window"],
        ["disk", "disk"],
        ["memory", "memory"],
        ["duration", "duration"],
        ["metered", "metered"],
      ],
      "an offline device is not a candidate anyway and is not counted",
    );
    assert.deepEqual(policyCounts(got.policyExcluded), {
      disabled: 1,
      window: 1,
      disk: 1,
      memory: 1,
      duration: 1,
      metered: 1,
    });
    assert.deepEqual(logs, []);
    // Without a clock windows are not judged.
    assert.ok(eligibleDevices(job, trainers).profiles.some((p) => p.deviceId === "window"));
    // A zone this runtime does not know: logged, the device judged without its windows.
    const odd = asTrainers([
      t("odd", {
        policy: { enabled: true, trainingWindows: { timeZone: "Mars/Base", windows: ["01:00-02:00"] } },
      }),
    ]);
    const oddLogs: string[] = [];
    assert.deepEqual(
      eligibleDevices(job, odd, now, (l) => oddLogs.push(l)).profiles.map((p) => p.deviceId),
      ["odd"],
    );
    assert.match(
      oddLogs[0] ?? "",
      /^device odd: E_PROPERTY_INVALID: .*Mars\/Base.*; its training windows are not judged$/,
    );
  });

  test("a lossy codec's upload size is unknown until a round was received; then it is the mean received update", async () => {
    const w = world([]);
    const id = await startJob(w, { compression: "int8" });
    const job = (await new JobRepository(w.store).getJob(id))!;
    assert.equal(expectedUploadBytes(job), undefined);
    const none = (await new JobRepository(w.store).getJob(
      (await startJob(w, { jobId: "job-2" })) as string,
    ))!;
    assert.equal(expectedUploadBytes(none), none.modelLength * 4);
    const withRound = {
      ...job,
      rounds: [{ round: 1, completed: 4, bytesReceived: 4000 }],
    } as unknown as typeof job;
    assert.equal(expectedUploadBytes(withRound), 1000);
  });

  test("a sync round never orders a device its policy excludes; its state and record count them per reason", async () => {
    const ids = Array.from({ length: 8 }, (_, i) => `d-${i}`);
    const w = world(ids);
    w.now.t = now;
    const policies: Record<string, TestTrainer["policy"]> = {
      "d-1": { enabled: false },
      "d-2": { enabled: false },
      "d-3": { enabled: true, trainingWindows: closedWindow },
      "d-4": { enabled: true, trainingWindows: closedWindow },
      "d-5": { enabled: true, minFreeDiskBytes: 2 ** 30 },
    };
    w.fleet.trainers = w.fleet.trainers.map((t) => ({
      ...t,
      ...(policies[t.deviceId] ? { policy: policies[t.deviceId] } : {}),
      ...(t.deviceId === "d-5" ? { freeDiskBytes: 1000 } : {}),
    }));
    const id = await startJob(w, {
      rounds: 2,
      strategyOptions: { clientsPerRound: 8, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    });
    await w.agg.roundTimer({}, ctxStub);
    const repo = new JobRepository(w.store);
    assert.deepEqual(await participants(w, id, 1), ["d-0", "d-6", "d-7"]);
    assert.deepEqual((await repo.getRound(id, 1))?.selection, {
      candidates: 3,
      policyExcluded: { disabled: 2, window: 2, disk: 1 },
    });
    const lines = w.logs.filter((l) => l.includes("not ordered: policy"));
    assert.deepEqual(lines.sort(), [
      `round ${id}/1: device d-1 not ordered: policy disabled: participation is disabled by the operator`,
      `round ${id}/1: device d-2 not ordered: policy disabled: participation is disabled by the operator`,
      `round ${id}/1: device d-3 not ordered: policy window: outside its training windows (08:00-12:00 Asia/Kolkata)`,
      `round ${id}/1: device d-4 not ordered: policy window: outside its training windows (08:00-12:00 Asia/Kolkata)`,
      `round ${id}/1: device d-5 not ordered: policy disk: free disk 0.00 MiB is below its floor of 1024 MiB`,
    ]);
    for (const d of ["d-0", "d-6", "d-7"]) await deliver(w, id, 1, d, 1);
    await w.agg.roundTimer({}, ctxStub);
    const job = (await repo.getJob(id))!;
    assert.equal(job.rounds[0]?.candidates, 3);
    assert.deepEqual(job.rounds[0]?.policyExcluded, { disabled: 2, window: 2, disk: 1 });
    // The operator re-enables d-1: it is a candidate of the next round at once.
    w.fleet.trainers = w.fleet.trainers.map((t) =>
      t.deviceId === "d-1" ? { ...t, policy: { enabled: true } } : t,
    );
    w.now.t += 1000;
    const before = w.fleet.started.length;
    await w.agg.roundTimer({}, ctxStub);
    // Round 2 opened in round 1's closing tick (before the change) or now: either way nobody excluded is ordered.
    const ordered = new Set(w.fleet.started.map((s) => s.deviceId));
    for (const d of ["d-2", "d-3", "d-4", "d-5"]) assert.ok(!ordered.has(d), `${d} never ordered`);
    assert.ok(w.fleet.started.length >= before);
  });

  test("when every device is excluded the round waits and says why; many exclusions are summarised in one line", async () => {
    const ids = Array.from({ length: 14 }, (_, i) => `x-${String(i).padStart(2, "0")}`);
    const w = world(ids);
    w.now.t = now;
    w.fleet.trainers = w.fleet.trainers.map((t, i) => ({
      ...t,
      policy: i < 12 ? { enabled: false } : { enabled: true, trainingWindows: closedWindow },
    }));
    const id = await startJob(w, {
      strategyOptions: { clientsPerRound: 5, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    });
    const r = await w.agg.roundTimer({}, ctxStub);
    assert.equal(await new JobRepository(w.store).getRound(id, 1), undefined);
    assert.match(
      JSON.stringify(r),
      /round 1: no eligible trainer \(14 excluded by their policy: disabled 12, window 2\), waiting/,
    );
    assert.ok(!w.logs.some((l) => l.includes("not ordered")), "a waiting round logs no device lines");
    // 10 of them with a line each, the rest in one
    w.fleet.trainers = [...w.fleet.trainers, { deviceId: "ok", connected: true, numSamples: 100 }];
    await w.agg.roundTimer({}, ctxStub);
    assert.deepEqual(await participants(w, id, 1), ["ok"]);
    const lines = w.logs.filter((l) => l.startsWith(`round ${id}/1:`) && l.includes("policy"));
    assert.equal(lines.length, 11, lines.join("\n"));
    assert.equal(
      lines[10],
      `round ${id}/1: 4 more device(s) not ordered by their policy (disabled 2, window 2)`,
    );
  });
});
