import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { withContext } from "../../helpers/context";
import { createRegistry, startLocalHub } from "../../../local/hub";
import { startQuantizer, type QuantizerState } from "../../../modules/quantizer/src/quantizer";
import { isWritableAck, type WritableAck } from "../../../modules/shared/pnp";
import { ackOf, desire, tempDir, trainerChunks, until } from "../update-queue/helpers";
import { deltaOf, jobsDesired, outputFrames, result, start } from "./support";

/**
 * The quantizer's writable property maxPendingBytes (modules/quantizer/src/model.ts, docs/operations.md
 * "Update-queue and quantizer properties"): acked 200 and applied at once, refused 400 with the reason keeping the
 * last good value; its desired `flotilla` (the Function's codec settings) is never acked.
 */

const MiB = 1024 * 1024;

/** A result frame of about `bytes` bytes, as the trainer's chunks of 100 KB. */
function chunksOf(bytes: number, round: number) {
  const frame = result({ round, delta: deltaOf(Math.floor(bytes / 4), round) });
  return { frame, ...trainerChunks(frame, { jobId: "job-1", round, deviceId: "dev-1" }, 100_000) };
}

test(
  "maxPendingBytes: valid values applied and acked 200, bad ones acked 400 with the reason and the last good value kept; `flotilla` never acked",
  withContext(async (t) => {
    const h = await start(tempDir(t, "flotilla-quant-"), jobsDesired({ "job-1": "int8" }));
    t.after(() => h.quantizer.stop());
    assert.equal(
      h.quantizer.state().config.maxPendingBytes,
      64 * MiB,
      "FLOTILLA_QUANTIZER_MAX_BYTES's default",
    );

    const v1 = desire(h.client, { maxPendingBytes: 8 * MiB });
    assert.deepEqual(await ackOf(h.client, "maxPendingBytes", v1), {
      value: 8 * MiB,
      ac: 200,
      av: v1,
      ad: null,
    });
    assert.equal(h.quantizer.state().config.maxPendingBytes, 8 * MiB);

    for (const [bad, why] of [
      [1000, /maxPendingBytes 1000 is out of range \(1048576 to 1073741824\)/],
      [2 ** 31, /maxPendingBytes 2147483648 is out of range/],
      ["8MiB", /maxPendingBytes must be an integer from 1048576 to 1073741824, not "8MiB"/],
      [1.5 * MiB + 0.5, /maxPendingBytes must be an integer/],
      [{ bytes: 1 }, /maxPendingBytes must be an integer/],
    ] as const) {
      const v = desire(h.client, { maxPendingBytes: bad });
      const ack = await ackOf(h.client, "maxPendingBytes", v);
      assert.equal(ack.ac, 400, JSON.stringify(bad));
      assert.equal(ack.value, 8 * MiB, "the last good value");
      assert.match(ack.ad ?? "", /^E_PROPERTY_INVALID: /);
      assert.match(ack.ad ?? "", why);
      assert.equal(h.quantizer.state().config.maxPendingBytes, 8 * MiB);
    }

    const vu = desire(h.client, { maxBytes: 5 });
    const unknown = await ackOf(h.client, "maxBytes", vu);
    assert.equal(unknown.ac, 400);
    assert.match(
      unknown.ad ?? "",
      /^E_PROPERTY_UNKNOWN: unknown property 'maxBytes' \(known: maxPendingBytes\)$/,
    );

    // The Function's codec settings: applied as before, never acked (the state is reported under the same name).
    desire(h.client, jobsDesired({ "job-1": "fp16" }));
    await until(() => h.quantizer.state().jobs["job-1"] === "fp16", 5000, "the codec change");
    for (const p of h.client.twin.reportedPatches)
      assert.ok(!isWritableAck(p.flotilla), "desired flotilla is not acked");

    // null: back to the default.
    const vn = desire(h.client, { maxPendingBytes: null });
    assert.equal((await ackOf(h.client, "maxPendingBytes", vn)).value, 64 * MiB);
    await until(() => {
      const last = h.client.twin.reportedPatches
        .map((p) => p.flotilla as QuantizerState | undefined)
        .filter((s) => s !== undefined)
        .at(-1);
      return last?.config.maxPendingBytes === 64 * MiB;
    });
  }),
);

