/**
 * The fleet layout of docs/prometheus.md, run for real with Debian's Prometheus: a device's agent
 * (monitoring/prometheus/fleet/device-agent.yml, agent mode) scrapes the modules' /metrics and remote-writes to a
 * site gateway (gateway.yml, a server with the remote-write receiver), which forwards to the central server
 * (central.yml), where the rules run. Only what a test on one machine must change is changed in the copies: the
 * IoT Edge module host names become 127.0.0.1 ports, the remote-write URLs local ones without TLS, the intervals
 * 1 s. The device's identity comes from the IoT Edge environment variables, as on a device.
 */
import { afterAll, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runPrometheus, type PrometheusProcess } from "../../local/monitoring/prometheus";
import { freePort } from "../../local/stack/azurite";
import { ModuleMetrics, serveMetrics, type MetricsServer } from "../../modules/shared/metrics";
import { monitoringDir, prometheusBinary } from "./promtool";

const fleetDir = path.join(monitoringDir, "prometheus", "fleet");
const running: PrometheusProcess[] = [];
const servers: MetricsServer[] = [];
afterAll(async () => {
  for (const p of running.reverse()) await p.close();
  for (const s of servers) await s.close();
});

/** The repository's file with `edits` applied; each edit must match (the test follows the file). */
function edited(file: string, edits: Array<[RegExp | string, string]>): string {
  let text = fs.readFileSync(path.join(fleetDir, file), "utf8");
  for (const [from, to] of edits) {
    const next = text.replace(from, to);
    assert.notEqual(next, text, `${file}: ${String(from)} not found`);
    text = next;
  }
  return text;
}

const fast: Array<[RegExp, string]> = [
  [/scrape_interval: 30s/g, "scrape_interval: 1s"],
  [/scrape_timeout: 10s/g, "scrape_timeout: 1s"],
];

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

