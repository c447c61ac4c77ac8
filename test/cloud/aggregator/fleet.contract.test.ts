/**
 * The Fleet contract (test/cloud/aggregator/fleet-contract.ts) against the RecordingFleet of the orchestrator tests
 * and against IotHubFleet over the local IoT Hub (MQTT/TLS + REST) with the real azure-iothub and azure-iot-device
 * SDKs playing both sides.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { ModuleClient, type Twin } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { createRegistry, createServiceClient, startLocalHub } from "../../../local/hub";
import { IotHubFleet } from "../../../cloud/aggregator/src/fleet/fleet";
import { fleetContract, withoutNulls, type FleetDevice, type FleetSubject } from "./fleet-contract";
import { RecordingFleet } from "./support";
import { effectivePolicy } from "../../../core/fleet/policy";

type Received = { moduleId: string; method: string; payload: unknown };

fleetContract("RecordingFleet (the orchestrator tests' double)", async (): Promise<FleetSubject> => {
  const fleet = new RecordingFleet();
  const devices = new Map<string, FleetDevice>();
  const connected = (id: string) => devices.has(id) && !fleet.offline.has(id);
  fleet.accepts = (id, moduleId, method, payload) => {
    const a = devices.get(id)?.answer(moduleId, method, payload);
    return a !== undefined && a.status >= 200 && a.status < 300;
  };
  fleet.onCall = (id, method, payload) => {
    const device = devices.get(id);
    if (!device || !connected(id)) return { reached: false, reason: `${method}: '${id}' is not connected` };
    const a = device.answer("trainer", method, payload);
    return { reached: true, status: a.status, payload: a.payload };
  };
  return {
    fleet,
    connect: async (deviceId, device) => {
      devices.set(deviceId, device);
      const { numSamples, status, samplesPerSecond } = device;
      // The double is handed the policy the twins make (IotHubFleet reads it from the hub's module twins).
      const twin = (m: "trainer" | "update-queue") => device.twins?.[m];
      const policy = effectivePolicy(
        {
          trainer: { $version: 1, ...twin("trainer")?.desired },
          "update-queue": { $version: 1, ...twin("update-queue")?.desired },
        },
        { trainer: twin("trainer")?.reported, "update-queue": twin("update-queue")?.reported },
      ).policy;
      fleet.trainers.push({ deviceId, connected: true, numSamples, status, samplesPerSecond, policy });
    },
    register: async (deviceId) => {
      fleet.offline.add(deviceId);
      fleet.trainers.push({ deviceId, connected: false });
    },
    tag: async (deviceId, tags) => {
      fleet.trainers = fleet.trainers.map((t) => (t.deviceId === deviceId ? { ...t, tags } : t));
    },
    desired: async (deviceId) => {
      const last = fleet.configured.filter((c) => c.deviceId === deviceId).at(-1);
      const openRounds: Record<string, unknown> = {};
      for (const o of fleet.openRounds.filter((x) => x.deviceId === deviceId)) {
        if (o.round === null) delete openRounds[o.jobId];
        else openRounds[o.jobId] = o.round;
      }
      const quantizerJobs: Record<string, unknown> = {};
      for (const q of fleet.quantizers.filter((x) => x.deviceId === deviceId)) {
        if (q.compression === null) delete quantizerJobs[q.jobId];
        else
          quantizerJobs[q.jobId] = {
            compression: q.compression,
            ...(q.layout ? { layoutHash: q.layout.layoutHash, segments: [...q.layout.segments] } : {}),
          };
      }
      const jobModels: Record<string, unknown> = {};
      for (const p of fleet.profilers.filter((x) => x.deviceId === deviceId)) {
        if (p.spec === null) delete jobModels[p.modelKey];
        else jobModels[p.modelKey] = p.spec;
      }
      return {
        trainer: last?.desired ? (withoutNulls(last.desired) as Record<string, unknown>) : null,
        openRounds,
        quantizerJobs,
        jobModels,
      };
    },
    received: (deviceId) => {
      if (!connected(deviceId)) return [];
      const mine = <T extends { deviceId: string }>(xs: readonly T[]) =>
        xs.filter((x) => x.deviceId === deviceId);
      return [
        ...mine(fleet.startCalls).map((x) => ({
          moduleId: "trainer",
          method: "startRound",
          payload: x.payload,
        })),
        ...mine(fleet.aborted).map((x) => ({
          moduleId: "trainer",
          method: "abortRound",
          payload: { jobId: x.jobId, round: x.round },
        })),
        ...mine(fleet.acks).map((x) => ({
          moduleId: "update-queue",
          method: "ack",
          payload: { updateIds: x.updateIds },
        })),
        ...mine(fleet.calls).map((x) => ({ moduleId: "trainer", method: x.method, payload: x.payload })),
      ];
    },
    close: async () => {},
  };
});

function reported(twin: Twin, patch: unknown): Promise<void> {
  const update = twin.properties.reported.update as (p: unknown, cb: (e?: Error) => void) => void;
  return new Promise((res, rej) => update(patch, (e) => (e ? rej(e) : res())));
}

async function waitFor(cond: () => boolean, ms: number, what: string) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A twin's desired properties without the hub's own members ($version, $metadata). */
function ownDesired(desired: unknown): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries((desired ?? {}) as Record<string, unknown>).filter(([k]) => !k.startsWith("$")),
  );
}

