/**
 * Sparsifiers: which k of the n values an update keeps (k = max(1, round(fraction n)), see keptCount).
 *
 * topk:F keeps the k values of largest magnitude (Aji & Heafield 2017, "Sparse Communication for Distributed
 * Gradient Descent"; Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory", whose error feedback makes it
 * converge: see error-feedback.ts). Exact k: the k-th largest |x| is found by sampling a threshold that keeps a
 * little more than k values (one pass over x), then an exact quickselect (Hoare 1961, "Algorithm 65: Find") over
 * those candidates only; ties at the threshold are broken towards lower indices. If the sample misjudges (fewer
 * than k candidates, or far too many), a quickselect over all of |x| does the same exactly. Magnitudes are compared
 * as the integer bits of |x| (same order for non-negative floats); NaN counts as the largest, so a non-finite
 * update stays visible to the receiver.
 * The kept indices are sent ascending, as LEB128 varints of the gaps idx[0], idx[j] - idx[j-1] - 1.
 *
 * randk:F keeps k indices drawn uniformly without replacement (Stich et al. 2018; Wangni et al. 2018) with
 * Floyd's algorithm into a bitmap of n bits (randkBitmap; k random draws, n / 8 bytes), read back ascending. Only
 * the seed travels: the decoder regenerates the same bitmap.
 */
import { STREAM_RANDK, STREAM_SELECT, XorShift32 } from "./prng";

/** The indices of the k largest |x| (NaN above +Infinity; ties to lower indices), ascending. */
export function topkIndices(x: Float32Array, k: number): Uint32Array {
  const n = x.length;
  const out = new Uint32Array(k);
  if (k === 0) return out;
  if (k >= n) {
    for (let i = 0; i < n; i++) out[i] = i;
    return out;
  }
  // Magnitudes compared as the integer bits of |x|: for non-negative floats the bit patterns sort like the
  // values, and NaN patterns sort above Infinity.
  const bits = new Int32Array(x.buffer, x.byteOffset, n);
  const rng = new XorShift32(0x51ec7, STREAM_SELECT);
  if (n > 65536 && sampledTopk(bits, k, rng, out)) return out;
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = bits[i] & 0x7fffffff;
  const t = selectDescending(a, n, k - 1, rng);
  pick(bits, null, n, t, k, out);
  return out;
}

/** Tries the sampled-threshold path; false when the sample's guess did not hold (the caller does a full select). */
function sampledTopk(bits: Int32Array, k: number, rng: XorShift32, out: Uint32Array): boolean {
  const n = bits.length;
  const S = 8192;
  const sample = new Int32Array(S);
  for (let j = 0; j < S; j++) sample[j] = bits[Math.floor(rng.next53() * n)] & 0x7fffffff;
  // Expected number of sampled values above the k-th largest: k S / n; aim a few standard deviations lower
  // (a larger rank = a lower threshold), so the candidates almost surely include the top k.
  const expected = (k * S) / n;
  const rank = Math.ceil(expected + 4 * Math.sqrt(expected) + 4);
  if (rank >= S) return false;
  const low = selectDescending(sample, S, rank, rng);
  // Candidates: |x| >= low, expected about n rank / S of them; give up past 4x that.
  const cap = Math.min(n, Math.ceil((4 * n * (rank + 1)) / S) + 64);
  const idx = new Uint32Array(cap);
  let c = 0;
  for (let i = 0; i < n; i++) {
    if ((bits[i] & 0x7fffffff) >= low) {
      if (c === cap) return false;
      idx[c++] = i;
    }
  }
  if (c < k) return false;
  const a = new Int32Array(c);
  for (let j = 0; j < c; j++) a[j] = bits[idx[j]] & 0x7fffffff;
  const t = selectDescending(a, c, k - 1, rng);
  pick(bits, idx, c, t, k, out);
  return true;
}

/**
 * Writes into `out` the k indices (ascending) with magnitude bits > t, then the lowest-index ones equal to t,
 * where t is the k-th largest. `idx` (ascending) restricts the scan to candidates, or null for all values.
 */
function pick(
  bits: Int32Array,
  idx: Uint32Array | null,
  count: number,
  t: number,
  k: number,
  out: Uint32Array,
): void {
  let above = 0;
  for (let j = 0; j < count; j++) if ((bits[idx ? idx[j] : j] & 0x7fffffff) > t) above++;
  let ties = k - above;
  let o = 0;
  for (let j = 0; j < count && o < k; j++) {
    const i = idx ? idx[j] : j;
    const a = bits[i] & 0x7fffffff;
    if (a > t) out[o++] = i;
    else if (a === t && ties > 0) {
      out[o++] = i;
      ties--;
    }
  }
}

