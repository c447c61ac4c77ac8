import { createHash, randomBytes } from "node:crypto";
import { encodeTensor, type CompressionSpec } from "../compress";
import { errorCode, errorMessage } from "../errors";
import type { EncodedTensor } from "../compress/api";
import type { DeviceMessage, SecAggFrame } from "../protocol/messages";
import { decodeDeviceFrame, trainFrame as buildTrainFrame } from "./frames";
import type { ServerTransport } from "../protocol/transport";
import type { DifferentialPrivacy, DpRoundRecord } from "../privacy/dp";
import { runSecureRound, type SecureAggregationOptions, type SecureRoundRecord } from "./secure-round";
import type { FitFailure, Strategy } from "../strategies/strategy";
import { RoundCloser } from "./close";
import { RealClock, type RoundClock } from "./clock";
import type { ClientInfo } from "../strategies/strategy";
import { openRound, step, type RoundEvent } from "./engine";
import { weightsHash, type WeightLayout } from "../tensor/layout";
import { nonFiniteModelReason } from "../tensor/finite";
import type { RobustReport } from "../robust/aggregation";
import { deviceNormBound, type AggregatorSpec } from "../robust/spec";
import type { DeviceObservation } from "../robust/quality";
import { beginRoundAggregation, type RoundInterceptor } from "./aggregation";

/**
 * What every new global model's record holds, whether a synchronous round (RoundRecord) or an asynchronous flush
 * (core/round/async-server.ts AsyncRecord) produced it.
 */
export interface ModelRecord {
  /** The round, or the async version, that produced the model. */
  readonly round: number;
  readonly failures: FitFailure[];
  /** Test metrics of the new global model (server-side evaluation), NaN when there is no evaluator. */
  readonly accuracy: number;
  readonly loss: number;
  /** Sample-weighted mean of the aggregated updates' training loss (NaN when none reported one). */
  readonly trainLoss: number;
  /** The same for their training accuracy. */
  readonly trainAccuracy: number;
  /** Bytes on the wire for this model (since the previous one). */
  readonly uplinkBytes: number;
  readonly downlinkBytes: number;
  /** When it started collecting and when it was made, ms in the clock's time base (epoch ms, or trace ms). */
  readonly startedAt: number;
  readonly endedAt: number;
  /** Differential privacy: clip norm, noise, whether anything was released, and ε spent so far. */
  readonly dp?: DpRoundRecord;
  /** Robust aggregation: the rule, the bound, who was kept and dropped and why, per-device norm and cosine. */
  readonly robust?: RobustReport;
  /** Contribution quality (JobOptions.observe): each update's norm, loss and cosine to the round's mean. */
  readonly observed?: readonly DeviceObservation[];
}

export interface RoundRecord extends ModelRecord {
  /** Devices asked to train this round. */
  readonly participants: string[];
  /** Devices whose update was aggregated. */
  readonly completed: string[];
  readonly durationMs: number;
  /** Longest local training time among completed participants. */
  readonly slowestTrainMs: number;
  /** Secure aggregation: dropouts per step, who is in the sum, unmasking time, bytes per device, abort reason. */
  readonly secagg?: SecureRoundRecord;
}

export interface ServerEvents {
  /** A round starts: its participants are known. */
  onRoundStart?(round: number, participants: readonly string[]): void;
  /** One device's update arrived (or failed) during a round. */
  onDeviceDone?(round: number, deviceId: string, ok: boolean): void;
  onRoundEnd?(record: RoundRecord): void;
  /**
   * An update of this job for an earlier, closed round arrived (e.g. trained offline and delivered on reconnect).
   * Synchronous rounds count it for `round` (the round it was ordered for) and do not aggregate it; it is also
   * reported to onRejected as E_PROTO_STALE.
   */
  onLate?(round: number, deviceId: string): void;
  /** A frame that was rejected (malformed, late, duplicate, wrong layout): logged and counted, never fatal. */
  onRejected?(code: string, reason: string): void;
  /**
   * The global model is not finite (NaN or ±Infinity) after `round` (0: the initial model); the job stops here.
   * `reason` is one line naming the round (core/tensor/finite.ts, nonFiniteModelReason).
   */
  onDiverged?(round: number, reason: string): void;
}

