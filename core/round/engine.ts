/**
 * The round engine: one federated round as a resumable state machine, shared by the simulator
 * (core/round/server.ts drives it in-process over a ServerTransport) and the Azure Function
 * (cloud/aggregator/src/orchestrator.ts drives it from its timer and Event Hub triggers, keeping the state in
 * Blob Storage as rounds/{r}/state.json).
 *
 * `step(state, event, policy) → { state, decisions }` is pure: the state is plain JSON (a round resumed from its
 * serialised state goes on exactly as the original would), events say what happened (an update arrived, time
 * passed, a secure-aggregation step's answers came in or its survivors are known, the job was paused or resumed),
 * and decisions say what the driver must do next (send the round orders, ask devices for a SecAgg+ step, close a
 * step with the SecAggServer, aggregate and publish). The step returns the very same state object when the event
 * changes nothing, so a driver persisting with a conditional write can skip the write.
 *
 *   plain round     open → (every participant answered, or the deadline passed) → closing → closed
 *   secure round    open: advertise → share → mask → unmask → finish (or aborted) → closing → closed
 *                   (SecAgg+, Bell et al. CCS 2020, Algorithm 2; the survivor sets U1..U4 are fixed as each step
 *                   closes; a step that leaves fewer than the job's minSurvivors, or than distributed DP's n',
 *                   aborts the round before anything is unmasked)
 *   paused          a stopped job's open round keeps its updates; when the job runs again every deadline moves by
 *                   the time it was stopped and the orders are sent again when the devices were told to abort
 *
 * The crypto of SecAgg+ stays in core/secagg (SecAggServer), which the drivers feed; the close routine (updates or
 * the secure aggregate into the strategy's aggregation, failures, divergence) is core/round/close.ts.
 *
 * This is the synchronous mode. The asynchronous mode (FedBuff: C devices always training, updates applied in
 * buffers of K with a staleness weight, no rounds) is core/round/async-engine.ts, `stepAsync(state, event)` in
 * the same style; core/round/async-server.ts drives it in the simulator.
 */
import type { DpOrder } from "../protocol/messages";
import type { SecAggParams, SecAggStep } from "../secagg/types";
import type { FitConfig } from "../strategies/strategy";
import type { PolicyExclusionCounts } from "../fleet/policy";

export interface Participant {
  readonly deviceId: string;
  readonly config: FitConfig;
  /** The sample count the device reported when the round opened (bounds its weight: core/round/samples.ts). */
  readonly declaredSamples?: number;
}

export interface ReceivedUpdate {
  readonly updateId: string;
  readonly kind: "result" | "failure";
  readonly bytes: number;
  readonly numSamples?: number;
  readonly loss?: number;
  readonly code?: string;
  readonly reason?: string;
  readonly at: number;
}

export interface RoundState {
  readonly jobId: string;
  readonly round: number;
  /** open: collecting; closing: aggregation began over `received` as frozen then; closed: done. */
  readonly status: "open" | "closing" | "closed";
  readonly participants: readonly Participant[];
  readonly received: Readonly<Record<string, ReceivedUpdate>>;
  readonly openedAt: number;
  readonly deadline: number;
  /** sha256 of the model the round trains from. */
  readonly modelSha256: string;
  /** True once every participant was sent its order. */
  readonly dispatched: boolean;
  /** Secure rounds only: the protocol's state (receipts, survivor sets, step deadline). */
  readonly secagg?: SecAggRoundState;
  /** DP jobs: the clip norm the round's updates are clipped to (fixed when it opens), and the devices' order. */
  readonly dp?: { readonly clip: number; readonly order?: DpOrder };
  /**
   * Set while its job is stopped: since when, and whether every participant was told to abort. Updates that
   * arrive meanwhile are kept; when the job starts again the deadlines move by the time stopped and the round is
   * dispatched again.
   */
  readonly paused?: { readonly at: number; readonly devicesReleased: boolean };
  /** How the participants were chosen, when the driver screens device policy (the Function; not the simulator). */
  readonly selection?: RoundSelection;
}

/**
 * What the round's selection chose from: `candidates` devices were left for the selector after every exclusion
 * (connection, declared windows, deadline fit, device policy, contribution quality, other jobs' leases), and
 * `policyExcluded` counts the devices each device-policy reason left out (core/fleet/policy.ts; absent reasons: 0).
 */
