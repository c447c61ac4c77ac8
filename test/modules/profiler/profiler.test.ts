import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import * as os from "node:os";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { benchTrain, type BenchTrainOptions } from "../../../core/engine/bench";
import { createRegistry, createServiceClient, startLocalHub } from "../../../local/hub";
import { loadProfilerConfig } from "../../../modules/profiler/src/config";
import { startProfiler, type Capabilities } from "../../../modules/profiler/src/profiler";

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function assertSane(c: Capabilities): void {
  assert.ok(c.samplesPerSecond.mlp > 0, `mlp samples/s ${c.samplesPerSecond.mlp}`);
  assert.equal(c.memoryBytes, os.totalmem());
  assert.ok(c.freeMemoryBytes > 0 && c.freeMemoryBytes <= c.memoryBytes);
  assert.ok(c.freeDiskBytes !== null && c.freeDiskBytes > 0);
  assert.ok(c.rttMs !== null && c.rttMs > 0 && Number.isFinite(c.rttMs), `rtt ${c.rttMs}`);
  assert.ok(c.uplinkBytesPerSecond !== null && c.uplinkBytesPerSecond > 0);
  assert.ok(c.uptimeSeconds > 0);
  assert.ok(c.availability > 0.5 && c.availability <= 1, `availability ${c.availability}`);
  assert.ok(Date.now() - Date.parse(c.measuredAt) < 60_000);
}

test(
  "profiler against the local hub: capabilities on start, `profile` method, rescheduling",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {} });
    let stopProfiler: () => Promise<void> = async () => {};
    // The client closes before the hub (t.after hooks run first-in first-out).
    t.after(async () => {
      await stopProfiler();
      await hub.close();
    });
    const info = { serviceConnectionString: hub.serviceConnectionString, caCertPem: hub.caCertPem };
    const registry = createRegistry(info);
    const service = createServiceClient(info);
    const client = ModuleClient.fromConnectionString(hub.createModule("edge-1", "profiler"), Mqtt);
    await client.setOptions({ ca: hub.caCertPem });

    const benches: BenchTrainOptions[] = [];
    const profiler = await startProfiler({
      client: client as never,
      benchSeconds: 0.2,
      threads: 1,
      dataDir: os.tmpdir(),
      minuteMs: 150,
      closeClient: true,
      // The real benchmark, counted.
      bench: (o) => {
        benches.push(o);
        return benchTrain(o);
      },
      log: () => {},
    });
    stopProfiler = () => profiler.stop();

    // On start: measured and reported.
    const first = profiler.last();
    assert.ok(first);
    assertSane(first);
    assert.deepEqual(
      benches.map((b) => b.model),
      ["mlp"],
    );
    assert.equal(benches[0].seconds, 0.2);
    // The thread count is passed to the benchmark and reported with the rates it measured.
    assert.equal(benches[0].threads, 1);
    assert.equal(first.threads, 1);
    const twin = (await registry.getModuleTwin("edge-1", "profiler")).responseBody;
    const reported = twin.properties.reported.capabilities as Capabilities;
    assert.deepEqual(reported.samplesPerSecond, first.samplesPerSecond);
    assert.equal(reported.measuredAt, first.measuredAt);
    assert.equal(reported.threads, 1);

    // The `profile` method re-measures and answers with the capabilities.
    const r = await service.invokeDeviceMethod("edge-1", "profiler", {
      methodName: "profile",
      payload: {},
      responseTimeoutInSeconds: 30,
    });
    assert.equal(r.result.status, 200);
    const caps = r.result.payload as Capabilities;
    assertSane(caps);
    assert.ok(caps.measuredAt >= first.measuredAt);
    assert.equal(benches.length, 2);
    assert.deepEqual(profiler.last(), caps);

    // Desired scheduleMinutes (1 "minute" = 150 ms here) starts periodic measurements; 0 stops them; models follow desired.
    await registry.updateModuleTwin(
      "edge-1",
      "profiler",
      { properties: { desired: { scheduleMinutes: 1, models: ["mlp", "autoencoder"] } } },
      "*",
    );
    await until(() => profiler.scheduleMinutes() === 1, 5000, "schedule applied");
    const n = benches.length;
    await until(() => benches.length >= n + 4, 15_000, "two scheduled measurements");
    assert.ok(benches.slice(n).some((b) => b.model === "autoencoder"));
    await registry.updateModuleTwin(
      "edge-1",
      "profiler",
      { properties: { desired: { scheduleMinutes: 0 } } },
      "*",
    );
    await until(() => profiler.scheduleMinutes() === 0, 5000, "schedule stopped");
    await profiler.measure().catch(() => undefined); // let a measurement in flight finish
    const m = benches.length;
    await new Promise((res) => setTimeout(res, 700));
    assert.equal(benches.length, m, "no measurement after scheduleMinutes = 0");
    const after = (await registry.getModuleTwin("edge-1", "profiler")).responseBody;
    assert.ok((after.properties.reported.capabilities as Capabilities).samplesPerSecond.autoencoder > 0);
  }),
);

