import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { Registry } from "azure-iothub";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { withContext } from "../../helpers/context";
import { createRegistry, startLocalHub, type LocalHub } from "../../../local/hub";
import { tokenize, parseQuery } from "../../../local/hub/query";

/**
 * Automatic device management configurations on the local hub (local/hub/configurations.ts), driven by the
 * unmodified azure-iothub Registry (addConfiguration, getConfiguration(s), updateConfiguration, removeConfiguration,
 * applyConfigurationContentOnDevice): module configurations reach only the module twins their condition selects on
 * the module twins' own tags, overlapping paths go to the higher priority, a twin that leaves the target or a
 * removed configuration loses the settings (or takes the next configuration's), and the metrics count twins.
 */

type Twin = { tags?: Record<string, unknown>; properties: { desired: Record<string, unknown> } };

async function until<T>(probe: () => Promise<T | undefined>, what: string, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function setup(hub: LocalHub): Registry {
  return createRegistry({ serviceConnectionString: hub.serviceConnectionString, caCertPem: hub.caCertPem });
}

async function desired(r: Registry, d: string, m?: string): Promise<Record<string, unknown>> {
  const res = m === undefined ? await r.getTwin(d) : await r.getModuleTwin(d, m);
  return (res.responseBody as unknown as Twin).properties.desired;
}

async function statusOf(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
    return 200;
  } catch (e) {
    return (e as { response?: { statusCode?: number } }).response?.statusCode;
  }
}

const moduleConfig = (id: string, target: string, priority: number, content: Record<string, unknown>) => ({
  id,
  schemaVersion: "1.0",
  content: {
    moduleContent: Object.fromEntries(
      Object.entries(content).map(([k, v]) => [`properties.desired.${k}`, v]),
    ),
  },
  targetCondition: target,
  priority,
});

test(
  "module configurations: targeted by module twin tags only, priority on overlap, removal and re-targeting, metrics",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {}, configurationIntervalMs: 0 });
    t.after(() => hub.close());
    const r = setup(hub);
    for (const d of ["d1", "d2", "d3"]) hub.createModule(d, "update-queue");
    hub.createModule("d1", "trainer");
    // A device twin tag: module configurations cannot see it.
    await r.updateTwin("d1", { tags: { site: "berlin" } }, "*");
    for (const [d, ring] of [
      ["d1", "canary"],
      ["d2", "canary"],
      ["d3", "prod"],
    ])
      await r.updateModuleTwin(d, "update-queue", { tags: { ring } }, "*");

    await r.addConfiguration(
      moduleConfig("by-device-tag", "FROM devices.modules WHERE tags.site = 'berlin'", 50, {
        retentionHours: 1,
      }) as never,
    );
    await r.addConfiguration(
      moduleConfig(
        "low",
        "FROM devices.modules WHERE moduleId = 'update-queue' AND tags.ring IN ['canary', 'prod']",
        1,
        { maxChunkBytes: 50_000, resendAfterMs: 60_000 },
      ) as never,
    );
    const high = moduleConfig("high", "from devices.modules where tags.ring = 'canary'", 5, {
      maxChunkBytes: 65_536,
    });
    await r.addConfiguration({
      ...high,
      metrics: {
        queries: {
          applied:
            "SELECT deviceId, moduleId FROM devices.modules WHERE configurations.[[high]].status = 'Applied'",
          acked: "SELECT deviceId FROM devices.modules WHERE properties.reported.maxChunkBytes.ac = 200",
        },
      },
    } as never);

    // Applied at once: the higher priority wins maxChunkBytes on the canaries, the lower fills resendAfterMs.
    assert.equal((await desired(r, "d1", "update-queue")).maxChunkBytes, 65_536);
    assert.equal((await desired(r, "d2", "update-queue")).maxChunkBytes, 65_536);
    assert.equal((await desired(r, "d3", "update-queue")).maxChunkBytes, 50_000);
    for (const d of ["d1", "d2", "d3"])
      assert.equal((await desired(r, d, "update-queue")).resendAfterMs, 60_000);
    // The device tag targets no module twin, and nothing touched the trainer or the device twin.
    assert.equal((await desired(r, "d1", "update-queue")).retentionHours, undefined);
    assert.equal((await desired(r, "d1", "trainer")).maxChunkBytes, undefined);
    assert.equal((await desired(r, "d1")).maxChunkBytes, undefined);

    const get = async (id: string) =>
      (await r.getConfiguration(id)).responseBody as unknown as {
        systemMetrics: { results: Record<string, number> };
        metrics: { results: Record<string, number> };
        etag: string;
        priority: number;
        targetCondition: string;
      };
    assert.deepEqual((await get("high")).systemMetrics.results, { targetedCount: 2, appliedCount: 2 });
    assert.deepEqual((await get("low")).systemMetrics.results, { targetedCount: 3, appliedCount: 3 });
    assert.deepEqual((await get("by-device-tag")).systemMetrics.results, {
      targetedCount: 0,
      appliedCount: 0,
    });
    assert.deepEqual((await get("high")).metrics.results, { applied: 2, acked: 0 });

    // The twins show the configurations, and queries see them (`configurations.[[id]]`).
    const twin = (await r.getModuleTwin("d3", "update-queue")).responseBody as unknown as {
      configurations: Record<string, { status: string }>;
    };
    assert.deepEqual(twin.configurations, { low: { status: "Applied" } });
    const q = r.createQuery(
      "SELECT deviceId FROM devices.modules WHERE configurations.[[low]].status = 'Applied' AND tags.ring = 'canary'",
    );
    const rows = (await q.next()).result as unknown as { deviceId: string }[];
    assert.deepEqual(rows.map((x) => x.deviceId).sort(), ["d1", "d2"]);

    // d2 leaves the canary ring: the high configuration's value goes, the low one's takes its place.
    await r.updateModuleTwin("d2", "update-queue", { tags: { ring: "prod" } }, "*");
    await until(
      async () => ((await desired(r, "d2", "update-queue")).maxChunkBytes === 50_000 ? true : undefined),
      "d2 to take the low configuration's maxChunkBytes",
    );
    assert.deepEqual((await get("high")).systemMetrics.results, { targetedCount: 1, appliedCount: 1 });

    // Only the target condition, priority, labels and metrics may change; the content may not.
    const current = await get("high");
    await r.updateConfiguration({
      ...high,
      etag: current.etag,
      targetCondition: "FROM devices.modules WHERE tags.ring = 'prod'",
    } as never);
    assert.equal((await desired(r, "d1", "update-queue")).maxChunkBytes, 50_000, "d1 left the target");
    assert.equal((await desired(r, "d3", "update-queue")).maxChunkBytes, 65_536, "d3 entered it");
    assert.equal(
      await statusOf(
        r.updateConfiguration(
          { ...high, content: { moduleContent: { "properties.desired.maxChunkBytes": 1 } } } as never,
          true,
        ),
      ),
      400,
    );
    assert.equal(await statusOf(r.addConfiguration(high as never)), 409, "an existing id");

    // Removing the low configuration removes its settings where nothing else sets them.
    await r.removeConfiguration("low");
    const d1 = await desired(r, "d1", "update-queue");
    assert.equal(d1.maxChunkBytes, undefined);
    assert.equal(d1.resendAfterMs, undefined);
    assert.equal((await desired(r, "d3", "update-queue")).maxChunkBytes, 65_536);
    assert.equal(await statusOf(r.getConfiguration("low")), 404);
    const all = (await r.getConfigurations()).responseBody as unknown as { id: string }[];
    assert.deepEqual(all.map((c) => c.id).sort(), ["by-device-tag", "high"]);
  }),
);

