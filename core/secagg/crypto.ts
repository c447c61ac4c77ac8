/**
 * Key agreement, key derivation and share encryption for SecAgg (Bonawitz et al. CCS 2017, §4 "Key Agreement",
 * "Authenticated Encryption", Fig. 4 rounds 0-1), instantiated as:
 *   - key agreement: X25519 (RFC 7748) via node:crypto; public keys travel as their raw 32 bytes, base64url
 *     (the JWK 'x' member, RFC 8037). Low-order peer points make OpenSSL's derivation fail (all-zero output),
 *     which surfaces as E_SECAGG_KEY.
 *   - key derivation: HKDF-SHA256 (RFC 5869), empty salt, IKM = the X25519 shared secret, with distinct info
 *     strings bound to the job and round so keys of one purpose/round are never reused for another:
 *       s_ij (pairwise mask seed)   info "flotilla-secagg-mask-v1|jobId|round"   32 bytes, same for i and j
 *       c_ij (share encryption key) info "flotilla-secagg-share-v1|jobId|round"  32 bytes (AES-256-GCM)
 *     (round is a number and last, so "jobId|round" is unambiguous.) The two come from different X25519 key pairs
 *     (encryptionKey, maskingKey) as in Bonawitz et al.: revealing a dropped device's mask key to the server must
 *     not let it decrypt that device's shares.
 *   - share encryption: AES-256-GCM (NIST SP 800-38D), random 96-bit nonce (each key encrypts one message per
 *     direction, so nonce reuse is not a concern), AAD = "jobId|round|from|to" so a ciphertext cannot be replayed
 *     into another round or redirected; the key itself is already bound to the pair {i, j} and the session.
 *     Plaintext = u16 length || self-mask-seed share || u16 length || mask-key share.
 *   - advertisement signing input: "flotilla-secagg-advert-v1" ||
 *     JSON.stringify([jobId, round, deviceId, encryptionKey, maskingKey, weight]) (UTF-8); JSON gives an unambiguous,
 *     canonical encoding of these strings and numbers.
 */
import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  KeyObject,
} from "node:crypto";
import { fail } from "../errors";
import type { EncryptedShare, KeyAdvertisement, SecAggSession } from "./types";

export const MASK_INFO = "flotilla-secagg-mask-v1";
export const SHARE_INFO = "flotilla-secagg-share-v1";
export const ADVERT_CONTEXT = "flotilla-secagg-advert-v1";
export const X25519_KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
/** PKCS#8 DER prefix of an X25519 private key (RFC 8410): SEQ { INTEGER 0, SEQ { OID 1.3.101.110 }, OCTET STRING { OCTET STRING (32) } }. */
export const X25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");

/** An X25519 key pair; `publicKey` is the raw 32-byte public key. */
export interface X25519KeyPair {
  readonly privateKey: KeyObject;
  readonly publicKey: Uint8Array;
}

export function toB64u(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url");
}

/**
 * Strict base64url decoding (Buffer's decoder skips invalid characters silently, so the text must re-encode to
 * itself); with `bytes`, the decoded length must match. Throws `code`.
 */
export function fromB64u(text: unknown, what: string, bytes?: number, code = "E_SECAGG_MESSAGE"): Uint8Array {
  if (typeof text !== "string") return fail(code, `${what} must be base64url text`);
  const b = Buffer.from(text, "base64url");
  if (b.toString("base64url") !== text) fail(code, `${what} is not canonical base64url`);
  if (bytes !== undefined && b.byteLength !== bytes)
    fail(code, `${what} must be ${bytes} bytes, got ${b.byteLength}`);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

export function generateX25519(): X25519KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  return { privateKey, publicKey: x25519PublicKeyRaw(publicKey) };
}

