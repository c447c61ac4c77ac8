import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  openRound,
  secAggDropouts,
  secAggFailures,
  step,
  waiting,
  type RoundDecision,
  type RoundEvent,
  type RoundPolicy,
  type RoundState,
} from "../../../core/round/engine";
import { RoundCloser } from "../../../core/round/close";
import { createStrategy } from "../../../core/strategies/registry";
import type { FitResult } from "../../../core/strategies/strategy";
import { DifferentialPrivacy } from "../../../core/privacy/dp";

const config = { epochs: 1, batchSize: 8, lr: 0.1, seed: 1 };
const devs = (n: number) => Array.from({ length: n }, (_, i) => `d${i}`);

function plain(n = 3, deadline = 1000): RoundState {
  return openRound({
    jobId: "j",
    round: 1,
    participants: devs(n).map((deviceId) => ({ deviceId, config })),
    now: 0,
    deadline,
    modelSha256: "m0",
  });
}

function secure(n = 5, deadline = 1000): RoundState {
  return openRound({
    jobId: "j",
    round: 1,
    participants: devs(n).map((deviceId) => ({ deviceId, config })),
    now: 0,
    deadline,
    modelSha256: "m0",
    secagg: { graphSeed: "seed" },
  });
}

const result = (deviceId: string, at = 1) =>
  ({
    type: "updateReceived",
    deviceId,
    update: { updateId: `${deviceId}-u`, kind: "result", bytes: 10, numSamples: 4, at },
  }) as const;

/** Runs events through the engine; returns the final state and every decision in order. */
function run(
  st: RoundState,
  events: readonly RoundEvent[],
  policy?: RoundPolicy,
): { state: RoundState; decisions: RoundDecision[] } {
  const decisions: RoundDecision[] = [];
  for (const ev of events) {
    const r = step(st, ev, policy);
    st = r.state;
    decisions.push(...r.decisions);
  }
  return { state: st, decisions };
}

const types = (ds: readonly RoundDecision[]) => ds.map((d) => d.type);

test("a plain round: orders are due first; it closes once every participant answered, then asks to aggregate", () => {
  let st = plain();
  let r = step(st, { type: "tick", now: 1 });
  assert.deepEqual(r.decisions, [{ type: "sendOrders", devices: ["d0", "d1", "d2"] }]);
  st = step(st, { type: "dispatched" }).state;
  st = run(st, [result("d0"), result("d1")]).state;
  r = step(st, { type: "tick", now: 2 });
  assert.equal(r.state, st, "nothing to do: the same state object (no write needed)");
  assert.deepEqual(r.decisions, []);
  st = step(st, result("d2")).state;
  r = step(st, { type: "tick", now: 3 });
  assert.equal(r.state.status, "closing");
  assert.deepEqual(types(r.decisions), ["aggregate"]);
  // a closing round asks again (a driver killed while aggregating resumes there)
  assert.deepEqual(types(step(r.state, { type: "tick", now: 4 }).decisions), ["aggregate"]);
  const closed = step(r.state, { type: "closed" }).state;
  assert.equal(closed.status, "closed");
  assert.deepEqual(step(closed, { type: "tick", now: 5 }).decisions, []);
});

test("a plain round closes at its deadline with the updates it has; late, duplicate and stranger updates change nothing", () => {
  let st = run(plain(3, 1000), [{ type: "dispatched" }, result("d0")]).state;
  assert.deepEqual(waiting(st), ["d1", "d2"]);
  assert.equal(step(st, result("d0", 5)).state, st, "duplicate");
  assert.equal(step(st, result("stranger")).state, st, "not a participant");
  assert.deepEqual(step(st, { type: "tick", now: 999 }).decisions, []);
  const r = step(st, { type: "tick", now: 1000 });
  assert.deepEqual(types(r.decisions), ["aggregate"]);
  st = r.state;
  assert.equal(step(st, result("d1", 1001)).state, st, "late: the set of updates is frozen when closing");
});

