/**
 * KeyVaultKeyProvider through the unmodified @azure/keyvault-keys + @azure/identity SDKs against the local
 * Key Vault stand-in (HTTPS, 401 challenge, Entra token endpoint checking the device certificate).
 */
import { afterAll, beforeAll, describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as https from "node:https";
import * as os from "node:os";
import * as path from "node:path";
import { generate } from "selfsigned";
import { isFlotillaError } from "../../core/errors";
import { verifyIdentitySignature } from "../../core/secagg/identity";
import { FileKeyProvider } from "../../core/secagg/file-key-provider";
import {
  KeyVaultKeyProvider,
  createKeyProvider,
  deviceCredential,
  keyProviderConfigFromEnv,
  keyVaultError,
  keyVaultKeyName,
} from "../../azure/keyvault-key-provider";
import {
  signDigest,
  startKeyVaultStandIn,
  verifyDigest,
  type KeyVaultStandIn,
} from "../../local/keyvault/server";
import { keyProviderContract } from "../core/secagg/key-provider-contract";

const CLIENT_ID = "11111111-2222-3333-4444-555555555555";

/** An RSA device certificate + key in one PEM, as ClientCertificateCredential reads it. */
async function deviceCert(cn: string): Promise<{ pem: string; cert: string; key: string }> {
  const g = await generate([{ name: "commonName", value: cn }], {
    keyType: "rsa",
    keySize: 2048,
    algorithm: "sha256",
  });
  return { pem: g.private + g.cert, cert: g.cert, key: g.private };
}

let kv: KeyVaultStandIn;
let good: { pem: string; cert: string; key: string };
let wrong: { pem: string; cert: string; key: string };
const log: string[] = [];

const ready = (async () => {
  [kv, good, wrong] = await Promise.all([
    startKeyVaultStandIn({ log: (l) => log.push(l) }),
    deviceCert("device-good"),
    deviceCert("device-wrong"),
  ]);
  kv.registerClient(CLIENT_ID, good.pem);
})();

beforeAll(() => ready);
afterAll(async () => {
  await ready;
  await kv.close();
});

function provider(
  certPem = good.pem,
  extra: { ca?: string | null; retries?: number } = {},
): KeyVaultKeyProvider {
  const ca = extra.ca === null ? undefined : (extra.ca ?? kv.ca);
  return new KeyVaultKeyProvider({
    vaultUrl: kv.url,
    credential: deviceCredential({
      tenantId: kv.tenantId,
      clientId: CLIENT_ID,
      certificate: certPem,
      authorityHost: kv.authorityHost,
      ca,
    }),
    ca,
    clientOptions: {
      disableChallengeResourceVerification: true,
      ...(extra.retries !== undefined ? { retryOptions: { maxRetries: extra.retries } } : {}),
    },
  });
}

/** The JSON bodies the stand-in answers with (Key Vault and Entra shapes). */
interface WireBody {
  error?: { code: string; message: string } & string;
  error_codes?: number[];
  token_type?: string;
  key: Record<string, string> & { kid: string };
}

/** A raw HTTPS call to the stand-in (no SDK). */
function call(
  method: string,
  urlPath: string,
  opts: { token?: string; json?: unknown; form?: Record<string, string> } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: WireBody }> {
  const body = opts.form
    ? new URLSearchParams(opts.form).toString()
    : opts.json !== undefined
      ? JSON.stringify(opts.json)
      : undefined;
  return new Promise((resolve, reject) => {
    const req = https.request(
      new URL(urlPath, kv.url),
      {
        method,
        ca: kv.ca,
        headers: {
          ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
          ...(body
            ? { "content-type": opts.form ? "application/x-www-form-urlencoded" : "application/json" }
            : {}),
        },
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text) as WireBody }),
        );
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

async function vaultToken(): Promise<string> {
  const cred = deviceCredential({
    tenantId: kv.tenantId,
    clientId: CLIENT_ID,
    certificate: good.pem,
    authorityHost: kv.authorityHost,
    ca: kv.ca,
  });
  return (await cred.getToken("https://vault.azure.net/.default")).token;
}

keyProviderContract("KeyVaultKeyProvider → stand-in (real SDK, ClientCertificateCredential)", async () => {
  await ready;
  return { provider: provider() };
});

describe("Key Vault stand-in and the SDK", () => {
  test("a request without a token gets the 401 challenge the SDK answers; bad tokens are refused", async () => {
    const before = kv.stats.challenges;
    const r = await call("GET", "/keys/flotilla-x?api-version=7.5");
    assert.equal(r.status, 401);
    assert.equal(
      r.headers["www-authenticate"],
      `Bearer authorization="${kv.authorityHost}/${kv.tenantId}", resource="https://vault.azure.net"`,
    );
    assert.equal(r.body.error?.code, "Unauthorized");
    assert.equal(kv.stats.challenges, before + 1);

    const forged = await call("GET", "/keys/flotilla-x?api-version=7.5", { token: "a.b.c" });
    assert.equal(forged.status, 401);
    assert.equal(forged.body.error?.code, "Unauthorized");

    // The SDK went through the same challenge: its first call carried no token.
    const p = provider();
    await p.createKey(`challenge-${crypto.randomBytes(3).toString("hex")}`);
    assert.ok(kv.stats.challenges >= before + 2);
    assert.ok(
      log.some((l) => /^POST \/[0-9a-f-]{36}\/oauth2\/v2\.0\/token.* -> 200$/.test(l)),
      "token endpoint used",
    );
  });

  test("REST errors: api-version required and checked, key names validated, JSON error bodies", async () => {
    const token = await vaultToken();
    const missing = await call("GET", "/keys/flotilla-none", { token });
    assert.equal(missing.status, 400);
    assert.equal(missing.body.error?.code, "BadParameter");
    const unknownVersion = await call("GET", "/keys/flotilla-none?api-version=1999-01-01", { token });
    assert.equal(unknownVersion.status, 400);
    assert.match(unknownVersion.body.error?.message ?? "", /1999-01-01/);
    const notFound = await call("GET", "/keys/flotilla-none?api-version=7.4", { token });
    assert.equal(notFound.status, 404);
    assert.equal(notFound.body.error?.code, "KeyNotFound");
    const badName = await call("GET", "/keys/bad_name?api-version=7.4", { token });
    assert.equal(badName.status, 400);
    const rsa = await call("POST", "/keys/flotilla-rsa/create?api-version=7.4", {
      token,
      json: { kty: "RSA" },
    });
    assert.equal(rsa.status, 400);
    assert.equal(rsa.body.error?.code, "BadParameter");
    const created = await call("POST", "/keys/flotilla-raw/create?api-version=7.4", {
      token,
      json: { kty: "EC", crv: "P-256", key_ops: ["verify"] },
    });
    assert.equal(created.status, 200);
    const version = String(created.body.key.kid).split("/").pop();
    const shortDigest = await call("POST", `/keys/flotilla-raw/${version}/verify?api-version=7.4`, {
      token,
      json: { alg: "ES256", digest: "AAAA", value: Buffer.alloc(64).toString("base64url") },
    });
    assert.equal(shortDigest.status, 400);
    const forbidden = await call("POST", `/keys/flotilla-raw/${version}/sign?api-version=7.4`, {
      token,
      json: { alg: "ES256", value: Buffer.alloc(32).toString("base64url") },
    });
    assert.equal(forbidden.status, 403, "key_ops without sign");
  });

  test("the stand-in never returns the private key", async () => {
    const token = await vaultToken();
    const created = await call("POST", "/keys/flotilla-secret/create?api-version=2025-07-01", {
      token,
      json: { kty: "EC", crv: "P-256" },
    });
    const got = await call("GET", "/keys/flotilla-secret/?api-version=2025-07-01", { token });
    const byVersion = await call(
      "GET",
      `/keys/flotilla-secret/${created.body.key.kid.split("/").pop()}?api-version=7.6`,
      {
        token,
      },
    );
    for (const r of [created, got, byVersion]) {
      assert.equal(r.status, 200);
      assert.deepEqual(Object.keys(r.body.key).sort(), ["crv", "key_ops", "kid", "kty", "x", "y"]);
      assert.equal(r.body.key.d, undefined);
    }
    const jwk = await provider().getPublicKey("secret"); // keyVaultKeyName("secret") === "flotilla-secret"
    assert.equal((jwk as { d?: string }).d, undefined);
    assert.equal(jwk.x, created.body.key.x);
  });

  test("a wrong client certificate is refused by the token endpoint → E_KEY_AUTH", async () => {
    const refusals = kv.stats.tokenRefusals;
    const p = provider(wrong.pem);
    await assert.rejects(p.createKey("wrong-cert"), (e: unknown) => {
      assert.ok(isFlotillaError(e), String(e));
      assert.equal(e.code, "E_KEY_AUTH");
      assert.ok(!e.message.includes("\n"));
      assert.match(e.message, /AADSTS700027/);
      return true;
    });
    assert.equal(kv.stats.tokenRefusals, refusals + 1);
    // Nothing was created with the refused identity.
    await assert.rejects(
      provider().getPublicKey("wrong-cert"),
      (e: unknown) => isFlotillaError(e) && e.code === "E_KEY_NOT_FOUND",
    );
  });

  test("the token endpoint checks the assertion's signature, not just the certificate thumbprint", async () => {
    const tokenUrl = `/${kv.tenantId}/oauth2/v2.0/token`;
    const x5t = crypto
      .createHash("sha256")
      .update(new crypto.X509Certificate(good.cert).raw)
      .digest("base64url");
    const assertion = (key: string, claims: Record<string, unknown> = {}) => {
      const now = Math.floor(Date.now() / 1000);
      const h = Buffer.from(JSON.stringify({ alg: "PS256", typ: "JWT", "x5t#S256": x5t })).toString(
        "base64url",
      );
      const p = Buffer.from(
        JSON.stringify({
          aud: kv.url + tokenUrl,
          iss: CLIENT_ID,
          sub: CLIENT_ID,
          nbf: now,
          exp: now + 600,
          jti: crypto.randomUUID(),
          ...claims,
        }),
      ).toString("base64url");
      const s = crypto.sign("sha256", Buffer.from(`${h}.${p}`), {
        key,
        padding: crypto.constants.RSA_PKCS1_PSS_PADDING,
        saltLength: 32,
      });
      return `${h}.${p}.${s.toString("base64url")}`;
    };
    const form = (a: string) => ({
      grant_type: "client_credentials",
      client_id: CLIENT_ID,
      scope: "https://vault.azure.net/.default",
      client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
      client_assertion: a,
    });
    const forged = await call("POST", tokenUrl, { form: form(assertion(wrong.key)) });
    assert.equal(forged.status, 401);
    assert.equal(forged.body.error, "invalid_client");
    assert.deepEqual(forged.body.error_codes, [700027]);
    const genuine = await call("POST", tokenUrl, { form: form(assertion(good.key)) });
    assert.equal(genuine.status, 200, JSON.stringify(genuine.body));
    assert.equal(genuine.body.token_type, "Bearer");
    // Genuine signature but for another audience, expired, or naming another client: refused.
    for (const claims of [
      { aud: "https://login.microsoftonline.com/x/oauth2/v2.0/token" },
      { exp: Math.floor(Date.now() / 1000) - 60 },
      { iss: "someone-else" },
    ]) {
      const r = await call("POST", tokenUrl, { form: form(assertion(good.key, claims)) });
      assert.equal(r.status, 401, JSON.stringify(claims));
      assert.equal(r.body.error, "invalid_client");
    }
    const unknownClient = await call("POST", tokenUrl, {
      form: { ...form(assertion(good.key)), client_id: "nobody" },
    });
    assert.equal(unknownClient.status, 400);
  });

  test("the custom CA is what makes TLS work: without it the SDK cannot connect (E_KEY_VAULT)", async () => {
    const p = provider(good.pem, { ca: null, retries: 0 });
    await assert.rejects(p.getPublicKey("no-ca"), (e: unknown) => {
      assert.ok(isFlotillaError(e), String(e));
      assert.ok(["E_KEY_VAULT", "E_KEY_AUTH"].includes(e.code), e.code);
      assert.match(e.message, /certificate/i);
      return true;
    });
  });

  test("raw-digest ECDSA of the stand-in agrees with node:crypto ES256 both ways", () => {
    const { privateKey, publicKey } = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
    for (let i = 0; i < 5; i++) {
      const msg = crypto.randomBytes(50 + i);
      const digest = crypto.createHash("sha256").update(msg).digest();
      const ours = signDigest(privateKey, digest);
      assert.ok(crypto.verify("sha256", msg, { key: publicKey, dsaEncoding: "ieee-p1363" }, ours));
      const theirs = crypto.sign("sha256", msg, { key: privateKey, dsaEncoding: "ieee-p1363" });
      assert.ok(verifyDigest(privateKey, digest, theirs));
      const bad = Buffer.from(theirs);
      bad[5] ^= 1;
      assert.equal(verifyDigest(privateKey, digest, bad), false);
      const otherDigest = Buffer.from(digest);
      otherDigest[0] ^= 1;
      assert.equal(verifyDigest(privateKey, otherDigest, theirs), false);
    }
    const jwk = publicKey.export({ format: "jwk" });
    assert.equal(
      verifyIdentitySignature(
        jwk,
        Buffer.from("x"),
        signDigest(privateKey, crypto.createHash("sha256").update("x").digest()),
      ),
      true,
    );
  });

  test("dataDir persists keys, tenant and clients (0600) across a restart", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-kv-test-"));
    let a: KeyVaultStandIn | undefined;
    let b: KeyVaultStandIn | undefined;
    try {
      a = await startKeyVaultStandIn({ dataDir: dir });
      a.registerClient(CLIENT_ID, good.cert);
      const mk = (s: KeyVaultStandIn) =>
        new KeyVaultKeyProvider({
          vaultUrl: s.url,
          credential: deviceCredential({
            tenantId: s.tenantId,
            clientId: CLIENT_ID,
            certificate: good.pem,
            authorityHost: s.authorityHost,
            ca: s.ca,
          }),
          ca: s.ca,
          clientOptions: { disableChallengeResourceVerification: true },
        });
      const before = mk(a);
      const jwk = await before.createKey("persisted");
      const port = Number(new URL(a.url).port);
      const tenantId = a.tenantId;
      await a.close();
      a = undefined;
      b = await startKeyVaultStandIn({ dataDir: dir, port });
      assert.equal(b.tenantId, tenantId);
      // A fresh client (new token from the persisted client registration)...
      const p = mk(b);
      assert.deepEqual(await p.getPublicKey("persisted"), jwk);
      const sig = await p.signer("persisted").sign(Buffer.from("after restart"));
      assert.ok(verifyIdentitySignature(jwk, Buffer.from("after restart"), sig));
      // ...and the client from before the restart, whose cached token is still accepted.
      const tokens = b.stats.tokensIssued;
      assert.ok(await before.verify("persisted", Buffer.from("after restart"), sig));
      assert.equal(b.stats.tokensIssued, tokens);
      assert.equal(b.stats.badTokens, 0);
      for (const f of ["meta.json", "keys/flotilla-persisted.json"])
        assert.equal(fs.statSync(path.join(dir, f)).mode & 0o777, 0o600, f);
      assert.equal(fs.statSync(path.join(dir, "keys")).mode & 0o777, 0o700);
    } finally {
      await a?.close();
      await b?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("key names, error mapping, configuration", () => {
  test("keyVaultKeyName: Key Vault charset, ≤127, stable, injective on tricky ids", () => {
    const ids = [
      "dev-001",
      "Dev-001",
      "dev.001",
      "dev_001",
      "dev--001",
      "a".repeat(118),
      "a".repeat(119),
      "x".repeat(128),
      "é",
    ];
    const names = ids.map(keyVaultKeyName);
    for (const n of names) assert.match(n, /^[0-9a-zA-Z-]{1,127}$/);
    assert.equal(names[0], "flotilla-dev-001");
    assert.equal(names[5], `flotilla-${"a".repeat(118)}`);
    // Key Vault names are case-insensitive: compare lower-cased.
    assert.equal(new Set(names.map((n) => n.toLowerCase())).size, ids.length);
    assert.deepEqual(ids.map(keyVaultKeyName), names);
  });

  test("keyVaultError maps status codes and credential failures to stable codes", () => {
    const rest = (statusCode: number) =>
      Object.assign(new Error("boom\nsecond line"), { name: "RestError", statusCode, code: "X" });
    assert.equal(keyVaultError(rest(404), "op").code, "E_KEY_NOT_FOUND");
    assert.equal(keyVaultError(rest(401), "op").code, "E_KEY_AUTH");
    assert.equal(keyVaultError(rest(403), "op").code, "E_KEY_AUTH");
    const other = keyVaultError(rest(503), "op");
    assert.equal(other.code, "E_KEY_VAULT");
    assert.match(other.message, /status 503/);
    assert.ok(!other.message.includes("\n"));
    assert.equal(
      keyVaultError(Object.assign(new Error("x"), { name: "AuthenticationError" }), "op").code,
      "E_KEY_AUTH",
    );
    // The SDK's error stays reachable as the cause (the message keeps one line of it).
    const sdk = rest(500);
    assert.equal(keyVaultError(sdk, "op").cause, sdk);
    assert.equal(keyVaultError(rest(404), "op").cause instanceof Error, true);
  });

  test("keyProviderFromEnv: Key Vault when FLOTILLA_KEYVAULT_URL is set, else files", () => {
    const file = keyProviderConfigFromEnv({ FLOTILLA_KEY_DIR: "/tmp/k" });
    assert.deepEqual(file, { kind: "file", dir: "/tmp/k" });
    assert.ok(createKeyProvider(file) instanceof FileKeyProvider);
    const cfg = keyProviderConfigFromEnv({
      FLOTILLA_KEYVAULT_URL: "https://myvault.vault.azure.net",
      AZURE_TENANT_ID: "t",
      AZURE_CLIENT_ID: "c",
      AZURE_CLIENT_CERTIFICATE_PATH: "/etc/device.pem",
    });
    assert.equal(cfg.kind, "keyvault");
    if (cfg.kind !== "keyvault") return;
    assert.equal(cfg.disableChallengeResourceVerification, false);
    assert.deepEqual(cfg.device, {
      tenantId: "t",
      clientId: "c",
      certificatePath: "/etc/device.pem",
      authorityHost: undefined,
      ca: undefined,
    });
    assert.ok(createKeyProvider(cfg) instanceof KeyVaultKeyProvider);
    const local = keyProviderConfigFromEnv({ FLOTILLA_KEYVAULT_URL: "https://127.0.0.1:8443" });
    assert.equal(local.kind === "keyvault" && local.disableChallengeResourceVerification, true);
    assert.throws(
      () => keyProviderConfigFromEnv({ FLOTILLA_KEYVAULT_URL: "not a url" }),
      (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_VALUE",
    );
  });
});
