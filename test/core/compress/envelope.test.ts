import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  decodeTensor,
  decodeTensorInto,
  encodeTensor,
  isEnvelope,
  parseCompression,
  readEnvelope,
} from "../../../core/compress";
import { codeOf, HASH, OTHER_HASH, reseal, vector } from "./helpers";

const SPECS = [
  "none",
  "fp16",
  "int8",
  "int4:100",
  "int2:tensor",
  "qsgd:5:64",
  "topk:0.05",
  "topk:0.05+int8",
  "randk:0.1+fp16",
  "topk:0.1+int4:tensor",
];
const SEGMENTS = [300, 1, 0, 699];
const N = 1000;

function envelope(text: string, n = N, seed = 5): Uint8Array {
  const segments = n === N ? SEGMENTS : undefined;
  return encodeTensor(vector(n, 4), parseCompression(text), { layoutHash: HASH, seed, segments });
}

test("readEnvelope reports the header; the documented fixed fields sit where envelope.ts says", () => {
  for (const text of SPECS) {
    const env = envelope(text);
    const info = readEnvelope(env);
    assert.deepEqual(
      { ...info, spec: info.spec.text },
      { version: 1, spec: text, layoutHash: HASH, length: N, byteLength: env.length },
    );
    assert.ok(isEnvelope(env));
    assert.equal(Buffer.from(env.subarray(0, 4)).toString("latin1"), "FLZ1");
    const dv = new DataView(env.buffer, env.byteOffset);
    assert.equal(env[4], 1);
    assert.equal(env[5], info.spec.stages.length);
    const h = dv.getUint32(8, true);
    assert.equal(dv.getUint32(12, true), N);
    assert.equal(h + dv.getUint32(16, true) + 4, env.length);
    assert.equal(dv.getUint32(20, true), 5);
    assert.equal(Buffer.from(env.subarray(24, 56)).toString("hex"), HASH);
  }
  assert.ok(!isEnvelope(new Uint8Array([0x46, 0x4c, 0x5a])));
  assert.ok(!isEnvelope(new Uint8Array(64)));
  assert.equal(readEnvelope(envelope("int8")).spec.text, "int8");
  assert.equal(readEnvelope(envelope("int2:tensor")).spec.text, "int2:tensor");
});

test("every spec round-trips with n = 0 and n = 1", () => {
  for (const text of SPECS) {
    for (const n of [0, 1]) {
      const x = Float32Array.from({ length: n }, () => 0.5);
      const env = encodeTensor(x, parseCompression(text), { layoutHash: HASH, seed: 1 });
      const y = decodeTensor(env, { length: n });
      assert.equal(y.length, n, text);
      if (n === 1) assert.ok(Math.abs(y[0] - 0.5) < 1e-3, `${text}: ${y[0]}`);
    }
  }
});

test("truncation at every offset is E_ENVELOPE_TRUNCATED (or E_ENVELOPE_MAGIC/VERSION when cut inside those)", () => {
  for (const text of SPECS) {
    const env = envelope(text);
    for (let cut = 0; cut < env.length; cut += cut < 80 ? 1 : 37) {
      const code = codeOf(() => readEnvelope(env.subarray(0, cut)));
      assert.equal(code, "E_ENVELOPE_TRUNCATED", `${text} cut at ${cut}`);
      assert.equal(
        codeOf(() => decodeTensor(env.slice(0, cut))),
        "E_ENVELOPE_TRUNCATED",
      );
    }
  }
});

test("a flipped byte anywhere is an E_ENVELOPE_* error; in the payload or checksum it is E_ENVELOPE_CHECKSUM", () => {
  for (const text of SPECS) {
    const env = envelope(text, 200);
    const h = new DataView(env.buffer).getUint32(8, true);
    const out = new Float32Array(200);
    for (let i = 0; i < env.length; i++) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const bad = env.slice();
        bad[i] ^= mask;
        const code = codeOf(() => decodeTensorInto(bad, out));
        assert.match(code, /^E_ENVELOPE_/, `${text} byte ${i}`);
        if (i >= h || (i >= 20 && i < 56)) assert.equal(code, "E_ENVELOPE_CHECKSUM", `${text} byte ${i}`);
      }
    }
  }
});

