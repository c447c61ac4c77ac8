import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { Message } from "azure-iot-device";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import { createLogger, type LogRecord } from "../../../core/log";
import { ModuleHost, type ModuleHooks, type ModuleHostOptions } from "../../../modules/shared/host";
import { FakeModuleClient } from "../update-queue/fake-client";
import { until } from "../update-queue/helpers";
import { ModuleMetrics, moduleMetricLabels } from "../../../modules/shared/metrics";

function hostOf(
  t: { after(fn: () => void | Promise<void>): void },
  opts: Partial<ModuleHostOptions> = {},
): { host: ModuleHost; client: FakeModuleClient; records: LogRecord[] } {
  const client = (opts.client as FakeModuleClient | undefined) ?? new FakeModuleClient();
  const records: LogRecord[] = [];
  const host = new ModuleHost({
    name: "test-module",
    client,
    log: createLogger({ component: "test-module", level: "debug", sink: (r) => records.push(r) }),
    stoppedCode: "E_QUEUE_STOPPED",
    reconnectDelay: () => 5,
    retryDelayMs: 1,
    ...opts,
  });
  t.after(() => host.stop());
  return { host, client, records };
}

test(
  "host: connects, reads the twin, and after a drop reconnects with backoff and reads it again",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    client.failOpens = 2;
    const events: string[] = [];
    const hooks: ModuleHooks = {
      onTwin: (_twin, fresh) => void events.push(`twin ${fresh ? "fresh" : "again"}`),
      onOnline: () => void events.push("online"),
      onOffline: () => void events.push("offline"),
      onProblem: (text) => void events.push(`problem ${text}`),
    };
    const { host, records } = hostOf(t, { client, hooks });
    await host.start(); // a failed open does not fail start: it is retried in the background
    assert.equal(host.online, false);
    await until(() => host.online, 5000, "connected");
    assert.equal(client.opens, 3);
    assert.equal(client.getTwinCalls, 1);
    assert.ok(records.some((r) => r.msg.startsWith("reconnecting in 5 ms")));
    const failed = records.find((r) => r.msg.startsWith("connecting failed"));
    assert.equal(failed?.level, "warn");
    assert.equal((failed?.fields.err as Error).message, "connection refused");

    client.drop();
    assert.equal(host.online, false);
    await until(() => host.online && client.getTwinCalls === 2, 5000, "reconnected");
    assert.equal(client.opens, 4);
    assert.deepEqual(
      events.filter((e) => !e.startsWith("problem")),
      ["twin fresh", "online", "offline", "twin again", "online"],
    );
    assert.ok(events.includes("problem disconnected: socket closed"));

    // A connect the SDK made by itself (no disconnect first) is followed by a twin read too.
    client.emit("connect");
    await until(() => client.getTwinCalls === 3, 5000, "twin read after the SDK's reconnect");
  }),
);

test(
  "host: a twin GET that hangs times out (E_TIMEOUT), the link counts as up, and the GET is retried",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    client.hangTwinGets = 1;
    const problems: string[] = [];
    const { host } = hostOf(t, {
      client,
      twinTimeoutMs: 20,
      hooks: { onProblem: (p) => void problems.push(p) },
    });
    await host.start();
    assert.equal(host.online, true);
    assert.match(problems[0], /reading the module twin failed: E_TIMEOUT: getTwin got no answer in 20 ms/);
    await until(() => host.twin !== undefined, 5000, "the twin read again");
    assert.equal(client.getTwinCalls, 2);
  }),
);

test(
  "host: the method table answers; a bad payload is 400 {code, message}; nothing is thrown out; 503 once stopped",
  withContext(async (t) => {
    const seen: unknown[] = [];
    const { host, client, records } = hostOf(t, {
      methods: {
        echo: (payload) => {
          seen.push(payload);
          return { status: 200, payload: { got: payload?.x ?? null } };
        },
        strict: (payload) => {
          if (!payload || !Array.isArray(payload.ids))
            throw new FlotillaError("E_QUEUE_INVALID", "expected { ids: string[] }");
          return { status: 200, payload: { n: payload.ids.length } };
        },
        broken: async () => {
          throw new Error("boom\nsecond line");
        },
        io: () => {
          throw new FlotillaError("E_QUEUE_IO", "disk gone");
        },
      },
      internalCode: "E_QUEUE_INTERNAL" as never,
      methodErrorStatus: (code) => (code === "E_QUEUE_IO" ? 500 : 400),
    });
    await host.start();
    assert.deepEqual(await client.invoke("echo", { x: 1 }), { status: 200, payload: { got: 1 } });
    assert.deepEqual(await client.invoke("echo", '{"x":2}'), { status: 200, payload: { got: 2 } });
    assert.deepEqual(await client.invoke("echo", Buffer.from('{"x":3}')), {
      status: 200,
      payload: { got: 3 },
    });
    // Not JSON, or not an object: the handler gets undefined.
    assert.deepEqual(await client.invoke("echo", "{nope"), { status: 200, payload: { got: null } });
    assert.deepEqual(await client.invoke("echo", [1, 2]), { status: 200, payload: { got: null } });
    assert.deepEqual(seen.slice(3), [undefined, undefined]);
    assert.deepEqual(await client.invoke("strict", "{nope"), {
      status: 400,
      payload: { code: "E_QUEUE_INVALID", message: "expected { ids: string[] }" },
    });
    assert.deepEqual(await client.invoke("strict", { ids: ["a"] }), { status: 200, payload: { n: 1 } });
    const broken = await client.invoke("broken", null);
    assert.equal(broken.status, 400);
    assert.deepEqual(broken.payload, { code: "E_QUEUE_INTERNAL", message: "boom second line" });
    assert.equal((await client.invoke("io", null)).status, 500);
    const logged = records.find((r) => r.fields.method === "io");
    assert.equal(logged?.level, "warn");
    assert.equal(logged?.fields.code, "E_QUEUE_IO");

    // A response that fails (the link dropped mid-answer), at once or later, is logged, never thrown.
    const handler = client.methods.get("echo")!;
    assert.doesNotThrow(() =>
      handler(
        { payload: {} },
        {
          send: () => {
            throw new Error("gone at once");
          },
        },
      ),
    );
    handler({ payload: {} }, { send: () => Promise.reject(new Error("gone later")) });
    await until(
      () => records.filter((r) => r.msg.startsWith("method response failed: gone")).length === 2,
      5000,
      "both failures logged",
    );

    await host.stop();
    assert.deepEqual(await client.invoke("echo", { x: 1 }), {
      status: 503,
      payload: { code: "E_QUEUE_STOPPED", message: "the test-module is stopped" },
    });
  }),
);

