import { parseAggregator } from "../../core/robust/spec";
import { ROOT_DEVICE_ID, rootUpdater } from "../../core/robust/root";
import type { RobustReport } from "../../core/robust/aggregation";
import * as fs from "node:fs";
import * as path from "node:path";
import { initBackend } from "../../core/engine/backend";
import { createModel } from "../../core/engine/models";
import type { ServerTransport } from "../../core/protocol/transport";
import { parseCompression } from "../../core/compress";
import type { ModelSpec } from "../../core/engine/model-spec";
import { checkWarmStart, loadModelSource, saveModelDir, type ModelSource } from "../../core/export/model-dir";
import { isPresetKind } from "../../core/engine/graph";
import { parseOptimizer } from "../../core/engine/optimizer-config";
import type { EvalSummary } from "../../core/engine/types";
import { runJob, type RoundRecord, type ServerEvents } from "../../core/round/server";
import { createStrategy } from "../../core/strategies/registry";
import { writeReport } from "../report/report";
import type { SimConfig } from "./config";
import { fleetHeldOut, loadFleetData } from "./data";
import { foldEvaluations, type DeviceEvaluation, type FleetEvaluation } from "../../core/round/evaluation";
import type { Dataset } from "../../core/data/dataset";
import { WorkerFleet, startInProcessFleet } from "./worker-fleet";
import * as os from "node:os";
import type { JsonWebKey } from "node:crypto";
import { FileKeyProvider } from "../../core/secagg/file-key-provider";
import type { SecureAggregationOptions, SecureRoundRecord } from "../../core/round/secure-round";
import { deviceName } from "./data";
import { dpOptionsOf, mainThreads } from "./config";
import { DifferentialPrivacy, type DpRoundRecord } from "../../core/privacy/dp";
import { VirtualFleet } from "../../core/fleet/virtual-fleet";
import type { FleetTrace } from "../../core/fleet/trace";
import { loadTrace } from "../cli/fleet-trace";
import { fail } from "../../core/errors";
import { quantile } from "../../core/fleet/trace";
import { simSelection } from "./selection";
import { runAsyncJob, type AsyncRecord } from "../../core/round/async-server";
import type { ClientInfo } from "../../core/strategies/strategy";
import { simAttack, type AttackRecord } from "./attacks";
import { backdoorSuccess, backdoorTrigger, poisonFleet, triggeredTestSet } from "./attacks/data";

export interface RoundSummary {
  round: number;
  participants: string[];
  completed: number;
  failures: { deviceId: string; code: string; reason: string }[];
  accuracy: number;
  loss: number;
  /** Binary models: ROC AUC of the test set (core/engine/metrics.ts). */
  auc?: number;
  /** Regression and reconstruction models: mean absolute error of the test set. */
  mae?: number;
  trainLoss: number;
  uplinkBytes: number;
  downlinkBytes: number;
  durationMs: number;
  slowestTrainMs: number;
  /** Secure aggregation: dropouts per step, devices in the sum, unmasking time, bytes per device. */
  secagg?: SecureRoundRecord & { meanBytesPerDevice: { up: number; down: number } };
  /** Differential privacy: ε spent so far, after this round (the same as dp.epsilon). */
  epsilon?: number;
  /** Differential privacy: clip norm, noise, released or not, and ε spent so far (after this round). */
  dp?: DpRoundRecord;
  /** Robust aggregation (docs/robustness.md): the rule, the bound, who was kept and dropped, per-device statistics. */
  robust?: RobustReport;
  /** With a fleet trace: when the round opened and closed, virtual seconds from the trace's start. */
  virtualStartS?: number;
  virtualEndS?: number;
  /**
   * With a fleet trace, sync mode: updates ordered in this round that arrived after it closed (trained offline,
   * delivered on reconnect), counted and not aggregated; includes orders not computed because they could only
   * have arrived after the round's deadline (docs/simulation.md).
   */
  late?: number;
  /** Async mode: the staleness τ of each applied update (same order as participants). */
  staleness?: number[];
  /**
   * Fleet-wide evaluation of this round's model on the devices' held-out data (docs/evaluation.md): weighted
   * accuracy / loss / MAE, their spread across devices and the worst decile. Memory transport: every device of the
   * fleet; iothub: the devices that received the model (the next round's cohort), through the real pipeline.
   */
  evaluation?: FleetEvaluation;
  /**
   * --attack backdoor: the fraction of the test samples whose true class is not the backdoor's target that this
   * round's model classifies as the target once the trigger is stamped on them (local/sim/attacks/data.ts).
   */
  backdoorSuccess?: number;
}

