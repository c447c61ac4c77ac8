/**
 * The compressed-tensor envelope: one self-describing, checksummed byte string per tensor.
 *
 * Byte layout, version 1 (all integers and floats little endian):
 *
 *   offset  size   field
 *   0       4      magic "FLZ1" (46 4C 5A 31)
 *   4       1      version = 1
 *   5       1      stage count S (0..2; 0 = raw float32, "none")
 *   6       2      reserved, 0
 *   8       4      header length H (the payload starts at H; a multiple of 4)
 *   12      4      value count n (the decoded vector's length)
 *   16      4      payload length P
 *   20      4      seed (uint32) of the stochastic rounding and of randk's index draw
 *   24      32     layout hash: the sha256 of the weight layout, raw bytes (64 hex digits in EnvelopeInfo)
 *   56      16 S   the stages in chain order, 16 bytes each:
 *                    +0  u8   codec id: 1 fp16, 2 int, 3 qsgd, 4 topk, 5 randk
 *                    +1  u8   int: bits (8, 4, 2); qsgd: levels (1..127); else 0
 *                    +2  u16  reserved, 0
 *                    +4  u32  int: block (0 = per tensor); qsgd: bucket; topk/randk: kept count k; else 0
 *                    +8  f64  topk/randk: fraction in (0, 1]; else 0
 *   56+16S  4+4T   only when the value codec is int with block 0 (per-tensor scales): u32 T, then T u32 tensor
 *                  sizes in the dense value vector (after a sparsifier: how many kept values fall in each tensor
 *                  of EncodeOptions.segments); they sum to m. No other bytes before H.
 *   H       P      payload
 *   H+P     4      crc32 (zlib.crc32, the IEEE/zlib polynomial) of bytes 0 .. H+P-1
 *
 * Payload. m = k after a sparsifier (k = max(1, round(fraction n)), 0 when n = 0), else m = n.
 *   topk:  u32 L, then L bytes: the k kept indices ascending, as LEB128 varints of idx[0], idx[j] - idx[j-1] - 1.
 *   randk: nothing: the decoder regenerates the indices from n, k and the seed (sparsify.ts, randkBitmap:
 *          Floyd's algorithm over xorshift32 draws; the exact procedure is part of the format).
 *   then the m dense values through the value codec: float32 x m when there is none; fp16 (fp16.ts), int
 *   (quantize.ts) or qsgd (qsgd.ts) otherwise. The size of this section follows from the header alone.
 * The decoded vector holds the dense values at the kept indices and zeros elsewhere.
 *
 * Reading checks, in order: at least 4 bytes (else E_ENVELOPE_TRUNCATED) and the magic (E_ENVELOPE_MAGIC), version (E_ENVELOPE_VERSION), fixed header
 * present and total length = H + P + 4 (E_ENVELOPE_TRUNCATED when shorter, E_ENVELOPE_HEADER when longer or H
 * malformed), crc32 (E_ENVELOPE_CHECKSUM), then every header field and the payload length against the codec chain
 * (E_ENVELOPE_HEADER), the caller's expected layout and length (E_ENVELOPE_LAYOUT), and while decoding a top-k
 * index list that is malformed despite a valid checksum (E_ENVELOPE_PAYLOAD, checked before anything is written).
 * Nothing is read outside the given bytes and only FlotillaErrors are thrown.
 *
 * Non-finite input is not an error: fp16 and float32 carry it as is, a top-k keeps NaN/Infinity first, and an int
 * block or qsgd bucket holding one decodes to NaN throughout, so the receiver's finiteness check rejects the update
 * as it would a raw one.
 */
import { crc32 } from "node:zlib";
import { fail } from "../errors";
import type { CodecStage, CompressionSpec, EncodeOptions, EnvelopeInfo } from "./api";
import { decodeFp16, encodeFp16, fp16Size } from "./fp16";
import { decodeInt, encodeInt, intBlockCount, intSize } from "./quantize";
import { decodeQsgd, encodeQsgd, qsgdSize } from "./qsgd";
import { keptCount, specFromStages, MAX_BLOCK, MAX_QSGD_LEVELS } from "./spec";
import {
  BitmapReader,
  checkGaps,
  GapReader,
  gapsSize,
  randkBitmap,
  randkIndices,
  topkIndices,
  writeGaps,
} from "./sparsify";

