/**
 * The aggregation Function's telemetry, in one place (docs/azure-monitor.md):
 *
 * (a) Prometheus: `GET /api/metrics` serves prom-client text with the aggregator's metrics (names fixed for every
 *     consumer in AGGREGATOR_METRICS). The registry is filled from the persisted job documents at each scrape, not
 *     from in-process counters: a Function app runs on any number of instances, restarts at will, and a scrape
 *     reaches one of them; every instance reading the same job.json gives the same answer, and a counter (rounds
 *     closed, device failures) only grows because round records are only ever appended.
 * (b) Application Insights, when APPLICATIONINSIGHTS_CONNECTION_STRING is set (off otherwise): the same metric names
 *     as OpenTelemetry instruments exported by @azure/monitor-opentelemetry-exporter's AzureMonitorMetricExporter
 *     (table `customMetrics`, labels in `customDimensions`), and each round and job event as an OpenTelemetry log
 *     record with `microsoft.custom_event.name` through AzureMonitorLogExporter (table `customEvents`).
 * (c) Structured logs: the same events as core/log.ts records (`event` field = the stable event name), which the
 *     Functions host forwards to Application Insights `traces` as well.
 *
 * Events come from JobRepository's observer (jobs/state.ts): every write of a job document passes there, so a
 * round record appended by any path (a synchronous round, an async flush, a divergence) and any status change
 * (the HTTP API, completion, budget exhaustion, failure) is seen once, by the instance that wrote it.
 *
 * Fleet-wide evaluation (core/round/evaluation.ts, a round record's optional `evaluation`) feeds the eval_*
 * metrics when present.
 */
