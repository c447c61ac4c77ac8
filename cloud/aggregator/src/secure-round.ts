/**
 * Secure aggregation (SecAgg+) rounds over IoT Hub: the orchestrator's side of docs/iothub-protocol.md, "Secure
 * aggregation". The crypto is core/secagg's SecAggServer; this file moves its messages over the wire and keeps
 * every step resumable:
 *
 *   advertise  devices' key advertisements arrive as `secagg` frames (ingest.ts stores them); the step closes when
 *              every participant advertised (or failed) or at the round's training deadline
 *   share      ShareKeysRequest → trainer method `secaggShareKeys` → ShareKeysResponse (stored as a blob)
 *   mask       MaskInputRequest → trainer method `secaggMaskInput` → {accepted}; the masked input arrives as a
 *              `secagg` frame through the update path (ingest.ts stores it)
 *   unmask     UnmaskRequest → trainer method `secaggUnmask` → UnmaskResponse (stored as a blob)
 *   finish     the masked inputs are streamed one at a time into the server's ring sum, the masks removed, and the
 *              mean handed to the strategy with RoundAggregation.addAggregate
 *
 * The phases themselves are the round engine's (core/round/engine.ts, the same machine the simulator drives): it
 * says when a step is due to close (every survivor answered, or the step's `stepSeconds` deadline passed), fixes
 * each survivor set U1..U4, and aborts the round when a step leaves fewer than the job's `minSurvivors`
 * (E_SECAGG_ABORTED) or than distributed DP's n' (E_DP_TOO_FEW) before anything is unmasked. This file keeps only
 * the IoT Hub side: calling the trainers' methods (a device the hub cannot reach is asked again on the next tick
 * until the deadline; an error status is a refusal, final), storing their answers, and the SecAggServer, kept in
 * memory between ticks and, after a restart (or on another instance), rebuilt by replaying the stored messages in
 * order with the persisted graph seed, identity keys and parameters. Under DP every advertisement must carry weight 1 (equal weights), and with adaptive
 * clipping the masked vector has one value more than the model (the clip indicator).
 */
import { randomBytes } from "node:crypto";
import type { JsonWebKey } from "node:crypto";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import { decodeMessage } from "../../../core/protocol/messages";
import { secAggParamsFor } from "../../../core/round/secure-round";
import { SecAggServer } from "../../../core/secagg/server";
import type {
  KeyAdvertisement,
  SecAggParams,
  SecAggResult,
  SecAggStep,
  ShareKeysResponse,
  UnmaskRequest,
  UnmaskResponse,
} from "../../../core/secagg/types";
import type { SecAggOrder } from "../../../core/protocol/round-order";
import {
  initialSecAgg,
  secAggDropouts,
  secAggFailures,
  shortfall,
  silentLost,
  step,
  type LostDevice,
  type RoundEvent,
  type RoundPolicy,
} from "../../../core/round/engine";
import { boundSamples, E_ROUND_SAMPLES } from "../../../core/round/samples";
import {
  dpMinSurvivors,
  secureExtraValues,
  type JobDefinition,
  type SecureAggregationOptions,
} from "./jobs/job";
import {
  JobRepository,
  paths,
  type JobDocument,
  type RoundState,
  type SecAggReceipt,
  type SecAggRecord,
  type SecAggRoundState,
} from "./jobs/state";
import { getJson, isConflict, putJson } from "./store/blob-store";
import type { AggregatorServices } from "./services";

/** IoT Hub's direct-method payload limit. */
export const METHOD_PAYLOAD_LIMIT = 128 * 1024;

export const SECAGG_METHOD: Readonly<Record<"share" | "mask" | "unmask", string>> = {
  share: "secaggShareKeys",
  mask: "secaggMaskInput",
  unmask: "secaggUnmask",
};

type MethodStep = keyof typeof SECAGG_METHOD;
type Stage = "share" | "mask" | "unmask";
const STAGES: readonly Stage[] = ["share", "mask", "unmask"];

