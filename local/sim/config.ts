import { checkAggregatorCompatible, formatAggregator, parseAggregator } from "../../core/robust/spec";
import { chooseAttackers, formatAttack, isModelAttack, parseAttack } from "./attacks/spec";
import * as fs from "node:fs";
import * as os from "node:os";
import { isPresetKind } from "../../core/engine/graph";
import { MODEL_KINDS } from "../../core/engine/model-spec";
import { parseCompression } from "../../core/compress";
import { fail } from "../../core/errors";
import { formatOptimizer, parseOptimizer } from "../../core/engine/optimizer-config";
import { sharedThreads } from "../../core/engine/threads";
import { createSelector } from "../../core/selection";
import { formatStaleness, parseStaleness } from "../../core/round/staleness";
import { secAggParamsFor } from "../../core/round/secure-round";
import { DP_PLACEMENTS, validateDpOptions, type DpOptions, type DpPlacement } from "../../core/privacy/dp";

/** Everything that defines a simulated federated job. Serialised into results.json as `config`. */
export interface SimConfig {
  devices: number;
  rounds: number;
  clientsPerRound: number;
  /** "mnist", "sensors" or "dir:PATH". */
  dataset: string;
  /**
   * mlp | cnn | cnn1d | autoencoder, or a path: a Keras / TensorFlow.js Layers model.json, a directory holding one,
   * or a saved model directory (out/model); the job trains that graph from its weights (docs/byom.md).
   */
  model: string;
  /** Warm start: the initial global model from a model of the same layout (a model directory or model.json). */
  initModel?: string;
  /** On-device optimizer of the round's fit config: sgd | momentum[:BETA] | adam (unset: sgd). */
  optimizer?: string;
  /**
   * The devices' training path (core/engine/models.ts createModel): auto (default: the hand-written fast path for
   * presets and graphs of them, tfjs autograd for every other graph), fast, or generic (autograd for any model).
   */
  engine?: "auto" | "fast" | "generic";
  /** iid | shards[:K] | dirichlet:ALPHA; "natural" keeps each simulated sensor device's own data. */
  partition: string;
  strategy: string;
  /**
   * Robust aggregation (core/robust/spec.ts, docs/robustness.md): mean | median | trimmed-mean:B | krum:F |
   * multi-krum:F,M | geomed | centered-clip:TAU | fltrust | default, optionally after norm:C or norm:qQ+;
   * unset = mean (the strategy's own streaming weighted mean).
   */
  aggregator?: string;
  /**
   * Simulator attacks (local/sim/attacks, docs/robustness.md): KIND:FRACTION[:PARAM] with KIND sign-flip | gaussian |
   * scaling | alie | ipm (model poisoning) | label-flip | backdoor (data poisoning); memory transport only.
   */
  attack?: string;
  /**
   * FLTrust (`--aggregator fltrust`): the size of the server's clean root dataset (Cao et al. 2021 use ~100
   * samples), drawn from data no device holds and not from the test set (local/sim/data.ts). Set (default
   * DEFAULT_ROOT_SAMPLES) only for fltrust; results.json's config records it.
   */
  rootSamples?: number;
  localEpochs: number;
  batchSize: number;
  lr: number;
  /** FedProx μ; unset = the strategy's default (FedProx 0.01). */
  mu?: number;
  /** Server learning rate; unset = the strategy's default. */
  serverLr?: number;
  seed: number;
  /** Worker threads hosting the simulated devices (0 = all in the main thread). */
  workers: number;
  /**
   * Threads of each device's training (the wasm backend's XNNPACK pool in every thread that trains devices);
   * unset: the cores divided among those threads (simThreads()), so they never oversubscribe the machine.
   */
  threads?: number;
  /** Samples per simulated sensor device. */
  samplesPerDevice: number;
  /** A round closes after this long even if some devices have not answered. */
  roundTimeoutMs: number;
  /** Stop early once the test accuracy reaches this fraction (0 = never). */
  targetAccuracy: number;
  out: string;
  /** memory: in-process/worker-thread transport; iothub: the local IoT Hub stack with the real modules. */
  transport: "memory" | "iothub";
  /** Uplink codec chain (core/compress spec, e.g. "topk:0.01+int8"); "none" = raw float32. */
  compression: string;
  /** Codec of the global model sent to devices: none | fp16 | int8 | int4 | int2 | qsgd:L (no sparsifier). */
  downlinkCompression: string;
  /** Secure aggregation (SecAgg+): the server learns only the sum of each round's updates. */
  secureAggregation: boolean;
  /**
   * Fleet-wide evaluation (docs/evaluation.md): each round's model evaluated on every device's held-out data
   * (memory transport), or by the devices themselves (iothub); `--no-fleet-eval` turns it off. Default on.
   */
  fleetEval: boolean;
  /** SecAgg+ neighbours k per device (unset: 2·⌈log2 n⌉, n-1 = classic SecAgg). */
  secaggNeighbours?: number;
  /** Shares needed to unmask (unset: ⌊k/2⌋+1). */
  secaggThreshold?: number;
  /** Over the IoT Hub stack with a fleet trace: virtual seconds of the trace per real second (default 600). */
  timeScale?: number;
  /** Clip range of the fixed-point encoding (unset: 8). */
  secaggClip?: number;
  /** Deadline of each secure-aggregation step after training. */
  secaggStepTimeoutMs: number;
  /** Fraction of each round's participants that vanish at a random secure-aggregation step (simulation). */
  dropout: number;
  /** Differential privacy: noise multiplier z (DP is on when set). */
  dpNoise?: number;
  /** L2 clip norm C, or "adaptive" (Andrew et al. 2021). */
  dpClip?: number | "adaptive";
  /** δ of the (ε, δ) guarantee. */
  dpDelta: number;
  /** ε_max: the job stops before a round that would spend more. */
  dpEpsilonBudget?: number;
  /** central | distributed (needs secure aggregation) | local. */
  dpPlacement: DpPlacement;
  /** n' for the distributed placement (unset: ⌈0.8 · clients per round⌉). */
  dpMinSurvivors?: number;
  /** Adaptive clipping: the quantile γ of update norms to track (unset: 0.5). */
  dpTargetQuantile?: number;
  /** Adaptive clipping: σ_b, noise std of the clipped count (unset: clients per round / 20). */
  dpClipCountStddev?: number;
  /**
   * A fleet trace (docs/fleet-traces.md): a JSON lines FILE, `synthetic` or `synthetic:SPEC`; unset: no trace (every
   * device always online, at this machine's speed). Memory transport: the job runs in the trace's virtual time
   * (core/fleet/virtual-fleet.ts, docs/simulation.md). IoT Hub transport: the local stack's devices follow it in
   * real time scaled by `timeScale` (their links go down and up, training is paced to the trace's speed).
   */
  fleetTrace?: string;
  /** Participant selection (core/selection): random | deadline | oort[:KEY=VALUE,...]; unset = random. */
  selection?: string;
  /** sync (rounds) or async (FedBuff); unset = sync. */
  mode?: "sync" | "async";
  /** Async: devices kept training at all times (C). */
  concurrency?: number;
  /** Async: updates per aggregation (K). */
  buffer?: number;
  /** Async: updates staler than this many model versions are refused. */
  maxStaleness?: number;
  /** Async: the staleness weight: poly:A | hinge:A,B | const. */
  staleness?: string;
  /** With a fleet trace: each round's deadline in virtual seconds (unset: --round-timeout). */
  roundDeadlineS?: number;
  /**
   * With a fleet trace: stop after the round (async: the version) that ends at or past this many virtual hours
   * (unset: run --rounds); "simulate a day of the fleet" is --virtual-hours 24 with enough --rounds.
   */
  virtualHours?: number;
}

