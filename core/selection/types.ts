/**
 * Participant selection: who trains next. The simulator (with a fleet trace's virtual clock) and the Azure
 * Function (with the profiler's reported capabilities, the twins' tags and the job's stored history) both build
 * the same inputs and call the same selectors (core/selection/index.ts createSelector).
 *
 * A selector is pure and deterministic: the same candidates, history and context (including `seed`) give the same
 * picks, so a restarted job replays its selection.
 */

/** What is known of a device when participants are picked (any field may be unknown). */
export interface DeviceProfile {
  readonly deviceId: string;
  /** Local training samples the device reported. */
  readonly numSamples?: number;
  /** Training throughput for the job's own model (samples/s), from the profiler or the trace. */
  readonly samplesPerSecond?: number;
  readonly memoryBytes?: number;
  readonly freeDiskBytes?: number;
  readonly uplinkBytesPerSecond?: number;
  readonly downlinkBytesPerSecond?: number;
  readonly rttMs?: number;
  /** Fraction of the time the device is connected (0..1). */
  readonly availability?: number;
  /**
   * Seconds from now that the device is expected to stay online (its declared availability window or the
   * trace's session); undefined = unknown.
   */
  readonly onlineForS?: number;
  /** The device twin's tags (cohort queries and operator hints). */
  readonly tags?: Readonly<Record<string, unknown>>;
}

/** What the job remembers of a device's past rounds (core/selection/history.ts keeps it). */
export interface DeviceHistory {
  /** Rounds (or async dispatches) the device was picked for. */
  readonly selected: number;
  /** Updates it delivered that were aggregated. */
  readonly completions: number;
  /** Picks that ended without an update (deadline, failure, refused as too stale). */
  readonly timeouts: number;
  /** Timeouts since its last completion (reset by a completion); absent = 0. */
  readonly consecutiveTimeouts?: number;
  /** Round of its last pick. */
  readonly lastSelectedRound?: number;
  /** Training loss it reported with its last update. */
  readonly lastLoss?: number;
  /** Samples behind that loss. */
  readonly lastSamples?: number;
  /** Measured duration of its last completed round (s, order to update). */
  readonly lastDurationS?: number;
}

export interface SelectionContext {
  readonly round: number;
  /** How many devices to pick (fewer when fewer are eligible). */
  readonly count: number;
  /** Seed of the job (the draw depends on seed and round only). */
  readonly seed: number;
  /** Seconds a participant has from its order to deliver (the round deadline). */
  readonly deadlineS: number;
  /** Bytes each participant downloads (the model as sent). */
  readonly downloadBytes: number;
  /** Bytes each participant is expected to upload (its update as encoded). */
  readonly uploadBytes: number;
  /** Local epochs per round. */
  readonly epochs: number;
  /** Memory the job's training needs on a device (bytes); devices reporting less are not eligible. */
  readonly minMemoryBytes?: number;
}

export interface Selector {
  readonly name: string;
  /** Picks up to `ctx.count` of `candidates` (distinct device ids, in the order they should be ordered). */
  select(
    candidates: readonly DeviceProfile[],
    history: ReadonlyMap<string, DeviceHistory>,
    ctx: SelectionContext,
  ): string[];
}
