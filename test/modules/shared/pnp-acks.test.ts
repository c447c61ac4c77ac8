import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { withContext } from "../../helpers/context";
import { createRegistry, startLocalHub, type LocalHub } from "../../../local/hub";
import { isWritableAck, type WritableAck } from "../../../modules/shared/pnp";
import { ModuleHost } from "../../../modules/shared/host";
import { REPORTED_KEY as QUEUE_KEY, startUpdateQueue } from "../../../modules/update-queue/src/main";
import { updateQueueProperties } from "../../../modules/update-queue/src/model";
import { REPORTED_KEY as PROFILER_KEY, startProfiler } from "../../../modules/profiler/src/profiler";
import { benchTrain } from "../../../core/engine/bench";

/**
 * Plug and Play writable-property acknowledgements (modules/shared/pnp.ts, docs/metrics.md "Acknowledgements"):
 * the update-queue's desired maxChunkBytes / resendAfterMs and the profiler's scheduleMinutes / models / model,
 * set through the unmodified azure-iothub Registry against the local hub, are acked by the modules on their
 * unmodified azure-iot-device ModuleClients: 200 applied, 400 refused with the last good value and why, `av` the
 * desired $version.
 */

async function until<T>(probe: () => Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 30));
  }
}

function twinIo(hub: LocalHub, deviceId: string, moduleId: string) {
  const registry = createRegistry({
    serviceConnectionString: hub.serviceConnectionString,
    caCertPem: hub.caCertPem,
  });
  const read = async () =>
    (await registry.getModuleTwin(deviceId, moduleId)).responseBody as unknown as {
      properties: { desired: Record<string, unknown>; reported: Record<string, unknown> };
    };
  return {
    read,
    /** Sets desired properties; resolves with the desired $version after the patch. */
    desire: async (patch: Record<string, unknown>): Promise<number> => {
      await registry.updateModuleTwin(deviceId, moduleId, { properties: { desired: patch } }, "*");
      return (await read()).properties.desired.$version as number;
    },
    /** Waits for the reported ack of `name` answering desired version `av`. */
    ack: (name: string, av: number): Promise<WritableAck> =>
      until(
        async () => {
          const r = (await read()).properties.reported[name];
          return isWritableAck(r) && r.av === av ? r : undefined;
        },
        10_000,
        `the ack of ${name} at version ${av}`,
      ),
  };
}

test(
  "update-queue acks desired maxChunkBytes and resendAfterMs: 200 applied, 400 refused keeping the last good value",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {} });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-pnp-"));
    const client = ModuleClient.fromConnectionString(hub.createModule("edge-1", "update-queue"), Mqtt);
    await client.setOptions({ ca: hub.caCertPem });
    const io = twinIo(hub, "edge-1", "update-queue");
    // Set before the module starts: acked at its first twin read.
    const v0 = await io.desire({ maxChunkBytes: 100_000 });
    const queue = await startUpdateQueue({
      client,
      dir,
      closeClient: true,
      reportIntervalMs: 50,
      log: () => {},
    });
    t.after(async () => {
      await queue.stop();
      await hub.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    assert.deepEqual(await io.ack("maxChunkBytes", v0), { value: 100_000, ac: 200, av: v0 });
    assert.equal(queue.outbox.maxChunkBytes, 100_000);

    // A patch: one good value, one bad one; the bad one is refused and the value in effect stays.
    const v1 = await io.desire({ maxChunkBytes: 12, resendAfterMs: 120_000 });
    const refused = await io.ack("maxChunkBytes", v1);
    assert.equal(refused.ac, 400);
    assert.equal(refused.value, 100_000, "the last good value");
    assert.match(refused.ad ?? "", /^E_PROPERTY_INVALID: maxChunkBytes 12 is out of range \(1024 to /);
    assert.deepEqual(await io.ack("resendAfterMs", v1), { value: 120_000, ac: 200, av: v1 });
    assert.equal(queue.status().config.resendAfterMs, 120_000);
    assert.equal(queue.outbox.maxChunkBytes, 100_000);

    // A wrong type is refused too; then a good value is applied.
    const v2 = await io.desire({ resendAfterMs: "soon" });
    assert.equal((await io.ack("resendAfterMs", v2)).value, 120_000);
    const v3 = await io.desire({ maxChunkBytes: 200_000 });
    assert.deepEqual(await io.ack("maxChunkBytes", v3), { value: 200_000, ac: 200, av: v3 });

    // The queue's own reported status is untouched by the acks (its key is never an ack's).
    const reported = (await io.read()).properties.reported;
    assert.equal(
      (reported[QUEUE_KEY] as { config: { maxChunkBytes: number } }).config.maxChunkBytes,
      200_000,
    );
    const specs = updateQueueProperties({ maxChunkBytes: 1, resendAfterMs: 1, capacityBytes: 1 });
    assert.ok(!(QUEUE_KEY in specs));

    // An unknown property is refused; its ack has no value in effect (null), which the hub's merge patch drops, so
    // the ack read back is {ac, av, ad} and must still read as an acknowledgement.
    const v4 = await io.desire({ maxChunkByte: 1 });
    const unknown = await io.ack("maxChunkByte", v4);
    assert.equal(unknown.ac, 400);
    assert.equal(unknown.value ?? null, null);
    assert.match(unknown.ad ?? "", /^E_PROPERTY_UNKNOWN: unknown property 'maxChunkByte'/);
  }),
);

