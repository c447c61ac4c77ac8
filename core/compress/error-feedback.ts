/**
 * Error feedback ("memory") for sparsified updates: Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory";
 * Karimireddy, Rebjock, Stich & Jaggi 2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes".
 * A device compresses x = delta + residual instead of delta, and keeps residual = x - decode(sent): whatever a
 * sparsifier (or its value codec) did not deliver this round is added to the next one, so over rounds the sum of
 * what was sent plus the residual equals the sum of the deltas, and top-k / rand-k converge like the uncompressed
 * method. Chains without a sparsifier (unbiased quantizers) need no memory: their delta is sent as is.
 *
 * A non-finite residual entry (the update held NaN or Infinity: it is sent, for the server to reject) is reset to
 * 0 rather than remembered, so one diverged round does not poison every later update.
 *
 * Persisted form (toBytes / fromBytes), little endian:
 *   0   4  magic "FLR1"     4  1  version 1     5  3  reserved 0
 *   8   4  value count n    12 4  crc32 of bytes 0..11 followed by bytes 16..end
 *   16  4n residual, float32
 */
import { crc32 } from "node:zlib";
import { fail } from "../errors";
import type { CompressionSpec, EncodeOptions } from "./api";
import { decodeTensorInto, encodeTensor } from "./envelope";

const MAGIC = [0x46, 0x4c, 0x52, 0x31]; // "FLR1"
const VERSION = 1;
const HEADER = 16;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export class ErrorFeedback {
  readonly residual: Float32Array;
  /** x = delta + residual, reused across rounds (allocated on the first sparse round). */
  private scratch: Float32Array | null = null;

  constructor(
    readonly length: number,
    residual?: Float32Array,
  ) {
    if (!Number.isSafeInteger(length) || length < 0 || length > 0xffffffff) {
      fail("E_COMPRESS_RESIDUAL", `residual length ${length} is invalid`);
    }
    if (residual !== undefined) {
      if (!(residual instanceof Float32Array) || residual.length !== length) {
        fail("E_COMPRESS_RESIDUAL", `residual has ${residual?.length} values, expected ${length}`);
      }
      this.residual = residual.slice();
    } else this.residual = new Float32Array(length);
  }

  /** Encodes delta + residual (sparse chains) or delta (others); see the class comment. */
  compress(delta: Float32Array, spec: CompressionSpec, opts: EncodeOptions): Uint8Array {
    if (!(delta instanceof Float32Array) || delta.length !== this.length) {
      fail("E_COMPRESS_RESIDUAL", `delta has ${delta?.length} values, the residual ${this.length}`);
    }
    if (!spec?.sparse) return encodeTensor(delta, spec, opts);
    const r = this.residual;
    const n = this.length;
    const x = (this.scratch ??= new Float32Array(n));
    for (let i = 0; i < n; i++) x[i] = delta[i] + r[i];
    const env = encodeTensor(x, spec, opts); // may throw: the residual is still intact
    decodeTensorInto(env, r); // r = what the receiver will decode
    for (let i = 0; i < n; i++) {
      const e = x[i] - r[i];
      r[i] = e - e === 0 ? e : 0; // e - e is NaN for NaN and +-Infinity
    }
    return env;
  }

  /** Sets the residual to zero (e.g. when a job restarts from new global weights). */
  reset(): void {
    this.residual.fill(0);
  }

  toBytes(): Uint8Array {
    const n = this.length;
    const out = new Uint8Array(HEADER + 4 * n);
    const dv = new DataView(out.buffer);
    out.set(MAGIC, 0);
    out[4] = VERSION;
    dv.setUint32(8, n, true);
    if (LITTLE_ENDIAN) out.set(new Uint8Array(this.residual.buffer, this.residual.byteOffset, 4 * n), HEADER);
    else for (let i = 0; i < n; i++) dv.setFloat32(HEADER + 4 * i, this.residual[i], true);
    dv.setUint32(12, checksum(out), true);
    return out;
  }

  /** Reads toBytes() output; E_COMPRESS_RESIDUAL when it is damaged, truncated or of another length. */
  static fromBytes(bytes: Uint8Array, expectedLength: number): ErrorFeedback {
    const bad = (why: string): never => fail("E_COMPRESS_RESIDUAL", `error-feedback residual: ${why}`);
    if (!(bytes instanceof Uint8Array)) bad("not a byte array");
    if (bytes.length < HEADER) bad(`${bytes.length} bytes is shorter than the ${HEADER}-byte header`);
    for (let i = 0; i < 4; i++) if (bytes[i] !== MAGIC[i]) bad("bad magic");
    if (bytes[4] !== VERSION) bad(`version ${bytes[4]} is not supported (expected ${VERSION})`);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = dv.getUint32(8, true);
    if (n !== expectedLength) bad(`holds ${n} values, expected ${expectedLength}`);
    if (bytes.length !== HEADER + 4 * n)
      bad(`${bytes.length} bytes, expected ${HEADER + 4 * n} for ${n} values`);
    if (dv.getUint32(12, true) !== checksum(bytes)) bad("checksum mismatch");
    if (bytes[5] !== 0 || bytes[6] !== 0 || bytes[7] !== 0) bad("reserved bytes are not zero");
    const ef = new ErrorFeedback(n);
    const r = ef.residual;
    if (LITTLE_ENDIAN) new Uint8Array(r.buffer, r.byteOffset, 4 * n).set(bytes.subarray(HEADER));
    else for (let i = 0; i < n; i++) r[i] = dv.getFloat32(HEADER + 4 * i, true);
    return ef;
  }
}

function checksum(bytes: Uint8Array): number {
  return crc32(bytes.subarray(HEADER), crc32(bytes.subarray(0, 12)));
}
