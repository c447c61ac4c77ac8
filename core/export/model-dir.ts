/**
 * A saved model directory: what `flotilla export --model DIR` reads and simulate writes for the final model.
 *
 *   spec.json    the ModelSpec
 *   weights.bin  the weights, float32 little-endian, in the layout order of modelLayout(spec)
 *   layout.json  that WeightLayout (entries with names, shapes, offsets; totalSize; hash)
 *   meta.json    optional: { jobId?, round?, sha256 (of weights.bin), createdAt (ISO 8601) }
 *   model.json   a TensorFlow.js Layers model.json whose one weight shard is weights.bin (the graph's layout is the
 *                shard's order), written for every layer graph and every preset whose graph form has the same
 *                layout: `tf.loadLayersModel` loads the directory, tensorflowjs_converter turns it into Keras
 *                (core/engine/keras.ts). loadModelDir reads spec.json, not model.json.
 *
 * loadModelSource takes any model a job can start from: such a directory, a Keras / tfjs model.json, or a
 * directory holding one (docs/byom.md).
 *
 * loadModelDir checks everything against the spec (the layout must be modelLayout(spec), weights.bin must hold
 * exactly its totalSize values, meta.json's sha256 must match) and throws E_MODEL_DIR with a one-line message.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fail, isFlotillaError } from "../errors";
import type { GraphSpec } from "../engine/graph-spec";
import { matchPreset, presetGraph } from "../engine/graph";
import {
  kerasModelFile,
  kerasModelJson,
  readKerasModel,
  readKerasGraph,
  type KerasImportOptions,
} from "../engine/keras";
import type { ModelSpec } from "../engine/model-spec";
import { validateSpec } from "../engine/model-spec";
import { modelLayout } from "../engine/plan";
import type { WeightLayout } from "../tensor/layout";
import { weightsHash } from "../tensor/layout";

export const SPEC_FILE = "spec.json";
export const WEIGHTS_FILE = "weights.bin";
export const LAYOUT_FILE = "layout.json";
export const META_FILE = "meta.json";
export const KERAS_FILE = "model.json";

export interface ModelMeta {
  readonly jobId?: string;
  readonly round?: number;
  /** sha256 (hex) of weights.bin, i.e. weightsHash(weights). */
  readonly sha256: string;
  readonly createdAt: string;
}

export interface ModelDir {
  readonly spec: ModelSpec;
  readonly weights: Float32Array;
  readonly layout: WeightLayout;
  /** null when the directory has no meta.json. */
  readonly meta: ModelMeta | null;
}

const LITTLE_ENDIAN = os.endianness() === "LE";

function toBytes(w: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  const out = new Uint8Array(w.byteLength);
  const v = new DataView(out.buffer);
  w.forEach((x, i) => v.setFloat32(4 * i, x, true));
  return out;
}

function fromBytes(b: Uint8Array): Float32Array {
  const out = new Float32Array(b.byteLength / 4);
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer).set(b);
  } else {
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    for (let i = 0; i < out.length; i++) out[i] = v.getFloat32(4 * i, true);
  }
  return out;
}

function layoutOf(spec: ModelSpec, what: string): WeightLayout {
  try {
    return modelLayout(validateSpec(spec));
  } catch (e) {
    if (isFlotillaError(e)) fail("E_MODEL_DIR", `${what}: ${e.message}`, { cause: e });
    throw e;
  }
}

/**
 * Writes `dir` (created if needed) with spec.json, weights.bin, layout.json and meta.json. Throws E_MODEL_DIR
 * when the weights do not fit the spec or a file cannot be written.
 */
export function saveModelDir(
  dir: string,
  spec: ModelSpec,
  weights: Float32Array,
  meta: { jobId?: string; round?: number } = {},
): ModelMeta {
  const layout = layoutOf(spec, "invalid model spec");
  if (!(weights instanceof Float32Array) || weights.length !== layout.totalSize) {
    fail(
      "E_MODEL_DIR",
      `weights have ${weights?.length} values, model ${spec.kind} needs ${layout.totalSize}`,
    );
  }
  const full: ModelMeta = {
    ...(meta.jobId !== undefined ? { jobId: meta.jobId } : {}),
    ...(meta.round !== undefined ? { round: meta.round } : {}),
    sha256: weightsHash(weights),
    createdAt: new Date().toISOString(),
  };
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, SPEC_FILE), JSON.stringify(spec, null, 2) + "\n");
    fs.writeFileSync(path.join(dir, WEIGHTS_FILE), toBytes(weights));
    fs.writeFileSync(path.join(dir, LAYOUT_FILE), JSON.stringify(layout, null, 2) + "\n");
    fs.writeFileSync(path.join(dir, META_FILE), JSON.stringify(full, null, 2) + "\n");
    const graph = kerasGraphOf(spec, layout);
    if (graph) fs.writeFileSync(path.join(dir, KERAS_FILE), JSON.stringify(kerasModelJson(graph)) + "\n");
  } catch (e) {
    fail("E_MODEL_DIR", `${dir}: cannot write the model directory: ${(e as Error).message.split("\n")[0]}`, {
      cause: e,
    });
  }
  return full;
}