export interface JobOptions {
  readonly jobId: string;
  readonly rounds: number;
  readonly layout: WeightLayout;
  /** A round closes when every participant answered or after this long. */
  readonly roundTimeoutInMs: number;
  /** Server-side evaluation of a global model (e.g. on a held-out test set). */
  readonly evaluate?: (weights: Float32Array) => Promise<{ loss: number; accuracy: number }>;
  readonly events?: ServerEvents;
  readonly abortSignal?: AbortSignal;
  /** Codec chain devices apply to their updates (error feedback on the device when it sparsifies). */
  readonly uplink?: CompressionSpec;
  /** Codec of the global model sent to devices (value codecs only: fp16, intN, qsgd). */
  readonly downlink?: CompressionSpec;
  /** Secure aggregation (SecAgg+): the server learns only the sum of each round's updates. */
  readonly secureAggregation?: SecureAggregationOptions;
  /**
   * Differential privacy (DP-FedAvg): clipping, noise, accounting and the job's budget. The job stops before a
   * round that would exceed the budget; `dp.status` then says so.
   */
  readonly dp?: DifferentialPrivacy;
  /** Robust aggregation (core/robust/spec.ts); unset: the strategy's own weighted mean. */
  readonly aggregator?: AggregatorSpec;
  /** FLTrust: the server's update on its root dataset from the round's global model. */
  readonly rootUpdate?: (global: Float32Array, round: number) => Promise<Float32Array>;
  /** Simulator only: an interceptor outermost in each round's aggregation chain (attacks). */
  readonly interceptor?: RoundInterceptor;
  /** Contribution quality: observe each update (norm, loss, cosine to the round's mean) into `observed`. */
  readonly observe?: boolean;
  /**
   * The time and arrivals the rounds run on (core/round/clock.ts): every time read and wait of a plain round goes
   * through it. Default: a RealClock over the transport, one per round (secure rounds always run on real time).
   */
  readonly clock?: RoundClock;
  /**
   * Participant selection: the devices offered to the strategy's configureFit this round (default: every device
   * the transport lists). `now` is the clock's time.
   */
  readonly selectParticipants?: (
    round: number,
    available: readonly ClientInfo[],
    now: number,
  ) => readonly ClientInfo[] | Promise<readonly ClientInfo[]>;
}

/**
 * Drives a federated job in-process: each round the strategy picks participants, this driver sends them the global
 * model through the transport, streams their updates into the close routine (core/round/close.ts) as they arrive,
 * and the round engine (core/round/engine.ts) closes the round when all have answered or the deadline passes
 * (partial participation is part of the contract).
 * The job stops as soon as the global model is not finite (before round 1, or after any round): `onDiverged` says
 * which round and why. Every later round would train from that model, so none can help.
 */
export async function runJob(
  strategy: Strategy,
  transport: ServerTransport,
  opts: JobOptions,
): Promise<RoundRecord[]> {
  const records: RoundRecord[] = [];
  const diverged = (round: number): boolean => {
    const reason = nonFiniteModelReason(strategy.weights, round, opts.layout);
    if (reason !== undefined) opts.events?.onDiverged?.(round, reason);
    return reason !== undefined;
  };
  if (diverged(0)) return records;
  const carry: RoundCarry = {};
  for (let round = 1; round <= opts.rounds; round++) {
    if (opts.abortSignal?.aborted) break;
    if (opts.dp && !opts.dp.allowsNextRound()) break;
    const record = await runRound(strategy, transport, round, opts, carry);
    records.push(record);
    opts.events?.onRoundEnd?.(record);
    if (diverged(round)) break;
  }
  return records;
}

/**
 * One round, driven in-process: the engine (core/round/engine.ts) holds the round's state and says when it closes;
 * this driver moves its frames over the transport, streams each update into the close routine
 * (core/round/close.ts) as it arrives, and builds the round's record.
 */