/** The persisted state of a secure round when it opens. */
export function initialSecAggState(trainingDeadline: number): SecAggRoundState {
  return initialSecAgg(randomBytes(32).toString("base64url"), trainingDeadline);
}

/** The engine's policy for a job's rounds (core/round/engine.ts RoundPolicy). */
export function roundPolicy(d: JobDefinition): RoundPolicy {
  return {
    ...(d.secureAggregation
      ? {
          secagg: {
            stepMs: d.secureAggregation.stepSeconds * 1000,
            minSurvivors: d.secureAggregation.minSurvivors,
          },
        }
      : {}),
    dpMinSurvivors: dpMinSurvivors(d),
  };
}

/** What a secure round's order carries (the RoundDesired `secagg` field). */
export function secAggOrder(o: SecureAggregationOptions): SecAggOrder {
  return {
    stepSeconds: o.stepSeconds,
    ...(o.neighbours !== undefined ? { neighbours: o.neighbours } : {}),
    ...(o.threshold !== undefined ? { threshold: o.threshold } : {}),
    ...(o.clipRange !== undefined ? { clipRange: o.clipRange } : {}),
  };
}

interface CachedServer {
  readonly jobId: string;
  readonly round: number;
  readonly graphSeed: string;
  stage: Stage;
  readonly server: SecAggServer;
  /** The requests of `stage` by device. */
  requests: ReadonlyMap<string, unknown>;
  /** The survivor set the stage was built with (u1 for share, u2 for mask, u3 for unmask). */
  built: readonly string[];
}

/** A reason the round cannot go on (recorded as E_SECAGG_ABORTED). */
class Abort extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class SecureRounds {
  private readonly repo: JobRepository;
  private readonly cache = new Map<string, CachedServer>();

  constructor(
    private readonly services: AggregatorServices,
    private readonly concurrency: number,
  ) {
    this.repo = new JobRepository(services.store, services.telemetry);
  }

  /**
   * Moves an open secure round as far as it can go now: the engine (core/round/engine.ts) says what is due — the
   * current step's requests to the devices that still owe an answer, closing the step — and this carries it out;
   * returns the state, `closing` once the round is ready to finish (or aborted).
   */
  async advance(job: JobDocument, st: RoundState, actions: string[]): Promise<RoundState> {
    const policy = roundPolicy(job.definition);
    for (let guard = 0; guard < 8 && st.status === "open" && st.secagg; guard++) {
      const phase = st.secagg.phase;
      try {
        if (phase === "finish" || phase === "aborted") {
          // A round left here by an older version (the engine closes it with the step): close it now.
          return (await this.apply(st, { type: "tick", now: this.services.clock() })) ?? st;
        }
        let due = step(st, { type: "tick", now: this.services.clock() }, policy).decisions;
        const ask = due.find((d) => d.type === "secaggRequest");
        if (ask && ask.type === "secaggRequest") {
          st = await this.callStep(job, st, ask.step, ask.devices);
          if (st.secagg?.phase !== phase) continue; // another instance moved on
          due = step(st, { type: "tick", now: this.services.clock() }, policy).decisions;
        }
        if (!due.some((d) => d.type === "closeStep")) return st;
        st =
          phase === "advertise"
            ? await this.closeAdvertise(job, st, actions)
            : phase === "share"
              ? await this.closeShares(job, st, actions)
              : phase === "mask"
                ? await this.closeMasked(job, st, actions)
                : await this.closeUnmask(job, st, actions);
      } catch (e) {
        if (!(e instanceof Abort) && !(isFlotillaError(e) && e.code === "E_SECAGG_ABORTED")) throw e;
        const code = e instanceof Abort ? e.code : "E_SECAGG_ABORTED";
        st = await this.abort(st, code, (e as Error).message, actions);
      }
    }
    return st;
  }

  /** Applies one engine event to the persisted round (conditional write; undefined when it changed nothing). */
  private async apply(
    st: RoundState,
    event: RoundEvent,
    policy?: RoundPolicy,
  ): Promise<RoundState | undefined> {
    return this.repo.updateRound(st.jobId, st.round, (cur) => {
      const next = step(cur, event, policy).state;
      return next === cur ? undefined : next;
    });
  }

