/**
 * A local Azure Key Vault stand-in (keys only, EC P-256) plus the sliver of Microsoft Entra ID the unmodified
 * @azure/keyvault-keys and @azure/identity SDKs need to reach it. One HTTPS listener on 127.0.0.1 serves both.
 *
 * Key Vault (REST, api-version checked), as the SDK calls it:
 *   POST /keys/{name}/create                {kty:"EC", crv:"P-256", key_ops?, tags?}  -> KeyBundle
 *   GET  /keys/{name}[/]  /keys/{name}/{version}                                      -> KeyBundle (public JWK only)
 *   POST /keys/{name}/{version}/sign        {alg:"ES256", value:b64url(32-byte digest)} -> {kid, value: r||s}
 *   POST /keys/{name}/{version}/verify      {alg:"ES256", digest, value}                -> {value: boolean}
 *   A request without a bearer token gets the challenge the SDK's keyVaultAuthenticationPolicy expects:
 *   401 + `WWW-Authenticate: Bearer authorization="<authorityHost>/<tenant>", resource="https://vault.azure.net"`.
 *   Errors are `{error:{code,message}}`: Unauthorized 401, KeyNotFound 404, BadParameter 400, Forbidden 403.
 *
 * Entra ID (what MSAL node asks for in ClientCertificateCredential with disableInstanceDiscovery):
 *   GET  /{tenant}/v2.0/.well-known/openid-configuration
 *   POST /{tenant}/oauth2/v2.0/token   grant_type=client_credentials + a client_assertion JWT (PS256, x5t#S256;
 *        RS256/x5t accepted too). The assertion must name a client registered with registerClient(), carry the
 *        thumbprint of one of its certificates, be signed by that certificate's key, be addressed to this token
 *        endpoint and be unexpired; otherwise 401 invalid_client (AADSTS700027), as Entra answers.
 *   Access tokens are HS256 JWTs under a per-instance secret, audience https://vault.azure.net, 1 hour.
 *
 * ES256 over a digest: Key Vault signs a caller-computed SHA-256 digest, but node:crypto always hashes what it
 * signs and no raw-digest ECDSA library is installed. So ECDSA (FIPS 186-5 §6.4) is done here directly: the only
 * curve operation needed is k·G, which node:crypto's ECDH computes natively (setPrivateKey(k) → public key k·G);
 * the rest is arithmetic mod n with BigInt. Verification uses the key's own private scalar d:
 * u1·G + u2·Q = (u1 + u2·d)·G, the same equation a public-key verifier checks. Tests cross-check both directions
 * against node:crypto's ES256 over the original message.
 *
 * Not modelled: RBAC per key or per client (any valid token may use any key), RSA/oct keys, key rotation
 * policies, deletion/recovery, HSM attributes.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { ensureHubTls } from "../hub/tls";

export const KEY_VAULT_RESOURCE = "https://vault.azure.net";
/** api-versions of the Key Vault data plane this stand-in accepts (7.0 … the SDK 4.10's default). */
export const SUPPORTED_API_VERSIONS = ["7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"];
const KEY_NAME = /^[0-9a-zA-Z-]{1,127}$/;
const TOKEN_LIFETIME_S = 3600;
const MAX_BODY = 64 * 1024;

// P-256 group order (FIPS 186-5 / SEC 2).
const N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

export interface KeyVaultStandInOptions {
  /** 0 = ephemeral (default). */
  port?: number;
  /** Persist TLS material, tenant, registered clients and keys here (0600 files; default: a temp dir). */
  dataDir?: string;
  /** One line per request: "METHOD /path?query -> status". */
  log?: (line: string) => void;
}

export interface KeyVaultStandInStats {
  requests: number;
  /** 401 challenges sent to requests without a token. */
  challenges: number;
  /** 401s for a present but invalid token. */
  badTokens: number;
  tokensIssued: number;
  tokenRefusals: number;
  keysCreated: number;
  signs: number;
  verifies: number;
}

