/**
 * Strategy state as one binary blob (the Function stores it next to the model it belongs to, models/{r}.state):
 *
 *   "FLSS" | u32 LE format version (1) | u32 LE header length | header: UTF-8 JSON
 *   { strategy, size, steps, tensors: [name, …] } | zero padding to a multiple of 8 | each tensor's `size`
 *   float64 values, little-endian, in the header's order
 *
 * The JSON stays a few dozen bytes whatever the model size; the moments (model-sized) are raw float64, so a
 * restored optimizer is bit-for-bit the one that was saved.
 */
import { fail } from "../errors";
import type { StrategyState } from "./strategy";

const MAGIC = [0x46, 0x4c, 0x53, 0x53]; // "FLSS"
const VERSION = 1;
/** On little-endian hosts (all Node targets in practice) tensors are copied as bytes, not value by value. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

interface Header {
  strategy: string;
  size: number;
  steps: number;
  tensors: string[];
}

export function encodeStrategyState(s: StrategyState): Uint8Array {
  const names = Object.keys(s.tensors);
  const header: Header = { strategy: s.strategy, size: s.size, steps: s.steps, tensors: names };
  const json = new TextEncoder().encode(JSON.stringify(header));
  const start = Math.ceil((12 + json.byteLength) / 8) * 8;
  const out = new Uint8Array(start + names.length * s.size * 8);
  out.set(MAGIC, 0);
  const view = new DataView(out.buffer);
  view.setUint32(4, VERSION, true);
  view.setUint32(8, json.byteLength, true);
  out.set(json, 12);
  let at = start;
  for (const name of names) {
    const t = s.tensors[name];
    if (t.length !== s.size) {
      fail("E_STRATEGY_STATE", `strategy state tensor '${name}' has ${t.length} values, expected ${s.size}`);
    }
    if (LITTLE_ENDIAN) {
      out.set(new Uint8Array(t.buffer, t.byteOffset, t.byteLength), at);
      at += t.byteLength;
    } else {
      for (let i = 0; i < t.length; i++, at += 8) view.setFloat64(at, t[i], true);
    }
  }
  return out;
}

/** Parses a blob written by encodeStrategyState; anything else throws FlotillaError E_STRATEGY_STATE. */
export function decodeStrategyState(bytes: Uint8Array): StrategyState {
  const bad = (why: string): never => fail("E_STRATEGY_STATE", `strategy state blob: ${why}`);
  if (!(bytes instanceof Uint8Array) || bytes.byteLength < 12) return bad("too short");
  if (MAGIC.some((b, i) => bytes[i] !== b)) return bad("not a strategy state (bad magic)");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(4, true);
  if (version !== VERSION) return bad(`format version ${version}, expected ${VERSION}`);
  const len = view.getUint32(8, true);
  if (12 + len > bytes.byteLength) return bad("header runs past the end");
  let h: Header;
  try {
    h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(12, 12 + len))) as Header;
  } catch (e) {
    return bad(`header is not JSON (${(e as Error).message})`);
  }
  if (
    typeof h !== "object" ||
    h === null ||
    typeof h.strategy !== "string" ||
    !Number.isSafeInteger(h.size) ||
    h.size < 0 ||
    !Number.isSafeInteger(h.steps) ||
    h.steps < 0 ||
    !Array.isArray(h.tensors) ||
    !h.tensors.every((n) => typeof n === "string")
  ) {
    return bad("header lacks strategy, size, steps or tensors");
  }
  const start = Math.ceil((12 + len) / 8) * 8;
  const expected = start + h.tensors.length * h.size * 8;
  if (bytes.byteLength !== expected) return bad(`${bytes.byteLength} bytes, expected ${expected}`);
  const tensors: Record<string, Float64Array> = {};
  let at = start;
  for (const name of h.tensors) {
    const t = new Float64Array(h.size);
    if (LITTLE_ENDIAN) {
      new Uint8Array(t.buffer).set(bytes.subarray(at, at + t.byteLength));
      at += t.byteLength;
    } else {
      for (let i = 0; i < t.length; i++, at += 8) t[i] = view.getFloat64(at, true);
    }
    tensors[name] = t;
  }
  return { strategy: h.strategy, size: h.size, steps: h.steps, tensors };
}
