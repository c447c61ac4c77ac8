/**
 * The Function's device-facing side of a round: sending each participant its round order, and releasing the
 * devices when a job ends. The orchestration (orchestrator.ts) decides *when*; this file decides *how* the order
 * travels over IoT Hub (docs/iothub-protocol.md), so the wire can change without touching the round logic.
 */
import { parseCompression } from "../../../core/compress";
import { errorCode, errorMessage } from "../../../core/errors";
import { modelLayout } from "../../../core/engine/plan";
import { isDefaultBench } from "../../../core/engine/model-spec";
import { layoutSegments } from "../../../core/round/update-pipeline";
import { EVALUATE_ORDER_VERSION, type EvaluateOrder } from "../../../core/protocol/round-order";
import type { QuantizerLayout, RoundDesired } from "./fleet/fleet";
import { jobDeviceNormBound } from "./jobs/job";
import { paths, type JobDocument, type JobRepository, type ModelMeta, type RoundState } from "./jobs/state";
import { getJson, putJson } from "./store/blob-store";
import { secAggOrder } from "./secure-round";
import type { AggregatorServices } from "./services";

/**
 * Sends every participant of an open round its round order: ONE write per device, the trainer module twin's desired
 * `flotilla` (the trainer starts a round when its twin names a (jobId, round) it has not tried; the desired
 * notification reaches a connected trainer at once, so no `startRound` method call is needed, and a disconnected
 * one reads its twin when it reconnects, which a method call could not reach anyway).
 *
 * Two more writes go only to the devices that need them:
 * - the quantizer twin's job entry (its codec and the job's layout), for a lossy job, to a device whose quantizer
 *   has not been configured for the job yet: a job's codec never changes, so once set it stays set. Who has it is
 *   kept beside the round (`paths.dispatch`, carried from round to round);
 * - the update-queue's desired `openRounds[jobId]` (its queue drops the job's updates of earlier, closed rounds),
 *   to a device that did not deliver in the previous round and so may still hold a stale update. One that
 *   delivered has been (or will be) acknowledged; a stale update that is sent anyway is acknowledged as late.
 */
export async function dispatchRound(
  services: AggregatorServices,
  repo: JobRepository,
  job: JobDocument,
  st: RoundState,
  concurrency: number,
): Promise<void> {
  const d = job.definition;
  const { fleet, store, log } = services;
  const prev = st.round - 1;
  const normBound = jobDeviceNormBound(d);
  const [meta, previous, record] = await Promise.all([
    repo.getModelMeta(d.jobId, prev),
    prev >= 1 ? repo.getRound(d.jobId, prev) : Promise.resolve(undefined),
    prev >= 1 ? getJson<DispatchRecord>(store, paths.dispatch(d.jobId, prev)) : Promise.resolve(undefined),
  ]);
  const { encoded, modelUrl, onnx } = await modelLinks(services, job, prev, meta, st.modelSha256);
  const { compression, quantizerLayout } = uplinkOf(job);
  const quantizers = new Set(record?.value.quantizers ?? []);
  // The profiler benchmarks the job's own model: its spec goes to each participant's profiler once per job (who
  // has it is kept beside the round like the quantizers), so later rounds' eligibility reads
  // samplesPerSecond[modelKey] measured on that model. Not for the default spec of a kind the profiler already
  // benchmarks (`mlp` under the key `mlp`).
  const profiled = new Set(record?.value.profilers ?? []);
  const profiledNow: string[] = [];
  const profileSpec = !isDefaultBench(d.modelKey, d.modelSpec);
  const configuredNow: string[] = [];
  const work = st.participants.map((p) => async () => {
    const desired: RoundDesired = {
      jobId: d.jobId,
      round: st.round,
      modelUrl,
      modelSha256: encoded ? encoded.sha256 : st.modelSha256,
      ...(encoded ? { modelEncoding: "flz" as const } : {}),
      ...(onnx ? { onnx } : {}),
      layoutHash: job.layoutHash,
      modelSpec: d.modelSpec,
      config: p.config,
      deadline: st.deadline,
      ...(d.secureAggregation ? { secagg: secAggOrder(d.secureAggregation) } : {}),
      ...(st.dp?.order ? { dp: st.dp.order } : {}),
      ...(normBound !== undefined ? { normBound } : {}),
    };
    // The quantizer learns the job's codec before its trainer can produce an update (else it would pass it raw).
    const trainer = (async () => {
      if (!compression.lossless && !quantizers.has(p.deviceId)) {
        await retried(() =>
          fleet.configureQuantizer(p.deviceId, d.jobId, compression.text, quantizerLayout),
        ).then(
          () => void configuredNow.push(p.deviceId),
          (e: Error) => {
            log(`round ${d.jobId}/${st.round}: quantizer of ${p.deviceId} not configured: ${e.message}`);
          },
        );
      }
      try {
        await retried(() => fleet.configureRound(p.deviceId, desired));
      } catch (e) {
        log(`round ${d.jobId}/${st.round}: twin of ${p.deviceId} not updated: ${(e as Error).message}`);
      }
    })();
    const profiler =
      profileSpec && !profiled.has(p.deviceId)
        ? retried(() => fleet.configureProfiler(p.deviceId, d.modelKey, d.modelSpec)).then(
            () => void profiledNow.push(p.deviceId),
            (e: Error) =>
              log(`round ${d.jobId}/${st.round}: profiler of ${p.deviceId} not set: ${e.message}`),
          )
        : undefined;
    const queue =
      previous && !previous.received[p.deviceId]
        ? retried(() => fleet.setOpenRound(p.deviceId, d.jobId, st.round)).catch((e: Error) => {
            log(`round ${d.jobId}/${st.round}: openRounds of ${p.deviceId} not set: ${e.message}`);
          })
        : undefined;
    await Promise.all([trainer, queue, profiler]);
  });
  await pool(work, concurrency);
  if (!compression.lossless || profileSpec) {
    const next: DispatchRecord = {
      quantizers: [...new Set([...quantizers, ...configuredNow])].sort(),
      ...(profileSpec ? { profilers: [...new Set([...profiled, ...profiledNow])].sort() } : {}),
    };
    await putJson(store, paths.dispatch(d.jobId, st.round), next);
  }
}

