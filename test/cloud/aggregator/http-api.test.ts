import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { ctx, get, jobBody, post, startJob, world } from "./support";

const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

test("create, list, get, start, stop, model metadata", async () => {
  const w = world();
  const api = w.agg.http;
  const created = await api.createJob(post("/api/jobs", jobBody({ jobId: "alpha" })), ctx());
  assert.equal(created.status, 201);
  assert.equal((created.jsonBody as { status: string }).status, "created");
  assert.equal((await api.createJob(post("/api/jobs", jobBody({ jobId: "alpha" })), ctx())).status, 409);

  const list = await api.listJobs(get("/api/jobs"), ctx());
  assert.deepEqual(
    (list.jsonBody as { jobs: { jobId: string }[] }).jobs.map((j) => j.jobId),
    ["alpha"],
  );
  // a created job does not run
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(w.fleet.configured.length, 0);

  const started = await api.startJob(post("/api/jobs/alpha/start", undefined, { id: "alpha" }), ctx());
  assert.equal(started.status, 200);
  assert.equal((started.jsonBody as { status: string }).status, "running");
  await w.agg.roundTimer({}, ctxStub);
  const got = await api.getJob(get("/api/jobs/alpha", { id: "alpha" }), ctx());
  assert.equal(got.status, 200);
  const body = got.jsonBody as {
    status: string;
    currentRound: number;
    currentRoundState: { participants: string[] };
  };
  assert.equal(body.currentRound, 1);
  assert.equal(body.currentRoundState.participants.length, 3);

  const m = await api.getModel(get("/api/jobs/alpha/models/0", { id: "alpha", round: "0" }), ctx());
  assert.equal(m.status, 200);
  const meta = m.jsonBody as { sha256: string; url: string; length: number };
  assert.match(meta.sha256, /^[0-9a-f]{64}$/);
  assert.match(meta.url, /models\/0\.f32/);
  assert.equal((await api.getModel(get("/x", { id: "alpha", round: "5" }), ctx())).status, 404);
  assert.equal((await api.getModel(get("/x", { id: "alpha", round: "-1" }), ctx())).status, 400);
  // Per-device evaluations (docs/evaluation.md): only of a round with a record.
  const noRecord = await api.getEvaluations(get("/x", { id: "alpha", round: "1" }), ctx());
  assert.deepEqual([noRecord.status, (noRecord.jsonBody as { code: string }).code], [404, "E_EVAL_ROUND"]);
  for (const round of ["0", "x", "1.5"])
    assert.equal((await api.getEvaluations(get("/x", { id: "alpha", round }), ctx())).status, 400, round);
  assert.equal((await api.getEvaluations(get("/x", { id: "ghost", round: "1" }), ctx())).status, 404);

  const stopped = await api.stopJob(post("/api/jobs/alpha/stop", undefined, { id: "alpha" }), ctx());
  assert.equal((stopped.jsonBody as { status: string }).status, "stopped");
  assert.equal((await api.getJob(get("/x", { id: "ghost" }), ctx())).status, 404);
});

test("bad input is a 400 with {code, message}", async () => {
  const w = world();
  const api = w.agg.http;
  const cases: [unknown, string][] = [
    ["{not json", "E_JOB_JSON"],
    [[], "E_JOB_INVALID"],
    [jobBody({ jobId: "Bad Id!" }), "E_JOB_ID"],
    [jobBody({ strategy: "sgd" }), "E_JOB_STRATEGY"],
    [jobBody({ modelSpec: { kind: "transformer" } }), "E_JOB_MODEL"],
    [jobBody({ rounds: 0 }), "E_JOB_INVALID"],
    [jobBody({ strategyOptions: { clientsPerRound: 2 } }), "E_JOB_INVALID"],
    [jobBody({ minCompletedFraction: 1.5 }), "E_JOB_INVALID"],
  ];
  for (const [body, code] of cases) {
    const r = await api.createJob(post("/api/jobs", body), ctx());
    assert.equal(r.status, 400, JSON.stringify(body));
    const b = r.jsonBody as { code: string; message: string };
    assert.equal(b.code, code, b.message);
    assert.ok(b.message.length > 0);
  }
  assert.deepEqual(await w.store.list("jobs/"), []);
});

test("state transitions that make no sense are 409", async () => {
  const w = world();
  const id = await startJob(w, { rounds: 1 });
  w.fleet.trainers = [];
  await w.agg.http.stopJob(post("/s", undefined, { id }), ctx());
  await w.agg.http.startJob(post("/s", undefined, { id }), ctx());
  // complete the job: one round, nobody → wait; give it a trainer that never answers, pass the deadline
  w.fleet.trainers = [{ deviceId: "d", connected: true }];
  await w.agg.roundTimer({}, ctxStub);
  w.now.t += 61_000;
  await w.agg.roundTimer({}, ctxStub);
  const r = await w.agg.http.startJob(post("/s", undefined, { id }), ctx());
  assert.equal(r.status, 409);
  assert.equal((r.jsonBody as { code: string }).code, "E_JOB_STATE");
});
