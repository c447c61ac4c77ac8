/**
 * A federated training job's definition, as POSTed to /api/jobs, and its validation (FlotillaError E_JOB_*).
 */
import { parseCompression } from "../../../../core/compress";
import { fail, isFlotillaError } from "../../../../core/errors";
import { modelLayout } from "../../../../core/engine/models";
import { validateSpec, type ModelSpec } from "../../../../core/engine/model-spec";
import { createStrategy, isStrategyName, STRATEGY_NAMES } from "../../../../core/strategies/registry";
import type { StrategyOptions } from "../../../../core/strategies/strategy";

export interface JobDefinition {
  readonly jobId: string;
  readonly modelSpec: ModelSpec;
  /** Key of the profiler's `samplesPerSecond` map for this model; default modelSpec.kind. */
  readonly modelKey: string;
  readonly strategy: string;
  readonly strategyOptions: StrategyOptions;
  readonly rounds: number;
  readonly roundDeadlineSeconds: number;
  /** Fraction of a round's participants whose updates make a quorum (default 0.8). */
  readonly minCompletedFraction: number;
  /** Samples assumed for a device that has not reported numSamples (capability filter); default 1000. */
  readonly defaultNumSamples: number;
  /** Seed of the initial model. */
  readonly seed: number;
  /** Minutes a model download URL stays valid (default: deadline + 10 min). */
  readonly modelUrlMinutes: number;
  /** Uplink codec chain the devices' quantizer modules apply (core/compress spec; default "none"). */
  readonly compression: string;
  /** Codec of the global model devices download (value codecs only; default "none"). */
  readonly downlinkCompression: string;
}

export const JOB_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;
export const MAX_ROUNDS = 10_000;
export const MAX_MODEL_VALUES = 64 * 1024 * 1024;

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v))
    fail("E_JOB_INVALID", `${what} must be an object`);
  return v as Record<string, unknown>;
}

function int(v: unknown, what: string, min: number, max: number, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    fail("E_JOB_INVALID", `${what} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
}

function num(v: unknown, what: string, min: number, max: number, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
    fail("E_JOB_INVALID", `${what} must be a number in [${min}, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
}

function optNum(v: unknown, what: string, min: number, max: number): number | undefined {
  return v === undefined ? undefined : num(v, what, min, max);
}

/** Validates an untrusted job definition (e.g. a request body); fills defaults. */
export function validateJob(input: unknown): JobDefinition {
  const j = obj(input, "job");
  const jobId = j.jobId;
  if (typeof jobId !== "string" || !JOB_ID.test(jobId)) {
    fail(
      "E_JOB_ID",
      `jobId must match ${JOB_ID} (lowercase letters, digits, '-'), got ${JSON.stringify(jobId)}`,
    );
  }
  let modelSpec: ModelSpec;
  let size: number;
  try {
    modelSpec = validateSpec(j.modelSpec);
    size = modelLayout(modelSpec).totalSize;
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_MODEL", `modelSpec: ${e.message}`);
    throw e;
  }
  if (size > MAX_MODEL_VALUES) fail("E_JOB_MODEL", `model has ${size} parameters, above ${MAX_MODEL_VALUES}`);
  const strategy = typeof j.strategy === "string" ? j.strategy.trim().toLowerCase() : "";
  if (!isStrategyName(strategy)) {
    fail(
      "E_JOB_STRATEGY",
      `strategy must be one of ${STRATEGY_NAMES.join(", ")}, got ${JSON.stringify(j.strategy)}`,
    );
  }
  const so = obj(j.strategyOptions, "strategyOptions");
  const fit = obj(so.fit, "strategyOptions.fit");
  const seed = int(j.seed, "seed", 0, 2 ** 32 - 1, 0);
  const strategyOptions: StrategyOptions = {
    clientsPerRound: int(so.clientsPerRound, "strategyOptions.clientsPerRound", 1, 100_000),
    fit: {
      epochs: int(fit.epochs, "fit.epochs", 1, 1000),
      batchSize: int(fit.batchSize, "fit.batchSize", 1, 65_536),
      lr: num(fit.lr, "fit.lr", 0, 100),
      ...(fit.mu !== undefined ? { mu: num(fit.mu, "fit.mu", 0, 1000) } : {}),
    },
    seed: int(so.seed, "strategyOptions.seed", 0, 2 ** 32 - 1, seed),
    ...defined("serverLr", optNum(so.serverLr, "serverLr", 0, 1000)),
    ...defined("serverMomentum", optNum(so.serverMomentum, "serverMomentum", 0, 1)),
    ...defined("beta1", optNum(so.beta1, "beta1", 0, 1)),
    ...defined("beta2", optNum(so.beta2, "beta2", 0, 1)),
    ...defined("tau", optNum(so.tau, "tau", 0, 1)),
  };
  try {
    createStrategy(strategy, strategyOptions); // the strategy's own option checks
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_STRATEGY", e.message);
    throw e;
  }
  const roundDeadlineSeconds = int(j.roundDeadlineSeconds, "roundDeadlineSeconds", 1, 7 * 86_400, 600);
  const modelKey = j.modelKey === undefined ? modelSpec.kind : j.modelKey;
  if (typeof modelKey !== "string" || modelKey.length === 0 || modelKey.length > 64) {
    fail("E_JOB_INVALID", "modelKey must be a non-empty string");
  }
  return {
    jobId,
    modelSpec,
    modelKey,
    strategy,
    strategyOptions,
    rounds: int(j.rounds, "rounds", 1, MAX_ROUNDS),
    roundDeadlineSeconds,
    minCompletedFraction: num(j.minCompletedFraction, "minCompletedFraction", 0, 1, 0.8),
    defaultNumSamples: int(j.defaultNumSamples, "defaultNumSamples", 1, 1e9, 1000),
    seed,
    modelUrlMinutes: int(
      j.modelUrlMinutes,
      "modelUrlMinutes",
      1,
      7 * 1440,
      Math.ceil(roundDeadlineSeconds / 60) + 10,
    ),
    compression: codec(j.compression, "compression", true),
    downlinkCompression: codec(j.downlinkCompression, "downlinkCompression", false),
  };
}

function codec(v: unknown, what: string, sparseOk: boolean): string {
  if (v === undefined || v === null) return "none";
  if (typeof v !== "string") fail("E_JOB_COMPRESSION", `${what} must be a codec spec string`);
  try {
    const spec = parseCompression(v);
    if (spec.sparse && !sparseOk) fail("E_COMPRESS_SPEC", "the global model cannot be sparsified");
    return spec.text;
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_COMPRESSION", `${what}: ${e.message}`);
    throw e;
  }
}

function defined<K extends string>(k: K, v: number | undefined): { [P in K]?: number } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: number };
}
