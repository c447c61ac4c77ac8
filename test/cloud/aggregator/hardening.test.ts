/**
 * Issue 11 ("Hardening") on the aggregation Function: sample-count takeover, updates arriving while a job is
 * stopped, orphan chunks, stopping a job tells its devices, and a non-finite global model ends the job. The test
 * plays the devices through the ingest and the recording Fleet, and drives the clock and timer by hand.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { createStrategy } from "../../../core/strategies/registry";
import type { Strategy, StrategyOptions } from "../../../core/strategies/strategy";
import { JobRepository, paths } from "../../../cloud/aggregator/src/jobs/state";
import { Orchestrator } from "../../../cloud/aggregator/src/orchestrator";
import { chunkEvents, ctx, get, makeDelta, startJob, world, SPEC, type World } from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const N = layout.totalSize;
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

function result(jobId: string, round: number, deviceId: string, numSamples: number, delta: Float32Array) {
  return {
    type: "result" as const,
    jobId,
    round,
    deviceId,
    layoutHash: layout.hash,
    numSamples,
    metrics: { loss: 1, accuracy: 0.5, trainMs: 10 },
    delta,
  };
}

async function send(w: World, jobId: string, round: number, deviceId: string, n: number, d: Float32Array) {
  const { events } = chunkEvents(result(jobId, round, deviceId, n, d), { maxChunkBytes: 97 });
  const r = await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
}

async function model(w: World, jobId: string, round: number): Promise<Float32Array> {
  const m = await new JobRepository(w.store).getModel(jobId, round);
  assert.ok(m, `model ${round} exists`);
  return m.weights;
}

// --- defect 5: a non-finite global model ends the job ---------------------------------------------------------

/** A strategy whose aggregation yields NaN (what a diverging optimizer or DP release would hand back). */
function nanFactory(name: string, opts: StrategyOptions): Strategy {
  const s = createStrategy(name, opts);
  return {
    name: s.name,
    initialize: (w) => s.initialize(w),
    get weights() {
      return s.weights;
    },
    configureFit: (r, a) => s.configureFit(r, a),
    beginAggregate(round) {
      const inner = s.beginAggregate(round);
      return {
        add: (r) => inner.add(r),
        addAggregate: (a) => inner.addAggregate(a),
        get count() {
          return inner.count;
        },
        finish(failures) {
          const next = inner.finish(failures).slice();
          next[3] = Number.NaN;
          return next;
        },
      };
    },
  };
}

async function assertDiverged(w: World, id: string, round: number) {
  const job = await new JobRepository(w.store).getJob(id);
  assert.equal(job?.status, "failed");
  assert.equal(job?.stopReason, "diverged");
  assert.match(String(job?.stopMessage), new RegExp(`round ${round}`));
  assert.equal(job?.rounds.at(-1)?.code, "E_ROUND_DIVERGED");
  assert.equal(await w.store.exists(paths.model(id, round)), false, "the non-finite model is not published");
  assert.equal(await w.store.exists(paths.modelMeta(id, round)), false);
  assert.equal((await new JobRepository(w.store).getRound(id, round))?.status, "closed");
  const r = await w.agg.http.getJob(get(`/api/jobs/${id}`, { id }), ctx());
  const body = r.jsonBody as { status: string; stopReason: string; stopMessage: string };
  assert.equal(body.status, "failed");
  assert.equal(body.stopReason, "diverged");
  assert.match(body.stopMessage, new RegExp(`round ${round}`));
  // nothing more happens: no next round
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(await new JobRepository(w.store).getRound(id, round + 1), undefined);
}

for (const dp of [false, true]) {
  test(`a ${dp ? "DP" : "plain"} job whose aggregated model is not finite fails as "diverged", unpublished`, async () => {
    const w = world();
    const id = await startJob(w, {
      rounds: 3,
      ...(dp ? { differentialPrivacy: { noiseMultiplier: 0.1, clip: 1, delta: 1e-5 } } : {}),
    });
    const orch = new Orchestrator(
      { store: w.store, fleet: w.fleet, clock: () => w.now.t, log: (l) => w.logs.push(l) },
      { strategyFactory: nanFactory },
    );
    await orch.tick(w.now.t);
    for (const [i, dev] of ["dev-a", "dev-b", "dev-c"].entries())
      await send(w, id, 1, dev, 10, makeDelta(N, i + 1));
    w.now.t += 1000;
    const report = await orch.tick(w.now.t);
    assert.match(JSON.stringify(report), /failed: round 1/);
    await assertDiverged(w, id, 1);
  });
}

test("a stored global model with NaN (e.g. from before this check) fails the job as diverged, not a tick error loop", async () => {
  const w = world();
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  const w0 = await model(w, id, 0);
  w0[0] = Number.POSITIVE_INFINITY;
  await w.store.put(paths.model(id, 0), new Uint8Array(w0.buffer));
  for (const [i, dev] of ["dev-a", "dev-b", "dev-c"].entries())
    await send(w, id, 1, dev, 10, makeDelta(N, i + 1));
  w.now.t += 1000;
  await w.agg.roundTimer({}, ctxStub);
  await assertDiverged(w, id, 1);
});
