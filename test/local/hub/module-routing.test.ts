import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { type ModuleClient, Message } from "azure-iot-device";
import { createRegistry } from "../../../local/hub";
import { startTestHub, waitFor } from "./support";

const ROUTES = {
  toQueue:
    'FROM /messages/modules/trainer/outputs/updates INTO BrokeredEndpoint("/modules/queue/inputs/updates")',
  hot: "FROM /messages/modules/trainer/outputs/metrics WHERE $body.temperature > 30 AND kind = 'sensor' INTO $upstream",
  queueUp: "FROM /messages/modules/queue/outputs/* INTO $upstream",
};

type Received = { input: string; body: Buffer; props: Record<string, string> };

function collectInputs(c: ModuleClient): Received[] {
  const got: Received[] = [];
  c.on("inputMessage", (input: string, msg: Message) => {
    const props: Record<string, string> = {};
    for (let i = 0; i < msg.properties.count(); i++) {
      const p = msg.properties.getItem(i);
      props[p.key] = p.value;
    }
    got.push({ input, body: Buffer.from(msg.data as Buffer), props });
    void c.complete(msg);
  });
  return got;
}

test("a module output is routed to another module's input, and onward to $upstream", async () => {
  const t = await startTestHub({ routes: ROUTES });
  try {
    const trainer = await t.module("edge-1", "trainer");
    const queue = await t.module("edge-1", "queue");
    const got = collectInputs(queue);
    await waitFor(
      () => t.hub.subscriptions("edge-1", "queue").some((s) => s.includes("/inputs/")),
      5000,
      "queue subscribed",
    );

    const m = new Message(Buffer.from([1, 2, 3, 250]));
    m.messageId = "u-1";
    m.properties.add("round", "4");
    await trainer.sendOutputEvent("updates", m);
    await waitFor(() => got.length === 1, 5000, "input message");
    assert.equal(got[0].input, "updates");
    assert.deepEqual([...got[0].body], [1, 2, 3, 250]);
    assert.equal(got[0].props.round, "4");
    assert.equal(got[0].props["$.cdid"], "edge-1");
    assert.equal(got[0].props["$.cmid"], "trainer");
    assert.equal(t.events.length, 0, "updates are not routed upstream");

    // queue forwards upstream: arrives at onEvent tagged with the module id
    await queue.sendOutputEvent("out", new Message("aggregated"));
    await waitFor(() => t.events.length === 1, 5000, "upstream event");
    assert.equal(t.events[0].body.toString(), "aggregated");
    assert.equal(t.events[0].systemProperties["iothub-connection-device-id"], "edge-1");
    assert.equal(t.events[0].systemProperties["iothub-connection-module-id"], "queue");

    // WHERE on the JSON body and an application property: only the hot reading goes upstream
    const reading = (temperature: number, json = true) => {
      const m = new Message(JSON.stringify({ temperature }));
      if (json) {
        m.contentType = "application/json";
        m.contentEncoding = "utf-8";
      }
      m.properties.add("kind", "sensor");
      return m;
    };
    await trainer.sendOutputEvent("metrics", reading(10));
    await trainer.sendOutputEvent("metrics", reading(35, false)); // body not declared JSON: $body is undefined
    await trainer.sendOutputEvent("metrics", reading(35));
    await waitFor(() => t.events.length === 2, 5000, "hot event");
    assert.deepEqual(JSON.parse(t.events[1].body.toString()), { temperature: 35 });
    assert.equal(t.events[1].systemProperties["content-type"], "application/json");
    assert.equal(t.hub.metrics().unrouted, 2);
    assert.equal(t.hub.metrics().moduleInputsDelivered, 1);
  } finally {
    await t.close();
  }
});

test("messages for a module that is not connected yet are stored and forwarded in order", async () => {
  const t = await startTestHub({ routes: ROUTES });
  try {
    t.hub.createModule("edge-2", "queue");
    const trainer = await t.module("edge-2", "trainer");
    for (const body of ["a", "b", "c"]) await trainer.sendOutputEvent("updates", new Message(body));
    await waitFor(() => t.hub.metrics().moduleInputsQueued === 3, 5000, "3 held messages");
    const queue = await t.module("edge-2", "queue");
    const got = collectInputs(queue);
    await waitFor(() => got.length === 3, 5000, "held messages delivered");
    assert.deepEqual(
      got.map((g) => g.body.toString()),
      ["a", "b", "c"],
    );
    assert.equal(t.hub.metrics().moduleInputsDelivered, 3);
  } finally {
    await t.close();
  }
});

test("routes in the device's $edgeHub twin (deployment manifest) take precedence over the hub-wide table", async () => {
  const t = await startTestHub({ routes: ROUTES });
  try {
    t.hub.createModule("edge-3", "$edgeHub");
    const registry = createRegistry(t.hub);
    const twin = (await registry.getModuleTwin("edge-3", "$edgeHub")).responseBody;
    await twin.update({
      properties: {
        desired: {
          schemaVersion: "1.2",
          routes: {
            all: {
              route: "FROM /messages/modules/trainer/* INTO $upstream",
              priority: 0,
              timeToLiveSecs: 60,
            },
          },
          storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
        },
      },
    });
    const trainer = await t.module("edge-3", "trainer");
    await trainer.sendOutputEvent("updates", new Message("straight up"));
    await waitFor(() => t.events.length === 1, 5000, "upstream via $edgeHub routes");
    assert.equal(t.events[0].systemProperties["iothub-connection-module-id"], "trainer");
    assert.equal(t.hub.metrics().moduleInputsQueued, 0, "the hub-wide route to queue was not used");
  } finally {
    await t.close();
  }
});
