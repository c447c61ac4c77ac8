import { createHash } from "node:crypto";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import type { SecAggFrame } from "../../../core/protocol/messages";
import { SecAggClient } from "../../../core/secagg/client";
import type {
  IdentitySigner,
  MaskInputRequest,
  SecAggStep,
  ShareKeysRequest,
  UnmaskRequest,
} from "../../../core/secagg/types";

/**
 * The trainer's side of secure aggregation (docs/iothub-protocol.md, "Secure aggregation"). After training a secure
 * round the trainer keeps its update here, in memory, with its SecAggClient (core/secagg/client.ts), and sends the
 * key advertisement; the cloud then drives steps 2-4 with the direct methods `secaggShareKeys`, `secaggMaskInput`
 * and `secaggUnmask`, which `answer` handles.
 *
 * - One session per (job, round); a newer round of the job drops the older session. Sessions expire (the round's
 *   deadline + 4 steps + 60 s) and are never persisted: a trainer restarted mid-round has no session and answers
 *   every later step with E_SECAGG_STATE (it is a dropout of that round).
 * - Idempotent: a method called again with the identical payload (the cloud retrying after a lost answer or a
 *   Function restart) gets the identical answer; a different payload for a step already answered goes to the
 *   client, which refuses replays (E_SECAGG_REPLAY), and a second masked input is refused here.
 * - The update is released as soon as it is masked.
 */

/** The three methods, by name, and the step each answers. */
export const SECAGG_METHODS = [
  { method: "secaggShareKeys", step: "share" },
  { method: "secaggMaskInput", step: "mask" },
  { method: "secaggUnmask", step: "unmask" },
] as const satisfies readonly { readonly method: string; readonly step: SecAggStep }[];

export interface SecAggAnswer {
  readonly status: number;
  readonly payload: unknown;
  /** Step `mask`: the frame to send on the `updates` output (after answering). */
  readonly frame?: SecAggFrame;
}

interface Session {
  readonly jobId: string;
  readonly round: number;
  readonly client: SecAggClient;
  update: Float32Array | null;
  readonly numSamples: number;
  readonly metrics: { readonly loss: number; readonly accuracy: number; readonly trainMs: number };
  readonly expiresAt: number;
  /** The last answer of each step, by the sha256 of its request. */
  readonly answers: Map<SecAggStep, { readonly hash: string; readonly answer: SecAggAnswer }>;
}

export class SecAggSessions {
  private readonly sessions = new Map<string, Session>();

  constructor(
    readonly deviceId: string,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    this.sweep();
    return this.sessions.size;
  }

  /**
   * Step 1: starts the round's session over the trained update; returns the advertisement frame to send. The
   * update weighs `weight` in the secure mean (default its sample count; 1 under differential privacy). The
   * signer's errors (E_KEY_NOT_FOUND, E_KEY_VAULT, ...) propagate.
   */
  async start(
    order: { jobId: string; round: number; deadline: number; stepSeconds: number },
    update: Float32Array,
    numSamples: number,
    metrics: { loss: number; accuracy: number; trainMs: number },
    signer: IdentitySigner,
    weight: number = numSamples,
  ): Promise<SecAggFrame> {
    const session = { jobId: order.jobId, round: order.round };
    const { client, advertisement } = await SecAggClient.start(session, this.deviceId, weight, signer);
    this.dropJob(order.jobId);
    const from = Math.max(order.deadline, this.now());
    this.sessions.set(key(order.jobId, order.round), {
      ...session,
      client,
      update,
      numSamples,
      metrics,
      expiresAt: from + (4 * order.stepSeconds + 60) * 1000,
      answers: new Map(),
    });
    return this.frame(order.jobId, order.round, "advertise", advertisement);
  }

  has(jobId: string, round: number): boolean {
    this.sweep();
    return this.sessions.has(key(jobId, round));
  }

  /** Forgets the job's sessions (all, or those of rounds below `belowRound`). */
  dropJob(jobId: string, belowRound = Infinity): number {
    let n = 0;
    for (const [k, s] of this.sessions) {
      if (s.jobId === jobId && s.round < belowRound) {
        this.sessions.delete(k);
        n++;
      }
    }
    return n;
  }

  /** Forgets the job's session of `round` (or all of the job's); returns how many. */
  drop(jobId: string, round?: number): number {
    if (round === undefined) return this.dropJob(jobId);
    return this.sessions.delete(key(jobId, round)) ? 1 : 0;
  }

  /** Answers one of the three methods: 200 with the step's response, else 400 `{code, message}`. */
  answer(step: SecAggStep, payload: Record<string, unknown> | undefined): SecAggAnswer {
    try {
      return this.answerOrThrow(step, payload);
    } catch (e) {
      const c = (e as { code?: unknown })?.code;
      const code = isFlotillaError(e)
        ? e.code
        : typeof c === "string" && c.startsWith("E_")
          ? c
          : "E_SECAGG_INTERNAL";
      return { status: 400, payload: { code, message: e instanceof Error ? e.message : String(e) } };
    }
  }

  private answerOrThrow(step: SecAggStep, payload: Record<string, unknown> | undefined): SecAggAnswer {
    if (!payload) throw new FlotillaError("E_SECAGG_INVALID", `${step}: the payload must be a JSON object`);
    const { jobId, round } = payload;
    if (typeof jobId !== "string" || jobId === "" || !Number.isSafeInteger(round))
      throw new FlotillaError("E_SECAGG_INVALID", `${step}: the payload must name jobId and round`);
    this.sweep();
    const s = this.sessions.get(key(jobId, round as number));
    if (!s) {
      throw new FlotillaError(
        "E_SECAGG_STATE",
        `no secure-aggregation session for ${jobId} round ${String(round)} on this trainer (restarted, superseded or expired)`,
      );
    }
    const hash = createHash("sha256").update(JSON.stringify(payload)).digest("hex");
    const prev = s.answers.get(step);
    if (prev && prev.hash === hash) return { status: prev.answer.status, payload: prev.answer.payload };
    let answer: SecAggAnswer;
    switch (step) {
      case "share":
        answer = { status: 200, payload: s.client.shareKeys(payload as unknown as ShareKeysRequest) };
        break;
      case "mask": {
        if (!s.update)
          throw new FlotillaError(
            "E_SECAGG_REPLAY",
            `${jobId} round ${s.round}: the masked input was already sent`,
          );
        const masked = s.client.maskInput(payload as unknown as MaskInputRequest, s.update);
        s.update = null;
        const { masked: vector, ...body } = masked;
        answer = {
          status: 200,
          payload: { accepted: true, jobId, round: s.round },
          frame: {
            ...this.frame(jobId, s.round, "mask", body),
            masked: vector,
            numSamples: s.numSamples,
            metrics: s.metrics,
          },
        };
        break;
      }
      case "unmask":
        answer = { status: 200, payload: s.client.unmask(payload as unknown as UnmaskRequest) };
        break;
      default:
        throw new FlotillaError("E_SECAGG_INVALID", `no method answers step '${step}'`);
    }
    s.answers.set(step, { hash, answer: { status: answer.status, payload: answer.payload } });
    return answer;
  }

  private frame(jobId: string, round: number, step: SecAggStep, body: unknown): SecAggFrame {
    return { type: "secagg", step, direction: "up", jobId, round, deviceId: this.deviceId, body };
  }

  private sweep(): void {
    const t = this.now();
    for (const [k, s] of this.sessions) if (s.expiresAt <= t) this.sessions.delete(k);
  }
}

function key(jobId: string, round: number): string {
  return `${jobId}\u0000${round}`;
}
