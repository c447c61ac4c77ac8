/**
 * The target of issue 15: a real Prometheus (Debian's package, started by local/monitoring/prometheus.ts as
 * `npm start --prometheus` starts it) scraping a 20-device local fleet after a round holds every documented module
 * metric (docs/metrics.md) for all 20 devices, with IoT Edge's labels (iothub, edge_device, instance_number,
 * module_name); its rules load and record over the fleet. Read through Prometheus' HTTP API.
 */
import { afterAll, beforeAll, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { startPrometheus, stackTargets, type LocalPrometheus } from "../../../local/monitoring/prometheus";
import { prometheusBinary } from "../../monitoring/promtool";
import { AGGREGATOR_METRICS } from "../../../cloud/aggregator/src/telemetry";
import { documentedModuleMetrics } from "../../monitoring/documented";
import {
  createJob,
  startFaultFleet,
  startJob,
  stopFaultFleet,
  waitFor,
  waitJobDone,
  type FaultFleet,
} from "../stack/fault-support";

const DEVICES = 20;
let fleet: FaultFleet | undefined;
let prom: LocalPrometheus | undefined;
const t0 = Date.now();
const timings: Record<string, number> = {};

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

async function query(expr: string): Promise<Sample[]> {
  const res = await fetch(`${prom!.url}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = (await res.json()) as { status: string; error?: string; data: { result: Sample[] } };
  assert.equal(body.status, "success", `${expr}: ${body.error}`);
  return body.data.result;
}

beforeAll(async () => {
  const binary = prometheusBinary(); // fails with "apt-get install -y prometheus" when missing
  fleet = await startFaultFleet(DEVICES, 30);
  timings.stackStarted = Date.now() - t0;
  // Prometheus starts beside the round, as `npm start --prometheus` starts it before the job.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-prom-20-"));
  [prom] = await Promise.all([
    startPrometheus(stackTargets(fleet.stack), { dir, binary }),
    (async () => {
      await createJob(fleet!, {
        jobId: "prom-20",
        clientsPerRound: DEVICES,
        rounds: 1,
        roundDeadlineSeconds: 120,
        minCompletedFraction: 1,
      });
      await startJob(fleet!, "prom-20");
      const doc = await waitJobDone(fleet!, "prom-20", 180_000);
      assert.equal(doc.status, "completed", doc.error);
      timings.roundDone = Date.now() - t0;
    })(),
  ]);
}, 300_000);

afterAll(async () => {
  await prom?.close();
  if (fleet) await stopFaultFleet(fleet);
  console.log(`prometheus scrape test timings (ms since start): ${JSON.stringify(timings)}`);
});

test("Prometheus scrapes every module endpoint of the 20 devices, after the round", async () => {
  const endpoints = fleet!.stack.metricsEndpoints();
  assert.equal(endpoints.length, DEVICES * 4);
  // Every module counted its round before Prometheus' latest scrape: each trainer completed one round.
  await waitFor(
    "a scrape of all 80 endpoints after the round",
    async () => {
      const up = await query('up{job="flotilla-modules"} == 1');
      const done = await query("flotilla_trainer_rounds_completed_total == 1");
      return up.length === endpoints.length && done.length === DEVICES;
    },
    60_000,
    500,
  );
  timings.scraped = Date.now() - t0;
  const up = await query('up{job="flotilla-modules"}');
  const devices = new Set(up.map((s) => s.metric.edge_device));
  assert.equal(devices.size, DEVICES);
  for (const s of up)
    assert.ok(["trainer", "quantizer", "update-queue", "profiler"].includes(s.metric.module_name));
});

interface TargetMetadata {
  target: Record<string, string>;
  type: string;
}

test("every documented module metric is in Prometheus for all 20 devices, with IoT Edge's labels", async () => {
  const documented = documentedModuleMetrics();
  assert.ok(documented.length >= 30, `${documented.length} documented module metrics`);
  const hub = fleet!.stack.hub.hubName;
  const missing: string[] = [];
  const metadataOnly: string[] = [];
  const partly: string[] = [];
  for (const m of documented) {
    const series = await query(`{__name__=~"${m.name}(_bucket|_sum|_count)?", job="flotilla-modules"}`);
    const byDevice = new Map<string, Sample[]>();
    for (const s of series)
      byDevice.set(s.metric.edge_device, [...(byDevice.get(s.metric.edge_device) ?? []), s]);
    // A metric documented as present only after an event (a failure reason, a direct method call, an error code)
    // may have no sample on a device after a healthy round: Prometheus must still have scraped its family
    // (HELP/TYPE) from that device. One documented as always present must have samples on every device.
    let scrapedFrom: Set<string> | undefined;
    for (const id of fleet!.deviceIds) {
      const got = byDevice.get(id) ?? [];
      if (got.length === 0) {
        if (m.always) {
          missing.push(`${m.name} on ${id}`);
          continue;
        }
        if (!scrapedFrom) {
          const res = await fetch(
            `${prom!.url}/api/v1/targets/metadata?metric=${encodeURIComponent(m.name)}`,
          );
          const meta = ((await res.json()) as { data: TargetMetadata[] }).data;
          scrapedFrom = new Set(
            meta.filter((x) => x.target.module_name === m.module).map((x) => x.target.edge_device),
          );
        }
        if (!scrapedFrom.has(id)) missing.push(`${m.name} (its family) on ${id}`);
        continue;
      }
      for (const s of got) {
        assert.equal(s.metric.iothub, hub, `${m.name} iothub`);
        assert.equal(s.metric.module_name, m.module, `${m.name} module_name`);
        assert.match(s.metric.instance_number, /^[0-9a-f-]{36}$/, `${m.name} instance_number`);
        for (const l of m.labels) assert.ok(s.metric[l] !== undefined, `${m.name} ${l}`);
      }
    }
    if (series.length === 0) metadataOnly.push(m.name);
    else if (byDevice.size < DEVICES) partly.push(`${m.name} (${byDevice.size})`);
  }
  assert.deepEqual(missing, [], "documented metrics Prometheus does not hold");
  // Nearly every metric has samples after one round; the event-only ones are few.
  assert.ok(metadataOnly.length <= documented.length / 5, `without samples: ${metadataOnly.join(", ")}`);
  console.log(
    `${documented.length} documented module metrics on all ${DEVICES} devices; families without samples after a ` +
      `healthy round (checked by their metadata): ${metadataOnly.join(", ")}; on some devices only: ` +
      `${partly.join(", ") || "none"}`,
  );
});

test("Prometheus holds the Function's round and job metrics, the federated job as flotilla_job", async () => {
  const jobs = await waitFor(
    "the Function's metrics after the round",
    async () => {
      const r = await query('flotilla_aggregator_round{job="flotilla-function"}');
      return r.length === 1 && r[0]!.value[1] === "1" ? r : undefined;
    },
    30_000,
    500,
  );
  assert.equal(jobs[0]!.metric.flotilla_job, "prom-20");
  assert.equal(jobs[0]!.metric.exported_job, undefined);
  const value = async (expr: string) => (await query(expr)).map((s) => s.value[1]);
  assert.deepEqual(await value('flotilla_aggregator_round_participants{flotilla_job="prom-20"}'), [
    String(DEVICES),
  ]);
  assert.deepEqual(await value('flotilla_aggregator_round_completed{flotilla_job="prom-20"}'), [
    String(DEVICES),
  ]);
  assert.deepEqual(
    await value('flotilla_aggregator_rounds_total{flotilla_job="prom-20", status="aggregated"}'),
    ["1"],
  );
  assert.deepEqual(await value('flotilla_aggregator_jobs{status="completed"}'), ["1"]);
  // Every aggregator metric was scraped from the Function (those of fleet-wide evaluation, DP and failures have no
  // sample in a plain, healthy job: their families are there).
  for (const name of Object.values(AGGREGATOR_METRICS)) {
    const res = await fetch(`${prom!.url}/api/v1/targets/metadata?metric=${encodeURIComponent(name)}`);
    const meta = ((await res.json()) as { data: TargetMetadata[] }).data;
    assert.ok(
      meta.some((m) => m.target.job === "flotilla-function"),
      `${name} scraped from the Function`,
    );
  }
  await waitFor(
    "the participation recording rule",
    async () => (await value('flotilla:round_participation:ratio{flotilla_job="prom-20"}'))[0] === "1",
    30_000,
    500,
  );
});

test("the rules load and record over the fleet; how many series Prometheus holds", async () => {
  const rules = (await (await fetch(`${prom!.url}/api/v1/rules`)).json()) as {
    data: {
      groups: Array<{ name: string; rules: Array<{ name: string; health: string; lastError?: string }> }>;
    };
  };
  const all = rules.data.groups.flatMap((g) => g.rules);
  assert.ok(all.length >= 20, `${all.length} rules loaded`);
  for (const r of all) assert.equal(r.health === "err" ? r.lastError : "ok", "ok", r.name);
  await waitFor(
    "the recording rules over the 20 devices",
    async () => (await query("flotilla:fleet_devices_up:sum"))[0]?.value[1] === String(DEVICES),
    30_000,
    500,
  );
  // Each rule group runs on its own schedule: the per-device queue rule may still be one evaluation behind the
  // fleet count (12 of 20 devices seen once in CI), so it is waited for too.
  await waitFor(
    "the per-device queue depth rule over the 20 devices",
    async () => (await query("flotilla:device_queue_depth:max")).length === DEVICES,
    30_000,
    500,
  );
  const tsdb = (await (await fetch(`${prom!.url}/api/v1/status/tsdb`)).json()) as {
    data: { headStats: { numSeries: number } };
  };
  const flotilla = await query('count({__name__=~"flotilla_.+"})');
  console.log(
    `prometheus holds ${tsdb.data.headStats.numSeries} series for ${DEVICES} devices ` +
      `(${flotilla[0]?.value[1]} flotilla_* series); ${Date.now() - t0} ms since the test started`,
  );
});
