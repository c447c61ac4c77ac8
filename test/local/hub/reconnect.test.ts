import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Message } from "azure-iot-device";
import { createServiceClient } from "../../../local/hub";
import { rawClient, rawConnected, rawEnd, startTestHub, waitFor } from "./support";

test("the SDK reconnects after the hub drops its transport; twin, telemetry and methods still work", async () => {
  const t = await startTestHub();
  const service = t.track(createServiceClient(t.hub));
  try {
    const dev = await t.device("flaky");
    dev.onDeviceMethod("ping", (_req, res) => void res.send(200, "pong"));
    await waitFor(
      () => t.hub.subscriptions("flaky").includes("$iothub/methods/POST/#"),
      5000,
      "methods subscription",
    );
    const connectionsBefore = t.hub.metrics().connections;

    assert.equal(t.hub.disconnect("flaky"), true);
    await waitFor(
      () => t.hub.metrics().connections > connectionsBefore && t.hub.isOnline("flaky"),
      15_000,
      "SDK reconnect",
    );

    await dev.sendEvent(new Message("after reconnect"));
    await waitFor(() => t.events.length === 1, 5000, "event after reconnect");
    const twin = await dev.getTwin();
    assert.equal(twin.properties.desired.$version, 1);
    const r = await service.invokeDeviceMethod("flaky", {
      methodName: "ping",
      payload: null,
      responseTimeoutInSeconds: 5,
      connectTimeoutInSeconds: 5,
    });
    assert.deepEqual(r.result, { status: 200, payload: "pong" });
  } finally {
    await t.close();
  }
});

test("close and reopen the same SDK client: methods and telemetry work again without re-registering", async () => {
  const t = await startTestHub();
  const service = t.track(createServiceClient(t.hub));
  try {
    const dev = await t.device("sleeper");
    dev.onDeviceMethod("status", (_req, res) => void res.send(200, { awake: true }));
    await waitFor(
      () => t.hub.subscriptions("sleeper").includes("$iothub/methods/POST/#"),
      5000,
      "methods subscription",
    );
    await dev.close();
    await waitFor(() => !t.hub.isOnline("sleeper"), 5000, "offline");
    await assert.rejects(
      service.invokeDeviceMethod("sleeper", {
        methodName: "status",
        payload: null,
        responseTimeoutInSeconds: 5,
      }),
      (e: Error & { response?: { statusCode: number } }) => e.response?.statusCode === 404,
    );

    await dev.open();
    await waitFor(
      () => t.hub.subscriptions("sleeper").includes("$iothub/methods/POST/#"),
      5000,
      "restored subscription",
    );
    const r = await service.invokeDeviceMethod("sleeper", {
      methodName: "status",
      payload: null,
      responseTimeoutInSeconds: 5,
    });
    assert.deepEqual(r.result, { status: 200, payload: { awake: true } });
    await dev.sendEvent(new Message("back"));
    await waitFor(() => t.events.length === 1, 5000, "event after reopen");
  } finally {
    await t.close();
  }
});

test("a persistent session (clean:false) keeps its subscriptions across a reconnect without SUBSCRIBE", async () => {
  const t = await startTestHub();
  const service = t.track(createServiceClient(t.hub));
  try {
    t.hub.createDevice("sessioned");
    const first = rawClient(t.hub, "sessioned", { clean: false });
    await rawConnected(first);
    await new Promise<void>((resolve, reject) =>
      first.subscribe("$iothub/methods/POST/#", { qos: 0 }, (e) => (e ? reject(e) : resolve())),
    );
    await rawEnd(first);
    await waitFor(() => !t.hub.isOnline("sessioned"), 5000, "offline");

    const second = rawClient(t.hub, "sessioned", { clean: false });
    const sessionPresent = new Promise<boolean>((resolve) =>
      second.once("connect", (ack) => resolve(ack.sessionPresent)),
    );
    await rawConnected(second);
    assert.equal(await sessionPresent, true);
    second.on("message", (topic, payload) => {
      const rid = /\$rid=([^&]+)/.exec(topic)?.[1];
      second.publish(
        `$iothub/methods/res/201/?$rid=${rid}`,
        JSON.stringify({ got: JSON.parse(payload.toString()) }),
      );
    });
    const r = await service.invokeDeviceMethod("sessioned", {
      methodName: "m",
      payload: [1, 2],
      responseTimeoutInSeconds: 5,
    });
    assert.deepEqual(r.result, { status: 201, payload: { got: [1, 2] } });
    await rawEnd(second);
  } finally {
    await t.close();
  }
});
