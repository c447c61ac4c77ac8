import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { paths, type ModelMeta } from "../../../cloud/aggregator/src/jobs/state";
import { getJson } from "../../../cloud/aggregator/src/store/blob-store";
import { ErrorFeedback, isEncoded, readEnvelope } from "../../../core/compress";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { countParams } from "../../../core/engine/models";
import { decodeMessage } from "../../../core/protocol/messages";
import { createRegistry } from "../../../local/hub";
import { residualFileName } from "../../../modules/quantizer/src/quantizer";
import type { TrainerState } from "../../../modules/trainer/src/trainer";
import { api, jobDoc, startFaultFleet, startJob, waitFor, waitJobDone } from "./fault-support";

/**
 * Update compression end to end on the local stack: a job whose devices send top-k + int8 updates through their
 * quantizer modules (with error feedback) and download an int8 envelope of each global model, with ONNX models
 * published for on-device inference.
 */

const UPLINK = "topk:0.05+int8";
const DOWNLINK = "int8";

test("a job with compressed uplink and downlink completes over the local stack", async () => {
  const devices = 3;
  const f = await startFaultFleet(devices, 30);
  try {
    // A small mlp on the fleet's sensor data (192 features, 5 classes).
    const spec: ModelSpec = { ...(f.data.spec as ModelSpec & { kind: "mlp" }), hidden: [32] };
    const params = countParams(spec);
    const jobId = "compressed";
    const rounds = 2;
    const definition = {
      jobId,
      modelSpec: spec,
      strategy: "fedavg",
      strategyOptions: { clientsPerRound: devices, fit: { epochs: 1, batchSize: 10, lr: 0.05 }, seed: 7 },
      rounds,
      roundDeadlineSeconds: 30,
      minCompletedFraction: 1,
      seed: 7,
      compression: UPLINK,
      downlinkCompression: DOWNLINK,
    };

    // Invalid codec specs are refused at creation, and nothing is created.
    for (const bad of [
      { compression: "topk:2+int8" },
      { compression: "zip" },
      { compression: 8 },
      { downlinkCompression: "topk:0.1" },
    ]) {
      const res = await fetch(`${f.stack.host.url}/api/jobs`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...definition, jobId: "bad-codec", ...bad }),
      });
      const body = (await res.json()) as { code?: string; message?: string };
      assert.equal(res.status, 400, JSON.stringify(bad));
      assert.equal(body.code, "E_JOB_COMPRESSION", `${JSON.stringify(bad)}: ${body.message}`);
    }
    assert.equal(await jobDoc(f.store, "bad-codec"), undefined, "a refused job is not stored");

    const created = (await api(f.stack.host.url, "POST", "jobs", definition)) as {
      definition: { compression: string; downlinkCompression: string };
    };
    assert.deepEqual(
      [created.definition.compression, created.definition.downlinkCompression],
      [UPLINK, DOWNLINK],
    );

    // What each device's quantizer holds when the cloud configures it for the job (once, before its first round
    // order), at each later round's order (the update of round r - 1 was compressed and its residual saved before
    // it was sent, so the residual file must be there), and at the release after the last round.
    const residualOf = (deviceId: string) =>
      path.join(f.stack.stateDir, "quantizers", deviceId, residualFileName(jobId));
    type Snapshot = {
      compression: string | null;
      configured?: string;
      compressed: number;
      residual?: Buffer;
    };
    const snapshots = new Map<string, Snapshot[]>(f.deviceIds.map((id) => [id, []]));
    const orderSnapshots = new Map<string, Snapshot[]>(f.deviceIds.map((id) => [id, []]));
    const snapshot = (deviceId: string, compression: string | null): Snapshot => {
      const q = f.device(deviceId).quantizer.state();
      const file = residualOf(deviceId);
      return {
        compression,
        configured: q.jobs[jobId],
        compressed: q.counters.compressed,
        residual: fs.existsSync(file) ? fs.readFileSync(file) : undefined,
      };
    };
    const fleet = f.stack.aggregator.services.fleet;
    const configure = fleet.configureQuantizer.bind(fleet);
    fleet.configureQuantizer = async (deviceId, id, compression, layout) => {
      if (id === jobId) snapshots.get(deviceId)?.push(snapshot(deviceId, compression));
      return configure(deviceId, id, compression, layout);
    };
    const order = fleet.configureRound.bind(fleet);
    fleet.configureRound = async (deviceId, desired) => {
      if (desired?.jobId === jobId && desired.round >= 2)
        orderSnapshots.get(deviceId)?.push(snapshot(deviceId, UPLINK));
      return order(deviceId, desired);
    };

    await startJob(f, jobId);
    const doc = await waitJobDone(f, jobId, 90_000);
    assert.equal(doc.status, "completed", doc.error);
    assert.equal(doc.rounds.length, rounds);

    // Every round aggregated every device's update, each a small fraction of the raw float32 delta.
    const float32 = devices * params * 4;
    for (const r of doc.rounds) {
      assert.equal(r.status, "aggregated", `round ${r.round}`);
      assert.equal(r.completed, devices, `round ${r.round}: ${JSON.stringify(r.failures)}`);
      assert.ok(
        r.bytesReceived > 0 && r.bytesReceived < float32 / 10,
        `round ${r.round} received ${r.bytesReceived} bytes (float32: ${float32})`,
      );
      for (const deviceId of f.deviceIds) {
        const blob = await f.store.get(paths.update(jobId, r.round, deviceId));
        assert.ok(blob, `round ${r.round}: stored update of ${deviceId}`);
        const msg = decodeMessage(blob.bytes);
        assert.equal(msg.type, "result");
        if (msg.type !== "result") continue;
        assert.ok(isEncoded(msg.delta), `round ${r.round}: ${deviceId}'s update is an envelope`);
        if (isEncoded(msg.delta)) {
          const info = readEnvelope(msg.delta.bytes);
          assert.equal(info.spec.text, UPLINK);
          assert.equal(info.length, params);
        }
      }
    }

    // Every published model (0 .. rounds) has its raw, flz, ONNX and int8 ONNX blobs.
    const names = new Set(await f.store.list(`jobs/${jobId}/models/`));
    for (let r = 0; r <= rounds; r++) {
      for (const name of [
        paths.model(jobId, r),
        paths.modelEncoded(jobId, r),
        paths.modelOnnx(jobId, r, "fp32"),
        paths.modelOnnx(jobId, r, "int8"),
      ]) {
        assert.ok(names.has(name), `${name} is published (have ${[...names].join(", ")})`);
      }
      const meta = (await getJson<ModelMeta>(f.store, paths.modelMeta(jobId, r)))?.value;
      const flz = await f.store.get(paths.modelEncoded(jobId, r));
      assert.ok(meta?.downlink && meta.onnx && flz, `model ${r} metadata and envelope`);
      assert.equal(meta.downlink.spec, DOWNLINK);
      assert.equal(meta.downlink.sha256, createHash("sha256").update(flz.bytes).digest("hex"));
      const info = readEnvelope(flz.bytes);
      assert.equal(info.spec.text, DOWNLINK);
      assert.equal(info.length, params);
      assert.ok(
        flz.bytes.byteLength < params * 2,
        `model ${r}: the envelope has ${flz.bytes.byteLength} bytes`,
      );
    }

    const registry = createRegistry(f.stack.hub);
    for (const [i, deviceId] of f.deviceIds.entries()) {
      const device = f.device(deviceId);
      // The trainer was ordered to download the envelope of the last round's model.
      const trainerTwin = (await registry.getModuleTwin(deviceId, "trainer")).responseBody;
      const desired = trainerTwin.properties.desired.flotilla as { round: number; modelEncoding?: string };
      assert.equal(desired.round, rounds);
      assert.equal(desired.modelEncoding, "flz", `${deviceId}'s round order`);

      // The quantizer compressed its updates; the job's error-feedback residual is on disk while the job is
      // configured, and deleted once the job is released at its end.
      const [first, ...later] = snapshots.get(deviceId) ?? [];
      assert.deepEqual(
        [first?.compression, first?.residual],
        [UPLINK, undefined],
        `${deviceId}: configured for round 1, no residual yet`,
      );
      assert.deepEqual(
        later.map((x) => x.compression),
        [null],
        `${deviceId}: the quantizer is configured once per job (then only released)`,
      );
      const configured = orderSnapshots.get(deviceId) ?? [];
      assert.ok(configured.length >= rounds - 1, `${deviceId}: a snapshot at every later round's order`);
      const release = later.find((x) => x.compression === null);
      assert.ok(release, `${deviceId}'s quantizer is released at the end of the job`);
      for (const snap of [...configured, release]) {
        assert.equal(snap.configured, UPLINK, `${deviceId}'s quantizer configuration`);
        assert.ok(snap.compressed >= 1, `${deviceId} compressed ${snap.compressed} updates`);
        assert.ok(snap.residual, `${residualOf(deviceId)} exists while the job is configured`);
        const ef = ErrorFeedback.fromBytes(
          new Uint8Array(snap.residual.buffer, snap.residual.byteOffset, snap.residual.byteLength),
          params,
        );
        assert.ok(
          ef.residual.some((v) => v !== 0),
          "top-k left mass in the residual",
        );
      }
      await device.quantizer.idle();
      assert.ok(device.quantizer.state().counters.compressed >= rounds, `${deviceId}: one update per round`);
      assert.equal(device.quantizer.state().counters.passthrough, 0);
      await waitFor(
        `${deviceId}'s residual to be deleted after the release`,
        () => !fs.existsSync(residualOf(deviceId)) && device.quantizer.state().jobs[jobId] === undefined,
        10_000,
        50,
        f.logs,
      );

      // The trainer evaluated the published ONNX model (int8) of the last round it trained from.
      const inf = await waitFor(
        `${deviceId}'s inference report`,
        () => {
          const x = device.trainer.state().inference as Record<string, unknown> | null | undefined;
          return x && (x.error !== undefined || x.modelRound === rounds - 1) ? x : undefined;
        },
        20_000,
        50,
        f.logs,
      );
      assert.equal(inf.error, undefined, `${deviceId}: ${JSON.stringify(inf.error)}`);
      assert.equal(inf.jobId, jobId);
      assert.equal(inf.precision, "int8");
      assert.equal(inf.n, f.data.devices[i].n);
      assert.ok((inf.accuracy as number) >= 0 && (inf.accuracy as number) <= 1, `accuracy ${inf.accuracy}`);
      await device.trainer.idle();
      const reported = (await registry.getModuleTwin(deviceId, "trainer")).responseBody.properties.reported
        .flotilla as TrainerState;
      assert.equal(reported.status, "done");
      assert.deepEqual(reported.inference, inf, `${deviceId}'s reported inference`);
    }
  } finally {
    await f.stack.close();
  }
}, 120_000);
