/**
 * The network of a plan (`plan.ts`) on the tfjs wasm backend: parameters in wasm memory, batches written in the
 * layouts a step needs, the forward pass and the analytically derived backward pass (see `models.ts` for why).
 */
import * as tf from "@tensorflow/tfjs";
import type { Dataset } from "../data/dataset";
import type { WeightLayout } from "../tensor/layout";
import { convFilterGrad, convInputGrad, maxPoolReluBackward } from "./backprop";
import type { Plan } from "./plan";
import { parallelIf, serialKernels } from "./backend";
import { heapTensor, heapView, transpose2d } from "./wasm-tensors";

/** One mini-batch in the layouts a step needs. */
export interface Batch {
  readonly n: number;
  /** Dense nets: the input feature-major [D, n]. */
  readonly xT: tf.Tensor2D | null;
  /** Conv nets: NHWC [n, H, W, C]; dense nets, training only: [n, D] (for the first weight gradient). */
  readonly x: tf.Tensor | null;
  /** Conv nets, training only: the input as [C, H, W, n] (for the first filter gradient). */
  readonly xC: tf.Tensor4D | null;
  /** Classifiers, training only: one-hot labels [n, classes]. */
  readonly y: tf.Tensor2D | null;
}

/** Saved forward activations of a conv layer. */
interface ConvTrace {
  readonly input: tf.Tensor4D;
  /** relu(conv(input) + bias) */
  readonly act: tf.Tensor4D;
  /** max-pooled act (=== act when the layer has no pooling) */
  readonly out: tf.Tensor4D;
}

export interface ForwardTrace {
  readonly convs: ConvTrace[];
  /** Dense inputs, batch-major [n, in] (for the weight gradients; the first is null outside training). */
  readonly denseInputs: (tf.Tensor2D | null)[];
  /** Dense inputs, feature-major [in, n]. */
  readonly denseInputsT: tf.Tensor2D[];
  /** Output of the last dense layer, feature-major [out, n] (logits or reconstruction). */
  readonly outT: tf.Tensor2D;
}

export class Network {
  readonly plan: Plan;
  /** The parameters in layout order, shaped as TensorPlan.internal. */
  params: tf.Tensor[] = [];

  constructor(plan: Plan) {
    this.plan = plan;
  }

  /** Replaces the parameters with `flat` (layout order, external shapes). */
  load(flat: Float32Array, layout: WeightLayout): void {
    const next = this.plan.tensors.map((t, i) => {
      const { offset, size } = layout.entries[i];
      const src = flat.subarray(offset, offset + size);
      if (t.transposed) {
        const [nin, nout] = t.shape;
        return heapTensor(t.internal, (v) => {
          for (let a = 0; a < nin; a++) {
            const row = a * nout;
            for (let b = 0; b < nout; b++) v[b * nin + a] = src[row + b];
          }
        });
      }
      return heapTensor(t.internal, (v) => v.set(src));
    });
    const old = this.params;
    this.params = next;
    tf.dispose(old);
  }

  /** The parameters as one flat array (layout order, external shapes). */
  save(layout: WeightLayout): Float32Array {
    const out = new Float32Array(layout.totalSize);
    this.plan.tensors.forEach((t, i) => {
      const { offset } = layout.entries[i];
      const v = heapView(this.params[i]);
      if (t.transposed) {
        const [nin, nout] = t.shape;
        for (let b = 0; b < nout; b++) {
          const row = b * nin;
          for (let a = 0; a < nin; a++) out[offset + a * nout + b] = v[row + a];
        }
      } else {
        out.set(v, offset);
      }
    });
    return out;
  }

  private convParams(i: number): [tf.Tensor4D, tf.Tensor1D] {
    return [this.params[2 * i] as tf.Tensor4D, this.params[2 * i + 1] as tf.Tensor1D];
  }

  private denseParams(j: number): [tf.Tensor2D, tf.Tensor2D] {
    const k = 2 * (this.plan.convs.length + j);
    return [this.params[k] as tf.Tensor2D, this.params[k + 1] as tf.Tensor2D];
  }