/** --max-staleness when not given: updates more than this many versions old are refused. */
export const DEFAULT_MAX_STALENESS = 100;

/** Per device: rounds it was picked for, and updates of it that were aggregated. */
export interface Participation {
  devices: Record<string, { selected: number; completed: number }>;
  /** Min, median and max over every device of the fleet (devices never picked count as 0). */
  selected: { min: number; median: number; max: number };
  completed: { min: number; median: number; max: number };
  /**
   * With --selection: each device's longest run of consecutive rounds (async: versions) in which it was offered (online and
   * idle) and not picked — min, median and max over the fleet (the participation floor keeps max ≤ its N when the
   * fleet allows it; docs/selection.md).
   */
  longestWait?: { min: number; median: number; max: number };
}

/** How the job ended. "diverged": the global model turned non-finite (NaN/±Infinity); the reason names the round. */
export interface JobStatus {
  state: "completed" | "target-reached" | "time-limit" | "budget-exhausted" | "diverged";
  reason?: string;
}

/** The job's privacy guarantee at the end. */
export interface PrivacySummary {
  epsilon: number;
  delta: number;
  order: number;
  steps: number;
  placement: string;
  noiseMultiplier: number;
  epsilonBudget?: number;
  conversion: "tight" | "classic";
  samplingRate: number;
}

export interface SimulationResult {
  config: SimConfig & { modelSpec: unknown; params: number; layoutHash: string };
  rounds: RoundSummary[];
  final: {
    accuracy: number;
    loss: number;
    /** The last round's AUC (binary models) and MAE (regression, reconstruction), when the model reports them. */
    auc?: number;
    mae?: number;
    /** --attack backdoor: the last round's backdoor success rate. */
    backdoorSuccess?: number;
    rounds: number;
    wallMs: number;
    /** With a fleet trace: virtual seconds from the trace's start to the end of the last round. */
    virtualTimeS?: number;
    /** With a fleet trace and --target-accuracy: virtual seconds to first reach it (null: never reached). */
    timeToTargetS?: number | null;
  };
  rejected: Record<string, number>;
  participation?: Participation;
  status?: JobStatus;
  privacy?: PrivacySummary;
  /** --attack: the attack, its parameter in force and the attacking devices (local/sim/attacks). */
  attack?: AttackRecord;
}

export interface SimulationReporter {
  onStart?(info: { devices: number; params: number; testSamples: number }): void;
  onRoundStart?(round: number, participants: readonly string[], totalSamples: number): void;
  onProgress?(round: number, samplesDone: number): void;
  onRoundEnd?(r: RoundSummary): void;
}

