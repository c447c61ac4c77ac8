import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { decodeTensor, isEncoded } from "../../../core/compress";
import type { Dataset } from "../../../core/data/dataset";
import type { EvalSummary, LocalModel, TrainOptions, TrainSummary } from "../../../core/engine/types";
import { decodeMessage, encodeMessage, type TrainResultMessage } from "../../../core/protocol/messages";
import { DeviceRuntime } from "../../../core/round/device";
import { makeLayout } from "../../../core/tensor/layout";
import { weightsHash } from "../../../core/tensor/layout";
import { labelsDataset } from "../../helpers/fake-model";
import { tempDir, trainerChunks } from "../update-queue/helpers";
import { outputFrames, start } from "./support";

/**
 * One device-side update pipeline (core/round/update-pipeline.ts): the same update leaves a device as the same bytes
 * whether the simulator's device compresses it (core/round/device.ts) or the trainer sends it raw and the quantizer
 * module compresses it (the IoT Hub path), with the same seed and the same per-tensor segments.
 */

const BIG = 4000;
const SMALL = 8;

/** Two tensors: a large one whose update is ~1 and a small one whose update is ~1e-4 (a bias beside a kernel). */
class TwoTensorModel implements LocalModel {
  readonly spec = { kind: "mlp" as const, inputShape: [1], numClasses: 2 };
  readonly layout = makeLayout([
    { name: "kernel", shape: [BIG] },
    { name: "bias", shape: [SMALL] },
  ]);
  readonly numParams = BIG + SMALL;
  private w = new Float32Array(BIG + SMALL);
  getWeights(): Float32Array {
    return this.w.slice();
  }
  setWeights(w: Float32Array): void {
    this.w = w.slice();
  }
  async train(_data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    for (let i = 0; i < BIG; i++) this.w[i] += Math.sin(i * 0.37 + opts.seed);
    for (let i = 0; i < SMALL; i++) this.w[BIG + i] += 1e-4 * Math.cos(i * 1.3 + opts.seed);
    return { loss: 0.5, accuracy: 0.5, samples: 4, steps: 1, ms: 1 };
  }
  evaluate(): EvalSummary {
    return { loss: 0, accuracy: 0, n: 1 };
  }
  dispose(): void {}
}

function trainFrame(uplink: string | undefined, weights: Float32Array, layoutHash: string): Uint8Array {
  return encodeMessage({
    type: "train",
    jobId: "job-p",
    round: 3,
    modelHash: weightsHash(weights),
    layoutHash,
    config: { epochs: 1, batchSize: 4, lr: 0.1, seed: 5 },
    deadline: 0,
    weights,
    ...(uplink ? { uplink } : {}),
  });
}

/** The update's delta, as the simulator's device sends it and as the trainer + quantizer send it. */
async function bothPaths(spec: string, t: import("../../helpers/context").TestContext) {
  const model = new TwoTensorModel();
  const global = new Float32Array(model.numParams).map((_, i) => (i % 5) / 10);
  const data = labelsDataset([1, 0, 1, 0]);
  const sim = decodeMessage(
    await new DeviceRuntime("dev-p", data, new TwoTensorModel()).handle(
      trainFrame(spec, global, model.layout.hash),
    ),
  ) as TrainResultMessage;
  // The trainer module: the same runtime without an uplink codec (executor.ts), raw delta.
  const raw = await new DeviceRuntime("dev-p", data, new TwoTensorModel()).handle(
    trainFrame(undefined, global, model.layout.hash),
  );
  const rawMsg = decodeMessage(raw) as TrainResultMessage;
  assert.ok(rawMsg.delta instanceof Float32Array);
  // The quantizer, configured as the cloud configures it (docs/iothub-protocol.md: codec, layout hash, segments).
  const h = await start(tempDir(t, "flotilla-pipeline-"), {
    flotilla: {
      jobs: {
        "job-p": {
          compression: spec,
          layoutHash: model.layout.hash,
          segments: model.layout.entries.map((e) => e.size),
        },
      },
    },
  });
  t.after(() => h.quantizer.stop());
  const input = trainerChunks(raw, { jobId: "job-p", round: 3, deviceId: "dev-p" }, 255_000);
  for (const c of input.chunks) h.client.deliver("updates", c.body, c.properties);
  await h.quantizer.idle();
  const out = outputFrames(h.client);
  assert.equal(out.length, 1);
  const hub = decodeMessage(new Uint8Array(out[0].frame)) as TrainResultMessage;
  assert.ok(isEncoded(sim.delta), "the simulator's device compressed its update");
  assert.ok(isEncoded(hub.delta), `the quantizer compressed the update (${h.logs.join("; ")})`);
  return { sim: sim.delta.bytes, hub: hub.delta.bytes, raw: rawMsg.delta, layoutHash: model.layout.hash };
}

