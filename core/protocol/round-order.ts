import { validateSpec, type ModelSpec } from "../engine/model-spec";
import { fail } from "../errors";
import type { FitConfig } from "../strategies/strategy";
import type { DpOrder } from "./messages";

/**
 * The secure-aggregation part of a round order (docs/iothub-protocol.md, "Secure aggregation"): present on the
 * rounds of a secure job; the trainer then keeps its update and answers with a signed key advertisement.
 */
export interface SecAggOrder {
  /** Deadline of each protocol step after the advertisements, seconds (the trainer keeps its session that long). */
  readonly stepSeconds: number;
  /** The job's parameter overrides (the round's exact SecAggParams come with the ShareKeysRequest). */
  readonly neighbours?: number;
  readonly threshold?: number;
  readonly clipRange?: number;
}

/**
 * What the cloud tells a trainer to do for one round: the trainer module twin's desired `flotilla` and the
 * `startRound` direct-method payload (docs/iothub-protocol.md).
 */
export interface RoundOrder {
  readonly jobId: string;
  readonly round: number;
  /**
   * Blob URL (with a read SAS) of the global weights: raw float32 LE, or (modelEncoding "flz") one compressed
   * envelope (core/compress) when the job compresses the downlink.
   */
  readonly modelUrl: string;
  /** sha256 of the bytes at modelUrl. */
  readonly modelSha256: string;
  readonly modelEncoding?: "flz";
  /** The same model as ONNX (fp32 and int8) for on-device inference with onnxruntime, when published. */
  readonly onnx?: {
    readonly url: string;
    readonly sha256: string;
    readonly int8Url?: string;
    readonly int8Sha256?: string;
  };
  readonly layoutHash: string;
  readonly modelSpec: ModelSpec;
  readonly config: FitConfig;
  /** ms since epoch; 0 = none. */
  readonly deadline: number;
  /** Secure aggregation is on for this round. */
  readonly secagg?: SecAggOrder;
  /**
   * Differential privacy (core/privacy/dp.ts): what the trainer does to its update before it leaves the device
   * (clip to `clip`, add N(0, noiseStd²), report the noised clip indicator when `clipBitNoiseStd` is present).
   * Absent when the job has no DP or the cloud clips and noises itself (central placement without secure
   * aggregation).
   */
  readonly dp?: DpOrder;
  /**
   * Secure rounds of a job whose aggregator is `norm:C+mean`: the trainer scales its update to L2 norm ≤ C before
   * masking (core/round/update-pipeline.ts boundDelta); the cloud sees only the sum and cannot do it itself.
   */
  readonly normBound?: number;
}

/** The evaluate-only order's version (`v`); a trainer refuses any other with E_EVAL_ORDER_VERSION. */
export const EVALUATE_ORDER_VERSION = 1;

/**
 * An evaluate-only order (docs/evaluation.md, docs/iothub-protocol.md): evaluate the global model `round`
 * published (downloaded as ONNX, as for a round order) on the device's held-out data and send one `evaluation`
 * frame; no training, no update. The cloud writes it, when a synchronous job completes, into the trainer module
 * twin's desired `flotillaEvaluate` (beside the round order `flotilla`, which it leaves alone) for the last
 * round's model, which no round order carries.
 */
export interface EvaluateOrder {
  readonly v: typeof EVALUATE_ORDER_VERSION;
  readonly jobId: string;
  /** The round whose published model is evaluated (≥ 1: the initial model has no round record). */
  readonly round: number;
  /** The model as ONNX (fp32, and int8 when published), as in a round order. */
  readonly onnx: NonNullable<RoundOrder["onnx"]>;
  /** The job's model (the held-out data is read with its input shape). */
  readonly modelSpec: ModelSpec;
}

const MAX_ORDER_ROUND = 2 ** 31 - 1;

