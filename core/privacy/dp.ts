/**
 * User-level differential privacy for the global model: DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018)
 * with adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
 * Clipping", NeurIPS 2021), in three placements:
 *
 *  - central: the server clips every update to L2 norm C, sums them with equal weight, and adds N(0, (zC)²) to the
 *    sum. With secure aggregation the devices clip (the server cannot see single updates) and the server adds the
 *    noise to the unmasked sum. Trusts the server with the noise.
 *  - distributed: each device clips and adds N(0, (zC)²/n') before masking, so the securely aggregated sum of
 *    s ≥ n' survivors carries noise of variance (zC)²·s/n' ≥ (zC)² and the server never holds a less noisy value.
 *    n' is the smallest survivor count a round accepts: a round with fewer is discarded before anything is unmasked
 *    (so dropouts can never shrink the noise below the accounted level).
 *  - local: each device clips and adds N(0, (zC)²) to its own update; no trust in the server, its own accounting
 *    (core/privacy/accountant.ts, mode "local").
 *
 * Updates are averaged with equal weight (a device's sample count would otherwise scale its sensitivity): the new
 * model is global + (Σ clip(Δ_k) + noise) / s, handed to the strategy as one aggregate, so FedAvgM and the adaptive
 * server optimizers work on the private mean unchanged.
 *
 * Adaptive clipping (Andrew et al. 2021, Algorithm 1): each device also contributes b_k − ½ where b_k = 1 when
 * ‖Δ_k‖ ≤ C; the noisy sum (noise std σ_b) gives b̄, and C ← C·exp(−η (b̄ − γ)) tracks the γ-quantile of update
 * norms. The update sum then gets z_Δ = (z⁻² − (2σ_b)⁻²)^(−½) so that the pair of releases costs exactly what one
 * Gaussian release with multiplier z costs (Andrew et al. 2021, Theorem 1); z < 2σ_b is required.
 */
import { decodeTensor } from "../compress";
import { Accumulator } from "../tensor/accumulator";
import { firstNonFinite } from "../tensor/finite";
import { fail } from "../errors";
import type { DpOrder } from "../protocol/messages";
import type {
  FitFailure,
  FitResult,
  RoundAggregation,
  RoundResult,
  SecureAggregate,
} from "../strategies/strategy";
import { RoundMetricsSum } from "../strategies/metrics";
import { checkDiscount } from "../strategies/fedavg";
import { PrivacyAccountant, type PrivacySpent } from "./accountant";
import { clipL2, GaussianNoise, l2Norm } from "./mechanism";
import type { RdpConversion } from "./rdp";

export type DpPlacement = "central" | "distributed" | "local";
export const DP_PLACEMENTS: readonly DpPlacement[] = ["central", "distributed", "local"];

export interface DpOptions {
  /** z: noise std of the update sum divided by the clip norm. */
  readonly noiseMultiplier: number;
  /** A fixed clip norm C, or "adaptive" (Andrew et al. 2021). */
  readonly clip: number | "adaptive";
  /** Adaptive: the starting clip norm (Andrew et al. start at 0.1). */
  readonly initialClip?: number;
  /** Adaptive: γ, the quantile of update norms the clip norm tracks (default 0.5). */
  readonly targetQuantile?: number;
  /** Adaptive: η_C of the geometric update (default 0.2). */
  readonly clipLearningRate?: number;
  /** Adaptive: σ_b, noise std on the clipped count (default clientsPerRound / 20, as Andrew et al.). */
  readonly clipCountStddev?: number;
  readonly delta: number;
  /** ε_max: rounds stop before the next one would spend more. */
  readonly epsilonBudget?: number;
  readonly placement: DpPlacement;
  /** n' (distributed): the fewest updates a round may sum; default ⌈0.8 · clientsPerRound⌉. */
  readonly minSurvivors?: number;
  readonly clientsPerRound: number;
  /** Devices in the fleet: q = clientsPerRound / fleetSize. */
  readonly fleetSize: number;
  readonly conversion?: RdpConversion;
  /** Tests only: reproducible server-side noise (no privacy). */
  readonly noiseSeed?: number;
}