  /**
   * Reports a closed step's survivors to the engine (which fixes the survivor set, checks the job's minimums and
   * moves to the next step or aborts); `event` may compute it from the current persisted state.
   */
  private async finished(
    job: JobDocument,
    st: RoundState,
    event: (cur: RoundState) => Extract<RoundEvent, { type: "stepFinished" }>,
  ): Promise<RoundState> {
    const policy = roundPolicy(job.definition);
    const next =
      (await this.repo.updateRound(st.jobId, st.round, (cur) => {
        const next = step(cur, event(cur), policy).state;
        return next === cur ? undefined : next;
      })) ?? st;
    if (next.secagg?.phase === "aborted") this.forget(st);
    return next;
  }

  // --- step 1 → 2 --------------------------------------------------------------------------------------------

  private async closeAdvertise(job: JobDocument, st: RoundState, actions: string[]): Promise<RoundState> {
    const opts = job.definition.secureAggregation as SecureAggregationOptions;
    const sa = st.secagg as SecAggRoundState;
    const roster = st.participants.map((p) => p.deviceId);
    const lost: Record<string, LostDevice> = {};
    const candidates = roster.filter((id) => sa.advertised[id] && !st.received[id]).sort();
    for (const id of roster) {
      if (candidates.includes(id)) continue;
      const f = st.received[id];
      lost[id] = f
        ? { step: "advertise", code: f.code ?? "E_DEVICE", reason: f.reason ?? "device failure" }
        : { step: "advertise", code: "E_ROUND_TIMEOUT", reason: "no key advertisement before the deadline" };
    }
    requireSurvivors(
      job,
      "advertise",
      candidates.length,
      `advertise: ${candidates.length} device(s) advertised keys`,
    );
    let params: SecAggParams;
    try {
      // core's defaults for the round's participants with the job's overrides, as the simulator computes them
      params = secAggParamsFor(roster.length, opts);
    } catch (e) {
      if (!isFlotillaError(e)) throw e;
      throw new Abort(e.code, `advertise: parameters for ${roster.length} participants: ${e.message}`);
    }
    const keys = await this.identityKeys(st, candidates, lost);
    const server = this.newServer(job, st, params, roster, keys);
    for (const id of candidates) {
      if (!keys[id]) continue; // lost: no identity key
      const ad = await this.advertisement(st, id);
      if (job.definition.differentialPrivacy && ad.weight !== 1) {
        // DP sums updates with equal weight: a sample-count weight would scale the device's sensitivity.
        lost[id] = {
          step: "advertise",
          code: "E_DP_WEIGHT",
          reason: `advertised weight ${String(ad.weight)}, differential privacy needs 1`,
        };
        continue;
      }
      // The weight is signed into the advertisement and scales the device's masked input: it cannot be clipped, so
      // a claim above the device's bound (jobs/samples.ts) loses the device, whatever sampleCountPolicy says.
      const declared = st.participants.find((p) => p.deviceId === id)?.declaredSamples;
      const bounded = boundSamples(job.definition, id, declared, ad.weight);
      if (bounded.outcome !== "ok") {
        lost[id] = {
          step: "advertise",
          code: E_ROUND_SAMPLES,
          reason: `${bounded.reason}: advertisement refused`,
        };
        this.services.log(`secagg ${st.jobId}/${st.round}: sample count rejected: ${bounded.reason}`);
        continue;
      }
      try {
        server.addAdvertisement(ad);
      } catch (e) {
        if (!isFlotillaError(e)) throw e;
        lost[id] = { step: "advertise", code: e.code, reason: e.message };
      }
    }
    const requests = server.closeAdvertise();
    const u1 = [...requests.keys()].sort();
    const now = this.services.clock();
    const next = await this.finished(job, st, () => ({
      type: "stepFinished",
      step: "advertise",
      survivors: u1,
      lost,
      now,
      params,
      roster,
    }));
    if (next.secagg?.phase === "aborted") return next;
    if (next.secagg?.phase === "share" && sameSet(next.secagg.u1 ?? [], u1))
      this.remember(st, { stage: "share", server, requests, built: u1 });
    actions.push(`secagg ${st.round}: ${u1.length}/${roster.length} advertised, sharing keys`);
    return next;
  }

