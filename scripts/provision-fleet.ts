/**
 * Provisions a fleet: each device's identity in IoT Hub (azure-iothub Registry; existing devices are kept) and its
 * identity key (Key Vault, or the file-backed provider), then writes a JSON summary.
 *
 *   node dist/scripts/provision-fleet.js --devices 100 --prefix dev \
 *     --hub-connection-string "HostName=..;SharedAccessKeyName=registryReadWrite;SharedAccessKey=.." \
 *     --vault-url https://myvault.vault.azure.net --out fleet.json
 *
 * - Device ids: `<prefix>-<i>`, i = 0..N-1 zero-padded to at least 3 digits (the simulator's naming).
 * - Hub: --hub-connection-string or IOTHUB_CONNECTION_STRING. For the local hub (GatewayHostName=host:port) also
 *   give --hub-ca FILE: the registry then goes through local/hub's adapter.
 * - Keys: --vault-url (or FLOTILLA_KEYVAULT_URL) → Key Vault, authenticated from the environment
 *   (AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_CERTIFICATE_PATH, else DefaultAzureCredential);
 *   --vault-ca FILE trusts a private CA (the local stand-in). Otherwise --key-dir DIR (or the default key dir):
 *   the file-backed provider. The identity running this needs "Key Vault Crypto Officer" (create + read keys).
 * - One progress line per device on stderr; the summary goes to --out FILE, or stdout.
 * - Exit codes: 0 all provisioned, 1 some device failed (its line and summary entry carry the error code),
 *   2 bad input (one line: `provision-fleet: E_CODE: message`).
 */
import { createHash, type JsonWebKey } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { Command, CommanderError } from "commander";
import { Registry } from "azure-iothub";
import { FlotillaError, fail, isFlotillaError } from "../core/errors";
import type { KeyProvider } from "../core/secagg/identity";
import { createKeyProvider, keyProviderConfigFromEnv } from "../azure/keyvault-key-provider";
import { createRegistry } from "../local/hub/service-client";
import { parseConnectionString } from "../local/hub/sas";

