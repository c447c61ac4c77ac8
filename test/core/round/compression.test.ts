import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { decodeTensor, encodeTensor, ErrorFeedback, parseCompression } from "../../../core/compress";
import { MemoryTransport } from "../../../core/protocol/memory-transport";
import { decodeMessage, encodeMessage } from "../../../core/protocol/messages";
import { DeviceRuntime } from "../../../core/round/device";
import { downlinkModel, runRound, type JobOptions } from "../../../core/round/server";
import { createStrategy } from "../../../core/strategies/registry";
import { FakeModel, labelsDataset } from "../../helpers/fake-model";

/** Uplink and downlink compression in the round engine (the memory transport's devices run the codecs). */

function strategy(initial: Float32Array, clients = 1) {
  const s = createStrategy("fedavg", {
    clientsPerRound: clients,
    fit: { epochs: 1, batchSize: 1, lr: 0.5 },
    seed: 1,
  });
  s.initialize(initial);
  return s;
}

function device(t: MemoryTransport, id: string, labels: number[], model = new FakeModel()): DeviceRuntime {
  const data = labelsDataset(labels);
  const rt = new DeviceRuntime(id, data, model);
  const link = t.connect({ deviceId: id, numSamples: data.n });
  link.onMessage(async (frame) => {
    await link.send(await rt.handle(frame)).catch(() => undefined);
  });
  return rt;
}

test("top-k uplink with error feedback: the server moves by exactly what was sent, the rest stays on the device", async () => {
  const t = new MemoryTransport();
  const rt = device(t, "d0", [1, 1]); // FakeModel: delta_i = 0.5 · (1 − w_i)
  const s = strategy(Float32Array.from([0, 0.2, 0.4, 0.6]));
  const opts: JobOptions = {
    jobId: "job",
    rounds: 3,
    layout: new FakeModel().layout,
    roundTimeoutInMs: 2000,
    uplink: parseCompression("topk:0.25"), // k = 1 of 4 values
  };
  // The same arithmetic by hand, in float32.
  const g = Float32Array.from([0, 0.2, 0.4, 0.6]);
  const e = new Float32Array(4);
  for (let round = 1; round <= 3; round++) {
    const rec = await runRound(s, t, round, opts);
    assert.deepEqual(rec.completed, ["d0"]);
    const x = new Float32Array(4);
    for (let i = 0; i < 4; i++) x[i] = Math.fround(0.5 * (1 - g[i])) + e[i];
    let best = 0;
    for (let i = 1; i < 4; i++) if (Math.abs(x[i]) > Math.abs(x[best])) best = i;
    for (let i = 0; i < 4; i++) {
      if (i === best) {
        g[i] += x[i];
        e[i] = 0;
      } else e[i] = x[i];
    }
    for (let i = 0; i < 4; i++) assert.ok(Math.abs(s.weights[i] - g[i]) < 1e-6, `round ${round} w[${i}]`);
    // The device's residual is exactly what was not sent.
    const ef = ErrorFeedback.fromBytes(rt.exportState()!.subarray(8 + "job".length), 4);
    for (let i = 0; i < 4; i++) assert.ok(Math.abs(ef.residual[i] - e[i]) < 1e-6, `round ${round} e[${i}]`);
  }
  // Exactly one coordinate moved per round: the three rounds touched the largest remaining entries.
  assert.ok(e.some((v) => v !== 0));
});

