/**
 * The quantizer's IoT Plug and Play model (dtdl/dtmi/flotilla/edge/quantizer-1.json, DTDL v3): its model ID,
 * announced at connect, and its writable properties. One declaration (see modules/trainer/src/model.ts).
 */
import { numberProperty, type PropertySpecs } from "../../shared/writable";

export const MODEL_ID = "dtmi:flotilla:edge:Quantizer;1";

/** Desired keys the Function writes (each job's codec settings): never acked. */
export const CLOUD_DESIRED_KEYS = ["flotilla"] as const;

/** The quantizer's direct methods (its method table is typed with them; each is a Command in the model). */
export const METHODS = ["status"] as const;
export type QuantizerMethod = (typeof METHODS)[number];

/** The top-level reported keys the quantizer's own state uses (`flotilla`: QuantizerState); read-only Properties. */
export const REPORTED_KEYS = ["flotilla"] as const;

export interface QuantizerPropertyDefaults {
  /** FLOTILLA_QUANTIZER_MAX_BYTES. */
  readonly maxPendingBytes: number;
}

export function quantizerProperties(d: QuantizerPropertyDefaults) {
  return {
    maxPendingBytes: numberProperty({
      name: "maxPendingBytes",
      schema: "long",
      minimum: 1024 * 1024,
      maximum: 2 ** 30,
      unit: ["DataSize", "byte"],
      description: "Most bytes of partly received updates held in memory while their chunks arrive.",
      default: d.maxPendingBytes,
    }),
  } satisfies PropertySpecs;
}

export type QuantizerProperties = ReturnType<typeof quantizerProperties>;