  /** The identity public keys of `ids`, fetched once per round and persisted (replays use the same keys). */
  private async identityKeys(
    st: RoundState,
    ids: readonly string[],
    lost: Record<string, LostDevice>,
  ): Promise<Record<string, JsonWebKey>> {
    const path = paths.secaggIdentityKeys(st.jobId, st.round);
    const stored = (await getJson<Record<string, JsonWebKey>>(this.services.store, path))?.value;
    // A previous attempt (crashed before its transition) may have fixed some keys: keep them, add the missing.
    const missing = ids.filter((id) => !stored?.[id]);
    if (stored && missing.length === 0) return stored;
    const dir = this.services.identityKeys;
    if (!dir) throw new Abort("E_SECAGG_ABORTED", "advertise: the aggregator has no identity key directory");
    const keys: Record<string, JsonWebKey> = { ...stored };
    await pool(
      missing.map((id) => async () => {
        try {
          keys[id] = await dir.getPublicKey(id);
        } catch (e) {
          const code = isFlotillaError(e) ? e.code : "E_KEY_LOOKUP";
          lost[id] = { step: "advertise", code, reason: `identity key: ${(e as Error).message}` };
        }
      }),
      this.concurrency,
    );
    // Keys do not change between attempts, so a later write is a superset of an earlier one for any replay.
    await putJson(this.services.store, path, keys);
    return keys;
  }

  private newServer(
    job: JobDocument,
    st: RoundState,
    params: SecAggParams,
    roster: readonly string[],
    keys: Readonly<Record<string, JsonWebKey>>,
  ): SecAggServer {
    const sa = st.secagg as SecAggRoundState;
    return new SecAggServer({ jobId: st.jobId, round: st.round }, params, [...roster], {
      length: job.modelLength + secureExtraValues(job.definition),
      identityKey: (id: string) => keys[id],
      graphSeed: new Uint8Array(Buffer.from(sa.graphSeed, "base64url")),
    });
  }

  private async advertisement(st: RoundState, deviceId: string): Promise<KeyAdvertisement> {
    const blob = await this.services.store.get(paths.secagg(st.jobId, st.round, "advertise", deviceId));
    if (!blob) throw new Abort("E_SECAGG_ABORTED", `the stored advertisement of ${deviceId} is missing`);
    const msg = decodeMessage(blob.bytes);
    if (msg.type !== "secagg" || msg.step !== "advertise")
      throw new Abort("E_SECAGG_ABORTED", `the stored advertisement of ${deviceId} is not one`);
    return msg.body as KeyAdvertisement;
  }

  // --- method steps ------------------------------------------------------------------------------------------

