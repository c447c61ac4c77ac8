/**
 * Thread-count settings of the wasm backend (docs/threads.md), free of tfjs so that configuration code (the CLI,
 * the simulator's config, the modules' settings) can check them without loading it.
 */
import * as os from "node:os";
import { fail } from "../errors";

/**
 * The most threads one device's training uses: the threaded build's pool has 8 pthread slots, and tfjs caps
 * XNNPACK's pool there too.
 */
export const MAX_THREADS = 8;
/** The default is the device's cores up to this: at the small batches of federated training more rarely pay. */
export const DEFAULT_MAX_THREADS = 4;

/**
 * The default thread count: FLOTILLA_THREADS when set (1..MAX_THREADS or "auto"), else the cores this process may
 * use (os.availableParallelism) up to DEFAULT_MAX_THREADS.
 */
export function defaultThreads(env: Readonly<Record<string, string | undefined>> = process.env): number {
  const fromEnv = parseThreads(env.FLOTILLA_THREADS, "FLOTILLA_THREADS");
  return fromEnv ?? Math.max(1, Math.min(os.availableParallelism(), DEFAULT_MAX_THREADS));
}

/**
 * Checks a thread-count setting (a CLI flag, an env var, a desired property): an integer in 1..MAX_THREADS, or
 * undefined / "" / "auto" for the default. Returns undefined for the default.
 */
export function parseThreads(value: unknown, what = "threads"): number | undefined {
  if (value === undefined || value === null || value === "" || value === "auto") return undefined;
  const n = typeof value === "number" ? value : typeof value === "string" ? Number(value.trim()) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_THREADS) {
    fail(
      "E_CONFIG_THREADS",
      `${what} must be an integer from 1 to ${MAX_THREADS} or 'auto', got '${String(value)}'`,
    );
  }
  return n;
}

/**
 * The threads of each of `trainers` backends that train at the same time on this machine (simulation workers, a
 * local fleet's training pool): FLOTILLA_THREADS when set, else the cores divided among them, at least 1 and at
 * most DEFAULT_MAX_THREADS, so together they do not oversubscribe the cores.
 */
export function sharedThreads(
  trainers: number,
  env: Readonly<Record<string, string | undefined>> = process.env,
): number {
  const fromEnv = parseThreads(env.FLOTILLA_THREADS, "FLOTILLA_THREADS");
  if (fromEnv !== undefined) return fromEnv;
  const perTrainer = Math.floor(os.availableParallelism() / Math.max(1, trainers));
  return Math.max(1, Math.min(DEFAULT_MAX_THREADS, perTrainer));
}
