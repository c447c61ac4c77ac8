import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { withContext } from "../../helpers/context";
import { parseExposition, promtoolCheckMetrics, sampleValue } from "../../helpers/prometheus-text";
import { toLogger } from "../../../core/log";
import { startLocalHub } from "../../../local/hub";
import { loadTrainerConfig } from "../../../modules/trainer/src/config";
import { loadQuantizerConfig } from "../../../modules/quantizer/src/config";
import { loadProfilerConfig } from "../../../modules/profiler/src/config";
import { loadConfig as loadQueueConfig } from "../../../modules/update-queue/src/config";
import { start as startQueueContainer } from "../../../modules/update-queue/src/main";

/**
 * The container entries' metrics: FLOTILLA_METRICS_PORT validated with the module's other settings (a bad one is a
 * coded one-line config error), served on all interfaces with the process's metrics (promtool accepts them), closed
 * on stop; a port in use is logged with E_METRICS and the module runs on.
 */

const CS = "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5";

test("FLOTILLA_METRICS_PORT: default 9600, 0 turns it off, anything else outside 0..65535 is E_CONFIG_INVALID", () => {
  const loaders = [loadTrainerConfig, loadQuantizerConfig, loadProfilerConfig, loadQueueConfig] as const;
  for (const load of loaders) {
    assert.equal(load({ FLOTILLA_CONNECTION_STRING: CS }).metricsPort, 9600);
    assert.equal(load({ FLOTILLA_CONNECTION_STRING: CS, FLOTILLA_METRICS_PORT: "0" }).metricsPort, 0);
    assert.equal(load({ FLOTILLA_CONNECTION_STRING: CS, FLOTILLA_METRICS_PORT: "9700" }).metricsPort, 9700);
    for (const bad of ["65536", "-1", "96OO", "9600.5"]) {
      let err: unknown;
      try {
        load({ FLOTILLA_CONNECTION_STRING: CS, FLOTILLA_METRICS_PORT: bad });
      } catch (e) {
        err = e;
      }
      assert.equal((err as { code?: string })?.code, "E_CONFIG_INVALID", `${load.name} ${bad}`);
      const message = (err as Error).message;
      assert.ok(!message.includes("\n"), "one line");
      assert.match(
        message,
        new RegExp(`FLOTILLA_METRICS_PORT=${bad.replace(".", "\\.")} \\(an integer from 0 to 65535\\)`),
      );
    }
  }
});

async function freePort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, "0.0.0.0", () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

test(
  "the update-queue container entry serves /metrics with process metrics, closes it on stop, and survives a port in use",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {} });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-metrics-entry-"));
    t.after(async () => {
      await hub.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const ca = path.join(dir, "ca.pem");
    fs.writeFileSync(ca, hub.caCertPem);
    const env = (port: number, sub: string) => ({
      FLOTILLA_CONNECTION_STRING: hub.createModule("edge-7", "update-queue"),
      FLOTILLA_CA_CERT: ca,
      FLOTILLA_QUEUE_DIR: path.join(dir, sub),
      FLOTILLA_METRICS_PORT: String(port),
    });
    const lines: string[] = [];
    const log = toLogger((level, message) => lines.push(`${level} ${message}`), "update-queue");

    // Served: the module's metrics with IoT Edge's labels from the connection string, and the process's own.
    const port = await freePort();
    const queue = await startQueueContainer(log, env(port, "a"));
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.equal(promtoolCheckMetrics(text), "");
    const exp = parseExposition(text);
    assert.equal(sampleValue(exp, "flotilla_update_queue_queue_depth", { edge_device: "edge-7" }), 0);
    assert.ok(
      sampleValue(exp, "flotilla_update_queue_process_cpu_seconds_total") !== undefined,
      "process metrics",
    );
    assert.ok(
      exp.samples.every((s) => s.labels.iothub === hub.hubName && s.labels.module_name === "update-queue"),
    );
    await queue.stop();
    await assert.rejects(fetch(`http://127.0.0.1:${port}/metrics`), "closed on stop");

    // A port in use: one E_METRICS line, and the module works on (its twin, its status).
    const taken = http.createServer((_, r) => r.end("someone else"));
    await new Promise<void>((r) => taken.listen(0, "0.0.0.0", () => r()));
    t.after(() => new Promise<void>((r) => taken.close(() => r())));
    const busy = (taken.address() as AddressInfo).port;
    lines.length = 0;
    const queue2 = await startQueueContainer(log, env(busy, "b"));
    try {
      const problems = lines.filter((l) => l.includes("E_METRICS"));
      assert.equal(problems.length, 1, lines.join("\n"));
      assert.match(problems[0], /^error .*E_METRICS: cannot serve metrics on port \d+: .*EADDRINUSE/);
      assert.equal(queue2.status().online, true);
      assert.equal(await (await fetch(`http://127.0.0.1:${busy}/metrics`)).text(), "someone else");
    } finally {
      await queue2.stop();
    }
  }),
);
