/**
 * Bring your own model in the Function (docs/byom.md): a job body's `model` (a Keras / tfjs model.json uploaded to
 * the container) and `initModel` (warm start) are read when the job is created, refused with coded 400s when they
 * do not fit, and the job's round 0 is the imported (or warm-start) model. One imported-graph round end to end:
 * the trainer's executor trains the round order's graph from the published model and the aggregate is FedAvg.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { initBackend } from "../../../core/engine/backend";
import { readKerasModel } from "../../../core/engine/keras";
import { modelLayout } from "../../../core/engine/plan";
import { Rng } from "../../../core/data/rng";
import { weightsHash } from "../../../core/tensor/layout";
import { JobRepository, paths } from "../../../cloud/aggregator/src/jobs/state";
import { InProcessTrainExecutor } from "../../../modules/trainer/src/executor";
import { parseRoundOrder } from "../../../modules/trainer/src/round";
import { chunkEvents, ctx, jobBody, post, world, type World } from "./support";

const FIXTURES = path.resolve(__dirname, "..", "..", "..", "..", "test", "fixtures", "keras");
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

/** Uploads a fixture directory (model.json and its shards) under `uploads/<name>/`. */
async function upload(w: World, name: string, as = name): Promise<string> {
  const dir = path.join(FIXTURES, name);
  for (const f of fs.readdirSync(dir))
    await w.store.put(`uploads/${as}/${f}`, fs.readFileSync(path.join(dir, f)));
  return `uploads/${as}/model.json`;
}

async function create(w: World, over: Record<string, unknown>) {
  const body = jobBody({ modelSpec: undefined, ...over });
  return w.agg.http.createJob(post("/api/jobs", body), ctx());
}

test("a job's `model` blob is imported: its graph is the job's model, its weights round 0; refusals are coded 400s", async () => {
  const w = world();
  const file = await upload(w, "keras3");
  const r = await create(w, { model: file });
  assert.equal(r.status, 201, JSON.stringify(r.jsonBody));
  const def = (r.jsonBody as { definition: Record<string, unknown> }).definition;
  const imported = readKerasModel(path.join(FIXTURES, "keras3"));
  assert.deepEqual(def.modelSpec, imported.spec);
  assert.equal(def.modelSource, file);
  assert.deepEqual(def.initModel, {
    source: `blob:${file}`,
    sha256: weightsHash(imported.weights),
    length: imported.weights.length,
  });
  await w.agg.http.startJob(post("/api/jobs/job-1/start", undefined, { id: "job-1" }), ctx());
  await w.agg.roundTimer({}, ctxStub);
  const m0 = await new JobRepository(w.store).getModel("job-1", 0);
  assert.deepEqual(m0?.weights, imported.weights);
  const order = w.fleet.configured[0].desired!;
  assert.deepEqual(order.modelSpec, imported.spec);
  assert.equal(order.layoutHash, modelLayout(imported.spec).hash);

  const refused = async (over: Record<string, unknown>, code: string, message: RegExp) => {
    const x = await create(w, over);
    assert.equal(x.status, 400, JSON.stringify(x.jsonBody));
    const b = x.jsonBody as { code: string; message: string };
    assert.equal(b.code, code, b.message);
    assert.match(b.message, message);
  };
  await refused({ model: "uploads/none/model.json" }, "E_JOB_MODEL", /does not exist/);
  await refused({ model: "../x/model.json" }, "E_JOB_MODEL", /not a blob path/);
  await refused({ model: file, modelSpec: imported.spec }, "E_JOB_INVALID", /not both/);
  const w2 = world();
  const bad = await create(w2, { model: await upload(w2, "unsupported") });
  assert.equal(bad.status, 400);
  assert.equal((bad.jsonBody as { code: string }).code, "E_MODEL_LAYER");
  assert.match((bad.jsonBody as { message: string }).message, /'global_max' \(GlobalMaxPooling2D\)/);
  // A shard that is not there.
  const w3 = world();
  await w3.store.put("u/model.json", fs.readFileSync(path.join(FIXTURES, "keras3", "model.json")));
  const short = await create(w3, { model: "u/model.json" });
  assert.equal((short.jsonBody as { code: string }).code, "E_MODEL_WEIGHTS");
});