/** The raw 32-byte public key of an X25519 KeyObject (public or private). */
export function x25519PublicKeyRaw(key: KeyObject): Uint8Array {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  // DER, not JWK: Node 20's JWK export of OKP keys allocates a JS string while holding the key's mutex, and a GC
  // that finalises a key-generation job at that moment waits on the same mutex: the thread deadlocks (seen as a
  // hung test and a stalled simulation). SPKI DER for X25519 is a fixed 12-byte prefix followed by the key.
  const der = pub.export({ format: "der", type: "spki" });
  if (der.byteLength !== 12 + X25519_KEY_BYTES) fail("E_SECAGG_KEY", "unexpected X25519 public key encoding");
  return new Uint8Array(der.subarray(12));
}

/** The raw 32-byte private scalar of an X25519 private KeyObject (JWK 'd'). */
export function x25519PrivateKeyRaw(key: KeyObject): Uint8Array {
  // DER (PKCS#8: fixed 16-byte prefix || key), not JWK: see x25519PublicKeyRaw.
  const der = key.export({ format: "der", type: "pkcs8" });
  if (der.byteLength !== X25519_PKCS8_PREFIX.byteLength + X25519_KEY_BYTES)
    fail("E_SECAGG_KEY", "unexpected X25519 private key encoding");
  const raw = new Uint8Array(der.subarray(X25519_PKCS8_PREFIX.byteLength));
  der.fill(0);
  return raw;
}

/** An X25519 private KeyObject from its raw 32 bytes (PKCS#8 DER: fixed 16-byte prefix || key). */
export function x25519PrivateKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.byteLength !== X25519_KEY_BYTES)
    fail("E_SECAGG_KEY", `X25519 private key must be 32 bytes, got ${raw.byteLength}`);
  const der = Buffer.concat([X25519_PKCS8_PREFIX, raw]);
  try {
    return createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  } catch {
    return fail("E_SECAGG_KEY", "invalid X25519 private key");
  } finally {
    der.fill(0);
  }
}

/** An X25519 public KeyObject from its raw 32 bytes or their base64url text. */
export function x25519PublicKeyFromRaw(raw: Uint8Array | string): KeyObject {
  const bytes =
    typeof raw === "string" ? fromB64u(raw, "X25519 public key", X25519_KEY_BYTES, "E_SECAGG_KEY") : raw;
  if (bytes.byteLength !== X25519_KEY_BYTES)
    fail("E_SECAGG_KEY", `X25519 public key must be 32 bytes, got ${bytes.byteLength}`);
  try {
    return createPublicKey({ key: { kty: "OKP", crv: "X25519", x: toB64u(bytes) }, format: "jwk" });
  } catch {
    return fail("E_SECAGG_KEY", "invalid X25519 public key");
  }
}

/** X25519(privateKey, peer): the 32-byte shared secret. Low-order or malformed peer keys throw E_SECAGG_KEY. */
export function agree(privateKey: KeyObject, peerPublicRaw: Uint8Array | string | KeyObject): Uint8Array {
  const publicKey =
    peerPublicRaw instanceof KeyObject ? peerPublicRaw : x25519PublicKeyFromRaw(peerPublicRaw);
  try {
    return new Uint8Array(diffieHellman({ privateKey, publicKey }));
  } catch {
    return fail("E_SECAGG_KEY", "X25519 key agreement failed (low-order or invalid public key)");
  }
}

function sessionInfo(label: string, session: SecAggSession): string {
  return `${label}|${session.jobId}|${session.round}`;
}

function hkdf32(ikm: Uint8Array, info: string): Uint8Array {
  return new Uint8Array(hkdfSync("sha256", ikm, new Uint8Array(0), info, 32));
}

/** s_ij: the pairwise mask seed from the masking keys' shared secret (identical for i and j). */
export function deriveMaskSeed(shared: Uint8Array, session: SecAggSession): Uint8Array {
  return hkdf32(shared, sessionInfo(MASK_INFO, session));
}

/** c_ij: the AES-256-GCM key for shares between i and j, from the encryption keys' shared secret. */
export function deriveShareKey(shared: Uint8Array, session: SecAggSession): Uint8Array {
  return hkdf32(shared, sessionInfo(SHARE_INFO, session));
}

