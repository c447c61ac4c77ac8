/**
 * The profiler's IoT Plug and Play model (dtdl/dtmi/flotilla/edge/profiler-1.json, DTDL v3): its model ID,
 * announced at connect, and its writable properties (the measurement schedule and the model kinds benchmarked).
 * One declaration (see modules/trainer/src/model.ts).
 */
import type { PropertySpecs } from "../../shared/writable";

export const MODEL_ID = "dtmi:flotilla:edge:Profiler;1";

/** Desired keys the Function writes (each job's own model spec to benchmark): never acked. */
export const CLOUD_DESIRED_KEYS = ["jobModels"] as const;

/** scheduleMinutes, models, model: issue 17 helper B moves the profiler's existing acks here. */
export function profilerProperties() {
  return {} satisfies PropertySpecs;
}