/** What a round did for privacy; in the round record and results.json. */
export interface DpRoundRecord {
  readonly placement: DpPlacement;
  /** Clip norm used this round. */
  readonly clip: number;
  /** Std of the Gaussian noise in the released sum (all contributions). */
  readonly noiseStd: number;
  /** Updates in the sum. */
  readonly count: number;
  /** False when nothing was released (no update, or fewer than n' survivors): the model was kept. */
  readonly released: boolean;
  readonly reason?: string;
  /** Adaptive clipping: the noisy fraction of updates that were within the clip norm. */
  readonly unclippedFraction?: number;
  /** Clip norm for the next round (adaptive). */
  readonly nextClip?: number;
  /** Privacy spent so far, after this round. */
  readonly epsilon: number;
  readonly delta: number;
  readonly order: number;
}

export interface DpState {
  readonly clip: number;
  readonly ledger: { steps: number; perDevice: Record<string, number> };
  readonly status?: DpStatus;
}

export interface DpStatus {
  readonly state: "running" | "budget-exhausted";
  readonly reason?: string;
}

function check(ok: boolean, message: string): void {
  if (!ok) fail("E_DP_CONFIG", message);
}

/** Validates DP options; one E_DP_CONFIG line for the first problem. */
export function validateDpOptions(o: DpOptions): void {
  check(
    o.noiseMultiplier > 0 && Number.isFinite(o.noiseMultiplier),
    `noise multiplier must be > 0, got ${o.noiseMultiplier}`,
  );
  check(
    o.clip === "adaptive" || (typeof o.clip === "number" && o.clip > 0 && Number.isFinite(o.clip)),
    `clip must be a positive number or 'adaptive', got '${String(o.clip)}'`,
  );
  check(o.delta > 0 && o.delta < 1, `delta must be in (0, 1), got ${o.delta}`);
  check(
    DP_PLACEMENTS.includes(o.placement),
    `placement must be central, distributed or local, got '${String(o.placement)}'`,
  );
  check(
    Number.isInteger(o.clientsPerRound) && o.clientsPerRound > 0,
    `clients per round must be a positive integer`,
  );
  check(
    Number.isInteger(o.fleetSize) && o.fleetSize >= o.clientsPerRound,
    `fleet size ${o.fleetSize} must be an integer ≥ clients per round ${o.clientsPerRound}`,
  );
  if (o.minSurvivors !== undefined) {
    check(
      Number.isInteger(o.minSurvivors) && o.minSurvivors >= 1 && o.minSurvivors <= o.clientsPerRound,
      `min survivors must be an integer in 1..${o.clientsPerRound}, got ${o.minSurvivors}`,
    );
  }
  if (o.clip === "adaptive") {
    check(
      o.placement !== "local",
      "adaptive clipping needs central or distributed placement (local DP has no private count)",
    );
    const q = o.targetQuantile ?? 0.5;
    check(q > 0 && q < 1, `target quantile must be in (0, 1), got ${q}`);
    const eta = o.clipLearningRate ?? 0.2;
    check(eta > 0 && Number.isFinite(eta), `clip learning rate must be > 0, got ${eta}`);
    const c0 = o.initialClip ?? 0.1;
    check(c0 > 0 && Number.isFinite(c0), `initial clip must be > 0, got ${c0}`);
    const sb = o.clipCountStddev ?? o.clientsPerRound / 20;
    check(sb > 0, `clipped-count noise std must be > 0, got ${sb}`);
    check(
      o.noiseMultiplier < 2 * sb,
      `adaptive clipping needs noise multiplier ${o.noiseMultiplier} < 2·σ_b = ${2 * sb} ` +
        `(raise the clipped-count noise std σ_b, --dp-clip-count-stddev, or the clients per round)`,
    );
  }
}

/**
 * One job's differential privacy: the clip norm (fixed or adaptive), the device orders, the private aggregation of
 * each round and the privacy ledger with its budget.
 */
export class DifferentialPrivacy {
  readonly options: DpOptions;
  private clipNorm: number;
  readonly accountant: PrivacyAccountant;
  private readonly noise: GaussianNoise;
  private statusNow: DpStatus = { state: "running" };
  /** The last round's record (set by the aggregation's finish). */
  lastRound: DpRoundRecord | undefined;

