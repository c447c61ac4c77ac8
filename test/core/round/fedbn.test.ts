/**
 * BN policy "local" (FedBN, Li et al. ICLR 2021) through the device runtime: several simulated devices share one
 * model, yet each keeps its own BatchNormalization weights across rounds (also when its state moves between
 * workers as bytes), starts from the global BN before its first round, and uploads zero BN deltas.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { makeDataset } from "../../../core/data/dataset";
import { Rng } from "../../../core/data/rng";
import { analyzeGraph, bnMask } from "../../../core/engine/graph";
import type { GraphSpec } from "../../../core/engine/graph-spec";
import { createModel } from "../../../core/engine/models";
import { initialWeights } from "../../../core/engine/plan";
import { decodeMessage, encodeMessage } from "../../../core/protocol/messages";
import { DeviceRuntime } from "../../../core/round/device";
import { weightsHash } from "../../../core/tensor/layout";

const spec: GraphSpec = {
  kind: "graph",
  inputShape: [4],
  layers: [
    { name: "d0", type: "Dense", units: 6 },
    { name: "bn", type: "BatchNormalization" },
    { name: "act", type: "Activation", activation: "relu" },
    { name: "out", type: "Dense", units: 3, activation: "softmax" },
  ],
  loss: "sparse_categorical_crossentropy",
  task: "classification",
  numClasses: 3,
  bnPolicy: "local",
};

function data(seed: number, shift: number) {
  const rng = new Rng(seed);
  const n = 24;
  const x = new Float32Array(n * 4);
  for (let i = 0; i < x.length; i++) x[i] = rng.next() * 2 + shift; // feature shift per device
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) y[i] = rng.int(3);
  return makeDataset(x, y, [4], 3);
}

test("each device keeps its own BN weights across rounds, uploads zero BN deltas, and carries them as state", async () => {
  const model = await createModel(spec, 1);
  const mask = bnMask(analyzeGraph(spec).tensors);
  const a = new DeviceRuntime("a", data(1, 0), model);
  const b = new DeviceRuntime("b", data(2, 5), model);
  let global = initialWeights(spec, 1);
  const round = async (rt: DeviceRuntime, r: number) => {
    const reply = decodeMessage(
      await rt.handle(
        encodeMessage({
          type: "train",
          jobId: "j",
          round: r,
          modelHash: weightsHash(global),
          layoutHash: model.layout.hash,
          config: { epochs: 1, batchSize: 8, lr: 0.1, seed: r },
          deadline: 0,
          weights: global,
        }),
      ),
    );
    assert.equal(reply.type, "result", JSON.stringify(reply));
    const delta = (reply as { delta: Float32Array }).delta;
    return { delta, after: model.getWeights() };
  };
  const bnValues = (w: Float32Array) => {
    const out: number[] = [];
    let o = 0;
    model.layout.entries.forEach((e, i) => {
      if (mask[i]) for (let j = 0; j < e.size; j++) out.push(w[o + j]);
      o += e.size;
    });
    return out;
  };
  const bnOf = () => bnValues(model.localState?.() ?? new Float32Array(0));

  const r1a = await round(a, 1);
  for (const [i, v] of bnValues(r1a.delta).entries()) assert.equal(v, 0, `BN delta ${i}`);
  const bnA = bnOf();
  assert.notDeepEqual(bnA, bnValues(global), "training moved device a's BN statistics");

  // Device b has not trained: it starts from the global BN, not from a's (the model is shared).
  global = new Float32Array(global.map((v, i) => v + r1a.delta[i]));
  await round(b, 1);
  const bnB = bnOf();
  assert.notDeepEqual(bnB, bnA);

  // a's state moves as bytes (as between simulator workers); its next round starts from its own BN.
  const moved = a.exportState();
  assert.ok(moved, "a device under BN policy local has state to carry");
  const a2 = new DeviceRuntime("a", data(1, 0), model);
  a2.importState(moved);
  let started: number[] = [];
  const train = model.train.bind(model);
  model.train = async (d, o) => {
    started = bnOf();
    return train(d, o);
  };
  await round(a2, 2);
  assert.deepEqual(started, bnA, "device a's second round starts from its own BN weights");
  model.train = train;
  model.dispose();
});
