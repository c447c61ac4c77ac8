import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { makeDataset, type DatasetExtras } from "../../../core/data/dataset";
import { checkDataTask, modelTask } from "../../../core/data/task";
import type { GraphSpec, Task } from "../../../core/engine/graph-spec";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { errorCode } from "../../helpers/errors";

function data(numClasses: number, extras: DatasetExtras = {}) {
  const t = extras.targetSize ?? 0;
  return makeDataset(new Float32Array(8), new Int32Array(2), [4], numClasses, undefined, {
    ...extras,
    ...(t > 0 ? { targets: new Float32Array(2 * t) } : {}),
  });
}

function graph(task: Task, numClasses: number): GraphSpec {
  return {
    kind: "graph",
    inputShape: [4],
    layers: [{ type: "Dense", name: "out", units: numClasses }],
    loss: task === "regression" || task === "reconstruction" ? "mse" : "categorical_crossentropy",
    task,
    numClasses,
  };
}

const mlp: ModelSpec = { kind: "mlp", inputShape: [4], numClasses: 3 };
const autoencoder: ModelSpec = { kind: "autoencoder", inputShape: [4], numClasses: 2 };

test("modelTask: presets classify (the autoencoder reconstructs), graphs say their task", () => {
  assert.equal(modelTask(mlp), "classification");
  assert.equal(modelTask(autoencoder), "reconstruction");
  assert.equal(modelTask(graph("binary", 2)), "binary");
});

test("checkDataTask refuses data of another task with E_DATA_TASK; data without a stated task passes", () => {
  const ok: [ReturnType<typeof data>, ModelSpec][] = [
    [data(3), mlp],
    [data(1, { task: "regression", targetSize: 2 }), autoencoder],
    [data(3, { task: "classification" }), mlp],
    [data(2, { task: "binary" }), mlp],
    [data(2, { task: "classification" }), graph("binary", 2)],
    [data(1, { task: "regression", targetSize: 2 }), graph("regression", 2)],
    [data(5, { task: "classification" }), autoencoder],
  ];
  for (const [d, spec] of ok) checkDataTask(d, spec);
  const bad: [ReturnType<typeof data>, ModelSpec][] = [
    [data(1, { task: "regression", targetSize: 1 }), mlp],
    [data(1, { task: "reconstruction" }), mlp],
    [data(3, { task: "classification" }), graph("regression", 1)],
    [data(1, { task: "regression", targetSize: 2 }), graph("regression", 3)],
    [data(3, { task: "classification" }), graph("binary", 2)],
  ];
  for (const [d, spec] of bad)
    assert.equal(
      errorCode(() => checkDataTask(d, spec)),
      "E_DATA_TASK",
    );
});