/** Runs a federated job on a simulated fleet and writes results.json and report.html into config.out. */
export async function simulate(
  config: SimConfig,
  reporter: SimulationReporter = {},
): Promise<SimulationResult> {
  const t0 = performance.now();
  const trace = config.fleetTrace !== undefined ? loadSimTrace(config) : undefined;
  // --model PATH (an imported Keras / tfjs model or a saved model directory) trains from its weights;
  // --init-model warm-starts any job from a model of the same layout.
  const source = simModelSource(config);
  const warm = config.initModel !== undefined ? loadModelSource(config.initModel) : undefined;
  await initBackend({ threads: mainThreads(config) });
  const data = loadFleetData({ ...config, modelSpec: source?.spec });
  // --attack: the attackers (chosen by seed); model poisoning intercepts each round's aggregation.
  const attack = simAttack(config);
  // Data poisoning: the attackers' datasets (the worker threads poison theirs the same way, fleet-worker.ts).
  const fleetData = poisonFleet(data, attack, config);
  // Backdoor: the triggered test inputs its success rate is measured on, each round.
  const triggered =
    attack?.spec.kind === "backdoor"
      ? triggeredTestSet(data.test, backdoorTrigger(config.dataset, data.test))
      : undefined;
  const aggregator = config.aggregator !== undefined ? parseAggregator(config.aggregator) : undefined;
  if (aggregator?.rule === "fltrust" && !data.root)
    fail("E_CONFIG_AGGREGATOR", "aggregator 'fltrust' needs the server's root dataset (--root-samples N)");
  const evalModel = await createModel(data.spec, config.seed);
  if (source) evalModel.setWeights(source.weights);
  if (warm) evalModel.setWeights(checkWarmStart(data.spec, warm, config.initModel!));
  const initial = evalModel.getWeights();
  reporter.onStart?.({ devices: data.devices.length, params: evalModel.numParams, testSamples: data.test.n });

  const strategy = createStrategy(config.strategy, {
    clientsPerRound: config.clientsPerRound,
    fit: {
      epochs: config.localEpochs,
      batchSize: config.batchSize,
      lr: config.lr,
      mu: config.mu,
      ...(config.optimizer !== undefined ? { optimizer: parseOptimizer(config.optimizer) } : {}),
    },
    serverLr: config.serverLr,
    seed: config.seed,
  });
  // The task's metrics beyond accuracy and loss (AUC of a binary model, MAE of a regression or reconstruction):
  // the server evaluates each new model just before the round's record, which picks them up.
  let extra: TaskMetrics = {};
  // Fleet-wide evaluation: the same model on every device's held-out data (label-matched samples of the test set,
  // local/sim/data.ts fleetHeldOut), folded as the aggregation Function folds the devices' reports.
  const heldOut = config.fleetEval ? fleetHeldOut(data, config.seed) : undefined;
  let fleetEvals: Omit<DeviceEvaluation, "round">[] | undefined;
  const evaluate = async (w: Float32Array): Promise<EvalSummary> => {
    evalModel.setWeights(w);
    const e = evalModel.evaluate(data.test, 500);
    extra = taskMetrics(e);
    if (triggered) extra.backdoorSuccess = backdoorSuccess(evalModel, triggered, data.spec.numClasses);
    if (heldOut) fleetEvals = evaluateHeldOut(evalModel, heldOut, config.devices);
    return e;
  };
  /** The round's fleet evaluation (once: the pending evaluations are consumed). */
  const fleetEvaluation = (round: number): { evaluation?: FleetEvaluation } => {
    const evals = fleetEvals;
    fleetEvals = undefined;
    const f = evals
      ? foldEvaluations(
          round,
          evals.map((x) => ({ ...x, round })),
        )
      : undefined;
    return f ? { evaluation: f } : {};
  };
  strategy.initialize(initial);

  // Progress: samples trained so far this round, summed over devices.
  let round = 0;
  const doneByDevice = new Map<string, number>();
  let doneTotal = 0;
  const onProgress = (deviceId: string, done: number) => {
    doneTotal += done - (doneByDevice.get(deviceId) ?? 0);
    doneByDevice.set(deviceId, done);
    reporter.onProgress?.(round, doneTotal);
  };
  const samplesOf = new Map<string, number>();
  // Secure aggregation: every simulated device gets an identity key (file-backed, in a private temporary
  // directory removed at the end); the server relays the public keys, as the cloud relays them from Key Vault.
  const keyDir = config.secureAggregation
    ? fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-keys-"))
    : undefined;
  const keys = keyDir ? new FileKeyProvider(keyDir) : undefined;
  const identityKeys = new Map<string, JsonWebKey>();
  let transport: ServerTransport;
  try {
    if (keys) {
      for (let i = 0; i < config.devices; i++) {
        const id = deviceName(i, config.devices);
        identityKeys.set(id, await keys.createKey(id));
      }
    }
    transport =
      config.workers > 0
        ? await WorkerFleet.start(config, onProgress, { keyDir, modelSpec: source?.spec })
        : await startInProcessFleet(config, fleetData, onProgress, keys);
  } catch (e) {
    if (keyDir) fs.rmSync(keyDir, { recursive: true, force: true });
    throw e;
  }
  const secureAggregation: SecureAggregationOptions | undefined = config.secureAggregation
    ? {
        neighbours: config.secaggNeighbours,
        threshold: config.secaggThreshold,
        clipRange: config.secaggClip,
        identityKey: (id) => identityKeys.get(id),
        stepTimeoutMs: config.secaggStepTimeoutMs,
        ...(config.dropout > 0 ? { simulateDropout: { fraction: config.dropout, seed: config.seed } } : {}),
      }
    : undefined;
  for (const d of await transport.listDevices()) samplesOf.set(d.deviceId, d.numSamples ?? 0);
  // Virtual time: the fleet trace decides when each order arrives and each update comes back. In sync mode an
  // order that could only arrive after its round's deadline is not computed (it is counted late).
  let fleet: VirtualFleet | undefined;
  if (trace) {
    try {
      fleet = await VirtualFleet.create(transport, trace, {
        model: config.model,
        ...(config.mode !== "async"
          ? { cancelAfter: (_sent: number, deadline?: number) => deadline ?? Infinity }
          : {}),
      });
    } catch (e) {
      await transport.close();
      if (keyDir) fs.rmSync(keyDir, { recursive: true, force: true });
      throw e;
    }
    transport = fleet;
  }
  const participation = new Map<string, { selected: number; completed: number }>(
    [...samplesOf.keys()].map((id) => [id, { selected: 0, completed: 0 }]),
  );
  const lateByRound = new Map<number, number>();
  const deadlineMs = fleet
    ? (config.roundDeadlineS ?? config.roundTimeoutMs / 1000) * 1000
    : config.roundTimeoutMs;
  // --selection: the selector picks, the strategy trains the picked devices (unset: the strategy's own draw).
  const selection =
    config.selection !== undefined
      ? simSelection(config.selection, {
          count: config.clientsPerRound,
          seed: config.seed,
          deadlineS: deadlineMs / 1000,
          epochs: config.localEpochs,
          modelBytes: evalModel.numParams * 4,
          fleet,
        })
      : undefined;

  // FLTrust: the server trains the round's global model on its root dataset with the job's local training config
  // (the fit config a device would get, FedProx's μ included), on the evaluation model (evaluate sets its weights).
  const rootUpdate =
    aggregator?.rule === "fltrust" && data.root
      ? rootUpdater(
          evalModel,
          data.root,
          (r) => strategy.configureFit(r, [{ deviceId: ROOT_DEVICE_ID }])[0]!.config,
          data.devices.reduce((a, d) => a + d.n, 0) / data.devices.length,
        )
      : undefined;
  const dpOptions = dpOptionsOf(config);
  const dp = dpOptions ? new DifferentialPrivacy(dpOptions) : undefined;
  const rejected: Record<string, number> = {};
  const summaries: RoundSummary[] = [];
  const abort = new AbortController();
  // Why the job stopped early: the target accuracy, or --virtual-hours of the trace's time.
  let stopped: JobStatus | undefined;
  const stopIfDone = (accuracy: number, virtualEndS?: number) => {
    if (stopped) return;
    if (config.targetAccuracy > 0 && accuracy >= config.targetAccuracy)
      stopped = { state: "target-reached", reason: `test accuracy reached ${config.targetAccuracy}` };
    else if (config.virtualHours !== undefined && (virtualEndS ?? 0) >= config.virtualHours * 3600)
      stopped = { state: "time-limit", reason: `${config.virtualHours} virtual hours of the fleet trace` };
    if (stopped) abort.abort();
  };
  let divergedReason: string | undefined;
  const events: ServerEvents = {
    onRoundStart: (r, participants) => {
      round = r;
      doneByDevice.clear();
      doneTotal = 0;
      const total = participants.reduce((a, id) => a + (samplesOf.get(id) ?? 0), 0) * config.localEpochs;
      reporter.onRoundStart?.(r, participants, total);
    },
    onRoundEnd: (rec: RoundRecord) => {
      selection?.record(rec);
      for (const id of rec.participants) {
        const p = participation.get(id);
        if (p) p.selected++;
      }
      for (const id of rec.completed) {
        const p = participation.get(id);
        if (p) p.completed++;
      }
      const s = { ...summarize(rec), ...extra, ...fleetEvaluation(rec.round) };
      extra = {};
      if (fleet) {
        s.virtualStartS = rec.startedAt / 1000;
        s.virtualEndS = rec.endedAt / 1000;
      }
      summaries.push(s);
      reporter.onRoundEnd?.(s);
      stopIfDone(s.accuracy, s.virtualEndS);
    },
    onRejected: (code) => {
      rejected[code] = (rejected[code] ?? 0) + 1;
    },
    onLate: (r) => {
      lateByRound.set(r, (lateByRound.get(r) ?? 0) + 1);
    },
    onDiverged: (_round, reason) => {
      divergedReason = reason;
    },
  };
  const uplink = parseCompression(config.compression);
  const downlink = parseCompression(config.downlinkCompression);
  /**
   * --mode async: FedBuff (core/round/async-server.ts) on the virtual fleet, which is both its transport and its
   * clock; the selector (or the strategy's draw) picks whom to order among the idle online devices. Each flush of
   * K updates is one entry of `rounds`.
   */
  const runAsync = async (vf: VirtualFleet): Promise<void> => {
    const concurrency = config.concurrency ?? config.clientsPerRound;
    let wall = performance.now();
    let late0 = 0;
    await runAsyncJob(strategy, vf, vf, {
      jobId: `sim-${config.seed}`,
      layout: evalModel.layout,
      versions: config.rounds,
      concurrency,
      buffer: config.buffer ?? Math.min(10, concurrency),
      maxStaleness: config.maxStaleness ?? DEFAULT_MAX_STALENESS,
      ...(config.staleness !== undefined ? { staleness: config.staleness } : {}),
      trainTimeoutInMs: deadlineMs,
      evaluate,
      abortSignal: abort.signal,
      uplink,
      downlink,
      ...(aggregator ? { aggregator } : {}),
      ...(attack?.interceptor ? { interceptor: attack.interceptor } : {}),
      ...(rootUpdate ? { rootUpdate } : {}),
      dp,
      pick: async (count, exclude, version) => {
        const idle = (await vf.listDevices()).filter((d) => !exclude.has(d.deviceId));
        const offered = selection ? selection.pick(version + 1, idle, count) : idle;
        return strategy.configureFit(version + 1, offered).slice(0, count);
      },
      events: {
        onOrdered: (_v, ids) => {
          for (const id of ids) {
            const p = participation.get(id);
            if (p) p.selected++;
          }
        },
        onRoundEnd: (rec: AsyncRecord) => {
          selection?.record({
            ...rec,
            completed: rec.applied,
            participants: rec.applied,
            failures: rec.failures,
          });
          for (const id of rec.applied) {
            const p = participation.get(id);
            if (p) p.completed++;
          }
          const now = performance.now();
          const s: RoundSummary = {
            round: rec.round,
            participants: rec.applied,
            completed: rec.applied.length,
            failures: [...rec.failures, ...rec.refused],
            accuracy: rec.accuracy,
            loss: rec.loss,
            trainLoss: rec.trainLoss,
            uplinkBytes: rec.uplinkBytes,
            downlinkBytes: rec.downlinkBytes,
            durationMs: Math.round(now - wall),
            slowestTrainMs: 0,
            virtualStartS: rec.startedAt / 1000,
            virtualEndS: rec.endedAt / 1000,
            late: rec.counters.late - late0,
            staleness: rec.staleness,
            ...(rec.robust ? { robust: rec.robust } : {}),
            ...(rec.dp ? { epsilon: rec.dp.epsilon, dp: rec.dp } : {}),
            ...extra,
            ...fleetEvaluation(rec.round),
          };
          extra = {};
          wall = now;
          late0 = rec.counters.late;
          summaries.push(s);
          reporter.onRoundEnd?.(s);
          stopIfDone(s.accuracy, s.virtualEndS);
        },
        onRejected: events.onRejected,
        onDiverged: events.onDiverged,
      },
    });
  };
  try {
    if (config.mode === "async" && fleet) {
      await runAsync(fleet);
    } else {
      await runJob(strategy, transport, {
        jobId: `sim-${config.seed}`,
        rounds: config.rounds,
        layout: evalModel.layout,
        roundTimeoutInMs: deadlineMs,
        ...(fleet ? { clock: fleet } : {}),
        ...(selection
          ? {
              selectParticipants: (r: number, available: readonly ClientInfo[]) =>
                selection.pick(r, available),
            }
          : {}),
        evaluate,
        events,
        abortSignal: abort.signal,
        uplink: parseCompression(config.compression),
        downlink: parseCompression(config.downlinkCompression),
        secureAggregation,
        dp,
        ...(aggregator ? { aggregator } : {}),
        ...(attack?.interceptor ? { interceptor: attack.interceptor } : {}),
        ...(rootUpdate ? { rootUpdate } : {}),
      });
    }
  } finally {
    await transport.close();
    if (keyDir) fs.rmSync(keyDir, { recursive: true, force: true });
  }
  const status: JobStatus =
    divergedReason !== undefined
      ? { state: "diverged", reason: divergedReason }
      : dp?.status.state === "budget-exhausted"
        ? { state: "budget-exhausted", reason: dp.status.reason }
        : (stopped ?? { state: "completed" });
  if (fleet && config.mode !== "async") {
    for (const s of summaries) s.late = (lateByRound.get(s.round) ?? 0) + (fleet.cancelled.get(s.round) ?? 0);
  }
  const result = finishResult(config, data.spec, evalModel, summaries, rejected, t0, strategy.weights, {
    status,
    ...(dp ? { privacy: privacySummary(dp) } : {}),
    participation: participationSummary(participation, selection?.longestWait),
    ...(attack ? { attack: attack.record } : {}),
  });
  evalModel.dispose();
  return result;
}

