/**
 * The Fleet contract (cloud/aggregator/src/fleet/fleet.ts, the wire contract of docs/iothub-protocol.md): what the
 * orchestration may rely on from any Fleet. Run by test/cloud/aggregator/fleet.contract.test.ts against the
 * RecordingFleet the orchestrator tests use (test/cloud/aggregator/support.ts) and IotHubFleet over the local IoT
 * Hub with the real SDKs, so the double behaves as the real fleet does.
 *
 * A subject hosts the fleet and plays the devices: it connects a device's modules (answering direct methods as told)
 * or registers a trainer that is not connected, and shows what the modules are given in their desired properties
 * (a null member is an absent one, as IoT Hub merges twin patches).
 */
import { afterAll, beforeAll, describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import type { Fleet, RoundDesired } from "../../../cloud/aggregator/src/fleet/fleet";

export type MethodAnswer = { status: number; payload: unknown };

export interface FleetDevice {
  numSamples?: number;
  status?: string;
  samplesPerSecond?: Record<string, number>;
  /**
   * Policy properties an operator set (desired) and the modules reported (acks), per module (trainer,
   * update-queue): listTrainers gives the policy they make (core/fleet/policy.ts effectivePolicy).
   */
  twins?: Partial<
    Record<
      "trainer" | "update-queue",
      { desired?: Record<string, unknown>; reported?: Record<string, unknown> }
    >
  >;
  /** How the device's modules answer direct methods (trainer: startRound, abortRound, secaggShareKeys; update-queue: ack). */
  answer: (moduleId: string, method: string, payload: unknown) => MethodAnswer;
}

export interface DesiredView {
  /** The trainer's desired `flotilla` (null: none). */
  trainer: Record<string, unknown> | null;
  /** The update-queue's desired `openRounds`. */
  openRounds: Record<string, unknown>;
  /** The quantizer's desired `flotilla.jobs`. */
  quantizerJobs: Record<string, unknown>;
  /** The profiler's desired `jobModels`. */
  jobModels: Record<string, unknown>;
}

export interface FleetSubject {
  fleet: Fleet;
  /** A device whose trainer, update-queue, profiler and quantizer are connected. */
  connect(deviceId: string, device: FleetDevice): Promise<void>;
  /** A device with a trainer identity that is not connected. */
  register(deviceId: string): Promise<void>;
  /** Sets the device twin's tags (what a job's cohort condition reads). */
  tag(deviceId: string, tags: Record<string, unknown>): Promise<void>;
  desired(deviceId: string): Promise<DesiredView>;
  /** The direct methods the device's modules got, in order. */
  received(deviceId: string): { moduleId: string; method: string; payload: unknown }[];
  close(): Promise<void>;
}

/** A JSON value without its null members (IoT Hub removes a desired property patched to null). */
export function withoutNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutNulls);
  if (v === null || typeof v !== "object") return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) if (x !== null && x !== undefined) out[k] = withoutNulls(x);
  return out;
}

const ORDER: RoundDesired = {
  jobId: "job-c",
  round: 3,
  modelUrl: "http://127.0.0.1/devstoreaccount1/flotilla/jobs/job-c/models/2.f32?sig=abc",
  modelSha256: "a".repeat(64),
  layoutHash: "b".repeat(64),
  modelSpec: { kind: "mlp", inputShape: [4], numClasses: 3, hidden: [5] },
  config: { epochs: 2, batchSize: 16, lr: 0.05, seed: 99 },
  deadline: 1_800_000_000_000,
};

/** Every answer the contract's online devices give: 200 and an echo, except where a test says otherwise. */
function answers(refuse: Record<string, MethodAnswer> = {}) {
  return (moduleId: string, method: string, payload: unknown): MethodAnswer =>
    refuse[`${moduleId}/${method}`] ?? { status: 200, payload: { echo: payload } };
}