export async function runRound(
  strategy: Strategy,
  transport: ServerTransport,
  round: number,
  opts: JobOptions,
  carry: RoundCarry = {},
): Promise<RoundRecord> {
  const t0 = performance.now();
  const up0 = transport.stats.uplinkBytes;
  const down0 = transport.stats.downlinkBytes;
  // Secure rounds keep real time (core/round/secure-round.ts waits on the transport itself).
  const ownClock = opts.clock === undefined && !opts.secureAggregation;
  const clock: RoundClock | undefined = opts.clock ?? (ownClock ? new RealClock(transport) : undefined);
  const now = () => clock?.now() ?? Date.now();
  const startedAt = now();
  const listed = await transport.listDevices();
  const available = opts.selectParticipants
    ? await opts.selectParticipants(round, listed, startedAt)
    : listed;
  const instructions = strategy.configureFit(round, available);
  const participants = instructions.map((i) => i.deviceId);
  opts.events?.onRoundStart?.(round, participants);

  const global = strategy.weights;
  const { weights: carried, modelHash } = downlinkModel(global, round, opts);
  const deadline = startedAt + opts.roundTimeoutInMs;
  const aggregation = beginRoundAggregation(strategy, round, {
    layoutHash: opts.layout.hash,
    ...(opts.dp ? { dp: opts.dp } : {}),
    ...(opts.aggregator ? { aggregator: opts.aggregator } : {}),
    ...(opts.aggregator?.rule === "fltrust" && opts.rootUpdate
      ? { rootDelta: await opts.rootUpdate(global, round) }
      : {}),
    ...(carry.previousStep ? { reference: carry.previousStep } : {}),
    ...(opts.interceptor ? { interceptor: opts.interceptor } : {}),
    // Secure rounds order each device to apply a `norm:C+mean` bound itself (trainFrame below).
    ...(opts.secureAggregation && deviceNormBound(opts.aggregator) !== undefined
      ? { boundOnDevices: true }
      : {}),
    ...(opts.observe ? { observe: true } : {}),
  });
  const closer = new RoundCloser({ round, aggregation, layoutHash: opts.layout.hash });
  const dpOrder = opts.dp?.deviceOrder(opts.secureAggregation !== undefined);
  let state = openRound({
    jobId: opts.jobId,
    round,
    participants: instructions.map((i) => ({ deviceId: i.deviceId, config: i.config })),
    now: startedAt,
    deadline,
    modelSha256: modelHash,
    ...(opts.secureAggregation ? { secagg: { graphSeed: randomBytes(32).toString("base64url") } } : {}),
    ...(opts.dp ? { dp: { clip: opts.dp.clip, ...(dpOrder ? { order: dpOrder } : {}) } } : {}),
  });
  const trainFrame = (ins: (typeof instructions)[number], secagg?: true) =>
    buildTrainFrame({
      jobId: opts.jobId,
      round,
      modelHash,
      layoutHash: opts.layout.hash,
      config: ins.config,
      deadline,
      weights: carried,
      uplink: opts.uplink,
      secagg,
      dp: dpOrder,
      // Secure aggregation shows the server only the sum: a `norm:C+mean` bound is applied by each device.
      ...(secagg ? { normBound: deviceNormBound(opts.aggregator) } : {}),
    });

  if (opts.secureAggregation) {
    const out = await runSecureRound(
      {
        transport,
        state,
        closer,
        instructions,
        numValues: global.length + (opts.dp?.extraSecureValues() ?? 0),
        policy: {
          secagg: { stepMs: opts.secureAggregation.stepTimeoutMs, minSurvivors: 0 },
          dpMinSurvivors: opts.dp?.minSurvivors,
        },
        roundTimeoutMs: opts.roundTimeoutInMs,
        abortSignal: opts.abortSignal,
        onRejected: opts.events?.onRejected,
        onDeviceDone: (id, ok) => opts.events?.onDeviceDone?.(round, id, ok),
        trainFrame: (ins) => trainFrame(ins, true),
      },
      opts.secureAggregation,
    );
    return closeRound(strategy, transport, closer, opts, carry, {
      participants,
      t0,
      up0,
      down0,
      startedAt,
      endedAt: Date.now(),
      secagg: out.record,
    });
  }

  const advance = (event: RoundEvent): boolean => {
    const r = step(state, event);
    state = r.state;
    return r.decisions.some((d) => d.type === "aggregate");
  };
  /** One device frame at `at`: fed to the engine and the close routine; true when the round is ready to close. */
  const receive = (frame: Uint8Array, at: number): boolean => {
    let msg: Exclude<DeviceMessage, SecAggFrame>;
    try {
      msg = decodeDeviceFrame(frame);
    } catch (e) {
      opts.events?.onRejected?.(errorCode(e), errorMessage(e));
      return false;
    }
    const expected =
      msg.jobId === opts.jobId &&
      msg.round === round &&
      state.status === "open" &&
      participants.includes(msg.deviceId) &&
      state.received[msg.deviceId] === undefined;
    if (!expected) {
      if (msg.jobId === opts.jobId && msg.round < round && msg.type === "result")
        opts.events?.onLate?.(msg.round, msg.deviceId);
      opts.events?.onRejected?.(
        "E_PROTO_STALE",
        `update from '${msg.deviceId}' for job ${msg.jobId} round ${msg.round} is not expected (late or duplicate)`,
      );
      return false;
    }
    const update = {
      updateId: `${msg.deviceId}/${round}`,
      kind: msg.type,
      bytes: frame.byteLength,
      at,
      ...(msg.type === "failure" ? { code: msg.code, reason: msg.reason } : { numSamples: msg.numSamples }),
    } as const;
    advance({ type: "updateReceived", deviceId: msg.deviceId, update });
    if (msg.type === "failure") {
      closer.fail(msg.deviceId, msg.code, msg.reason);
      opts.events?.onDeviceDone?.(round, msg.deviceId, false);
    } else {
      const refused = closer.update(msg);
      if (refused) opts.events?.onRejected?.(refused.code, refused.reason);
      opts.events?.onDeviceDone?.(round, msg.deviceId, refused === undefined);
    }
    return advance({ type: "tick", now: at });
  };

  let endedAt: number;
  try {
    for (const ins of instructions) {
      const frame = trainFrame(ins);
      try {
        await transport.send(ins.deviceId, frame);
      } catch (e) {
        closer.fail(ins.deviceId, errorCode(e), errorMessage(e));
        advance({
          type: "updateReceived",
          deviceId: ins.deviceId,
          update: { updateId: "", kind: "failure", bytes: 0, at: now(), code: errorCode(e) },
        });
      }
    }
    advance({ type: "dispatched" });
    // The engine closes the round when every participant answered or at its deadline; the clock hands out the
    // frames that arrive before the deadline, in order, and says when the deadline is reached.
    // On an injected clock (a virtual fleet) a round nobody could be asked to join waits out its deadline, so
    // time moves on (devices come online, late updates arrive) instead of the job spinning through empty rounds.
    const waitOut = instructions.length === 0 && opts.clock !== undefined;
    let closing = advance({ type: "tick", now: now() }) && !waitOut;
    while (!closing && !opts.abortSignal?.aborted) {
      const arrival = await clock!.next(state.deadline, opts.abortSignal);
      if (arrival) closing = receive(arrival.frame, arrival.at) && !waitOut;
      else if (!opts.abortSignal?.aborted) {
        closing = advance({ type: "tick", now: Math.max(now(), state.deadline) });
        if (!closing) break;
      }
    }
    endedAt = now();
  } finally {
    if (ownClock) clock!.close();
  }
  return closeRound(strategy, transport, closer, opts, carry, {
    participants,
    t0,
    up0,
    down0,
    startedAt,
    endedAt,
  });
}