test(
  "a configuration's value is written once: an operator's later direct change stands until the configuration changes",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {}, configurationIntervalMs: 0 });
    t.after(() => hub.close());
    const r = setup(hub);
    hub.createModule("d1", "update-queue");
    await r.updateModuleTwin("d1", "update-queue", { tags: { ring: "canary" } }, "*");
    await r.addConfiguration(
      moduleConfig("chunks", "FROM devices.modules WHERE tags.ring = 'canary'", 1, {
        maxChunkBytes: 65_536,
      }) as never,
    );
    await r.updateModuleTwin(
      "d1",
      "update-queue",
      { properties: { desired: { maxChunkBytes: 100_000 } } },
      "*",
    );
    // Re-evaluations (a tag change; another configuration's creation, which evaluates before it answers) keep the
    // operator's value.
    await r.updateModuleTwin("d1", "update-queue", { tags: { note: "x" } }, "*");
    await r.addConfiguration(
      moduleConfig("other", "FROM devices.modules WHERE tags.ring = 'none'", 1, {
        retentionHours: 2,
      }) as never,
    );
    const afterTagChange = (await r.getModuleTwin("d1", "update-queue")).responseBody as unknown as Twin;
    assert.equal(afterTagChange.properties.desired.maxChunkBytes, 100_000);
    // $metadata says when each desired property last changed (what `flotilla fleet acks` matches acks against).
    const meta = afterTagChange.properties.desired.$metadata as Record<
      string,
      { $lastUpdatedVersion: number }
    >;
    assert.equal(meta.maxChunkBytes.$lastUpdatedVersion, afterTagChange.properties.desired.$version);
  }),
);

