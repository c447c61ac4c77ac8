/**
 * Device identity keys in Azure Key Vault (production KeyProvider), through the unmodified @azure/keyvault-keys SDK.
 *
 * - One EC P-256 key per device, created with key_ops sign/verify; the private key never leaves Key Vault.
 * - Key name: keyVaultKeyName(deviceId), deterministic and injective into Key Vault's `^[0-9a-zA-Z-]{1,127}$`
 *   (Key Vault names are case-insensitive, so upper case counts as "changed" and gets the hash suffix).
 * - sign: SHA-256 of the data is computed here (node:crypto), Key Vault signs the digest (ES256 → r||s, 64 bytes).
 *   verify: Key Vault's /verify over the same digest. One CryptographyClient per key, cached (it keeps its own
 *   auth challenge state, so only its first call pays the 401 round trip).
 * - Errors become FlotillaError: 404 → E_KEY_NOT_FOUND, 401/403 and credential failures → E_KEY_AUTH,
 *   anything else → E_KEY_VAULT (with the HTTP status); one-line messages.
 *
 * Devices authenticate with their X.509 certificate: deviceCredential() → ClientCertificateCredential.
 * keyProviderFromEnv() picks Key Vault when FLOTILLA_KEYVAULT_URL is set, else the file-backed default.
 */
import { createHash, type JsonWebKey as NodeJwk } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  ClientCertificateCredential,
  DefaultAzureCredential,
  AzureAuthorityHosts,
  type ClientCertificateCredentialOptions,
  type TokenCredential,
} from "@azure/identity";
import {
  CryptographyClient,
  KeyClient,
  type KeyClientOptions,
  type KeyVaultKey,
  type JsonWebKey as VaultJwk,
} from "@azure/keyvault-keys";
import { FlotillaError, fail, isFlotillaError } from "../core/errors";
import { FileKeyProvider, checkDeviceId } from "../core/secagg/file-key-provider";
import type { KeyProvider } from "../core/secagg/identity";
import type { IdentitySigner } from "../core/secagg/types";

export const KEY_NAME_PREFIX = "flotilla-";
const PLAIN_ID = /^[0-9a-z-]+$/;
const MAX_KEY_NAME = 127;

/**
 * Key Vault key name of a device: "flotilla-" + the id when the id is already lower-case [0-9a-z-] without "--"
 * and fits; otherwise "flotilla-" + sanitised id (lower case, other characters → "-", truncated) + "--" + 16 hex
 * of SHA-256(id). Only hashed names contain "--", so the mapping is injective (up to a 64-bit hash collision).
 */
export function keyVaultKeyName(deviceId: string): string {
  checkDeviceId(deviceId);
  const plain = PLAIN_ID.test(deviceId) && !deviceId.includes("--");
  if (plain && KEY_NAME_PREFIX.length + deviceId.length <= MAX_KEY_NAME) return KEY_NAME_PREFIX + deviceId;
  const hash = createHash("sha256").update(deviceId, "utf8").digest("hex").slice(0, 16);
  const room = MAX_KEY_NAME - KEY_NAME_PREFIX.length - 2 - hash.length;
  const safe = deviceId
    .toLowerCase()
    .replace(/[^0-9a-z-]/g, "-")
    .slice(0, room);
  return `${KEY_NAME_PREFIX}${safe}--${hash}`;
}

function coordinate(v: Uint8Array | undefined, what: string, keyName: string): string {
  if (!v || v.byteLength === 0 || v.byteLength > 32)
    fail("E_KEY_VAULT", `Key Vault key ${keyName} has no valid P-256 ${what} coordinate`);
  const full = new Uint8Array(32);
  full.set(v, 32 - v.byteLength); // left-pad: a JWK coordinate is exactly 32 bytes for P-256
  return Buffer.from(full).toString("base64url");
}

/** The SDK's JsonWebKey (x/y as bytes) → a base64url P-256 public JWK (no private members, ever). */
export function vaultJwkToPublicJwk(jwk: VaultJwk | undefined, keyName: string): NodeJwk {
  if (!jwk || (jwk.kty !== "EC" && jwk.kty !== "EC-HSM") || jwk.crv !== "P-256")
    fail("E_KEY_VAULT", `Key Vault key ${keyName} is not an EC P-256 key (kty ${jwk?.kty}, crv ${jwk?.crv})`);
  return { kty: "EC", crv: "P-256", x: coordinate(jwk.x, "x", keyName), y: coordinate(jwk.y, "y", keyName) };
}

