import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { ModelSpec } from "../../../core/engine/model-spec";
import type { MetricsEndpoint } from "../../../modules/shared/metrics";
import {
  parseExposition,
  promtoolCheckMetrics,
  sampleValue,
  type Exposition,
} from "../../helpers/prometheus-text";
import { deviceName } from "../../../local/sim/data";
import { documentedMetrics } from "../../helpers/metrics-doc";
import { api, startDevice, startFaultFleet, stopFaultFleet, waitFor, waitJobDone } from "./fault-support";

/**
 * The modules' Prometheus metrics on the local stack (docs/metrics.md): after a compressed two-round job over
 * in-process devices and one device in a child process, every module instance's /metrics passes
 * `promtool check metrics`, carries IoT Edge's labels, and its counters and histograms show the work done.
 */

const MODULES = ["trainer", "quantizer", "update-queue", "profiler"];

async function scrape(e: MetricsEndpoint): Promise<{ text: string; exp: Exposition }> {
  const res = await fetch(e.url);
  assert.equal(res.status, 200, `${e.deviceId}/${e.module}: GET ${e.url}`);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  return { text, exp: parseExposition(text) };
}

test("every module instance of the local stack serves metrics promtool accepts, with the work of a round in them", async () => {
  const external = deviceName(2, 3);
  const f = await startFaultFleet(3, 30, { externalDevices: [external] });
  try {
    // Two devices in the stack's process, the third in its own (local/stack/device-process.ts).
    const proc = await startDevice(f, external);
    const ids = f.deviceIds;
    const endpoints = [...f.stack.metricsEndpoints(), ...proc.metricsEndpoints()];
    assert.equal(f.stack.metricsEndpoints().length, 4 * 2);
    for (const id of ids)
      assert.deepEqual(
        endpoints.filter((e) => e.deviceId === id).map((e) => e.module),
        MODULES,
        `${id}'s endpoints`,
      );
    assert.equal(new Set(endpoints.map((e) => e.url)).size, endpoints.length, "one port per module instance");
    for (const e of endpoints) assert.match(e.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);

    const spec: ModelSpec = { ...(f.data.spec as ModelSpec & { kind: "mlp" }), hidden: [16] };
    await api(f.stack.host.url, "POST", "jobs", {
      jobId: "metered",
      modelSpec: spec,
      strategy: "fedavg",
      strategyOptions: { clientsPerRound: ids.length, fit: { epochs: 1, batchSize: 10, lr: 0.05 }, seed: 7 },
      rounds: 2,
      roundDeadlineSeconds: 60,
      minCompletedFraction: 1,
      seed: 7,
      compression: "topk:0.1+int8",
    });
    await api(f.stack.host.url, "POST", "jobs/metered/start");
    const doc = await waitJobDone(f, "metered", 240_000);
    assert.equal(doc.status, "completed", JSON.stringify(doc.rounds));

    // The trainer evaluates round 1's ONNX model after round 2's update is out: wait for it on every device.
    const trainers = endpoints.filter((e) => e.module === "trainer");
    await waitFor(
      "the ONNX evaluation of every trainer",
      async () => {
        for (const e of trainers) {
          const { exp } = await scrape(e);
          if (
            (sampleValue(exp, "flotilla_trainer_onnx_inference_seconds_count", { kind: "evaluate" }) ?? 0) < 1
          )
            return false;
        }
        return true;
      },
      60_000,
      200,
      f.logs,
    );

    const documented = documentedMetrics();
    for (const e of endpoints) {
      const { text, exp } = await scrape(e);
      const where = `${e.deviceId}/${e.module}`;
      assert.equal(promtoolCheckMetrics(text), "", `${where}: promtool check metrics`);
      const prefix = `flotilla_${e.module.replace("-", "_")}_`;
      for (const s of exp.samples) {
        assert.ok(s.name.startsWith(prefix), `${where}: ${s.name} has the module's prefix`);
        assert.equal(s.labels.iothub, f.stack.hub.hubName, `${where}: ${s.name} iothub`);
        assert.equal(s.labels.edge_device, e.deviceId, `${where}: ${s.name} edge_device`);
        assert.match(
          s.labels.instance_number ?? "",
          /^[0-9a-f-]{36}$/,
          `${where}: ${s.name} instance_number`,
        );
        assert.equal(s.labels.module_name, e.module, `${where}: ${s.name} module_name`);
      }
      // Every family served is documented in docs/metrics.md, and every metric documented as always present is.
      const docs = documented.filter((d) => d.module === e.module);
      for (const family of exp.types.keys())
        assert.ok(
          docs.some((d) => d.name === family),
          `${where}: ${family} is not in docs/metrics.md`,
        );
      for (const d of docs.filter((x) => x.always)) {
        const sample = d.type === "histogram" ? `${d.name}_count` : d.name;
        assert.ok(
          exp.samples.some((x) => x.name === sample),
          `${where}: no ${sample}`,
        );
      }
      const v = (name: string, labels?: Record<string, string>): number =>
        sampleValue(exp, prefix + name, labels) ?? NaN;
      assert.equal(v("link_up"), 1, `${where}: link up`);
      assert.ok(v("reported_patches_total") >= 1, `${where}: reported patches`);
      if (e.module === "trainer") {
        assert.equal(v("rounds_started_total"), 2, where);
        assert.equal(v("rounds_completed_total"), 2, where);
        assert.equal(v("training_seconds_count"), 2, where);
        assert.ok(v("samples_per_second") > 0, where);
        assert.ok(v("local_loss") > 0 && v("local_accuracy") > 0, where);
        assert.ok(v("model_download_bytes_total") > 0 && v("model_download_seconds_count") >= 1, where);
        assert.ok(v("onnx_inference_seconds_count", { kind: "evaluate" }) >= 1, where);
        // The startRound orders of this job come through the module twin: no method call was needed.
      } else if (e.module === "quantizer") {
        assert.equal(v("updates_total", { outcome: "compressed" }), 2, where);
        assert.equal(v("encode_seconds_count"), 2, where);
        assert.ok(v("bytes_in_total") > v("bytes_out_total") && v("bytes_out_total") > 0, where);
        assert.ok(v("compression_ratio") > 2 && v("compression_ratio_updates_count") === 2, where);
      } else if (e.module === "update-queue") {
        assert.equal(v("sends_total"), 2, where);
        assert.equal(v("acks_total"), 2, where);
        assert.equal(v("queue_depth"), 0, where);
        assert.equal(v("oldest_update_age_seconds"), 0, where);
        assert.ok(v("disk_free_bytes") > 0, where);
        assert.equal(v("drops_total", { reason: "overflow" }), 0, where);
        assert.equal(v("quarantines_total"), 0, where);
      } else {
        assert.ok(v("measurements_total") >= 1, where);
        assert.ok(v("samples_per_second", { model: "mlp" }) > 0, where);
        assert.ok(v("memory_bytes") > 0 && v("measured_timestamp_seconds") > 1.7e9, where);
      }
    }
    // A device process closes its endpoints when it stops.
    await proc.stop();
    await assert.rejects(fetch(proc.metricsEndpoints()[0].url));
  } finally {
    await stopFaultFleet(f);
  }
  // The stack closes its own.
  await assert.rejects(fetch(f.stack.metricsEndpoints()[0].url));
});
