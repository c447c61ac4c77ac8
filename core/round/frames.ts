/**
 * Frames the round drivers exchange with devices, built and checked in one place for the synchronous driver
 * (core/round/server.ts) and the asynchronous one (core/round/async-server.ts): the train order, and the first
 * check of whatever a device sends up.
 */
import type { CompressionSpec } from "../compress";
import type { EncodedTensor } from "../compress/api";
import { FlotillaError } from "../errors";
import {
  decodeMessage,
  encodeMessage,
  type DeviceMessage,
  type DpOrder,
  type SecAggFrame,
} from "../protocol/messages";
import type { FitConfig } from "../strategies/strategy";

export interface TrainFrameOptions {
  readonly jobId: string;
  /** The round (synchronous) or the base version the device trains from (asynchronous). */
  readonly round: number;
  readonly modelHash: string;
  readonly layoutHash: string;
  readonly config: FitConfig;
  /** ms in the driver's clock (0: none). */
  readonly deadline: number;
  readonly weights: Float32Array | EncodedTensor;
  /** The uplink codec chain (sent only when lossy). */
  readonly uplink?: CompressionSpec;
  readonly secagg?: true;
  readonly dp?: DpOrder;
  /** Device-side norm bound (secure rounds of a `norm:C+mean` job). */
  readonly normBound?: number;
}

/** A device's train order as a frame. */
export function trainFrame(o: TrainFrameOptions): Uint8Array {
  return encodeMessage({
    type: "train",
    jobId: o.jobId,
    round: o.round,
    modelHash: o.modelHash,
    layoutHash: o.layoutHash,
    config: o.config,
    deadline: o.deadline,
    weights: o.weights,
    ...(o.uplink && !o.uplink.lossless ? { uplink: o.uplink.text } : {}),
    ...(o.secagg ? { secagg: o.secagg } : {}),
    ...(o.dp ? { dp: o.dp } : {}),
    ...(o.normBound !== undefined ? { normBound: o.normBound } : {}),
  });
}

/**
 * Decodes a frame a device sent up: a result or a failure (and, when `secagg` is set, a secure-aggregation
 * frame). A malformed frame, or a server message, throws (E_PROTO_*): the driver logs and counts it.
 */
export function decodeDeviceFrame(frame: Uint8Array, secagg: true): DeviceMessage;
export function decodeDeviceFrame(frame: Uint8Array, secagg?: false): Exclude<DeviceMessage, SecAggFrame>;
export function decodeDeviceFrame(frame: Uint8Array, secagg = false): DeviceMessage {
  const m = decodeMessage(frame);
  if (m.type === "train" || (m.type === "secagg" && m.direction === "down"))
    throw new FlotillaError("E_PROTO_TYPE", `device sent a server message ('${m.type}')`);
  if (m.type === "secagg" && !secagg)
    throw new FlotillaError("E_PROTO_TYPE", "secure aggregation frame in a round without it");
  if (m.type === "evaluation")
    throw new FlotillaError("E_PROTO_TYPE", "an evaluation frame is not a round's update");
  return m;
}