test("wrong magic, version, trailing bytes and layout are reported by their own codes", () => {
  const env = envelope("int8");
  const magic = env.slice();
  magic[0] = 0x47;
  assert.equal(
    codeOf(() => readEnvelope(magic)),
    "E_ENVELOPE_MAGIC",
  );
  assert.equal(
    codeOf(() => readEnvelope(new Float32Array(4) as unknown as Uint8Array)),
    "E_ENVELOPE_MAGIC",
  );
  const version = env.slice();
  version[4] = 2;
  assert.equal(
    codeOf(() => readEnvelope(version)),
    "E_ENVELOPE_VERSION",
  );
  const longer = new Uint8Array(env.length + 1);
  longer.set(env);
  assert.equal(
    codeOf(() => readEnvelope(longer)),
    "E_ENVELOPE_HEADER",
  );

  assert.equal(
    codeOf(() => decodeTensor(env, { layoutHash: OTHER_HASH })),
    "E_ENVELOPE_LAYOUT",
  );
  assert.equal(
    codeOf(() => decodeTensor(env, { length: N + 1 })),
    "E_ENVELOPE_LAYOUT",
  );
  assert.equal(
    codeOf(() => decodeTensorInto(env, new Float32Array(N - 1))),
    "E_ENVELOPE_LAYOUT",
  );
  assert.equal(
    codeOf(() => decodeTensorInto(env, new Float32Array(N), { layoutHash: OTHER_HASH })),
    "E_ENVELOPE_LAYOUT",
  );
  assert.equal(decodeTensor(env, { layoutHash: HASH.toUpperCase(), length: N }).length, N);
});

test("headers that pass the checksum but are inconsistent are E_ENVELOPE_HEADER", () => {
  const edits: [string, (b: Uint8Array, dv: DataView) => void][] = [
    ["stage count 3", (b) => (b[5] = 3)],
    ["reserved byte", (b) => (b[6] = 1)],
    ["unknown codec id", (b) => (b[56] = 9)],
    ["int bits 3", (b) => (b[57] = 3)],
    ["int block too large", (_, dv) => dv.setUint32(60, 2 ** 25, true)],
    ["int block changes the payload size", (_, dv) => dv.setUint32(60, 128, true)],
    ["stage reserved", (b) => (b[58] = 1)],
    ["unused f64", (_, dv) => dv.setFloat64(64, 1, true)],
    ["value count", (_, dv) => dv.setUint32(12, N + 1, true)],
    ["header length not a multiple of 4", (_, dv) => dv.setUint32(8, 75, true)],
  ];
  for (const [what, edit] of edits) {
    const b = envelope("int8").slice();
    edit(b, new DataView(b.buffer));
    assert.equal(
      codeOf(() => readEnvelope(reseal(b))),
      "E_ENVELOPE_HEADER",
      what,
    );
  }
  const topk = (edit: (b: Uint8Array, dv: DataView) => void): Uint8Array => {
    const b = envelope("topk:0.05").slice();
    edit(b, new DataView(b.buffer));
    return reseal(b);
  };
  assert.equal(
    codeOf(() => readEnvelope(topk((_, dv) => dv.setUint32(60, 51, true)))),
    "E_ENVELOPE_HEADER",
    "k",
  );
  assert.equal(
    codeOf(() => readEnvelope(topk((_, dv) => dv.setFloat64(64, 1.5, true)))),
    "E_ENVELOPE_HEADER",
  );
  assert.equal(
    codeOf(() => readEnvelope(topk((_, dv) => dv.setFloat64(64, NaN, true)))),
    "E_ENVELOPE_HEADER",
  );
  assert.equal(
    codeOf(() => readEnvelope(topk((b) => (b[72] = 1)))),
    "E_ENVELOPE_HEADER",
    "index list length",
  );
  // swapping stage order (int8 then topk) is a bad chain
  const chain = envelope("topk:0.05+int8").slice();
  const first = chain.slice(56, 72);
  chain.copyWithin(56, 72, 88);
  chain.set(first, 72);
  assert.equal(
    codeOf(() => readEnvelope(reseal(chain))),
    "E_ENVELOPE_HEADER",
  );
});

test("a malformed top-k index list with a valid checksum is E_ENVELOPE_PAYLOAD and writes nothing", () => {
  const env = envelope("topk:0.05");
  const h = new DataView(env.buffer).getUint32(8, true);
  const out = new Float32Array(N).fill(7);
  for (const [what, edit] of [
    ["continuation bits", (b: Uint8Array) => b.fill(0x80, h + 4, h + 12)],
    ["index beyond n", (b: Uint8Array) => (b[h + 4] = 0x7f)],
  ] as const) {
    const b = env.slice();
    // make the first varint large: gaps of 127 twice push later indices past n only for "index beyond n"
    edit(b);
    if (what === "index beyond n") for (let i = h + 4; i < h + 4 + 50; i++) b[i] = 0x7f;
    assert.equal(
      codeOf(() => decodeTensorInto(reseal(b), out)),
      "E_ENVELOPE_PAYLOAD",
      what,
    );
    assert.ok(
      out.every((v) => v === 7),
      `${what}: out untouched`,
    );
  }
});

