import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  decodeTensor,
  encodeTensor,
  ErrorFeedback,
  parseCompression,
  readEnvelope,
} from "../../../core/compress";
import type { EncodedTensor } from "../../../core/compress/api";
import { encodeMessage, type TrainResultMessage } from "../../../core/protocol/messages";
import { loadQuantizerConfig } from "../../../modules/quantizer/src/config";
import { codecSeed } from "../../../core/round/update-pipeline";
import { residualFileName, type QuantizerState } from "../../../modules/quantizer/src/quantizer";
import { tempDir, trainerChunks, until } from "../update-queue/helpers";
import {
  assertWithinInt8,
  decode,
  deltaOf,
  failure,
  jobsDesired,
  LAYOUT,
  outputFrames,
  result,
  start,
  type Harness,
} from "./support";

const META = { jobId: "job-1", round: 1, deviceId: "dev-1" };

/** Delivers a frame as the trainer's chunks. */
function send(h: Harness, frame: Uint8Array, meta = META, maxChunkBytes = 255_000): string {
  const input = trainerChunks(frame, meta, maxChunkBytes);
  for (const c of input.chunks) h.client.deliver("updates", c.body, c.properties);
  return input.updateId;
}

function reported(h: Harness): QuantizerState[] {
  return h.client.twin.reportedPatches
    .map((p) => p.flotilla as QuantizerState | undefined)
    .filter((p): p is QuantizerState => p !== undefined);
}

function encodedDelta(frame: Uint8Array): EncodedTensor {
  const msg = decode(frame);
  assert.equal(msg.type, "result");
  const delta = (msg as TrainResultMessage).delta;
  assert.ok(!(delta instanceof Float32Array), "the delta is encoded");
  return delta;
}

test(
  "unconfigured: results and failures pass through unchanged (same updateId), counted and reported",
  withContext(async (t) => {
    const dir = tempDir(t, "flotilla-quant-");
    const h = await start(dir, {}, { maxChunkBytes: 10_000 });
    t.after(() => h.quantizer.stop());
    const frame = result({ delta: deltaOf(6000, 1) });
    const id = send(h, frame, META, 7000);
    const f = failure({ round: 2 });
    const fid = send(h, f, { ...META, round: 2 });
    await h.quantizer.idle();

    const out = outputFrames(h.client);
    assert.deepEqual(
      out.map((o) => o.updateId),
      [id, fid],
    );
    assert.ok(out[0].frame.equals(Buffer.from(frame)));
    assert.ok(out[1].frame.equals(Buffer.from(f)));
    assert.equal(
      h.client.outputs.length,
      Math.ceil(frame.byteLength / 10_000) + 1,
      "re-chunked at maxChunkBytes",
    );
    const props = h.client.outputs[0].msg.properties;
    assert.equal(props.getValue("jobId"), "job-1");
    assert.equal(props.getValue("round"), "1");
    assert.equal(props.getValue("deviceId"), "dev-1");
    assert.equal(h.client.outputs[0].msg.messageId, `${id}:0`);
    assert.equal(h.client.completed.length, Math.ceil(frame.byteLength / 7000) + 1, "every input completed");

    const s = h.quantizer.state();
    assert.deepEqual(s.counters, {
      received: 2,
      compressed: 0,
      passthrough: 2,
      bytesIn: frame.byteLength + f.byteLength,
      bytesOut: frame.byteLength + f.byteLength,
      errors: 0,
      residualsDiscarded: 0,
    });
    assert.deepEqual(s.jobs, {});
    assert.equal(s.error, null);
    await until(() => reported(h).some((r) => r.counters.passthrough === 2), 2000, "counters reported");
    const last = reported(h).at(-1)!;
    assert.equal(last.status, "running");
    assert.deepEqual(last.jobs, {});
    assert.equal(typeof last.updatedAt, "string");

    const status = await h.client.invoke("status", {});
    assert.equal(status.status, 200);
    assert.equal((status.payload as QuantizerState).counters.received, 2);

    await h.quantizer.stop();
    assert.equal(h.quantizer.state().status, "stopped");
    assert.equal(reported(h).at(-1)!.status, "stopped");
    assert.equal((await h.client.invoke("status", {})).status, 503);
  }),
);

