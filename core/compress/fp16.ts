/**
 * IEEE 754-2008 binary16 ("half") conversion, bit-based (Node 20 has no Float16Array).
 *
 * float32 -> half rounds to nearest, ties to even, like a hardware F16C `vcvtps2ph` with the default rounding
 * mode: normal results by integer arithmetic on the float32 bits (the 13 dropped mantissa bits decide the
 * rounding, a carry rolls into the exponent and up to infinity), half subnormals (|x| < 2^-14) by exact double
 * arithmetic on the value in units of 2^-24, overflow (|x| >= 65520) to infinity, NaN to a quiet NaN that keeps the
 * top payload bits. half -> float32 is exact and goes through a 65,536-entry table of float32 bit patterns (256 KB,
 * built on first use), written through a Uint32Array view so NaN payloads survive bit for bit.
 * Reference for the tie-breaking and subnormal handling: J. van der Zijp, "Fast Half Float Conversions" (2008),
 * with round-to-nearest-even instead of its truncation.
 *
 * Wire form: 2 bytes per value, little endian (written byte by byte, so it is the same on any host).
 */

/** Half bits of a float32 given by its bit pattern `f` (reference form of the loop in encodeFp16). */
export function halfFromFloatBits(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const e = (f >>> 23) & 0xff;
  if (e > 112 && e < 143) {
    // the 13 dropped mantissa bits decide: above half up, below down, exactly half to the even neighbour
    const m = f & 0x7fffff;
    let h = ((e - 112) << 10) | (m >>> 13);
    const r = m & 0x1fff;
    if (r > 0x1000 || (r === 0x1000 && (h & 1) !== 0)) h++;
    return sign | h;
  }
  return sign | halfEdge(f);
}

/** Magnitude bits of the half for float32 bits outside the normal half range (zero, subnormal, overflow, NaN). */
function halfEdge(f: number): number {
  const e = (f >>> 23) & 0xff;
  const m = f & 0x7fffff;
  if (e === 255) return m === 0 ? 0x7c00 : 0x7e00 | (m >>> 13);
  if (e >= 143) return 0x7c00;
  if (e < 102) return 0; // below 2^-25: rounds to zero
  // |x| = (2^23 + m) * 2^(e - 150) = v * 2^-24 with v exact in double; round v to an integer, ties to even.
  const v = (0x800000 | m) * 2 ** (e - 126);
  let r = Math.floor(v);
  const d = v - r;
  if (d > 0.5 || (d === 0.5 && (r & 1) === 1)) r++;
  return r; // 0x400 (the smallest normal) when it rounds up out of the subnormal range
}

let table: Uint32Array | null = null;

/** float32 bit patterns of all 65,536 halves. */
export function halfTable(): Uint32Array {
  if (table) return table;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const e = (h >>> 10) & 0x1f;
    let m = h & 0x3ff;
    if (e === 0) {
      if (m === 0) t[h] = sign;
      else {
        let e32 = 113;
        while ((m & 0x400) === 0) {
          m <<= 1;
          e32--;
        }
        t[h] = sign | (e32 << 23) | ((m & 0x3ff) << 13);
      }
    } else if (e === 31) t[h] = sign | 0x7f800000 | (m << 13);
    else t[h] = sign | ((e + 112) << 23) | (m << 13);
  }
  return (table = t);
}

/** The float value of half bits `h`. */
export function floatFromHalfBits(h: number): number {
  const f = new Float32Array(new Uint32Array([halfTable()[h & 0xffff]]).buffer);
  return f[0];
}

export function fp16Size(m: number): number {
  return 2 * m;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Writes src[from .. from + m) as halves at dst[off ..). The normal range is branch-free: rebias the exponent
 * (subtract 112 << 23 from |bits|), then add 0xfff plus the lowest kept bit and shift right 13, which rounds to
 * nearest even and carries into the exponent (a data-dependent branch here mispredicts half the time).
 */
export function encodeFp16(src: Float32Array, from: number, m: number, dst: Uint8Array, off: number): void {
  const bits = new Int32Array(src.buffer, src.byteOffset, src.length);
  if (LITTLE_ENDIAN && ((dst.byteOffset + off) & 1) === 0) {
    const d16 = new Uint16Array(dst.buffer, dst.byteOffset + off, m);
    for (let i = 0; i < m; i++) {
      const f = bits[from + i];
      const a = f & 0x7fffffff;
      let h: number;
      if (a >= 0x38800000 && a < 0x47800000) {
        const b = a - 0x38000000;
        h = (b + 0xfff + ((b >>> 13) & 1)) >>> 13;
      } else h = halfEdge(f);
      d16[i] = h | ((f >>> 16) & 0x8000);
    }
    return;
  }
  let o = off;
  for (let i = 0; i < m; i++, o += 2) {
    const f = bits[from + i];
    const a = f & 0x7fffffff;
    let h: number;
    if (a >= 0x38800000 && a < 0x47800000) {
      const b = a - 0x38000000;
      h = (b + 0xfff + ((b >>> 13) & 1)) >>> 13;
    } else h = halfEdge(f);
    h |= (f >>> 16) & 0x8000;
    dst[o] = h;
    dst[o + 1] = h >>> 8;
  }
}

/** Reads m halves at src[off ..) into out[at .. at + m). */
export function decodeFp16(src: Uint8Array, off: number, m: number, out: Float32Array, at: number): void {
  const t = halfTable();
  const o32 = new Uint32Array(out.buffer, out.byteOffset + 4 * at, m);
  if (LITTLE_ENDIAN && ((src.byteOffset + off) & 1) === 0) {
    const s16 = new Uint16Array(src.buffer, src.byteOffset + off, m);
    for (let i = 0; i < m; i++) o32[i] = t[s16[i]];
    return;
  }
  for (let i = 0, p = off; i < m; i++, p += 2) o32[i] = t[src[p] | (src[p + 1] << 8)];
}
