import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { decodeTensor, encodeTensor, parseCompression } from "../../../core/compress";
import { floatFromHalfBits, halfFromFloatBits, halfTable, encodeFp16 } from "../../../core/compress/fp16";
import { randkIndices, topkIndices } from "../../../core/compress/sparsify";
import { keptCount } from "../../../core/compress/spec";
import { blocks, HASH, roundUpF32, vector } from "./helpers";

const f32bits = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0];
const fromBits = (b: number): number => new Float32Array(new Uint32Array([b]).buffer)[0];

/** Reference float -> half by double arithmetic: round |x| / 2^e to 10 fraction bits, ties to even. */
function refHalf(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (Number.isNaN(x)) return -1;
  if (a === Infinity) return sign | 0x7c00;
  const rne = (v: number): number => {
    const r = Math.floor(v);
    const d = v - r;
    return d > 0.5 || (d === 0.5 && r % 2 === 1) ? r + 1 : r;
  };
  if (a < 2 ** -14) return sign | rne(a * 2 ** 24); // subnormal (may round up to 0x400)
  const e = Math.floor(Math.log2(a));
  const exp = Math.max(-14, Math.min(15, e - (2 ** e > a ? 1 : 0) + (2 ** (e + 1) <= a ? 1 : 0)));
  const mant = rne((a / 2 ** exp) * 1024); // 1024..2048
  const bits = ((exp + 15) << 10) + (mant - 1024);
  return sign | Math.min(bits, 0x7c00);
}

test("fp16 conversion rounds to nearest even, with subnormals, overflow, infinities and NaN", () => {
  const cases: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65519.99, 0x7bff],
    [65520, 0x7c00], // halfway to 2^16 rounds (to even) to infinity
    [1e9, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -14, 0x0400],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000], // tie to even (zero)
    [1.5 * 2 ** -25, 0x0001],
    [3 * 2 ** -25, 0x0002], // 1.5 ulp: tie to even (2)
    [1 + 2 ** -11, 0x3c00], // tie: mantissa even stays
    [1 + 3 * 2 ** -11, 0x3c02], // tie: odd rounds up
    [1 + 2 ** -11 + 2 ** -20, 0x3c01],
    [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal + half ulp rounds up into the normals
  ];
  for (const [x, h] of cases) assert.equal(halfFromFloatBits(f32bits(x)), h, `fp16(${x})`);
  const nan = halfFromFloatBits(0x7fc00000);
  assert.ok((nan & 0x7c00) === 0x7c00 && (nan & 0x3ff) !== 0, "NaN stays NaN");
  assert.ok(Number.isNaN(floatFromHalfBits(halfFromFloatBits(0x7f800001))), "signalling NaN stays NaN");

  // every half converts to float32 and back unchanged (NaNs stay NaN)
  const t = halfTable();
  for (let h = 0; h < 65536; h++) {
    const back = halfFromFloatBits(t[h]);
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0)
      assert.ok((back & 0x7c00) === 0x7c00 && (back & 0x3ff) !== 0);
    else if (back !== h) assert.fail(`half ${h.toString(16)} -> ${back.toString(16)}`);
  }

  // random float32 bit patterns against the double-arithmetic reference, through the table path and the loop
  let s = 12345;
  const n = 200_000;
  const xs = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    // concentrate exponents around the half range (float32 exponent 90..160)
    const e = 90 + ((s >>> 0) % 71);
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    xs[i] = fromBits(((s & 0x80000000) | (e << 23) | (s & 0x7fffff)) >>> 0);
  }
  const out = new Uint8Array(2 * n + 1);
  encodeFp16(xs, 0, n, out, 0); // aligned (Uint16Array) path
  const odd = new Uint8Array(2 * n + 1);
  encodeFp16(xs, 0, n, odd, 1); // unaligned (byte) path
  for (let i = 0; i < n; i++) {
    const want = refHalf(xs[i]);
    const got = halfFromFloatBits(f32bits(xs[i]));
    if (got !== want) assert.fail(`fp16(${xs[i]}): got ${got.toString(16)}, want ${want.toString(16)}`);
    if ((out[2 * i] | (out[2 * i + 1] << 8)) !== want) assert.fail(`encodeFp16(${xs[i]}) aligned`);
    if ((odd[2 * i + 1] | (odd[2 * i + 2] << 8)) !== want) assert.fail(`encodeFp16(${xs[i]}) unaligned`);
  }
});

