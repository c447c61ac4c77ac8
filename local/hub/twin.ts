/**
 * Device/module twin state: tags, desired and reported properties with their versions.
 *
 * Spec: "Understand and use device twins in IoT Hub"
 * (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-device-twins):
 *   - Patches are JSON merge patches: a property set to null is removed; objects merge recursively.
 *   - $version: desired and reported each carry a version incremented on every update; the twin itself has
 *     `version` (incremented on any change) and an `etag` for optimistic concurrency (If-Match).
 *   - Keys: case-sensitive UTF-8 up to 1 KB; no control characters, '.', '$' or space.
 *   - Values: boolean, number, string, object (arrays allowed); strings up to 4 KB.
 *   - Depth: at most 10 levels for tags, desired and reported objects.
 *   - Size: tags 8 KB, desired 32 KB, reported 32 KB (here: UTF-8 JSON length without $version).
 * Also refused here (not an IoT Hub rule): the keys `__proto__`, `constructor` and `prototype` (./safe-json),
 * and merging reads only own properties, so no patch can reach Object.prototype.
 */
import { FlotillaError } from "../../core/errors";
import { isForbiddenKey } from "./safe-json";

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type JsonObject = { [k: string]: Json };

export const TWIN_LIMITS = {
  tagsBytes: 8 * 1024,
  desiredBytes: 32 * 1024,
  reportedBytes: 32 * 1024,
  keyBytes: 1024,
  stringBytes: 4 * 1024,
  depth: 10,
} as const;

export type TwinSection = "tags" | "desired" | "reported";

export function isJsonObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function clone<T extends Json>(v: T): T {
  return v === null || typeof v !== "object" ? v : (JSON.parse(JSON.stringify(v)) as T);
}

/** RFC 7386 JSON merge patch applied in place: null removes, objects merge, anything else replaces. */
export function mergePatch(target: JsonObject, patch: JsonObject): JsonObject {
  for (const [k, v] of Object.entries(patch)) {
    if (isForbiddenKey(k)) badTwin(`invalid property name ${JSON.stringify(k)}`);
    if (v === null) delete target[k];
    else if (isJsonObject(v)) {
      const cur = Object.hasOwn(target, k) ? target[k] : undefined;
      target[k] = mergePatch(isJsonObject(cur) ? cur : {}, v);
    } else target[k] = clone(v);
  }
  return target;
}

function badTwin(message: string): never {
  throw new FlotillaError("E_HUB_TWIN_INVALID", message);
}

/** C0/C1 control characters, '.', '$' and space may not appear in twin property names. */
function forbiddenKeyChar(ch: string): boolean {
  const c = ch.codePointAt(0) as number;
  return c <= 0x1f || (c >= 0x7f && c <= 0x9f) || ch === "." || ch === "$" || ch === " ";
}

/** Validates keys, value types and depth of a patch (or full section) before it touches the twin. */
export function validateTwinObject(obj: unknown, section: TwinSection, depth = 1): asserts obj is JsonObject {
  if (!isJsonObject(obj)) badTwin(`${section} must be a JSON object`);
  if (depth > TWIN_LIMITS.depth) badTwin(`${section} is nested deeper than ${TWIN_LIMITS.depth} levels`);
  for (const [k, v] of Object.entries(obj)) {
    if (k === "" || isForbiddenKey(k) || [...k].some(forbiddenKeyChar))
      badTwin(`invalid property name ${JSON.stringify(k)} in ${section}`);
    if (Buffer.byteLength(k) > TWIN_LIMITS.keyBytes) badTwin(`property name longer than 1 KB in ${section}`);
    validateValue(v, section, depth);
  }
}

function validateValue(v: unknown, section: TwinSection, depth: number): void {
  if (v === null || typeof v === "boolean") return;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) badTwin(`non-finite number in ${section}`);
    return;
  }
  if (typeof v === "string") {
    if (Buffer.byteLength(v) > TWIN_LIMITS.stringBytes)
      badTwin(`string value longer than 4 KB in ${section}`);
    return;
  }
  if (Array.isArray(v)) {
    for (const item of v) validateValue(item, section, depth + 1);
    return;
  }
  if (isJsonObject(v)) return validateTwinObject(v, section, depth + 1);
  badTwin(`unsupported value type in ${section}`);
}

function limitOf(section: TwinSection): number {
  return section === "tags"
    ? TWIN_LIMITS.tagsBytes
    : section === "desired"
      ? TWIN_LIMITS.desiredBytes
      : TWIN_LIMITS.reportedBytes;
}

/** Removes the read-only `$version` / `$metadata` a client may echo back at the top of a properties section. */
export function stripReadOnly(obj: JsonObject): JsonObject {
  const out: JsonObject = { ...obj };
  delete out.$version;
  delete out.$metadata;
  return out;
}

export interface TwinData {
  tags: JsonObject;
  desired: JsonObject;
  reported: JsonObject;
  desiredVersion: number;
  reportedVersion: number;
  /** Twin version: incremented on every change of tags/desired/reported. */
  version: number;
  /**
   * When each top-level desired property last changed: the desired `$version` and time of that write (the
   * `$metadata.<name>.$lastUpdatedVersion` / `$lastUpdated` the service API shows).
   */
  desiredMeta?: Record<string, { version: number; time: string }>;
}