export const ENVELOPE_MAGIC = "FLZ1";
export const ENVELOPE_VERSION = 1;
const MAGIC = [0x46, 0x4c, 0x5a, 0x31];
const FIXED = 56;
const STAGE_BYTES = 16;
const MAX_U32 = 0xffffffff;

const enum Id {
  Fp16 = 1,
  Int = 2,
  Qsgd = 3,
  Topk = 4,
  Randk = 5,
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

type Sparsifier = Extract<CodecStage, { kind: "topk" | "randk" }>;
type ValueCodec = Exclude<CodecStage, Sparsifier>;

/** What parse() learns from a checked header. */
interface Header {
  readonly info: EnvelopeInfo;
  readonly n: number;
  readonly seed: number;
  readonly sparsifier: Sparsifier | null;
  readonly value: ValueCodec | null;
  /** Dense values in the value section (k or n). */
  readonly m: number;
  readonly segments: number[] | null;
  readonly payload: number;
  readonly payloadLength: number;
}

// ---- encoding -------------------------------------------------------------------------------------------------

/** Encodes x as one envelope (see the layout above). */
export function encodeTensor(x: Float32Array, spec: CompressionSpec, opts: EncodeOptions): Uint8Array {
  if (!(x instanceof Float32Array)) fail("E_COMPRESS_INPUT", "encodeTensor needs a Float32Array");
  if (typeof spec !== "object" || spec === null)
    fail("E_COMPRESS_SPEC", "encodeTensor needs a compression spec");
  const checked = specFromStages(spec.stages);
  if (typeof opts !== "object" || opts === null) fail("E_COMPRESS_OPTIONS", "encodeTensor needs options");
  const hash = hashBytes(opts.layoutHash);
  const seed = opts.seed;
  if (typeof seed !== "number" || !Number.isInteger(seed)) {
    fail("E_COMPRESS_OPTIONS", `seed must be an integer, got ${String(seed)}`);
  }
  const n = x.length;
  if (n > MAX_U32) fail("E_COMPRESS_INPUT", `${n} values do not fit an envelope (at most ${MAX_U32})`);
  const segments = checkSegments(opts.segments, n);
  const seed32 = seed >>> 0;

  const sparsifier = (checked.stages.find((s) => s.kind === "topk" || s.kind === "randk") ??
    null) as Sparsifier | null;
  const value = (checked.stages.find((s) => s.kind !== "topk" && s.kind !== "randk") ??
    null) as ValueCodec | null;

  let dense = x;
  let idx: Uint32Array | null = null;
  let k = 0;
  if (sparsifier) {
    k = keptCount(sparsifier.fraction, n);
    idx = sparsifier.kind === "topk" ? topkIndices(x, k) : randkIndices(n, k, seed32);
    dense = new Float32Array(k);
    for (let j = 0; j < k; j++) dense[j] = x[idx[j]];
  }
  const m = dense.length;
  let valueSegments: number[] | null = null;
  if (value?.kind === "int" && value.block === 0) {
    const segs = segments ?? [n];
    valueSegments = idx ? countPerSegment(idx, segs) : [...segs];
  }

  const gapBytes = sparsifier?.kind === "topk" && idx ? gapsSize(idx) : -1;
  const indexSection = gapBytes >= 0 ? 4 + gapBytes : 0;
  const payloadLength = indexSection + valueSectionSize(value, m, valueSegments);
  if (payloadLength > MAX_U32) fail("E_COMPRESS_INPUT", `payload of ${payloadLength} bytes is too large`);
  const stages = checked.stages.length;
  const headerLength = FIXED + STAGE_BYTES * stages + (valueSegments ? 4 + 4 * valueSegments.length : 0);
  // Uninitialised memory (a fresh zeroed allocation of megabytes costs more in page faults than the codec): the
  // header is zeroed here, sections written with |= are zeroed below, and every other byte is written.
  const total = headerLength + payloadLength + 4;
  const raw = Buffer.allocUnsafeSlow(total);
  const out = new Uint8Array(raw.buffer, raw.byteOffset, total);
  out.fill(0, 0, headerLength);
  const dv = new DataView(out.buffer, out.byteOffset, total);

  out.set(MAGIC, 0);
  out[4] = ENVELOPE_VERSION;
  out[5] = stages;
  dv.setUint32(8, headerLength, true);
  dv.setUint32(12, n, true);
  dv.setUint32(16, payloadLength, true);
  dv.setUint32(20, seed32, true);
  out.set(hash, 24);
  let o = FIXED;
  for (const s of checked.stages) {
    switch (s.kind) {
      case "fp16":
        out[o] = Id.Fp16;
        break;
      case "int":
        out[o] = Id.Int;
        out[o + 1] = s.bits;
        dv.setUint32(o + 4, s.block, true);
        break;
      case "qsgd":
        out[o] = Id.Qsgd;
        out[o + 1] = s.levels;
        dv.setUint32(o + 4, s.bucket, true);
        break;
      case "topk":
      case "randk":
        out[o] = s.kind === "topk" ? Id.Topk : Id.Randk;
        dv.setUint32(o + 4, k, true);
        dv.setFloat64(o + 8, s.fraction, true);
        break;
    }
    o += STAGE_BYTES;
  }
  if (valueSegments) {
    dv.setUint32(o, valueSegments.length, true);
    o += 4;
    for (const v of valueSegments) {
      dv.setUint32(o, v, true);
      o += 4;
    }
  }

  let p = headerLength;
  if (gapBytes >= 0 && idx) {
    dv.setUint32(p, gapBytes, true);
    p = writeGaps(idx, out, p + 4);
  }
  if (value === null) writeFloat32(dense, m, out, p);
  else if (value.kind === "fp16") encodeFp16(dense, 0, m, out, p);
  else {
    out.fill(0, p, headerLength + payloadLength); // packed codes are or-ed in; constant blocks skip theirs
    if (value.kind === "int") encodeInt(dense, m, value.bits, value.block, valueSegments, out, p, seed32);
    else encodeQsgd(dense, m, value.levels, value.bucket, out, p, seed32);
  }

  const end = headerLength + payloadLength;
  dv.setUint32(end, crc32(out.subarray(0, end)), true);
  return out;
}

function valueSectionSize(value: ValueCodec | null, m: number, segments: readonly number[] | null): number {
  if (value === null) return 4 * m;
  switch (value.kind) {
    case "fp16":
      return fp16Size(m);
    case "int":
      return intSize(value.bits, m, intBlockCount(m, value.block, segments));
    case "qsgd":
      return qsgdSize(value.levels, value.bucket, m);
  }
}

/** Kept values per segment, for ascending indices. */
function countPerSegment(idx: Uint32Array, segments: readonly number[]): number[] {
  const counts = new Array<number>(segments.length).fill(0);
  let seg = 0;
  let segEnd = segments[0] ?? 0;
  for (let j = 0; j < idx.length; j++) {
    while (idx[j] >= segEnd) segEnd += segments[++seg];
    counts[seg]++;
  }
  return counts;
}

function checkSegments(segments: readonly number[] | undefined, n: number): readonly number[] | null {
  if (segments === undefined) return null;
  if (!Array.isArray(segments)) fail("E_COMPRESS_SEGMENTS", "segments must be an array of tensor sizes");
  let sum = 0;
  for (let i = 0; i < segments.length; i++) {
    const v: unknown = segments[i];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      fail("E_COMPRESS_SEGMENTS", `segment ${i} has invalid size ${String(v)}`);
    }
    sum += v;
  }
  if (sum !== n) fail("E_COMPRESS_SEGMENTS", `segment sizes sum to ${sum}, the tensor has ${n} values`);
  if (segments.length > MAX_U32 / 4) fail("E_COMPRESS_SEGMENTS", `too many segments (${segments.length})`);
  return segments;
}

