/**
 * The embedded default KeyProvider: each device's identity key is a PKCS#8 PEM file in one directory.
 *
 *   <dir>/                       mode 0700 when this provider creates it
 *   <dir>/<safe name>.key.pem    mode 0600, written to a temp file and hard-linked into place, so a key file is
 *                                either complete or absent and two concurrent createKey calls (even in two
 *                                processes) agree on one key: the loser of the link() race adopts the winner's.
 *
 * The device id → file name mapping is deterministic and injective: ids made only of [a-z0-9._-] without ".." or
 * "--" and at most 100 characters are used as is; anything else (upper case — file systems may fold case —,
 * other characters, length) becomes the sanitised id + "--" + 16 hex of SHA-256(id). Plain names never contain
 * "--", so a plain name and a hashed one cannot collide.
 *
 * Signing is ES256 with node:crypto (SHA-256, IEEE P1363 r||s); verify is local (verifyIdentitySignature).
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { JsonWebKey, KeyObject } from "node:crypto";
import { FlotillaError, fail } from "../errors";
import { publicJwk, verifyIdentitySignature, type KeyProvider } from "./identity";
import type { IdentitySigner } from "./types";

const PLAIN = /^[a-z0-9_][a-z0-9._-]{0,99}$/;
const SUFFIX = ".key.pem";

/** The key file's base name (without directory) for a device id. */
export function keyFileName(deviceId: string): string {
  checkDeviceId(deviceId);
  if (PLAIN.test(deviceId) && !deviceId.includes("--") && !deviceId.includes("..")) return deviceId + SUFFIX;
  const safe = deviceId
    .toLowerCase()
    .replace(/[^a-z0-9_-]/g, "-")
    .slice(0, 80);
  const hash = crypto.createHash("sha256").update(deviceId, "utf8").digest("hex").slice(0, 16);
  return `${safe}--${hash}${SUFFIX}`;
}

/** IoT Hub device ids: 1-128 characters (case-sensitive). */
export function checkDeviceId(deviceId: string): void {
  if (typeof deviceId !== "string" || deviceId.length === 0 || deviceId.length > 128)
    fail("E_KEY_DEVICE_ID", `invalid device id ${JSON.stringify(deviceId)}: 1-128 characters expected`);
}

export interface FileKeyProviderOptions {
  /** Directory holding the key files (created with mode 0700 if missing). */
  dir: string;
}

export class FileKeyProvider implements KeyProvider {
  readonly dir: string;
  private readonly cache = new Map<string, KeyObject>();

  constructor(opts: FileKeyProviderOptions | string) {
    this.dir = path.resolve(typeof opts === "string" ? opts : opts.dir);
  }

  /** Where `deviceId`'s key lives (it may not exist yet). */
  keyPath(deviceId: string): string {
    return path.join(this.dir, keyFileName(deviceId));
  }

  /** Summary label for provisioning output. */
  keyName(deviceId: string): string {
    return keyFileName(deviceId);
  }

  async createKey(deviceId: string): Promise<JsonWebKey> {
    const file = this.keyPath(deviceId);
    const existing = this.load(deviceId, file, true);
    if (existing) return publicJwk(existing.export({ format: "jwk" }));
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      const { privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
      const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString("hex")}.tmp`;
      fs.writeFileSync(tmp, privateKey.export({ format: "pem", type: "pkcs8" }), { mode: 0o600, flag: "wx" });
      try {
        fs.linkSync(tmp, file); // fails with EEXIST if another writer won: then use theirs
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      } finally {
        fs.rmSync(tmp, { force: true });
      }
    } catch (e) {
      throw new FlotillaError(
        "E_KEY_STORE",
        `cannot write the identity key of ${deviceId} in ${this.dir}: ${(e as Error).message}`,
        { cause: e },
      );
    }
    const key = this.load(deviceId, file, false) as KeyObject;
    return publicJwk(key.export({ format: "jwk" }));
  }

  async getPublicKey(deviceId: string): Promise<JsonWebKey> {
    const key = this.load(deviceId, this.keyPath(deviceId), false) as KeyObject;
    return publicJwk(key.export({ format: "jwk" }));
  }

  signer(deviceId: string): IdentitySigner {
    const file = this.keyPath(deviceId);
    return {
      deviceId,
      sign: async (data: Uint8Array) => {
        const key = this.load(deviceId, file, false) as KeyObject;
        return new Uint8Array(crypto.sign("sha256", data, { key, dsaEncoding: "ieee-p1363" }));
      },
    };
  }

  async verify(deviceId: string, data: Uint8Array, signature: Uint8Array): Promise<boolean> {
    return verifyIdentitySignature(await this.getPublicKey(deviceId), data, signature);
  }

  /** Reads and checks the key file; undefined when absent and `optional`, else E_KEY_NOT_FOUND. */
  private load(deviceId: string, file: string, optional: boolean): KeyObject | undefined {
    const cached = this.cache.get(file);
    if (cached) return cached;
    let pem: string;
    try {
      pem = fs.readFileSync(file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") {
        if (optional) return undefined;
        fail("E_KEY_NOT_FOUND", `no identity key for device ${deviceId} (${file})`);
      }
      fail("E_KEY_STORE", `cannot read the identity key of ${deviceId}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    let key: KeyObject;
    try {
      key = crypto.createPrivateKey({ key: pem, format: "pem" });
    } catch {
      fail("E_KEY_CORRUPT", `identity key file ${file} of device ${deviceId} is not a PEM private key`);
    }
    if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1")
      fail("E_KEY_CORRUPT", `identity key file ${file} of device ${deviceId} is not an EC P-256 key`);
    this.cache.set(file, key);
    return key;
  }
}
