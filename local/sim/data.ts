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
  /**
   * FLTrust's root dataset (`rootSamples` > 0): clean samples the server trains on, held by no device and not in
   * the test set.
   */
  readonly root?: Dataset;
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
  c: Pick<
    SimConfig,
    "dataset" | "devices" | "partition" | "seed" | "samplesPerDevice" | "model" | "rootSamples"
  > & {
    /** The job's model when it is not a kind's default spec (an imported or saved model: `--model PATH`). */
    modelSpec?: ModelSpec;
  },
): FleetData {
  let devices: Dataset[];
  let test: Dataset;
  let root: Dataset | undefined;
  const rootSamples = c.rootSamples ?? 0;
  if (c.dataset === "sensors") {
    // The root set is drawn like the test set from a seed stream of its own: the devices' data are unchanged.
    const s = generateSensors({
      devices: c.devices,
      samplesPerDevice: c.samplesPerDevice,
      seed: c.seed,
      ...(rootSamples > 0 ? { rootSamples } : {}),
    });
    test = s.test;
    root = s.root;
    if (c.partition === "natural") {
      devices = s.devices;
    } else {
      devices = repartition(concat(s.devices), c);
    }
  } else if (c.dataset === "mnist") {
    const m = loadMnist();
    test = m.test;
    const split = splitRoot(m.train, rootSamples, c);
    root = split.root;
    devices = repartition(split.rest, c);
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
    const split = splitRoot(subset(all, order.subarray(nTest)), rootSamples, c);
    root = split.root;
    devices = repartition(split.rest, c);
  } else {
    return fail("E_CONFIG_DATASET", `unknown dataset '${c.dataset}' (expected mnist, sensors or dir:PATH)`);
  }
  const spec = c.modelSpec ?? defaultSpec(c.model, test.inputShape, test.numClasses);
  if (c.modelSpec) checkModelFitsData(spec, test);
  const view = (d: Dataset) => (sameShape(d.inputShape, spec.inputShape) ? d : reshape(d, spec.inputShape));
  checkDataTask(test, spec);
  return { devices: devices.map(view), test: view(test), ...(root ? { root: view(root) } : {}), spec };
}

/**
 * FLTrust's root set out of a training pool: `count` samples drawn by seed (their own stream) and taken out of the
 * pool, so no device holds them; with count 0 the pool is returned untouched (the devices' data are as without
 * FLTrust).
 */
function splitRoot(
  pool: Dataset,
  count: number,
  c: Pick<SimConfig, "devices" | "seed">,
): { root?: Dataset; rest: Dataset } {
  if (count <= 0) return { rest: pool };
  if (pool.n - count < c.devices)
    fail(
      "E_CONFIG_VALUE",
      `--root-samples ${count}: the training data has ${pool.n} samples, too few for a root set and ${c.devices} devices`,
    );
  const order = new Rng((c.seed ^ 0x2007) >>> 0).shuffle(Int32Array.from({ length: pool.n }, (_, i) => i));
  const take = (idx: Int32Array) => subset(pool, Int32Array.from(idx).sort());
  return { root: take(order.subarray(0, count)), rest: take(order.subarray(count)) };
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
