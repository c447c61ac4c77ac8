import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";
import { simulateOverIotHub } from "../../../local/stack/iothub-simulate";

/**
 * The contract between the transports: the same job over the in-process transport and over the IoT Hub path
 * (real modules, the local IoT Hub, chunked D2C messages, the Function's orchestrator, Azurite) selects the same
 * participants and produces the same global model after every round, up to float32 summation order. With an uplink
 * codec the simulator's devices and the quantizer modules run the same update pipeline (core/round/update-pipeline.ts:
 * same seeds, same per-tensor segments, same error feedback), so compressed jobs agree as closely as raw ones.
 */
async function sameAggregate(over: Partial<SimConfig>) {
  const base: SimConfig = {
    ...DEFAULT_CONFIG,
    devices: 5,
    clientsPerRound: 3,
    rounds: 2,
    samplesPerDevice: 40,
    workers: 0,
    roundTimeoutMs: 120_000,
    ...over,
    out: fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-contract-mem-")),
  };
  const memory = await simulate(base);
  const iothub = await simulateOverIotHub({
    ...base,
    workers: 1,
    out: fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-contract-hub-")),
  });
  assert.equal(iothub.rounds.length, memory.rounds.length);
  for (let i = 0; i < memory.rounds.length; i++) {
    const m = memory.rounds[i];
    const h = iothub.rounds[i];
    assert.deepEqual([...h.participants].sort(), [...m.participants].sort(), `round ${m.round} participants`);
    assert.equal(h.completed, m.completed);
    assert.ok(Math.abs(h.loss - m.loss) < 1e-4, `round ${m.round} loss ${h.loss} vs ${m.loss}`);
    assert.ok(
      Math.abs(h.accuracy - m.accuracy) < 1e-3,
      `round ${m.round} accuracy ${h.accuracy} vs ${m.accuracy}`,
    );
    assert.ok(h.uplinkBytes > 0, "updates crossed the hub");
  }
  const json = JSON.parse(fs.readFileSync(path.join(iothub.config.out, "results.json"), "utf8"));
  assert.equal(json.config.transport, "iothub");
  return { memory, iothub };
}

test("the same job over the memory transport and the IoT Hub path gives the same aggregate", async () => {
  await sameAggregate({});
});

for (const compression of ["int8:tensor", "topk:0.05+int4"]) {
  test(`a compressed job (${compression}) gives the same aggregate over both transports`, async () => {
    const { memory, iothub } = await sameAggregate({ compression });
    for (let i = 0; i < memory.rounds.length; i++) {
      // Both compressed alike: the same envelope sizes (the frames' JSON headers may differ by a few bytes, e.g. the
      // training time), far below float32.
      const [h, m] = [iothub.rounds[i].uplinkBytes, memory.rounds[i].uplinkBytes];
      assert.ok(
        Math.abs(h - m) <= 16 * memory.rounds[i].completed,
        `round ${i + 1} uplink bytes ${h} vs ${m}`,
      );
    }
  });
}

// SecAgg+ (core/secagg): the masks cancel exactly in the ring, so the unmasked sums agree as raw ones do.
test("a secure-aggregation job gives the same aggregate over both transports", async () => {
  const { iothub } = await sameAggregate({ secureAggregation: true });
  assert.equal(iothub.config.secureAggregation, true);
});

test("a rerun into the same --out over the IoT Hub path completes (its devices remember the previous run's job)", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-rerun-hub-"));
  try {
    const config: SimConfig = {
      ...DEFAULT_CONFIG,
      devices: 3,
      clientsPerRound: 3,
      rounds: 1,
      samplesPerDevice: 20,
      workers: 1,
      roundTimeoutMs: 60_000,
      out,
    };
    const first = await simulateOverIotHub(config);
    assert.equal(first.rounds[0]?.completed, 3);
    // Before the fix the second run reused the first's job id: every trainer answered startRound with 409 (round
    // already tried) and the round waited for its deadline with no update.
    const second = await simulateOverIotHub(config);
    assert.equal(second.rounds.length, 1);
    assert.equal(second.rounds[0]?.completed, 3, "every device trained the rerun's round");
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

// Robust aggregation (docs/robustness.md): `--aggregator` becomes the job's `aggregator` member over the hub, and
// the Function clips around the same previous global step as the simulator (model r-1 minus model r-2).
test("a robust job (--aggregator centered-clip) gives the same aggregate over both transports, with its report", async () => {
  const { iothub } = await sameAggregate({ aggregator: "centered-clip:0.05" });
  assert.equal(iothub.config.aggregator, "centered-clip:0.05");
  for (const r of iothub.rounds) {
    assert.equal(r.robust?.aggregator, "centered-clip:0.05");
    assert.equal(r.robust?.devices.length, r.completed);
  }
});

// With secure aggregation the real trainer modules bound their own updates (the round order's normBound) before
// masking, as the simulator's devices do: the unmasked sums agree.
test("a secure norm:C+mean job gives the same aggregate over both transports (devices clip before masking)", async () => {
  const { memory, iothub } = await sameAggregate({
    secureAggregation: true,
    aggregator: "norm:0.05+mean",
    rounds: 1,
  });
  // The bound is active: without it the model differs (so the trainer modules did clip).
  const { aggregator: _bound, ...unbounded } = memory.config;
  const free = await simulate({
    ...unbounded,
    out: fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-contract-free-")),
  });
  assert.ok(Math.abs(free.rounds[0]!.loss - memory.rounds[0]!.loss) > 1e-3, "the bound changes the model");
  assert.equal(iothub.rounds[0]?.robust?.onDevices, true);
  assert.equal(iothub.rounds[0]?.robust?.bound, 0.05);
});
