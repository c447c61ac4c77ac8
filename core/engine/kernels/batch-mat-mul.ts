/**
 * BatchMatMul for the wasm backend, planned around how its XNNPACK path behaves.
 *
 * tfjs-backend-wasm sends only `A·B` with no transpose flags and batch 1 to XNNPACK (fully connected, the
 * right operand being the "weights"); any transposeA/transposeB goes to a scalar blocked triple loop. Backprop
 * of every dense layer hits exactly that: dW = xᵀ·dy (transposeA) and dx = dy·Wᵀ (transposeB). Measured for
 * the 3136→512 dense layer of the McMahan CNN at batch 10: 30 ms and 19 ms on the loop.
 * The XNNPACK path has its own trap: it packs the right operand into an operator cached under that buffer's id,
 * which is fast for fixed inference weights but, for weights that change every SGD step, costs far more than
 * the product: 36-50 ms to pack a fresh [3136,512] W (superlinear in size; [3136,64] takes 2.8 ms) against
 * 2-4 ms for the product itself with W already packed.
 *
 * So every 2-D product (batch 1, float32) is run on the XNNPACK path with operands prepared by the
 * memory-bound Transpose kernel, choosing between two equivalent plans, using (Xᵀ)ᵀ = X and (PQ)ᵀ = QᵀPᵀ:
 *   (P) C = op(A)·op(B)              right operand op(B) [K,N]: packed unless it is b itself, seen before
 *   (Q) C = (op(B)ᵀ·op(A)ᵀ)ᵀ          right operand op(A)ᵀ [K,M]: packed; plus transposing C (M·N)
 * with cost = floats transposed + PACK_COST × floats packed. For the dense layer at batch 10:
 *   forward x·W (fresh W): Q, i.e. (Wᵀ·xᵀ)ᵀ, packing the 31K-float xᵀ instead of the 1.6M-float W;
 *   dx = dy·Wᵀ: Q, dxᵀ = W·dyᵀ, W used in place; dW = xᵀ·dy: P, packing the 5K-float dy.
 * A right operand b used untransposed is remembered, so a weight matrix multiplied again (inference over many
 * batches) is then packed once by the original kernel and reused from its cache. The right operand is always
 * either the caller's `b` in its own shape (exactly as the original kernel uses it) or a buffer created here,
 * so the id-keyed cache can never see one buffer under two shapes because of this kernel.
 * Batched products (batch > 1) and non-float32 inputs keep the original kernel.
 */
import { BatchMatMul, util } from "@tensorflow/tfjs";
import type { BatchMatMulAttrs, KernelConfig, KernelFunc, TensorInfo } from "@tensorflow/tfjs";
import { WASM, WasmKernelArgs, requireInputs, withScope } from "./kernel-scope";

/** Cost of packing one float of a right operand, relative to transposing one float (measured: ~8-15×). */
const PACK_COST = 8;

/** Right operands (`b` buffers) already multiplied untransposed: XNNPACK keeps them packed until disposed. */
const packed = new WeakSet<object>();

function batchMatMul({ inputs, backend, attrs = {} }: WasmKernelArgs, original: KernelConfig): TensorInfo {
  const { a, b } = requireInputs("BatchMatMul", inputs, "a", "b");
  const { transposeA, transposeB } = attrs as unknown as BatchMatMulAttrs;
  const aRank = a.shape.length;
  const bRank = b.shape.length;
  const twoD =
    a.dtype === "float32" &&
    b.dtype === "float32" &&
    aRank >= 2 &&
    bRank >= 2 &&
    util.sizeFromShape(a.shape.slice(0, -2)) === 1 &&
    util.sizeFromShape(b.shape.slice(0, -2)) === 1;
  const [aRows, aCols] = a.shape.slice(-2);
  const [bRows, bCols] = b.shape.slice(-2);
  const m = transposeA ? aCols : aRows;
  const k = transposeA ? aRows : aCols;
  const n = transposeB ? bRows : bCols;
  if (!twoD || k !== (transposeB ? bCols : bRows)) {
    // Batched, non-float or invalid: the original kernel (which also reports shape errors).
    return withScope(backend, (scope) => scope.runConfig(original, inputs, attrs));
  }
  const reuse = !transposeB && packed.has(b.dataId);
  const costP = (transposeA ? m * k : 0) + (transposeB ? k * n : 0) + (reuse ? 0 : PACK_COST * k * n);
  const costQ = (transposeB ? 0 : k * n) + m * k + PACK_COST * m * k + m * n;
  if (!transposeB) packed.add(b.dataId);
  if (!transposeA && !transposeB && costP <= costQ) {
    return withScope(backend, (scope) => scope.runConfig(original, inputs, attrs));
  }
  const outer = aRank >= bRank ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
  const outShape = [...outer, m, n];
  const plain = { transposeA: false, transposeB: false };
  return withScope(backend, (scope) => {
    const a2 = scope.reshape(a, [aRows, aCols]);
    const b2 = scope.reshape(b, [bRows, bCols]);
    // A transpose created here; a copy where transposing a vector would only be a reshape of the same buffer.
    const fresh = (t: TensorInfo): TensorInfo => {
      const tT = scope.transpose(t, [1, 0]);
      return tT.dataId === t.dataId ? scope.run("Identity", { x: tT }) : tT;
    };
    let c: TensorInfo;
    if (costP <= costQ) {
      const left = transposeA ? scope.transpose(a2, [1, 0]) : a2; // op(A) [M, K]
      const right = transposeB ? fresh(b2) : b2; // op(B) [K, N]
      c = scope.runConfig(original, { a: left, b: right }, plain);
    } else {
      const left = transposeB ? b2 : scope.transpose(b2, [1, 0]); // op(B)ᵀ [N, K]
      const right = transposeA ? scope.run("Identity", { x: a2 }) : fresh(a2); // op(A)ᵀ [K, M]
      c = scope.transpose(scope.runConfig(original, { a: left, b: right }, plain), [1, 0]); // [M, N]
    }
    return scope.reshape(c, outShape);
  });
}

/** The BatchMatMul config wrapping `original` (the wasm kernel it replaces, used for the XNNPACK product). */
export function batchMatMulConfig(original: KernelConfig): KernelConfig {
  return {
    kernelName: BatchMatMul,
    backendName: WASM,
    setupFunc: original.setupFunc,
    kernelFunc: ((args: WasmKernelArgs) => batchMatMul(args, original)) as unknown as KernelFunc,
  };
}
