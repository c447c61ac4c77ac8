/**
 * `oort`: Oort's guided participant selection (Lai et al., OSDI 2021, "Oort: Efficient Federated Learning via
 * Guided Participant Selection", §4 and Algorithm 1), plus a participation floor.
 *
 * For a device i that has been picked before ("explored"):
 *   statistical utility  U_i = |B_i| · sqrt(mean loss²) ≈ lastSamples · lastLoss (the history keeps the mean
 *                        training loss the device reported, not per-sample losses), normalised by the largest
 *                        among the candidates (as FedScale's implementation does) so the bonus below is on scale;
 *   staleness bonus      + sqrt(0.1 · ln(R) / L(i)), R the current round, L(i) the round i was last picked (Alg. 1
 *                        line 6: devices left out for long gain utility);
 *   system utility       × (T / t_i)^α when t_i > T (T the preferred round duration, t_i the duration of the
 *                        device's last completed round, else its FedCS estimate: estimate.ts);
 *   timeouts             × timeoutPenalty^(consecutive timeouts), and a device with `maxTimeouts` consecutive
 *                        timeouts is left out (Oort's blacklist; 0 = never).
 * Exploitation (Alg. 1 lines 10–12): of the (1 − ε)·K picks, the candidates whose utility is at least
 * cutoff × (the (1 − ε)·K-th highest utility) are admitted and sampled by utility (seeded).
 * Exploration (line 13): ε·K picks among devices never picked, sampled by speed (1 / t_i) so faster ones are
 * preferred; ε starts at `epsilon` and decays by `decay` each round down to `minEpsilon` (the paper's 0.9, ×0.98).
 * When one side has too few candidates the other side takes the remaining picks.
 *
 * Participation floor (not Oort's; issue 13): a device is due `floor + 1` rounds after its last pick (never
 * picked: after round 0). Due devices are picked first, earliest-due first, and with look-ahead (earliest
 * deadline first): as many are picked now as needed for the devices due in the next j rounds to fit in those
 * rounds' picks. So a device that stays eligible is picked at least once in every `floor + 1` rounds whenever the
 * fleet allows it (fewer than about count · (floor + 1) eligible devices). `floor=0` turns it off.
 *
 * T: the `T=` option when given, else the `Tpct`-th percentile (default 30) of the explored candidates' durations
 * t_i this round — the default of Oort's artifact (FedScale's Oort, `round_threshold` = 30: the preferred duration
 * is the duration at that percentile of the known clients'), so the straggler penalty bites on the slower 70%
 * whatever the deadline. Not implemented: Oort's pacer (widening T when the utility stalls).
 */
import { Rng } from "../data/rng";
import { roundSeed } from "../strategies/base";
import { feasible, observedRoundS } from "./estimate";
import { canonicalIds } from "./random";
import type { DeviceHistory, DeviceProfile, SelectionContext, Selector } from "./types";

export interface OortOptions {
  /** Preferred round duration T (s); undefined = the Tpct-th percentile of the explored candidates' durations. */
  readonly T?: number;
  /** Percentile (0–100] of the explored candidates' durations that sets T when T is not given. */
  readonly Tpct: number;
  /** Straggler penalty exponent α. */
  readonly alpha: number;
  /** Initial exploration fraction ε. */
  readonly epsilon: number;
  /** ε's factor per round. */
  readonly decay: number;
  /** ε's lower bound. */
  readonly minEpsilon: number;
  /** Exploitation cutoff c. */
  readonly cutoff: number;
  /** Participation floor N (rounds); 0 = off. */
  readonly floor: number;
  /** Consecutive timeouts after which a device is left out; 0 = never. */
  readonly maxTimeouts: number;
  /** Utility factor per consecutive timeout. */
  readonly timeoutPenalty: number;
}

export const OORT_DEFAULTS: Readonly<OortOptions> = {
  Tpct: 30,
  alpha: 2,
  epsilon: 0.9,
  decay: 0.98,
  minEpsilon: 0.2,
  cutoff: 0.95,
  floor: 20,
  maxTimeouts: 0,
  timeoutPenalty: 0.5,
};

/** The q-quantile (0 < q ≤ 1) of `v` (non-empty): the value at rank ⌈q·n⌉ of the sorted values. */
function percentile(v: readonly number[], q: number): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

/** The staleness bonus's weight (Alg. 1 line 6). */
const STALENESS_WEIGHT = 0.1;

interface Row {
  readonly id: string;
  readonly p: DeviceProfile;
  readonly h: DeviceHistory | undefined;
  readonly t: number;
  /** Seeded tie-break rank. */
  readonly rank: number;
}

/**
 * k of `rows` without replacement, each drawn with probability proportional to its weight (Efraimidis & Spirakis
 * 2006, "Weighted random sampling with a reservoir": the k largest keys ln(u)/w). Zero weights come last.
 */
function weightedSample<T>(rows: readonly T[], weight: (r: T) => number, k: number, rng: Rng): T[] {
  const keyed = rows.map((r, i) => {
    const w = weight(r);
    const u = rng.next() || Number.MIN_VALUE;
    return { r, i, key: w > 0 && Number.isFinite(w) ? Math.log(u) / w : -Infinity, tie: u };
  });
  keyed.sort((a, b) => b.key - a.key || b.tie - a.tie || a.i - b.i);
  return keyed.slice(0, k).map((x) => x.r);
}

