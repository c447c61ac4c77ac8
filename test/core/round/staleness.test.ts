import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  DEFAULT_STALENESS,
  formatStaleness,
  parseStaleness,
  stalenessWeight,
} from "../../../core/round/staleness";

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} vs ${b}`);

test("poly:0.5 is the default, FedBuff's 1/√(1+τ)", () => {
  assert.deepEqual(parseStaleness("poly"), DEFAULT_STALENESS);
  assert.deepEqual(parseStaleness("poly:0.5"), DEFAULT_STALENESS);
  for (const tau of [0, 1, 3, 8, 99]) close(stalenessWeight(DEFAULT_STALENESS, tau), 1 / Math.sqrt(1 + tau));
});

test("poly:a is (1+τ)^-a, hinge:a,b is 1 up to b then 1/(a(τ−b)+1), const is 1 (Xie et al. 2019 §5.2)", () => {
  const p = parseStaleness("poly:2");
  close(stalenessWeight(p, 0), 1);
  close(stalenessWeight(p, 3), 1 / 16);
  const h = parseStaleness(" Hinge: 10 , 4 ");
  assert.deepEqual(h, { kind: "hinge", a: 10, b: 4 });
  close(stalenessWeight(h, 0), 1);
  close(stalenessWeight(h, 4), 1);
  close(stalenessWeight(h, 5), 1 / 11);
  close(stalenessWeight(h, 6), 1 / 21);
  const c = parseStaleness("const");
  assert.equal(stalenessWeight(c, 1000), 1);
  // every weight is in (0, 1] and does not grow with τ
  for (const f of [p, h, c, DEFAULT_STALENESS]) {
    let last = 1;
    for (let tau = 0; tau < 50; tau++) {
      const w = stalenessWeight(f, tau);
      assert.ok(w > 0 && w <= last, `${formatStaleness(f)} at ${tau}: ${w}`);
      last = w;
    }
  }
});

test("specs round-trip through formatStaleness", () => {
  for (const s of ["poly:0.5", "poly:1.5", "hinge:10,4", "const"])
    assert.equal(formatStaleness(parseStaleness(s)), s);
});

test("an invalid spec or τ is one E_CONFIG_STALENESS line", () => {
  for (const bad of [
    "",
    "exp:1",
    "poly:-1",
    "poly:x",
    "poly:1,2",
    "hinge:1",
    "hinge:1,2,3",
    "const:1",
    "poly:1:2",
  ]) {
    assert.throws(
      () => parseStaleness(bad),
      (e: Error & { code?: string }) => e.code === "E_CONFIG_STALENESS" && !e.message.includes("\n"),
      bad,
    );
  }
  assert.throws(() => stalenessWeight(DEFAULT_STALENESS, -1), { code: "E_CONFIG_STALENESS" });
  assert.throws(() => stalenessWeight(DEFAULT_STALENESS, NaN), { code: "E_CONFIG_STALENESS" });
});
