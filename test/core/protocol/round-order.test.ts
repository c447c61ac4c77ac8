/** The evaluate-only order (core/protocol/round-order.ts, docs/evaluation.md): what a trainer accepts and refuses. */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { EVALUATE_ORDER_VERSION, parseEvaluateOrder } from "../../../core/protocol/round-order";
import { errorCode as codeOf } from "../../helpers/errors";

const sha = "ab".repeat(32);
const order = {
  v: 1,
  jobId: "job-1",
  round: 10,
  onnx: { url: "https://blob/m.onnx?sig", sha256: sha, int8Url: "https://blob/m.int8.onnx", int8Sha256: sha },
  modelSpec: { kind: "mlp", inputShape: [4], numClasses: 3, hidden: [8] },
};

test("an evaluate-only order parses; no order (null, absent, no jobId) is undefined", () => {
  const o = parseEvaluateOrder(order)!;
  assert.equal(o.v, EVALUATE_ORDER_VERSION);
  assert.equal(o.jobId, "job-1");
  assert.equal(o.round, 10);
  assert.deepEqual(o.onnx, order.onnx);
  assert.equal(o.modelSpec.kind, "mlp");
  for (const none of [null, undefined, {}, { jobId: null, v: 1 }])
    assert.equal(parseEvaluateOrder(none), undefined);
});

test("keys a twin patch cleared (null) read as absent; digests are lower-cased", () => {
  const o = parseEvaluateOrder({
    ...order,
    onnx: { url: order.onnx.url, sha256: sha.toUpperCase(), int8Url: null, int8Sha256: null },
    modelSpec: { ...order.modelSpec, filters: null, layers: null },
  })!;
  assert.deepEqual(o.onnx, { url: order.onnx.url, sha256: sha });
  assert.equal(Object.hasOwn(o.modelSpec, "filters"), false);
});

test("bad evaluate-only orders are refused with a coded reason", () => {
  const cases: [unknown, string][] = [
    [{ ...order, v: 2 }, "E_EVAL_ORDER_VERSION"],
    [{ ...order, v: undefined }, "E_EVAL_ORDER_VERSION"],
    [{ ...order, v: "1" }, "E_EVAL_ORDER_VERSION"],
    ["evaluate", "E_EVAL_ORDER_INVALID"],
    [[order], "E_EVAL_ORDER_INVALID"],
    [{ ...order, jobId: 5 }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, jobId: "" }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, jobId: "a\nb" }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, jobId: "x".repeat(129) }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, round: 0 }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, round: 1.5 }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, round: 2 ** 31 }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, round: "10" }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, onnx: undefined }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, onnx: null }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, onnx: { ...order.onnx, url: "file:///etc/passwd" } }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, onnx: { ...order.onnx, sha256: "abc" } }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, onnx: { ...order.onnx, int8Sha256: undefined } }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, onnx: { ...order.onnx, int8Url: 7 } }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, modelSpec: undefined }, "E_EVAL_ORDER_INVALID"],
    [{ ...order, modelSpec: { kind: "nope" } }, "E_EVAL_ORDER_INVALID"],
  ];
  for (const [value, code] of cases)
    assert.equal(
      codeOf(() => parseEvaluateOrder(value)),
      code,
      `${JSON.stringify(value)} → ${code}`,
    );
});
