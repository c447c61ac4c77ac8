import { fail } from "../errors";
import type { GraphSpec } from "./graph-spec";
import { validateGraph } from "./graph";

/**
 * A model architecture as plain JSON, so the cloud and every device build the same network.
 * - mlp:          dense layers with relu, softmax output (McMahan et al. 2017 "2NN": hidden [200, 200])
 * - cnn:          McMahan et al. 2017 CNN: conv5x5x32 same, maxpool2, conv5x5x64 same, maxpool2, dense512 relu, dense
 * - cnn1d:        1-D convolutions over multichannel sensor windows [T, C], global average pool, dense
 * - autoencoder:  dense encoder/decoder that reconstructs its input (anomaly score = reconstruction error)
 */
export type ModelKind = "mlp" | "cnn" | "cnn1d" | "autoencoder";

/**
 * A model: a built-in preset (trained by the hand-written fast path) or a layer graph (`graph-spec.ts`: imported
 * Keras models and any other supported graph, trained by tfjs autograd unless it matches a preset).
 */
export type ModelSpec = PresetSpec | GraphSpec;

export interface PresetSpec {
  readonly kind: ModelKind;
  /** Per-sample input shape, e.g. [784], [28, 28, 1], [64, 6]. */
  readonly inputShape: readonly number[];
  /** Output classes (ignored by the autoencoder). */
  readonly numClasses: number;
  /** mlp: hidden widths; autoencoder: encoder widths (decoder mirrors them). */
  readonly hidden?: readonly number[];
  /** cnn / cnn1d: filters per conv layer. */
  readonly filters?: readonly number[];
  /** cnn / cnn1d: kernel size. */
  readonly kernelSize?: number;
  /** cnn: width of the dense layer. */
  readonly dense?: number;
}

export const MODEL_KINDS: readonly ModelKind[] = ["mlp", "cnn", "cnn1d", "autoencoder"];

/** The synthetic-data shape of each model kind: [input shape, classes]. */
export const BENCH_SHAPES: Readonly<Record<string, readonly [readonly number[], number]>> = {
  mlp: [[784], 10],
  cnn: [[28, 28, 1], 10],
  cnn1d: [[64, 6], 5],
  autoencoder: [[784], 2],
};

/** Whether the profiler benchmarks this model under this key already: a kind's default spec, keyed by the kind. */
export function isDefaultBench(modelKey: string, spec: ModelSpec): boolean {
  if (modelKey !== spec.kind) return false;
  const shape = BENCH_SHAPES[spec.kind];
  if (!shape) return false;
  return JSON.stringify(defaultSpec(spec.kind, shape[0], shape[1])) === JSON.stringify(spec);
}

/** The default spec of a kind for a dataset's input shape and class count. */
export function defaultSpec(kind: string, inputShape: readonly number[], numClasses: number): ModelSpec {
  const size = inputShape.reduce((a, b) => a * b, 1);
  switch (kind) {
    case "mlp":
      return { kind, inputShape: [size], numClasses, hidden: [200, 200] };
    case "cnn": {
      if (inputShape.length === 3)
        return { kind, inputShape, numClasses, filters: [32, 64], kernelSize: 5, dense: 512 };
      const side = Math.round(Math.sqrt(size));
      if (side * side !== size) {
        fail("E_MODEL_SHAPE", `model cnn needs square images, the data has samples of shape [${inputShape}]`);
      }
      return { kind, inputShape: [side, side, 1], numClasses, filters: [32, 64], kernelSize: 5, dense: 512 };
    }
    case "cnn1d":
      if (inputShape.length !== 2) {
        fail(
          "E_MODEL_SHAPE",
          `model cnn1d needs [time, channels] windows, the data has samples of shape [${inputShape}]`,
        );
      }
      return { kind, inputShape, numClasses, filters: [32, 64], kernelSize: 5 };
    case "autoencoder":
      return { kind, inputShape: [size], numClasses, hidden: [64, 16] };
    default:
      return fail("E_CONFIG_MODEL", `unknown model '${kind}' (expected one of ${MODEL_KINDS.join(", ")})`);
  }
}

export function validateSpec(spec: unknown): ModelSpec {
  const s = spec as Partial<ModelSpec> | null;
  if (!s || typeof s !== "object") fail("E_MODEL_SPEC", "model spec must be a JSON object");
  if (s.kind === "graph") return validateGraph(s);
  if (!MODEL_KINDS.includes(s.kind as ModelKind))
    fail(
      "E_MODEL_SPEC",
      `model spec has unknown kind '${String(s.kind)}' (expected graph or ${MODEL_KINDS.join(", ")})`,
    );
  if (!Array.isArray(s.inputShape) || s.inputShape.some((d) => !Number.isInteger(d) || d <= 0)) {
    fail("E_MODEL_SPEC", "model spec inputShape must be positive integers");
  }
  if (!Number.isInteger(s.numClasses) || (s.numClasses as number) < 1) {
    fail("E_MODEL_SPEC", "model spec numClasses must be a positive integer");
  }
  return s as ModelSpec;
}
