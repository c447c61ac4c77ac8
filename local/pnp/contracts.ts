/**
 * What each module's code declares of its Plug and Play model (modules/<m>/src/model.ts), with the modules' own
 * defaults: local/pnp/dtdl.ts compareModel checks the model files against these.
 */
import * as profiler from "../../modules/profiler/src/model";
import * as quantizer from "../../modules/quantizer/src/model";
import * as trainer from "../../modules/trainer/src/model";
import * as updateQueue from "../../modules/update-queue/src/model";
import { DEFAULT_DATA_DIR } from "../../modules/trainer/src/config";
import { DEFAULT_MAX_BYTES } from "../../modules/quantizer/src/config";
import { DEFAULT_QUEUE_MAX_BYTES, DEFAULT_RESEND_AFTER_MS } from "../../modules/update-queue/src/config";
import { DEFAULT_MAX_CHUNK_BYTES } from "../../modules/update-queue/src/outbox";
import { dmrPath, type ModuleContract } from "./dtdl";

export type ModuleName = "trainer" | "update-queue" | "quantizer" | "profiler";

export const MODULE_NAMES: readonly ModuleName[] = ["trainer", "update-queue", "quantizer", "profiler"];

/** Each module's IoT Plug and Play model ID (its model.ts MODEL_ID), by module id. */
export const MODEL_IDS: Readonly<Record<ModuleName, string>> = {
  trainer: trainer.MODEL_ID,
  "update-queue": updateQueue.MODEL_ID,
  quantizer: quantizer.MODEL_ID,
  profiler: profiler.MODEL_ID,
};

/** The code's side of each module's model. */
export function moduleContracts(): Record<ModuleName, ModuleContract> {
  return {
    trainer: {
      modelId: trainer.MODEL_ID,
      specs: trainer.trainerProperties({ dataDir: DEFAULT_DATA_DIR }),
      cloudDesiredKeys: trainer.CLOUD_DESIRED_KEYS,
      methods: trainer.METHODS,
      reportedKeys: trainer.REPORTED_KEYS,
    },
    "update-queue": {
      modelId: updateQueue.MODEL_ID,
      specs: updateQueue.updateQueueProperties({
        maxChunkBytes: DEFAULT_MAX_CHUNK_BYTES,
        resendAfterMs: DEFAULT_RESEND_AFTER_MS,
        capacityBytes: DEFAULT_QUEUE_MAX_BYTES,
      }),
      cloudDesiredKeys: updateQueue.CLOUD_DESIRED_KEYS,
      methods: updateQueue.METHODS,
      reportedKeys: updateQueue.REPORTED_KEYS,
    },
    quantizer: {
      modelId: quantizer.MODEL_ID,
      specs: quantizer.quantizerProperties({ maxPendingBytes: DEFAULT_MAX_BYTES }),
      cloudDesiredKeys: quantizer.CLOUD_DESIRED_KEYS,
      methods: quantizer.METHODS,
      reportedKeys: quantizer.REPORTED_KEYS,
    },
    profiler: {
      modelId: profiler.MODEL_ID,
      specs: profiler.profilerProperties(),
      cloudDesiredKeys: profiler.CLOUD_DESIRED_KEYS,
      methods: profiler.METHODS,
      reportedKeys: profiler.REPORTED_KEYS,
    },
  };
}

/** Where a module's model file is, relative to the models root (dtdl/). */
export function modelPath(name: ModuleName): string {
  return dmrPath(moduleContracts()[name].modelId);
}
