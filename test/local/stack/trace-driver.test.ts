import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { DeviceTrace } from "../../../core/fleet/trace";
import type { TrainExecutor, TrainJob, TrainOutcome } from "../../../modules/trainer/src/executor";
import {
  PacedExecutor,
  TraceDriver,
  traceFor,
  traceSpeed,
  VirtualClock,
} from "../../../local/stack/trace-driver";
import { waitFor } from "./fault-support";

function dev(deviceId: string, sessions: [number, number][], samplesPerSecond = 100): DeviceTrace {
  return {
    deviceId,
    samplesPerSecond,
    uplinkBytesPerSecond: 1,
    downlinkBytesPerSecond: 1,
    rttMs: 1,
    sessions,
    maintenance: [],
  };
}

test("trace driver: each device's link follows its sessions, in order, starting with the state at t = 0", async () => {
  const calls: string[] = [];
  const devices = new Map([
    [
      "a",
      dev("a", [
        [0, 20],
        [40, 60],
      ]),
    ],
    ["b", dev("b", [[10, 1e12]])],
    ["c", dev("c", [[0, 1e12]])],
  ]);
  // 100 virtual seconds per real second: the whole schedule in about 0.6 s.
  const clock = new VirtualClock(100);
  const driver = new TraceDriver(devices, clock, async (id, on) => {
    calls.push(`${id} ${on ? "on" : "off"}`);
  });
  try {
    await driver.start();
    assert.deepEqual(calls, ["b off"], "b is offline at t = 0; a and c are online (no switch)");
    await waitFor("the end of a's last session", () => clock.nowS() > 61 && !driver.isOnline("a"), 10_000);
    await driver.settled();
    // A timer that fires late sees the state at its own time (a gap already over is skipped), so on a loaded
    // machine a may skip its gap: what holds is that each device alternates and ends in the trace's final state.
    const of = (id: string) => calls.filter((c) => c.startsWith(id)).map((c) => c.slice(2));
    const alternates = (xs: string[]) => xs.every((x, i) => i === 0 || x !== xs[i - 1]);
    assert.ok(alternates(of("a")) && of("a")[0] === "off" && of("a").at(-1) === "off", calls.join(", "));
    assert.deepEqual(of("b"), ["off", "on"]);
    assert.deepEqual(of("c"), []);
    assert.equal(driver.stats().transitions.b, 2);
  } finally {
    driver.stop();
  }
});

test("trace driver: trace devices map by id when the trace names the fleet, else by position; too few is an error", () => {
  const trace = { horizonS: 10, devices: [dev("x", []), dev("y", [])] };
  assert.deepEqual(
    [...traceFor(trace, ["y", "x"]).entries()].map(([k, v]) => [k, v.deviceId]),
    [
      ["y", "y"],
      ["x", "x"],
    ],
  );
  assert.deepEqual(
    [...traceFor(trace, ["p", "q"]).entries()].map(([k, v]) => [k, v.deviceId]),
    [
      ["p", "x"],
      ["q", "y"],
    ],
  );
  assert.throws(() => traceFor(trace, ["p", "q", "r"]), /E_CONFIG_VALUE|2 devices/);
  assert.throws(() => new VirtualClock(0), /time-scale/);
});

test("paced executor: training takes at least samples × epochs / speed, divided by the time scale; real training runs", async () => {
  let ran = 0;
  const inner: TrainExecutor = {
    run: async (): Promise<TrainOutcome> => {
      ran++;
      return { delta: new Float32Array(1), numSamples: 50, metrics: { loss: 0, accuracy: 0, trainMs: 0 } };
    },
  };
  const trace = dev("slow", [[0, 1e9]], 10); // 10 samples/s
  const paced = new PacedExecutor(inner, new VirtualClock(100), traceSpeed(trace), () => 50);
  const job = { spec: { kind: "mlp" }, config: { epochs: 2 } } as unknown as TrainJob;
  // 50 samples × 2 epochs / 10 samples/s = 10 virtual s = 100 real ms at ×100.
  assert.equal(paced.minRealMs(job), 100);
  const t0 = performance.now();
  const out = await paced.run(job, new AbortController().signal, () => undefined);
  assert.ok(performance.now() - t0 >= 99, "waited for the trace's training time");
  assert.equal(out.numSamples, 50);
  assert.equal(ran, 1);
  // Aborting ends the wait.
  const ac = new AbortController();
  const slow = new PacedExecutor(inner, new VirtualClock(0.001), traceSpeed(trace), () => 50);
  const p = slow.run(job, ac.signal, () => undefined);
  await new Promise((r) => setImmediate(r));
  ac.abort();
  await assert.rejects(p, /aborted/);
});