test("the state is JSON: a round serialised mid-way and resumed gives the same states and decisions", () => {
  const policy: RoundPolicy = { secagg: { stepMs: 100, minSurvivors: 3 } };
  const first: RoundEvent[] = [
    { type: "dispatched" },
    ...devs(5).map(
      (d) => ({ type: "secaggFrame", step: "advertise", deviceId: d, receipt: { bytes: 5, at: 1 } }) as const,
    ),
    { type: "tick", now: 10 },
    { type: "stepFinished", step: "advertise", survivors: devs(5), now: 10 },
    { type: "stepAnswers", step: "share", answered: { d0: { bytes: 1, at: 11 } }, down: { d0: 7, d1: 7 } },
  ];
  const rest: RoundEvent[] = [
    { type: "tick", now: 50 },
    { type: "stepAnswers", step: "share", answered: { d1: { bytes: 1, at: 51 }, d2: { bytes: 1, at: 52 } } },
    { type: "tick", now: 111 },
    {
      type: "stepFinished",
      step: "share",
      survivors: ["d0", "d1", "d2"],
      lost: { d3: { step: "share", code: "E_SECAGG_TIMEOUT", reason: "late" } },
      now: 111,
    },
    { type: "paused", now: 120 },
    { type: "devicesReleased" },
    { type: "resumed", now: 220 },
  ];
  const mid = run(secure(), first, policy).state;
  const straight = run(mid, rest, policy);
  const resumed = run(JSON.parse(JSON.stringify(mid)) as RoundState, rest, policy);
  assert.deepEqual(resumed, straight);
  // what happened: phase mask, its deadline moved by the 100 ms pause, orders due again
  assert.equal(straight.state.secagg?.phase, "mask");
  assert.equal(straight.state.secagg?.stepDeadline, 111 + 100 + 100);
  assert.equal(straight.state.deadline, 1000 + 100);
  assert.deepEqual(straight.state.secagg?.down, { d0: 7, d1: 7 });
  assert.deepEqual(types(straight.decisions), [
    "secaggRequest", // tick at 50: d3 and d4 still owe key shares
    "secaggRequest", // tick at 111: the deadline passed...
    "closeStep", // ...so the step closes
    "secaggRequest", // mask requests to the survivors
    "releaseDevices",
    "sendOrders", // resumed: the devices were told to abort, so the orders go out again
    "secaggRequest",
  ]);
});

test("secure round: the phases, survivor sets, step deadlines and who is asked each step", () => {
  const policy: RoundPolicy = { secagg: { stepMs: 30, minSurvivors: 2 } };
  let st = run(secure(4), [{ type: "dispatched" }], policy).state;
  assert.equal(st.secagg?.stepDeadline, 1000, "advertisements are due by the training deadline");
  st = run(
    st,
    ["d0", "d1", "d2"].map(
      (d) => ({ type: "secaggFrame", step: "advertise", deviceId: d, receipt: { bytes: 1, at: 1 } }) as const,
    ),
    policy,
  ).state;
  assert.deepEqual(waiting(st), ["d3"]);
  assert.deepEqual(step(st, { type: "tick", now: 999 }, policy).decisions, []);
  assert.deepEqual(step(st, { type: "tick", now: 1000 }, policy).decisions, [
    { type: "closeStep", step: "advertise" },
  ]);
  let r = step(
    st,
    {
      type: "stepFinished",
      step: "advertise",
      survivors: ["d2", "d0", "d1"],
      lost: { d3: { step: "advertise", code: "E_ROUND_TIMEOUT", reason: "no advertisement" } },
      now: 1000,
    },
    policy,
  );
  st = r.state;
  assert.deepEqual(st.secagg?.u1, ["d0", "d1", "d2"]);
  assert.equal(st.secagg?.phase, "share");
  assert.equal(st.secagg?.stepDeadline, 1030);
  assert.deepEqual(r.decisions, [{ type: "secaggRequest", step: "share", devices: ["d0", "d1", "d2"] }]);
  // a refusal is final: not asked again, and lost with its reason when the step closes
  st = step(
    st,
    { type: "stepAnswers", step: "share", refused: { d2: { code: "E_TEST", message: "no" } } },
    policy,
  ).state;
  assert.deepEqual(waiting(st), ["d0", "d1"]);
  st = step(
    st,
    {
      type: "stepAnswers",
      step: "share",
      answered: { d0: { bytes: 1, at: 2 }, d1: { bytes: 1, at: 2 } },
    },
    policy,
  ).state;
  assert.deepEqual(types(step(st, { type: "tick", now: 1001 }, policy).decisions), ["closeStep"]);
  st = step(
    st,
    {
      type: "stepFinished",
      step: "share",
      survivors: ["d0", "d1"],
      lost: { d2: { step: "share", code: "E_TEST", reason: "no" } },
      now: 1001,
    },
    policy,
  ).state;
  // mask: masked inputs arrive as frames; an accepted request is not repeated
  st = step(st, { type: "stepAnswers", step: "mask", acked: { d0: true } }, policy).state;
  assert.deepEqual(step(st, { type: "tick", now: 1002 }, policy).decisions, [
    { type: "secaggRequest", step: "mask", devices: ["d1"] },
  ]);
  st = run(
    st,
    ["d0", "d1", "d2"].map(
      (d) =>
        ({
          type: "secaggFrame",
          step: "mask",
          deviceId: d,
          receipt: { bytes: 9, at: 3, numSamples: 4 },
        }) as const,
    ),
    policy,
  ).state;
  assert.deepEqual(
    Object.keys(st.secagg?.masked ?? {}),
    ["d0", "d1"],
    "d2 is not in U2: its frame is refused",
  );
  st = step(st, { type: "stepFinished", step: "mask", survivors: ["d0", "d1"], now: 1003 }, policy).state;
  st = step(
    st,
    { type: "stepAnswers", step: "unmask", answered: { d0: { bytes: 1, at: 4 }, d1: { bytes: 1, at: 4 } } },
    policy,
  ).state;
  r = step(st, { type: "stepFinished", step: "unmask", survivors: ["d0", "d1"], now: 1004 }, policy);
  assert.equal(r.state.status, "closing");
  assert.equal(r.state.secagg?.phase, "finish");
  assert.deepEqual(types(r.decisions), ["aggregate"]);
  assert.deepEqual(secAggDropouts(r.state), { advertise: ["d3"], share: ["d2"], mask: [], unmask: [] });
  assert.deepEqual(secAggFailures(r.state, ["d0", "d1"]), [
    { deviceId: "d2", code: "E_TEST", reason: "share: no" },
    { deviceId: "d3", code: "E_ROUND_TIMEOUT", reason: "advertise: no advertisement" },
  ]);
});

