import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { benchSecAgg } from "../../../core/secagg/bench";
import { isFlotillaError } from "../../../core/errors";

test("benchSecAgg reports per-client and server cost of a small round with dropouts", async () => {
  const r = await benchSecAgg({ clients: 12, params: 5000, dropout: 0.1, seed: 3 });
  assert.equal(r.clients, 12);
  assert.equal(r.params, 5000);
  assert.equal(r.neighbours, 8);
  assert.equal(r.threshold, 5);
  for (const v of [r.clientMs, r.serverMs, r.bytesPerClient]) assert.ok(Number.isFinite(v) && v > 0, `${v}`);
  assert.ok(r.bytesPerClient > 4 * 5000, "the masked vector dominates the upload");
  assert.ok(r.included >= 12 - 1 - 1 && r.included <= 12);
  const classic = await benchSecAgg({ clients: 5, params: 100, dropout: 0, neighbours: 4, threshold: 3 });
  assert.equal(classic.included, 5);
  await assert.rejects(
    benchSecAgg({ clients: 2, params: 10, dropout: 0 }),
    (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_BENCH",
  );
});
