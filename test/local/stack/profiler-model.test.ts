import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { paths } from "../../../cloud/aggregator/src/jobs/state";
import { getJson } from "../../../cloud/aggregator/src/store/blob-store";
import type { DispatchRecord } from "../../../cloud/aggregator/src/dispatch";
import { api, jobDoc, reportedOf, waitFor, waitJobDone, withFaultFleet as withFleet } from "./fault-support";

/**
 * Over the local stack: a job with a non-default model (its own hidden sizes, under its own modelKey) has each
 * participant's profiler benchmark that model (the Function writes the spec to the profiler twin once per device
 * per job), and the orchestrator's eligibility reads the profiler's number for that key.
 */
test("a job's own model: the profilers benchmark it under the job's modelKey, and eligibility reads that number", async () => {
  await withFleet(2, {}, async (f) => {
    const jobId = "custom-model";
    const modelKey = "sensors-narrow";
    const modelSpec = { ...f.data.spec, hidden: [32, 16] };
    await api(f.stack.host.url, "POST", "jobs", {
      jobId,
      modelSpec,
      modelKey,
      strategy: "fedavg",
      strategyOptions: { clientsPerRound: 2, fit: { epochs: 1, batchSize: 10, lr: 0.05 }, seed: 7 },
      rounds: 2,
      roundDeadlineSeconds: 60,
      minCompletedFraction: 1,
      seed: 7,
    });
    await api(f.stack.host.url, "POST", `jobs/${jobId}/start`);
    const doc = await waitJobDone(f, jobId, 120_000);
    assert.equal(doc.status, "completed", doc.error);
    // One profiler write per device for the job: recorded after round 1, carried to round 2.
    const r1 = (await getJson<DispatchRecord>(f.store, paths.dispatch(jobId, 1)))?.value;
    assert.deepEqual(r1?.profilers, [...f.deviceIds].sort());
    const r2 = (await getJson<DispatchRecord>(f.store, paths.dispatch(jobId, 2)))?.value;
    assert.deepEqual(r2?.profilers, [...f.deviceIds].sort());

    // Each profiler measured the job's model and reported it under the job's key.
    for (const id of f.deviceIds) {
      const sps = await waitFor(
        `${id}'s profiler to report ${modelKey}`,
        async () => {
          const caps = (await reportedOf(f, id, "profiler")).capabilities as
            { samplesPerSecond: Record<string, number> } | undefined;
          return caps?.samplesPerSecond[modelKey];
        },
        60_000,
      );
      assert.ok(sps > 0);
    }
    // The orchestrator's eligibility reads samplesPerSecond[modelKey]: with a deadline shorter than the training
    // that number predicts, both devices are left out; with the job's own deadline, both are in.
    const trainers = await f.stack.aggregator.services.fleet.listTrainers();
    const job = (await jobDoc(f.store, jobId))!;
    for (const t of trainers) assert.ok((t.samplesPerSecond?.[modelKey] ?? 0) > 0, `${t.deviceId}`);
    const orchestrator = f.stack.aggregator.orchestrator;
    assert.equal(orchestrator.eligible(job, trainers).length, 2);
    const slowest = Math.min(...trainers.map((t) => t.samplesPerSecond![modelKey]));
    const tooLong = {
      ...job,
      definition: {
        ...job.definition,
        roundDeadlineSeconds: 1,
        strategyOptions: {
          ...job.definition.strategyOptions,
          fit: { ...job.definition.strategyOptions.fit, epochs: Math.ceil((2 * slowest) / 30) + 1 },
        },
      },
    };
    const left = orchestrator.eligible(tooLong, trainers).map((c) => c.deviceId);
    assert.deepEqual(left, [], "left out by the job model's measured speed");
  });
});
