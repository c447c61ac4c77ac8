/**
 * Fixed-point encoding of updates into the ring Z_2^32 (Bonawitz et al. CCS 2017, §3: inputs are vectors over Z_R
 * and the ring must hold the sum; Flower's SecAgg+ uses the same scheme: clip to [-8, 8], quantize, modulus 2^32).
 *
 * A value x is clipped to [-c, c], multiplied by the device's weight factor f = w / W in (0, 1] (W = the largest
 * weight in the round, so the server gets sum f_i x_i and rescales by W / sum w_i), scaled by S and rounded
 * stochastically (floor, plus 1 with probability equal to the fractional part: E[round(y)] = y, so the sum stays
 * an unbiased estimate of sum f_i x_i S), then stored as a two's-complement int32 mod 2^32. Decoding reads the ring
 * sum as a signed int32 and divides by S.
 *
 * Headroom: a sum of n values of magnitude <= M needs log2(M) + ceil(log2 n) + 1 (sign) bits, so the scale must
 * leave ceil(log2 n) bits free (Bonawitz et al. §3). chooseScale picks the largest S whose per-value bound
 * M = floor((2^(bits-1) - 1) / n) = c * S holds for every rounded value, so n * M <= 2^31 - 1: no overflow for any
 * n clipped inputs. For n = 100, c = 8: M = 21,474,836, S = 2,684,354 (resolution 3.7e-7); for n = 1000 the
 * resolution is 3.7e-6: far below the noise of SGD updates.
 *
 * The rounding randomness comes from xoshiro128** (Blackman & Vigna 2018), 128-bit state seeded from 16 crypto
 * random bytes: fast (a few integer ops per value), not predictable to the server, and not a secret (the masks,
 * not the rounding, hide the update).
 */
import { randomBytes } from "node:crypto";
import { fail } from "../errors";

/** Largest S such that n values of magnitude <= clipRange * S sum without overflowing the signed ring. */
export function chooseScale(n: number, clipRange: number, modulusBits = 32): number {
  if (!Number.isInteger(n) || n < 1)
    fail("E_SECAGG_PARAMS", `participant count must be a positive integer, got ${n}`);
  if (!(clipRange > 0) || !Number.isFinite(clipRange))
    fail("E_SECAGG_PARAMS", `clipRange must be a positive finite number, got ${clipRange}`);
  if (!Number.isInteger(modulusBits) || modulusBits < 2 || modulusBits > 32)
    fail("E_SECAGG_PARAMS", `modulusBits must be an integer in 2..32, got ${modulusBits}`);
  const perValue = Math.floor((2 ** (modulusBits - 1) - 1) / n);
  if (perValue < 1) fail("E_SECAGG_PARAMS", `${n} participants leave no room in a ${modulusBits}-bit ring`);
  return perValue / clipRange;
}

/**
 * The largest magnitude an encoded value can take: floor(clipRange * scale), with a relative slack of 1e-12 so
 * chooseScale's M / c * c lands on M despite floating-point rounding.
 */
export function fixedPointLimit(clipRange: number, scale: number): number {
  return Math.floor(clipRange * scale * (1 + 1e-12));
}

/** True when n encoded values with this clip and scale cannot overflow the signed 32-bit ring. */
export function scaleFits(n: number, clipRange: number, scale: number): boolean {
  return (
    Number.isFinite(scale) &&
    scale > 0 &&
    fixedPointLimit(clipRange, scale) * n <= 2147483647 &&
    clipRange * scale >= 1
  );
}

/**
 * out[i] = round_stochastic(clamp(x[i], -c, c) * factor * scale) mod 2^32 (two's complement). NaN inputs throw
 * E_SECAGG_INPUT (a NaN would silently become 0); +-Infinity clip to +-c. Returns out. Stochastic rounding:
 * floor(y) + Bernoulli(y - floor(y)), E = y (to within 2^-31).
 */