export interface KeyVaultStandIn {
  /** Vault URL, e.g. https://127.0.0.1:41234 (the KeyClient's vaultUrl). */
  readonly url: string;
  /** CA certificate (PEM) that issued the listener's certificate. */
  readonly ca: string;
  readonly tenantId: string;
  /** Entra authority host for ClientCertificateCredential (same origin as url). */
  readonly authorityHost: string;
  readonly stats: KeyVaultStandInStats;
  /** Registers an app (client id) and one of its certificates (PEM; further calls add certificates). */
  registerClient(clientId: string, certificatePem: string): void;
  close(): Promise<void>;
}

interface KeyVersion {
  version: string;
  created: number;
  keyOps: string[];
  tags?: Record<string, string>;
  privateKey: crypto.KeyObject;
}

/** dataDir/meta.json: who the tenant is and whom it knows. Keys live in dataDir/keys/<lower-case name>.json. */
interface Meta {
  tenantId: string;
  tokenSecret: string;
  clients: Record<string, string[]>;
}

interface StoredKey {
  name: string;
  versions: (Omit<KeyVersion, "privateKey"> & { pkcs8: string })[];
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const b64u = (b: Uint8Array) => Buffer.from(b).toString("base64url");
const toBig = (b: Uint8Array) => BigInt(`0x${Buffer.from(b).toString("hex") || "0"}`);
const to32 = (v: bigint) => Buffer.from(v.toString(16).padStart(64, "0"), "hex");
const mod = (a: bigint) => ((a % N) + N) % N;

function invN(a: bigint): bigint {
  // Fermat: a^(n-2) mod n (n is prime).
  let result = 1n;
  let base = mod(a);
  for (let e = N - 2n; e > 0n; e >>= 1n) {
    if (e & 1n) result = (result * base) % N;
    base = (base * base) % N;
  }
  return result;
}

/** x-coordinate of k·G, via node:crypto's native scalar multiplication. */
function baseMulX(k: bigint): bigint {
  const ecdh = crypto.createECDH("prime256v1");
  ecdh.setPrivateKey(to32(k));
  return toBig(ecdh.getPublicKey().subarray(1, 33));
}

function scalarOf(key: crypto.KeyObject): bigint {
  return toBig(Buffer.from(key.export({ format: "jwk" }).d as string, "base64url"));
}

/** ECDSA P-256 over a precomputed 32-byte digest; returns r||s (64 bytes). */
export function signDigest(privateKey: crypto.KeyObject, digest: Uint8Array): Uint8Array {
  const d = scalarOf(privateKey);
  const e = toBig(digest);
  for (;;) {
    const k = toBig(crypto.randomBytes(32));
    if (k === 0n || k >= N) continue;
    const r = mod(baseMulX(k));
    if (r === 0n) continue;
    const s = mod(invN(k) * (e + r * d));
    if (s === 0n) continue;
    return Buffer.concat([to32(r), to32(s)]);
  }
}

/** Checks r||s over a 32-byte digest for the key whose private scalar is held here. */
export function verifyDigest(privateKey: crypto.KeyObject, digest: Uint8Array, sig: Uint8Array): boolean {
  if (digest.byteLength !== 32 || sig.byteLength !== 64) return false;
  const r = toBig(sig.subarray(0, 32));
  const s = toBig(sig.subarray(32));
  if (r <= 0n || r >= N || s <= 0n || s >= N) return false;
  const w = invN(s);
  const u = mod(toBig(digest) * w + r * w * scalarOf(privateKey));
  return u !== 0n && mod(baseMulX(u)) === r;
}

function publicJwkOf(key: crypto.KeyObject): { x: string; y: string } {
  const jwk = crypto.createPublicKey(key).export({ format: "jwk" });
  return { x: jwk.x as string, y: jwk.y as string };
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) reject(new HttpError(413, "BadParameter", "request body too large"));
      else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function jsonBody(raw: Buffer): Record<string, unknown> {
  try {
    const v = JSON.parse(raw.toString("utf8") || "null") as unknown;
    if (v && typeof v === "object" && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    /* fall through */
  }
  throw new HttpError(400, "BadParameter", "the request body must be a JSON object");
}

function b64uField(body: Record<string, unknown>, field: string): Buffer {
  const v = body[field];
  if (typeof v !== "string" || !/^[A-Za-z0-9_-]*={0,2}$/.test(v))
    throw new HttpError(400, "BadParameter", `'${field}' must be base64url`);
  return Buffer.from(v, "base64url");
}

function hmacJwt(secret: Buffer, payload: Record<string, unknown>): string {
  const head = b64u(Buffer.from(JSON.stringify({ alg: "HS256", typ: "JWT" })));
  const body = b64u(Buffer.from(JSON.stringify(payload)));
  const sig = b64u(crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

function writeJson(file: string, value: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(value), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

function readJson<T>(file: string): T | undefined {
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, "utf8")) as T) : undefined;
}

export async function startKeyVaultStandIn(opts: KeyVaultStandInOptions = {}): Promise<KeyVaultStandIn> {
  const tempDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-keyvault-"));
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const tls = await ensureHubTls(path.join(dataDir, "tls"), ["localhost", "127.0.0.1"]);
  const metaFile = path.join(dataDir, "meta.json");
  const keyDir = path.join(dataDir, "keys");
  fs.mkdirSync(keyDir, { recursive: true, mode: 0o700 });
  const saved = readJson<Meta>(metaFile);
  const tenantId = saved?.tenantId ?? crypto.randomUUID();
  // Tokens survive a restart with the same dataDir (clients keep their cached token).
  const tokenSecret = saved ? Buffer.from(saved.tokenSecret, "hex") : crypto.randomBytes(32);
  const clients = new Map<string, crypto.X509Certificate[]>(
    Object.entries(saved?.clients ?? {}).map(([id, pems]) => [
      id,
      pems.map((p) => new crypto.X509Certificate(p)),
    ]),
  );
  // Key Vault object names are case-insensitive: stored under the lower-cased name.
  const keys = new Map<string, { name: string; versions: KeyVersion[] }>();
  for (const f of fs.readdirSync(keyDir).filter((n) => n.endsWith(".json"))) {
    const k = readJson<StoredKey>(path.join(keyDir, f)) as StoredKey;
    keys.set(k.name.toLowerCase(), {
      name: k.name,
      versions: k.versions.map(({ pkcs8, ...v }) => ({ ...v, privateKey: crypto.createPrivateKey(pkcs8) })),
    });
  }
  const saveMeta = () => {
    const meta: Meta = { tenantId, tokenSecret: tokenSecret.toString("hex"), clients: {} };
    for (const [id, certs] of clients) meta.clients[id] = certs.map((c) => c.toString());
    if (!tempDir) writeJson(metaFile, meta);
  };
  /** One file per key, so a create writes O(1) data however many keys exist. */
  const saveKey = (k: { name: string; versions: KeyVersion[] }) => {
    if (tempDir) return;
    const stored: StoredKey = {
      name: k.name,
      versions: k.versions.map(({ privateKey, ...v }) => ({
        ...v,
        pkcs8: privateKey.export({ format: "pem", type: "pkcs8" }) as string,
      })),
    };
    writeJson(path.join(keyDir, `${k.name.toLowerCase()}.json`), stored);
  };
  const stats: KeyVaultStandInStats = {
    requests: 0,
    challenges: 0,
    badTokens: 0,
    tokensIssued: 0,
    tokenRefusals: 0,
    keysCreated: 0,
    signs: 0,
    verifies: 0,
  };
  let base = ""; // https://127.0.0.1:<port>, known once listening
  const tokenEndpoint = () => `${base}/${tenantId}/oauth2/v2.0/token`;

  function keyBundle(name: string, v: KeyVersion) {
    return {
      key: {
        kid: `${base}/keys/${name}/${v.version}`,
        kty: "EC",
        crv: "P-256",
        key_ops: v.keyOps,
        ...publicJwkOf(v.privateKey),
      },
      attributes: {
        enabled: true,
        created: v.created,
        updated: v.created,
        recoveryLevel: "Recoverable+Purgeable",
        recoverableDays: 90,
        exportable: false,
      },
      ...(v.tags ? { tags: v.tags } : {}),
    };
  }

  function findKey(name: string, version?: string): { name: string; v: KeyVersion } {
    const k = keys.get(name.toLowerCase());
    const v =
      k && (version ? k.versions.find((x) => x.version === version) : k.versions[k.versions.length - 1]);
    if (!k || !v)
      throw new HttpError(
        404,
        "KeyNotFound",
        `A key with (name/id) ${name}${version ? `/${version}` : ""} was not found in this key vault.`,
      );
    return { name: k.name, v };
  }

  function checkToken(req: IncomingMessage): void {
    const auth = req.headers.authorization;
    if (!auth || !/^Bearer /i.test(auth)) {
      stats.challenges++;
      throw new HttpError(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.");
    }
    const [h, p, s] = auth.slice(7).trim().split(".");
    const expect = h && p ? crypto.createHmac("sha256", tokenSecret).update(`${h}.${p}`).digest() : undefined;
    const given = Buffer.from(s ?? "", "base64url");
    let claims: { aud?: string; tid?: string; exp?: number } = {};
    if (expect && given.length === expect.length && crypto.timingSafeEqual(given, expect)) {
      claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as typeof claims;
    }
    if (
      claims.aud !== KEY_VAULT_RESOURCE ||
      claims.tid !== tenantId ||
      !(Number(claims.exp) > Date.now() / 1000)
    ) {
      stats.badTokens++;
      throw new HttpError(401, "Unauthorized", "AKV10022: Invalid or expired access token.");
    }
  }

  async function vault(req: IncomingMessage, url: URL): Promise<unknown> {
    checkToken(req);
    const apiVersion = url.searchParams.get("api-version");
    if (!apiVersion) throw new HttpError(400, "BadParameter", "The api-version query parameter is required.");
    if (!SUPPORTED_API_VERSIONS.includes(apiVersion))
      throw new HttpError(
        400,
        "BadParameter",
        `The specified version (${apiVersion}) is not recognized. Consider using the latest supported version (${SUPPORTED_API_VERSIONS.at(-1)}).`,
      );
    const parts = url.pathname.split("/").slice(2); // after "/keys"
    if (parts.at(-1) === "") parts.pop();
    const [name, second, op] = parts;
    if (!name || !KEY_NAME.test(name))
      throw new HttpError(400, "BadParameter", "Key name must match ^[0-9a-zA-Z-]{1,127}$.");
    const method = req.method ?? "GET";
    if (method === "POST" && second === "create" && op === undefined) {
      const body = jsonBody(await readBody(req));
      if (body.kty !== "EC")
        throw new HttpError(400, "BadParameter", "This stand-in creates EC keys only (kty 'EC').");
      if (body.crv !== undefined && body.crv !== "P-256")
        throw new HttpError(400, "BadParameter", "This stand-in supports curve P-256 only.");
      const keyOps = Array.isArray(body.key_ops) ? body.key_ops.map(String) : ["sign", "verify"];
      const { privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
      const v: KeyVersion = {
        version: crypto.randomBytes(16).toString("hex"),
        created: Math.floor(Date.now() / 1000),
        keyOps,
        tags: body.tags as Record<string, string> | undefined,
        privateKey,
      };
      const entry = keys.get(name.toLowerCase()) ?? { name, versions: [] };
      entry.versions.push(v);
      keys.set(name.toLowerCase(), entry);
      stats.keysCreated++;
      saveKey(entry);
      return keyBundle(entry.name, v);
    }
    if (method === "GET" && op === undefined) {
      const k = findKey(name, second);
      return keyBundle(k.name, k.v);
    }
    if (method === "POST" && second && (op === "sign" || op === "verify") && parts.length === 3) {
      const body = jsonBody(await readBody(req));
      const k = findKey(name, second);
      if (!k.v.keyOps.includes(op))
        throw new HttpError(
          403,
          "Forbidden",
          `Operation ${op} is not allowed on key ${k.name}/${k.v.version}.`,
        );
      if (body.alg !== "ES256")
        throw new HttpError(
          400,
          "BadParameter",
          `Algorithm '${String(body.alg)}' is not valid for a P-256 key (ES256).`,
        );
      const digest = b64uField(body, op === "sign" ? "value" : "digest");
      if (digest.length !== 32)
        throw new HttpError(400, "BadParameter", "ES256 needs a 32-byte SHA-256 digest.");
      if (op === "sign") {
        stats.signs++;
        return { kid: keyBundle(k.name, k.v).key.kid, value: b64u(signDigest(k.v.privateKey, digest)) };
      }
      stats.verifies++;
      return { value: verifyDigest(k.v.privateKey, digest, b64uField(body, "value")) };
    }
    throw new HttpError(400, "BadParameter", `${method} ${url.pathname} is not supported by this stand-in.`);
  }

  function oauthError(status: number, error: string, aadsts: number, description: string) {
    return Object.assign(new HttpError(status, error, `AADSTS${aadsts}: ${description}`), { aadsts });
  }

  function verifyAssertion(clientId: string, assertion: string): void {
    const certs = clients.get(clientId);
    if (!certs)
      throw oauthError(
        400,
        "unauthorized_client",
        700016,
        `Application '${clientId}' was not found in the tenant.`,
      );
    const [h, p, s] = assertion.split(".");
    let header: Record<string, string> = {};
    let claims: Record<string, unknown> = {};
    try {
      header = JSON.parse(Buffer.from(h, "base64url").toString("utf8")) as Record<string, string>;
      claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as Record<string, unknown>;
    } catch {
      throw oauthError(401, "invalid_client", 50027, "Invalid JWT token: the client assertion is not a JWT.");
    }
    const cert = certs.find((c) => {
      const der = c.raw;
      return (
        (header["x5t#S256"] !== undefined &&
          header["x5t#S256"] === b64u(crypto.createHash("sha256").update(der).digest())) ||
        (header.x5t !== undefined && header.x5t === b64u(crypto.createHash("sha1").update(der).digest()))
      );
    });
    if (!cert)
      throw oauthError(
        401,
        "invalid_client",
        700027,
        "Client assertion failed signature validation: unknown certificate thumbprint.",
      );
    const signed = Buffer.from(`${h}.${p}`);
    const sig = Buffer.from(s ?? "", "base64url");
    let ok = false;
    try {
      if (header.alg === "PS256")
        ok = crypto.verify(
          "sha256",
          signed,
          { key: cert.publicKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
          sig,
        );
      else if (header.alg === "RS256") ok = crypto.verify("sha256", signed, cert.publicKey, sig);
    } catch {
      ok = false; // e.g. a non-RSA certificate: Entra accepts RSA certificate credentials only
    }
    if (!ok)
      throw oauthError(401, "invalid_client", 700027, "Client assertion contains an invalid signature.");
    const now = Date.now() / 1000;
    if (claims.iss !== clientId || claims.sub !== clientId)
      throw oauthError(401, "invalid_client", 700021, "Client assertion iss/sub must be the client id.");
    if (claims.aud !== tokenEndpoint())
      throw oauthError(
        401,
        "invalid_client",
        700021,
        `Client assertion audience must be ${tokenEndpoint()}.`,
      );
    if (!(Number(claims.exp) > now) || Number(claims.nbf ?? 0) > now + 300)
      throw oauthError(401, "invalid_client", 700024, "Client assertion is not within its valid time range.");
    if (Date.parse(cert.validTo) < Date.now() || Date.parse(cert.validFrom) > Date.now() + 300_000)
      throw oauthError(401, "invalid_client", 700027, "The certificate is expired or not yet valid.");
  }

  async function entra(req: IncomingMessage, url: URL): Promise<unknown> {
    const [, tenant, ...rest] = url.pathname.split("/");
    const route = rest.join("/");
    if (tenant !== tenantId) throw oauthError(400, "invalid_tenant", 90002, `Tenant '${tenant}' not found.`);
    if (req.method === "GET" && route === "v2.0/.well-known/openid-configuration") {
      return {
        issuer: `${base}/${tenantId}/v2.0`,
        token_endpoint: tokenEndpoint(),
        authorization_endpoint: `${base}/${tenantId}/oauth2/v2.0/authorize`,
        jwks_uri: `${base}/${tenantId}/discovery/v2.0/keys`,
        token_endpoint_auth_methods_supported: ["private_key_jwt"],
        response_types_supported: ["code", "token"],
        subject_types_supported: ["pairwise"],
        id_token_signing_alg_values_supported: ["RS256"],
        tenant_region_scope: "local",
      };
    }
    if (req.method === "POST" && route === "oauth2/v2.0/token") {
      const form = new URLSearchParams((await readBody(req)).toString("utf8"));
      try {
        if (form.get("grant_type") !== "client_credentials")
          throw oauthError(
            400,
            "unsupported_grant_type",
            70003,
            "Only client_credentials is supported here.",
          );
        if (form.get("client_assertion_type") !== "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
          throw oauthError(
            401,
            "invalid_client",
            7000218,
            "A client_assertion (certificate credential) is required.",
          );
        const clientId = form.get("client_id") ?? "";
        verifyAssertion(clientId, form.get("client_assertion") ?? "");
        const scopes = (form.get("scope") ?? "").split(" ");
        if (!scopes.includes(`${KEY_VAULT_RESOURCE}/.default`))
          throw oauthError(
            400,
            "invalid_scope",
            70011,
            `Only the scope ${KEY_VAULT_RESOURCE}/.default is issued here.`,
          );
        const now = Math.floor(Date.now() / 1000);
        stats.tokensIssued++;
        return {
          token_type: "Bearer",
          expires_in: TOKEN_LIFETIME_S,
          ext_expires_in: TOKEN_LIFETIME_S,
          access_token: hmacJwt(tokenSecret, {
            aud: KEY_VAULT_RESOURCE,
            iss: `${base}/${tenantId}/v2.0`,
            tid: tenantId,
            appid: clientId,
            iat: now,
            exp: now + TOKEN_LIFETIME_S,
          }),
        };
      } catch (e) {
        stats.tokenRefusals++;
        throw e;
      }
    }
    throw oauthError(
      404,
      "not_found",
      90002,
      `${req.method} ${url.pathname} is not served by this stand-in.`,
    );
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    stats.requests++;
    const url = new URL(req.url ?? "/", base);
    const isVault = url.pathname === "/keys" || url.pathname.startsWith("/keys/");
    const headers: Record<string, string> = {
      "content-type": "application/json; charset=utf-8",
      "x-ms-request-id": crypto.randomUUID(),
    };
    let status = 200;
    let body: unknown;
    try {
      body = isVault ? await vault(req, url) : await entra(req, url);
    } catch (e) {
      const err = e instanceof HttpError ? e : new HttpError(500, "InternalError", (e as Error).message);
      status = err.status;
      if (isVault) {
        body = { error: { code: err.code, message: err.message } };
        if (status === 401)
          headers["www-authenticate"] =
            `Bearer authorization="${base}/${tenantId}", resource="${KEY_VAULT_RESOURCE}"`;
      } else {
        const aadsts = (err as { aadsts?: number }).aadsts ?? 0;
        body = {
          error: err.code,
          error_description: err.message,
          error_codes: [aadsts],
          timestamp: new Date().toISOString(),
          trace_id: crypto.randomUUID(),
          correlation_id: crypto.randomUUID(),
        };
      }
    }
    if (!req.readableEnded) req.resume();
    opts.log?.(`${req.method} ${url.pathname}${url.search} -> ${status}`);
    res.writeHead(status, headers).end(JSON.stringify(body));
  }

  const server = https.createServer({ key: tls.serverKeyPem, cert: tls.serverCertPem }, (req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, "127.0.0.1", () => resolve());
  });
  base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  saveMeta();

  return {
    url: base,
    ca: tls.caCertPem,
    tenantId,
    authorityHost: base,
    stats,
    registerClient(clientId, certificatePem) {
      const cert = new crypto.X509Certificate(certificatePem);
      const list = clients.get(clientId) ?? [];
      if (!list.some((c) => c.fingerprint256 === cert.fingerprint256)) list.push(cert);
      clients.set(clientId, list);
      saveMeta();
    },
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      if (tempDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
