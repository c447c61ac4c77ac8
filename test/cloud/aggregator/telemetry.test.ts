/**
 * The Function's round and job telemetry (cloud/aggregator/src/telemetry.ts): Prometheus text on GET /api/metrics
 * (the handler and the local Functions host), structured events in the logger, and the Application Insights export
 * for real through @azure/monitor-opentelemetry-exporter to a local HTTP endpoint standing in for the ingestion
 * endpoint (connection string IngestionEndpoint=http://127.0.0.1:PORT/).
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as https from "node:https";
import * as os from "node:os";
import * as path from "node:path";
import type { AddressInfo } from "node:net";
import * as zlib from "node:zlib";
import { createAggregator } from "../../../cloud/aggregator/src/aggregator";
import { JobRepository, type RoundRecord } from "../../../cloud/aggregator/src/jobs/state";
import { MemoryBlobStore } from "../../../cloud/aggregator/src/store/blob-store";
import {
  AGGREGATOR_METRICS,
  TELEMETRY_EVENTS,
  createTelemetry,
  telemetryFromEnv,
} from "../../../cloud/aggregator/src/telemetry";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { createLogger, type LogRecord } from "../../../core/log";
import type { FleetEvaluation } from "../../../core/round/evaluation";
import { startFunctionsHost } from "../../../local/stack/functions-host";
import { ensureHubTls } from "../../../local/hub/tls";
import { chunkEvents, ctx, get, jobBody, makeDelta, post, RecordingFleet, SPEC } from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);
const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

/** The names fixed for issue 15 (COMMON.md): nothing more, nothing less. */
const EXPECTED_NAMES = [
  "flotilla_aggregator_jobs",
  "flotilla_aggregator_rounds_total",
  "flotilla_aggregator_round",
  "flotilla_aggregator_round_duration_seconds",
  "flotilla_aggregator_round_participants",
  "flotilla_aggregator_round_completed",
  "flotilla_aggregator_round_failures_total",
  "flotilla_aggregator_round_bytes_received",
  "flotilla_aggregator_train_loss",
  "flotilla_aggregator_eval_accuracy",
  "flotilla_aggregator_eval_loss",
  "flotilla_aggregator_eval_worst_decile_accuracy",
  "flotilla_aggregator_epsilon",
];

/** An aggregator over an in-memory store and a recording fleet, with a capturing structured logger. */
function setup() {
  const store = new MemoryBlobStore();
  const fleet = new RecordingFleet();
  fleet.trainers = ["dev-a", "dev-b", "dev-c"].map((deviceId) => ({
    deviceId,
    connected: true,
    numSamples: 100,
  }));
  const now = { t: 1_700_000_000_000 };
  const records: LogRecord[] = [];
  const logger = createLogger({ component: "aggregator", sink: (r) => records.push(r) });
  const agg = createAggregator(
    { store, fleet, clock: () => now.t, log: () => {}, logger },
    { tickAfterIngest: false },
  );
  return { store, fleet, now, records, agg };
}

/** Runs job-1 (2 rounds): round 1 aggregates dev-a and dev-c (dev-b times out), round 2 gets nothing (failed). */
async function twoRounds(w: ReturnType<typeof setup>): Promise<void> {
  const r = await w.agg.http.createJob(post("/api/jobs", jobBody({ rounds: 2 })), ctx());
  assert.equal(r.status, 201);
  await w.agg.http.startJob(post("/api/jobs/job-1/start", undefined, { id: "job-1" }), ctx());
  await w.agg.roundTimer({}, ctxStub);
  for (const [dev, n, seed] of [
    ["dev-a", 5, 11],
    ["dev-c", 15, 12],
  ] as const) {
    const msg = {
      type: "result" as const,
      jobId: "job-1",
      round: 1,
      deviceId: dev,
      layoutHash: layout.hash,
      numSamples: n,
      metrics: { loss: 0.5, accuracy: 0.5, trainMs: 10 },
      delta: makeDelta(layout.totalSize, seed),
    };
    const res = await w.agg.ingestUpdates(chunkEvents(msg).events, ctxStub);
    assert.equal(res.rejected, 0);
  }
  w.now.t += 60_001;
  await w.agg.roundTimer({}, ctxStub);
  w.now.t += 61_000;
  await w.agg.roundTimer({}, ctxStub);
  const job = await new JobRepository(w.store).getJob("job-1");
  assert.deepEqual(
    job?.rounds.map((x) => x.status),
    ["aggregated", "failed"],
  );
  assert.equal(job?.status, "completed");
}

