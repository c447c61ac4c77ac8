import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createRegistry } from "../../../local/hub";
import { reportedUpdate, startTestHub, waitFor, withTimeout } from "./support";

test("twin get, reported patch with version bump, and service desired patch -> device 'properties.desired'", async () => {
  const t = await startTestHub();
  try {
    const registry = createRegistry(t.hub);
    const dev = await t.device("trainer-1");
    const twin = await dev.getTwin();
    assert.equal(twin.properties.desired.$version, 1);
    assert.equal(twin.properties.reported.$version, 1);

    await reportedUpdate(twin, { round: 3, model: { layers: 2, name: "mlp" } });
    await reportedUpdate(twin, { model: { name: null } });
    const svcTwin = (await registry.getTwin("trainer-1")).responseBody;
    assert.equal(svcTwin.properties.reported.round, 3);
    assert.deepEqual(
      svcTwin.properties.reported.model,
      { layers: 2 },
      "null removed the property (merge patch)",
    );
    assert.equal(svcTwin.properties.reported.$version, 3);
    assert.equal((svcTwin as unknown as { connectionState: string }).connectionState, "Connected");
    assert.equal((svcTwin as unknown as { version: number }).version, 3);

    const updates: Record<string, unknown>[] = [];
    twin.on("properties.desired", (d: Record<string, unknown>) => updates.push(d));
    await waitFor(
      () => t.hub.subscriptions("trainer-1").includes("$iothub/twin/PATCH/properties/desired/#"),
      5000,
      "desired subscription",
    );
    const etagBefore = svcTwin.etag;
    await svcTwin.update({
      properties: { desired: { lr: 0.05, schedule: { warmup: 2 } } },
      tags: { site: "plant-a" },
    });
    await waitFor(() => updates.some((u) => u.lr === 0.05), 5000, "desired update on the device");
    const patch = updates.find((u) => u.lr === 0.05) as Record<string, unknown>;
    assert.equal(patch.$version, 2);
    assert.deepEqual(patch.schedule, { warmup: 2 });
    assert.equal(twin.properties.desired.lr, 0.05);
    assert.equal(t.hub.metrics().twinDesiredNotifications, 1);

    // A reconnecting device GETs the full document again: desired is there with its version.
    const again = await dev.getTwin();
    assert.equal(again.properties.desired.$version, 2);

    const after = (await registry.getTwin("trainer-1")).responseBody;
    assert.deepEqual(after.tags, { site: "plant-a" });
    assert.notEqual(after.etag, etagBefore, "the twin etag changes with the twin");
    assert.equal(after.etag, svcTwin.etag);
  } finally {
    await t.close();
  }
});

test("twin updates honour If-Match: a stale etag gets 412 (InvalidEtagError) and changes nothing", async () => {
  const t = await startTestHub();
  try {
    t.hub.createDevice("d-etag");
    const registry = createRegistry(t.hub);
    const first = (await registry.getTwin("d-etag")).responseBody;
    const staleEtag = first.etag;
    await registry.updateTwin("d-etag", { tags: { a: 1 } }, staleEtag);
    await assert.rejects(registry.updateTwin("d-etag", { tags: { a: 2 } }, staleEtag), (e: Error) => {
      assert.equal(e.name, "InvalidEtagError");
      return true;
    });
    const now = (await registry.getTwin("d-etag")).responseBody;
    assert.deepEqual(now.tags, { a: 1 });
    await registry.updateTwin("d-etag", { tags: { a: 3 } }, "*");
    assert.deepEqual((await registry.getTwin("d-etag")).responseBody.tags, { a: 3 });
    // Invalid property names (IoT Hub forbids '.', '$' and space) are refused with 400.
    await assert.rejects(
      registry.updateTwin("d-etag", { properties: { desired: { "a.b": 1 } } }, "*"),
      (e: Error) => {
        assert.equal(e.name, "ArgumentError");
        return true;
      },
    );
  } finally {
    await t.close();
  }
});

test("module twin: desired patch from the service reaches the ModuleClient; reported patch is visible to the service", async () => {
  const t = await startTestHub();
  try {
    const registry = createRegistry(t.hub);
    const mod = await t.module("edge-1", "aggregator");
    const twin = await mod.getTwin();
    await reportedUpdate(twin, { status: "ready" });
    const got = new Promise<Record<string, unknown>>((resolve) =>
      twin.on("properties.desired", (d: Record<string, unknown>) => {
        if (d.rounds) resolve(d);
      }),
    );
    await waitFor(
      () => t.hub.subscriptions("edge-1", "aggregator").includes("$iothub/twin/PATCH/properties/desired/#"),
      5000,
      "subscription",
    );
    const svcTwin = (await registry.getModuleTwin("edge-1", "aggregator")).responseBody;
    assert.equal((svcTwin as unknown as { moduleId: string }).moduleId, "aggregator");
    assert.equal(svcTwin.properties.reported.status, "ready");
    await registry.updateModuleTwin(
      "edge-1",
      "aggregator",
      { properties: { desired: { rounds: 10 } } },
      svcTwin.etag,
    );
    const d = await withTimeout(got, 5000, "module desired update");
    assert.equal(d.rounds, 10);
  } finally {
    await t.close();
  }
});
