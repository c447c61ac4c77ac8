/**
 * A federated training job's definition, as POSTed to /api/jobs, and its validation (FlotillaError E_JOB_*).
 */
import { parseCompression } from "../../../../core/compress";
import { secAggParamsFor } from "../../../../core/round/secure-round";
import { fail, isFlotillaError } from "../../../../core/errors";
import { validateAsyncOptions } from "../../../../core/round/async-engine";
import { DEFAULT_STALENESS_SPEC, formatStaleness, parseStaleness } from "../../../../core/round/staleness";
import { modelLayout } from "../../../../core/engine/plan";
import { validateSpec, type ModelSpec } from "../../../../core/engine/model-spec";
import type { OptimizerConfig } from "../../../../core/engine/graph-spec";
import { validateOptimizer } from "../../../../core/engine/optimizer-config";
import { createStrategy, isStrategyName, STRATEGY_NAMES } from "../../../../core/strategies/registry";
import {
  DifferentialPrivacy,
  DP_PLACEMENTS,
  type DpOptions,
  type DpPlacement,
} from "../../../../core/privacy/dp";
import type { StrategyOptions } from "../../../../core/strategies/strategy";
import { createSelector, DEFAULT_SELECTION } from "../../../../core/selection";
import {
  checkAggregatorCompatible,
  deviceNormBound,
  E_CONFIG_AGGREGATOR,
  E_CONFIG_CONFLICT,
  formatAggregator,
  isPlainMean,
  isStreaming,
  parseAggregator,
  type AggregatorSpec,
} from "../../../../core/robust/spec";
import {
  checkQualityPolicy,
  DEFAULT_QUALITY_POLICY,
  parseQualityPolicy,
  type QualityPolicy,
} from "../../../../core/robust/quality";
import {
  DEFAULT_MAX_SAMPLES_PER_DEVICE,
  SAMPLE_COUNT_POLICIES,
  type SampleCountPolicy,
} from "../../../../core/round/samples";

export interface JobDefinition {
  readonly jobId: string;
  /**
   * The model: a preset or a layer graph. A job body gives it as `modelSpec`, as `model` (an inline GraphSpec, or
   * the blob path of a Keras / tfjs model.json in the aggregator's container, imported when the job is created:
   * jobs/model-source.ts), docs/byom.md.
   */
  readonly modelSpec: ModelSpec;
  /** The blob path `model` named (the imported model.json), for the record. */
  readonly modelSource?: string;
  /**
   * The job's initial global model when it is not initialWeights(modelSpec, seed): an imported model's weights or
   * a warm start (`initModel`), stored as jobs/{jobId}/init.f32 when the job is created.
   */
  readonly initModel?: InitModelRecord;
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
  /**
   * Most samples one device's update may weigh (jobs/samples.ts; default 100,000). Optional: job documents
   * written before it existed read as the default.
   */
  readonly maxSamplesPerDevice?: number;
  /** What a sample-count claim above its bound gets: "clip" (default) or "reject" (jobs/samples.ts). */
  readonly sampleCountPolicy?: SampleCountPolicy;
  /** Seed of the initial model. */
  readonly seed: number;
  /** Minutes a model download URL stays valid (default: deadline + 10 min). */
  readonly modelUrlMinutes: number;
  /** Uplink codec chain the devices' quantizer modules apply (core/compress spec; default "none"). */
  readonly compression: string;
  /** Codec of the global model devices download (value codecs only; default "none"). */
  readonly downlinkCompression: string;
  /** Secure aggregation (SecAgg+) of every round; absent = plain aggregation (docs/iothub-protocol.md). */
  readonly secureAggregation?: SecureAggregationOptions;
  /** Differential privacy (DP-FedAvg, core/privacy/dp.ts) of the global model; absent = none. */
  readonly differentialPrivacy?: DifferentialPrivacyOptions;
  /**
   * Participant selector (core/selection createSelector spec: random, deadline, oort[:K=V,...]); validateJob sets
   * it (default "random"); absent in job documents written before it existed = "random".
   */
  readonly selection?: string;
  /**
   * IoT Hub twin condition picking the job's devices (e.g. `tags.flotilla.fleet = 'line-3'`), the WHERE clause of
   * the fleet's device-twin query (docs/selection.md); absent = every trainer.
   */
  readonly cohort?: string;
  /** Memory (bytes) a device must report (profiler `memoryBytes`) to be picked; absent = no requirement. */
  readonly minMemoryBytes?: number;
  /**
   * "sync" (default): rounds. "async": FedBuff (docs/async.md) — `concurrency` devices always training, every
   * `buffer` updates make a new model version, `rounds` is the number of versions to publish. Optional: job
   * documents written before it existed read as "sync".
   */
  readonly mode?: "sync" | "async";
  /** Async only: the options of core/round/async-engine.ts. */
  readonly async?: AsyncOptions;
  /**
   * Robust aggregation (core/robust/spec.ts, docs/robustness.md "In the Function"): the canonical spec of the
   * job's `aggregator` member (`default` expanded); absent (or written before it existed) = the plain mean.
   */
  readonly aggregator?: string;
  /**
   * Contribution quality (core/robust/quality.ts, docs/robustness.md): the exclusion policy — a device flagged in
   * `excludeAfter` of its last `window` contributions is not selected for `cooldown` rounds (null: the rest of the
   * job); false: quality off (no observation, no exclusion). Absent (and in documents written before it existed):
   * on, with DEFAULT_QUALITY_POLICY. A job body gives an object, its text form "K/W[:R|end]", "off" or false.
   */
  readonly quality?: QualityPolicy | false;
}

