import type { ModelSpec } from "../engine/model-spec";
import type { FitConfig } from "../strategies/strategy";

/**
 * What the cloud tells a trainer to do for one round: the trainer module twin's desired `flotilla` and the
 * `startRound` direct-method payload (docs/iothub-protocol.md).
 */
export interface RoundOrder {
  readonly jobId: string;
  readonly round: number;
  /** Blob URL (with a read SAS) of the global weights as raw float32 LE. */
  readonly modelUrl: string;
  readonly modelSha256: string;
  readonly layoutHash: string;
  readonly modelSpec: ModelSpec;
  readonly config: FitConfig;
  /** ms since epoch; 0 = none. */
  readonly deadline: number;
}