test(
  "a job with a lossy spec: the delta goes out as an envelope within the codec's bound, smaller",
  withContext(async (t) => {
    const dir = tempDir(t, "flotilla-quant-");
    const h = await start(dir, jobsDesired({ "job-1": "int8" }));
    t.after(() => h.quantizer.stop());
    assert.deepEqual(h.quantizer.state().jobs, { "job-1": "int8" });
    const delta = deltaOf(20_000, 2);
    const frame = result({ delta, round: 3 });
    send(h, frame, { ...META, round: 3 });
    // Another job, and a delta the trainer already encoded, pass through.
    const other = result({ jobId: "job-2", delta: deltaOf(500, 3) });
    send(h, other, { ...META, jobId: "job-2" });
    const preEncoded = encodeMessage({
      ...(decode(result({ delta: deltaOf(600, 4), round: 4 })) as TrainResultMessage),
      delta: {
        encoding: "flz",
        bytes: encodeTensor(deltaOf(600, 4), parseCompression("fp16"), { layoutHash: LAYOUT, seed: 1 }),
      },
    });
    send(h, preEncoded, { ...META, round: 4 });
    await h.quantizer.idle();

    const out = outputFrames(h.client);
    assert.equal(out.length, 3);
    const msg = decode(out[0].frame) as TrainResultMessage;
    const input = decode(frame) as TrainResultMessage;
    const { delta: _d1, ...header } = msg;
    const { delta: _d2, ...inputHeader } = input;
    assert.deepEqual(header, inputHeader, "the header is kept");
    const enc = encodedDelta(out[0].frame);
    assert.equal(readEnvelope(enc.bytes).spec.text, "int8");
    assert.equal(readEnvelope(enc.bytes).layoutHash, LAYOUT);
    assertWithinInt8(decodeTensor(enc.bytes, { layoutHash: LAYOUT, length: delta.length }), delta);
    assert.ok(
      out[0].frame.byteLength < frame.byteLength * 0.3,
      `${out[0].frame.byteLength} bytes out of ${frame.byteLength}`,
    );
    // Deterministic: the seed is derived from (deviceId, jobId, round).
    const expected = encodeTensor(delta, parseCompression("int8"), {
      layoutHash: LAYOUT,
      seed: codecSeed("job-1", 3, "dev-1"),
    });
    assert.deepEqual(Buffer.from(enc.bytes), Buffer.from(expected));
    assert.ok(out[1].frame.equals(Buffer.from(other)));
    assert.ok(out[2].frame.equals(Buffer.from(preEncoded)));
    const c = h.quantizer.state().counters;
    assert.equal(c.compressed, 1);
    assert.equal(c.passthrough, 2);
    assert.ok(c.bytesOut < c.bytesIn);
    assert.equal(c.errors, 0);
    assert.equal(existsSync(join(dir, residualFileName("job-1"))), false, "no residual without a sparsifier");
  }),
);

