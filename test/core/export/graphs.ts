/**
 * Test graphs of the ONNX export tests: one small graph per layer type and option, and helpers to build them.
 */
import { Rng } from "../../../core/data/rng";
import type { GraphSpec, LayerSpec } from "../../../core/engine/graph-spec";
import { reference } from "./tfjs-graph";

/** A graph; without a task, a regression whose numClasses `headed` fills in. */
export function graph(inputShape: number[], layers: LayerSpec[], extra: Partial<GraphSpec> = {}): GraphSpec {
  return { kind: "graph", inputShape, layers, loss: "mse", task: "regression", numClasses: 0, ...extra };
}

/**
 * A single-layer test graph made a valid regression (graph.ts wants an output [numClasses]): a Flatten appended
 * when the layer's output has more than one axis, numClasses its size.
 */
export async function headed(g: GraphSpec): Promise<GraphSpec> {
  if (g.numClasses !== 0) return g;
  const probe = await reference(g, 0);
  const last = g.layers[g.layers.length - 1].name;
  const shape = probe.shapes.get(last)!;
  probe.model.dispose();
  const numClasses = shape.reduce((a, b) => a * b, 1);
  const layers: LayerSpec[] =
    shape.length > 1 ? [...g.layers, { name: "head_flatten", type: "Flatten" }] : [...g.layers];
  return { ...g, layers, numClasses };
}

export function randomInput(g: GraphSpec, n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const size = g.inputShape.reduce((a, b) => a * b, 1);
  const first = g.layers[0];
  if (first.type === "Embedding") return new Float32Array(n * size).map(() => rng.int(first.inputDim));
  return new Float32Array(n * size).map(() => rng.normal());
}

export const c2 = (name: string, extra: Partial<Extract<LayerSpec, { type: "Conv2D" }>> = {}): LayerSpec => ({
  name,
  type: "Conv2D",
  filters: 4,
  kernelSize: [3, 3],
  ...extra,
});

