import { describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import type { DeviceTrace, FleetTrace } from "../../../core/fleet/trace";
import { VirtualFleet } from "../../../core/fleet/virtual-fleet";
import { decodeMessage, encodeMessage } from "../../../core/protocol/messages";
import type { ServerTransport, TransportStats } from "../../../core/protocol/transport";
import type { ClientInfo } from "../../../core/strategies/strategy";

/**
 * A fake inner transport: it records the orders and answers only when the test says so (`reply`), with a result
 * whose delta has `values` float32 values, so the reply's size (and its upload time) is known.
 */
class FakeInner implements ServerTransport {
  readonly stats: TransportStats = { uplinkBytes: 0, downlinkBytes: 0 };
  readonly sent: { deviceId: string; round: number }[] = [];
  private readonly handlers = new Set<(f: Uint8Array) => void>();
  constructor(private readonly devices: ClientInfo[]) {}
  async listDevices() {
    return this.devices;
  }
  async send(deviceId: string, frame: Uint8Array) {
    const m = decodeMessage(frame);
    this.sent.push({ deviceId, round: m.round });
  }
  onMessage(h: (f: Uint8Array) => void) {
    this.handlers.add(h);
    return () => this.handlers.delete(h);
  }
  async close() {}
  reply(deviceId: string, round = 1, values = 250): Uint8Array {
    const frame = resultFrame(deviceId, round, values);
    this.handlers.forEach((h) => h(frame));
    return frame;
  }
}

const resultFrame = (deviceId: string, round: number, values: number) =>
  encodeMessage({
    type: "result",
    jobId: "j",
    round,
    deviceId,
    layoutHash: "l",
    numSamples: 100,
    metrics: { loss: 1, accuracy: 0.5, trainMs: 1 },
    delta: new Float32Array(values),
  });

const trainFrame = (round = 1, epochs = 2, values = 500) =>
  encodeMessage({
    type: "train",
    jobId: "j",
    round,
    modelHash: "h",
    layoutHash: "l",
    config: { epochs, batchSize: 10, lr: 0.1, seed: 1 },
    deadline: 0,
    weights: new Float32Array(values),
  });

/** rtt 100 ms, 10 samples/s, 1,000 B/s down, 100 B/s up. */
const dev = (deviceId: string, sessions: [number, number][]): DeviceTrace => ({
  deviceId,
  samplesPerSecond: 10,
  uplinkBytesPerSecond: 100,
  downlinkBytesPerSecond: 1000,
  rttMs: 100,
  sessions,
  maintenance: [],
});

const TRAIN = trainFrame().byteLength;
const REPLY = resultFrame("a", 1, 250).byteLength;
/** Times (ms) of each leg for 100 samples and 2 epochs. */
const DOWN = 100 + (TRAIN / 1000) * 1000;
const COMPUTE = ((100 * 2) / 10) * 1000;
const UP = 100 + (REPLY / 100) * 1000;

/** Times agree to a microsecond (sums of float legs). */
const near = (got: number | undefined, want: number) =>
  assert.ok(got !== undefined && Math.abs(got - want) < 1e-6, `${got} != ${want}`);

async function fleetOf(traces: DeviceTrace[], opts = {}, horizonS = 1000) {
  const inner = new FakeInner(traces.map((t) => ({ deviceId: t.deviceId, numSamples: 100 })));
  const trace: FleetTrace = { horizonS, devices: traces };
  const fleet = await VirtualFleet.create(inner, trace, opts);
  return { inner, fleet };
}

describe("VirtualFleet arrival times", () => {
  test("an online device: download + training + upload, exactly", async () => {
    const { inner, fleet } = await fleetOf([dev("a", [[0, 1000]])]);
    await fleet.send("a", trainFrame());
    inner.reply("a");
    const got = await fleet.next(Infinity);
    near(got?.at, DOWN + COMPUTE + UP);
    near(fleet.now(), DOWN + COMPUTE + UP);
  });

  test("offline at send: the order waits for the next session", async () => {
    const { inner, fleet } = await fleetOf([dev("a", [[100, 1000]])]);
    await fleet.send("a", trainFrame());
    inner.reply("a");
    near((await fleet.next(Infinity))?.at, 100_000 + DOWN + COMPUTE + UP);
    // What selection learns: the measured order-to-update time, the loss and samples the result reported.
    const d = fleet.delivered.get("a")!;
    assert.equal(d.sentAt, 0);
    near(d.at, 100_000 + DOWN + COMPUTE + UP);
    assert.deepEqual([d.round, d.loss, d.numSamples], [1, 1, 100]);
  });

  test("offline during training: training goes on, the upload waits for the next session", async () => {
    const { inner, fleet } = await fleetOf([
      dev("a", [
        [0, 10],
        [500, 1000],
      ]),
    ]);
    await fleet.send("a", trainFrame());
    inner.reply("a");
    assert.ok(DOWN + COMPUTE > 10_000 && DOWN < 10_000);
    near((await fleet.next(Infinity))?.at, 500_000 + UP);
  });

  test("an upload cut by the end of a session resumes in the next one", async () => {
    const cut = (DOWN + COMPUTE + 1000) / 1000; // the session ends 1 s into the upload
    const { inner, fleet } = await fleetOf([
      dev("a", [
        [0, cut],
        [700, 1000],
      ]),
    ]);
    await fleet.send("a", trainFrame());
    inner.reply("a");
    assert.ok(UP > 1000);
    near((await fleet.next(Infinity))?.at, 700_000 + (UP - 1000));
  });

  test("the download also pauses while the device is offline", async () => {
    const { inner, fleet } = await fleetOf([
      dev("a", [
        [0, 0.05],
        [300, 1000],
      ]),
    ]);
    await fleet.send("a", trainFrame());
    inner.reply("a");
    near((await fleet.next(Infinity))?.at, 300_000 + (DOWN - 50) + COMPUTE + UP);
  });

  test("past the horizon the trace repeats (cycle) or the device never answers (offline)", async () => {
    const sessions: [number, number][] = [[50, 60]];
    const cyc = await fleetOf([dev("a", sessions)], {}, 100);
    await cyc.fleet.next(70_000);
    await cyc.fleet.send("a", trainFrame());
    cyc.inner.reply("a");
    // Sent at 70 s (offline): the order waits for the session 50 s into the second cycle; training ends offline,
    // the upload starts in the third cycle's session and, longer than its 10 s, ends in the fourth's.
    assert.ok(UP > 10_000);
    near((await cyc.fleet.next(Infinity))?.at, 350_000 + (UP - 10_000));
    const off = await fleetOf([dev("a", sessions)], { beyondHorizon: "offline" }, 100);
    await off.fleet.next(70_000);
    await off.fleet.send("a", trainFrame());
    off.inner.reply("a");
    assert.equal(await off.fleet.next(10_000_000), null);
  });
});

describe("VirtualFleet event order", () => {
  test("frames come out in virtual order whatever order the real replies come in", async () => {
    const { inner, fleet } = await fleetOf([
      dev("a", [[300, 1000]]),
      dev("b", [[0, 1000]]),
      dev("c", [[100, 1000]]),
    ]);
    for (const id of ["a", "b", "c"]) await fleet.send(id, trainFrame());
    const order: string[] = [];
    const times: number[] = [];
    const reading = (async () => {
      for (let i = 0; i < 3; i++) {
        const a = await fleet.next(Infinity);
        order.push(String((decodeMessage(a!.frame) as { deviceId: string }).deviceId));
        times.push(a!.at);
      }
    })();
    // Real replies in the reverse of virtual order.
    for (const id of ["a", "c", "b"]) {
      await new Promise((r) => setImmediate(r));
      inner.reply(id);
    }
    await reading;
    assert.deepEqual(order, ["b", "c", "a"]);
    [0, 100_000, 300_000].forEach((start, i) => near(times[i], start + DOWN + COMPUTE + UP));
  });

  test("a bigger reply that arrives later is not handed out before a smaller one sent later", async () => {
    const { inner, fleet } = await fleetOf([dev("a", [[0, 1000]]), dev("b", [[0, 1000]])]);
    await fleet.send("a", trainFrame());
    await fleet.send("b", trainFrame());
    inner.reply("a", 1, 5000); // 20 KB at 100 B/s: 200 s of upload
    inner.reply("b", 1, 250);
    const first = await fleet.next(Infinity);
    assert.equal((decodeMessage(first!.frame) as { deviceId: string }).deviceId, "b");
    const second = await fleet.next(Infinity);
    assert.equal((decodeMessage(second!.frame) as { deviceId: string }).deviceId, "a");
    assert.ok(second!.at > first!.at);
  });

  test("until: null and the clock at until when nothing arrives before it, then the frame", async () => {
    const { inner, fleet } = await fleetOf([dev("a", [[0, 1000]])]);
    await fleet.send("a", trainFrame());
    // Before the lower bound, no reply is needed to know nothing arrives.
    assert.equal(await fleet.next(1000), null);
    assert.equal(fleet.now(), 1000);
    inner.reply("a");
    // Between the lower bound and the exact arrival: still null.
    assert.equal(await fleet.next(DOWN + COMPUTE + UP - 1), null);
    near(fleet.now(), DOWN + COMPUTE + UP - 1);
    near((await fleet.next(DOWN + COMPUTE + UP))?.at, DOWN + COMPUTE + UP);
    // Nothing in flight: an infinite wait returns null without moving the clock.
    assert.equal(await fleet.next(Infinity), null);
    near(fleet.now(), DOWN + COMPUTE + UP);
  });

  test("an aborted wait returns null", async () => {
    const { fleet } = await fleetOf([dev("a", [[0, 1000]])]);
    await fleet.send("a", trainFrame());
    const ac = new AbortController();
    const waiting = fleet.next(Infinity, ac.signal);
    ac.abort();
    assert.equal(await waiting, null);
  });
});

describe("VirtualFleet devices and compute", () => {
  test("listDevices offers the devices online now and not busy, with their trace speed", async () => {
    const { inner, fleet } = await fleetOf([dev("a", [[0, 1000]]), dev("b", [[500, 1000]])]);
    assert.deepEqual(
      (await fleet.listDevices()).map((d) => [d.deviceId, d.samplesPerSecond]),
      [["a", 10]],
    );
    await fleet.send("a", trainFrame());
    assert.deepEqual(await fleet.listDevices(), []);
    inner.reply("a");
    near((await fleet.next(Infinity))?.at, DOWN + COMPUTE + UP);
    assert.deepEqual(
      (await fleet.listDevices()).map((d) => d.deviceId),
      ["a"],
    );
    assert.equal(await fleet.next(600_000), null);
    assert.deepEqual(
      (await fleet.listDevices()).map((d) => d.deviceId),
      ["a", "b"],
    );
    const [p] = fleet.profiles([{ deviceId: "b", numSamples: 100 }]);
    assert.equal(p.onlineForS, 400);
    assert.equal(p.availability, 0.5);
  });

  test("a request that would arrive after cancelAfter is never computed, and counted", async () => {
    const { inner, fleet } = await fleetOf([dev("a", [[0, 1000]]), dev("b", [[400, 1000]])], {
      cancelAfter: (sent: number) => sent + 60_000,
    });
    await fleet.send("a", trainFrame(3));
    await fleet.send("b", trainFrame(3));
    assert.deepEqual(inner.sent, [{ deviceId: "a", round: 3 }]);
    assert.equal(fleet.cancelled.get(3), 1);
    inner.reply("a", 3);
    near((await fleet.next(Infinity))?.at, DOWN + COMPUTE + UP);
    assert.equal(await fleet.next(Infinity), null);
  });
});