  /**
   * Calls the step's method on every device that still owes an answer, at most `concurrency` at a time, each
   * within the step's remaining time; stores answers (blobs) and records them in the round state in one write.
   */
  private async callStep(
    job: JobDocument,
    st: RoundState,
    step: MethodStep,
    targets: readonly string[],
  ): Promise<RoundState> {
    const sa = st.secagg as SecAggRoundState;
    if (targets.length === 0) return st;
    const requests = await this.requests(job, st, step);
    const { store, fleet, log } = this.services;
    const answered: Record<string, SecAggReceipt> = {};
    const acked: Record<string, true> = {};
    const refused: Record<string, { code: string; message: string }> = {};
    const down: Record<string, number> = {};
    const method = SECAGG_METHOD[step];
    await pool(
      targets.map((id) => async () => {
        const blobPath = step === "mask" ? undefined : paths.secagg(st.jobId, st.round, step, id);
        if (blobPath) {
          // Answered before a restart but not recorded: take the stored answer.
          const prev = await store.get(blobPath);
          if (prev) {
            answered[id] = { bytes: prev.bytes.byteLength, at: this.services.clock() };
            return;
          }
        }
        const request = requests.get(id);
        if (request === undefined) {
          refused[id] = { code: "E_SECAGG_STATE", message: `no ${step} request for ${id}` };
          return;
        }
        const size = Buffer.byteLength(JSON.stringify(request));
        if (size > METHOD_PAYLOAD_LIMIT) {
          refused[id] = {
            code: "E_SECAGG_PAYLOAD",
            message: `${method} request of ${size} bytes exceeds 128 KB`,
          };
          return;
        }
        down[id] = size;
        const remaining = (sa.stepDeadline - this.services.clock()) / 1000;
        const out = await fleet.callTrainer(id, method, request, Math.max(1, remaining));
        if (!out.reached) {
          log(
            `secagg ${st.jobId}/${st.round}: ${method} on ${id} not delivered (${out.reason}); retried until the step deadline`,
          );
          return;
        }
        if (out.status !== 200) {
          const p = (out.payload ?? {}) as { code?: unknown; message?: unknown };
          refused[id] = {
            // A refusal without a code keeps its HTTP status in the message (the code is a catalogued one).
            code: typeof p.code === "string" ? p.code : "E_SECAGG_ANSWER",
            message:
              typeof p.message !== "string"
                ? `${method} answered ${out.status}`
                : typeof p.code === "string"
                  ? p.message
                  : `${method} answered ${out.status}: ${p.message}`,
          };
          log(
            `secagg ${st.jobId}/${st.round}: ${id} refused ${method}: ${refused[id].code}: ${refused[id].message}`,
          );
          return;
        }
        const body = out.payload as Record<string, unknown> | null;
        if (step === "mask") {
          if (body && body.accepted === true) acked[id] = true;
          else refused[id] = { code: "E_SECAGG_ANSWER", message: `${method} answer is not {accepted: true}` };
          return;
        }
        if (
          !body ||
          typeof body !== "object" ||
          body.deviceId !== id ||
          body.jobId !== st.jobId ||
          body.round !== st.round
        ) {
          refused[id] = {
            code: "E_SECAGG_ANSWER",
            message: `${method} answer does not name ${id} and this round`,
          };
          return;
        }
        const bytes = Buffer.from(JSON.stringify(body));
        try {
          await store.put(blobPath as string, bytes, { ifNoneMatch: "*" });
        } catch (e) {
          if (!isConflict(e)) throw e; // a concurrent instance stored its copy of the same answer first
        }
        answered[id] = { bytes: bytes.byteLength, at: this.services.clock() };
      }),
      this.concurrency,
    );
    return (await this.apply(st, { type: "stepAnswers", step, answered, acked, refused, down })) ?? st;
  }

  /** The current step's requests by device: from the cached server, else rebuilt by replay (unmask: stored). */
  private async requests(
    job: JobDocument,
    st: RoundState,
    step: MethodStep,
  ): Promise<ReadonlyMap<string, unknown>> {
    const sa = st.secagg as SecAggRoundState;
    if (step === "unmask") {
      const cached = this.cached(st, "unmask");
      if (cached) return cached.requests;
      const stored = await getJson<Record<string, UnmaskRequest>>(
        this.services.store,
        paths.secaggUnmaskRequests(st.jobId, st.round),
      );
      if (stored) return new Map(Object.entries(stored.value));
    }
    const built = await this.serverAt(job, st, step);
    if (step === "unmask" && sa.u3) await this.storeUnmaskRequests(st, built.requests);
    return built.requests;
  }

  private async storeUnmaskRequests(st: RoundState, requests: ReadonlyMap<string, unknown>): Promise<void> {
    await putJson(
      this.services.store,
      paths.secaggUnmaskRequests(st.jobId, st.round),
      Object.fromEntries(requests),
    );
  }

  // --- step 2 → 3 --------------------------------------------------------------------------------------------

