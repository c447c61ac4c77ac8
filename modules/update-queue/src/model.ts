/**
 * The update-queue's IoT Plug and Play model (dtdl/dtmi/flotilla/edge/updatequeue-1.json, DTDL v3): its model ID,
 * announced at connect, and its writable properties — the queue's capacity, retention and resend interval, and the
 * metered-link policy. One declaration (see modules/trainer/src/model.ts); docs/operations.md documents each.
 */
import { parsePolicyValue } from "../../../core/fleet/policy";
import { MAX_CHUNK_BYTES } from "../../shared/chunks";
import { booleanProperty, customProperty, numberProperty, type PropertySpecs } from "../../shared/writable";
import { RESEND_AFTER_MS_RANGE } from "./config";

export const MODEL_ID = "dtmi:flotilla:edge:UpdateQueue;1";

/** Desired keys the Function writes (delivery acknowledgements, the open rounds): never acked. */
export const CLOUD_DESIRED_KEYS = ["acks", "openRounds"] as const;

/** The queue's direct methods (its method table in ./main.ts is typed with them; each is a Command in the model). */
export const METHODS = ["ack", "status"] as const;
export type UpdateQueueMethod = (typeof METHODS)[number];

/** The top-level reported keys the queue's own state uses (`updateQueue`: UpdateQueueStatus); read-only Properties. */
export const REPORTED_KEYS = ["updateQueue"] as const;

export interface UpdateQueuePropertyDefaults {
  readonly maxChunkBytes: number;
  readonly resendAfterMs: number;
  /** FLOTILLA_QUEUE_MAX_BYTES. */
  readonly capacityBytes: number;
}

export function updateQueueProperties(d: UpdateQueuePropertyDefaults) {
  return {
    maxChunkBytes: numberProperty({
      name: "maxChunkBytes",
      schema: "integer",
      minimum: 1024,
      maximum: MAX_CHUNK_BYTES,
      unit: ["DataSize", "byte"],
      description: "Body bytes per device-to-cloud chunk message (IoT Hub's limit is 256 KB per message).",
      default: d.maxChunkBytes,
    }),
    resendAfterMs: numberProperty({
      name: "resendAfterMs",
      schema: "long",
      minimum: RESEND_AFTER_MS_RANGE[0],
      maximum: RESEND_AFTER_MS_RANGE[1],
      unit: ["TimeSpan", "millisecond"],
      description: "Send an update again when the cloud has not acknowledged it after this long.",
      default: d.resendAfterMs,
    }),
    capacityBytes: numberProperty({
      name: "capacityBytes",
      schema: "long",
      minimum: 1024 * 1024,
      maximum: Number.MAX_SAFE_INTEGER,
      unit: ["DataSize", "byte"],
      description:
        "Most bytes of unacknowledged updates kept; a full queue refuses new updates (the trainer is told) and loses none it holds.",
      default: d.capacityBytes,
    }),
    retentionHours: numberProperty({
      name: "retentionHours",
      schema: "double",
      minimum: 0,
      maximum: 8760,
      unit: ["TimeSpan", "hour"],
      description:
        "Undelivered updates older than this are dropped, logged and counted (0: kept until delivered or their round closes).",
      default: 0,
    }),
    meteredLink: booleanProperty({
      name: "meteredLink",
      description:
        "The device's uplink is metered: uploads larger than meteredMaxUploadBytes wait until it is not, and the cloud does not order rounds whose update is larger.",
      default: false,
    }),
    meteredMaxUploadBytes: customProperty<number>({
      schema: "long",
      unit: ["DataSize", "byte"],
      minimum: 0,
      maximum: Number.MAX_SAFE_INTEGER,
      description: "On a metered link, the largest update sent at once (0: no limit).",
      default: 0,
      parse: (v) => parsePolicyValue("meteredMaxUploadBytes", v) ?? 0,
    }),
  } satisfies PropertySpecs;
}

export type UpdateQueueProperties = ReturnType<typeof updateQueueProperties>;
