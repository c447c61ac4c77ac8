import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { encodeMessage, type SecAggFrame } from "../../../core/protocol/messages";
import { tempDir, trainerChunks } from "../update-queue/helpers";
import { jobsDesired, outputFrames, start, type Harness } from "./support";

const META = { jobId: "job-1", round: 1, deviceId: "dev-1" };

function send(h: Harness, frame: Uint8Array, maxChunkBytes = 255_000): string {
  const input = trainerChunks(frame, META, maxChunkBytes);
  for (const c of input.chunks) h.client.deliver("updates", c.body, c.properties);
  return input.updateId;
}

function secagg(step: SecAggFrame["step"], extra: Partial<SecAggFrame> = {}): Uint8Array {
  return encodeMessage({
    type: "secagg",
    step,
    direction: "up",
    ...META,
    body: { ...META, note: step },
    ...extra,
  } as SecAggFrame);
}

test(
  "secure aggregation frames pass through untouched, even for a job with a lossy codec",
  withContext(async (t) => {
    const h = await start(tempDir(t, "flotilla-quant-"), jobsDesired({ "job-1": "topk:0.1+int8" }), {
      maxChunkBytes: 10_000,
    });
    t.after(() => h.quantizer.stop());
    const advertise = secagg("advertise");
    const masked = new Uint32Array(6000);
    for (let i = 0; i < masked.length; i++) masked[i] = (i * 2654435761) >>> 0;
    const mask = secagg("mask", {
      masked,
      numSamples: 40,
      metrics: { loss: 0.5, accuracy: 0.5, trainMs: 3 },
    });
    const ids = [send(h, advertise), send(h, mask, 7000)];
    // A frame only the cloud sends (direction down) is not an update.
    send(h, secagg("share", { direction: "down" }));
    await h.quantizer.idle();

    const out = outputFrames(h.client);
    assert.deepEqual(
      out.map((o) => o.updateId),
      ids,
      "same frames, same update ids",
    );
    assert.ok(out[0].frame.equals(Buffer.from(advertise)));
    assert.ok(
      out[1].frame.equals(Buffer.from(mask)),
      "the masked vector is byte for byte what the trainer sent",
    );
    const s = h.quantizer.state();
    assert.equal(s.counters.compressed, 0);
    assert.equal(s.counters.passthrough, 2);
    assert.equal(s.counters.errors, 1);
    assert.match(s.lastError ?? "", /E_QUANT_FRAME/);
  }),
);