/** ε of round `round` (≥ 1): epsilon · decay^(round − 1), not below minEpsilon. */
export function explorationFactor(o: OortOptions, round: number): number {
  return Math.max(o.minEpsilon, o.epsilon * Math.pow(o.decay, Math.max(0, round - 1)));
}

export class OortSelector implements Selector {
  readonly name = "oort";
  constructor(
    readonly options: OortOptions,
    readonly spec: string,
  ) {}

  select(
    candidates: readonly DeviceProfile[],
    history: ReadonlyMap<string, DeviceHistory>,
    ctx: SelectionContext,
  ): string[] {
    const o = this.options;
    const byId = new Map(candidates.map((c) => [c.deviceId, c]));
    const ids = canonicalIds(candidates);
    const rng = new Rng(roundSeed(ctx.seed, ctx.round));
    const ranks = rng.shuffle(ids.map((_, i) => i));
    let rows: Row[] = [];
    ids.forEach((id, i) => {
      const p = byId.get(id)!;
      const h = history.get(id);
      const t = observedRoundS(p, h, ctx);
      if (!feasible(p, t, ctx)) return;
      if (o.maxTimeouts > 0 && (h?.consecutiveTimeouts ?? 0) >= o.maxTimeouts) return;
      rows.push({ id, p, h, t, rank: ranks[i] });
    });
    const k = Math.min(Math.max(0, ctx.count), rows.length);
    if (k === 0) return [];
    const picked: string[] = [];

    // 1. The participation floor: devices are due by lastSelectedRound + floor + 1; earliest-deadline-first
    //    with look-ahead — pick now as many of the earliest-due as needed so that the devices due within the
    //    next j rounds fit into those rounds' picks (at most (j + 1) · k), so the floor holds whenever it can.
    if (o.floor > 0) {
      const due = (r: Row) => (r.h?.lastSelectedRound ?? 0) + o.floor + 1;
      const byDue = [...rows].sort((a, b) => due(a) - due(b) || a.rank - b.rank);
      let force = 0;
      for (let i = 0; i < byDue.length; i++) {
        const j = Math.max(0, due(byDue[i]) - ctx.round); // rounds after this one before it is due
        if (j > o.floor) break;
        force = Math.max(force, i + 1 - j * k);
      }
      force = Math.min(force, k);
      for (const r of byDue.slice(0, force)) picked.push(r.id);
      const taken = new Set(picked);
      rows = rows.filter((r) => !taken.has(r.id));
    }
    const left = k - picked.length;
    if (left === 0) return picked;

    // 2. Split the remaining picks between exploration and exploitation.
    const explored = rows.filter((r) => (r.h?.selected ?? 0) > 0);
    const unexplored = rows.filter((r) => (r.h?.selected ?? 0) === 0);
    let nExplore = Math.min(unexplored.length, Math.round(explorationFactor(o, ctx.round) * left));
    const nExploit = Math.min(explored.length, left - nExplore);
    nExplore = Math.min(unexplored.length, left - nExploit);

    // 3. Exploitation: utility, cutoff, sampling by utility.
    if (nExploit > 0) {
      const T =
        o.T ??
        percentile(
          explored.map((r) => r.t),
          o.Tpct / 100,
        );
      const stat = (r: Row) => {
        const loss = r.h?.lastLoss;
        const n = r.h?.lastSamples ?? r.p.numSamples;
        return loss !== undefined && n !== undefined && loss > 0 && n > 0 ? n * loss : 0;
      };
      const maxStat = Math.max(0, ...explored.map(stat));
      const logR = Math.log(Math.max(1, ctx.round));
      const util = new Map<string, number>();
      for (const r of explored) {
        let u = maxStat > 0 ? stat(r) / maxStat : 0;
        const last = Math.max(1, r.h?.lastSelectedRound ?? 1);
        u += Math.sqrt((STALENESS_WEIGHT * logR) / last);
        if (r.t > T) u *= Math.pow(T / r.t, o.alpha);
        u *= Math.pow(o.timeoutPenalty, r.h?.consecutiveTimeouts ?? 0);
        util.set(r.id, u);
      }
      const sorted = [...explored].sort((a, b) => util.get(b.id)! - util.get(a.id)! || a.rank - b.rank);
      const threshold = o.cutoff * util.get(sorted[nExploit - 1].id)!;
      const admitted = sorted.filter((r, i) => i < nExploit || util.get(r.id)! >= threshold);
      const anyPositive = admitted.some((r) => util.get(r.id)! > 0);
      const chosen = weightedSample(admitted, (r) => (anyPositive ? util.get(r.id)! : 1), nExploit, rng);
      for (const r of chosen) picked.push(r.id);
    }

    // 4. Exploration: never-picked devices, sampled by speed.
    if (nExplore > 0) {
      const chosen = weightedSample(unexplored, (r) => 1 / r.t, nExplore, rng);
      for (const r of chosen) picked.push(r.id);
    }
    return picked;
  }
}
