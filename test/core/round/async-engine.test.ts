import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  oldestAccepted,
  openAsync,
  stepAsync,
  type AsyncDecision,
  type AsyncEvent,
  type AsyncState,
} from "../../../core/round/async-engine";

const open = (o: Partial<Parameters<typeof openAsync>[0]> = {}) =>
  openAsync({ jobId: "j", concurrency: 3, buffer: 2, maxStaleness: 2, ...o });

/** Runs events in order; returns the final state and every decision. */
function run(st: AsyncState, events: AsyncEvent[]): { st: AsyncState; decisions: AsyncDecision[] } {
  const decisions: AsyncDecision[] = [];
  for (const ev of events) {
    const r = stepAsync(st, ev);
    st = r.state;
    decisions.push(...r.decisions);
    // JSON state: a round trip changes nothing
    assert.deepEqual(JSON.parse(JSON.stringify(st)), st);
  }
  return { st, decisions };
}

const upd = (deviceId: string, baseVersion: number, at = 1, n = 10): AsyncEvent => ({
  type: "updateReceived",
  deviceId,
  baseVersion,
  update: { updateId: `${deviceId}@${baseVersion}`, numSamples: n, at },
});
const ordered = (devices: string[], baseVersion: number, now = 0, deadline = 100): AsyncEvent => ({
  type: "ordered",
  devices,
  baseVersion,
  now,
  deadline,
});

test("a new job asks for C orders; ordered devices fill the slots", () => {
  const st = open();
  assert.deepEqual(stepAsync(st, { type: "tick", now: 0 }).decisions, [{ type: "order", count: 3 }]);
  const r = run(st, [ordered(["a", "b"], 0)]);
  assert.deepEqual(r.decisions, [{ type: "order", count: 1 }]);
  assert.equal(r.st.counters.ordered, 2);
  assert.deepEqual(r.st.inFlight.a, { baseVersion: 0, orderedAt: 0, deadline: 100 });
  const full = run(r.st, [ordered(["c", "a"], 0)]); // a is already in flight: not ordered twice
  assert.deepEqual(full.decisions, []);
  assert.equal(full.st.counters.ordered, 3);
});

test("K updates flush; the version advances on `flushed`; orders resume from the new version", () => {
  let { st, decisions } = run(open(), [ordered(["a", "b", "c"], 0), upd("a", 0, 5)]);
  // a's slot is free again: one order, and the buffer holds 1 < K
  assert.deepEqual(decisions, [{ type: "order", count: 1 }]);
  ({ st, decisions } = run(st, [upd("b", 0, 6)]));
  assert.equal(st.status, "flushing");
  assert.deepEqual(decisions, [
    {
      type: "flush",
      entries: [
        { deviceId: "a", updateId: "a@0", baseVersion: 0, staleness: 0, weight: 1, numSamples: 10, at: 5 },
        { deviceId: "b", updateId: "b@0", baseVersion: 0, staleness: 0, weight: 1, numSamples: 10, at: 6 },
      ],
    },
  ]);
  // while flushing: updates wait in the buffer, nothing is ordered
  ({ st, decisions } = run(st, [upd("c", 0, 7)]));
  assert.deepEqual(decisions, []);
  assert.equal(st.entries.length, 3);
  ({ st, decisions } = run(st, [{ type: "flushed", newVersion: 1, now: 8 }]));
  assert.equal(st.version, 1);
  assert.equal(st.status, "running");
  assert.equal(st.counters.applied, 2);
  assert.deepEqual(
    st.entries.map((e) => e.deviceId),
    ["c"],
  );
  assert.deepEqual(decisions, [{ type: "order", count: 3 }]);
  // a flushed report that is not for the flush in progress changes nothing
  assert.equal(stepAsync(st, { type: "flushed", newVersion: 2, now: 9 }).state, st);
});