  constructor(options: DpOptions) {
    validateDpOptions(options);
    this.options = options;
    this.clipNorm = options.clip === "adaptive" ? (options.initialClip ?? 0.1) : options.clip;
    this.accountant = new PrivacyAccountant({
      mode: options.placement === "local" ? "local" : "sampled",
      noiseMultiplier: options.noiseMultiplier,
      samplingRate: options.clientsPerRound / options.fleetSize,
      delta: options.delta,
      epsilonBudget: options.epsilonBudget,
      conversion: options.conversion,
    });
    this.noise = new GaussianNoise(options.noiseSeed);
  }

  /** The job's privacy state as JSON (clip norm, ledger, status), to persist between invocations. */
  exportState(): DpState {
    return { clip: this.clipNorm, ledger: this.accountant.exportState(), status: this.statusNow };
  }

  importState(s: DpState): void {
    if (!(s.clip > 0) || !Number.isFinite(s.clip))
      fail("E_DP_STATE", `stored clip norm ${s.clip} is invalid`);
    this.clipNorm = s.clip;
    this.accountant.importState(s.ledger);
    this.statusNow = s.status ?? { state: "running" };
  }

  get adaptive(): boolean {
    return this.options.clip === "adaptive";
  }

  /** The clip norm the next round uses. */
  get clip(): number {
    return this.clipNorm;
  }

  get status(): DpStatus {
    return this.statusNow;
  }

  spent(): PrivacySpent {
    return this.accountant.spent();
  }

  /** σ_b (adaptive). */
  get countStddev(): number {
    return this.options.clipCountStddev ?? this.options.clientsPerRound / 20;
  }

  /** z_Δ: the update sum's multiplier (z itself with a fixed clip norm). */
  get updateNoiseMultiplier(): number {
    const z = this.options.noiseMultiplier;
    if (!this.adaptive) return z;
    return 1 / Math.sqrt(1 / (z * z) - 1 / (4 * this.countStddev * this.countStddev));
  }

  /** n' for the distributed placement (0 otherwise: any count is fine). */
  get minSurvivors(): number {
    if (this.options.placement !== "distributed") return 0;
    return this.options.minSurvivors ?? Math.ceil(0.8 * this.options.clientsPerRound);
  }

  /**
   * Checks the budget before a round. False (and the status says why) when one more round would exceed ε_max.
   */
  allowsNextRound(): boolean {
    if (this.statusNow.state === "budget-exhausted") return false;
    if (!this.accountant.wouldExceed()) return true;
    const s = this.spent();
    const next = this.accountant.epsilonAfter(this.accountant.countedSteps + 1).epsilon;
    this.statusNow = {
      state: "budget-exhausted",
      reason:
        `privacy budget ε=${this.options.epsilonBudget} (δ=${this.options.delta}) reached: ` +
        `${s.steps} round(s) spent ε=${round4(s.epsilon)}, one more would spend ε=${round4(next)}`,
    };
    return false;
  }

  /**
   * What each device does to its update this round (undefined: nothing, the server clips and noises). With
   * secure aggregation the devices always clip, since the server sees only the sum.
   */
  deviceOrder(secure: boolean): DpOrder | undefined {
    const C = this.clipNorm;
    const zd = this.updateNoiseMultiplier;
    switch (this.options.placement) {
      case "central":
        return secure
          ? { clip: C, noiseStd: 0, ...(this.adaptive ? { clipBitNoiseStd: 0 } : {}) }
          : undefined;
      case "distributed": {
        const n = this.minSurvivors;
        return {
          clip: C,
          noiseStd: (zd * C) / Math.sqrt(n),
          ...(this.adaptive ? { clipBitNoiseStd: this.countStddev / Math.sqrt(n) } : {}),
        };
      }
      case "local":
        return { clip: C, noiseStd: this.options.noiseMultiplier * C };
    }
  }

  /** Extra values each device appends to its securely aggregated vector (the clip bit, adaptive only). */
  extraSecureValues(): number {
    return this.adaptive ? 1 : 0;
  }