/** What the Function allows a job (app settings, aggregator.ts servicesFromEnv). */
export interface JobLimits {
  /**
   * Most bytes a buffered robust rule may hold for one round: clientsPerRound (async: buffer) × model values × 4
   * (FLOTILLA_ROBUST_MAX_BYTES; default DEFAULT_ROBUST_MAX_BYTES).
   */
  readonly robustMaxBytes?: number;
}

/** Default cap on a buffered robust rule's round (1 GiB). */
export const DEFAULT_ROBUST_MAX_BYTES = 2 ** 30;

/** Where a job's initial model came from, and the stored copy's sha256 and length (float32 values). */
export interface InitModelRecord {
  /** `blob:<path>` (a model.json or a model directory's spec.json) or `job:<jobId>/<round>` (a published model). */
  readonly source: string;
  readonly sha256: string;
  readonly length: number;
}

/** What createJob read from blobs for a job body's `model` / `initModel` (jobs/model-source.ts). */
export interface ResolvedModels {
  /** The imported graph of a `model` blob path. */
  readonly modelSpec?: ModelSpec;
  readonly modelSource?: string;
  readonly initModel?: InitModelRecord;
}

/** An async job's options (validated by core/round/async-engine.ts validateAsyncOptions). */
export interface AsyncOptions {
  /** C: devices kept training (default strategyOptions.clientsPerRound). */
  readonly concurrency: number;
  /** K: updates per new version (default ⌈C / 2⌉). */
  readonly buffer: number;
  /** Updates trained from more than this many versions ago are refused (default 4). */
  readonly maxStaleness: number;
  /** Staleness weight spec (core/round/staleness.ts; default "poly:0.5" = 1/√(1+τ)). */
  readonly staleness: string;
}

/**
 * A DP job's options (core/privacy/dp.ts DpOptions without the fleet's numbers): `noiseMultiplier` z, `clip` (a
 * norm, or "adaptive"), `delta`, an optional `epsilonBudget` (the job completes with `stopReason:
 * "budget-exhausted"` before a round that would exceed it), `placement` (default "central"; "distributed" needs
 * secure aggregation), `minSurvivors` (distributed: n'), and the adaptive-clipping knobs. `fleetSize` (the devices
 * the job samples from, q = clientsPerRound / fleetSize) defaults to the trainers registered when the job starts.
 */
export interface DifferentialPrivacyOptions {
  readonly noiseMultiplier: number;
  readonly clip: number | "adaptive";
  readonly delta: number;
  readonly epsilonBudget?: number;
  readonly placement: DpPlacement;
  readonly minSurvivors?: number;
  readonly initialClip?: number;
  readonly targetQuantile?: number;
  readonly clipLearningRate?: number;
  readonly clipCountStddev?: number;
  readonly fleetSize?: number;
}