/** The graph whose layout is `layout` (the spec itself, or a preset's graph form), or null when there is none. */
function kerasGraphOf(spec: ModelSpec, layout: WeightLayout): GraphSpec | null {
  if (spec.kind === "graph") return spec;
  try {
    const g = presetGraph(spec);
    return modelLayout(g).hash === layout.hash ? g : null;
  } catch {
    return null;
  }
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return fail("E_MODEL_DIR", `${file}: cannot read`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return fail("E_MODEL_DIR", `${file}: not valid JSON`);
  }
}

function sameLayout(a: WeightLayout, b: unknown): boolean {
  const l = b as Partial<WeightLayout> | null;
  if (!l || typeof l !== "object" || !Array.isArray(l.entries)) return false;
  if (l.hash !== a.hash || l.totalSize !== a.totalSize || l.entries.length !== a.entries.length) return false;
  return a.entries.every((e, i) => {
    const o = l.entries![i];
    return (
      o?.name === e.name &&
      o.offset === e.offset &&
      o.size === e.size &&
      Array.isArray(o.shape) &&
      o.shape.length === e.shape.length &&
      o.shape.every((d, k) => d === e.shape[k])
    );
  });
}

/** Reads and validates a model directory. Throws E_MODEL_DIR (one line) on any problem. */
export function loadModelDir(dir: string): ModelDir {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    return fail("E_MODEL_DIR", `${dir}: no such model directory`);
  }
  if (!st.isDirectory()) fail("E_MODEL_DIR", `${dir}: not a directory`);
  for (const f of [SPEC_FILE, WEIGHTS_FILE, LAYOUT_FILE]) {
    if (!fs.existsSync(path.join(dir, f))) fail("E_MODEL_DIR", `${dir}: missing ${f}`);
  }
  const specFile = path.join(dir, SPEC_FILE);
  const spec = readJson(specFile) as ModelSpec;
  const layout = layoutOf(spec, specFile);

  const layoutFile = path.join(dir, LAYOUT_FILE);
  const saved = readJson(layoutFile) as Partial<WeightLayout> | null;
  if (!sameLayout(layout, saved)) {
    const hash = typeof saved?.hash === "string" ? saved.hash.slice(0, 12) : "none";
    fail(
      "E_MODEL_DIR",
      `${layoutFile}: layout ${hash} does not match spec.json's layout ${layout.hash.slice(0, 12)}`,
    );
  }

  const weightsFile = path.join(dir, WEIGHTS_FILE);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(weightsFile);
  } catch {
    return fail("E_MODEL_DIR", `${weightsFile}: cannot read`);
  }
  if (bytes.byteLength !== layout.totalSize * 4) {
    fail(
      "E_MODEL_DIR",
      `${weightsFile}: has ${bytes.byteLength} bytes, the spec needs ${layout.totalSize} float32 values (${layout.totalSize * 4} bytes)`,
    );
  }
  const weights = fromBytes(bytes);

  let meta: ModelMeta | null = null;
  const metaFile = path.join(dir, META_FILE);
  if (fs.existsSync(metaFile)) {
    const m = readJson(metaFile) as Partial<ModelMeta> | null;
    if (!m || typeof m !== "object" || typeof m.sha256 !== "string" || typeof m.createdAt !== "string") {
      fail("E_MODEL_DIR", `${metaFile}: needs string fields sha256 and createdAt`);
    }
    if (
      (m.jobId !== undefined && typeof m.jobId !== "string") ||
      (m.round !== undefined && !Number.isInteger(m.round))
    ) {
      fail("E_MODEL_DIR", `${metaFile}: jobId must be a string and round an integer`);
    }
    const sha = weightsHash(weights);
    if (m.sha256 !== sha) {
      fail(
        "E_MODEL_DIR",
        `${weightsFile}: sha256 ${sha.slice(0, 12)} does not match meta.json's ${m.sha256.slice(0, 12)}`,
      );
    }
    meta = m as ModelMeta;
  }
  return { spec, weights, layout, meta };
}