/** FLTrust's root dataset when --root-samples is not given (Cao et al. 2021 use 100 clean samples). */
export const DEFAULT_ROOT_SAMPLES = 100;

/** Round modes of --mode. */
export const MODES = ["sync", "async"] as const;

export const DEFAULT_CONFIG: SimConfig = {
  devices: 20,
  rounds: 10,
  clientsPerRound: 10,
  dataset: "sensors",
  model: "mlp",
  partition: "natural",
  strategy: "fedavg",
  localEpochs: 1,
  batchSize: 10,
  lr: 0.05,
  seed: 42,
  workers: 2,
  samplesPerDevice: 200,
  roundTimeoutMs: 600_000,
  targetAccuracy: 0,
  out: "out/simulation",
  transport: "memory",
  compression: "none",
  downlinkCompression: "none",
  secureAggregation: false,
  fleetEval: true,
  secaggStepTimeoutMs: 30_000,
  dropout: 0,
  dpDelta: 1e-5,
  dpPlacement: "central",
};

/** Presets selectable with --preset; explicit flags override them. */
export const PRESETS: Record<string, Partial<SimConfig>> = {
  default: {
    dataset: "sensors",
    model: "mlp",
    devices: 20,
    clientsPerRound: 10,
    rounds: 10,
    out: "out/default",
    transport: "iothub",
  },
  "mnist-mlp": {
    dataset: "mnist",
    model: "mlp",
    devices: 100,
    clientsPerRound: 10,
    localEpochs: 5,
    batchSize: 10,
    lr: 0.05,
    partition: "iid",
  },
  "mnist-cnn": {
    dataset: "mnist",
    model: "cnn",
    devices: 100,
    clientsPerRound: 10,
    localEpochs: 5,
    batchSize: 10,
    lr: 0.05,
    partition: "iid",
  },
};