/** `name{labels} value` lines of a Prometheus text exposition. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^(\S+?(?:\{[^}]*\})?) (\S+)$/.exec(line);
    assert.ok(m, `sample line: ${line}`);
    out.set(m[1], Number(m[2]));
  }
  return out;
}

test("GET /api/metrics: exactly the aggregator's metric names, counted from the job documents", async () => {
  const w = setup();
  await twoRounds(w);
  const res = await w.agg.http.metrics(get("/api/metrics"), ctx());
  assert.equal(res.status, 200);
  assert.match(
    String((res.headers as Record<string, string>)["content-type"]),
    /^text\/plain; version=0\.0\.4/,
  );
  const text = String(res.body);
  const types = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => m[1]);
  assert.deepEqual([...types].sort(), [...EXPECTED_NAMES].sort());
  assert.deepEqual(Object.values(AGGREGATOR_METRICS).sort(), [...EXPECTED_NAMES].sort());
  const s = samples(text);
  assert.equal(s.get('flotilla_aggregator_jobs{status="completed"}'), 1);
  assert.equal(s.get('flotilla_aggregator_jobs{status="running"}'), 0);
  assert.equal(s.get('flotilla_aggregator_rounds_total{job="job-1",status="aggregated"}'), 1);
  assert.equal(s.get('flotilla_aggregator_rounds_total{job="job-1",status="failed"}'), 1);
  assert.equal(s.get('flotilla_aggregator_round{job="job-1"}'), 2);
  assert.equal(s.get('flotilla_aggregator_round_participants{job="job-1"}'), 3);
  assert.equal(s.get('flotilla_aggregator_round_completed{job="job-1"}'), 0);
  // dev-b timed out in round 1, everyone in round 2.
  assert.equal(s.get('flotilla_aggregator_round_failures_total{job="job-1",code="E_ROUND_TIMEOUT"}'), 4);
  assert.equal(s.get('flotilla_aggregator_round_duration_seconds_count{job="job-1"}'), 2);
  const job = (await new JobRepository(w.store).getJob("job-1"))!;
  assert.equal(
    s.get('flotilla_aggregator_round_duration_seconds_sum{job="job-1"}'),
    job.rounds.reduce((t, r) => t + r.durationMs / 1000, 0),
  );
  assert.equal(s.get('flotilla_aggregator_round_bytes_received{job="job-1"}'), job.rounds[1].bytesReceived);
  // Round 2 has no training loss: the gauge keeps no stale value of round 1.
  assert.equal(s.has('flotilla_aggregator_train_loss{job="job-1"}'), false);

  // A restarted instance (a fresh aggregator over the same store) serves the same numbers.
  const again = createAggregator({ store: w.store, fleet: w.fleet, clock: () => w.now.t, log: () => {} });
  assert.deepEqual(samples(String((await again.http.metrics(get("/api/metrics"), ctx())).body)), s);

  // Fleet-wide evaluation (an optional `evaluation` on round records) and DP ε feed the eval_* and epsilon gauges.
  const evaluation: FleetEvaluation = {
    round: 1,
    devices: 3,
    samples: 300,
    accuracy: 0.91,
    loss: 0.3,
    worstDecile: { value: 0.7, devices: ["dev-b"] },
  };
  // Written as the Function writes job documents (its repositories carry the telemetry as their observer).
  await new JobRepository(w.store, w.agg.telemetry).updateJob("job-1", (cur) => ({
    ...cur,
    rounds: cur.rounds.map((r, i) => (i === 0 ? ({ ...r, evaluation } as RoundRecord) : r)),
    dp: { fleetSize: 3, state: {} as never, spent: { epsilon: 1.25, delta: 1e-5, steps: 2 } },
  }));
  const evaluated = w.records.filter((r) => r.fields.event === TELEMETRY_EVENTS.roundEvaluated);
  assert.deepEqual(
    evaluated.map((r) => [r.fields.round, r.fields.evalAccuracy, r.fields.evalWorstDecileAccuracy]),
    [[1, 0.91, 0.7]],
    "an evaluation added to a closed round is an event of its own",
  );
  const s2 = samples(String((await w.agg.http.metrics(get("/api/metrics"), ctx())).body));
  assert.equal(s2.get('flotilla_aggregator_eval_accuracy{job="job-1"}'), 0.91);
  assert.equal(s2.get('flotilla_aggregator_eval_loss{job="job-1"}'), 0.3);
  assert.equal(s2.get('flotilla_aggregator_eval_worst_decile_accuracy{job="job-1"}'), 0.7);
  assert.equal(s2.get('flotilla_aggregator_epsilon{job="job-1"}'), 1.25);

  // promtool (Debian's prometheus package) accepts the exposition.
  const check = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
  assert.ok(
    !check.error,
    `promtool not found (${String(check.error)}): apt-get install -y chromium prometheus`,
  );
  assert.equal(check.status, 0, `promtool check metrics: ${check.stdout}${check.stderr}`);
});

test("structured events: every status change and every round record, once, with stable event names", async () => {
  const w = setup();
  await twoRounds(w);
  const events = w.records.filter((r) => typeof r.fields.event === "string");
  const statuses = events
    .filter((r) => r.fields.event === TELEMETRY_EVENTS.jobStatus)
    .map((r) => r.fields.status);
  assert.deepEqual(statuses, ["created", "running", "completed"]);
  const rounds = events.filter((r) => r.fields.event === TELEMETRY_EVENTS.roundClosed);
  assert.deepEqual(
    rounds.map((r) => [r.fields.round, r.fields.status, r.level]),
    [
      [1, "aggregated", "info"],
      [2, "failed", "warn"],
    ],
  );
  assert.equal(rounds[0].fields.jobId, "job-1");
  assert.equal(rounds[0].fields.completed, 2);
  assert.equal(rounds[0].fields.failureCodes, JSON.stringify({ E_ROUND_TIMEOUT: 1 }));
  assert.equal(typeof rounds[0].fields.trainLoss, "number");
  // What selection chose from, and no device policy excluded anyone.
  assert.equal(typeof rounds[0].fields.candidates, "number");
  assert.equal(rounds[0].fields.policyExcluded, "{}");
  assert.equal(rounds[0].fields.policyExcludedTotal, 0);
});

test("the local Functions host serves GET /api/metrics in Prometheus text", async () => {
  const w = setup();
  await twoRounds(w);
  const host = await startFunctionsHost(w.agg, { timerIntervalMs: 3_600_000 });
  try {
    const res = await fetch(`${host.url}/api/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const body = await res.text();
    assert.match(body, /^flotilla_aggregator_rounds_total\{job="job-1",status="aggregated"\} 1$/m);
  } finally {
    await host.close();
  }
});

// -----------------------------------------------------------------------------------------------------------------
// Application Insights

interface Envelope {
  name: string;
  iKey?: string;
  instrumentationKey?: string;
  data: { baseType: string; baseData: Record<string, unknown> };
}

/** An HTTP server standing in for Application Insights' ingestion endpoint (POST /v2.1/track). */
async function ingestionStandIn(): Promise<{
  url: string;
  ca: string;
  envelopes: Envelope[];
  paths: string[];
  close(): Promise<void>;
}> {
  // The exporter's connection-string parser turns http:// into https://: the stand-in speaks TLS, with a local CA
  // the exporter is given through its pipeline's tlsOptions.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-ai-"));
  const tls = await ensureHubTls(dir, ["127.0.0.1", "localhost"]);
  fs.rmSync(dir, { recursive: true, force: true });
  const envelopes: Envelope[] = [];
  const paths: string[] = [];
  const server = https.createServer({ cert: tls.serverCertPem, key: tls.serverKeyPem }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      paths.push(`${req.method} ${req.url}`);
      let body = Buffer.concat(chunks);
      if (req.headers["content-encoding"] === "gzip") body = zlib.gunzipSync(body);
      const text = body.toString("utf8").trim();
      const items = (
        text.startsWith("[") ? JSON.parse(text) : text.split("\n").map((l) => JSON.parse(l))
      ) as Envelope[];
      envelopes.push(...items);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ itemsReceived: items.length, itemsAccepted: items.length, errors: [] }));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `https://127.0.0.1:${port}/`,
    ca: tls.caCertPem,
    envelopes,
    paths,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

