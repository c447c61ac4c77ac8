/**
 * Lowering of a layer graph (core/engine/graph-spec.ts) to ONNX nodes: one function per layer type, the op
 * mapping documented in onnx.ts and docs/compression.md. Every operator is in the ONNX operator spec
 * (onnx/onnx docs/Operators.md) at the version opset 17 selects.
 *
 * Layouts. A graph value is a Keras tensor [N, ...sample] (channels-last). Its ONNX form may be any permutation
 * of those axes: channels-first ([N, C, H, W], [N, C, T]) for Conv/pooling, time-major ([T, N, C]) for LSTM/GRU.
 * Each value keeps every form computed so far (`reps`, keyed by the permutation) and a primary one; a layer asks
 * for the form it needs and a Transpose is emitted only when that form does not exist yet, so a conv stack stays
 * channels-first and stacked recurrent layers stay time-major without transposes between them. Elementwise layers
 * (Activation, BatchNormalization, Add, Dropout) work in the primary form.
 *
 * Flatten of a channels-first value is lazy: a Dense layer reading it takes ONNX Flatten of the channels-first
 * tensor and permutes its kernel rows from Keras's channels-last flatten order instead (no Transpose); any other
 * reader gets the Keras order through Transpose + Flatten.
 */
import { fail } from "../errors";
import type { ActivationName, LayerSpec } from "../engine/graph-spec";
import {
  type Attribute,
  type GraphBuilder,
  attrFloat,
  attrFloats,
  attrInt,
  attrInts,
  attrStrings,
  lastRowsToFirst,
  quantizePerChannel,
  reorderGates,
  toOIHW,
  transposeGates,
} from "./onnx-builder";
import { DataType } from "./onnx-schema";

/** How weights are stored and computed in the exported model (see onnx.ts). */
export interface QuantPolicy {
  /** Dense layers: float, integer kernels (DynamicQuantizeLinear + MatMulInteger) or DequantizeLinear. */
  readonly dense: false | "integer" | "qdq";
  /** Convolutions: float, ConvInteger, DequantizeLinear, or int8 · scale folded to float at session load. */
  readonly conv: false | "integer" | "qdq" | "folded";
  /** Recurrent and embedding weights (no integer ONNX operator): float, DequantizeLinear, or folded. */
  readonly other: false | "qdq" | "folded";
  /** Largest |q| of weights consumed by integer kernels / by float compute. */
  readonly qmaxInteger: number;
  readonly qmaxFloat: number;
}

/** What the lowering reads from the graph: the shapes of every node and the weight tensors. */
export interface GraphFacts {
  /** Per-sample (Keras, channels-last) output shape of a layer, or of the model input. */
  shape(node: string): readonly number[];
  /** The tensor `<layer>/<weight>` of the weight layout, null when the layer has none of that name. */
  weight(layer: string, weight: string): Float32Array | null;
}

/** A graph value: its Keras per-sample shape and its ONNX forms. */
export interface Value {
  readonly shape: readonly number[];
  /** Permutation of the Keras axes (batch included) of the primary form. */
  readonly primary: readonly number[];
  /** ONNX value name of each form, keyed by its permutation (`key`), and "flat-first" (see file comment). */
  readonly reps: Map<string, string>;
  /** A Flatten of this channels-first-only value, materialized lazily. */
  readonly flatOf?: Value;
  /** Integer token ids (the model input of an Embedding model). */
  readonly ints?: boolean;
}

const key = (perm: readonly number[]): string => perm.join(",");
export const identity = (rank: number): number[] => Array.from({ length: rank }, (_, i) => i);
/** [0, r−1, 1, ..., r−2]: channels-first; identity for rank ≤ 2. */
const channelsFirst = (rank: number): number[] =>
  rank <= 2 ? identity(rank) : [0, rank - 1, ...identity(rank - 1).slice(1)];
/** [T, N, C] of a Keras [N, T, C] sequence. */
const TIME_MAJOR = [1, 0, 2];
const FLAT_FIRST = "flat-first";

export function valueOf(name: string, shape: readonly number[], ints = false): Value {
  const rank = shape.length + 1;
  return { shape, primary: identity(rank), reps: new Map([[key(identity(rank)), name]]), ints };
}

