/**
 * intB codecs: unbiased stochastic uniform quantization to B = 8, 4 or 2 bits.
 *
 * Each block (a run of `block` values, or one tensor of the layout in per-tensor mode) stores its min and max as
 * float32; a value x in [min, max] becomes the code floor(t + u), t = (x - min) (2^B - 1) / (max - min), u ~ U[0, 1),
 * so it rounds up with probability frac(t) and E[code] = t: the decoded value min + code (max - min) / (2^B - 1) is
 * an unbiased estimate of x, off by less than one step (max - min) / (2^B - 1). This is the stochastic rounding of
 * QSGD / TernGrad (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and
 * Encoding"; Wen et al. 2017, "TernGrad") with the min-max ("stochastic k-level") scale of Suresh et al. 2017,
 * "Distributed Mean Estimation with Limited Communication" (section 2). A block with min = max decodes exactly.
 *
 * Non-finite input: a block holding NaN or +-Infinity is sent as min = max = NaN and decodes to NaN throughout, so
 * the receiver's finiteness check rejects the update as it would a raw one (the codec neither throws nor hides it).
 *
 * Wire form of m values in nb blocks: nb x (float32 min, float32 max) little endian, then the m codes packed
 * LSB-first: one byte per code (int8), two per byte (int4: value 2j in the low nibble of byte j), four per byte
 * (int2: value 4j in bits 0-1 of byte j). Blocks do not restart the packing.
 */
import { STREAM_ROUNDING, xorshiftState } from "./prng";

/** 2^-32 (a local constant: an imported one is a property load per use in the CommonJS output). */
const U32_TO_UNIT = 2.3283064365386963e-10;

/** Number of scale blocks for m values: ceil(m / block), or one per segment in per-tensor mode (block 0). */
export function intBlockCount(m: number, block: number, segments: readonly number[] | null): number {
  return block > 0 ? Math.ceil(m / block) : (segments?.length ?? 1);
}

export function intSize(bits: number, m: number, blocks: number): number {
  return 8 * blocks + Math.ceil((m * bits) / 8);
}

/** log2(values per byte) and log2(bits) for 8, 4, 2 bits. */
function packing(bits: number): { perByteLog: number; bitsLog: number; mask: number } {
  const bitsLog = bits === 8 ? 3 : bits === 4 ? 2 : 1;
  const perByteLog = 3 - bitsLog;
  return { perByteLog, bitsLog, mask: (1 << perByteLog) - 1 };
}

/**
 * Quantizes src[0 .. m) into dst at `off` (dst must be zeroed there). `segments` (per-tensor mode only) sum to m.
 */
export function encodeInt(
  src: Float32Array,
  m: number,
  bits: 8 | 4 | 2,
  block: number,
  segments: readonly number[] | null,
  dst: Uint8Array,
  off: number,
  seed: number,
): void {
  const nb = intBlockCount(m, block, segments);
  const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  const codes = off + 8 * nb;
  const L = (1 << bits) - 1;
  const { perByteLog, bitsLog, mask } = packing(bits);
  let s = xorshiftState(seed, STREAM_ROUNDING);
  let start = 0;
  for (let b = 0; b < nb; b++) {
    const len = block > 0 ? Math.min(block, m - start) : segments ? segments[b] : m;
    const end = start + len;
    let mn = Infinity;
    let mx = -Infinity;
    let nan = false;
    for (let i = start; i < end; i++) {
      const v = src[i];
      if (v < mn) mn = v;
      if (v > mx) mx = v;
      if (v !== v) nan = true;
    }
    if (len === 0) mn = mx = 0;
    else if (nan || mn === -Infinity || mx === Infinity) mn = mx = NaN;
    else if (mx > mn) {
      const inv = L / (mx - mn);
      if (bits === 8) {
        for (let i = start; i < end; i++) {
          s ^= s << 13;
          s ^= s >>> 17;
          s ^= s << 5;
          let c = ((src[i] - mn) * inv + (s >>> 0) * U32_TO_UNIT) | 0;
          if (c > L) c = L;
          dst[codes + i] = c;
        }
      } else {
        // codes gather in a register and reach memory a byte at a time (or-ed: a byte may span two blocks)
        let byte = 0;
        for (let i = start; i < end; i++) {
          s ^= s << 13;
          s ^= s >>> 17;
          s ^= s << 5;
          let c = ((src[i] - mn) * inv + (s >>> 0) * U32_TO_UNIT) | 0;
          if (c > L) c = L;
          byte |= c << ((i & mask) << bitsLog);
          if ((i & mask) === mask) {
            dst[codes + (i >>> perByteLog)] |= byte;
            byte = 0;
          }
        }
        if (byte !== 0) dst[codes + ((end - 1) >>> perByteLog)] |= byte;
      }
    } // else min = max: every code is 0 and decodes exactly
    dv.setFloat32(off + 8 * b, mn, true);
    dv.setFloat32(off + 8 * b + 4, mx, true);
    start = end;
  }
}

/** Decodes m values at src[off ..) into out[at .. at + m). */
export function decodeInt(
  src: Uint8Array,
  off: number,
  m: number,
  bits: 8 | 4 | 2,
  block: number,
  segments: readonly number[] | null,
  out: Float32Array,
  at: number,
): void {
  const nb = intBlockCount(m, block, segments);
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const codes = off + 8 * nb;
  const L = (1 << bits) - 1;
  const { perByteLog, bitsLog, mask } = packing(bits);
  const lut = new Float32Array(L + 1); // int4 / int2: code -> value, per block (same float32 rounding)
  let start = 0;
  for (let b = 0; b < nb; b++) {
    const len = block > 0 ? Math.min(block, m - start) : segments ? segments[b] : m;
    const end = start + len;
    const mn = dv.getFloat32(off + 8 * b, true);
    const step = (dv.getFloat32(off + 8 * b + 4, true) - mn) / L;
    if (bits === 8) {
      for (let i = start; i < end; i++) out[at + i] = mn + src[codes + i] * step;
    } else {
      for (let c = 0; c <= L; c++) lut[c] = mn + c * step;
      let i = start;
      // values before the first whole byte of the block, whole bytes, then the tail
      for (; i < end && (i & mask) !== 0; i++) {
        out[at + i] = lut[(src[codes + (i >>> perByteLog)] >>> ((i & mask) << bitsLog)) & L];
      }
      if (bits === 4) {
        for (; i + 1 < end; i += 2) {
          const byte = src[codes + (i >>> 1)];
          out[at + i] = lut[byte & 15];
          out[at + i + 1] = lut[byte >>> 4];
        }
      } else {
        for (; i + 3 < end; i += 4) {
          const byte = src[codes + (i >>> 2)];
          out[at + i] = lut[byte & 3];
          out[at + i + 1] = lut[(byte >>> 2) & 3];
          out[at + i + 2] = lut[(byte >>> 4) & 3];
          out[at + i + 3] = lut[byte >>> 6];
        }
      }
      for (; i < end; i++) {
        out[at + i] = lut[(src[codes + (i >>> perByteLog)] >>> ((i & mask) << bitsLog)) & L];
      }
    }
    start = end;
  }
}
