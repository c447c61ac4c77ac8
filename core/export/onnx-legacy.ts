/**
 * ONNX export of a model (spec + flat weights in the layout of `modelLayout(spec)`, see core/engine/models.ts).
 *
 * The graph is built as a `onnx.ModelProto` message of the ONNX schema (onnx-schema.ts) and encoded by protobufjs.
 * IR version 8, default-domain opset 17; every operator below is in the ONNX operator spec (onnx/onnx
 * docs/Operators.md) at the version opset 17 selects: Gemm-13, Conv-11, MaxPool-12, Relu-14, Softmax-13,
 * GlobalAveragePool-1, Transpose-13, Flatten-13, Reshape-14, Add-14, Mul-14, Cast-13, DynamicQuantizeLinear-11,
 * MatMulInteger-10, ConvInteger-10 and DequantizeLinear-13.
 *
 * Graph (input `input` float32 [N, ...spec.inputShape], N symbolic):
 * - mlp / autoencoder: Flatten when the sample shape has more than one axis, then per dense layer
 *   Gemm(x, kernel [in, out], bias) (+ Relu on all but the last layer).
 * - cnn: the NHWC input is transposed once to NCHW; per conv layer Conv (kernel converted from Keras
 *   [kh, kw, in, out] to OIHW, explicit 'same' pads: TF puts the odd pixel after, as samePad in models.ts) + Relu +
 *   MaxPool 2×2 stride 2 (floor, like tfjs 'valid'); Flatten; the dense layers. The first dense kernel's rows are
 *   permuted from Keras's NHWC flatten order to NCHW flatten order, so no transpose back is needed.
 * - cnn1d: [N, T, C] transposed to [N, C, T]; Conv 1-D (kernel [k, in, out] → [out, in, k]) + Relu, MaxPool 2 on
 *   all but the last conv; GlobalAveragePool; Flatten; dense.
 * - Classifiers end in Softmax → output `probabilities` [N, numClasses]; the autoencoder's linear output is
 *   `reconstruction` [N, ...spec.inputShape].
 *
 * int8 (`quantize: "int8"`): every dense and conv weight tensor is stored as an int8 initializer with symmetric
 * per-output-channel scales s_c = max|w_c| / qmax, q = round(w / s_c) (zero point 0): the affine scheme
 * r = S(q − Z) of Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
 * Integer-Arithmetic-Only Inference" (CVPR), with per-channel weight scales (Krishnamoorthi 2018, "Quantizing
 * deep convolutional networks for efficient inference: A whitepaper"). Biases and scales stay float32 (< 1% of
 * the bytes), so the file is ~3.9× smaller. Three graph forms (`int8Form`):
 *
 * - "integer": dynamic quantization, the pattern onnxruntime's `quantize_dynamic` emits. Activations are
 *   quantized at run time (per tensor, asymmetric uint8) and every layer runs on integer kernels:
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
 * Measured with onnxruntime-node 1.29, 1 intra-op thread, AVX2 (no VNNI), trained MNIST models
 * (scripts/bench-onnx.ts --forms), ms per sample at batch 1 / 64: mlp fp32 0.073 / 0.0067, mixed (= integer
 * for an mlp) 0.065 / 0.0053, qdq 0.65 / 0.015; cnn fp32 0.55 / 0.32, mixed 0.40 / 0.31, integer 1.82 / 1.26,
 * qdq 5.08 / 0.53. Test accuracy was within 0.15 point of fp32 for every form.
 *
 * Weights feeding integer kernels use qmax 63 (onnxruntime's `reduce_range`, see `reduceRange`); weights
 * dequantized to float use 127. With qmax 127 the AVX2 u8·s8 kernel's int16 pair sums saturate: the mlp's
 * probabilities then differ from exact integer arithmetic by up to 0.22 (1e-7 with qmax 63).
 *
 * Operator semantics: ONNX operator spec, onnx/onnx docs/Operators.md (DynamicQuantizeLinear, MatMulInteger,
 * ConvInteger, DequantizeLinear: per-axis since opset 13).
 */
import * as os from "node:os";
import { FlotillaError, fail, isFlotillaError } from "../errors";
import type { ModelSpec } from "../engine/model-spec";
import { MODEL_KINDS, type ModelKind } from "../engine/model-spec";
import { modelLayout } from "../engine/plan";
import type { WeightLayout } from "../tensor/layout";
import { AttrType, DataType, INPUT_NAME, PROBABILITIES, RECONSTRUCTION, modelProtoType } from "./onnx-schema";

