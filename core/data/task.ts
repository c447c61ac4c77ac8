import type { Task } from "../engine/graph-spec";
import type { ModelSpec } from "../engine/model-spec";
import { fail } from "../errors";
import type { Dataset } from "./dataset";

/** The task a model spec trains: a graph's own, the autoencoder's reconstruction, else classification. */
export function modelTask(spec: ModelSpec): Task {
  if (spec.kind === "graph") return spec.task;
  return spec.kind === "autoencoder" ? "reconstruction" : "classification";
}

/**
 * Refuses data prepared for another task than the model's, so nothing trains silently on the wrong thing
 * (E_DATA_TASK). Data whose task is not stated (no data schema) passes, as before. A reconstruction model takes
 * any data (it learns its inputs; labels, 0 = normal, only score anomalies). A regression model needs regression
 * data with one target per output; a classifier refuses regression data; binary and classification take each
 * other's data when the classes fit.
 */
export function checkDataTask(data: Dataset, spec: ModelSpec): void {
  const want = modelTask(spec);
  const have = data.task;
  if (have === undefined || want === "reconstruction") return;
  const what = `the local data is for task ${have}, the model's task is ${want}`;
  if (want === "regression") {
    if (have !== "regression" || data.targetSize === undefined) fail("E_DATA_TASK", what);
    if (data.targetSize !== spec.numClasses) {
      fail(
        "E_DATA_TASK",
        `the local data has ${data.targetSize} regression targets, the model outputs ${spec.numClasses}`,
      );
    }
    return;
  }
  if (have === "regression" || have === "reconstruction") fail("E_DATA_TASK", what);
  if (want === "binary" && data.numClasses > 2) {
    fail("E_DATA_TASK", `${what}, and the data has ${data.numClasses} classes`);
  }
}
