/**
 * DepthwiseConv2dNativeBackpropInput and DepthwiseConv2dNativeBackpropFilter for the wasm backend (which lacks
 * both), each as one forward DepthwiseConv2dNative (XNNPACK) plus layout changes and a small reduction.
 *
 * Forward (NHWC, channel multiplier M, dilation 1), output channel c·M + q:
 *   y[b,oh,ow,c·M+q] = Σ_{kh,kw} x[b, sh·oh + kh − pt, sw·ow + kw − pl, c] · W[kh,kw,c,q]
 *
 * Input gradient. Exactly as for the dense conv (see conv2d-backprop-input.ts), with d̂y = dy with zeros inserted
 * for the strides and the rotated filter Wᶠ[k'h,k'w,c,q] = W[KH−1−k'h, KW−1−k'w, c, q]:
 *   dx[b,h,w,c] = Σ_q Σ_{k'h,k'w} d̂y[b, h − (KH−1−pt) + k'h, w − (KW−1−pl) + k'w, c·M+q] · Wᶠ[k'h,k'w,c,q]
 * The inner sum, for every output channel c·M+q separately, is a depthwise conv with multiplier 1 of d̂y
 * (C·M channels) with Wᶠ reshaped to [KH, KW, C·M, 1]; the sum over q is a Sum over the last axis of its
 * output seen as [B, H, W, C, M] (skipped when M = 1).
 *
 * Filter gradient:
 *   dW[kh,kw,c,q] = Σ_{b,oh,ow} x[b, kh + sh·oh − pt, kw + sw·ow − pl, c] · dy[b,oh,ow,c·M+q]
 * Fold the batch into the channels:
 *   x̃[0, h, w, b·C + c]    = x[b,h,w,c]          (transpose(x, [1,2,0,3]) viewed as [1, H, W, B·C])
 *   d̃y[oh, ow, b·C + c, q] = dy[b,oh,ow,c·M+q]   (transpose(dy, [1,2,0,3]) viewed as [OH, OW, B·C, M])
 * so that, for every (b, c), Σ_{oh,ow} x̃[0, kh + sh·oh − pt, kw + sw·ow − pl, b·C+c] · d̃y[oh,ow,b·C+c,q] is a
 * depthwise conv of x̃ with the OH×OW filter d̃y (multiplier M), stride 1 and dilation (sh, sw):
 *   dW[kh,kw,c,q] = Σ_b depthwiseConv2d(x̃, d̃y, dilation (sh, sw), padding (pt, pl))[0, kh, kw, (b·C+c)·M + q]
 * Its output [1, KH, KW, B·C·M] is viewed as [KH·KW, B, C·M] and summed over the batch axis. Bottom/right
 * padding is chosen so that the output is exactly KH×KW (a negative one crops x̃).
 *
 * Both use the same number of MACs as the forward depthwise conv (plus Σ over M or B).
 */
import {
  backend_util,
  DepthwiseConv2dNativeBackpropFilter,
  DepthwiseConv2dNativeBackpropInput,
} from "@tensorflow/tfjs";
import type {
  DepthwiseConv2dNativeBackpropFilterAttrs,
  DepthwiseConv2dNativeBackpropInputAttrs,
  KernelConfig,
  KernelFunc,
  TensorInfo,
} from "@tensorflow/tfjs";
import type { Padding4 } from "./conv2d-backprop-filter";
import { fullCorrelationOperand } from "./conv2d-backprop-input";
import { WASM, WasmKernelArgs, requireInputs, requireUnitDilation, withScope } from "./kernel-scope";

function depthwiseBackpropInput({ inputs, backend, attrs = {} }: WasmKernelArgs): TensorInfo {
  const { dy, filter } = requireInputs("DepthwiseConv2dNativeBackpropInput", inputs, "dy", "filter");
  const { inputShape, strides, pad, dimRoundingMode, dilations } =
    attrs as unknown as DepthwiseConv2dNativeBackpropInputAttrs;
  requireUnitDilation("DepthwiseConv2dNativeBackpropInput", dilations);
  const filterShape = filter.shape as [number, number, number, number];
  const info = backend_util.computeConv2DInfo(
    inputShape,
    filterShape,
    strides,
    1,
    pad,
    dimRoundingMode,
    true,
  );
  if (info.outHeight !== dy.shape[1] || info.outWidth !== dy.shape[2] || info.outChannels !== dy.shape[3]) {
    throw new Error(
      `DepthwiseConv2dNativeBackpropInput (wasm): dy shape [${dy.shape}] does not match the conv output`,
    );
  }
  const [kh, kw, channels, multiplier] = filterShape;
  return withScope(backend, (scope) => {
    const { input, pad: fullPad } = fullCorrelationOperand(
      scope,
      dy,
      info.inHeight,
      info.inWidth,
      kh,
      kw,
      [info.strideHeight, info.strideWidth],
      info.padInfo.top,
      info.padInfo.left,
    );
    const flipped = scope.run("Reverse", { x: filter }, { dims: [0, 1] });
    const perChannel = scope.reshape(flipped, [kh, kw, channels * multiplier, 1]);
    const grads = scope.run(
      "DepthwiseConv2dNative",
      { x: input, filter: perChannel },
      { strides: [1, 1], pad: fullPad, dilations: [1, 1] },
    ); // [B, H, W, C·M]
    const [batch, height, width] = grads.shape;
    if (height !== info.inHeight || width !== info.inWidth) {
      throw new Error(
        `DepthwiseConv2dNativeBackpropInput (wasm): internal shape mismatch, got [${grads.shape}]`,
      );
    }
    if (multiplier === 1) return scope.reshape(grads, inputShape.slice());
    const split = scope.reshape(grads, [batch, height, width, channels, multiplier]);
    return scope.run("Sum", { x: split }, { axis: [4], keepDims: false });
  });
}

