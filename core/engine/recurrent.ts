/**
 * Fused LSTM and GRU sequences for the generic path: the whole time loop, forward and backward (backpropagation
 * through time), as one tfjs op with a custom gradient computed in JS.
 *
 * Why: tfjs-layers runs a recurrent layer as ~15 tfjs ops per time step, forward and backward. On the wasm backend
 * each op costs tens of microseconds of dispatch, so a [64 steps × 32 units] LSTM at B = 10 spent ~280 ms per
 * batch in op overhead for ~8 M multiply-adds of arithmetic. Here the input projections x·W for all steps stay one
 * tfjs matmul (outside this op, differentiated by autograd), and only the recurrence runs in JS loops.
 *
 * Equations (Keras; gates i, f, c, o for LSTM and z, r, h for GRU, in the kernel's column blocks):
 *   LSTM (Hochreiter & Schmidhuber 1997): a = xw_t + h·U; i = σ(a_i), f = σ(a_f), g = φ(a_c), o = σ(a_o);
 *        c_t = f⊙c + i⊙g; h_t = o⊙φ(c_t).
 *   GRU (Cho et al. 2014), reset_after (Keras 2's default): hu = h·U + b_rec; z = σ(xw_z + hu_z),
 *        r = σ(xw_r + hu_r), ĥ = φ(xw_h + r⊙hu_h); h_t = z⊙h + (1 − z)⊙ĥ.
 *   GRU, reset before (tfjs-layers, Keras 1): z, r as above from h·U_zr; ĥ = φ(xw_h + (r⊙h)·U_h).
 * σ is the recurrent activation, φ the activation; both are restricted to those whose derivative is a function of
 * their output (FUSED_ACTIVATIONS), the backward pass keeps only outputs.
 */
import * as tf from "@tensorflow/tfjs";
import type { ActivationName } from "./graph-spec";

/** Activations the fused ops support (derivative from the output); others use tfjs-layers' cells. */
export const FUSED_ACTIVATIONS: readonly ActivationName[] = [
  "tanh",
  "sigmoid",
  "hard_sigmoid",
  "relu",
  "linear",
];

type Fn = (v: number) => number;

function forwardFn(a: ActivationName): Fn {
  switch (a) {
    case "tanh":
      return Math.tanh;
    case "sigmoid":
      return (v) => 1 / (1 + Math.exp(-v));
    case "hard_sigmoid":
      return (v) => Math.min(1, Math.max(0, 0.2 * v + 0.5));
    case "relu":
      return (v) => (v > 0 ? v : 0);
    default:
      return (v) => v;
  }
}

/** d act / d input, as a function of the output y. */
function derivFn(a: ActivationName): Fn {
  switch (a) {
    case "tanh":
      return (y) => 1 - y * y;
    case "sigmoid":
      return (y) => y * (1 - y);
    case "hard_sigmoid":
      return (y) => (y > 0 && y < 1 ? 0.2 : 0);
    case "relu":
      return (y) => (y > 0 ? 1 : 0);
    default:
      return () => 1;
  }
}

/** out[b, n] += a[b, k] · m[k, n] (m row-major [k, n]). */
function matAcc(
  out: Float64Array,
  a: ArrayLike<number>,
  m: ArrayLike<number>,
  b: number,
  k: number,
  n: number,
): void {
  for (let r = 0; r < b; r++) {
    const o = r * n;
    for (let j = 0; j < k; j++) {
      const v = a[r * k + j];
      if (v === 0) continue;
      const mo = j * n;
      for (let q = 0; q < n; q++) out[o + q] += v * m[mo + q];
    }
  }
}

/** out[b, k] += d[b, n] · mᵀ (m row-major [k, n]). */
function matAccT(
  out: Float64Array,
  d: ArrayLike<number>,
  m: ArrayLike<number>,
  b: number,
  k: number,
  n: number,
): void {
  for (let r = 0; r < b; r++) {
    for (let j = 0; j < k; j++) {
      let s = 0;
      const mo = j * n;
      const dO = r * n;
      for (let q = 0; q < n; q++) s += d[dO + q] * m[mo + q];
      out[r * k + j] += s;
    }
  }
}