  /**
   * Samples idx[from .. to) of `data`, written straight into wasm memory in the layouts the net needs
   * (training also needs the ones only the backward pass reads, and the labels).
   */
  batch(data: Dataset, idx: ArrayLike<number>, from: number, to: number, training: boolean): Batch {
    const n = to - from;
    const d = this.plan.inputSize;
    const src = data.x;
    const image = this.plan.image;
    let y: tf.Tensor2D | null = null;
    if (training && this.plan.task === "classifier") {
      const c = this.plan.numClasses;
      y = heapTensor([n, c], (v) => {
        v.fill(0);
        for (let r = 0; r < n; r++) v[r * c + data.y[idx[from + r]]] = 1;
      });
    }
    let x: tf.Tensor | null = null;
    if (training || image !== null) {
      x = heapTensor([n, d], (v) => {
        for (let r = 0; r < n; r++) {
          const j = idx[from + r];
          v.set(src.subarray(j * d, (j + 1) * d), r * d);
        }
      });
    }
    if (image === null) {
      const xT = heapTensor<tf.Rank.R2>([d, n], (v) => {
        for (let r = 0; r < n; r++) {
          const j = idx[from + r] * d;
          for (let k = 0; k < d; k++) v[k * n + r] = src[j + k];
        }
      });
      return { n, x, xT, xC: null, y };
    }
    const [h, w, c] = image;
    const hw = h * w;
    const xC = !training
      ? null
      : heapTensor<tf.Rank.R4>([c, h, w, n], (v) => {
          for (let r = 0; r < n; r++) {
            const j = idx[from + r] * d;
            for (let p = 0; p < hw; p++) {
              for (let ch = 0; ch < c; ch++) v[(ch * hw + p) * n + r] = src[j + p * c + ch];
            }
          }
        });
    return { n, x: tf.reshape(x as tf.Tensor, [n, h, w, c]), xT: null, xC, y };
  }

  /**
   * The forward pass; with `training`, also what the backward pass needs. With threads, only the large products
   * run on the thread pool (backend.ts `pool`).
   */
  forward(b: Batch, training: boolean): ForwardTrace {
    return serialKernels(() => this.forwardKernels(b, training));
  }

  private forwardKernels(b: Batch, training: boolean): ForwardTrace {
    const plan = this.plan;
    const convs: ConvTrace[] = [];
    let first: tf.Tensor2D | null;
    let firstT: tf.Tensor2D;
    if (plan.convs.length === 0) {
      first = b.x as tf.Tensor2D | null;
      firstT = b.xT as tf.Tensor2D;
    } else {
      let h = b.x as tf.Tensor4D;
      plan.convs.forEach((c, i) => {
        const [filter, bias] = this.convParams(i);
        const x = h;
        const act = parallelIf(convFlops(x.shape, filter.shape), () =>
          tf.fused.conv2d({ x, filter, bias, strides: 1, pad: "same", activation: "relu" }),
        );
        const out = c.ph * c.pw > 1 ? tf.maxPool(act, [c.ph, c.pw], [c.ph, c.pw], "valid") : act;
        convs.push({ input: h, act, out });
        h = out;
      });
      const feat: tf.Tensor2D = plan.head === "gap" ? tf.mean(h, [1, 2]) : tf.reshape(h, [b.n, h.size / b.n]);
      first = feat;
      firstT = transpose2d(feat);
    }
    const denseInputs = [first];
    const denseInputsT = [firstT];
    let aT = firstT;
    plan.dense.forEach((l, j) => {
      const [wt, bias] = this.denseParams(j);
      const a = aT;
      const z = tf.add(
        parallelIf(matMulFlops(wt, a), () => tf.matMul(wt, a)),
        bias,
      );
      aT = (l.relu ? tf.relu(z) : z) as tf.Tensor2D;
      if (training && j < plan.dense.length - 1) {
        denseInputsT.push(aT);
        denseInputs.push(transpose2d(aT));
      }
    });
    return { convs, denseInputs, denseInputsT, outT: aT };
  }

