/**
 * A round with secure aggregation (SecAgg+, Bell et al. CCS 2020; Bonawitz et al. CCS 2017), driven through the
 * same ServerTransport as a plain round: the devices train, keep their update, and the server runs the four steps
 * of core/secagg (advertise -> share -> mask -> unmask) with `secagg` frames. The server only ever holds the ring
 * sum of the masked updates; the strategy receives the unmasked weighted mean through `addAggregate`.
 *
 * This is the simulator's SecAgg+ adapter; the phases are the round engine's (core/round/engine.ts, the same
 * machine the Function drives): each step's deadline, the survivor sets U1..U4 and the aborts come from it. Each
 * step closes when every device still in the protocol answered or its deadline passed; a device that does not
 * answer a step is a dropout from then on. With too few survivors (the server's threshold, or distributed DP's n')
 * the round aborts (E_SECAGG_ABORTED, E_DP_TOO_FEW): nothing is unmasked and the global model stays as it was.
 */
import type { JsonWebKey } from "node:crypto";
import { Rng } from "../data/rng";
import { FlotillaError, errorCode, errorMessage, isFlotillaError } from "../errors";
import { decodeMessage, encodeMessage, type SecAggFrame } from "../protocol/messages";
import type { ServerTransport } from "../protocol/transport";
import { defaultParams, validateParams } from "../secagg/params";
import { SecAggServer } from "../secagg/server";
import {
  SECAGG_STEPS,
  type KeyAdvertisement,
  type SecAggParams,
  type SecAggStep,
  type ShareKeysResponse,
  type UnmaskResponse,
} from "../secagg/types";
import type { FitInstruction, UpdateReport } from "../strategies/strategy";
import type { RoundCloser } from "./close";
import {
  secAggFailures,
  step,
  type LostDevice,
  type RoundEvent,
  type RoundPolicy,
  type RoundState,
} from "./engine";

export interface SecureAggregationOptions {
  /** k, t and the clip range; unset members take core/secagg defaultParams(n) for the round's n participants. */
  readonly neighbours?: number;
  readonly threshold?: number;
  readonly clipRange?: number;
  /** The identity public key of a device (relayed from Key Vault or the key directory); undefined = unknown. */
  identityKey(deviceId: string): JsonWebKey | undefined;
  /** Deadline of each protocol step after the devices' training (advertise waits for the round timeout). */
  readonly stepTimeoutMs: number;
  /**
   * Simulation only: this fraction of each round's participants vanishes, each at a uniformly random step (its
   * answer to that step and everything after is lost, as if the device went offline; the server stops waiting for
   * it when the lost answer would have arrived). Seeded by (seed, round).
   */
  readonly simulateDropout?: { readonly fraction: number; readonly seed: number };
}

export interface SecureRoundRecord {
  /** The parameters the round used (k and t as configured, before capping to the survivors). */
  readonly params: SecAggParams;
  /** Devices lost at each step. */
  readonly dropouts: Record<SecAggStep, string[]>;
  /** Devices whose update is in the sum. */
  readonly included: string[];
  /** Server compute to unmask, ms (0 when aborted). */
  readonly unmaskMs: number;
  /** Frame bytes each participant sent (up) and received (down) this round, training request included. */
  readonly bytesPerDevice: Record<string, { up: number; down: number }>;
  /** Set when the round aborted: nothing was unmasked and the model was kept. */
  readonly aborted?: { code: string; reason: string };
  /** Devices the simulation made vanish, with the step (only with simulateDropout). */
  readonly simulatedDropouts?: Record<string, SecAggStep>;
}

export interface SecureRoundContext {
  readonly transport: ServerTransport;
  /** The round's engine state (core/round/engine.ts), with its `secagg` part: the phases are the engine's. */
  readonly state: RoundState;
  /** The round's close routine: the unmasked sum goes in as one aggregate, the lost devices as failures. */
  readonly closer: RoundCloser;
  readonly instructions: readonly FitInstruction[];
  readonly numValues: number;
  /** The engine's policy: distributed DP's n' (a step leaving fewer aborts the round with E_DP_TOO_FEW). */
  readonly policy: RoundPolicy;
  readonly roundTimeoutMs: number;
  readonly abortSignal?: AbortSignal;
  readonly onRejected?: (code: string, reason: string) => void;
  readonly onDeviceDone?: (deviceId: string, ok: boolean) => void;
  /** Builds the train frame for one participant (the plain round's frame with `secagg: true`). */
  trainFrame(ins: FitInstruction): Uint8Array;
}

