/**
 * Shared access signatures and connection strings.
 *
 * Spec: "Control access to IoT Hub by using shared access signatures"
 * (https://learn.microsoft.com/azure/iot-hub/authenticate-authorize-sas):
 *   SharedAccessSignature sig={signature-string}&se={expiry}&skn={policyName}&sr={URL-encoded-resourceURI}
 *   signature = base64(HMAC-SHA256(base64decode(key), "{URL-encoded-resourceURI}\n{expiry}"))
 * The string that is signed is the `sr` value exactly as it appears in the token (the SDKs URL-encode the
 * device resource `{host}/devices/{id}[/modules/{m}]`; the service SDK puts the bare host name), so
 * verification signs the raw `sr` and compares the decoded resource separately.
 */
import * as crypto from "node:crypto";
import { FlotillaError } from "../../core/errors";

export interface ParsedSas {
  /** `sr` as sent (still URL-encoded): the exact string that was signed. */
  srRaw: string;
  /** decodeURIComponent(sr). */
  resource: string;
  /** Base64 signature (decoded from the URL encoding). */
  sig: string;
  /** Expiry, seconds since the epoch. */
  se: number;
  /** Policy name (service tokens), decoded. */
  skn?: string;
}

/** encodeURIComponent plus !'()* (what azure-iot-common's encodeUriComponentStrict does). */
export function encodeUriComponentStrict(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}

export function parseSas(token: string): ParsedSas {
  const m = /^SharedAccessSignature\s+(.+)$/.exec(token.trim());
  if (!m) throw new FlotillaError("E_HUB_SAS", "not a SharedAccessSignature");
  const fields = new Map<string, string>();
  for (const part of m[1].split("&")) {
    const eq = part.indexOf("=");
    if (eq <= 0) throw new FlotillaError("E_HUB_SAS", "malformed SharedAccessSignature field");
    fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const srRaw = fields.get("sr");
  const sig = fields.get("sig");
  const se = fields.get("se");
  if (!srRaw || !sig || !se)
    throw new FlotillaError("E_HUB_SAS", "SharedAccessSignature needs sr, sig and se");
  if (!/^\d{1,12}$/.test(se))
    throw new FlotillaError("E_HUB_SAS", "SharedAccessSignature se is not a number");
  try {
    const skn = fields.get("skn");
    return {
      srRaw,
      resource: decodeURIComponent(srRaw),
      sig: decodeURIComponent(sig),
      se: Number(se),
      skn: skn === undefined ? undefined : decodeURIComponent(skn),
    };
  } catch {
    throw new FlotillaError("E_HUB_SAS", "SharedAccessSignature is not URL-decodable");
  }
}

export function hmacSign(keyBase64: string, srRaw: string, expiry: number): string {
  return crypto
    .createHmac("sha256", Buffer.from(keyBase64, "base64"))
    .update(`${srRaw}\n${expiry}`)
    .digest("base64");
}

export type SasCheck = { ok: true; keyIndex: number } | { ok: false; reason: string };

/**
 * Verifies a parsed token against the resource it must grant (case-insensitive, as IoT Hub host names are)
 * and the identity's keys (primary, secondary). `resourceOk` decides whether the decoded `sr` is acceptable.
 */
export function verifySas(
  sas: ParsedSas,
  keys: readonly string[],
  resourceOk: (resource: string) => boolean,
  nowSeconds = Math.floor(Date.now() / 1000),
): SasCheck {
  if (sas.se <= nowSeconds) return { ok: false, reason: "token expired" };
  if (!resourceOk(sas.resource)) return { ok: false, reason: `token is for ${sas.resource}` };
  const given = Buffer.from(sas.sig, "base64");
  for (let i = 0; i < keys.length; i++) {
    if (!keys[i]) continue;
    const want = Buffer.from(hmacSign(keys[i], sas.srRaw, sas.se), "base64");
    if (want.length === given.length && crypto.timingSafeEqual(want, given)) return { ok: true, keyIndex: i };
  }
  return { ok: false, reason: "signature does not match" };
}

/** Builds a token the way the SDKs do (device: sr = encodeUriComponentStrict(resource), no skn). */
export function createSasToken(
  resource: string,
  keyBase64: string,
  expiry: number,
  keyName?: string,
): string {
  const sr = encodeUriComponentStrict(resource);
  const sig = encodeUriComponentStrict(hmacSign(keyBase64, sr, expiry));
  return (
    `SharedAccessSignature sr=${sr}&sig=${sig}&se=${expiry}` +
    (keyName ? `&skn=${encodeUriComponentStrict(keyName)}` : "")
  );
}

/** `HostName=..;DeviceId=..` -> map (keys as written). Values may contain '=' (base64 keys). */
export function parseConnectionString(cs: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of cs.split(";")) {
    if (!part.trim()) continue;
    const eq = part.indexOf("=");
    if (eq <= 0)
      throw new FlotillaError("E_HUB_CONNECTION_STRING", `malformed connection string segment "${part}"`);
    out[part.slice(0, eq).trim()] = part.slice(eq + 1);
  }
  return out;
}

export function buildConnectionString(fields: Record<string, string | undefined>): string {
  return Object.entries(fields)
    .filter(([, v]) => v !== undefined && v !== "")
    .map(([k, v]) => `${k}=${v}`)
    .join(";");
}

/** A fresh 256-bit symmetric key, base64 (the length IoT Hub generates). */
export function newSymmetricKey(): string {
  return crypto.randomBytes(32).toString("base64");
}

/** IoT Hub accepts base64 keys of 16 to 64 bytes. */
export function isValidSymmetricKey(k: string): boolean {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(k) || k.length % 4 !== 0) return false;
  const n = Buffer.from(k, "base64").length;
  return n >= 16 && n <= 64;
}
