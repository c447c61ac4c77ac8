/**
 * The local hub's PKI: a self-signed CA and one server certificate it signs, used by both the MQTT (8883-style)
 * and the HTTPS service endpoints. Made on first run under stateDir, reused while still valid and still
 * covering the required names; regenerated otherwise.
 *
 * Clients trust the CA PEM (device SDK: `client.setOptions({ ca })`; service SDK: the adapter's https.Agent).
 * Node verifies the server name against subjectAltName (RFC 6125 / node:tls checkServerIdentity), so the
 * certificate carries DNS:localhost, IP:127.0.0.1, DNS:<hub name> and any extra names asked for.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { generate } from "selfsigned";
import { FlotillaError } from "../../core/errors";

export interface HubTlsMaterial {
  caCertPem: string;
  caCertPath: string;
  serverCertPem: string;
  serverKeyPem: string;
  /** true when something was (re)generated in this call. */
  generated: boolean;
}

const FILES = {
  caCert: "hub-ca.pem",
  caKey: "hub-ca.key.pem",
  cert: "hub-server.pem",
  key: "hub-server.key.pem",
};

const DAY_MS = 86_400_000;

function writeAtomic(file: string, content: string, mode: number): void {
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString("hex")}.tmp`;
  fs.writeFileSync(tmp, content, { mode });
  fs.renameSync(tmp, file);
}

function readIf(file: string): string | undefined {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

function sanEntries(names: readonly string[]) {
  return names.map((n) => (net.isIP(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n }));
}

function caUsable(certPem: string | undefined, keyPem: string | undefined): boolean {
  if (!certPem || !keyPem) return false;
  try {
    const ca = new crypto.X509Certificate(certPem);
    return (
      ca.ca &&
      Date.parse(ca.validTo) > Date.now() + 7 * DAY_MS &&
      ca.checkPrivateKey(crypto.createPrivateKey(keyPem))
    );
  } catch {
    return false;
  }
}

function serverUsable(
  certPem: string | undefined,
  keyPem: string | undefined,
  caPem: string,
  names: readonly string[],
) {
  if (!certPem || !keyPem) return false;
  try {
    const cert = new crypto.X509Certificate(certPem);
    const ca = new crypto.X509Certificate(caPem);
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return false;
    if (Date.parse(cert.validTo) <= Date.now() + DAY_MS) return false;
    if (!cert.checkPrivateKey(crypto.createPrivateKey(keyPem))) return false;
    return names.every((n) =>
      net.isIP(n) ? cert.checkIP(n) !== undefined : cert.checkHost(n) !== undefined,
    );
  } catch {
    return false;
  }
}

/** Loads or creates the CA and the server certificate under `stateDir` (created if missing). */
export async function ensureHubTls(stateDir: string, names: readonly string[]): Promise<HubTlsMaterial> {
  fs.mkdirSync(stateDir, { recursive: true });
  const p = (f: string) => path.join(stateDir, f);
  let caCertPem = readIf(p(FILES.caCert));
  let caKeyPem = readIf(p(FILES.caKey));
  let generated = false;
  try {
    if (!caUsable(caCertPem, caKeyPem)) {
      const now = new Date(Date.now() - 60_000);
      const ca = await generate([{ name: "commonName", value: "Flotilla local IoT Hub CA" }], {
        keyType: "ec",
        curve: "P-256",
        algorithm: "sha256",
        notBeforeDate: now,
        notAfterDate: new Date(now.getTime() + 3650 * DAY_MS),
        extensions: [
          { name: "basicConstraints", cA: true, pathLenConstraint: 0, critical: true },
          { name: "keyUsage", keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
        ],
      });
      caCertPem = ca.cert;
      caKeyPem = ca.private;
      writeAtomic(p(FILES.caKey), caKeyPem, 0o600);
      writeAtomic(p(FILES.caCert), caCertPem, 0o644);
      generated = true;
    }
    let certPem = generated ? undefined : readIf(p(FILES.cert));
    let keyPem = generated ? undefined : readIf(p(FILES.key));
    if (!serverUsable(certPem, keyPem, caCertPem as string, names)) {
      const now = new Date(Date.now() - 60_000);
      const server = await generate([{ name: "commonName", value: names[0] ?? "localhost" }], {
        keyType: "ec",
        curve: "P-256",
        algorithm: "sha256",
        notBeforeDate: now,
        notAfterDate: new Date(now.getTime() + 825 * DAY_MS),
        ca: { key: caKeyPem as string, cert: caCertPem as string },
        extensions: [
          { name: "basicConstraints", cA: false, critical: true },
          { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
          { name: "extKeyUsage", serverAuth: true },
          { name: "subjectAltName", altNames: sanEntries(names) },
        ],
      });
      certPem = server.cert;
      keyPem = server.private;
      writeAtomic(p(FILES.key), keyPem, 0o600);
      writeAtomic(p(FILES.cert), certPem, 0o644);
      generated = true;
    }
    return {
      caCertPem: caCertPem as string,
      caCertPath: p(FILES.caCert),
      serverCertPem: certPem as string,
      serverKeyPem: keyPem as string,
      generated,
    };
  } catch (e) {
    if (e instanceof FlotillaError) throw e;
    throw new FlotillaError(
      "E_HUB_TLS",
      `cannot prepare the hub certificates in ${stateDir}: ${(e as Error).message}`,
      { cause: e },
    );
  }
}