/**
 * Upper bounds of the simulation's count, size and time flags: generous for real use, and checked (with a memory
 * estimate, `checkFleetMemory`) before anything is allocated, so `--devices 100000000` is one E_CONFIG_RANGE line
 * instead of a process that grows until the kernel kills it. README.md's flag table lists them.
 */
export const SIM_LIMITS = {
  devices: 100_000,
  rounds: 100_000,
  clientsPerRound: 100_000,
  localEpochs: 1_000,
  /** Training takes min(batch, the device's samples) at a time, so a batch bigger than the data costs nothing. */
  batchSize: 100_000,
  /** The seed is used as an unsigned 32-bit integer (core/data/rng.ts). */
  seed: 0xffff_ffff,
  /** Each worker rebuilds the whole fleet's data (local/sim/fleet-worker.ts); more threads than cores only cost. */
  workers: 64,
  samplesPerDevice: 1_000_000,
  /** Seconds. Node's timers hold at most 2^31-1 ms (24.8 days); a longer timeout fires after 1 ms. */
  roundTimeoutS: 1_000_000,
  secaggStepTimeoutS: 1_000_000,
  /** Shamir shares are points of GF(2^16) (core/secagg/params.ts): at most 65,535 participants. */
  secaggNeighbours: 65_535,
  secaggThreshold: 65_535,
  dpMinSurvivors: 100_000,
  /**
   * Sanity bounds of the real-valued privacy flags: noise z·C must stay finite (--dp-noise 1e300 --dp-clip 1e300
   * failed with E_DP_CONFIG only after the fleet had started), and a SecAgg+ clip range c spreads 32 bits of fixed
   * point over [-c, c] x n (core/secagg/fixed-point.ts), so c = 1e300 silently rounded every update to 0.
   */
  dpNoise: 1_000,
  /** float32's largest value: no update norm exceeds it, so a larger clip bound clips nothing (z·C stays finite). */
  dpClip: 3.4028234663852886e38,
  dpClipCountStddev: 1_000_000,
  secaggClip: 1_000,
  /** Seconds of virtual time: a year. */
  roundDeadlineS: 366 * 86_400,
  concurrency: 100_000,
  buffer: 100_000,
  /** FLTrust's root dataset: a server-side training set, trained on every round. */
  rootSamples: 100_000,
  maxStaleness: 1_000_000,
} as const;

