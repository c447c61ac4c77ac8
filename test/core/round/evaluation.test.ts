/**
 * Fleet-wide evaluation's fold (core/round/evaluation.ts): weighted means, spread, worst decile, duplicates, and the
 * device evaluation checks; and the FLT1 evaluation frame (core/protocol/messages.ts) that carries one.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  checkDeviceEvaluation,
  foldEvaluations,
  spreadOf,
  type DeviceEvaluation,
} from "../../../core/round/evaluation";
import { decodeMessage, encodeMessage, EVALUATION_VERSION, MAGIC } from "../../../core/protocol/messages";
import { errorCode } from "../../../core/errors";

const ev = (deviceId: string, samples: number, accuracy: number, loss = 1 - accuracy): DeviceEvaluation => ({
  deviceId,
  round: 4,
  samples,
  accuracy,
  loss,
});

test("the fold weighs devices by their held-out samples and spreads one value per device", () => {
  const f = foldEvaluations(4, [ev("a", 100, 0.9), ev("b", 300, 0.5)])!;
  assert.equal(f.round, 4);
  assert.equal(f.devices, 2);
  assert.equal(f.samples, 400);
  // (100 × 0.9 + 300 × 0.5) / 400 = 0.6 (a plain mean would say 0.7).
  assert.ok(Math.abs(f.accuracy! - 0.6) < 1e-12);
  assert.ok(Math.abs(f.loss! - 0.4) < 1e-12);
  assert.equal(f.mae, undefined);
  assert.equal(f.spread!.min, 0.5);
  assert.equal(f.spread!.max, 0.9);
  assert.ok(Math.abs(f.spread!.median - 0.7) < 1e-12);
  assert.ok(Math.abs(f.spread!.std - 0.2) < 1e-12);
  // Two devices: the worst decile is one device, the lowest accuracy.
  assert.deepEqual(f.worstDecile, { value: 0.5, devices: ["b"] });
});

test("the worst decile is the ⌈10%⌉ lowest devices, their sample-weighted accuracy, ties by device id", () => {
  const evals = Array.from({ length: 20 }, (_, i) => ev(`d${String(i).padStart(2, "0")}`, 10 + i, i / 20));
  const f = foldEvaluations(4, [...evals].reverse())!;
  assert.deepEqual(f.worstDecile!.devices, ["d00", "d01"]);
  assert.ok(Math.abs(f.worstDecile!.value - (10 * 0 + 11 * 0.05) / 21) < 1e-12);
  assert.equal(f.spread!.min, 0);
  assert.equal(f.spread!.max, 0.95);
  assert.ok(Math.abs(f.spread!.p10 - 0.095) < 1e-12);
  assert.ok(Math.abs(f.spread!.p90 - 0.855) < 1e-12);
  // 21 devices: ⌈2.1⌉ = 3 in the worst decile; equal accuracies (d02, y, z at 0.1) are ordered by id, whatever
  // the input order.
  const tied = [ev("z", 5, 0.1), ev("y", 5, 0.1), ...evals.slice(1)];
  assert.deepEqual(foldEvaluations(4, tied)!.worstDecile!.devices, ["d01", "d02", "y"]);
  assert.deepEqual(foldEvaluations(4, [...tied].reverse()), foldEvaluations(4, tied));
});

test("a device counts once (its first evaluation); no evaluation folds to nothing; another round is refused", () => {
  const f = foldEvaluations(4, [ev("a", 10, 0.2), ev("a", 1000, 1), ev("b", 10, 0.4)])!;
  assert.equal(f.devices, 2);
  assert.equal(f.samples, 20);
  assert.ok(Math.abs(f.accuracy! - 0.3) < 1e-12);
  assert.equal(foldEvaluations(4, []), undefined);
  assert.throws(
    () => foldEvaluations(5, [ev("a", 10, 0.2)]),
    (e) => errorCode(e) === "E_EVAL_INVALID",
  );
});

test("regressions rank by MAE (worst = highest); loss-only evaluations have no spread", () => {
  const f = foldEvaluations(2, [
    { deviceId: "a", round: 2, samples: 10, loss: 4, mae: 1 },
    { deviceId: "b", round: 2, samples: 30, loss: 1, mae: 3 },
  ])!;
  assert.equal(f.accuracy, undefined);
  assert.ok(Math.abs(f.mae! - 2.5) < 1e-12);
  assert.ok(Math.abs(f.loss! - 1.75) < 1e-12);
  assert.deepEqual(f.worstDecile, { value: 3, devices: ["b"] });
  const lossOnly = foldEvaluations(2, [{ deviceId: "a", round: 2, samples: 10, loss: 4 }])!;
  assert.equal(lossOnly.spread, undefined);
  assert.equal(lossOnly.worstDecile, undefined);
  assert.equal(lossOnly.loss, 4);
  // Devices without the main metric are left out of the spread and the decile, not counted as zero.
  const mixed = foldEvaluations(2, [
    { deviceId: "a", round: 2, samples: 10, loss: 4 },
    { deviceId: "b", round: 2, samples: 10, accuracy: 0.5, loss: 2 },
  ])!;
  assert.equal(mixed.devices, 2);
  assert.equal(mixed.accuracy, 0.5);
  assert.equal(mixed.loss, 3);
  assert.deepEqual(mixed.worstDecile, { value: 0.5, devices: ["b"] });
});

test("spreadOf: one value has no spread", () => {
  assert.deepEqual(spreadOf([0.25]), { min: 0.25, p10: 0.25, median: 0.25, p90: 0.25, max: 0.25, std: 0 });
});

test("checkDeviceEvaluation refuses bogus evaluations with E_EVAL_INVALID", () => {
  const good = { deviceId: "d", round: 1, samples: 5, accuracy: 0.5 };
  assert.deepEqual(checkDeviceEvaluation({ ...good, extra: 1 }), good);
  for (const bad of [
    null,
    [],
    { ...good, deviceId: "" },
    { ...good, deviceId: "a\nb" },
    { ...good, deviceId: "x".repeat(129) },
    { ...good, round: -1 },
    { ...good, round: 1.5 },
    { ...good, samples: 0 },
    { ...good, samples: 2 ** 53 },
    { ...good, accuracy: 1.01 },
    { ...good, accuracy: -0.1 },
    { ...good, accuracy: "0.5" },
    { ...good, loss: -1 },
    { ...good, mae: Infinity },
    { deviceId: "d", round: 1, samples: 5 },
    Object.assign(Object.create({ deviceId: "d", round: 1, samples: 5, accuracy: 0.5 }) as object, {}),
  ]) {
    assert.throws(
      () => checkDeviceEvaluation(bad),
      (e) => errorCode(e) === "E_EVAL_INVALID",
      JSON.stringify(bad),
    );
  }
});

test("the evaluation frame round-trips, versioned, without a payload", () => {
  const frame = encodeMessage({
    type: "evaluation",
    v: EVALUATION_VERSION,
    jobId: "job",
    deviceId: "dev",
    round: 3,
    samples: 50,
    accuracy: 0.75,
    loss: 0.5,
    precision: "int8",
  });
  assert.ok(frame.byteLength < 300);
  assert.deepEqual(decodeMessage(frame), {
    type: "evaluation",
    v: 1,
    jobId: "job",
    deviceId: "dev",
    round: 3,
    samples: 50,
    accuracy: 0.75,
    loss: 0.5,
    precision: "int8",
  });
});

/** A frame with this header (and payload), as a device could send it. */
function rawFrame(header: Record<string, unknown>, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify({ ...header, payloadLength: payload.byteLength }));
  const off = (8 + h.length + 3) & ~3;
  const out = new Uint8Array(off + payload.byteLength);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint32(4, h.length, true);
  out.set(h, 8);
  out.set(payload, off);
  return out;
}

test("bad evaluation frames are refused with a coded reason", () => {
  const base = { type: "evaluation", v: 1, jobId: "j", deviceId: "d", round: 2, samples: 10, accuracy: 0.5 };
  const cases: [Record<string, unknown>, string, Uint8Array?][] = [
    [{ ...base, v: 2 }, "E_EVAL_VERSION"],
    [{ ...base, v: undefined }, "E_EVAL_VERSION"],
    [base, "E_EVAL_INVALID", new Uint8Array(4)],
    [{ ...base, accuracy: 7 }, "E_EVAL_INVALID"],
    [{ ...base, samples: -3 }, "E_EVAL_INVALID"],
    [{ ...base, jobId: 5 }, "E_EVAL_INVALID"],
    [{ ...base, precision: "int4" }, "E_EVAL_INVALID"],
    [{ ...base, accuracy: undefined }, "E_EVAL_INVALID"],
    [{ ...base, deviceId: undefined }, "E_PROTO_HEADER"],
  ];
  for (const [header, code, payload] of cases) {
    assert.throws(
      () => decodeMessage(rawFrame(header, payload)),
      (e) => errorCode(e) === code,
      `${JSON.stringify(header)} → ${code}`,
    );
  }
});
