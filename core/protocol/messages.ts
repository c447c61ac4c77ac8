import type { EncodedTensor } from "../compress/api";
import type { SecAggStep } from "../secagg/types";
import { fail } from "../errors";
import type { FitConfig } from "../strategies/strategy";
import { checkDeviceEvaluation, type DeviceEvaluation } from "../round/evaluation";

/**
 * Round protocol messages. Every message is one binary frame so that tensors never go through JSON:
 *
 *   offset 0  magic "FLT1" (4 bytes)
 *   offset 4  u32 LE header length H
 *   offset 8  H bytes of UTF-8 JSON header (with `type`, and `payloadLength` in bytes)
 *   then zero padding to a multiple of 4, then the payload (weights or a delta): float32 LE values, or, when the
 *   header has `encoding: "flz"`, one compressed envelope (core/compress/envelope.ts) of any length
 *
 * The same frames cross the in-memory transport of the simulation and, in the IoT Hub transport, are carried
 * (chunked) in device-to-cloud messages and blobs.
 */
export const MAGIC = 0x31544c46; // "FLT1" read as u32 LE

export interface TrainRequest {
  readonly type: "train";
  readonly jobId: string;
  readonly round: number;
  /** sha256 of the global weights the device must start from. */
  readonly modelHash: string;
  readonly layoutHash: string;
  readonly config: FitConfig;
  /** Wall-clock deadline (ms since epoch) by which the result must arrive; 0 = none. */
  readonly deadline: number;
  /**
   * The global weights, raw or compressed (downlink compression). `modelHash` is the sha256 of what is carried:
   * the raw float32 bytes, or the envelope's bytes.
   */
  readonly weights: Float32Array | EncodedTensor;
  /** Uplink codec chain the device applies to its delta (core/compress spec text); absent = raw float32. */
  readonly uplink?: string;
  /**
   * Secure aggregation is on for this round: after training the device keeps its update and answers with its
   * key advertisement (a `secagg` frame, step `advertise`) instead of a result.
   */
  readonly secagg?: true;
  /**
   * Differential privacy (core/privacy/dp.ts): the device clips its update to L2 norm `clip` and adds N(0, noiseStd²)
   * before anything leaves it (distributed and local placements, or central with secure aggregation).
   */
  readonly dp?: DpOrder;
  /**
   * Norm bounding on the device (secure aggregation with a `norm:C+mean` aggregator, docs/robustness.md): the
   * device scales its update to L2 norm ≤ `normBound` before masking (core/round/update-pipeline.ts boundDelta).
   */
  readonly normBound?: number;
}

/** A device's differential-privacy instructions for one round. */
export interface DpOrder {
  /** L2 clip norm C. */
  readonly clip: number;
  /** Std of the Gaussian noise the device adds to its clipped update (0: the server adds the noise). */
  readonly noiseStd: number;
  /**
   * Adaptive clipping: present = report the centred clip indicator b − ½ plus N(0, clipBitNoiseStd²), in the
   * result's `dpClipBit` or, with secure aggregation, as one extra value after the update in the masked vector.
   */
  readonly clipBitNoiseStd?: number;
}

export interface TrainResultMessage {
  readonly type: "result";
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  readonly layoutHash: string;
  readonly numSamples: number;
  readonly metrics: { readonly loss: number; readonly accuracy: number; readonly trainMs: number };
  /** clientWeights − globalWeights, raw or compressed (decoded by the aggregator inside its streaming sum). */
  readonly delta: Float32Array | EncodedTensor;
  /** Adaptive clipping under DP: the (noised) centred clip indicator, when the round's `dp` order asked for it. */
  readonly dpClipBit?: number;
}

export interface TrainFailureMessage {
  readonly type: "failure";
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  readonly code: string;
  readonly reason: string;
}

/**
 * One step of secure aggregation (core/secagg/types.ts), either way. `body` is the step's JSON message
 * (KeyAdvertisement, ShareKeysRequest, ...); the masked vector of the device's `mask` answer travels as the
 * binary payload (`masked`, u32 little-endian) so it never goes through JSON.
 */
export interface SecAggFrame {
  readonly type: "secagg";
  readonly step: SecAggStep;
  /** "down": server to device; "up": device to server. */
  readonly direction: "down" | "up";
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  readonly body: unknown;
  /** Up, step `mask`: the masked fixed-point update. */
  readonly masked?: Uint32Array;
  /** Up, step `mask`: the device's training summary (sent in the clear, as Flower's SecAgg+ does). */
  readonly numSamples?: number;
  readonly metrics?: { readonly loss: number; readonly accuracy: number; readonly trainMs: number };
}

