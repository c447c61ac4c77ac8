import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Client } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { createRegistry } from "../../../local/hub";
import { connectModelId } from "../../../local/hub/mqtt-broker";
import { MODEL_IDS } from "../../../local/pnp/contracts";
import { createModuleClient } from "../../../modules/shared/module-client";
import { MODEL_ID as TRAINER_MODEL_ID } from "../../../modules/trainer/src/model";
import { MODEL_ID as QUEUE_MODEL_ID } from "../../../modules/update-queue/src/model";
import { startTestHub } from "./support";

/**
 * IoT Plug and Play model IDs announced at connect (the SDK's `modelId` option: `&model-id=` in the MQTT CONNECT
 * user name), with the unmodified azure-iot-device / azure-iothub SDKs against the local hub: the module twin's
 * `modelId` through the service API, the twin query on it, and a device twin's.
 */

test("a module announces its model ID at connect (createModuleClient) and the service API shows it", async () => {
  const t = await startTestHub();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-model-id-"));
  try {
    const caCertPath = path.join(dir, "ca.pem");
    fs.writeFileSync(caCertPath, t.hub.caCertPem);
    const open = async (moduleId: string, modelId: string) => {
      const client = t.track(
        await createModuleClient(
          { mode: "connectionString", connectionString: t.hub.createModule("edge-1", moduleId), caCertPath },
          modelId,
        ),
      );
      await client.open();
      return client;
    };
    await open("trainer", TRAINER_MODEL_ID);
    await open("update-queue", QUEUE_MODEL_ID);
    // A module that announces nothing has modelId "" (as IoT Hub shows it).
    t.hub.createModule("edge-1", "other");
    await t.module("edge-1", "other");

    const registry = createRegistry(t.hub);
    const twin = (await registry.getModuleTwin("edge-1", "trainer")).responseBody as unknown as {
      modelId: string;
    };
    assert.equal(twin.modelId, "dtmi:flotilla:edge:Trainer;1");
    assert.equal(
      (
        (await registry.getModuleTwin("edge-1", "update-queue")).responseBody as unknown as {
          modelId: string;
        }
      ).modelId,
      "dtmi:flotilla:edge:UpdateQueue;1",
    );
    assert.equal(
      ((await registry.getModuleTwin("edge-1", "other")).responseBody as unknown as { modelId: string })
        .modelId,
      "",
    );

    // The twin query language filters on it.
    const rows = (
      await registry
        .createQuery(`SELECT * FROM devices.modules WHERE modelId = '${TRAINER_MODEL_ID}'`)
        .nextAsTwin()
    ).result as unknown as { deviceId: string; moduleId: string; modelId: string }[];
    assert.deepEqual(
      rows.map((r) => [r.deviceId, r.moduleId, r.modelId]),
      [["edge-1", "trainer", TRAINER_MODEL_ID]],
    );
    const flotilla = (
      await registry
        .createQuery("SELECT * FROM devices.modules WHERE STARTSWITH(modelId, 'dtmi:flotilla:edge:')")
        .nextAsTwin()
    ).result as unknown as { moduleId: string }[];
    assert.deepEqual(flotilla.map((r) => r.moduleId).sort(), ["trainer", "update-queue"]);
  } finally {
    await t.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a device twin shows the model ID its device announced; an invalid model ID is refused at connect", async () => {
  const t = await startTestHub();
  try {
    const device = t.track(Client.fromConnectionString(t.hub.createDevice("pnp-1"), Mqtt));
    await device.setOptions({ ca: t.hub.caCertPem, modelId: "dtmi:com:example:Thermostat;1" });
    await device.open();
    const registry = createRegistry(t.hub);
    const twin = (await registry.getTwin("pnp-1")).responseBody as unknown as { modelId: string };
    assert.equal(twin.modelId, "dtmi:com:example:Thermostat;1");
    const byModel = (
      await registry
        .createQuery("SELECT * FROM devices WHERE modelId = 'dtmi:com:example:Thermostat;1'")
        .nextAsTwin()
    ).result as unknown as { deviceId: string }[];
    assert.deepEqual(
      byModel.map((r) => r.deviceId),
      ["pnp-1"],
    );

    const bad = t.track(Client.fromConnectionString(t.hub.createDevice("pnp-2"), Mqtt));
    await bad.setOptions({ ca: t.hub.caCertPem, modelId: "not a dtmi" });
    await assert.rejects(bad.open());
    assert.ok(
      t.logs.some((l) => l.includes(`refused "pnp-2": model-id "not a dtmi" is not a valid DTMI`)),
      t.logs.join("\n"),
    );
  } finally {
    await t.close();
  }
});

test("connectModelId reads the model ID of a CONNECT user name's query", () => {
  assert.deepEqual(connectModelId("?api-version=2021-04-12&DeviceClientType=x"), { modelId: "" });
  assert.deepEqual(
    connectModelId("?api-version=2021-04-12&model-id=dtmi:flotilla:edge:Trainer;1&DeviceClientType=x"),
    { modelId: "dtmi:flotilla:edge:Trainer;1" },
  );
  // Percent-encoded (as some SDKs send it) reads the same.
  assert.deepEqual(connectModelId("?api-version=2020-09-30&model-id=dtmi%3Aa%3Ab%3B2"), {
    modelId: "dtmi:a:b;2",
  });
  // Before the Plug and Play api-version the model ID is not kept.
  assert.deepEqual(connectModelId("?api-version=2019-10-01&model-id=dtmi:a:b;1"), {
    modelId: "",
    ignored: "model-id ignored: api-version 2019-10-01 predates 2020-05-31",
  });
  assert.deepEqual(connectModelId("?api-version=2020-05-31-preview&model-id=dtmi:a:b;1"), {
    modelId: "dtmi:a:b;1",
  });
  for (const bad of ["dtmi:a:b", "dtmi:1a:b;1", "dtmi:a:b;0", "urn:a:b;1", `dtmi:${"a".repeat(600)};1`])
    assert.ok("invalid" in connectModelId(`?api-version=2021-04-12&model-id=${bad}`), bad);
  // Every module's own model ID is a valid one.
  for (const id of Object.values(MODEL_IDS))
    assert.deepEqual(connectModelId(`?api-version=2021-04-12&model-id=${id}`), { modelId: id });
});
