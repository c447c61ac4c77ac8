/** The --attack spec (local/sim/attacks/spec.ts) and the choice of attackers, and the config's checks. */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { DEFAULT_CONFIG, validateConfig } from "../../../../local/sim/config";
import { simAttack } from "../../../../local/sim/attacks";
import {
  attackParam,
  attackerCount,
  chooseAttackers,
  formatAttack,
  parseAttack,
} from "../../../../local/sim/attacks/spec";

test("specs parse, with each kind's default parameter", () => {
  assert.deepEqual(parseAttack("sign-flip:0.2"), { kind: "sign-flip", fraction: 0.2 });
  assert.deepEqual(parseAttack("IPM:0.2:100"), { kind: "ipm", fraction: 0.2, param: 100 });
  assert.deepEqual(parseAttack("label-flip:0.3:4"), { kind: "label-flip", fraction: 0.3, param: 4 });
  assert.equal(attackParam(parseAttack("scaling:0.2")), 100);
  assert.equal(attackParam(parseAttack("gaussian:0.2")), 10);
  assert.equal(attackParam(parseAttack("ipm:0.2")), 0.1);
  assert.equal(attackParam(parseAttack("backdoor:0.2")), 0.5);
  assert.equal(attackParam(parseAttack("alie:0.2")), undefined);
  assert.equal(formatAttack(parseAttack(" alie:0.25:1.5 ")), "alie:0.25:1.5");
});

test("bad specs are one E_CONFIG_ATTACK line each", () => {
  for (const bad of [
    "",
    "flip:0.2",
    "sign-flip",
    "sign-flip:0",
    "sign-flip:1",
    "sign-flip:-0.1",
    "sign-flip:abc",
    "sign-flip:0.2:0",
    "sign-flip:0.2:1:2",
    "gaussian:0.2:-1",
    "scaling:0.2:NaN",
    "alie:0.2:-1",
    "label-flip:0.2:1.5",
    "backdoor:0.2:0",
    "backdoor:0.2:1.5",
  ]) {
    assert.throws(
      () => parseAttack(bad),
      (e: Error & { code?: string }) => e.code === "E_CONFIG_ATTACK" && !e.message.includes("\n"),
      bad,
    );
  }
});

test("attackers: ⌈fraction·devices⌉ of the fleet, by seed, deterministic", () => {
  assert.equal(attackerCount(0.2, 10), 2);
  assert.equal(attackerCount(0.2, 11), 3);
  assert.equal(attackerCount(0.01, 10), 1);
  assert.equal(attackerCount(0.3, 10), 3, "0.3·10 is 3, not 4 (float rounding)");
  const a = chooseAttackers(0.2, 100, 42);
  assert.equal(a.length, 20);
  assert.deepEqual(a, chooseAttackers(0.2, 100, 42));
  assert.deepEqual(
    a,
    [...a].sort((x, y) => x - y),
  );
  assert.equal(new Set(a).size, 20);
  assert.notDeepEqual(a, chooseAttackers(0.2, 100, 43));
  assert.throws(() => chooseAttackers(0.9, 2, 1), { code: "E_CONFIG_ATTACK" });
  const s = simAttack({ attack: "scaling:0.2", devices: 10, seed: 42 })!;
  assert.equal(s.record.attackers.length, 2);
  assert.deepEqual(s.record, {
    kind: "scaling",
    fraction: 0.2,
    param: 100,
    attackers: s.indices.map((i) => `device-${String(i).padStart(3, "0")}`),
  });
  assert.ok(s.interceptor);
  assert.equal(simAttack({ attack: "label-flip:0.2", devices: 10, seed: 42 })!.interceptor, undefined);
});

test("the config refuses attacks over the IoT Hub stack, and model attacks with secure aggregation", () => {
  assert.throws(
    () => validateConfig({ ...DEFAULT_CONFIG, attack: "sign-flip:0.2", transport: "iothub" }),
    (e: Error & { code?: string }) => e.code === "E_CONFIG_CONFLICT" && /simulator only/.test(e.message),
  );
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, attack: "alie:0.2", secureAggregation: true }), {
    code: "E_CONFIG_CONFLICT",
  });
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, attack: "alie:2" }), { code: "E_CONFIG_ATTACK" });
  assert.equal(validateConfig({ ...DEFAULT_CONFIG, attack: "Scaling:0.20" }).attack, "scaling:0.2");
});