  private async closeShares(job: JobDocument, st: RoundState, actions: string[]): Promise<RoundState> {
    const sa = st.secagg as SecAggRoundState;
    const built = await this.serverAt(job, st, "share");
    this.forget(st); // it changes now: cached again only once the transition is persisted
    const lost: Record<string, LostDevice> = silentLost(sa, "share", sa.u1 ?? [], sa.shared);
    for (const id of sa.u1 ?? []) {
      if (!sa.shared[id]) continue;
      try {
        built.server.addShares(await this.answerOf<ShareKeysResponse>(st, "share", id));
      } catch (e) {
        if (!isFlotillaError(e) || e instanceof Abort) throw e;
        lost[id] = { step: "share", code: e.code, reason: e.message };
      }
    }
    const requests = built.server.closeShares();
    const u2 = [...requests.keys()].sort();
    const now = this.services.clock();
    const next = await this.finished(job, st, () => ({
      type: "stepFinished",
      step: "share",
      survivors: u2,
      lost,
      now,
    }));
    if (next.secagg?.phase === "mask" && sameSet(next.secagg.u2 ?? [], u2))
      this.remember(st, { stage: "mask", server: built.server, requests, built: u2 });
    if (next.secagg?.phase === "mask") actions.push(`secagg ${st.round}: ${u2.length} shared keys, masking`);
    return next;
  }

  // --- step 3 → 4 --------------------------------------------------------------------------------------------

  private async closeMasked(job: JobDocument, st: RoundState, actions: string[]): Promise<RoundState> {
    const now = this.services.clock();
    // Freeze the set of masked inputs first: from here on the ingest refuses masked inputs as late. The engine
    // aborts here when they are fewer than the job's minimum or distributed DP's n' (nothing is prepared then).
    const frozen = await this.finished(job, st, (cur) => {
      const c = cur.secagg as SecAggRoundState;
      return {
        type: "stepFinished",
        step: "mask",
        survivors: Object.keys(c.masked),
        lost: silentLost(c, "mask", c.u2 ?? [], c.masked),
        now,
      };
    });
    if (frozen.secagg?.phase !== "unmask") return frozen;
    const built = await this.serverAt(job, frozen, "unmask");
    await this.storeUnmaskRequests(frozen, built.requests);
    const accepted = [...built.requests.keys()].sort();
    // A stored masked input the server refused (cannot happen after the ingest's checks, but never trust it).
    const next =
      (await this.apply(
        frozen,
        { type: "survivorsRevised", step: "mask", survivors: accepted },
        roundPolicy(job.definition),
      )) ?? frozen;
    if (next.secagg?.phase === "unmask")
      actions.push(`secagg ${st.round}: ${accepted.length} masked inputs, unmasking`);
    return next;
  }

  // --- step 4 → finish ---------------------------------------------------------------------------------------

  private async closeUnmask(job: JobDocument, st: RoundState, actions: string[]): Promise<RoundState> {
    const next = await this.finished(job, st, (cur) => {
      const c = cur.secagg as SecAggRoundState;
      return {
        type: "stepFinished",
        step: "unmask",
        survivors: Object.keys(c.unmasked),
        lost: silentLost(c, "unmask", c.u3 ?? [], c.unmasked),
        now: this.services.clock(),
      };
    });
    actions.push(`secagg ${st.round}: unmask closed`);
    return next;
  }

  /**
   * Unmasks: the server (cached, or rebuilt by replaying every stored message) takes the stored unmask answers
   * and produces the sum. E_SECAGG_ABORTED when too few answered.
   */
  async finish(job: JobDocument, st: RoundState): Promise<SecAggResult> {
    const sa = st.secagg as SecAggRoundState;
    if (sa.phase !== "finish")
      throw new FlotillaError("E_SECAGG_ABORTED", sa.error?.message ?? `round ended in phase ${sa.phase}`);
    let built: CachedServer;
    try {
      built = await this.serverAt(job, st, "unmask");
    } catch (e) {
      if (e instanceof Abort) throw new FlotillaError("E_SECAGG_ABORTED", e.message, { cause: e });
      throw e;
    }
    this.forget(st);
    for (const id of sa.u4 ?? []) {
      try {
        built.server.addUnmaskResponse(await this.answerOf<UnmaskResponse>(st, "unmask", id));
      } catch (e) {
        if (!isFlotillaError(e) && !(e instanceof Abort)) throw e;
        this.services.log(
          `secagg ${st.jobId}/${st.round}: unmask answer of ${id} refused: ${(e as Error).message}`,
        );
      }
    }
    return built.server.finish();
  }

