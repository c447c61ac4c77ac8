/**
 * The ServerTransport contract (core/protocol/transport.ts): every implementation the round engine runs over must
 * pass it. Registered by test/core/protocol/memory-transport.test.ts (the in-process MemoryTransport with the
 * simulator's devices) and test/local/sim/worker-fleet.test.ts (the worker-thread fleet); the IoT Hub path is held
 * to the same aggregates by test/local/stack/contract.test.ts.
 *
 * Register it inside a test file: `serverTransportContract("memory", (config, data) => startInProcessFleet(…))`.
 * The subject hosts the simulator's fleet for `config` (devices built from loadFleetData, as both implementations
 * do), so its answers can be compared with a DeviceRuntime run here on the same data.
 */
import { afterAll, beforeAll, describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import { createModel } from "../../../core/engine/models";
import type { LocalModel } from "../../../core/engine/types";
import { initBackend } from "../../../core/engine/backend";
import {
  decodeMessage,
  encodeMessage,
  type Message,
  type TrainRequest,
} from "../../../core/protocol/messages";
import type { ServerTransport } from "../../../core/protocol/transport";
import { DeviceRuntime } from "../../../core/round/device";
import { downlinkModel } from "../../../core/round/server";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { deviceName, loadFleetData, type FleetData } from "../../../local/sim/data";

const CONFIG: SimConfig = {
  ...DEFAULT_CONFIG,
  devices: 4,
  clientsPerRound: 4,
  samplesPerDevice: 24,
  workers: 2,
};

/** A device's answer (result or failure) to round `round`. */
const answerOf = (deviceId: string, round: number) => (m: Message) =>
  (m.type === "result" || m.type === "failure") && m.deviceId === deviceId && m.round === round;

/** Waits for the next frame on `transport` that satisfies `pick`. */
function nextFrame(transport: ServerTransport, pick: (m: Message) => boolean): Promise<Uint8Array> {
  return new Promise((resolve) => {
    const off = transport.onMessage((frame) => {
      if (!pick(decodeMessage(frame))) return;
      off();
      resolve(frame);
    });
  });
}

export function serverTransportContract(
  name: string,
  start: (config: SimConfig, data: FleetData) => Promise<ServerTransport>,
): void {
  describe(`ServerTransport contract: ${name}`, () => {
    let transport: ServerTransport;
    let data: FleetData;
    let model: LocalModel;
    let global: Float32Array;

    const request = (round: number, over: Partial<TrainRequest> = {}): TrainRequest => ({
      type: "train",
      jobId: "contract",
      round,
      ...downlinkModel(global, round, { layout: model.layout }),
      layoutHash: model.layout.hash,
      config: { epochs: 1, batchSize: 8, lr: 0.1, seed: round },
      deadline: 0,
      ...over,
    });

    beforeAll(async () => {
      await initBackend();
      data = loadFleetData(CONFIG);
      model = await createModel(data.spec, CONFIG.seed);
      global = model.getWeights();
      transport = await start(CONFIG, data);
    });
    afterAll(async () => {
      await transport?.close();
      model?.dispose();
    });

    test("listDevices lists every device of the fleet with its sample count", async () => {
      const listed = await transport.listDevices();
      assert.deepEqual(
        listed.map((d) => [d.deviceId, d.numSamples]).sort(),
        data.devices.map((d, i) => [deviceName(i, CONFIG.devices), d.n]).sort(),
      );
    });

    test("a train frame is answered by its device with the update a DeviceRuntime computes on the same data", async () => {
      const deviceId = deviceName(1, CONFIG.devices);
      const frame = encodeMessage(request(1));
      const answered = nextFrame(transport, answerOf(deviceId, 1));
      await transport.send(deviceId, frame);
      const answer = decodeMessage(await answered);
      assert.equal(answer.type, "result", JSON.stringify(answer.type === "failure" ? answer : answer.type));
      if (answer.type !== "result") return;
      assert.equal(answer.jobId, "contract");
      assert.equal(answer.numSamples, data.devices[1].n);
      assert.equal(answer.layoutHash, model.layout.hash);
      const reference = await createModel(data.spec, CONFIG.seed);
      try {
        const expected = decodeMessage(
          await new DeviceRuntime(deviceId, data.devices[1], reference).handle(frame),
        );
        assert.equal(expected.type, "result");
        if (expected.type !== "result") return;
        assert.ok(answer.delta instanceof Float32Array && expected.delta instanceof Float32Array);
        assert.equal(answer.delta.length, global.length);
        for (let i = 0; i < global.length; i++)
          assert.ok(Math.abs(answer.delta[i] - expected.delta[i]) < 1e-6, `delta[${i}]`);
      } finally {
        reference.dispose();
      }
    });

    test("send leaves the caller's frame intact, delivers later, and the stats count both directions' bytes", async () => {
      const deviceId = deviceName(2, CONFIG.devices);
      const frame = encodeMessage(request(2));
      const copy = frame.slice();
      const before = { ...transport.stats };
      let answeredBeforeSendReturned = false;
      const answered = nextFrame(transport, answerOf(deviceId, 2));
      const off = transport.onMessage(() => (answeredBeforeSendReturned = true));
      const sent = transport.send(deviceId, frame);
      off();
      assert.equal(answeredBeforeSendReturned, false, "no answer while send runs");
      await sent;
      assert.deepEqual(frame, copy, "the frame the caller passed is neither detached nor changed");
      const reply = await answered;
      assert.equal(transport.stats.downlinkBytes - before.downlinkBytes, frame.byteLength);
      assert.equal(transport.stats.uplinkBytes - before.uplinkBytes, reply.byteLength);
    });

    test("every listener gets each frame; a removed listener gets none", async () => {
      const deviceId = deviceName(3, CONFIG.devices);
      const seen: string[] = [];
      const offA = transport.onMessage((f) =>
        seen.push(`a:${(decodeMessage(f) as { round: number }).round}`),
      );
      const offB = transport.onMessage((f) =>
        seen.push(`b:${(decodeMessage(f) as { round: number }).round}`),
      );
      let answered = nextFrame(transport, answerOf(deviceId, 3));
      await transport.send(deviceId, encodeMessage(request(3)));
      await answered;
      offB();
      answered = nextFrame(transport, answerOf(deviceId, 4));
      await transport.send(deviceId, encodeMessage(request(4)));
      await answered;
      offA();
      assert.deepEqual(seen.sort(), ["a:3", "a:4", "b:3"]);
    });

    test("a frame for a device the transport does not have is refused with E_TRANSPORT_UNKNOWN_DEVICE", async () => {
      await assert.rejects(transport.send("nobody", encodeMessage(request(5))), (e: unknown) => {
        assert.ok(isFlotillaError(e), String(e));
        assert.equal(e.code, "E_TRANSPORT_UNKNOWN_DEVICE");
        assert.ok(!e.message.includes("\n"), "one-line message");
        return true;
      });
    });

    test("a frame whose model does not match its hash is answered with a failure frame, not dropped", async () => {
      const deviceId = deviceName(0, CONFIG.devices);
      const answered = nextFrame(transport, answerOf(deviceId, 6));
      await transport.send(deviceId, encodeMessage(request(6, { modelHash: "0".repeat(64) })));
      const answer = decodeMessage(await answered);
      assert.equal(answer.type, "failure");
      if (answer.type === "failure") assert.equal(answer.code, "E_MODEL_HASH");
    });
  });
}