test(
  "profiler acks desired scheduleMinutes, models and model; jobModels (the Function's) is not acked",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {} });
    const client = ModuleClient.fromConnectionString(hub.createModule("edge-1", "profiler"), Mqtt);
    await client.setOptions({ ca: hub.caCertPem });
    const io = twinIo(hub, "edge-1", "profiler");
    const profiler = await startProfiler({
      client: client as never,
      benchSeconds: 0.1,
      threads: 1,
      dataDir: os.tmpdir(),
      minuteMs: 60_000,
      closeClient: true,
      bench: (o) => benchTrain({ ...o, seconds: 0.1 }),
      log: () => {},
    });
    t.after(async () => {
      await profiler.stop();
      await hub.close();
    });
    const v1 = await io.desire({ scheduleMinutes: 30, models: ["mlp", "autoencoder"] });
    assert.deepEqual(await io.ack("scheduleMinutes", v1), { value: 30, ac: 200, av: v1 });
    assert.deepEqual(await io.ack("models", v1), { value: ["mlp", "autoencoder"], ac: 200, av: v1 });
    assert.equal(profiler.scheduleMinutes(), 30);

    const v2 = await io.desire({ scheduleMinutes: -5, model: "transformer-xl" });
    const schedule = await io.ack("scheduleMinutes", v2);
    assert.equal(schedule.ac, 400);
    assert.equal(schedule.value, 30, "the schedule in effect stays");
    assert.match(schedule.ad ?? "", /0 to 10080/);
    const model = await io.ack("model", v2);
    assert.equal(model.ac, 400);
    assert.match(model.ad ?? "", /unknown model kind/);
    assert.equal(profiler.scheduleMinutes(), 30);

    const v3 = await io.desire({ jobModels: { someJob: null }, scheduleMinutes: null });
    assert.deepEqual(await io.ack("scheduleMinutes", v3), { value: 0, ac: 200, av: v3 });
    const reported = (await io.read()).properties.reported;
    assert.equal(reported.jobModels, undefined, "the Function's jobModels is not acked");
    assert.ok(reported[PROFILER_KEY], "the capabilities stay reported");
  }),
);

test("an acknowledgement under a key the module reports its own state as is refused", async () => {
  const noClient = {} as never;
  const host = new ModuleHost({
    name: "trainer",
    client: noClient,
    log: { log: () => undefined } as never,
    stoppedCode: "E_TRAINER_STOPPED",
    reportedKeys: ["flotilla"],
  });
  assert.throws(() => host.ackDesired({ flotilla: { value: 1, status: 200 } }, 3), { code: "E_INTERNAL" });
  assert.throws(() => host.ackDesired({ $version: { value: 1, status: 200 } }, 3), { code: "E_INTERNAL" });
});
