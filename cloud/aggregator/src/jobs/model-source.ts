/**
 * A job body's `model` and `initModel` read from blobs when the job is created (POST /api/jobs, docs/byom.md):
 *
 * - `model: "<blob path>/model.json"`: a Keras / TensorFlow.js Layers model uploaded to the aggregator's container
 *   (model.json and its weight shards, the paths of its weightsManifest relative to it) is imported
 *   (core/engine/keras.ts): its graph becomes the job's modelSpec and its weights the job's initial model.
 * - `initModel` (warm start; wins over the imported weights): `"<blob path>/model.json"` (another Keras model),
 *   `"<blob path>/spec.json"` (a saved model directory: spec.json, weights.bin), or `{ jobId, round }` (a model
 *   another job published). Its layout must be the job model's (core/export/model-dir.ts checkWarmStart).
 *
 * Failures are one-line coded errors (HTTP 400): E_JOB_MODEL for a missing blob or a malformed field, the
 * importer's E_MODEL_IMPORT / E_MODEL_LAYER / E_MODEL_WEIGHTS / E_MODEL_LOSS, and E_MODEL_INIT for a layout that
 * does not match. Pure JS, no tfjs.
 */
import * as posix from "node:path/posix";
import { fail, isFlotillaError } from "../../../../core/errors";
import { kerasGraph, importKeras } from "../../../../core/engine/keras";
import { validateSpec, type ModelSpec } from "../../../../core/engine/model-spec";
import { checkWarmStart } from "../../../../core/export/model-dir";
import { modelLayout } from "../../../../core/engine/plan";
import { weightsHash } from "../../../../core/tensor/layout";
import type { BlobStore } from "../store/blob-store";
import { jobModelSpecInput, type ResolvedModels } from "./job";
import { JobRepository, paths } from "./state";

/** Largest model.json / spec.json read (a topology is small; a manifest lists tensors). */
const MAX_JSON_BYTES = 16 * 1024 * 1024;

export interface ResolvedJobModels {
  readonly resolved: ResolvedModels;
  /** The initial model to store at jobs/{jobId}/init.f32 (resolved.initModel describes it). */
  readonly initWeights?: Float32Array;
}

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function blobPath(v: string, what: string): string {
  const p = posix.normalize(v.trim());
  if (p === "" || p === "." || p.startsWith("/") || p.startsWith("..") || p.length > 1024)
    fail("E_JOB_MODEL", `${what} '${v}' is not a blob path in the aggregator's container`);
  return p;
}

async function readBlob(store: BlobStore, name: string, what: string): Promise<Uint8Array> {
  const b = await store.get(name);
  if (!b) return fail("E_JOB_MODEL", `${what}: blob '${name}' does not exist`);
  return b.bytes;
}

async function readJsonBlob(store: BlobStore, name: string, what: string): Promise<unknown> {
  const bytes = await readBlob(store, name, what);
  if (bytes.byteLength > MAX_JSON_BYTES)
    fail("E_JOB_MODEL", `${what}: '${name}' is ${bytes.byteLength} bytes (at most ${MAX_JSON_BYTES})`);
  try {
    return JSON.parse(new TextDecoder().decode(bytes)) as unknown;
  } catch {
    return fail("E_JOB_MODEL", `${what}: '${name}' is not valid JSON`);
  }
}

function float32s(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.byteLength >> 2);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = v.getFloat32(4 * i, true);
  return out;
}

/** A Keras / tfjs model.json blob and its shards (next to it) → graph and weights. */
export async function importBlobModel(
  store: BlobStore,
  file: string,
  what: string,
): Promise<{ spec: ModelSpec; weights: Float32Array }> {
  const json = await readJsonBlob(store, file, what);
  const dir = posix.dirname(file);
  const shards = new Map<string, Uint8Array>();
  for (const g of kerasGraph(json).manifest) {
    for (const rel of g.paths) {
      const name = posix.normalize(posix.join(dir, String(rel)));
      if (dir !== "." && !name.startsWith(dir + "/"))
        fail("E_MODEL_IMPORT", `${what}: weight shard path '${String(rel)}' leaves the model's directory`);
      const b = await store.get(name);
      if (b) shards.set(String(rel), b.bytes);
    }
  }
  return importKeras(json, (rel) => shards.get(rel));
}