export interface RoundSelection {
  readonly candidates: number;
  readonly policyExcluded: PolicyExclusionCounts;
}

export type SecAggPhase = "advertise" | "share" | "mask" | "unmask" | "finish" | "aborted";

/** Why a device was lost to a secure round (its first reason). */
export interface LostDevice {
  readonly step: string;
  readonly code: string;
  readonly reason: string;
}

/**
 * A secure round's progress. The phase moves advertise → share → mask → unmask → finish (or aborted); each `uX`
 * survivor set is frozen when its step closes. The Function keeps every device message as a blob (so a restarted
 * instance rebuilds the SecAggServer by replaying them with the persisted graph seed); the simulator keeps its
 * server in memory.
 */
export interface SecAggRoundState {
  readonly phase: SecAggPhase;
  /** base64url, 32 random bytes chosen when the round opened. */
  readonly graphSeed: string;
  /** Deadline of the current step, ms since epoch (advertise: the round's training deadline). */
  readonly stepDeadline: number;
  /** Fixed when the advertisements close (they depend on the participants). */
  readonly params: SecAggParams | null;
  /** The devices the SecAggServer was created with, fixed with `params`. */
  readonly roster: readonly string[] | null;
  /** Step 1: advertisements received. */
  readonly advertised: Readonly<Record<string, SecAggReceipt>>;
  /** Step 2: key-share answers received. */
  readonly shared: Readonly<Record<string, SecAggReceipt>>;
  /** Step 3: masked inputs received. */
  readonly masked: Readonly<Record<string, SecAggReceipt>>;
  /** Step 4: unmask answers received. */
  readonly unmasked: Readonly<Record<string, SecAggReceipt>>;
  /** Step 3: devices that accepted the mask request (their masked input is on its way). */
  readonly acked: Readonly<Record<string, true>>;
  /** Devices whose answer to the current step was a refusal (final: not asked again). */
  readonly refused: Readonly<Record<string, { readonly code: string; readonly message: string }>>;
  /** Survivor sets, fixed as each step closes. */
  readonly u1: readonly string[] | null;
  readonly u2: readonly string[] | null;
  readonly u3: readonly string[] | null;
  readonly u4: readonly string[] | null;
  /** Request bytes sent to each device. */
  readonly down: Readonly<Record<string, number>>;
  /** Why each lost device was lost (first reason). */
  readonly lost: Readonly<Record<string, LostDevice>>;
  readonly error?: { readonly code: string; readonly message: string };
}

export interface SecAggReceipt {
  readonly bytes: number;
  readonly at: number;
  /** Frames: the update id (duplicates are recognised by it). */
  readonly updateId?: string;
  /** Masked inputs: the device's reported training summary. */
  readonly numSamples?: number;
  readonly loss?: number;
  readonly accuracy?: number;
  readonly trainMs?: number;
}

/** The steps whose requests go to devices after the advertisements. */
export type SecAggRequestStep = "share" | "mask" | "unmask";

/** The job's rules the engine applies (not part of the state: they come from the job definition). */
export interface RoundPolicy {
  /** Secure rounds: each step after the advertisements lasts `stepMs`; a step leaving < minSurvivors aborts. */
  readonly secagg?: { readonly stepMs: number; readonly minSurvivors: number };
  /** Distributed differential privacy's n' (0 or unset otherwise): a secure step leaving fewer aborts. */
  readonly dpMinSurvivors?: number;
}