/**
 * A secure job's options. `neighbours`, `threshold` and `clipRange` override core/secagg's defaultParams(n) for
 * each round (n = the devices that advertised keys); `stepSeconds` bounds each of the protocol steps after
 * training (share keys, mask input, unmask); a round where fewer than `minSurvivors` devices remain at any step
 * is aborted (recorded `failed`, E_SECAGG_ABORTED) without unmasking anything.
 */
export interface SecureAggregationOptions {
  readonly neighbours?: number;
  readonly threshold?: number;
  readonly clipRange?: number;
  /** Deadline of each protocol step after the advertisements, seconds (default 30). */
  readonly stepSeconds: number;
  /** Fewest devices a round may sum (default 2). */
  readonly minSurvivors: number;
}

/** Most participants of a secure round: the ShareKeysRequest lists them all and must fit a 128 KB direct method. */
export const SECAGG_MAX_PARTICIPANTS = 1000;
/** Most neighbours per device: each is relayed (advertisement + identity key, ~0.7 KB) in a 128 KB direct method. */
export const SECAGG_MAX_NEIGHBOURS = 100;

export const JOB_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;
/** Longest cohort condition (IoT Hub queries are at most 8 KB; the rest of the query is short). */
export const MAX_COHORT_CHARS = 1024;
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

/**
 * The job body's model: `modelSpec`, or `model` (an inline spec; a blob path must have been read into `resolved`
 * by jobs/model-source.ts). Exactly one of them.
 */
export function jobModelSpecInput(j: Record<string, unknown>, resolved: ResolvedModels): unknown {
  if (j.model !== undefined && j.modelSpec !== undefined)
    fail("E_JOB_INVALID", "give the job's model as modelSpec or as model, not both");
  if (typeof j.model === "string") {
    if (!resolved.modelSpec)
      fail(
        "E_JOB_MODEL",
        `model '${j.model}': a blob path is imported when the job is created (POST /api/jobs)`,
      );
    return resolved.modelSpec;
  }
  return j.model !== undefined ? j.model : j.modelSpec;
}

/**
 * Validates an untrusted job definition (e.g. a request body); fills defaults. `resolved`: what createJob read
 * from blobs for `model` / `initModel` (jobs/model-source.ts resolveJobModels).
 */