test(
  "error feedback: the residual is saved per job and reloaded exactly after a restart",
  withContext(async (t) => {
    const dir = tempDir(t, "flotilla-quant-");
    const spec = "topk:0.05+int8";
    const desired = jobsDesired({ "job-1": spec });
    const n = 4000;
    const file = join(dir, "residual-job-1.bin");
    // What one uninterrupted error feedback would send.
    const ref = new ErrorFeedback(n);
    const s = parseCompression(spec);
    const refSend = (delta: Float32Array, round: number) =>
      ref.compress(delta, s, { layoutHash: LAYOUT, seed: codecSeed("job-1", round, "dev-1") });

    let h = await start(dir, desired);
    const d1 = deltaOf(n, 5);
    send(h, result({ delta: d1, round: 1 }));
    await h.quantizer.idle();
    assert.deepEqual(
      Buffer.from(encodedDelta(outputFrames(h.client)[0].frame).bytes),
      Buffer.from(refSend(d1, 1)),
    );
    assert.deepEqual(readFileSync(file), Buffer.from(ref.toBytes()), "the residual is on disk");
    assert.ok(ref.residual.some((v) => v !== 0));
    await h.quantizer.stop();

    h = await start(dir, desired);
    const d2 = deltaOf(n, 6);
    send(h, result({ delta: d2, round: 2 }), { ...META, round: 2 });
    await h.quantizer.idle();
    assert.deepEqual(
      Buffer.from(encodedDelta(outputFrames(h.client)[0].frame).bytes),
      Buffer.from(refSend(d2, 2)),
      "round 2 after the restart adds the exact residual of round 1",
    );
    assert.deepEqual(readFileSync(file), Buffer.from(ref.toBytes()));
    assert.deepEqual(ErrorFeedback.fromBytes(readFileSync(file), n).residual, ref.residual);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.includes(".tmp")),
      [],
      "no temp file left",
    );

    // The job's layout changed: a residual of another length is discarded, counted, logged.
    send(h, result({ delta: deltaOf(1000, 7), round: 3 }), { ...META, round: 3 });
    await h.quantizer.idle();
    assert.equal(h.quantizer.state().counters.residualsDiscarded, 1);
    assert.equal(h.quantizer.state().counters.compressed, 2);
    assert.ok(h.logs.some((l) => /^warn quantizer: discarding the residual of job job-1: /.test(l)));
    assert.equal(ErrorFeedback.fromBytes(readFileSync(file), 1000).residual.length, 1000);
    await h.quantizer.stop();

    // A damaged file is discarded too; the update still goes out, from a zero residual.
    writeFileSync(file, Buffer.from("not a residual"));
    h = await start(dir, desired);
    t.after(() => h.quantizer.stop());
    const d4 = deltaOf(1000, 8);
    send(h, result({ delta: d4, round: 4 }), { ...META, round: 4 });
    await h.quantizer.idle();
    const fresh = new ErrorFeedback(1000).compress(d4, s, {
      layoutHash: LAYOUT,
      seed: codecSeed("job-1", 4, "dev-1"),
    });
    assert.deepEqual(Buffer.from(encodedDelta(outputFrames(h.client)[0].frame).bytes), Buffer.from(fresh));
    assert.equal(h.quantizer.state().counters.residualsDiscarded, 1);
  }),
);

test(
  "a bad spec is reported (E_COMPRESS_SPEC) and its job passes through; the module keeps running",
  withContext(async (t) => {
    const dir = tempDir(t, "flotilla-quant-");
    const h = await start(dir, jobsDesired({ "job-1": "bogus:7", "job-2": "int8" }));
    t.after(() => h.quantizer.stop());
    const s = h.quantizer.state();
    assert.equal(s.error?.code, "E_COMPRESS_SPEC");
    assert.equal(s.error?.jobId, "job-1");
    assert.deepEqual(s.jobs, { "job-1": "none", "job-2": "int8" });
    assert.ok(h.logs.some((l) => /^warn quantizer: job job-1: E_COMPRESS_SPEC: .*passing through$/.test(l)));
    const frame = result({ delta: deltaOf(2000, 9) });
    send(h, frame);
    await h.quantizer.idle();
    assert.ok(outputFrames(h.client)[0].frame.equals(Buffer.from(frame)));
    await until(() => reported(h).some((r) => r.error?.code === "E_COMPRESS_SPEC"), 2000, "error reported");

    // Fixed by a desired patch: compressed from then on, the error cleared.
    h.client.twin.patchDesired(jobsDesired({ "job-1": "fp16", "job-2": "int8" }));
    assert.equal(h.quantizer.state().error, null);
    assert.deepEqual(h.quantizer.state().jobs, { "job-1": "fp16", "job-2": "int8" });
    send(h, result({ delta: deltaOf(2000, 9), round: 2 }), { ...META, round: 2 });
    await h.quantizer.idle();
    assert.equal(readEnvelope(encodedDelta(outputFrames(h.client)[1].frame).bytes).spec.text, "fp16");

    // Not even an object: reported, nothing configured, still running.
    for (const bad of [{ flotilla: "topk" }, { flotilla: { jobs: ["int8"] } }, jsonJobs({ "job-1": 7 })]) {
      h.client.twin.patchDesired(bad);
      assert.ok(h.quantizer.state().error, JSON.stringify(bad));
    }
    assert.equal(h.quantizer.state().error?.code, "E_COMPRESS_SPEC");
    h.client.twin.patchDesired({ flotilla: null });
    assert.equal(h.quantizer.state().error, null);
    assert.deepEqual(h.quantizer.state().jobs, {});
    send(h, result({ delta: deltaOf(100, 1), round: 3 }), { ...META, round: 3 });
    await h.quantizer.idle();
    assert.equal(outputFrames(h.client).length, 3);
  }),
);

