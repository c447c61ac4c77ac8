import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { deviceSeed, roundSeed } from "../../../core/strategies/base";

test("round seeds depend on (seed, round) and use the whole seed", () => {
  assert.equal(roundSeed(42, 3), roundSeed(42, 3));
  const seen = new Set<number>();
  for (let seed = 0; seed < 50; seed++) for (let r = 0; r < 50; r++) seen.add(roundSeed(seed, r));
  assert.equal(seen.size, 2500, "no collisions on a small grid");
  assert.notEqual(roundSeed(1, 1), roundSeed(1 + 2 ** 32, 1), "bits above 32 count");
  assert.notEqual(
    roundSeed(-1, 1),
    roundSeed(2 ** 32 - 1, 1),
    "negative seeds are not aliased to their low word",
  );
  for (const x of seen) assert.ok(Number.isInteger(x) && x >= 0 && x < 2 ** 32);
});

test("device seeds depend on (seed, round, deviceId)", () => {
  assert.equal(deviceSeed(1, 2, "a"), deviceSeed(1, 2, "a"));
  const seen = new Set<number>();
  for (let r = 0; r < 20; r++) for (let d = 0; d < 50; d++) seen.add(deviceSeed(9, r, `device-${d}`));
  assert.equal(seen.size, 1000);
  assert.notEqual(deviceSeed(1, 2, "a"), deviceSeed(2, 2, "a"));
  assert.notEqual(deviceSeed(1, 2, "a"), roundSeed(1, 2));
});
