/**
 * A saved model directory: what `flotilla export --model DIR` reads and simulate writes for the final model.
 *
 *   spec.json    the ModelSpec
 *   weights.bin  the weights, float32 little-endian, in the layout order of modelLayout(spec)
 *   layout.json  that WeightLayout (entries with names, shapes, offsets; totalSize; hash)
 *   meta.json    optional: { jobId?, round?, sha256 (of weights.bin), createdAt (ISO 8601) }
 *
 * loadModelDir checks everything against the spec (the layout must be modelLayout(spec), weights.bin must hold
 * exactly its totalSize values, meta.json's sha256 must match) and throws E_MODEL_DIR with a one-line message.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fail, isFlotillaError } from "../errors";
import type { ModelSpec } from "../engine/model-spec";
import { validateSpec } from "../engine/model-spec";
import { modelLayout } from "../engine/plan";
import type { WeightLayout } from "../tensor/layout";
import { weightsHash } from "../tensor/layout";

export const SPEC_FILE = "spec.json";
export const WEIGHTS_FILE = "weights.bin";
export const LAYOUT_FILE = "layout.json";
export const META_FILE = "meta.json";

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
  } catch (e) {
    fail("E_MODEL_DIR", `${dir}: cannot write the model directory: ${(e as Error).message.split("\n")[0]}`, {
      cause: e,
    });
  }
  return full;
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