export function validateJob(
  input: unknown,
  resolved: ResolvedModels = {},
  limits: JobLimits = {},
): JobDefinition {
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
  const specInput = jobModelSpecInput(j, resolved);
  try {
    modelSpec = validateSpec(specInput);
    size = modelLayout(modelSpec).totalSize;
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_MODEL", `modelSpec: ${e.message}`, { cause: e });
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
      ...(fit.optimizer !== undefined && fit.optimizer !== null
        ? { optimizer: jobOptimizer(fit.optimizer) }
        : {}),
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
    if (isFlotillaError(e)) fail("E_JOB_STRATEGY", e.message, { cause: e });
    throw e;
  }
  const roundDeadlineSeconds = int(j.roundDeadlineSeconds, "roundDeadlineSeconds", 1, 7 * 86_400, 600);
  const modelKey = j.modelKey === undefined ? modelSpec.kind : j.modelKey;
  if (typeof modelKey !== "string" || modelKey.length === 0 || modelKey.length > 64) {
    fail("E_JOB_INVALID", "modelKey must be a non-empty string");
  }
  if (j.initModel !== undefined && j.initModel !== null && !resolved.initModel)
    fail("E_JOB_MODEL", "initModel is read from blobs when the job is created (POST /api/jobs)");
  const def: JobDefinition = {
    jobId,
    modelSpec,
    ...(resolved.modelSource !== undefined ? { modelSource: resolved.modelSource } : {}),
    ...(resolved.initModel ? { initModel: resolved.initModel } : {}),
    modelKey,
    strategy,
    strategyOptions,
    rounds: int(j.rounds, "rounds", 1, MAX_ROUNDS),
    roundDeadlineSeconds,
    minCompletedFraction: num(j.minCompletedFraction, "minCompletedFraction", 0, 1, 0.8),
    defaultNumSamples: int(j.defaultNumSamples, "defaultNumSamples", 1, 1e9, 1000),
    maxSamplesPerDevice: int(
      j.maxSamplesPerDevice,
      "maxSamplesPerDevice",
      1,
      1e9,
      DEFAULT_MAX_SAMPLES_PER_DEVICE,
    ),
    sampleCountPolicy: samplePolicy(j.sampleCountPolicy),
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
  const secure = secureAggregation(j.secureAggregation, def);
  const withSecure = secure ? { ...def, secureAggregation: secure } : def;
  const dp = differentialPrivacy(j.differentialPrivacy, withSecure);
  const withDp = dp ? { ...withSecure, differentialPrivacy: dp } : withSecure;
  const cohortText = cohort(j.cohort);
  const withSelection: JobDefinition = {
    ...withDp,
    selection: selection(j.selection),
    quality: jobQuality(j.quality),
    ...(cohortText !== undefined ? { cohort: cohortText } : {}),
    ...defined(
      "minMemoryBytes",
      j.minMemoryBytes === undefined ? undefined : int(j.minMemoryBytes, "minMemoryBytes", 0, 2 ** 50),
    ),
  };
  return robustAggregator(j.aggregator, asyncMode(j, withSelection), size, limits);
}

/** The job's aggregator spec; undefined for the plain mean (absent, "mean"). */
export function jobAggregator(d: JobDefinition): AggregatorSpec | undefined {
  if (d.aggregator === undefined) return undefined;
  const spec = parseAggregator(d.aggregator);
  return isPlainMean(spec) ? undefined : spec;
}

/**
 * The bound each device applies to its own update before masking: secure jobs whose aggregator is `norm:C+mean`
 * (the server sees only the sum, so it cannot bound anything itself); undefined otherwise.
 */
export function jobDeviceNormBound(d: JobDefinition): number | undefined {
  return d.secureAggregation ? deviceNormBound(jobAggregator(d)) : undefined;
}

/**
 * The `aggregator` member (core/robust/spec.ts; "default" expands to DEFAULT_AGGREGATOR): a bad spec is
 * E_CONFIG_AGGREGATOR; a rule that needs each update with secure aggregation, anything but the plain mean with
 * differential privacy, and a buffered rule whose round would hold more than `limits.robustMaxBytes` are
 * E_CONFIG_CONFLICT; FLTrust is refused (the Function trains nothing, so it has no root update:
 * docs/robustness.md). The canonical text is kept.
 */
function robustAggregator(
  v: unknown,
  def: JobDefinition,
  modelValues: number,
  limits: JobLimits,
): JobDefinition {
  if (v === undefined || v === null) return def;
  if (typeof v !== "string")
    fail(
      E_CONFIG_AGGREGATOR,
      `aggregator must be a spec string (e.g. "median", "default"), got ${JSON.stringify(v)}`,
    );
  const spec = parseAggregator(v);
  const text = formatAggregator(spec);
  checkAggregatorCompatible(spec, {
    secureAggregation: def.secureAggregation !== undefined,
    dp: def.differentialPrivacy !== undefined,
  });
  if (spec.rule === "fltrust")
    fail(
      E_CONFIG_AGGREGATOR,
      `aggregator '${text}' is not available in the Function: FLTrust needs the server's own update on a root dataset each round, and the Function trains nothing (use it in the simulator, or pick median, trimmed-mean:B, geomed, centered-clip:TAU, krum:F)`,
    );
  if (!isStreaming(spec)) {
    const n = def.mode === "async" ? def.async!.buffer : def.strategyOptions.clientsPerRound;
    const bytes = n * modelValues * 4;
    const cap = limits.robustMaxBytes ?? DEFAULT_ROBUST_MAX_BYTES;
    if (bytes > cap)
      fail(
        E_CONFIG_CONFLICT,
        `aggregator '${text}' holds every update of a round: ${n} updates x ${modelValues} values x 4 = ${bytes} bytes, above the aggregator's cap of ${cap} bytes (FLOTILLA_ROBUST_MAX_BYTES; use fewer ${def.mode === "async" ? "buffered updates" : "clientsPerRound"}, mean or norm:C+mean)`,
      );
  }
  return { ...def, aggregator: text };
}

/** The `quality` policy (default DEFAULT_QUALITY_POLICY; false or "off": quality off), E_JOB_INVALID otherwise. */
export function jobQuality(v: unknown): QualityPolicy | false {
  if (v === undefined || v === null) return DEFAULT_QUALITY_POLICY;
  if (v === false || v === "off") return false;
  try {
    return typeof v === "string" ? parseQualityPolicy(v) : checkQualityPolicy(v, "quality");
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_INVALID", `quality: ${e.message}`, { cause: e });
    throw e;
  }
}

/** `strategyOptions.fit.optimizer`: {name: sgd | momentum | adam, ...} or its text form (E_JOB_INVALID). */
function jobOptimizer(v: unknown): OptimizerConfig {
  try {
    return validateOptimizer(v, "fit.optimizer");
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_INVALID", e.message, { cause: e });
    throw e;
  }
}

/** The `selection` spec: a core/selection spec (default "random"), kept in its canonical form. */
function selection(v: unknown): string {
  if (v === undefined || v === null) return DEFAULT_SELECTION;
  if (typeof v !== "string") fail("E_JOB_INVALID", `selection must be a string, got ${JSON.stringify(v)}`);
  try {
    return createSelector(v).spec;
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_INVALID", `selection: ${e.message}`, { cause: e });
    throw e;
  }
}

/**
 * The `cohort` condition: text without control characters, of at most MAX_COHORT_CHARS characters, its quotes closed and its
 * parentheses and brackets balanced outside string literals, and no clause keyword (SELECT, FROM, WHERE, GROUP)
 * outside them — it is put into the fleet's query as `WHERE (<cohort>)`, and IoT Hub checks the rest.
 */
function cohort(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  const bad = (why: string): never => fail("E_JOB_INVALID", `cohort ${why}`);
  if (typeof v !== "string") return bad(`must be a string, got ${JSON.stringify(v)}`);
  const text = v.trim();
  if (text.length === 0) return bad("must not be empty (leave it out for every trainer)");
  if (text.length > MAX_COHORT_CHARS)
    return bad(`is ${text.length} characters long (at most ${MAX_COHORT_CHARS})`);
  if ([...text].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f))
    return bad("may not contain control characters");
  let quote: string | undefined;
  const stack: string[] = [];
  let outside = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote !== undefined) {
      if (c === quote) {
        if (text[i + 1] === quote) i++;
        else quote = undefined;
      }
      outside += " ";
      continue;
    }
    if (c === "'" || c === '"') quote = c;
    else if (c === "(" || c === "[") stack.push(c === "(" ? ")" : "]");
    else if (c === ")" || c === "]") {
      if (stack.pop() !== c) return bad(`has an unbalanced '${c}' at ${i}`);
    } else if (c === ";") return bad(`may not contain ';' (at ${i})`);
    outside += c;
  }
  if (quote !== undefined) return bad("has an unterminated string");
  if (stack.length > 0) return bad(`has an unclosed '${stack[stack.length - 1] === ")" ? "(" : "["}'`);
  const kw = /\b(SELECT|FROM|WHERE|GROUP|ORDER)\b/i.exec(outside);
  if (kw) return bad(`is a condition only: '${kw[1]}' is not allowed`);
  return text;
}