/** IoT Hub device id characters (case-sensitive), from the IoT Hub identity registry docs. */
const PREFIX = /^[A-Za-z0-9\-.%_*?!(),:=@$']{1,100}$/;
export const MAX_DEVICES = 100_000;

/** The parts of azure-iothub's Registry used here (a real Registry, or the local hub adapter's). */
export type RegistryLike = Pick<Registry, "create">;

export interface ProvisionOptions {
  devices: number;
  prefix: string;
  registry: RegistryLike;
  keys: KeyProvider & { keyName?(deviceId: string): string };
  /** Create the devices as IoT Edge devices (default true). */
  edge?: boolean;
  /** Devices provisioned at once (default 8). */
  concurrency?: number;
  /** Write the summary JSON here. */
  out?: string;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export type StepResult = "created" | "existing" | "failed" | "skipped";

export interface ProvisionedDevice {
  deviceId: string;
  registry: StepResult;
  key: StepResult;
  keyName: string;
  /** RFC 7638 SHA-256 thumbprint of the public JWK, base64url. */
  jwkThumbprint?: string;
  publicKey?: JsonWebKey;
  error?: { code: string; message: string };
}

export interface ProvisionSummary {
  prefix: string;
  total: number;
  succeeded: number;
  failed: number;
  devices: ProvisionedDevice[];
}

/** `<prefix>-<i>` for i = 0..n-1, zero-padded so the names sort in order. */
export function fleetDeviceIds(prefix: string, n: number): string[] {
  const width = Math.max(3, String(n - 1).length);
  return Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(width, "0")}`);
}

/** RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC public key. */
export function jwkThumbprint(jwk: JsonWebKey): string {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return createHash("sha256").update(canonical).digest("base64url");
}

function validate(opts: Pick<ProvisionOptions, "devices" | "prefix" | "concurrency">): void {
  if (!Number.isInteger(opts.devices) || opts.devices < 1 || opts.devices > MAX_DEVICES)
    fail("E_CONFIG_VALUE", `--devices must be an integer from 1 to ${MAX_DEVICES}, got ${opts.devices}`);
  if (typeof opts.prefix !== "string" || !PREFIX.test(opts.prefix))
    fail(
      "E_CONFIG_VALUE",
      `--prefix must be 1-100 IoT Hub device id characters (letters, digits, - . % _ * ? ! ( ) , : = @ $ '), got ${JSON.stringify(opts.prefix)}`,
    );
  if (opts.concurrency !== undefined && (!Number.isInteger(opts.concurrency) || opts.concurrency < 1))
    fail("E_CONFIG_VALUE", `--concurrency must be a positive integer, got ${opts.concurrency}`);
}

function oneLine(s: unknown): string {
  return String(s ?? "")
    .split(/\r?\n/)[0]
    .slice(0, 300);
}

/** azure-iothub errors carry a name (UnauthorizedError, ThrottlingError, ...) and response.statusCode. */
function registryError(e: unknown, deviceId: string): FlotillaError {
  const err = e as { name?: string; message?: string; response?: { statusCode?: number } };
  const status = err?.response?.statusCode;
  const code =
    err?.name === "UnauthorizedError" || status === 401 || status === 403 ? "E_HUB_AUTH" : "E_HUB_REGISTRY";
  return new FlotillaError(
    code,
    `IoT Hub registry create ${deviceId}: ${err?.name ?? "Error"}${status ? ` (${status})` : ""}: ${oneLine(err?.message)}`,
    { cause: e },
  );
}

async function provisionOne(deviceId: string, opts: ProvisionOptions): Promise<ProvisionedDevice> {
  const keyName = opts.keys.keyName?.(deviceId) ?? deviceId;
  const d: ProvisionedDevice = { deviceId, registry: "skipped", key: "skipped", keyName };
  try {
    try {
      await opts.registry.create({
        deviceId,
        status: "enabled",
        capabilities: { iotEdge: opts.edge ?? true },
      });
      d.registry = "created";
    } catch (e) {
      if ((e as { name?: string }).name !== "DeviceAlreadyExistsError") {
        d.registry = "failed";
        throw registryError(e, deviceId);
      }
      d.registry = "existing";
    }
    let existed = true;
    try {
      d.publicKey = await opts.keys.getPublicKey(deviceId);
    } catch (e) {
      if (!isFlotillaError(e) || e.code !== "E_KEY_NOT_FOUND") {
        d.key = "failed";
        throw e;
      }
      existed = false;
    }
    if (!existed) {
      try {
        d.publicKey = await opts.keys.createKey(deviceId);
      } catch (e) {
        d.key = "failed";
        throw e;
      }
    }
    d.key = existed ? "existing" : "created";
    d.jwkThumbprint = jwkThumbprint(d.publicKey as JsonWebKey);
  } catch (e) {
    d.error = isFlotillaError(e)
      ? { code: e.code, message: oneLine(e.message) }
      : { code: "E_INTERNAL", message: oneLine((e as Error)?.message ?? e) };
  }
  return d;
}

/** Provisions `<prefix>-0..N-1`: registry identity (kept if present) and identity key (kept if present). */
export async function provisionFleet(opts: ProvisionOptions): Promise<ProvisionSummary> {
  validate(opts);
  const ids = fleetDeviceIds(opts.prefix, opts.devices);
  const results: ProvisionedDevice[] = new Array(ids.length);
  const width = String(ids.length).length;
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < ids.length) {
      const i = next++;
      const d = await provisionOne(ids[i], opts);
      results[i] = d;
      done++;
      const head = `[${String(done).padStart(width)}/${ids.length}] ${d.deviceId}`;
      opts.log?.(
        d.error
          ? `${head} FAILED ${d.error.code}: ${d.error.message}`
          : `${head} device ${d.registry}, key ${d.key} ${d.keyName} ${d.jwkThumbprint}`,
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 8, ids.length) }, worker));
  const failed = results.filter((d) => d.error).length;
  const summary: ProvisionSummary = {
    prefix: opts.prefix,
    total: ids.length,
    succeeded: ids.length - failed,
    failed,
    devices: results,
  };
  if (opts.out) {
    try {
      fs.mkdirSync(path.dirname(path.resolve(opts.out)), { recursive: true });
      fs.writeFileSync(opts.out, JSON.stringify(summary, null, 2) + "\n");
    } catch (e) {
      fail("E_CONFIG_OUT", `cannot write ${opts.out}: ${(e as Error).message}`, { cause: e });
    }
  }
  return summary;
}