/** One E_CONFIG_RANGE line unless `v <= max` (`raw`: the value as the user typed it). */
export function atMost(name: string, v: number, max: number, raw: string | number = v): number {
  if (v > max) fail("E_CONFIG_RANGE", `--${name} must be at most ${max} (got ${raw})`);
  return v;
}

/**
 * Parses a numeric flag; `what` says what is accepted, and anything else is one E_CONFIG_VALUE line. With `max`,
 * a larger value is one E_CONFIG_RANGE line.
 */
function numberFlag(
  name: string,
  raw: string | number,
  integer: boolean,
  min: 0 | 1,
  what: string,
  max?: number,
): number {
  const v = typeof raw === "number" ? raw : Number(raw);
  const ok = (integer ? Number.isInteger(v) : Number.isFinite(v)) && (min === 1 ? v > 0 : v >= 0);
  if (!ok || String(raw).trim() === "") fail("E_CONFIG_VALUE", `--${name} must be ${what}, got '${raw}'`);
  return max === undefined ? v : atMost(name, v, max, String(raw).trim());
}

export const positiveInt = (name: string, raw: string | number, max?: number): number =>
  numberFlag(name, raw, true, 1, "a positive integer", max);
export const nonNegativeInt = (name: string, raw: string | number, max?: number): number =>
  numberFlag(name, raw, true, 0, "a non-negative integer", max);
export const positiveNumber = (name: string, raw: string | number, max?: number): number =>
  numberFlag(name, raw, false, 1, "a positive number", max);
export const nonNegativeNumber = (name: string, raw: string | number, max?: number): number =>
  numberFlag(name, raw, false, 0, "a number ≥ 0", max);

/** Bytes of one synthetic sensor window: 32 time steps x 6 channels of float32 (core/data/sensors.ts defaults). */
const SENSOR_SAMPLE_BYTES = 32 * 6 * 4;

/**
 * The sensor fleet's data is built in the main thread and again in every worker thread (the partitions are
 * recomputed, not shipped), and a non-natural partition copies it once more. A job whose data alone would not fit
 * in this machine's memory is one E_CONFIG_MEMORY line before anything is generated. (mnist is fixed-size; a
 * dir: dataset is as large as its files.)
 */
export function checkFleetMemory(c: SimConfig, totalBytes = os.totalmem()): void {
  if (c.dataset !== "sensors") return;
  const copies = (1 + c.workers) * (c.partition === "natural" ? 1 : 2);
  const bytes = c.devices * c.samplesPerDevice * SENSOR_SAMPLE_BYTES * copies;
  if (bytes > totalBytes) {
    const gb = (b: number) => `${(b / 1e9).toFixed(1)} GB`;
    fail(
      "E_CONFIG_MEMORY",
      `${c.devices} devices x ${c.samplesPerDevice} samples of sensor data need about ${gb(bytes)} ` +
        `(${copies} copies: main thread and ${c.workers} worker(s)), more than this machine's ${gb(totalBytes)}; ` +
        `lower --devices, --samples-per-device or --workers`,
    );
  }
}

/** Every bound of SIM_LIMITS, flag by flag, before the cross-field checks. */
function checkRanges(c: SimConfig): void {
  const L = SIM_LIMITS;
  const checks: [string, number | undefined, number][] = [
    ["devices", c.devices, L.devices],
    ["rounds", c.rounds, L.rounds],
    ["clients-per-round", c.clientsPerRound, L.clientsPerRound],
    ["local-epochs", c.localEpochs, L.localEpochs],
    ["batch-size", c.batchSize, L.batchSize],
    ["seed", c.seed, L.seed],
    ["workers", c.workers, L.workers],
    ["samples-per-device", c.samplesPerDevice, L.samplesPerDevice],
    ["round-timeout", c.roundTimeoutMs / 1000, L.roundTimeoutS],
    ["secagg-step-timeout", c.secaggStepTimeoutMs / 1000, L.secaggStepTimeoutS],
    ["secagg-neighbours", c.secaggNeighbours, L.secaggNeighbours],
    ["secagg-threshold", c.secaggThreshold, L.secaggThreshold],
    ["dp-min-survivors", c.dpMinSurvivors, L.dpMinSurvivors],
    ["dp-noise", c.dpNoise, L.dpNoise],
    ["dp-clip", c.dpClip === "adaptive" ? undefined : c.dpClip, L.dpClip],
    ["dp-clip-count-stddev", c.dpClipCountStddev, L.dpClipCountStddev],
    ["secagg-clip", c.secaggClip, L.secaggClip],
    ["round-deadline", c.roundDeadlineS, L.roundDeadlineS],
    ["virtual-hours", c.virtualHours, L.roundDeadlineS / 3600],
    ["concurrency", c.concurrency, L.concurrency],
    ["buffer", c.buffer, L.buffer],
    ["max-staleness", c.maxStaleness, L.maxStaleness],
    ["root-samples", c.rootSamples, L.rootSamples],
  ];
  for (const [name, v, max] of checks) if (v !== undefined) atMost(name, v, max);
}

