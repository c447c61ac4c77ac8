import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { decodeTensor, readEnvelope } from "../../../core/compress";
import type { TrainResultMessage } from "../../../core/protocol/messages";
import { createRegistry, startLocalHub, type D2CEvent, type LocalHub } from "../../../local/hub";
import { startQuantizer, type QuantizerState } from "../../../modules/quantizer/src/quantizer";
import { frameChunks } from "../../../modules/shared/chunks";
import { startUpdateQueue } from "../../../modules/update-queue/src/main";
import { sha256hex, sleep, tempDir, until } from "../update-queue/helpers";
import { assertWithinInt8, decode, deltaOf, failure, jobsDesired, LAYOUT, result } from "./support";

/** The edgeHub routes of the deployment manifest, as the local stack loads them. */
function manifestRoutes(): Record<string, unknown> {
  const file = join(__dirname, "..", "..", "..", "..", "deployment-manifests", "deployment.template.json");
  const manifest = JSON.parse(readFileSync(file, "utf8")) as {
    modulesContent: { $edgeHub: { "properties.desired": { routes: Record<string, unknown> } } };
  };
  return manifest.modulesContent.$edgeHub["properties.desired"].routes;
}

async function open(hub: LocalHub, deviceId: string, moduleId: string): Promise<ModuleClient> {
  const client = ModuleClient.fromConnectionString(hub.createModule(deviceId, moduleId), Mqtt);
  await client.setOptions({ ca: hub.caCertPem });
  return client;
}

test(
  "embedded hub, real SDK clients, manifest routes: trainer chunks → quantizer → update-queue → $upstream",
  withContext(async (t) => {
    const events: D2CEvent[] = [];
    const hub = await startLocalHub({
      routes: manifestRoutes(),
      onEvent: (b) => void events.push(...b),
      log: () => {},
    });
    // One hook: the modules close their clients while the hub is still there (the SDK would retry a close against
    // a gone hub for minutes), in reverse order of start: upstream first.
    const cleanup: (() => Promise<unknown>)[] = [];
    t.after(async () => {
      for (const step of cleanup.reverse()) await step().catch(() => undefined);
      await hub.close();
    });
    const deviceId = "edge-q1";
    // The cloud configures the job before the module starts: read with the first twin GET.
    hub.createModule(deviceId, "quantizer");
    await createRegistry(hub).updateModuleTwin(
      deviceId,
      "quantizer",
      { properties: { desired: jobsDesired({ "job-1": "int8" }) } },
      "*",
    );

    const quiet = (): void => undefined;
    const queue = await startUpdateQueue({
      client: await open(hub, deviceId, "update-queue"),
      dir: tempDir(t, "flotilla-quant-uq-"),
      closeClient: true,
      log: quiet,
    });
    cleanup.push(() => queue.stop());
    const quantizer = await startQuantizer({
      client: await open(hub, deviceId, "quantizer"),
      stateDir: tempDir(t, "flotilla-quant-hub-"),
      closeClient: true,
      reportIntervalMs: 50,
      log: quiet,
    });
    cleanup.push(() => quantizer.stop());
    const trainer = await open(hub, deviceId, "trainer");
    cleanup.push(() => trainer.close());
    await trainer.open();
    assert.deepEqual(quantizer.state().jobs, { "job-1": "int8" });

    // What the trainer module sends: a 600 KB result (three messages), a failure, a result of another job.
    const delta = deltaOf(150_000, 21);
    const big = result({ jobId: "job-1", round: 1, deviceId, delta });
    const fail = failure({ jobId: "job-1", round: 2, deviceId });
    const other = result({ jobId: "job-2", round: 1, deviceId, delta: deltaOf(1000, 22) });
    const sent: { frame: Uint8Array; updateId: string; chunks: number }[] = [];
    for (const [frame, meta] of [
      [big, { jobId: "job-1", round: 1, deviceId }],
      [fail, { jobId: "job-1", round: 2, deviceId }],
      [other, { jobId: "job-2", round: 1, deviceId }],
    ] as const) {
      const { updateId, messages } = frameChunks(frame, meta);
      for (const m of messages) await trainer.sendOutputEvent("updates", m);
      sent.push({ frame, updateId, chunks: messages.length });
    }
    assert.equal(sent[0].chunks, 3);

    // Upstream (the update-queue's D2C chunks): reassembled per updateId.
    const upstream = (): Map<string, D2CEvent[]> => {
      const m = new Map<string, D2CEvent[]>();
      for (const e of events) m.set(e.properties.updateId, [...(m.get(e.properties.updateId) ?? []), e]);
      return m;
    };
    const complete = (): Buffer[] =>
      [...upstream().values()]
        .filter((es) => es.length === Number(es[0].properties.chunkCount))
        .map((es) =>
          Buffer.concat(
            es
              .sort((a, b) => Number(a.properties.chunkIndex) - Number(b.properties.chunkIndex))
              .map((e) => e.body),
          ),
        );
    await until(() => complete().length === 3, 15_000, "three updates upstream");
    const frames = complete();
    for (const f of frames)
      assert.equal(
        sha256hex(f).slice(0, 32),
        upstream().get(sha256hex(f).slice(0, 32))?.[0].properties.updateId,
      );
    for (const e of events) assert.equal(e.systemProperties["iothub-connection-module-id"], "update-queue");

    // The failure and the other job's result passed through unchanged (same updateIds as the trainer's).
    const byId = new Map(frames.map((f) => [sha256hex(f).slice(0, 32), f]));
    assert.ok(byId.get(sent[1].updateId)?.equals(Buffer.from(fail)));
    assert.ok(byId.get(sent[2].updateId)?.equals(Buffer.from(other)));
    assert.equal(byId.has(sent[0].updateId), false, "the raw 600 KB result never reached the queue");
    const compressed = frames.find(
      (f) => !byId.get(sent[1].updateId)?.equals(f) && !byId.get(sent[2].updateId)?.equals(f),
    )!;
    const msg = decode(compressed) as TrainResultMessage;
    assert.equal(msg.jobId, "job-1");
    assert.equal(msg.deviceId, deviceId);
    assert.ok(!(msg.delta instanceof Float32Array));
    assert.equal(readEnvelope(msg.delta.bytes).spec.text, "int8");
    assertWithinInt8(decodeTensor(msg.delta.bytes, { layoutHash: LAYOUT, length: delta.length }), delta);
    assert.ok(
      compressed.byteLength < big.byteLength * 0.3,
      `${compressed.byteLength} of ${big.byteLength} bytes`,
    );
    assert.equal(
      queue.status().counters.enqueued,
      3,
      "the update-queue got each update once, from the quantizer",
    );
    assert.equal(queue.status().counters.duplicates, 0);

    // The quantizer's reported state reaches its module twin.
    await until(() => quantizer.state().counters.passthrough === 2, 5000, "counters");
    const registry = createRegistry(hub);
    let reported: QuantizerState | undefined;
    for (const deadline = Date.now() + 5000; ; await sleep(50)) {
      const twin = (await registry.getModuleTwin(deviceId, "quantizer")).responseBody;
      reported = (twin.properties.reported as { flotilla?: QuantizerState }).flotilla;
      if (reported?.counters.compressed === 1 && reported.counters.passthrough === 2) break;
      assert.ok(Date.now() < deadline, `reported counters: ${JSON.stringify(reported?.counters)}`);
    }
    assert.deepEqual(reported!.jobs, { "job-1": "int8" });
    assert.equal(reported!.status, "running");
  }),
  20_000,
);
