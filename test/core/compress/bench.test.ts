import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { benchCodecs, DEFAULT_BENCH_SPECS } from "../../../core/compress";

test("benchCodecs returns one plain result per spec with sane figures", () => {
  const specs = ["none", "int8", "topk:0.01+int8", "randk:0.01+int8"];
  const r = benchCodecs({ size: 20_000, repeats: 1, specs });
  assert.deepEqual(
    r.map((b) => b.spec),
    specs,
  );
  for (const b of r) {
    assert.equal(b.values, 20_000);
    for (const v of [b.encodeGBps, b.decodeGBps, b.accumulateGBps, b.addReferenceGBps, b.ratio]) {
      assert.ok(Number.isFinite(v) && v > 0, `${b.spec}: ${v}`);
    }
    assert.equal(b.ratio, 80_000 / b.envelopeBytes);
    assert.equal(Object.getPrototypeOf(b), Object.prototype);
  }
  assert.ok(r[0].ratio < 1 && r[0].ratio > 0.99, "none: header only");
  assert.equal(r[0].maxAbsError, 0);
  assert.ok(r[1].ratio > 3.8);
  assert.ok(r[2].ratio > 50);
  assert.equal(DEFAULT_BENCH_SPECS.length, 9);
  assert.throws(
    () => benchCodecs({ size: 0 }),
    (e: unknown) => (e as { code?: string }).code === "E_CONFIG_BENCH",
  );
});