/**
 * `mode` ("sync" default, or "async") and the async options `concurrency`, `buffer`, `maxStaleness`, `staleness`
 * (E_JOB_INVALID for a bad value; E_ASYNC_SECAGG for secure aggregation with async rounds).
 */
function asyncMode(j: Record<string, unknown>, def: JobDefinition): JobDefinition {
  const mode = j.mode === undefined ? "sync" : j.mode;
  const keys = ["concurrency", "buffer", "maxStaleness", "staleness"] as const;
  if (mode !== "sync" && mode !== "async")
    fail("E_JOB_INVALID", `mode must be "sync" or "async", got ${JSON.stringify(j.mode)}`);
  if (mode === "sync") {
    const extra = keys.find((k) => j[k] !== undefined);
    if (extra !== undefined) fail("E_JOB_INVALID", `${extra} applies only with mode "async"`);
    return def;
  }
  if (def.secureAggregation)
    fail(
      "E_ASYNC_SECAGG",
      "secureAggregation cannot be combined with mode async: a buffer's updates come from whoever finished first, " +
        "each from another model version, not from a fixed cohort that can run SecAgg+'s steps together",
    );
  if (def.differentialPrivacy)
    fail(
      "E_JOB_DP",
      "differentialPrivacy is not available for mode async jobs in the Function yet (the simulator has it)",
    );
  const n = def.strategyOptions.clientsPerRound;
  const concurrency = int(j.concurrency, "concurrency", 1, 100_000, n);
  const staleness = j.staleness === undefined ? DEFAULT_STALENESS_SPEC : j.staleness;
  if (typeof staleness !== "string")
    fail(
      "E_JOB_INVALID",
      `staleness must be a spec string (poly:a, hinge:a,b, const), got ${JSON.stringify(staleness)}`,
    );
  const opts: AsyncOptions = {
    concurrency,
    buffer: int(j.buffer, "buffer", 1, 100_000, Math.ceil(concurrency / 2)),
    maxStaleness: int(j.maxStaleness, "maxStaleness", 0, MAX_ROUNDS, 4),
    staleness,
  };
  try {
    validateAsyncOptions(opts);
    const canonical = formatStaleness(parseStaleness(staleness));
    return { ...def, mode: "async", async: { ...opts, staleness: canonical } };
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_INVALID", e.message, { cause: e });
    throw e;
  }
}