test("profiler configuration names what is missing or invalid", () => {
  assert.throws(() => loadProfilerConfig({}), /E_CONFIG_MISSING|FLOTILLA_CONNECTION_STRING/);
  const cs = "HostName=h.azure-devices.net;DeviceId=d1;ModuleId=profiler;SharedAccessKey=aGk=";
  assert.throws(
    () => loadProfilerConfig({ FLOTILLA_CONNECTION_STRING: cs, FLOTILLA_BENCH_SECONDS: "zero" }),
    /FLOTILLA_BENCH_SECONDS=zero/,
  );
  assert.throws(
    () => loadProfilerConfig({ EdgeHubConnectionString: "", IOTEDGE_MODULEID: "p" }),
    /IOTEDGE_WORKLOADURI/,
  );
  assert.equal(loadProfilerConfig({ FLOTILLA_CONNECTION_STRING: cs }).benchSeconds, 5);
});

test(
  "profiler benchmarks a job's own model spec from desired jobModels and reports it under the job's modelKey",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {} });
    let stopProfiler: () => Promise<void> = async () => {};
    t.after(async () => {
      await stopProfiler();
      await hub.close();
    });
    const info = { serviceConnectionString: hub.serviceConnectionString, caCertPem: hub.caCertPem };
    const registry = createRegistry(info);
    const client = ModuleClient.fromConnectionString(hub.createModule("edge-2", "profiler"), Mqtt);
    await client.setOptions({ ca: hub.caCertPem });
    const benches: BenchTrainOptions[] = [];
    const profiler = await startProfiler({
      client: client as never,
      benchSeconds: 0.2,
      dataDir: os.tmpdir(),
      closeClient: true,
      bench: (o) => {
        benches.push(o);
        return benchTrain(o);
      },
      log: () => {},
    });
    stopProfiler = () => profiler.stop();
    assert.deepEqual(Object.keys(profiler.last()!.samplesPerSecond), ["mlp"]);
    // A job's model: an mlp on 24 sensor features with other hidden sizes, keyed by the job's modelKey.
    const spec = { kind: "mlp", inputShape: [24], numClasses: 4, hidden: [16, 8] };
    await registry.updateModuleTwin(
      "edge-2",
      "profiler",
      { properties: { desired: { jobModels: { "sensors-small": spec, broken: { kind: "nope" } } } } },
      "*",
    );
    await until(
      () => profiler.last()?.samplesPerSecond["sensors-small"] !== undefined,
      30_000,
      "the job's key",
    );
    const c = profiler.last()!;
    assert.ok(c.samplesPerSecond["sensors-small"] > 0);
    assert.equal(c.samplesPerSecond.broken, undefined, "an invalid spec is skipped");
    const run = benches.find((b) => b.model === "sensors-small");
    assert.deepEqual(run?.spec, spec, "the job's spec itself was benchmarked");
    const r = await benchTrain({ model: "x", spec: spec as never, batchSize: 8, seconds: 0.1 });
    assert.equal(r.params, 24 * 16 + 16 + 16 * 8 + 8 + 8 * 4 + 4, "benchTrain built the given spec");
    // The report reaches the hub under the job's key.
    const twin = (await registry.getModuleTwin("edge-2", "profiler")).responseBody as unknown as {
      properties: { reported: { capabilities?: Capabilities } };
    };
    assert.ok((twin.properties.reported.capabilities?.samplesPerSecond["sensors-small"] ?? 0) > 0);
  }),
);

