/**
 * The job API (HTTP triggers). Errors are JSON `{code, message}`: 400 for invalid input (E_JOB_*, E_CONFIG_*: e.g.
 * a bad `aggregator`, or one the job's secure aggregation, DP or memory cap rules out), 404 for an unknown job or
 * model, 409 for a conflicting state change.
 *
 *   POST /api/jobs                     create (body: JobDefinition JSON)          → 201 job
 *   POST /api/jobs/{id}/start          created|stopped → running                  → 200 job
 *   POST /api/jobs/{id}/stop           running → stopped                          → 200 job
 *                                      (the open round is paused: its trainers get `abortRound` and an
 *                                      idle twin; updates arriving meanwhile are kept for the restart)
 *   GET  /api/jobs/{id}                status + round records (+ open round)      → 200
 *                                      (each record's `evaluation`: the fleet's evaluation of its model on
 *                                      held-out data, docs/evaluation.md; the newest one also as `evaluation`)
 *                                      (a job stopped by its privacy budget: status `completed`,
 *                                      `stopReason: "budget-exhausted"`, `stopMessage`; DP jobs: `privacy`;
 *                                      a non-finite global model: status `failed`, `stopReason: "diverged"`)
 *   GET  /api/jobs                     list                                       → 200 {jobs: [...]}
 *   GET  /api/jobs/{id}/models/{round} model metadata + a read URL                → 200
 *   GET  /api/metrics                  Prometheus text: the aggregator's metrics      → 200 text/plain
 *                                      (telemetry.ts, docs/azure-monitor.md)
 *   GET  /api/jobs/{id}/rounds/{round}/evaluations
 *                                      every device's evaluation of that round's model → 200
 *                                      (`{round, evaluation, devices: {[id]: DeviceEvaluation}}`)
 */
import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import { isFlotillaError } from "../../../core/errors";
import { modelLayout } from "../../../core/engine/plan";
import { validateJob } from "./jobs/job";
import { resolveJobModels } from "./jobs/model-source";
import { JobRepository, paths, type JobDocument } from "./jobs/state";
import { isConflict } from "./store/blob-store";
import type { AggregatorServices } from "./services";

export type HttpHandler = (request: HttpRequest, context: InvocationContext) => Promise<HttpResponseInit>;

export interface HttpApi {
  createJob: HttpHandler;
  startJob: HttpHandler;
  stopJob: HttpHandler;
  getJob: HttpHandler;
  listJobs: HttpHandler;
  getModel: HttpHandler;
  metrics: HttpHandler;
  getEvaluations: HttpHandler;
}

const MAX_BODY = 64 * 1024;

function error(status: number, code: string, message: string): HttpResponseInit {
  return { status, jsonBody: { code, message } };
}

/**
 * The job's contribution quality per device (core/robust/quality.ts; the dashboard shows it): reputation, flags,
 * the last anomaly and the exclusion holding it out, if any.
 */
function qualityView(q: NonNullable<JobDocument["quality"]>) {
  return {
    policy: q.policy,
    round: q.round,
    devices: Object.fromEntries(
      Object.entries(q.devices).map(([id, d]) => [
        id,
        {
          reputation: d.reputation,
          contributions: d.contributions,
          flagged: d.flagged,
          rejections: d.rejections,
          ...(d.lastAnomaly ? { lastAnomaly: d.lastAnomaly } : {}),
          ...(d.excluded ? { excluded: d.excluded } : {}),
        },
      ]),
    ),
  };
}

function summary(job: JobDocument) {
  const d = job.definition;
  // The newest model the fleet evaluated on its held-out data (docs/evaluation.md); every round's is in `history`.
  const evaluation = [...job.rounds].reverse().find((r) => r.evaluation)?.evaluation;
  return {
    jobId: d.jobId,
    status: job.status,
    strategy: d.strategy,
    currentRound: job.currentRound,
    rounds: d.rounds,
    completedRounds: job.rounds.length,
    createdAt: job.createdAt,
    updatedAt: job.updatedAt,
    ...(job.stopReason ? { stopReason: job.stopReason, stopMessage: job.stopMessage } : {}),
    ...(evaluation ? { evaluation } : {}),
    ...(d.differentialPrivacy && job.dp
      ? {
          privacy: {
            epsilon: job.dp.spent.epsilon,
            delta: job.dp.spent.delta,
            releasedRounds: job.dp.spent.steps,
            ...(d.differentialPrivacy.epsilonBudget !== undefined
              ? { epsilonBudget: d.differentialPrivacy.epsilonBudget }
              : {}),
            placement: d.differentialPrivacy.placement,
            fleetSize: job.dp.fleetSize,
            clip: job.dp.state.clip,
            status: job.dp.state.status?.state ?? "running",
          },
        }
      : {}),
  };
}

