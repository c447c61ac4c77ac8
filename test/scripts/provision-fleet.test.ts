/**
 * provision-fleet against the local IoT Hub (real azure-iothub Registry over HTTPS) and the Key Vault stand-in
 * (real @azure/keyvault-keys + ClientCertificateCredential), as a function and as the CLI.
 */
import { afterAll, beforeAll, test } from "@jest/globals";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { generate } from "selfsigned";
import { createRegistry, startLocalHub, type LocalHub } from "../../local/hub";
import { startKeyVaultStandIn, type KeyVaultStandIn } from "../../local/keyvault/server";
import { FileKeyProvider } from "../../core/secagg/file-key-provider";
import { KeyVaultKeyProvider, deviceCredential } from "../../azure/keyvault-key-provider";
import { fleetDeviceIds, jwkThumbprint, main, provisionFleet } from "../../scripts/provision-fleet";

const SCRIPT = path.join(__dirname, "..", "..", "scripts", "provision-fleet.js");
const CLIENT_ID = "provisioner";

let hub: LocalHub;
let kv: KeyVaultStandIn;
let tmp: string;
let certFile: string;
let certPem: string;
let wrongPem: string;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-provision-test-"));
  const rsa = (cn: string) =>
    generate([{ name: "commonName", value: cn }], { keyType: "rsa", keySize: 2048, algorithm: "sha256" });
  const [h, k, cert, wrong] = await Promise.all([
    startLocalHub({ stateDir: path.join(tmp, "hub"), log: () => undefined }),
    startKeyVaultStandIn(),
    rsa("provisioner"),
    rsa("intruder"),
  ]);
  hub = h;
  kv = k;
  certPem = cert.private + cert.cert;
  wrongPem = wrong.private + wrong.cert;
  certFile = path.join(tmp, "provisioner.pem");
  fs.writeFileSync(certFile, certPem, { mode: 0o600 });
  kv.registerClient(CLIENT_ID, cert.cert);
});

afterAll(async () => {
  await hub?.close();
  await kv?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function vaultKeys(pem = certPem): KeyVaultKeyProvider {
  return new KeyVaultKeyProvider({
    vaultUrl: kv.url,
    credential: deviceCredential({
      tenantId: kv.tenantId,
      clientId: CLIENT_ID,
      certificate: pem,
      authorityHost: kv.authorityHost,
      ca: kv.ca,
    }),
    ca: kv.ca,
    clientOptions: { disableChallengeResourceVerification: true, retryOptions: { maxRetries: 0 } },
  });
}

function run(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const clean = { ...process.env };
  for (const k of [
    "IOTHUB_CONNECTION_STRING",
    "FLOTILLA_KEYVAULT_URL",
    "FLOTILLA_KEY_DIR",
    "AZURE_CLIENT_ID",
  ])
    delete clean[k];
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [SCRIPT, ...args],
      { env: { ...clean, ...env }, timeout: 30_000 },
      (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr });
      },
    );
  });
}

test("provisionFleet creates registry devices and Key Vault keys, keeps existing ones, and is idempotent", async () => {
  const registry = createRegistry(hub);
  hub.createDevice("fleet-002"); // already in the hub before provisioning
  const keys = vaultKeys();
  const out = path.join(tmp, "out", "fleet.json");
  const lines: string[] = [];
  const first = await provisionFleet({
    devices: 4,
    prefix: "fleet",
    registry,
    keys,
    out,
    log: (l) => lines.push(l),
  });
  const ids = fleetDeviceIds("fleet", 4);
  assert.deepEqual(ids, ["fleet-000", "fleet-001", "fleet-002", "fleet-003"]);
  assert.equal(first.failed, 0, JSON.stringify(first.devices.map((d) => d.error)));
  assert.deepEqual(
    first.devices.map((d) => [d.deviceId, d.registry, d.key, d.keyName]),
    ids.map((id) => [id, id === "fleet-002" ? "existing" : "created", "created", `flotilla-${id}`]),
  );
  assert.equal(lines.length, 4);
  assert.ok(
    lines.every((l) =>
      /^\[\d\/4\] fleet-00\d device (created|existing), key created flotilla-fleet-00\d \S{43}$/.test(l),
    ),
    lines.join("\n"),
  );
  for (const d of first.devices) {
    const dev = (await registry.get(d.deviceId)).responseBody;
    assert.equal(dev.deviceId, d.deviceId);
    if (d.deviceId !== "fleet-002") assert.equal(dev.capabilities?.iotEdge, true);
    const jwk = await keys.getPublicKey(d.deviceId);
    assert.equal(d.jwkThumbprint, jwkThumbprint(jwk));
    assert.deepEqual(d.publicKey, jwk);
  }
  assert.deepEqual(JSON.parse(fs.readFileSync(out, "utf8")), JSON.parse(JSON.stringify(first)));

  const created = kv.stats.keysCreated;
  const again = await provisionFleet({ devices: 4, prefix: "fleet", registry, keys: vaultKeys() });
  assert.equal(again.failed, 0);
  assert.ok(again.devices.every((d) => d.registry === "existing" && d.key === "existing"));
  assert.deepEqual(
    again.devices.map((d) => d.jwkThumbprint),
    first.devices.map((d) => d.jwkThumbprint),
  );
  assert.equal(kv.stats.keysCreated, created, "no new key versions on a re-run");
});