type TaskMetrics = Pick<RoundSummary, "auc" | "mae" | "backdoorSuccess">;

/**
 * Every device's evaluation of the model `evalModel` holds, on its held-out data: samples, accuracy, loss and MAE
 * as the model reports them (non-finite ones left out, as a device leaves them out of its frame).
 */
export function evaluateHeldOut(
  evalModel: { evaluate(d: Dataset, batchSize: number): EvalSummary },
  heldOut: readonly Dataset[],
  devices: number,
): Omit<DeviceEvaluation, "round">[] {
  return heldOut.map((d, i) => {
    const e = evalModel.evaluate(d, 500) as EvalSummary & { mae?: number };
    const finite = (k: "accuracy" | "loss" | "mae", v: number | undefined) =>
      v !== undefined && Number.isFinite(v) ? { [k]: v } : {};
    return {
      deviceId: deviceName(i, devices),
      samples: d.n,
      ...finite("accuracy", e.accuracy),
      ...finite("loss", e.loss),
      ...finite("mae", e.mae),
    };
  });
}

/** AUC and MAE of an evaluation, when the model reports them (graph models of a binary or regression task). */
function taskMetrics(e: EvalSummary): TaskMetrics {
  const m = e as EvalSummary & TaskMetrics;
  return {
    ...(m.auc !== undefined ? { auc: m.auc } : {}),
    ...(m.mae !== undefined ? { mae: m.mae } : {}),
  };
}