const prod = (a: readonly number[]): number => a.reduce((x, y) => x * y, 1);

/** TF 'same' padding of one axis (TF puts the odd pixel after): [before, after]. */
function samePads(
  input: number,
  output: number,
  k: number,
  stride: number,
  dilation: number,
): [number, number] {
  const total = Math.max((output - 1) * stride + (k - 1) * dilation + 1 - input, 0);
  const before = Math.floor(total / 2);
  return [before, total - before];
}

export class Lowering {
  constructor(
    private readonly g: GraphBuilder,
    private readonly q: QuantPolicy,
    private readonly facts: GraphFacts,
  ) {}

  // -------------------------------------------------------------------------------------------------------------
  // Forms
  // -------------------------------------------------------------------------------------------------------------

  /** The ONNX name of `v` in the form `perm` (a permutation of its Keras axes), transposing when needed. */
  get(v: Value, perm: readonly number[]): string {
    const k = key(perm);
    const hit = v.reps.get(k);
    if (hit !== undefined) return hit;
    let name: string;
    if (v.flatOf) {
      const src = v.flatOf;
      name = this.g.op("Flatten", [this.get(src, identity(src.shape.length + 1))], [attrInt("axis", 1)]);
    } else {
      const src = v.reps.get(key(v.primary))!;
      const inv: number[] = [];
      v.primary.forEach((a, i) => (inv[a] = i));
      name = this.g.op(
        "Transpose",
        [src],
        [
          attrInts(
            "perm",
            perm.map((a) => inv[a]),
          ),
        ],
      );
    }
    v.reps.set(k, name);
    return name;
  }

  /**
   * A form of `v` with the Keras channel axis last, for layers on the last axis (Dense, softmax): the primary form
   * when it has (channels-last, time-major), else channels-last.
   */
  private channelsLastForm(v: Value): readonly number[] {
    const p = this.primaryOf(v);
    return p[p.length - 1] === p.length - 1 ? p : identity(p.length);
  }

  /** The primary form's permutation of `v` (identity for a lazy flatten). */
  private primaryOf(v: Value): readonly number[] {
    return v.flatOf ? identity(2) : v.primary;
  }

  private out(name: string, shape: readonly number[], perm: readonly number[]): Value {
    return { shape, primary: perm, reps: new Map([[key(perm), name]]) };
  }

  // -------------------------------------------------------------------------------------------------------------
  // Weights
  // -------------------------------------------------------------------------------------------------------------

  private weight(layer: string, name: string): Float32Array {
    const w = this.facts.weight(layer, name);
    if (!w) return fail("E_EXPORT_WEIGHTS", `the weight layout has no tensor '${layer}/${name}'`);
    return w;
  }

  private check(layer: string, name: string, w: Float32Array, size: number): Float32Array {
    if (w.length !== size) {
      fail("E_EXPORT_WEIGHTS", `${layer}/${name} has ${w.length} values, the graph needs ${size}`);
    }
    return w;
  }

  /**
   * A weight-only int8 tensor (no integer operator reads it): DequantizeLinear (qdq) or Cast · Mul, which
   * onnxruntime's constant folding evaluates once at session load (folded). Channels on `axis` of `dims`.
   */
  private dequantized(
    name: string,
    w: Float32Array,
    dims: number[],
    axis: number,
    form: "qdq" | "folded",
  ): string {
    const channels = dims[axis];
    const inner = prod(dims.slice(axis + 1));
    const { q, scale } = quantizePerChannel(
      w,
      channels,
      (e) => Math.floor(e / inner) % channels,
      this.q.qmaxFloat,
    );
    const wq = this.g.int8Init(`${name}_quantized`, dims, q);
    if (form === "qdq") {
      const s = this.g.floatInit(`${name}_scale`, [channels], scale);
      return this.g.op("DequantizeLinear", [wq, s], [attrInt("axis", axis)]);
    }
    const s = this.g.floatInit(
      `${name}_scale`,
      dims.map((d, i) => (i === axis ? d : 1)),
      scale,
    );
    return this.g.op("Mul", [this.g.op("Cast", [wq], [attrInt("to", DataType.FLOAT)]), s]);
  }

