/**
 * Fleet-wide evaluation end to end on the local stack (docs/evaluation.md), with the real SDKs: the trainers
 * evaluate each global model they receive on their held-out data with onnxruntime and send an `evaluation` frame
 * through quantizer → update-queue → IoT Hub → the Function, which folds round r's evaluations into round r's
 * record (and the job detail of the HTTP API); the last round's model, which no round order carries, is evaluated
 * on the Function's evaluate-only order when the job completes. Then frames sent as devices would send them: repeats
 * are counted once, bogus ones and those of a device never sent (or ordered to evaluate) the model, or of a model
 * never published, are refused with a code and acknowledged.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { ModuleClient } from "azure-iot-device";
import type { EvaluateOrderRecord } from "../../../cloud/aggregator/src/dispatch";
import { paths, type RoundEvaluations } from "../../../cloud/aggregator/src/jobs/state";
import { getJson } from "../../../cloud/aggregator/src/store/blob-store";
import { encodeMessage, EVALUATION_VERSION } from "../../../core/protocol/messages";
import type { FleetEvaluation } from "../../../core/round/evaluation";
import { createRegistry } from "../../../local/hub";
import { QuietMqtt } from "../../../local/stack/quiet-mqtt";
import { frameChunks } from "../../../modules/shared/chunks";
import {
  api,
  createJob,
  jobDoc,
  reportedOf,
  startFaultFleet,
  startJob,
  stopFaultFleet,
  waitFor,
  waitJobDone,
  type FaultFleet,
} from "./fault-support";

/** An update-queue module client of `deviceId` (its own identity on the hub), sending on the `upstream` output. */
async function upstream(f: FaultFleet, deviceId: string): Promise<ModuleClient> {
  const client = ModuleClient.fromConnectionString(
    f.stack.hub.createModule(deviceId, "update-queue"),
    QuietMqtt,
  );
  await client.setOptions({ ca: f.stack.hub.caCertPem });
  await client.open();
  return client;
}

async function sendEvaluation(
  client: ModuleClient,
  jobId: string,
  deviceId: string,
  round: number,
  fields: Record<string, unknown>,
): Promise<void> {
  const frame = encodeMessage({
    type: "evaluation",
    v: EVALUATION_VERSION,
    jobId,
    deviceId,
    round,
    samples: 20,
    accuracy: 0.5,
    ...fields,
  } as Parameters<typeof encodeMessage>[0]);
  const { messages } = frameChunks(frame, { jobId, round, deviceId });
  for (const m of messages) await client.sendOutputEvent("upstream", m);
}