/** The model `--model PATH` names, read once (undefined for a built-in kind). */
export function simModelSource(config: Pick<SimConfig, "model">): ModelSource | undefined {
  // Not a built-in kind: a path (a Keras / tfjs model.json, its directory, or a saved model directory).
  return isPresetKind(config.model) ? undefined : loadModelSource(config.model);
}

/** Builds the results of a finished run and writes results.json and report.html into config.out. */
export function finishResult(
  config: SimConfig,
  spec: unknown,
  model: { numParams: number; layout: { hash: string } },
  summaries: RoundSummary[],
  rejected: Record<string, number>,
  startedAt: number,
  finalWeights?: Float32Array,
  end: {
    status?: JobStatus;
    privacy?: PrivacySummary;
    participation?: Participation;
    attack?: AttackRecord;
  } = {},
): SimulationResult {
  const last = summaries[summaries.length - 1];
  const virtual = last?.virtualEndS !== undefined;
  const reached = summaries.find((r) => r.accuracy >= config.targetAccuracy);
  const result: SimulationResult = {
    config: { ...config, modelSpec: spec, params: model.numParams, layoutHash: model.layout.hash },
    rounds: summaries,
    final: {
      accuracy: last ? last.accuracy : NaN,
      loss: last ? last.loss : NaN,
      ...(last?.auc !== undefined ? { auc: last.auc } : {}),
      ...(last?.mae !== undefined ? { mae: last.mae } : {}),
      ...(last?.backdoorSuccess !== undefined ? { backdoorSuccess: last.backdoorSuccess } : {}),
      rounds: summaries.length,
      wallMs: performance.now() - startedAt,
      ...(virtual ? { virtualTimeS: last.virtualEndS } : {}),
      ...(virtual && config.targetAccuracy > 0 ? { timeToTargetS: reached?.virtualEndS ?? null } : {}),
    },
    rejected,
    ...(end.participation ? { participation: end.participation } : {}),
    ...(end.status ? { status: end.status } : {}),
    ...(end.privacy ? { privacy: end.privacy } : {}),
    ...(end.attack ? { attack: end.attack } : {}),
  };
  fs.mkdirSync(config.out, { recursive: true });
  fs.writeFileSync(path.join(config.out, "results.json"), JSON.stringify(result, jsonNumbers, 2));
  writeReport(path.join(config.out, "report.html"), result);
  // The final global model, for `flotilla export --model DIR/model`.
  if (finalWeights) {
    saveModelDir(path.join(config.out, "model"), spec as ModelSpec, finalWeights, {
      jobId: `sim-${config.seed}`,
      round: last ? last.round : 0,
    });
  }
  return result;
}