export interface SecureRoundOutcome {
  readonly record: SecureRoundRecord;
  /** The engine state the round ended in (phase finish or aborted). */
  readonly state: RoundState;
}

/** The parameters for a round of n participants: defaults for n, overridden by what the job set. */
export function secAggParamsFor(
  n: number,
  o: Pick<SecureAggregationOptions, "neighbours" | "threshold" | "clipRange">,
): SecAggParams {
  const d = defaultParams(n);
  const neighbours = o.neighbours ?? d.neighbours;
  const params: SecAggParams = {
    ...d,
    neighbours,
    // A configured k without t gets the majority threshold for that k.
    threshold:
      o.threshold ??
      (o.neighbours !== undefined ? Math.floor(Math.min(neighbours, n - 1) / 2) + 1 : d.threshold),
    clipRange: o.clipRange ?? d.clipRange,
  };
  validateParams(params, n);
  return params;
}

/** Which participants vanish this round, and at which step (exactly round(fraction * n) of them). */
export function dropoutPlan(
  participants: readonly string[],
  round: number,
  sim: { fraction: number; seed: number },
): Map<string, SecAggStep> {
  const rng = new Rng(((sim.seed >>> 0) ^ Math.imul(round, 0x9e3779b1)) >>> 0);
  const sorted = [...participants].sort();
  const count = Math.round(sim.fraction * sorted.length);
  const plan = new Map<string, SecAggStep>();
  for (const i of rng.sample(sorted.length, count))
    plan.set(sorted[i], SECAGG_STEPS[rng.int(SECAGG_STEPS.length)]);
  return plan;
}

/**
 * Drives the secure round's steps over the transport. The engine (core/round/engine.ts) fixes each survivor set,
 * each step's deadline and when the round aborts; the SecAggServer does the crypto.
 */