/**
 * The value of rank p (0 = largest) among a[0 .. len), by quickselect with random pivots and Hoare partitioning
 * (permutes a). Equal values stop both scans, so runs of ties split evenly and cost O(len).
 */
export function selectDescending(a: Int32Array, len: number, p: number, rng: XorShift32): number {
  let lo = 0;
  let hi = len - 1;
  while (lo < hi) {
    const pivot = a[lo + Math.floor(rng.next53() * (hi - lo + 1))];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    // a[lo .. j] >= pivot, a[i .. hi] <= pivot, a[j + 1 .. i - 1] == pivot
    if (p <= j) hi = j;
    else if (p >= i) lo = i;
    else return a[p];
  }
  return a[p];
}

/**
 * randk's kept set as a bitmap of n bits: Floyd's algorithm (Bentley & Floyd 1987, "Programming Pearls: A Sample
 * of Brilliance"): for j = n - k .. n - 1, t = floor(u (j + 1)) with u a 53-bit uniform of
 * xorshift32(seed, STREAM_RANDK); keep t, or j if t is already kept. Every k-subset is equally likely; k draws.
 */
export function randkBitmap(n: number, k: number, seed: number): Uint32Array {
  const bitmap = new Uint32Array(Math.ceil(n / 32));
  const rng = new XorShift32(seed, STREAM_RANDK);
  for (let j = n - k; j < n; j++) {
    const t = Math.floor(rng.next53() * (j + 1));
    const i = (bitmap[t >>> 5] >>> (t & 31)) & 1 ? j : t;
    bitmap[i >>> 5] |= 1 << (i & 31);
  }
  return bitmap;
}

/** The set bits of a bitmap, ascending, one at a time (call next() once per set bit). */
export class BitmapReader {
  private word = 0;
  private w = -1;
  constructor(private readonly bitmap: Uint32Array) {}
  next(): number {
    let word = this.word;
    while (word === 0) word = this.bitmap[++this.w] | 0;
    const low = word & -word;
    this.word = word ^ low;
    return this.w * 32 + 31 - Math.clz32(low);
  }
}

export function randkIndices(n: number, k: number, seed: number): Uint32Array {
  const out = new Uint32Array(k);
  const r = new BitmapReader(randkBitmap(n, k, seed));
  for (let j = 0; j < k; j++) out[j] = r.next();
  return out;
}

/** Bytes of the LEB128 gap encoding of ascending indices. */
export function gapsSize(idx: Uint32Array): number {
  let bytes = 0;
  let prev = -1;
  for (let j = 0; j < idx.length; j++) {
    const g = idx[j] - prev - 1;
    prev = idx[j];
    bytes += g < 0x80 ? 1 : g < 0x4000 ? 2 : g < 0x200000 ? 3 : g < 0x10000000 ? 4 : 5;
  }
  return bytes;
}

/** Writes the gap varints at dst[off ..); returns the end offset. */
export function writeGaps(idx: Uint32Array, dst: Uint8Array, off: number): number {
  let p = off;
  let prev = -1;
  for (let j = 0; j < idx.length; j++) {
    let g = idx[j] - prev - 1;
    prev = idx[j];
    while (g >= 0x80) {
      dst[p++] = (g & 0x7f) | 0x80;
      g = Math.floor(g / 128);
    }
    dst[p++] = g;
  }
  return p;
}

/**
 * Checks that src[off .. off + len) holds exactly k gap varints (at most 5 bytes each) giving indices < n:
 * returns null when it does, else what is wrong.
 */
export function checkGaps(src: Uint8Array, off: number, len: number, k: number, n: number): string | null {
  const end = off + len;
  let p = off;
  let prev = -1;
  for (let j = 0; j < k; j++) {
    let g = 0;
    let mul = 1;
    for (let b = 0; ; b++) {
      if (p >= end) return `index list ends after ${j} of ${k} indices`;
      if (b === 5) return `index ${j}: varint longer than 5 bytes`;
      const byte = src[p++];
      g += (byte & 0x7f) * mul;
      mul *= 128;
      if (byte < 0x80) break;
    }
    prev += g + 1;
    if (prev >= n) return `index ${j} is ${prev}, beyond the ${n} values`;
  }
  if (p !== end) return `index list has ${end - p} bytes after its ${k} indices`;
  return null;
}

/** Reads gap varints one index at a time (input already checked by checkGaps). */
export class GapReader {
  private prev = -1;
  constructor(
    private readonly src: Uint8Array,
    private p: number,
  ) {}
  next(): number {
    const src = this.src;
    let byte = src[this.p++];
    let g = byte & 0x7f;
    let mul = 128;
    while (byte >= 0x80) {
      byte = src[this.p++];
      g += (byte & 0x7f) * mul;
      mul *= 128;
    }
    return (this.prev += g + 1);
  }
}