test(
  "device configurations (deviceContent, device twin tags or *) and applyConfigurationContentOnDevice",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {}, configurationIntervalMs: 0 });
    t.after(() => hub.close());
    const r = setup(hub);
    hub.createModule("d1", "update-queue");
    hub.createDevice("d2");
    await r.updateTwin("d1", { tags: { site: "berlin" } }, "*");
    await r.addConfiguration({
      id: "site-settings",
      content: { deviceContent: { "properties.desired.telemetry.periodS": 30 } },
      targetCondition: "tags.site = 'berlin'",
      priority: 1,
    } as never);
    assert.deepEqual((await desired(r, "d1")).telemetry, { periodS: 30 });
    assert.equal((await desired(r, "d2")).telemetry, undefined);
    assert.equal((await desired(r, "d1", "update-queue")).telemetry, undefined, "module twins untouched");
    await r.addConfiguration({
      id: "everyone",
      content: { deviceContent: { "properties.desired.fleet": "flotilla" } },
      targetCondition: "*",
    } as never);
    assert.equal((await desired(r, "d2")).fleet, "flotilla");

    await r.applyConfigurationContentOnDevice("d1", {
      modulesContent: {
        $edgeAgent: { "properties.desired": { schemaVersion: "1.1" } },
        "update-queue": { "properties.desired": { maxChunkBytes: 100_000 } },
      },
    } as never);
    assert.equal((await desired(r, "d1", "update-queue")).maxChunkBytes, 100_000);

    // Refused: uppercase ids, module conditions without FROM devices.modules or targeting all, content keys
    // outside properties.desired, two content kinds, edge deployments, too many metrics, unknown ids.
    const bad = [
      { id: "Upper", content: { deviceContent: { "properties.desired.a": 1 } }, targetCondition: "*" },
      { id: "m1", content: { moduleContent: { "properties.desired.a": 1 } }, targetCondition: "tags.x = 1" },
      {
        id: "m2",
        content: { moduleContent: { "properties.desired.a": 1 } },
        targetCondition: "FROM devices.modules WHERE *",
      },
      {
        id: "m3",
        content: { moduleContent: { "tags.a": 1 } },
        targetCondition: "FROM devices.modules WHERE tags.x = 1",
      },
      {
        id: "m4",
        content: {
          moduleContent: { "properties.desired.a": 1 },
          deviceContent: { "properties.desired.a": 1 },
        },
        targetCondition: "*",
      },
      { id: "m5", content: { modulesContent: {} }, targetCondition: "tags.x = 1" },
      {
        id: "m6",
        content: { deviceContent: { "properties.desired.a": 1 } },
        targetCondition: "*",
        metrics: {
          queries: Object.fromEntries(
            [1, 2, 3, 4, 5, 6].map((i) => [`m${i}`, "SELECT deviceId FROM devices"]),
          ),
        },
      },
      { id: "m7", content: { deviceContent: { "properties.desired.a": 1 } }, targetCondition: "tags.x = " },
    ];
    for (const c of bad) assert.equal(await statusOf(r.addConfiguration(c as never)), 400, JSON.stringify(c));
    assert.equal(await statusOf(r.getConfiguration("nope")), 404);
    assert.equal(await statusOf(r.removeConfiguration("nope")), 404);
  }),
);

test(
  "targets on reported properties are re-evaluated on the hub's interval (configurationIntervalMs)",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {}, configurationIntervalMs: 50 });
    const client = ModuleClient.fromConnectionString(hub.createModule("d1", "update-queue"), Mqtt);
    await client.setOptions({ ca: hub.caCertPem });
    await client.open();
    t.after(async () => {
      await client.close();
      await hub.close();
    });
    const r = setup(hub);
    await r.addConfiguration(
      moduleConfig("metered", "FROM devices.modules WHERE properties.reported.link = 'cellular'", 1, {
        meteredLink: true,
      }) as never,
    );
    assert.equal((await desired(r, "d1", "update-queue")).meteredLink, undefined);
    const twin = await client.getTwin();
    await new Promise<void>((resolve, reject) =>
      twin.properties.reported.update({ link: "cellular" }, (e?: Error) => (e ? reject(e) : resolve())),
    );
    await until(
      async () => ((await desired(r, "d1", "update-queue")).meteredLink === true ? true : undefined),
      "the configuration to reach the module that reported a cellular link",
    );
  }),
);

test("the query language reads bracketed names after a dot: configurations.[[my-config]].status", () => {
  const toks = tokenize("configurations.[[my-config+1]].status = 'Applied'");
  assert.deepEqual(
    toks.slice(0, 5).map((x) => x.text),
    ["configurations", ".", "my-config+1", ".", "status"],
  );
  assert.ok(parseQuery("SELECT deviceId FROM devices WHERE configurations.[[a]].status = 'Applied'").where);
  assert.throws(() => tokenize("configurations.[[open"), { code: "E_HUB_QUERY" });
  // An IN list keeps its brackets.
  assert.ok(parseQuery("SELECT * FROM devices WHERE tags.x IN ['a']").where);
});
