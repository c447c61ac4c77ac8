/**
 * Fleet-wide evaluation (docs/evaluation.md): each device evaluates a published global model on its own held-out
 * data and reports one `DeviceEvaluation`; the round engine's owner (the simulator, the aggregation Function) folds
 * a model's evaluations into one `FleetEvaluation` in that round's record: the sample-weighted metrics (the number
 * a centralised test set would give if the fleet's held-out data were pooled), their spread across devices and the
 * worst decile (per-device fairness, as in q-FFL, Li et al. 2020, "Fair Resource Allocation in Federated
 * Learning", ICLR, which reports the worst 10% of devices' accuracy).
 */
import { fail } from "../errors";
import { quantile } from "../fleet/trace";

/** One device's evaluation of one global model (the model published after `round`). */
export interface DeviceEvaluation {
  readonly deviceId: string;
  /** The round whose global model was evaluated (0: the initial model). */
  readonly round: number;
  /** Held-out samples evaluated. */
  readonly samples: number;
  /** Classification / binary tasks. */
  readonly accuracy?: number;
  readonly loss?: number;
  /** Regression / reconstruction tasks. */
  readonly mae?: number;
}

/** Spread of one metric across devices (each device counts once, whatever its sample count). */
export interface MetricSpread {
  readonly min: number;
  readonly p10: number;
  readonly median: number;
  readonly p90: number;
  readonly max: number;
  readonly std: number;
}

/** A global model's evaluation by the fleet, in its round's record. */
export interface FleetEvaluation {
  /** The round whose global model this is. */
  readonly round: number;
  /** Devices whose evaluation is included, and their held-out samples. */
  readonly devices: number;
  readonly samples: number;
  /** Sample-weighted means over the devices. */
  readonly accuracy?: number;
  readonly loss?: number;
  readonly mae?: number;
  /** Spread across devices of the task's main metric (accuracy, else MAE). */
  readonly spread?: MetricSpread;
  /**
   * The worst 10% of devices (at least one) by the main metric: their sample-weighted metric and who they are
   * (lowest accuracy, or highest MAE).
   */
  readonly worstDecile?: { readonly value: number; readonly devices: readonly string[] };
}

/** The share of devices in the worst decile (at least one device). */
export const WORST_DECILE = 0.1;
/** Most held-out samples one evaluation may claim (a bound on any one device's weight). */
export const MAX_EVALUATION_SAMPLES = 1_000_000_000;
const MAX_ROUND = 2 ** 31 - 1;

/**
 * Checks one device's evaluation as it arrives (a frame, a stored blob): a non-empty device id of at most 128
 * UTF-8 bytes with no control characters, a round 0 … 2^31−1, a positive integer sample count, and at least one
 * metric, each finite (accuracy in [0, 1]; loss and MAE ≥ 0). Throws E_EVAL_INVALID naming the field.
 */
export function checkDeviceEvaluation(value: unknown): DeviceEvaluation {
  const bad = (what: string): never => fail("E_EVAL_INVALID", `evaluation ${what}`);
  if (typeof value !== "object" || value === null || Array.isArray(value)) return bad("is not an object");
  const v = value as Record<string, unknown>;
  const own = (k: string): unknown => (Object.hasOwn(v, k) ? v[k] : undefined);
  const deviceId = own("deviceId");
  if (
    typeof deviceId !== "string" ||
    deviceId.length === 0 ||
    Buffer.byteLength(deviceId, "utf8") > 128 ||
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u001f\u007f]/.test(deviceId)
  )
    bad(`deviceId ${JSON.stringify(deviceId)} is not a device id`);
  const round = own("round");
  if (typeof round !== "number" || !Number.isInteger(round) || round < 0 || round > MAX_ROUND)
    bad(`round ${String(round)} is not an integer 0 … 2^31−1`);
  const samples = own("samples");
  if (
    typeof samples !== "number" ||
    !Number.isInteger(samples) ||
    samples < 1 ||
    samples > MAX_EVALUATION_SAMPLES
  )
    bad(`samples ${String(samples)} is not an integer 1 … ${MAX_EVALUATION_SAMPLES}`);
  const metric = (k: "accuracy" | "loss" | "mae", max: number): number | undefined => {
    const m = own(k);
    if (m === undefined || m === null) return undefined;
    if (typeof m !== "number" || !Number.isFinite(m) || m < 0 || m > max)
      bad(`${k} ${String(m)} is not a finite number in [0, ${max}]`);
    return m as number;
  };
  const accuracy = metric("accuracy", 1);
  const loss = metric("loss", Number.MAX_VALUE);
  const mae = metric("mae", Number.MAX_VALUE);
  if (accuracy === undefined && loss === undefined && mae === undefined)
    bad("has no metric (accuracy, loss or mae)");
  return {
    deviceId: deviceId as string,
    round: round as number,
    samples: samples as number,
    ...(accuracy !== undefined ? { accuracy } : {}),
    ...(loss !== undefined ? { loss } : {}),
    ...(mae !== undefined ? { mae } : {}),
  };
}

