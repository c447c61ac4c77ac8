/**
 * Conv2DBackpropFilter for the wasm backend (which has no such kernel), as one forward Conv2D (XNNPACK).
 *
 * Forward (NHWC, dilation 1): y[b,oh,ow,co] = Σ_{kh,kw,ci} x[b, sh·oh + kh − pt, sw·ow + kw − pl, ci] · W[kh,kw,ci,co]
 * (x is zero outside its bounds; pt/pl = top/left padding). Hence
 *
 *   dW[kh,kw,ci,co] = Σ_{b,oh,ow} x[b, kh + sh·oh − pt, kw + sw·ow − pl, ci] · dy[b,oh,ow,co].
 *
 * Rename the axes so that the sum looks like a forward convolution:
 *   x̃[ci, h, w, b]    = x[b, h, w, ci]       (x̃ = transpose(x, [3,1,2,0]))
 *   d̃y[oh, ow, b, co] = dy[b, oh, ow, co]    (d̃y = transpose(dy, [1,2,0,3]))
 * then
 *   dW[kh,kw,ci,co] = Σ_{oh,ow,b} x̃[ci, kh + sh·oh − pt, kw + sw·ow − pl, b] · d̃y[oh, ow, b, co]
 *                   = conv2d(x̃, d̃y, stride 1, dilation (sh, sw), padding (pt, pl))[ci, kh, kw, co],
 * i.e. "dW = conv(xᵀ, dyᵀ)": a forward convolution over a batch of Ci images whose channels are the old batch,
 * with dyᵀ as an OH×OW filter dilated by the forward strides. Its output [Ci, KH, KW, Co] is transposed back to
 * the filter layout [KH, KW, Ci, Co]. The bottom/right padding is whatever makes the output exactly KH×KW:
 *   KH = H + pt + pb − (sh·(OH − 1) + 1) + 1  ⇒  pb = KH − 1 + sh·(OH − 1) − pt − (H − 1)
 * and when that is negative (trailing input rows the forward conv never read) those rows are sliced off instead.
 *
 * The MAC count equals the forward conv's; the transposes move only x and dy once.
 */
import { backend_util, Conv2DBackpropFilter } from "@tensorflow/tfjs";
import type { KernelConfig, KernelFunc, TensorInfo } from "@tensorflow/tfjs";
import {
  KernelScope,
  WASM,
  WasmKernelArgs,
  requireChannelsLast,
  requireInputs,
  requireUnitDilation,
  withScope,
} from "./kernel-scope";

/** Explicit NHWC padding in the form tfjs conv kernels accept. */
export type Padding4 = [[number, number], [number, number], [number, number], [number, number]];

/**
 * dW for an NHWC conv2d with input x [B,H,W,Ci], output gradient dy [B,OH,OW,Co], strides (sh, sw) and
 * top/left padding (pt, pl); returns [KH, KW, Ci, Co].
 */
export function conv2dFilterGradient(
  scope: KernelScope,
  x: TensorInfo,
  dy: TensorInfo,
  filterHeight: number,
  filterWidth: number,
  strides: [number, number],
  padTop: number,
  padLeft: number,
): TensorInfo {
  const [batch, inHeight, inWidth, inChannels] = x.shape;
  const [, outHeight, outWidth, outChannels] = dy.shape;
  const [sh, sw] = strides;
  const padBottom = filterHeight - 1 + sh * (outHeight - 1) - padTop - (inHeight - 1);
  const padRight = filterWidth - 1 + sw * (outWidth - 1) - padLeft - (inWidth - 1);

  let xT = scope.transpose(x, [3, 1, 2, 0]); // [Ci, H, W, B]
  if (padBottom < 0 || padRight < 0) {
    xT = scope.slice(
      xT,
      [0, 0, 0, 0],
      [inChannels, inHeight + Math.min(padBottom, 0), inWidth + Math.min(padRight, 0), batch],
    );
  }
  const dyT = scope.transpose(dy, [1, 2, 0, 3]); // [OH, OW, B, Co]
  const pad: Padding4 = [
    [0, 0],
    [padTop, Math.max(padBottom, 0)],
    [padLeft, Math.max(padRight, 0)],
    [0, 0],
  ];
  const grad = scope.run(
    "Conv2D",
    { x: xT, filter: dyT },
    { strides: [1, 1], pad, dataFormat: "NHWC", dilations: [sh, sw] },
  ); // [Ci, KH, KW, Co]
  if (grad.shape[1] !== filterHeight || grad.shape[2] !== filterWidth || grad.shape[3] !== outChannels) {
    throw new Error(`Conv2DBackpropFilter (wasm): internal shape mismatch, got [${grad.shape}]`);
  }
  return scope.transpose(grad, [1, 2, 0, 3]);
}

function conv2dBackpropFilter({ inputs, backend, attrs = {} }: WasmKernelArgs): TensorInfo {
  const { x, dy } = requireInputs("Conv2DBackpropFilter", inputs, "x", "dy");
  const { strides, pad, dataFormat, dimRoundingMode, filterShape, dilations } = attrs as unknown as {
    strides: number | [number, number];
    pad: "valid" | "same" | number | backend_util.ExplicitPadding;
    dataFormat?: string;
    dimRoundingMode?: "floor" | "round" | "ceil";
    filterShape: [number, number, number, number];
    dilations?: number | [number, number];
  };
  requireChannelsLast("Conv2DBackpropFilter", dataFormat);
  requireUnitDilation("Conv2DBackpropFilter", dilations);
  const info = backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filterShape,
    strides,
    1,
    pad,
    dimRoundingMode,
    false,
    "channelsLast",
  );
  if (info.outHeight !== dy.shape[1] || info.outWidth !== dy.shape[2]) {
    throw new Error(`Conv2DBackpropFilter (wasm): dy shape [${dy.shape}] does not match the conv output`);
  }
  return withScope(backend, (scope) =>
    conv2dFilterGradient(
      scope,
      x,
      dy,
      info.filterHeight,
      info.filterWidth,
      [info.strideHeight, info.strideWidth],
      info.padInfo.top,
      info.padInfo.left,
    ),
  );
}

export const conv2dBackpropFilterConfig: KernelConfig = {
  kernelName: Conv2DBackpropFilter,
  backendName: WASM,
  kernelFunc: conv2dBackpropFilter as unknown as KernelFunc,
};
