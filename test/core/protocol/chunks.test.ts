import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Mqtt } from "azure-iot-device-mqtt";
import {
  assembleFrame,
  checkChunkBody,
  CHUNK_ERROR_CODES,
  ChunkError,
  D2C_MAX_MESSAGE_BYTES,
  DEFAULT_CHUNK_BYTES,
  FLOTILLA_FRAME_CONTENT_TYPE,
  FrameAssembler,
  MAX_CHUNK_BYTES,
  parseChunkProperties,
  PROPERTY_RESERVE_BYTES,
  sha256Hex,
  splitFrame,
  type ChunkMeta,
  type ChunkRejection,
} from "../../../core/protocol/chunks";
import { encodeMessage } from "../../../core/protocol/messages";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import * as sharedChunks from "../../../modules/shared/chunks";
import { Reassembler } from "../../../modules/shared/reassembly";
import * as outbox from "../../../modules/update-queue/src/outbox";
import { toMessage } from "../../../modules/update-queue/src/main";
import { loadTrainerConfig } from "../../../modules/trainer/src/config";
import { loadQuantizerConfig } from "../../../modules/quantizer/src/config";
import { MAX_CHUNK_BODY, parseChunkProps, type IngestEvent } from "../../../cloud/aggregator/src/ingest";
import { D2C_MAX_BYTES } from "../../../local/hub/mqtt-broker";
import { classifyPublish, parsePropertyBag } from "../../../local/hub/topics";
import { codeOf, tempDir } from "../../modules/update-queue/helpers";
import { makeDelta, SPEC, startJob, world } from "../../cloud/aggregator/support";

const META = { jobId: "job-1", round: 2, deviceId: "dev-1" };
const CTX = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 17) & 0xff;
  return b;
}

function reasonOf(fn: () => unknown): ChunkRejection | "none" {
  try {
    fn();
  } catch (e) {
    if (e instanceof ChunkError) return e.reason;
    throw e;
  }
  return "none";
}

/** The ingest counter a Function rejection was counted under (its internal Reject carries `counter`). */
function ingestCounterOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return String((e as { counter?: unknown }).counter);
  }
  return "none";
}

test("round trip: split, parse every chunk's properties, reassemble in any order; upstream chunks carry chunkSha256", () => {
  const frame = bytes(2500);
  for (const upstream of [false, true]) {
    const { updateId, sha256, chunks } = splitFrame(frame, META, { maxChunkBytes: 1000, upstream });
    assert.equal(sha256, sha256Hex(frame));
    assert.equal(updateId, sha256.slice(0, 32));
    assert.deepEqual(
      chunks.map((c) => [c.messageId, c.body.byteLength]),
      [
        [`${updateId}:0`, 1000],
        [`${updateId}:1`, 1000],
        [`${updateId}:2`, 500],
      ],
    );
    const parsed: { body: Uint8Array; meta: ChunkMeta }[] = chunks
      .map((c) => ({ body: c.body, meta: parseChunkProperties(c.properties) }))
      .reverse();
    for (const p of parsed) checkChunkBody(p.body, p.meta);
    assert.deepEqual(parsed[0].meta, {
      ...META,
      updateId,
      chunkIndex: 2,
      chunkCount: 3,
      size: 2500,
      sha256,
      ...(upstream ? { chunkSha256: sha256Hex(chunks[2].body) } : {}),
    });
    assert.equal(
      chunks[0].properties["flotilla-content-type"],
      upstream ? FLOTILLA_FRAME_CONTENT_TYPE : undefined,
    );
    const ordered = [...parsed].sort((a, b) => a.meta.chunkIndex - b.meta.chunkIndex).map((p) => p.body);
    assert.deepEqual(assembleFrame(ordered, parsed[0].meta), frame);
    assert.equal(
      reasonOf(() => assembleFrame([ordered[1], ordered[0], ordered[2]], parsed[0].meta)),
      "hash",
    );
    assert.equal(
      reasonOf(() => assembleFrame(ordered.slice(0, 2), parsed[0].meta)),
      "hash",
    );
    // Chunk by chunk (as the Function reads them from blob storage): bytes past the announced size are refused.
    const asm = new FrameAssembler(parsed[0].meta);
    asm.add(ordered[0]);
    asm.add(ordered[1]);
    assert.equal(
      reasonOf(() => asm.add(bytes(501))),
      "hash",
    );
    asm.add(ordered[2]);
    assert.deepEqual(asm.finish(), frame);
  }
  // One chunk for a small frame; the default chunk size is 255,000 bytes.
  assert.equal(splitFrame(bytes(10), META).chunks.length, 1);
  assert.equal(splitFrame(bytes(DEFAULT_CHUNK_BYTES + 1), META).chunks.length, 2);
});

