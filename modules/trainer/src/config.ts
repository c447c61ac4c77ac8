import { DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES } from "../../shared/chunks";
import { ConfigProblems, readConnection, type ConnectionConfig, type Env } from "../../shared/module-client";
import { readMetricsPort } from "../../shared/metrics-entry";

/**
 * The trainer module's settings, from the environment at start-up, validated at once with every missing or invalid
 * setting named (E_CONFIG_MISSING / E_CONFIG_INVALID):
 *
 *   FLOTILLA_DATA_DIR            the device's training data: CSV / JSON-lines files, and     default /data
 *                                optionally schema.json saying how they become samples or time-series windows
 *                                (docs/data.md; core/data/dirloader.ts), read at every round;
 *                                the default of the dataDir / dataSchema properties (docs/operations.md)
 *   FLOTILLA_EVAL_DIR            the device's held-out data, in the same formats: each new    default: none
 *                                global model is evaluated on it with onnxruntime and the result sent to the
 *                                cloud (docs/evaluation.md); never trained on. Unset: no evaluation is sent
 *   FLOTILLA_WORK_DIR            local training artefacts: each round's log and trained      default: none
 *                                weights, kept for the artifactRetentionHours property (./artifacts.ts)
 *   FLOTILLA_MAX_CHUNK_BYTES     body bytes per `updates` output message                   default 255,000
 *   FLOTILLA_THREADS             threads of local training (1 to 8, or auto; docs/threads.md) default auto: the
 *                                device's cores, at most 4; capped by the maxThreads property (the module
 *                                restarts itself to resize its pool, docs/threads.md)
 *   FLOTILLA_CONNECTION_STRING   module connection string, when not on IoT Edge
 *   FLOTILLA_CA_CERT             PEM file of the gateway's CA, when not on IoT Edge (optional)
 *   FLOTILLA_METRICS_PORT        Prometheus /metrics port (docs/metrics.md), 0 = off        default 9600
 *
 * Secure aggregation's identity key (read when a secure round needs it; azure/keyvault-key-provider.ts):
 *   FLOTILLA_KEYVAULT_URL        Key Vault holding the device's EC P-256 key (AZURE_TENANT_ID, AZURE_CLIENT_ID,
 *                                AZURE_CLIENT_CERTIFICATE_PATH: the device's X.509 credential)
 *   FLOTILLA_KEY_DIR             else: the directory of the file-backed key (default ~/.flotilla/keys)
 */
export const DEFAULT_DATA_DIR = "/data";
/** Chunk bodies: 255,000 bytes by default, at most 258,048 (the wire contract, core/protocol/chunks.ts). */
export { DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES };

export interface TrainerConfig {
  readonly dataDir: string;
  /** Held-out data for fleet-wide evaluation (FLOTILLA_EVAL_DIR); undefined = none. */
  readonly evalDir?: string;
  /** FLOTILLA_WORK_DIR: where local training artefacts go; undefined = none are written. */
  readonly workDir?: string;
  readonly maxChunkBytes: number;
  /** Training threads (FLOTILLA_THREADS); undefined = auto. */
  readonly threads?: number;
  /** FLOTILLA_METRICS_PORT (0: not served). */
  readonly metricsPort: number;
  readonly connection: ConnectionConfig;
}

export function loadTrainerConfig(env: Env): TrainerConfig {
  const p = new ConfigProblems("trainer", env);
  const dataDir = p.value("FLOTILLA_DATA_DIR") ?? DEFAULT_DATA_DIR;
  const evalDir = p.value("FLOTILLA_EVAL_DIR");
  const workDir = p.value("FLOTILLA_WORK_DIR");
  const maxChunkBytes = p.number("FLOTILLA_MAX_CHUNK_BYTES", DEFAULT_CHUNK_BYTES, 1024, MAX_CHUNK_BYTES);
  const threads = p.threads();
  const metricsPort = readMetricsPort(p);
  const connection = readConnection(p);
  p.check();
  return {
    dataDir,
    ...(evalDir !== undefined ? { evalDir } : {}),
    ...(workDir !== undefined ? { workDir } : {}),
    maxChunkBytes,
    threads,
    metricsPort,
    connection,
  };
}
