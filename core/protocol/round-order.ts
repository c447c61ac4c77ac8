import type { ModelSpec } from "../engine/model-spec";
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
}
