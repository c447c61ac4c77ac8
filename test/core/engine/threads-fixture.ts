/** The training run threads.test.ts repeats on backends with different thread counts. */
import { makeDataset } from "../../../core/data/dataset";
import { Rng } from "../../../core/data/rng";
import { defaultSpec } from "../../../core/engine/model-spec";
import { createModel } from "../../../core/engine/models";

export interface ThreadsJob {
  readonly threads: number;
  readonly model: "mlp" | "cnn";
  readonly steps: number;
}

export interface ThreadsReply {
  readonly weights: Float32Array;
  readonly threads: number;
  readonly switchable: boolean;
  readonly shared: boolean;
  readonly grew: boolean;
  readonly viewOk: boolean;
  readonly readBack: number[];
  readonly sum: number;
}

/** `steps` SGD steps of B = 10 on seeded synthetic data from the seeded initial weights; the trained weights. */
export async function trainFixture(job: ThreadsJob): Promise<Float32Array> {
  const shape = job.model === "cnn" ? [28, 28, 1] : [784];
  const spec = defaultSpec(job.model, shape, 10);
  const n = 10 * job.steps;
  const rng = new Rng(7);
  const x = new Float32Array(n * 784).map(() => rng.next());
  const y = new Int32Array(n).map(() => rng.int(10));
  const model = await createModel(spec, 3);
  try {
    await model.train(makeDataset(x, y, shape, 10), { epochs: 1, batchSize: 10, lr: 0.05, seed: 5 });
    return model.getWeights();
  } finally {
    model.dispose();
  }
}
