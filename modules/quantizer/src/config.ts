import { DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES } from "../../shared/chunks";
import { ConfigProblems, readConnection, type ConnectionConfig, type Env } from "../../shared/module-client";
import { readMetricsPort } from "../../shared/metrics-entry";

/**
 * The quantizer module's settings, from the environment at start-up (FLOTILLA_QUANTIZER_MAX_BYTES is the default of
 * the writable property maxPendingBytes, ./model.ts, which the operator may change in the module twin), validated at once with every missing or
 * invalid setting named (E_CONFIG_MISSING / E_CONFIG_INVALID). What to compress comes from the module twin
 * (docs/iothub-protocol.md), not from here.
 *
 *   FLOTILLA_QUANTIZER_DIR         error-feedback residuals (residual-<jobId>.bin)   default /var/lib/flotilla/quantizer
 *   FLOTILLA_MAX_CHUNK_BYTES       body bytes per `updates` output message            default 255,000
 *   FLOTILLA_QUANTIZER_MAX_BYTES   bytes of partly received updates held in memory    default 64 MiB
 *   FLOTILLA_CONNECTION_STRING     module connection string, when not on IoT Edge
 *   FLOTILLA_CA_CERT               PEM file of the gateway's CA, when not on IoT Edge (optional)
 *   FLOTILLA_METRICS_PORT          Prometheus /metrics port (docs/metrics.md), 0 = off  default 9600
 */
export const DEFAULT_STATE_DIR = "/var/lib/flotilla/quantizer";
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;

export interface QuantizerConfig {
  readonly stateDir: string;
  readonly maxChunkBytes: number;
  readonly maxBytes: number;
  /** FLOTILLA_METRICS_PORT (0: not served). */
  readonly metricsPort: number;
  readonly connection: ConnectionConfig;
}

export function loadQuantizerConfig(env: Env): QuantizerConfig {
  const p = new ConfigProblems("quantizer", env);
  const stateDir = p.value("FLOTILLA_QUANTIZER_DIR") ?? DEFAULT_STATE_DIR;
  const maxChunkBytes = p.number("FLOTILLA_MAX_CHUNK_BYTES", DEFAULT_CHUNK_BYTES, 1024, MAX_CHUNK_BYTES);
  const maxBytes = p.number("FLOTILLA_QUANTIZER_MAX_BYTES", DEFAULT_MAX_BYTES, 1024 * 1024, 2 ** 30);
  const metricsPort = readMetricsPort(p);
  const connection = readConnection(p);
  p.check();
  return { metricsPort, stateDir, maxChunkBytes, maxBytes, connection };
}
