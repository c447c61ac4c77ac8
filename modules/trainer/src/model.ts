/**
 * The trainer's IoT Plug and Play model (dtdl/dtmi/flotilla/edge/trainer-1.json, DTDL v3): its model ID, announced
 * at connect, and its writable properties — the operator's participation and resource policy and its data settings.
 * One declaration: the module validates and acks desired values with these specs (modules/shared/writable.ts), the
 * cloud judges the policy members with the same parsers (core/fleet/policy.ts), and test/dtdl compares the model
 * file with this file, the method table and the reported keys so they cannot drift. docs/operations.md documents
 * each property with its `az iot hub module-twin update` example.
 */
import { parsePolicyValue, type TrainingWindows } from "../../../core/fleet/policy";
import {
  booleanProperty,
  customProperty,
  numberProperty,
  type PropertySpec,
  type PropertySpecs,
} from "../../shared/writable";

export const MODEL_ID = "dtmi:flotilla:edge:Trainer;1";

/** Desired keys the Function writes (round orders, evaluation orders): not operator properties, never acked. */
export const CLOUD_DESIRED_KEYS = ["flotilla", "flotillaEvaluate"] as const;

/**
 * The trainer's direct methods: its method table (./trainer.ts) is typed with these names, and each is a Command in
 * the model. The secure-aggregation three are ./secagg.ts SECAGG_METHODS.
 */
export const METHODS = [
  "startRound",
  "abortRound",
  "predict",
  "secaggShareKeys",
  "secaggMaskInput",
  "secaggUnmask",
  "status",
  "updateNotStored",
  "updateStored",
] as const;
export type TrainerMethod = (typeof METHODS)[number];

/**
 * The top-level reported keys the trainer's own state uses (ModuleHost `reportedKeys`: never a desired property's
 * ack): `flotilla` (round progress, TrainerState) and `participation` ({state, reason}: why the device takes part
 * or not). Each is a read-only Property in the model.
 */
export const REPORTED_KEYS = ["flotilla", "participation"] as const;

export interface TrainerPropertyDefaults {
  /** FLOTILLA_DATA_DIR (the default of `dataDir`). */
  readonly dataDir: string;
}

const DAY_MINUTES = 1440;

export function trainerProperties(d: TrainerPropertyDefaults) {
  return {
    enabled: booleanProperty({
      name: "enabled",
      description:
        "Participation: false and the device is never selected for a round and declines any order; a running round finishes. The reason is in reported participation.",
      default: true,
    }),
    maxTrainingMinutes: numberProperty({
      name: "maxTrainingMinutes",
      schema: "double",
      minimum: 0,
      maximum: DAY_MINUTES,
      unit: ["TimeSpan", "minute"],
      description:
        "Most minutes of local training per round (0: no cap). The cloud does not order a round it expects to take longer.",
      default: 0,
      applies: "next-round",
    }),
    maxThreads: numberProperty({
      name: "maxThreads",
      schema: "integer",
      minimum: 0,
      maximum: 64,
      description: "Most CPU threads local training uses (0: the module's FLOTILLA_THREADS setting).",
      default: 0,
      applies: "next-round",
    }),
    minFreeDiskBytes: numberProperty({
      name: "minFreeDiskBytes",
      schema: "long",
      minimum: 0,
      maximum: Number.MAX_SAFE_INTEGER,
      unit: ["DataSize", "byte"],
      description:
        "Accept a round only with at least this much free disk in the data directory's file system (0: no floor).",
      default: 0,
    }),
    minFreeMemoryBytes: numberProperty({
      name: "minFreeMemoryBytes",
      schema: "long",
      minimum: 0,
      maximum: Number.MAX_SAFE_INTEGER,
      unit: ["DataSize", "byte"],
      description: "Accept a round only with at least this much free memory (0: no floor).",
      default: 0,
    }),
    trainingWindows: customProperty<TrainingWindows | null>({
      schema: {
        "@type": "Object",
        fields: [
          { name: "timeZone", schema: "string" },
          { name: "windows", schema: { "@type": "Array", elementSchema: "string" } },
        ],
      },
      description:
        'Daily windows in local time when the device may train, e.g. {"timeZone": "Europe/Berlin", "windows": ["22:00-06:00"]} (null: any time).',
      default: null,
      parse: (v) => parsePolicyValue("trainingWindows", v) ?? null,
    }),
    dataDir: customProperty<string>({
      schema: "string",
      description:
        "The directory of the device's training data (CSV / JSON-lines files, docs/data.md); read from the next round.",
      default: d.dataDir,
      applies: "next-round",
      parse: (v) => {
        throw new Error(`dataDir: not implemented yet (${String(v)})`); // issue 17 helper B
      },
    }),
    dataSchema: customProperty<string>({
      schema: "string",
      description:
        "How the data files become samples: empty for schema.json in the data directory, a file path, or the schema document as JSON text (docs/data.md).",
      default: "",
      applies: "next-round",
      parse: (v) => {
        throw new Error(`dataSchema: not implemented yet (${String(v)})`); // issue 17 helper B
      },
    }),
    artifactRetentionHours: numberProperty({
      name: "artifactRetentionHours",
      schema: "double",
      minimum: 0,
      maximum: 8760,
      unit: ["TimeSpan", "hour"],
      description: "How long local training artefacts are kept (0: deleted when the round ends).",
      default: 24,
    }),
  } satisfies PropertySpecs;
}

export type TrainerProperties = ReturnType<typeof trainerProperties>;
export type { PropertySpec };
