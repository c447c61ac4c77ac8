/**
 * The profiler's IoT Plug and Play model (dtdl/dtmi/flotilla/edge/profiler-1.json, DTDL v3): its model ID,
 * announced at connect, and its writable properties (the measurement schedule and the model kinds benchmarked).
 * One declaration (see modules/trainer/src/model.ts).
 */
import { FlotillaError } from "../../../core/errors";
import { MODEL_KINDS } from "../../../core/engine/model-spec";
import { show } from "../../../core/fleet/policy";
import { customProperty, numberProperty, type PropertySpecs } from "../../shared/writable";

export const MODEL_ID = "dtmi:flotilla:edge:Profiler;1";

/** Desired keys the Function writes (each job's own model spec to benchmark): never acked. */
export const CLOUD_DESIRED_KEYS = ["jobModels"] as const;

/** The profiler's direct methods (its method table is typed with them; each is a Command in the model). */
export const METHODS = ["profile"] as const;
export type ProfilerMethod = (typeof METHODS)[number];

/** The profiler's own top-level reported keys: the measurements, and the RTT probe's scratch key. */
export const REPORTED_KEYS = ["capabilities", "profilerProbe"] as const;

/** Longest schedule: a week. */
const WEEK_MINUTES = 7 * 24 * 60;

/** The DTDL enum of the model kinds the profiler benchmarks (core/engine/model-spec.ts MODEL_KINDS). */
const MODEL_KIND_SCHEMA = {
  "@type": "Enum",
  valueSchema: "string",
  enumValues: MODEL_KINDS.map((k) => ({ name: k, enumValue: k })),
} as const;

function modelKind(name: string, v: unknown): string {
  if (typeof v !== "string" || !MODEL_KINDS.includes(v as never))
    throw new FlotillaError(
      "E_PROPERTY_INVALID",
      `${name}: unknown model kind ${show(v)} (known: ${MODEL_KINDS.join(", ")})`,
    );
  return v;
}

export function profilerProperties() {
  return {
    scheduleMinutes: numberProperty({
      name: "scheduleMinutes",
      schema: "double",
      minimum: 0,
      maximum: WEEK_MINUTES,
      unit: ["TimeSpan", "minute"],
      description:
        "Measure every this many minutes besides at start and on the profile method (0: only then). Applies at once.",
      default: 0,
    }),
    models: customProperty<string[]>({
      schema: { "@type": "Array", elementSchema: MODEL_KIND_SCHEMA },
      description:
        "The model kinds whose training speed is benchmarked (empty: the one in `model`). Used from the next measurement.",
      default: [],
      parse: (v) => {
        if (!Array.isArray(v) || v.length > MODEL_KINDS.length * 4)
          throw new FlotillaError(
            "E_PROPERTY_INVALID",
            `models must be a list of model kinds (${MODEL_KINDS.join(", ")}), not ${show(v)}`,
          );
        return [...new Set(v.map((k, i) => modelKind(`models[${i}]`, k)))];
      },
    }),
    model: customProperty<string>({
      schema: MODEL_KIND_SCHEMA,
      description:
        "The model kind benchmarked when `models` is empty (default mlp). Used from the next measurement.",
      default: "mlp",
      parse: (v) => modelKind("model", v),
    }),
  } satisfies PropertySpecs;
}

export type ProfilerProperties = ReturnType<typeof profilerProperties>;
