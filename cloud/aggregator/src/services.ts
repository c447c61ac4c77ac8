/** What every handler of the aggregator runs over. */
import type { JsonWebKey } from "node:crypto";
import type { Logger } from "../../../core/log";
import type { Fleet } from "./fleet/fleet";
import type { BlobStore } from "./store/blob-store";

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
}

/**
 * `services.log` over a Logger: each line becomes an info record of the logger's component (JSON lines in the
 * Function app, which Azure Functions forwards to Application Insights as traces).
 */
export function logLines(logger: Logger): (line: string) => void {
  return (line) => logger.info(line);
}