/** One small graph per layer type and option. */
export const LAYER_GRAPHS: GraphSpec[] = [
  graph([5], [{ name: "d", type: "Dense", units: 3, activation: "tanh" }]),
  graph([5], [{ name: "d", type: "Dense", units: 3, useBias: false }]),
  graph([4, 5], [{ name: "d", type: "Dense", units: 3, activation: "relu" }]),
  graph([11, 3], [{ name: "c", type: "Conv1D", filters: 4, kernelSize: 4, padding: "same" }]),
  graph([11, 3], [{ name: "c", type: "Conv1D", filters: 4, kernelSize: 3, strides: 2, padding: "same" }]),
  graph(
    [11, 3],
    [{ name: "c", type: "Conv1D", filters: 4, kernelSize: 3, dilationRate: 2, padding: "same" }],
  ),
  graph(
    [11, 3],
    [{ name: "c", type: "Conv1D", filters: 4, kernelSize: 3, padding: "valid", useBias: false }],
  ),
  graph([9, 7, 2], [c2("c", { kernelSize: [4, 2], padding: "same", activation: "relu" })]),
  graph([9, 7, 2], [c2("c", { strides: [2, 2], padding: "same" })]),
  graph([9, 8, 2], [c2("c", { kernelSize: [2, 3], strides: [2, 3], padding: "valid" })]),
  graph([9, 7, 2], [c2("c", { dilationRate: [2, 2], padding: "same" })]),
  graph(
    [9, 7, 3],
    [{ name: "dw", type: "DepthwiseConv2D", kernelSize: [3, 3], padding: "same", depthMultiplier: 2 }],
  ),
  graph(
    [9, 7, 3],
    [{ name: "dw", type: "DepthwiseConv2D", kernelSize: [2, 2], strides: [2, 2], padding: "same" }],
  ),
  graph(
    [9, 7, 3],
    [
      {
        name: "s",
        type: "SeparableConv2D",
        filters: 5,
        kernelSize: [3, 3],
        padding: "same",
        depthMultiplier: 2,
      },
    ],
  ),
  graph(
    [9, 7, 3],
    [
      {
        name: "s",
        type: "SeparableConv2D",
        filters: 5,
        kernelSize: [3, 2],
        strides: [2, 2],
        padding: "valid",
        activation: "relu",
      },
    ],
  ),
  graph([11, 3], [{ name: "p", type: "MaxPooling1D", poolSize: 3, strides: 2, padding: "same" }]),
  graph([11, 3], [{ name: "p", type: "MaxPooling1D", poolSize: 2 }]),
  graph([11, 3], [{ name: "p", type: "AveragePooling1D", poolSize: 4, strides: 3, padding: "same" }]),
  graph([11, 3], [{ name: "p", type: "AveragePooling1D", poolSize: 3, padding: "valid" }]),
  graph([9, 7, 2], [{ name: "p", type: "MaxPooling2D", poolSize: [3, 2], strides: [2, 2], padding: "same" }]),
  graph([9, 7, 2], [{ name: "p", type: "MaxPooling2D", poolSize: [2, 2] }]),
  graph(
    [9, 7, 2],
    [{ name: "p", type: "AveragePooling2D", poolSize: [3, 3], strides: [2, 2], padding: "same" }],
  ),
  graph([9, 7, 2], [{ name: "p", type: "AveragePooling2D", poolSize: [2, 3], padding: "valid" }]),
  graph([11, 3], [{ name: "g", type: "GlobalAveragePooling1D" }]),
  graph([9, 7, 2], [{ name: "g", type: "GlobalAveragePooling2D" }]),
  graph([9, 7, 2], [c2("c"), { name: "g", type: "GlobalAveragePooling2D" }]),
  graph([9, 7, 2], [{ name: "f", type: "Flatten" }]),
  graph([9, 7, 2], [c2("c", { padding: "same" }), { name: "f", type: "Flatten" }]),
  graph([9, 7, 2], [c2("c"), { name: "f", type: "Flatten" }, { name: "d", type: "Dense", units: 3 }]),
  graph(
    [11, 3],
    [
      { name: "c", type: "Conv1D", filters: 4, kernelSize: 3 },
      { name: "f", type: "Flatten" },
      { name: "d", type: "Dense", units: 3 },
    ],
  ),
  graph(
    [6, 4],
    [
      { name: "r", type: "Reshape", targetShape: [3, -1] },
      { name: "d", type: "Dense", units: 2 },
    ],
  ),
  graph(
    [6, 4],
    [
      { name: "o", type: "Dropout", rate: 0.5 },
      { name: "d", type: "Dense", units: 2 },
    ],
  ),
  graph([6], [{ name: "bn", type: "BatchNormalization", epsilon: 0.01 }]),
  graph([6, 4], [{ name: "bn", type: "BatchNormalization" }]),
  graph([6, 4], [{ name: "bn", type: "BatchNormalization", center: false, scale: false }]),
  graph(
    [9, 7, 2],
    [
      c2("c"),
      { name: "bn", type: "BatchNormalization" },
      { name: "a", type: "Activation", activation: "relu" },
    ],
  ),
  ...(
    [
      "linear",
      "relu",
      "relu6",
      "elu",
      "selu",
      "sigmoid",
      "hard_sigmoid",
      "tanh",
      "softmax",
      "softplus",
      "softsign",
      "swish",
    ] as const
  ).map((activation) =>
    graph([2, 5], [{ name: "a", type: "Activation", activation }], { name: `activation ${activation}` }),
  ),
  graph([7, 3], [{ name: "l", type: "LSTM", units: 5 }]),
  graph(
    [7, 3],
    [{ name: "l", type: "LSTM", units: 5, returnSequences: true, recurrentActivation: "sigmoid" }],
  ),
  graph([7, 3], [{ name: "l", type: "LSTM", units: 4, useBias: false, activation: "relu" }]),
  graph([7, 3], [{ name: "r", type: "GRU", units: 5 }]),
  graph(
    [7, 3],
    [{ name: "l", type: "LSTM", units: 4, activation: "linear", recurrentActivation: "hard_sigmoid" }],
  ),
  graph(
    [7, 3],
    [{ name: "r", type: "GRU", units: 4, activation: "elu", recurrentActivation: "hard_sigmoid" }],
  ),
  graph(
    [7, 3],
    [
      { name: "l", type: "LSTM", units: 5, returnSequences: true },
      { name: "d", type: "Dense", units: 3, activation: "softmax" },
    ],
  ),
  graph(
    [7, 3],
    [
      { name: "r", type: "GRU", units: 5, returnSequences: true },
      { name: "bn", type: "BatchNormalization" },
      { name: "a", type: "Activation", activation: "softmax" },
      { name: "p", type: "GlobalAveragePooling1D" },
    ],
  ),
  graph(
    [7, 3],
    [{ name: "r", type: "GRU", units: 5, returnSequences: true, recurrentActivation: "sigmoid" }],
  ),
  graph([7, 3], [{ name: "r", type: "GRU", units: 4, useBias: false, activation: "softsign" }]),
  graph([6], [{ name: "e", type: "Embedding", inputDim: 11, outputDim: 3 }], { inputDtype: "int32" }),
  graph(
    [5],
    [
      { name: "a", type: "Dense", units: 4 },
      { name: "b", type: "Dense", units: 4, inputs: ["input"] },
      { name: "s", type: "Add", inputs: ["a", "b"] },
    ],
  ),
  graph(
    [9, 7, 2],
    [
      c2("a", { padding: "same" }),
      c2("b", { padding: "same", inputs: ["input"] }),
      { name: "s", type: "Add", inputs: ["a", "b", "a"] },
    ],
  ),
  graph(
    [5],
    [
      { name: "a", type: "Dense", units: 4 },
      { name: "b", type: "Dense", units: 3, inputs: ["input"] },
      { name: "j", type: "Concatenate", inputs: ["a", "b"] },
    ],
  ),
  graph(
    [9, 7, 2],
    [c2("a", { padding: "same" }), { name: "j", type: "Concatenate", inputs: ["a", "input"] }],
  ),
  graph(
    [7, 3],
    [
      { name: "l", type: "LSTM", units: 4, returnSequences: true },
      { name: "j", type: "Concatenate", inputs: ["l", "input"] },
    ],
  ),
];