function oneLine(s: unknown, max = 200): string {
  const line = String(s ?? "")
    .split(/\r?\n/)[0]
    .trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** Maps an SDK/credential error to a FlotillaError with a stable code. */
export function keyVaultError(e: unknown, what: string): FlotillaError {
  if (isFlotillaError(e)) return e;
  const err = e as { name?: string; statusCode?: number; code?: string; message?: string };
  // @azure/identity's error names (MSAL's invalid_client surfaces as AuthenticationRequiredError).
  const credentialFailure = [
    "AuthenticationError",
    "AuthenticationRequiredError",
    "CredentialUnavailableError",
    "AggregateAuthenticationError",
  ].includes(err?.name ?? "");
  if (credentialFailure)
    return new FlotillaError("E_KEY_AUTH", `${what}: cannot get a Key Vault token: ${oneLine(err.message)}`, {
      cause: e,
    });
  const status = err?.statusCode;
  const detail = `${err?.code ? `${err.code}: ` : ""}${oneLine(err?.message)}`;
  if (status === 404)
    return new FlotillaError("E_KEY_NOT_FOUND", `${what}: not found (${detail})`, { cause: e });
  if (status === 401 || status === 403)
    return new FlotillaError("E_KEY_AUTH", `${what}: Key Vault refused access (${status} ${detail})`, {
      cause: e,
    });
  return new FlotillaError(
    "E_KEY_VAULT",
    `${what}: Key Vault error (status ${status ?? "none"}, ${detail})`,
    { cause: e },
  );
}

export interface KeyVaultKeyProviderOptions {
  /** e.g. https://myvault.vault.azure.net */
  vaultUrl: string;
  credential: TokenCredential;
  /**
   * Passed to KeyClient and every CryptographyClient as is: disableChallengeResourceVerification (needed for hosts
   * outside *.vault.azure.net), tlsOptions ({ ca } for a private CA), retryOptions, proxyOptions, serviceVersion...
   */
  clientOptions?: KeyClientOptions;
  /**
   * PEM of the CA that signed the vault's certificate (the local stand-in's): becomes tlsOptions.ca, which REPLACES
   * Node's public roots for this client, so give it only for a vault behind a private CA.
   */
  ca?: string;
  /** Override the device id → key name mapping (default keyVaultKeyName). */
  keyName?: (deviceId: string) => string;
}

export class KeyVaultKeyProvider implements KeyProvider {
  readonly vaultUrl: string;
  private readonly client: KeyClient;
  private readonly credential: TokenCredential;
  private readonly options: KeyClientOptions;
  private readonly nameOf: (deviceId: string) => string;
  /** CryptographyClient per key name, bound to the key version current when first used. */
  private readonly crypto = new Map<string, Promise<CryptographyClient>>();
  private readonly creating = new Map<string, Promise<NodeJwk>>();
  private readonly known = new Map<string, KeyVaultKey>();

  constructor(opts: KeyVaultKeyProviderOptions) {
    if (!/^https?:\/\//.test(opts.vaultUrl ?? ""))
      fail("E_CONFIG_VALUE", `Key Vault URL must be an https URL, got ${JSON.stringify(opts.vaultUrl)}`);
    this.vaultUrl = opts.vaultUrl;
    this.credential = opts.credential;
    this.options = {
      ...opts.clientOptions,
      ...(opts.ca ? { tlsOptions: { ...opts.clientOptions?.tlsOptions, ca: opts.ca } } : {}),
    };
    this.nameOf = opts.keyName ?? keyVaultKeyName;
    // KeyClient mutates the options object it is given (userAgentOptions): hand it a copy.
    this.client = new KeyClient(this.vaultUrl, this.credential, { ...this.options });
  }

  keyName(deviceId: string): string {
    checkDeviceId(deviceId);
    return this.nameOf(deviceId);
  }

  async createKey(deviceId: string): Promise<NodeJwk> {
    const name = this.keyName(deviceId);
    // Key Vault's create adds a new version to an existing key: look first, and share one create per process.
    let pending = this.creating.get(name);
    if (!pending) {
      pending = (async () => {
        let key: KeyVaultKey | undefined;
        try {
          key = await this.fetchKey(deviceId, name);
        } catch (e) {
          if (!isFlotillaError(e) || e.code !== "E_KEY_NOT_FOUND") throw e;
        }
        if (!key) {
          try {
            key = await this.client.createEcKey(name, { curve: "P-256", keyOps: ["sign", "verify"] });
          } catch (e) {
            throw keyVaultError(e, `create key ${name} for device ${deviceId}`);
          }
        }
        const jwk = vaultJwkToPublicJwk(key.key, name);
        this.known.set(name, key); // a later signer/verify builds its CryptographyClient without another GET
        return jwk;
      })().finally(() => this.creating.delete(name));
      this.creating.set(name, pending);
    }
    return pending;
  }

  async getPublicKey(deviceId: string): Promise<NodeJwk> {
    const name = this.keyName(deviceId);
    return vaultJwkToPublicJwk((await this.fetchKey(deviceId, name)).key, name);
  }

  signer(deviceId: string): IdentitySigner {
    const name = this.keyName(deviceId);
    return {
      deviceId,
      sign: async (data: Uint8Array) => {
        const client = await this.cryptoClient(deviceId, name);
        try {
          const { result } = await client.sign("ES256", sha256(data));
          if (result.byteLength !== 64)
            fail(
              "E_KEY_VAULT",
              `sign with ${name}: expected a 64-byte ES256 signature, got ${result.byteLength}`,
            );
          return new Uint8Array(result);
        } catch (e) {
          throw keyVaultError(e, `sign with key ${name} of device ${deviceId}`);
        }
      },
    };
  }

  /** Key Vault's /verify. A signature that is not 64 bytes is not ES256, so it is invalid without a call. */
  async verify(deviceId: string, data: Uint8Array, signature: Uint8Array): Promise<boolean> {
    const name = this.keyName(deviceId);
    const client = await this.cryptoClient(deviceId, name);
    if (signature.byteLength !== 64) return false;
    try {
      return (await client.verify("ES256", sha256(data), signature)).result;
    } catch (e) {
      throw keyVaultError(e, `verify with key ${name} of device ${deviceId}`);
    }
  }

  private async fetchKey(deviceId: string, name: string): Promise<KeyVaultKey> {
    try {
      return await this.client.getKey(name);
    } catch (e) {
      const mapped = keyVaultError(e, `identity key ${name} of device ${deviceId}`);
      if (mapped.code === "E_KEY_NOT_FOUND")
        return fail("E_KEY_NOT_FOUND", `no identity key for device ${deviceId} (Key Vault key ${name})`);
      throw mapped;
    }
  }

  private newCryptoClient(key: KeyVaultKey): CryptographyClient {
    return new CryptographyClient(key, this.credential, { ...this.options });
  }

  private cryptoClient(deviceId: string, name: string): Promise<CryptographyClient> {
    let c = this.crypto.get(name);
    if (!c) {
      // Built from the fetched KeyVaultKey (not its id), so the SDK does not GET it again.
      const known = this.known.get(name);
      c = (known ? Promise.resolve(known) : this.fetchKey(deviceId, name)).then((key) =>
        this.newCryptoClient(key),
      );
      c.catch(() => this.crypto.delete(name)); // a missing key may be created later: do not cache failures
      this.crypto.set(name, c);
    }
    return c;
  }
}

function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(data).digest());
}

