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
}

/** The unmasked result of a secure aggregation: the weighted mean of several devices' deltas. */
export interface SecureAggregate {
  readonly deviceIds: readonly string[];
  readonly totalSamples: number;
  readonly mean: Float32Array;
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
  /** Produces the next global model; `failures` lists the devices that did not deliver. */
  finish(failures: readonly FitFailure[]): Float32Array;
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
}
