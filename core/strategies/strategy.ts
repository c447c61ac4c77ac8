import type { OptimizerConfig } from "../engine/graph-spec";
/**
 * The Strategy contract (after Flower's Strategy: configure / aggregate hooks, results *and* failures).
 * A strategy does no I/O: the round engine asks it who takes part and with what config, streams each device's
 * update into it, and asks it for the next global model.
 *
 * Updates are deltas: `delta = clientWeights - globalWeights` after local training. FedAvg's new model is
 * `global + weightedMean(delta)`; the adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated
 * Optimization") treat `-weightedMean(delta)` as a pseudo-gradient.
 */

import type { EncodedTensor } from "../compress/api";

/** What the server knows about a device when it selects participants. */
export interface ClientInfo {
  readonly deviceId: string;
  /** Local training samples the device reported, if known. */
  readonly numSamples?: number;
  /** Training throughput measured by the profiler, if known. */
  readonly samplesPerSecond?: number;
}

/** Hyperparameters a device uses for one round of local training. */
export interface FitConfig {
  readonly epochs: number;
  readonly batchSize: number;
  readonly lr: number;
  /** FedProx proximal coefficient μ (Li et al. 2020); 0 or absent = plain local SGD. */
  readonly mu?: number;
  /** Seed for the device's batch shuffling this round. */
  readonly seed: number;
  /** On-device optimizer (core/engine/graph-spec.ts); absent = plain SGD. FedProx's μ applies with each. */
  readonly optimizer?: OptimizerConfig;
}

export interface FitInstruction {
  readonly deviceId: string;
  readonly config: FitConfig;
}

/** One device's successful update. */
export interface FitResult {
  readonly deviceId: string;
  readonly numSamples: number;
  /**
   * clientWeights - globalWeights, same layout as the global model: raw, or a compressed envelope that the
   * aggregation decodes straight into its accumulator (core/compress).
   */
  readonly delta: Float32Array | EncodedTensor;
  readonly metrics: { readonly loss: number; readonly accuracy: number; readonly trainMs: number };
  /** Differential privacy with adaptive clipping: the device's (noised) centred clip indicator b − ½. */
  readonly dpClipBit?: number;
  /**
   * Asynchronous rounds: the update's staleness weight s(τ) ∈ (0, 1] (core/round/staleness.ts). It scales the
   * update's weight in the sum only — n_k·s_k in Σ n_k s_k Δ_k / Σ n_k — so a buffer of stale updates moves the
   * model less than a fresh one (FedBuff, Nguyen et al. AISTATS 2022, Algorithm 1). Absent: 1.
   */
  readonly discount?: number;
}

/** What one device reported beside its update: its sample count and (when not withheld) training metrics. */
export interface UpdateReport {
  readonly numSamples: number;
  /** Training loss; absent, null or NaN when the device withheld it (distributed or local DP). */
  readonly loss?: number | null;
  readonly accuracy?: number | null;
}

/** The unmasked result of a secure aggregation: the weighted mean of several devices' deltas. */
export interface SecureAggregate {
  readonly deviceIds: readonly string[];
  readonly totalSamples: number;
  readonly mean: Float32Array;
  /**
   * The included devices' reports (sent in the clear beside their masked inputs), for the round's training
   * metrics; they do not weigh in the mean, whose weight is `totalSamples`.
   */
  readonly reports?: readonly UpdateReport[];
}

/**
 * A round's training metrics, over the updates that went into the mean (core/strategies/metrics.ts is the one
 * implementation; the simulator's and the Function's round records take them from here).
 */
export interface RoundMetrics {
  /** Updates aggregated (a secure aggregate counts as its devices). */
  readonly updates: number;
  /** Σ n_k of those updates (a secure aggregate: its totalSamples). */
  readonly totalSamples: number;
  /** Σ n_k·loss_k / Σ n_k over the updates that reported a finite loss; NaN when none did. */
  readonly trainLoss: number;
  /** The same for training accuracy; NaN when none reported one. */
  readonly trainAccuracy: number;
}

/** What a round's aggregation produces: the next global model and the round's metrics. */
export interface RoundResult {
  readonly weights: Float32Array;
  readonly metrics: RoundMetrics;
}

/**
 * A strategy's server state beside the global model (FedAvgM's momentum, FedAdam/FedYogi/FedAdagrad's moments),
 * so that a restarted server goes on exactly where it stopped. The scalars are JSON; the tensors are model-sized
 * float64 arrays (the optimizers compute in float64; float32 would change the next models), stored as one binary
 * blob by encodeStrategyState (core/strategies/state.ts). FedAvg and FedProx have no tensors.
 */
export interface StrategyState {
  /** The strategy that exported it (imported only into the same strategy). */
  readonly strategy: string;
  /** Model length the tensors belong to. */
  readonly size: number;
  /** Server steps applied since the optimizer state was last (re)started. */
  readonly steps: number;
  /** By name: "momentum" (FedAvgM), "m" and "v" (adaptive); each `size` values. */
  readonly tensors: Readonly<Record<string, Float64Array>>;
}

export interface FitFailure {
  readonly deviceId: string;
  readonly code: string;
  readonly reason: string;
}

/** A round's aggregation in progress: updates are streamed in one at a time and never all held. */
export interface RoundAggregation {
  add(result: FitResult): void;
  /**
   * Adds the already-summed update of several devices (secure aggregation: the server only ever sees the sum).
   * `mean` is Σ n_k Δ_k / Σ n_k over `deviceIds`, `totalSamples` is Σ n_k; it counts as `deviceIds.length`
   * updates and weighs like them in the round's mean.
   */
  addAggregate(aggregate: SecureAggregate): void;
  readonly count: number;
  /**
   * Produces the next global model and the round's metrics; `failures` lists the devices that did not deliver.
   */
  finish(failures: readonly FitFailure[]): RoundResult;
}

export interface StrategyOptions {
  /** Devices asked to train each round. */
  readonly clientsPerRound: number;
  /** Local training hyperparameters sent each round. */
  readonly fit: Omit<FitConfig, "seed">;
  /** Server learning rate (FedAvgM, FedAdam, FedYogi, FedAdagrad); FedAvg ignores it. */
  readonly serverLr?: number;
  /** Server momentum β (FedAvgM), default 0.9. */
  readonly serverMomentum?: number;
  /** Adaptive optimizers: β1, β2, τ (defaults per strategy follow Flower's: see fedopt.ts). */
  readonly beta1?: number;
  readonly beta2?: number;
  readonly tau?: number;
  /** Seed for participant sampling. */
  readonly seed: number;
}

export interface Strategy {
  readonly name: string;
  /** Sets the initial global model (the strategy keeps its own server-optimizer state beside it). */
  initialize(weights: Float32Array): void;
  /** The current global model. */
  readonly weights: Float32Array;
  /** Chooses this round's participants among the available devices, each with its training config. */
  configureFit(round: number, available: readonly ClientInfo[]): FitInstruction[];
  /** Starts streaming aggregation for a round. */
  beginAggregate(round: number): RoundAggregation;
  /** A copy of the server-optimizer state (after initialize; the global model itself is not part of it). */
  exportState(): StrategyState;
  /**
   * Restores exported state after `initialize(model)` with the model it was exported beside. A state of another
   * strategy or model size, or with missing or non-finite tensors, throws FlotillaError E_STRATEGY_STATE and
   * changes nothing.
   */
  importState(state: StrategyState): void;
}
