/**
 * Pieces shared by every strategy: option validation, seed derivation, and the server-optimizer seam.
 *
 * Every strategy here is FedAvg's streaming weighted mean of deltas followed by a *server step* that turns the
 * mean delta into the next global model; the variants (FedAvgM, FedAdam, FedYogi, FedAdagrad) differ only in
 * that step, so it is a small object (`ServerOptimizer`) that each variant supplies.
 */
import { fail } from "../errors";
import type { FitFailure, StrategyOptions } from "./strategy";

/**
 * Turns the round's weighted mean delta into the next global model and keeps whatever state that needs
 * (momentum, moment estimates). Implementations are plain typed-array loops with no per-element allocation.
 */
export interface ServerOptimizer {
  /** Allocates (or clears) the optimizer state for a model of `size` values. */
  reset(size: number): void;
  /** Writes the next global model into `next` (same length as `global`) and updates the state. */
  step(global: Float32Array, meanDelta: Float32Array, next: Float32Array): void;
  /**
   * The live state arrays by name (each of the size given to `reset`); none for a stateless step. The strategy
   * copies them out (exportState) and into them (importState).
   */
  tensors(): Readonly<Record<string, Float64Array>>;
}

/** What a strategy remembers about a round it closed (the strategy itself does no I/O or logging). */
export interface RoundSummary {
  readonly round: number;
  /** "aggregated": a new global model was produced; "failed": the global model was left unchanged. */
  readonly status: "aggregated" | "failed";
  /** Why a failed round failed. */
  readonly reason?: string;
  /** Updates that went into the mean. */
  readonly accepted: number;
  /** Sum of the accepted updates' sample counts (the mean's total weight). */
  readonly totalSamples: number;
  /** Updates the strategy itself refused (wrong size, non-finite values, bad sample count, duplicate). */
  readonly rejected: readonly FitFailure[];
  /** Devices the round engine reported as not delivering. */
  readonly failures: readonly FitFailure[];
}

function badOption(name: string, expected: string, got: unknown): never {
  return fail(
    "E_CONFIG_STRATEGY",
    `invalid strategy option ${name}: expected ${expected}, got ${String(got)}`,
  );
}

const isInt = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x);
const isReal = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x);

/**
 * Checks every option that is present, whether or not the chosen strategy uses it, so a typo'd value never
 * sits silently in a config. Throws FlotillaError E_CONFIG_STRATEGY.
 */
export function validateOptions(o: StrategyOptions): void {
  if (typeof o !== "object" || o === null) badOption("options", "an object", o);
  if (!isInt(o.clientsPerRound) || o.clientsPerRound < 1) {
    badOption("clientsPerRound", "an integer >= 1", o.clientsPerRound);
  }
  if (!isInt(o.seed)) badOption("seed", "an integer", o.seed);
  const fit = o.fit;
  if (typeof fit !== "object" || fit === null) badOption("fit", "an object", fit);
  if (!isInt(fit.epochs) || fit.epochs < 1) badOption("fit.epochs", "an integer >= 1", fit.epochs);
  if (!isInt(fit.batchSize) || fit.batchSize < 1)
    badOption("fit.batchSize", "an integer >= 1", fit.batchSize);
  if (!isReal(fit.lr) || fit.lr <= 0) badOption("fit.lr", "a finite number > 0", fit.lr);
  if (fit.mu !== undefined && (!isReal(fit.mu) || fit.mu < 0))
    badOption("fit.mu", "a finite number >= 0", fit.mu);
  if (o.serverLr !== undefined && (!isReal(o.serverLr) || o.serverLr <= 0)) {
    badOption("serverLr", "a finite number > 0", o.serverLr);
  }
  const unit: [string, number | undefined][] = [
    ["serverMomentum", o.serverMomentum],
    ["beta1", o.beta1],
    ["beta2", o.beta2],
  ];
  for (const [name, x] of unit) {
    if (x !== undefined && (!isReal(x) || x < 0 || x >= 1)) badOption(name, "a number in [0, 1)", x);
  }
  if (o.tau !== undefined && (!isReal(o.tau) || o.tau <= 0)) badOption("tau", "a finite number > 0", o.tau);
}

/** Rounds are non-negative integers (the round engine counts from 1). */
export function checkRound(round: number): void {
  if (!isInt(round) || round < 0)
    fail("E_STRATEGY_ROUND", `round must be a non-negative integer, got ${round}`);
}

/** murmur3's 32-bit finalizer: a bijective avalanche mix. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** FNV-1a over UTF-16 code units. */
function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Folds a safe integer (possibly negative, possibly above 2^32) into 32 bits, keeping both halves. */
function seedWord(seed: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 4294967296) >>> 0;
  return fmix32(lo ^ fmix32(hi ^ 0x2545f491));
}

/**
 * Seed of round `round`'s participant sampling: a function of (seed, round) only, so a round picks the same
 * devices whatever happened in earlier rounds (a restarted job replays its selection).
 */
export function roundSeed(seed: number, round: number): number {
  return fmix32(seedWord(seed) ^ fmix32(Math.imul(round >>> 0, 0x9e3779b1) ^ 0x68e31da4));
}

/**
 * Seed a device uses for its batch shuffling in a round: a function of (seed, round, deviceId) only, so it does
 * not depend on which other devices were available or chosen.
 */
export function deviceSeed(seed: number, round: number, deviceId: string): number {
  return fmix32(Math.imul(roundSeed(seed, round) ^ 0x1b873593, 0xcc9e2d51) ^ hashString(deviceId));
}