test("secure round: a step leaving fewer than minSurvivors aborts it before anything is unmasked", () => {
  const policy: RoundPolicy = { secagg: { stepMs: 30, minSurvivors: 3 } };
  let st = run(secure(4), [{ type: "dispatched" }], policy).state;
  st = step(st, { type: "stepFinished", step: "advertise", survivors: devs(4), now: 1 }, policy).state;
  const r = step(st, { type: "stepFinished", step: "share", survivors: ["d0", "d1"], now: 2 }, policy);
  assert.equal(r.state.status, "closing");
  assert.equal(r.state.secagg?.phase, "aborted");
  assert.deepEqual(r.state.secagg?.error, {
    code: "E_SECAGG_ABORTED",
    message: "share: 2 device(s) shared keys, the job needs at least 3",
  });
  assert.deepEqual(r.state.secagg?.u2, ["d0", "d1"], "the step's survivors are kept for the record");
  assert.deepEqual(types(r.decisions), ["aggregate"]);
  // nothing moves an aborted round on
  assert.equal(
    step(r.state, { type: "stepFinished", step: "mask", survivors: [], now: 3 }, policy).state,
    r.state,
  );
  assert.equal(step(r.state, { type: "aborted", code: "E_X", message: "again" }, policy).state, r.state);
  assert.deepEqual(
    secAggFailures(r.state, []).map((f) => f.code),
    ["E_SECAGG_ABORTED", "E_SECAGG_ABORTED", "E_SECAGG_ABORTED", "E_SECAGG_ABORTED"],
  );
});

test("secure round with distributed DP: fewer masked inputs than n' abort with E_DP_TOO_FEW; so does a revised set", () => {
  const policy: RoundPolicy = { secagg: { stepMs: 30, minSurvivors: 1 }, dpMinSurvivors: 3 };
  let st = run(secure(4), [{ type: "dispatched" }], policy).state;
  st = step(st, { type: "stepFinished", step: "advertise", survivors: devs(4), now: 1 }, policy).state;
  st = step(st, { type: "stepFinished", step: "share", survivors: devs(4), now: 2 }, policy).state;
  const few = step(st, { type: "stepFinished", step: "mask", survivors: ["d0", "d1"], now: 3 }, policy);
  assert.equal(few.state.secagg?.error?.code, "E_DP_TOO_FEW");
  assert.match(few.state.secagg?.error?.message ?? "", /mask: 2 masked input\(s\), fewer than the 3/);
  // enough when frozen, fewer once the server refused one (survivorsRevised)
  st = step(st, { type: "stepFinished", step: "mask", survivors: ["d0", "d1", "d2"], now: 3 }, policy).state;
  assert.equal(st.secagg?.phase, "unmask");
  const revised = step(st, { type: "survivorsRevised", step: "mask", survivors: ["d0", "d1"] }, policy);
  assert.equal(revised.state.secagg?.phase, "aborted");
  assert.equal(revised.state.secagg?.error?.code, "E_DP_TOO_FEW");
});

function fedavg(length = 2) {
  const s = createStrategy("fedavg", {
    clientsPerRound: 3,
    fit: { epochs: 1, batchSize: 1, lr: 0.1 },
    seed: 1,
  });
  s.initialize(new Float32Array(length));
  return s;
}

const update = (deviceId: string, delta: number[], numSamples = 1, loss = 1): FitResult => ({
  deviceId,
  numSamples,
  delta: Float32Array.from(delta),
  metrics: { loss, accuracy: 0.5, trainMs: 3 },
});