test("initModel warm-starts a job from a published model or an uploaded one of the same layout (E_MODEL_INIT otherwise)", async () => {
  const w = world();
  const lstm = await upload(w, "sensors-lstm");
  const gru = await upload(w, "sensors-gru");
  assert.equal((await create(w, { jobId: "job-1", model: lstm })).status, 201);
  await w.agg.http.startJob(post("/api/jobs/job-1/start", undefined, { id: "job-1" }), ctx());
  await w.agg.roundTimer({}, ctxStub);
  const published = (await new JobRepository(w.store).getModel("job-1", 0))!.weights;

  // The graph inline (modelSpec) and job-1's round 0 as its start.
  const spec = readKerasModel(path.join(FIXTURES, "sensors-lstm")).spec;
  const r = await w.agg.http.createJob(
    post("/api/jobs", jobBody({ jobId: "job-2", modelSpec: spec, initModel: { jobId: "job-1", round: 0 } })),
    ctx(),
  );
  assert.equal(r.status, 201, JSON.stringify(r.jsonBody));
  assert.equal(
    (r.jsonBody as { definition: { initModel: { source: string } } }).definition.initModel.source,
    "job:job-1/0",
  );
  assert.deepEqual(new Float32Array((await w.store.get(paths.initModel("job-2")))!.bytes.buffer), published);

  const mismatch = await w.agg.http.createJob(
    post("/api/jobs", jobBody({ jobId: "job-3", modelSpec: undefined, model: lstm, initModel: gru })),
    ctx(),
  );
  assert.equal(mismatch.status, 400);
  assert.equal((mismatch.jsonBody as { code: string }).code, "E_MODEL_INIT");
  const missing = await w.agg.http.createJob(
    post(
      "/api/jobs",
      jobBody({ jobId: "job-4", modelSpec: undefined, model: lstm, initModel: { jobId: "job-9", round: 0 } }),
    ),
    ctx(),
  );
  assert.equal((missing.jsonBody as { code: string }).code, "E_JOB_MODEL");
  // fit.optimizer travels in the round order; a bad one is refused.
  const opt = await w.agg.http.createJob(
    post(
      "/api/jobs",
      jobBody({
        jobId: "job-5",
        strategyOptions: { clientsPerRound: 3, fit: { epochs: 1, batchSize: 8, lr: 0.1, optimizer: "adam" } },
      }),
    ),
    ctx(),
  );
  assert.equal(opt.status, 201);
  assert.deepEqual(
    (opt.jsonBody as { definition: { strategyOptions: { fit: { optimizer: unknown } } } }).definition
      .strategyOptions.fit.optimizer,
    { name: "adam" },
  );
  const badOpt = await w.agg.http.createJob(
    post(
      "/api/jobs",
      jobBody({
        jobId: "job-6",
        strategyOptions: {
          clientsPerRound: 3,
          fit: { epochs: 1, batchSize: 8, lr: 0.1, optimizer: "rmsprop" },
        },
      }),
    ),
    ctx(),
  );
  assert.equal((badOpt.jsonBody as { code: string }).code, "E_JOB_INVALID");
});

test("one imported-graph round end to end: the trainer trains the order's graph, the Function aggregates it", async () => {
  await initBackend();
  const w = world(["dev-a", "dev-b"]);
  const file = await upload(w, "keras3");
  const body = {
    model: file,
    strategyOptions: {
      clientsPerRound: 2,
      fit: { epochs: 2, batchSize: 8, lr: 0.1, optimizer: "momentum:0.5" },
    },
  };
  assert.equal((await create(w, body)).status, 201);
  await w.agg.http.startJob(post("/api/jobs/job-1/start", undefined, { id: "job-1" }), ctx());
  await w.agg.roundTimer({}, ctxStub);
  const w0 = (await new JobRepository(w.store).getModel("job-1", 0))!.weights;
  const ex = new InProcessTrainExecutor();
  const deltas: { n: number; d: Float32Array }[] = [];
  for (const [i, c] of w.fleet.configured.entries()) {
    // What the trainer module does with its twin's order: parse it, train the graph from the published model.
    // (The memory store's URLs are memory://: the trainer's downloader is not part of this test.)
    const order = parseRoundOrder({
      ...JSON.parse(JSON.stringify(c.desired)),
      modelUrl: "http://blob/m.f32",
      onnx: null,
    })!;
    assert.equal(order.modelSpec.kind, "graph");
    assert.deepEqual(order.config.optimizer, { name: "momentum", momentum: 0.5 });
    const rng = new Rng(10 + i);
    const n = 24;
    const x = new Float32Array(n * 6).map(() => rng.next() * 2 - 1);
    const y = Int32Array.from({ length: n }, (_, k) => (x[k * 6] > 0 ? 1 : x[k * 6 + 1] > 0 ? 2 : 0));
    const out = await ex.run(
      {
        jobId: order.jobId,
        round: order.round,
        deviceId: c.deviceId,
        spec: order.modelSpec,
        weights: w0,
        modelSha256: order.modelSha256,
        layoutHash: order.layoutHash,
        config: order.config,
        data: { kind: "dataset", dataset: { x, y, n, inputShape: [6], numClasses: 3 } },
      },
      new AbortController().signal,
      () => {},
    );
    assert.ok(
      out.delta.some((v) => v !== 0),
      "the graph trained",
    );
    deltas.push({ n, d: out.delta });
    const { events } = chunkEvents({
      type: "result",
      jobId: order.jobId,
      round: order.round,
      deviceId: c.deviceId,
      layoutHash: order.layoutHash,
      numSamples: n,
      metrics: out.metrics,
      delta: out.delta,
    });
    const r = await w.agg.ingestUpdates(events, ctxStub);
    assert.equal(r.rejected, 0, w.logs.join("\n"));
  }
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  const w1 = (await new JobRepository(w.store).getModel("job-1", 1))!.weights;
  let worst = 0;
  for (let i = 0; i < w1.length; i++) {
    const want = w0[i] + (deltas[0].d[i] + deltas[1].d[i]) / 2;
    worst = Math.max(worst, Math.abs(w1[i] - want));
  }
  assert.ok(worst < 1e-6, `max |diff| ${worst}`);
});