function depthwiseBackpropFilter({ inputs, backend, attrs = {} }: WasmKernelArgs): TensorInfo {
  const { x, dy } = requireInputs("DepthwiseConv2dNativeBackpropFilter", inputs, "x", "dy");
  const { strides, pad, dimRoundingMode, dilations, filterShape } =
    attrs as unknown as DepthwiseConv2dNativeBackpropFilterAttrs;
  requireUnitDilation("DepthwiseConv2dNativeBackpropFilter", dilations);
  const xShape = x.shape as [number, number, number, number];
  const info = backend_util.computeConv2DInfo(xShape, filterShape, strides, 1, pad, dimRoundingMode, true);
  if (info.outHeight !== dy.shape[1] || info.outWidth !== dy.shape[2] || info.outChannels !== dy.shape[3]) {
    throw new Error(
      `DepthwiseConv2dNativeBackpropFilter (wasm): dy shape [${dy.shape}] does not match the conv output`,
    );
  }
  const [batch, inHeight, inWidth, channels] = xShape;
  const [kh, kw, , multiplier] = filterShape;
  const [, outHeight, outWidth] = dy.shape;
  const sh = info.strideHeight;
  const sw = info.strideWidth;
  const padTop = info.padInfo.top;
  const padLeft = info.padInfo.left;
  const padBottom = kh - 1 + sh * (outHeight - 1) - padTop - (inHeight - 1);
  const padRight = kw - 1 + sw * (outWidth - 1) - padLeft - (inWidth - 1);
  return withScope(backend, (scope) => {
    const xT = scope.transpose(x, [1, 2, 0, 3]); // [H, W, B, C]
    let xFolded = scope.reshape(xT, [1, inHeight, inWidth, batch * channels]);
    if (padBottom < 0 || padRight < 0) {
      xFolded = scope.slice(
        xFolded,
        [0, 0, 0, 0],
        [1, inHeight + Math.min(padBottom, 0), inWidth + Math.min(padRight, 0), batch * channels],
      );
    }
    const dyT = scope.transpose(dy, [1, 2, 0, 3]); // [OH, OW, B, C·M]
    const dyFolded = scope.reshape(dyT, [outHeight, outWidth, batch * channels, multiplier]);
    const fullPad: Padding4 = [
      [0, 0],
      [padTop, Math.max(padBottom, 0)],
      [padLeft, Math.max(padRight, 0)],
      [0, 0],
    ];
    const perImage = scope.run(
      "DepthwiseConv2dNative",
      { x: xFolded, filter: dyFolded },
      { strides: [1, 1], pad: fullPad, dilations: [sh, sw] },
    ); // [1, KH, KW, B·C·M]
    if (perImage.shape[1] !== kh || perImage.shape[2] !== kw) {
      throw new Error(
        `DepthwiseConv2dNativeBackpropFilter (wasm): internal shape mismatch, got [${perImage.shape}]`,
      );
    }
    if (batch === 1) return scope.reshape(perImage, filterShape.slice());
    const byBatch = scope.reshape(perImage, [kh * kw, batch, channels * multiplier]);
    const summed = scope.run("Sum", { x: byBatch }, { axis: [1], keepDims: false }); // [KH·KW, C·M]
    return scope.reshape(summed, filterShape.slice());
  });
}

export const depthwiseBackpropInputConfig: KernelConfig = {
  kernelName: DepthwiseConv2dNativeBackpropInput,
  backendName: WASM,
  kernelFunc: depthwiseBackpropInput as unknown as KernelFunc,
};

export const depthwiseBackpropFilterConfig: KernelConfig = {
  kernelName: DepthwiseConv2dNativeBackpropFilter,
  backendName: WASM,
  kernelFunc: depthwiseBackpropFilter as unknown as KernelFunc,
};