/** The evaluation frame versions this code reads and writes. */
export const EVALUATION_VERSION = 1;
/** Largest evaluation frame a receiver takes: always one small chunk (ids and a few numbers). */
export const MAX_EVALUATION_FRAME = 4096;
/**
 * Evaluation frames travel with the update id `eval:` + the first 32 hex digits of their sha256, so the
 * update-queue can tell them apart from updates: the cloud's `openRounds` drops a closed round's queued updates,
 * never an evaluation (which is always of a closed round's model; docs/evaluation.md).
 */
export const EVALUATION_UPDATE_ID_PREFIX = "eval:";
export function evaluationUpdateId(sha256: string): string {
  return `${EVALUATION_UPDATE_ID_PREFIX}${sha256.slice(0, 32)}`;
}

/**
 * A device's evaluation of a published global model on its held-out data (docs/evaluation.md), device → cloud
 * through the same pipeline as updates (trainer → quantizer, passed through → update-queue → D2C), so an
 * evaluation made offline is kept and sent like an update. `round` is the evaluated model's round (the model
 * published after that round; the device got it as the starting model of round + 1). Header only, no payload;
 * versioned (`v`), checked on decoding (E_EVAL_VERSION, E_EVAL_INVALID).
 */
export interface EvaluationFrame extends DeviceEvaluation {
  readonly type: "evaluation";
  readonly v: typeof EVALUATION_VERSION;
  readonly jobId: string;
  /** How the device ran the model (the trainer: onnxruntime, int8 by default). */
  readonly precision?: "int8" | "fp32";
}

export type ServerMessage = TrainRequest | SecAggFrame;
/** A round's device messages (the round engines take these; an evaluation is about a model, not a round). */
export type DeviceMessage = TrainResultMessage | TrainFailureMessage | SecAggFrame;
export type Message = ServerMessage | DeviceMessage | EvaluationFrame;

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

export function encodeMessage(msg: Message): Uint8Array {
  const { payload: tensor, header } = splitPayload(msg);
  const encoded = tensor !== null && !(tensor instanceof Float32Array) && !(tensor instanceof Uint32Array);
  const payload = tensor === null ? null : encoded ? tensor.bytes : tensor;
  const headerBytes = enc.encode(
    JSON.stringify({
      ...header,
      ...(encoded ? { encoding: "flz" } : tensor instanceof Uint32Array ? { encoding: "u32" } : {}),
      payloadLength: payload ? payload.byteLength : 0,
    }),
  );
  const payloadOffset = align4(8 + headerBytes.length);
  const out = new Uint8Array(payloadOffset + (payload ? payload.byteLength : 0));
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint32(4, headerBytes.length, true);
  out.set(headerBytes, 8);
  if (payload) out.set(new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength), payloadOffset);
  return out;
}

/**
 * Decodes a frame. The payload is a Float32Array view into `bytes` when aligned (no copy), so the aggregator can
 * stream it straight into its accumulator. Malformed frames throw FlotillaError E_PROTO_* with one line.
 */