function readFile(flag: string, file: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (e) {
    return fail("E_CONFIG_VALUE", `${flag}: cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
}

function registryFrom(cs: string, hubCa: string | undefined): RegistryLike {
  let parsed: Record<string, string>;
  try {
    parsed = parseConnectionString(cs);
  } catch (e) {
    return fail("E_CONFIG_VALUE", `invalid IoT Hub connection string: ${oneLine((e as Error).message)}`, {
      cause: e,
    });
  }
  if (!parsed.HostName || !parsed.SharedAccessKey || !parsed.SharedAccessKeyName)
    fail(
      "E_CONFIG_VALUE",
      "the IoT Hub connection string needs HostName, SharedAccessKeyName and SharedAccessKey",
    );
  if (parsed.GatewayHostName) {
    if (!hubCa) fail("E_CONFIG_VALUE", "a GatewayHostName (local hub) needs --hub-ca FILE");
    return createRegistry({ serviceConnectionString: cs, caCertPem: readFile("--hub-ca", hubCa) });
  }
  return Registry.fromConnectionString(cs);
}

type CliOptions = {
  devices?: string;
  prefix: string;
  hubConnectionString?: string;
  hubCa?: string;
  vaultUrl?: string;
  vaultCa?: string;
  keyDir?: string;
  out?: string;
  concurrency: string;
  edge: boolean;
};

export interface CliIo {
  out(text: string): void;
  err(text: string): void;
}

const STDIO: CliIo = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

/** The CLI; returns the exit code (never throws). */
export async function main(
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
  io: CliIo = STDIO,
): Promise<number> {
  const program = new Command("provision-fleet")
    .description("create device identities in IoT Hub and their identity keys in Key Vault (or files)")
    .requiredOption("--devices <n>", "number of devices")
    .option("--prefix <prefix>", "device id prefix", "device")
    .option("--hub-connection-string <cs>", "IoT Hub service connection string (or IOTHUB_CONNECTION_STRING)")
    .option("--hub-ca <file>", "CA certificate of a local hub (with GatewayHostName)")
    .option("--vault-url <url>", "Key Vault URL (or FLOTILLA_KEYVAULT_URL)")
    .option("--vault-ca <file>", "CA certificate to trust for Key Vault and Entra (local stand-in)")
    .option("--key-dir <dir>", "file-backed identity keys in this directory (instead of Key Vault)")
    .option("--out <file>", "write the JSON summary here (default: stdout)")
    .option("--concurrency <n>", "devices provisioned in parallel", "8")
    .option("--no-edge", "create plain devices instead of IoT Edge devices")
    .exitOverride()
    .configureOutput({ writeErr: (t) => io.err(t), writeOut: (t) => io.out(t) });
  let o: CliOptions;
  try {
    program.parse(argv, { from: "user" });
    o = program.opts<CliOptions>();
  } catch (e) {
    return e instanceof CommanderError && e.exitCode === 0 ? 0 : 2;
  }
  try {
    const devices = /^\d+$/.test(o.devices ?? "") ? Number(o.devices) : NaN;
    const concurrency = /^\d+$/.test(o.concurrency) ? Number(o.concurrency) : NaN;
    validate({ devices, prefix: o.prefix, concurrency });
    const cs = o.hubConnectionString ?? env.IOTHUB_CONNECTION_STRING;
    if (!cs)
      fail("E_CONFIG_VALUE", "no IoT Hub: give --hub-connection-string or set IOTHUB_CONNECTION_STRING");
    const vaultUrl = o.vaultUrl ?? (o.keyDir ? undefined : env.FLOTILLA_KEYVAULT_URL);
    if (o.vaultUrl && o.keyDir) fail("E_CONFIG_VALUE", "give either --vault-url or --key-dir, not both");
    const keyEnv: NodeJS.ProcessEnv = { ...env, FLOTILLA_KEYVAULT_URL: vaultUrl ?? "" };
    if (o.keyDir) keyEnv.FLOTILLA_KEY_DIR = o.keyDir;
    if (o.vaultCa) {
      readFile("--vault-ca", o.vaultCa);
      keyEnv.FLOTILLA_KEYVAULT_CA = o.vaultCa;
    }
    const config = keyProviderConfigFromEnv(keyEnv);
    const keys = createKeyProvider(config);
    const registry = registryFrom(cs, o.hubCa);
    io.err(
      `provisioning ${devices} devices '${o.prefix}-*' → keys in ${config.kind === "file" ? config.dir : config.vaultUrl}\n`,
    );
    const summary = await provisionFleet({
      devices,
      prefix: o.prefix,
      registry,
      keys,
      edge: o.edge,
      concurrency,
      out: o.out,
      log: (l) => io.err(l + "\n"),
    });
    if (!o.out) io.out(JSON.stringify(summary, null, 2) + "\n");
    io.err(`${summary.succeeded}/${summary.total} devices provisioned${o.out ? ` → ${o.out}` : ""}\n`);
    return summary.failed === 0 ? 0 : 1;
  } catch (e) {
    if (isFlotillaError(e)) {
      io.err(`provision-fleet: ${e.code}: ${e.message}\n`);
      return 2;
    }
    io.err(`provision-fleet: E_INTERNAL: ${oneLine((e as Error)?.message ?? e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
