/** What every handler of the aggregator runs over. */
import type { JsonWebKey } from "node:crypto";
import type { Logger } from "../../../core/log";
import type { Fleet } from "./fleet/fleet";
import type { BlobStore } from "./store/blob-store";
import type { AggregatorTelemetry } from "./telemetry";

/**
 * Where the aggregator reads devices' identity public keys (the slice of core/secagg's KeyProvider it needs): in
 * production the Key Vault provider, locally the same provider the devices sign with. `getPublicKey` rejects
 * with FlotillaError E_KEY_NOT_FOUND for a device without a key.
 */
export interface IdentityKeyDirectory {
  getPublicKey(deviceId: string): Promise<JsonWebKey>;
}

export interface AggregatorServices {
  readonly store: BlobStore;
  readonly fleet: Fleet;
  /** ms since epoch. */
  readonly clock: () => number;
  /** One line per event (the handlers' log); in the Function app it is `logLines(logger)`. */
  readonly log: (line: string) => void;
  /** The structured logger `log` writes to (core/log.ts), for code that logs with levels and fields. */
  readonly logger?: Logger;
  /** Devices' identity keys; needed by secure-aggregation jobs only (creating one without it is refused). */
  readonly identityKeys?: IdentityKeyDirectory;
  /**
   * Round and job telemetry (telemetry.ts): told of every job document write; serves /api/metrics. createAggregator
   * adds a Prometheus-only one over `store` when absent.
   */
  readonly telemetry?: AggregatorTelemetry;
  /**
   * Most bytes a job's buffered robust aggregator may hold for one round (app setting FLOTILLA_ROBUST_MAX_BYTES;
   * default jobs/job.ts DEFAULT_ROBUST_MAX_BYTES, 1 GiB): a job over it is refused when created.
   */
  readonly robustMaxBytes?: number;
}

/**
 * `services.log` over a Logger: each line becomes a record of the logger's component (JSON lines in the Function
 * app, which Azure Functions forwards to Application Insights as traces). A line naming an error code
 * (`E_…`, core/errors.ts) is a `warn` record with that `code` field, and the job id and round of lines written as
 * `{jobId}/{round}` (or `job {jobId}`) go into `jobId`/`round` fields; any other line is `info`.
 */
export function logLines(logger: Logger): (line: string) => void {
  return (line) => {
    const fields: Record<string, string | number> = {};
    const code = /\b(E_[A-Z0-9_]+)\b/.exec(line)?.[1];
    if (code) fields.code = code;
    const at = /\b(?:round|secagg|model) ([A-Za-z0-9._-]+)\/(\d+)\b/.exec(line);
    const job = at ? at[1] : /\bjob ([A-Za-z0-9._-]+)\b/.exec(line)?.[1];
    if (job) fields.jobId = job;
    if (at) fields.round = Number(at[2]);
    if (code) logger.warn(line, fields);
    else logger.info(line, fields);
  };
}
