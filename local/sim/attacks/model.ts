/**
 * Model-poisoning attacks as a round interceptor (core/round/aggregation.ts RoundInterceptor): the outermost link
 * of the round's aggregation chain, so the robust rule, DP and the strategy see the attackers' updates exactly as a
 * server would. The attacker is omniscient and colluding, as in Blades (Li et al. 2023, "Blades: A Unified Benchmark
 * Suite for Byzantine Attacks and Defenses in Federated Learning") and the papers below: it knows the honest updates
 * of the round, and all attackers of a round send the same crafted update where the attack defines one.
 *
 * Memory: honest updates stream through to the inner aggregation as they arrive; only what the attack needs is kept:
 *   - ALIE: a per-coordinate running mean and sum of squared deviations of the honest updates (Welford 1962), two
 *     Float64Arrays of the model's length;
 *   - IPM: the running mean only;
 *   - sign-flip and scaling: each attacker's own update (they transform their honest Δ);
 *   - gaussian: nothing but the attackers' sample counts.
 * The attackers' updates are held back until `finish`, crafted then (when every honest update of the round is
 * known) and added to the inner aggregation before it finishes. Compressed envelopes are decoded (core/compress).
 * With no honest update in a round, ALIE and IPM use the statistics of the attackers' own (true) updates.
 */
import { updateValues } from "../../../core/robust/aggregation";
import { Rng } from "../../../core/data/rng";
import { fail } from "../../../core/errors";
import type { InterceptContext, RoundInterceptor } from "../../../core/round/aggregation";
import { allFinite, checkSamples } from "../../../core/strategies/fedavg";
import type {
  FitFailure,
  FitResult,
  RoundAggregation,
  RoundResult,
  SecureAggregate,
} from "../../../core/strategies/strategy";
import { attackParam, type AttackSpec, type ModelAttackKind } from "./spec";

/** Per-coordinate running mean and M2 (Welford 1962; Knuth TAOCP vol. 2, 4.2.2), unweighted. */
export class RunningMoments {
  count = 0;
  readonly mean: Float64Array;
  readonly m2?: Float64Array;
  constructor(length: number, withVariance: boolean) {
    this.mean = new Float64Array(length);
    if (withVariance) this.m2 = new Float64Array(length);
  }
  push(x: Float32Array): void {
    this.count++;
    const k = this.count;
    const mean = this.mean;
    const m2 = this.m2;
    if (m2) {
      for (let i = 0; i < x.length; i++) {
        const d = x[i]! - mean[i]!;
        mean[i]! += d / k;
        m2[i]! += d * (x[i]! - mean[i]!);
      }
    } else {
      for (let i = 0; i < x.length; i++) mean[i]! += (x[i]! - mean[i]!) / k;
    }
  }
  /** Sample standard deviation of coordinate i (n − 1 in the denominator; 0 for fewer than two updates). */
  std(i: number): number {
    return this.count > 1 && this.m2 ? Math.sqrt(Math.max(0, this.m2[i]! / (this.count - 1))) : 0;
  }
}

/**
 * Φ⁻¹(p), the standard normal quantile: Acklam's rational approximation (P. J. Acklam 2003, "An algorithm for
 * computing the inverse normal cumulative distribution function"; relative error < 1.15e-9).
 */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) return p === 0 ? -Infinity : p === 1 ? Infinity : NaN;
  const a = [
    -39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716,
    2.506628277459239,
  ];
  const b = [
    -54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572,
  ];
  const c = [
    -0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968,
    2.938163982698783,
  ];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (
      (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) /
      ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1)
    );
  }
  if (p > 1 - lo) return -normalQuantile(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return (
    ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1)
  );
}

/**
 * ALIE's z_max (Baruch, Baruch and Goldberg, NeurIPS 2019, "A Little Is Enough: Circumventing Defenses For
 * Distributed Learning", Algorithm 3): with n workers of which f are corrupt, s = ⌊n/2 + 1⌋ − f workers must be
 * "won over", and z_max = Φ⁻¹((n − s)/n). (The probability is kept in [0.5, 1 − 1e-9] so a majority of attackers
 * gives a large but finite z.)
 */
export function alieZ(n: number, f: number): number {
  const s = Math.floor(n / 2 + 1) - f;
  const p = Math.min(1 - 1e-9, Math.max(0.5, (n - s) / n));
  return normalQuantile(p);
}

/**
 * The crafted update of one attacker. `own` is the attacker's true update (sign-flip, scaling), `honest` the running
 * moments of the round's honest updates (ALIE, IPM), `rng` the attacker's seeded generator (gaussian), `n` and `f`
 * the round's updates and attackers (ALIE's z). Pure: the tests check it against hand computations.
 */
