import { createHash } from "node:crypto";
import { encodeTensor, ErrorFeedback, type CompressionSpec, type EncodeOptions } from "../compress";
import { errorMessage, fail, isFlotillaError } from "../errors";
import { privatizeUpdate } from "../privacy/dp";
import type { GaussianNoise } from "../privacy/mechanism";
import type { DpOrder } from "../protocol/messages";
import type { WeightLayout } from "../tensor/layout";

/**
 * The device-side update pipeline, one implementation for every path an update takes off a device:
 *
 *   1. delta    Δ = w_trained − w_global (in place)                                   takeDelta
 *   1b. bound   scale Δ to ‖Δ‖ ≤ B when the round order has `normBound` (secure        boundDelta
 *               aggregation with a `norm:B+mean` aggregator: the server sees only the sum, so each device
 *               bounds its own update before masking; Sun et al. 2019, docs/robustness.md)
 *   2. DP       clip to ‖Δ‖ ≤ C and add N(0, σ²) as the round order's `dp` says       privatizeDelta
 *               (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et al. 2021: core/privacy/dp.ts)
 *   3. codec    the uplink codec chain (core/compress) with error feedback for sparsifiers
 *               (Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory")      compressUpdate
 *
 * with one seed rule for the codec's stochastic rounding and rand-k draw (codecSeed) and the weight layout's tensor
 * boundaries as the codec's segments (per-tensor scales, `int8:tensor`). Where it runs:
 *   - simulator: core/round/device.ts (DeviceRuntime) runs all three steps, residuals in memory;
 *   - IoT Edge: the trainer module runs steps 1-2 through the same DeviceRuntime (modules/trainer/src/executor.ts)
 *     and the quantizer module runs step 3 (modules/quantizer), residuals in files, segments from its module twin
 *     (docs/iothub-protocol.md).
 * The same update therefore leaves a device as the same bytes on both paths.
 */

/** Step 1: turns the trained weights into the update, in place: trained[i] −= global[i]. Returns `trained`. */
export function takeDelta(trained: Float32Array, global: Float32Array): Float32Array {
  if (trained.length !== global.length)
    fail(
      "E_MODEL_LAYOUT",
      `trained weights have ${trained.length} values, the global model ${global.length}`,
    );
  for (let i = 0; i < trained.length; i++) trained[i] -= global[i];
  return trained;
}

/**
 * Step 1b: norm bounding on the device (the round order's `normBound`; nothing without it): Δ scaled in place to L2
 * norm ≤ bound (Sun et al. 2019, "Can you really backdoor federated learning?"). Returns whether it was scaled.
 * A device that skips this cannot be caught under secure aggregation without zero-knowledge range proofs
 * (docs/robustness.md).
 */
export function boundDelta(delta: Float32Array, bound: number | undefined): boolean {
  if (bound === undefined) return false;
  if (!(bound > 0 && Number.isFinite(bound)))
    fail("E_ROUND_INVALID", `normBound must be a number > 0, got ${bound}`);
  let ss = 0;
  for (let i = 0; i < delta.length; i++) ss += delta[i]! * delta[i]!;
  const norm = Math.sqrt(ss);
  if (!(norm > bound)) return false;
  const k = bound / norm;
  for (let i = 0; i < delta.length; i++) delta[i]! *= k;
  return true;
}

/** Step 2: differential privacy as the round order says (nothing without `dp`); see core/privacy/dp.ts. */
export function privatizeDelta(
  delta: Float32Array,
  dp: DpOrder | undefined,
  noise: GaussianNoise,
): { clipBit?: number } | undefined {
  return dp ? privatizeUpdate(delta, dp, noise) : undefined;
}

/**
 * The seed of an update's codec: the first 4 bytes (little endian) of sha256("<deviceId>/<jobId>/<round>"). One rule
 * for the simulator and the quantizer module, so both send the same bytes for the same update.
 */
export function codecSeed(jobId: string, round: number, deviceId: string): number {
  return createHash("sha256").update(`${deviceId}/${jobId}/${round}`).digest().readUInt32LE(0);
}

/** The codec's segments: the tensor sizes of a weight layout, in layout order. */
export function layoutSegments(layout: WeightLayout): number[] {
  return layout.entries.map((e) => e.size);
}

/** True when the chain's value codec scales per tensor (`int8:tensor`): it needs the layout's segments. */
export function needsSegments(spec: CompressionSpec): boolean {
  return spec.stages.some((s) => s.kind === "int" && s.block === 0);
}

/**
 * Where a device keeps its error-feedback residuals, one per job: in memory (MemoryResidualStore, the simulator) or
 * in files (the quantizer module, which persists each before the update is sent).
 */
