/**
 * ONNX export of a model: a layer graph (core/engine/graph-spec.ts) with its flat weights, fp32 or int8.
 *
 * The graph is built as a `onnx.ModelProto` message of the ONNX schema (onnx-schema.ts) and encoded by protobufjs.
 * IR version 8, default-domain opset 17; every operator is in the ONNX operator spec (onnx/onnx
 * docs/Operators.md) at the version opset 17 selects: Gemm-13, MatMul-13, Conv-11, MaxPool-12, AveragePool-11,
 * GlobalAveragePool-1, ReduceMean-13 (axes attribute), BatchNormalization-15, LSTM-14, GRU-14, Gather-13,
 * Concat-13, Squeeze-13, Transpose-13, Flatten-13, Reshape-14, Identity-16, Add-14, Mul-14, Relu-14, Clip-13,
 * Elu-6, Selu-6, Sigmoid-13, HardSigmoid-6, Tanh-13, Softmax-13, Softplus-1, Softsign-1, Cast-13,
 * DynamicQuantizeLinear-11, MatMulInteger-10, ConvInteger-10, DequantizeLinear-13. The per-layer lowering is
 * onnx-graph.ts; its op mapping (docs/compression.md has the table):
 *
 * - Dense: Gemm (2-D input) or MatMul + Add (higher rank, on the last axis, as Keras).
 * - Conv1D / Conv2D: Conv on channels-first data (kernels [k.., in, out] → OIHW), TF 'same' padding as explicit
 *   pads (the odd pixel after), strides, dilations. DepthwiseConv2D: Conv with group = channels (kernel
 *   [kh, kw, c, mult] → [c·mult, 1, kh, kw]). SeparableConv2D: that depthwise Conv, then a 1×1 Conv + bias.
 * - Max/AveragePooling1D/2D: MaxPool / AveragePool (count_include_pad 0: TF averages valid cells only), 'same' as
 *   explicit asymmetric pads. GlobalAveragePooling1D/2D: GlobalAveragePool + Flatten (channels-first data) or
 *   ReduceMean over the spatial axes (channels-last data).
 * - Flatten: Flatten in Keras's channels-last order; after convolutions the next Dense layer's kernel rows are
 *   permuted instead of transposing back. Reshape: Reshape to [-1, ...target]. Dropout: nothing (inference).
 * - BatchNormalization: the BatchNormalization operator (inference form) when channels are on axis 1, else
 *   Mul + Add with γ/√(var+ε) and β − mean·γ/√(var+ε).
 * - Activations: Relu, Clip (relu6), Elu, Selu, Sigmoid, HardSigmoid (0.2x + 0.5, tfjs/Keras 2), Tanh, Softmax (last
 *   axis), Softplus, Softsign, x·Sigmoid(x) (swish); linear is nothing.
 * - LSTM / GRU: the ONNX LSTM / GRU operators, time-major (one Transpose in, none between stacked layers); gate order
 *   i, o, f, c (Keras i, f, c, o) and z, r, h; reset-after GRU as linear_before_reset 1 with Wb/Rb from the Keras
 *   bias [2, 3u]; Y (returnSequences) or Y_h squeezed.
 * - Embedding: Gather on the table with int32 ids (input dtype int32) or float ids cast to int64.
 * - Add: Add; Concatenate (last axis): Concat on the channel axis of the inputs' common layout.
 *
 * Input `input` [N, ...inputShape] (float32, or int32 for token ids; N symbolic). Output by task:
 * classification → `probabilities` [N, classes]; binary → `probability` [N, 1] (P(label 1)); regression →
 * `prediction` [N, ...]; reconstruction → `reconstruction` [N, ...inputShape]. The built-in kinds export through
 * their preset graph (presetGraph in core/engine/graph.ts), so mlp/cnn/cnn1d/autoencoder give the graphs they
 * always did (cnn: Transpose, Conv, Relu, MaxPool, ..., Flatten, Gemm, Relu, Gemm, Softmax).
 *
 * int8 (`quantize: "int8"`): every weight matrix is stored as an int8 initializer with symmetric
 * per-output-channel scales s_c = max|w_c| / qmax, q = round(w / s_c) (zero point 0): the affine scheme
 * r = S(q − Z) of Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
 * Integer-Arithmetic-Only Inference" (CVPR), with per-channel weight scales (Krishnamoorthi 2018, "Quantizing
 * deep convolutional networks for efficient inference: A whitepaper"). Biases, BatchNormalization and scales
 * stay float32 (< 1% of the bytes), so the file is ~3.9× smaller. Three graph forms (`int8Form`):
 *
 * - "integer": dynamic quantization, the pattern onnxruntime's `quantize_dynamic` emits. Activations are
 *   quantized at run time (per tensor, asymmetric uint8) and dense and conv layers run on integer kernels:
 *     DynamicQuantizeLinear(x) → x_q (uint8), x_s, x_zp
 *     MatMulInteger(x_q, W_q, x_zp) | ConvInteger(x_q, W_q, x_zp) → int32 accumulators
 *     Cast(float) → Mul(x_s · s_c) → Add(bias)
 *   onnxruntime fuses the dense chain into its DynamicQuantizeMatMul kernel (u8·s8 GEMM); ConvInteger stays an
 *   im2col + integer GEMM that is ~3-4× slower than its float NCHWc convolution (measured, below).
 * - "qdq": weight-only, DequantizeLinear(W_q, s, axis) → float Gemm / Conv. onnxruntime keeps the
 *   DequantizeLinear nodes (its constant folding leaves QDQ nodes alone) and runs them on every inference:
 *   slowest at batch 1.
 * - "mixed" (default): dense layers as in "integer" (integer GEMM), conv weights dequantized by Cast · Mul of
 *   the int8 initializer, which onnxruntime's constant folding evaluates once at session load, so the convs run
 *   on its float NCHWc kernels.
 *
 * Recurrent kernels (W, R; scale per gate unit) and embedding tables (scale per row) have no integer ONNX operator:
 * they are stored int8 and computed in float in every form (DequantizeLinear in "qdq", Cast · Mul folded at load
 * otherwise), so an LSTM/GRU runs the float LSTM/GRU kernel on int8-stored weights.
 *
 * Measured with onnxruntime-node 1.29, 1 intra-op thread, AVX2 (no VNNI), trained MNIST models
 * (scripts/bench-onnx.ts --forms), ms per sample at batch 1 / 64: mlp fp32 0.073 / 0.0067, mixed (= integer
 * for an mlp) 0.065 / 0.0053, qdq 0.65 / 0.015; cnn fp32 0.55 / 0.32, mixed 0.40 / 0.31, integer 1.82 / 1.26,
 * qdq 5.08 / 0.53. Test accuracy was within 0.15 point of fp32 for every form.
 *
 * Weights feeding integer kernels use qmax 63 (onnxruntime's `reduce_range`, see `reduceRange`); weights
 * dequantized to float use 127. With qmax 127 the AVX2 u8·s8 kernel's int16 pair sums saturate: the mlp's
 * probabilities then differ from exact integer arithmetic by up to 0.22 (1e-7 with qmax 63).
 */