export type RoundEvent =
  /** Time passed (the timer trigger, a round timer, or any event's own clock). */
  | { readonly type: "tick"; readonly now: number }
  /** Every participant was sent its round order. */
  | { readonly type: "dispatched" }
  /** A participant's update or failure frame arrived (the first one counts). */
  | { readonly type: "updateReceived"; readonly deviceId: string; readonly update: ReceivedUpdate }
  /** A secure round: a device's advertisement (step 1) or masked input (step 3) arrived. */
  | {
      readonly type: "secaggFrame";
      readonly step: "advertise" | "mask";
      readonly deviceId: string;
      readonly receipt: SecAggReceipt;
    }
  /** A secure round: what the devices answered the current step's requests. */
  | {
      readonly type: "stepAnswers";
      readonly step: SecAggRequestStep;
      readonly answered?: Readonly<Record<string, SecAggReceipt>>;
      readonly acked?: Readonly<Record<string, true>>;
      readonly refused?: Readonly<Record<string, { readonly code: string; readonly message: string }>>;
      readonly down?: Readonly<Record<string, number>>;
    }
  /**
   * A secure round: the driver closed `step` with the SecAggServer; `survivors` are the devices left in the
   * protocol (those the server asks for the next step), `lost` why the others were lost.
   */
  | {
      readonly type: "stepFinished";
      readonly step: SecAggStep;
      readonly survivors: readonly string[];
      readonly lost?: Readonly<Record<string, LostDevice>>;
      readonly now: number;
      /** advertise: the round's parameters and the server's roster. */
      readonly params?: SecAggParams;
      readonly roster?: readonly string[];
    }
  /** A secure round: the survivors of the closed `step` shrank (the server refused a stored message). */
  | { readonly type: "survivorsRevised"; readonly step: SecAggStep; readonly survivors: readonly string[] }
  /** A secure round cannot go on (the SecAggServer aborted, or a stored message is missing). */
  | {
      readonly type: "aborted";
      readonly code: string;
      readonly message: string;
      /** Why devices were lost at the step that aborted (kept beside the earlier steps' reasons). */
      readonly lost?: Readonly<Record<string, LostDevice>>;
    }
  /** The job was stopped. */
  | { readonly type: "paused"; readonly now: number }
  /** Every participant of a paused round was told to abort it. */
  | { readonly type: "devicesReleased" }
  /** The job runs again. */
  | { readonly type: "resumed"; readonly now: number }
  /** The driver aggregated, published and recorded the round. */
  | { readonly type: "closed" };

export type RoundDecision =
  /** Send these participants their round order. */
  | { readonly type: "sendOrders"; readonly devices: readonly string[] }
  /** Ask these devices for their answer to a secure-aggregation step. */
  | { readonly type: "secaggRequest"; readonly step: SecAggRequestStep; readonly devices: readonly string[] }
  /** Close this secure-aggregation step with the SecAggServer, then report `stepFinished`. */
  | { readonly type: "closeStep"; readonly step: SecAggStep }
  /** Aggregate (core/round/close.ts), publish the model, record the round; then report `closed`. */
  | { readonly type: "aggregate" }
  /** Tell the participants of a paused round to abort it; then report `devicesReleased`. */
  | { readonly type: "releaseDevices"; readonly devices: readonly string[] };

export interface StepResult {
  readonly state: RoundState;
  readonly decisions: readonly RoundDecision[];
}

/** What a new round needs. */
export interface OpenRound {
  readonly jobId: string;
  readonly round: number;
  readonly participants: readonly Participant[];
  readonly now: number;
  /** The round's training deadline, ms since epoch. */
  readonly deadline: number;
  readonly modelSha256: string;
  /** Secure rounds: the masking graph's seed (base64url of 32 random bytes). */
  readonly secagg?: { readonly graphSeed: string };
  readonly dp?: { readonly clip: number; readonly order?: DpOrder };
  readonly selection?: RoundSelection;
}

/** A new round's state: open, not dispatched yet. */
export function openRound(o: OpenRound): RoundState {
  return {
    jobId: o.jobId,
    round: o.round,
    status: "open",
    participants: o.participants,
    received: {},
    openedAt: o.now,
    deadline: o.deadline,
    modelSha256: o.modelSha256,
    dispatched: false,
    ...(o.secagg ? { secagg: initialSecAgg(o.secagg.graphSeed, o.deadline) } : {}),
    ...(o.dp ? { dp: o.dp } : {}),
    ...(o.selection ? { selection: o.selection } : {}),
  };
}

/** A secure round's state when it opens: advertisements are due by the training deadline. */
export function initialSecAgg(graphSeed: string, trainingDeadline: number): SecAggRoundState {
  return {
    phase: "advertise",
    graphSeed,
    stepDeadline: trainingDeadline,
    params: null,
    roster: null,
    advertised: {},
    shared: {},
    masked: {},
    unmasked: {},
    acked: {},
    refused: {},
    u1: null,
    u2: null,
    u3: null,
    u4: null,
    down: {},
    lost: {},
  };
}

const ids = (st: RoundState): string[] => st.participants.map((p) => p.deviceId);
const same = (state: RoundState): StepResult => ({ state, decisions: [] });
const AGGREGATE: RoundDecision = { type: "aggregate" };