test("Application Insights: round metrics and events reach the ingestion endpoint as Azure Monitor envelopes", async () => {
  // No statsbeat/SDK-stats traffic to Microsoft's endpoints from a test.
  process.env.APPLICATION_INSIGHTS_NO_STATSBEAT = "true";
  process.env.APPLICATIONINSIGHTS_STATSBEAT_DISABLED = "true";
  process.env.APPLICATIONINSIGHTS_SDKSTATS_DISABLED = "true";
  const ingest = await ingestionStandIn();
  const ikey = "00000000-1111-2222-3333-444444444444";
  const store = new MemoryBlobStore();
  const records: LogRecord[] = [];
  const telemetry = telemetryFromEnv(
    { APPLICATIONINSIGHTS_CONNECTION_STRING: `InstrumentationKey=${ikey};IngestionEndpoint=${ingest.url}` },
    {
      store,
      logger: createLogger({ component: "aggregator", sink: (r) => records.push(r) }),
      exporterOptions: { disableOfflineStorage: true, tlsOptions: { ca: ingest.ca } },
      exportIntervalMs: 3_600_000, // exported by flush() below, not by the timer
    },
  );
  try {
    assert.equal(telemetry.azureMonitor, true);
    const fleet = new RecordingFleet();
    fleet.trainers = ["dev-a", "dev-b", "dev-c"].map((deviceId) => ({
      deviceId,
      connected: true,
      numSamples: 100,
    }));
    const now = { t: 1_700_000_000_000 };
    const agg = createAggregator(
      { store, fleet, clock: () => now.t, log: () => {}, telemetry },
      { tickAfterIngest: false },
    );
    await twoRounds({ store, fleet, now, records, agg });
    await telemetry.flush();

    assert.ok(
      ingest.paths.every((p) => p === "POST /v2.1/track"),
      ingest.paths.join(", "),
    );
    for (const e of ingest.envelopes) assert.equal(e.iKey ?? e.instrumentationKey, ikey);
    const metrics = ingest.envelopes
      .filter((e) => e.data.baseType === "MetricData")
      .flatMap((e) =>
        (e.data.baseData.metrics as { name: string; value: number; count?: number }[]).map((m) => ({
          ...m,
          props: (e.data.baseData.properties ?? {}) as Record<string, string>,
        })),
      );
    const find = (name: string, props: Record<string, string>) =>
      metrics.filter((m) => m.name === name && Object.entries(props).every(([k, v]) => m.props[k] === v));
    const one = (name: string, props: Record<string, string>) => {
      const found = find(name, props);
      assert.equal(
        found.length,
        1,
        `${name} ${JSON.stringify(props)}: ${JSON.stringify(metrics.map((m) => m.name))}`,
      );
      return found[0];
    };
    assert.equal(one(AGGREGATOR_METRICS.roundsTotal, { job: "job-1", status: "aggregated" }).value, 1);
    assert.equal(one(AGGREGATOR_METRICS.roundsTotal, { job: "job-1", status: "failed" }).value, 1);
    assert.equal(
      one(AGGREGATOR_METRICS.roundFailuresTotal, { job: "job-1", code: "E_ROUND_TIMEOUT" }).value,
      4,
    );
    assert.equal(one(AGGREGATOR_METRICS.roundDurationSeconds, { job: "job-1" }).count, 2);
    assert.equal(one(AGGREGATOR_METRICS.round, { job: "job-1" }).value, 2);
    assert.equal(one(AGGREGATOR_METRICS.roundParticipants, { job: "job-1" }).value, 3);
    assert.equal(one(AGGREGATOR_METRICS.jobs, { status: "completed" }).value, 1);
    assert.equal(one(AGGREGATOR_METRICS.jobs, { status: "running" }).value, 0);
    for (const m of metrics) assert.ok(EXPECTED_NAMES.includes(m.name), `only aggregator metrics: ${m.name}`);

    const events = ingest.envelopes
      .filter((e) => e.data.baseType === "EventData")
      .map((e) => ({
        name: e.data.baseData.name as string,
        props: e.data.baseData.properties as Record<string, unknown>,
      }));
    const roundEvents = events.filter((e) => e.name === TELEMETRY_EVENTS.roundClosed);
    assert.deepEqual(roundEvents.map((e) => [String(e.props.round), e.props.status]).sort(), [
      ["1", "aggregated"],
      ["2", "failed"],
    ]);
    for (const e of roundEvents) assert.equal(e.props.jobId, "job-1");
    assert.deepEqual(
      events.filter((e) => e.name === TELEMETRY_EVENTS.jobStatus).map((e) => e.props.status),
      ["created", "running", "completed"],
    );
  } finally {
    await telemetry.shutdown();
    await ingest.close();
  }
});

test("Application Insights export is off without a connection string", async () => {
  const t = telemetryFromEnv({}, { store: new MemoryBlobStore() });
  assert.equal(t.azureMonitor, false);
  await t.flush();
  const u = createTelemetry({ store: new MemoryBlobStore(), connectionString: "" });
  assert.equal(u.azureMonitor, false);
  // With no job yet, the exposition still names every metric (jobs by status at 0).
  assert.match(await u.metricsText(), /^flotilla_aggregator_jobs\{status="running"\} 0$/m);
});