/** Where devices download model `prev` (the compressed copy when the job has one), and its ONNX files. */
async function modelLinks(
  services: AggregatorServices,
  job: JobDocument,
  prev: number,
  meta: ModelMeta | undefined,
  modelSha256: string,
): Promise<{ encoded: ModelMeta["downlink"]; modelUrl: string; onnx: RoundDesired["onnx"] }> {
  const d = job.definition;
  const store = services.store;
  const encoded = meta?.downlink && meta.sha256 === modelSha256 ? meta.downlink : undefined;
  const modelUrl = await store.url(
    encoded ? paths.modelEncoded(d.jobId, prev) : paths.model(d.jobId, prev),
    d.modelUrlMinutes,
  );
  const onnx = meta?.onnx
    ? {
        url: await store.url(paths.modelOnnx(d.jobId, prev, "fp32"), d.modelUrlMinutes),
        sha256: meta.onnx.fp32.sha256,
        int8Url: await store.url(paths.modelOnnx(d.jobId, prev, "int8"), d.modelUrlMinutes),
        int8Sha256: meta.onnx.int8.sha256,
      }
    : undefined;
  return { encoded, modelUrl, onnx };
}

/** The job's uplink codec and, when lossy, the layout its quantizers need (per-tensor scales). */
function uplinkOf(job: JobDocument): {
  compression: ReturnType<typeof parseCompression>;
  quantizerLayout: QuantizerLayout | undefined;
} {
  const d = job.definition;
  const compression = parseCompression(d.compression ?? "none");
  const quantizerLayout = compression.lossless
    ? undefined
    : { layoutHash: job.layoutHash, segments: layoutSegments(modelLayout(d.modelSpec)) };
  return { compression, quantizerLayout };
}

/** One async order (core/round/async-engine.ts): a device and its training config. */
export interface AsyncOrder {
  readonly deviceId: string;
  readonly config: RoundDesired["config"];
}