async function query(url: string, expr: string): Promise<Sample[]> {
  const r = (await (await fetch(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`)).json()) as {
    status: string;
    data: { result: Sample[] };
  };
  assert.equal(r.status, "success", expr);
  return r.data.result;
}

async function eventually<T>(what: string, probe: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

test("device agent → gateway → central: the modules' series arrive centrally with the device's labels, and the rules run there", async () => {
  const binary = prometheusBinary();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-fleet-layout-"));
  const hub = "hub-a.azure-devices.net";
  // The device's four modules, each on its own port (on a device: <module>:9600 on the IoT Edge network).
  const ports: Record<string, number> = {};
  for (const module of ["trainer", "quantizer", "update-queue", "profiler"]) {
    const m = new ModuleMetrics({
      module,
      labels: { iothub: hub, edge_device: "dev-7", instance_number: "3f6c", module_name: module },
    });
    m.counter("reconnects_total", "Reconnects").inc(2);
    const s = await serveMetrics(() => [m], { port: 0, host: "127.0.0.1" });
    servers.push(s);
    ports[module] = s.port;
  }
  const closed = await freePort(); // edgeHub and edgeAgent are not running here: their targets are down
  const [centralPort, gatewayPort, agentPort] = [await freePort(), await freePort(), await freePort()];

  // Central: the rules from ../rules, as in the repository.
  fs.mkdirSync(path.join(root, "central"));
  fs.mkdirSync(path.join(root, "rules"));
  fs.copyFileSync(
    path.join(monitoringDir, "prometheus", "rules", "flotilla.yml"),
    path.join(root, "rules", "flotilla.yml"),
  );
  fs.writeFileSync(
    path.join(root, "central", "central.yml"),
    edited("central.yml", [
      ...fast,
      [/evaluation_interval: 30s/, "evaluation_interval: 1s"],
      ["flotilla-aggregator.azurewebsites.net", `127.0.0.1:${closed}`],
      ["targets: [localhost:9090]", `targets: [127.0.0.1:${centralPort}]`],
    ]),
  );
  running.push(
    await runPrometheus({
      binary,
      dir: path.join(root, "central"),
      port: centralPort,
      args: [
        "--config.file=central.yml",
        "--web.enable-remote-write-receiver",
        `--storage.tsdb.path=${path.join(root, "central", "data")}`,
      ],
    }),
  );
  const central = running[0]!.url;

  // The site gateway: forwards to the central server (no TLS or token here).
  fs.mkdirSync(path.join(root, "gateway"));
  fs.writeFileSync(
    path.join(root, "gateway", "gateway.yml"),
    edited("gateway.yml", [
      ...fast,
      ["targets: [edgeHub:9600]", `targets: [127.0.0.1:${closed}]`],
      ["targets: [edgeAgent:9600]", `targets: [127.0.0.1:${closed}]`],
      ["targets: [localhost:9090]", `targets: [127.0.0.1:${gatewayPort}]`],
      ["https://prometheus.flotilla.example.com/api/v1/write", `${central}/api/v1/write`],
      [/\n {4}authorization:\n(?: {6}.*\n)+/, "\n"],
      [/ {4}tls_config:\n(?: {6}.*\n)+/, ""],
      ["max_backoff: 5m", "max_backoff: 1s\n      batch_send_deadline: 1s"],
    ]),
  );
  running.push(
    await runPrometheus({
      binary,
      dir: path.join(root, "gateway"),
      port: gatewayPort,
      args: [
        "--config.file=gateway.yml",
        "--web.enable-remote-write-receiver",
        "--enable-feature=expand-external-labels",
        `--storage.tsdb.path=${path.join(root, "gateway", "data")}`,
      ],
      env: { IOTEDGE_DEVICEID: "gw-1", IOTEDGE_IOTHUBHOSTNAME: hub },
    }),
  );

  // The device's agent, with the IoT Edge runtime's environment.
  fs.mkdirSync(path.join(root, "device"));
  fs.writeFileSync(
    path.join(root, "device", "device-agent.yml"),
    edited("device-agent.yml", [
      ...fast,
      ["targets: [edgeHub:9600]", `targets: [127.0.0.1:${closed}]`],
      ["targets: [edgeAgent:9600]", `targets: [127.0.0.1:${closed}]`],
      ...(Object.entries(ports).map(([m, p]) => [
        `targets: [${m}:9600]`,
        `targets: [127.0.0.1:${p}]`,
      ]) as Array<[string, string]>),
      ["http://flotilla-gateway:9090/api/v1/write", `http://127.0.0.1:${gatewayPort}/api/v1/write`],
      ["batch_send_deadline: 10s", "batch_send_deadline: 1s"],
    ]),
  );
  running.push(
    await runPrometheus({
      binary,
      dir: path.join(root, "device"),
      port: agentPort,
      args: [
        "--config.file=device-agent.yml",
        "--enable-feature=agent,expand-external-labels",
        `--storage.agent.path=${path.join(root, "device", "wal")}`,
      ],
      env: { IOTEDGE_DEVICEID: "dev-7", IOTEDGE_IOTHUBHOSTNAME: hub },
    }),
  );

  // A module's own series arrives centrally through both hops, its labels kept, the site added.
  const reconnects = await eventually("the trainer's series at the central server", async () => {
    const r = await query(central, 'flotilla_trainer_reconnects_total{edge_device="dev-7"}');
    return r[0];
  });
  assert.equal(reconnects.value[1], "2");
  assert.equal(reconnects.metric.iothub, hub);
  assert.equal(reconnects.metric.module_name, "trainer");
  assert.equal(reconnects.metric.instance_number, "3f6c");
  assert.equal(reconnects.metric.flotilla_gateway, "gw-1");
  // `up` names its device from the agent's environment (expand-external-labels), and the module from its target.
  // The agent scrapes its targets at different offsets, so the four arrive over one interval: waited for (CI once
  // queried between the trainer's series and the update-queue's).
  const up = await eventually("the four modules' up at the central server", async () => {
    const r = await query(central, 'up{job="flotilla-modules", edge_device="dev-7"}');
    return r.length >= 4 ? r : undefined;
  });
  assert.deepEqual(up.map((s) => s.metric.module_name).sort(), [
    "profiler",
    "quantizer",
    "trainer",
    "update-queue",
  ]);
  for (const s of up) {
    assert.equal(s.value[1], "1");
    assert.equal(s.metric.iothub, hub);
  }
  // The device's runtime targets are down (nothing listens here): that arrives too, as 0.
  const runtime = await eventually("the runtime targets' up at the central server", async () => {
    const r = await query(central, 'up{job="iotedge-runtime", edge_device="dev-7"}');
    return r.length >= 2 ? r : undefined;
  });
  assert.deepEqual(runtime.map((s) => [s.metric.module_name, s.value[1]]).sort(), [
    ["edgeAgent", "0"],
    ["edgeHub", "0"],
  ]);
  // The gateway's own series carry its device id.
  await eventually(
    "the gateway's own up",
    async () => (await query(central, 'up{job="prometheus", edge_device="gw-1"}'))[0],
  );
  // Only what the rules and dashboards use leaves the device: scrape_series_added is dropped on the device.
  await eventually("the six targets' scrape durations at the central server", async () =>
    (await query(central, 'scrape_duration_seconds{edge_device="dev-7"}')).length === 6 ? true : undefined,
  );
  assert.deepEqual(await query(central, 'scrape_series_added{edge_device="dev-7"}'), []);
  // The central rules run over the forwarded series.
  const deviceUp = await eventually(
    "flotilla:device_up:max for dev-7",
    async () => (await query(central, 'flotilla:device_up:max{edge_device="dev-7"}'))[0],
  );
  assert.equal(deviceUp.value[1], "1");
  assert.equal(deviceUp.metric.iothub, hub);
}, 180_000);