test("round records gain the fleet's evaluation of their model; repeats count once, bogus frames are refused", async () => {
  // device-003 is registered but never started: never in the job.
  const f = await startFaultFleet(4, 30, { externalDevices: ["device-003"], heldOut: true });
  const clients: ModuleClient[] = [];
  try {
    const jobId = "evaluated";
    await createJob(f, {
      jobId,
      clientsPerRound: 3,
      rounds: 3,
      roundDeadlineSeconds: 60,
      minCompletedFraction: 1,
    });
    await startJob(f, jobId);
    const done = await waitJobDone(f, jobId, 240_000);
    assert.equal(done.status, "completed");
    // Round r's model reaches the participants of round r + 1, which evaluate it after sending their update; the
    // last one (round 3's) reaches the devices the Function orders to evaluate it when the job completes.
    const doc = await waitFor(
      "the evaluations of rounds 1, 2 and 3",
      async () => {
        const d = await jobDoc(f.store, jobId);
        return d && d.rounds.filter((r) => r.evaluation?.devices === 3).length === 3 ? d : undefined;
      },
      60_000,
      100,
      f.logs,
    );
    for (const r of doc.rounds) {
      const e = r.evaluation!;
      assert.equal(e.round, r.round);
      assert.equal(e.devices, 3);
      assert.ok(e.accuracy! > 0 && e.accuracy! <= 1 && e.loss! > 0, JSON.stringify(e));
      assert.equal(e.worstDecile!.devices.length, 1);
      assert.equal(e.worstDecile!.value, e.spread!.min);
      const stored = (await getJson<RoundEvaluations>(f.store, paths.evaluations(jobId, r.round)))!.value;
      assert.deepEqual(Object.keys(stored.devices).sort(), ["device-000", "device-001", "device-002"]);
    }
    // Who was ordered to evaluate the last model: the job's fleet as listed (the trainers, connected or not) and the
    // last round's participants; the three running trainers were connected and evaluated it.
    const ordered = (await getJson<EvaluateOrderRecord>(f.store, paths.evaluateOrder(jobId, 3)))!.value;
    assert.equal(ordered.round, 3);
    assert.deepEqual(ordered.connected, ["device-000", "device-001", "device-002"]);
    for (const id of ordered.connected) assert.ok(ordered.devices.includes(id));
    const ingest = f.stack.aggregator.ingestor.counters;
    assert.equal(ingest.evaluations, 9);
    assert.equal(ingest.rejected_evaluation, 0);

    // The job detail shows every record's evaluation, and the newest as `evaluation`.
    const detail = (await api(f.stack.host.url, "GET", `jobs/${jobId}`)) as {
      evaluation?: FleetEvaluation;
      history: { round: number; evaluation?: FleetEvaluation }[];
    };
    assert.deepEqual(detail.evaluation, doc.rounds[2].evaluation);
    assert.deepEqual(
      detail.history.map((h) => h.evaluation?.devices),
      [3, 3, 3],
    );
    // The telemetry follows: the eval_* gauges show the newest evaluated model, the last one.
    const metrics = await (await fetch(`${f.stack.host.url}/api/metrics`)).text();
    const gauge = metrics.match(/^flotilla_aggregator_eval_accuracy\{job="evaluated"\} (\S+)$/m);
    assert.ok(gauge, "no eval_accuracy gauge for the job");
    assert.equal(Number(gauge[1]), doc.rounds[2].evaluation!.accuracy);
    const perDevice = (await api(f.stack.host.url, "GET", `jobs/${jobId}/rounds/1/evaluations`)) as {
      evaluation: FleetEvaluation;
      devices: Record<string, { samples: number; accuracy: number }>;
    };
    assert.deepEqual(perDevice.evaluation, doc.rounds[0].evaluation);
    assert.deepEqual(Object.keys(perDevice.devices).sort(), ["device-000", "device-001", "device-002"]);
    const samples = Object.values(perDevice.devices).reduce((a, d) => a + d.samples, 0);
    assert.equal(samples, doc.rounds[0].evaluation!.samples);

    // A bad evaluate-only order (a version this trainer does not know): refused with its code, reported as the
    // trainer's inference error, nothing evaluated; the trainer goes on.
    const registry = createRegistry({
      serviceConnectionString: f.stack.hub.serviceConnectionString,
      caCertPem: f.stack.hub.caCertPem,
    });
    const twin = (await registry.getModuleTwin("device-001", "trainer")).responseBody.properties.desired as {
      flotillaEvaluate: Record<string, unknown>;
    };
    await registry.updateModuleTwin(
      "device-001",
      "trainer",
      { properties: { desired: { flotillaEvaluate: { ...twin.flotillaEvaluate, v: 9, round: 2 } } } },
      "*",
    );
    await waitFor(
      "device-001's trainer to refuse the evaluate-only order",
      async () => {
        const rep = (await reportedOf(f, "device-001", "trainer")).flotilla as {
          inference?: { error?: { code: string } };
        };
        return rep.inference?.error?.code === "E_EVAL_ORDER_VERSION";
      },
      60_000,
      100,
      f.logs,
    );

    // device-000 again, as its update-queue would send: its evaluation of round 1 repeated (an unacknowledged
    // resend) and a different one (a restarted trainer): both count once, the record does not change.
    await f.stack.setDeviceOnline("device-000", false);
    const d0 = await upstream(f, "device-000");
    clients.push(d0);
    await sendEvaluation(d0, jobId, "device-000", 1, { accuracy: 0.01, loss: 9 });
    await sendEvaluation(d0, jobId, "device-000", 1, { accuracy: 0.01, loss: 9 });
    // Bogus: an accuracy above 1 (E_EVAL_INVALID), an unknown version (E_EVAL_VERSION), a model never published
    // (E_EVAL_ROUND).
    await sendEvaluation(d0, jobId, "device-000", 2, { accuracy: 7 });
    await sendEvaluation(d0, jobId, "device-000", 2, { v: 9 });
    await sendEvaluation(d0, jobId, "device-000", 7, {});
    // A device that was never in the job (E_EVAL_NOT_PARTICIPANT).
    const d3 = await upstream(f, "device-003");
    clients.push(d3);
    await sendEvaluation(d3, jobId, "device-003", 1, { accuracy: 0.2 });
    // A device that was not ordered to evaluate the last model (E_EVAL_NOT_PARTICIPANT), though the job is over.
    const intruder = ordered.devices.includes("device-003") ? "device-intruder" : "device-003";
    const di = intruder === "device-003" ? d3 : await upstream(f, intruder);
    if (di !== d3) clients.push(di);
    await sendEvaluation(di, jobId, intruder, 3, { accuracy: 0.2 });
    // device-000's own evaluation of the last model again: a duplicate.
    await sendEvaluation(d0, jobId, "device-000", 3, { accuracy: 0.01 });
    await waitFor(
      "the injected evaluations to be handled",
      () => ingest.duplicate_evaluations === 3 && ingest.rejected_evaluation === 5,
      60_000,
      50,
      f.logs,
    );
    assert.equal(ingest.evaluations, 9);
    const after = (await jobDoc(f.store, jobId))!;
    assert.deepEqual(
      after.rounds.map((r) => r.evaluation),
      doc.rounds.map((r) => r.evaluation),
    );
    for (const code of ["E_EVAL_INVALID", "E_EVAL_VERSION", "E_EVAL_ROUND", "E_EVAL_NOT_PARTICIPANT"])
      assert.ok(
        f.logs.some((l) => l.includes("rejected_evaluation") && l.includes(code)),
        `no ${code} in the Function's log`,
      );
    const r1 = (await getJson<RoundEvaluations>(f.store, paths.evaluations(jobId, 1)))!.value;
    assert.equal(Object.hasOwn(r1.devices, "device-003"), false);
    const r3 = (await getJson<RoundEvaluations>(f.store, paths.evaluations(jobId, 3)))!.value;
    assert.equal(Object.hasOwn(r3.devices, intruder), false);
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await stopFaultFleet(f);
  }
});