  /** A weight tensor in float or, for int8 models, weight-only int8 (recurrent kernels, embeddings). */
  private otherWeight(name: string, w: Float32Array, dims: number[], axis: number): string {
    return this.q.other
      ? this.dequantized(name, w, dims, axis, this.q.other)
      : this.g.floatInit(name, dims, w);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Building blocks
  // -------------------------------------------------------------------------------------------------------------

  /** x [..., in] · kernel [in, out] (+ bias): Gemm for rank 2, MatMul + Add above. */
  private matmul(
    x: string,
    name: string,
    kernel: Float32Array,
    bias: Float32Array | null,
    nin: number,
    nout: number,
    rank: number,
  ): string {
    const g = this.g;
    const b = bias ? g.floatInit(`${name}/bias`, [nout], bias) : null;
    const float = (k: string): string => {
      if (rank === 2) return g.op("Gemm", b ? [x, k, b] : [x, k]);
      const y = g.op("MatMul", [x, k]);
      return b ? g.op("Add", [y, b]) : y;
    };
    if (!this.q.dense) return float(g.floatInit(`${name}/kernel`, [nin, nout], kernel));
    const qmax = this.q.dense === "integer" ? this.q.qmaxInteger : this.q.qmaxFloat;
    const { q, scale } = quantizePerChannel(kernel, nout, (e) => e % nout, qmax);
    const kq = g.int8Init(`${name}/kernel_quantized`, [nin, nout], q);
    const ks = g.floatInit(`${name}/kernel_scale`, [nout], scale);
    if (this.q.dense === "qdq") return float(g.op("DequantizeLinear", [kq, ks], [attrInt("axis", 1)]));
    // Dynamic quantization (onnxruntime's quantize_dynamic pattern): uint8 activations, int32 accumulators.
    const [xq, xs, xzp] = g.node("DynamicQuantizeLinear", [x], [], 3);
    const acc = g.op("MatMulInteger", [xq, kq, xzp]);
    const accF = g.op("Cast", [acc], [attrInt("to", DataType.FLOAT)]);
    const y = g.op("Mul", [accF, g.op("Mul", [xs, ks])]);
    return b ? g.op("Add", [y, b]) : y;
  }

  /** Conv on a channels-first x with an OIHW (OIW) float kernel `w` of dims `wDims` (+ bias). */
  private conv(
    x: string,
    name: string,
    w: Float32Array,
    wDims: number[],
    bias: Float32Array | null,
    attrs: Attribute[],
  ): string {
    const g = this.g;
    const cout = wDims[0];
    const form = this.q.conv;
    if (!form) {
      const wi = g.floatInit(`${name}/kernel`, wDims, w);
      return g.op("Conv", bias ? [x, wi, g.floatInit(`${name}/bias`, [cout], bias)] : [x, wi], attrs);
    }
    if (form !== "integer") {
      // Weight-only: W = s_c · q, then a float Conv.
      const wf = this.dequantized(`${name}/kernel`, w, wDims, 0, form);
      return g.op("Conv", bias ? [x, wf, g.floatInit(`${name}/bias`, [cout], bias)] : [x, wf], attrs);
    }
    const per = w.length / cout;
    const { q, scale } = quantizePerChannel(w, cout, (e) => Math.floor(e / per), this.q.qmaxInteger);
    const wq = g.int8Init(`${name}/kernel_quantized`, wDims, q);
    // Per-channel factors broadcast over [N, C, ...spatial]: shape [C, 1, ...].
    const bcast = [cout, ...wDims.slice(2).map(() => 1)];
    const ws = g.floatInit(`${name}/kernel_scale`, bcast, scale);
    const [xq, xs, xzp] = g.node("DynamicQuantizeLinear", [x], [], 3);
    const acc = g.op("ConvInteger", [xq, wq, xzp], attrs);
    const accF = g.op("Cast", [acc], [attrInt("to", DataType.FLOAT)]);
    const y = g.op("Mul", [accF, g.op("Mul", [xs, ws])]);
    return bias ? g.op("Add", [y, g.floatInit(`${name}/bias`, bcast, bias)]) : y;
  }

  /** An elementwise activation (any form) or softmax (last axis). */
  activation(v: Value, act: ActivationName | undefined, layer: string): Value {
    if (act === undefined || act === "linear") return v;
    const g = this.g;
    if (act === "softmax") {
      const perm = this.channelsLastForm(v);
      return this.out(g.op("Softmax", [this.get(v, perm)], [attrInt("axis", -1)]), v.shape, perm);
    }
    const perm = this.primaryOf(v);
    const x = this.get(v, perm);
    let y: string;
    switch (act) {
      case "relu":
        y = g.op("Relu", [x]);
        break;
      case "relu6":
        y = g.op("Clip", [
          x,
          g.floatInit("relu6_min", [], new Float32Array([0])),
          g.floatInit("relu6_max", [], new Float32Array([6])),
        ]);
        break;
      case "elu":
        y = g.op("Elu", [x], [attrFloat("alpha", 1)]);
        break;
      case "selu":
        // Klambauer et al. 2017, "Self-Normalizing Neural Networks": the constants Keras uses.
        y = g.op(
          "Selu",
          [x],
          [attrFloat("alpha", 1.6732632423543772), attrFloat("gamma", 1.0507009873554805)],
        );
        break;
      case "sigmoid":
        y = g.op("Sigmoid", [x]);
        break;
      case "hard_sigmoid":
        // tfjs-layers / Keras 2: clip(0.2·x + 0.5, 0, 1).
        y = g.op("HardSigmoid", [x], [attrFloat("alpha", 0.2), attrFloat("beta", 0.5)]);
        break;
      case "tanh":
        y = g.op("Tanh", [x]);
        break;
      case "softplus":
        y = g.op("Softplus", [x]);
        break;
      case "softsign":
        y = g.op("Softsign", [x]);
        break;
      case "swish":
        // x · sigmoid(x) (Ramachandran et al. 2017); ONNX has no Swish operator at opset 17.
        y = g.op("Mul", [x, g.op("Sigmoid", [x])]);
        break;
      default:
        return fail("E_EXPORT_LAYER", `${layer}: activation '${String(act)}' has no ONNX mapping`);
    }
    return this.out(y, v.shape, perm);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Layers
  // -------------------------------------------------------------------------------------------------------------

  /** The value of `layer` applied to its inputs. */
  layer(l: LayerSpec, inputs: readonly Value[]): Value {
    const outShape = this.facts.shape(l.name);
    const x = inputs[0];
    switch (l.type) {
      case "Dense":
        return this.dense(l, x, outShape);
      case "Conv1D":
      case "Conv2D":
      case "DepthwiseConv2D":
      case "SeparableConv2D":
        return this.convLayer(l, x, outShape);
      case "MaxPooling1D":
      case "MaxPooling2D":
      case "AveragePooling1D":
      case "AveragePooling2D":
        return this.pool(l, x, outShape);
      case "GlobalAveragePooling1D":
      case "GlobalAveragePooling2D": {
        const rank = x.shape.length + 1;
        const first = channelsFirst(rank);
        if (key(this.primaryOf(x)) === key(first) || x.reps.has(key(first))) {
          const gap = this.g.op("GlobalAveragePool", [this.get(x, first)]);
          return this.out(this.g.op("Flatten", [gap], [attrInt("axis", 1)]), outShape, identity(2));
        }
        const y = this.g.op(
          "ReduceMean",
          [this.get(x, identity(rank))],
          [attrInts("axes", identity(rank).slice(1, -1)), attrInt("keepdims", 0)],
        );
        return this.out(y, outShape, identity(2));
      }
      case "Flatten": {
        if (x.shape.length === 1) return x;
        const rank = x.shape.length + 1;
        if (!x.flatOf && !x.reps.has(key(identity(rank))) && key(x.primary) === key(channelsFirst(rank))) {
          return { shape: outShape, primary: identity(2), reps: new Map(), flatOf: x };
        }
        return this.out(
          this.g.op("Flatten", [this.get(x, identity(rank))], [attrInt("axis", 1)]),
          outShape,
          identity(2),
        );
      }
      case "Reshape": {
        const shape = this.g.int64Init(`${l.name}/shape`, [-1, ...outShape]);
        const y = this.g.op("Reshape", [this.get(x, identity(x.shape.length + 1)), shape]);
        return this.out(y, outShape, identity(outShape.length + 1));
      }
      case "Dropout":
        return x;
      case "BatchNormalization":
        return this.batchNorm(l, x);
      case "Activation":
        return this.activation(x, l.activation, l.name);
      case "LSTM":
      case "GRU":
        return this.recurrent(l, x, outShape);
      case "Embedding":
        return this.embedding(l, x, outShape);
      case "Add": {
        const perm = this.primaryOf(x);
        let y = this.get(x, perm);
        for (const o of inputs.slice(1)) y = this.g.op("Add", [y, this.get(o, perm)]);
        return this.out(y, outShape, perm);
      }
      case "Concatenate": {
        if (l.axis !== undefined && l.axis !== -1) {
          fail(
            "E_EXPORT_LAYER",
            `${l.name}: Concatenate on axis ${String(l.axis)} cannot be exported (only -1)`,
          );
        }
        const rank = outShape.length + 1;
        const perm = this.primaryOf(x).length === rank ? this.primaryOf(x) : identity(rank);
        const y = this.g.op(
          "Concat",
          inputs.map((v) => this.get(v, perm)),
          [attrInt("axis", perm.indexOf(rank - 1))],
        );
        return this.out(y, outShape, perm);
      }
      default:
        return fail(
          "E_EXPORT_LAYER",
          `layer '${(l as { name: string }).name}' of type '${String((l as { type: unknown }).type)}' cannot be exported to ONNX`,
        );
    }
  }

  private dense(l: Extract<LayerSpec, { type: "Dense" }>, x: Value, outShape: readonly number[]): Value {
    const nin = x.shape[x.shape.length - 1];
    const nout = l.units;
    let kernel = this.check(l.name, "kernel", this.weight(l.name, "kernel"), nin * nout);
    const bias = l.useBias === false ? null : this.check(l.name, "bias", this.weight(l.name, "bias"), nout);
    const rank = x.shape.length + 1;
    let input: string | undefined;
    if (x.flatOf && !x.reps.has(key(identity(2)))) {
      // Flatten of a channels-first tensor: read it in channels-first order, permute the kernel rows instead.
      let flat = x.reps.get(FLAT_FIRST);
      const src = x.flatOf;
      if (flat === undefined) {
        flat = this.g.op(
          "Flatten",
          [this.get(src, channelsFirst(src.shape.length + 1))],
          [attrInt("axis", 1)],
        );
        x.reps.set(FLAT_FIRST, flat);
      }
      const c = src.shape[src.shape.length - 1];
      kernel = lastRowsToFirst(kernel, nin / c, c, nout);
      input = flat;
    }
    const perm = this.channelsLastForm(x);
    if (!input) input = this.get(x, perm);
    const y = this.matmul(input, l.name, kernel, bias, nin, nout, rank);
    return this.activation(this.out(y, outShape, perm), l.activation, l.name);
  }

  private convLayer(
    l: Extract<LayerSpec, { type: "Conv1D" | "Conv2D" | "DepthwiseConv2D" | "SeparableConv2D" }>,
    x: Value,
    outShape: readonly number[],
  ): Value {
    const oneD = l.type === "Conv1D";
    const rank = x.shape.length + 1;
    if (rank !== (oneD ? 3 : 4)) {
      fail(
        "E_EXPORT_LAYER",
        `${l.name}: ${l.type} needs a ${oneD ? "[time, channels]" : "[h, w, c]"} input, got [${x.shape}]`,
      );
    }
    const perm = channelsFirst(rank);
    const input = this.get(x, perm);
    const spatialIn = x.shape.slice(0, -1);
    const spatialOut = outShape.slice(0, -1);
    const cin = x.shape[x.shape.length - 1];
    const ks: number[] = oneD ? [l.kernelSize as number] : [...(l.kernelSize as readonly number[])];
    const st: number[] = oneD
      ? [(l.strides as number | undefined) ?? 1]
      : [...((l.strides as readonly number[] | undefined) ?? [1, 1])];
    const dl: number[] =
      l.type === "Conv1D"
        ? [l.dilationRate ?? 1]
        : l.type === "Conv2D"
          ? [...(l.dilationRate ?? [1, 1])]
          : [1, 1];
    const pads =
      (l.padding ?? "valid") === "same"
        ? spatialIn.map((n, i) => samePads(n, spatialOut[i], ks[i], st[i], dl[i]))
        : spatialIn.map((): [number, number] => [0, 0]);
    const attrs = (
      group: number,
      kernel: number[],
      strides: number[],
      dil: number[],
      p: [number, number][],
    ) => [
      attrInts("kernel_shape", kernel),
      attrInts("strides", strides),
      attrInts("dilations", dil),
      attrInts("pads", [...p.map((a) => a[0]), ...p.map((a) => a[1])]),
      attrInt("group", group),
    ];
    const [kh, kw] = oneD ? [1, ks[0]] : [ks[0], ks[1]];
    const bias = (n: number) =>
      l.useBias === false ? null : this.check(l.name, "bias", this.weight(l.name, "bias"), n);
    let y: string;
    if (l.type === "Conv1D" || l.type === "Conv2D") {
      const cout = l.filters;
      const k = this.check(l.name, "kernel", this.weight(l.name, "kernel"), kh * kw * cin * cout);
      y = this.conv(
        input,
        l.name,
        toOIHW(k, kh, kw, cin, cout),
        [cout, cin, ...ks],
        bias(cout),
        attrs(1, ks, st, dl, pads),
      );
    } else {
      const mult = l.depthMultiplier ?? 1;
      const dk = this.check(
        l.name,
        "depthwise_kernel",
        this.weight(l.name, "depthwise_kernel"),
        kh * kw * cin * mult,
      );
      const w = toOIHW(dk, kh, kw, 1, cin * mult);
      if (l.type === "DepthwiseConv2D") {
        y = this.conv(
          input,
          l.name,
          w,
          [cin * mult, 1, kh, kw],
          bias(cin * mult),
          attrs(cin, ks, st, dl, pads),
        );
      } else {
        const cout = l.filters;
        const d = this.conv(
          input,
          `${l.name}/depthwise`,
          w,
          [cin * mult, 1, kh, kw],
          null,
          attrs(cin, ks, st, dl, pads),
        );
        const pk = this.check(
          l.name,
          "pointwise_kernel",
          this.weight(l.name, "pointwise_kernel"),
          cin * mult * cout,
        );
        const pw = toOIHW(pk, 1, 1, cin * mult, cout);
        y = this.conv(
          d,
          `${l.name}/pointwise`,
          pw,
          [cout, cin * mult, 1, 1],
          bias(cout),
          attrs(
            1,
            [1, 1],
            [1, 1],
            [1, 1],
            [
              [0, 0],
              [0, 0],
            ],
          ),
        );
      }
    }
    return this.activation(this.out(y, outShape, perm), l.activation, l.name);
  }

  private pool(
    l: Extract<
      LayerSpec,
      { type: "MaxPooling1D" | "MaxPooling2D" | "AveragePooling1D" | "AveragePooling2D" }
    >,
    x: Value,
    outShape: readonly number[],
  ): Value {
    const oneD = l.type.endsWith("1D");
    const rank = x.shape.length + 1;
    if (rank !== (oneD ? 3 : 4)) {
      fail(
        "E_EXPORT_LAYER",
        `${l.name}: ${l.type} needs a ${oneD ? "[time, channels]" : "[h, w, c]"} input, got [${x.shape}]`,
      );
    }
    const perm = channelsFirst(rank);
    const ks: number[] = oneD ? [l.poolSize as number] : [...(l.poolSize as readonly number[])];
    const st: number[] = oneD
      ? [(l.strides as number | undefined) ?? ks[0]]
      : [...((l.strides as readonly number[] | undefined) ?? ks)];
    const spatialIn = x.shape.slice(0, -1);
    const pads =
      (l.padding ?? "valid") === "same"
        ? spatialIn.map((n, i) => samePads(n, outShape[i], ks[i], st[i], 1))
        : spatialIn.map((): [number, number] => [0, 0]);
    const attrs = [
      attrInts("kernel_shape", ks),
      attrInts("strides", st),
      attrInts("pads", [...pads.map((a) => a[0]), ...pads.map((a) => a[1])]),
    ];
    const max = l.type.startsWith("Max");
    // TF averages over the window's valid cells only: count_include_pad 0.
    const y = this.g.op(
      max ? "MaxPool" : "AveragePool",
      [this.get(x, perm)],
      max ? attrs : [...attrs, attrInt("count_include_pad", 0)],
    );
    return this.out(y, outShape, perm);
  }

  private batchNorm(l: Extract<LayerSpec, { type: "BatchNormalization" }>, x: Value): Value {
    if (l.axis !== undefined && l.axis !== -1) {
      fail(
        "E_EXPORT_LAYER",
        `${l.name}: BatchNormalization on axis ${String(l.axis)} cannot be exported (only -1)`,
      );
    }
    const c = x.shape[x.shape.length - 1];
    const w = (name: string, on: boolean | undefined, fill: number): Float32Array =>
      on === false ? new Float32Array(c).fill(fill) : this.check(l.name, name, this.weight(l.name, name), c);
    const gamma = w("gamma", l.scale, 1);
    const beta = w("beta", l.center, 0);
    const mean = this.check(l.name, "moving_mean", this.weight(l.name, "moving_mean"), c);
    const variance = this.check(l.name, "moving_variance", this.weight(l.name, "moving_variance"), c);
    const eps = l.epsilon ?? 1e-3;
    const rank = x.shape.length + 1;
    const perm = this.primaryOf(x);
    const g = this.g;
    if (rank === 2 || perm[1] === rank - 1) {
      // Channels on axis 1: the ONNX operator (inference form, training_mode 0).
      const y = g.op(
        "BatchNormalization",
        [
          this.get(x, perm),
          g.floatInit(`${l.name}/gamma`, [c], gamma),
          g.floatInit(`${l.name}/beta`, [c], beta),
          g.floatInit(`${l.name}/moving_mean`, [c], mean),
          g.floatInit(`${l.name}/moving_variance`, [c], variance),
        ],
        [attrFloat("epsilon", eps)],
      );
      return this.out(y, x.shape, perm);
    }
    // Channels elsewhere (channels-last or time-major): y = x · a + b on the channel axis,
    // a = γ / sqrt(var + ε), b = β − mean · a (the same inference formula, folded).
    const a = new Float32Array(c);
    const b = new Float32Array(c);
    for (let i = 0; i < c; i++) {
      a[i] = gamma[i] / Math.sqrt(variance[i] + eps);
      b[i] = beta[i] - mean[i] * a[i];
    }
    const cAxis = perm.indexOf(rank - 1);
    const dims = perm.slice(cAxis).map((_, i) => (i === 0 ? c : 1));
    const y = g.op("Add", [
      g.op("Mul", [this.get(x, perm), g.floatInit(`${l.name}/scale`, dims, a)]),
      g.floatInit(`${l.name}/shift`, dims, b),
    ]);
    return this.out(y, x.shape, perm);
  }

  /** ONNX recurrent activation name (+ alpha/beta) of a Keras activation. */
  private rnnActivation(act: ActivationName, layer: string): { name: string; alpha?: number; beta?: number } {
    switch (act) {
      case "tanh":
        return { name: "Tanh" };
      case "sigmoid":
        return { name: "Sigmoid" };
      case "hard_sigmoid":
        return { name: "HardSigmoid", alpha: 0.2, beta: 0.5 };
      case "relu":
        return { name: "Relu" };
      case "linear":
        return { name: "Affine", alpha: 1, beta: 0 };
      case "elu":
        return { name: "Elu", alpha: 1 };
      case "softplus":
        return { name: "Softplus" };
      case "softsign":
        return { name: "Softsign" };
      default:
        return fail("E_EXPORT_LAYER", `${layer}: recurrent activation '${String(act)}' has no ONNX mapping`);
    }
  }

  /**
   * LSTM / GRU (ONNX LSTM-14, GRU-14, forward, layout 0 = time-major). Keras LSTM gates i, f, c, o become ONNX's
   * i, o, f, c; GRU gates z, r, h are in ONNX's order already. Kernels [in, g·u] transpose to W [1, g·u, in],
   * recurrent kernels to R [1, g·u, u]; the Keras bias is Wb (Rb = 0), or Wb and Rb for a reset-after GRU
   * (bias [2, 3u], ONNX linear_before_reset 1). Defaults as graph.ts: activation tanh, recurrent activation
   * sigmoid (Keras 2).
   */
  private recurrent(
    l: Extract<LayerSpec, { type: "LSTM" | "GRU" }>,
    x: Value,
    outShape: readonly number[],
  ): Value {
    if (x.shape.length !== 2)
      fail("E_EXPORT_LAYER", `${l.name}: ${l.type} needs a [time, features] input, got [${x.shape}]`);
    const g = this.g;
    const lstm = l.type === "LSTM";
    const gates = lstm ? 4 : 3;
    const order = lstm ? [0, 3, 1, 2] : [0, 1, 2];
    const u = l.units;
    const nin = x.shape[1];
    const kernel = this.check(l.name, "kernel", this.weight(l.name, "kernel"), nin * gates * u);
    const rk = this.check(l.name, "recurrent_kernel", this.weight(l.name, "recurrent_kernel"), u * gates * u);
    const resetAfter = !lstm && l.resetAfter === true;
    const W = this.otherWeight(
      `${l.name}/kernel`,
      transposeGates(kernel, nin, gates * u, order),
      [1, gates * u, nin],
      1,
    );
    const R = this.otherWeight(
      `${l.name}/recurrent_kernel`,
      transposeGates(rk, u, gates * u, order),
      [1, gates * u, u],
      1,
    );
    const inputs = [this.get(x, TIME_MAJOR), W, R];
    if (l.useBias !== false) {
      const bias = this.check(l.name, "bias", this.weight(l.name, "bias"), (resetAfter ? 2 : 1) * gates * u);
      const B = new Float32Array(2 * gates * u);
      if (resetAfter) {
        B.set(bias);
      } else {
        B.set(reorderGates(bias, order));
      }
      inputs.push(g.floatInit(`${l.name}/bias`, [1, 2 * gates * u], B));
    }
    const f = this.rnnActivation(l.recurrentActivation ?? "sigmoid", l.name);
    const act = this.rnnActivation(l.activation ?? "tanh", l.name);
    const acts = lstm ? [f, act, act] : [f, act];
    // onnxruntime reads activation_alpha/beta in order, one per activation that takes one.
    const alphas = acts.filter((a) => a.alpha !== undefined).map((a) => a.alpha!);
    const betas = acts.filter((a) => a.beta !== undefined).map((a) => a.beta!);
    const attrs: Attribute[] = [
      attrInt("hidden_size", u),
      attrStrings(
        "activations",
        acts.map((a) => a.name),
      ),
    ];
    if (alphas.length > 0) attrs.push(attrFloats("activation_alpha", alphas));
    if (betas.length > 0) attrs.push(attrFloats("activation_beta", betas));
    if (resetAfter) attrs.push(attrInt("linear_before_reset", 1));
    if (l.returnSequences) {
      // Y [T, 1, N, u] → [T, N, u]: the time-major form of the Keras [N, T, u].
      const [yAll] = g.node(l.type, inputs, attrs, 1);
      const y = g.op("Squeeze", [yAll, g.int64Init(`${l.name}/squeeze_axes`, [1])]);
      return this.out(y, outShape, TIME_MAJOR);
    }
    // Only Y_h [1, N, u] (the last step), → [N, u]; "" leaves the optional Y out.
    const [, last] = g.node(l.type, inputs, attrs, ["", `${l.name}/Y_h`]);
    const yh = g.op("Squeeze", [last, g.int64Init(`${l.name}/squeeze_axes`, [0])]);
    return this.out(yh, outShape, identity(2));
  }

  private embedding(
    l: Extract<LayerSpec, { type: "Embedding" }>,
    x: Value,
    outShape: readonly number[],
  ): Value {
    const table = this.check(
      l.name,
      "embeddings",
      this.weight(l.name, "embeddings"),
      l.inputDim * l.outputDim,
    );
    const t = this.otherWeight(`${l.name}/embeddings`, table, [l.inputDim, l.outputDim], 0);
    // The model's int32 token ids (graph.ts: an Embedding reads the input of an int32 model).
    if (!x.ints) fail("E_EXPORT_LAYER", `${l.name}: an Embedding reads the model's int32 ids`);
    const y = this.g.op("Gather", [t, this.get(x, identity(x.shape.length + 1))], [attrInt("axis", 0)]);
    return this.out(y, outShape, identity(outShape.length + 1));
  }
}
