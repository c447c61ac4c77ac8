/**
 * local/stack/quiet-mqtt.ts: the stack's device transport sends and receives module messages like the SDK's Mqtt
 * transport, without serialising their bodies for a debug line (Buffer#toJSON on every 255,000-byte chunk).
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { Message, ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { QuietMqtt, quietMqttFits } from "../../../local/stack/quiet-mqtt";
import { startTestHub, waitFor } from "../hub/support";

const ROUTES = {
  toQueue:
    'FROM /messages/modules/trainer/outputs/updates INTO BrokeredEndpoint("/modules/queue/inputs/updates")',
};

test("the installed azure-iot-device-mqtt still has the internals QuietMqtt overrides", () => {
  assert.equal(quietMqttFits(), true);
});

/** Sends one 255,000-byte chunk trainer → queue with `transport`; returns how often Buffer#toJSON ran meanwhile. */
async function toJsonCalls(transport: typeof Mqtt): Promise<number> {
  const t = await startTestHub({ routes: ROUTES });
  const open = async (moduleId: string) => {
    const c = t.track(ModuleClient.fromConnectionString(t.hub.createModule("edge-1", moduleId), transport));
    await c.setOptions({ ca: t.hub.caCertPem });
    await c.open();
    return c;
  };
  const original = Buffer.prototype.toJSON;
  let calls = 0;
  try {
    const trainer = await open("trainer");
    const queue = await open("queue");
    const got: Buffer[] = [];
    queue.on("inputMessage", (_input: string, msg: Message) => {
      got.push(Buffer.from(msg.data as Buffer));
      void queue.complete(msg);
    });
    await waitFor(
      () => t.hub.subscriptions("edge-1", "queue").some((s) => s.includes("/inputs/")),
      5000,
      "queue subscribed",
    );
    Buffer.prototype.toJSON = function (this: Buffer) {
      calls++;
      return original.call(this);
    };
    const body = Buffer.alloc(255_000, 7);
    await trainer.sendOutputEvent("updates", new Message(body));
    await waitFor(() => got.length === 1, 10_000, "input message");
    assert.ok(got[0].equals(body), "the body arrives unchanged");
    return calls;
  } finally {
    Buffer.prototype.toJSON = original;
    await t.close();
  }
}

test("QuietMqtt delivers module messages without serialising their bodies; the SDK's Mqtt does", async () => {
  assert.equal(await toJsonCalls(QuietMqtt), 0);
  assert.ok((await toJsonCalls(Mqtt)) > 0, "the SDK's transport stringifies the body it sends");
});
