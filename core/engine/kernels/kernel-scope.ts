/**
 * Shared plumbing for the composite wasm kernels in this folder.
 *
 * A composite kernel runs other wasm kernels directly through their kernelFunc with the wasm backend (the way
 * tfjs backends compose kernels internally), not through tf ops: nothing is recorded on the gradient tape, no
 * engine tensors are created, and every intermediate is a backend-owned TensorInfo that the scope frees with
 * backend.disposeData once the kernel is done. Only the TensorInfo handed back to the engine survives.
 */
import { getKernel } from "@tensorflow/tfjs";
import type { KernelConfig, NamedAttrMap, NamedTensorInfoMap, TensorInfo } from "@tensorflow/tfjs";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";

export const WASM = "wasm";

/** Arguments the engine passes to a kernelFunc, typed for the wasm backend. */
export interface WasmKernelArgs {
  inputs: NamedTensorInfoMap;
  backend: BackendWasm;
  attrs?: NamedAttrMap;
}

/** Runs wasm kernels and remembers their outputs so they can be released together. */
export class KernelScope {
  private readonly temps: TensorInfo[] = [];

  constructor(readonly backend: BackendWasm) {}

  /** Runs the wasm kernel `name`; the output is freed by dispose() unless it is passed to keep(). */
  run(name: string, inputs: NamedTensorInfoMap, attrs: object = {}): TensorInfo {
    const kernel = getKernel(name, WASM);
    if (kernel === undefined)
      throw new Error(`wasm training kernels: the wasm backend has no ${name} kernel`);
    const out = kernel.kernelFunc({ inputs, backend: this.backend, attrs: attrs as NamedAttrMap });
    if (Array.isArray(out)) throw new Error(`wasm training kernels: ${name} returned several outputs`);
    this.temps.push(out);
    return out;
  }

  /** Runs a kernel config's kernelFunc directly (used to fall back to a replaced original kernel). */
  runConfig(config: KernelConfig, inputs: NamedTensorInfoMap, attrs: object = {}): TensorInfo {
    const out = config.kernelFunc({ inputs, backend: this.backend, attrs: attrs as NamedAttrMap });
    if (Array.isArray(out))
      throw new Error(`wasm training kernels: ${config.kernelName} returned several outputs`);
    this.temps.push(out);
    return out;
  }

  /** A view of x with another shape (shares x's buffer; the wasm Reshape kernel bumps its refcount). */
  reshape(x: TensorInfo, shape: number[]): TensorInfo {
    if (sameShape(x.shape, shape)) return x;
    return this.run("Reshape", { x }, { shape });
  }

  /**
   * transpose(x, perm), but a free reshape when the permutation only moves size-1 axes (the data order is
   * unchanged), where the wasm Transpose kernel would still copy the whole tensor.
   */
  transpose(x: TensorInfo, perm: number[]): TensorInfo {
    const outShape = perm.map((p) => x.shape[p]);
    const moved = perm.filter((p) => x.shape[p] !== 1);
    if (moved.every((p, i) => i === 0 || moved[i - 1] < p)) return this.reshape(x, outShape);
    return this.run("Transpose", { x }, { perm });
  }

  /** x[begin : begin + size] (size -1 = to the end), skipped when it would be the whole tensor. */
  slice(x: TensorInfo, begin: number[], size: number[]): TensorInfo {
    if (begin.every((b) => b === 0) && size.every((s, i) => s === -1 || s === x.shape[i])) return x;
    return this.run("Slice", { x }, { begin, size });
  }

  /** Keeps `out` alive past dispose() (it becomes the kernel's result) and returns it. */
  keep(out: TensorInfo): TensorInfo {
    for (let i = this.temps.length - 1; i >= 0; i--) {
      if (this.temps[i] === out) {
        this.temps.splice(i, 1);
        return out;
      }
    }
    // `out` is one of the kernel's inputs (e.g. a no-op reshape): hand out a new reference to its buffer.
    this.backend.incRef(out.dataId);
    return { dataId: out.dataId, shape: out.shape.slice(), dtype: out.dtype };
  }

  /** Releases every intermediate created by this scope (refcounted, so shared buffers stay alive). */
  dispose(): void {
    for (const t of this.temps) this.backend.disposeData(t.dataId);
    this.temps.length = 0;
  }
}

/** Runs `body` with a fresh scope, returns what it kept and always frees the rest (also on errors). */
export function withScope(backend: BackendWasm, body: (scope: KernelScope) => TensorInfo): TensorInfo {
  const scope = new KernelScope(backend);
  try {
    return scope.keep(body(scope));
  } finally {
    scope.dispose();
  }
}

/** The named inputs of a kernel call, checked to be present. */
export function requireInputs<K extends string>(
  kernel: string,
  inputs: NamedTensorInfoMap,
  ...names: K[]
): Record<K, TensorInfo> {
  const out = {} as Record<K, TensorInfo>;
  for (const name of names) {
    const t = inputs[name];
    if (t === undefined) throw new Error(`${kernel} (wasm): missing input '${name}'`);
    out[name] = t;
  }
  return out;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Normalises a stride/dilation attribute (number or pair) to a pair. */
export function pair(v: number | number[] | undefined, fallback = 1): [number, number] {
  if (v === undefined || v === null) return [fallback, fallback];
  if (typeof v === "number") return [v, v];
  return [v[0], v.length > 1 ? v[1] : v[0]];
}

/** Throws the error the gradient kernels use for an unsupported data format. */
export function requireChannelsLast(kernel: string, dataFormat: unknown): void {
  if (dataFormat !== undefined && dataFormat !== "NHWC" && dataFormat !== "channelsLast") {
    throw new Error(
      `${kernel} on the wasm backend supports only dataFormat 'NHWC', got '${String(dataFormat)}'`,
    );
  }
}

/** Throws when a dilated convolution's gradient is requested (the forward conv of the model must use dilation 1). */
export function requireUnitDilation(kernel: string, dilations: unknown): void {
  const [dh, dw] = pair(dilations as number | number[] | undefined);
  if (dh !== 1 || dw !== 1) {
    throw new Error(`${kernel} on the wasm backend supports only dilation 1, got dilations [${dh}, ${dw}]`);
  }
}
