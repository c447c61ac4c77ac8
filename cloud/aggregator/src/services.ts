/** What every handler of the aggregator runs over. */
import type { JsonWebKey } from "node:crypto";
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
  readonly log: (line: string) => void;
  /** Devices' identity keys; needed by secure-aggregation jobs only (creating one without it is refused). */
  readonly identityKeys?: IdentityKeyDirectory;
}