test("the close routine: updates in, failures for the rest, the sample-weighted model and training loss out", () => {
  const s = fedavg();
  const closer = new RoundCloser({ round: 1, aggregation: s.beginAggregate(1) });
  assert.equal(closer.update(update("d0", [1, 1], 1, 2)), undefined);
  assert.equal(closer.update(update("d1", [4, 4], 3, 4)), undefined);
  closer.fail("d2", "E_DEVICE", "broke");
  const out = closer.finish(["d0", "d1", "d2", "d3"]);
  assert.equal(out.status, "aggregated");
  assert.deepEqual([...out.weights], [3.25, 3.25]);
  assert.equal(out.metrics.trainLoss, 3.5, "(1·2 + 3·4) / 4");
  assert.deepEqual(out.completed, ["d0", "d1"]);
  assert.deepEqual(
    out.failures.map((f) => [f.deviceId, f.code]),
    [
      ["d2", "E_DEVICE"],
      ["d3", "E_ROUND_TIMEOUT"],
    ],
  );
  assert.equal(out.diverged, undefined);
});

test("the close routine bounds sample-count claims by policy: clipped, or refused with E_ROUND_SAMPLES", () => {
  const lines: string[] = [];
  const clip = new RoundCloser({
    round: 1,
    aggregation: fedavg().beginAggregate(1),
    samplePolicy: { maxSamplesPerDevice: 10 },
    log: (l) => lines.push(l),
  });
  clip.update(update("d0", [1, 1], 2 ** 53), 5);
  clip.update(update("d1", [3, 3], 5), 5);
  const c = clip.finish(["d0", "d1"]);
  assert.deepEqual([...c.weights], [2, 2], "weighed at its declared 5, like d1");
  assert.equal(c.sampleCountClipped, 1);
  assert.match(
    lines[0],
    /sample count clipped: 'd0' claims 9007199254740992 samples, above its bound 5 \(declared\)/,
  );
  const reject = new RoundCloser({
    round: 1,
    aggregation: fedavg().beginAggregate(1),
    samplePolicy: { maxSamplesPerDevice: 10, sampleCountPolicy: "reject" },
  });
  assert.equal(reject.update(update("d0", [1, 1], 11))?.code, "E_ROUND_SAMPLES");
  const rj = reject.finish(["d0"]);
  assert.equal(rj.status, "failed");
  assert.equal(rj.sampleCountRejected, 1);
  assert.deepEqual([...rj.weights], [0, 0], "nothing aggregated: the model is kept");
});

test("the close routine refuses an update of another layout, and a non-finite secure sum, without throwing", () => {
  const closer = new RoundCloser({ round: 2, aggregation: fedavg().beginAggregate(2), layoutHash: "L" });
  assert.equal(closer.update({ ...update("d0", [1, 1]), layoutHash: "other" })?.code, "E_MODEL_LAYOUT");
  closer.secure({ included: ["d1", "d2"], totalWeight: 2, mean: Float32Array.from([NaN, 1]), reports: [] });
  const out = closer.finish(["d0", "d1", "d2"]);
  assert.equal(out.status, "failed");
  assert.deepEqual(
    out.failures.map((f) => f.deviceId),
    ["d0", "d1", "d2"],
  );
  assert.ok(out.failures.every((f) => f.code !== "E_ROUND_TIMEOUT"));
});

test("the close routine under DP: a released round spends budget, an aborted secure round (nothing added) spends none", () => {
  const dp = new DifferentialPrivacy({
    noiseMultiplier: 1,
    clip: 1,
    delta: 1e-5,
    placement: "central",
    clientsPerRound: 2,
    fleetSize: 4,
    epsilonBudget: 1e9,
    noiseSeed: 3,
  });
  const s = fedavg();
  const wrap = (round: number) =>
    dp.aggregate(s.beginAggregate(round), { round, layoutHash: "L", length: 2, current: s.weights });
  const c1 = new RoundCloser({ round: 1, aggregation: wrap(1) });
  c1.update(update("d0", [0.1, 0.1]));
  c1.update(update("d1", [0.2, 0.2]));
  c1.finish(["d0", "d1"]);
  assert.equal(dp.lastRound?.released, true);
  const spent = dp.spent().steps;
  assert.equal(spent, 1);
  const c2 = new RoundCloser({ round: 2, aggregation: wrap(2) });
  for (const id of ["d0", "d1"]) c2.fail(id, "E_SECAGG_ABORTED", "too few");
  const out = c2.finish(["d0", "d1"]);
  assert.equal(out.status, "failed");
  assert.equal(dp.lastRound?.released, false);
  assert.equal(dp.spent().steps, spent, "a round that released nothing costs nothing");
  assert.ok(dp.allowsNextRound());
});