import { FlotillaError, fail, isFlotillaError } from "../errors";
import { analyzeGraph, isPresetKind, presetGraph, type GraphInfo } from "../engine/graph";
import type { GraphSpec } from "../engine/graph-spec";
import { INPUT_NODE } from "../engine/graph-spec";
import { MODEL_KINDS, type ModelSpec } from "../engine/model-spec";
import { modelLayout } from "../engine/plan";
import type { WeightLayout } from "../tensor/layout";
import { GraphBuilder, valueInfo } from "./onnx-builder";
import { type GraphFacts, Lowering, type QuantPolicy, type Value, identity, valueOf } from "./onnx-graph";
import {
  DataType,
  INPUT_NAME,
  PREDICTION,
  PROBABILITIES,
  PROBABILITY,
  RECONSTRUCTION,
  modelProtoType,
} from "./onnx-schema";

export const ONNX_IR_VERSION = 8;
export const ONNX_OPSET = 17;
export { INPUT_NAME, PREDICTION, PROBABILITIES, PROBABILITY, RECONSTRUCTION };

/** int8 graph forms, see the file comment; "mixed" is the default. */
export type Int8Form = "mixed" | "integer" | "qdq";
export const INT8_FORMS: readonly Int8Form[] = ["mixed", "integer", "qdq"];

