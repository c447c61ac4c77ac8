import { concat, reshape, subset, type Dataset } from "../../core/data/dataset";
import { loadDirectory } from "../../core/data/dirloader";
import { loadMnist } from "../../core/data/mnist";
import { parsePartition, partitionDataset } from "../../core/data/partition";
import { Rng } from "../../core/data/rng";
import { checkDataTask } from "../../core/data/task";
import { generateSensors } from "../../core/data/sensors";
import { heldOutSample } from "../../core/data/heldout";
import { defaultSpec, type ModelSpec } from "../../core/engine/model-spec";
import { fail } from "../../core/errors";
import type { SimConfig } from "./config";

export interface FleetData {
  /** Each simulated device's local training data, index i = device i. */
  readonly devices: Dataset[];
  /** Held-out test set for server-side evaluation. */
  readonly test: Dataset;
  readonly spec: ModelSpec;
}

/** Name of simulated device i (zero-padded so names sort in order). */
export function deviceName(i: number, total: number): string {
  return `device-${String(i).padStart(Math.max(3, String(total - 1).length), "0")}`;
}

/**
 * Builds the fleet's data deterministically from the config, so the main thread and every worker thread compute
 * exactly the same partitions without shipping data between them.
 */
export function loadFleetData(
  c: Pick<SimConfig, "dataset" | "devices" | "partition" | "seed" | "samplesPerDevice" | "model"> & {
    /** The job's model when it is not a kind's default spec (an imported or saved model: `--model PATH`). */
    modelSpec?: ModelSpec;
  },
): FleetData {
  let devices: Dataset[];
  let test: Dataset;
  if (c.dataset === "sensors") {
    const s = generateSensors({ devices: c.devices, samplesPerDevice: c.samplesPerDevice, seed: c.seed });
    test = s.test;
    if (c.partition === "natural") {
      devices = s.devices;
    } else {
      devices = repartition(concat(s.devices), c);
    }
  } else if (c.dataset === "mnist") {
    const m = loadMnist();
    test = m.test;
    devices = repartition(m.train, c);
  } else if (c.dataset.startsWith("dir:")) {
    // The directory's schema.json, when there is one, says how its files become samples (docs/data.md).
    const all = loadDirectory(c.dataset.slice(4));
    // A fixed 20% of the rows (seeded) is held out for evaluation.
    const rng = new Rng(c.seed ^ 0x5eed);
    const order = rng.shuffle(Int32Array.from({ length: all.n }, (_, i) => i));
    const nTest = Math.max(1, Math.floor(all.n * 0.2));
    if (all.n - nTest < c.devices) {
      fail(
        "E_CONFIG_VALUE",
        `directory has ${all.n} rows: too few for ${c.devices} devices and a test split`,
      );
    }
    test = subset(all, order.subarray(0, nTest));
    devices = repartition(subset(all, order.subarray(nTest)), c);
  } else {
    return fail("E_CONFIG_DATASET", `unknown dataset '${c.dataset}' (expected mnist, sensors or dir:PATH)`);
  }
  const spec = c.modelSpec ?? defaultSpec(c.model, test.inputShape, test.numClasses);
  if (c.modelSpec) checkModelFitsData(spec, test);
  const view = (d: Dataset) => (sameShape(d.inputShape, spec.inputShape) ? d : reshape(d, spec.inputShape));
  checkDataTask(test, spec);
  return { devices: devices.map(view), test: view(test), spec };
}

/**
 * Each simulated device's held-out data for fleet-wide evaluation (docs/evaluation.md): a sample of the test set
 * with the device's label mix (core/data/heldout.ts), sized as the device's share of the fleet's training data
 * (so the fleet's held-out samples add up to about the test set), at least one. Training data is untouched:
 * the test set is never trained on. Deterministic in (data, seed); device i draws with seed (seed, i).
 */
export function fleetHeldOut(data: Pick<FleetData, "devices" | "test">, seed: number): Dataset[] {
  const total = data.devices.reduce((a, d) => a + d.n, 0);
  return data.devices.map((d, i) =>
    heldOutSample(
      d,
      data.test,
      Math.max(1, Math.round((data.test.n * d.n) / Math.max(1, total))),
      (Math.imul(seed >>> 0, 0x9e3779b1) ^ (i + 1)) >>> 0,
    ),
  );
}

function repartition(pool: Dataset, c: Pick<SimConfig, "devices" | "partition" | "seed">): Dataset[] {
  const spec = parsePartition(c.partition === "natural" ? "iid" : c.partition);
  return partitionDataset(pool, c.devices, spec, c.seed);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** An imported or saved model must take the dataset's samples and know its classes (one coded line, not a failed fleet). */
function checkModelFitsData(spec: ModelSpec, test: Dataset): void {
  const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
  if (size(spec.inputShape) !== size(test.inputShape))
    fail(
      "E_DATA_SHAPE",
      `the model takes samples of shape [${spec.inputShape.join(", ")}], the dataset has [${test.inputShape.join(", ")}]`,
    );
  const classifier = spec.kind === "graph" ? spec.task === "classification" : spec.kind !== "autoencoder";
  if (classifier && spec.numClasses < test.numClasses)
    fail("E_MODEL_SHAPE", `the model has ${spec.numClasses} classes, the dataset ${test.numClasses}`);
  if (spec.kind === "graph" && spec.task === "binary" && test.numClasses > 2)
    fail("E_MODEL_SHAPE", `the model is binary, the dataset has ${test.numClasses} classes`);
  if (spec.kind === "graph" && spec.task === "regression" && !test.targets)
    fail("E_MODEL_SHAPE", "the model is a regression, the dataset has no regression targets");
}
