/**
 * The weight a device's update may carry. FedAvg weighs each update by the sample count the device claims in its
 * result frame (McMahan et al. 2017, Algorithm 1: n_k / n); unbounded, one device claiming 2^53 samples *is* the
 * next global model. So each claim is bounded by policy before it weighs anything:
 *
 *   bound = min(maxSamplesPerDevice, declared)     when the device declared a count when the round opened
 *   bound = maxSamplesPerDevice                    otherwise
 *
 * `declared` is the trainer module's reported `flotilla.numSamples` (its local dataset size, reported after each
 * round; the profiler's capabilities carry no sample count) as the fleet listed it when the round opened, kept in
 * the round state with the participant. It is self-reported, so the job's `maxSamplesPerDevice` (default
 * DEFAULT_MAX_SAMPLES_PER_DEVICE) is the hard limit. A claim above its bound is clipped to the bound
 * (`sampleCountPolicy: "clip"`, the default) or the update is refused (`"reject"`, failure code E_ROUND_SAMPLES);
 * either way the round record counts it (`sampleCountClipped`, `sampleCountRejected`) and a log line names the
 * device, its claim and the bound.
 */
/** A job's sample-count policy (cloud/aggregator JobDefinition has these members; the simulator has none). */
export interface SamplePolicy {
  /** The per-device cap (default DEFAULT_MAX_SAMPLES_PER_DEVICE). */
  readonly maxSamplesPerDevice?: number;
  readonly sampleCountPolicy?: SampleCountPolicy;
}

/** The per-device cap of a job that sets none. */
export const DEFAULT_MAX_SAMPLES_PER_DEVICE = 100_000;
export const SAMPLE_COUNT_POLICIES = ["clip", "reject"] as const;
export type SampleCountPolicy = (typeof SAMPLE_COUNT_POLICIES)[number];

/** The failure code of an update refused for its sample count. */
export const E_ROUND_SAMPLES = "E_ROUND_SAMPLES";

export interface SampleBound {
  readonly bound: number;
  /** Where the bound comes from (for the audit line). */
  readonly source: "declared" | "job cap";
}

/** The most samples `declared` (the device's reported count, if any) lets a device of this job claim. */
export function sampleBound(d: SamplePolicy, declared: number | undefined): SampleBound {
  const cap = d.maxSamplesPerDevice ?? DEFAULT_MAX_SAMPLES_PER_DEVICE;
  if (declared !== undefined && Number.isFinite(declared) && declared >= 1 && declared < cap) {
    return { bound: Math.floor(declared), source: "declared" };
  }
  return { bound: cap, source: "job cap" };
}

export type BoundedSamples =
  | { readonly outcome: "ok" | "clipped"; readonly numSamples: number; readonly reason?: string }
  | { readonly outcome: "rejected"; readonly reason: string };

/** Applies the job's policy to a claim of `claimed` samples. */
export function boundSamples(
  d: SamplePolicy,
  deviceId: string,
  declared: number | undefined,
  claimed: number,
): BoundedSamples {
  const { bound, source } = sampleBound(d, declared);
  if (claimed <= bound) return { outcome: "ok", numSamples: claimed };
  const reason = `'${deviceId}' claims ${claimed} samples, above its bound ${bound} (${source})`;
  if ((d.sampleCountPolicy ?? "clip") === "reject") return { outcome: "rejected", reason };
  return { outcome: "clipped", numSamples: bound, reason };
}
