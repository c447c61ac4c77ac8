import { test } from "@jest/globals";
import type { EncodedTensor } from "../../../core/compress/api";
import { encodeTensor, parseCompression } from "../../../core/compress";
import assert from "node:assert/strict";
import { decodeMessage, encodeMessage, type TrainRequest } from "../../../core/protocol/messages";
import { errorCode as codeOf } from "../../helpers/errors";

const request: TrainRequest = {
  type: "train",
  jobId: "job-1",
  round: 3,
  modelHash: "ab".repeat(32),
  layoutHash: "cd".repeat(32),
  config: { epochs: 1, batchSize: 10, lr: 0.1, seed: 7 },
  deadline: 123,
  weights: Float32Array.from([1, -2.5, 3.25]),
};

test("train request round-trips with its weights", () => {
  const bytes = encodeMessage(request);
  const back = decodeMessage(bytes);
  assert.equal(back.type, "train");
  if (back.type !== "train") return;
  assert.deepEqual([...raw(back.weights)], [1, -2.5, 3.25]);
  assert.deepEqual(back.config, request.config);
  assert.equal(back.round, 3);
  // Payload starts 4-byte aligned, so the decoder hands out a view, not a copy.
  assert.equal(raw(back.weights).buffer, bytes.buffer);
});

test("result and failure messages round-trip", () => {
  const r = decodeMessage(
    encodeMessage({
      type: "result",
      jobId: "j",
      round: 1,
      deviceId: "d1",
      layoutHash: "h",
      numSamples: 80,
      metrics: { loss: 0.5, accuracy: 0.9, trainMs: 12 },
      delta: new Float32Array([0.5, 0.25]),
    }),
  );
  assert.equal(r.type, "result");
  if (r.type === "result") assert.deepEqual([...raw(r.delta)], [0.5, 0.25]);
  const f = decodeMessage(
    encodeMessage({ type: "failure", jobId: "j", round: 1, deviceId: "d1", code: "E_X", reason: "boom" }),
  );
  assert.deepEqual(f, { type: "failure", jobId: "j", round: 1, deviceId: "d1", code: "E_X", reason: "boom" });
});

test("an unaligned frame still decodes (payload copied)", () => {
  const bytes = encodeMessage(request);
  const shifted = new Uint8Array(bytes.length + 1).subarray(1);
  shifted.set(bytes);
  const back = decodeMessage(shifted);
  assert.ok(back.type === "train" && raw(back.weights)[1] === -2.5);
});

test("malformed frames are rejected with stable codes", () => {
  const good = encodeMessage(request);
  assert.equal(
    codeOf(() => decodeMessage(new Uint8Array(3))),
    "E_PROTO_TRUNCATED",
  );
  const badMagic = good.slice();
  badMagic[0] ^= 0xff;
  assert.equal(
    codeOf(() => decodeMessage(badMagic)),
    "E_PROTO_MAGIC",
  );
  assert.equal(
    codeOf(() => decodeMessage(good.subarray(0, good.length - 4))),
    "E_PROTO_TRUNCATED",
  );
  const badJson = good.slice();
  badJson[8] = 0x7b + 1; // corrupt the '{'
  assert.equal(
    codeOf(() => decodeMessage(badJson)),
    "E_PROTO_HEADER",
  );
  const unknownType = encodeMessage({ ...request, type: "nope" } as unknown as TrainRequest);
  assert.equal(
    codeOf(() => decodeMessage(unknownType)),
    "E_PROTO_TYPE",
  );
  const missing = encodeMessage({ type: "failure", jobId: "j", round: 1, deviceId: "d" } as never);
  assert.equal(
    codeOf(() => decodeMessage(missing)),
    "E_PROTO_HEADER",
  );
});

function raw(x: Float32Array | EncodedTensor): Float32Array {
  assert.ok(x instanceof Float32Array, "a raw float32 payload");
  return x;
}

