import { fail } from "../../../core/errors";
import { DEFAULT_MAX_CHUNK_BYTES, MAX_CHUNK_BYTES } from "./outbox";
import { METRICS_PORT } from "../../shared/metrics";

/**
 * The update-queue module's settings: environment at start-up, validated at once with every missing or invalid
 * setting named (E_CONFIG_MISSING / E_CONFIG_INVALID). FLOTILLA_MAX_CHUNK_BYTES, FLOTILLA_RESEND_AFTER_MS and
 * FLOTILLA_QUEUE_MAX_BYTES are the defaults of the writable properties maxChunkBytes, resendAfterMs and capacityBytes
 * (./model.ts), which the operator may change in the module twin (docs/operations.md "Update-queue and quantizer
 * properties").
 *
 *   FLOTILLA_QUEUE_DIR           queue directory                       default /var/lib/flotilla/queue
 *   FLOTILLA_MAX_CHUNK_BYTES     body bytes per device-to-cloud chunk  default 255,000 (see outbox.ts)
 *   FLOTILLA_RESEND_AFTER_MS     resend an unacknowledged update after default 600,000 (10 min)
 *   FLOTILLA_QUEUE_MAX_BYTES     unacknowledged bytes kept             default 268,435,456 (256 MiB)
 *   FLOTILLA_CONNECTION_STRING   module connection string, when not on IoT Edge
 *   FLOTILLA_CA_CERT             PEM file of the gateway's CA, when not on IoT Edge (optional)
 *   FLOTILLA_TRAINER_MODULE      module told when the disk refuses an update (main.ts run())  default trainer
 *   FLOTILLA_METRICS_PORT        Prometheus /metrics port (docs/metrics.md), 0 = off  default 9600
 *
 * On IoT Edge (any IOTEDGE_* variable, or EdgeHubConnectionString) the edge runtime's variables are used instead.
 */
export const DEFAULT_QUEUE_DIR = "/var/lib/flotilla/queue";
export const DEFAULT_RESEND_AFTER_MS = 10 * 60_000;
export const DEFAULT_QUEUE_MAX_BYTES = 256 * 1024 * 1024;
/** Bounds for resendAfterMs taken from the environment or the twin, in ms: 1 s … 7 days. */
export const RESEND_AFTER_MS_RANGE = [1000, 7 * 24 * 3600_000] as const;

import { IOTEDGE_VARIABLES, type ConnectionConfig } from "../../shared/module-client";

export { IOTEDGE_VARIABLES, type ConnectionConfig };

export interface UpdateQueueConfig {
  readonly queueDir: string;
  readonly maxChunkBytes: number;
  readonly resendAfterMs: number;
  readonly maxBytes: number;
  /** FLOTILLA_METRICS_PORT (0: not served). */
  readonly metricsPort: number;
  readonly connection: ConnectionConfig;
}

export type Env = Readonly<Record<string, string | undefined>>;

export function loadConfig(env: Env): UpdateQueueConfig {
  const missing: string[] = [];
  const invalid: string[] = [];
  const value = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === "" ? undefined : v.trim();
  };
  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = value(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) {
      invalid.push(`${name}=${raw} (an integer from ${min} to ${max})`);
      return fallback;
    }
    return n;
  };

  const queueDir = value("FLOTILLA_QUEUE_DIR") ?? DEFAULT_QUEUE_DIR;
  const maxChunkBytes = integer("FLOTILLA_MAX_CHUNK_BYTES", DEFAULT_MAX_CHUNK_BYTES, 1024, MAX_CHUNK_BYTES);
  const resendAfterMs = integer(
    "FLOTILLA_RESEND_AFTER_MS",
    DEFAULT_RESEND_AFTER_MS,
    ...RESEND_AFTER_MS_RANGE,
  );
  const maxBytes = integer(
    "FLOTILLA_QUEUE_MAX_BYTES",
    DEFAULT_QUEUE_MAX_BYTES,
    1024 * 1024,
    Number.MAX_SAFE_INTEGER,
  );

  const metricsPort = integer("FLOTILLA_METRICS_PORT", METRICS_PORT, 0, 65535);

  let connection: ConnectionConfig;
  const onEdge =
    value("EdgeHubConnectionString") !== undefined || Object.keys(env).some((k) => k.startsWith("IOTEDGE_"));
  if (onEdge) {
    connection = { mode: "edge" };
    if (value("EdgeHubConnectionString") === undefined) {
      for (const name of IOTEDGE_VARIABLES) if (value(name) === undefined) missing.push(name);
      const scheme = value("IOTEDGE_AUTHSCHEME");
      if (scheme !== undefined && scheme !== "sasToken")
        invalid.push(`IOTEDGE_AUTHSCHEME=${scheme} (only sasToken)`);
    }
  } else {
    const connectionString = value("FLOTILLA_CONNECTION_STRING");
    if (connectionString === undefined) {
      missing.push("FLOTILLA_CONNECTION_STRING (or run on IoT Edge, which sets IOTEDGE_*)");
    } else if (
      !/(^|;)HostName=[^;]+/.test(connectionString) ||
      !/(^|;)ModuleId=[^;]+/.test(connectionString)
    ) {
      invalid.push("FLOTILLA_CONNECTION_STRING (needs HostName=…;DeviceId=…;ModuleId=…;SharedAccessKey=…)");
    }
    const caCertPath = value("FLOTILLA_CA_CERT");
    connection = { mode: "connectionString", connectionString: connectionString ?? "", caCertPath };
  }

  if (missing.length > 0) {
    fail(
      "E_CONFIG_MISSING",
      `update-queue: missing setting${missing.length > 1 ? "s" : ""}: ${missing.join(", ")}`,
    );
  }
  if (invalid.length > 0) {
    fail(
      "E_CONFIG_INVALID",
      `update-queue: invalid setting${invalid.length > 1 ? "s" : ""}: ${invalid.join(", ")}`,
    );
  }
  return { queueDir, maxChunkBytes, resendAfterMs, maxBytes, metricsPort, connection };
}
