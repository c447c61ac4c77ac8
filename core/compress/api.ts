/**
 * Public contract of the update codecs (issue 4). Implementation: core/compress/*.ts. Other code imports only
 * from "core/compress" (index.ts), which re-exports these types and the functions below.
 *
 * A compression spec is a chain joined by "+": at most one sparsifier first (topk:F, randk:F), then at most one
 * value codec (fp16, int8, int4, int2, qsgd:LEVELS). "none" = raw float32. Examples: "int8", "topk:0.01+int8",
 * "randk:0.05+fp16", "qsgd:16".
 */
export type CodecStage =
  | { readonly kind: "fp16" }
  /** Unbiased stochastic uniform quantization to `bits`; scale per block of `block` values, or per tensor (0). */
  | { readonly kind: "int"; readonly bits: 8 | 4 | 2; readonly block: number }
  /** QSGD (Alistarh et al. 2017): per-bucket L2 norm, sign, stochastic level in 0..levels. */
  | { readonly kind: "qsgd"; readonly levels: number; readonly bucket: number }
  | { readonly kind: "topk"; readonly fraction: number }
  | { readonly kind: "randk"; readonly fraction: number };

export interface CompressionSpec {
  readonly stages: readonly CodecStage[];
  /** Canonical text form, e.g. "topk:0.01+int8" ("none" for no stage). */
  readonly text: string;
  /** True when the chain has a sparsifier: devices then keep an error-feedback residual. */
  readonly sparse: boolean;
  /** True when the chain is lossless ("none"). */
  readonly lossless: boolean;
}

export interface EncodeOptions {
  /** sha256 hex of the weight layout the vector follows (written into the envelope). */
  readonly layoutHash: string;
  /** Tensor sizes in layout order, for per-tensor scales (int with block 0); default: one tensor. */
  readonly segments?: readonly number[];
  /** Seed of the stochastic rounding and of randk's index draw. */
  readonly seed: number;
}

/** What an envelope's header says (read and checked without decoding the payload). */
export interface EnvelopeInfo {
  readonly version: number;
  readonly spec: CompressionSpec;
  readonly layoutHash: string;
  /** Number of float32 values the payload decodes to. */
  readonly length: number;
  /** Total envelope bytes. */
  readonly byteLength: number;
}

/** A tensor carried as an envelope (see envelope.ts) instead of raw float32; decoded where it is consumed. */
export interface EncodedTensor {
  readonly encoding: "flz";
  readonly bytes: Uint8Array;
}

export function isEncoded(x: Float32Array | EncodedTensor): x is EncodedTensor {
  return !(x instanceof Float32Array);
}
