/**
 * The on-device optimizer travels from the strategy's fit options (simulate --optimizer, a job's
 * strategyOptions.fit.optimizer) in every device's FitConfig to LocalModel.train's TrainOptions.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { makeDataset } from "../../../core/data/dataset";
import type { LocalModel, TrainOptions } from "../../../core/engine/types";
import { makeLayout } from "../../../core/tensor/layout";
import { weightsHash } from "../../../core/tensor/layout";
import { decodeMessage, encodeMessage } from "../../../core/protocol/messages";
import { DeviceRuntime } from "../../../core/round/device";
import { createStrategy } from "../../../core/strategies/registry";

test("fit.optimizer reaches every device's FitConfig (fedavg, fedprox) and the model's train options", async () => {
  const optimizer = { name: "momentum" as const, momentum: 0.5 };
  for (const name of ["fedavg", "fedprox"]) {
    const s = createStrategy(name, {
      clientsPerRound: 2,
      fit: { epochs: 1, batchSize: 4, lr: 0.1, optimizer },
      seed: 1,
    });
    s.initialize(new Float32Array(3));
    const fit = s.configureFit(1, [{ deviceId: "a" }, { deviceId: "b" }]);
    assert.equal(fit.length, 2);
    for (const f of fit) assert.deepEqual(f.config.optimizer, optimizer, name);
  }
  const plain = createStrategy("fedavg", {
    clientsPerRound: 1,
    fit: { epochs: 1, batchSize: 4, lr: 0.1 },
    seed: 1,
  });
  plain.initialize(new Float32Array(3));
  assert.equal("optimizer" in plain.configureFit(1, [{ deviceId: "a" }])[0].config, false);

  // A device: the train request's config.optimizer is what LocalModel.train gets.
  const layout = makeLayout([{ name: "d/kernel", shape: [3] }]);
  const seen: TrainOptions[] = [];
  let w = new Float32Array(3);
  const model: LocalModel = {
    spec: { kind: "mlp", inputShape: [1], numClasses: 2 },
    layout,
    numParams: 3,
    getWeights: () => w.slice(),
    setWeights: (x) => {
      w = x.slice();
    },
    train: async (_d, o) => {
      seen.push(o);
      return { loss: 0, accuracy: 0, samples: 1, steps: 1, ms: 1 };
    },
    evaluate: () => ({ loss: 0, accuracy: 0, n: 0 }),
    dispose: () => {},
  };
  const rt = new DeviceRuntime("a", makeDataset(new Float32Array(1), new Int32Array(1), [1], 2), model);
  const weights = new Float32Array([1, 2, 3]);
  const reply = decodeMessage(
    await rt.handle(
      encodeMessage({
        type: "train",
        jobId: "j",
        round: 1,
        modelHash: weightsHash(weights),
        layoutHash: layout.hash,
        config: { epochs: 1, batchSize: 4, lr: 0.1, seed: 3, optimizer },
        deadline: 0,
        weights,
      }),
    ),
  );
  assert.equal(reply.type, "result");
  assert.deepEqual(seen[0].optimizer, optimizer);
});