  /** Marks the round aborted (nothing more is unmasked) and ready to close as failed. */
  private async abort(st: RoundState, code: string, message: string, actions: string[]): Promise<RoundState> {
    this.forget(st);
    actions.push(`secagg ${st.round}: aborted: ${message}`);
    this.services.log(`secagg ${st.jobId}/${st.round}: aborted (${code}): ${message}`);
    return (await this.apply(st, { type: "aborted", code, message })) ?? st;
  }

  // --- the server: cached or replayed -------------------------------------------------------------------------

  /**
   * The SecAggServer with the requests of `stage`, built from the persisted survivor sets: the cached one (moved
   * forward when it is at an earlier stage), else rebuilt by replaying the stored advertisements (→ share
   * requests), key shares of U2 (→ mask requests) and masked inputs of U3, streamed one frame at a time (→ unmask
   * requests). The server is out of the cache while it changes.
   */
  private async serverAt(job: JobDocument, st: RoundState, stage: Stage): Promise<CachedServer> {
    const sa = st.secagg as SecAggRoundState;
    const hit = this.cachedAny(st);
    if (hit && hit.stage === stage) return hit;
    this.forget(st);
    const replay = async (what: string, fn: () => Promise<void> | void): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        if (e instanceof Abort || !isFlotillaError(e)) throw e;
        throw new Abort("E_SECAGG_ABORTED", `replaying ${what}: ${e.code}: ${e.message}`);
      }
    };
    let server: SecAggServer;
    let at: Stage;
    let requests: ReadonlyMap<string, unknown>;
    let built: readonly string[];
    if (hit && STAGES.indexOf(hit.stage) < STAGES.indexOf(stage)) {
      ({ server, stage: at, requests, built } = hit);
    } else {
      if (!sa.params || !sa.roster || !sa.u1)
        throw new Abort("E_SECAGG_ABORTED", "the round's parameters were never fixed");
      const keys = (
        await getJson<Record<string, JsonWebKey>>(
          this.services.store,
          paths.secaggIdentityKeys(st.jobId, st.round),
        )
      )?.value;
      if (!keys) throw new Abort("E_SECAGG_ABORTED", "the round's identity keys are missing");
      server = this.newServer(job, st, sa.params, sa.roster, keys);
      for (const id of sa.u1) {
        const ad = await this.advertisement(st, id);
        await replay(`${id}'s advertisement`, () => server.addAdvertisement(ad));
      }
      requests = server.closeAdvertise();
      at = "share";
      built = sa.u1;
    }
    if (at === "share" && stage !== "share") {
      if (!sa.u2) throw new Abort("E_SECAGG_ABORTED", "the key-share survivors were never fixed");
      for (const id of sa.u2) {
        const resp = await this.answerOf<ShareKeysResponse>(st, "share", id);
        await replay(`${id}'s key shares`, () => server.addShares(resp));
      }
      requests = server.closeShares();
      at = "mask";
      built = sa.u2;
    }
    if (at === "mask" && stage === "unmask") {
      if (!sa.u3) throw new Abort("E_SECAGG_ABORTED", "the masked-input survivors were never fixed");
      for (const id of sa.u3) {
        // One frame at a time: only the ring sum and the current frame are in memory.
        const blob = await this.services.store.get(paths.secagg(st.jobId, st.round, "mask", id));
        if (!blob) {
          this.services.log(`secagg ${st.jobId}/${st.round}: the masked input of ${id} is missing`);
          continue;
        }
        try {
          const msg = decodeMessage(blob.bytes);
          if (msg.type !== "secagg" || msg.step !== "mask" || !msg.masked)
            throw new FlotillaError("E_SECAGG_INPUT", "stored frame is not a masked input");
          server.addMaskedInput({ jobId: st.jobId, round: st.round, deviceId: id, masked: msg.masked });
        } catch (e) {
          if (!isFlotillaError(e)) throw e;
          this.services.log(`secagg ${st.jobId}/${st.round}: masked input of ${id} refused: ${e.message}`);
        }
      }
      requests = server.closeMasked();
      at = "unmask";
      built = sa.u3;
    }
    return this.remember(st, { stage: at, server, requests, built });
  }

  /** The cached server when it was built from the persisted survivor set of its stage. */
  private cachedAny(st: RoundState): CachedServer | undefined {
    const c = this.cache.get(st.jobId);
    const sa = st.secagg;
    if (!c || !sa || c.round !== st.round || c.graphSeed !== sa.graphSeed) return undefined;
    const expected = c.stage === "share" ? sa.u1 : c.stage === "mask" ? sa.u2 : sa.u3;
    return expected && sameSet(expected, c.built) ? c : undefined;
  }

  private cached(st: RoundState, stage: Stage): CachedServer | undefined {
    const c = this.cachedAny(st);
    return c && c.stage === stage ? c : undefined;
  }

  private remember(
    st: RoundState,
    e: {
      stage: Stage;
      server: SecAggServer;
      requests: ReadonlyMap<string, unknown>;
      built: readonly string[];
    },
  ): CachedServer {
    const entry: CachedServer = {
      jobId: st.jobId,
      round: st.round,
      graphSeed: (st.secagg as SecAggRoundState).graphSeed,
      ...e,
    };
    this.cache.set(st.jobId, entry);
    return entry;
  }

  private forget(st: RoundState): void {
    const c = this.cache.get(st.jobId);
    if (c && c.round === st.round) this.cache.delete(st.jobId);
  }

  private async answerOf<T>(st: RoundState, step: "share" | "unmask", id: string): Promise<T> {
    const got = await getJson<T>(this.services.store, paths.secagg(st.jobId, st.round, step, id));
    if (!got) throw new Abort("E_SECAGG_ABORTED", `the stored ${step} answer of ${id} is missing`);
    return got.value;
  }
}

