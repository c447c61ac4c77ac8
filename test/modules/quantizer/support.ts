import assert from "node:assert/strict";
import type { Message } from "azure-iot-device";
import { decodeMessage, encodeMessage, type DeviceMessage } from "../../../core/protocol/messages";
import {
  startQuantizer,
  type QuantizerHandle,
  type QuantizerOptions,
} from "../../../modules/quantizer/src/quantizer";
import { FakeModuleClient, FakeTwin } from "../update-queue/fake-client";
import { deltaOf, sha256hex } from "../update-queue/helpers";

export const LAYOUT = "ab".repeat(32);

/** A result frame as the trainer sends it. */
export function result(o: {
  jobId?: string;
  round?: number;
  deviceId?: string;
  delta: Float32Array;
}): Uint8Array {
  return encodeMessage({
    type: "result",
    jobId: o.jobId ?? "job-1",
    round: o.round ?? 1,
    deviceId: o.deviceId ?? "dev-1",
    layoutHash: LAYOUT,
    numSamples: 100,
    metrics: { loss: 0.5, accuracy: 0.75, trainMs: 12 },
    delta: o.delta,
  });
}

export function failure(o: { jobId?: string; round?: number; deviceId?: string } = {}): Uint8Array {
  return encodeMessage({
    type: "failure",
    jobId: o.jobId ?? "job-1",
    round: o.round ?? 1,
    deviceId: o.deviceId ?? "dev-1",
    code: "E_DATA_EMPTY",
    reason: "no data",
  });
}

export { deltaOf };

/** The desired `flotilla` configuring jobs: `{ jobId: spec | null }`. */
export function jobsDesired(jobs: Record<string, string | null>): Record<string, unknown> {
  return {
    flotilla: {
      jobs: Object.fromEntries(
        Object.entries(jobs).map(([id, spec]) => [id, spec === null ? null : { compression: spec }]),
      ),
    },
  };
}

export interface Harness {
  client: FakeModuleClient;
  quantizer: QuantizerHandle;
  logs: string[];
}

export async function start(
  stateDir: string,
  desired: Record<string, unknown> = {},
  opts: Partial<QuantizerOptions> = {},
): Promise<Harness> {
  const client = new FakeModuleClient();
  client.twin = new FakeTwin(desired);
  const logs: string[] = [];
  const quantizer = await startQuantizer({
    client,
    stateDir,
    reportIntervalMs: 10,
    retryDelayMs: 5,
    log: (level, message) => logs.push(`${level} ${message}`),
    ...opts,
  });
  return { client, quantizer, logs };
}

/** The frames sent on the output, reassembled per updateId in the order their first chunk went out. */
export function outputFrames(
  client: FakeModuleClient,
  output = "updates",
): { updateId: string; frame: Buffer }[] {
  const byId = new Map<string, Message[]>();
  for (const o of client.outputs) {
    assert.equal(o.output, output);
    const id = String(o.msg.properties.getValue("updateId"));
    byId.set(id, [...(byId.get(id) ?? []), o.msg]);
  }
  return [...byId].map(([updateId, msgs]) => {
    const sorted = msgs.sort(
      (a, b) => Number(a.properties.getValue("chunkIndex")) - Number(b.properties.getValue("chunkIndex")),
    );
    assert.equal(
      sorted.length,
      Number(sorted[0].properties.getValue("chunkCount")),
      `${updateId}: every chunk`,
    );
    const frame = Buffer.concat(sorted.map((m) => m.getBytes()));
    assert.equal(sha256hex(frame), sorted[0].properties.getValue("sha256"), `${updateId}: sha256`);
    assert.equal(updateId, sha256hex(frame).slice(0, 32));
    return { updateId, frame };
  });
}

export function decode(frame: Uint8Array): DeviceMessage {
  return decodeMessage(new Uint8Array(frame)) as DeviceMessage;
}

/** Asserts |decoded − x| is within int8's step per block of 256 (core/compress/quantize.ts). */
export function assertWithinInt8(decoded: Float32Array, x: Float32Array, block = 256): void {
  assert.equal(decoded.length, x.length);
  for (let start = 0; start < x.length; start += block) {
    let mn = Infinity;
    let mx = -Infinity;
    for (let i = start; i < Math.min(x.length, start + block); i++) {
      mn = Math.min(mn, x[i]);
      mx = Math.max(mx, x[i]);
    }
    const step = (mx - mn) / 255;
    for (let i = start; i < Math.min(x.length, start + block); i++) {
      assert.ok(Math.abs(decoded[i] - x[i]) <= step * 1.0001 + 1e-7, `value ${i}: ${decoded[i]} vs ${x[i]}`);
    }
  }
}