/** The engine: one event in, the new state and the decisions out. Pure; `policy` comes from the job. */
export function step(st: RoundState, ev: RoundEvent, policy: RoundPolicy = {}): StepResult {
  switch (ev.type) {
    case "tick":
      return tick(st, ev.now);
    case "dispatched":
      return st.dispatched ? same(st) : { state: { ...st, dispatched: true }, decisions: [] };
    case "updateReceived": {
      if (st.status !== "open" || st.received[ev.deviceId] || !isParticipant(st, ev.deviceId))
        return same(st);
      const next = { ...st, received: { ...st.received, [ev.deviceId]: ev.update } };
      return { state: next, decisions: [] };
    }
    case "secaggFrame": {
      const sa = st.secagg;
      if (st.status !== "open" || !sa || sa.phase !== ev.step || !isParticipant(st, ev.deviceId))
        return same(st);
      const key = ev.step === "advertise" ? "advertised" : "masked";
      if (sa[key][ev.deviceId]) return same(st);
      // an advertisement after the device's failure frame, or a masked input from outside U2, is late
      if (ev.step === "advertise" && st.received[ev.deviceId]) return same(st);
      if (ev.step === "mask" && !(sa.u2 ?? []).includes(ev.deviceId)) return same(st);
      return withSecAgg(st, { ...sa, [key]: { ...sa[key], [ev.deviceId]: ev.receipt } });
    }
    case "stepAnswers": {
      const sa = st.secagg;
      if (st.status !== "open" || !sa || sa.phase !== ev.step) return same(st);
      const down = { ...sa.down };
      for (const [id, n] of Object.entries(ev.down ?? {})) down[id] = (down[id] ?? 0) + n;
      const got = ev.step === "share" ? "shared" : ev.step === "unmask" ? "unmasked" : undefined;
      return withSecAgg(st, {
        ...sa,
        ...(got ? { [got]: { ...ev.answered, ...sa[got] } } : {}),
        acked: { ...sa.acked, ...ev.acked },
        refused: { ...ev.refused, ...sa.refused },
        down,
      });
    }
    case "stepFinished":
      return stepFinished(st, ev, policy);
    case "survivorsRevised": {
      const sa = st.secagg;
      const key = survivorKey(ev.step);
      if (
        st.status !== "open" ||
        !sa ||
        sa.phase !== nextPhase(ev.step) ||
        sameSet(sa[key] ?? [], ev.survivors)
      )
        return same(st);
      const short = shortfall(policy, ev.step, ev.survivors.length);
      if (short) return abort(st, short.code, short.message);
      return withSecAgg(st, { ...sa, [key]: [...ev.survivors].sort() });
    }
    case "aborted": {
      const sa = st.secagg;
      if (!ev.lost || !sa) return abort(st, ev.code, ev.message);
      return abort({ ...st, secagg: { ...sa, lost: { ...ev.lost, ...sa.lost } } }, ev.code, ev.message);
    }
    case "paused": {
      if (st.status !== "open" || st.paused) return same(st);
      return {
        state: { ...st, paused: { at: ev.now, devicesReleased: false } },
        decisions: [{ type: "releaseDevices", devices: ids(st) }],
      };
    }
    case "devicesReleased": {
      if (!st.paused || st.paused.devicesReleased) return same(st);
      return { state: { ...st, paused: { ...st.paused, devicesReleased: true } }, decisions: [] };
    }
    case "resumed": {
      if (!st.paused) return same(st);
      const shift = Math.max(0, ev.now - st.paused.at);
      const { paused, ...rest } = st;
      const next: RoundState = {
        ...rest,
        deadline: st.deadline + shift,
        dispatched: paused.devicesReleased ? false : st.dispatched,
        ...(st.secagg ? { secagg: { ...st.secagg, stepDeadline: st.secagg.stepDeadline + shift } } : {}),
      };
      return tick(next, ev.now);
    }
    case "closed":
      return st.status === "closed" ? same(st) : { state: { ...st, status: "closed" }, decisions: [] };
  }
}

/**
 * Time passed: orders not sent yet are due; a plain round closes when every participant answered or its deadline
 * passed; a secure round's current step asks the devices that still owe it an answer and closes when none does
 * or its deadline passed; a round ready to close asks for aggregation.
 */