  /**
   * Wraps a round's strategy aggregation: updates are clipped (central, no secure aggregation), summed with equal
   * weight, noised (central), and handed to `inner` as one aggregate at `finish`.
   */
  aggregate(
    inner: RoundAggregation,
    ctx: { round: number; layoutHash: string; length: number; current: Float32Array },
  ): RoundAggregation {
    return new DpAggregation(this, inner, ctx);
  }

  /** @internal Called by DpAggregation.finish. */
  conclude(
    sum: Float64Array,
    bitSum: number,
    deviceIds: string[],
  ): { mean: Float32Array | null; record: DpRoundRecord } {
    const o = this.options;
    const s = deviceIds.length;
    const C = this.clipNorm;
    const zd = this.updateNoiseMultiplier;
    const base = { placement: o.placement, clip: C, count: s, delta: o.delta };
    const withSpent = (r: Omit<DpRoundRecord, "epsilon" | "order" | "delta">): DpRoundRecord => {
      const sp = this.spent();
      return { ...r, epsilon: sp.epsilon, order: sp.order, delta: o.delta };
    };
    if (s === 0 || s < this.minSurvivors) {
      const reason =
        s === 0
          ? "no update to release"
          : `only ${s} update(s), fewer than the ${this.minSurvivors} the distributed noise is calibrated for`;
      return { mean: null, record: withSpent({ ...base, noiseStd: 0, released: false, reason }) };
    }
    let noiseStd: number;
    let noisyBits = bitSum;
    if (o.placement === "central") {
      noiseStd = zd * C;
      this.noise.addTo(sum, noiseStd);
      if (this.adaptive) noisyBits += this.countStddev * this.noise.next();
    } else if (o.placement === "distributed") {
      noiseStd = zd * C * Math.sqrt(s / this.minSurvivors);
    } else {
      noiseStd = o.noiseMultiplier * C * Math.sqrt(s);
    }
    const mean = new Float32Array(sum.length);
    for (let i = 0; i < sum.length; i++) mean[i] = sum[i]! / s;
    this.accountant.record(deviceIds);
    let adaptive: { unclippedFraction?: number; nextClip?: number } = {};
    if (this.adaptive) {
      // Bits were centred (b − ½) so the count's sensitivity is ½ (Andrew et al. 2021, Sec. 3).
      const frac = noisyBits / s + 0.5;
      const next = C * Math.exp(-(o.clipLearningRate ?? 0.2) * (frac - (o.targetQuantile ?? 0.5)));
      this.clipNorm = next;
      adaptive = { unclippedFraction: frac, nextClip: next };
    }
    return { mean, record: withSpent({ ...base, noiseStd, released: true, ...adaptive }) };
  }
}

/** The centred clip indicator b − ½ for an update of L2 norm `norm` under clip norm C. */
export function clipBit(norm: number, clip: number): number {
  return norm <= clip ? 0.5 : -0.5;
}

/**
 * A device's side (distributed and local placements, and central with secure aggregation): clips `delta` in place
 * to the order's norm, adds its share of the noise, and returns the (noised) centred clip bit when asked for one.
 */
export function privatizeUpdate(
  delta: Float32Array,
  order: DpOrder,
  noise: GaussianNoise = new GaussianNoise(),
): { norm: number; clipBit?: number } {
  const { norm } = clipL2(delta, order.clip);
  noise.addTo(delta, order.noiseStd);
  if (order.clipBitNoiseStd === undefined) return { norm };
  return { norm, clipBit: clipBit(norm, order.clip) + order.clipBitNoiseStd * noise.next() };
}

class DpAggregation implements RoundAggregation {
  /** Σ scale_k · v_k in the strategies' SIMD accumulator (weights = the clip scales, or s for an aggregate). */
  private readonly acc: Accumulator;
  private bitSum = 0;
  private readonly ids: string[] = [];
  private readonly seen = new Set<string>();
  /** The round's training metrics (loss weighted by the devices' reported sample counts, not the DP weights). */
  private readonly metrics = new RoundMetricsSum();
  /** Central without secure aggregation: the server clips single updates itself. */
  private readonly serverClips: boolean;

  constructor(
    private readonly dp: DifferentialPrivacy,
    private readonly inner: RoundAggregation,
    private readonly ctx: { round: number; layoutHash: string; length: number; current: Float32Array },
  ) {
    this.acc = new Accumulator(ctx.length);
    this.serverClips = dp.options.placement === "central";
  }