export function fleetContract(name: string, make: () => Promise<FleetSubject>): void {
  describe(`Fleet contract: ${name}`, () => {
    let s: FleetSubject;
    beforeAll(async () => {
      s = await make();
      await s.connect("edge-a", {
        numSamples: 600,
        status: "idle",
        samplesPerSecond: { mlp: 250, cnn: 12 },
        answer: answers(),
      });
      await s.connect("edge-r", {
        // Disabled by the operator (not acked yet: in effect at once); a refused metered-link value keeps the
        // acked one.
        twins: {
          trainer: { desired: { enabled: false } },
          "update-queue": {
            desired: { meteredLink: "yes" },
            reported: { meteredLink: { value: true, ac: 200, av: 1 } },
          },
        },
        answer: answers({
          "trainer/startRound": { status: 409, payload: { code: "E_ROUND_BUSY", message: "busy" } },
          "trainer/abortRound": {
            status: 404,
            payload: { code: "E_ROUND_UNKNOWN", message: "no such round" },
          },
          "trainer/secaggShareKeys": { status: 400, payload: { code: "E_SECAGG_STATE", message: "no" } },
        }),
      });
      await s.register("edge-off");
    });
    afterAll(async () => {
      await s?.close();
    });

    test("listTrainers lists every trainer identity with its connection state, what it reported and its policy", async () => {
      const listed = (await s.fleet.listTrainers()).map((t) => withoutNulls({ ...t }));
      assert.deepEqual(
        listed.sort((a, b) =>
          String((a as { deviceId: string }).deviceId).localeCompare((b as { deviceId: string }).deviceId),
        ),
        [
          {
            deviceId: "edge-a",
            connected: true,
            numSamples: 600,
            status: "idle",
            samplesPerSecond: { mlp: 250, cnn: 12 },
            policy: { enabled: true },
          },
          { deviceId: "edge-off", connected: false, policy: { enabled: true } },
          { deviceId: "edge-r", connected: true, policy: { enabled: false, meteredLink: true } },
        ],
      );
    });

    test("listTrainers(cohort) lists the trainers whose device twin matches the condition, with its tags", async () => {
      await s.tag("edge-a", { flotilla: { fleet: "line-3", rack: 1 } });
      await s.tag("edge-off", { flotilla: { fleet: "line-3", rack: 2 } });
      await s.tag("edge-r", { flotilla: { fleet: "line-4", rack: 3 } });
      const ids = async (cohort: string) =>
        (await s.fleet.listTrainers(cohort)).map((t) => t.deviceId).sort();
      assert.deepEqual(await ids("tags.flotilla.fleet = 'line-3'"), ["edge-a", "edge-off"]);
      assert.deepEqual(await ids("tags.flotilla.fleet = 'line-3' AND tags.flotilla.rack > 1"), ["edge-off"]);
      assert.deepEqual(await ids("tags.flotilla.fleet IN ['line-4', 'line-9'] OR deviceId = 'edge-a'"), [
        "edge-a",
        "edge-r",
      ]);
      assert.deepEqual(await ids("IS_DEFINED(tags.nothing)"), []);
      const a = (await s.fleet.listTrainers("tags.flotilla.rack = 1"))[0];
      assert.deepEqual(a.tags, { flotilla: { fleet: "line-3", rack: 1 } });
      assert.deepEqual(a.samplesPerSecond, { mlp: 250, cnn: 12 });
      assert.equal((await s.fleet.listTrainers()).length, 3);
    });

    test("configureRound gives the trainer the order; a later order replaces it whole; null clears it", async () => {
      await s.fleet.configureRound("edge-a", {
        ...ORDER,
        config: { ...ORDER.config, mu: 0.01 },
        secagg: { stepSeconds: 20, threshold: 3 },
      });
      assert.deepEqual(
        (await s.desired("edge-a")).trainer,
        withoutNulls({
          ...ORDER,
          config: { ...ORDER.config, mu: 0.01 },
          secagg: { stepSeconds: 20, threshold: 3 },
        }),
      );
      await s.fleet.configureRound("edge-a", { ...ORDER, round: 4 });
      assert.deepEqual(
        (await s.desired("edge-a")).trainer,
        withoutNulls({ ...ORDER, round: 4 }),
        "nothing of the previous order (mu, secagg) is left",
      );
      await s.fleet.configureRound("edge-a", null);
      assert.equal((await s.desired("edge-a")).trainer, null);
    });

    test("startRound: true when the trainer takes the order, false when it refuses or is not connected", async () => {
      assert.equal(await s.fleet.startRound("edge-a", ORDER), true);
      const got = s.received("edge-a").filter((r) => r.method === "startRound");
      assert.deepEqual(
        got.map((r) => [r.moduleId, withoutNulls(r.payload)]),
        [["trainer", withoutNulls(ORDER)]],
      );
      assert.equal(await s.fleet.startRound("edge-r", ORDER), false);
      assert.equal(await s.fleet.startRound("edge-off", ORDER), false);
    });

    test("abortRound: true when the trainer aborts, false when it has no such round or is not connected", async () => {
      assert.equal(await s.fleet.abortRound("edge-a", "job-c", 3), true);
      assert.deepEqual(
        s.received("edge-a").filter((r) => r.method === "abortRound"),
        [{ moduleId: "trainer", method: "abortRound", payload: { jobId: "job-c", round: 3 } }],
      );
      assert.equal(await s.fleet.abortRound("edge-r", "job-c", 3), false);
      assert.equal(await s.fleet.abortRound("edge-off", "job-c", 3), false);
    });

    test("ack reaches the update-queue with the update ids; false for a device that is not connected", async () => {
      assert.equal(await s.fleet.ack("edge-a", ["u1", "u2"]), true);
      assert.deepEqual(
        s.received("edge-a").filter((r) => r.method === "ack"),
        [{ moduleId: "update-queue", method: "ack", payload: { updateIds: ["u1", "u2"] } }],
      );
      assert.equal(await s.fleet.ack("edge-off", ["u3"]), false);
    });

    test("setOpenRound sets one job's open round in the update-queue's openRounds; null removes that job", async () => {
      await s.fleet.setOpenRound("edge-a", "job-c", 3);
      await s.fleet.setOpenRound("edge-a", "job-d", 1);
      assert.deepEqual((await s.desired("edge-a")).openRounds, { "job-c": 3, "job-d": 1 });
      await s.fleet.setOpenRound("edge-a", "job-c", 4);
      await s.fleet.setOpenRound("edge-a", "job-d", null);
      assert.deepEqual((await s.desired("edge-a")).openRounds, { "job-c": 4 });
    });

    test("configureQuantizer sets one job's codec and layout in the quantizer's jobs; null removes that job", async () => {
      const layout = { layoutHash: "cd".repeat(32), segments: [784, 10] };
      await s.fleet.configureQuantizer("edge-a", "job-c", "int8:tensor", layout);
      await s.fleet.configureQuantizer("edge-a", "job-d", "int8");
      assert.deepEqual((await s.desired("edge-a")).quantizerJobs, {
        "job-c": { compression: "int8:tensor", ...layout },
        "job-d": { compression: "int8" },
      });
      await s.fleet.configureQuantizer("edge-a", "job-c", null);
      assert.deepEqual((await s.desired("edge-a")).quantizerJobs, { "job-d": { compression: "int8" } });
    });

    test("configureProfiler sets one job's model spec in the profiler's jobModels; null removes it", async () => {
      const a = { kind: "mlp", inputShape: [24], numClasses: 4, hidden: [16, 8] } as const;
      const b = { kind: "cnn1d", inputShape: [64, 6], numClasses: 5, filters: [8], kernelSize: 3 } as const;
      await s.fleet.configureProfiler("edge-a", "small", a);
      await s.fleet.configureProfiler("edge-a", "conv", b);
      assert.deepEqual((await s.desired("edge-a")).jobModels, { small: a, conv: b });
      await s.fleet.configureProfiler("edge-a", "small", null);
      assert.deepEqual((await s.desired("edge-a")).jobModels, { conv: b });
    });

    test("callTrainer returns the trainer's answer whatever its status; not reached (never thrown) when not connected", async () => {
      assert.deepEqual(
        await s.fleet.callTrainer("edge-a", "secaggShareKeys", { jobId: "job-c", round: 3 }, 5),
        {
          reached: true,
          status: 200,
          payload: { echo: { jobId: "job-c", round: 3 } },
        },
      );
      assert.deepEqual(await s.fleet.callTrainer("edge-r", "secaggShareKeys", { jobId: "job-c" }, 5), {
        reached: true,
        status: 400,
        payload: { code: "E_SECAGG_STATE", message: "no" },
      });
      const off = await s.fleet.callTrainer("edge-off", "secaggShareKeys", { jobId: "job-c" }, 5);
      assert.equal(off.reached, false);
      assert.ok(!off.reached && off.reason.length > 0, "a reason is given");
    });
  });
}
