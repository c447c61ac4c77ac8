/**
 * FedAvgM (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
 * Classification"): FedAvg with server momentum.
 *
 * Written, as in the paper (and Flower's FedAvgM), with the pseudo-gradient `g = −Δ̄` (Δ̄ = sample-weighted mean
 * delta, so g = w − mean client model):
 *     v ← β·v + g            (v starts at 0, so the first round's v is g)
 *     w ← w − η·v
 * This is the same update as `v' ← β·v' + Δ̄; w ← w + η·v'` with v' = −v. η = serverLr (default 1),
 * β = serverMomentum (default 0.9; Flower's default is 0, i.e. plain FedAvg). With β = 0 and η = 1 it is FedAvg.
 * A failed round (no update) leaves both w and v unchanged.
 */
import type { ServerOptimizer } from "./base";
import type { StrategyOptions } from "./strategy";
import { FedAvg } from "./fedavg";

export const FEDAVGM_DEFAULTS = { serverLr: 1, serverMomentum: 0.9 } as const;

export class ServerMomentum implements ServerOptimizer {
  private v = new Float64Array(0);
  constructor(
    readonly lr: number,
    readonly momentum: number,
  ) {}
  reset(size: number): void {
    this.v = new Float64Array(size);
  }
  tensors(): Readonly<Record<string, Float64Array>> {
    return { momentum: this.v };
  }
  step(global: Float32Array, meanDelta: Float32Array, next: Float32Array): void {
    const v = this.v;
    const beta = this.momentum;
    const eta = this.lr;
    for (let i = 0; i < next.length; i++) {
      const vi = beta * v[i] - meanDelta[i]; // β·v + g, with g = −Δ̄
      v[i] = vi;
      next[i] = global[i] - eta * vi;
    }
  }
}

export class FedAvgM extends FedAvg {
  override readonly name: string = "fedavgm";

  protected override createOptimizer(o: StrategyOptions): ServerOptimizer {
    return new ServerMomentum(
      o.serverLr ?? FEDAVGM_DEFAULTS.serverLr,
      o.serverMomentum ?? FEDAVGM_DEFAULTS.serverMomentum,
    );
  }
}
