import type { Dataset } from "../data/dataset";
import type { WeightLayout } from "../tensor/layout";
import type { OptimizerConfig } from "./graph-spec";
import type { ModelSpec } from "./model-spec";

export interface TrainOptions {
  readonly epochs: number;
  readonly batchSize: number;
  readonly lr: number;
  /** FedProx μ: adds μ/2·||w − w_global||² to the local loss (Li et al. 2020, "Federated Optimization in
   *  Heterogeneous Networks"). w_global is the weights the model held when train() was called. */
  readonly mu?: number;
  /** On-device optimizer; absent = plain SGD (the fast path runs sgd and momentum, the generic path all). */
  readonly optimizer?: OptimizerConfig;
  /** Seed for shuffling the local data each epoch. */
  readonly seed: number;
  /** Called after each batch with samples done so far (for progress bars). */
  readonly onProgress?: (samplesDone: number, samplesTotal: number) => void;
  readonly abortSignal?: AbortSignal;
  /**
   * Ends training early without an error (the trainer's cap on local training time, maxTrainingMinutes): checked
   * after every batch, so at least one batch runs; train() then resolves with the steps and samples done so far.
   */
  readonly stopSignal?: AbortSignal;
}

export interface TrainSummary {
  /** Mean training loss over the last epoch. */
  readonly loss: number;
  /** Training accuracy over the last epoch (classifiers; NaN for the autoencoder). */
  readonly accuracy: number;
  readonly samples: number;
  readonly steps: number;
  readonly ms: number;
}

export interface EvalSummary {
  readonly loss: number;
  /** Fraction 0..1. The autoencoder reports anomaly-detection accuracy (label 0 = normal). */
  readonly accuracy: number;
  readonly n: number;
  /** Binary tasks: ROC AUC of the output scores (Mann–Whitney, ties count ½; NaN with a single class). */
  readonly auc?: number;
  /** Regression and reconstruction: mean absolute error over all output values. */
  readonly mae?: number;
}

/** A model on the TensorFlow.js wasm backend whose weights are read and written as one flat vector. */
export interface LocalModel {
  readonly spec: ModelSpec;
  readonly layout: WeightLayout;
  readonly numParams: number;
  getWeights(): Float32Array;
  setWeights(w: Float32Array): void;
  train(data: Dataset, opts: TrainOptions): Promise<TrainSummary>;
  evaluate(data: Dataset, batchSize?: number): EvalSummary;
  /** The model's outputs for n samples x (n × input size, row-major): softmax probabilities [n, classes] for
   *  classifiers, the reconstruction [n, input size] for the autoencoder. Optional: test doubles may omit it. */
  predict?(x: Float32Array, n: number): Float32Array;
  /** BatchNormalization policy "local" (FedBN, graph-spec.ts): the device's own weights after training, to carry
   *  into the next round's model with restoreLocalState; null when there is nothing local. Generic path only. */
  localState?(): Float32Array | null;
  restoreLocalState?(w: Float32Array): void;
  dispose(): void;
}
