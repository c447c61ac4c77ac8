/**
 * Training kernels for the tfjs wasm backend.
 *
 * tfjs-backend-wasm 4.22 cannot train convolutional models: it has no Conv2DBackpropFilter,
 * DepthwiseConv2dNativeBackpropFilter or DepthwiseConv2dNativeBackpropInput; nor Embedding layers (no
 * UnsortedSegmentSum, Gather's gradient). Several kernels it does have are
 * far slower than the forward ops they differentiate (Conv2DBackpropInput, MaxPoolGrad, transposed
 * BatchMatMul), and its MaxPoolGrad drops the gradient of windows whose values tie. This module adds the
 * missing kernels and replaces the slow ones with compositions of the backend's XNNPACK kernels (one file per
 * kernel, each citing its derivation).
 */
import "@tensorflow/tfjs-backend-wasm"; // registers the wasm backend and its own kernels first
import { getKernel, registerKernel, unregisterKernel } from "@tensorflow/tfjs";
import type { KernelConfig } from "@tensorflow/tfjs";
import { batchMatMulConfig } from "./batch-mat-mul";
import { conv2dBackpropFilterConfig } from "./conv2d-backprop-filter";
import { conv2dBackpropInputConfig } from "./conv2d-backprop-input";
import { depthwiseBackpropFilterConfig, depthwiseBackpropInputConfig } from "./depthwise-conv2d-backprop";
import { WASM } from "./kernel-scope";
import { fusedMatMulConfig } from "./fused-mat-mul";
import { maxPoolGradConfig } from "./max-pool-grad";
import { unsortedSegmentSumConfig } from "./unsorted-segment-sum";

/** Kernels the wasm backend lacks: registered only while nothing else provides them. */
const MISSING: readonly KernelConfig[] = [
  conv2dBackpropFilterConfig,
  depthwiseBackpropInputConfig,
  depthwiseBackpropFilterConfig,
  unsortedSegmentSumConfig, // Gather's gradient (Embedding layers)
];

/** Kernels wasm has but that we replace; `make` receives the original (captured once, at first registration). */
const REPLACED: readonly { name: string; make: (original: KernelConfig) => KernelConfig }[] = [
  { name: "Conv2DBackpropInput", make: conv2dBackpropInputConfig },
  { name: "MaxPoolGrad", make: () => maxPoolGradConfig },
  { name: "BatchMatMul", make: batchMatMulConfig },
  { name: "_FusedMatMul", make: fusedMatMulConfig }, // Dense layers of the generic path
];

const ours = new Set<KernelConfig>();
const replacements = new Map<string, KernelConfig>();

function register(config: KernelConfig): void {
  registerKernel(config);
  ours.add(config);
}

/**
 * Registers the wasm training kernels. Idempotent: kernels that are already registered (by an earlier call or,
 * for the missing ones, by anyone) are left alone; a replaced kernel is swapped only while the registry still
 * holds another implementation. Safe to call before or after the wasm backend is initialised.
 */
export function registerWasmTrainingKernels(): void {
  for (const config of MISSING) {
    if (getKernel(config.kernelName, WASM) === undefined) register(config);
  }
  for (const { name, make } of REPLACED) {
    const current = getKernel(name, WASM);
    if (current !== undefined && ours.has(current)) continue;
    let replacement = replacements.get(name);
    if (replacement === undefined) {
      if (current === undefined) throw new Error(`the wasm backend has no ${name} kernel to replace`);
      replacement = make(current);
      replacements.set(name, replacement);
    }
    if (current !== undefined) unregisterKernel(name, WASM);
    register(replacement);
  }
}

/** True when every kernel this module provides is the one registered for wasm (for diagnostics and tests). */
export function wasmTrainingKernelsRegistered(): boolean {
  const names = [...MISSING.map((c) => c.kernelName), ...REPLACED.map((r) => r.name)];
  return names.every((name) => {
    const current = getKernel(name, WASM);
    return current !== undefined && ours.has(current);
  });
}
