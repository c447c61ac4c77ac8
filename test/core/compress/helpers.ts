import assert from "node:assert/strict";
import { crc32 } from "node:zlib";
import { isFlotillaError } from "../../../core/errors";

export const HASH = "0123456789abcdef".repeat(4);
export const OTHER_HASH = "fedcba9876543210".repeat(4);

/** Deterministic gradient-like values: normal(0, scale) with a few outliers (xorshift32 + Box-Muller). */
export function vector(n: number, seed: number, scale = 0.01): Float32Array {
  let s = seed | 0 || 1;
  const u = (): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 0.5) / 4294967296;
  };
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const z = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
    x[i] = (u() < 0.01 ? 20 : 1) * scale * z;
  }
  return x;
}

/** The FlotillaError code fn throws (fails if it throws anything else or nothing). */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(isFlotillaError(e), `expected a FlotillaError, got ${String(e)}`);
    return e.code;
  }
  assert.fail("expected an error");
}

/** Recomputes an envelope's trailing crc32 (to craft headers that pass the checksum). */
export function reseal(bytes: Uint8Array): Uint8Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.length - 4;
  dv.setUint32(end, crc32(bytes.subarray(0, end)), true);
  return bytes;
}

/** Block boundaries [start, end) of a value codec. */
export function blocks(n: number, block: number, segments?: readonly number[]): [number, number][] {
  const out: [number, number][] = [];
  if (block > 0) for (let s = 0; s < n; s += block) out.push([s, Math.min(n, s + block)]);
  else {
    let s = 0;
    for (const len of segments ?? [n]) {
      out.push([s, s + len]);
      s += len;
    }
  }
  return out;
}

/** Smallest float32 >= x (x >= 0). */
export function roundUpF32(x: number): number {
  const f = new Float32Array([x]);
  if (f[0] < x) new Uint32Array(f.buffer)[0]++;
  return f[0];
}