const ONNX_IR_VERSION = 8;
const ONNX_OPSET = 17;

/** int8 graph forms, see the file comment; "mixed" is the default. */
type Int8Form = "mixed" | "integer" | "qdq";
const INT8_FORMS: readonly Int8Form[] = ["mixed", "integer", "qdq"];

interface ExportOptions {
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

// ---------------------------------------------------------------------------------------------------------------
// Plain objects shaped like the schema's messages (field names as in onnx.proto3; protobufjs `fromObject`).
// ---------------------------------------------------------------------------------------------------------------

interface Attribute {
  name: string;
  type: number;
  i?: number;
  ints?: number[];
}

interface NodeMsg {
  input: string[];
  output: string[];
  name: string;
  op_type: string;
  attribute: Attribute[];
}

interface TensorMsg {
  name: string;
  dims: number[];
  data_type: number;
  raw_data: Uint8Array;
}

interface ValueInfoMsg {
  name: string;
  type: {
    tensor_type: { elem_type: number; shape: { dim: ({ dim_value: number } | { dim_param: string })[] } };
  };
}

const LITTLE_ENDIAN = os.endianness() === "LE";

function bytesOf(a: Float32Array | Int8Array | Uint8Array | BigInt64Array): Uint8Array {
  if (LITTLE_ENDIAN || a.BYTES_PER_ELEMENT === 1) {
    return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
  }
  const out = new Uint8Array(a.byteLength);
  const v = new DataView(out.buffer);
  if (a instanceof Float32Array) a.forEach((x, i) => v.setFloat32(4 * i, x, true));
  else (a as BigInt64Array).forEach((x, i) => v.setBigInt64(8 * i, x, true));
  return out;
}

const attrInt = (name: string, i: number): Attribute => ({ name, type: AttrType.INT, i });
const attrInts = (name: string, ints: number[]): Attribute => ({ name, type: AttrType.INTS, ints });

class GraphBuilder {
  readonly nodes: NodeMsg[] = [];
  readonly initializers: TensorMsg[] = [];
  private count = 0;

  /** Adds a node; returns its output names (fresh unless given). */
  node(op: string, inputs: string[], attrs: Attribute[] = [], outputs?: string[] | number): string[] {
    const n = this.count++;
    const outs =
      Array.isArray(outputs) && outputs.length > 0
        ? outputs
        : Array.from({ length: typeof outputs === "number" ? outputs : 1 }, (_, k) => `${op}_${n}_out${k}`);
    this.nodes.push({ input: inputs, output: outs, name: `${op}_${n}`, op_type: op, attribute: attrs });
    return outs;
  }

  /** One-output node. */
  op(op: string, inputs: string[], attrs: Attribute[] = [], output?: string): string {
    return this.node(op, inputs, attrs, output === undefined ? 1 : [output])[0];
  }

  floatInit(name: string, dims: number[], data: Float32Array): string {
    this.initializers.push({ name, dims, data_type: DataType.FLOAT, raw_data: bytesOf(data) });
    return name;
  }

  int8Init(name: string, dims: number[], data: Int8Array): string {
    this.initializers.push({ name, dims, data_type: DataType.INT8, raw_data: bytesOf(data) });
    return name;
  }