const HEX = /^[0-9a-f]{64}$/i;

function hashBytes(hex: unknown): Uint8Array {
  if (typeof hex !== "string" || !HEX.test(hex)) {
    fail(
      "E_COMPRESS_OPTIONS",
      `layoutHash must be 64 hex digits (a sha256), got '${String(hex).slice(0, 80)}'`,
    );
  }
  const b = new Uint8Array(32);
  for (let i = 0; i < 32; i++) b[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return b;
}

function writeFloat32(src: Float32Array, m: number, dst: Uint8Array, off: number): void {
  if (LITTLE_ENDIAN) dst.set(new Uint8Array(src.buffer, src.byteOffset, 4 * m), off);
  else {
    const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
    for (let i = 0; i < m; i++) dv.setFloat32(off + 4 * i, src[i], true);
  }
}

function readFloat32(src: Uint8Array, off: number, m: number, out: Float32Array, at: number): void {
  if (LITTLE_ENDIAN)
    new Uint8Array(out.buffer, out.byteOffset + 4 * at, 4 * m).set(src.subarray(off, off + 4 * m));
  else {
    const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
    for (let i = 0; i < m; i++) out[at + i] = dv.getFloat32(off + 4 * i, true);
  }
}

// ---- reading --------------------------------------------------------------------------------------------------

/** True when bytes start with the envelope magic (nothing else is checked). */
export function isEnvelope(bytes: Uint8Array): boolean {
  if (!(bytes instanceof Uint8Array) || bytes.length < 4) return false;
  for (let i = 0; i < 4; i++) if (bytes[i] !== MAGIC[i]) return false;
  return true;
}

/** Checks the header and checksum (not the payload's contents) and says what the envelope holds. */
export function readEnvelope(bytes: Uint8Array): EnvelopeInfo {
  return parse(bytes).info;
}

/**
 * Checks the envelope, then writes its `length` values into `out` (exactly that long): zeros where a sparsifier
 * dropped values. Allocates nothing proportional to the vector: sparse chains decode their dense values into the
 * tail of `out` and scatter them forward in place.
 */
export function decodeTensorInto(
  bytes: Uint8Array,
  out: Float32Array,
  expect?: { layoutHash?: string; length?: number },
): EnvelopeInfo {
  const h = parse(bytes);
  checkExpected(h.info, expect);
  if (!(out instanceof Float32Array)) fail("E_ENVELOPE_LAYOUT", "decode target must be a Float32Array");
  if (out.length !== h.n) {
    fail("E_ENVELOPE_LAYOUT", `envelope holds ${h.n} values, the output has room for ${out.length}`);
  }
  decodeChecked(bytes, h, out);
  return h.info;
}

/** decodeTensorInto a new Float32Array. */
export function decodeTensor(
  bytes: Uint8Array,
  expect?: { layoutHash?: string; length?: number },
): Float32Array {
  const h = parse(bytes);
  checkExpected(h.info, expect);
  const out = new Float32Array(h.n);
  decodeChecked(bytes, h, out);
  return out;
}

function decodeChecked(bytes: Uint8Array, h: Header, out: Float32Array): void {
  const { n, m, sparsifier, value } = h;
  let p = h.payload;
  if (sparsifier?.kind === "topk") {
    const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(p, true);
    const problem = checkGaps(bytes, p + 4, len, m, n);
    if (problem) fail("E_ENVELOPE_PAYLOAD", `top-k ${problem}`);
    p += 4 + len;
  }
  const at = n - m; // 0 without a sparsifier
  if (value === null) readFloat32(bytes, p, m, out, at);
  else if (value.kind === "fp16") decodeFp16(bytes, p, m, out, at);
  else if (value.kind === "int") decodeInt(bytes, p, m, value.bits, value.block, h.segments, out, at);
  else decodeQsgd(bytes, p, m, value.levels, value.bucket, out, at);

  if (sparsifier) {
    // Indices ascend, so idx[j] <= n - m + j: writing out[idx[j]] and zeroing the gap before it never touches
    // the dense values j + 1 .. m - 1 still waiting at out[at + j + 1 ..].
    const next =
      sparsifier.kind === "topk"
        ? new GapReader(bytes, h.payload + 4)
        : new BitmapReader(randkBitmap(n, m, h.seed));
    let z = 0;
    for (let j = 0; j < m; j++) {
      const i = next.next();
      const v = out[at + j];
      while (z < i) out[z++] = 0;
      out[i] = v;
      z = i + 1;
    }
    while (z < n) out[z++] = 0;
  }
}

function checkExpected(info: EnvelopeInfo, expect?: { layoutHash?: string; length?: number }): void {
  if (!expect) return;
  if (expect.layoutHash !== undefined && String(expect.layoutHash).toLowerCase() !== info.layoutHash) {
    fail(
      "E_ENVELOPE_LAYOUT",
      `envelope layout ${info.layoutHash.slice(0, 12)} does not match the expected ${String(expect.layoutHash).slice(0, 12)}`,
    );
  }
  if (expect.length !== undefined && expect.length !== info.length) {
    fail("E_ENVELOPE_LAYOUT", `envelope holds ${info.length} values, expected ${expect.length}`);
  }
}

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

function parse(bytes: Uint8Array): Header {
  if (!(bytes instanceof Uint8Array)) fail("E_ENVELOPE_MAGIC", "an envelope must be a Uint8Array");
  const total = bytes.length;
  if (total < 4) fail("E_ENVELOPE_TRUNCATED", `envelope of ${total} bytes is shorter than its magic`);
  if (!isEnvelope(bytes)) fail("E_ENVELOPE_MAGIC", "not a compressed-tensor envelope (bad magic)");
  if (total < 5) fail("E_ENVELOPE_TRUNCATED", `envelope of ${total} bytes ends before its version`);
  if (bytes[4] !== ENVELOPE_VERSION) {
    fail(
      "E_ENVELOPE_VERSION",
      `envelope version ${bytes[4]} is not supported (expected ${ENVELOPE_VERSION})`,
    );
  }
  if (total < FIXED)
    fail("E_ENVELOPE_TRUNCATED", `envelope of ${total} bytes is shorter than its ${FIXED}-byte header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = dv.getUint32(8, true);
  const n = dv.getUint32(12, true);
  const payloadLength = dv.getUint32(16, true);
  const seed = dv.getUint32(20, true);
  const bad = (why: string): never => fail("E_ENVELOPE_HEADER", `envelope header: ${why}`);
  if (headerLength < FIXED || headerLength % 4 !== 0) bad(`header length ${headerLength} is invalid`);
  const end = headerLength + payloadLength; // < 2^33: exact
  if (total < end + 4) {
    fail("E_ENVELOPE_TRUNCATED", `envelope has ${total} bytes, its header announces ${end + 4}`);
  }
  if (total > end + 4) bad(`${total - end - 4} bytes after the checksum`);
  const stored = dv.getUint32(end, true);
  const computed = crc32(bytes.subarray(0, end));
  if (stored !== computed) {
    fail(
      "E_ENVELOPE_CHECKSUM",
      `envelope checksum mismatch (stored ${stored.toString(16)}, computed ${computed.toString(16)})`,
    );
  }

  // The checksum holds: what follows catches envelopes written wrong, not damaged in transit.
  const count = bytes[5];
  if (count > 2) bad(`${count} stages (at most 2)`);
  if (bytes[6] !== 0 || bytes[7] !== 0) bad("reserved bytes 6-7 are not zero");
  if (headerLength < FIXED + STAGE_BYTES * count)
    bad(`header length ${headerLength} leaves no room for ${count} stages`);
  const stages: CodecStage[] = [];
  let k = -1;
  for (let s = 0; s < count; s++) {
    const o = FIXED + STAGE_BYTES * s;
    const id = bytes[o];
    const a = bytes[o + 1];
    const b = dv.getUint32(o + 4, true);
    const c = dv.getFloat64(o + 8, true);
    const where = `stage ${s} (codec id ${id})`;
    if (dv.getUint16(o + 2, true) !== 0) bad(`${where}: reserved bytes are not zero`);
    const unused = (aUsed: boolean, bUsed: boolean, cUsed: boolean): void => {
      if ((!aUsed && a !== 0) || (!bUsed && b !== 0) || (!cUsed && !Object.is(c, 0))) {
        bad(`${where}: unused parameter bytes are not zero`);
      }
    };
    switch (id) {
      case Id.Fp16:
        unused(false, false, false);
        stages.push({ kind: "fp16" });
        break;
      case Id.Int:
        unused(true, true, false);
        if (a !== 8 && a !== 4 && a !== 2) bad(`${where}: int bits ${a} (expected 8, 4 or 2)`);
        if (b > MAX_BLOCK) bad(`${where}: block ${b} exceeds ${MAX_BLOCK}`);
        stages.push({ kind: "int", bits: a as 8 | 4 | 2, block: b });
        break;
      case Id.Qsgd:
        unused(true, true, false);
        if (a < 1 || a > MAX_QSGD_LEVELS) bad(`${where}: qsgd levels ${a} (expected 1..${MAX_QSGD_LEVELS})`);
        if (b < 1 || b > MAX_BLOCK) bad(`${where}: qsgd bucket ${b} (expected 1..${MAX_BLOCK})`);
        stages.push({ kind: "qsgd", levels: a, bucket: b });
        break;
      case Id.Topk:
      case Id.Randk: {
        unused(false, true, true);
        if (!(c > 0 && c <= 1)) bad(`${where}: fraction ${c} is not in (0, 1]`);
        if (b !== keptCount(c, n))
          bad(`${where}: kept count ${b} does not match fraction ${c} of ${n} values`);
        k = b;
        stages.push({ kind: id === Id.Topk ? "topk" : "randk", fraction: c });
        break;
      }
      default:
        bad(`${where}: unknown codec id`);
    }
  }
  let spec: CompressionSpec;
  try {
    spec = specFromStages(stages);
  } catch (e) {
    return bad(e instanceof Error ? e.message : String(e));
  }
  const sparsifier = (spec.stages.find((s) => s.kind === "topk" || s.kind === "randk") ??
    null) as Sparsifier | null;
  const value = (spec.stages.find((s) => s.kind !== "topk" && s.kind !== "randk") ??
    null) as ValueCodec | null;
  const m = sparsifier ? k : n;

  let o = FIXED + STAGE_BYTES * count;
  let segments: number[] | null = null;
  if (value?.kind === "int" && value.block === 0) {
    if (headerLength < o + 4) bad("per-tensor segment table is missing");
    const t = dv.getUint32(o, true);
    o += 4;
    if (t > (headerLength - o) / 4) bad(`segment table of ${t} entries does not fit the header`);
    segments = new Array<number>(t);
    let sum = 0;
    for (let i = 0; i < t; i++, o += 4) sum += segments[i] = dv.getUint32(o, true);
    if (sum !== m) bad(`segment sizes sum to ${sum}, expected ${m}`);
  }
  if (o !== headerLength) bad(`header length ${headerLength} does not match its contents (${o} bytes)`);

  let expected = valueSectionSize(value, m, segments);
  if (sparsifier?.kind === "topk") {
    if (payloadLength < 4) bad(`payload of ${payloadLength} bytes has no top-k index list`);
    const len = dv.getUint32(headerLength, true);
    if (len < m || len > 5 * m) bad(`top-k index list of ${len} bytes for ${m} indices`);
    expected += 4 + len;
  }
  if (payloadLength !== expected)
    bad(`payload is ${payloadLength} bytes, '${spec.text}' of ${n} values needs ${expected}`);

  let layoutHash = "";
  for (let i = 24; i < 56; i++) layoutHash += HEX_BYTE[bytes[i]];
  const info: EnvelopeInfo = Object.freeze({
    version: ENVELOPE_VERSION,
    spec,
    layoutHash,
    length: n,
    byteLength: total,
  });
  return { info, n, seed, sparsifier, value, m, segments, payload: headerLength, payloadLength };
}
