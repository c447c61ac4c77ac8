/**
 * The trainer's IoT Plug and Play model (dtdl/dtmi/flotilla/edge/trainer-1.json, DTDL v3): its model ID, announced
 * at connect, and its writable properties — the operator's participation and resource policy and its data settings.
 * One declaration: the module validates and acks desired values with these specs (modules/shared/writable.ts), the
 * cloud judges the policy members with the same parsers (core/fleet/policy.ts), and test/dtdl compares the model
 * file with this file, the method table and the reported keys so they cannot drift. docs/operations.md documents
 * each property with its `az iot hub module-twin update` example.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { checkDataSchema, readDataSchema } from "../../../core/data/data-schema";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import { parsePolicyValue, show, type TrainingWindows } from "../../../core/fleet/policy";
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

/** The trainer's round state (status, job, round, metrics, error: modules/trainer/src/trainer.ts TrainerState). */
export const STATE_KEY = "flotilla";
/** Why the trainer takes part in rounds or not (`Participation`): the portal's answer to "why is it not training?". */
export const PARTICIPATION_KEY = "participation";
/** The trainer's own top-level reported keys (never a desired property's ack; the DTDL model's read-only properties). */
export const REPORTED_KEYS = [STATE_KEY, PARTICIPATION_KEY] as const;

/**
 * The reported `participation`: `enabled` (takes orders), or why it declines them now — `disabled` (property
 * `enabled` false), `outside-window` (trainingWindows), `low-disk` / `low-memory` (below minFreeDiskBytes /
 * minFreeMemoryBytes). Re-evaluated at each order, when a policy property changes and every minute.
 */
export const PARTICIPATION_STATES = [
  "enabled",
  "disabled",
  "outside-window",
  "low-disk",
  "low-memory",
] as const;
export type ParticipationState = (typeof PARTICIPATION_STATES)[number];
export interface Participation {
  readonly state: ParticipationState;
  /** One line: why (when enabled, "the policy allows training now"; never null, which a reported patch deletes). */
  readonly reason: string;
}

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
        "The directory of the device's training data (CSV / JSON-lines files, docs/data.md): an absolute path of a readable directory; read from the next round.",
      default: d.dataDir,
      applies: "next-round",
      parse: parseDataDir,
    }),
    dataSchema: customProperty<string>({
      schema: "string",
      description:
        "How the data files become samples: empty for schema.json in the data directory, a file path, or the schema document as JSON text (docs/data.md).",
      default: "",
      applies: "next-round",
      parse: parseDataSchema,
    }),
    artifactRetentionHours: numberProperty({
      name: "artifactRetentionHours",
      schema: "double",
      minimum: 0,
      maximum: 8760,
      unit: ["TimeSpan", "hour"],
      description:
        "How long local training artefacts (each round's log and trained weights under FLOTILLA_WORK_DIR) are kept (0: deleted when the round ends).",
      default: 24,
    }),
  } satisfies PropertySpecs;
}

export type TrainerProperties = ReturnType<typeof trainerProperties>;
export type { PropertySpec };

function invalid(message: string, cause?: unknown): never {
  throw new FlotillaError("E_PROPERTY_INVALID", message, cause === undefined ? undefined : { cause });
}

/** `dataDir`: an absolute path of an existing, readable directory (E_PROPERTY_INVALID naming the problem). */
export function parseDataDir(v: unknown): string {
  if (typeof v !== "string" || v.length === 0 || v.length > 4096)
    invalid(`dataDir must be an absolute directory path, not ${show(v)}`);
  if (!path.isAbsolute(v)) invalid(`dataDir ${show(v)} is not an absolute path`);
  let st: fs.Stats;
  try {
    st = fs.statSync(v);
  } catch (e) {
    return invalid(`dataDir ${show(v)} does not exist (${(e as NodeJS.ErrnoException).code ?? "error"})`, e);
  }
  if (!st.isDirectory()) invalid(`dataDir ${show(v)} is not a directory`);
  try {
    fs.accessSync(v, fs.constants.R_OK | fs.constants.X_OK);
  } catch (e) {
    invalid(`dataDir ${show(v)} is not readable by the module`, e);
  }
  return v;
}

/**
 * `dataSchema`: "" (the data directory's schema.json, if any), an absolute path of a schema file, or the schema
 * document itself as JSON text (starting with `{`). The file or text is validated now (core/data/data-schema.ts);
 * the value kept is the string as given.
 */
export function parseDataSchema(v: unknown): string {
  if (typeof v !== "string" || v.length > 65_536)
    invalid(`dataSchema must be "", a schema file path or the schema as JSON text, not ${show(v)}`);
  const text = v.trim();
  if (text === "") return "";
  try {
    if (text.startsWith("{")) {
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (e) {
        return invalid(`dataSchema is not valid JSON (${(e as Error).message.slice(0, 100)})`, e);
      }
      checkDataSchema(value, "dataSchema");
      return text;
    }
    if (!path.isAbsolute(text))
      invalid(`dataSchema ${show(v)} is neither JSON text nor an absolute schema file path`);
    readDataSchema(text);
    return text;
  } catch (e) {
    if (isFlotillaError(e) && e.code === "E_PROPERTY_INVALID") throw e;
    const why = isFlotillaError(e) ? `${e.code} ${e.message}` : String(e);
    return invalid(`dataSchema: ${why}`, e);
  }
}

/** The data schema option of core/data/dirloader.ts for a `dataSchema` value (undefined: the directory's own). */
export function schemaOption(v: string): string | Record<string, unknown> | undefined {
  const text = v.trim();
  if (text === "") return undefined;
  return text.startsWith("{") ? (JSON.parse(text) as Record<string, unknown>) : text;
}
