import { fail } from "../errors";

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
): Dataset {
  const size = sampleSize(inputShape);
  if (x.length !== y.length * size) {
    fail("E_DATA_SHAPE", `dataset has ${x.length} values for ${y.length} samples of shape [${inputShape}]`);
  }
  return { x, y, n: y.length, inputShape: [...inputShape], numClasses, classNames };
}

/** The samples at `indices`, copied into a new dataset. */
export function subset(ds: Dataset, indices: ArrayLike<number>): Dataset {
  const size = sampleSize(ds.inputShape);
  const x = new Float32Array(indices.length * size);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i];
    x.set(ds.x.subarray(j * size, (j + 1) * size), i * size);
    y[i] = ds.y[j];
  }
  return {
    x,
    y,
    n: indices.length,
    inputShape: ds.inputShape,
    numClasses: ds.numClasses,
    classNames: ds.classNames,
  };
}

/** The same data seen with another per-sample shape of the same size (e.g. [784] <-> [28, 28, 1]). */
export function reshape(ds: Dataset, inputShape: readonly number[]): Dataset {
  if (sampleSize(inputShape) !== sampleSize(ds.inputShape)) {
    fail("E_DATA_SHAPE", `cannot view samples of shape [${ds.inputShape}] as [${inputShape}]`);
  }
  return { ...ds, inputShape: [...inputShape] };
}