test(
  "host: reported state is throttled; changes in between coalesce into one patch with the latest state",
  withContext(async (t) => {
    let value = 0;
    const { host, client } = hostOf(t, {
      reportIntervalMs: 50,
      hooks: { reported: () => ({ state: { value } }) },
    });
    await host.start();
    await host.reportsSettled();
    const patches = client.twin.reportedPatches;
    assert.deepEqual(patches, [{ state: { value: 0 } }]); // sent at connection
    for (let i = 1; i <= 10; i++) {
      value = i;
      host.changed();
    }
    await until(() => patches.length === 2, 5000, "the throttled patch");
    await host.reportsSettled();
    assert.deepEqual(patches, [{ state: { value: 0 } }, { state: { value: 10 } }]);
    // Offline: nothing is sent; back online the current state goes out.
    client.drop();
    client.failOpens = 0;
    value = 11;
    host.reportNow();
    await until(() => host.online, 5000, "reconnected");
    await until(() => patches.length === 3, 5000, "the state after reconnecting");
    await host.reportsSettled();
    assert.deepEqual(patches.at(-1), { state: { value: 11 } });
    assert.ok(patches.every((p) => (p.state as { value: number }).value !== 11 || p === patches.at(-1)));
  }),
);

test(
  "host: sends are retried with backoff, then fail with the module's code; the stop signal ends them",
  withContext(async (t) => {
    const { host, client, records } = hostOf(t);
    await host.start();
    let failures = 2;
    const send = client.sendOutputEvent.bind(client);
    client.sendOutputEvent = async (output, msg) => {
      if (failures > 0) {
        failures--;
        throw new Error("link busy");
      }
      return send(output, msg);
    };
    const msgs = [new Message("a"), new Message("b")];
    msgs[0].messageId = "m-0";
    msgs[1].messageId = "m-1";
    await host.sendWithRetry("out", msgs, { failCode: "E_UPLOAD", attempts: 3 });
    assert.deepEqual(
      client.outputs.map((o) => [o.output, o.msg.messageId]),
      [
        ["out", "m-0"],
        ["out", "m-1"],
      ],
    );
    assert.equal(
      records.filter((r) => r.msg.includes("sending m-0 failed (link busy); retrying in")).length,
      2,
    );

    failures = 5;
    await assert.rejects(
      host.sendWithRetry("out", [msgs[0]], { failCode: "E_UPLOAD", attempts: 3 }),
      (e: unknown) =>
        isFlotillaError(e) &&
        e.code === "E_UPLOAD" &&
        /^sending m-0 failed 3 times: link busy/.test(e.message),
    );

    failures = 100;
    const pending = host.sendWithRetry("out", [msgs[1]], { failCode: "E_UPLOAD", attempts: 100 });
    await until(() => failures < 99, 5000, "a retry");
    await host.stop();
    await assert.rejects(pending, (e: unknown) => isFlotillaError(e) && e.code === "E_QUEUE_STOPPED");
  }),
);