export function craftUpdate(
  kind: ModelAttackKind,
  param: number | undefined,
  o: { length: number; own?: Float32Array; honest?: RunningMoments; rng?: Rng; n?: number; f?: number },
): Float32Array {
  const out = new Float32Array(o.length);
  switch (kind) {
    case "sign-flip": {
      // −S·Δ: the honest update, reversed (Blades' "signflipping"; S = 1 in Blades and Karimireddy et al. 2021).
      const s = param ?? 1;
      for (let i = 0; i < out.length; i++) out[i] = -s * o.own![i]!;
      return out;
    }
    case "scaling": {
      // λ·Δ: boosting (Bhagoji et al. ICML 2019 "Analyzing Federated Learning through an Adversarial Lens";
      // Bagdasaryan et al. AISTATS 2020's model replacement scales by n/η).
      const l = param ?? 100;
      for (let i = 0; i < out.length; i++) out[i] = l * o.own![i]!;
      return out;
    }
    case "gaussian": {
      // N(0, σ²) per coordinate (Blades' "noise" attack; Li et al. 2023).
      const sigma = param ?? 10;
      for (let i = 0; i < out.length; i++) out[i] = sigma * o.rng!.normal();
      return out;
    }
    case "alie": {
      // μ_j − z·σ_j per coordinate j over the honest updates (Baruch et al. 2019, Algorithm 3).
      const z = param ?? alieZ(o.n!, o.f!);
      const h = o.honest!;
      for (let i = 0; i < out.length; i++) out[i] = h.mean[i]! - z * h.std(i);
      return out;
    }
    case "ipm": {
      // −ε·μ: inner-product manipulation (Xie, Koyejo and Gupta, UAI 2020, "Fall of Empires: Breaking Byzantine-
      // tolerant SGD by Inner Product Manipulation"): small ε fools median/Krum, large ε reverses the mean.
      const eps = param ?? 0.1;
      const h = o.honest!;
      for (let i = 0; i < out.length; i++) out[i] = -eps * h.mean[i]!;
      return out;
    }
  }
}

/** What an attacker's crafting seed is mixed from: the job's seed, the round and the device. */
function craftSeed(seed: number, round: number, deviceId: string): number {
  let h = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(round + 1, 0x85ebca6b)) >>> 0;
  for (let i = 0; i < deviceId.length; i++) h = Math.imul(h ^ deviceId.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** The interceptor playing a job's model-poisoning attackers (the devices in `attackers`). */
export class ModelAttack implements RoundInterceptor {
  private readonly attackers: ReadonlySet<string>;
  constructor(
    readonly spec: AttackSpec & { kind: ModelAttackKind },
    attackers: Iterable<string>,
    private readonly seed: number,
  ) {
    this.attackers = new Set(attackers);
  }
  wrap(inner: RoundAggregation, ctx: InterceptContext): RoundAggregation {
    return new AttackedRound(inner, ctx, this.spec, this.attackers, this.seed);
  }
}

interface Held {
  readonly result: FitResult;
  readonly own?: Float32Array;
}

class AttackedRound implements RoundAggregation {
  private readonly held: Held[] = [];
  private readonly seen = new Set<string>();
  private readonly honest?: RunningMoments;
  /** ALIE/IPM with no honest update this round: the attackers' own true updates stand in. */
  private readonly own?: RunningMoments;
  private honestCount = 0;
  private readonly length: number;
  constructor(
    private readonly inner: RoundAggregation,
    private readonly ctx: InterceptContext,
    private readonly spec: AttackSpec & { kind: ModelAttackKind },
    private readonly attackers: ReadonlySet<string>,
    private readonly seed: number,
  ) {
    this.length = ctx.global.length;
    const k = spec.kind;
    if (k === "alie" || k === "ipm") {
      this.honest = new RunningMoments(this.length, k === "alie");
      this.own = new RunningMoments(this.length, k === "alie");
    }
  }
  get count(): number {
    return this.inner.count + this.held.length;
  }
  private decode(r: FitResult): Float32Array {
    return updateValues(r, this.length);
  }

  add(r: FitResult): void {
    if (!this.attackers.has(r.deviceId)) {
      // The honest update goes on as it came (the inner chain validates it); the attacker then reads it.
      this.inner.add(r);
      if (this.honest && !this.seen.has(r.deviceId)) {
        const x = this.decode(r);
        if (allFinite(x)) this.honest.push(x);
      }
      this.seen.add(r.deviceId);
      this.honestCount++;
      return;
    }
    if (this.seen.has(r.deviceId))
      fail("E_STRATEGY_DUPLICATE", `round ${this.ctx.round}: a second update from '${r.deviceId}'`);
    checkSamples(r);
    const k = this.spec.kind;
    const needOwn = k === "sign-flip" || k === "scaling" || k === "alie" || k === "ipm";
    let own: Float32Array | undefined;
    if (needOwn) {
      own = this.decode(r);
      // Held until finish: a copy, since the caller may reuse its array once add returns.
      if (own === r.delta) own = own.slice();
      if (!allFinite(own)) fail("E_STRATEGY_NONFINITE", `update from '${r.deviceId}' has NaN or Infinity`);
      this.own?.push(own);
    }
    this.seen.add(r.deviceId);
    this.held.push({ result: r, ...(k === "sign-flip" || k === "scaling" ? { own } : {}) });
  }
  addAggregate(a: SecureAggregate): void {
    // A secure sum hides each update: the simulator refuses model attacks with secure aggregation
    // (local/sim/config.ts), so this only passes an aggregate on.
    this.inner.addAggregate(a);
  }
  finish(failures: readonly FitFailure[]): RoundResult {
    const held = this.held.splice(0);
    const n = this.honestCount + held.length;
    const stats = this.honest && this.honest.count > 0 ? this.honest : this.own;
    for (const h of held) {
      const delta = craftUpdate(this.spec.kind, attackParam(this.spec), {
        length: this.length,
        ...(h.own ? { own: h.own } : {}),
        ...(stats ? { honest: stats } : {}),
        rng:
          this.spec.kind === "gaussian"
            ? new Rng(craftSeed(this.seed, this.ctx.round, h.result.deviceId))
            : undefined,
        n,
        f: held.length,
      });
      this.inner.add({ ...h.result, delta });
    }
    return this.inner.finish(failures);
  }
}