export interface DeviceCredentialOptions {
  tenantId: string;
  /** The device's app registration (client) id. */
  clientId: string;
  /** PEM file with the device certificate AND its private key (RSA: Entra signs assertions with PS256)... */
  certificatePath?: string;
  /** ...or that PEM text. */
  certificate?: string;
  /** Entra authority host; default the public cloud. A non-Microsoft host turns off instance discovery. */
  authorityHost?: string;
  /** PEM of the CA of a private authority host (the stand-in's); replaces the public roots for the credential. */
  ca?: string;
}

const MICROSOFT_AUTHORITIES = new Set<string>(Object.values(AzureAuthorityHosts).map((h) => new URL(h).host));

/**
 * Production device authentication: @azure/identity ClientCertificateCredential (MSAL client assertion signed
 * with the device's X.509 certificate key, registered on the device's Entra app).
 */
export function deviceCredential(opts: DeviceCredentialOptions): ClientCertificateCredential {
  if (!opts.tenantId || !opts.clientId)
    fail("E_CONFIG_VALUE", "deviceCredential needs tenantId and clientId");
  if (!!opts.certificatePath === !!opts.certificate)
    fail("E_CONFIG_VALUE", "deviceCredential needs exactly one of certificatePath or certificate");
  let custom = false;
  if (opts.authorityHost !== undefined) {
    let host: string;
    try {
      host = new URL(opts.authorityHost).host;
    } catch {
      return fail("E_CONFIG_VALUE", `authority host is not a URL: ${JSON.stringify(opts.authorityHost)}`);
    }
    custom = !MICROSOFT_AUTHORITIES.has(host);
  }
  const options: ClientCertificateCredentialOptions = {
    ...(opts.authorityHost ? { authorityHost: opts.authorityHost } : {}),
    // MSAL's instance discovery asks login.microsoftonline.com about the authority; a private authority
    // (the local stand-in, an air-gapped one) must be trusted as configured instead.
    ...(custom ? { disableInstanceDiscovery: true } : {}),
    ...(opts.ca ? { tlsOptions: { ca: opts.ca } } : {}),
  };
  return opts.certificate
    ? new ClientCertificateCredential(
        opts.tenantId,
        opts.clientId,
        { certificate: opts.certificate },
        options,
      )
    : new ClientCertificateCredential(opts.tenantId, opts.clientId, opts.certificatePath as string, options);
}

