/** Strategy lookup by name, for configs and the CLI. */
import { fail } from "../errors";
import type { Strategy, StrategyOptions } from "./strategy";
import { FedAvg } from "./fedavg";
import { FedAvgM } from "./fedavgm";
import { FedAdagrad, FedAdam, FedYogi } from "./fedopt";
import { FedProx } from "./fedprox";

export const STRATEGY_NAMES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] as const;
export type StrategyName = (typeof STRATEGY_NAMES)[number];

const FACTORIES: { readonly [K in StrategyName]: (o: StrategyOptions) => Strategy } = {
  fedavg: (o) => new FedAvg(o),
  fedprox: (o) => new FedProx(o),
  fedavgm: (o) => new FedAvgM(o),
  fedadam: (o) => new FedAdam(o),
  fedyogi: (o) => new FedYogi(o),
  fedadagrad: (o) => new FedAdagrad(o),
};

export function isStrategyName(name: string): name is StrategyName {
  return (STRATEGY_NAMES as readonly string[]).includes(name);
}

/**
 * Builds a strategy by name (case-insensitive). Unknown names and invalid options throw FlotillaError
 * E_CONFIG_STRATEGY.
 */
export function createStrategy(name: string, opts: StrategyOptions): Strategy {
  const key = typeof name === "string" ? name.trim().toLowerCase() : "";
  if (!isStrategyName(key)) {
    fail(
      "E_CONFIG_STRATEGY",
      `unknown strategy '${String(name)}' (expected one of ${STRATEGY_NAMES.join(", ")})`,
    );
  }
  return FACTORIES[key](opts);
}