test("staleness: τ = version − base, weighted by s(τ); τ > maxStaleness is refused and counted", () => {
  let st: AsyncState = { ...open({ buffer: 5, concurrency: 5 }), version: 3 };
  let decisions: AsyncDecision[];
  ({ st, decisions } = run(st, [ordered(["old"], 0), ordered(["mid"], 1), ordered(["new"], 3)]));
  ({ st, decisions } = run(st, [upd("old", 0), upd("mid", 1), upd("new", 3)]));
  assert.deepEqual(
    decisions.filter((d) => d.type === "refuse"),
    [
      {
        type: "refuse",
        deviceId: "old",
        updateId: "old@0",
        code: "E_ASYNC_STALE",
        reason:
          "update from 'old' trained from version 0 arrived at version 3: staleness 3 > max staleness 2",
      },
    ],
  );
  assert.equal(st.counters.refusedStale, 1);
  assert.deepEqual(
    st.entries.map((e) => [e.deviceId, e.staleness, e.weight]),
    [
      ["mid", 2, Math.pow(3, -0.5)],
      ["new", 0, 1],
    ],
  );
  assert.equal(oldestAccepted(st), 1);
  // hinge: flat up to b
  const h = run({ ...open({ staleness: "hinge:1,1", buffer: 9 }), version: 2 }, [
    ordered(["x"], 0),
    upd("x", 0),
  ]).st;
  assert.equal(h.entries[0]!.weight, 1 / 2);
});

test("deadlines: a timed-out order is counted, its slot reordered, and its late update still counts", () => {
  let { st, decisions } = run(open({ buffer: 9 }), [ordered(["a", "b", "c"], 0, 0, 100)]);
  ({ st, decisions } = run(st, [{ type: "tick", now: 50 }]));
  assert.deepEqual(decisions, []);
  ({ st, decisions } = run(st, [{ type: "tick", now: 100 }]));
  assert.deepEqual(decisions, [
    { type: "timedOut", devices: ["a", "b", "c"] },
    { type: "order", count: 3 },
  ]);
  assert.equal(st.counters.timeouts, 3);
  ({ st, decisions } = run(st, [upd("a", 0, 120)]));
  assert.equal(st.counters.late, 1);
  assert.equal(st.entries.length, 1);
  // an update nobody ordered is refused as unexpected; a second delivery of a buffered one is ignored
  ({ st, decisions } = run(st, [upd("zz", 0), upd("a", 0)]));
  assert.deepEqual(
    decisions.map((d) => (d.type === "refuse" ? d.code : d.type)),
    ["E_PROTO_STALE"],
  );
  assert.equal(st.counters.unexpected, 1);
  // the same update delivered twice while in the buffer is a no-op
  assert.equal(stepAsync(st, upd("a", 0)).state, st);
});

test("a late update older than maxStaleness is no longer waited for after a flush", () => {
  let { st } = run(open({ buffer: 1, maxStaleness: 0 }), [
    ordered(["a", "b"], 0, 0, 10),
    { type: "tick", now: 10 },
  ]);
  assert.deepEqual(Object.keys(st.expired).sort(), ["a", "b"]);
  ({ st } = run(st, [ordered(["c"], 0, 10, 50), upd("c", 0), { type: "flushed", newVersion: 1, now: 12 }]));
  assert.deepEqual(st.expired, {});
  const r = stepAsync(st, upd("a", 0));
  assert.equal(r.state.counters.unexpected, 1);
});

test("failures free their slot; paused jobs order nothing and shift deadlines when resumed", () => {
  let { st, decisions } = run(open(), [ordered(["a", "b", "c"], 0, 0, 100)]);
  ({ st, decisions } = run(st, [
    { type: "failure", deviceId: "a", baseVersion: 0, code: "E_X", reason: "x", now: 1 },
  ]));
  assert.deepEqual(decisions, [{ type: "order", count: 1 }]);
  assert.equal(st.counters.failures, 1);
  ({ st, decisions } = run(st, [
    { type: "paused", now: 10 },
    upd("b", 0),
    upd("c", 0),
    { type: "tick", now: 500 },
  ]));
  assert.deepEqual(decisions, []);
  assert.equal(st.entries.length, 2);
  ({ st, decisions } = run(st, [{ type: "resumed", now: 60 }]));
  assert.equal(st.paused, undefined);
  assert.equal(decisions[0]!.type, "flush");
  const again = run(open(), [
    ordered(["a"], 0, 0, 100),
    { type: "paused", now: 10 },
    { type: "resumed", now: 60 },
  ]);
  assert.equal(again.st.inFlight.a!.deadline, 150);
});

test("invalid options are one E_ASYNC_CONFIG (or E_CONFIG_STALENESS) line", () => {
  assert.throws(() => open({ concurrency: 0 }), { code: "E_ASYNC_CONFIG" });
  assert.throws(() => open({ buffer: 1.5 }), { code: "E_ASYNC_CONFIG" });
  assert.throws(() => open({ maxStaleness: -1 }), { code: "E_ASYNC_CONFIG" });
  assert.throws(() => open({ staleness: "exp" }), { code: "E_CONFIG_STALENESS" });
});