test("fp16 round trip: relative error <= 2^-11 in the normal range, specials preserved", () => {
  const x = vector(10_000, 7, 1);
  x.set([0, -0, Infinity, -Infinity, NaN, 65504, 70000, -1e-6, 3e-8, 1e-9], 0);
  const y = decodeTensor(encodeTensor(x, parseCompression("fp16"), { layoutHash: HASH, seed: 1 }));
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]);
    if (Number.isNaN(x[i])) assert.ok(Number.isNaN(y[i]));
    else if (a > 65520) assert.equal(y[i], x[i] > 0 ? Infinity : -Infinity, `${x[i]}`);
    else if (a >= 2 ** -14) assert.ok(Math.abs(y[i] - x[i]) <= a * 2 ** -11, `${x[i]} -> ${y[i]}`);
    else assert.ok(Math.abs(y[i] - x[i]) <= 2 ** -25, `${x[i]} -> ${y[i]}`);
  }
  assert.ok(Object.is(y[1], -0));
  assert.equal(y[5], 65504);
});

test("intB round trip: |error| <= (max - min) / (2^B - 1) per block, values stay in [min, max]", () => {
  const n = 5_003;
  const x = vector(n, 11);
  for (let i = 1024; i < 1280; i++) x[i] = 0.25; // a constant block decodes exactly
  const segments = [1, 0, 999, 2_000, 2_003];
  for (let i = 0; i < 2003; i++) x[3000 + i] *= 100; // a tensor on another scale
  for (const bits of [8, 4, 2]) {
    for (const block of [256, 100, 1, 0]) {
      const text = `int${bits}:${block === 0 ? "tensor" : block}`;
      const env = encodeTensor(x, parseCompression(text), {
        layoutHash: HASH,
        seed: bits * 1000 + block,
        segments,
      });
      const y = decodeTensor(env, { layoutHash: HASH, length: n });
      for (const [s, e] of blocks(n, block, segments)) {
        let mn = Infinity;
        let mx = -Infinity;
        for (let i = s; i < e; i++) {
          mn = Math.min(mn, x[i]);
          mx = Math.max(mx, x[i]);
        }
        const step = (mx - mn) / (2 ** bits - 1);
        const slack = 2 ** -22 * Math.max(Math.abs(mn), Math.abs(mx));
        for (let i = s; i < e; i++) {
          const err = Math.abs(y[i] - x[i]);
          if (!(err <= step + slack))
            assert.fail(`${text} [${i}] block ${s}: ${x[i]} -> ${y[i]}, step ${step}`);
          if (!(y[i] >= mn - slack && y[i] <= mx + slack)) assert.fail(`${text} [${i}] outside [min, max]`);
        }
      }
      if (block === 256) for (let i = 1024; i < 1280; i++) assert.equal(y[i], 0.25);
      const ratio = (4 * n) / env.length;
      if (block === 256) assert.ok(ratio > (32 / bits) * 0.8, `${text} ratio ${ratio}`);
    }
  }
});