/** out[k, n] += aᵀ · d, a [b, k], d [b, n]. */
function outerAcc(
  out: Float64Array,
  a: ArrayLike<number>,
  d: ArrayLike<number>,
  b: number,
  k: number,
  n: number,
): void {
  for (let r = 0; r < b; r++) {
    for (let j = 0; j < k; j++) {
      const v = a[r * k + j];
      if (v === 0) continue;
      const o = j * n;
      const dO = r * n;
      for (let q = 0; q < n; q++) out[o + q] += v * d[dO + q];
    }
  }
}

/** All hidden states [b, t, u] of an LSTM given the input projections xw [b, t, 4u] (bias included) and U. */
export function lstmSequence(
  xw: tf.Tensor3D,
  U: tf.Tensor2D,
  act: ActivationName,
  recAct: ActivationName,
): tf.Tensor3D {
  const op = tf.customGrad(((xwIn: tf.Tensor, uIn: tf.Tensor) => {
    const [b, t, G] = xwIn.shape as [number, number, number];
    const u = G / 4;
    const X = xwIn.dataSync() as Float32Array;
    const Um = Float64Array.from(uIn.dataSync() as Float32Array);
    const sg = forwardFn(recAct);
    const ph = forwardFn(act);
    // Saved per step: gates (activated) [t, b, 4u], c_t and φ(c_t) [t, b, u], h [t + 1, b, u] (h_0 = 0).
    const gates = new Float64Array(t * b * G);
    const cs = new Float64Array((t + 1) * b * u);
    const pc = new Float64Array(t * b * u);
    const hs = new Float64Array((t + 1) * b * u);
    const out = new Float32Array(b * t * u);
    const a = new Float64Array(b * G);
    for (let s = 0; s < t; s++) {
      for (let r = 0; r < b; r++) for (let q = 0; q < G; q++) a[r * G + q] = X[(r * t + s) * G + q];
      matAcc(a, hs.subarray(s * b * u, (s + 1) * b * u), Um, b, u, G);
      const gs = s * b * G;
      for (let r = 0; r < b; r++) {
        for (let j = 0; j < u; j++) {
          const ai = a[r * G + j];
          const i = sg(ai);
          const f = sg(a[r * G + u + j]);
          const g = ph(a[r * G + 2 * u + j]);
          const o = sg(a[r * G + 3 * u + j]);
          gates[gs + r * G + j] = i;
          gates[gs + r * G + u + j] = f;
          gates[gs + r * G + 2 * u + j] = g;
          gates[gs + r * G + 3 * u + j] = o;
          const cPrev = cs[s * b * u + r * u + j];
          const c = f * cPrev + i * g;
          cs[(s + 1) * b * u + r * u + j] = c;
          const p = ph(c);
          pc[s * b * u + r * u + j] = p;
          const h = o * p;
          hs[(s + 1) * b * u + r * u + j] = h;
          out[(r * t + s) * u + j] = h;
        }
      }
    }
    const value = tf.tensor3d(out, [b, t, u]);
    const gradFunc = (dy: tf.Tensor) => {
      const DY = dy.dataSync() as Float32Array;
      const dsg = derivFn(recAct);
      const dph = derivFn(act);
      const dX = new Float32Array(b * t * G);
      const dU = new Float64Array(u * G);
      const dhNext = new Float64Array(b * u);
      const dcNext = new Float64Array(b * u);
      const da = new Float64Array(b * G);
      for (let s = t - 1; s >= 0; s--) {
        const gs = s * b * G;
        for (let r = 0; r < b; r++) {
          for (let j = 0; j < u; j++) {
            const k = r * u + j;
            const dh = DY[(r * t + s) * u + j] + dhNext[k];
            const i = gates[gs + r * G + j];
            const f = gates[gs + r * G + u + j];
            const g = gates[gs + r * G + 2 * u + j];
            const o = gates[gs + r * G + 3 * u + j];
            const p = pc[s * b * u + k];
            const dc = dcNext[k] + dh * o * dph(p);
            da[r * G + j] = dc * g * dsg(i);
            da[r * G + u + j] = dc * cs[s * b * u + k] * dsg(f);
            da[r * G + 2 * u + j] = dc * i * dph(g);
            da[r * G + 3 * u + j] = dh * p * dsg(o);
            dcNext[k] = dc * f;
          }
        }
        for (let r = 0; r < b; r++) for (let q = 0; q < G; q++) dX[(r * t + s) * G + q] = da[r * G + q];
        outerAcc(dU, hs.subarray(s * b * u, (s + 1) * b * u), da, b, u, G);
        dhNext.fill(0);
        matAccT(dhNext, da, Um, b, u, G);
      }
      return [tf.tensor3d(dX, [b, t, G]), tf.tensor2d(Float32Array.from(dU), [u, G])];
    };
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(xw, U) as tf.Tensor3D;
}

/**
 * All hidden states [b, t, u] of a GRU given the input projections xw [b, t, 3u] (input bias included), U [u, 3u]
 * and, with resetAfter, the recurrent bias bRec [3u] (zeros without bias).
 */
export function gruSequence(
  xw: tf.Tensor3D,
  U: tf.Tensor2D,
  bRec: tf.Tensor1D,
  resetAfter: boolean,
  act: ActivationName,
  recAct: ActivationName,
): tf.Tensor3D {
  const op = tf.customGrad(((xwIn: tf.Tensor, uIn: tf.Tensor, bIn: tf.Tensor) => {
    const [b, t, G] = xwIn.shape as [number, number, number];
    const u = G / 3;
    const X = xwIn.dataSync() as Float32Array;
    const Um = Float64Array.from(uIn.dataSync() as Float32Array);
    const Bm = bIn.dataSync() as Float32Array;
    const sg = forwardFn(recAct);
    const ph = forwardFn(act);
    // U split: columns [0, 2u) for z and r, [2u, 3u) for the candidate (row-major [u, 3u]).
    const hs = new Float64Array((t + 1) * b * u);
    const zs = new Float64Array(t * b * u);
    const rs = new Float64Array(t * b * u);
    const cands = new Float64Array(t * b * u);
    const huh = new Float64Array(t * b * u); // resetAfter: h·U_h + b_h; else: (r⊙h) (the matmul's input)
    const out = new Float32Array(b * t * u);
    const hu = new Float64Array(b * G);
    const rh = new Float64Array(b * u);
    const ch = new Float64Array(b * u);
    for (let s = 0; s < t; s++) {
      const hPrev = hs.subarray(s * b * u, (s + 1) * b * u);
      for (let r = 0; r < b; r++) for (let q = 0; q < G; q++) hu[r * G + q] = Bm[q];
      matAcc(hu, hPrev, Um, b, u, G);
      const o = s * b * u;
      for (let r = 0; r < b; r++) {
        for (let j = 0; j < u; j++) {
          const base = (r * t + s) * G;
          zs[o + r * u + j] = sg(X[base + j] + hu[r * G + j]);
          rs[o + r * u + j] = sg(X[base + u + j] + hu[r * G + u + j]);
        }
      }
      if (!resetAfter) {
        // (r⊙h)·U_h: the candidate's recurrent term from the reset state.
        ch.fill(0);
        for (let k = 0; k < b * u; k++) rh[k] = rs[o + k] * hPrev[k];
        for (let r = 0; r < b; r++) {
          for (let j = 0; j < u; j++) {
            const v = rh[r * u + j];
            if (v === 0) continue;
            for (let q = 0; q < u; q++) ch[r * u + q] += v * Um[j * G + 2 * u + q];
          }
        }
        huh.set(rh, o);
      }
      for (let r = 0; r < b; r++) {
        for (let j = 0; j < u; j++) {
          const k = r * u + j;
          const base = (r * t + s) * G;
          let pre: number;
          if (resetAfter) {
            const v = hu[r * G + 2 * u + j];
            huh[o + k] = v;
            pre = X[base + 2 * u + j] + rs[o + k] * v;
          } else pre = X[base + 2 * u + j] + ch[k];
          const cand = ph(pre);
          cands[o + k] = cand;
          const z = zs[o + k];
          const h = z * hPrev[k] + (1 - z) * cand;
          hs[(s + 1) * b * u + k] = h;
          out[(r * t + s) * u + j] = h;
        }
      }
    }
    const value = tf.tensor3d(out, [b, t, u]);
    const gradFunc = (dy: tf.Tensor) => {
      const DY = dy.dataSync() as Float32Array;
      const dsg = derivFn(recAct);
      const dph = derivFn(act);
      const dX = new Float32Array(b * t * G);
      const dU = new Float64Array(u * G);
      const dB = new Float64Array(G);
      const dhNext = new Float64Array(b * u);
      const dRec = new Float64Array(b * G); // gradient of h·U (+ b_rec) columns used from hPrev directly
      const dAh = new Float64Array(b * u);
      const dRh = new Float64Array(b * u);
      for (let s = t - 1; s >= 0; s--) {
        const o = s * b * u;
        const hPrev = hs.subarray(o, o + b * u);
        dRec.fill(0);
        for (let r = 0; r < b; r++) {
          for (let j = 0; j < u; j++) {
            const k = r * u + j;
            const dh = DY[(r * t + s) * u + j] + dhNext[k];
            const z = zs[o + k];
            const cand = cands[o + k];
            const rr = rs[o + k];
            const daH = dh * (1 - z) * dph(cand);
            const daZ = dh * (hPrev[k] - cand) * dsg(z);
            let dr: number;
            if (resetAfter) {
              dr = daH * huh[o + k];
              dRec[r * G + 2 * u + j] = daH * rr;
            } else {
              dr = 0; // filled below from d(r⊙h)
            }
            dAh[k] = daH;
            const base = (r * t + s) * G;
            dX[base + j] = daZ;
            dX[base + 2 * u + j] = daH;
            dRec[r * G + j] = daZ;
            dhNext[k] = dh * z; // the direct path; the recurrent terms are added below
            if (resetAfter) {
              const daR = dr * dsg(rr);
              dX[base + u + j] = daR;
              dRec[r * G + u + j] = daR;
            }
          }
        }
        if (!resetAfter) {
          // ĥ's pre-activation has (r⊙h)·U_h: d(r⊙h) = daH·U_hᵀ, dU_h += (r⊙h)ᵀ·daH.
          dRh.fill(0);
          for (let r = 0; r < b; r++) {
            for (let j = 0; j < u; j++) {
              let sum = 0;
              for (let q = 0; q < u; q++) sum += dAh[r * u + q] * Um[j * G + 2 * u + q];
              dRh[r * u + j] = sum;
            }
          }
          for (let r = 0; r < b; r++) {
            for (let j = 0; j < u; j++) {
              const v = huh[o + r * u + j];
              if (v === 0) continue;
              for (let q = 0; q < u; q++) dU[j * G + 2 * u + q] += v * dAh[r * u + q];
            }
          }
          for (let r = 0; r < b; r++) {
            for (let j = 0; j < u; j++) {
              const k = r * u + j;
              const rr = rs[o + k];
              const daR = dRh[k] * hPrev[k] * dsg(rr);
              dX[(r * t + s) * G + u + j] = daR;
              dRec[r * G + u + j] = daR;
              dhNext[k] += dRh[k] * rr;
            }
          }
        }
        // Through h·U (+ b_rec): dU += hPrevᵀ·dRec, db += Σ dRec, dh += dRec·Uᵀ. Without resetAfter dRec's
        // candidate block is zero (that term went through r⊙h above).
        outerAcc(dU, hPrev, dRec, b, u, G);
        for (let r = 0; r < b; r++) for (let q = 0; q < G; q++) dB[q] += dRec[r * G + q];
        matAccT(dhNext, dRec, Um, b, u, G);
      }
      return [
        tf.tensor3d(dX, [b, t, G]),
        tf.tensor2d(Float32Array.from(dU), [u, G]),
        tf.tensor1d(Float32Array.from(dB)),
      ];
    };
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(xw, U, bRec) as tf.Tensor3D;
}