test("a compressed payload (envelope) round-trips as bytes of any length, flagged encoding flz", () => {
  const env = encodeTensor(new Float32Array([0.5, -0.25, 1, 2, 3]), parseCompression("int8"), {
    layoutHash: "ab".repeat(32),
    seed: 1,
  });
  const frame = encodeMessage({
    type: "result",
    jobId: "j",
    round: 2,
    deviceId: "d",
    layoutHash: "ab".repeat(32),
    numSamples: 5,
    metrics: { loss: 1, accuracy: 0.5, trainMs: 3 },
    delta: { encoding: "flz", bytes: env },
  });
  const back = decodeMessage(frame);
  assert.ok(back.type === "result" && !(back.delta instanceof Float32Array));
  assert.deepEqual(Buffer.from(back.delta.bytes), Buffer.from(env));
  assert.equal("encoding" in back, false, "the header's encoding field is not leaked into the message");
  // An unknown encoding is refused.
  const text = Buffer.from(frame).toString("latin1").replace('"encoding":"flz"', '"encoding":"zzz"');
  assert.throws(() => decodeMessage(Buffer.from(text, "latin1")), /E_PROTO_HEADER|encoding/);
});

test("secagg frames round-trip: step JSON in the header, the masked vector as a u32 payload", () => {
  const masked = new Uint32Array([0, 1, 0xffffffff, 123456789]);
  const up = decodeMessage(
    encodeMessage({
      type: "secagg",
      step: "mask",
      direction: "up",
      jobId: "j",
      round: 3,
      deviceId: "d1",
      body: { jobId: "j", round: 3, deviceId: "d1" },
      masked,
      numSamples: 40,
      metrics: { loss: 0.5, accuracy: 0.9, trainMs: 12 },
    }),
  );
  assert.equal(up.type, "secagg");
  if (up.type !== "secagg") return;
  assert.equal(up.step, "mask");
  assert.equal(up.numSamples, 40);
  assert.deepEqual([...(up.masked ?? [])], [...masked]);
  const down = decodeMessage(
    encodeMessage({
      type: "secagg",
      step: "unmask",
      direction: "down",
      jobId: "j",
      round: 3,
      deviceId: "d1",
      body: { survivors: ["a"], dropped: [] },
    }),
  );
  assert.equal(down.type === "secagg" && down.masked, undefined);
  assert.deepEqual(down.type === "secagg" && down.body, { survivors: ["a"], dropped: [] });
});

test("secagg frames with a bad step, direction or payload are rejected", () => {
  const frame = (header: Record<string, unknown>, payload = new Uint8Array(0)) => {
    const h = Buffer.from(JSON.stringify({ ...header, payloadLength: payload.byteLength }));
    const off = (8 + h.length + 3) & ~3;
    const out = new Uint8Array(off + payload.byteLength);
    const v = new DataView(out.buffer);
    v.setUint32(0, 0x31544c46, true);
    v.setUint32(4, h.length, true);
    out.set(h, 8);
    out.set(payload, off);
    return out;
  };
  const base = {
    type: "secagg",
    step: "mask",
    direction: "up",
    jobId: "j",
    round: 1,
    deviceId: "d",
    body: {},
  };
  assert.equal(
    codeOf(() => decodeMessage(frame({ ...base, step: "peek" }))),
    "E_PROTO_HEADER",
  );
  assert.equal(
    codeOf(() => decodeMessage(frame({ ...base, direction: "sideways" }))),
    "E_PROTO_HEADER",
  );
  assert.equal(
    codeOf(() => decodeMessage(frame({ ...base, encoding: "flz" }, new Uint8Array(4)))),
    "E_PROTO_HEADER",
  );
  assert.equal(
    codeOf(() => decodeMessage(frame({ ...base, encoding: "u32" }, new Uint8Array(6)))),
    "E_PROTO_HEADER",
  );
  const { body: _b, ...noBody } = base;
  assert.equal(
    codeOf(() => decodeMessage(frame(noBody))),
    "E_PROTO_HEADER",
  );
  // A u32 payload belongs to secagg frames only.
  const result = {
    type: "result",
    jobId: "j",
    round: 1,
    deviceId: "d",
    layoutHash: "h",
    numSamples: 1,
    metrics: {},
  };
  assert.equal(
    codeOf(() => decodeMessage(frame({ ...result, encoding: "u32" }, new Uint8Array(4)))),
    "E_PROTO_HEADER",
  );
});