for (const spec of ["int8:tensor", "topk:0.05+int4", "int8", "randk:0.1+int8:tensor"]) {
  test(
    `${spec}: the simulator's device and the quantizer module send the same bytes for the same update`,
    withContext(async (t) => {
      const { sim, hub, raw, layoutHash } = await bothPaths(spec, t);
      assert.deepEqual(Buffer.from(hub), Buffer.from(sim));
      if (spec === "int8:tensor") {
        // Per-tensor scales: the small tensor's error is a fraction of its own range, not of the large tensor's.
        const decoded = decodeTensor(hub, { layoutHash, length: BIG + SMALL });
        let err = 0;
        for (let i = BIG; i < BIG + SMALL; i++) err = Math.max(err, Math.abs(decoded[i] - raw[i]));
        assert.ok(err < 2e-6, `small-tensor error ${err}`);
      }
    }),
  );
}

test(
  "a per-tensor codec without the job's layout sends the update raw (E_QUANT_LAYOUT); a bad layout is E_QUANT_CONFIG",
  withContext(async (t) => {
    const model = new TwoTensorModel();
    const global = new Float32Array(model.numParams);
    const raw = await new DeviceRuntime("dev-p", labelsDataset([1]), new TwoTensorModel()).handle(
      trainFrame(undefined, global, model.layout.hash),
    );
    const segments = model.layout.entries.map((e) => e.size);
    const h = await start(tempDir(t, "flotilla-pipeline-"), {
      flotilla: {
        jobs: {
          "job-p": { compression: "int8:tensor" }, // no layout: an older cloud
          "job-q": { compression: "int8:tensor", layoutHash: "ab".repeat(32), segments }, // another layout
          "job-r": { compression: "int8", layoutHash: model.layout.hash, segments: [0, -1] },
        },
      },
    });
    t.after(() => h.quantizer.stop());
    assert.deepEqual(h.quantizer.state().error?.code, "E_QUANT_CONFIG");
    assert.equal(h.quantizer.state().error?.jobId, "job-r");
    for (const jobId of ["job-p", "job-q", "job-r"]) {
      const frame = encodeMessage({ ...(decodeMessage(raw) as TrainResultMessage), jobId });
      const input = trainerChunks(frame, { jobId, round: 3, deviceId: "dev-p" }, 255_000);
      for (const c of input.chunks) h.client.deliver("updates", c.body, c.properties);
    }
    await h.quantizer.idle();
    const out = outputFrames(h.client);
    assert.equal(out.length, 3, "nothing is lost");
    for (const o of out) {
      const msg = decodeMessage(new Uint8Array(o.frame)) as TrainResultMessage;
      assert.ok(msg.delta instanceof Float32Array, `${msg.jobId} went out raw`);
    }
    const warnings = h.logs.filter((l) => l.includes("E_QUANT_LAYOUT"));
    assert.equal(warnings.length, 2, h.logs.join("\n"));
    assert.ok(
      warnings.every((l) =>
        /^warn quantizer: job job-[pq] round 3: compressing failed, sending it raw: /.test(l),
      ),
    );
    assert.equal(h.quantizer.state().counters.passthrough, 3);
  }),
);
