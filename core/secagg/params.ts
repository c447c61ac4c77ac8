/**
 * SecAgg+ parameters (Bell et al. CCS 2020, Theorem 1 / §4): k = O(log n) neighbours and a threshold t with
 * k/2 < t <= k. The lower bound is what keeps a curious server from learning an individual update: to unmask a
 * device it would need t shares of its self-mask seed (asked for as a "survivor") and t shares of its mask key
 * (asked for as "dropped") from its k neighbours; with t > k/2 those two sets of neighbours must overlap, and a
 * neighbour never reveals both for the same device (client.ts). The upper bound keeps reconstruction possible.
 */
import { fail } from "../errors";
import type { SecAggParams } from "./types";

/** Flower's and our default clip range: updates are clipped to [-8, 8] before fixed-point encoding. */
export const DEFAULT_CLIP_RANGE = 8;

/**
 * Defaults for n participants: k = min(n-1, 2 * ceil(log2 n)) (even when below n-1), t = floor(k/2) + 1 (the
 * smallest honest majority of the neighbourhood), clip 8, modulus 2^32.
 */
export function defaultParams(n: number): SecAggParams {
  if (!Number.isInteger(n) || n < 3)
    fail("E_SECAGG_PARAMS", `secure aggregation needs >= 3 participants, got ${n}`);
  let k = Math.min(n - 1, 2 * Math.ceil(Math.log2(n)));
  if (k < n - 1 && k % 2 !== 0) k = Math.min(k + 1, n - 1);
  return { neighbours: k, threshold: Math.floor(k / 2) + 1, clipRange: DEFAULT_CLIP_RANGE, modulusBits: 32 };
}

/** The neighbour count actually used with n participants: min(k, n-1). */
export function effectiveNeighbours(p: SecAggParams, n: number): number {
  return Math.min(p.neighbours, n - 1);
}

/** Throws E_SECAGG_PARAMS (one line) unless p is usable, and safe, for n participants. */
export function validateParams(p: SecAggParams, n: number): void {
  if (typeof p !== "object" || p === null) fail("E_SECAGG_PARAMS", "params must be an object");
  if (!Number.isInteger(n) || n < 3)
    fail("E_SECAGG_PARAMS", `secure aggregation needs >= 3 participants, got ${n}`);
  const k = p.neighbours;
  const t = p.threshold;
  if (!Number.isInteger(k) || k < 2)
    fail("E_SECAGG_PARAMS", `neighbours k must be an integer >= 2, got ${k}`);
  const kEff = Math.min(k, n - 1);
  if (kEff < n - 1 && kEff % 2 !== 0)
    fail(
      "E_SECAGG_PARAMS",
      `neighbours k must be even when below n-1 (Harary graph), got k=${k} with n=${n}`,
    );
  if (!Number.isInteger(t) || !(t > k / 2) || t > k)
    fail("E_SECAGG_PARAMS", `threshold t must be an integer with k/2 < t <= k (k=${k}), got ${t}`);
  if (t > kEff)
    fail("E_SECAGG_PARAMS", `threshold t=${t} exceeds the ${kEff} neighbours available with n=${n}`);
  if (typeof p.clipRange !== "number" || !(p.clipRange > 0) || !Number.isFinite(p.clipRange))
    fail("E_SECAGG_PARAMS", `clipRange must be a positive finite number, got ${p.clipRange}`);
  if (p.modulusBits !== 32) fail("E_SECAGG_PARAMS", `modulusBits must be 32, got ${String(p.modulusBits)}`);
  if (n > 65535) fail("E_SECAGG_PARAMS", `at most 65,535 participants (GF(2^16) shares), got ${n}`);
}

/** Throws E_SECAGG_PARAMS unless `s` is a session: a non-empty jobId and a non-negative integer round. */
export function validateSession(s: unknown): asserts s is { jobId: string; round: number } {
  const o = s as { jobId?: unknown; round?: unknown } | null;
  if (typeof o !== "object" || o === null) fail("E_SECAGG_PARAMS", "session must be an object");
  if (typeof o.jobId !== "string" || o.jobId.length === 0)
    fail("E_SECAGG_PARAMS", "session jobId must be a non-empty string");
  if (!Number.isSafeInteger(o.round) || (o.round as number) < 0)
    fail("E_SECAGG_PARAMS", `session round must be a non-negative integer, got ${String(o.round)}`);
}

/** Throws E_SECAGG_REPLAY unless message `m` (any shape) belongs to `session`. */
export function checkSession(session: { jobId: string; round: number }, m: unknown, what: string): void {
  const o = m as { jobId?: unknown; round?: unknown } | null;
  if (typeof o !== "object" || o === null) fail("E_SECAGG_MESSAGE", `${what} must be an object`);
  if (o.jobId !== session.jobId || o.round !== session.round)
    fail(
      "E_SECAGG_REPLAY",
      `${what} is for ${String(o.jobId)}/${String(o.round)}, not this session ${session.jobId}/${session.round}`,
    );
}

/** A device's aggregation weight must be a positive safe integer (its sample count). */
export function isValidWeight(w: unknown): w is number {
  return Number.isSafeInteger(w) && (w as number) > 0;
}
