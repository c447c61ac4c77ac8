/**
 * The convolution and max-pool gradients of `network.ts`'s backward pass (stride-1 'same' NHWC convolutions with
 * relu and max-pooling), built from forward kernels XNNPACK has and from JS passes over wasm memory.
 */
import * as tf from "@tensorflow/tfjs";
import { parallelIf, wasmBackend } from "./backend";
import { heapTensor, heapView } from "./wasm-tensors";

/** "same" padding of a stride-1 conv: [before, after] for a kernel of size k. */
function samePad(k: number): [number, number] {
  const before = Math.floor((k - 1) / 2);
  return [before, k - 1 - before];
}

/**
 * dW of a stride-1 'same' NHWC conv from the input as x̃ [Cin, H, W, B] and dz as d̃z [H, W, B, Cout]:
 *   dW[kh,kw,ci,co] = Σ_{b,h,w} x[b, h+kh−pt, w+kw−pl, ci] · dz[b,h,w,co]
 * which is a forward convolution of the "image batch" x̃[ci, h, w, b] with the "filter" d̃z[h, w, b, co],
 * padded by (pt, pb) × (pl, pr); its output [Cin, kh, kw, Cout] is transposed to [kh, kw, Cin, Cout].
 */
export function convFilterGrad(inputC: tf.Tensor4D, dzT: tf.Tensor4D, kh: number, kw: number): tf.Tensor4D {
  const [pt, pb] = samePad(kh);
  const [pl, pr] = samePad(kw);
  // As many operations as the forward convolution: Cin·KH·KW·Cout outputs, each a sum over B·H·W.
  const [cin, h, w, b] = inputC.shape;
  const flops = 2 * cin * kh * kw * dzT.shape[3] * h * w * b;
  const g = parallelIf(flops, () =>
    tf.conv2d(inputC, dzT, 1, [
      [0, 0],
      [pt, pb],
      [pl, pr],
      [0, 0],
    ]),
  );
  return tf.transpose(g, [1, 2, 0, 3]);
}

/**
 * dx of a stride-1 'same' NHWC conv: the full correlation of dz with the filter flipped in space and with its
 * channel axes swapped, Wᶠ[kh',kw',co,ci] = W[KH−1−kh', KW−1−kw', ci, co], padded by (KH−1−pt, KH−1−pb).
 * The flip is one JS pass over wasm memory (the wasm Reverse kernel takes ~4 ms for a 5×5×32×64 filter).
 */
export function convInputGrad(dz: tf.Tensor4D, filter: tf.Tensor4D): tf.Tensor4D {
  const [kh, kw, ci, co] = filter.shape;
  const flipped = heapTensor<tf.Rank.R4>([kh, kw, co, ci], (v) => {
    const f = heapView(filter);
    const taps = kh * kw;
    for (let t = 0; t < taps; t++) {
      const s = (taps - 1 - t) * ci * co;
      const d = t * ci * co;
      for (let i = 0; i < ci; i++) for (let o = 0; o < co; o++) v[d + o * ci + i] = f[s + i * co + o];
    }
  });
  const [pt, pb] = samePad(kh);
  const [pl, pr] = samePad(kw);
  const flops = 2 * dz.shape[0] * dz.shape[1] * dz.shape[2] * kh * kw * ci * co;
  return parallelIf(flops, () =>
    tf.conv2d(dz, flipped, 1, [
      [0, 0],
      [kh - 1 - pt, kh - 1 - pb],
      [kw - 1 - pl, kw - 1 - pr],
      [0, 0],
    ]),
  );
}

/**
 * Backward of out = maxPool(relu(z)) (window = stride = ph × pw, 'valid'), given act = relu(z), out and dOut:
 * each window routes dOut to its (first, row-major) maximum when that maximum is > 0 (where relu passes the
 * gradient), zero elsewhere. One JS pass over wasm memory (~6× faster than the wasm MaxPoolGrad kernel) that
 * writes dz in the two layouts the conv gradients take, so neither needs a Transpose kernel:
 * NHWC [B, H, W, C] (input gradient; only when `nhwc`) and [H, W, B, C] (filter gradient), and that also sums
 * the bias gradient Σ_{b,h,w} dz.
 */
