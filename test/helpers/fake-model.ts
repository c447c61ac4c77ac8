import type { Dataset } from "../../core/data/dataset";
import type { EvalSummary, LocalModel, TrainOptions, TrainSummary } from "../../core/engine/types";
import { makeLayout } from "../../core/tensor/layout";

/**
 * A tiny deterministic LocalModel for testing the round engine without TensorFlow.js: "training" moves every
 * weight towards the mean label of the local data by lr·epochs, so the expected aggregate is computable by hand.
 */
export class FakeModel implements LocalModel {
  readonly spec = { kind: "mlp" as const, inputShape: [1], numClasses: 2 };
  readonly layout;
  private w: Float32Array;
  constructor(readonly numParams = 4) {
    this.layout = makeLayout([{ name: "w", shape: [numParams] }]);
    this.w = new Float32Array(numParams);
  }
  getWeights(): Float32Array {
    return this.w.slice();
  }
  setWeights(w: Float32Array): void {
    if (w.length !== this.numParams) throw new Error("bad length");
    this.w = w.slice();
  }
  async train(data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    let mean = 0;
    for (let i = 0; i < data.n; i++) mean += data.y[i];
    mean /= data.n;
    for (let i = 0; i < this.w.length; i++) this.w[i] += opts.lr * opts.epochs * (mean - this.w[i]);
    opts.onProgress?.(data.n, data.n);
    return { loss: 1 - mean, accuracy: mean, samples: data.n * opts.epochs, steps: 1, ms: 1 };
  }
  evaluate(): EvalSummary {
    return { loss: 0, accuracy: this.w[0], n: 1 };
  }
  dispose(): void {}
}

export function labelsDataset(labels: number[]): Dataset {
  return {
    x: new Float32Array(labels.length),
    y: Int32Array.from(labels),
    n: labels.length,
    inputShape: [1],
    numClasses: 2,
  };
}
