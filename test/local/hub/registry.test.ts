import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Registry } from "azure-iothub";
import { Client, Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { createRegistry } from "../../../local/hub";
import { buildConnectionString, parseConnectionString } from "../../../local/hub/sas";
import { startTestHub } from "./support";

test("the adapter returns real azure-iothub objects; create/get/update/delete devices and modules over HTTPS", async () => {
  const t = await startTestHub();
  try {
    const registry = createRegistry(t.hub);
    assert.ok(registry instanceof Registry);

    const created = await registry.create({ deviceId: "reg-1", status: "enabled" });
    const dev = created.responseBody;
    assert.equal(dev.deviceId, "reg-1");
    const keys = dev.authentication?.symmetricKey;
    assert.ok(
      keys?.primaryKey && Buffer.from(keys.primaryKey, "base64").length === 32,
      "hub generated a key",
    );
    await assert.rejects(
      registry.create({ deviceId: "reg-1" }),
      (e: Error) => e.name === "DeviceAlreadyExistsError",
    );
    const got = (await registry.get("reg-1")).responseBody;
    assert.equal(got.authentication?.symmetricKey?.primaryKey, keys?.primaryKey);
    assert.equal(got.connectionState, "Disconnected");

    // A device created through the SDK connects with its generated key.
    const cs = buildConnectionString({
      HostName: t.hub.hubName,
      DeviceId: "reg-1",
      SharedAccessKey: keys?.primaryKey,
      GatewayHostName: `${t.hub.mqttHost}:${t.hub.mqttPort}`,
    });
    const client = t.track(Client.fromConnectionString(cs, Mqtt));
    await client.setOptions({ ca: t.hub.caCertPem });
    await client.open();
    await client.sendEvent(new Message("hi"));
    assert.equal((await registry.get("reg-1")).responseBody.connectionState, "Connected");

    // Disabling the device drops it and refuses new connections.
    await registry.update({ deviceId: "reg-1", status: "disabled" });
    const again = t.track(Client.fromConnectionString(cs, Mqtt));
    await again.setOptions({ ca: t.hub.caCertPem });
    await assert.rejects(again.open(), (e: Error) => e.name === "UnauthorizedError");

    await registry.addModule({ deviceId: "reg-1", moduleId: "m1" });
    const mod = (await registry.getModule("reg-1", "m1")).responseBody as unknown as {
      moduleId: string;
      deviceId: string;
    };
    assert.equal(mod.moduleId, "m1");
    assert.equal(mod.deviceId, "reg-1");
    const mods = (await registry.getModulesOnDevice("reg-1")).responseBody as unknown as {
      moduleId: string;
    }[];
    assert.deepEqual(
      mods.map((m) => m.moduleId),
      ["m1"],
    );

    await registry.delete("reg-1");
    await assert.rejects(registry.get("reg-1"), (e: Error) => e.name === "DeviceNotFoundError");
    await assert.rejects(
      registry.getModule("reg-1", "m1"),
      (e: Error & { response?: { statusCode: number } }) => e.response?.statusCode === 404,
    );
  } finally {
    await t.close();
  }
});

test("twin queries: WHERE on tags and reported properties, devices.modules, paging with continuation tokens", async () => {
  const t = await startTestHub();
  try {
    const registry = createRegistry(t.hub);
    for (let i = 1; i <= 5; i++) {
      t.hub.createDevice(`q-${i}`);
      await registry.updateTwin(`q-${i}`, { tags: { site: i % 2 ? "north" : "south", rank: i } }, "*");
    }
    t.hub.createModule("edge-q", "trainer");
    t.hub.createModule("edge-q", "queue");

    const names = (twins: { deviceId: string }[]) => twins.map((x) => x.deviceId);
    const north = await registry.createQuery("SELECT * FROM devices WHERE tags.site = 'north'").nextAsTwin();
    assert.deepEqual(names(north.result), ["q-1", "q-3", "q-5"]);

    const mixed = await registry
      .createQuery(
        "select * from devices where (tags.site = 'south' or tags.rank >= 5) and not deviceId = 'q-2'",
      )
      .nextAsTwin();
    assert.deepEqual(names(mixed.result), ["q-4", "q-5"]);

    // Paging: 5 q-devices + edge-q in pages of 2.
    const q = registry.createQuery("SELECT * FROM devices WHERE STARTSWITH(deviceId, 'q-')", 2);
    const pages: string[][] = [];
    while (q.hasMoreResults) pages.push(names((await q.nextAsTwin()).result));
    assert.deepEqual(pages, [["q-1", "q-2"], ["q-3", "q-4"], ["q-5"]]);

    const mods = await registry
      .createQuery("SELECT * FROM devices.modules WHERE moduleId = 'trainer'")
      .next();
    assert.deepEqual(
      (mods.result as { deviceId: string; moduleId: string }[]).map((m) => `${m.deviceId}/${m.moduleId}`),
      ["edge-q/trainer"],
    );
    const count = await registry
      .createQuery("SELECT COUNT() AS n FROM devices WHERE tags.site = 'south'")
      .next();
    assert.deepEqual(count.result, [{ n: 2 }]);
    const projected = await registry
      .createQuery("SELECT deviceId, tags.rank FROM devices WHERE tags.rank < 3")
      .next();
    assert.deepEqual(projected.result, [
      { deviceId: "q-1", rank: 1 },
      { deviceId: "q-2", rank: 2 },
    ]);
    await assert.rejects(
      registry.createQuery("SELECT * FROM jobs").next(),
      (e: Error) => e.name === "ArgumentError",
    );
  } finally {
    await t.close();
  }
});

test("the service API checks the SAS: a wrong policy key is 401 UnauthorizedError", async () => {
  const t = await startTestHub();
  try {
    const cs = parseConnectionString(t.hub.serviceConnectionString);
    const wrongKey = buildConnectionString({
      ...cs,
      SharedAccessKey: Buffer.alloc(32, 7).toString("base64"),
    });
    const wrongPolicy = buildConnectionString({ ...cs, SharedAccessKeyName: "registryRead" });
    for (const serviceConnectionString of [wrongKey, wrongPolicy]) {
      const registry = createRegistry({ ...t.hub, serviceConnectionString });
      await assert.rejects(registry.get("anything"), (e: Error) => e.name === "UnauthorizedError");
    }
    assert.equal(t.hub.metrics().restUnauthorized, 2);
    // The adapter also works from the plain info another process gets (connection string + CA path).
    t.hub.createDevice("visible");
    const fromInfo = createRegistry({
      serviceConnectionString: t.hub.serviceConnectionString,
      caCertPath: t.hub.caCertPath,
    });
    assert.equal((await fromInfo.get("visible")).responseBody.deviceId, "visible");
  } finally {
    await t.close();
  }
});