test("a compressed update is smaller on the wire and aggregates to the decoded values", async () => {
  const n = 4000;
  const run = async (uplink?: string) => {
    const t = new MemoryTransport();
    device(t, "a", [1, 1], new FakeModel(n));
    device(t, "b", [0, 0, 0, 0], new FakeModel(n));
    const init = new Float32Array(n).map((_, i) => (i % 7) / 7);
    const s = strategy(init, 2);
    const rec = await runRound(s, t, 1, {
      jobId: "j",
      rounds: 1,
      layout: new FakeModel(n).layout,
      roundTimeoutInMs: 2000,
      ...(uplink ? { uplink: parseCompression(uplink) } : {}),
    });
    return { rec, w: s.weights.slice() };
  };
  const raw = await run();
  const q = await run("int8");
  assert.ok(q.rec.uplinkBytes * 3 < raw.rec.uplinkBytes, `${q.rec.uplinkBytes} vs ${raw.rec.uplinkBytes}`);
  // Stochastic int8 of deltas in [-0.5, 0.5]: every value within one quantization step of the exact mean.
  let worst = 0;
  for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(q.w[i] - raw.w[i]));
  assert.ok(worst > 0 && worst <= 1 / 255 + 1e-6, `max |diff| ${worst}`);
});

test("downlink int8: devices train from the decoded model, and the hash covers the envelope they received", async () => {
  const n = 3000;
  const layout = new FakeModel(n).layout;
  const global = new Float32Array(n).map((_, i) => Math.sin(i));
  const spec = parseCompression("int8");
  const carried = downlinkModel(global, 1, { downlink: spec, layout });
  assert.ok(!(carried.weights instanceof Float32Array));
  assert.equal(carried.modelHash, createHash("sha256").update(carried.weights.bytes).digest("hex"));
  const decoded = decodeTensor(carried.weights.bytes);

  const model = new FakeModel(n);
  const rt = new DeviceRuntime("d", labelsDataset([1]), model);
  const request = {
    type: "train" as const,
    jobId: "j",
    round: 1,
    modelHash: carried.modelHash,
    layoutHash: layout.hash,
    config: { epochs: 1, batchSize: 1, lr: 0.5, seed: 1 },
    deadline: 0,
    weights: carried.weights,
  };
  const answer = decodeMessage(await rt.handle(encodeMessage(request)));
  assert.equal(answer.type, "result");
  if (answer.type !== "result" || !(answer.delta instanceof Float32Array))
    throw new Error("raw result expected");
  // delta = 0.5 · (1 − decoded), i.e. taken against what the device received, not the exact global.
  for (let i = 0; i < n; i += 97) {
    assert.ok(Math.abs(answer.delta[i] - Math.fround(0.5 * (1 - decoded[i]))) < 1e-6, `delta[${i}]`);
  }
  // A changed byte in the envelope no longer matches the order's hash.
  const bytes = carried.weights.bytes.slice();
  bytes[bytes.length - 10] ^= 1;
  const bad = decodeMessage(
    await rt.handle(encodeMessage({ ...request, weights: { encoding: "flz", bytes } })),
  );
  assert.ok(bad.type === "failure" && bad.code === "E_MODEL_HASH");
  // A wire-compressed model is ~4x smaller than float32.
  assert.ok(bytes.byteLength * 3.5 < n * 4);
});

test("a device moved between hosts keeps its residual (exportState / importState)", async () => {
  const t = new MemoryTransport();
  const rt = device(t, "d0", [1, 1]);
  const s = strategy(Float32Array.from([0, 0.2, 0.4, 0.6]));
  await runRound(s, t, 1, {
    jobId: "job",
    rounds: 1,
    layout: new FakeModel().layout,
    roundTimeoutInMs: 2000,
    uplink: parseCompression("topk:0.25"),
  });
  const state = rt.exportState();
  assert.ok(state && state.byteLength > 0);
  const other = new DeviceRuntime("d0", labelsDataset([1, 1]), new FakeModel());
  assert.equal(other.exportState(), undefined);
  other.importState(state);
  assert.deepEqual(Buffer.from(other.exportState()!), Buffer.from(state));
  // The envelope encoder is deterministic for a seed: what the device sends is reproducible.
  const x = Float32Array.from([0.1, -0.3, 0.2, 0]);
  const o = { layoutHash: new FakeModel().layout.hash, seed: 5 };
  assert.deepEqual(
    encodeTensor(x, parseCompression("int4"), o),
    encodeTensor(x, parseCompression("int4"), o),
  );
});