/**
 * Closes the round (core/round/close.ts: the devices that sent nothing fail with E_ROUND_TIMEOUT, the aggregation
 * gives the next model and the training metrics), installs the model, evaluates it and builds the round's record.
 */
async function closeRound(
  strategy: Strategy,
  transport: ServerTransport,
  closer: RoundCloser,
  opts: JobOptions,
  carry: RoundCarry,
  r: {
    participants: string[];
    t0: number;
    up0: number;
    down0: number;
    startedAt: number;
    endedAt: number;
    secagg?: SecureRoundRecord;
  },
): Promise<RoundRecord> {
  const before = opts.aggregator?.rule === "centered-clip" ? strategy.weights.slice() : undefined;
  const out = closer.finish(r.participants);
  if (out.weights !== strategy.weights) strategy.weights.set(out.weights);
  // Centered clipping clips around the previous round's step (Karimireddy et al. 2021 use the momentum).
  if (before) carry.previousStep = Float32Array.from(strategy.weights, (w, i) => w - before[i]!);
  const dp = opts.dp?.lastRound;
  const metrics = opts.evaluate ? await opts.evaluate(strategy.weights) : { loss: NaN, accuracy: NaN };
  return {
    round: out.round,
    participants: r.participants,
    completed: [...out.completed],
    failures: [...out.failures],
    accuracy: metrics.accuracy,
    loss: metrics.loss,
    trainLoss: out.metrics.trainLoss,
    trainAccuracy: out.metrics.trainAccuracy,
    uplinkBytes: transport.stats.uplinkBytes - r.up0,
    downlinkBytes: transport.stats.downlinkBytes - r.down0,
    durationMs: performance.now() - r.t0,
    startedAt: r.startedAt,
    endedAt: r.endedAt,
    slowestTrainMs: out.slowestTrainMs,
    ...(r.secagg ? { secagg: r.secagg } : {}),
    ...(opts.dp && dp ? { dp } : {}),
    ...(out.robust ? { robust: out.robust } : {}),
    ...(out.observed ? { observed: out.observed } : {}),
  };
}

/** What one round of a job leaves for the next: the last global step (centered clipping's reference). */
export interface RoundCarry {
  previousStep?: Float32Array;
}

/** The global model as sent: raw float32, or one envelope per round shared by every participant. */
export function downlinkModel(
  global: Float32Array,
  round: number,
  opts: Pick<JobOptions, "downlink" | "layout">,
): { weights: Float32Array | EncodedTensor; modelHash: string } {
  const spec = opts.downlink;
  if (!spec || spec.lossless) return { weights: global, modelHash: weightsHash(global) };
  const bytes = encodeTensor(global, spec, {
    layoutHash: opts.layout.hash,
    segments: opts.layout.entries.map((e) => e.size),
    seed: round,
  });
  return {
    weights: { encoding: "flz", bytes },
    modelHash: createHash("sha256").update(bytes).digest("hex"),
  };
}