/**
 * Checks the trainer twin's desired `flotillaEvaluate`: undefined when there is none (`null`, absent, or no
 * `jobId`: twin patches clear it that way). Keys a twin patch cleared arrive as null and read as absent. Throws
 * E_EVAL_ORDER_VERSION for a `v` other than 1 and E_EVAL_ORDER_INVALID naming the first bad field: a jobId of
 * 1–128 UTF-8 bytes without control characters, a round 1 … 2^31−1, `onnx` with an http(s) `url` and a 64-hex
 * `sha256` (`int8Url` and `int8Sha256` both or neither), a valid model spec.
 */
export function parseEvaluateOrder(value: unknown): EvaluateOrder | undefined {
  if (value === null || value === undefined) return undefined;
  const bad = (what: string): never => fail("E_EVAL_ORDER_INVALID", `evaluate order: ${what}`);
  if (typeof value !== "object" || Array.isArray(value)) return bad("flotillaEvaluate must be an object");
  const o = value as Record<string, unknown>;
  const own = (x: Record<string, unknown>, k: string): unknown =>
    Object.hasOwn(x, k) && x[k] !== null ? x[k] : undefined;
  const jobId = own(o, "jobId");
  if (jobId === undefined) return undefined;
  const v = own(o, "v");
  if (v !== EVALUATE_ORDER_VERSION)
    fail(
      "E_EVAL_ORDER_VERSION",
      `evaluate order: version ${JSON.stringify(v ?? null)} (this trainer knows ${EVALUATE_ORDER_VERSION})`,
    );
  if (
    typeof jobId !== "string" ||
    jobId.length === 0 ||
    Buffer.byteLength(jobId, "utf8") > 128 ||
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u001f\u007f]/.test(jobId)
  )
    bad(`jobId ${JSON.stringify(jobId)} is not a job id`);
  const round = own(o, "round");
  if (typeof round !== "number" || !Number.isInteger(round) || round < 1 || round > MAX_ORDER_ROUND)
    bad(`round ${String(round)} is not an integer 1 … 2^31−1`);
  const x = own(o, "onnx");
  if (typeof x !== "object" || x === undefined || Array.isArray(x)) return bad("onnx must be an object");
  const onnx = x as Record<string, unknown>;
  const url = (k: string): string | undefined => {
    const u = own(onnx, k);
    if (u === undefined) return undefined;
    if (typeof u !== "string" || !/^https?:\/\//i.test(u)) bad(`onnx.${k} must be an http(s) URL`);
    return u as string;
  };
  const hex = (k: string): string | undefined => {
    const h = own(onnx, k);
    if (h === undefined) return undefined;
    if (typeof h !== "string" || !/^[0-9a-f]{64}$/i.test(h)) bad(`onnx.${k} must be 64 hex digits`);
    return (h as string).toLowerCase();
  };
  const fp32Url = url("url");
  const fp32Sha = hex("sha256");
  if (fp32Url === undefined || fp32Sha === undefined) bad("onnx must have a url and a sha256");
  const int8Url = url("int8Url");
  const int8Sha256 = hex("int8Sha256");
  if ((int8Url === undefined) !== (int8Sha256 === undefined))
    bad("onnx.int8Url and onnx.int8Sha256 go together");
  let modelSpec: ModelSpec;
  try {
    const spec = own(o, "modelSpec");
    modelSpec = validateSpec(
      typeof spec === "object" && spec !== null && !Array.isArray(spec)
        ? Object.fromEntries(Object.entries(spec).filter(([, s]) => s !== null))
        : spec,
    );
  } catch (e) {
    return bad(`modelSpec: ${e instanceof Error ? e.message : String(e)}`);
  }
  return {
    v: EVALUATE_ORDER_VERSION,
    jobId: jobId as string,
    round: round as number,
    onnx: {
      url: fp32Url!,
      sha256: fp32Sha!,
      ...(int8Url !== undefined ? { int8Url, int8Sha256: int8Sha256! } : {}),
    },
    modelSpec,
  };
}