function tick(st: RoundState, now: number): StepResult {
  if (st.status === "closing") return { state: st, decisions: [AGGREGATE] };
  if (st.status !== "open" || st.paused) return same(st);
  const decisions: RoundDecision[] = [];
  if (!st.dispatched) decisions.push({ type: "sendOrders", devices: ids(st) });
  const sa = st.secagg;
  if (!sa) {
    const answered = st.participants.filter((p) => st.received[p.deviceId] !== undefined).length;
    if (answered >= st.participants.length || now >= st.deadline) {
      return { state: { ...st, status: "closing" }, decisions: [...decisions, AGGREGATE] };
    }
    return { state: st, decisions };
  }
  switch (sa.phase) {
    case "finish":
    case "aborted":
      return { state: { ...st, status: "closing" }, decisions: [...decisions, AGGREGATE] };
    case "advertise":
      if (waiting(st).length === 0 || now >= sa.stepDeadline)
        decisions.push({ type: "closeStep", step: "advertise" });
      return { state: st, decisions };
    default: {
      const owe = waiting(st);
      const ask = owe.filter((d) => !sa.acked[d]);
      if (ask.length > 0) decisions.push({ type: "secaggRequest", step: sa.phase, devices: ask });
      if (owe.length === 0 || now >= sa.stepDeadline) decisions.push({ type: "closeStep", step: sa.phase });
      return { state: st, decisions };
    }
  }
}

/** Devices that still owe the current step an answer (and have not refused or failed). */
export function waiting(st: RoundState): string[] {
  const sa = st.secagg;
  if (!sa) return ids(st).filter((d) => !st.received[d]);
  switch (sa.phase) {
    case "advertise":
      return ids(st).filter((d) => !sa.advertised[d] && !st.received[d]);
    case "share":
      return (sa.u1 ?? []).filter((d) => !sa.shared[d] && !sa.refused[d]);
    case "mask":
      return (sa.u2 ?? []).filter((d) => !sa.masked[d] && !sa.refused[d]);
    case "unmask":
      return (sa.u3 ?? []).filter((d) => !sa.unmasked[d] && !sa.refused[d]);
    default:
      return [];
  }
}

const NOUN: Readonly<Record<SecAggStep, string>> = {
  advertise: "valid advertisement(s)",
  share: "device(s) shared keys",
  mask: "masked input(s)",
  unmask: "unmask answer(s)",
};

/**
 * The abort a step leaving `count` devices calls for, if any: fewer than the job's secure-aggregation
 * `minSurvivors` (E_SECAGG_ABORTED) or than distributed DP's n' (E_DP_TOO_FEW: the devices' noise shares would add
 * up to less than the accounted noise). Nothing is unmasked after either.
 */
export function shortfall(
  policy: RoundPolicy,
  step: SecAggStep,
  count: number,
  what = `${step}: ${count} ${NOUN[step]}`,
): { code: string; message: string } | undefined {
  const secMin = policy.secagg?.minSurvivors ?? 0;
  if (count < secMin)
    return { code: "E_SECAGG_ABORTED", message: `${what}, the job needs at least ${secMin}` };
  const dpMin = policy.dpMinSurvivors ?? 0;
  if (count < dpMin)
    return {
      code: "E_DP_TOO_FEW",
      message: `${what}, fewer than the ${dpMin} the distributed DP noise is calibrated for: nothing is unmasked`,
    };
  return undefined;
}

function survivorKey(s: SecAggStep): "u1" | "u2" | "u3" | "u4" {
  return s === "advertise" ? "u1" : s === "share" ? "u2" : s === "mask" ? "u3" : "u4";
}

function nextPhase(s: SecAggStep): SecAggPhase {
  return s === "advertise" ? "share" : s === "share" ? "mask" : s === "mask" ? "unmask" : "finish";
}

/** The lost reason of each device of `from` that did not answer `step` (refused, or silent until the deadline). */
export function silentLost(
  sa: SecAggRoundState,
  step: SecAggRequestStep,
  from: readonly string[],
  answered: Readonly<Record<string, unknown>>,
): Record<string, LostDevice> {
  const out: Record<string, LostDevice> = {};
  const what =
    step === "share"
      ? "no key shares before the step deadline"
      : step === "mask"
        ? "no masked input before the step deadline"
        : "no unmask answer before the step deadline";
  for (const id of from) {
    if (answered[id]) continue;
    const r = sa.refused[id];
    out[id] = r
      ? { step, code: r.code, reason: r.message }
      : { step, code: "E_SECAGG_TIMEOUT", reason: what };
  }
  return out;
}