export interface ExportOptions {
  /** Store weights as int8 (see the file comment); default float32. */
  readonly quantize?: "int8";
  /** Graph name (default `flotilla_<kind>`). */
  readonly name?: string;
  /** int8 graph form (see the file comment): "mixed" (default), "integer" or "qdq". */
  readonly int8Form?: Int8Form;
  /**
   * Weights that integer kernels consume (MatMulInteger, ConvInteger) use ±63 instead of ±127 (default true;
   * onnxruntime's `reduce_range`): x86 AVX2 kernels without VNNI sum u8·s8 products pairwise in int16
   * (vpmaddubsw), which saturates for 255·127·2 > 32767. Weights computed in float always use ±127.
   */
  readonly reduceRange?: boolean;
}

/** The output name of a task. */
export function outputName(task: GraphSpec["task"]): string {
  switch (task) {
    case "binary":
      return PROBABILITY;
    case "regression":
      return PREDICTION;
    case "reconstruction":
      return RECONSTRUCTION;
    default:
      return PROBABILITIES;
  }
}

export function checkOptions(opts: ExportOptions): void {
  if (opts.quantize !== undefined && opts.quantize !== "int8") {
    fail("E_EXPORT_FORMAT", `unsupported quantization '${String(opts.quantize)}' (expected int8)`);
  }
  if (opts.int8Form !== undefined && !INT8_FORMS.includes(opts.int8Form)) {
    fail(
      "E_EXPORT_FORMAT",
      `unsupported int8 form '${String(opts.int8Form)}' (expected ${INT8_FORMS.join(", ")})`,
    );
  }
}

function entryAt(layout: WeightLayout, i: number): string {
  return layout.entries.find((e) => i >= e.offset && i < e.offset + e.size)?.name ?? "?";
}

function producerVersion(): string {
  try {
    return String((require("../../../package.json") as { version?: unknown }).version ?? "");
  } catch {
    return "";
  }
}