/**
 * Sends async orders (FedBuff, docs/async.md): each device trains from model `version` as round `version + 1`
 * (the trainer runs it exactly like a synchronous round: round r trains from model r − 1). Besides the trainer
 * twin, every device's update-queue is told the oldest round the job still accepts (`openRounds[jobId]` =
 * oldest accepted version + 1), so its queue drops only the updates the cloud would refuse as too stale; its
 * quantizer is configured once for a lossy uplink. Returns the devices whose order could not be written, and the
 * devices whose quantizer was configured now.
 */
export async function dispatchAsyncOrders(
  services: AggregatorServices,
  repo: JobRepository,
  job: JobDocument,
  o: {
    version: number;
    modelSha256: string;
    deadline: number;
    orders: readonly AsyncOrder[];
    oldestRound: number;
    quantizers: ReadonlySet<string>;
  },
  concurrency: number,
): Promise<{ failed: { deviceId: string; code: string; reason: string }[]; configured: string[] }> {
  const d = job.definition;
  const { fleet, log } = services;
  const meta = await repo.getModelMeta(d.jobId, o.version);
  const { encoded, modelUrl, onnx } = await modelLinks(services, job, o.version, meta, o.modelSha256);
  const { compression, quantizerLayout } = uplinkOf(job);
  const failed: { deviceId: string; code: string; reason: string }[] = [];
  const configured: string[] = [];
  const round = o.version + 1;
  const work = o.orders.map((p) => async () => {
    const desired: RoundDesired = {
      jobId: d.jobId,
      round,
      modelUrl,
      modelSha256: encoded ? encoded.sha256 : o.modelSha256,
      ...(encoded ? { modelEncoding: "flz" as const } : {}),
      ...(onnx ? { onnx } : {}),
      layoutHash: job.layoutHash,
      modelSpec: d.modelSpec,
      config: p.config,
      deadline: o.deadline,
    };
    if (!compression.lossless && !o.quantizers.has(p.deviceId)) {
      await retried(() =>
        fleet.configureQuantizer(p.deviceId, d.jobId, compression.text, quantizerLayout),
      ).then(
        () => void configured.push(p.deviceId),
        (e: Error) =>
          log(`async ${d.jobId}/${round}: quantizer of ${p.deviceId} not configured: ${e.message}`),
      );
    }
    const queue = retried(() => fleet.setOpenRound(p.deviceId, d.jobId, o.oldestRound)).catch((e: Error) =>
      log(`async ${d.jobId}/${round}: openRounds of ${p.deviceId} not set: ${e.message}`),
    );
    try {
      await retried(() => fleet.configureRound(p.deviceId, desired));
    } catch (e) {
      failed.push({ deviceId: p.deviceId, code: errorCode(e), reason: errorMessage(e) });
    }
    await queue;
  });
  await pool(work, concurrency);
  return { failed, configured };
}

/** Attempts per twin write of a round order (a transient failure: a dropped keep-alive connection, a 429). */
export const ORDER_ATTEMPTS = 3;

/**
 * Runs a twin write, again after 100 ms and 400 ms if it fails: with one order per device, one lost write would leave
 * the device out of the round until its deadline.
 */
async function retried(write: () => Promise<void>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await write();
    } catch (e) {
      if (attempt >= ORDER_ATTEMPTS) throw e;
      await new Promise((r) => setTimeout(r, 100 * 4 ** (attempt - 1)));
    }
  }
}

/** What dispatchRound keeps beside a round (`paths.dispatch`) for the next one. */
export interface DispatchRecord {
  /** Devices whose quantizer twin holds this job's entry (configured in this round or an earlier one). */
  readonly quantizers: readonly string[];
  /** Devices whose profiler twin holds this job's model spec (`jobModels[modelKey]`). */
  readonly profilers?: readonly string[];
}

/**
 * At the end of a compressed job, removes it from the quantizer twin of every device that took part, so each
 * quantizer deletes the job's error-feedback residual. Best effort: a device that misses it keeps a small file.
 */
export async function releaseDevices(
  services: AggregatorServices,
  repo: JobRepository,
  job: JobDocument,
  concurrency: number,
): Promise<void> {
  const d = job.definition;
  if (parseCompression(d.compression ?? "none").lossless) return;
  const devices = new Set<string>();
  for (let r = 1; r <= d.rounds; r++) {
    const st = await repo.getRound(d.jobId, r);
    if (!st) break;
    for (const p of st.participants) devices.add(p.deviceId);
  }
  const work = [...devices].map((id) => async () => {
    await services.fleet.configureQuantizer(id, d.jobId, null).catch((e: Error) => {
      services.log(`job ${d.jobId}: quantizer of ${id} not released: ${e.message}`);
    });
  });
  await pool(work, concurrency);
}

