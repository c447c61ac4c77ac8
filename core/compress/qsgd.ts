/**
 * qsgd:s — QSGD (Alistarh, Grubic, Li, Tomioka & Vojnovic 2017, "QSGD: Communication-Efficient SGD via Gradient
 * Quantization and Encoding", section 3.1): each bucket of `bucket` values v is sent as its L2 norm ||v|| and, per
 * value, sign(v_i) and a level l_i in 0..s drawn so that l_i = floor(t) + Bernoulli(frac(t)), t = s |v_i| / ||v||.
 * E[l_i] = t, so the decoded sign(v_i) ||v|| l_i / s is unbiased, and within ||v|| / s of v_i.
 *
 * The norm is sent as float32 rounded up (never below the true norm), and t is computed from that float32 norm,
 * so t <= s always and unbiasedness holds for the value the decoder sees. Instead of the paper's Elias coding,
 * codes are fixed width: 1 sign bit + ceil(log2(s + 1)) level bits (2 to 8 bits per value).
 *
 * Non-finite input (or a norm beyond float32 range) makes the bucket's norm NaN: it decodes to NaN, for the
 * receiver's finiteness check to reject, as a raw update would be.
 *
 * Wire form of m values in nb = ceil(m / bucket) buckets: nb float32 norms little endian, then the m codes
 * (level << 1 | sign), each `width` bits, packed LSB-first into a continuous bit stream (last byte zero-padded).
 */
import { STREAM_ROUNDING, xorshiftState } from "./prng";

/** 2^-32 (a local constant: an imported one is a property load per use in the CommonJS output). */
const U32_TO_UNIT = 2.3283064365386963e-10;

export function qsgdWidth(levels: number): number {
  return 1 + (32 - Math.clz32(levels));
}

export function qsgdSize(levels: number, bucket: number, m: number): number {
  return 4 * Math.ceil(m / bucket) + Math.ceil((m * qsgdWidth(levels)) / 8);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Smallest float32 >= x (x >= 0 and finite); Infinity when x is beyond float32 range. */
function roundUpF32(x: number): number {
  f32[0] = x;
  if (f32[0] >= x) return f32[0];
  u32[0]++;
  return f32[0];
}

export function encodeQsgd(
  src: Float32Array,
  m: number,
  levels: number,
  bucket: number,
  dst: Uint8Array,
  off: number,
  seed: number,
): void {
  const nb = Math.ceil(m / bucket);
  const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  const w = qsgdWidth(levels);
  const sbits = new Int32Array(src.buffer, src.byteOffset, src.length);
  let p = off + 4 * nb;
  let acc = 0;
  let nbits = 0;
  let s = xorshiftState(seed, STREAM_ROUNDING);
  for (let b = 0; b < nb; b++) {
    const start = b * bucket;
    const end = Math.min(m, start + bucket);
    let sq = 0;
    for (let i = start; i < end; i++) sq += src[i] * src[i];
    const norm = roundUpF32(Math.sqrt(sq));
    if (norm > 0 && norm < Infinity) {
      const inv = levels / norm;
      for (let i = start; i < end; i++) {
        const v = src[i];
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        let l = (Math.abs(v) * inv + (s >>> 0) * U32_TO_UNIT) | 0;
        if (l > levels) l = levels;
        // sign bit only for a non-zero level (branch-free: signs are random, a branch would mispredict)
        const code = (l << 1) | ((sbits[i] >>> 31) & (-l >>> 31));
        acc |= code << nbits;
        nbits += w;
        if (nbits >= 8) {
          dst[p++] = acc;
          acc >>= 8;
          nbits -= 8;
        }
      }
      dv.setFloat32(off + 4 * b, norm, true);
    } else {
      // zero bucket (all codes 0) or non-finite (NaN norm): the codes are zero bits
      for (let i = start; i < end; i++) {
        nbits += w;
        if (nbits >= 8) {
          dst[p++] = acc;
          acc >>= 8;
          nbits -= 8;
        }
      }
      dv.setFloat32(off + 4 * b, norm === 0 ? 0 : NaN, true);
    }
  }
  if (nbits > 0) dst[p] = acc;
}

export function decodeQsgd(
  src: Uint8Array,
  off: number,
  m: number,
  levels: number,
  bucket: number,
  out: Float32Array,
  at: number,
): void {
  const nb = Math.ceil(m / bucket);
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const w = qsgdWidth(levels);
  const mask = (1 << w) - 1;
  const lut = new Float32Array(mask + 1); // code -> value, per bucket
  const codes = off + 4 * nb;
  const last = src.length - 1;
  for (let b = 0; b < nb; b++) {
    const start = b * bucket;
    const end = Math.min(m, start + bucket);
    const scale = dv.getFloat32(off + 4 * b, true) / levels;
    for (let c = 0; c <= mask; c++) lut[c] = (c >> 1) * ((c & 1) === 0 ? scale : -scale);
    // Each code is read on its own from the two bytes holding it (w <= 8), so iterations do not depend on each
    // other (a running bit buffer would serialise them).
    const first = start * w; // exact; the bit offset within the bucket stays below 2^31 (bucket <= 2^24)
    const base = codes + Math.floor(first / 8);
    for (let i = start, bit = first % 8; i < end; i++, bit += w) {
      const p = base + (bit >>> 3);
      const two = src[p] | (p < last ? src[p + 1] << 8 : 0);
      out[at + i] = lut[(two >>> (bit & 7)) & mask];
    }
  }
}
