import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { withContext } from "../../helpers/context";
import { createRegistry, startLocalHub, writeHubInfo } from "../../../local/hub";
import { startUpdateQueue, type UpdateQueueHandle } from "../../../modules/update-queue/src/main";
import { check, run, scratch } from "./spawn-cli";

/**
 * `flotilla fleet` end to end (docs/operations.md): the real CLI (bin/flotilla.js, a child process) against the
 * local hub through the azure-iothub Registry, with real update-queue modules on azure-iot-device ModuleClients
 * acknowledging what the operator sets (Plug and Play acks), and every bad input one coded line with exit code 2.
 */

const dir = scratch();

async function until<T>(probe: () => Promise<T | undefined>, what: string, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface AckRowJson {
  deviceId: string;
  moduleId: string;
  property: string;
  desired: unknown;
  ack: { value: unknown; ac: number; av: number; ad?: string } | null;
  state: string;
}

test(
  "fleet list, set (one device, a tag query, --wait for real acks), acks, rollout and rollouts against the local hub",
  withContext(async (t) => {
    const hub = await startLocalHub({ log: () => {}, configurationIntervalMs: 100 });
    const info = path.join(dir, "hub.json");
    writeHubInfo(hub, info);
    const queues: UpdateQueueHandle[] = [];
    t.after(async () => {
      for (const q of queues) await q.stop();
      await hub.close();
    });
    for (const d of ["edge-1", "edge-2"]) {
      const client = ModuleClient.fromConnectionString(hub.createModule(d, "update-queue"), Mqtt);
      await client.setOptions({ ca: hub.caCertPem });
      queues.push(
        await startUpdateQueue({
          client,
          dir: path.join(dir, d),
          closeClient: true,
          reportIntervalMs: 50,
          log: () => {},
        }),
      );
    }
    hub.createModule("edge-3", "update-queue"); // never connects
    const registry = createRegistry({
      serviceConnectionString: hub.serviceConnectionString,
      caCertPem: hub.caCertPem,
    });
    for (const d of ["edge-1", "edge-2"]) await registry.updateTwin(d, { tags: { site: "berlin" } }, "*");
    const fleet = (...args: string[]) => run(["fleet", ...args, "--hub-info", info], dir);
    // The queues have read their twins (and are online) before the operator starts.
    await until(
      async () =>
        hub.isOnline("edge-1", "update-queue") && hub.isOnline("edge-2", "update-queue") ? true : undefined,
      "the queues",
    );

    // list: every device, its connection state; --where narrows it; --json is the same data.
    let r = await fleet("list");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^DEVICE\s+CONNECTION/);
    assert.match(r.stdout, /edge-1\s+Connected/);
    assert.match(r.stdout, /edge-3\s+Disconnected\s+never/);
    r = await fleet("list", "--where", "tags.site = 'berlin'", "--json");
    assert.equal(r.code, 0, r.stderr);
    const listed = JSON.parse(r.stdout) as { deviceId: string; policy: Record<string, unknown> }[];
    assert.deepEqual(
      listed.map((d) => d.deviceId),
      ["edge-1", "edge-2"],
    );
    assert.ok("meteredLink" in listed[0].policy, "the update-queue's policy members are shown");

    // set one device and wait: the module's ack answers the new $version.
    r = await fleet("set", "update-queue", "maxChunkBytes=100000", "--device", "edge-1", "--wait", "60");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /edge-1\s+maxChunkBytes\s+200\s+100000\s+\d+\s+current/);
    assert.equal(queues[0].outbox.maxChunkBytes, 100_000);

    // set by tag query: both Berlin devices, two properties, --json.
    r = await fleet(
      "set",
      "update-queue",
      "resendAfterMs=120000",
      "maxChunkBytes=200000",
      "--where",
      "tags.site = 'berlin'",
      "--wait",
      "60",
      "--json",
    );
    assert.equal(r.code, 0, r.stderr);
    const results = JSON.parse(r.stdout) as {
      deviceId: string;
      version: number;
      acks: Record<string, { state: string; ack: { value: unknown; ac: number; av: number } }>;
    }[];
    assert.deepEqual(
      results.map((x) => x.deviceId),
      ["edge-1", "edge-2"],
    );
    for (const x of results) {
      assert.equal(x.acks.resendAfterMs.state, "current");
      assert.deepEqual(x.acks.resendAfterMs.ack, { value: 120_000, ac: 200, av: x.version });
      assert.equal(x.acks.maxChunkBytes.ack.value, 200_000);
    }

    // A device that never answers: the wait ends, the row says timeout, the exit code is 3.
    r = await fleet("set", "update-queue", "retentionHours=1", "--device", "edge-3", "--wait", "1");
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /edge-3\s+retentionHours\s+-\s+-\s+-\s+timeout/);

    // A device without the module: its row says so, the others are written, exit code 3.
    hub.createDevice("edge-4", { edge: true });
    for (const d of ["edge-3", "edge-4"]) await registry.updateTwin(d, { tags: { site: "hamburg" } }, "*");
    r = await fleet("set", "update-queue", "retentionHours=2", "--where", "tags.site = 'hamburg'");
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /edge-3\s+retentionHours\s+-\s+-\s+\d+\s+written/);
    assert.match(r.stdout, /edge-4\s+-\s+-\s+-\s+-\s+failed\s+no module update-queue on this device/);

    // A bad value written around the CLI (e.g. by az): the module refuses it and keeps the last good one.
    await registry.updateModuleTwin(
      "edge-1",
      "update-queue",
      { properties: { desired: { maxChunkBytes: 12 } } },
      "*",
    );
    const rows = await until(async () => {
      const a = await fleet("acks", "--module", "update-queue", "--json");
      assert.equal(a.code, 0, a.stderr);
      const parsed = JSON.parse(a.stdout) as AckRowJson[];
      const row = parsed.find((x) => x.deviceId === "edge-1" && x.property === "maxChunkBytes");
      return row?.state === "refused" ? parsed : undefined;
    }, "the refusal");
    const refused = rows.find((x) => x.deviceId === "edge-1" && x.property === "maxChunkBytes")!;
    assert.equal(refused.desired, 12);
    assert.equal(refused.ack?.ac, 400);
    assert.equal(refused.ack?.value, 200_000, "the last good value");
    assert.equal(
      rows.find((x) => x.deviceId === "edge-1" && x.property === "resendAfterMs")?.state,
      "current",
    );
    assert.equal(
      rows.find((x) => x.deviceId === "edge-3" && x.property === "retentionHours")?.state,
      "pending",
    );
    r = await fleet("acks", "--device", "edge-1", "--module", "update-queue");
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /edge-1\s+update-queue\s+maxChunkBytes\s+12\s+200000\s+400\s+\d+\s+refused\s+.*1024/,
    );
    assert.doesNotMatch(r.stdout, /edge-2/);

    // A fleet-wide rollout: an ADM module configuration on the module twins tagged ring=canary.
    r = await fleet(
      "rollout",
      "queue-canary",
      "update-queue",
      "maxChunkBytes=65536",
      "--target",
      "tags.ring = 'canary'",
      "--priority",
      "20",
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /queue-canary\s+priority 20\s+targeted 0\s+applied 0/);
    await registry.updateModuleTwin("edge-2", "update-queue", { tags: { ring: "canary" } }, "*");
    await until(async () => {
      const c = (await registry.getConfiguration("queue-canary")).responseBody as unknown as {
        metrics: { results: Record<string, number> };
      };
      return c.metrics.results.acked === 1 ? true : undefined;
    }, "the canary's ack of the rollout");
    assert.equal(queues[1].outbox.maxChunkBytes, 65_536);
    assert.equal(queues[0].outbox.maxChunkBytes, 200_000, "edge-1 is not a canary");
    r = await fleet("rollouts");
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /queue-canary\s+priority 20\s+targeted 1\s+applied 1\s+\(acked 1, pending 0, refused 0\)/,
    );
    assert.match(
      r.stdout,
      /target: FROM devices\.modules WHERE moduleId = 'update-queue' AND \(tags\.ring = 'canary'\)/,
    );
    r = await fleet(
      "rollout",
      "queue-canary",
      "update-queue",
      "maxChunkBytes=65536",
      "--target",
      "tags.ring = 'x'",
    );
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^flotilla: E_FLEET_ROLLOUT: configuration 'queue-canary' exists/);

    // Bad input: one coded line, exit code 2, nothing written.
    const before = (await registry.getModuleTwin("edge-2", "update-queue")).responseBody as unknown as {
      properties: { desired: { $version: number } };
    };
    const h = ["--hub-info", info];
    const problems = await check(
      [
        [
          ["fleet", "set", "uploader", "x=1", "--device", "edge-1", ...h],
          /E_FLEET_MODULE: unknown module 'uploader'/,
        ],
        [
          ["fleet", "set", "update-queue", "chunk=1", "--device", "edge-1", ...h],
          /E_PROPERTY_UNKNOWN: .*'chunk'.*maxChunkBytes/,
        ],
        [
          ["fleet", "set", "update-queue", "acks={}", "--device", "edge-1", ...h],
          /E_PROPERTY_UNKNOWN: .*aggregation Function/,
        ],
        [
          ["fleet", "set", "update-queue", "maxChunkBytes=big", "--device", "edge-2", ...h],
          /E_PROPERTY_INVALID: maxChunkBytes=big: not a JSON value/,
        ],
        [
          ["fleet", "set", "update-queue", "maxChunkBytes=12", "--device", "edge-2", ...h],
          /E_PROPERTY_INVALID: .*out of range \(1024 to/,
        ],
        [
          ["fleet", "set", "update-queue", 'meteredLink="yes"', "--device", "edge-2", ...h],
          /E_PROPERTY_INVALID: .*true or false/,
        ],
        [
          ["fleet", "set", "update-queue", "maxChunkBytes", "--device", "edge-2", ...h],
          /E_PROPERTY_INVALID: .*<name>=<json value>/,
        ],
        [
          ["fleet", "set", "update-queue", "maxChunkBytes=2048", ...h],
          /E_CONFIG_MISSING_OPTION: .*--device .*--where/,
        ],
        [
          ["fleet", "set", "update-queue", "maxChunkBytes=2048", "--device", "edge-9", ...h],
          /E_FLEET_NO_DEVICES: no device 'edge-9'/,
        ],
        [
          ["fleet", "set", "update-queue", "maxChunkBytes=2048", "--where", "tags.site = 'paris'", ...h],
          /E_FLEET_NO_DEVICES: no device matches/,
        ],
        [["fleet", "list", "--where", "tags.site = = 1", ...h], /E_HUB_QUERY: /],
        [
          [
            "fleet",
            "set",
            "update-queue",
            "maxChunkBytes=2048",
            "--device",
            "edge-2",
            "--wait",
            "soon",
            ...h,
          ],
          /E_CONFIG_RANGE: --wait/,
        ],
        [["fleet", "acks", "--module", "uploader", ...h], /E_FLEET_MODULE: /],
        [
          [
            "fleet",
            "rollout",
            "Bad_Name",
            "update-queue",
            "maxChunkBytes=2048",
            "--target",
            "tags.a = 1",
            ...h,
          ],
          /E_FLEET_ROLLOUT: 'Bad_Name' is not a configuration id/,
        ],
        [
          ["fleet", "rollout", "ok", "update-queue", "maxChunkBytes=2048", "--target", "*", ...h],
          /E_FLEET_ROLLOUT: --target needs a condition/,
        ],
        [
          [
            "fleet",
            "rollout",
            "ok",
            "update-queue",
            "maxChunkBytes=2048",
            "--target",
            "tags.a = 1",
            "--priority",
            "-1",
            ...h,
          ],
          /E_CONFIG_RANGE: --priority/,
        ],
        [["fleet", "list"], /E_FLEET_HUB: no IoT hub/],
        [
          ["fleet", "list", "--hub-info", path.join(dir, "missing.json")],
          /E_FLEET_HUB: hub info .*missing\.json/,
        ],
        [["fleet", "list", "--hub-connection-string", "HostName=x"], /E_HUB_CONNECTION_STRING: /],
        [
          [
            "fleet",
            "list",
            "--hub-connection-string",
            "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=AAAA;GatewayHostName=127.0.0.1:1",
            "--hub-ca",
            hub.caCertPath,
          ],
          /E_FLEET_HUB_UNREACHABLE: IoT Hub h\.azure-devices\.net: /,
        ],
      ],
      fs.mkdtempSync(path.join(dir, "cwd-")),
    );
    assert.deepEqual(problems, []);
    const after = (await registry.getModuleTwin("edge-2", "update-queue")).responseBody as unknown as {
      properties: { desired: { $version: number } };
    };
    assert.equal(
      after.properties.desired.$version,
      before.properties.desired.$version,
      "nothing was written",
    );
  }),
);
