/**
 * dispatch.ts (issue 12): one order per device, so a transient failure of its twin write (a dropped keep-alive
 * connection, a throttled call) is retried instead of leaving the device out of the round until the deadline.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import type { RoundDesired } from "../../../cloud/aggregator/src/fleet/fleet";
import { ORDER_ATTEMPTS } from "../../../cloud/aggregator/src/dispatch";
import { startJob, world } from "./support";

const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

test("a round order whose twin write fails transiently is retried and reaches the device", async () => {
  const w = world();
  const failures = new Map([["dev-b", 2]]);
  const configure = w.fleet.configureRound.bind(w.fleet);
  let calls = 0;
  w.fleet.configureRound = async (deviceId: string, desired: RoundDesired | null) => {
    calls++;
    const left = failures.get(deviceId) ?? 0;
    if (left > 0) {
      failures.set(deviceId, left - 1);
      throw new Error("socket hang up");
    }
    return configure(deviceId, desired);
  };
  const id = await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  assert.equal((await new JobRepository(w.store).getRound(id, 1))?.dispatched, true);
  assert.deepEqual(w.fleet.started.map((s) => s.deviceId).sort(), ["dev-a", "dev-b", "dev-c"]);
  assert.equal(calls, 5, "dev-b's order took 3 attempts");
  assert.ok(ORDER_ATTEMPTS >= 3);
});

test("an order that keeps failing is given up after ORDER_ATTEMPTS and logged; the others go out", async () => {
  const w = world();
  const configure = w.fleet.configureRound.bind(w.fleet);
  let attempts = 0;
  w.fleet.configureRound = async (deviceId: string, desired: RoundDesired | null) => {
    if (deviceId === "dev-c") {
      attempts++;
      throw new Error("hub unreachable");
    }
    return configure(deviceId, desired);
  };
  await startJob(w);
  await w.agg.roundTimer({}, ctxStub);
  assert.equal(attempts, ORDER_ATTEMPTS);
  assert.deepEqual(w.fleet.started.map((s) => s.deviceId).sort(), ["dev-a", "dev-b"]);
  assert.ok(
    w.logs.some((l) => /twin of dev-c not updated: hub unreachable/.test(l)),
    w.logs.join("\n"),
  );
});