test("random damage never throws anything but an E_ENVELOPE_* FlotillaError", () => {
  let s = 424242;
  const rand = (n: number): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
  for (const text of SPECS) {
    const env = envelope(text, 300);
    const out = new Float32Array(300);
    for (let trial = 0; trial < 300; trial++) {
      let b = env.slice();
      const edits = 1 + rand(4);
      for (let e = 0; e < edits; e++) b[rand(b.length)] = rand(256);
      if (rand(3) === 0) b = b.slice(0, rand(b.length + 1));
      if (rand(2) === 0 && b.length >= 60) {
        const dv = new DataView(b.buffer);
        const end = Math.min(b.length - 4, dv.getUint32(8, true) + dv.getUint32(16, true));
        if (end >= 0 && end + 4 === b.length) reseal(b);
      }
      try {
        decodeTensorInto(b, out);
      } catch (e) {
        const code = (e as { code?: string }).code ?? "";
        assert.match(code, /^E_ENVELOPE_/, `${text}: ${String(e)}`);
      }
    }
  }
});

test("decodeTensorInto writes into the given view only, from any byte alignment", () => {
  for (const text of SPECS) {
    const env = envelope(text);
    const want = decodeTensor(env);
    const big = new Float32Array(N + 8).fill(-1);
    const view = big.subarray(3, 3 + N);
    const info = decodeTensorInto(env, view, { layoutHash: HASH, length: N });
    assert.equal(info.length, N);
    assert.deepEqual(view, want, text);
    assert.ok(big.subarray(0, 3).every((v) => v === -1) && big.subarray(3 + N).every((v) => v === -1));
    // the envelope at an odd byte offset (as inside a larger message buffer)
    const host = new Uint8Array(env.length + 3);
    host.set(env, 1);
    assert.deepEqual(decodeTensor(host.subarray(1, 1 + env.length)), want, `${text} unaligned`);
    // re-used output: stale values must be overwritten (zeros where a sparsifier dropped values)
    const stale = new Float32Array(N).fill(123);
    decodeTensorInto(env, stale);
    assert.deepEqual(stale, want, `${text} stale output`);
  }
});

test("encodeTensor validates its options", () => {
  const x = vector(10, 1);
  const spec = parseCompression("int8:tensor");
  assert.equal(
    codeOf(() => encodeTensor(x, spec, { layoutHash: "abc", seed: 1 })),
    "E_COMPRESS_OPTIONS",
  );
  assert.equal(
    codeOf(() => encodeTensor(x, spec, { layoutHash: HASH, seed: 1.5 })),
    "E_COMPRESS_OPTIONS",
  );
  assert.equal(
    codeOf(() => encodeTensor(x, spec, { layoutHash: HASH, seed: 1, segments: [5, 4] })),
    "E_COMPRESS_SEGMENTS",
  );
  assert.equal(
    codeOf(() => encodeTensor(x, spec, { layoutHash: HASH, seed: 1, segments: [11, -1] })),
    "E_COMPRESS_SEGMENTS",
  );
  assert.equal(
    codeOf(() => encodeTensor(x, spec, { layoutHash: HASH, seed: 1, segments: [2.5, 7.5] })),
    "E_COMPRESS_SEGMENTS",
  );
  assert.equal(
    codeOf(() =>
      encodeTensor(x, { stages: [{ kind: "int", bits: 3, block: 1 }] } as never, {
        layoutHash: HASH,
        seed: 1,
      }),
    ),
    "E_COMPRESS_SPEC",
  );
  assert.equal(
    codeOf(() => encodeTensor([1, 2] as never, spec, { layoutHash: HASH, seed: 1 })),
    "E_COMPRESS_INPUT",
  );
  // negative and large seeds are taken modulo 2^32
  const a = encodeTensor(x, parseCompression("int8"), { layoutHash: HASH, seed: -1 });
  assert.equal(new DataView(a.buffer).getUint32(20, true), 0xffffffff);
});
