/**
 * The Function app entry point (package.json "main" of the deployed app points at dist/cloud/aggregator/src/index.js).
 * Registers every trigger; services are created from app settings on first use, so importing this file outside a
 * Functions host (where registrations are skipped) has no side effects.
 */
import { app, trigger, type HttpRequest, type InvocationContext } from "@azure/functions";
import { createAggregator, servicesFromEnv, type Aggregator } from "./aggregator";
import type { HttpApi } from "./http-api";
import { logLines } from "./services";
import { loggerFromEnv } from "../../../core/log";
import { telemetryFromEnv } from "./telemetry";

let instance: Aggregator | null = null;
function aggregator(): Aggregator {
  if (!instance) {
    // JSON lines on stdout/stderr (FLOTILLA_LOG_LEVEL, FLOTILLA_LOG_FORMAT: core/log.ts).
    const logger = loggerFromEnv("aggregator");
    const services = servicesFromEnv(process.env, logLines(logger));
    // Round/job metrics on /api/metrics; to Application Insights too when APPLICATIONINSIGHTS_CONNECTION_STRING is set.
    const telemetry = telemetryFromEnv(process.env, { store: services.store, logger });
    instance = createAggregator({ ...services, logger, telemetry });
  }
  return instance;
}

const http = (name: keyof HttpApi) => (req: HttpRequest, ctx: InvocationContext) =>
  aggregator().http[name](req, ctx);

app.http("createJob", {
  methods: ["POST"],
  route: "jobs",
  authLevel: "function",
  handler: http("createJob"),
});
app.http("listJobs", { methods: ["GET"], route: "jobs", authLevel: "function", handler: http("listJobs") });
app.http("getJob", { methods: ["GET"], route: "jobs/{id}", authLevel: "function", handler: http("getJob") });
app.http("startJob", {
  methods: ["POST"],
  route: "jobs/{id}/start",
  authLevel: "function",
  handler: http("startJob"),
});
app.http("stopJob", {
  methods: ["POST"],
  route: "jobs/{id}/stop",
  authLevel: "function",
  handler: http("stopJob"),
});
app.http("getModel", {
  methods: ["GET"],
  route: "jobs/{id}/models/{round}",
  authLevel: "function",
  handler: http("getModel"),
});

app.http("metrics", {
  methods: ["GET"],
  route: "metrics",
  authLevel: "function",
  handler: http("metrics"),
});

app.timer("roundTimer", {
  schedule: "*/10 * * * * *",
  runOnStartup: false,
  useMonitor: false,
  handler: (timer, ctx) =>
    aggregator()
      .roundTimer(timer, ctx)
      .then(() => undefined),
});

const ingestTrigger = {
  connection: "IOTHUB_EVENTHUB_CONNECTION",
  eventHubName: "%IOTHUB_EVENTHUB_NAME%",
  cardinality: "many" as const,
  consumerGroup: "$Default",
};
app.eventHub("ingestUpdates", {
  ...ingestTrigger,
  // frames are binary: without dataType the host hands the bodies over as (lossy) strings
  trigger: { ...trigger.eventHub(ingestTrigger), dataType: "binary" },
  handler: (messages, ctx) =>
    aggregator()
      .ingestUpdates(messages, ctx)
      .then(() => undefined),
});

export { createAggregator, eventsFromTrigger, servicesFromEnv } from "./aggregator";