test(
  "profiler properties (modules/profiler/src/model.ts): refused values keep the last good one, which a restart restores",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {} });
    const stops: (() => Promise<void>)[] = [];
    t.after(async () => {
      for (const s of stops.reverse()) await s().catch(() => undefined);
      await hub.close();
    });
    const info = { serviceConnectionString: hub.serviceConnectionString, caCertPem: hub.caCertPem };
    const registry = createRegistry(info);
    const connection = hub.createModule("edge-3", "profiler");
    const benches: BenchTrainOptions[] = [];
    const startOne = async () => {
      const client = ModuleClient.fromConnectionString(connection, Mqtt);
      await client.setOptions({ ca: hub.caCertPem });
      const p = await startProfiler({
        client: client as never,
        benchSeconds: 0.05,
        threads: 1,
        dataDir: os.tmpdir(),
        minuteMs: 60_000,
        closeClient: true,
        bench: (o) => {
          benches.push(o);
          return benchTrain({ ...o, seconds: 0.05 });
        },
        log: () => {},
      });
      stops.push(() => p.stop());
      return p;
    };
    const desire = async (desired: Record<string, unknown>): Promise<number> => {
      await registry.updateModuleTwin("edge-3", "profiler", { properties: { desired } }, "*");
      const twin = (await registry.getModuleTwin("edge-3", "profiler")).responseBody;
      return twin.properties.desired.$version as number;
    };
    const ack = async (name: string, av: number) => {
      let a: { value?: unknown; ac?: number; av?: number; ad?: string } | undefined;
      const end = Date.now() + 10_000;
      for (;;) {
        const twin = (await registry.getModuleTwin("edge-3", "profiler")).responseBody;
        a = twin.properties.reported[name] as typeof a;
        if (a?.av === av) return a;
        if (Date.now() > end) throw new Error(`no ack of ${name} at ${av}: ${JSON.stringify(a)}`);
        await new Promise((r) => setTimeout(r, 30));
      }
    };

    const first = await startOne();
    const v1 = await desire({ scheduleMinutes: 30, models: [], model: "autoencoder" });
    assert.deepEqual(await ack("scheduleMinutes", v1), { value: 30, ac: 200, av: v1 });
    assert.deepEqual(await ack("model", v1), { value: "autoencoder", ac: 200, av: v1 });
    // The next measurement benchmarks the kind in `model` (models is empty).
    const n = benches.length;
    await first.measure();
    assert.deepEqual(
      benches.slice(n).map((b) => b.model),
      ["autoencoder"],
    );
    const v2 = await desire({ models: ["mlp", "resnet"] });
    const models = await ack("models", v2);
    assert.equal(models.ac, 400);
    assert.deepEqual(models.value, [], "the last good value");
    assert.match(models.ad ?? "", /^E_PROPERTY_INVALID: models\[1\]: unknown model kind "resnet"/);
    await first.stop();

    // While it is down the operator sets an invalid schedule: the restarted profiler keeps the last good one.
    const v3 = await desire({ scheduleMinutes: "hourly" });
    const second = await startOne();
    const schedule = await ack("scheduleMinutes", v3);
    assert.equal(schedule.ac, 400);
    assert.equal(schedule.value, 30);
    assert.match(schedule.ad ?? "", /scheduleMinutes must be a number from 0 to 10080/);
    assert.equal(second.scheduleMinutes(), 30, "the restored schedule is running");
    // Its measurements still carry the free disk and memory the cloud's policy check reads.
    const caps = second.last()!;
    assert.ok(caps.freeDiskBytes !== null && caps.freeDiskBytes > 0);
    assert.ok(caps.freeMemoryBytes > 0);
  }),
);