/** The fleet trace of a simulated job: a file must describe exactly --devices devices; synthetic is generated so. */
function loadSimTrace(config: SimConfig): FleetTrace {
  const source = config.fleetTrace!;
  const synthetic = source === "synthetic" || source.startsWith("synthetic:");
  const trace = loadTrace(
    source,
    synthetic ? { devices: String(config.devices), seed: String(config.seed) } : {},
  );
  if (trace.devices.length !== config.devices)
    fail(
      "E_CONFIG_FLEET_TRACE",
      `--fleet-trace ${source} describes ${trace.devices.length} devices, --devices is ${config.devices}`,
    );
  return trace;
}

/** Per-device participation and its min/median/max over the fleet. */
export function participationSummary(
  byDevice: ReadonlyMap<string, { selected: number; completed: number }>,
  longestWait?: ReadonlyMap<string, number>,
): Participation {
  const stats = (v: number[]) =>
    v.length === 0
      ? { min: 0, median: 0, max: 0 }
      : { min: Math.min(...v), median: quantile(v, 0.5), max: Math.max(...v) };
  const all = [...byDevice.values()];
  return {
    devices: Object.fromEntries(byDevice),
    selected: stats(all.map((d) => d.selected)),
    completed: stats(all.map((d) => d.completed)),
    ...(longestWait
      ? { longestWait: stats([...byDevice.keys()].map((id) => longestWait.get(id) ?? 0)) }
      : {}),
  };
}

