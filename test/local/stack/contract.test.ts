import { test } from "node:test";
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
 * participants and produces the same global model after every round, up to float32 summation order.
 */
test("the same job over the memory transport and the IoT Hub path gives the same aggregate", async () => {
  const base: SimConfig = {
    ...DEFAULT_CONFIG,
    devices: 5,
    clientsPerRound: 3,
    rounds: 2,
    samplesPerDevice: 40,
    workers: 0,
    roundTimeoutMs: 120_000,
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
});
