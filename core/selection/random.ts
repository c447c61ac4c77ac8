/**
 * `random`: the baseline — a uniform sample without replacement (FedAvg, McMahan et al. 2017), the very draw of
 * FedAvg.configureFit (core/strategies/fedavg.ts): the distinct candidate ids in sorted order, Rng seeded with
 * roundSeed(seed, round), `sample(n, count)`. So a job with `random` picks exactly the devices it picked before
 * selectors existed.
 */
import { Rng } from "../data/rng";
import { roundSeed } from "../strategies/base";
import type { DeviceHistory, DeviceProfile, SelectionContext, Selector } from "./types";

/** The distinct candidate ids, sorted (the canonical order every selector starts from). */
export function canonicalIds(candidates: readonly DeviceProfile[]): string[] {
  return [...new Set(candidates.map((c) => c.deviceId))].sort();
}

export class RandomSelector implements Selector {
  readonly name = "random";
  readonly spec = "random";

  select(
    candidates: readonly DeviceProfile[],
    _history: ReadonlyMap<string, DeviceHistory>,
    ctx: SelectionContext,
  ): string[] {
    const ids = canonicalIds(candidates);
    const rng = new Rng(roundSeed(ctx.seed, ctx.round));
    return rng.sample(ids.length, Math.min(Math.max(0, ctx.count), ids.length)).map((i) => ids[i]);
  }
}
