import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { decodeTensor, encodeTensor, ErrorFeedback, parseCompression } from "../../../core/compress";
import { codeOf, HASH, vector } from "./helpers";

const N = 5_000;

test("sent + residual == sum of deltas; the residual is exactly x - decoded each round", () => {
  for (const text of [
    "topk:0.05",
    "topk:0.02+int8",
    "randk:0.1+int4",
    "topk:0.01+qsgd:4",
    "randk:0.05+fp16",
  ]) {
    const spec = parseCompression(text);
    const ef = new ErrorFeedback(N);
    const sent = new Float64Array(N);
    const deltas = new Float64Array(N);
    for (let round = 0; round < 8; round++) {
      const delta = vector(N, 100 + round);
      const before = ef.residual.slice();
      const env = ef.compress(delta, spec, { layoutHash: HASH, seed: round, segments: [N] });
      const y = decodeTensor(env, { layoutHash: HASH, length: N });
      for (let i = 0; i < N; i++) {
        const x = Math.fround(delta[i] + before[i]);
        if (ef.residual[i] !== Math.fround(x - y[i])) assert.fail(`${text} round ${round} [${i}]`);
        sent[i] += y[i];
        deltas[i] += delta[i];
      }
    }
    for (let i = 0; i < N; i++) {
      const err = Math.abs(sent[i] + ef.residual[i] - deltas[i]);
      if (!(err <= 1e-6 * (1 + Math.abs(deltas[i])))) assert.fail(`${text} [${i}]: off by ${err}`);
    }
    assert.ok(
      ef.residual.some((v) => v !== 0),
      `${text}: something was held back`,
    );
  }
});

test("without a sparsifier the delta is encoded as is and the residual stays zero", () => {
  const ef = new ErrorFeedback(N);
  const delta = vector(N, 1);
  for (const text of ["none", "int8", "qsgd:16", "fp16"]) {
    const opts = { layoutHash: HASH, seed: 3 };
    const env = ef.compress(delta, parseCompression(text), opts);
    assert.deepEqual(env, encodeTensor(delta, parseCompression(text), opts));
    assert.ok(ef.residual.every((v) => v === 0));
  }
});

test("a non-finite value is sent, not remembered", () => {
  const ef = new ErrorFeedback(100);
  const delta = vector(100, 2);
  delta[5] = NaN;
  delta[6] = Infinity;
  const y = decodeTensor(ef.compress(delta, parseCompression("topk:0.1"), { layoutHash: HASH, seed: 1 }));
  assert.ok(Number.isNaN(y[5]) && y[6] === Infinity);
  assert.ok(ef.residual.every(Number.isFinite));
});

test("toBytes / fromBytes round-trip; damaged, truncated or mismatched files are E_COMPRESS_RESIDUAL", () => {
  const ef = new ErrorFeedback(N);
  ef.compress(vector(N, 9), parseCompression("topk:0.01"), { layoutHash: HASH, seed: 1 });
  const bytes = ef.toBytes();
  assert.equal(bytes.length, 16 + 4 * N);
  const back = ErrorFeedback.fromBytes(bytes, N);
  assert.deepEqual(back.residual, ef.residual);
  // from an unaligned copy too
  const host = new Uint8Array(bytes.length + 1);
  host.set(bytes, 1);
  assert.deepEqual(ErrorFeedback.fromBytes(host.subarray(1), N).residual, ef.residual);

  assert.equal(
    codeOf(() => ErrorFeedback.fromBytes(bytes, N + 1)),
    "E_COMPRESS_RESIDUAL",
  );
  for (const cut of [0, 3, 15, 16, 100, bytes.length - 1]) {
    assert.equal(
      codeOf(() => ErrorFeedback.fromBytes(bytes.subarray(0, cut), N)),
      "E_COMPRESS_RESIDUAL",
      `cut ${cut}`,
    );
  }
  for (let i = 0; i < bytes.length; i += i < 32 ? 1 : 997) {
    const bad = bytes.slice();
    bad[i] ^= 0x10;
    assert.equal(
      codeOf(() => ErrorFeedback.fromBytes(bad, N)),
      "E_COMPRESS_RESIDUAL",
      `byte ${i}`,
    );
  }
  const longer = new Uint8Array(bytes.length + 4);
  longer.set(bytes);
  assert.equal(
    codeOf(() => ErrorFeedback.fromBytes(longer, N)),
    "E_COMPRESS_RESIDUAL",
  );
  assert.equal(
    codeOf(() => ErrorFeedback.fromBytes("x" as never, N)),
    "E_COMPRESS_RESIDUAL",
  );
});

test("the constructor copies a given residual and checks lengths", () => {
  const r = Float32Array.from([1, 2, 3]);
  const ef = new ErrorFeedback(3, r);
  r[0] = 9;
  assert.deepEqual([...ef.residual], [1, 2, 3]);
  assert.equal(
    codeOf(() => new ErrorFeedback(4, r)),
    "E_COMPRESS_RESIDUAL",
  );
  assert.equal(
    codeOf(() => new ErrorFeedback(-1)),
    "E_COMPRESS_RESIDUAL",
  );
  assert.equal(
    codeOf(() =>
      ef.compress(new Float32Array(4), parseCompression("topk:0.5"), { layoutHash: HASH, seed: 1 }),
    ),
    "E_COMPRESS_RESIDUAL",
  );
  // a failing encode leaves the residual intact
  assert.equal(
    codeOf(() =>
      ef.compress(new Float32Array(3), parseCompression("topk:0.5"), { layoutHash: "x", seed: 1 }),
    ),
    "E_COMPRESS_OPTIONS",
  );
  assert.deepEqual([...ef.residual], [1, 2, 3]);
  ef.reset();
  assert.deepEqual([...ef.residual], [0, 0, 0]);
});