export class TwinState implements TwinData {
  tags: JsonObject = {};
  desired: JsonObject = {};
  reported: JsonObject = {};
  desiredVersion = 1;
  reportedVersion = 1;
  version = 1;
  desiredMeta: Record<string, { version: number; time: string }> = {};

  static from(d: Partial<TwinData> | undefined): TwinState {
    const t = new TwinState();
    if (!d) return t;
    t.tags = isJsonObject(d.tags) ? d.tags : {};
    t.desired = isJsonObject(d.desired) ? d.desired : {};
    t.reported = isJsonObject(d.reported) ? d.reported : {};
    t.desiredVersion = d.desiredVersion ?? 1;
    t.reportedVersion = d.reportedVersion ?? 1;
    t.version = d.version ?? 1;
    t.desiredMeta = isJsonObject(d.desiredMeta as unknown) ? { ...d.desiredMeta } : {};
    return t;
  }

  toData(): TwinData {
    return {
      tags: this.tags,
      desired: this.desired,
      reported: this.reported,
      desiredVersion: this.desiredVersion,
      reportedVersion: this.reportedVersion,
      version: this.version,
      desiredMeta: this.desiredMeta,
    };
  }

  /** Twin etag: base64 of the 64-bit big-endian twin version (the shape IoT Hub's etags have, "AAAAAAAAAAE="). */
  get etag(): string {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(this.version));
    return b.toString("base64");
  }

  /** Applies a merge patch to one section atomically (validated and size-checked before commit). */
  patch(section: TwinSection, patch: unknown): JsonObject {
    if (!isJsonObject(patch)) badTwin(`${section} patch must be a JSON object`);
    const p = section === "tags" ? patch : stripReadOnly(patch);
    validateTwinObject(p, section);
    const next = mergePatch(clone(this[section]), p);
    this.checkSize(section, next);
    this[section] = next;
    this.bump(section);
    if (section === "desired") this.touchDesired(Object.keys(p));
    return p;
  }

  /** Replaces one section wholesale (PUT /twins). */
  replace(section: TwinSection, value: unknown): void {
    if (!isJsonObject(value)) badTwin(`${section} must be a JSON object`);
    const v = section === "tags" ? clone(value) : stripReadOnly(clone(value));
    validateTwinObject(v, section);
    for (const k of Object.keys(v)) if (v[k] === null) delete v[k];
    this.checkSize(section, v);
    const changed =
      section === "desired"
        ? [...new Set([...Object.keys(v), ...Object.keys(this.desired)])].filter(
            (k) => JSON.stringify(v[k]) !== JSON.stringify(this.desired[k]),
          )
        : [];
    this[section] = v;
    this.bump(section);
    if (section === "desired") this.touchDesired(changed);
  }

  /** Records the desired version and time at which `keys` changed (removed keys lose their metadata). */
  private touchDesired(keys: readonly string[]): void {
    const time = new Date().toISOString();
    const meta = { ...this.desiredMeta };
    for (const k of keys) {
      if (Object.hasOwn(this.desired, k)) meta[k] = { version: this.desiredVersion, time };
      else delete meta[k];
    }
    this.desiredMeta = meta;
  }

  private checkSize(section: TwinSection, value: JsonObject): void {
    const size = Buffer.byteLength(JSON.stringify(value));
    if (size > limitOf(section))
      badTwin(`${section} would be ${size} bytes, over the ${limitOf(section)}-byte limit`);
  }

  private bump(section: TwinSection): void {
    if (section === "desired") this.desiredVersion++;
    if (section === "reported") this.reportedVersion++;
    this.version++;
  }

  /** The document a device receives for `$iothub/twin/GET`: `{desired:{..,$version}, reported:{..,$version}}`. */
  deviceView(): { desired: JsonObject; reported: JsonObject } {
    return {
      desired: { ...clone(this.desired), $version: this.desiredVersion },
      reported: { ...clone(this.reported), $version: this.reportedVersion },
    };
  }

  /**
   * `properties` as the service API returns it: the device's view plus the desired properties' `$metadata` (when
   * each top-level desired property last changed: `$lastUpdated`, `$lastUpdatedVersion`), as IoT Hub returns it.
   */
  propertiesView(): { desired: JsonObject; reported: JsonObject } {
    const view = this.deviceView();
    const meta: JsonObject = {};
    let last: { version: number; time: string } | undefined;
    for (const [k, m] of Object.entries(this.desiredMeta)) {
      if (!Object.hasOwn(this.desired, k)) continue;
      meta[k] = { $lastUpdated: m.time, $lastUpdatedVersion: m.version };
      if (!last || m.version > last.version) last = m;
    }
    if (last) {
      view.desired.$metadata = { $lastUpdated: last.time, $lastUpdatedVersion: last.version, ...meta };
    }
    return view;
  }
}