test(
  "the size limit: a maximal chunk with maximal properties fits 256 KB as the local hub counts it; max + 1 is refused",
  withContext((t) => {
    assert.equal(MAX_CHUNK_BYTES, D2C_MAX_MESSAGE_BYTES - PROPERTY_RESERVE_BYTES);
    assert.equal(D2C_MAX_MESSAGE_BYTES, D2C_MAX_BYTES);
    // The largest valid properties: ids at their byte limit with every byte %-encoded, 15-digit integers.
    const deviceId = "%".repeat(128);
    const { chunks } = splitFrame(
      bytes(MAX_CHUNK_BYTES),
      { ...META, deviceId, jobId: "é".repeat(64) },
      {
        maxChunkBytes: MAX_CHUNK_BYTES,
        updateId: ":".repeat(100),
        upstream: true,
      },
    );
    const big = "999999999999999";
    const properties = { ...chunks[0].properties, round: "2147483647", chunkIndex: "999999999999998" };
    Object.assign(properties, { chunkCount: big, size: big });
    const meta = parseChunkProperties(properties); // still valid by the contract
    checkChunkBody(chunks[0].body, meta);
    const msg = toMessage({
      body: Buffer.from(chunks[0].body),
      messageId: `${":".repeat(100)}:${big}`,
      properties: properties as outbox.ChunkProperties,
    });
    // The SDK's own MQTT topic for a module output, cut the way the local hub's broker cuts it.
    const topicOf = (
      Mqtt.prototype as unknown as { _getEventTopicFromMessage: (m: unknown, p: unknown) => string }
    )._getEventTopicFromMessage;
    const topic = topicOf.call(
      { _topicTelemetryPublish: `devices/${deviceId}/modules/update-queue/messages/events/` },
      msg,
      { "$.on": "upstream" },
    );
    const id = { deviceId, moduleId: "update-queue", clientId: `${deviceId}/update-queue` };
    const c = classifyPublish(id, topic);
    assert.equal(c.kind, "telemetry");
    const bag = c.kind === "telemetry" ? c.bag : "";
    // The local hub reads back exactly the properties that were sent.
    assert.deepEqual({ ...parsePropertyBag(bag).app }, properties);
    const bagBytes = Buffer.byteLength(bag);
    // The reserve (one 4 KB meter unit) covers the largest property bag, with room to spare.
    assert.ok(bagBytes <= PROPERTY_RESERVE_BYTES, `${bagBytes} bytes of properties`);
    assert.ok(msg.getBytes().byteLength + bagBytes <= D2C_MAX_BYTES);
    // The default chunk with the largest properties is billed 63 meter units of 4 KB, not 64.
    assert.ok(DEFAULT_CHUNK_BYTES + bagBytes <= 63 * 4096);

    // One byte more is refused by the contract (sender and receiver), the modules and the Function.
    assert.equal(
      reasonOf(() => splitFrame(bytes(10), META, { maxChunkBytes: MAX_CHUNK_BYTES + 1 })),
      "oversized",
    );
    const over = bytes(MAX_CHUNK_BYTES + 1);
    const overMeta = { ...meta, chunkIndex: 0, chunkCount: 2, size: 2 * MAX_CHUNK_BYTES, updateId: "u-1" };
    delete (overMeta as { chunkSha256?: string }).chunkSha256;
    assert.equal(
      reasonOf(() => checkChunkBody(over, overMeta)),
      "oversized",
    );
    assert.equal(
      codeOf(() => new Reassembler().add(over, overMeta)),
      "E_QUANT_CHUNK",
    );
    const dir = tempDir(t, "flotilla-chunks-");
    assert.equal(
      codeOf(() => new outbox.Outbox(join(dir, "q.sqlite"), { maxChunkBytes: MAX_CHUNK_BYTES + 1 })),
      "E_QUEUE_CONFIG",
    );
    for (const load of [loadTrainerConfig, loadQuantizerConfig]) {
      const env = {
        FLOTILLA_CONNECTION_STRING: "HostName=h.azure-devices.net;DeviceId=d;ModuleId=m;SharedAccessKey=aGk=",
      };
      assert.equal(
        load({ ...env, FLOTILLA_MAX_CHUNK_BYTES: String(MAX_CHUNK_BYTES) }).maxChunkBytes,
        MAX_CHUNK_BYTES,
      );
      assert.throws(() => load({ ...env, FLOTILLA_MAX_CHUNK_BYTES: String(MAX_CHUNK_BYTES + 1) }));
    }
  }),
);