export async function runSecureRound(
  ctx: SecureRoundContext,
  opts: SecureAggregationOptions,
): Promise<SecureRoundOutcome> {
  const { transport } = ctx;
  let state = ctx.state;
  const { jobId, round } = state;
  const sa0 = state.secagg;
  if (!sa0)
    throw new FlotillaError("E_SECAGG_STATE", "a secure round's state has no secure-aggregation part");
  const participants = ctx.instructions.map((i) => i.deviceId);
  const params = secAggParamsFor(participants.length, opts);
  const bytes: Record<string, { up: number; down: number }> = {};
  for (const id of participants) bytes[id] = { up: 0, down: 0 };
  const dropouts: Record<SecAggStep, string[]> = { advertise: [], share: [], mask: [], unmask: [] };
  const plan = opts.simulateDropout
    ? dropoutPlan(participants, round, opts.simulateDropout)
    : new Map<string, SecAggStep>();
  const vanished = (id: string, step: SecAggStep) => {
    const at = plan.get(id);
    return at !== undefined && SECAGG_STEPS.indexOf(step) >= SECAGG_STEPS.indexOf(at);
  };
  const server = new SecAggServer({ jobId, round }, params, participants, {
    length: ctx.numValues,
    identityKey: (id) => opts.identityKey(id),
    graphSeed: new Uint8Array(Buffer.from(sa0.graphSeed, "base64url")),
  });
  /** Each masked input's report (sample count, loss, accuracy), in arrival order; the included ones go with the sum. */
  const reports = new Map<string, UpdateReport>();
  let slowestTrainMs = 0;
  /** Why each device left the protocol at the current step (the engine keeps the first reason). */
  let lost: Record<string, LostDevice> = {};
  const fail = (deviceId: string, step: SecAggStep, code: string, reason: string) => {
    lost[deviceId] ??= { step, code, reason };
  };
  const apply = (event: RoundEvent): void => {
    state = step(state, event, ctx.policy).state;
  };
  const phase = () => state.secagg?.phase;

  /**
   * Sends each device its frame for `step` and collects the answers until every one arrived, the step's deadline
   * (the engine's) passed or the job was aborted. Answers go to `onAnswer`; a device that throws there, sends a
   * failure frame, or does not answer is a dropout at this step.
   */
  const exchange = async (
    step: SecAggStep,
    frames: Map<string, Uint8Array>,
    onAnswer: (deviceId: string, frame: SecAggFrame) => void,
  ): Promise<void> => {
    const timeoutMs = Math.max(0, (state.secagg?.stepDeadline ?? 0) - Date.now());
    lost = {};
    const pending = new Set(frames.keys());
    const answered = new Set<string>();
    let timer: NodeJS.Timeout | undefined;
    let off: () => void = () => {};
    let check: () => void = () => {};
    const onAbort = () => check();
    const done = new Promise<void>((resolve) => {
      check = () => {
        if (pending.size === 0 || ctx.abortSignal?.aborted) resolve();
      };
      timer = setTimeout(resolve, timeoutMs);
      ctx.abortSignal?.addEventListener("abort", onAbort, { once: true });
      off = transport.onMessage((raw) => {
        let msg;
        try {
          msg = decodeMessage(raw);
        } catch (e) {
          ctx.onRejected?.(errorCode(e), errorMessage(e));
          return;
        }
        if (msg.type === "train" || (msg.type === "secagg" && msg.direction === "down")) {
          ctx.onRejected?.("E_PROTO_TYPE", `device sent a server message ('${msg.type}')`);
          return;
        }
        const id = msg.deviceId;
        if (msg.jobId !== jobId || msg.round !== round || !pending.has(id)) {
          ctx.onRejected?.(
            "E_PROTO_STALE",
            `secure-aggregation frame from '${id}' for ${msg.jobId}/${msg.round} is not expected`,
          );
          return;
        }
        if (bytes[id]) bytes[id].up += raw.byteLength;
        pending.delete(id);
        if (vanished(id, step)) {
          // Simulated: the answer is lost with the device. The server stops waiting for it at once, as it would
          // on the hub's disconnect notice, so simulated dropouts don't stall a round until its deadline.
          fail(id, step, "E_SECAGG_DROPOUT", "the device vanished (simulated dropout)");
          check();
          return;
        }
        if (msg.type === "failure") {
          fail(id, step, msg.code, msg.reason);
        } else if (msg.type !== "secagg" || msg.step !== step) {
          fail(id, step, "E_PROTO_TYPE", `expected a secure-aggregation '${step}' answer, got '${msg.type}'`);
        } else {
          try {
            onAnswer(id, msg);
            answered.add(id);
          } catch (e) {
            fail(id, step, errorCode(e), errorMessage(e));
            ctx.onRejected?.(errorCode(e), errorMessage(e));
          }
        }
        check();
      });
    });
    // The handler is registered before the first frame goes out, so a fast device cannot answer unheard.
    for (const [id, frame] of frames) {
      if (!pending.has(id)) continue;
      if (bytes[id]) bytes[id].down += frame.byteLength;
      try {
        await transport.send(id, frame);
      } catch (e) {
        pending.delete(id);
        fail(id, step, errorCode(e), errorMessage(e));
      }
    }
    check();
    await done;
    clearTimeout(timer);
    off();
    ctx.abortSignal?.removeEventListener("abort", onAbort);
    for (const id of frames.keys()) {
      if (answered.has(id)) continue;
      dropouts[step].push(id);
      fail(
        id,
        step,
        "E_SECAGG_DROPOUT",
        `no answer to secure-aggregation step '${step}' before its deadline`,
      );
    }
  };
  const down = (deviceId: string, step: SecAggStep, body: unknown): Uint8Array =>
    encodeMessage({ type: "secagg", step, direction: "down", jobId, round, deviceId, body });
  const mapFrames = (reqs: Map<string, unknown>, step: SecAggStep) =>
    new Map([...reqs].map(([id, body]) => [id, down(id, step, body)]));
  /** Reports the closed step's survivors to the engine; false when it aborted the round. */
  const finished = (
    s: SecAggStep,
    survivors: Iterable<string>,
    extra: { params?: SecAggParams } = {},
  ): boolean => {
    apply({
      type: "stepFinished",
      step: s,
      survivors: [...survivors],
      lost,
      now: Date.now(),
      ...(extra.params ? { params: extra.params, roster: participants } : {}),
    });
    if (phase() !== "aborted") return true;
    server.abort(state.secagg?.error?.message ?? "aborted");
    return false;
  };

  const run = async (): Promise<SecAggResultLike | undefined> => {
    try {
      // Step 1: train, then advertise keys (due by the round's training deadline).
      const trainFrames = new Map(ctx.instructions.map((ins) => [ins.deviceId, ctx.trainFrame(ins)]));
      await exchange("advertise", trainFrames, (_id, f) =>
        server.addAdvertisement(f.body as KeyAdvertisement),
      );
      // Step 2: relay neighbours' keys; collect encrypted shares.
      const shareReqs = server.closeAdvertise();
      if (!finished("advertise", shareReqs.keys(), { params })) return undefined;
      await exchange("share", mapFrames(shareReqs, "share"), (_id, f) =>
        server.addShares(f.body as ShareKeysResponse),
      );
      // Step 3: deliver shares; collect masked inputs (streamed into the ring sum at once).
      const maskReqs = server.closeShares();
      if (!finished("share", maskReqs.keys())) return undefined;
      await exchange("mask", mapFrames(maskReqs, "mask"), (id, f) => {
        if (!f.masked) throw new FlotillaError("E_SECAGG_INPUT", `masked input from '${id}' has no vector`);
        server.addMaskedInput({ jobId, round, deviceId: id, masked: f.masked });
        const m = f.metrics;
        reports.set(id, { numSamples: f.numSamples ?? 0, loss: m?.loss, accuracy: m?.accuracy });
        if (m && Number.isFinite(m.trainMs)) slowestTrainMs = Math.max(slowestTrainMs, m.trainMs);
      });
      // The engine checks the masked inputs against distributed DP's n' before the server prepares unmasking.
      if (!finished("mask", reports.keys())) return undefined;
      // Step 4: ask survivors for the shares that remove the masks.
      const unmaskReqs = server.closeMasked();
      apply({ type: "survivorsRevised", step: "mask", survivors: [...unmaskReqs.keys()] });
      if (phase() === "aborted") return undefined;
      await exchange("unmask", mapFrames(unmaskReqs, "unmask"), (_id, f) =>
        server.addUnmaskResponse(f.body as UnmaskResponse),
      );
      const result = server.finish();
      finished("unmask", result.included);
      return result;
    } catch (e) {
      if (isFlotillaError(e) && e.code.startsWith("E_SECAGG_")) {
        // The server aborted (too few survivors for its threshold): the step's losses go with the abort.
        apply({ type: "aborted", code: e.code, message: e.message, lost });
        return undefined;
      }
      throw e;
    }
  };

  const result = await run();
  let record: SecureRoundRecord;
  const included = result ? [...result.included] : [];
  if (!result) {
    const error = state.secagg?.error ?? { code: "E_SECAGG_ABORTED", message: "aborted" };
    record = {
      params,
      dropouts,
      included: [],
      unmaskMs: 0,
      bytesPerDevice: bytes,
      aborted: { code: error.code, reason: error.message },
    };
  } else {
    const inSum = new Set(included);
    ctx.closer.secure({
      included,
      totalWeight: result.totalWeight,
      mean: result.mean,
      reports: [...reports].filter(([id]) => inSum.has(id)).map(([, r]) => r),
      slowestTrainMs,
    });
    record = { params, dropouts, included, unmaskMs: result.unmaskMs, bytesPerDevice: bytes };
  }
  // Every participant not in the sum fails with the reason the engine recorded (core/round/engine.ts).
  for (const f of secAggFailures(state, included)) ctx.closer.fail(f.deviceId, f.code, f.reason);
  for (const id of participants) ctx.onDeviceDone?.(id, included.includes(id));
  if (plan.size > 0) record = { ...record, simulatedDropouts: Object.fromEntries(plan) };
  return { record, state };
}

interface SecAggResultLike {
  readonly mean: Float32Array;
  readonly totalWeight: number;
  readonly included: readonly string[];
  readonly unmaskMs: number;
}
