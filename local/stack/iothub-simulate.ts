/**
 * `flotilla simulate --transport iothub`: the same job as the in-memory simulation, run over the local stack —
 * devices are IoT Edge module sets on the embedded IoT Hub, the round is driven by the aggregation Function's
 * handlers (created and started through its HTTP API), updates travel as chunked device-to-cloud messages through
 * each device's durable update-queue, and models are blobs in Azurite. The runner only watches: it reads each
 * published global model from blob storage and evaluates it on the held-out test set.
 *
 * With `secureAggregation` the job runs SecAgg+ over the hub (docs/iothub-protocol.md, "Secure aggregation"): the
 * stack gives every device an identity key in the local Key Vault stand-in, and each round's summary carries the
 * protocol's record (dropouts per step, devices in the sum, unmasking time, bytes per device). The simulation-only
 * `dropout` does not apply here (devices drop out for real: stop one).
 *
 * With `dpNoise` the job gets a `differentialPrivacy` block (fleetSize = the simulated fleet): each round's summary
 * carries the round's DP record (clip, noise, released, ε so far), and a job stopped by its privacy budget ends
 * with `status: budget-exhausted` and the reason, as in the in-memory simulation.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { initBackend } from "../../core/engine/backend";
import { createModel } from "../../core/engine/models";
import { FlotillaError } from "../../core/errors";
import { loggerFromEnv } from "../../core/log";
import { getJson, type BlobStore } from "../../cloud/aggregator/src/store/blob-store";
import {
  paths,
  type JobDocument,
  type ModelMeta,
  type RoundState,
  type SecAggRecord,
} from "../../cloud/aggregator/src/jobs/state";
import { simThreads, type SimConfig } from "../sim/config";
import { deviceName, fleetHeldOut, loadFleetData } from "../sim/data";
import { checkWarmStart, loadModelSource } from "../../core/export/model-dir";
import { parseOptimizer } from "../../core/engine/optimizer-config";
import {
  finishResult,
  type RoundSummary,
  type SimulationReporter,
  type SimulationResult,
} from "../sim/simulate";
import { startLocalStack, type LocalStack } from "./stack";
import { DifferentialPrivacy } from "../../core/privacy/dp";
import { dpOptionsOf } from "../../cloud/aggregator/src/jobs/job";
import { anomalyLine, exclusionLine } from "../../core/robust/quality";
import type { EvaluateOrderRecord } from "../../cloud/aggregator/src/dispatch";
import { privacySummary, simModelSource, type JobStatus } from "../sim/simulate";
import { loadTrace } from "../cli/fleet-trace";
import { startDashboard, type Dashboard } from "../dashboard/server";
import { functionApi, twinSource } from "../dashboard/sources";

async function api(base: string, method: string, route: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`${base}/api/${route}`, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await res.json().catch(() => ({}))) as { code?: string; message?: string };
  if (!res.ok)
    throw new FlotillaError(json.code ?? "E_HTTP", json.message ?? `HTTP ${res.status} for ${route}`);
  return json;
}

/** Something run beside the stack for the simulation's length (e.g. `--prometheus`); closed before the stack. */
export interface StackAttachment {
  close(): Promise<void>;
}

/** What the IoT Hub run does besides the job. */
export interface IotHubRunOptions {
  /**
   * Serves the live fleet dashboard (local/dashboard, docs/dashboard.md) over the stack's Function and hub while the
   * job runs. When the job ends it polls once more and freezes on that final state (the stack then closes); the
   * caller owns the dashboard (`onStart`) and closes it.
   */
  readonly dashboard?: {
    readonly port: number;
    readonly host?: string;
    /** Source error lines (the page shows them too). */
    readonly log?: (line: string) => void;
    readonly onStart: (dashboard: Dashboard) => void;
  };
  /**
   * Started in order once the stack runs, before the job is created (local/monitoring/prometheus.ts
   * `attachPrometheus`); each may return nothing (it chose not to run). Closed in reverse order before the stack.
   */
  readonly attach?: ReadonlyArray<(stack: LocalStack) => Promise<StackAttachment | undefined>>;
}