/** A blob model of either form: a Keras model.json, or a saved model directory's spec.json (+ weights.bin). */
async function blobModel(
  store: BlobStore,
  v: string,
  what: string,
): Promise<{ spec: ModelSpec; weights: Float32Array }> {
  const file = blobPath(v, what);
  if (posix.basename(file) !== "spec.json") return importBlobModel(store, file, what);
  let spec: ModelSpec;
  try {
    spec = validateSpec(await readJsonBlob(store, file, what));
  } catch (e) {
    if (isFlotillaError(e) && e.code !== "E_JOB_MODEL")
      fail("E_JOB_MODEL", `${what}: ${e.message}`, { cause: e });
    throw e;
  }
  const bytes = await readBlob(store, posix.join(posix.dirname(file), "weights.bin"), what);
  const need = modelLayout(spec).totalSize;
  if (bytes.byteLength !== need * 4)
    fail("E_JOB_MODEL", `${what}: weights.bin has ${bytes.byteLength} bytes, spec.json needs ${need * 4}`);
  return { spec, weights: float32s(bytes) };
}

/** A model another job published: its definition's spec and models/{round}.f32. */
async function publishedModel(
  store: BlobStore,
  v: Record<string, unknown>,
): Promise<{ spec: ModelSpec; weights: Float32Array; source: string }> {
  const { jobId, round } = v;
  if (typeof jobId !== "string" || !Number.isSafeInteger(round) || (round as number) < 0)
    fail("E_JOB_MODEL", "initModel must be a blob path or { jobId, round } of a published model");
  const job = await new JobRepository(store).getJob(jobId);
  if (!job) return fail("E_JOB_MODEL", `initModel: job '${jobId}' does not exist`);
  const bytes = await readBlob(
    store,
    paths.model(jobId, round as number),
    `initModel ${jobId}/${String(round)}`,
  );
  return {
    spec: job.definition.modelSpec,
    weights: float32s(bytes),
    source: `job:${jobId}/${String(round)}`,
  };
}

/**
 * Reads the blobs a job body names (`model` as a blob path, `initModel`) and returns what validateJob needs, with
 * the initial weights to store. Does nothing for a body that names none.
 */
export async function resolveJobModels(input: unknown, store: BlobStore): Promise<ResolvedJobModels> {
  if (!isObj(input)) return { resolved: {} };
  let resolved: ResolvedModels = {};
  let initWeights: Float32Array | undefined;
  let initSource: string | undefined;
  if (typeof input.model === "string") {
    const m = await blobModel(store, input.model, `model '${input.model}'`);
    resolved = { modelSpec: m.spec, modelSource: blobPath(input.model, "model") };
    initWeights = m.weights;
    initSource = `blob:${resolved.modelSource}`;
  }
  const init = input.initModel;
  if (init !== undefined && init !== null) {
    let spec: ModelSpec;
    try {
      spec = validateSpec(jobModelSpecInput(input, resolved));
    } catch (e) {
      if (isFlotillaError(e) && !e.code.startsWith("E_JOB_"))
        fail("E_JOB_MODEL", `modelSpec: ${e.message}`, { cause: e });
      throw e;
    }
    const from =
      typeof init === "string"
        ? {
            ...(await blobModel(store, init, `initModel '${init}'`)),
            source: `blob:${blobPath(init, "initModel")}`,
          }
        : isObj(init)
          ? await publishedModel(store, init)
          : fail("E_JOB_MODEL", "initModel must be a blob path or { jobId, round } of a published model");
    initWeights = checkWarmStart(spec, from, `initModel ${from.source}`);
    initSource = from.source;
  }
  if (initWeights && initSource) {
    resolved = {
      ...resolved,
      initModel: { source: initSource, sha256: weightsHash(initWeights), length: initWeights.length },
    };
  }
  return initWeights ? { resolved, initWeights } : { resolved };
}