/**
 * Aborts the round (an Abort, before the server is even built) when `count` devices are fewer than the job's
 * minimums (core/round/engine.ts shortfall).
 */
function requireSurvivors(job: JobDocument, stepName: "advertise", count: number, what: string): void {
  const short = shortfall(roundPolicy(job.definition), stepName, count, what);
  if (short) throw new Abort(short.code, short.message);
}

/** The round record's `secagg` part, and the devices not in the sum with their reasons. */
export function secAggRecord(
  st: RoundState,
  result: SecAggResult | undefined,
): { record: SecAggRecord; failures: { deviceId: string; code: string; reason: string }[]; bytes: number } {
  const sa = st.secagg as SecAggRoundState;
  const all = st.participants.map((p) => p.deviceId);
  const dropouts: Record<SecAggStep, string[]> = secAggDropouts(st);
  const included = result ? [...result.included].sort() : [];
  const bytes: Record<string, { up: number; down: number }> = {};
  let total = 0;
  for (const d of all) {
    const up =
      (sa.advertised[d]?.bytes ?? 0) +
      (sa.shared[d]?.bytes ?? 0) +
      (sa.masked[d]?.bytes ?? 0) +
      (sa.unmasked[d]?.bytes ?? 0) +
      (st.received[d]?.bytes ?? 0);
    total += up;
    bytes[d] = { up, down: sa.down[d] ?? 0 };
  }
  const failures = secAggFailures(st, included);
  return {
    record: {
      dropouts,
      included,
      unmaskMs: result ? result.unmaskMs : null,
      params: sa.params,
      bytes,
      ...(sa.error ? { error: sa.error } : {}),
    },
    failures,
    bytes: total,
  };
}

export async function pool(work: (() => Promise<void>)[], n: number): Promise<void> {
  let i = 0;
  const runners = Array.from({ length: Math.max(1, Math.min(n, work.length)) }, async () => {
    while (i < work.length) await work[i++]();
  });
  await Promise.all(runners);
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}
