import { fail } from "../../../core/errors";

export interface BackoffOptions {
  /** Delay cap after the first failure, in ms. */
  initialMs?: number;
  /** Largest delay, in ms. */
  maxMs?: number;
  /** Growth per consecutive failure. */
  factor?: number;
}

export const BACKOFF_DEFAULTS: Required<BackoffOptions> = { initialMs: 1000, maxMs: 5 * 60_000, factor: 2 };

/**
 * Exponential backoff with "equal jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): after
 * the n-th consecutive failure the cap is min(maxMs, initialMs · factor^(n−1)) and the delay is uniform in
 * [cap/2, cap]. Half the cap is kept as a floor so a fleet that lost its link at the same moment spreads its
 * retries without any device hammering the hub with near-zero delays.
 */
export function backoffDelay(
  failures: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const { initialMs, maxMs, factor } = { ...BACKOFF_DEFAULTS, ...options };
  const n = Math.max(1, Math.floor(failures));
  const cap = Math.min(maxMs, initialMs * Math.pow(factor, n - 1));
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(cap / 2 + (r * cap) / 2);
}

export function checkBackoff(options: BackoffOptions, what: string): Required<BackoffOptions> {
  const o = { ...BACKOFF_DEFAULTS, ...options };
  if (!(Number.isFinite(o.initialMs) && o.initialMs >= 0))
    fail("E_QUEUE_CONFIG", `${what}: initialMs must be ≥ 0`);
  if (!(Number.isFinite(o.maxMs) && o.maxMs >= o.initialMs))
    fail("E_QUEUE_CONFIG", `${what}: maxMs must be ≥ initialMs`);
  if (!(Number.isFinite(o.factor) && o.factor >= 1)) fail("E_QUEUE_CONFIG", `${what}: factor must be ≥ 1`);
  return o;
}