export function decodeMessage(bytes: Uint8Array): Message {
  if (bytes.byteLength < 8)
    fail("E_PROTO_TRUNCATED", `message of ${bytes.byteLength} bytes is shorter than a header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0, true) !== MAGIC) fail("E_PROTO_MAGIC", "message does not start with the FLT1 magic");
  const headerLength = view.getUint32(4, true);
  if (8 + headerLength > bytes.byteLength) fail("E_PROTO_TRUNCATED", "message header is truncated");
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(dec.decode(bytes.subarray(8, 8 + headerLength))) as Record<string, unknown>;
  } catch {
    return fail("E_PROTO_HEADER", "message header is not valid UTF-8 JSON");
  }
  if (typeof header !== "object" || header === null)
    fail("E_PROTO_HEADER", "message header is not a JSON object");
  const payloadLength = Number(header.payloadLength ?? 0);
  const payloadOffset = align4(8 + headerLength);
  const encoding = header.encoding;
  if (encoding !== undefined && encoding !== "flz" && encoding !== "u32")
    fail("E_PROTO_HEADER", `message payload encoding '${String(encoding)}' is unknown`);
  const words = !encoding || encoding === "u32";
  if (!Number.isInteger(payloadLength) || payloadLength < 0 || (words && payloadLength % 4 !== 0)) {
    fail("E_PROTO_HEADER", `message payloadLength ${String(header.payloadLength)} is invalid`);
  }
  if (payloadOffset + payloadLength !== bytes.byteLength) {
    fail(
      "E_PROTO_TRUNCATED",
      `message payload has ${bytes.byteLength - payloadOffset} bytes, header says ${payloadLength}`,
    );
  }
  delete header.payloadLength;
  delete header.encoding;
  if (header.type === "secagg") {
    requireFields(header, ["step", "direction", "jobId", "round", "deviceId", "body"]);
    if (encoding !== undefined && encoding !== "u32")
      fail("E_PROTO_HEADER", "a secagg frame carries only a u32 payload");
    if (!["advertise", "share", "mask", "unmask"].includes(String(header.step)))
      fail("E_PROTO_HEADER", `unknown secagg step '${String(header.step)}'`);
    if (header.direction !== "up" && header.direction !== "down")
      fail("E_PROTO_HEADER", `secagg direction must be 'up' or 'down', got '${String(header.direction)}'`);
    const frame = header as unknown as SecAggFrame;
    return encoding === "u32"
      ? { ...frame, masked: u32View(bytes, payloadOffset, payloadLength / 4) }
      : frame;
  }
  if (encoding === "u32")
    fail("E_PROTO_HEADER", `a '${String(header.type)}' message cannot carry a u32 payload`);
  const payload: Float32Array | EncodedTensor = encoding
    ? { encoding: "flz", bytes: bytes.subarray(payloadOffset, payloadOffset + payloadLength) }
    : floatView(bytes, payloadOffset, payloadLength / 4);
  switch (header.type) {
    case "train":
      requireFields(header, ["jobId", "round", "modelHash", "layoutHash", "config", "deadline"]);
      return { ...(header as unknown as Omit<TrainRequest, "weights">), weights: payload };
    case "result":
      requireFields(header, ["jobId", "round", "deviceId", "layoutHash", "numSamples", "metrics"]);
      return { ...(header as unknown as Omit<TrainResultMessage, "delta">), delta: payload };
    case "failure":
      requireFields(header, ["jobId", "round", "deviceId", "code", "reason"]);
      return header as unknown as TrainFailureMessage;
    case "evaluation":
      return decodeEvaluation(header, payloadLength, encoding);
    default:
      return fail("E_PROTO_TYPE", `unknown message type '${String(header.type)}'`);
  }
}

function splitPayload(msg: Message): {
  header: Record<string, unknown>;
  payload: Float32Array | Uint32Array | EncodedTensor | null;
} {
  switch (msg.type) {
    case "secagg": {
      const { masked, ...header } = msg;
      return { header, payload: masked ?? null };
    }
    case "train": {
      const { weights, ...header } = msg;
      return { header, payload: weights };
    }
    case "result": {
      const { delta, ...header } = msg;
      return { header, payload: delta };
    }
    default:
      return { header: { ...msg }, payload: null };
  }
}

function decodeEvaluation(
  header: Record<string, unknown>,
  payloadLength: number,
  encoding: unknown,
): EvaluationFrame {
  if (header.v !== EVALUATION_VERSION)
    fail(
      "E_EVAL_VERSION",
      `evaluation frame version ${String(header.v)} (this code reads ${EVALUATION_VERSION})`,
    );
  if (payloadLength !== 0 || encoding !== undefined)
    fail("E_EVAL_INVALID", "an evaluation frame has no payload");
  requireFields(header, ["jobId", "round", "deviceId", "samples"]);
  if (typeof header.jobId !== "string" || header.jobId.length === 0)
    fail("E_EVAL_INVALID", "evaluation jobId is not a non-empty string");
  const precision = header.precision;
  if (precision !== undefined && precision !== "int8" && precision !== "fp32")
    fail("E_EVAL_INVALID", `evaluation precision '${String(precision)}' is not int8 or fp32`);
  const e = checkDeviceEvaluation(header);
  return {
    type: "evaluation",
    v: EVALUATION_VERSION,
    jobId: header.jobId,
    ...e,
    ...(precision !== undefined ? { precision } : {}),
  };
}

function requireFields(h: Record<string, unknown>, names: string[]): void {
  for (const n of names) {
    if (h[n] === undefined || h[n] === null)
      fail("E_PROTO_HEADER", `'${String(h.type)}' message lacks '${n}'`);
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function u32View(bytes: Uint8Array, offset: number, length: number): Uint32Array {
  const abs = bytes.byteOffset + offset;
  if (abs % 4 === 0) return new Uint32Array(bytes.buffer, abs, length);
  const copy = new Uint8Array(length * 4);
  copy.set(bytes.subarray(offset, offset + length * 4));
  return new Uint32Array(copy.buffer);
}

function floatView(bytes: Uint8Array, offset: number, length: number): Float32Array {
  const abs = bytes.byteOffset + offset;
  if (abs % 4 === 0) return new Float32Array(bytes.buffer, abs, length);
  // Copy into a fresh buffer (a Node Buffer's slice() would be a view into its shared pool).
  const copy = new Uint8Array(length * 4);
  copy.set(bytes.subarray(offset, offset + length * 4));
  return new Float32Array(copy.buffer);
}