export function maxPoolReluBackward(
  act: tf.Tensor4D,
  out: tf.Tensor4D,
  dOut: tf.Tensor4D,
  ph: number,
  pw: number,
  nhwc: boolean,
): { dz: tf.Tensor4D | null; dzT: tf.Tensor4D; db: tf.Tensor1D } {
  const [nb, h, w, c] = act.shape;
  const [, oh, ow] = out.shape;
  const db = new Float32Array(c);
  const be = wasmBackend();
  const dzInfo = nhwc ? be.makeOutput([nb, h, w, c], "float32") : null;
  const dzTInfo = be.makeOutput([h, w, nb, c], "float32");
  // Views only after the allocations (an allocation may grow, and so detach, the wasm memory; heapView refreshes
  // the module's views when a shared memory grew).
  const a = heapView(act);
  const p = heapView(out);
  const d = heapView(dOut);
  const g = dzInfo ? (be.typedArrayFromHeap(dzInfo) as Float32Array) : null;
  const gT = be.typedArrayFromHeap(dzTInfo) as Float32Array;
  g?.fill(0);
  gT.fill(0);
  if (ph === 2 && pw === 2) {
    maxPool2x2Backward(a, p, d, g, gT, db, nb, h, w, c, oh, ow);
  } else {
    maxPoolGenericBackward(a, p, d, g, gT, db, nb, h, w, c, oh, ow, ph, pw);
  }
  const engine = tf.engine();
  return {
    dz: dzInfo ? (engine.makeTensorFromTensorInfo(dzInfo) as tf.Tensor4D) : null,
    dzT: engine.makeTensorFromTensorInfo(dzTInfo) as tf.Tensor4D,
    db: tf.tensor1d(db),
  };
}

/** maxPoolReluBackward's loop for 2×2 windows, unrolled (the McMahan CNN's case; ~30% faster than generic). */
function maxPool2x2Backward(
  a: Float32Array,
  p: Float32Array,
  d: Float32Array,
  g: Float32Array | null,
  gT: Float32Array,
  db: Float32Array,
  nb: number,
  h: number,
  w: number,
  c: number,
  oh: number,
  ow: number,
): void {
  const rowA = w * c; // next row in act (NHWC)
  const colT = nb * c; // next column in dzT ([H, W, B, C])
  const rowT = w * colT; // next row in dzT
  for (let b = 0; b < nb; b++) {
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        const po = ((b * oh + i) * ow + j) * c;
        const baseA = ((b * h + 2 * i) * w + 2 * j) * c;
        const baseT = 2 * i * rowT + 2 * j * colT + b * c;
        for (let ch = 0; ch < c; ch++) {
          const m = p[po + ch];
          if (!(m > 0)) continue;
          const gv = d[po + ch];
          db[ch] += gv;
          let oa = baseA + ch;
          let ot = baseT + ch;
          if (a[oa] !== m) {
            if (a[oa + c] === m) {
              oa += c;
              ot += colT;
            } else if (a[oa + rowA] === m) {
              oa += rowA;
              ot += rowT;
            } else {
              oa += rowA + c;
              ot += rowT + colT;
            }
          }
          if (g !== null) g[oa] = gv;
          gT[ot] = gv;
        }
      }
    }
  }
}

/** maxPoolReluBackward's loop for any window. */
function maxPoolGenericBackward(
  a: Float32Array,
  p: Float32Array,
  d: Float32Array,
  g: Float32Array | null,
  gT: Float32Array,
  db: Float32Array,
  nb: number,
  h: number,
  w: number,
  c: number,
  oh: number,
  ow: number,
  ph: number,
  pw: number,
): void {
  // Window cell k: offset in act (NHWC), row and column offsets.
  const cells = ph * pw;
  const offA = new Int32Array(cells);
  const du = new Int32Array(cells);
  const dv = new Int32Array(cells);
  for (let u = 0, k = 0; u < ph; u++) {
    for (let v = 0; v < pw; v++, k++) {
      offA[k] = (u * w + v) * c;
      du[k] = u;
      dv[k] = v;
    }
  }
  for (let b = 0; b < nb; b++) {
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        const po = ((b * oh + i) * ow + j) * c;
        const base = ((b * h + i * ph) * w + j * pw) * c;
        for (let ch = 0; ch < c; ch++) {
          const m = p[po + ch];
          if (!(m > 0)) continue;
          const gv = d[po + ch];
          db[ch] += gv;
          let k = 0;
          while (k < cells - 1 && a[base + offA[k] + ch] !== m) k++;
          if (g !== null) g[base + offA[k] + ch] = gv;
          gT[(((i * ph + du[k]) * w + j * pw + dv[k]) * nb + b) * c + ch] = gv;
        }
      }
    }
  }
}
