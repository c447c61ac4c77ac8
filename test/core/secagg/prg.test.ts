import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createCipheriv, hkdfSync, randomBytes } from "node:crypto";
import { addMask, expandMask, PRG_INFO } from "../../../core/secagg/prg";
import { defaultParams } from "../../../core/secagg/params";
import { runSecAggRound } from "../../../core/secagg/driver";
import type { MaskedInput } from "../../../core/secagg/types";
import { errorCode } from "../../helpers/errors";

const seed = (b: number) => new Uint8Array(32).fill(b);

test("PRG is deterministic, seed-dependent, prefix-consistent across 64 KiB chunks", () => {
  for (const prg of ["aes-128-ctr", "chacha20"] as const) {
    const a = expandMask(seed(1), 40_000, prg);
    assert.deepEqual(expandMask(seed(1), 40_000, prg), a);
    assert.notDeepEqual(expandMask(seed(2), 40_000, prg), a);
    // 16,384 words per chunk: a shorter expansion is a prefix of a longer one.
    assert.deepEqual(expandMask(seed(1), 16_385, prg), a.subarray(0, 16_385));
    assert.deepEqual(expandMask(seed(1), 7, prg), a.subarray(0, 7));
  }
  assert.notDeepEqual(expandMask(seed(1), 64, "aes-128-ctr"), expandMask(seed(1), 64, "chacha20"));
});

test("PRG matches its specification: HKDF-SHA256 key/IV, AES-128-CTR over zeros, little-endian words", () => {
  const s = new Uint8Array(randomBytes(32));
  const km = Buffer.from(hkdfSync("sha256", s, new Uint8Array(0), PRG_INFO, 32));
  const ks = createCipheriv("aes-128-ctr", km.subarray(0, 16), km.subarray(16)).update(Buffer.alloc(400));
  const want = Array.from({ length: 100 }, (_, i) => ks.readUInt32LE(4 * i));
  assert.deepEqual([...expandMask(s, 100)], want);
});

test("adding then subtracting a mask restores the vector exactly (mod 2^32)", () => {
  const n = 100_003; // not a multiple of the chunk
  const x = new Uint32Array(n);
  for (let i = 0; i < n; i++) x[i] = (i * 2654435761) >>> 0;
  const y = x.slice();
  addMask(y, seed(5), 1);
  assert.notDeepEqual(y, x);
  addMask(y, seed(6), -1, "chacha20");
  addMask(y, seed(5), -1);
  addMask(y, seed(6), 1, "chacha20");
  assert.deepEqual(y, x);
  // a subarray target at a non-zero offset
  const z = x.slice();
  addMask(z.subarray(3), seed(7), 1);
  assert.equal(z[2], x[2]);
  addMask(z.subarray(3), seed(7), -1);
  assert.deepEqual(z, x);
  assert.equal(
    errorCode(() => addMask(y, new Uint8Array(16), 1)),
    "E_SECAGG_PRG",
  );
  assert.equal(
    errorCode(() => addMask(y, seed(1), 1, "rc4" as never)),
    "E_SECAGG_PRG",
  );
});

/** Upper 1e-6 quantile of chi-square with df degrees of freedom (Wilson-Hilferty; z = 4.753). */
function chiSquareCritical(df: number): number {
  const z = 4.753;
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

/** Uniformity statistics of a vector of uint32: byte chi-square, top-byte bucket chi-square, mean z-score. */
function uniformity(v: Uint32Array): { bytes: number; buckets: number; z: number } {
  const b = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  const byteCounts = new Float64Array(256);
  for (const x of b) byteCounts[x]++;
  const bucketCounts = new Float64Array(256);
  let sum = 0;
  for (const x of v) {
    bucketCounts[x >>> 24]++;
    sum += x / 4294967296;
  }
  const chi = (counts: Float64Array, total: number) => {
    const e = total / counts.length;
    let c = 0;
    for (const o of counts) c += ((o - e) * (o - e)) / e;
    return c;
  };
  const mean = sum / v.length;
  return {
    bytes: chi(byteCounts, b.length),
    buckets: chi(bucketCounts, v.length),
    z: (mean - 0.5) / Math.sqrt(1 / 12 / v.length),
  };
}

test("a masked input is indistinguishable from uniform (chi-square and mean at p ~ 1e-6); its encoding is not", async () => {
  const d = 65_536;
  const fixed = new Float32Array(d).fill(0.25); // a fixed, very non-random update
  const updates = new Map(["a", "b", "c", "d", "e", "f"].map((id) => [id, { update: fixed, weight: 3 }]));
  let masked: Uint32Array | undefined;
  let encoded: Uint32Array | undefined;
  await runSecAggRound({
    session: { jobId: "stat", round: 1 },
    params: defaultParams(6),
    updates,
    onEncoded: (id, e) => {
      if (id === "c") encoded = e;
    },
    onDeviceMessage: (step, id, m) => {
      if (step === "mask" && id === "c") masked = (m as MaskedInput).masked.slice();
      return m;
    },
  });
  assert.ok(masked && encoded);
  const crit = chiSquareCritical(255);
  const u = uniformity(masked);
  assert.ok(u.bytes < crit, `byte chi-square ${u.bytes.toFixed(1)} >= ${crit.toFixed(1)}`);
  assert.ok(u.buckets < crit, `bucket chi-square ${u.buckets.toFixed(1)} >= ${crit.toFixed(1)}`);
  assert.ok(Math.abs(u.z) < 4.892, `mean z-score ${u.z.toFixed(2)}`);
  // The same tests reject the unmasked encoding (so they can fail).
  const e = uniformity(encoded);
  assert.ok(e.bytes > crit && e.buckets > crit && Math.abs(e.z) > 4.892, JSON.stringify(e));
  // Also the raw PRG stream.
  const p = uniformity(expandMask(new Uint8Array(randomBytes(32)), d, "chacha20"));
  assert.ok(p.bytes < crit && p.buckets < crit && Math.abs(p.z) < 4.892, JSON.stringify(p));
});