function stepFinished(
  st: RoundState,
  ev: Extract<RoundEvent, { type: "stepFinished" }>,
  policy: RoundPolicy,
): StepResult {
  const sa = st.secagg;
  if (st.status !== "open" || !sa || sa.phase !== ev.step) return same(st);
  const survivors = [...ev.survivors].sort();
  const lost = { ...ev.lost, ...sa.lost };
  if (ev.step !== "unmask") {
    // The step closed with these survivors (the record's dropouts show them), too few to go on.
    const short = shortfall(policy, ev.step, survivors.length);
    if (short)
      return abort(
        { ...st, secagg: { ...sa, [survivorKey(ev.step)]: survivors, lost } },
        short.code,
        short.message,
      );
  }
  const base: SecAggRoundState = {
    ...sa,
    ...(ev.params ? { params: ev.params } : {}),
    ...(ev.roster ? { roster: [...ev.roster] } : {}),
    [survivorKey(ev.step)]: survivors,
    lost,
  };
  if (ev.step === "unmask") {
    return {
      state: { ...st, status: "closing", secagg: { ...base, phase: "finish" } },
      decisions: [AGGREGATE],
    };
  }
  const phase = nextPhase(ev.step) as SecAggRequestStep;
  const next: SecAggRoundState = {
    ...base,
    phase,
    acked: {},
    refused: {},
    stepDeadline: ev.now + (policy.secagg?.stepMs ?? 0),
  };
  return {
    state: { ...st, secagg: next },
    decisions: [{ type: "secaggRequest", step: phase, devices: survivors }],
  };
}

/**
 * Aborts a secure round: nothing more is unmasked. From `finish` too (unmasking itself failed: too few answers
 * for the server's threshold); never twice, and never a closed round.
 */
function abort(st: RoundState, code: string, message: string): StepResult {
  const sa = st.secagg;
  if (!sa || sa.phase === "aborted" || st.status === "closed") return same(st);
  return {
    state: {
      ...st,
      status: st.status === "open" ? "closing" : st.status,
      secagg: { ...sa, phase: "aborted", error: { code, message } },
    },
    decisions: [AGGREGATE],
  };
}

function withSecAgg(st: RoundState, secagg: SecAggRoundState): StepResult {
  return { state: { ...st, secagg }, decisions: [] };
}

function isParticipant(st: RoundState, id: string): boolean {
  return st.participants.some((p) => p.deviceId === id);
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}

/** Devices lost at each step of a secure round, from its survivor sets (a step not closed lost none yet). */
export function secAggDropouts(st: RoundState): Record<SecAggStep, string[]> {
  const sa = st.secagg;
  if (!sa) return { advertise: [], share: [], mask: [], unmask: [] };
  const all = ids(st);
  const u1 = sa.u1 ?? [];
  const u2 = sa.u2 ?? [];
  const u3 = sa.u3 ?? [];
  const u4 = sa.u4 ?? [];
  return {
    advertise: sa.u1 ? all.filter((d) => !u1.includes(d)) : [],
    share: sa.u2 ? u1.filter((d) => !u2.includes(d)) : [],
    mask: sa.u3 ? u2.filter((d) => !u3.includes(d)) : [],
    unmask: sa.u4 ? u3.filter((d) => !u4.includes(d)) : [],
  };
}

/** The failure of each participant of a secure round not in the sum (`included`), with the reason it was lost. */
export function secAggFailures(
  st: RoundState,
  included: readonly string[],
): { deviceId: string; code: string; reason: string }[] {
  const sa = st.secagg;
  const inSum = new Set(included);
  return ids(st)
    .filter((d) => !inSum.has(d))
    .map((d) => {
      const l = sa?.lost[d];
      if (l) return { deviceId: d, code: l.code, reason: `${l.step}: ${l.reason}` };
      if (sa?.error) return { deviceId: d, code: sa.error.code, reason: sa.error.message };
      return { deviceId: d, code: "E_SECAGG_EXCLUDED", reason: "not in the secure sum" };
    });
}
