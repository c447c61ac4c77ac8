/**
 * The ONNX export against the engine's own forward pass: every layer graph of graphs.ts (and the reset-after GRU,
 * dilated convolutions, partial BatchNormalization, which the generic path implements itself) on the generic
 * path (core/engine/generic.ts, wasm backend) with random weights, and the presets' graphs on the fast path.
 */
import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import type { GraphSpec } from "../../../core/engine/graph-spec";
import { createModel } from "../../../core/engine/models";
import { modelLayout } from "../../../core/engine/plan";
import { exportOnnx } from "../../../core/export/onnx";
import { OnnxModel } from "../../../core/export/onnx-runtime";
import { graph, headed, LAYER_GRAPHS, randomInput } from "./graphs";
import { randomWeights } from "./tfjs-graph";

const EXTRA: GraphSpec[] = [
  graph([9, 4], [{ name: "r", type: "GRU", units: 6, resetAfter: true }], { numClasses: 6 }),
  graph(
    [9, 4],
    [
      { name: "r", type: "GRU", units: 6, resetAfter: true, returnSequences: true },
      { name: "f", type: "Flatten" },
    ],
    { numClasses: 54 },
  ),
  graph(
    [12, 10, 3],
    [
      { name: "c", type: "Conv2D", filters: 4, kernelSize: [3, 3], dilationRate: [2, 2], padding: "same" },
      { name: "bn", type: "BatchNormalization", center: false },
      { name: "p", type: "AveragePooling2D", poolSize: [2, 2], padding: "same" },
      { name: "f", type: "Flatten" },
    ],
    { numClasses: 120 },
  ),
];

async function check(g: GraphSpec, seed: number): Promise<number> {
  const w = randomWeights(modelLayout(g), seed);
  const model = await createModel(g, 1, { path: "generic" });
  try {
    model.setWeights(w);
    const x = randomInput(g, 12, seed);
    const want = model.predict!(x, 12);
    const onnx = await OnnxModel.load(exportOnnx(g, w), { threads: 1 });
    const got = await onnx.predict(x, 12);
    await onnx.close();
    assert.equal(got.length, want.length);
    let diff = 0;
    for (let i = 0; i < got.length; i++) diff = Math.max(diff, Math.abs(got[i] - want[i]));
    const scale = Math.max(1, ...want.map(Math.abs));
    assert.ok(
      diff <= 1e-4 * scale,
      `${g.layers.map((l) => l.type).join("-")}: max |ORT − generic| = ${diff}`,
    );
    return diff;
  } finally {
    model.dispose();
  }
}

test("ONNX export matches the generic path's forward pass for every layer graph", async () => {
  // headed() probes shapes with tfjs-layers on the cpu backend: all graphs first, then the wasm engine.
  const graphs: GraphSpec[] = [];
  for (const g of LAYER_GRAPHS) graphs.push(await headed(g));
  graphs.push(...EXTRA);
  for (const [i, g] of graphs.entries()) await check(g, 500 + i);
});
