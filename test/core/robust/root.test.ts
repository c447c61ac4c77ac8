import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { generateSensors } from "../../../core/data/sensors";
import { defaultSpec } from "../../../core/engine/model-spec";
import { createModel } from "../../../core/engine/models";
import { rootUpdater } from "../../../core/robust/root";
import { l2Norm } from "../../../core/robust/rules";
import type { FitConfig } from "../../../core/strategies/strategy";

test("the root update trains the global model on the root set with the job's fit config, deterministically", async () => {
  const s = generateSensors({ devices: 1, samplesPerDevice: 10, seed: 3, rootSamples: 40 });
  const root = s.root!;
  assert.equal(root.n, 40);
  const spec = defaultSpec("mlp", root.inputShape, root.numClasses);
  const model = await createModel(spec, 1);
  const global = model.getWeights();
  const fitWith =
    (lr: number, epochs = 1) =>
    (round: number): FitConfig => ({ epochs, batchSize: 10, lr, seed: round });
  const g1 = await rootUpdater(model, root, fitWith(0.05))(global, 1);
  assert.equal(g1.length, global.length);
  assert.ok(l2Norm(g1) > 0, "it moved");
  // From the same global model with the same round's config: the same update (the model's weights are reset).
  assert.deepEqual(await rootUpdater(model, root, fitWith(0.05))(global, 1), g1);
  // lr 0: no step at all — the config is the one applied.
  assert.equal(l2Norm(await rootUpdater(model, root, fitWith(0))(global, 1)), 0);
  // A device with 4x the root set's samples takes 4x its steps: the root set is trained for 4 epochs.
  const scaled = await rootUpdater(model, root, fitWith(0.05), 160)(global, 1);
  const fourEpochs = await rootUpdater(model, root, fitWith(0.05, 4))(global, 1);
  assert.deepEqual(scaled, fourEpochs);
  assert.ok(l2Norm(scaled) > l2Norm(g1));
  await assert.rejects(rootUpdater(model, root, fitWith(0.05))(global.subarray(1), 1), {
    code: "E_STRATEGY_SIZE",
  });
  model.dispose();
});
