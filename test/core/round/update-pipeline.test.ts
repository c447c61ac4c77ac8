import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  decodeTensor,
  encodeTensor,
  ErrorFeedback,
  parseCompression,
  readEnvelope,
} from "../../../core/compress";
import { isFlotillaError } from "../../../core/errors";
import { GaussianNoise } from "../../../core/privacy/mechanism";
import {
  codecSeed,
  compressUpdate,
  layoutSegments,
  MemoryResidualStore,
  needsSegments,
  privatizeDelta,
  takeDelta,
  boundDelta,
  type ResidualStore,
} from "../../../core/round/update-pipeline";
import { makeLayout } from "../../../core/tensor/layout";

const LAYOUT = makeLayout([
  { name: "kernel", shape: [50, 20] },
  { name: "bias", shape: [20] },
]);
const CTX = {
  jobId: "job",
  round: 2,
  deviceId: "dev",
  layoutHash: LAYOUT.hash,
  segments: layoutSegments(LAYOUT),
};

function delta(seed: number): Float32Array {
  return new Float32Array(LAYOUT.totalSize).map((_, i) => Math.sin(i * 0.7 + seed) * (i < 1000 ? 1 : 1e-3));
}

test("one seed rule: sha256('deviceId/jobId/round'), first 4 bytes little endian", () => {
  assert.equal(codecSeed("job", 2, "dev"), createHash("sha256").update("dev/job/2").digest().readUInt32LE(0));
  assert.notEqual(codecSeed("job", 2, "dev"), codecSeed("job", 3, "dev"));
  assert.notEqual(codecSeed("job", 2, "dev"), codecSeed("job", 2, "dev2"));
  assert.notEqual(codecSeed("job", 2, "dev"), codecSeed("job2", 2, "dev"));
});

test("delta and DP steps: trained − global in place; clipped to the order's norm, untouched without dp", () => {
  const trained = Float32Array.from([3, 4, 5]);
  const d = takeDelta(trained, Float32Array.from([0, 0, 5]));
  assert.equal(d, trained);
  assert.deepEqual([...d], [3, 4, 0]);
  assert.equal(privatizeDelta(d, undefined, new GaussianNoise()), undefined);
  assert.deepEqual([...d], [3, 4, 0]);
  privatizeDelta(d, { clip: 1, noiseStd: 0 }, new GaussianNoise());
  assert.ok(Math.abs(Math.hypot(...d) - 1) < 1e-6, `clipped to norm 1: ${[...d]}`);
  assert.throws(
    () => takeDelta(new Float32Array(2), new Float32Array(3)),
    (e) => isFlotillaError(e) && e.code === "E_MODEL_LAYOUT",
  );
});

test("codec step without a sparsifier: encodeTensor with the seed rule and the segments; no residual kept", async () => {
  const store = new MemoryResidualStore();
  const spec = parseCompression("int8:tensor");
  assert.ok(needsSegments(spec));
  assert.ok(!needsSegments(parseCompression("topk:0.1+int8")));
  const d = delta(1);
  const bytes = await compressUpdate(d, spec, CTX, store);
  const expected = encodeTensor(d, spec, {
    layoutHash: LAYOUT.hash,
    seed: codecSeed("job", 2, "dev"),
    segments: [1000, 20],
  });
  assert.deepEqual(Buffer.from(bytes), Buffer.from(expected));
  assert.equal(store.size, 0);
  // Per-tensor scales: the small bias is quantized on its own range.
  const back = decodeTensor(bytes, { layoutHash: LAYOUT.hash, length: d.length });
  for (let i = 1000; i < 1020; i++)
    assert.ok(Math.abs(back[i] - d[i]) < 2e-3 / 255 + 1e-9, `bias[${i - 1000}]`);
  // Without segments a per-tensor codec is refused rather than scaled over the whole vector.
  const { segments: _s, ...noSegments } = CTX;
  for (const ctx of [noSegments, { ...CTX, segments: [1000] }])
    await assert.rejects(
      compressUpdate(d, spec, ctx, store),
      (e) => isFlotillaError(e) && e.code === "E_COMPRESS_SEGMENTS",
    );
});

test("codec step with a sparsifier: error feedback through the store, saved before it returns, exportable", async () => {
  const spec = parseCompression("topk:0.05+int4");
  const store = new MemoryResidualStore();
  const ref = new ErrorFeedback(LAYOUT.totalSize);
  for (let round = 1; round <= 3; round++) {
    const d = delta(round);
    const bytes = await compressUpdate(d, spec, { ...CTX, round }, store);
    const expected = ref.compress(d, spec, {
      layoutHash: LAYOUT.hash,
      seed: codecSeed("job", round, "dev"),
      segments: CTX.segments,
    });
    assert.deepEqual(Buffer.from(bytes), Buffer.from(expected), `round ${round}`);
    assert.equal(readEnvelope(bytes).spec.text, "topk:0.05+int4");
  }
  assert.deepEqual(store.load("job", LAYOUT.totalSize).residual, ref.residual);
  // Moved between worker threads: the bytes restore the same residual.
  const moved = new MemoryResidualStore();
  moved.fromBytes(store.toBytes(), LAYOUT.totalSize);
  assert.deepEqual(moved.load("job", LAYOUT.totalSize).residual, ref.residual);
  // A residual of another length (the job's layout changed) starts from zeros.
  assert.ok(moved.load("job", 10).residual.every((v) => v === 0));
});

test("a failed compression discards the residual in the store and is a FlotillaError", async () => {
  const calls: string[] = [];
  const ef = new ErrorFeedback(LAYOUT.totalSize);
  const store: ResidualStore = {
    load: () => (calls.push("load"), ef),
    save: () => void calls.push("save"),
    discard: () => void calls.push("discard"),
  };
  // A fake spec that passes the sparse check but whose stages are invalid: encodeTensor refuses it.
  const bad = {
    stages: [{ kind: "topk", fraction: 7 }],
    text: "topk:7",
    sparse: true,
    lossless: false,
  } as const;
  await assert.rejects(compressUpdate(delta(1), bad as never, CTX, store), (e) => isFlotillaError(e));
  assert.deepEqual(calls, ["load", "discard"]);
});

test("norm-bound step: scaled in place to the order's normBound, untouched below it or without one", () => {
  const d = Float32Array.from([3, 4, 0]);
  assert.equal(boundDelta(d, undefined), false);
  assert.equal(boundDelta(d, 5), false);
  assert.deepEqual([...d], [3, 4, 0]);
  assert.equal(boundDelta(d, 1), true);
  assert.ok(Math.abs(d[0]! - 0.6) < 1e-6 && Math.abs(d[1]! - 0.8) < 1e-6 && d[2] === 0, `${[...d]}`);
  for (const bad of [0, -1, NaN, Infinity])
    assert.throws(
      () => boundDelta(d, bad),
      (e) => isFlotillaError(e) && e.code === "E_ROUND_INVALID",
    );
});
