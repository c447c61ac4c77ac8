/**
 * TrainerInference.predict answers by the ONNX model's task (onnx-runtime.ts), so a layer graph's reconstruction,
 * binary or regression model gets the right answer shape, not only the presets.
 */
import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { makeDataset } from "../../../core/data/dataset";
import type { GraphSpec } from "../../../core/engine/graph-spec";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { initialWeights } from "../../../core/engine/plan";
import { exportOnnx } from "../../../core/export/onnx";
import type { RoundOrder } from "../../../core/protocol/round-order";
import { TrainerInference } from "../../../modules/trainer/src/inference";

async function loaded(spec: ModelSpec): Promise<TrainerInference> {
  const bytes = exportOnnx(spec, initialWeights(spec, 3));
  const inf = new TrainerInference("fp32", () => Promise.resolve(bytes));
  const order = {
    jobId: "j",
    round: 2,
    onnx: { url: "mem://m.onnx", sha256: createHash("sha256").update(bytes).digest("hex") },
    modelSpec: spec,
  } as unknown as RoundOrder;
  assert.equal(await inf.update(order), true);
  return inf;
}

const base = { kind: "graph", inputShape: [4] } as const;

test("predict: a reconstruction graph answers reconstruction errors, like the autoencoder preset", async () => {
  const graph: GraphSpec = {
    ...base,
    layers: [
      { name: "e", type: "Dense", units: 2, activation: "relu" },
      { name: "d", type: "Dense", units: 4 },
    ],
    loss: "mse",
    task: "reconstruction",
    numClasses: 4,
  };
  for (const spec of [graph, { kind: "autoencoder", inputShape: [4], numClasses: 2, hidden: [2] } as const]) {
    const inf = await loaded(spec);
    const r = await inf.predict({ inputs: [[1, 2, 3, 4]] });
    await inf.close();
    assert.equal(r.classes, undefined, spec.kind);
    assert.equal(r.outputs.length, 1);
    assert.equal(typeof r.outputs[0], "number", `${spec.kind}: one reconstruction error per input`);
  }
});

test("predict: binary graphs answer p > 0.5 as the class, regressions their predictions", async () => {
  const binary: GraphSpec = {
    ...base,
    layers: [{ name: "p", type: "Dense", units: 1, activation: "sigmoid" }],
    loss: "binary_crossentropy",
    task: "binary",
    numClasses: 2,
  };
  const inf = await loaded(binary);
  const r = await inf.predict({
    inputs: [
      [1, 2, 3, 4],
      [-1, -2, -3, -4],
    ],
  });
  await inf.close();
  const p = (r.outputs as number[][]).map((row) => row[0]);
  assert.deepEqual(
    r.classes,
    p.map((v) => (v > 0.5 ? 1 : 0)),
  );
  assert.ok(p[0] !== p[1]);

  const regression: GraphSpec = {
    ...binary,
    layers: [{ name: "r", type: "Dense", units: 2 }],
    loss: "mse",
    task: "regression",
  };
  const ir = await loaded(regression);
  const rr = await ir.predict({ inputs: [[1, 2, 3, 4]] });
  await ir.close();
  assert.equal(rr.classes, undefined);
  assert.equal((rr.outputs as number[][])[0].length, 2);
});

test("the inference report of a regression graph carries its MAE on the local data", async () => {
  const regression: GraphSpec = {
    ...base,
    layers: [{ name: "r", type: "Dense", units: 2 }],
    loss: "mse",
    task: "regression",
    numClasses: 2,
  };
  const inf = await loaded(regression);
  const x = new Float32Array([1, 2, 3, 4, 0, 1, 0, 1]);
  const data = {
    ...makeDataset(x, new Int32Array(2), [4], 2),
    targets: new Float32Array([0.5, -1, 2, 0]),
    targetSize: 2,
  };
  const report = await inf.evaluate(data);
  await inf.close();
  assert.ok(report, "a loaded model reports");
  assert.equal(report.n, 2);
  assert.ok(
    report.mae !== undefined && Number.isFinite(report.mae) && report.mae > 0,
    JSON.stringify(report),
  );
});
