/**
 * FedAdagrad, FedAdam and FedYogi: Algorithm 2 of Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR).
 * The server treats the sample-weighted mean delta Δ as a pseudo-gradient step (−Δ is the pseudo-gradient) and
 * applies an adaptive optimizer to it:
 *     m ← β1·m + (1 − β1)·Δ                       (m starts at 0)
 *     Adagrad: v ← v + Δ²
 *     Adam:    v ← β2·v + (1 − β2)·Δ²
 *     Yogi:    v ← v − (1 − β2)·Δ²·sign(v − Δ²)
 *     w ← w + η·m / (√v + τ)
 * with v initialised to τ² (the paper's v₋₁ ≥ τ²) and, as in the paper, no Adam-style bias correction.
 *
 * Defaults are Flower's (flwr.server.strategy.FedAdam / FedYogi / FedAdagrad; Flower's client-side eta_l has no
 * counterpart here, the device's lr is `fit.lr`):
 *     FedAdam    η = 0.1,  β1 = 0.9, β2 = 0.99, τ = 1e-9
 *     FedYogi    η = 0.01, β1 = 0.9, β2 = 0.99, τ = 1e-3
 *     FedAdagrad η = 0.1,  β1 = 0 (no momentum, as Flower fixes it), τ = 1e-9 (β2 unused)
 * Options serverLr, beta1, beta2 and tau override them. Flower initialises v to 0 rather than τ²; with these τ
 * the difference is below float precision after the first step.
 * A failed round (no update) leaves w, m and v unchanged.
 */
import type { ServerOptimizer } from "./base";
import type { StrategyOptions } from "./strategy";
import { FedAvg } from "./fedavg";

export interface AdaptiveParams {
  readonly serverLr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly tau: number;
}

export const FEDADAM_DEFAULTS: AdaptiveParams = { serverLr: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-9 };
export const FEDYOGI_DEFAULTS: AdaptiveParams = { serverLr: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
export const FEDADAGRAD_DEFAULTS: AdaptiveParams = { serverLr: 0.1, beta1: 0, beta2: 0, tau: 1e-9 };

function resolve(o: StrategyOptions, d: AdaptiveParams): AdaptiveParams {
  return {
    serverLr: o.serverLr ?? d.serverLr,
    beta1: o.beta1 ?? d.beta1,
    beta2: o.beta2 ?? d.beta2,
    tau: o.tau ?? d.tau,
  };
}

/** The shared part of Algorithm 2; subclasses supply the second-moment update only. */
export abstract class AdaptiveOptimizer implements ServerOptimizer {
  protected m = new Float64Array(0);
  protected v = new Float64Array(0);
  constructor(readonly params: AdaptiveParams) {}

  reset(size: number): void {
    const tau = this.params.tau;
    this.m = new Float64Array(size);
    this.v = new Float64Array(size).fill(tau * tau);
  }

  tensors(): Readonly<Record<string, Float64Array>> {
    return { m: this.m, v: this.v };
  }

  /** v ← f(v, Δ) in place. */
  protected abstract updateSecondMoment(v: Float64Array, delta: Float32Array): void;

  step(global: Float32Array, delta: Float32Array, next: Float32Array): void {
    this.updateSecondMoment(this.v, delta);
    const { m, v } = this;
    const { serverLr: eta, beta1, tau } = this.params;
    const c1 = 1 - beta1;
    for (let i = 0; i < next.length; i++) {
      const mi = beta1 * m[i] + c1 * delta[i];
      m[i] = mi;
      next[i] = global[i] + (eta * mi) / (Math.sqrt(v[i]) + tau);
    }
  }
}

export class AdagradStep extends AdaptiveOptimizer {
  protected updateSecondMoment(v: Float64Array, delta: Float32Array): void {
    for (let i = 0; i < v.length; i++) v[i] += delta[i] * delta[i];
  }
}

export class AdamStep extends AdaptiveOptimizer {
  protected updateSecondMoment(v: Float64Array, delta: Float32Array): void {
    const b2 = this.params.beta2;
    const c2 = 1 - b2;
    for (let i = 0; i < v.length; i++) v[i] = b2 * v[i] + c2 * delta[i] * delta[i];
  }
}

export class YogiStep extends AdaptiveOptimizer {
  protected updateSecondMoment(v: Float64Array, delta: Float32Array): void {
    const c2 = 1 - this.params.beta2;
    for (let i = 0; i < v.length; i++) {
      const d2 = delta[i] * delta[i];
      v[i] -= c2 * d2 * Math.sign(v[i] - d2);
    }
  }
}

export class FedAdagrad extends FedAvg {
  override readonly name: string = "fedadagrad";
  protected override createOptimizer(o: StrategyOptions): ServerOptimizer {
    return new AdagradStep(resolve(o, FEDADAGRAD_DEFAULTS));
  }
}

export class FedAdam extends FedAvg {
  override readonly name: string = "fedadam";
  protected override createOptimizer(o: StrategyOptions): ServerOptimizer {
    return new AdamStep(resolve(o, FEDADAM_DEFAULTS));
  }
}

export class FedYogi extends FedAvg {
  override readonly name: string = "fedyogi";
  protected override createOptimizer(o: StrategyOptions): ServerOptimizer {
    return new YogiStep(resolve(o, FEDYOGI_DEFAULTS));
  }
}
