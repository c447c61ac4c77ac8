import { fail } from "../errors";
import type { Task } from "../engine/graph-spec";

/**
 * A labelled dataset held as one flat Float32Array (row-major, one sample after another) and Int32Array labels.
 * Every sample has `inputShape` (e.g. [28, 28, 1] for MNIST images, [784] flattened, [T, C] sensor windows).
 */
export interface Dataset {
  readonly x: Float32Array;
  readonly y: Int32Array;
  readonly n: number;
  readonly inputShape: readonly number[];
  readonly numClasses: number;
  /** Optional class names, index = label. */
  readonly classNames?: readonly string[];
  /**
   * Regression targets (task "regression", loss mse): n × targetSize values, row-major. `y` then holds zeros
   * (or a class for stratified partitioning). Absent for classifiers and autoencoders.
   */
  readonly targets?: Float32Array;
  readonly targetSize?: number;
  /** The task the data was prepared for (a data schema's `task`, docs/data.md); absent: not stated. */
  readonly task?: Task;
  /** Feature names in order (for windows [T, C]: the C channels), when the source names them. */
  readonly features?: readonly string[];
  /** The per-feature z-score the loader applied (x' = (x − mean) / std), to apply the same at inference. */
  readonly normalization?: Normalization;
}

/** Per-feature (per-channel) standardisation: one mean and one std (> 0) per feature. */
export interface Normalization {
  /** "zscore": mean and std were computed from the local data; "fixed": given by the data schema. */
  readonly source: "zscore" | "fixed";
  readonly mean: readonly number[];
  readonly std: readonly number[];
}

/** The optional parts of a Dataset, for makeDataset. */
export interface DatasetExtras {
  readonly targets?: Float32Array;
  readonly targetSize?: number;
  readonly task?: Task;
  readonly features?: readonly string[];
  readonly normalization?: Normalization;
}

export function sampleSize(inputShape: readonly number[]): number {
  return inputShape.reduce((a, b) => a * b, 1);
}

export function makeDataset(
  x: Float32Array,
  y: Int32Array,
  inputShape: readonly number[],
  numClasses: number,
  classNames?: readonly string[],
  extras: DatasetExtras = {},
): Dataset {
  const size = sampleSize(inputShape);
  if (x.length !== y.length * size) {
    fail("E_DATA_SHAPE", `dataset has ${x.length} values for ${y.length} samples of shape [${inputShape}]`);
  }
  const { targets, targetSize } = extras;
  if ((targets === undefined) !== (targetSize === undefined)) {
    fail("E_DATA_SHAPE", "dataset targets and targetSize go together");
  }
  if (targets !== undefined && targetSize !== undefined) {
    if (!Number.isSafeInteger(targetSize) || targetSize < 1 || targets.length !== y.length * targetSize) {
      fail(
        "E_DATA_SHAPE",
        `dataset has ${targets.length} target values for ${y.length} samples of ${targetSize} targets`,
      );
    }
  }
  const ds: Dataset = { x, y, n: y.length, inputShape: [...inputShape], numClasses, classNames };
  return withExtras(ds, extras);
}

/** `ds` with the defined fields of `extras` (absent ones are left out, not set to undefined). */
function withExtras(ds: Dataset, extras: DatasetExtras): Dataset {
  const out: Record<string, unknown> = { ...ds };
  for (const [k, v] of Object.entries(extras)) if (v !== undefined) out[k] = v;
  return out as unknown as Dataset;
}

/** The samples at `indices`, copied into a new dataset (targets too; the other fields are shared). */
export function subset(ds: Dataset, indices: ArrayLike<number>): Dataset {
  const size = sampleSize(ds.inputShape);
  const x = new Float32Array(indices.length * size);
  const y = new Int32Array(indices.length);
  const t = ds.targetSize ?? 0;
  const targets = ds.targets !== undefined ? new Float32Array(indices.length * t) : undefined;
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i];
    x.set(ds.x.subarray(j * size, (j + 1) * size), i * size);
    y[i] = ds.y[j];
    if (targets !== undefined) targets.set((ds.targets as Float32Array).subarray(j * t, (j + 1) * t), i * t);
  }
  return { ...ds, x, y, n: indices.length, ...(targets !== undefined ? { targets } : {}) };
}

/** The same data seen with another per-sample shape of the same size (e.g. [784] <-> [28, 28, 1]). */
export function reshape(ds: Dataset, inputShape: readonly number[]): Dataset {
  if (sampleSize(inputShape) !== sampleSize(ds.inputShape)) {
    fail("E_DATA_SHAPE", `cannot view samples of shape [${ds.inputShape}] as [${inputShape}]`);
  }
  return { ...ds, inputShape: [...inputShape] };
}

/**
 * The samples of `parts` one after another, in one new dataset (targets too). The parts must have the same
 * sample shape and the same targets; the other fields (classes, names, task, ...) are the first part's.
 */
export function concat(parts: readonly Dataset[]): Dataset {
  if (parts.length === 0) fail("E_DATA_SHAPE", "cannot concatenate no datasets");
  const first = parts[0];
  const size = sampleSize(first.inputShape);
  const t = first.targetSize ?? 0;
  for (const d of parts) {
    if (
      d.inputShape.length !== first.inputShape.length ||
      d.inputShape.some((v, i) => v !== first.inputShape[i])
    ) {
      fail("E_DATA_SHAPE", `cannot concatenate samples of shape [${d.inputShape}] and [${first.inputShape}]`);
    }
    if ((d.targets === undefined) !== (first.targets === undefined) || (d.targetSize ?? 0) !== t) {
      fail("E_DATA_SHAPE", "cannot concatenate datasets with different regression targets");
    }
  }
  const n = parts.reduce((a, d) => a + d.n, 0);
  const x = new Float32Array(n * size);
  const y = new Int32Array(n);
  const targets = first.targets !== undefined ? new Float32Array(n * t) : undefined;
  let o = 0;
  for (const d of parts) {
    x.set(d.x.subarray(0, d.n * size), o * size);
    y.set(d.y.subarray(0, d.n), o);
    if (targets !== undefined) targets.set((d.targets as Float32Array).subarray(0, d.n * t), o * t);
    o += d.n;
  }
  return { ...first, x, y, n, ...(targets !== undefined ? { targets } : {}) };
}