test("qsgd round trip: |error| <= norm / s per bucket; codes use 1 + ceil(log2(s + 1)) bits", () => {
  const n = 3_001;
  const x = vector(n, 5);
  for (let i = 0; i < 512; i++) x[i] = 0; // a zero bucket decodes to zeros
  for (const [levels, bucket] of [
    [1, 512],
    [4, 512],
    [16, 100],
    [127, 1],
    [127, 4096],
  ]) {
    const spec = parseCompression(`qsgd:${levels}:${bucket}`);
    const env = encodeTensor(x, spec, { layoutHash: HASH, seed: levels });
    const y = decodeTensor(env);
    for (let s = 0; s < n; s += bucket) {
      const e = Math.min(n, s + bucket);
      let sq = 0;
      for (let i = s; i < e; i++) sq += x[i] * x[i];
      const bound = roundUpF32(Math.sqrt(sq)) / levels;
      for (let i = s; i < e; i++) {
        const err = Math.abs(y[i] - x[i]);
        if (!(err <= bound * (1 + 1e-6)))
          assert.fail(`${spec.text} [${i}]: ${x[i]} -> ${y[i]}, bound ${bound}`);
        if (y[i] !== 0 && Math.sign(y[i]) !== Math.sign(x[i]))
          assert.fail(`${spec.text} [${i}] flipped sign`);
      }
    }
    const width = 1 + Math.ceil(Math.log2(levels + 1));
    const payload = 4 * Math.ceil(n / bucket) + Math.ceil((n * width) / 8);
    assert.equal(env.length, 56 + 16 + payload + 4, spec.text);
  }
});

test("topk keeps exactly the k largest magnitudes, exact, and zeros the rest", () => {
  for (const [n, fraction, seed] of [
    [1_000, 0.05, 1],
    [100_000, 0.01, 2], // sampled-threshold path
    [100_000, 0.5, 3],
    [70_000, 1, 4],
    [1, 0.01, 5],
  ]) {
    const x = vector(n, seed);
    const spec = parseCompression(`topk:${fraction}`);
    const k = keptCount(fraction, n);
    assert.equal(k, Math.max(1, Math.round(fraction * n)));
    const env = encodeTensor(x, spec, { layoutHash: HASH, seed: 9 });
    const y = decodeTensor(env);
    let kept = 0;
    let minKept = Infinity;
    let maxDropped = 0;
    for (let i = 0; i < n; i++) {
      if (y[i] !== 0) {
        kept++;
        assert.equal(y[i], x[i]);
        minKept = Math.min(minKept, Math.abs(x[i]));
      } else maxDropped = Math.max(maxDropped, Math.abs(x[i]));
    }
    assert.equal(kept, k, `${spec.text} of ${n}`);
    assert.ok(minKept >= maxDropped, `${spec.text}: kept ${minKept} < dropped ${maxDropped}`);
    const sorted = Float64Array.from(x, Math.abs).sort().reverse();
    assert.equal(minKept, sorted[k - 1]);
  }
});

test("topk breaks ties towards lower indices, handles many ties and NaN", () => {
  const n = 80_000;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (i % 7) - 3; // magnitudes 0..3, 2/7 of them equal to 3
  const idx = topkIndices(x, 1000);
  const want: number[] = [];
  for (let i = 0; i < n && want.length < 1000; i++) if (Math.abs(x[i]) === 3) want.push(i);
  assert.deepEqual([...idx], want);
  const small = Float32Array.from([1, -5, 5, 2, -5, NaN, 0]);
  assert.deepEqual([...topkIndices(small, 3)], [1, 2, 5]);
  assert.deepEqual([...topkIndices(new Float32Array(10), 4)], [0, 1, 2, 3]);
});

test("topk on the CNN's 1,663,370 values keeps exactly the top 1%", () => {
  const n = 1_663_370;
  const x = vector(n, 21);
  const k = keptCount(0.01, n);
  const idx = topkIndices(x, k);
  assert.equal(idx.length, k);
  for (let j = 1; j < k; j++) assert.ok(idx[j] > idx[j - 1]);
  const mags = Float32Array.from(x, Math.abs);
  const threshold = mags.slice().sort()[n - k];
  let above = 0;
  for (let i = 0; i < n; i++) if (mags[i] > threshold) above++;
  for (const i of idx) assert.ok(mags[i] >= threshold);
  assert.ok(above <= k);
});

