/**
 * The Function's device-facing side of a round: sending each participant its round order, and releasing the
 * devices when a job ends. The orchestration (orchestrator.ts) decides *when*; this file decides *how* the order
 * travels over IoT Hub (docs/iothub-protocol.md), so the wire can change without touching the round logic.
 */
import { parseCompression } from "../../../core/compress";
import { modelLayout } from "../../../core/engine/plan";
import { layoutSegments } from "../../../core/round/update-pipeline";
import type { RoundDesired } from "./fleet/fleet";
import { paths, type JobDocument, type JobRepository, type RoundState } from "./jobs/state";
import { secAggOrder } from "./secure-round";
import type { AggregatorServices } from "./services";

/** Configures every participant of an open round (quantizer, trainer twin, startRound, update-queue openRounds). */
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
  const meta = await repo.getModelMeta(d.jobId, prev);
  const encoded = meta?.downlink && meta.sha256 === st.modelSha256 ? meta.downlink : undefined;
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
  const compression = parseCompression(d.compression ?? "none");
  // The quantizer's codec takes the layout's tensor sizes (per-tensor scales), as the simulator's devices do.
  const quantizerLayout = compression.lossless
    ? undefined
    : { layoutHash: job.layoutHash, segments: layoutSegments(modelLayout(d.modelSpec)) };
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
    };
    // The trainer's twin and the update-queue's twin are independent: update them concurrently. The
    // quantizer learns the job's codec before its trainer can produce an update (else it would pass it raw).
    const trainer = (async () => {
      if (!compression.lossless) {
        await fleet
          .configureQuantizer(p.deviceId, d.jobId, compression.text, quantizerLayout)
          .catch((e: Error) => {
            log(`round ${d.jobId}/${st.round}: quantizer of ${p.deviceId} not configured: ${e.message}`);
          });
      }
      try {
        await fleet.configureRound(p.deviceId, desired);
      } catch (e) {
        log(`round ${d.jobId}/${st.round}: twin of ${p.deviceId} not updated: ${(e as Error).message}`);
      }
      await fleet.startRound(p.deviceId, desired).catch(() => false);
    })();
    const queue = fleet.setOpenRound(p.deviceId, d.jobId, st.round).catch((e: Error) => {
      log(`round ${d.jobId}/${st.round}: openRounds of ${p.deviceId} not set: ${e.message}`);
    });
    await Promise.all([trainer, queue]);
  });
  await pool(work, concurrency);
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

export async function pool(work: (() => Promise<void>)[], n: number): Promise<void> {
  let i = 0;
  const runners = Array.from({ length: Math.min(n, work.length) }, async () => {
    while (i < work.length) await work[i++]();
  });
  await Promise.all(runners);
}