test(
  "maxPendingBytes honoured live: lowered, partial updates beyond it are given up oldest first and larger updates refused; raised, they pass",
  withContext(async (t) => {
    const h = await start(tempDir(t, "flotilla-quant-"), {}, { maxChunkBytes: 100_000 });
    t.after(() => h.quantizer.stop());
    // Two partial updates of ~800 KB each, all but their last chunk in: ~1.4 MB held.
    const a = chunksOf(800_000, 1);
    const b = chunksOf(800_000, 2);
    for (const c of a.chunks.slice(0, -1)) h.client.deliver("updates", c.body, c.properties);
    for (const c of b.chunks.slice(0, -1)) h.client.deliver("updates", c.body, c.properties);

    const v = desire(h.client, { maxPendingBytes: MiB });
    assert.equal((await ackOf(h.client, "maxPendingBytes", v)).ac, 200);
    assert.ok(h.logs.some((l) => /maxPendingBytes 1048576: gave up 1 partly received update/.test(l)));
    // The newer one is still held and completes; the older one was given up (its last chunk alone is refused).
    h.client.deliver("updates", b.chunks.at(-1)!.body, b.chunks.at(-1)!.properties);
    await h.quantizer.idle();
    assert.deepEqual(
      outputFrames(h.client).map((o) => o.updateId),
      [b.updateId],
    );
    h.client.deliver("updates", a.chunks.at(-1)!.body, a.chunks.at(-1)!.properties);
    await h.quantizer.idle();
    assert.equal(outputFrames(h.client).length, 1);

    // An update larger than the bound is refused at its first chunk, counted and reported.
    const big = chunksOf(1.5 * MiB, 3);
    const errors = h.quantizer.state().counters.errors;
    h.client.deliver("updates", big.chunks[0].body, big.chunks[0].properties);
    assert.match(h.quantizer.state().lastError ?? "", /^E_QUANT_TOO_LARGE: /);
    assert.equal(h.quantizer.state().counters.errors, errors + 1);

    // Raised: the same update passes.
    desire(h.client, { maxPendingBytes: 4 * MiB });
    for (const c of big.chunks) h.client.deliver("updates", c.body, c.properties);
    await h.quantizer.idle();
    assert.ok(outputFrames(h.client).some((o) => o.updateId === big.updateId));
  }),
);

test(
  "with the real SDK against the local hub: maxPendingBytes acked through the service API's module twin",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {} });
    const registry = createRegistry(hub);
    const client = ModuleClient.fromConnectionString(hub.createModule("edge-1", "quantizer"), Mqtt);
    await client.setOptions({ ca: hub.caCertPem });
    await registry.updateModuleTwin(
      "edge-1",
      "quantizer",
      { properties: { desired: { maxPendingBytes: 16 * MiB, ...jobsDesired({}) } } },
      "*",
    );
    const quantizer = await startQuantizer({
      client: client as never,
      stateDir: tempDir(t, "flotilla-quant-"),
      closeClient: true,
      reportIntervalMs: 50,
      log: () => {},
    });
    t.after(async () => {
      await quantizer.stop();
      await hub.close();
    });
    const reported = async () =>
      (
        (await registry.getModuleTwin("edge-1", "quantizer")).responseBody as unknown as {
          properties: { desired: { $version: number }; reported: Record<string, unknown> };
        }
      ).properties;
    let ack: WritableAck | undefined;
    const v0 = (await reported()).desired.$version;
    await until(() => quantizer.state().config.maxPendingBytes === 16 * MiB, 10_000, "applied");
    for (let i = 0; i < 200 && ack?.av !== v0; i++) {
      const r = (await reported()).reported.maxPendingBytes;
      if (isWritableAck(r)) ack = r;
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.deepEqual(ack, { value: 16 * MiB, ac: 200, av: v0 }, "ad: null removes the key in the twin");

    await registry.updateModuleTwin(
      "edge-1",
      "quantizer",
      { properties: { desired: { maxPendingBytes: -1 } } },
      "*",
    );
    const v1 = (await reported()).desired.$version;
    for (let i = 0; i < 200 && ack?.av !== v1; i++) {
      const r = (await reported()).reported.maxPendingBytes;
      if (isWritableAck(r)) ack = r;
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(ack?.ac, 400);
    assert.equal(ack?.value, 16 * MiB);
    assert.equal(quantizer.state().config.maxPendingBytes, 16 * MiB);
  }),
);