const DP_KEYS = [
  "noiseMultiplier",
  "clip",
  "delta",
  "epsilonBudget",
  "placement",
  "minSurvivors",
  "initialClip",
  "targetQuantile",
  "clipLearningRate",
  "clipCountStddev",
  "fleetSize",
] as const;

/** The `differentialPrivacy` block: undefined/null = off, else an object (E_JOB_DP, one line, first problem). */
function differentialPrivacy(v: unknown, def: JobDefinition): DifferentialPrivacyOptions | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v)) fail("E_JOB_DP", "differentialPrivacy must be an object");
  const o = v as Record<string, unknown>;
  const extra = Object.keys(o).find((k) => !(DP_KEYS as readonly string[]).includes(k));
  if (extra !== undefined)
    fail("E_JOB_DP", `differentialPrivacy.${extra} is unknown (allowed: ${DP_KEYS.join(", ")})`);
  const positive = (k: string, required: boolean): number | undefined => {
    const x = o[k];
    if (x === undefined && !required) return undefined;
    if (typeof x !== "number" || !Number.isFinite(x) || x <= 0)
      fail("E_JOB_DP", `differentialPrivacy.${k} must be a positive number, got ${JSON.stringify(x)}`);
    return x;
  };
  const integer = (k: string): number | undefined => {
    const x = o[k];
    if (x === undefined) return undefined;
    if (typeof x !== "number" || !Number.isInteger(x) || x < 1)
      fail("E_JOB_DP", `differentialPrivacy.${k} must be an integer >= 1, got ${JSON.stringify(x)}`);
    return x;
  };
  const noiseMultiplier = positive("noiseMultiplier", true)!;
  let clip: number | "adaptive";
  if (o.clip === "adaptive") clip = "adaptive";
  else if (typeof o.clip === "number" && Number.isFinite(o.clip) && o.clip > 0) clip = o.clip;
  else
    fail(
      "E_JOB_DP",
      `differentialPrivacy.clip must be a positive number or "adaptive", got ${JSON.stringify(o.clip)}`,
    );
  const delta = o.delta;
  if (typeof delta !== "number" || !(delta > 0 && delta < 1))
    fail("E_JOB_DP", `differentialPrivacy.delta must be a number in (0, 1), got ${JSON.stringify(delta)}`);
  const placement = o.placement === undefined ? "central" : o.placement;
  if (typeof placement !== "string" || !(DP_PLACEMENTS as readonly string[]).includes(placement))
    fail(
      "E_JOB_DP",
      `differentialPrivacy.placement must be one of ${DP_PLACEMENTS.join(", ")}, got ${JSON.stringify(o.placement)}`,
    );
  if (placement === "distributed" && !def.secureAggregation)
    fail(
      "E_JOB_DP",
      "differentialPrivacy.placement 'distributed' needs secureAggregation (without it the cloud sees each lightly noised update)",
    );
  const n = def.strategyOptions.clientsPerRound;
  const fleetSize = integer("fleetSize");
  if (fleetSize !== undefined && fleetSize < n)
    fail("E_JOB_DP", `differentialPrivacy.fleetSize ${fleetSize} must be >= clientsPerRound ${n}`);
  const out: DifferentialPrivacyOptions = {
    noiseMultiplier,
    clip,
    delta,
    placement: placement as DpPlacement,
    ...defined("epsilonBudget", positive("epsilonBudget", false)),
    ...defined("minSurvivors", integer("minSurvivors")),
    ...defined("initialClip", positive("initialClip", false)),
    ...defined("targetQuantile", positive("targetQuantile", false)),
    ...defined("clipLearningRate", positive("clipLearningRate", false)),
    ...defined("clipCountStddev", positive("clipCountStddev", false)),
    ...defined("fleetSize", fleetSize),
  };
  if (clip !== "adaptive") {
    const adaptiveOnly = ["initialClip", "targetQuantile", "clipLearningRate", "clipCountStddev"].find(
      (k) => o[k] !== undefined,
    );
    if (adaptiveOnly)
      fail("E_JOB_DP", `differentialPrivacy.${adaptiveOnly} applies only with clip "adaptive"`);
  }
  if (out.minSurvivors !== undefined && placement !== "distributed")
    fail("E_JOB_DP", `differentialPrivacy.minSurvivors applies only with placement "distributed"`);
  // The core's own checks (ranges, adaptive-clipping noise, the accountant's δ and budget), for a fleet of at
  // least clientsPerRound devices (the real fleet size is fixed when the job starts).
  try {
    new DifferentialPrivacy(dpOptionsOf(out, fleetSize ?? n, n));
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_DP", `differentialPrivacy: ${e.message}`, { cause: e });
    throw e;
  }
  return out;
}

