/**
 * A job's privacy ledger: the RDP of every round that released an aggregate, composed (RDP adds up over
 * adaptive compositions, Mironov 2017 Prop. 1) and converted to (ε, δ) with core/privacy/rdp.ts.
 *
 *  - central and distributed placement: each released round is one Poisson-subsampled Gaussian step with
 *    sampling rate q = participants per round / fleet size and noise multiplier z (user-level DP, add/remove one
 *    device's data; McMahan et al. 2018). The selection draws a fixed-size sample, and q is the standard
 *    approximation TF Privacy and TensorFlow Federated use for that.
 *  - local placement: the server sees which devices took part, so there is no amplification by sampling. A device
 *    is protected by its own noise alone: each of its rounds is a Gaussian mechanism whose sensitivity is 2C (its
 *    clipped update may be replaced by any other clipped update), so its multiplier is z/2 at q = 1; the ledger
 *    reports the device that took part most often.
 *
 * The budget check runs before a round: `wouldExceed()` is true when one more round would spend more than ε_max.
 */
import { fail } from "../errors";
import { computeRdp, DEFAULT_ORDERS, epsilonFromRdp, type RdpConversion } from "./rdp";

export type AccountingMode = "sampled" | "local";

export interface AccountantOptions {
  readonly mode: AccountingMode;
  /** Noise multiplier z (noise std / clip norm) of the update sum. */
  readonly noiseMultiplier: number;
  /** Sampling rate q (mode "sampled"). */
  readonly samplingRate: number;
  readonly delta: number;
  /** ε_max; undefined = no budget (ε is still reported). */
  readonly epsilonBudget?: number;
  readonly conversion?: RdpConversion;
  readonly orders?: readonly number[];
}

export interface PrivacySpent {
  /** ε spent so far at `delta` (0 before the first released round). */
  readonly epsilon: number;
  /** The RDP order attaining ε (NaN before the first released round). */
  readonly order: number;
  readonly delta: number;
  /** Released rounds in the ledger (local mode: of the device that took part most often). */
  readonly steps: number;
}

export class PrivacyAccountant {
  private readonly orders: readonly number[];
  /** RDP of one step, per order. */
  private readonly perStep: number[];
  private steps = 0;
  private readonly perDevice = new Map<string, number>();

  constructor(readonly opts: AccountantOptions) {
    if (opts.mode !== "sampled" && opts.mode !== "local") {
      fail("E_DP_CONFIG", `accounting mode must be 'sampled' or 'local', got '${String(opts.mode)}'`);
    }
    if (!(opts.noiseMultiplier > 0) || !Number.isFinite(opts.noiseMultiplier)) {
      fail("E_DP_CONFIG", `noise multiplier must be a positive number, got ${opts.noiseMultiplier}`);
    }
    if (opts.epsilonBudget !== undefined && !(opts.epsilonBudget > 0)) {
      fail("E_DP_CONFIG", `epsilon budget must be a positive number, got ${opts.epsilonBudget}`);
    }
    this.orders = opts.orders ?? DEFAULT_ORDERS;
    this.perStep =
      opts.mode === "local"
        ? computeRdp(1, opts.noiseMultiplier / 2, 1, this.orders)
        : computeRdp(opts.samplingRate, opts.noiseMultiplier, 1, this.orders);
    // Validates delta and the conversion once, at configuration time.
    this.epsilonAfter(0);
    // A multiplier so small that one round's ε is already infinite (σ² underflows) protects nothing; ε must stay
    // a finite number everywhere it is reported (results.json, the job state), so refuse it here.
    const one = this.epsilonAfter(1).epsilon;
    if (!Number.isFinite(one)) {
      fail(
        "E_DP_CONFIG",
        `noise multiplier ${opts.noiseMultiplier} gives an infinite ε after one round at δ=${opts.delta}`,
      );
    }
  }

  /** Records one released round and the devices whose (noised) updates were in it. */
  record(deviceIds: readonly string[]): void {
    if (this.opts.mode === "local") {
      for (const id of deviceIds) this.perDevice.set(id, (this.perDevice.get(id) ?? 0) + 1);
    } else {
      this.steps++;
    }
  }

  /** Released steps that count: rounds (sampled), or the most rounds any one device took part in (local). */
  get countedSteps(): number {
    if (this.opts.mode === "sampled") return this.steps;
    let m = 0;
    for (const c of this.perDevice.values()) m = Math.max(m, c);
    return m;
  }

  /** The ledger as JSON-safe state (for a job persisted between Function invocations). */
  exportState(): { steps: number; perDevice: Record<string, number> } {
    return { steps: this.steps, perDevice: Object.fromEntries(this.perDevice) };
  }

  importState(s: { steps: number; perDevice?: Record<string, number> }): void {
    if (!Number.isInteger(s.steps) || s.steps < 0) fail("E_DP_STATE", `ledger steps must be an integer ≥ 0`);
    this.steps = s.steps;
    this.perDevice.clear();
    for (const [id, c] of Object.entries(s.perDevice ?? {})) {
      if (!Number.isInteger(c) || c < 0) fail("E_DP_STATE", `ledger count of '${id}' must be an integer ≥ 0`);
      this.perDevice.set(id, c);
    }
  }

  spent(): PrivacySpent {
    const steps = this.countedSteps;
    const r = this.epsilonAfter(steps);
    return { epsilon: r.epsilon, order: r.order, delta: this.opts.delta, steps };
  }

  /** True when one more released round would take ε past the budget (never without a budget). */
  wouldExceed(): boolean {
    if (this.opts.epsilonBudget === undefined) return false;
    return this.epsilonAfter(this.countedSteps + 1).epsilon > this.opts.epsilonBudget;
  }

  /** ε after `steps` released rounds. */
  epsilonAfter(steps: number): { epsilon: number; order: number } {
    if (steps === 0) {
      epsilonFromRdp(this.orders, this.perStep, this.opts.delta, this.opts.conversion ?? "tight");
      return { epsilon: 0, order: NaN };
    }
    const rdp = this.perStep.map((r) => r * steps);
    return epsilonFromRdp(this.orders, rdp, this.opts.delta, this.opts.conversion ?? "tight");
  }
}