export type KeyProviderConfig =
  | {
      kind: "keyvault";
      vaultUrl: string;
      /** Set when AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH are all set. */
      device?: DeviceCredentialOptions;
      ca?: string;
      disableChallengeResourceVerification: boolean;
    }
  | { kind: "file"; dir: string };

/** Default directory of the file-backed provider. */
export function defaultKeyDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.FLOTILLA_KEY_DIR || path.join(os.homedir(), ".flotilla", "keys");
}

/**
 * Reads the key provider configuration:
 *   FLOTILLA_KEYVAULT_URL                  use Key Vault (else the file provider in FLOTILLA_KEY_DIR or ~/.flotilla/keys)
 *   AZURE_TENANT_ID, AZURE_CLIENT_ID,
 *   AZURE_CLIENT_CERTIFICATE_PATH          device X.509 auth (else DefaultAzureCredential: managed identity, CLI...)
 *   AZURE_AUTHORITY_HOST                   Entra authority (default public cloud)
 *   FLOTILLA_KEYVAULT_CA                   PEM file of the vault's private CA (the stand-in's); also used for
 *                                          AZURE_AUTHORITY_HOST when that is set
 *   FLOTILLA_KEYVAULT_DISABLE_CHALLENGE_RESOURCE_VERIFICATION=1   vault host outside *.vault.azure.net
 *                                          (implied for localhost / 127.0.0.1)
 */
export function keyProviderConfigFromEnv(env: NodeJS.ProcessEnv = process.env): KeyProviderConfig {
  const vaultUrl = env.FLOTILLA_KEYVAULT_URL?.trim();
  if (!vaultUrl) return { kind: "file", dir: defaultKeyDir(env) };
  let host: string;
  try {
    host = new URL(vaultUrl).hostname;
  } catch {
    return fail("E_CONFIG_VALUE", `FLOTILLA_KEYVAULT_URL is not a URL: ${JSON.stringify(vaultUrl)}`);
  }
  let ca: string | undefined;
  if (env.FLOTILLA_KEYVAULT_CA) {
    try {
      ca = fs.readFileSync(env.FLOTILLA_KEYVAULT_CA, "utf8");
    } catch (e) {
      fail("E_CONFIG_VALUE", `cannot read FLOTILLA_KEYVAULT_CA: ${(e as Error).message}`, { cause: e });
    }
  }
  const { AZURE_TENANT_ID: tenantId, AZURE_CLIENT_ID: clientId, AZURE_CLIENT_CERTIFICATE_PATH: cert } = env;
  const device =
    tenantId && clientId && cert
      ? {
          tenantId,
          clientId,
          certificatePath: cert,
          authorityHost: env.AZURE_AUTHORITY_HOST || undefined,
          // The private CA is for a private authority only: public Entra keeps the public roots.
          ca: env.AZURE_AUTHORITY_HOST ? ca : undefined,
        }
      : undefined;
  const local = host === "localhost" || host === "127.0.0.1" || host === "[::1]";
  return {
    kind: "keyvault",
    vaultUrl,
    device,
    ca,
    disableChallengeResourceVerification:
      local || /^(1|true|yes)$/i.test(env.FLOTILLA_KEYVAULT_DISABLE_CHALLENGE_RESOURCE_VERIFICATION ?? ""),
  };
}

/** Builds the provider a configuration describes; `credential` overrides the one derived from it. */
export function createKeyProvider(
  config: KeyProviderConfig,
  opts: { credential?: TokenCredential } = {},
): FileKeyProvider | KeyVaultKeyProvider {
  if (config.kind === "file") return new FileKeyProvider({ dir: config.dir });
  const credential =
    opts.credential ?? (config.device ? deviceCredential(config.device) : new DefaultAzureCredential());
  return new KeyVaultKeyProvider({
    vaultUrl: config.vaultUrl,
    credential,
    ca: config.ca,
    clientOptions: { disableChallengeResourceVerification: config.disableChallengeResourceVerification },
  });
}

/** Key Vault when FLOTILLA_KEYVAULT_URL is set, else the file-backed provider: see keyProviderConfigFromEnv. */
export function keyProviderFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  opts: { credential?: TokenCredential } = {},
): FileKeyProvider | KeyVaultKeyProvider {
  return createKeyProvider(keyProviderConfigFromEnv(env), opts);
}