/** The core DpOptions of a DP job for a fleet of `fleetSize` devices. */
export function dpOptionsOf(
  o: DifferentialPrivacyOptions,
  fleetSize: number,
  clientsPerRound: number,
): DpOptions {
  return {
    noiseMultiplier: o.noiseMultiplier,
    clip: o.clip,
    delta: o.delta,
    placement: o.placement,
    clientsPerRound,
    fleetSize: Math.max(fleetSize, clientsPerRound),
    ...(o.epsilonBudget !== undefined ? { epsilonBudget: o.epsilonBudget } : {}),
    ...(o.minSurvivors !== undefined ? { minSurvivors: o.minSurvivors } : {}),
    ...(o.initialClip !== undefined ? { initialClip: o.initialClip } : {}),
    ...(o.targetQuantile !== undefined ? { targetQuantile: o.targetQuantile } : {}),
    ...(o.clipLearningRate !== undefined ? { clipLearningRate: o.clipLearningRate } : {}),
    ...(o.clipCountStddev !== undefined ? { clipCountStddev: o.clipCountStddev } : {}),
  };
}

/**
 * Distributed DP's n': the fewest masked inputs a secure round may unmask (0 for other placements or without DP);
 * core/privacy/dp.ts's default ⌈0.8 · clientsPerRound⌉ unless the job sets `minSurvivors`.
 */
export function dpMinSurvivors(d: JobDefinition): number {
  const o = d.differentialPrivacy;
  if (!o || o.placement !== "distributed") return 0;
  const n = d.strategyOptions.clientsPerRound;
  return new DifferentialPrivacy(dpOptionsOf(o, n, n)).minSurvivors;
}

/** Values each device appends to its securely aggregated vector (DP's clip indicator with adaptive clipping). */
export function secureExtraValues(d: JobDefinition): number {
  return d.differentialPrivacy?.clip === "adaptive" ? 1 : 0;
}

