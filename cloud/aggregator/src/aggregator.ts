/**
 * `createAggregator(services)`: every trigger's handler built over one AggregatorServices object. The Function
 * app (index.ts) registers them with @azure/functions; tests and a local host call them directly with
 * `new HttpRequest({...})`, `new InvocationContext({...})`.
 */
import type { InvocationContext, Timer } from "@azure/functions";
import { IotHubFleet } from "./fleet/fleet";
import { createHttpApi, type HttpApi } from "./http-api";
import { Ingestor, type IngestEvent } from "./ingest";
import { Orchestrator, type TickReport } from "./orchestrator";
import { AzureBlobStore, MemoryBlobStore } from "./store/blob-store";
import type { AggregatorServices } from "./services";
import { keyProviderFromEnv } from "../../../azure/keyvault-key-provider";
import { createTelemetry, type AggregatorTelemetry } from "./telemetry";
import { FlotillaError } from "../../../core/errors";

export interface Aggregator {
  readonly services: AggregatorServices;
  readonly orchestrator: Orchestrator;
  readonly ingestor: Ingestor;
  readonly http: HttpApi;
  /** Round and job telemetry: /api/metrics, Application Insights export (telemetry.ts). */
  readonly telemetry: AggregatorTelemetry;
  /** Timer trigger handler (roundTimer). */
  roundTimer(timer: Timer | unknown, context: InvocationContext): Promise<TickReport>;
  /** Event Hub trigger handler (ingestUpdates, cardinality many). Never throws. */
  ingestUpdates(
    messages: unknown,
    context: InvocationContext,
  ): Promise<{ accepted: number; rejected: number }>;
}

/**
 * Zips the Event Hub trigger's bodies with their properties: with cardinality `many` the handler gets the bodies
 * and the properties arrive in `triggerMetadata.propertiesArray` / `systemPropertiesArray`. Events that already
 * are `{body, properties, systemProperties}` (the local hub's D2CEvent, tests) pass through.
 */
export function eventsFromTrigger(messages: unknown, context: InvocationContext): IngestEvent[] {
  const list = Array.isArray(messages) ? messages : [messages];
  const meta = context.triggerMetadata ?? {};
  const props = Array.isArray(meta.propertiesArray) ? (meta.propertiesArray as unknown[]) : [];
  const sys = Array.isArray(meta.systemPropertiesArray) ? (meta.systemPropertiesArray as unknown[]) : [];
  return list.map((m, i) => {
    if (m && typeof m === "object" && "body" in m && "properties" in m) return m as IngestEvent;
    return {
      body: m,
      properties: (props[i] ?? undefined) as IngestEvent["properties"],
      systemProperties: (sys[i] ?? undefined) as IngestEvent["systemProperties"],
    };
  });
}

export interface AggregatorOptions {
  /** Run the round timer's body after a batch that accepted updates, so a round closes as soon as its last
   *  update is in rather than at the next timer tick (default true). */
  readonly tickAfterIngest?: boolean;
}

export function createAggregator(given: AggregatorServices, options: AggregatorOptions = {}): Aggregator {
  const tickAfterIngest = options.tickAfterIngest ?? true;
  // Without one given: Prometheus metrics only; events go to the structured logger when there is one.
  const telemetry: AggregatorTelemetry =
    given.telemetry ?? createTelemetry({ store: given.store, logger: given.logger });
  const services: AggregatorServices = { ...given, telemetry };
  const orchestrator = new Orchestrator(services);
  const ingestor = new Ingestor(services);
  return {
    services,
    orchestrator,
    ingestor,
    telemetry,
    http: createHttpApi(services, {
      async onStopped(jobId) {
        const job = await orchestrator.repo.getJob(jobId);
        if (job) await orchestrator.pauseRound(job, services.clock());
      },
    }),
    async roundTimer(_timer, context) {
      const report = await orchestrator.tick(services.clock());
      for (const j of report.jobs) context.log(`roundTimer ${j.jobId}: ${j.actions.join("; ")}`);
      return report;
    },
    async ingestUpdates(messages, context) {
      try {
        const r = await ingestor.ingestEvents(eventsFromTrigger(messages, context));
        if (r.rejected > 0) context.warn(`ingestUpdates: ${r.accepted} accepted, ${r.rejected} rejected`);
        // Close a round as soon as its last update is in, instead of waiting for the next timer tick. Ticks are
        // idempotent and their state writes ETag-conditional, so one racing the timer's is harmless.
        if (tickAfterIngest && r.accepted > 0)
          await orchestrator.tick(services.clock()).catch(() => undefined);
        return r;
      } catch (e) {
        context.error(`ingestUpdates: ${e instanceof Error ? e.message : String(e)}`);
        return { accepted: 0, rejected: Array.isArray(messages) ? messages.length : 1 };
      }
    },
  };
}

/**
 * Services from app settings:
 *   AZURE_STORAGE_CONNECTION_STRING (else AzureWebJobsStorage, else `UseDevelopmentStorage=true`, i.e. Azurite);
 *   FLOTILLA_STORE=memory keeps state in process memory (single-instance local runs only);
 *   FLOTILLA_CONTAINER (default "flotilla");
 *   IOTHUB_SERVICE_CONNECTION_STRING (a policy with registry read/write and service connect);
 *   FLOTILLA_KEYVAULT_URL (devices' identity keys for secure aggregation, read with the Function's managed identity
 *   through DefaultAzureCredential), else FLOTILLA_KEY_DIR (a key directory: local stacks); neither = no secure jobs;
 *   FLOTILLA_ROBUST_MAX_BYTES (most bytes a job's buffered robust aggregator may hold per round; default 1 GiB).
 */
export function servicesFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  log: (line: string) => void = (l) => console.log(l),
): AggregatorServices {
  const hubCs = env.IOTHUB_SERVICE_CONNECTION_STRING;
  if (!hubCs) throw new Error("app setting IOTHUB_SERVICE_CONNECTION_STRING is not set");
  const store =
    env.FLOTILLA_STORE === "memory"
      ? new MemoryBlobStore()
      : new AzureBlobStore({
          connectionString:
            env.AZURE_STORAGE_CONNECTION_STRING ?? env.AzureWebJobsStorage ?? "UseDevelopmentStorage=true",
          containerName: env.FLOTILLA_CONTAINER ?? "flotilla",
        });
  const robustMaxBytes = robustMaxBytesFromEnv(env);
  const identityKeys =
    env.FLOTILLA_KEYVAULT_URL || env.FLOTILLA_KEY_DIR ? keyProviderFromEnv(env) : undefined;
  return {
    store,
    fleet: IotHubFleet.fromConnectionString(hubCs, { log }),
    clock: () => Date.now(),
    log,
    ...(identityKeys ? { identityKeys } : {}),
    ...(robustMaxBytes !== undefined ? { robustMaxBytes } : {}),
  };
}

/** FLOTILLA_ROBUST_MAX_BYTES: unset = the default; else a whole number of bytes ≥ 1 (E_CONFIG_INVALID). */
export function robustMaxBytesFromEnv(env: NodeJS.ProcessEnv): number | undefined {
  const v = env.FLOTILLA_ROBUST_MAX_BYTES;
  if (v === undefined || v.trim() === "") return undefined;
  const n = Number(v.trim());
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < 1)
    throw new FlotillaError(
      "E_CONFIG_INVALID",
      `app setting FLOTILLA_ROBUST_MAX_BYTES must be a whole number of bytes >= 1, got '${v}'`,
    );
  return n;
}