/** Cross-field checks. */
export function validateConfig(c: SimConfig): SimConfig {
  checkRanges(c);
  checkFleetMemory(c);
  if (c.clientsPerRound > c.devices) {
    fail("E_CONFIG_VALUE", `--clients-per-round ${c.clientsPerRound} exceeds --devices ${c.devices}`);
  }
  if (c.targetAccuracy > 1)
    fail("E_CONFIG_VALUE", `--target-accuracy is a fraction 0..1, got ${c.targetAccuracy}`);
  c.compression = parseCompression(c.compression).text;
  const down = parseCompression(c.downlinkCompression);
  if (down.sparse) {
    fail(
      "E_COMPRESS_SPEC",
      `--downlink-compression '${c.downlinkCompression}': the global model cannot be sparsified (use fp16, int8, ...)`,
    );
  }
  c.downlinkCompression = down.text;
  if (!(c.dropout >= 0 && c.dropout < 1))
    fail("E_CONFIG_VALUE", `--dropout is a fraction in [0, 1), got ${c.dropout}`);
  if (!c.secureAggregation) {
    const given = (
      [
        ["--secagg-neighbours", c.secaggNeighbours],
        ["--secagg-threshold", c.secaggThreshold],
        ["--secagg-clip", c.secaggClip],
        ["--dropout", c.dropout > 0 ? c.dropout : undefined],
      ] as const
    ).find(([, v]) => v !== undefined);
    if (given) fail("E_CONFIG_VALUE", `${given[0]} needs --secure-aggregation`);
  } else {
    // One clear line now rather than a failed first round: k and t are checked against the round size.
    secAggParamsFor(c.clientsPerRound, {
      neighbours: c.secaggNeighbours,
      threshold: c.secaggThreshold,
      clipRange: c.secaggClip,
    });
  }
  validateDpConfig(c);
  validateFleetConfig(c);
  const spec = c.aggregator !== undefined ? parseAggregator(c.aggregator) : undefined;
  if (spec) {
    checkAggregatorCompatible(spec, { secureAggregation: c.secureAggregation, dp: c.dpNoise !== undefined });
    c.aggregator = formatAggregator(spec);
  }
  if (c.attack !== undefined) validateAttack(c);
  if (spec?.rule === "fltrust") {
    c.rootSamples ??= DEFAULT_ROOT_SAMPLES;
    if (!(Number.isSafeInteger(c.rootSamples) && c.rootSamples >= 1))
      fail(
        "E_CONFIG_AGGREGATOR",
        `aggregator '${c.aggregator}' needs the server's root dataset: --root-samples must be a positive integer, got ${c.rootSamples}`,
      );
  } else if (c.rootSamples !== undefined) {
    fail(
      "E_CONFIG_CONFLICT",
      `--root-samples is FLTrust's root dataset: it needs --aggregator fltrust (got ${c.aggregator ?? "mean"})`,
    );
  }
  if (c.optimizer !== undefined) c.optimizer = formatOptimizer(parseOptimizer(c.optimizer));
  if (c.engine !== undefined && !["auto", "fast", "generic"].includes(c.engine))
    fail("E_CONFIG_MODEL", `--engine must be auto, fast or generic, got '${c.engine}'`);
  checkModelArg(c.model, "--model");
  if (c.initModel !== undefined && c.initModel.trim() === "")
    fail("E_CONFIG_MODEL", "--init-model must name a model directory or a model.json");
  if (!/^(mnist|sensors|dir:.+)$/.test(c.dataset)) {
    fail("E_CONFIG_DATASET", `unknown dataset '${c.dataset}' (expected mnist, sensors or dir:PATH)`);
  }
  return c;
}

