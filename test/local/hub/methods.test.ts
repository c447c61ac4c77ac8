import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createServiceClient } from "../../../local/hub";
import { startTestHub, waitFor } from "./support";

interface HttpishError extends Error {
  response?: { statusCode: number };
  responseBody?: string;
}

test("direct methods on a device and on a module, answered over their own MQTT connections", async () => {
  const t = await startTestHub();
  const service = t.track(createServiceClient(t.hub));
  try {
    const dev = await t.device("dev-m");
    dev.onDeviceMethod("train", (req, res) => {
      void res.send(200, { ok: true, echo: req.payload, name: req.methodName });
    });
    // connectTimeoutInSeconds: the hub waits for the device to subscribe to methods
    const r = await service.invokeDeviceMethod("dev-m", {
      methodName: "train",
      payload: { epochs: 2 },
      responseTimeoutInSeconds: 5,
      connectTimeoutInSeconds: 5,
    });
    assert.deepEqual(r.result, { status: 200, payload: { ok: true, echo: { epochs: 2 }, name: "train" } });

    const mod = await t.module("edge-m", "trainer");
    mod.onMethod("stop", (req, res) => {
      if (!req || !res) return;
      void res.send(409, { reason: `busy: ${String((req.payload as { why: string }).why)}` });
    });
    const r2 = await service.invokeDeviceMethod("edge-m", "trainer", {
      methodName: "stop",
      payload: { why: "round open" },
      responseTimeoutInSeconds: 5,
      connectTimeoutInSeconds: 5,
    });
    assert.deepEqual(r2.result, { status: 409, payload: { reason: "busy: round open" } });
    assert.equal(t.hub.metrics().methodsCompleted, 2);
  } finally {
    await t.close();
  }
});

test("a method to an offline device is 404 DeviceNotOnline at once; an unanswered one is 504 after the timeout", async () => {
  const t = await startTestHub();
  const service = t.track(createServiceClient(t.hub));
  try {
    t.hub.createDevice("sleepy");
    await assert.rejects(
      service.invokeDeviceMethod("sleepy", {
        methodName: "wake",
        payload: null,
        responseTimeoutInSeconds: 5,
      }),
      (e: HttpishError) => {
        assert.equal(e.response?.statusCode, 404);
        const outer = JSON.parse(e.responseBody as string) as { Message: string };
        assert.equal((JSON.parse(outer.Message) as { errorCode: number }).errorCode, 404103);
        return true;
      },
    );
    await assert.rejects(
      service.invokeDeviceMethod("nobody", {
        methodName: "wake",
        payload: null,
        responseTimeoutInSeconds: 5,
      }),
      (e: HttpishError) => e.name === "DeviceNotFoundError",
    );

    const dev = await t.device("mute");
    dev.onDeviceMethod("ignore", () => {
      /* never answers */
    });
    await waitFor(
      () => t.hub.subscriptions("mute").includes("$iothub/methods/POST/#"),
      5000,
      "methods subscription",
    );
    const started = Date.now();
    await assert.rejects(
      service.invokeDeviceMethod("mute", { methodName: "ignore", payload: {}, responseTimeoutInSeconds: 1 }),
      (e: HttpishError) => {
        assert.equal(e.name, "GatewayTimeoutError");
        assert.equal(e.response?.statusCode, 504);
        return true;
      },
    );
    assert.ok(Date.now() - started >= 900, "waited for the response timeout");
    const m = t.hub.metrics();
    assert.equal(m.methodsOffline, 1);
    assert.equal(m.methodsTimedOut, 1);
  } finally {
    await t.close();
  }
});
