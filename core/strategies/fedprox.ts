/**
 * FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"). Server side it is FedAvg; the
 * difference is on the device, which minimises `loss(w) + (μ/2)·||w − w_global||²` so that local models drift less
 * from the global one on non-IID data. The strategy only has to tell each device μ (as Flower's FedProx(FedAvg)
 * does with `proximal_mu`): `options.fit.mu`, or `FEDPROX_DEFAULT_MU` when it is not given.
 */
import type { FitConfig } from "./strategy";
import { FedAvg } from "./fedavg";

export const FEDPROX_DEFAULT_MU = 0.01;

export class FedProx extends FedAvg {
  override readonly name: string = "fedprox";

  protected override fitConfig(round: number, deviceId: string): FitConfig {
    return { ...super.fitConfig(round, deviceId), mu: this.options.fit.mu ?? FEDPROX_DEFAULT_MU };
  }
}