test("per-device failures carry a code and do not stop the fleet: refused certificate → E_KEY_AUTH", async () => {
  const lines: string[] = [];
  const s = await provisionFleet({
    devices: 2,
    prefix: "refused",
    registry: createRegistry(hub),
    keys: vaultKeys(wrongPem),
    log: (l) => lines.push(l),
  });
  assert.equal(s.failed, 2);
  for (const d of s.devices) {
    assert.equal(d.registry, "created");
    assert.equal(d.key, "failed");
    assert.equal(d.error?.code, "E_KEY_AUTH");
  }
  assert.ok(lines.every((l) => / FAILED E_KEY_AUTH: /.test(l) && !l.includes("\n")));
});

test("CLI: bad input exits 2 with one line naming the code", async () => {
  const hubCs = hub.serviceConnectionString;
  const cases: [string[], RegExp][] = [
    [["--devices", "0", "--hub-connection-string", hubCs], /E_CONFIG_VALUE: --devices/],
    [["--devices", "abc", "--hub-connection-string", hubCs], /E_CONFIG_VALUE: --devices/],
    [
      ["--devices", "3", "--prefix", "bad/prefix", "--hub-connection-string", hubCs],
      /E_CONFIG_VALUE: --prefix/,
    ],
    [
      ["--devices", "3", "--concurrency", "0", "--hub-connection-string", hubCs],
      /E_CONFIG_VALUE: --concurrency/,
    ],
    [["--devices", "3"], /E_CONFIG_VALUE: no IoT Hub/],
    [
      ["--devices", "3", "--hub-connection-string", "garbage"],
      /E_CONFIG_VALUE: invalid IoT Hub connection string/,
    ],
    [["--devices", "3", "--hub-connection-string", "HostName=h"], /E_CONFIG_VALUE: .*SharedAccessKey/],
    [["--devices", "3", "--hub-connection-string", hubCs, "--key-dir", tmp], /E_CONFIG_VALUE: .*--hub-ca/],
    [
      ["--devices", "3", "--hub-connection-string", hubCs, "--vault-url", kv.url, "--key-dir", tmp],
      /not both/,
    ],
    [
      ["--devices", "3", "--hub-connection-string", hubCs, "--vault-url", "nope"],
      /E_CONFIG_VALUE: FLOTILLA_KEYVAULT_URL/,
    ],
    [
      ["--devices", "3", "--hub-connection-string", hubCs, "--vault-ca", "/nonexistent"],
      /E_CONFIG_VALUE: --vault-ca/,
    ],
    [["--devices", "3", "--bogus"], /unknown option/],
    [[], /required option/],
  ];
  for (const [args, expected] of cases) {
    let err = "";
    let out = "";
    const code = await main(args, {}, { err: (t) => (err += t), out: (t) => (out += t) });
    assert.equal(code, 2, `${args.join(" ")}: ${err}`);
    assert.match(err, expected);
    assert.equal(err.trim().split("\n").length, 1, err);
    assert.equal(out, "");
  }
  // And as a real process: the exit status is 2.
  const r = await run(["--devices", "-1", "--hub-connection-string", hubCs]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^provision-fleet: E_CONFIG_VALUE: --devices must be an integer/);
});

test("CLI end to end: local hub + file keys, and local hub + Key Vault stand-in with env credentials", async () => {
  const caFile = path.join(tmp, "hub-ca.pem");
  fs.writeFileSync(caFile, hub.caCertPem);
  const vaultCaFile = path.join(tmp, "vault-ca.pem");
  fs.writeFileSync(vaultCaFile, kv.ca);
  const keyDir = path.join(tmp, "cli-keys");
  const outFile = path.join(tmp, "cli.json");
  const hubArgs = ["--hub-connection-string", hub.serviceConnectionString, "--hub-ca", caFile];
  const [files, vault] = await Promise.all([
    run(["--devices", "3", "--prefix", "cli", ...hubArgs, "--key-dir", keyDir, "--out", outFile]),
    run(
      ["--devices", "2", "--prefix", "clikv", ...hubArgs, "--vault-url", kv.url, "--vault-ca", vaultCaFile],
      {
        AZURE_TENANT_ID: kv.tenantId,
        AZURE_CLIENT_ID: CLIENT_ID,
        AZURE_CLIENT_CERTIFICATE_PATH: certFile,
        AZURE_AUTHORITY_HOST: kv.authorityHost,
      },
    ),
  ]);
  assert.equal(files.code, 0, files.stderr);
  const summary = JSON.parse(fs.readFileSync(outFile, "utf8"));
  assert.equal(summary.succeeded, 3);
  const fileKeys = new FileKeyProvider(keyDir);
  for (const d of summary.devices) {
    assert.equal(d.keyName, `${d.deviceId}.key.pem`);
    assert.equal(d.jwkThumbprint, jwkThumbprint(await fileKeys.getPublicKey(d.deviceId)));
  }
  assert.match(files.stderr, /\[3\/3\] cli-00\d device created, key created/);

  assert.equal(vault.code, 0, vault.stderr);
  const vs = JSON.parse(vault.stdout);
  assert.deepEqual(
    vs.devices.map((d: { keyName: string; key: string }) => [d.keyName, d.key]),
    [
      ["flotilla-clikv-000", "created"],
      ["flotilla-clikv-001", "created"],
    ],
  );
  const registry = createRegistry(hub);
  for (const id of ["cli-000", "cli-002", "clikv-001"])
    assert.equal((await registry.get(id)).responseBody.deviceId, id);
});