function jsonJobs(jobs: Record<string, unknown>): Record<string, unknown> {
  return { flotilla: { jobs } };
}

test(
  "malformed chunks and frames are dropped, counted and logged on one line; valid ones still go through",
  withContext(async (t) => {
    const dir = tempDir(t, "flotilla-quant-");
    const h = await start(dir);
    t.after(() => h.quantizer.stop());
    const frame = result({ delta: deltaOf(3000, 10) });
    const good = trainerChunks(frame, META, 5000);
    assert.equal(good.chunks.length, 3);
    const p = good.chunks[0].properties;
    const deliver = (body: Uint8Array, props: Record<string, string>) =>
      h.client.deliver("updates", body, props);

    deliver(good.chunks[0].body, { ...p, chunkIndex: "9" }); // E_QUANT_CHUNK: index ≥ count
    const { sha256: _sha, ...noSha } = p;
    deliver(good.chunks[0].body, noSha); // E_QUANT_CHUNK: no sha256
    const wrong = { updateId: "c".repeat(32), sha256: "0".repeat(64) };
    for (const c of good.chunks) deliver(c.body, { ...c.properties, ...wrong }); // E_QUANT_CHECKSUM
    deliver(good.chunks[0].body, p);
    deliver(Buffer.from(good.chunks[0].body).fill(7), p); // E_QUANT_CONFLICT
    deliver(Buffer.from("hello, not a frame"), {}); // E_QUANT_FRAME
    const mismatched = result({ delta: deltaOf(10, 1), round: 7 });
    for (const c of trainerChunks(mismatched, { ...META, jobId: "other-job", round: 7 }).chunks)
      deliver(c.body, c.properties); // E_QUANT_META_MISMATCH
    h.client.deliver("elsewhere", frame, {}); // another input: ignored
    deliver(good.chunks[1].body, good.chunks[1].properties);
    deliver(good.chunks[1].body, good.chunks[1].properties); // a redelivered chunk: ignored
    deliver(good.chunks[2].body, good.chunks[2].properties);
    deliver(good.chunks[2].body, good.chunks[2].properties); // after completion: still ignored
    await h.quantizer.idle();

    const out = outputFrames(h.client);
    assert.equal(out.length, 1);
    assert.ok(out[0].frame.equals(Buffer.from(frame)));
    const c = h.quantizer.state().counters;
    assert.equal(c.errors, 6);
    assert.equal(c.passthrough, 1);
    assert.equal(c.received, 3, "the valid update, the bad frame and the mismatched one were complete");
    assert.equal(h.client.completed.length, 2 + 3 + 2 + 1 + 1 + 1 + 4, "every input message is completed");
    const warned = h.logs.filter((l) => l.startsWith("warn quantizer: input: E_QUANT_"));
    assert.deepEqual(
      warned.map((l) => /E_QUANT_[A-Z_]+/.exec(l)![0]),
      [
        "E_QUANT_CHUNK",
        "E_QUANT_CHUNK",
        "E_QUANT_CHECKSUM",
        "E_QUANT_CONFLICT",
        "E_QUANT_FRAME",
        "E_QUANT_META_MISMATCH",
      ],
    );
    assert.ok(h.logs.every((l) => !l.includes("\n")));
    assert.match(h.quantizer.state().lastError ?? "", /^E_QUANT_META_MISMATCH: /);
  }),
);