/** --attack: a valid spec, on the memory transport, leaving an honest device; model attacks need each update. */
function validateAttack(c: SimConfig): void {
  const a = parseAttack(c.attack!);
  if (c.transport === "iothub")
    fail(
      "E_CONFIG_CONFLICT",
      "--attack runs in the simulator only: it needs --transport memory (the local IoT Hub stack's devices are the real modules)",
    );
  if (isModelAttack(a.kind) && c.secureAggregation)
    fail(
      "E_CONFIG_CONFLICT",
      `--attack ${a.kind} crafts each attacker's update from the round's updates: secure aggregation hides them`,
    );
  chooseAttackers(a.fraction, c.devices, c.seed);
  c.attack = formatAttack(a);
}

/**
 * `--model`: a built-in kind, or the path of a model (a model.json, its directory, a saved model directory). A word
 * that is neither is an unknown kind (E_CONFIG_MODEL), not a missing directory.
 */
export function checkModelArg(model: string, flag: string): void {
  if (isPresetKind(model)) return;
  if (model.trim() === "" || (!fs.existsSync(model) && !/[/\\.]/.test(model)))
    fail(
      "E_CONFIG_MODEL",
      `unknown model '${model}' (expected one of ${MODEL_KINDS.join(", ")}, or the path of a model.json or model directory for ${flag})`,
    );
}

/** --fleet-trace, --selection, --mode and the asynchronous flags: each mistake is one coded line. */
function validateFleetConfig(c: SimConfig): void {
  if (c.selection !== undefined) c.selection = createSelector(c.selection).spec;
  if (c.mode !== undefined && !(MODES as readonly string[]).includes(c.mode))
    fail("E_CONFIG_MODE", `--mode must be sync or async, got '${c.mode}'`);
  if (c.mode !== "async") {
    const given = (
      [
        ["--concurrency", c.concurrency],
        ["--buffer", c.buffer],
        ["--max-staleness", c.maxStaleness],
        ["--staleness", c.staleness],
      ] as const
    ).find(([, v]) => v !== undefined);
    if (given) fail("E_CONFIG_MODE", `${given[0]} needs --mode async`);
  }
  if (c.staleness !== undefined) c.staleness = formatStaleness(parseStaleness(c.staleness));
  if (c.concurrency !== undefined && c.concurrency > c.devices)
    fail("E_CONFIG_MODE", `--concurrency ${c.concurrency} exceeds --devices ${c.devices}`);
  if (c.buffer !== undefined && c.concurrency !== undefined && c.buffer > c.concurrency)
    fail("E_CONFIG_MODE", `--buffer ${c.buffer} exceeds --concurrency ${c.concurrency}`);
  if (c.fleetTrace === undefined) {
    if (c.roundDeadlineS !== undefined) fail("E_CONFIG_FLEET_TRACE", "--round-deadline needs --fleet-trace");
    if (c.virtualHours !== undefined) fail("E_CONFIG_FLEET_TRACE", "--virtual-hours needs --fleet-trace");
    if (c.mode === "async") fail("E_CONFIG_FLEET_TRACE", "--mode async needs --fleet-trace (virtual time)");
    return;
  }
  // Recorded in results.json: with a trace the run says how it picked and how it aggregated.
  c.mode ??= "sync";
  c.selection ??= "random";
  if (c.fleetTrace.trim() === "")
    fail("E_CONFIG_FLEET_TRACE", "--fleet-trace must name a file or synthetic[:SPEC]");
  if (c.transport !== "memory") {
    // Over the local IoT Hub stack the trace drives real links in scaled real time (local/stack/trace-driver.ts);
    // selection and async rounds there are the Function's (its job definition), not the simulator's flags.
    if (
      c.mode === "async" ||
      (c.selection !== undefined && c.selection !== "random") ||
      c.roundDeadlineS !== undefined
    )
      fail(
        "E_CONFIG_FLEET_TRACE",
        "--transport iothub --fleet-trace follows the trace in scaled real time: --mode async, --selection and --round-deadline need --transport memory",
      );
  }
  if (c.secureAggregation && c.transport === "memory")
    fail(
      "E_CONFIG_FLEET_TRACE",
      "--fleet-trace with --secure-aggregation is not supported (secure rounds run on real time)",
    );
}