test(
  "host: inputs by name (unknown ones logged and completed); stop drains, reports last, ignores input, closes",
  withContext(async (t) => {
    const got: string[] = [];
    let value = "running";
    const client = new FakeModuleClient();
    const { host, records } = hostOf(t, {
      client,
      closeClient: true,
      reportIntervalMs: 0,
      inputs: {
        updates: (msg) => {
          got.push(msg.getBytes().toString());
          host.complete(msg);
        },
      },
      hooks: { reported: () => ({ status: value }) },
    });
    await host.start();
    const a = client.deliver("updates", Buffer.from("one"));
    const b = client.deliver("elsewhere", Buffer.from("two"));
    await until(() => client.completed.length === 2, 5000, "completions");
    assert.deepEqual(got, ["one"]);
    assert.deepEqual(client.completed, [a, b]);
    assert.ok(records.some((r) => r.level === "warn" && r.msg.includes("unknown input 'elsewhere'")));

    let drained = false;
    await host.stop({
      drain: async () => {
        assert.equal(host.stopSignal.aborted, true);
        value = "stopped";
        drained = true;
      },
      finalReport: true,
    });
    assert.ok(drained);
    assert.deepEqual(client.twin.reportedPatches.at(-1), { status: "stopped" });
    assert.equal(client.closes, 1);
    client.deliver("updates", Buffer.from("late"));
    assert.deepEqual(got, ["one"]);
    await host.stop(); // idempotent
    assert.equal(client.closes, 1);
  }),
);

test(
  "host: setLinkEnabled(false) closes the client, stops reconnecting and holds sends (no attempt spent); true reconnects, reads the twin and sends",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    const events: string[] = [];
    const { host } = hostOf(t, {
      client,
      hooks: {
        onOnline: () => void events.push("online"),
        onOffline: () => void events.push("offline"),
      },
    });
    await host.start();
    assert.equal(host.online, true);
    assert.equal(client.getTwinCalls, 1);

    await host.setLinkEnabled(false);
    assert.equal(client.closes, 1, "the connection really ends");
    assert.equal(host.online, false);
    assert.equal(host.linkIsEnabled, false);
    // A disconnect the SDK reports now is not followed by a reconnect.
    client.emit("disconnect", new Error("socket closed"));
    await host.setLinkEnabled(false); // idempotent
    assert.equal(client.closes, 1);
    const sent = host.sendWithRetry("out", [new Message("a")], { failCode: "E_UPLOAD", attempts: 1 });
    let settled = false;
    void sent.then(
      () => (settled = true),
      () => (settled = true),
    );
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(settled, false, "the send waits for the link");
    assert.equal(client.outputs.length, 0);
    assert.equal(client.opens, 1, "no reconnect while the link is down");

    await host.setLinkEnabled(true);
    assert.equal(client.opens, 2);
    assert.equal(client.getTwinCalls, 2, "the twin is read again");
    assert.equal(host.online, true);
    await sent; // one attempt was allowed, and it was spent only once the link was back
    assert.equal(client.outputs.length, 1);
    assert.deepEqual(events, ["online", "offline", "online"]);
  }),
);

test(
  "host: a send waiting for a link taken down ends with the stop signal's reason when the module stops",
  withContext(async (t) => {
    const { host } = hostOf(t);
    await host.start();
    await host.setLinkEnabled(false);
    const sent = host.sendWithRetry("out", [new Message("a")], { failCode: "E_UPLOAD" });
    await host.stop();
    await assert.rejects(sent, (e: unknown) => isFlotillaError(e) && e.code === "E_QUEUE_STOPPED");
  }),
);

test(
  "host: link metrics — link up, reconnects, reported patches, method calls by method and status",
  withContext(async (t) => {
    const metrics = new ModuleMetrics({
      module: "test-module",
      labels: moduleMetricLabels("test-module", {}, { edge_device: "d" }),
    });
    const { host, client } = hostOf(t, {
      metrics,
      reportIntervalMs: 0,
      hooks: { reported: () => ({ state: { ok: true } }) },
      methods: {
        ping: () => ({ status: 200, payload: { pong: true } }),
        fail: () => {
          throw new FlotillaError("E_QUEUE_INVALID", "no");
        },
      },
    });
    const value = async (name: string, labels: Record<string, string> = {}): Promise<number | undefined> => {
      const m = (await metrics.registry.getMetricsAsJSON()).find(
        (x) => x.name === `flotilla_test_module_${name}`,
      );
      return m?.values.find((v) => Object.entries(labels).every(([k, l]) => String(v.labels[k]) === l))
        ?.value;
    };
    assert.equal(await value("link_up"), 0);
    await host.start();
    await host.reportsSettled();
    assert.equal(await value("link_up"), 1);
    assert.equal(await value("reconnects_total"), 0, "the first connection is not a reconnect");
    assert.equal(await value("reported_patches_total"), 1);

    client.drop();
    assert.equal(await value("link_up"), 0);
    await until(() => host.online, 5000, "reconnected");
    await host.reportsSettled();
    assert.equal(await value("link_up"), 1);
    assert.equal(await value("reconnects_total"), 1);
    assert.equal(await value("reported_patches_total"), 2, "the state again after reconnecting");

    await client.invoke("ping", {});
    await client.invoke("ping", {});
    await client.invoke("fail", {});
    assert.equal(await value("method_calls_total", { method: "ping", status: "200" }), 2);
    assert.equal(await value("method_calls_total", { method: "fail", status: "400" }), 1);

    await host.stop();
    assert.equal(await value("link_up"), 0, "stopped");
    // A stopped host answers 503, counted too.
    await client.invoke("ping", {});
    assert.equal(await value("method_calls_total", { method: "ping", status: "503" }), 1);
  }),
);
