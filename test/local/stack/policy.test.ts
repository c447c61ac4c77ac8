/**
 * Device policy over the local stack (issue 17): 20 devices with the real device modules and SDKs, the embedded IoT
 * Hub, Azurite and the aggregation Function's handlers, unchanged. An operator — through the azure-iothub Registry,
 * as `az iot hub module-twin update` writes desired properties — disables five trainers and narrows the training
 * windows of five more to a window that excludes now; one more gets an invalid value (`enabled: "no"`), which the
 * device refuses and which must not exclude it. With clientsPerRound above the fleet size every other device is
 * ordered each round: the ten are never ordered, and each round record counts disabled 5 and window 5.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createRegistry } from "../../../local/hub";
import type { RoundRecord } from "../../../cloud/aggregator/src/jobs/state";
import { api, roundState, startFaultFleet, startJob, waitJobDone } from "./fault-support";

const hhmm = (min: number): string => {
  const m = ((Math.floor(min) % 1440) + 1440) % 1440;
  return `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
};

test("20 devices: the five an operator disabled and the five outside their training window are never ordered; each round record counts them", async () => {
  const f = await startFaultFleet(20, 20);
  try {
    const registry = createRegistry({
      serviceConnectionString: f.stack.hub.serviceConnectionString,
      caCertPem: f.stack.hub.caCertPem,
    });
    const disabled = f.deviceIds.slice(0, 5);
    const narrowed = f.deviceIds.slice(5, 10);
    const refused = f.deviceIds[10]!;
    const ordered = f.deviceIds.slice(10);
    // A window in India Standard Time (UTC+05:30, no daylight saving) from 6 to 7 hours after now, local time:
    // outside it for the whole test, whatever the hour it runs at.
    const localMin = ((Date.now() + 5.5 * 3600_000) % 86_400_000) / 60_000;
    const window = { timeZone: "Asia/Kolkata", windows: [`${hhmm(localMin + 360)}-${hhmm(localMin + 420)}`] };
    const desired = (deviceId: string, props: Record<string, unknown>) =>
      registry.updateModuleTwin(deviceId, "trainer", { properties: { desired: props } }, "*");
    for (const id of disabled) await desired(id, { enabled: false });
    for (const id of narrowed) await desired(id, { trainingWindows: window });
    await desired(refused, { enabled: "no" });

    // The Function's fleet reads the policy from the module twins (one query per module kind).
    const listed = await f.stack.aggregator.services.fleet.listTrainers();
    assert.equal(listed.length, 20);
    const policy = new Map(listed.map((t) => [t.deviceId, t.policy]));
    for (const id of disabled) assert.equal(policy.get(id)?.enabled, false, id);
    for (const id of narrowed) assert.deepEqual(policy.get(id)?.trainingWindows, window, id);
    assert.deepEqual(policy.get(refused), { enabled: true }, "an invalid value never takes effect");

    const jobId = "policy-20";
    const rounds = 3;
    await api(f.stack.host.url, "POST", "jobs", {
      jobId,
      modelSpec: f.data.spec,
      strategy: "fedavg",
      strategyOptions: { clientsPerRound: 20, fit: { epochs: 1, batchSize: 10, lr: 0.05 }, seed: 7 },
      rounds,
      roundDeadlineSeconds: 120,
      minCompletedFraction: 1,
      seed: 7,
    });
    await startJob(f, jobId);
    const doc = await waitJobDone(f, jobId, 240_000);
    assert.equal(doc.status, "completed", doc.stopMessage);

    // The ordered sets: every round's participants are exactly the ten the policy allows (the refused value
    // included).
    for (let r = 1; r <= rounds; r++) {
      const st = await roundState(f.store, jobId, r);
      assert.deepEqual(
        st?.participants.map((p) => p.deviceId).sort(),
        [...ordered].sort(),
        `round ${r}'s participants`,
      );
    }
    // The round records, as GET /api/jobs/{id} gives them.
    const got = (await api(f.stack.host.url, "GET", `jobs/${jobId}`)) as { history: RoundRecord[] };
    assert.equal(got.history.length, rounds);
    for (const rec of got.history) {
      assert.deepEqual(rec.policyExcluded, { disabled: 5, window: 5 }, `round ${rec.round}`);
      assert.equal(rec.candidates, 10, `round ${rec.round}`);
      assert.equal(rec.completed, 10, `round ${rec.round}`);
    }
    // And the hub never carried an order to the ten: their trainer twins hold no round order.
    for (const id of [...disabled, ...narrowed]) {
      const twin = (await registry.getModuleTwin(id, "trainer")).responseBody as unknown as {
        properties: { desired: Record<string, unknown> };
      };
      assert.equal(twin.properties.desired.flotilla ?? null, null, `${id} was never ordered`);
    }
  } finally {
    await f.stack.close();
  }
});
