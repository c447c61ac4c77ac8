/**
 * `deadline`: FedCS (Nishio & Yonetani, ICC 2019, "Client Selection for Federated Learning with Heterogeneous
 * Resources in Mobile Edge", Algorithm 1 "Client Selection"): from the resource information the devices reported,
 * estimate each one's time to download the model, train and upload (estimate.ts), and greedily take the most
 * devices that finish before the deadline. Here uploads run in parallel (each device has its own link), so the
 * greedy choice is: drop every device whose t_i exceeds the deadline (or its remaining online time, or whose
 * memory is below the job's need), sort the rest by t_i (ties in a seeded order) and take up to `count`.
 *
 * Option `margin` (default 1): a device must have t_i · margin ≤ deadline (a safety factor on the estimate).
 */
import { Rng } from "../data/rng";
import { roundSeed } from "../strategies/base";
import { estimateRoundS, feasible } from "./estimate";
import { canonicalIds } from "./random";
import type { DeviceHistory, DeviceProfile, SelectionContext, Selector } from "./types";

export interface DeadlineOptions {
  readonly margin: number;
}

export const DEADLINE_DEFAULTS: Readonly<DeadlineOptions> = { margin: 1 };

export class DeadlineSelector implements Selector {
  readonly name = "deadline";
  constructor(
    readonly options: DeadlineOptions,
    readonly spec: string,
  ) {}

  select(
    candidates: readonly DeviceProfile[],
    _history: ReadonlyMap<string, DeviceHistory>,
    ctx: SelectionContext,
  ): string[] {
    const byId = new Map(candidates.map((c) => [c.deviceId, c]));
    const ids = canonicalIds(candidates);
    // A seeded rank per device breaks ties between equal estimates without favouring low ids.
    const rank = new Rng(roundSeed(ctx.seed, ctx.round)).shuffle(ids.map((_, i) => i));
    const rows: { id: string; t: number; rank: number }[] = [];
    ids.forEach((id, i) => {
      const p = byId.get(id)!;
      const t = estimateRoundS(p, ctx) * this.options.margin;
      if (!(t <= ctx.deadlineS) || !feasible(p, t, ctx)) return;
      rows.push({ id, t, rank: rank[i] });
    });
    rows.sort((a, b) => a.t - b.t || a.rank - b.rank);
    return rows.slice(0, Math.max(0, ctx.count)).map((r) => r.id);
  }
}