export interface ResidualStore {
  /** The job's residual for an update of `length` values: the stored one, or zeros (none, or another length). */
  load(jobId: string, length: number): ErrorFeedback | Promise<ErrorFeedback>;
  /** Called once the residual holds what this update did not deliver, before the update is sent. */
  save(jobId: string, residual: ErrorFeedback): void | Promise<void>;
  /** Forgets the in-memory residual (a compression failed half way); the next load starts from the stored state. */
  discard(jobId: string): void | Promise<void>;
}

/** Residuals in memory, by job; exportable as bytes so a simulator can move a device between worker threads. */
export class MemoryResidualStore implements ResidualStore {
  private readonly residuals = new Map<string, ErrorFeedback>();

  load(jobId: string, length: number): ErrorFeedback {
    let ef = this.residuals.get(jobId);
    if (!ef || ef.residual.length !== length) {
      ef = new ErrorFeedback(length);
      this.residuals.set(jobId, ef);
    }
    return ef;
  }

  save(): void {
    // Already in memory.
  }

  discard(jobId: string): void {
    this.residuals.delete(jobId);
  }

  get size(): number {
    return this.residuals.size;
  }

  /** `u32 idLength, u32 bodyLength, id utf-8, ErrorFeedback.toBytes()` per job; undefined when empty. */
  toBytes(): Uint8Array | undefined {
    if (this.residuals.size === 0) return undefined;
    const parts: Uint8Array[] = [];
    for (const [jobId, ef] of this.residuals) {
      const id = Buffer.from(jobId, "utf8");
      const body = ef.toBytes();
      const head = Buffer.alloc(8);
      head.writeUInt32LE(id.length, 0);
      head.writeUInt32LE(body.length, 4);
      parts.push(head, id, body);
    }
    return Buffer.concat(parts);
  }

  /** Replaces the contents by toBytes() output (undefined: empty). */
  fromBytes(state: Uint8Array | undefined, length: number): void {
    this.residuals.clear();
    if (!state) return;
    const b = Buffer.from(state.buffer, state.byteOffset, state.byteLength);
    for (let o = 0; o + 8 <= b.length;) {
      const idLen = b.readUInt32LE(o);
      const bodyLen = b.readUInt32LE(o + 4);
      const jobId = b.toString("utf8", o + 8, o + 8 + idLen);
      const body = b.subarray(o + 8 + idLen, o + 8 + idLen + bodyLen);
      this.residuals.set(jobId, ErrorFeedback.fromBytes(body, length));
      o += 8 + idLen + bodyLen;
    }
  }
}

/** Who sends the update and what it follows: the codec's seed and envelope header come from it. */
export interface UpdateContext {
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  /** sha256 of the weight layout (written into the envelope). */
  readonly layoutHash: string;
  /** The layout's tensor sizes (layoutSegments); required by per-tensor codecs (needsSegments). */
  readonly segments?: readonly number[];
}

/**
 * Step 3: the update as one envelope. With a sparsifier the job's residual is added first and keeps what was not
 * delivered (ErrorFeedback); it is saved before this returns, so a caller that sends afterwards never sends an
 * update whose residual is not stored (at most once, never twice: see modules/quantizer). Without a sparsifier the
 * delta is encoded as is and no residual is touched. Errors: FlotillaErrors of core/compress (E_COMPRESS_*), and
 * E_COMPRESS_SEGMENTS when a per-tensor codec has no segments or they do not cover the update.
 */
export async function compressUpdate(
  delta: Float32Array,
  spec: CompressionSpec,
  ctx: UpdateContext,
  residuals: ResidualStore,
): Promise<Uint8Array> {
  if (needsSegments(spec)) {
    const sum = ctx.segments?.reduce((a, b) => a + b, 0);
    if (sum !== delta.length)
      fail(
        "E_COMPRESS_SEGMENTS",
        `'${spec.text}' scales per tensor and needs the layout's tensor sizes: ` +
          (ctx.segments ? `they sum to ${sum}, the update has ${delta.length} values` : "none were given"),
      );
  }
  const opts: EncodeOptions = {
    layoutHash: ctx.layoutHash,
    seed: codecSeed(ctx.jobId, ctx.round, ctx.deviceId),
    ...(ctx.segments ? { segments: ctx.segments } : {}),
  };
  if (!spec.sparse) return encodeTensor(delta, spec, opts);
  const ef = await residuals.load(ctx.jobId, delta.length);
  let bytes: Uint8Array;
  try {
    bytes = ef.compress(delta, spec, opts);
  } catch (e) {
    // ErrorFeedback leaves the residual intact when encoding throws, but a half-updated one must never be reused.
    await residuals.discard(ctx.jobId);
    if (isFlotillaError(e)) throw e;
    return fail("E_COMPRESS_INTERNAL", `error-feedback compression failed: ${errorMessage(e)}`, { cause: e });
  }
  await residuals.save(ctx.jobId, ef);
  return bytes;
}