fleetContract("IotHubFleet → local IoT Hub (real SDKs)", async (): Promise<FleetSubject> => {
  const hub = await startLocalHub({ log: () => {} });
  const registry = createRegistry(hub);
  const fleet = new IotHubFleet(registry, createServiceClient(hub), { methodTimeoutSeconds: 5 });
  const clients: ModuleClient[] = [];
  const got = new Map<string, Received[]>();
  const open = async (deviceId: string, moduleId: string) => {
    const c = ModuleClient.fromConnectionString(hub.createModule(deviceId, moduleId), Mqtt);
    await c.setOptions({ ca: hub.caCertPem });
    await c.open();
    clients.push(c);
    return c;
  };
  const desiredOf = async (deviceId: string, moduleId: string) =>
    ownDesired((await registry.getModuleTwin(deviceId, moduleId)).responseBody.properties.desired);
  return {
    fleet,
    connect: async (deviceId, device) => {
      const log: Received[] = [];
      got.set(deviceId, log);
      const serve = (client: ModuleClient, moduleId: string, methods: string[]) => {
        for (const method of methods)
          client.onMethod(method, (req, res) => {
            if (!req || !res) return;
            log.push({ moduleId, method, payload: req.payload });
            const a = device.answer(moduleId, method, req.payload);
            void res.send(a.status, a.payload);
          });
      };
      const trainer = await open(deviceId, "trainer");
      serve(trainer, "trainer", ["startRound", "abortRound", "secaggShareKeys"]);
      const queue = await open(deviceId, "update-queue");
      serve(queue, "update-queue", ["ack"]);
      const profiler = await open(deviceId, "profiler");
      await open(deviceId, "quantizer");
      if (device.numSamples !== undefined || device.status !== undefined)
        await reported(await trainer.getTwin(), {
          flotilla: { numSamples: device.numSamples, status: device.status },
        });
      if (device.samplesPerSecond)
        await reported(await profiler.getTwin(), {
          capabilities: { samplesPerSecond: device.samplesPerSecond },
        });
      // The operator's desired policy (as `az iot hub module-twin update` writes it) and the modules' acks.
      for (const [m, client] of [
        ["trainer", trainer],
        ["update-queue", queue],
      ] as const) {
        const t = device.twins?.[m];
        if (t?.desired)
          await registry.updateModuleTwin(deviceId, m, { properties: { desired: t.desired } }, "*");
        if (t?.reported) await reported(await client.getTwin(), t.reported);
      }
      const methods = (m: string) =>
        hub.subscriptions(deviceId, m).some((s) => s.startsWith("$iothub/methods"));
      await waitFor(
        () => methods("trainer") && methods("update-queue"),
        5000,
        `${deviceId}'s method subscriptions`,
      );
    },
    register: async (deviceId) => {
      hub.createModule(deviceId, "trainer");
    },
    tag: async (deviceId, tags) => {
      await registry.updateTwin(deviceId, { tags }, "*");
    },
    desired: async (deviceId) => {
      const trainer = (await desiredOf(deviceId, "trainer")).flotilla;
      const quantizer = (await desiredOf(deviceId, "quantizer")).flotilla as { jobs?: unknown } | undefined;
      return {
        trainer:
          trainer === undefined || trainer === null
            ? null
            : (withoutNulls(trainer) as Record<string, unknown>),
        openRounds: withoutNulls((await desiredOf(deviceId, "update-queue")).openRounds ?? {}) as Record<
          string,
          unknown
        >,
        quantizerJobs: withoutNulls(quantizer?.jobs ?? {}) as Record<string, unknown>,
        jobModels: withoutNulls((await desiredOf(deviceId, "profiler")).jobModels ?? {}) as Record<
          string,
          unknown
        >,
      };
    },
    received: (deviceId) => got.get(deviceId) ?? [],
    close: async () => {
      for (const c of clients) await c.close().catch(() => {});
      await hub.close();
      if (fs.existsSync(hub.stateDir)) fs.rmSync(hub.stateDir, { recursive: true, force: true });
    },
  };
});

// The file's own check that the contract's normalisation keeps what matters.
test("withoutNulls drops null and undefined members at every depth and keeps the rest", () => {
  assert.deepEqual(withoutNulls({ a: null, b: { c: undefined, d: 0, e: [1, { f: null }] }, g: "" }), {
    b: { d: 0, e: [1, {}] },
    g: "",
  });
});