/**
 * Folds the devices' evaluations of one global model (`round`) into the round record's FleetEvaluation: the
 * sample-weighted mean of each metric over the devices that report it, the spread of the task's main metric
 * (accuracy; MAE for regressions) across devices, each counting once, and the worst decile — the ⌈10%⌉ of devices
 * (at least one) with the lowest accuracy (highest MAE), their sample-weighted metric and ids (q-FFL, Li et al.
 * 2020, ICLR, §5 "worst 10%"). A device counts once (its first evaluation in `evaluations`); evaluations of another
 * round are refused (E_EVAL_INVALID). Undefined when no device evaluated the model. Pure and order-independent
 * apart from which duplicate is kept: the simulator and the aggregation Function both call it.
 */
export function foldEvaluations(
  round: number,
  evaluations: readonly DeviceEvaluation[],
): FleetEvaluation | undefined {
  const byDevice = new Map<string, DeviceEvaluation>();
  for (const e of evaluations) {
    if (e.round !== round)
      fail(
        "E_EVAL_INVALID",
        `evaluation of round ${e.round} from '${e.deviceId}' folded into round ${round}`,
      );
    if (!byDevice.has(e.deviceId)) byDevice.set(e.deviceId, e);
  }
  // Sorted by id: the fold does not depend on arrival order.
  const all = [...byDevice.values()].sort((a, b) =>
    a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0,
  );
  if (all.length === 0) return undefined;
  const weighted = (k: "accuracy" | "loss" | "mae"): number | undefined => {
    let w = 0;
    let s = 0;
    for (const e of all) {
      const m = e[k];
      if (m === undefined || !Number.isFinite(m)) continue;
      w += e.samples;
      s += e.samples * m;
    }
    return w > 0 ? s / w : undefined;
  };
  const accuracy = weighted("accuracy");
  const loss = weighted("loss");
  const mae = weighted("mae");
  const main: "accuracy" | "mae" | undefined =
    accuracy !== undefined ? "accuracy" : mae !== undefined ? "mae" : undefined;
  const fleet: FleetEvaluation = {
    round,
    devices: all.length,
    samples: all.reduce((a, e) => a + e.samples, 0),
    ...(accuracy !== undefined ? { accuracy } : {}),
    ...(loss !== undefined ? { loss } : {}),
    ...(mae !== undefined ? { mae } : {}),
  };
  if (!main) return fleet;
  const rated = all.filter((e) => e[main] !== undefined && Number.isFinite(e[main]));
  const values = rated.map((e) => e[main]!);
  // Worst first: lowest accuracy, highest MAE; ties by device id (sorted above, and the sort is stable).
  const worstFirst = [...rated].sort((a, b) =>
    main === "accuracy" ? a[main]! - b[main]! : b[main]! - a[main]!,
  );
  const k = Math.max(1, Math.ceil(rated.length * WORST_DECILE));
  const worst = worstFirst.slice(0, k);
  const worstSamples = worst.reduce((a, e) => a + e.samples, 0);
  return {
    ...fleet,
    spread: spreadOf(values),
    worstDecile: {
      value: worst.reduce((a, e) => a + e.samples * e[main]!, 0) / worstSamples,
      devices: worst.map((e) => e.deviceId),
    },
  };
}

/** Min, p10, median, p90, max (linear interpolation between order statistics) and population std. */
export function spreadOf(values: readonly number[]): MetricSpread {
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / n;
  return {
    min: Math.min(...values),
    p10: quantile(values, 0.1),
    median: quantile(values, 0.5),
    p90: quantile(values, 0.9),
    max: Math.max(...values),
    std: Math.sqrt(variance),
  };
}