  get count(): number {
    return this.ids.length;
  }

  add(r: FitResult): void {
    if (this.seen.has(r.deviceId)) fail("E_DP_DUPLICATE", `second update from '${r.deviceId}' this round`);
    // A raw update is read in place (never modified); a compressed one is decoded into a fresh array.
    const v =
      r.delta instanceof Float32Array
        ? r.delta
        : decodeTensor(r.delta.bytes, { layoutHash: this.ctx.layoutHash, length: this.ctx.length });
    if (v.length !== this.ctx.length)
      fail("E_DP_INPUT", `update from '${r.deviceId}' has ${v.length} values, the model ${this.ctx.length}`);
    const norm = l2Norm(v);
    if (!Number.isFinite(norm)) fail("E_DP_INPUT", `update from '${r.deviceId}' has a non-finite value`);
    let bit = 0;
    let scale = 1;
    if (this.serverClips) {
      // Clipping folded into the sum: Σ v·min(1, C/‖v‖) (the same as clipL2, without a copy).
      const C = this.dp.clip;
      if (norm > C) scale = C / norm;
      bit = clipBit(norm, C);
    } else if (this.dp.adaptive) {
      // The device clipped and noised; its (noised) clip indicator comes with the update.
      const b = r.dpClipBit;
      if (typeof b !== "number" || !Number.isFinite(b))
        fail("E_DP_INPUT", `update from '${r.deviceId}' lacks its clip indicator (adaptive clipping)`);
      bit = b;
    }
    // Asynchronous rounds: the staleness weight s(τ) ≤ 1 scales the clipped update; the sensitivity stays ≤ C
    // and the mean still divides by the count, so stale updates move the model less (docs/async.md).
    this.acc.add(v, scale * checkDiscount(r), scale);
    this.bitSum += bit;
    this.seen.add(r.deviceId);
    this.ids.push(r.deviceId);
    this.metrics.addUpdate(r.numSamples, r.metrics);
  }

  addAggregate(a: SecureAggregate): void {
    const extra = this.dp.extraSecureValues();
    if (a.mean.length !== this.ctx.length + extra) {
      fail("E_DP_INPUT", `secure aggregate has ${a.mean.length} values, expected ${this.ctx.length + extra}`);
    }
    // Devices advertised weight 1, so the mean is Σ Δ_k / s.
    const s = a.deviceIds.length;
    this.acc.add(extra ? a.mean.subarray(0, this.ctx.length) : a.mean, s);
    if (extra) this.bitSum += a.mean[this.ctx.length]! * s;
    for (const id of a.deviceIds) {
      this.seen.add(id);
      this.ids.push(id);
    }
    this.metrics.addAggregate(a);
  }

  finish(failures: readonly FitFailure[]): RoundResult {
    return { weights: this.release(failures), metrics: this.metrics.result() };
  }

  private release(failures: readonly FitFailure[]): Float32Array {
    // The weighted mean times the total weight is the (clipped) sum; noise is added to it in float64.
    const w = this.acc.totalWeight;
    const m = this.acc.mean();
    this.acc.dispose();
    const sum = new Float64Array(m.length);
    for (let i = 0; i < m.length; i++) sum[i] = m[i]! * w;
    const { mean, record } = this.dp.conclude(sum, this.bitSum, this.ids);
    this.dp.lastRound = record;
    if (!mean) return this.ctx.current;
    if (firstNonFinite(mean) >= 0) {
      // The released mean overflowed float32 (noise std z·C, or the clipped sum, beyond ±3.4e38). The strategy
      // would refuse it by throwing; instead the round yields the non-finite model it released, and the job stops
      // there as diverged (core/round/server.ts runJob, core/tensor/finite.ts).
      const next = new Float32Array(mean.length);
      for (let i = 0; i < mean.length; i++) next[i] = this.ctx.current[i]! + mean[i]!;
      return next;
    }
    this.inner.addAggregate({ deviceIds: this.ids, totalSamples: this.ids.length, mean });
    return this.inner.finish(failures).weights;
  }
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}