export async function simulateOverIotHub(
  config: SimConfig,
  reporter: SimulationReporter = {},
  run: IotHubRunOptions = {},
): Promise<SimulationResult> {
  const t0 = performance.now();
  // --model PATH / --init-model: the job starts from those weights (uploaded next to the job, its initModel).
  const source = simModelSource(config);
  const warm = config.initModel !== undefined ? loadModelSource(config.initModel) : undefined;
  // The main thread evaluates; the devices train in the stack's pool (its threads: simThreads).
  await initBackend({ threads: 1 });
  const data = loadFleetData({ ...config, modelSpec: source?.spec });
  const start = warm ? checkWarmStart(data.spec, warm, config.initModel!) : source?.weights;
  const evalModel = await createModel(data.spec, config.seed);
  reporter.onStart?.({ devices: data.devices.length, params: evalModel.numParams, testSamples: data.test.n });
  const deviceIds = data.devices.map((_, i) => deviceName(i, config.devices));
  if (config.secureAggregation && config.dropout > 0) {
    throw new FlotillaError(
      "E_CONFIG_VALUE",
      "--dropout is simulated by the memory transport only; over the IoT Hub stack devices drop out for real",
    );
  }
  // A rerun into the same --out finds the previous run's hub state (device twins and queues that remember its job).
  const freshState = !fs.existsSync(path.join(config.out, ".stack"));
  const stackLog = process.env.FLOTILLA_STACK_LOG
    ? loggerFromEnv("stack", process.env, { format: "text", out: process.stderr })
    : undefined;
  // --fleet-trace: each device's link and training speed follow its trace (local/stack/trace-driver.ts).
  const fleetTrace = config.fleetTrace
    ? loadTrace(config.fleetTrace, { devices: String(config.devices), seed: String(config.seed) })
    : undefined;
  const stack = await startLocalStack({
    ...(fleetTrace ? { fleetTrace, timeScale: config.timeScale ?? 600 } : {}),
    ...(config.secureAggregation ? { identityKeys: "keyvault" as const } : {}),
    data: data.devices,
    // Fleet-wide evaluation (docs/evaluation.md): each trainer evaluates every model it receives on its held-out
    // data with onnxruntime and sends the result up the update pipeline; the Function folds them into the records.
    ...(config.fleetEval ? { evalData: fleetHeldOut(data, config.seed) } : {}),
    deviceIds,
    workers: Math.max(1, config.workers),
    threads: simThreads({ threads: config.threads, workers: Math.max(1, config.workers) }),
    stateDir: path.join(config.out, ".stack"),
    timerIntervalMs: 250,
    // FLOTILLA_STACK_LOG=1 prints the hub's, the Function's and the devices' modules' log records on stderr (text,
    // or FLOTILLA_LOG_FORMAT=json; FLOTILLA_LOG_LEVEL applies), for debugging.
    ...(stackLog ? { log: (l: string) => stackLog.info(l), moduleLogger: stackLog.child("device") } : {}),
  });
  const summaries: RoundSummary[] = [];
  let finalWeights: Float32Array | undefined;
  let finalDoc: JobDocument | undefined;
  let targetReached = false;
  // The memory transport's job id, so both transports derive the same codec seeds (core/round/update-pipeline.ts).
  // Only in a fresh state directory: a rerun into the same --out gets a new id, or its devices, whose twins and
  // queues remember the previous run's rounds of that job, would refuse them as already tried (409) and replay its
  // old updates.
  const jobId = freshState ? `sim-${config.seed}` : `sim-${config.seed}-${Date.now().toString(36)}`;
  const attached: StackAttachment[] = [];
  let dashboard: Dashboard | undefined;
  try {
    for (const attach of run.attach ?? []) {
      const a = await attach(stack);
      if (a) attached.push(a);
    }
    if (run.dashboard) {
      // The local hub has no query quota: its twins are read every second.
      dashboard = await startDashboard({
        functionApi: functionApi({ url: stack.host.url }),
        twins: twinSource({
          connectionString: stack.hub.serviceConnectionString,
          caCertPem: stack.hub.caCertPem,
        }),
        port: run.dashboard.port,
        ...(run.dashboard.host ? { host: run.dashboard.host } : {}),
        functionIntervalMs: 500,
        hubIntervalMs: 1000,
        ...(run.dashboard.log ? { log: run.dashboard.log } : {}),
      });
      run.dashboard.onStart(dashboard);
    }
    const store = stack.aggregator.services.store;
    if (start) {
      // A saved model directory's form (spec.json + weights.bin) in the container: the job's initModel.
      await store.put(`uploads/${jobId}/spec.json`, new TextEncoder().encode(JSON.stringify(data.spec)));
      await store.put(
        `uploads/${jobId}/weights.bin`,
        new Uint8Array(start.buffer, start.byteOffset, start.byteLength),
      );
    }
    await api(stack.host.url, "POST", "jobs", {
      jobId,
      modelSpec: data.spec,
      ...(start ? { initModel: `uploads/${jobId}/spec.json` } : {}),
      strategy: config.strategy,
      strategyOptions: {
        clientsPerRound: config.clientsPerRound,
        fit: {
          epochs: config.localEpochs,
          batchSize: config.batchSize,
          lr: config.lr,
          ...(config.mu !== undefined ? { mu: config.mu } : {}),
          ...(config.optimizer !== undefined ? { optimizer: parseOptimizer(config.optimizer) } : {}),
        },
        ...(config.serverLr !== undefined ? { serverLr: config.serverLr } : {}),
        seed: config.seed,
      },
      rounds: config.rounds,
      roundDeadlineSeconds: Math.max(1, Math.round(config.roundTimeoutMs / 1000)),
      minCompletedFraction: 1,
      seed: config.seed,
      compression: config.compression,
      downlinkCompression: config.downlinkCompression,
      // The same --aggregator spec as the memory transport's, as the job's `aggregator` member.
      ...(config.aggregator !== undefined ? { aggregator: config.aggregator } : {}),
      // Contribution quality (docs/robustness.md): the job spec takes the simulator's policy text, or false.
      ...(config.quality === false
        ? { quality: false }
        : config.excludeAfter !== undefined
          ? { quality: config.excludeAfter }
          : {}),
      ...(config.secureAggregation
        ? {
            secureAggregation: {
              ...(config.secaggNeighbours !== undefined ? { neighbours: config.secaggNeighbours } : {}),
              ...(config.secaggThreshold !== undefined ? { threshold: config.secaggThreshold } : {}),
              ...(config.secaggClip !== undefined ? { clipRange: config.secaggClip } : {}),
              stepSeconds: Math.min(300, Math.max(5, Math.round(config.secaggStepTimeoutMs / 1000))),
            },
          }
        : {}),
      ...(config.dpNoise !== undefined
        ? {
            differentialPrivacy: {
              noiseMultiplier: config.dpNoise,
              clip: config.dpClip ?? 1,
              delta: config.dpDelta,
              placement: config.dpPlacement,
              fleetSize: config.devices,
              ...(config.dpEpsilonBudget !== undefined ? { epsilonBudget: config.dpEpsilonBudget } : {}),
              ...(config.dpTargetQuantile !== undefined ? { targetQuantile: config.dpTargetQuantile } : {}),
              ...(config.dpClipCountStddev !== undefined
                ? { clipCountStddev: config.dpClipCountStddev }
                : {}),
              ...(config.dpMinSurvivors !== undefined && config.dpPlacement === "distributed"
                ? { minSurvivors: config.dpMinSurvivors }
                : {}),
            },
          }
        : {}),
    });
    await api(stack.host.url, "POST", `jobs/${jobId}/start`);
    let seen = 0;
    let announced = 0;
    for (;;) {
      const doc = (await getJson<JobDocument>(store, paths.job(jobId)))?.value;
      if (!doc) throw new FlotillaError("E_JOB_MISSING", `job ${jobId} vanished`);
      if (doc.currentRound > announced && doc.currentRound > seen) {
        announced = doc.currentRound;
        const st = (await getJson<RoundState>(store, paths.round(jobId, doc.currentRound)))?.value;
        const ids = st ? st.participants.map((p) => p.deviceId) : [];
        const total = ids.reduce((a, id) => a + (data.devices[deviceIds.indexOf(id)]?.n ?? 0), 0);
        reporter.onRoundStart?.(doc.currentRound, ids, total * config.localEpochs);
      }
      while (seen < doc.rounds.length) {
        const rec = doc.rounds[seen++];
        const st = (await getJson<RoundState>(store, paths.round(jobId, rec.round)))?.value;
        const model = await store.get(paths.model(jobId, rec.round));
        const prevMeta = (await getJson<ModelMeta>(store, paths.modelMeta(jobId, rec.round - 1)))?.value;
        let metrics = { loss: NaN, accuracy: NaN };
        if (model) {
          const b = model.bytes;
          const w = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
          evalModel.setWeights(w);
          metrics = evalModel.evaluate(data.test, 500);
          finalWeights = w;
        }
        const participants = st ? st.participants.map((p) => p.deviceId) : [];
        const summary: RoundSummary = {
          round: rec.round,
          participants,
          completed: rec.completed,
          failures: [...rec.failures],
          accuracy: metrics.accuracy,
          loss: metrics.loss,
          trainLoss: rec.trainLoss ?? NaN,
          uplinkBytes: rec.bytesReceived,
          // Each participant downloads the round's model blob once (compressed when the job says so).
          downlinkBytes: participants.length * (prevMeta?.downlink?.bytes ?? evalModel.numParams * 4),
          durationMs: Math.round(rec.durationMs),
          // The fleet shares this machine's training workers: the round's training critical path.
          slowestTrainMs: Math.round(stack.pool.trainingSpanMs(jobId, rec.round) ?? 0),
          ...(rec.secagg ? { secagg: secureSummary(rec.secagg) } : {}),
          ...(rec.dp ? { epsilon: rec.dp.epsilon, dp: rec.dp } : {}),
          ...(rec.robust ? { robust: rec.robust } : {}),
          ...(rec.quality
            ? {
                quality: {
                  ...rec.quality,
                  reputation: Object.fromEntries(
                    participants.flatMap((id) => {
                      const d = doc.quality?.devices[id];
                      return d ? [[id, Number(d.reputation.toFixed(4))]] : [];
                    }),
                  ),
                },
              }
            : {}),
        };
        summaries.push(summary);
        reporter.onRoundEnd?.(summary);
        for (const a of rec.quality?.anomalies ?? []) reporter.onQualityLine?.(anomalyLine(a));
        for (const e of rec.quality?.newlyExcluded ?? []) reporter.onQualityLine?.(exclusionLine(e));
      }
      if (doc.status === "completed" || doc.status === "failed" || doc.status === "stopped") {
        if (doc.status === "failed") throw new FlotillaError("E_JOB_FAILED", doc.error ?? "the job failed");
        finalDoc = config.fleetEval ? await awaitEvaluations(store, jobId, doc) : doc;
        break;
      }
      if (config.targetAccuracy > 0 && summaries.some((s) => s.accuracy >= config.targetAccuracy)) {
        await api(stack.host.url, "POST", `jobs/${jobId}/stop`);
        finalDoc = doc;
        targetReached = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await dashboard?.freeze(`job ${jobId} ended; the local stack has stopped`);
    for (const a of attached.reverse()) await a.close().catch(() => undefined);
    await stack.close();
  }
  // Round r's model is evaluated by the devices that start round r + 1 with it, after the round's record, and the
  // last round's by the devices the Function ordered to evaluate it when the job completed: the evaluations are
  // read from the final job document.
  for (const s of summaries) {
    const e = finalDoc?.rounds.find((r) => r.round === s.round)?.evaluation;
    if (e) s.evaluation = e;
  }
  const status: JobStatus =
    finalDoc?.stopReason === "budget-exhausted"
      ? { state: "budget-exhausted", ...(finalDoc.stopMessage ? { reason: finalDoc.stopMessage } : {}) }
      : targetReached
        ? { state: "target-reached", reason: `test accuracy reached ${config.targetAccuracy}` }
        : { state: "completed" };
  // The job's privacy guarantee, from its persisted ledger (the same accounting as the Function's).
  const dpDef = finalDoc?.definition.differentialPrivacy;
  let privacy: ReturnType<typeof privacySummary> | undefined;
  if (finalDoc && dpDef && finalDoc.dp) {
    const dp = new DifferentialPrivacy(
      dpOptionsOf(dpDef, finalDoc.dp.fleetSize, finalDoc.definition.strategyOptions.clientsPerRound),
    );
    dp.importState(finalDoc.dp.state);
    privacy = privacySummary(dp);
  }
  const result = finishResult(
    { ...config, transport: "iothub" },
    data.spec,
    evalModel,
    summaries,
    {},
    t0,
    finalWeights,
    {
      status,
      ...(privacy ? { privacy } : {}),
      ...(finalDoc?.quality
        ? { quality: { policy: finalDoc.quality.policy, devices: { ...finalDoc.quality.devices } } }
        : {}),
    },
  );
  evalModel.dispose();
  return result;
}

/**
 * The job document once the devices' evaluations have arrived: round r's model is evaluated by the devices that
 * completed round r + 1 (each sends its evaluation after its update), and the last round's by the devices ordered
 * to evaluate it that were connected then (the Function's `evaluate-order.json`, written when the job completed),
 * so the job is done when every such round has that many; at most EVALUATION_WAIT_MS after the job ended (an
 * evaluation lost to a failed device is not waited for longer).
 */
async function awaitEvaluations(store: BlobStore, jobId: string, doc: JobDocument): Promise<JobDocument> {
  const until = Date.now() + EVALUATION_WAIT_MS;
  const last = doc.rounds.at(-1);
  for (let cur = doc; ;) {
    const ordered = last
      ? (await getJson<EvaluateOrderRecord>(store, paths.evaluateOrder(jobId, last.round)))?.value
      : undefined;
    const missing = cur.rounds.some((r) => {
      const next = cur.rounds.find((x) => x.round === r.round + 1);
      const expected = next ? next.completed : r.round === last?.round ? (ordered?.connected.length ?? 1) : 0;
      return expected > 0 && (r.evaluation?.devices ?? 0) < expected;
    });
    if (!missing || Date.now() > until) return cur;
    await new Promise((r) => setTimeout(r, 200));
    cur = (await getJson<JobDocument>(store, paths.job(jobId)))?.value ?? cur;
  }
}
const EVALUATION_WAIT_MS = 30_000;

/** A secure round's record in the simulation's summary format (core/round/secure-round.ts SecureRoundRecord). */
function secureSummary(s: SecAggRecord): NonNullable<RoundSummary["secagg"]> {
  const bytes = Object.values(s.bytes);
  const mean = (k: "up" | "down") =>
    bytes.length > 0 ? Math.round(bytes.reduce((a, b) => a + b[k], 0) / bytes.length) : 0;
  return {
    params: s.params ?? { neighbours: 0, threshold: 0, clipRange: 0, modulusBits: 32 },
    dropouts: {
      advertise: [...s.dropouts.advertise],
      share: [...s.dropouts.share],
      mask: [...s.dropouts.mask],
      unmask: [...s.dropouts.unmask],
    },
    included: [...s.included],
    unmaskMs: s.unmaskMs ?? 0,
    bytesPerDevice: Object.fromEntries(Object.entries(s.bytes).map(([k, v]) => [k, { ...v }])),
    ...(s.error ? { aborted: { code: s.error.code, reason: s.error.message } } : {}),
    meanBytesPerDevice: { up: mean("up"), down: mean("down") },
  };
}