function summarize(r: RoundRecord): RoundSummary {
  return {
    round: r.round,
    participants: r.participants,
    completed: r.completed.length,
    failures: r.failures,
    accuracy: r.accuracy,
    loss: r.loss,
    trainLoss: r.trainLoss,
    uplinkBytes: r.uplinkBytes,
    downlinkBytes: r.downlinkBytes,
    durationMs: Math.round(r.durationMs),
    slowestTrainMs: Math.round(r.slowestTrainMs),
    ...(r.secagg ? { secagg: { ...r.secagg, meanBytesPerDevice: meanBytes(r.secagg.bytesPerDevice) } } : {}),
    ...(r.dp ? { epsilon: r.dp.epsilon, dp: r.dp } : {}),
    ...(r.robust ? { robust: r.robust } : {}),
  };
}

/** The guarantee a finished DP job gives (tight RDP conversion unless configured otherwise). */
export function privacySummary(dp: DifferentialPrivacy): PrivacySummary {
  const s = dp.spent();
  const o = dp.options;
  return {
    epsilon: s.epsilon,
    delta: s.delta,
    order: s.order,
    steps: s.steps,
    placement: o.placement,
    noiseMultiplier: o.noiseMultiplier,
    ...(o.epsilonBudget !== undefined ? { epsilonBudget: o.epsilonBudget } : {}),
    conversion: o.conversion ?? "tight",
    samplingRate: o.clientsPerRound / o.fleetSize,
  };
}

function meanBytes(b: Record<string, { up: number; down: number }>): { up: number; down: number } {
  const v = Object.values(b);
  if (v.length === 0) return { up: 0, down: 0 };
  return {
    up: Math.round(v.reduce((a, x) => a + x.up, 0) / v.length),
    down: Math.round(v.reduce((a, x) => a + x.down, 0) / v.length),
  };
}

/**
 * JSON has no NaN: write null instead. An ε is never null: an infinite one (which the accountant refuses to
 * configure, core/privacy/accountant.ts) would be written as the string "Infinity".
 */
function jsonNumbers(key: string, value: unknown): unknown {
  if (typeof value !== "number" || Number.isFinite(value)) return value;
  if (/^epsilon/i.test(key) && value === Infinity) return "Infinity";
  return null;
}
