/**
 * Device identity keys: each device has a long-term EC P-256 key that signs its secure-aggregation key
 * advertisements (ES256, RFC 7518 §3.4: ECDSA P-256 over SHA-256, signature as r||s). In production the key lives in
 * Azure Key Vault and never leaves it (azure/keyvault-key-provider.ts); the embedded default keeps it in a
 * file on the device (file-key-provider.ts). Peers verify with the public key alone.
 */
import {
  createPublicKey,
  generateKeyPairSync,
  sign as ecSign,
  verify as ecVerify,
  type JsonWebKey,
  type KeyObject,
} from "node:crypto";
import type { IdentitySigner } from "./types";

/** Where devices' identity keys live. One interface; the Key Vault and file-backed implementations pass one contract suite. */
export interface KeyProvider {
  /** Creates `deviceId`'s identity key if it does not exist yet (idempotent); returns its public JWK. */
  createKey(deviceId: string): Promise<JsonWebKey>;
  /** `deviceId`'s public JWK; FlotillaError E_KEY_NOT_FOUND when it has none. */
  getPublicKey(deviceId: string): Promise<JsonWebKey>;
  /** Signs with `deviceId`'s key, which never leaves the provider. */
  signer(deviceId: string): IdentitySigner;
  /** Verifies a signature with the provider's own verify operation (Key Vault's /verify, or locally). */
  verify(deviceId: string, data: Uint8Array, signature: Uint8Array): Promise<boolean>;
}

/** Only the public members of an EC P-256 JWK, with base64url coordinates (what peers are given). */
export function publicJwk(jwk: JsonWebKey): JsonWebKey {
  return { kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y };
}

/**
 * Verifies an ES256 signature (64-byte r||s) over `data` with a P-256 public JWK, locally. Any malformed key or
 * signature is simply "not valid".
 */
export function verifyIdentitySignature(jwk: JsonWebKey, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    if (jwk.kty !== "EC" || jwk.crv !== "P-256" || signature.byteLength !== 64) return false;
    const key = createPublicKey({ key: publicJwk(jwk), format: "jwk" });
    return ecVerify("sha256", data, { key, dsaEncoding: "ieee-p1363" }, signature);
  } catch {
    return false;
  }
}

/** A signer over a private KeyObject held in this process (tests, and the file-backed provider). */
export class LocalSigner implements IdentitySigner {
  constructor(
    readonly deviceId: string,
    private readonly privateKey: KeyObject,
  ) {}

  static generate(deviceId: string): { signer: LocalSigner; publicKey: JsonWebKey } {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    return {
      signer: new LocalSigner(deviceId, privateKey),
      publicKey: publicJwk(publicKey.export({ format: "jwk" })),
    };
  }

  async sign(data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(ecSign("sha256", data, { key: this.privateKey, dsaEncoding: "ieee-p1363" }));
  }
}
