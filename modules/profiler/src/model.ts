/**
 * The profiler's IoT Plug and Play model (dtdl/dtmi/flotilla/edge/profiler-1.json, DTDL v3): its model ID,
 * announced at connect, and its writable properties (the measurement schedule and the model kinds benchmarked).
 * One declaration (see modules/trainer/src/model.ts).
 */
import type { PropertySpecs } from "../../shared/writable";

export const MODEL_ID = "dtmi:flotilla:edge:Profiler;1";

/** Desired keys the Function writes (each job's own model spec to benchmark): never acked. */
export const CLOUD_DESIRED_KEYS = ["jobModels"] as const;

/** The profiler's direct methods (its method table is typed with them; each is a Command in the model). */
export const METHODS = ["profile"] as const;
export type ProfilerMethod = (typeof METHODS)[number];

/**
 * The top-level reported keys the profiler's own state uses: `capabilities` (the measurements) and `profilerProbe`
 * (the round-trip probe's scratch key); read-only Properties.
 */
export const REPORTED_KEYS = ["capabilities", "profilerProbe"] as const;

/** scheduleMinutes, models, model: issue 17 helper B moves the profiler's existing acks here. */
export function profilerProperties() {
  return {} satisfies PropertySpecs;
}