/** The DP options of a simulated job (undefined: DP off). */
export function dpOptionsOf(c: SimConfig): DpOptions | undefined {
  if (c.dpNoise === undefined) return undefined;
  return {
    noiseMultiplier: c.dpNoise,
    clip: c.dpClip ?? 1,
    delta: c.dpDelta,
    epsilonBudget: c.dpEpsilonBudget,
    placement: c.dpPlacement,
    minSurvivors: c.dpMinSurvivors,
    targetQuantile: c.dpTargetQuantile,
    clipCountStddev: c.dpClipCountStddev,
    clientsPerRound: c.clientsPerRound,
    fleetSize: c.devices,
  };
}

function validateDpConfig(c: SimConfig): void {
  if (c.dpNoise === undefined) {
    const given = (
      [
        ["--dp-clip", c.dpClip],
        ["--dp-epsilon-budget", c.dpEpsilonBudget],
        ["--dp-min-survivors", c.dpMinSurvivors],
        ["--dp-target-quantile", c.dpTargetQuantile],
        ["--dp-clip-count-stddev", c.dpClipCountStddev],
        ["--dp-placement", c.dpPlacement !== "central" ? c.dpPlacement : undefined],
      ] as const
    ).find(([, v]) => v !== undefined);
    if (given) fail("E_CONFIG_VALUE", `${given[0]} needs --dp-noise`);
    return;
  }
  if (c.dpClip === undefined)
    fail("E_CONFIG_VALUE", "--dp-noise needs --dp-clip C (a clip norm) or --dp-clip adaptive");
  if (!DP_PLACEMENTS.includes(c.dpPlacement))
    fail("E_CONFIG_VALUE", `--dp-placement must be central, distributed or local, got '${c.dpPlacement}'`);
  if (c.dpPlacement === "distributed" && !c.secureAggregation) {
    fail(
      "E_CONFIG_VALUE",
      "--dp-placement distributed needs --secure-aggregation (without it the server sees each lightly noised update)",
    );
  }
  if (c.dpClip !== "adaptive" && (c.dpTargetQuantile !== undefined || c.dpClipCountStddev !== undefined))
    fail("E_CONFIG_VALUE", "--dp-target-quantile and --dp-clip-count-stddev need --dp-clip adaptive");
  const o = dpOptionsOf(c)!;
  try {
    validateDpOptions(o);
  } catch (e) {
    fail("E_CONFIG_VALUE", `differential privacy: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The threads of the backend in each thread that trains devices: --threads, else FLOTILLA_THREADS, else the
 * machine's cores divided among the training threads (the workers, or the main thread with --workers 0), at most
 * DEFAULT_MAX_THREADS. On 2 cores with the default 2 workers that is 1 (each worker already has a core).
 */
export function simThreads(
  c: Pick<SimConfig, "threads" | "workers">,
  env: Readonly<Record<string, string | undefined>> = process.env,
): number {
  return c.threads ?? sharedThreads(Math.max(1, c.workers), env);
}

/** The main thread's backend: the devices' threads with --workers 0; else 1 (it evaluates while workers train). */
export function mainThreads(
  c: Pick<SimConfig, "threads" | "workers">,
  env: Readonly<Record<string, string | undefined>> = process.env,
): number {
  return c.workers === 0 ? simThreads(c, env) : 1;
}
