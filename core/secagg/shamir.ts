/**
 * Shamir secret sharing (A. Shamir, "How to Share a Secret", CACM 22(11), 1979) over GF(2^16), as used by
 * SecAgg (Bonawitz et al. CCS 2017, §4 "Secret sharing") to share each device's self-mask seed and mask key among
 * its neighbours.
 *
 * Field: GF(2^16) = GF(2)[x] / (x^16 + x^12 + x^3 + x + 1) (0x1100B, a primitive polynomial: x generates the
 * multiplicative group of order 65535, which the table construction below checks). Addition is XOR; multiplication
 * goes through log/exp tables (the exp table is doubled so a product needs no reduction mod 65535). A 16-bit field
 * allows up to 65,535 distinct non-zero x coordinates, so classic SecAgg with n-1 = 999 neighbours at n = 1000
 * (or any n <= 65,536) is supported; GF(2^8) would cap the fleet at 255.
 *
 * A secret of 2m bytes is m big-endian 16-bit words; each word is the constant term of its own random polynomial
 * of degree t-1 (coefficients drawn from a CSPRNG, one independent polynomial per word), so any t shares determine
 * it and any t-1 shares are independent of it (information-theoretic). A share is 2 + 2m bytes: the x coordinate
 * (big-endian u16, non-zero) then the m words y_w = f_w(x). SecAgg assigns neighbour j the x coordinate
 * 1 + (index of j in the sorted participant list) (`shareX`), so every party agrees on it without extra messages.
 *
 * Robustness against wrong shares (a malicious holder) is not provided here (as in Bonawitz et al.); the server
 * checks what it can (a reconstructed mask key must match its advertised public key: server.ts).
 */
import { randomBytes } from "node:crypto";
import { fail } from "../errors";

/** x^16 + x^12 + x^3 + x + 1. */
export const GF16_POLY = 0x1100b;
/** Order of the multiplicative group. */
const ORDER = 65535;

/** LOG[a] for a != 0 (LOG[0] is unused); EXP[i] = g^i for 0 <= i < 2 * ORDER (doubled: no reduction needed). */
const LOG = new Uint16Array(65536);
const EXP = new Uint16Array(2 * ORDER);
{
  let v = 1;
  for (let i = 0; i < ORDER; i++) {
    EXP[i] = v;
    EXP[i + ORDER] = v;
    if (i > 0 && v === 1) throw new Error("GF(2^16): 0x1100B is not primitive"); // cycle shorter than 65535
    LOG[v] = i;
    v <<= 1;
    if (v & 0x10000) v ^= GF16_POLY;
  }
  if (v !== 1) throw new Error("GF(2^16): generator order is not 65535");
}

/** Field multiplication in GF(2^16). */
export function gfMul(a: number, b: number): number {
  return a === 0 || b === 0 ? 0 : EXP[LOG[a] + LOG[b]];
}

/** Multiplicative inverse in GF(2^16); a must be non-zero. */
export function gfInv(a: number): number {
  if (a === 0) fail("E_SECAGG_SHARES", "GF(2^16): zero has no inverse");
  return EXP[ORDER - LOG[a]];
}

/** Field addition (= subtraction) in GF(2^16). */
export function gfAdd(a: number, b: number): number {
  return (a ^ b) & 0xffff;
}

/** The x coordinate of a device's share: 1 + its index in the sorted participant list (never 0). */
export function shareX(sortedParticipants: readonly string[], deviceId: string): number {
  const i = sortedParticipants.indexOf(deviceId);
  if (i < 0) fail("E_SECAGG_SHARES", `'${deviceId}' is not a participant`);
  if (i + 1 > ORDER) fail("E_SECAGG_SHARES", `participant index ${i} exceeds GF(2^16) share capacity`);
  return i + 1;
}

/** The x coordinate a share carries (first two bytes, big-endian). */
export function shareXOf(share: Uint8Array): number {
  if (share.byteLength < 2) fail("E_SECAGG_SHARES", "a share must have at least 2 bytes");
  return (share[0] << 8) | share[1];
}

/**
 * Splits `secret` (even length >= 2) into one share per x in `xs` (distinct, in 1..65535) such that any `t`
 * reconstruct it and any t-1 reveal nothing. `random` must be a CSPRNG (default node:crypto randomBytes).
 */