test(
  "removing a job deletes its residual; residuals of jobs no longer configured are deleted at start",
  withContext(async (t) => {
    const dir = tempDir(t, "flotilla-quant-");
    writeFileSync(join(dir, "residual-gone.bin"), "x");
    writeFileSync(join(dir, "residual-job-1.bin.tmp-1-abcd"), "x");
    writeFileSync(join(dir, "unrelated.txt"), "x");
    const odd = "plant 7/job";
    const h = await start(dir, jobsDesired({ "job-1": "topk:0.1", [odd]: "randk:0.1+fp16" }));
    t.after(() => h.quantizer.stop());
    await h.quantizer.idle();
    assert.deepEqual(readdirSync(dir).sort(), ["unrelated.txt"]);

    send(h, result({ delta: deltaOf(1000, 11) }));
    send(h, result({ jobId: odd, delta: deltaOf(1000, 12) }), { ...META, jobId: odd });
    await h.quantizer.idle();
    assert.match(residualFileName(odd), /^residual-~[0-9a-f]{32}\.bin$/);
    assert.deepEqual(
      readdirSync(dir).sort(),
      [residualFileName(odd), "residual-job-1.bin", "unrelated.txt"].sort(),
    );
    assert.equal(h.quantizer.state().counters.compressed, 2);

    // A malformed configuration compresses nothing but deletes no residual.
    h.client.twin.patchDesired({ flotilla: "oops" });
    await h.quantizer.idle();
    assert.equal(h.quantizer.state().error?.code, "E_QUANT_CONFIG");
    assert.deepEqual(h.quantizer.state().jobs, {});
    assert.equal(readdirSync(dir).length, 3);

    h.client.twin.patchDesired(jobsDesired({ "job-1": null, [odd]: "randk:0.1+fp16" }));
    await h.quantizer.idle();
    assert.deepEqual(readdirSync(dir).sort(), [residualFileName(odd), "unrelated.txt"].sort());
    assert.deepEqual(h.quantizer.state().jobs, { [odd]: "randk:0.1+fp16" });
    h.quantizer.reportNow();
    await h.quantizer.idle();
    // Reported patches merge: the removed job is reported as null (once), then no longer mentioned.
    const removal = reported(h).findIndex((r) => "job-1" in r.jobs && r.jobs["job-1"] === null);
    assert.ok(removal >= 0, "removed in the twin too");
    assert.deepEqual(reported(h)[removal].jobs, { "job-1": null, [odd]: "randk:0.1+fp16" });

    // job-1's updates now pass through.
    const frame = result({ delta: deltaOf(1000, 13), round: 2 });
    send(h, frame, { ...META, round: 2 });
    await h.quantizer.idle();
    assert.ok(outputFrames(h.client)[2].frame.equals(Buffer.from(frame)));
    assert.equal(existsSync(join(dir, "residual-job-1.bin")), false);
    h.quantizer.reportNow();
    await h.quantizer.idle();
    assert.deepEqual(reported(h).at(-1)!.jobs, { [odd]: "randk:0.1+fp16" });
  }),
);

test(
  "sends are retried with backoff; an update that cannot be sent is dropped with E_UPLOAD",
  withContext(async (t) => {
    const dir = tempDir(t, "flotilla-quant-");
    const h = await start(dir, {}, { sendAttempts: 3 });
    t.after(() => h.quantizer.stop());
    h.client.linkUp = false;
    send(h, result({ delta: deltaOf(100, 1) }));
    setTimeout(() => (h.client.linkUp = true), 8); // back after the first attempt(s)
    send(h, result({ delta: deltaOf(100, 2), round: 2 }), { ...META, round: 2 });
    await h.quantizer.idle();
    const c = h.quantizer.state().counters;
    assert.equal(c.passthrough + c.errors, 2);
    assert.ok(c.passthrough >= 1, "the link came back");
    h.client.linkUp = false;
    send(h, result({ delta: deltaOf(100, 3), round: 3 }), { ...META, round: 3 });
    await h.quantizer.idle();
    assert.match(h.quantizer.state().lastError ?? "", /^E_UPLOAD: sending [0-9a-f]{32}:0 failed 3 times/);
  }),
);

test("configuration from the environment", () => {
  const cs = "HostName=h.azure-devices.net;DeviceId=d;ModuleId=quantizer;SharedAccessKey=a2V5";
  const c = loadQuantizerConfig({ FLOTILLA_CONNECTION_STRING: cs });
  assert.equal(c.stateDir, "/var/lib/flotilla/quantizer");
  assert.equal(c.maxChunkBytes, 255_000);
  assert.equal(c.connection.deviceId, "d");
  assert.equal(
    loadQuantizerConfig({ FLOTILLA_CONNECTION_STRING: cs, FLOTILLA_QUANTIZER_DIR: "/q" }).stateDir,
    "/q",
  );
  assert.throws(
    () => loadQuantizerConfig({ FLOTILLA_CONNECTION_STRING: cs, FLOTILLA_MAX_CHUNK_BYTES: "300000" }),
    { code: "E_CONFIG_INVALID" },
  );
  assert.throws(() => loadQuantizerConfig({}), { code: "E_CONFIG_MISSING" });
});