/** The graph of a spec (a preset's through presetGraph), its shapes and layout; invalid specs → E_EXPORT_*. */
function analyze(spec: ModelSpec): { info: GraphInfo; layout: WeightLayout } {
  if (!spec || typeof spec !== "object" || !(spec.kind === "graph" || isPresetKind(spec.kind))) {
    fail(
      "E_EXPORT_FORMAT",
      `cannot export model kind '${String(spec?.kind)}' (expected graph, ${MODEL_KINDS.join(", ")})`,
    );
  }
  try {
    const layout = modelLayout(spec);
    const info = analyzeGraph(spec.kind === "graph" ? spec : presetGraph(spec));
    return { info, layout };
  } catch (e) {
    if (isFlotillaError(e)) {
      const code = e.code === "E_MODEL_LAYER" ? "E_EXPORT_LAYER" : "E_EXPORT_WEIGHTS";
      fail(code, `invalid model spec: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/**
 * The ONNX model (ModelProto bytes) of `spec` (a layer graph, or a preset exported through its preset graph) with
 * `weights` (layout order of modelLayout(spec)). Throws E_EXPORT_FORMAT (unknown kind or quantization),
 * E_EXPORT_LAYER (a layer or option without an ONNX mapping, named) or E_EXPORT_WEIGHTS (invalid spec, wrong
 * length, non-finite weights).
 */
export function exportOnnx(spec: ModelSpec, weights: Float32Array, opts: ExportOptions = {}): Uint8Array {
  checkOptions(opts);
  const { info, layout } = analyze(spec);
  if (!(weights instanceof Float32Array)) fail("E_EXPORT_WEIGHTS", "weights must be a Float32Array");
  if (weights.length !== layout.totalSize) {
    fail(
      "E_EXPORT_WEIGHTS",
      `weights have ${weights.length} values, model ${spec.kind} needs ${layout.totalSize}`,
    );
  }
  for (let i = 0; i < weights.length; i++) {
    if (!Number.isFinite(weights[i])) {
      fail("E_EXPORT_WEIGHTS", `weight ${i} (${entryAt(layout, i)}) is not finite: ${weights[i]}`);
    }
  }
  const graph = info.spec;
  const shapes = new Map<string, readonly number[]>([[INPUT_NODE, graph.inputShape]]);
  for (const l of info.layers) shapes.set(l.layer.name, l.outShape);
  const byName = new Map(layout.entries.map((e) => [e.name, e]));
  const facts: GraphFacts = {
    shape: (node) => shapes.get(node) ?? fail("E_EXPORT_LAYER", `no shape for '${node}'`),
    weight: (layer, name) => {
      const e = byName.get(`${layer}/${name}`);
      return e ? weights.subarray(e.offset, e.offset + e.size) : null;
    },
  };

  const form = opts.quantize === "int8" ? (opts.int8Form ?? "mixed") : false;
  const q: QuantPolicy = {
    dense: form === false ? false : form === "qdq" ? "qdq" : "integer",
    conv: form === false ? false : form === "mixed" ? "folded" : form,
    other: form === false ? false : form === "qdq" ? "qdq" : "folded",
    qmaxInteger: opts.reduceRange === false ? 127 : 63,
    qmaxFloat: 127,
  };
  const g = new GraphBuilder();
  const lowering = new Lowering(g, q, facts);
  const ints = graph.inputDtype === "int32";
  const values = new Map<string, Value>([[INPUT_NODE, valueOf(INPUT_NAME, graph.inputShape, ints)]]);
  for (const l of info.layers) {
    const inputs = l.inputs.map((n) => values.get(n)!);
    if (inputs.some((v) => v.ints) && l.layer.type !== "Embedding") {
      fail("E_EXPORT_LAYER", `${l.layer.name}: ${l.layer.type} cannot read integer ids (only Embedding can)`);
    }
    values.set(l.layer.name, lowering.layer(l.layer, inputs));
  }
  let out = values.get(info.output)!;
  if (graph.task === "reconstruction" && out.shape.join() !== graph.inputShape.join()) {
    // A reconstruction has the input's shape (an autoencoder's dense output is flat).
    const shape = g.int64Init("reconstruction_shape", [-1, ...graph.inputShape]);
    const y = g.op("Reshape", [lowering.get(out, identity(out.shape.length + 1)), shape]);
    out = valueOf(y, graph.inputShape);
  }
  const outName = outputName(graph.task);
  const x = lowering.get(out, identity(out.shape.length + 1));
  if (x === INPUT_NAME || g.initializers.some((t) => t.name === x)) g.op("Identity", [x], [], outName);
  else g.rename(x, outName);

  const quant = form ? `int8-${form}${opts.reduceRange === false ? "-8bit" : ""}` : "none";
  const message = {
    ir_version: ONNX_IR_VERSION,
    opset_import: [{ domain: "", version: ONNX_OPSET }],
    producer_name: "flotilla",
    producer_version: producerVersion(),
    doc_string: `flotilla ${spec.kind} model, ${layout.totalSize} parameters, quantization ${quant}`,
    graph: {
      name: opts.name ?? `flotilla_${spec.kind}`,
      node: g.nodes,
      initializer: g.initializers,
      input: [valueInfo(INPUT_NAME, ["N", ...graph.inputShape], ints ? DataType.INT32 : DataType.FLOAT)],
      output: [valueInfo(outName, ["N", ...out.shape])],
    },
    metadata_props: [
      { key: "flotilla.spec", value: JSON.stringify(spec) },
      { key: "flotilla.layout_hash", value: layout.hash },
      { key: "flotilla.quantization", value: quant },
    ],
  };
  const type = modelProtoType();
  const err = type.verify(message);
  if (err) throw new FlotillaError("E_EXPORT_FORMAT", `internal: the ONNX model does not verify: ${err}`);
  return type.encode(type.fromObject(message)).finish();
}
