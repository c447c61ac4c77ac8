/**
 * UnsortedSegmentSum for the wasm backend (which lacks it): the gradient of Gather, so of every Embedding layer.
 * A direct scatter-add over the wasm heap (TensorFlow's definition, tf.math.unsorted_segment_sum):
 *   out[s, ...] = Σ_{i : segmentIds[i] = s} x[i, ...],  s in [0, numSegments)
 * where segmentIds covers x's leading axes (x is viewed as [ids, inner]). Ids outside [0, numSegments) are dropped,
 * as TensorFlow does on CPU for negative ids.
 */
import { UnsortedSegmentSum } from "@tensorflow/tfjs";
import type { KernelConfig, KernelFunc, TensorInfo, UnsortedSegmentSumAttrs } from "@tensorflow/tfjs";
import { WASM, WasmKernelArgs, requireInputs } from "./kernel-scope";

function unsortedSegmentSum({ inputs, backend, attrs = {} }: WasmKernelArgs): TensorInfo {
  const { x, segmentIds } = requireInputs("UnsortedSegmentSum", inputs, "x", "segmentIds");
  const { numSegments } = attrs as unknown as UnsortedSegmentSumAttrs;
  if (x.dtype !== "float32" && x.dtype !== "int32") {
    throw new Error(`UnsortedSegmentSum (wasm): expects float32 or int32 values, got ${x.dtype}`);
  }
  const idsRank = segmentIds.shape.length;
  if (segmentIds.shape.some((d, i) => d !== x.shape[i])) {
    throw new Error(`UnsortedSegmentSum (wasm): segmentIds [${segmentIds.shape}] do not lead x [${x.shape}]`);
  }
  const innerShape = x.shape.slice(idsRank);
  const inner = innerShape.reduce((a, b) => a * b, 1);
  const count = segmentIds.shape.reduce((a, b) => a * b, 1);
  const out = backend.makeOutput([numSegments, ...innerShape], x.dtype);
  // Views are taken after makeOutput: an allocation may grow (and so detach) the wasm memory.
  const o = backend.typedArrayFromHeap(out) as Float32Array | Int32Array;
  const v = backend.typedArrayFromHeap(x) as Float32Array | Int32Array;
  const ids = backend.typedArrayFromHeap(segmentIds) as Int32Array;
  o.fill(0);
  for (let i = 0; i < count; i++) {
    const s = ids[i];
    if (!(s >= 0 && s < numSegments)) continue;
    const src = i * inner;
    const dst = s * inner;
    for (let j = 0; j < inner; j++) o[dst + j] += v[src + j];
  }
  return out;
}

export const unsortedSegmentSumConfig: KernelConfig = {
  kernelName: UnsortedSegmentSum,
  backendName: WASM,
  kernelFunc: unsortedSegmentSum as unknown as KernelFunc,
};
