/** What every handler of the aggregator runs over. */
import type { Fleet } from "./fleet/fleet";
import type { BlobStore } from "./store/blob-store";

export interface AggregatorServices {
  readonly store: BlobStore;
  readonly fleet: Fleet;
  /** ms since epoch. */
  readonly clock: () => number;
  readonly log: (line: string) => void;
}
