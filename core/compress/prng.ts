/**
 * Fast seeded randomness for the codecs: a 32-bit seed is spread by the murmur3 finalizer into the non-zero
 * state of a xorshift32 generator (Marsaglia 2003, "Xorshift RNGs"). The hot loops inline the three xorshift
 * steps (`s ^= s << 13; s ^= s >>> 17; s ^= s << 5`) on a local variable instead of calling a method, so a
 * stochastic rounding costs a handful of integer operations and no allocation. Not for cryptography.
 */

/** 2^-32: maps a uint32 to [0, 1). */
export const U32_TO_UNIT = 2.3283064365386963e-10;

/** murmur3's 32-bit finalizer: a bijection that spreads nearby seeds far apart. */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Non-zero xorshift32 state for `seed` and a purpose `stream` (so two uses of one seed are independent). */
export function xorshiftState(seed: number, stream: number): number {
  const s = mix32((mix32(seed >>> 0) + Math.imul(stream, 0x9e3779b9)) >>> 0) | 0;
  return s === 0 ? 0x6d2b79f5 : s;
}

/** Streams of one seed: stochastic rounding of the value codec, randk's index draw, top-k's pivots. */
export const STREAM_ROUNDING = 1;
export const STREAM_RANDK = 2;
export const STREAM_SELECT = 3;

/** A small object-form xorshift32 for the non-hot paths (sampling, pivots, index draws). */
export class XorShift32 {
  private s: number;
  constructor(seed: number, stream: number) {
    this.s = xorshiftState(seed, stream);
  }
  nextU32(): number {
    let s = this.s;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    this.s = s;
    return s >>> 0;
  }
  /** Uniform in [0, 1) with 53 random bits (two draws), so probabilities are exact to 2^-53. */
  next53(): number {
    const a = this.nextU32() >>> 5; // 27 bits
    const b = this.nextU32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }
}
