/** Small tfjs helpers on the wasm backend: tensors written and read straight in wasm memory, a fast 2-D transpose. */
import * as tf from "@tensorflow/tfjs";
import { wasmBackend } from "./backend";

/** A float32 tensor whose values `write` stores directly into its (fresh, uninitialized) wasm memory. */
export function heapTensor<R extends tf.Rank>(
  shape: number[],
  write: (view: Float32Array) => void,
): tf.Tensor<R> {
  const be = wasmBackend();
  const info = be.makeOutput(shape, "float32");
  write(be.typedArrayFromHeap(info) as Float32Array);
  return tf.engine().makeTensorFromTensorInfo(info) as tf.Tensor<R>;
}

/** A read-only view of a float32 tensor's wasm memory (valid until the next wasm allocation). */
export function heapView(t: tf.Tensor): Float32Array {
  return wasmBackend().typedArrayFromHeap(t) as Float32Array;
}

/**
 * 2-D transpose. The wasm Transpose kernel is slow on large 2-D inputs (8.6 ms for 512×3136) but fast on 3-D ones
 * (1.6 ms), so [R, C] is viewed as [R, C/f, f] and permuted to [C/f, f, R], which is the same [C, R] data.
 */
export function transpose2d(x: tf.Tensor2D): tf.Tensor2D {
  const [r, c] = x.shape;
  if (r * c < 16384) return tf.transpose(x);
  let f = 0;
  for (const cand of [16, 32, 8, 64, 24, 48, 12, 20, 28, 40, 56, 10, 14, 7, 6, 5, 4, 3, 2]) {
    if (c % cand === 0 && c / cand > 1) {
      f = cand;
      break;
    }
  }
  if (f === 0) return tf.transpose(x);
  return tf.reshape(tf.transpose(tf.reshape(x, [r, c / f, f]), [1, 2, 0]), [c, r]);
}