test(
  "bad properties and bodies: each refused with its reason, counted alike by the Function and coded by the modules",
  withContext((t) => {
    const frame = bytes(2000);
    const { chunks } = splitFrame(frame, META, { maxChunkBytes: 1000, upstream: true });
    const good = chunks[0].properties;
    const body = chunks[0].body;
    /** [what, patch, also sent to the modules (whose property bag is string-only)] */
    const cases: [string, Record<string, unknown>, boolean?][] = [
      ["jobId missing", { jobId: undefined }],
      ["jobId empty", { jobId: "" }],
      ["jobId too long", { jobId: "j".repeat(129) }],
      ["deviceId with a control character", { deviceId: "a\nb" }],
      ["round not a number", { round: "two" }],
      ["round negative", { round: "-1" }],
      ["round too large", { round: String(2 ** 31) }],
      ["updateId with a space", { updateId: "has space" }],
      ["updateId too long", { updateId: "u".repeat(101) }],
      ["chunkIndex ≥ chunkCount", { chunkIndex: "2" }],
      ["chunkCount 0", { chunkCount: "0" }],
      ["chunkCount more than size", { size: "1" }],
      [
        "size beyond chunkCount × max",
        { chunkCount: "1", chunkIndex: "0", size: String(MAX_CHUNK_BYTES + 1) },
      ],
      ["size not an integer", { size: "1e3" }],
      ["sha256 not hex", { sha256: "xyz" }],
      ["chunkSha256 not hex", { chunkSha256: "abc" }],
      ["an object, not a string", { jobId: { toString: () => "job-1" } }, false],
    ];
    const expected: Record<ChunkRejection, { ingest: string; quant: string; queue: string }> = {
      malformed: { ingest: "rejected_malformed", quant: "E_QUANT_CHUNK", queue: "E_QUEUE_INVALID" },
      oversized: { ingest: "rejected_oversized", quant: "E_QUANT_CHUNK", queue: "E_QUEUE_INVALID" },
      hash: { ingest: "rejected_hash", quant: "E_QUANT_CHECKSUM", queue: "E_QUEUE_CHECKSUM" },
    };
    const r = new Reassembler();
    const box = new outbox.Outbox(join(tempDir(t, "flotilla-chunks-"), "q.sqlite"));
    try {
      for (const [what, patch, modules = true] of cases) {
        const props: Record<string, unknown> = { ...good, ...patch };
        for (const [k, v] of Object.entries(patch)) if (v === undefined) delete props[k];
        assert.equal(
          reasonOf(() => parseChunkProperties(props)),
          "malformed",
          what,
        );
        assert.equal(
          ingestCounterOf(() => parseChunkProps(props)),
          expected.malformed.ingest,
          what,
        );
        try {
          parseChunkProperties(props);
        } catch (e) {
          assert.equal((e as ChunkError).code, CHUNK_ERROR_CODES.malformed);
        }
        // The modules read the same properties leniently and refuse them when they stage the chunk.
        const lenient = sharedChunks.inputChunkMeta(
          toMessage({ body: Buffer.from(body), messageId: "m", properties: stringProps(props) }),
        );
        assert.ok(lenient || !modules, what);
        if (lenient && modules) {
          assert.equal(
            codeOf(() => r.add(body, lenient)),
            expected.malformed.quant,
            what,
          );
          assert.equal(
            codeOf(() => box.stageChunk(body, lenient)),
            expected.malformed.queue,
            what,
          );
        }
      }
      const meta = parseChunkProperties(good);
      const bodyCases: [string, unknown, ChunkRejection][] = [
        ["empty body", new Uint8Array(0), "malformed"],
        ["not bytes", "text", "malformed"],
        ["larger than its update", bytes(2001), "malformed"],
        ["over the maximum", bytes(MAX_CHUNK_BYTES + 1), "oversized"],
        ["not matching chunkSha256", bytes(1000, 9), "hash"],
      ];
      for (const [what, b, reason] of bodyCases) {
        const m = reason === "oversized" ? { ...meta, chunkCount: 2, size: 2 * MAX_CHUNK_BYTES } : meta;
        assert.equal(
          reasonOf(() => checkChunkBody(b, m)),
          reason,
          what,
        );
        if (b instanceof Uint8Array && b.byteLength > 0)
          assert.equal(
            codeOf(() => r.add(b, m)),
            expected[reason].quant,
            what,
          );
      }
      // A polluted Object.prototype never fills in a missing property.
      const proto = Object.prototype as Record<string, unknown>;
      proto.deviceId = "victim";
      try {
        const { deviceId: _omit, ...withoutDevice } = good;
        assert.equal(
          reasonOf(() => parseChunkProperties(withoutDevice)),
          "malformed",
        );
        assert.equal(
          sharedChunks.inputChunkMeta(
            toMessage({
              body: Buffer.from(body),
              messageId: "m",
              properties: withoutDevice as outbox.ChunkProperties,
            }),
          )?.deviceId,
          "",
        );
      } finally {
        delete proto.deviceId;
      }
    } finally {
      box.close();
    }
  }),
);