/** Who was ordered to evaluate a job's last model (`paths.evaluateOrder`), written before any order goes out. */
export interface EvaluateOrderRecord {
  readonly round: number;
  /** Every device ordered (the ingest accepts their evaluations of `round`, and no one else's). */
  readonly devices: readonly string[];
  /**
   * Those listed connected when ordered (and participants the listing missed); the others evaluate when they
   * reconnect, if ever.
   */
  readonly connected: readonly string[];
  /** ms since epoch */
  readonly orderedAt: number;
}

/**
 * When a synchronous job completes, its last model (round `round`'s) goes to no device: no round order carries it.
 * This orders its evaluation (docs/evaluation.md): an evaluate-only order (core/protocol/round-order.ts
 * EvaluateOrder) in the trainer twin's desired `flotillaEvaluate` of every device of the job's cohort (as
 * listTrainers gives it, connected or not) and every participant of the last round. Who was ordered is written
 * first (`paths.evaluateOrder`), so an evaluation never arrives before the ingest can check it. One twin write per
 * device, retried like a round order; a device whose write fails is logged and left out. Nothing is ordered when the
 * model has no ONNX files (its export failed). Returns the record (undefined: nothing ordered).
 */
export async function orderFinalEvaluation(
  services: AggregatorServices,
  repo: JobRepository,
  job: JobDocument,
  round: number,
  concurrency: number,
): Promise<EvaluateOrderRecord | undefined> {
  const d = job.definition;
  const { fleet, store, log, clock } = services;
  const [meta, last, trainers] = await Promise.all([
    repo.getModelMeta(d.jobId, round),
    repo.getRound(d.jobId, round),
    fleet.listTrainers(d.cohort).catch((e: Error) => {
      log(
        `job ${d.jobId}: fleet not listed for the final evaluation (last round's participants only): ${e.message}`,
      );
      return [];
    }),
  ]);
  if (!meta?.onnx) {
    log(`job ${d.jobId}: round ${round}'s model has no ONNX files: its evaluation is not ordered`);
    return undefined;
  }
  const { onnx } = await modelLinks(services, job, round, meta, meta.sha256);
  // Connected: as listed; a participant the listing does not have (it failed) is taken as connected.
  const listed = new Set(trainers.map((t) => t.deviceId));
  const connected = new Set(trainers.filter((t) => t.connected).map((t) => t.deviceId));
  for (const p of last?.participants ?? []) if (!listed.has(p.deviceId)) connected.add(p.deviceId);
  const devices = [
    ...new Set([...trainers.map((t) => t.deviceId), ...(last?.participants ?? []).map((p) => p.deviceId)]),
  ].sort();
  if (devices.length === 0 || !onnx) return undefined;
  const record: EvaluateOrderRecord = {
    round,
    devices,
    connected: devices.filter((id) => connected.has(id)),
    orderedAt: clock(),
  };
  await putJson(store, paths.evaluateOrder(d.jobId, round), record);
  const order: EvaluateOrder = {
    v: EVALUATE_ORDER_VERSION,
    jobId: d.jobId,
    round,
    onnx,
    modelSpec: d.modelSpec,
  };
  let failed = 0;
  const work = devices.map((id) => async () => {
    await retried(() => fleet.configureEvaluation(id, order)).catch((e: Error) => {
      failed++;
      log(`job ${d.jobId}: evaluation of round ${round}'s model not ordered from ${id}: ${e.message}`);
    });
  });
  await pool(work, concurrency);
  log(
    `job ${d.jobId}: evaluation of round ${round}'s model ordered from ${devices.length - failed} device(s)` +
      ` (${record.connected.length} connected)`,
  );
  return record;
}

export async function pool(work: (() => Promise<void>)[], n: number): Promise<void> {
  let i = 0;
  const runners = Array.from({ length: Math.min(n, work.length) }, async () => {
    while (i < work.length) await work[i++]();
  });
  await Promise.all(runners);
}