import * as prom from "prom-client";
import { SeverityNumber } from "@opentelemetry/api-logs";
import type { Attributes, Counter, Gauge, Histogram, Meter, ObservableGauge } from "@opentelemetry/api";
import { LoggerProvider, BatchLogRecordProcessor } from "@opentelemetry/sdk-logs";
import { MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import {
  AzureMonitorLogExporter,
  AzureMonitorMetricExporter,
  type AzureMonitorExporterOptions,
} from "@azure/monitor-opentelemetry-exporter";
import type { FleetEvaluation } from "../../../core/round/evaluation";
import { FlotillaError } from "../../../core/errors";
import type { Logger } from "../../../core/log";
import {
  JobRepository,
  type JobDocument,
  type JobObserver,
  type JobStatus,
  type RoundRecord,
} from "./jobs/state";
import type { BlobStore } from "./store/blob-store";

/** The aggregator's metric names (COMMON.md of issue 15; B's Prometheus rules, the workbook and alerts use them). */
export const AGGREGATOR_METRICS = {
  jobs: "flotilla_aggregator_jobs",
  roundsTotal: "flotilla_aggregator_rounds_total",
  round: "flotilla_aggregator_round",
  roundDurationSeconds: "flotilla_aggregator_round_duration_seconds",
  roundParticipants: "flotilla_aggregator_round_participants",
  roundCompleted: "flotilla_aggregator_round_completed",
  roundFailuresTotal: "flotilla_aggregator_round_failures_total",
  roundBytesReceived: "flotilla_aggregator_round_bytes_received",
  trainLoss: "flotilla_aggregator_train_loss",
  evalAccuracy: "flotilla_aggregator_eval_accuracy",
  evalLoss: "flotilla_aggregator_eval_loss",
  evalWorstDecileAccuracy: "flotilla_aggregator_eval_worst_decile_accuracy",
  epsilon: "flotilla_aggregator_epsilon",
} as const;

/** The stable names of the structured events (log `event` field; Application Insights customEvents `name`). */
export const TELEMETRY_EVENTS = {
  roundClosed: "flotilla.round.closed",
  jobStatus: "flotilla.job.status",
  /** A round record got its fleet-wide evaluation after it was closed (devices evaluate the published model). */
  roundEvaluated: "flotilla.round.evaluated",
} as const;

export const JOB_STATUSES: readonly JobStatus[] = ["created", "running", "stopped", "completed", "failed"];

/** Round durations, seconds: rounds take from seconds (a local fleet) to hours (a deadline-bound fleet). */
export const ROUND_DURATION_BUCKETS = [5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600];

/** The `evaluation` a round record may carry (fleet-wide evaluation, E's part of issue 15). */
function evaluationOf(r: RoundRecord): FleetEvaluation | undefined {
  const e = (r as RoundRecord & { evaluation?: unknown }).evaluation;
  return e && typeof e === "object" ? (e as FleetEvaluation) : undefined;
}

const finite = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/** The fields of a round-closed event (log fields and customEvents customDimensions). */
export function roundEventFields(
  job: JobDocument,
  r: RoundRecord,
): Record<string, string | number | boolean> {
  const ev = evaluationOf(r);
  const failuresByCode: Record<string, number> = {};
  for (const f of r.failures) failuresByCode[f.code] = (failuresByCode[f.code] ?? 0) + 1;
  const epsilon = r.dp?.epsilon ?? job.dp?.spent.epsilon;
  return {
    event: TELEMETRY_EVENTS.roundClosed,
    jobId: job.definition.jobId,
    round: r.round,
    status: r.status,
    participants: r.participants,
    completed: r.completed,
    failures: r.failures.length,
    ...(r.failures.length > 0 ? { failureCodes: JSON.stringify(failuresByCode) } : {}),
    durationMs: r.durationMs,
    bytesReceived: r.bytesReceived,
    belowQuorum: r.belowQuorum,
    ...(finite(r.trainLoss) ? { trainLoss: r.trainLoss } : {}),
    ...(finite(r.trainAccuracy) ? { trainAccuracy: r.trainAccuracy } : {}),
    ...(ev && finite(ev.accuracy) ? { evalAccuracy: ev.accuracy } : {}),
    ...(ev && finite(ev.loss) ? { evalLoss: ev.loss } : {}),
    ...(ev && finite(ev.worstDecile?.value) ? { evalWorstDecileAccuracy: ev.worstDecile.value } : {}),
    ...(finite(epsilon) ? { epsilon } : {}),
    ...(r.code ? { code: r.code } : {}),
    // Selection (docs/selection.md): how many devices the selector chose from, and the devices their policy left
    // out per reason (core/fleet/policy.ts), e.g. {"disabled":5,"window":5}.
    ...(finite(r.candidates) ? { candidates: r.candidates } : {}),
    ...(r.policyExcluded
      ? {
          policyExcluded: JSON.stringify(r.policyExcluded),
          policyExcludedTotal: Object.values(r.policyExcluded).reduce((a, n) => a + (n ?? 0), 0),
        }
      : {}),
    // Robust aggregation (docs/robustness.md): the rule, its bound and who it left out; per-device norms and
    // cosines stay in the round record (GET /api/jobs/{id}).
    ...(r.robust
      ? {
          aggregator: r.robust.aggregator,
          robustKept: r.robust.kept.length,
          robustDropped: r.robust.dropped.length,
          robustClipped: r.robust.devices.filter((d) => d.clipped).length,
          ...(finite(r.robust.bound) ? { robustBound: r.robust.bound } : {}),
          ...(finite(r.robust.aggregateNorm) ? { robustAggregateNorm: r.robust.aggregateNorm } : {}),
        }
      : {}),
  };
}

export interface AggregatorTelemetry extends JobObserver {
  /** The Prometheus registry /api/metrics serves (filled from the job documents by `metricsText`). */
  readonly registry: prom.Registry;
  /** Prometheus text exposition of the aggregator's metrics, read from the store now. */
  metricsText(): Promise<string>;
  readonly contentType: string;
  /** Whether Application Insights export is on. */
  readonly azureMonitor: boolean;
  /** Exports what is pending to Application Insights now (no-op when off). */
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

export interface TelemetryOptions {
  readonly store: BlobStore;
  /** Structured events go here (core/log.ts). */
  readonly logger?: Logger;
  /** Application Insights connection string; absent or empty = no Azure Monitor export. */
  readonly connectionString?: string;
  /** How often metrics are exported to Application Insights (default 60 s, the exporter's usual interval). */
  readonly exportIntervalMs?: number;
  /** Passed to the Azure Monitor exporters (e.g. `disableOfflineStorage` in tests). */
  readonly exporterOptions?: Omit<AzureMonitorExporterOptions, "connectionString">;
}

/** A telemetry from app settings: APPLICATIONINSIGHTS_CONNECTION_STRING (Functions sets it when App Insights is on). */
export function telemetryFromEnv(
  env: Readonly<Record<string, string | undefined>>,
  opts: Omit<TelemetryOptions, "connectionString">,
): AggregatorTelemetry {
  return createTelemetry({ ...opts, connectionString: env.APPLICATIONINSIGHTS_CONNECTION_STRING?.trim() });
}

export function createTelemetry(opts: TelemetryOptions): AggregatorTelemetry {
  const repo = new JobRepository(opts.store);
  const registry = new prom.Registry();
  const M = AGGREGATOR_METRICS;
  const jobs = new prom.Gauge({
    name: M.jobs,
    help: "Jobs by status (created, running, stopped, completed, failed)",
    labelNames: ["status"],
    registers: [registry],
  });
  const roundsTotal = new prom.Counter({
    name: M.roundsTotal,
    help: "Rounds closed, by status (aggregated or failed)",
    labelNames: ["job", "status"],
    registers: [registry],
  });
  const gauge = (name: string, help: string) =>
    new prom.Gauge({ name, help, labelNames: ["job"], registers: [registry] });
  const round = gauge(M.round, "Last closed round number");
  const duration = new prom.Histogram({
    name: M.roundDurationSeconds,
    help: "Round duration from opening to the published model, seconds",
    labelNames: ["job"],
    buckets: ROUND_DURATION_BUCKETS,
    registers: [registry],
  });
  const participants = gauge(M.roundParticipants, "Devices ordered in the last closed round");
  const completed = gauge(M.roundCompleted, "Updates aggregated in the last closed round");
  const failuresTotal = new prom.Counter({
    name: M.roundFailuresTotal,
    help: "Device failures in closed rounds, by error code",
    labelNames: ["job", "code"],
    registers: [registry],
  });
  const bytes = gauge(M.roundBytesReceived, "Bytes received from devices in the last closed round");
  const trainLoss = gauge(M.trainLoss, "The last closed round's sample-weighted training loss");
  const evalAccuracy = gauge(
    M.evalAccuracy,
    "Fleet-wide evaluation of the latest evaluated model: weighted accuracy",
  );
  const evalLoss = gauge(M.evalLoss, "Fleet-wide evaluation of the latest evaluated model: weighted loss");
  const evalWorst = gauge(
    M.evalWorstDecileAccuracy,
    "Fleet-wide evaluation of the latest evaluated model: the worst decile of devices' accuracy",
  );
  const epsilon = gauge(M.epsilon, "Differential privacy: epsilon spent so far");

  const readJobs = async (): Promise<JobDocument[]> => {
    const out: JobDocument[] = [];
    for (const id of await repo.listJobIds()) {
      const j = await repo.getJob(id);
      if (j) out.push(j);
    }
    return out;
  };

  let scraping: Promise<string> = Promise.resolve("");
  const fill = async (): Promise<string> => {
    const docs = await readJobs();
    registry.resetMetrics();
    for (const s of JOB_STATUSES) jobs.set({ status: s }, docs.filter((d) => d.status === s).length);
    for (const d of docs) {
      const job = d.definition.jobId;
      for (const s of ["aggregated", "failed"] as const)
        roundsTotal.inc({ job, status: s }, d.rounds.filter((r) => r.status === s).length);
      for (const r of d.rounds) {
        duration.observe({ job }, Math.max(0, r.durationMs) / 1000);
        for (const f of r.failures) failuresTotal.inc({ job, code: f.code });
      }
      const last = d.rounds[d.rounds.length - 1];
      if (last) {
        round.set({ job }, last.round);
        participants.set({ job }, last.participants);
        completed.set({ job }, last.completed);
        bytes.set({ job }, last.bytesReceived);
        if (finite(last.trainLoss)) trainLoss.set({ job }, last.trainLoss);
      }
      const evaluated = [...d.rounds]
        .reverse()
        .map(evaluationOf)
        .find((e) => e !== undefined);
      if (evaluated && finite(evaluated.accuracy)) evalAccuracy.set({ job }, evaluated.accuracy);
      if (evaluated && finite(evaluated.loss)) evalLoss.set({ job }, evaluated.loss);
      if (evaluated && finite(evaluated.worstDecile?.value))
        evalWorst.set({ job }, evaluated.worstDecile.value);
      if (d.dp && finite(d.dp.spent.epsilon)) epsilon.set({ job }, d.dp.spent.epsilon);
    }
    return registry.metrics();
  };

  const ai = opts.connectionString ? azureMonitor(opts, readJobs) : undefined;
  const logger = opts.logger;

  return {
    registry,
    contentType: registry.contentType,
    azureMonitor: ai !== undefined,
    metricsText() {
      // One scrape at a time: each resets and refills the one registry.
      const next = scraping.catch(() => "").then(fill);
      scraping = next;
      return next.catch((e: unknown) => {
        throw new FlotillaError(
          "E_METRICS",
          `aggregator metrics: ${e instanceof Error ? e.message : String(e)}`,
          {
            cause: e,
          },
        );
      });
    },
    jobWritten(prev, next) {
      try {
        const jobId = next.definition.jobId;
        if (prev?.status !== next.status) {
          const fields = {
            event: TELEMETRY_EVENTS.jobStatus,
            jobId,
            status: next.status,
            ...(prev ? { from: prev.status } : {}),
            ...(next.stopReason ? { stopReason: next.stopReason } : {}),
            round: next.currentRound,
          };
          logger?.info(`job ${jobId} ${prev ? `${prev.status} → ` : ""}${next.status}`, fields);
          ai?.event(fields);
        }
        const before = new Map((prev?.rounds ?? []).map((r) => [r.round, r]));
        for (const r of next.rounds.filter((x) => before.has(x.round))) {
          const was = before.get(r.round) as RoundRecord;
          if (evaluationOf(was) !== undefined || evaluationOf(r) === undefined) continue;
          const fields = { ...roundEventFields(next, r), event: TELEMETRY_EVENTS.roundEvaluated };
          logger?.info(`round ${jobId}/${r.round} evaluated by the fleet`, fields);
          ai?.evaluated(next, fields);
        }
        for (const r of next.rounds.filter((x) => !before.has(x.round))) {
          const fields = roundEventFields(next, r);
          const line = `round ${jobId}/${r.round} closed: ${r.status}, ${r.completed}/${r.participants} updates`;
          if (r.status === "failed") logger?.warn(line, fields);
          else logger?.info(line, fields);
          ai?.roundClosed(next, r, fields);
        }
      } catch (e) {
        // Telemetry never breaks a round: the record is written already.
        logger?.warn(`telemetry: ${e instanceof Error ? e.message : String(e)}`, { code: "E_METRICS" });
      }
    },
    flush: () => ai?.flush() ?? Promise.resolve(),
    shutdown: () => ai?.shutdown() ?? Promise.resolve(),
  };
}

interface AzureMonitorSink {
  roundClosed(job: JobDocument, r: RoundRecord, fields: Record<string, string | number | boolean>): void;
  evaluated(job: JobDocument, fields: Record<string, string | number | boolean>): void;
  event(fields: Record<string, string | number | boolean>): void;
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

/** The Application Insights side: OpenTelemetry instruments and event records over the Azure Monitor exporters. */
function azureMonitor(opts: TelemetryOptions, readJobs: () => Promise<JobDocument[]>): AzureMonitorSink {
  const options: AzureMonitorExporterOptions = {
    ...opts.exporterOptions,
    connectionString: opts.connectionString,
  };
  const meterProvider = new MeterProvider({
    readers: [
      new PeriodicExportingMetricReader({
        exporter: new AzureMonitorMetricExporter(options),
        exportIntervalMillis: opts.exportIntervalMs ?? 60_000,
      }),
    ],
  });
  const loggerProvider = new LoggerProvider({
    processors: [new BatchLogRecordProcessor(new AzureMonitorLogExporter(options))],
  });
  const meter: Meter = meterProvider.getMeter("flotilla-aggregator");
  const otelLogger = loggerProvider.getLogger("flotilla-aggregator");
  const M = AGGREGATOR_METRICS;
  const roundsTotal: Counter = meter.createCounter(M.roundsTotal, { description: "Rounds closed" });
  const failuresTotal: Counter = meter.createCounter(M.roundFailuresTotal, {
    description: "Device failures",
  });
  const duration: Histogram = meter.createHistogram(M.roundDurationSeconds, {
    description: "Round duration",
    unit: "s",
  });
  const gauges = new Map<string, Gauge>();
  const gauge = (name: string): Gauge => {
    let g = gauges.get(name);
    if (!g) gauges.set(name, (g = meter.createGauge(name)));
    return g;
  };
  const jobsGauge: ObservableGauge = meter.createObservableGauge(M.jobs, { description: "Jobs by status" });
  jobsGauge.addCallback(async (result) => {
    const docs = await readJobs().catch(() => undefined);
    if (!docs) return;
    for (const s of JOB_STATUSES) result.observe(docs.filter((d) => d.status === s).length, { status: s });
  });

  return {
    roundClosed(job, r, fields) {
      const attrs: Attributes = { job: job.definition.jobId };
      roundsTotal.add(1, { ...attrs, status: r.status });
      duration.record(Math.max(0, r.durationMs) / 1000, attrs);
      for (const f of r.failures) failuresTotal.add(1, { ...attrs, code: f.code });
      gauge(M.round).record(r.round, attrs);
      gauge(M.roundParticipants).record(r.participants, attrs);
      gauge(M.roundCompleted).record(r.completed, attrs);
      gauge(M.roundBytesReceived).record(r.bytesReceived, attrs);
      if (finite(fields.trainLoss)) gauge(M.trainLoss).record(fields.trainLoss, attrs);
      if (finite(fields.epsilon)) gauge(M.epsilon).record(fields.epsilon, attrs);
      this.evaluated(job, fields);
    },
    evaluated(job, fields) {
      const attrs: Attributes = { job: job.definition.jobId };
      const numeric: Array<[string, unknown]> = [
        [M.evalAccuracy, fields.evalAccuracy],
        [M.evalLoss, fields.evalLoss],
        [M.evalWorstDecileAccuracy, fields.evalWorstDecileAccuracy],
      ];
      for (const [name, v] of numeric) if (finite(v)) gauge(name).record(v, attrs);
      this.event(fields);
    },
    event(fields) {
      otelLogger.emit({
        severityNumber: fields.status === "failed" ? SeverityNumber.WARN : SeverityNumber.INFO,
        severityText: fields.status === "failed" ? "WARN" : "INFO",
        body: String(fields.event),
        attributes: { "microsoft.custom_event.name": String(fields.event), ...fields },
      });
    },
    async flush() {
      await meterProvider.forceFlush();
      await loggerProvider.forceFlush();
    },
    async shutdown() {
      await meterProvider.shutdown();
      await loggerProvider.shutdown();
    },
  };
}