/** The bytes an advertisement's identity signature covers (everything but the signature). */
export function advertisementBytes(ad: Omit<KeyAdvertisement, "signature">): Uint8Array {
  const body = JSON.stringify([ad.jobId, ad.round, ad.deviceId, ad.encryptionKey, ad.maskingKey, ad.weight]);
  return new Uint8Array(Buffer.from(ADVERT_CONTEXT + body, "utf8"));
}

function shareAad(session: SecAggSession, from: string, to: string): Buffer {
  return Buffer.from(`${session.jobId}|${session.round}|${from}|${to}`, "utf8");
}

/** Encrypts the share pair `from` holds for `to` under c_ij. */
export function encryptSharePair(
  key: Uint8Array,
  session: SecAggSession,
  from: string,
  to: string,
  selfMaskShare: Uint8Array,
  maskKeyShare: Uint8Array,
  random: (n: number) => Uint8Array = randomBytes,
): EncryptedShare {
  if (selfMaskShare.byteLength > 0xffff || maskKeyShare.byteLength > 0xffff)
    fail("E_SECAGG_SHARES", "share too long to encrypt");
  const plain = Buffer.alloc(4 + selfMaskShare.byteLength + maskKeyShare.byteLength);
  plain.writeUInt16BE(selfMaskShare.byteLength, 0);
  plain.set(selfMaskShare, 2);
  plain.writeUInt16BE(maskKeyShare.byteLength, 2 + selfMaskShare.byteLength);
  plain.set(maskKeyShare, 4 + selfMaskShare.byteLength);
  const nonce = random(NONCE_BYTES);
  if (nonce.byteLength !== NONCE_BYTES) fail("E_SECAGG_SHARES", "random source returned a short nonce");
  const c = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(shareAad(session, from, to));
  const ct = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
  plain.fill(0);
  return { from, to, nonce: toB64u(nonce), ciphertext: ct.toString("base64url") };
}

/** Ciphertext bytes (tag included) of a share pair whose two shares have these lengths. */
export function sharePairCiphertextBytes(selfMaskShareBytes: number, maskKeyShareBytes: number): number {
  return 4 + selfMaskShareBytes + maskKeyShareBytes + TAG_BYTES;
}

/** Decrypts and parses a share pair; any authentication or format failure throws E_SECAGG_DECRYPT. */
export function decryptSharePair(
  key: Uint8Array,
  session: SecAggSession,
  enc: EncryptedShare,
): { selfMaskShare: Uint8Array; maskKeyShare: Uint8Array } {
  const what = `share from '${String(enc?.from)}' to '${String(enc?.to)}'`;
  const nonce = fromB64u(enc?.nonce, `${what}: nonce`, NONCE_BYTES, "E_SECAGG_DECRYPT");
  const ct = fromB64u(enc?.ciphertext, `${what}: ciphertext`, undefined, "E_SECAGG_DECRYPT");
  if (ct.byteLength < TAG_BYTES + 4) fail("E_SECAGG_DECRYPT", `${what}: ciphertext too short`);
  let plain: Buffer;
  try {
    const d = createDecipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
    d.setAAD(shareAad(session, enc.from, enc.to));
    d.setAuthTag(ct.subarray(ct.byteLength - TAG_BYTES));
    plain = Buffer.concat([d.update(ct.subarray(0, ct.byteLength - TAG_BYTES)), d.final()]);
  } catch {
    return fail("E_SECAGG_DECRYPT", `${what}: authentication failed`);
  }
  const l1 = plain.readUInt16BE(0);
  if (2 + l1 + 2 > plain.byteLength) fail("E_SECAGG_DECRYPT", `${what}: malformed plaintext`);
  const l2 = plain.readUInt16BE(2 + l1);
  if (4 + l1 + l2 !== plain.byteLength) fail("E_SECAGG_DECRYPT", `${what}: malformed plaintext`);
  const selfMaskShare = new Uint8Array(plain.subarray(2, 2 + l1));
  const maskKeyShare = new Uint8Array(plain.subarray(4 + l1, 4 + l1 + l2));
  plain.fill(0);
  return { selfMaskShare, maskKeyShare };
}