  int64Init(name: string, values: number[]): string {
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.initializers.push({
      name,
      dims: [values.length],
      data_type: DataType.INT64,
      raw_data: bytesOf(data),
    });
    return name;
  }
}

function valueInfo(name: string, dims: (number | string)[]): ValueInfoMsg {
  return {
    name,
    type: {
      tensor_type: {
        elem_type: DataType.FLOAT,
        shape: { dim: dims.map((d) => (typeof d === "number" ? { dim_value: d } : { dim_param: d })) },
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Weights: Keras layout → ONNX layout, and symmetric per-channel int8 quantization
// ---------------------------------------------------------------------------------------------------------------

/** Conv kernel [kh, kw, cin, cout] (Keras; conv1d: kh = 1, [k, cin, cout]) → [cout, cin, kh, kw] (ONNX OIHW). */
function toOIHW(src: Float32Array, kh: number, kw: number, cin: number, cout: number): Float32Array {
  const dst = new Float32Array(src.length);
  for (let y = 0; y < kh; y++) {
    for (let x = 0; x < kw; x++) {
      for (let i = 0; i < cin; i++) {
        const s = ((y * kw + x) * cin + i) * cout;
        for (let o = 0; o < cout; o++) dst[((o * cin + i) * kh + y) * kw + x] = src[s + o];
      }
    }
  }
  return dst;
}

/** Rows of a dense kernel [h·w·c, out] from NHWC flatten order (p·c + ch) to NCHW order (ch·hw + p). */
function nhwcRowsToNchw(src: Float32Array, hw: number, c: number, out: number): Float32Array {
  const dst = new Float32Array(src.length);
  for (let p = 0; p < hw; p++) {
    for (let ch = 0; ch < c; ch++) {
      dst.set(src.subarray((p * c + ch) * out, (p * c + ch + 1) * out), (ch * hw + p) * out);
    }
  }
  return dst;
}

/**
 * Symmetric per-channel int8 quantization of `w`, whose channel of element e is `channelOf(e)`:
 * s_c = max|w_c| / qmax (1 for an all-zero channel), q = clamp(round(w / s_c), −qmax, qmax).
 */
function quantizePerChannel(
  w: Float32Array,
  channels: number,
  channelOf: (e: number) => number,
  qmax: number,
): { q: Int8Array; scale: Float32Array } {
  const max = new Float64Array(channels);
  for (let e = 0; e < w.length; e++) {
    const c = channelOf(e);
    const a = Math.abs(w[e]);
    if (a > max[c]) max[c] = a;
  }
  const scale = new Float32Array(channels);
  for (let c = 0; c < channels; c++) scale[c] = max[c] > 0 ? max[c] / qmax : 1;
  const q = new Int8Array(w.length);
  for (let e = 0; e < w.length; e++) {
    const v = Math.round(w[e] / scale[channelOf(e)]);
    q[e] = v > qmax ? qmax : v < -qmax ? -qmax : v;
  }
  return { q, scale };
}

// ---------------------------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------------------------

interface Ctx {
  readonly g: GraphBuilder;
  /** How dense / conv weights are stored and computed (false: float32). */
  readonly dense: false | "integer" | "qdq";
  readonly conv: false | "integer" | "qdq" | "folded";
  /** Largest |q| of weights consumed by integer kernels / by float compute. */
  readonly qmaxInteger: number;
  readonly qmaxFloat: number;
}

/** x [N, in] · kernel [in, out] + bias. */
function dense(
  ctx: Ctx,
  x: string,
  name: string,
  kernel: Float32Array,
  bias: Float32Array,
  nin: number,
): string {
  const { g } = ctx;
  const nout = bias.length;
  const b = g.floatInit(`${name}/bias`, [nout], bias);
  if (!ctx.dense) {
    const k = g.floatInit(`${name}/kernel`, [nin, nout], kernel);
    return g.op("Gemm", [x, k, b]);
  }
  const qmax = ctx.dense === "integer" ? ctx.qmaxInteger : ctx.qmaxFloat;
  const { q, scale } = quantizePerChannel(kernel, nout, (e) => e % nout, qmax);
  const kq = g.int8Init(`${name}/kernel_quantized`, [nin, nout], q);
  const ks = g.floatInit(`${name}/kernel_scale`, [nout], scale);
  if (ctx.dense === "qdq") {
    const k = g.op("DequantizeLinear", [kq, ks], [attrInt("axis", 1)]);
    return g.op("Gemm", [x, k, b]);
  }
  const [xq, xs, xzp] = g.node("DynamicQuantizeLinear", [x], [], 3);
  const acc = g.op("MatMulInteger", [xq, kq, xzp]);
  const accF = g.op("Cast", [acc], [attrInt("to", DataType.FLOAT)]);
  const s = g.op("Mul", [xs, ks]);
  return g.op("Add", [g.op("Mul", [accF, s]), b]);
}

/** Conv (NCHW or NCW), stride 1, TF 'same' padding, + bias. */
function conv(
  ctx: Ctx,
  x: string,
  name: string,
  kernel: Float32Array,
  bias: Float32Array,
  k: { kh: number; kw: number; cin: number; cout: number; oneD: boolean },
): string {
  const { g } = ctx;
  const { kh, kw, cin, cout, oneD } = k;
  const w = toOIHW(kernel, kh, kw, cin, cout);
  const wDims = oneD ? [cout, cin, kw] : [cout, cin, kh, kw];
  const padH = [Math.floor((kh - 1) / 2), kh - 1 - Math.floor((kh - 1) / 2)];
  const padW = [Math.floor((kw - 1) / 2), kw - 1 - Math.floor((kw - 1) / 2)];
  const attrs = oneD
    ? [attrInts("kernel_shape", [kw]), attrInts("pads", [padW[0], padW[1]]), attrInts("strides", [1])]
    : [
        attrInts("kernel_shape", [kh, kw]),
        attrInts("pads", [padH[0], padW[0], padH[1], padW[1]]),
        attrInts("strides", [1, 1]),
      ];
  if (!ctx.conv) {
    const wi = g.floatInit(`${name}/kernel`, wDims, w);
    const b = g.floatInit(`${name}/bias`, [cout], bias);
    return g.op("Conv", [x, wi, b], attrs);
  }
  const per = w.length / cout;
  const qmax = ctx.conv === "integer" ? ctx.qmaxInteger : ctx.qmaxFloat;
  const { q, scale } = quantizePerChannel(w, cout, (e) => Math.floor(e / per), qmax);
  const wq = g.int8Init(`${name}/kernel_quantized`, wDims, q);
  if (ctx.conv === "qdq" || ctx.conv === "folded") {
    // Weight-only: W = s_c · q, then a float Conv. DequantizeLinear (per axis 0) is the standard form;
    // Cast · Mul is the same value, which onnxruntime's constant folding computes once at session load.
    let wf: string;
    if (ctx.conv === "qdq") {
      const ws = g.floatInit(`${name}/kernel_scale`, [cout], scale);
      wf = g.op("DequantizeLinear", [wq, ws], [attrInt("axis", 0)]);
    } else {
      const ws = g.floatInit(`${name}/kernel_scale`, [cout, ...wDims.slice(1).map(() => 1)], scale);
      wf = g.op("Mul", [g.op("Cast", [wq], [attrInt("to", DataType.FLOAT)]), ws]);
    }
    const b = g.floatInit(`${name}/bias`, [cout], bias);
    return g.op("Conv", [x, wf, b], attrs);
  }
  // Per-channel factors broadcast over [N, C, H, W] (or [N, C, T]): shape [C, 1, 1] (or [C, 1]).
  const bcast = oneD ? [cout, 1] : [cout, 1, 1];
  const ws = g.floatInit(`${name}/kernel_scale`, bcast, scale);
  const b = g.floatInit(`${name}/bias`, bcast, bias);
  const [xq, xs, xzp] = g.node("DynamicQuantizeLinear", [x], [], 3);
  const acc = g.op("ConvInteger", [xq, wq, xzp], attrs);
  const accF = g.op("Cast", [acc], [attrInt("to", DataType.FLOAT)]);
  const s = g.op("Mul", [xs, ws]);
  return g.op("Add", [g.op("Mul", [accF, s]), b]);
}

// ---------------------------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------------------------

function checkInputs(spec: ModelSpec, weights: Float32Array, opts: ExportOptions): WeightLayout {
  if (!spec || typeof spec !== "object" || !MODEL_KINDS.includes(spec.kind as ModelKind)) {
    fail(
      "E_EXPORT_FORMAT",
      `cannot export model kind '${String(spec?.kind)}' (expected ${MODEL_KINDS.join(", ")})`,
    );
  }
  if (opts.quantize !== undefined && opts.quantize !== "int8") {
    fail("E_EXPORT_FORMAT", `unsupported quantization '${String(opts.quantize)}' (expected int8)`);
  }
  if (opts.int8Form !== undefined && !INT8_FORMS.includes(opts.int8Form)) {
    fail(
      "E_EXPORT_FORMAT",
      `unsupported int8 form '${String(opts.int8Form)}' (expected ${INT8_FORMS.join(", ")})`,
    );
  }
  let layout: WeightLayout;
  try {
    layout = modelLayout(spec);
  } catch (e) {
    if (isFlotillaError(e)) fail("E_EXPORT_WEIGHTS", `invalid model spec: ${e.message}`, { cause: e });
    throw e;
  }
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
  return layout;
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

/**
 * The ONNX model (ModelProto bytes) of `spec` with `weights` (layout order of modelLayout(spec)).
 * Throws E_EXPORT_FORMAT (unknown kind or quantization) or E_EXPORT_WEIGHTS (invalid spec, wrong length,
 * non-finite weights).
 */
export function exportPresetLegacy(
  spec: ModelSpec,
  weights: Float32Array,
  opts: ExportOptions = {},
): Uint8Array {
  const layout = checkInputs(spec, weights, opts);
  const form = opts.quantize === "int8" ? (opts.int8Form ?? "mixed") : false;
  const ctx: Ctx = {
    g: new GraphBuilder(),
    dense: form === false ? false : form === "qdq" ? "qdq" : "integer",
    conv: form === false ? false : form === "mixed" ? "folded" : form,
    qmaxInteger: opts.reduceRange === false ? 127 : 63,
    qmaxFloat: 127,
  };
  const g = ctx.g;
  const tensor = (name: string): Float32Array => {
    const e = layout.entries.find((t) => t.name === name);
    if (!e) return fail("E_EXPORT_WEIGHTS", `layout has no tensor '${name}'`);
    return weights.subarray(e.offset, e.offset + e.size);
  };
  const shapeOf = (name: string): readonly number[] => layout.entries.find((t) => t.name === name)!.shape;
  const inputShape = [...spec.inputShape];
  const inputSize = inputShape.reduce((a, b) => a * b, 1);
  let x = INPUT_NAME;
  let features = inputSize;
  let denseFirst: ((k: Float32Array) => Float32Array) | null = null;

  if (spec.kind === "cnn" || spec.kind === "cnn1d") {
    const oneD = spec.kind === "cnn1d";
    x = g.op("Transpose", [x], [attrInts("perm", oneD ? [0, 2, 1] : [0, 3, 1, 2])]);
    let [h, w, c] = oneD ? [1, inputShape[0], inputShape[1]] : [inputShape[0], inputShape[1], inputShape[2]];
    const convNames = layout.entries.filter((e) => /^conv(1d)?_\d+\/kernel$/.test(e.name)).map((e) => e.name);
    convNames.forEach((kname, i) => {
      const name = kname.slice(0, -"/kernel".length);
      const ks = shapeOf(kname);
      const [kh, kw, cin, cout] = oneD ? [1, ks[0], ks[1], ks[2]] : [ks[0], ks[1], ks[2], ks[3]];
      x = conv(ctx, x, name, tensor(kname), tensor(`${name}/bias`), { kh, kw, cin, cout, oneD });
      x = g.op("Relu", [x]);
      const pool = oneD ? i < convNames.length - 1 : true;
      if (pool) {
        const kshape = oneD ? [2] : [2, 2];
        x = g.op("MaxPool", [x], [attrInts("kernel_shape", kshape), attrInts("strides", kshape)]);
        if (!oneD) h = Math.floor(h / 2);
        w = Math.floor(w / 2);
      }
      c = cout;
    });
    if (oneD) {
      x = g.op("GlobalAveragePool", [x]);
      features = c;
    } else {
      const hw = h * w;
      const nout = shapeOf("dense_0/kernel")[1];
      denseFirst = (k) => nhwcRowsToNchw(k, hw, c, nout);
      features = hw * c;
    }
    x = g.op("Flatten", [x], [attrInt("axis", 1)]);
  } else if (inputShape.length > 1) {
    x = g.op("Flatten", [x], [attrInt("axis", 1)]);
  }

  const denseNames = layout.entries
    .filter((e) => e.name.endsWith("/kernel") && !e.name.startsWith("conv"))
    .map((e) => e.name.slice(0, -"/kernel".length));
  denseNames.forEach((name, j) => {
    let k = tensor(`${name}/kernel`);
    if (j === 0 && denseFirst) k = denseFirst(k);
    const nin = shapeOf(`${name}/kernel`)[0];
    if (j === 0 && nin !== features) {
      fail("E_EXPORT_WEIGHTS", `${name}: kernel takes ${nin} features, the graph produces ${features}`);
    }
    x = dense(ctx, x, name, k, tensor(`${name}/bias`), nin);
    if (j < denseNames.length - 1) x = g.op("Relu", [x]);
  });

  let output: ValueInfoMsg;
  if (spec.kind === "autoencoder") {
    if (inputShape.length > 1) {
      x = g.op("Reshape", [x, g.int64Init("reconstruction_shape", [-1, ...inputShape])], [], RECONSTRUCTION);
    } else {
      x = g.op("Identity", [x], [], RECONSTRUCTION);
    }
    output = valueInfo(RECONSTRUCTION, ["N", ...inputShape]);
  } else {
    g.op("Softmax", [x], [attrInt("axis", -1)], PROBABILITIES);
    output = valueInfo(PROBABILITIES, ["N", spec.numClasses]);
  }

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
      input: [valueInfo(INPUT_NAME, ["N", ...inputShape])],
      output: [output],
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
