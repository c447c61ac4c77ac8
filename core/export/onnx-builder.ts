/**
 * Building blocks of the ONNX exporter (onnx.ts): plain objects shaped like the messages of the ONNX schema
 * (onnx-schema.ts; field names as in onnx.proto3, for protobufjs `fromObject`), a graph builder that names nodes
 * and initializers, weight re-layouts from Keras to ONNX, and symmetric per-channel int8 quantization.
 */
import * as os from "node:os";
import { AttrType, DataType } from "./onnx-schema";

export interface Attribute {
  name: string;
  type: number;
  i?: number;
  f?: number;
  ints?: number[];
  floats?: number[];
  strings?: Uint8Array[];
}

export interface NodeMsg {
  input: string[];
  output: string[];
  name: string;
  op_type: string;
  attribute: Attribute[];
}

export interface TensorMsg {
  name: string;
  dims: number[];
  data_type: number;
  raw_data: Uint8Array;
}

export interface ValueInfoMsg {
  name: string;
  type: {
    tensor_type: { elem_type: number; shape: { dim: ({ dim_value: number } | { dim_param: string })[] } };
  };
}

const LITTLE_ENDIAN = os.endianness() === "LE";

/** Little-endian bytes of a typed array (TensorProto.raw_data is always little-endian). */
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

export const attrInt = (name: string, i: number): Attribute => ({ name, type: AttrType.INT, i });
export const attrInts = (name: string, ints: number[]): Attribute => ({ name, type: AttrType.INTS, ints });
export const attrFloat = (name: string, f: number): Attribute => ({ name, type: AttrType.FLOAT, f });
export const attrFloats = (name: string, floats: number[]): Attribute => ({
  name,
  type: AttrType.FLOATS,
  floats,
});
export const attrStrings = (name: string, strings: string[]): Attribute => ({
  name,
  type: AttrType.STRINGS,
  strings: strings.map((s) => new TextEncoder().encode(s)),
});

export class GraphBuilder {
  readonly nodes: NodeMsg[] = [];
  readonly initializers: TensorMsg[] = [];
  private count = 0;
  private readonly names = new Set<string>();

  /** Adds a node; returns its output names (fresh unless given; "" marks an unused optional output). */
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

  /** A unique initializer name (`name`, else `name_1`, ...). */
  private fresh(name: string): string {
    let n = name;
    for (let k = 1; this.names.has(n); k++) n = `${name}_${k}`;
    this.names.add(n);
    return n;
  }

  floatInit(name: string, dims: number[], data: Float32Array): string {
    const n = this.fresh(name);
    this.initializers.push({ name: n, dims, data_type: DataType.FLOAT, raw_data: bytesOf(data) });
    return n;
  }

  int8Init(name: string, dims: number[], data: Int8Array): string {
    const n = this.fresh(name);
    this.initializers.push({ name: n, dims, data_type: DataType.INT8, raw_data: bytesOf(data) });
    return n;
  }

  int64Init(name: string, values: number[]): string {
    const n = this.fresh(name);
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.initializers.push({
      name: n,
      dims: [values.length],
      data_type: DataType.INT64,
      raw_data: bytesOf(data),
    });
    return n;
  }

  /** Renames a value produced by a node (the graph's output gets its public name). */
  rename(from: string, to: string): void {
    for (const node of this.nodes) {
      node.input = node.input.map((s) => (s === from ? to : s));
      node.output = node.output.map((s) => (s === from ? to : s));
    }
  }
}

export function valueInfo(
  name: string,
  dims: (number | string)[],
  elemType: number = DataType.FLOAT,
): ValueInfoMsg {
  return {
    name,
    type: {
      tensor_type: {
        elem_type: elemType,
        shape: { dim: dims.map((d) => (typeof d === "number" ? { dim_value: d } : { dim_param: d })) },
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Weights: Keras layout → ONNX layout
// ---------------------------------------------------------------------------------------------------------------

/**
 * Conv kernel [kh, kw, cin, cout] (Keras; Conv1D: kh = 1, [k, cin, cout]; DepthwiseConv2D [kh, kw, c, mult] is
 * [kh, kw, 1, c·mult] since its output channel is c·mult + m) → [cout, cin, kh, kw] (ONNX OIHW).
 */
export function toOIHW(src: Float32Array, kh: number, kw: number, cin: number, cout: number): Float32Array {
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

/** Rows of a dense kernel [p·c, out] from channels-last flatten order (p·c + ch) to channels-first (ch·p + p). */
export function lastRowsToFirst(src: Float32Array, positions: number, c: number, out: number): Float32Array {
  const dst = new Float32Array(src.length);
  for (let p = 0; p < positions; p++) {
    for (let ch = 0; ch < c; ch++) {
      dst.set(src.subarray((p * c + ch) * out, (p * c + ch + 1) * out), (ch * positions + p) * out);
    }
  }
  return dst;
}

/**
 * A matrix [rows, cols] transposed to [cols, rows], with its columns regrouped: `gates` blocks of `cols / gates`
 * columns taken in the order `order` (Keras recurrent kernels [in, g·u] → ONNX W/R [g·u, in]).
 */
export function transposeGates(
  src: Float32Array,
  rows: number,
  cols: number,
  order: readonly number[],
): Float32Array {
  const u = cols / order.length;
  const dst = new Float32Array(src.length);
  order.forEach((g, slot) => {
    for (let j = 0; j < u; j++) {
      const col = g * u + j;
      const dr = slot * u + j;
      for (let r = 0; r < rows; r++) dst[dr * rows + r] = src[r * cols + col];
    }
  });
  return dst;
}

/** A bias [g·u] with its gate blocks in the order `order`. */
export function reorderGates(src: Float32Array, order: readonly number[]): Float32Array {
  const u = src.length / order.length;
  const dst = new Float32Array(src.length);
  order.forEach((g, slot) => dst.set(src.subarray(g * u, (g + 1) * u), slot * u));
  return dst;
}

// ---------------------------------------------------------------------------------------------------------------
// Symmetric per-channel int8 quantization
// ---------------------------------------------------------------------------------------------------------------

/**
 * Symmetric per-channel int8 quantization of `w`, whose channel of element e is `channelOf(e)`:
 * s_c = max|w_c| / qmax (1 for an all-zero channel), q = clamp(round(w / s_c), −qmax, qmax).
 */
export function quantizePerChannel(
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