  /**
   * Gradients of every parameter, in layout order, given the output gradient dzT [out, n] (already multiplied by
   * the learning rate).
   */
  backward(b: Batch, tr: ForwardTrace, dzOutT: tf.Tensor2D): tf.Tensor[] {
    return serialKernels(() => this.backwardKernels(b, tr, dzOutT));
  }

  private backwardKernels(b: Batch, tr: ForwardTrace, dzOutT: tf.Tensor2D): tf.Tensor[] {
    const plan = this.plan;
    const grads: tf.Tensor[] = new Array(this.params.length);
    const nc = plan.convs.length;
    let dzT = dzOutT;
    for (let j = plan.dense.length - 1; j >= 0; j--) {
      const [wt] = this.denseParams(j);
      const dz = dzT;
      const input = tr.denseInputs[j] as tf.Tensor2D;
      grads[2 * (nc + j)] = parallelIf(matMulFlops(dz, input), () => tf.matMul(dz, input));
      grads[2 * (nc + j) + 1] = tf.sum(dzT, 1, true);
      if (j === 0 && nc === 0) break;
      const w = transpose2d(wt);
      const daT = parallelIf(matMulFlops(w, dz), () => tf.matMul(w, dz));
      dzT = (j > 0 ? tf.mul(daT, tf.step(tr.denseInputsT[j])) : daT) as tf.Tensor2D;
    }
    if (nc === 0) return grads;
    // dzT is now the gradient of the dense input, feature-major [features, n].
    const last = tr.convs[nc - 1].out;
    let dOut: tf.Tensor4D;
    if (plan.head === "gap") {
      const [, h, w, c] = last.shape;
      dOut = tf.mul(tf.reshape(transpose2d(dzT), [b.n, 1, 1, c]), tf.fill([b.n, h, w, c], 1 / (h * w)));
    } else {
      dOut = tf.reshape(transpose2d(dzT), last.shape);
    }
    for (let i = nc - 1; i >= 0; i--) {
      const c = plan.convs[i];
      const t = tr.convs[i];
      const [filter] = this.convParams(i);
      // dz: NHWC (for the input gradient, layers > 0), dzT: [H, W, B, C] (for the filter gradient).
      let dz: tf.Tensor4D | null;
      let dzT: tf.Tensor4D;
      if (c.ph * c.pw > 1) {
        const r = maxPoolReluBackward(t.act, t.out, dOut, c.ph, c.pw, i > 0);
        dz = r.dz;
        dzT = r.dzT;
        grads[2 * i + 1] = r.db;
      } else {
        const masked = tf.mul(dOut, tf.step(t.act)) as tf.Tensor4D;
        dz = masked;
        dzT = tf.transpose(masked, [1, 2, 0, 3]);
        grads[2 * i + 1] = tf.sum(tf.reshape(masked, [-1, c.cout]), 0);
      }
      const inputC = i === 0 ? (b.xC as tf.Tensor4D) : tf.transpose(t.input, [3, 1, 2, 0]);
      grads[2 * i] = convFilterGrad(inputC, dzT, c.kh, c.kw);
      if (i > 0) dOut = convInputGrad(dz as tf.Tensor4D, filter);
    }
    return grads;
  }

  dispose(): void {
    tf.dispose(this.params);
    this.params = [];
  }
}

/** Floating-point operations of a 'same' stride-1 convolution of x [B, H, W, Cin] with a [KH, KW, Cin, Cout] filter. */
export function convFlops(x: readonly number[], filter: readonly number[]): number {
  return 2 * x[0] * x[1] * x[2] * filter[0] * filter[1] * filter[2] * filter[3];
}

/** Floating-point operations of a · b for 2-D a [M, K] and b [K, N]. */
export function matMulFlops(a: tf.Tensor2D, b: tf.Tensor2D): number {
  return 2 * a.shape[0] * a.shape[1] * b.shape[1];
}