export function splitSecret(
  secret: Uint8Array,
  xs: readonly number[],
  t: number,
  random: (n: number) => Uint8Array = randomBytes,
): Uint8Array[] {
  const len = secret.byteLength;
  if (len === 0 || len % 2 !== 0) fail("E_SECAGG_SHARES", `secret length must be even and > 0, got ${len}`);
  if (!Number.isInteger(t) || t < 1 || t > xs.length)
    fail("E_SECAGG_SHARES", `threshold must be an integer in 1..${xs.length} (shares), got ${t}`);
  const seen = new Set<number>();
  for (const x of xs) {
    if (!Number.isInteger(x) || x < 1 || x > ORDER)
      fail("E_SECAGG_SHARES", `share x coordinate must be an integer in 1..65535, got ${x}`);
    if (seen.has(x)) fail("E_SECAGG_SHARES", `duplicate share x coordinate ${x}`);
    seen.add(x);
  }
  const words = len / 2;
  const deg = t - 1;
  // coef[w * t + d]: coefficient of x^d of word w's polynomial; d = 0 is the secret word.
  const coef = new Uint16Array(words * t);
  const rnd = deg > 0 ? random(2 * words * deg) : new Uint8Array(0);
  if (rnd.byteLength < 2 * words * deg) fail("E_SECAGG_SHARES", "random source returned too few bytes");
  for (let w = 0; w < words; w++) {
    coef[w * t] = (secret[2 * w] << 8) | secret[2 * w + 1];
    for (let d = 1; d <= deg; d++) {
      const o = 2 * (w * deg + d - 1);
      coef[w * t + d] = (rnd[o] << 8) | rnd[o + 1];
    }
  }
  rnd.fill(0);
  const shares: Uint8Array[] = [];
  for (const x of xs) {
    const share = new Uint8Array(2 + len);
    share[0] = x >>> 8;
    share[1] = x & 0xff;
    const lx = LOG[x];
    for (let w = 0; w < words; w++) {
      // Horner: y = (...(c_deg x + c_{deg-1}) x + ...) x + c_0
      const base = w * t;
      let y = coef[base + deg];
      for (let d = deg - 1; d >= 0; d--) y = (y === 0 ? 0 : EXP[LOG[y] + lx]) ^ coef[base + d];
      share[2 + 2 * w] = y >>> 8;
      share[3 + 2 * w] = y & 0xff;
    }
    shares.push(share);
  }
  coef.fill(0);
  return shares;
}

/**
 * Reconstructs the secret from the first `t` of `shares` by Lagrange interpolation at 0:
 * s = sum_i y_i * prod_{j != i} x_j / (x_j - x_i) (in characteristic 2, minus is XOR). All shares given must have one
 * length and distinct non-zero x; fewer than t shares, or inconsistent ones, throw E_SECAGG_SHARES. With fewer than
 * t genuine shares the result is some unrelated value (the scheme cannot tell).
 */
export function combineShares(shares: readonly Uint8Array[], t: number): Uint8Array {
  if (!Number.isInteger(t) || t < 1)
    fail("E_SECAGG_SHARES", `threshold must be a positive integer, got ${t}`);
  if (shares.length < t) fail("E_SECAGG_SHARES", `need ${t} shares to reconstruct, got ${shares.length}`);
  const len = shares[0].byteLength;
  if (len < 4 || len % 2 !== 0) fail("E_SECAGG_SHARES", `malformed share of ${len} bytes`);
  const seen = new Set<number>();
  for (const s of shares) {
    if (s.byteLength !== len)
      fail("E_SECAGG_SHARES", `shares have inconsistent lengths (${s.byteLength} != ${len})`);
    const x = shareXOf(s);
    if (x === 0) fail("E_SECAGG_SHARES", "share x coordinate 0 is invalid");
    if (seen.has(x)) fail("E_SECAGG_SHARES", `duplicate share x coordinate ${x}`);
    seen.add(x);
  }
  const use = shares.slice(0, t);
  const xs = use.map(shareXOf);
  // log of the Lagrange basis value at 0 for each share: sum log x_j - sum log (x_j ^ x_i), mod ORDER.
  const logLambda = new Int32Array(t);
  for (let i = 0; i < t; i++) {
    let l = 0;
    for (let j = 0; j < t; j++) {
      if (j === i) continue;
      l += LOG[xs[j]] - LOG[xs[j] ^ xs[i]];
    }
    l %= ORDER;
    logLambda[i] = l < 0 ? l + ORDER : l;
  }
  const words = (len - 2) / 2;
  const out = new Uint8Array(2 * words);
  for (let w = 0; w < words; w++) {
    let acc = 0;
    for (let i = 0; i < t; i++) {
      const s = use[i];
      const y = (s[2 + 2 * w] << 8) | s[3 + 2 * w];
      if (y !== 0) acc ^= EXP[LOG[y] + logLambda[i]];
    }
    out[2 * w] = acc >>> 8;
    out[2 * w + 1] = acc & 0xff;
  }
  return out;
}