export function encodeFixedPoint(
  x: Float32Array,
  factor: number,
  clipRange: number,
  scale: number,
  out: Uint32Array,
  random: (n: number) => Uint8Array = randomBytes,
): Uint32Array {
  if (out.length !== x.length)
    fail("E_SECAGG_INPUT", `output length ${out.length} != input length ${x.length}`);
  if (!(factor > 0 && factor <= 1)) fail("E_SECAGG_INPUT", `weight factor must be in (0, 1], got ${factor}`);
  if (!(clipRange > 0) || !Number.isFinite(clipRange))
    fail("E_SECAGG_INPUT", `clipRange must be a positive finite number, got ${clipRange}`);
  if (!(scale > 0) || !Number.isFinite(scale)) fail("E_SECAGG_INPUT", `scale must be positive, got ${scale}`);
  const seed = random(16);
  if (seed.byteLength < 16) fail("E_SECAGG_INPUT", "random source returned too few bytes");
  let s0 = seed[0] | (seed[1] << 8) | (seed[2] << 16) | (seed[3] << 24) | 0;
  let s1 = seed[4] | (seed[5] << 8) | (seed[6] << 16) | (seed[7] << 24) | 0;
  let s2 = seed[8] | (seed[9] << 8) | (seed[10] << 16) | (seed[11] << 24) | 0;
  let s3 = seed[12] | (seed[13] << 8) | (seed[14] << 16) | (seed[15] << 24) | 0;
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1; // xoshiro's state must not be all zero
  const fs = factor * scale;
  const lim = fixedPointLimit(clipRange, scale);
  // clamp(x, ±c) * f * S = clamp(x * f * S, ±c f S); capping at ±lim keeps every rounded value in [-lim, lim].
  const cap = Math.min(clipRange * fs, lim);
  const o = new Int32Array(out.buffer, out.byteOffset, out.length);
  const n = x.length;
  let nan = 0;
  // Branchless on purpose: a random rounding decision is a 50/50 branch the CPU cannot predict (4x slower).
  // Math.min/max compile to minsd/maxsd; the rounding bit is the sign of r31 - floor(frac * 2^31), with r31 the
  // top 31 bits of xoshiro128**, so P(round up) = floor(frac * 2^31) / 2^31: unbiased to within 2^-31 of a unit.
  for (let i = 0; i < n; i++) {
    const y = Math.min(cap, Math.max(-cap, x[i] * fs));
    nan |= y !== y ? 1 : 0;
    const f = Math.floor(y);
    // xoshiro128**: result = rotl(s1 * 5, 7) * 9; then the state transition.
    const r5 = Math.imul(s1, 5);
    const r31 = Math.imul((r5 << 7) | (r5 >>> 25), 9) >>> 1;
    const tt = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= tt;
    s3 = (s3 << 11) | (s3 >>> 21);
    const thr = ((y - f) * 2147483648) | 0;
    o[i] = (f | 0) + ((r31 - thr) >>> 31);
  }
  if (nan !== 0) {
    out.fill(0);
    fail("E_SECAGG_INPUT", `update value ${x.findIndex((v) => v !== v)} is NaN`);
  }
  return out;
}

/** out[i] = (signed int32 of sum[i]) / scale. Returns out. */
export function decodeFixedPoint(
  sum: Uint32Array,
  scale: number,
  out: Float32Array = new Float32Array(sum.length),
): Float32Array {
  if (out.length !== sum.length)
    fail("E_SECAGG_INPUT", `output length ${out.length} != sum length ${sum.length}`);
  if (!(scale > 0) || !Number.isFinite(scale)) fail("E_SECAGG_INPUT", `scale must be positive, got ${scale}`);
  const s = new Int32Array(sum.buffer, sum.byteOffset, sum.length);
  for (let i = 0; i < s.length; i++) out[i] = s[i] / scale;
  return out;
}