export interface HttpApiOptions {
  /** Runs after a job went to `stopped` (the orchestrator pauses its round and tells its devices). */
  readonly onStopped?: (jobId: string) => Promise<void>;
}

export function createHttpApi(services: AggregatorServices, options: HttpApiOptions = {}): HttpApi {
  const repo = new JobRepository(services.store, services.telemetry);

  const guard =
    (fn: HttpHandler): HttpHandler =>
    async (req, ctx) => {
      try {
        return await fn(req, ctx);
      } catch (e) {
        if (isFlotillaError(e)) {
          const status =
            e.code.startsWith("E_JOB_") ||
            e.code.startsWith("E_MODEL_") ||
            e.code.startsWith("E_ASYNC_") ||
            e.code.startsWith("E_CONFIG_")
              ? 400
              : 500;
          return error(status, e.code, e.message);
        }
        ctx.error(
          `http ${req.method} ${req.url}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
        );
        return error(500, "E_INTERNAL", "internal error");
      }
    };

  const jobOr404 = async (req: HttpRequest): Promise<JobDocument | HttpResponseInit> => {
    const id = req.params.id ?? "";
    const job = /^[a-z0-9-]{1,63}$/.test(id) ? await repo.getJob(id) : undefined;
    return job ?? error(404, "E_JOB_NOT_FOUND", `no job '${id}'`);
  };

  const transition = (from: readonly string[], to: "running" | "stopped"): HttpHandler =>
    guard(async (req) => {
      const found = await jobOr404(req);
      if (!("definition" in found)) return found;
      let refused: string | null = null;
      const now = services.clock();
      const next = await repo.updateJob(found.definition.jobId, (cur) => {
        if (cur.status === to) return undefined;
        if (!from.includes(cur.status)) {
          refused = cur.status;
          return undefined;
        }
        return { ...cur, status: to, updatedAt: now };
      });
      if (refused !== null) {
        return error(409, "E_JOB_STATE", `job '${found.definition.jobId}' is ${refused}: cannot go ${to}`);
      }
      services.log(`job ${found.definition.jobId} → ${to}`);
      if (to === "stopped" && options.onStopped) {
        // Best effort: the timer finishes it on its next tick if this fails or the instance dies.
        await options.onStopped(found.definition.jobId).catch((e: unknown) => {
          services.log(`job ${found.definition.jobId}: telling its devices failed: ${String(e)}`);
        });
      }
      return { status: 200, jsonBody: summary(next ?? found) };
    });

  return {
    createJob: guard(async (req) => {
      const text = await req.text();
      if (text.length > MAX_BODY) return error(413, "E_JOB_TOO_LARGE", `body over ${MAX_BODY} bytes`);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        return error(400, "E_JOB_JSON", "body is not valid JSON");
      }
      // `model` / `initModel` blob paths are read now: a bad model is refused before the job exists.
      const models = await resolveJobModels(body, services.store);
      const definition = validateJob(body, models.resolved, {
        ...(services.robustMaxBytes !== undefined ? { robustMaxBytes: services.robustMaxBytes } : {}),
      });
      if (definition.secureAggregation && !services.identityKeys) {
        return error(
          400,
          "E_JOB_SECAGG",
          "secure aggregation needs devices' identity keys: set FLOTILLA_KEYVAULT_URL (or FLOTILLA_KEY_DIR) on the aggregator",
        );
      }
      const layout = modelLayout(definition.modelSpec);
      const now = services.clock();
      const doc: JobDocument = {
        definition,
        status: "created",
        currentRound: 0,
        rounds: [],
        layoutHash: layout.hash,
        modelLength: layout.totalSize,
        createdAt: now,
        updatedAt: now,
      };
      try {
        await repo.createJob(doc);
      } catch (e) {
        if (isConflict(e)) return error(409, "E_JOB_EXISTS", `job '${definition.jobId}' exists`);
        throw e;
      }
      // The job's own initial model (an imported model's weights, a warm start): round 0 is published from it.
      if (models.initWeights) {
        const w = models.initWeights;
        await services.store.put(
          paths.initModel(definition.jobId),
          new Uint8Array(w.buffer, w.byteOffset, w.byteLength),
        );
      }
      return { status: 201, jsonBody: { ...summary(doc), definition } };
    }),
    startJob: transition(["created", "stopped"], "running"),
    stopJob: transition(["created", "running"], "stopped"),
    getJob: guard(async (req) => {
      const found = await jobOr404(req);
      if (!("definition" in found)) return found;
      const openRound =
        found.currentRound > 0 ? await repo.getRound(found.definition.jobId, found.currentRound) : undefined;
      return {
        status: 200,
        jsonBody: {
          ...summary(found),
          definition: found.definition,
          layoutHash: found.layoutHash,
          modelLength: found.modelLength,
          history: found.rounds,
          ...(found.quality ? { quality: qualityView(found.quality) } : {}),
          currentRoundState: openRound
            ? {
                round: openRound.round,
                status: openRound.status,
                participants: openRound.participants.map((p) => p.deviceId),
                received: Object.keys(openRound.received),
                deadline: openRound.deadline,
                ...(openRound.paused ? { paused: openRound.paused } : {}),
                ...(openRound.secagg
                  ? {
                      secagg: {
                        phase: openRound.secagg.phase,
                        stepDeadline: openRound.secagg.stepDeadline,
                        advertised: Object.keys(openRound.secagg.advertised).length,
                        shared: Object.keys(openRound.secagg.shared).length,
                        masked: Object.keys(openRound.secagg.masked).length,
                        unmasked: Object.keys(openRound.secagg.unmasked).length,
                      },
                    }
                  : {}),
              }
            : null,
        },
      };
    }),
    listJobs: guard(async () => {
      const jobs = [];
      for (const id of await repo.listJobIds()) {
        const j = await repo.getJob(id);
        if (j) jobs.push(summary(j));
      }
      return { status: 200, jsonBody: { jobs } };
    }),
    metrics: guard(async () => {
      const telemetry = services.telemetry;
      if (!telemetry) return error(404, "E_METRICS", "this aggregator has no telemetry");
      return {
        status: 200,
        headers: { "content-type": telemetry.contentType },
        body: await telemetry.metricsText(),
      };
    }),
    getModel: guard(async (req) => {
      const found = await jobOr404(req);
      if (!("definition" in found)) return found;
      const round = Number(req.params.round);
      if (!Number.isInteger(round) || round < 0)
        return error(400, "E_JOB_ROUND", "round must be an integer >= 0");
      const meta = await repo.getModelMeta(found.definition.jobId, round);
      if (!meta)
        return error(404, "E_MODEL_NOT_FOUND", `job '${found.definition.jobId}' has no model ${round}`);
      const url = await services.store.url(paths.model(meta.jobId, round), found.definition.modelUrlMinutes);
      return { status: 200, jsonBody: { ...meta, url } };
    }),
    getEvaluations: guard(async (req) => {
      const found = await jobOr404(req);
      if (!("definition" in found)) return found;
      const round = Number(req.params.round);
      if (!Number.isInteger(round) || round < 1)
        return error(400, "E_JOB_ROUND", "round must be an integer >= 1");
      const record = found.rounds.find((r) => r.round === round);
      if (!record)
        return error(404, "E_EVAL_ROUND", `job '${found.definition.jobId}' has no record of round ${round}`);
      const stored = await repo.getEvaluations(found.definition.jobId, round);
      return {
        status: 200,
        jsonBody: { round, evaluation: record.evaluation ?? null, devices: stored?.devices ?? {} },
      };
    }),
  };
}