function stringProps(p: Record<string, unknown>): outbox.ChunkProperties {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(p)) out[k] = String(v);
  return out as outbox.ChunkProperties;
}

test(
  "the modules and the Function share one contract: the same constants, and each accepts what the other sends",
  withContext(async (t) => {
    // The same values, imported from one place.
    assert.equal(outbox.MAX_CHUNK_BYTES, MAX_CHUNK_BYTES);
    assert.equal(outbox.DEFAULT_MAX_CHUNK_BYTES, DEFAULT_CHUNK_BYTES);
    assert.equal(outbox.D2C_MAX_MESSAGE_BYTES, D2C_MAX_MESSAGE_BYTES);
    assert.equal(outbox.FLOTILLA_FRAME_CONTENT_TYPE, FLOTILLA_FRAME_CONTENT_TYPE);
    assert.equal(sharedChunks.MAX_CHUNK_BYTES, MAX_CHUNK_BYTES);
    assert.equal(sharedChunks.DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_BYTES);
    assert.equal(MAX_CHUNK_BODY, MAX_CHUNK_BYTES);

    // A cloud round, and a device's result for it.
    const w = world();
    await startJob(w);
    await w.agg.roundTimer({}, CTX);
    const layout = modelLayout(SPEC as unknown as ModelSpec);
    const frame = encodeMessage({
      type: "result",
      jobId: "job-1",
      round: 1,
      deviceId: "dev-a",
      layoutHash: layout.hash,
      numSamples: 10,
      metrics: { loss: 0.5, accuracy: 0.5, trainMs: 10 },
      delta: makeDelta(layout.totalSize, 3),
    });

    // Trainer path: frameChunks messages → the update-queue's staging (and the quantizer's reassembler).
    const box = new outbox.Outbox(join(tempDir(t, "flotilla-chunks-"), "outbox.sqlite"), {
      maxChunkBytes: 100,
    });
    t.after(() => box.close());
    const r = new Reassembler();
    const { updateId, messages } = sharedChunks.frameChunks(
      frame,
      { jobId: "job-1", round: 1, deviceId: "dev-a" },
      64,
    );
    assert.ok(messages.length > 3);
    let staged;
    let reassembled;
    for (const m of messages) {
      const meta = sharedChunks.inputChunkMeta(m)!;
      staged = box.stageChunk(m.getBytes(), meta);
      reassembled = r.add(m.getBytes(), meta);
    }
    assert.deepEqual(staged, {
      updateId,
      complete: true,
      received: messages.length,
      chunkCount: messages.length,
    });
    assert.equal(reassembled?.status, "complete");

    // Update-queue path: the outbox's upstream chunks → the Function's ingest, which accepts and records the update.
    const events: IngestEvent[] = box.chunksOf(updateId).map((c) => {
      const m = toMessage(c);
      const properties: Record<string, string> = {};
      for (let i = 0; i < m.properties.count(); i++) {
        const { key, value } = m.properties.getItem(i);
        properties[key] = value;
      }
      return {
        body: m.getBytes(),
        properties,
        systemProperties: { "iothub-connection-device-id": "dev-a", "message-id": m.messageId },
      };
    });
    assert.ok(events.length > 3);
    assert.ok(events.every((e) => typeof e.properties?.chunkSha256 === "string"));
    const res = await w.agg.ingestUpdates(events.reverse(), CTX);
    assert.equal(res.rejected, 0, w.logs.join("\n"));
    assert.equal(w.agg.ingestor.counters.updates_completed, 1);
    assert.deepEqual(w.fleet.acks.at(-1), { deviceId: "dev-a", updateIds: [updateId] });

    // The Function refuses a body over the one maximum as oversized, before anything else about it is looked up
    // (it took bodies up to 262,144 bytes before: this one would have been counted as for an unknown job).
    const { chunkSha256: _omit, ...props } = events[0].properties as Record<string, string>;
    const over = {
      ...events[0],
      body: Buffer.alloc(MAX_CHUNK_BYTES + 1),
      properties: {
        ...props,
        jobId: "no-such-job",
        chunkCount: "2",
        chunkIndex: "0",
        size: String(2 * MAX_CHUNK_BYTES),
      },
    };
    await w.agg.ingestUpdates([over], CTX);
    assert.equal(w.agg.ingestor.counters.rejected_oversized, 1);
    assert.equal(w.agg.ingestor.counters.rejected_unknown_job, 0);
  }),
);

test("the Function reads the content-type marker as an own property: a polluted prototype cannot hide updates", async () => {
  const w = world();
  const proto = Object.prototype as Record<string, unknown>;
  proto["flotilla-content-type"] = "other";
  try {
    // An event with no properties of its own is an update to validate (and reject), not someone else's telemetry.
    await w.agg.ingestUpdates([{ body: Buffer.from("x"), properties: {} }], CTX);
  } finally {
    delete proto["flotilla-content-type"];
  }
  assert.equal(w.agg.ingestor.counters.ignored_other, 0);
  assert.equal(w.agg.ingestor.counters.rejected_malformed, 1);
});