/** The `secureAggregation` block: undefined/null/false = off, true = every default, or an object. */
function secureAggregation(v: unknown, def: JobDefinition): SecureAggregationOptions | undefined {
  if (v === undefined || v === null || v === false) return undefined;
  if (v !== true && (typeof v !== "object" || Array.isArray(v)))
    fail("E_JOB_SECAGG", "secureAggregation must be an object (or true for the defaults)");
  const o = (v === true ? {} : v) as Record<string, unknown>;
  const known = ["neighbours", "threshold", "clipRange", "stepSeconds", "minSurvivors"];
  const extra = Object.keys(o).find((k) => !known.includes(k));
  if (extra !== undefined)
    fail("E_JOB_SECAGG", `secureAggregation.${extra} is unknown (allowed: ${known.join(", ")})`);
  const n = def.strategyOptions.clientsPerRound;
  const secInt = (k: string, min: number, max: number): number | undefined => {
    const x = o[k];
    if (x === undefined) return undefined;
    if (typeof x !== "number" || !Number.isInteger(x) || x < min || x > max)
      fail(
        "E_JOB_SECAGG",
        `secureAggregation.${k} must be an integer in [${min}, ${max}], got ${JSON.stringify(x)}`,
      );
    return x;
  };
  if (n < 3) fail("E_JOB_SECAGG", `secure aggregation needs clientsPerRound >= 3, got ${n}`);
  if (n > SECAGG_MAX_PARTICIPANTS)
    fail(
      "E_JOB_SECAGG",
      `secure aggregation takes at most ${SECAGG_MAX_PARTICIPANTS} clientsPerRound (direct methods carry 128 KB), got ${n}`,
    );
  // A lossy uplink codec cannot apply: the quantizer would sparsify or re-quantize the masked ring vector (and
  // destroy the masks), and coding the update before masking saves nothing (the masked vector is one u32 per value).
  if (!parseCompression(def.compression).lossless)
    fail(
      "E_JOB_SECAGG_COMPRESSION",
      `compression '${def.compression}' cannot be combined with secure aggregation (the masked update is a dense u32 vector the quantizer must not touch)`,
    );
  const neighbours = secInt("neighbours", 2, SECAGG_MAX_NEIGHBOURS);
  const threshold = secInt("threshold", 2, SECAGG_MAX_NEIGHBOURS);
  let clipRange: number | undefined;
  if (o.clipRange !== undefined) {
    const c = o.clipRange;
    if (typeof c !== "number" || !Number.isFinite(c) || c <= 0 || c > 1e6)
      fail(
        "E_JOB_SECAGG",
        `secureAggregation.clipRange must be a number in (0, 1e6], got ${JSON.stringify(c)}`,
      );
    clipRange = c;
  }
  const stepSeconds = secInt("stepSeconds", 5, 300) ?? 30;
  const minSurvivors = secInt("minSurvivors", 2, n) ?? 2;
  // k, t and the clip range checked as each round will (core/secagg validateParams, for clientsPerRound devices).
  try {
    secAggParamsFor(n, { neighbours, threshold, clipRange });
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_SECAGG", `secureAggregation: ${e.message}`, { cause: e });
    throw e;
  }
  return {
    ...(neighbours !== undefined ? { neighbours } : {}),
    ...(threshold !== undefined ? { threshold } : {}),
    ...(clipRange !== undefined ? { clipRange } : {}),
    stepSeconds,
    minSurvivors,
  };
}

function samplePolicy(v: unknown): SampleCountPolicy {
  if (v === undefined) return "clip";
  if (typeof v !== "string" || !(SAMPLE_COUNT_POLICIES as readonly string[]).includes(v)) {
    fail(
      "E_JOB_INVALID",
      `sampleCountPolicy must be one of ${SAMPLE_COUNT_POLICIES.join(", ")}, got ${JSON.stringify(v)}`,
    );
  }
  return v as SampleCountPolicy;
}

function codec(v: unknown, what: string, sparseOk: boolean): string {
  if (v === undefined || v === null) return "none";
  if (typeof v !== "string") fail("E_JOB_COMPRESSION", `${what} must be a codec spec string`);
  try {
    const spec = parseCompression(v);
    if (spec.sparse && !sparseOk) fail("E_COMPRESS_SPEC", "the global model cannot be sparsified");
    return spec.text;
  } catch (e) {
    if (isFlotillaError(e)) fail("E_JOB_COMPRESSION", `${what}: ${e.message}`, { cause: e });
    throw e;
  }
}

function defined<K extends string>(k: K, v: number | undefined): { [P in K]?: number } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: number };
}
