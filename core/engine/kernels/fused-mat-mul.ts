/**
 * _FusedMatMul (matmul + bias + activation, what tfjs-layers' Dense runs) for the wasm backend, as the
 * BatchMatMul of `batch-mat-mul.ts` followed by the Add and activation kernels.
 *
 * The wasm _FusedMatMul hands its right operand (the layer's kernel) to XNNPACK, which packs it on every call with
 * a new buffer, i.e. every training step: 26-37 ms for the McMahan CNN's [3136, 512] dense kernel at batch 10
 * against 13-16 ms for the unfused composition through the planned BatchMatMul (measured on this machine, both
 * including the bias and relu). The composition computes the same values: act(op(A)·op(B) + bias).
 * It also fixes the original's prelu with transposeA, which is wrong on wasm 4.22 (tested against cpu).
 * Batched products, non-float32 inputs and unknown activations keep the original fused kernel.
 */
import { _FusedMatMul, getKernel } from "@tensorflow/tfjs";
import type { KernelConfig, KernelFunc, TensorInfo, _FusedMatMulAttrs } from "@tensorflow/tfjs";
import { WASM, WasmKernelArgs, requireInputs, withScope } from "./kernel-scope";

/** Activation → wasm kernel. */
const ACTIVATIONS: Readonly<Record<string, string>> = {
  relu: "Relu",
  relu6: "Relu6",
  elu: "Elu",
  sigmoid: "Sigmoid",
  leakyrelu: "LeakyRelu",
  prelu: "Prelu",
};

function fusedMatMul({ inputs, backend, attrs = {} }: WasmKernelArgs, original: KernelConfig): TensorInfo {
  const { a, b } = requireInputs("_FusedMatMul", inputs, "a", "b");
  const { transposeA, transposeB, activation, leakyreluAlpha } = attrs as unknown as _FusedMatMulAttrs;
  const act = activation ?? "linear";
  const twoD =
    a.dtype === "float32" &&
    b.dtype === "float32" &&
    a.shape.slice(0, -2).every((d) => d === 1) &&
    b.shape.slice(0, -2).every((d) => d === 1);
  const matMul = getKernel("BatchMatMul", WASM);
  if (!twoD || matMul === undefined || (act !== "linear" && ACTIVATIONS[act] === undefined)) {
    return withScope(backend, (scope) => scope.runConfig(original, inputs, attrs));
  }
  return withScope(backend, (scope) => {
    let y = scope.runConfig(matMul, { a, b }, { transposeA, transposeB });
    if (inputs.bias !== undefined) y = scope.run("Add", { a: y, b: inputs.bias });
    if (act === "prelu") {
      const alpha = inputs.preluActivationWeights;
      if (alpha === undefined) throw new Error("_FusedMatMul (wasm): prelu needs preluActivationWeights");
      y = scope.run("Prelu", { x: y, alpha });
    } else if (act !== "linear") {
      y = scope.run(ACTIVATIONS[act], { x: y }, act === "leakyrelu" ? { alpha: leakyreluAlpha } : {});
    }
    return y;
  });
}

/** The _FusedMatMul config wrapping `original` (used for the shapes the composition does not take). */
export function fusedMatMulConfig(original: KernelConfig): KernelConfig {
  return {
    kernelName: _FusedMatMul,
    backendName: WASM,
    setupFunc: original.setupFunc,
    kernelFunc: ((args: WasmKernelArgs) => fusedMatMul(args, original)) as unknown as KernelFunc,
  };
}
