/**
 * MaxPoolGrad for the wasm backend: a direct scatter over the wasm heap.
 *
 * The kernel tfjs-backend-wasm ships is slow (measured 9.4 ms for x [10,28,28,32], 2×2 stride 2, vs 0.19 ms for
 * the forward max pool) and wrong on ties: a window whose values are all equal (e.g. all zeros after a relu)
 * gets no gradient, where TensorFlow and the cpu backend route dy to the window's first maximum.
 * No other wasm kernel gives a correct fast composition either: Dilation2DBackpropInput with a flat (zero)
 * structuring element computes the right quantity in principle (max pooling is grayscale dilation by 0), but
 * its C++ initialises the running maximum with numeric_limits<float>::min() (= +1.2e-38, not the lowest float),
 * so every window whose values are all ≤ 0 sends its gradient to the window's first element instead of its max;
 * MaxPoolWithArgmax + ScatterNd is barely faster than the original (4.5 ms + 0.7 ms).
 *
 * So this kernel works on the backend's own buffers (like the wasm backend's JS kernels Slice and Fill do):
 *   dx[b, h, w, c] = Σ_{oh,ow : (h,w) = argmax of window (oh,ow)} dy[b, oh, ow, c]
 *   window (oh, ow) = {(sh·oh + i − pt, sw·ow + j − pl) in bounds : 0 ≤ i < KH, 0 ≤ j < KW}
 * where argmax is the first strictly greatest value in row-major window order (TensorFlow's rule; NaNs never
 * win). Overlapping windows accumulate. ~1.3 ms for the shape above (2×2 windows are unrolled).
 */
import { syncHeapViews } from "../wasm-threads";
import { backend_util, MaxPoolGrad } from "@tensorflow/tfjs";
import type { KernelConfig, KernelFunc, MaxPoolGradAttrs, TensorInfo } from "@tensorflow/tfjs";
import { WASM, WasmKernelArgs, requireInputs } from "./kernel-scope";

function maxPoolGrad({ inputs, backend, attrs = {} }: WasmKernelArgs): TensorInfo {
  const { dy, input } = requireInputs("MaxPoolGrad", inputs, "dy", "input");
  const { filterSize, strides, pad, dimRoundingMode } = attrs as unknown as MaxPoolGradAttrs;
  if (input.dtype !== "float32" || dy.dtype !== "float32") {
    throw new Error(`MaxPoolGrad (wasm): expects float32 tensors, got ${input.dtype} and ${dy.dtype}`);
  }
  const info = backend_util.computePool2DInfo(
    input.shape as [number, number, number, number],
    filterSize,
    strides,
    1,
    pad,
    dimRoundingMode,
  );
  const { batchSize, inHeight, inWidth, inChannels, outHeight, outWidth, strideHeight, strideWidth } = info;
  if (outHeight !== dy.shape[1] || outWidth !== dy.shape[2]) {
    throw new Error(`MaxPoolGrad (wasm): dy shape [${dy.shape}] does not match the pool output`);
  }
  const padTop = info.padInfo.top;
  const padLeft = info.padInfo.left;
  const channels = inChannels;

  const out = backend.makeOutput(input.shape.slice(), "float32");
  // Views are taken after makeOutput: an allocation may grow (and so detach) the wasm memory; with threads the
  // memory is shared and a growth leaves the module's views short instead (syncHeapViews refreshes them).
  syncHeapViews(backend.wasm);
  const dx = backend.typedArrayFromHeap(out) as Float32Array;
  const x = backend.typedArrayFromHeap(input) as Float32Array;
  const g = backend.typedArrayFromHeap(dy) as Float32Array;
  dx.fill(0);
  const rowStride = inWidth * channels;
  let dyIndex = 0;
  for (let b = 0; b < batchSize; b++) {
    const imageBase = b * inHeight * rowStride;
    for (let oh = 0; oh < outHeight; oh++) {
      const h0 = oh * strideHeight - padTop;
      const hStart = Math.max(0, h0);
      const hEnd = Math.min(inHeight, h0 + info.filterHeight);
      for (let ow = 0; ow < outWidth; ow++, dyIndex += channels) {
        const w0 = ow * strideWidth - padLeft;
        const wStart = Math.max(0, w0);
        const wEnd = Math.min(inWidth, w0 + info.filterWidth);
        const first = imageBase + hStart * rowStride + wStart * channels;
        if (hEnd - hStart === 2 && wEnd - wStart === 2) {
          // The common 2×2 window, unrolled (same first-strict-maximum rule as the general loop below).
          for (let c = 0; c < channels; c++) {
            const i00 = first + c;
            const i01 = i00 + channels;
            const i10 = i00 + rowStride;
            const i11 = i10 + channels;
            let at = x[i00] > -Infinity ? i00 : -1;
            let max = at >= 0 ? x[i00] : -Infinity;
            if (x[i01] > max) {
              max = x[i01];
              at = i01;
            }
            if (x[i10] > max) {
              max = x[i10];
              at = i10;
            }
            if (x[i11] > max) at = i11;
            if (at >= 0) dx[at] += g[dyIndex + c];
          }
          continue;
        }
        for (let c = 0; c < channels; c++) {
          let at = -1;
          let max = -Infinity;
          for (let h = hStart; h < hEnd; h++) {
            let i = imageBase + h * rowStride + wStart * channels + c;
            for (let w = wStart; w < wEnd; w++, i += channels) {
              if (x[i] > max) {
                max = x[i];
                at = i;
              }
            }
          }
          if (at >= 0) dx[at] += g[dyIndex + c];
        }
      }
    }
  }
  return out;
}

export const maxPoolGradConfig: KernelConfig = {
  kernelName: MaxPoolGrad,
  backendName: WASM,
  kernelFunc: maxPoolGrad as unknown as KernelFunc,
};