test("randk keeps exactly k values, reproducible from the seed, uniformly", () => {
  const n = 10_007;
  const x = vector(n, 3);
  for (let i = 0; i < n; i++) if (x[i] === 0) x[i] = 1;
  const spec = parseCompression("randk:0.03");
  const k = keptCount(0.03, n);
  const a = encodeTensor(x, spec, { layoutHash: HASH, seed: 77 });
  const b = encodeTensor(x, spec, { layoutHash: HASH, seed: 77 });
  assert.deepEqual(a, b, "same seed, same envelope");
  const y = decodeTensor(a);
  const kept = [...y.keys()].filter((i) => y[i] !== 0);
  assert.equal(kept.length, k);
  assert.deepEqual(kept, [...randkIndices(n, k, 77)]);
  for (const i of kept) assert.equal(y[i], x[i]);
  const other = decodeTensor(encodeTensor(x, spec, { layoutHash: HASH, seed: 78 }));
  assert.notDeepEqual(
    [...other.keys()].filter((i) => other[i] !== 0),
    kept,
  );
  assert.equal(a.length, 56 + 16 + 4 * k + 4, "no indices on the wire");

  // each index is kept with probability k / n: 4000 draws of 10 of 50
  const counts = new Array<number>(50).fill(0);
  const T = 4000;
  for (let seed = 0; seed < T; seed++) for (const i of randkIndices(50, 10, seed)) counts[i]++;
  const mean = (T * 10) / 50;
  const sd = Math.sqrt(T * 0.2 * 0.8);
  for (const c of counts) assert.ok(Math.abs(c - mean) < 5 * sd, `count ${c}, expected ${mean}`);
});

test("compositions: a sparsifier's kept values go through the value codec", () => {
  const n = 20_000;
  const x = vector(n, 8);
  const segments = [7_000, 3, 12_997];
  for (const text of [
    "topk:0.01+int8",
    "topk:0.05+int4:tensor",
    "topk:0.02+qsgd:8",
    "topk:0.1+fp16",
    "randk:0.05+fp16",
    "randk:0.02+int2",
    "randk:0.05+int8:tensor",
  ]) {
    const spec = parseCompression(text);
    const sparsifier = spec.stages[0] as { kind: "topk" | "randk"; fraction: number };
    const k = keptCount(sparsifier.fraction, n);
    const seed = 31;
    const idx = sparsifier.kind === "topk" ? topkIndices(x, k) : randkIndices(n, k, seed);
    const env = encodeTensor(x, spec, { layoutHash: HASH, seed, segments });
    const y = decodeTensor(env);
    const kept = new Set(idx);
    // a bound that holds for every kept value: fp16 relative, int one step of the widest block, qsgd norm / s
    let mn = Infinity;
    let mx = -Infinity;
    let sq = 0;
    for (const i of idx) {
      mn = Math.min(mn, x[i]);
      mx = Math.max(mx, x[i]);
      sq += x[i] * x[i];
    }
    const codec = spec.stages[1];
    const bound = (v: number): number =>
      codec.kind === "fp16"
        ? Math.max(Math.abs(v) * 2 ** -11, 2 ** -25)
        : codec.kind === "int"
          ? ((mx - mn) / (2 ** codec.bits - 1)) * (1 + 1e-6)
          : (roundUpF32(Math.sqrt(sq)) / (codec as { levels: number }).levels) * (1 + 1e-6);
    for (let i = 0; i < n; i++) {
      if (!kept.has(i)) assert.equal(y[i], 0, `${text} [${i}] dropped`);
      else assert.ok(Math.abs(y[i] - x[i]) <= bound(x[i]), `${text} [${i}]: ${x[i]} -> ${y[i]}`);
    }
    assert.ok(env.length < (4 * n) / 10, `${text}: ${env.length} bytes`);
  }
});

test("non-finite values survive as non-finite (for the receiver to reject), other blocks are unaffected", () => {
  const x = vector(1024, 2);
  x[3] = NaN;
  x[600] = Infinity;
  for (const text of ["int8", "int4", "qsgd:4:256", "fp16", "none", "topk:0.01"]) {
    const y = decodeTensor(encodeTensor(x, parseCompression(text), { layoutHash: HASH, seed: 1 }));
    assert.ok(Number.isNaN(y[3]), `${text} NaN`);
    assert.ok(!Number.isFinite(y[600]), `${text} Infinity`);
    if (!text.startsWith("topk")) assert.ok(Number.isFinite(y[300]) && Number.isFinite(y[1000]), text);
  }
});