/** A model a job can start from, and where it came from. */
export interface ModelSource {
  readonly spec: ModelSpec;
  readonly weights: Float32Array;
  /** "model-dir": a saved model directory (spec.json ...); "keras": a Keras / tfjs Layers model.json. */
  readonly format: "model-dir" | "keras";
}

/**
 * Whether `p` names a Keras / tfjs model: a `.json` file, or a directory holding model.json and no spec.json (a
 * saved model directory holds both: its spec.json is read). Anything else is read as a model directory.
 */
function isKerasPath(p: string): boolean {
  if (p.endsWith(".json")) return true;
  try {
    return (
      fs.statSync(p).isDirectory() &&
      fs.existsSync(path.join(p, KERAS_FILE)) &&
      !fs.existsSync(path.join(p, SPEC_FILE))
    );
  } catch {
    return false;
  }
}

/**
 * Reads any model a job can start from: a saved model directory (spec.json + weights.bin, e.g. a previous job's
 * out/model), a Keras / TensorFlow.js Layers model.json, or a directory holding one (and no spec.json); any other
 * path is read as a model directory (its errors are E_MODEL_DIR). Throws E_MODEL_DIR,
 * E_MODEL_IMPORT, E_MODEL_LAYER, E_MODEL_WEIGHTS or E_MODEL_LOSS (one line).
 */
export function loadModelSource(p: string, opts: KerasImportOptions = {}): ModelSource {
  if (!isKerasPath(p)) {
    const d = loadModelDir(p);
    return { spec: d.spec, weights: d.weights, format: "model-dir" };
  }
  const m = readKerasModel(p, opts);
  return { spec: m.spec, weights: m.weights, format: "keras" };
}

/** The spec of loadModelSource(p) without reading weights (a model directory's spec.json is checked as usual). */
export function loadModelSourceSpec(p: string, opts: KerasImportOptions = {}): ModelSpec {
  if (!isKerasPath(p)) return loadModelDir(p).spec;
  return readKerasGraph(kerasModelFile(p), opts);
}

/** A preset and a graph of it (graph.ts matchPreset), or two graphs of one preset: the same network, other names. */
function sameArchitecture(a: ModelSpec, b: ModelSpec, la: WeightLayout, lb: WeightLayout): boolean {
  const shapes = (l: WeightLayout) => JSON.stringify(l.entries.map((e) => e.shape));
  if (shapes(la) !== shapes(lb)) return false;
  const preset = (s: ModelSpec) => (s.kind === "graph" ? matchPreset(s) : s);
  const pa = preset(a);
  const pb = preset(b);
  return pa !== null && pb !== null && JSON.stringify(pa) === JSON.stringify(pb);
}

/**
 * The weights a job warm-starts from (`--init-model`, a job's `initModel`): `from` must have the job model's
 * layout (the same weight tensors, names and shapes), or be the same network under other names (a built-in preset
 * and an imported graph of it, graph.ts matchPreset: their layouts are the same tensors in the same order);
 * otherwise E_MODEL_INIT names the first difference.
 */
export function checkWarmStart(
  spec: ModelSpec,
  from: { readonly spec: ModelSpec; readonly weights: Float32Array },
  what: string,
): Float32Array {
  const want = layoutOf(spec, "the job's model");
  let got: WeightLayout;
  try {
    got = modelLayout(validateSpec(from.spec));
  } catch (e) {
    return fail("E_MODEL_INIT", `${what}: ${(e as Error).message}`, { cause: e });
  }
  if (got.hash !== want.hash && !sameArchitecture(spec, from.spec, want, got)) {
    const i = want.entries.findIndex(
      (e, k) => got.entries[k]?.name !== e.name || got.entries[k].shape.join(",") !== e.shape.join(","),
    );
    const a = want.entries[i];
    const b = got.entries[i];
    const diff =
      i < 0
        ? `it has ${got.entries.length} weight tensors, the job's model ${want.entries.length}`
        : `tensor ${i}: the job's model has ${a.name} [${a.shape.join(", ")}], it has ${b ? `${b.name} [${b.shape.join(", ")}]` : "none"}`;
    fail(
      "E_MODEL_INIT",
      `${what}: its layout ${got.hash.slice(0, 12)} does not match the job's model ${want.hash.slice(0, 12)} (${diff})`,
    );
  }
  if (from.weights.length !== want.totalSize)
    fail(
      "E_MODEL_INIT",
      `${what}: has ${from.weights.length} values, the job's model needs ${want.totalSize}`,
    );
  return from.weights;
}
